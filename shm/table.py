"""Open-addressing hash tables in shared memory, and the numba kernels that use them.

One table per segment (contacts, dialogs). A record is a fixed-size row: a common prefix
(key, group, version, expires, state, origin), a table-specific numeric part, u16 string
lengths, then a string blob. Rows live at the slot their probe lands on; a dense uint64
key column mirrors the keys so probes touch 8 keys per cache line. The home slot comes
from the record's *group* hash (the AOR of a contact, the Call-ID of a dialog), so all
records of a group sit in one probe run: "all contacts of an AOR" is one short scan.

Concurrency:
- Writers lock the striped region of the home slot and every further region their
  probe crosses, always in ascending order (no wrap-around: the table has an overflow
  tail), so they cannot deadlock. A lock word holds (pid << 32 | process slot).
- Every row change goes through the writer's undo area: saved old row, seq odd, write,
  seq even, ring push, undo cleared. A writer killed at any point leaves at most one
  slot in flight; `table_repair`, run by the master after reaping it, restores or
  re-pushes that slot, frees its locks and recounts. Nothing else is ever half-done:
  publishing a key or freeing a slot is a single aligned store.
- Readers take no lock: a per-slot sequence number (seqlock) tells them to retry.

Keys: 0 = EMPTY (ends a probe), 1 = FREE (was used; probes go on), >= 2 = a record.
Records are LIVE or TOMB (a deleted record kept for tombstone_ttl so late replicas of
an older version cannot bring it back). Expired LIVE records and old tombstones become
FREE; a FREE slot followed by an EMPTY one becomes EMPTY.

Segment layout (little-endian; W = 8-byte word of the header):

    offset        size              field
    0             8                 magic b"FCTABLE1"
    W1            8                 layout version (TABLE_LAYOUT_VERSION)
    W2            8                 kind: 1 contacts, 2 dialogs (also the wire table id)
    W3            8                 nslots: home positions + overflow tail
    W4            8                 nhome: home = (group >> 32) * nhome >> 32
    W5            8                 row_size (bytes, multiple of 8)
    W6            8                 fixed_size: bytes before the string blob
    W7            8                 region_shift: a lock region is 1 << region_shift slots
    W8            8                 nregions
    W9            8                 nprocs: undo areas (one per process slot)
    W10..W15      6x8               offsets of keys, seq, locks, undo, rows, local
    W16           8                 capacity: most records (LIVE + TOMB)
    W17           8                 lens_off: offset in a row of the u16 string lengths
    W18           8                 nlens: number of strings in the blob
    W19           8                 node_id written into local rows as origin
    W20           8                 undo_size: bytes per undo area
    W21           8                 local_size: bytes per slot of the local column
    W24, W32, W40 8 each            live, tomb, free counters (own cache lines)
    512           8 * nslots        keys: uint64
    ...           4 * nslots        seq: uint32 per slot, odd while a writer is in it
    ...           64 * nregions     locks: one int64 word per 64-byte line
    ...           undo_size*nprocs  undo areas: W0 state (0 idle, 1 in flight),
                                    W1 slot, W2 old key, then the old row at +64
    ...           row_size*nslots   rows
    ...           local_size*nslots local column: per-node data never replicated
    (each region starts on a 64-byte boundary)

Common row prefix (every table):

    offset  size  field
    0       8     key      uint64  record identity hash (>= 2)
    8       8     group    uint64  group hash (AOR / Call-ID): picks the home slot
    16      8     version  int64   hybrid logical clock: ms << 16 | counter
    24      4     expires  uint32  absolute unix seconds (TOMB: when it was deleted)
    28      1     state    uint8   1 LIVE, 2 TOMB
    29      1     aux      uint8   table-specific
    30      2     origin   uint16  node that made this version

Neighbours: shm.ring (pushes), shm.contacts / shm.dialogs (row layouts and their own
kernels), shm.hashing, workers.master (repair after a crash).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from fastcluster.shm.atomics import (
    atomic_add,
    atomic_cas,
    atomic_load,
    atomic_store,
    cpu_relax,
    fence,
)
from fastcluster.shm.hashing import mix64
from fastcluster.shm.ring import ENTRY_HEADER, ring_push
from fastcluster.shm.rows import PREFIX_OFFSETS

TABLE_MAGIC = int.from_bytes(b"FCTABLE1", "little")
TABLE_LAYOUT_VERSION = 1
HEADER_SIZE = 512
MAX_LOAD = 0.9  # records / home slots at capacity
TAIL_SLOTS = 4096  # overflow tail: probes never wrap around
REGION_SHIFT = 8  # 256 slots per lock region
LOCK_STRIDE = 8  # int64 words between lock words (one per cache line)
UNDO_ROW_AT = 64
LOCAL_SIZE = 8

# header word indexes
(H_MAGIC, H_VERSION, H_KIND, H_NSLOTS, H_NHOME, H_ROW, H_FIXED, H_SHIFT, H_NREGIONS,
 H_NPROCS, H_OFF_KEYS, H_OFF_SEQ, H_OFF_LOCKS, H_OFF_UNDO, H_OFF_ROWS, H_OFF_LOCAL,
 H_CAPACITY, H_LENS_OFF, H_NLENS, H_NODE_ID, H_UNDO_SIZE, H_LOCAL_SIZE) = range(22)
H_LIVE, H_TOMB, H_FREE = 24, 32, 40

# common row prefix offsets, from the one declaration in shm.rows
R_KEY, R_GROUP, R_VERSION, R_EXPIRES, R_STATE, R_AUX, R_ORIGIN = (
    PREFIX_OFFSETS[n] for n in ("key", "group", "version", "expires", "state", "aux", "origin"))
ST_LIVE, ST_TOMB = 1, 2
K_EMPTY, K_FREE = np.uint64(0), np.uint64(1)

# kernel results (>= 0 is a slot or a count)
E_BUSY = -1  # a lock stayed taken past the spin budget: yield and call again
E_FULL = -2  # capacity reached, or the probe ran off the overflow tail
E_TOO_LONG = -3  # the strings do not fit the row's blob
E_COLLISION = -4  # same 64-bit key and group, different identity bytes
E_NOT_FOUND = -5
E_CORRUPT = -6  # a wire entry that cannot be a row of this table
E_STALE = -7  # a remote row not newer than ours

SPINS = 4096

Tbl = namedtuple("Tbl", "h keys seq locks undo rows8 rows16 rows32 rows64 local64 "
                        "nslots nhome row fixed shift lens_off nlens kind node_id capacity")


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


def geometry(capacity: int, row_size: int, nprocs: int) -> dict[str, int]:
    """Slot counts and byte offsets of a table segment (pure; used by init and tests)."""
    nhome = max(16, int(np.ceil(capacity / MAX_LOAD)))
    nslots = nhome + min(TAIL_SLOTS, max(16, nhome))
    nregions = (nslots + (1 << REGION_SHIFT) - 1) >> REGION_SHIFT
    undo_size = _align(UNDO_ROW_AT + row_size)
    off = HEADER_SIZE
    layout = {"nhome": nhome, "nslots": nslots, "nregions": nregions, "undo_size": undo_size}
    for name, size in (("keys", 8 * nslots), ("seq", 4 * nslots),
                       ("locks", 8 * LOCK_STRIDE * nregions), ("undo", undo_size * nprocs),
                       ("rows", row_size * nslots), ("local", LOCAL_SIZE * nslots)):
        layout["off_" + name] = off
        off = _align(off + size)
    layout["size"] = off
    return layout


def init_table(buf: np.ndarray, kind: int, capacity: int, row_size: int, fixed_size: int,
               lens_off: int, nlens: int, nprocs: int, node_id: int) -> None:
    """Write the header of a zero-filled table segment (keys all EMPTY already)."""
    if row_size % 8 or fixed_size % 8:
        raise ValueError("row and fixed sizes must be multiples of 8")
    g = geometry(capacity, row_size, nprocs)
    if buf.shape[0] < g["size"]:
        raise ValueError(f"segment too small: {buf.shape[0]} < {g['size']}")
    h = buf[:HEADER_SIZE].view(np.int64)
    values = {H_VERSION: TABLE_LAYOUT_VERSION, H_KIND: kind, H_NSLOTS: g["nslots"],
              H_NHOME: g["nhome"], H_ROW: row_size, H_FIXED: fixed_size,
              H_SHIFT: REGION_SHIFT, H_NREGIONS: g["nregions"], H_NPROCS: nprocs,
              H_OFF_KEYS: g["off_keys"], H_OFF_SEQ: g["off_seq"],
              H_OFF_LOCKS: g["off_locks"], H_OFF_UNDO: g["off_undo"],
              H_OFF_ROWS: g["off_rows"], H_OFF_LOCAL: g["off_local"],
              H_CAPACITY: capacity, H_LENS_OFF: lens_off, H_NLENS: nlens,
              H_NODE_ID: node_id, H_UNDO_SIZE: g["undo_size"], H_LOCAL_SIZE: LOCAL_SIZE}
    for index, value in values.items():
        h[index] = value
    h[H_MAGIC] = TABLE_MAGIC


def check_header(buf: np.ndarray, kind: int) -> None:
    h = buf[:HEADER_SIZE].view(np.int64)
    if int(h[H_MAGIC]) != TABLE_MAGIC:
        raise ValueError("not a table segment (bad magic)")
    if int(h[H_VERSION]) != TABLE_LAYOUT_VERSION:
        raise ValueError(f"table layout {int(h[H_VERSION])}, expected {TABLE_LAYOUT_VERSION}")
    if int(h[H_KIND]) != kind:
        raise ValueError(f"table kind {int(h[H_KIND])}, expected {kind}")


# ---------------------------------------------------------------- views and helpers


@njit(cache=True)
def views(arena):
    """Typed views of a table segment (no copy). arena: uint8[segment size]."""
    h = arena[:HEADER_SIZE].view(np.int64)
    nslots = h[H_NSLOTS]
    row = h[H_ROW]
    ok, osq, olk = h[H_OFF_KEYS], h[H_OFF_SEQ], h[H_OFF_LOCKS]
    oud, orw, olc = h[H_OFF_UNDO], h[H_OFF_ROWS], h[H_OFF_LOCAL]
    rows8 = arena[orw:orw + row * nslots]
    return Tbl(h, arena[ok:ok + 8 * nslots].view(np.uint64),
               arena[osq:osq + 4 * nslots].view(np.uint32),
               arena[olk:olk + 8 * LOCK_STRIDE * h[H_NREGIONS]].view(np.int64),
               arena[oud:oud + h[H_UNDO_SIZE] * h[H_NPROCS]],
               rows8, rows8.view(np.uint16), rows8.view(np.uint32), rows8.view(np.uint64),
               arena[olc:olc + h[H_LOCAL_SIZE] * nslots].view(np.uint64),
               nslots, h[H_NHOME], row, h[H_FIXED], h[H_SHIFT], h[H_LENS_OFF],
               h[H_NLENS], h[H_KIND], h[H_NODE_ID], h[H_CAPACITY])


@njit(cache=True)
def home_of(t, group):
    return np.int64(((group >> np.uint64(32)) * np.uint64(t.nhome)) >> np.uint64(32))


@njit(cache=True)
def r_key(t, s):
    return t.rows64[(s * t.row + R_KEY) >> 3]


@njit(cache=True)
def r_group(t, s):
    return t.rows64[(s * t.row + R_GROUP) >> 3]


@njit(cache=True)
def r_version(t, s):
    return np.int64(t.rows64[(s * t.row + R_VERSION) >> 3])


@njit(cache=True)
def r_expires(t, s):
    return np.int64(t.rows32[(s * t.row + R_EXPIRES) >> 2])


@njit(cache=True)
def r_state(t, s):
    return t.rows8[s * t.row + R_STATE]


@njit(cache=True)
def r_origin(t, s):
    return np.int64(t.rows16[(s * t.row + R_ORIGIN) >> 1])


@njit(cache=True)
def blob_used(t, b8, base):
    """Sum of the string lengths of the row at byte `base` of uint8 array b8."""
    n = 0
    for i in range(t.nlens):
        p = base + t.lens_off + 2 * i
        n += np.int64(b8[p]) | (np.int64(b8[p + 1]) << 8)
    return n


@njit(cache=True)
def seg_span(t, b8, base, index):
    """(offset, length) of string `index` of the row at byte `base` of b8."""
    off = base + t.fixed
    for i in range(index):
        p = base + t.lens_off + 2 * i
        off += np.int64(b8[p]) | (np.int64(b8[p + 1]) << 8)
    p = base + t.lens_off + 2 * index
    return off, np.int64(b8[p]) | (np.int64(b8[p + 1]) << 8)


@njit(cache=True)
def bytes_equal(a, ao, b, bo, n):
    for i in range(n):
        if a[ao + i] != b[bo + i]:
            return False
    return True


@njit(cache=True)
def row_checksum(key, version, origin):
    """Order-independent checksum term of one row (sync end marker, digests)."""
    return mix64(key ^ mix64(np.uint64(version) ^ (np.uint64(origin) << np.uint64(48))))


# ---------------------------------------------------------------- locks


@njit(cache=True)
def lock_region(t, r, me):
    i = r * LOCK_STRIDE
    for _ in range(SPINS):
        if atomic_load(t.locks, i) == 0 and atomic_cas(t.locks, i, 0, me) == 0:
            return True
        cpu_relax()
    return False


@njit(cache=True)
def unlock_regions(t, lo, hi):
    for r in range(lo, hi + 1):
        atomic_store(t.locks, r * LOCK_STRIDE, 0)


@njit(cache=True)
def scan_locked(t, home, key, group, me, hi):
    """Writer probe from `home` (its region already locked, regions up to `hi` held).

    Returns (found slot or -1, first FREE/EMPTY slot or -1, new hi, status 0/E_BUSY/
    E_FULL). On E_BUSY the regions up to the returned hi are still held: the caller
    unlocks them.
    """
    s = home
    free = -1
    while s < t.nslots:
        r = s >> t.shift
        if r > hi:
            if not lock_region(t, r, me):
                return -1, free, hi, E_BUSY
            hi = r
        k = t.keys[s]
        if k == K_EMPTY:
            if free < 0:
                free = s
            return -1, free, hi, 0
        if k == K_FREE:
            if free < 0:
                free = s
        elif k == key and r_group(t, s) == group:
            return s, free, hi, 0
        s += 1
    return -1, free, hi, E_FULL


# ---------------------------------------------------------------- undo protocol


@njit(cache=True)
def undo_begin(t, proc, s):
    """Save slot s to this process's undo area and open the seqlock (seq odd)."""
    u = t.undo[proc * t.h[H_UNDO_SIZE]:(proc + 1) * t.h[H_UNDO_SIZE]]
    w = u[:UNDO_ROW_AT].view(np.int64)
    w[1] = s
    u[16:24].view(np.uint64)[0] = t.keys[s]
    u[UNDO_ROW_AT:UNDO_ROW_AT + t.row] = t.rows8[s * t.row:(s + 1) * t.row]
    atomic_store(w, 0, 1)
    t.seq[s] += np.uint32(1)
    fence()


