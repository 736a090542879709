"""The contact (user location) table: row layout, request packing, and the REGISTER kernel.

`ul_register` applies one REGISTER to an AOR atomically (RFC 3261 §10.3 steps 6-8)
under the AOR's region lock: it validates every binding first (Call-ID/CSeq ordering,
max_contacts, capacity, widths, identity), then commits them all, pushes each changed
row to the worker's replication ring, and writes the `Contact:` lines of the 200 OK.
A binding removed with expires 0 always becomes a tombstone, even one this node never
had, so no copy of it elsewhere (or in a later sync) can bring it back.
Expires arithmetic, Min-Expires and clamping are done by the caller
(services.registrar) before packing. Neighbours: shm.table (generic engine),
services.registrar (SIP side), services.usrloc (MI).

Contact row (fixed part; the blob follows):

    offset  size  field
    0       8     key: record identity hash (>= 2)
    8       8     group: group hash: picks the home slot
    16      8     version: hybrid logical clock: ms << 16 | counter
    24      4     expires: absolute unix seconds (TOMB: deletion time)
    28      1     state: 1 LIVE, 2 TOMB
    29      1     aux: table-specific byte
    30      2     origin: node id that made this version
    32      4     last_modified: unix seconds of the last REGISTER
    36      4     cseq: CSeq number of that REGISTER
    40      4     reg_id: RFC 5626 reg-id (0: none)
    44      4     methods: bitmask of supported methods (0: unknown)
    48      4     flags: FLAG_* bits (NAT, ...)
    52      2     q: q value in per mille (0xFFFF: none)
    54      2     recv_port: source port of the REGISTER when NAT-ed
    56      1     recv_family: 4 or 6 when recv_addr is set, else 0
    57      16    recv_addr: source address (IPv4 in the first 4 bytes)
    74      12    lens: u16 lengths of: aor, uri, callid, user_agent, path, instance
    88      ...   string blob (usrloc/dialog record_bytes)

Binding identity (the row key): hash of (+sip.instance, reg-id) when the contact has a
+sip.instance (RFC 5626), else of the normalised contact URI, seeded by the AOR hash;
its low PARTITION_BITS are the AOR hash's (the contact's ping partition, shm.partitions,
is read from the key array without touching the row).

REGISTER request buffer (`pack_register`): REQ_WORDS int64 words (the last two hold the
source address; Q_MODE the MODE_* bits), the strings AOR,
Call-ID, User-Agent, Path from byte REQ_STRINGS, then per contact (8-aligned) CON_WORDS
int64 words (uri_len, instance_len, expires (s, 0 removes), q (per mille, -1 none),
reg_id, methods (-1: the request's), flags) then the URI and instance bytes.
Output buffer: int64 words [status, live bindings, text bytes, rows written], the
Contact header lines from byte OUT_TEXT.
"""
from __future__ import annotations

import struct

import numpy as np
from numba import njit

from fastcluster.shm.atomics import unmanaged
from fastcluster.shm.hashing import as_key, group_hash, group_hash_of, hash_bytes, key_hash_of, \
    mix64
from fastcluster.shm.rows import RowLayout
from fastcluster.shm.table import (
    E_BUSY,
    E_COLLISION,
    E_FULL,
    E_TOO_LONG,
    H_LIVE,
    H_TOMB,
    K_FREE,
    R_AUX,
    R_EXPIRES,
    R_GROUP,
    R_KEY,
    R_STATE,
    ST_LIVE,
    ST_TOMB,
    blob_used,
    bytes_equal,
    hlc_version,
    home_of,
    lock_region,
    next_version,
    publish_counts,
    r_state,
    rbase,
    r_version,
    scan_locked,
    seg_span,
    unlock_regions,
    views,
    write_row,
)

KIND_CONTACTS = 1

