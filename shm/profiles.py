"""Dialog profile counters in shared memory: how many dialogs each profile (`calls`) or
profile value (`calls_per_user/alice`) holds, here and in the rest of the cluster.

A counter is named `scope \\0 profile`. The scope says who counts it: a sharing tag's
name (dialogs carrying that tag, counted by the node where the tag is active), "" (a
dialog without a tag, counted by the node that created it), or "*" (the sum the other
nodes reported, written by the cluster process: services.sip.profile_repl). Each name
has three counts:
- local: what the timer's last recount found in the dialog table (prof_scan over the
  live dialogs of the scopes this node counts), published to the others;
- recent: dialogs admitted by the workers since that recount began (prof_add), so a
  limit holds between two recounts;
- remote: (scope "*" only) the other nodes' counts.
A recount first moves `recent` into `local` (prof_begin), rebuilds the counts in a
scratch array over one or more passes, then stores them (prof_end): a count is never
below the truth while a recount runs; it may be above it (a dialog admitted during
the recount is seen twice, an ended one until the next recount). prof_end then
reclaims the names whose three counts are all 0 (a value nobody calls any more), so
the table holds the values in use, not every value ever seen. Reclaiming is safe with
the lock-free readers and writers: the timer claims the slot (key -> 1, "being
written"), checks the counts again, and leaves a tombstone (key 2) that probes walk
past and inserters reuse; a worker that found the slot just before adds to it, sees
the key changed, takes its change back and looks the name up again (so does a
reader). Tombstones are never turned back into empty slots (a probe walking past
one could then stop early): with nslots >= 2 * capacity, a lookup stays short. Neighbours:
shm.dialogs (rows counted), services.sip.dialogs (admission), services.sip.dialog_timer
(recounts), services.sip.profile_repl (publication, remote sums).

Segment layout (little-endian, W = 8-byte word):

    offset  size              field
    0       8                 magic b"FCPROF01"
    W1      8                 layout version (PROFILES_LAYOUT_VERSION)
    W2      8                 nslots: a power of two, twice the capacity or more
    W3      8                 capacity: most names ([dialog] profile_values)
    W4      8                 used: names inserted
    W5      8                 refused: names refused because the table was full
    W6      8                 recount generation: +1 after every finished recount
    W7      8                 remote names the last prof_set_remote could not store
    W8      8                 names reclaimed (all counts 0) since the start
    512     8 * nslots        keys: uint64 (0 empty, 1 being written, 2 reclaimed,
                              else the name's hash)
    ...     8 * nslots        local: int64
    ...     8 * nslots        recent: int64
    ...     8 * nslots        remote: int64
    ...     NAME_BYTES*nslots names: u8 length, then the name's bytes
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.atomics import atomic_add, atomic_cas, atomic_load, atomic_store, cpu_relax
from fastcluster.shm.dialogs import O_CREATOR, S_PROFILES, S_SHTAG
from fastcluster.shm.hashing import as_key, hash_bytes
from fastcluster.shm.raw import ld16
from fastcluster.shm.table import K_FREE, R_STATE, ST_LIVE, read_row, seg_span, views

PROFILES_MAGIC = int.from_bytes(b"FCPROF01", "little")
PROFILES_LAYOUT_VERSION = 2
HEADER = 512
NAME_BYTES = 128
MAX_NAME = NAME_BYTES - 1
SEED_PROFILE = np.uint64(0x70726F66696C65)  # "profile"
K_EMPTY, K_WRITING, K_DELETED = np.uint64(0), np.uint64(1), np.uint64(2)
(W_MAGIC, W_VERSION, W_NSLOTS, W_CAPACITY, W_USED, W_REFUSED, W_GENERATION,
 W_REMOTE_REFUSED, W_RECLAIMED) = range(9)
E_FULL = -2
E_ABSENT = -1
REMOTE_SCOPE = b"*"
PROFILE_SEP = ord("\n")  # between the entries of a dialog's `profiles` string


def slots_for(capacity: int) -> int:
    n = 16
    while n < 2 * capacity:
        n *= 2
    return n


def segment_size(capacity: int) -> int:
    return HEADER + slots_for(capacity) * (32 + NAME_BYTES)


def init_segment(buf: np.ndarray, capacity: int) -> None:
    w = buf[:HEADER].view(np.int64)
    w[W_VERSION] = PROFILES_LAYOUT_VERSION
    w[W_NSLOTS] = slots_for(capacity)
    w[W_CAPACITY] = capacity
    w[W_MAGIC] = PROFILES_MAGIC


def name_of(scope: bytes, profile: bytes) -> bytes:
    """The counter name of a profile entry (`name` or `name/value`) in a scope."""
    return scope + b"\0" + profile


@njit(cache=True, inline="always")
def _views(seg):
    w = seg[:HEADER].view(np.int64)
    n = w[W_NSLOTS]
    a = HEADER
    keys = seg[a:a + 8 * n].view(np.uint64)
    a += 8 * n
    local = seg[a:a + 8 * n].view(np.int64)
    a += 8 * n
    recent = seg[a:a + 8 * n].view(np.int64)
    a += 8 * n
    remote = seg[a:a + 8 * n].view(np.int64)
    a += 8 * n
    names = seg[a:a + NAME_BYTES * n]
    return w, n, keys, local, recent, remote, names


@njit(cache=True, inline="always")
def _same(names, s, buf, off, ln):
    at = s * NAME_BYTES
    if names[at] != ln:
        return False
    for i in range(ln):
        if names[at + 1 + i] != buf[off + i]:
            return False
    return True


@njit(cache=True, inline="always")
def _key(buf, off, ln):
    """A name's key: never 0, 1 or 2 (empty, being written, reclaimed)."""
    key = as_key(hash_bytes(buf, off, ln, SEED_PROFILE))
    if key == K_DELETED:
        key = np.uint64(3)
    return key