@njit(cache=True)
def undo_commit(t, s):
    """Close the seqlock (seq even): the row is complete and visible."""
    atomic_store(t.seq, s, t.seq[s] + np.uint32(1))


@njit(cache=True)
def undo_end(t, proc):
    w = t.undo[proc * t.h[H_UNDO_SIZE]:proc * t.h[H_UNDO_SIZE] + 8].view(np.int64)
    atomic_store(w, 0, 0)


@njit(cache=True)
def push_row(t, ring, s):
    base = s * t.row
    return ring_push(ring, t.kind, t.rows8, base, t.fixed + blob_used(t, t.rows8, base),
                     r_version(t, s))


@njit(cache=True)
def count_state(t, state, delta):
    if state == ST_LIVE:
        atomic_add(t.h, H_LIVE, delta)
    elif state == ST_TOMB:
        atomic_add(t.h, H_TOMB, delta)


@njit(cache=True)
def write_row(t, ring, proc, s, src8, src_off, nbytes, key):
    """Copy a row (nbytes from src8[src_off:]) into slot s under the undo protocol and
    push it to `ring`. The caller holds the slot's region lock."""
    old_key = t.keys[s]
    old_state = r_state(t, s) if old_key > K_FREE else 0
    undo_begin(t, proc, s)
    base = s * t.row
    t.rows8[base:base + nbytes] = src8[src_off:src_off + nbytes]
    if old_key != key:
        t.local64[s] = 0
        atomic_store(t.keys, s, key)
    undo_commit(t, s)
    new_state = r_state(t, s)
    if old_state != new_state:
        count_state(t, old_state, -1)
        count_state(t, new_state, 1)
    if old_key == K_FREE:
        atomic_add(t.h, H_FREE, -1)
    push_row(t, ring, s)
    undo_end(t, proc)