CONTACT = RowLayout(
    name="contact",
    kind=KIND_CONTACTS,
    fields=(
        ("last_modified", "<u4", "unix seconds of the last REGISTER"),
        ("cseq", "<u4", "CSeq number of that REGISTER"),
        ("reg_id", "<u4", "RFC 5626 reg-id (0: none)"),
        ("methods", "<u4", "bitmask of supported methods (0: unknown)"),
        ("flags", "<u4", "FLAG_* bits (NAT, ...)"),
        ("q", "<u2", "q value in per mille (0xFFFF: none)"),
        ("recv_port", "<u2", "source port of the REGISTER when NAT-ed"),
        ("recv_family", "u1", "4 or 6 when recv_addr is set, else 0"),
        ("recv_addr", "V16", "source address (IPv4 in the first 4 bytes)"),
    ),
    strings=("aor", "uri", "callid", "user_agent", "path", "instance"),
    aux_name="sock",
    order=("cseq", "callid"),
)

S_AOR, S_URI, S_CALLID, S_UA, S_PATH, S_INSTANCE = range(6)
PARTITION_BITS = 16  # shm.control.MAX_PARTITIONS == 1 << PARTITION_BITS
PARTITION_MASK = np.uint64((1 << PARTITION_BITS) - 1)
FLAG_NAT = 1  # source address differs from the Contact (fix_nated_register)
Q_NONE = 0xFFFF

_D = CONTACT.dtype
O_LASTMOD, O_CSEQ, O_REGID = (_D.fields[n][1] for n in ("last_modified", "cseq", "reg_id"))
O_METHODS, O_FLAGS, O_Q = (_D.fields[n][1] for n in ("methods", "flags", "q"))
O_RPORT, O_RFAM, O_RADDR = (_D.fields[n][1] for n in ("recv_port", "recv_family", "recv_addr"))
O_LENS = CONTACT.lens_off
FIXED = CONTACT.fixed_size

# request buffer
REQ_WORDS = 18
(Q_NCONTACTS, Q_CSEQ, Q_NOW_S, Q_NOW_MS, Q_MAX_CONTACTS, Q_WILDCARD, Q_RFAM, Q_RPORT,
 Q_SOCK, Q_FLAGS, Q_AOR_LEN, Q_CALLID_LEN, Q_UA_LEN, Q_PATH_LEN, Q_METHODS, Q_MODE) = range(16)
# Q_MODE bits. RETRANS_ONLY: apply nothing, answer only if the request is a
# retransmission of one already applied (same Call-ID and CSeq as a binding), else
# REG_E_NOT_RETRANS. The registrar uses it for a digest answer whose nonce count was
# seen: a lost 200's retransmission is answered again, a replay changes nothing.
MODE_RETRANS_ONLY = 1
REQ_ADDR = 8 * 16  # 16 bytes of source address (words 16, 17)
REQ_STRINGS = 8 * REQ_WORDS
CON_WORDS = 7
_REQ_HEAD = struct.Struct(f"<{REQ_WORDS - 2}q16s")
_CON_HEAD = struct.Struct(f"<{CON_WORDS}q")
OUT_TEXT = 64

# A worker's work buffer for ul_register, one array so the kernel call passes few
# arguments: the packed request, the output (status words + Contact lines), a row to
# build in, and scratch words for up to MAX_REQ_CONTACTS contacts.
MAX_REQ_CONTACTS = 1024
WORK_REQ, WORK_OUT, WORK_ROW, WORK_SCRATCH = 0, 1 << 16, 5 << 16, 6 << 16
WORK_BYTES = WORK_SCRATCH + 3 * 8 * MAX_REQ_CONTACTS

# register results beyond the table ones
REG_OK = 0
REG_E_CSEQ = -20  # same Call-ID, lower CSeq: the request fails (§10.3 step 7)
REG_E_TOO_MANY = -21  # more than max_contacts bindings
REG_E_OUT_SPACE = -22  # reply text does not fit the output buffer
REG_E_NOT_RETRANS = -23  # MODE_RETRANS_ONLY and the request is not a retransmission