@njit(cache=True, inline="always")
def _slot(w, n, keys, names, buf, off, ln, insert):
    """Slot of the name buf[off:off+ln], inserted when absent and `insert`; E_ABSENT or
    E_FULL. Lock-free: an inserter claims a slot (key 1: an empty one, or the first
    reclaimed one on the probe run), writes the name, then publishes the key; a reader
    meeting a slot being written waits for it, and walks past reclaimed ones."""
    if ln > MAX_NAME:
        if insert:
            atomic_add(w, W_REFUSED, 1)
        return E_FULL
    key = _key(buf, off, ln)
    mask = n - 1
    home = np.int64(key & np.uint64(mask))
    for _attempt in range(64):
        s = home
        reuse = np.int64(-1)
        claim = np.int64(-1)
        for _ in range(n):
            k = atomic_load(keys, s)
            while k == K_WRITING:
                cpu_relax()
                k = atomic_load(keys, s)
            if k == key and _same(names, s, buf, off, ln):
                return s
            if k == K_DELETED:
                if reuse < 0:
                    reuse = s
            elif k == K_EMPTY:
                claim = s
                break
            s = (s + 1) & mask
        if not insert:
            return E_ABSENT
        if reuse >= 0:
            claim = reuse
        if claim < 0 or atomic_load(w, W_USED) >= w[W_CAPACITY]:
            atomic_add(w, W_REFUSED, 1)
            return E_FULL
        old = K_DELETED if claim == reuse else K_EMPTY
        if atomic_cas(keys, claim, old, K_WRITING) == old:
            at = claim * NAME_BYTES
            names[at] = ln
            for i in range(ln):
                names[at + 1 + i] = buf[off + i]
            atomic_store(keys, claim, key)
            atomic_add(w, W_USED, 1)
            return claim
        # another inserter (or the reclaimer) took that slot: look again from home
    atomic_add(w, W_REFUSED, 1)
    return E_FULL