# ---------------------------------------------------------------- public kernels


@njit(cache=True)
def table_put(arena, ring, row8, now_ms, me, proc):
    """Local write of one complete row (key, group, state, fields, lengths, strings).

    The version becomes max(now_ms << 16, stored version + 1) and the origin this node;
    the row is inserted or replaces the record with the same key and group, and is
    pushed to `ring`. A TOMB row for an absent record is E_NOT_FOUND. Returns the slot,
    or E_BUSY / E_FULL / E_TOO_LONG.
    row8: uint8[row_size] (modified: version and origin are filled in).
    """
    t = views(arena)
    if blob_used(t, row8, 0) > t.row - t.fixed:
        return E_TOO_LONG
    key = row8[R_KEY:R_KEY + 8].view(np.uint64)[0]
    group = row8[R_GROUP:R_GROUP + 8].view(np.uint64)[0]
    home = home_of(t, group)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return E_BUSY
    found, free, hi, status = scan_locked(t, home, key, group, me, lo)
    result = status
    if status == 0:
        version = now_ms << 16
        if found >= 0:
            if r_version(t, found) >= version:
                version = r_version(t, found) + 1
            target = found
        elif row8[R_STATE] == ST_TOMB:
            target = E_NOT_FOUND
        elif t.h[H_LIVE] + t.h[H_TOMB] >= t.capacity or free < 0:
            target = E_FULL
        else:
            target = free
        if target >= 0:
            row8[R_VERSION:R_VERSION + 8].view(np.int64)[0] = version
            row8[R_ORIGIN:R_ORIGIN + 2].view(np.uint16)[0] = t.node_id
            write_row(t, ring, proc, target, row8, 0, t.row, key)
        result = target
    unlock_regions(t, lo, hi)
    return result