def pack_register(req: np.ndarray, mv: memoryview, aor: bytes, callid: bytes,
                  cseq: int, user_agent: bytes, path: bytes, now_s: int, now_ms: int,
                  max_contacts: int, wildcard: bool, recv_family: int, recv_port: int,
                  recv_addr: bytes, sock: int, flags: int, methods: int,
                  contacts: list[tuple[bytes, bytes, int, int, int, int, int]],
                  mode: int = 0) -> int:
    """Write a REGISTER into req (the work buffer's request part; mv = memoryview of it).
    contacts are (uri, instance, expires, q, reg_id, methods, flags). Returns bytes
    used, or -1 when it does not fit (the caller answers 500, nothing was written).
    The hot path calls it with positional arguments (keywords cost a microsecond)."""
    pos = REQ_STRINGS
    end = pos + len(aor) + len(callid) + len(user_agent) + len(path)
    for uri, inst, *_ in contacts:
        end = (end + 7) & ~7
        end += 8 * CON_WORDS + len(uri) + len(inst)
    if end > len(req):
        return -1
    _REQ_HEAD.pack_into(mv, 0, len(contacts), cseq, now_s, now_ms, max_contacts,
                        1 if wildcard else 0, recv_family, recv_port, sock, flags,
                        len(aor), len(callid), len(user_agent), len(path), methods, mode,
                        recv_addr)
    for s in (aor, callid, user_agent, path):
        mv[pos:pos + len(s)] = s
        pos += len(s)
    for uri, inst, expires, q, reg_id, cmethods, cflags in contacts:
        pos = (pos + 7) & ~7
        _CON_HEAD.pack_into(mv, pos, len(uri), len(inst), expires, q, reg_id, cmethods,
                            cflags)
        pos += 8 * CON_WORDS
        mv[pos:pos + len(uri)] = uri
        pos += len(uri)
        mv[pos:pos + len(inst)] = inst
        pos += len(inst)
    return pos


# ---------------------------------------------------------------- kernel helpers


@njit(cache=True, inline="always")
def _put_uint(out, pos, value):
    """Decimal of value >= 0 at out[pos:]; returns the new position (or -1 if full)."""
    digits = 1
    v = value
    while v >= 10:
        v //= 10
        digits += 1
    if pos + digits > out.shape[0]:
        return -1
    v = value
    for i in range(digits - 1, -1, -1):
        out[pos + i] = 48 + v % 10
        v //= 10
    return pos + digits


@njit(cache=True, inline="always")
def _put_bytes(out, pos, src, off, n):
    if pos < 0 or pos + n > out.shape[0]:
        return -1
    out[pos:pos + n] = src[off:off + n]
    return pos + n


@njit(cache=True)
def _put_lit(out, pos, lit):
    """Write an ASCII literal (given as a uint8 array)."""
    return _put_bytes(out, pos, lit, 0, lit.shape[0])


@njit(cache=True, inline="always")
def _put_q(out, pos, q):
    """q in per mille as the shortest decimal: 1000 -> 1, 500 -> 0.5, 5 -> 0.005."""
    if pos < 0 or pos + 5 > out.shape[0]:
        return -1
    if q >= 1000:
        out[pos] = 49
        return pos + 1
    out[pos] = 48
    if q == 0:
        return pos + 1
    out[pos + 1] = 46
    p = pos + 2
    div = 100
    rest = q
    while rest > 0:
        out[p] = 48 + rest // div
        rest %= div
        div //= 10
        p += 1
    return p


@njit(cache=True, inline="always")
def _con_offsets(req, ncontacts, out_offsets):
    """Byte offsets of each contact block in req."""
    w = req[:REQ_STRINGS].view(np.int64)
    pos = REQ_STRINGS + w[Q_AOR_LEN] + w[Q_CALLID_LEN] + w[Q_UA_LEN] + w[Q_PATH_LEN]
    for i in range(ncontacts):
        pos = (pos + 7) & ~7
        out_offsets[i] = pos
        cw = req[pos:pos + 8 * CON_WORDS].view(np.int64)
        pos += 8 * CON_WORDS + cw[0] + cw[1]


@njit(cache=True, inline="always")
def with_partition(h, group):
    """A binding's key: its own hash with the low PARTITION_BITS taken from its AOR's
    group hash, so the key array alone tells a contact's ping partition."""
    return as_key((h & ~PARTITION_MASK) | (group & PARTITION_MASK))