@njit(cache=True)
def prof_add(seg, names8, ends, count, delta, out_slots):
    """recent += delta for the names names8[ends[i-1]:ends[i]] (ends[-1] read as 0),
    i < count, inserting absent ones. out_slots[i] = slot or E_FULL. Returns how many
    were counted. A slot reclaimed between the lookup and the add (its key changed)
    gets its change back, and the name is looked up again."""
    w, n, keys, local, recent, remote, names = _views(seg)
    done = 0
    off = 0
    for i in range(count):
        ln = ends[i] - off
        key = _key(names8, off, ln)
        s = E_FULL
        for _attempt in range(64):
            s = _slot(w, n, keys, names, names8, off, ln, True)
            if s < 0:
                break
            atomic_add(recent, s, delta)
            if atomic_load(keys, s) == key:
                break
            atomic_add(recent, s, -delta)  # reclaimed meanwhile: not this name's slot
            s = E_FULL
        out_slots[i] = s
        if s >= 0:
            done += 1
        off = ends[i]
    return done


@njit(cache=True)
def prof_get(seg, names8, ends, count, out):
    """out[i] = local + recent (for a "*" name: remote) of each name (0: absent)."""
    w, n, keys, local, recent, remote, names = _views(seg)
    off = 0
    for i in range(count):
        ln = ends[i] - off
        key = _key(names8, off, ln)
        out[i] = 0
        for _attempt in range(64):
            s = _slot(w, n, keys, names, names8, off, ln, False)
            if s < 0:
                out[i] = 0
                break
            if ln >= 2 and names8[off] == 42 and names8[off + 1] == 0:  # "*\0..."
                out[i] = atomic_load(remote, s)
            else:
                out[i] = atomic_load(local, s) + atomic_load(recent, s)
            if atomic_load(keys, s) == key:
                break  # else reclaimed while read: look again
        off = ends[i]


@njit(cache=True)
def prof_set_remote(seg, names8, ends, count, values):
    """remote = values[i] for each name (inserted when absent and the value is not 0);
    then every other name's remote becomes 0. Returns the names refused (table full),
    also kept in the header (W_REMOTE_REFUSED) for the limits: a remote count that
    could not be stored makes limited profiles fail closed (services.sip.dialogs)."""
    w, n, keys, local, recent, remote, names = _views(seg)
    mark = np.zeros(n, dtype=np.uint8)
    refused = 0
    off = 0
    for i in range(count):
        ln = ends[i] - off
        key = _key(names8, off, ln)
        for _attempt in range(64):
            s = _slot(w, n, keys, names, names8, off, ln, values[i] != 0)
            if s >= 0:
                atomic_store(remote, s, values[i])
                if atomic_load(keys, s) != key:
                    atomic_store(remote, s, 0)  # reclaimed meanwhile: again
                    continue
                mark[s] = 1
            elif s == E_FULL:
                refused += 1
            break
        off = ends[i]
    for s in range(n):
        if not mark[s] and remote[s] != 0:
            atomic_store(remote, s, 0)
    atomic_store(w, W_REMOTE_REFUSED, refused)
    return refused


@njit(cache=True)
def prof_begin(seg, scratch):
    """Start a recount: move every recent count into local, zero scratch."""
    w, n, keys, local, recent, remote, names = _views(seg)
    for s in range(n):
        r = atomic_load(recent, s)
        if r != 0:
            atomic_add(recent, s, -r)
            atomic_add(local, s, r)
        scratch[s] = 0


@njit(cache=True, inline="always")
def _tag_active(row8, off, ln, active8, nactive):
    """Whether the tag row8[off:off+ln] is one of the NUL-terminated names in active8."""
    a = 0
    for _ in range(nactive):
        e = a
        while active8[e] != 0:
            e += 1
        if e - a == ln:
            same = True
            for i in range(ln):
                if active8[a + i] != row8[off + i]:
                    same = False
                    break
            if same:
                return True
        a = e + 1
    return False