@njit(cache=True)
def table_put_batch(arena, ring, rows, n, now_ms, me, proc, out):
    """table_put for rows[i*row_size:(i+1)*row_size], i < n; out[i] = result.
    Stops early on E_BUSY (out[i] = E_BUSY); returns how many were processed."""
    t = views(arena)
    row = t.row
    for i in range(n):
        r = table_put(arena, ring, rows[i * row:(i + 1) * row], now_ms, me, proc)
        out[i] = r
        if r == E_BUSY:
            return i
    return n


@njit(cache=True)
def apply_entry(t, buf, off, length, now_s, tomb_ttl_s, me, proc, ring):
    """Apply one remote row (wire entry at buf[off:off+length], header included) if its
    (version, origin) is newer than ours. Returns the slot, E_STALE, E_BUSY, E_FULL,
    E_TOO_LONG or E_CORRUPT. Not pushed to a ring unless `ring` has capacity."""
    rb = off + ENTRY_HEADER
    nbytes = length - ENTRY_HEADER
    if nbytes < t.fixed:
        return E_CORRUPT
    used = blob_used(t, buf, rb)
    if t.fixed + used > nbytes:
        return E_CORRUPT
    if used > t.row - t.fixed:
        return E_TOO_LONG
    state = buf[rb + R_STATE]
    if state != ST_LIVE and state != ST_TOMB:
        return E_CORRUPT
    key = buf[rb + R_KEY:rb + R_KEY + 8].view(np.uint64)[0]
    group = buf[rb + R_GROUP:rb + R_GROUP + 8].view(np.uint64)[0]
    if key <= K_FREE:
        return E_CORRUPT
    version = buf[rb + R_VERSION:rb + R_VERSION + 8].view(np.int64)[0]
    origin = np.int64(buf[rb + R_ORIGIN:rb + R_ORIGIN + 2].view(np.uint16)[0])
    expires = np.int64(buf[rb + R_EXPIRES:rb + R_EXPIRES + 4].view(np.uint32)[0])
    home = home_of(t, group)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return E_BUSY
    found, free, hi, status = scan_locked(t, home, key, group, me, lo)
    result = status
    if status == 0:
        if found >= 0:
            sv = r_version(t, found)
            if version < sv or (version == sv and origin <= r_origin(t, found)):
                result = E_STALE
            else:
                result = found
        elif (state == ST_LIVE and expires <= now_s) or (
                state == ST_TOMB and expires + tomb_ttl_s <= now_s):
            result = E_STALE  # already gone here: nothing to remember
        elif t.h[H_LIVE] + t.h[H_TOMB] >= t.capacity or free < 0:
            result = E_FULL
        else:
            result = free
        if result >= 0:
            write_row(t, ring, proc, result, buf, rb, t.fixed + used, key)
    unlock_regions(t, lo, hi)
    return result