@njit(cache=True, inline="always")
def _binding_key(req, cpos, group):
    cw = req[cpos:cpos + 8 * CON_WORDS].view(np.int64)
    uri_len, inst_len, reg_id = cw[0], cw[1], cw[4]
    b = cpos + 8 * CON_WORDS
    if inst_len > 0:
        seed = group ^ mix64(np.uint64(reg_id) + np.uint64(0x1D))
        return with_partition(hash_bytes(req, b + uri_len, inst_len, seed), group)
    return with_partition(hash_bytes(req, b, uri_len, group), group)


@njit(cache=True, inline="always")
def _same_binding(t, s, req, aor_off, aor_len, cpos):
    """Whether slot s holds this AOR's binding given by the contact at cpos (bytes)."""
    base = rbase(t, s)
    off, ln = seg_span(t, t.rows8, base, S_AOR)
    if ln != aor_len or not bytes_equal(t.rows8, off, req, aor_off, aor_len):
        return False
    cw = req[cpos:cpos + 8 * CON_WORDS].view(np.int64)
    b = cpos + 8 * CON_WORDS
    if cw[1] > 0:
        off, ln = seg_span(t, t.rows8, base, S_INSTANCE)
        reg = t.rows32[(base + O_REGID) >> 2]
        return (ln == cw[1] and bytes_equal(t.rows8, off, req, b + cw[0], ln)
                and np.int64(reg) == cw[4])
    off, ln = seg_span(t, t.rows8, base, S_URI)
    _, iln = seg_span(t, t.rows8, base, S_INSTANCE)
    return iln == 0 and ln == cw[0] and bytes_equal(t.rows8, off, req, b, ln)


@njit(cache=True, inline="always")
def _is_member(t, s, group, req, aor_off, aor_len):
    if t.keys[s] <= K_FREE or t.rows64[(rbase(t, s) + R_GROUP) >> 3] != group:
        return False
    off, ln = seg_span(t, t.rows8, rbase(t, s), S_AOR)
    return ln == aor_len and bytes_equal(t.rows8, off, req, aor_off, aor_len)


@njit(cache=True, inline="always")
def _same_callid(t, s, req, cid_off, cid_len):
    off, ln = seg_span(t, t.rows8, rbase(t, s), S_CALLID)
    return ln == cid_len and bytes_equal(t.rows8, off, req, cid_off, cid_len)


@njit(cache=True, inline="always")
def _build_row(t, row, req, cpos, key, group, now_s):
    """A LIVE contact row for the contact at cpos, in row (uint8[row_size])."""
    w = req[:REQ_STRINGS].view(np.int64)
    cw = req[cpos:cpos + 8 * CON_WORDS].view(np.int64)
    row[:t.fixed] = 0
    row[R_KEY:R_KEY + 8].view(np.uint64)[0] = key
    row[R_GROUP:R_GROUP + 8].view(np.uint64)[0] = group
    row[R_STATE] = ST_LIVE
    row[R_EXPIRES:R_EXPIRES + 4].view(np.uint32)[0] = now_s + cw[2]
    row[R_AUX] = w[Q_SOCK]
    row[O_LASTMOD:O_LASTMOD + 4].view(np.uint32)[0] = now_s
    row[O_CSEQ:O_CSEQ + 4].view(np.uint32)[0] = w[Q_CSEQ]
    row[O_REGID:O_REGID + 4].view(np.uint32)[0] = cw[4]
    row[O_METHODS:O_METHODS + 4].view(np.uint32)[0] = w[Q_METHODS] if cw[5] < 0 else cw[5]
    row[O_FLAGS:O_FLAGS + 4].view(np.uint32)[0] = w[Q_FLAGS] | cw[6]
    row[O_Q:O_Q + 2].view(np.uint16)[0] = Q_NONE if cw[3] < 0 else cw[3]
    row[O_RPORT:O_RPORT + 2].view(np.uint16)[0] = w[Q_RPORT]
    row[O_RFAM] = w[Q_RFAM]
    row[O_RADDR:O_RADDR + 16] = req[REQ_ADDR:REQ_ADDR + 16]
    lens = row[O_LENS:O_LENS + 12].view(np.uint16)
    aor_off = REQ_STRINGS
    cid_off = aor_off + w[Q_AOR_LEN]
    ua_off = cid_off + w[Q_CALLID_LEN]
    path_off = ua_off + w[Q_UA_LEN]
    b = cpos + 8 * CON_WORDS
    p = t.fixed
    # order of CONTACT.strings: aor, uri, callid, user_agent, path, instance
    for i, (src, n) in enumerate(((aor_off, w[Q_AOR_LEN]), (b, cw[0]),
                                  (cid_off, w[Q_CALLID_LEN]), (ua_off, w[Q_UA_LEN]),
                                  (path_off, w[Q_PATH_LEN]), (b + cw[0], cw[1]))):
        lens[i] = n
        row[p:p + n] = req[src:src + n]
        p += n