@njit(cache=True, nogil=True)
def prof_scan(arena, seg, start, nslots, active8, nactive, me, scratch, row8, name8):
    """Count, into scratch (int64[segment nslots]), the profiles of the live dialogs in
    slots [start, start + nslots) of the dialog table that this node counts: those
    whose sharing tag is one of the `nactive` NUL-terminated names in active8 (the tags
    active here), and those without a tag that node `me` created. row8: uint8[row
    size], name8: uint8[NAME_BYTES]: scratch buffers. Returns (next slot (the table's
    nslots when done), dialogs counted, names refused)."""
    t = views(arena)
    w, n, keys, local, recent, remote, names = _views(seg)
    end = min(t.nslots, start + nslots)
    counted = refused = 0
    for s in range(start, end):
        if t.keys[s] <= K_FREE:
            continue
        if read_row(t, s, row8, 0) <= K_FREE or row8[R_STATE] != ST_LIVE:
            continue
        toff, tlen = seg_span(t, row8, 0, S_SHTAG)
        if tlen == 0:
            if ld16(row8, O_CREATOR) != me:
                continue
        elif not _tag_active(row8, toff, tlen, active8, nactive):
            continue
        poff, plen = seg_span(t, row8, 0, S_PROFILES)
        if plen == 0:
            continue
        counted += 1
        if tlen + 1 > MAX_NAME:
            refused += 1
            continue
        name8[:tlen] = row8[toff:toff + tlen]
        name8[tlen] = 0
        a = poff
        stop = poff + plen
        while a < stop:
            e = a
            while e < stop and row8[e] != PROFILE_SEP:
                e += 1
            ln = tlen + 1 + (e - a)
            if e > a and ln <= MAX_NAME:
                name8[tlen + 1:ln] = row8[a:e]
                slot = _slot(w, n, keys, names, name8, 0, ln, True)
                if slot >= 0:
                    scratch[slot] += 1
                else:
                    refused += 1
            elif e > a:
                refused += 1
            a = e + 1
    return end, counted, refused


@njit(cache=True)
def prof_end(seg, scratch):
    """Finish a recount: local = scratch; then reclaim the names whose counts are all
    0 (see the module's notes). Returns the names reclaimed."""
    w, n, keys, local, recent, remote, names = _views(seg)
    for s in range(n):
        if local[s] != scratch[s]:
            atomic_store(local, s, scratch[s])
    atomic_add(w, W_GENERATION, 1)
    reclaimed = 0
    for s in range(n):
        k = atomic_load(keys, s)
        if k <= K_DELETED or local[s] != 0 or atomic_load(recent, s) != 0 or \
                atomic_load(remote, s) != 0:
            continue
        if atomic_cas(keys, s, k, K_WRITING) != k:
            continue
        if atomic_load(recent, s) != 0 or atomic_load(remote, s) != 0:
            atomic_store(keys, s, k)  # counted meanwhile: it stays
            continue
        names[s * NAME_BYTES] = 0
        atomic_store(keys, s, K_DELETED)
        atomic_add(w, W_USED, -1)
        reclaimed += 1
    if reclaimed:
        atomic_add(w, W_RECLAIMED, reclaimed)
    return reclaimed


@njit(cache=True)
def prof_local_delta(seg, sent_keys, sent_vals, full, out):
    """What changed in this node's counts (local + recent) since the last call, for
    publication (services.sip.profile_repl), in one pass instead of a Python walk over
    every value: slots whose key or count differs from sent_keys / sent_vals
    (int64[nslots], the caller's, updated here), or, when `full`, every slot with a
    count. out: int64[nslots, 4] rows of (slot, key, count, previous key). A slot
    being written is left for the next call. Returns the rows written."""
    w, n, keys, local, recent, remote, names = _views(seg)
    m = 0
    for s in range(n):
        k = atomic_load(keys, s)
        if k == K_WRITING:
            continue
        ik = np.int64(k) if k > K_DELETED else np.int64(0)
        v = local[s] + recent[s] if ik != 0 else np.int64(0)
        if (full and v != 0) or ik != sent_keys[s] or v != sent_vals[s]:
            out[m, 0] = s
            out[m, 1] = ik
            out[m, 2] = v
            out[m, 3] = sent_keys[s]
            m += 1
            sent_keys[s] = ik
            sent_vals[s] = v
    return m


PACKS_KEPT = 4096  # ProfileCounters.add_each's packed name lists