@njit(cache=True)
def apply_entries(ct_arena, dl_arena, buf, nbytes, now_s, tomb_ttl_s, me, proc, ring,
                  counts):
    """Apply a batch of wire entries (replication or sync chunk) to the contact and
    dialog tables. counts: int64[8] accumulates [applied, stale, too_long, full, busy
    retried, entries, checksum (wrapping sum of row_checksum), corrupt]. Returns the
    byte offset reached (== nbytes unless an entry is corrupt: then counts[7] = 1)."""
    ct = views(ct_arena)
    dl = views(dl_arena)
    off = 0
    while off < nbytes:
        if nbytes - off < ENTRY_HEADER:
            counts[7] = 1
            return off
        length = np.int64(buf[off:off + 4].view(np.uint32)[0])
        kind = buf[off + 4:off + 6].view(np.uint16)[0]
        if length < ENTRY_HEADER or length & 7 or off + length > nbytes:
            counts[7] = 1
            return off
        if kind == ct.kind:
            t = ct
        elif kind == dl.kind:
            t = dl
        else:
            counts[7] = 1
            return off
        r = apply_entry(t, buf, off, length, now_s, tomb_ttl_s, me, proc, ring)
        if r == E_BUSY:
            counts[4] += 1
            return off  # the caller yields, then calls again from `off`
        if r == E_CORRUPT:
            counts[7] = 1
            return off
        rb = off + ENTRY_HEADER
        counts[5] += 1
        counts[6] += np.int64(row_checksum(
            buf[rb:rb + 8].view(np.uint64)[0],
            buf[rb + R_VERSION:rb + R_VERSION + 8].view(np.int64)[0],
            buf[rb + R_ORIGIN:rb + R_ORIGIN + 2].view(np.uint16)[0]))
        if r >= 0:
            counts[0] += 1
        elif r == E_STALE:
            counts[1] += 1
        elif r == E_TOO_LONG:
            counts[2] += 1
        elif r == E_FULL:
            counts[3] += 1
        off += length
    return off