# Constant byte strings: numba freezes these global arrays into the compiled code.
_LIT_CONTACT = np.frombuffer(b"Contact: <", dtype=np.uint8)
_LIT_EXPIRES = np.frombuffer(b">;expires=", dtype=np.uint8)
_LIT_Q = np.frombuffer(b";q=", dtype=np.uint8)
_LIT_INST = np.frombuffer(b';+sip.instance="', dtype=np.uint8)
_LIT_REGID = np.frombuffer(b'";reg-id=', dtype=np.uint8)
_LIT_QUOTE = np.frombuffer(b'"', dtype=np.uint8)
_LIT_CRLF = np.frombuffer(b"\r\n", dtype=np.uint8)


@njit(cache=True, inline="always")
def _contact_line(t, s, now_s, out, pos):
    """`Contact: <uri>;expires=N[;q=..][;+sip.instance="..."[;reg-id=N]]` CRLF."""
    base = rbase(t, s)
    off, ln = seg_span(t, t.rows8, base, S_URI)
    pos = _put_bytes(out, pos, _LIT_CONTACT, 0, _LIT_CONTACT.shape[0])
    pos = _put_bytes(out, pos, t.rows8, off, ln)
    pos = _put_bytes(out, pos, _LIT_EXPIRES, 0, _LIT_EXPIRES.shape[0])
    left = np.int64(t.rows32[(base + R_EXPIRES) >> 2]) - now_s
    if pos >= 0:
        pos = _put_uint(out, pos, left if left > 0 else 0)
    q = t.rows16[(base + O_Q) >> 1]
    if q != Q_NONE:
        pos = _put_bytes(out, pos, _LIT_Q, 0, _LIT_Q.shape[0])
        pos = _put_q(out, pos, np.int64(q))
    ioff, iln = seg_span(t, t.rows8, base, S_INSTANCE)
    if iln > 0:
        pos = _put_bytes(out, pos, _LIT_INST, 0, _LIT_INST.shape[0])
        pos = _put_bytes(out, pos, t.rows8, ioff, iln)
        reg = np.int64(t.rows32[(base + O_REGID) >> 2])
        if reg > 0:
            pos = _put_bytes(out, pos, _LIT_REGID, 0, _LIT_REGID.shape[0])
            if pos >= 0:
                pos = _put_uint(out, pos, reg)
        else:
            pos = _put_bytes(out, pos, _LIT_QUOTE, 0, 1)
    return _put_bytes(out, pos, _LIT_CRLF, 0, 2)


@njit(cache=True, inline="always")
def _reserve(t, home, count, me, hi):
    """Lock every region up to the count-th FREE/EMPTY slot from home, so that count
    inserts into this run cannot meet a busy lock halfway. Returns (hi, status)."""
    s = home
    while count > 0:
        if s >= t.nslots:
            return hi, E_FULL
        r = s >> t.shift
        if r > hi:
            if not lock_region(t, r, me):
                return hi, E_BUSY
            hi = r
        if t.keys[s] <= K_FREE:
            count -= 1
        s += 1
    return hi, 0