class ProfileCounters:
    """The Python face of a profile segment (checks at the boundary)."""

    def __init__(self, buf: np.ndarray) -> None:
        w = buf[:HEADER].view(np.int64)
        if int(w[W_MAGIC]) != PROFILES_MAGIC:
            raise ValueError("not a profile segment (bad magic)")
        if int(w[W_VERSION]) != PROFILES_LAYOUT_VERSION:
            raise ValueError("profile segment layout version mismatch")
        self.buf = buf
        self.words = w
        self.nslots = int(w[W_NSLOTS])
        self.capacity = int(w[W_CAPACITY])
        a = HEADER
        self.keys = buf[a:a + 8 * self.nslots].view(np.uint64)
        a += 8 * self.nslots
        self.local = buf[a:a + 8 * self.nslots].view(np.int64)
        a += 8 * self.nslots
        self.recent = buf[a:a + 8 * self.nslots].view(np.int64)
        a += 8 * self.nslots
        self.remote = buf[a:a + 8 * self.nslots].view(np.int64)
        a += 8 * self.nslots
        self.names = buf[a:a + NAME_BYTES * self.nslots].reshape(self.nslots, NAME_BYTES)
        self._packs: dict[tuple[bytes, ...], tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def pack(names: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, ends) of names for the batch kernels."""
        ends = np.cumsum([len(x) for x in names], dtype=np.int64) if names else \
            np.zeros(1, np.int64)
        data = np.frombuffer(b"".join(names) or b"\0", dtype=np.uint8).copy()
        return data, ends

    def add(self, names: list[bytes], delta: int) -> int:
        """recent += delta for each name; returns how many could be counted."""
        return sum(self.add_each(names, delta))

    def add_each(self, names: list[bytes], delta: int) -> list[bool]:
        """recent += delta for each name; whether each one could be counted. The
        packed names are kept (a SIP worker counts every new dialog in the same few)."""
        key = tuple(names)
        packed = self._packs.get(key)
        if packed is None:
            if len(self._packs) >= PACKS_KEPT:
                self._packs.clear()
            packed = self._packs[key] = self.pack(names)
        data, ends = packed
        out = np.zeros(max(1, len(names)), dtype=np.int64)
        prof_add(self.buf, data, ends, len(names), delta, out)
        return [bool(v >= 0) for v in out[:len(names)]]

    def get(self, names: list[bytes]) -> list[int]:
        data, ends = self.pack(names)
        out = np.zeros(max(1, len(names)), dtype=np.int64)
        prof_get(self.buf, data, ends, len(names), out)
        return [int(v) for v in out[:len(names)]]

    def set_remote(self, values: dict[bytes, int]) -> int:
        names = [name_of(REMOTE_SCOPE, p) for p in values]
        data, ends = self.pack(names)
        arr = np.array(list(values.values()) or [0], dtype=np.int64)
        return int(prof_set_remote(self.buf, data, ends, len(names), arr))

    def entries(self) -> dict[tuple[bytes, bytes], tuple[int, int, int]]:
        """(scope, profile) -> (local, recent, remote) of every name with a count."""
        used = np.nonzero((self.keys > K_DELETED) & ((self.local != 0) | (self.recent != 0) |
                                             (self.remote != 0)))[0]
        out = {}
        for s in used.tolist():
            ln = int(self.names[s, 0])
            scope, _, profile = bytes(self.names[s, 1:1 + ln]).partition(b"\0")
            out[(scope, profile)] = (int(self.local[s]), int(self.recent[s]),
                                     int(self.remote[s]))
        return out

    @property
    def generation(self) -> int:
        return int(self.words[W_GENERATION])

    @property
    def refused(self) -> int:
        return int(self.words[W_REFUSED])

    @property
    def used(self) -> int:
        return int(self.words[W_USED])

    @property
    def remote_refused(self) -> int:
        """Remote names the cluster process could not store at its last update."""
        return int(self.words[W_REMOTE_REFUSED])

    @property
    def reclaimed(self) -> int:
        return int(self.words[W_RECLAIMED])

    def name_at(self, slot: int) -> tuple[bytes, bytes]:
        """(scope, profile) of the name in a slot."""
        ln = int(self.names[slot, 0])
        scope, _, profile = bytes(self.names[slot, 1:1 + ln]).partition(b"\0")
        return scope, profile


__all__ = ["ProfileCounters", "init_segment", "name_of", "prof_add", "prof_begin",
           "prof_end", "prof_get", "prof_local_delta", "prof_scan", "prof_set_remote",
           "segment_size"]