@njit(cache=True)
def read_row(t, s, out8, out_off):
    """Copy slot s's row into out8 consistently (seqlock). Returns its key (EMPTY/FREE
    if the slot holds no record any more, or stayed locked past the spin budget)."""
    for _ in range(SPINS * 16):
        s1 = atomic_load(t.seq, s)
        if s1 & 1:
            cpu_relax()
            continue
        k = atomic_load(t.keys, s)
        if k > K_FREE:
            out8[out_off:out_off + t.row] = t.rows8[s * t.row:(s + 1) * t.row]
        fence()
        if t.seq[s] == s1:
            return k
    return K_FREE  # a writer died inside this slot: absent until the master repairs it


@njit(cache=True)
def table_find(arena, key, group):
    """Slot of the record (LIVE or TOMB) with this key and group, or E_NOT_FOUND.
    Lock-free; the answer may be stale by the time the caller uses it."""
    t = views(arena)
    s = home_of(t, group)
    while s < t.nslots:
        k = atomic_load(t.keys, s)
        if k == K_EMPTY:
            return E_NOT_FOUND
        if k == key and r_group(t, s) == group:
            return s
        s += 1
    return E_NOT_FOUND


@njit(cache=True)
def table_find_batch(arena, keys, groups, out_versions):
    """Look up n records; out_versions[i] = version read under the seqlock, or -1.
    Returns how many were found."""
    t = views(arena)
    found = 0
    for i in range(keys.shape[0]):
        key, group = keys[i], groups[i]
        out_versions[i] = -1
        s = home_of(t, group)
        while s < t.nslots:
            k = t.keys[s]
            if k == K_EMPTY:
                break
            if k == key:
                while True:
                    s1 = atomic_load(t.seq, s)
                    g = r_group(t, s)
                    v = r_version(t, s)
                    kk = r_key(t, s)
                    fence()
                    if not s1 & 1 and t.seq[s] == s1:
                        break
                    cpu_relax()
                if kk == key and g == group:
                    out_versions[i] = v
                    found += 1
                    break
            s += 1
    return found


@njit(cache=True)
def table_group(arena, group, ident, ident_len, live_only, out8, max_rows):
    """Copy the rows of a group (whose string 0 equals ident[:ident_len]) into out8,
    consistently. Returns how many (at most max_rows). Lock-free."""
    t = views(arena)
    s = home_of(t, group)
    n = 0
    while s < t.nslots and n < max_rows:
        k = atomic_load(t.keys, s)
        if k == K_EMPTY:
            break
        if k > K_FREE and r_group(t, s) == group:
            at = n * t.row
            if read_row(t, s, out8, at) > K_FREE:
                off, ln = seg_span(t, out8, at, 0)
                same = (ln == ident_len and bytes_equal(out8, off, ident, 0, ln)
                        and out8[at + R_KEY:at + R_KEY + 8].view(np.uint64)[0] == k)
                if same and (not live_only or out8[at + R_STATE] == ST_LIVE):
                    n += 1
        s += 1
    return n