@njit(cache=True)
def _register(t, ring, req, out, row, me, proc, offs, keys, found):
    w = req[:REQ_STRINGS].view(np.int64)
    o = out[:OUT_TEXT].view(np.int64)
    o[0] = 0
    o[1] = 0
    o[2] = 0
    o[3] = 0
    n = w[Q_NCONTACTS]
    now_s, now_ms = w[Q_NOW_S], w[Q_NOW_MS]
    aor_off, aor_len = REQ_STRINGS, w[Q_AOR_LEN]
    cid_off, cid_len = aor_off + aor_len, w[Q_CALLID_LEN]
    cseq = w[Q_CSEQ]
    group = group_hash(req, aor_off, aor_len)
    home = home_of(t, group)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return E_BUSY
    # Lock the whole run of this AOR (the probe for key 0 never matches).
    _, _, hi, status = scan_locked(t, home, np.uint64(0), group, me, lo)
    if status != 0:
        unlock_regions(t, lo, hi)
        return status
    _con_offsets(req, n, offs)
    common = aor_len + cid_len + w[Q_UA_LEN] + w[Q_PATH_LEN]
    # A binding of this Call-ID with a higher CSeq makes the request fail; one with the
    # same CSeq means this is a retransmission of a request already applied (there is no
    # transaction layer to absorb it): change nothing and list the bindings again.
    live_now = 0
    retrans = False
    s = home
    while s < t.nslots and t.keys[s] != 0:
        if _is_member(t, s, group, req, aor_off, aor_len) and r_state(t, s) == ST_LIVE:
            live_now += 1
            if w[Q_WILDCARD] and _same_callid(t, s, req, cid_off, cid_len):
                stored = np.int64(t.rows32[(rbase(t, s) + O_CSEQ) >> 2])
                if stored > cseq:
                    unlock_regions(t, lo, hi)
                    return REG_E_CSEQ
                if stored == cseq:
                    retrans = True
        s += 1
    # Validate every binding before changing anything (§10.3 step 7: all or nothing).
    adds = 0
    removes = 0
    inserts = 0
    for i in range(n):
        cpos = offs[i]
        cw = req[cpos:cpos + 8 * CON_WORDS].view(np.int64)
        if common + cw[0] + cw[1] > t.body - t.fixed:
            unlock_regions(t, lo, hi)
            return E_TOO_LONG
        keys[i] = _binding_key(req, cpos, group)
        f, free, hi, status = scan_locked(t, home, keys[i], group, me, hi)
        if status != 0:
            unlock_regions(t, lo, hi)
            return status
        found[i] = f
        dup = False
        for j in range(i):
            if keys[j] == keys[i]:
                dup = True
        if f >= 0:
            if not _same_binding(t, f, req, aor_off, aor_len, cpos):
                unlock_regions(t, lo, hi)
                return E_COLLISION
            # a removed binding's tombstone keeps its CSeq: a late copy of an earlier
            # request of that Call-ID (a retransmission queued, or sent to another node)
            # must not bring it back
            if _same_callid(t, f, req, cid_off, cid_len):
                stored = np.int64(t.rows32[(rbase(t, f) + O_CSEQ) >> 2])
                if stored > cseq:
                    unlock_regions(t, lo, hi)
                    return REG_E_CSEQ
                if stored == cseq:
                    retrans = True
        if dup:
            continue
        live = f >= 0 and r_state(t, f) == ST_LIVE
        if cw[2] == 0:
            if live:
                removes += 1
            if f < 0:
                inserts += 1  # a tombstone even for a binding this node never had
        else:
            if not live:
                adds += 1
            if f < 0:
                inserts += 1
    if w[Q_MODE] & MODE_RETRANS_ONLY and not retrans:
        unlock_regions(t, lo, hi)
        return REG_E_NOT_RETRANS
    if retrans:
        n = 0  # nothing to commit: only list the bindings
        adds = removes = inserts = 0
    elif w[Q_WILDCARD]:
        removes = live_now
    if w[Q_MAX_CONTACTS] > 0 and adds > 0 and live_now - removes + adds > w[Q_MAX_CONTACTS]:
        unlock_regions(t, lo, hi)
        return REG_E_TOO_MANY
    if inserts > 0 and t.h[H_LIVE] + t.h[H_TOMB] + inserts > t.capacity:
        unlock_regions(t, lo, hi)
        return E_FULL
    hi, status = _reserve(t, home, inserts, me, hi)
    if status != 0:
        unlock_regions(t, lo, hi)
        return status
    # Commit.
    written = 0
    if w[Q_WILDCARD] and not retrans:
        s = home
        while s < t.nslots and t.keys[s] != 0:
            if _is_member(t, s, group, req, aor_off, aor_len) and r_state(t, s) == ST_LIVE:
                # a binding of this Call-ID: its tombstone takes the removal's CSeq
                _tombstone(t, ring, proc, s, row, now_s, now_ms,
                           cseq if _same_callid(t, s, req, cid_off, cid_len) else -1)
                written += 1
            s += 1
    for i in range(n):
        cpos = offs[i]
        cw = req[cpos:cpos + 8 * CON_WORDS].view(np.int64)
        # The probe again: an earlier binding of this request may have taken a slot.
        f, free, hi, status = scan_locked(t, home, keys[i], group, me, hi)
        if status != 0:  # cannot happen: every region was reserved above
            unlock_regions(t, lo, hi)
            o[3] = written
            return status
        if cw[2] == 0:
            # Every removal leaves a tombstone newer than any version of the binding,
            # known here or not (a node that has not synced yet must not let a later
            # sync bring the binding back), with this request's Call-ID and CSeq: what
            # orders it against a write of the same binding another node made
            # meanwhile (shm.rows RowLayout.order).
            _build_row(t, row, req, cpos, keys[i], group, now_s)
            row[R_STATE] = ST_TOMB
            row[R_EXPIRES:R_EXPIRES + 4].view(np.uint32)[0] = now_s
            target = free if f < 0 else f
            version = hlc_version(now_ms) if f < 0 else next_version(now_ms, r_version(t, f))
            d_live, d_tomb, d_free = write_row(t, ring, proc, target, row, 0,
                                               t.fixed + blob_used(t, row, 0), keys[i],
                                               version)
            publish_counts(t, d_live, d_tomb, d_free)
            written += 1
            continue
        _build_row(t, row, req, cpos, keys[i], group, now_s)
        version = hlc_version(now_ms)
        target = free
        if f >= 0:
            target = f
            version = next_version(now_ms, r_version(t, f))
        d_live, d_tomb, d_free = write_row(t, ring, proc, target, row, 0,
                                           t.fixed + blob_used(t, row, 0), keys[i], version)
        publish_counts(t, d_live, d_tomb, d_free)
        written += 1
    # The 200 OK lists every current binding with its remaining time.
    pos = OUT_TEXT
    nlive = 0
    s = home
    while s < t.nslots and t.keys[s] != 0:
        if _is_member(t, s, group, req, aor_off, aor_len) and r_state(t, s) == ST_LIVE:
            pos = _contact_line(t, s, now_s, out, pos)
            nlive += 1
            if pos < 0:
                break
        s += 1
    unlock_regions(t, lo, hi)
    o[1] = nlive
    o[3] = written
    if pos < 0:
        return REG_E_OUT_SPACE
    o[2] = pos - OUT_TEXT
    return REG_OK