@njit(cache=True)
def table_scan(arena, start, live_only, out8, max_rows, out_slots):
    """Copy up to max_rows records from slot `start` on, in slot order. Returns
    (next start slot (nslots when done), rows copied)."""
    t = views(arena)
    s = start
    n = 0
    while s < t.nslots and n < max_rows:
        if t.keys[s] > K_FREE:
            at = n * t.row
            if read_row(t, s, out8, at) > K_FREE and (
                    not live_only or out8[at + R_STATE] == ST_LIVE):
                out_slots[n] = s
                n += 1
        s += 1
    return s, n


@njit(cache=True)
def table_gather(arena, start, out, max_bytes, counts):
    """Sync donor: write records from slot `start` on as wire entries into out (up to
    max_bytes). counts: int64[2] += [entries, checksum]. Returns the next slot."""
    t = views(arena)
    s = start
    off = 0
    while s < t.nslots:
        if t.keys[s] > K_FREE:
            need = (ENTRY_HEADER + t.row + 7) & ~7
            if off + need > max_bytes:
                break
            k = read_row(t, s, out, off + ENTRY_HEADER)
            if k > K_FREE:
                rb = off + ENTRY_HEADER
                nbytes = t.fixed + blob_used(t, out, rb)
                length = (ENTRY_HEADER + nbytes + 7) & ~7
                out[off:off + 4].view(np.uint32)[0] = length
                out[off + 4:off + 6].view(np.uint16)[0] = t.kind
                out[off + 6:off + 8].view(np.uint16)[0] = 0
                out[rb + nbytes:off + length] = 0
                counts[0] += 1
                counts[1] += np.int64(row_checksum(
                    k, out[rb + R_VERSION:rb + R_VERSION + 8].view(np.int64)[0],
                    out[rb + R_ORIGIN:rb + R_ORIGIN + 2].view(np.uint16)[0]))
                off += length
        s += 1
    return s, off


@njit(cache=True)
def table_since(arena, start, min_version, origin, out, max_bytes):
    """Gap repair: like table_gather, but only rows of `origin` with version >=
    min_version. Returns (next slot, bytes)."""
    t = views(arena)
    s = start
    off = 0
    while s < t.nslots:
        if t.keys[s] > K_FREE and r_version(t, s) >= min_version and r_origin(t, s) == origin:
            need = (ENTRY_HEADER + t.row + 7) & ~7
            if off + need > max_bytes:
                break
            if read_row(t, s, out, off + ENTRY_HEADER) > K_FREE:
                rb = off + ENTRY_HEADER
                nbytes = t.fixed + blob_used(t, out, rb)
                length = (ENTRY_HEADER + nbytes + 7) & ~7
                out[off:off + 4].view(np.uint32)[0] = length
                out[off + 4:off + 6].view(np.uint16)[0] = t.kind
                out[off + 6:off + 8].view(np.uint16)[0] = 0
                out[rb + nbytes:off + length] = 0
                off += length
        s += 1
    return s, off


@njit(cache=True)
def table_expire(arena, first_region, nregions, now_s, tomb_ttl_s, me, out):
    """Timer pass over lock regions [first_region, first_region + nregions): LIVE rows
    whose expiry passed and tombstones older than tomb_ttl_s become FREE (locally; not
    replicated: every node expires by the same absolute time), then FREE slots followed
    by EMPTY become EMPTY. out: int64[3] += [expired, tombs purged, slots emptied].
    Returns the next region (0 after the last), or E_BUSY with nothing half-done."""
    t = views(arena)
    nreg = t.h[H_NREGIONS]
    r = first_region
    end = min(nreg, first_region + nregions)
    while r < end:
        if not lock_region(t, r, me):
            return E_BUSY
        lo = r << t.shift
        hi = min(t.nslots, (r + 1) << t.shift)
        for s in range(lo, hi):
            k = t.keys[s]
            if k <= K_FREE:
                continue
            st = r_state(t, s)
            ex = r_expires(t, s)
            if (st == ST_LIVE and ex <= now_s) or (st == ST_TOMB and ex + tomb_ttl_s <= now_s):
                atomic_store(t.keys, s, K_FREE)
                atomic_add(t.h, H_FREE, 1)
                count_state(t, st, -1)
                if st == ST_LIVE:
                    out[0] += 1
                else:
                    out[1] += 1
        s = hi - 1
        while s >= lo:
            if t.keys[s] == K_FREE and (s + 1 == t.nslots or t.keys[s + 1] == K_EMPTY):
                atomic_store(t.keys, s, K_EMPTY)
                atomic_add(t.h, H_FREE, -1)
                out[2] += 1
            s -= 1
        unlock_regions(t, r, r)
        r += 1
    return 0 if r >= nreg else r


@njit(cache=True)
def table_digest(arena, live_only):
    """(records, digest): order-independent over (key, version, origin); equal on nodes
    holding the same data."""
    t = views(arena)
    n = 0
    d = np.uint64(0)
    for s in range(t.nslots):
        k = t.keys[s]
        if k > K_FREE and (not live_only or r_state(t, s) == ST_LIVE):
            n += 1
            d += row_checksum(k, r_version(t, s), r_origin(t, s))
    return n, d


@njit(cache=True)
def table_count_groups(arena):
    """Distinct groups with at least one LIVE record (registered AORs)."""
    t = views(arena)
    n = 0
    for s in range(t.nslots):
        if t.keys[s] > K_FREE and r_state(t, s) == ST_LIVE:
            g = r_group(t, s)
            first = True
            p = home_of(t, g)
            while p < s:
                if t.keys[p] > K_FREE and r_state(t, p) == ST_LIVE and r_group(t, p) == g:
                    a, la = seg_span(t, t.rows8, p * t.row, 0)
                    b, lb = seg_span(t, t.rows8, s * t.row, 0)
                    if la == lb and bytes_equal(t.rows8, a, t.rows8, b, la):
                        first = False
                        break
                p += 1
            if first:
                n += 1
    return n


@njit(cache=True)
def table_recount(arena):
    """Recompute the live/tomb/free counters from the slots (after a repair)."""
    t = views(arena)
    live = tomb = free = 0
    for s in range(t.nslots):
        k = t.keys[s]
        if k == K_FREE:
            free += 1
        elif k > K_FREE:
            st = r_state(t, s)
            if st == ST_LIVE:
                live += 1
            elif st == ST_TOMB:
                tomb += 1
    atomic_store(t.h, H_LIVE, live)
    atomic_store(t.h, H_TOMB, tomb)
    atomic_store(t.h, H_FREE, free)


@njit(cache=True)
def table_repair(arena, ring, pid, proc):
    """Undo what a dead process (pid, process slot proc) left in flight, free its locks
    and recount. Call only after the process was reaped. Returns
    (1 if a torn row was restored / 2 if a finished row was re-pushed / 0, locks freed).
    ring: the dead process's ring region (this caller becomes its producer)."""
    t = views(arena)
    fixed = 0
    usz = t.h[H_UNDO_SIZE]
    u = t.undo[proc * usz:(proc + 1) * usz]
    w = u[:UNDO_ROW_AT].view(np.int64)
    if w[0] == 1:
        s = w[1]
        if t.seq[s] & 1:
            t.rows8[s * t.row:(s + 1) * t.row] = u[UNDO_ROW_AT:UNDO_ROW_AT + t.row]
            atomic_store(t.keys, s, u[16:24].view(np.uint64)[0])
            atomic_store(t.seq, s, t.seq[s] + np.uint32(1))
            fixed = 1
        else:
            push_row(t, ring, s)
            fixed = 2
        atomic_store(w, 0, 0)
    freed = 0
    for r in range(t.h[H_NREGIONS]):
        word = atomic_load(t.locks, r * LOCK_STRIDE)
        if word != 0 and (word >> 32) == pid:
            atomic_store(t.locks, r * LOCK_STRIDE, 0)
            freed += 1
    table_recount(arena)
    return fixed, freed


def lock_word(pid: int, proc: int) -> int:
    """The value a process writes into a lock word it holds."""
    return (pid << 32) | proc


def counters(buf: np.ndarray) -> dict[str, int]:
    h = buf[:HEADER_SIZE].view(np.int64)
    return {"live": int(h[H_LIVE]), "tomb": int(h[H_TOMB]), "free": int(h[H_FREE]),
            "capacity": int(h[H_CAPACITY]), "slots": int(h[H_NSLOTS])}