@njit(cache=True, inline="always")
def _tombstone(t, ring, proc, s, row, now_s, now_ms, cseq=-1):
    """Turn LIVE slot s into a replicated tombstone (its strings, Call-ID and CSeq kept,
    or the CSeq `cseq` when >= 0; expires becomes the deletion time)."""
    base = rbase(t, s)
    row[:t.body] = t.rows8[base:base + t.body]
    version = next_version(now_ms, r_version(t, s))
    if cseq >= 0:
        row[O_CSEQ:O_CSEQ + 4].view(np.uint32)[0] = cseq
    row[R_STATE] = ST_TOMB
    row[R_EXPIRES:R_EXPIRES + 4].view(np.uint32)[0] = now_s
    d_live, d_tomb, d_free = write_row(t, ring, proc, s, row, 0,
                                       t.fixed + blob_used(t, row, 0), t.keys[s], version)
    publish_counts(t, d_live, d_tomb, d_free)


@njit(cache=True)
def ul_register(arena, ring, work, me, proc):
    """Apply one packed REGISTER (see the module doc) from a work buffer
    (uint8[WORK_BYTES], request at WORK_REQ). Returns REG_OK or an error code, also
    written in the output's first word."""
    work = unmanaged(work)
    ring = unmanaged(ring)
    req = work[WORK_REQ:WORK_OUT]
    out = work[WORK_OUT:WORK_ROW]
    row = work[WORK_ROW:WORK_SCRATCH]
    scratch = work[WORK_SCRATCH:WORK_BYTES].view(np.int64)
    n = req[:REQ_STRINGS].view(np.int64)[Q_NCONTACTS]
    t = views(arena)
    status = _register(t, ring, req, out, row, me, proc, scratch[:n],
                       scratch[n:2 * n].view(np.uint64), scratch[2 * n:3 * n])
    out[:8].view(np.int64)[0] = status
    return status


@njit(cache=True)
def ul_remove(arena, ring, aor, aor_len, uri, uri_len, now_ms, me, proc, row):
    """Remove the contacts of an AOR (all, or the one whose URI is uri[:uri_len] when
    uri_len > 0) by turning them into replicated tombstones. Returns how many, or
    E_BUSY / E_FULL."""
    t = views(arena)
    aor, uri, row, ring = unmanaged(aor), unmanaged(uri), unmanaged(row), unmanaged(ring)
    group = group_hash(aor, 0, aor_len)
    home = home_of(t, group)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return E_BUSY
    _, _, hi, status = scan_locked(t, home, np.uint64(0), group, me, lo)
    if status != 0:
        unlock_regions(t, lo, hi)
        return status
    now_s = now_ms // 1000
    removed = 0
    s = home
    while s < t.nslots and t.keys[s] != 0:
        if _is_member(t, s, group, aor, 0, aor_len) and r_state(t, s) == ST_LIVE:
            match = True
            if uri_len > 0:
                off, ln = seg_span(t, t.rows8, rbase(t, s), S_URI)
                match = ln == uri_len and bytes_equal(t.rows8, off, uri, 0, ln)
            if match:
                _tombstone(t, ring, proc, s, row, now_s, now_ms)
                removed += 1
        s += 1
    unlock_regions(t, lo, hi)
    return removed


@njit(cache=True)
def ul_remove_slot(arena, ring, slot, key, now_ms, me, proc, row):
    """Remove the contact at `slot` if it still holds `key` (a NAT-pinged contact that
    stopped answering): a replicated tombstone. Returns 1, 0 (gone already) or E_BUSY."""
    t = views(arena)
    ring, row = unmanaged(ring), unmanaged(row)
    if slot < 0 or slot >= t.nslots or t.keys[slot] != np.uint64(key):
        return 0
    group = t.rows64[(rbase(t, slot) + R_GROUP) >> 3]
    home = home_of(t, group)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return E_BUSY
    f, free, hi, status = scan_locked(t, home, np.uint64(key), group, me, lo)
    done = 0
    if status == 0 and f == slot and r_state(t, f) == ST_LIVE:
        _tombstone(t, ring, proc, f, row, now_ms // 1000, now_ms)
        done = 1
    unlock_regions(t, lo, hi)
    return done


def contact_key_of(aor: bytes, uri: bytes, instance: bytes = b"", reg_id: int = 0) -> int:
    """The row key of a binding, from Python (tests, tools): mirrors _binding_key."""
    group = group_hash_of(aor)
    if instance:
        h = key_hash_of(instance, group ^ int(mix64(np.uint64(reg_id) + np.uint64(0x1D))))
    else:
        h = key_hash_of(uri, group)
    return int(with_partition(np.uint64(h), np.uint64(group)))
