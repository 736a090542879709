"""The dialog table: row layout, the Python packer, and the dialog kernels.

Dialogs use the generic engine (shm.table): key = hash of (Call-ID, the caller's From
tag), group = hash of the Call-ID, so all dialogs of a Call-ID share a probe run. The
proxy's dialog tracking (services.sip.dialogs) writes them with `dlg_apply`, which
merges a change into the stored row under the slot's lock: two workers handling a
call's 180 and 200 at once cannot undo each other (a state never goes back, CSeqs only
grow, flags only add up). Every change is pushed to the writer's ring and replicated
like any row (capability dialog-dlg-repl). The row's `expires` is the lifetime end plus
EXPIRY_GRACE_S: the node that runs the dialog's timers (its sharing tag's active node)
ends it at `timeout` with BYEs; every node drops it by itself only if nobody did.

The slot head's per-node word (shm.table, never replicated) holds the in-dialog ping
state of the node that pings (PING_* bits), set by the worker that gets a ping's reply.
Neighbours: shm.table (engine), shm.profiles (counts dialogs per profile),
services.sip.dialogs (tracking), services.sip.dialog_timer (lifetime, pings).

Dialog row (fixed part; the blob follows):

    offset  size  field
    0       8     key: record identity hash (>= 2)
    8       8     group: group hash: picks the home slot
    16      8     version: hybrid logical clock: ms << 16 | counter
    24      4     expires: absolute unix seconds (TOMB: deletion time)
    28      1     state: 1 LIVE, 2 TOMB
    29      1     aux: table-specific byte
    30      2     origin: node id that made this version
    32      4     start: unix seconds the dialog was created
    36      4     timeout: unix seconds its lifetime ends
    40      4     caller_cseq: last CSeq from the caller
    44      4     callee_cseq: last CSeq from the callee
    48      4     flags: dialog flags (F_*)
    52      2     creator: node that created it (runs its timers when it has no sharing tag)
    54      26    lens: u16 lengths of: callid, from_tag, to_tag, from_uri, to_uri, caller_contact, callee_contact, caller_route, callee_route, caller_sock, callee_sock, profiles, shtag
    80      ...   string blob (usrloc/dialog record_bytes)

aux is the dialog state (dlg_state): 1 unconfirmed, 2 early, 3 confirmed without its ACK
yet, 4 confirmed, 5 deleted (OpenSIPS's numbers). Strings: the route sets are the Record-Route values towards each leg, comma-separated,
in the order a request to that leg carries them as Route; `profiles` lists the
dialog's profiles one per line (`name` or `name/value`); `shtag` is its sharing tag.
"""
from __future__ import annotations

import struct

import numpy as np
from numba import njit

from fastcluster.shm.atomics import atomic_cas, atomic_load, unmanaged
from fastcluster.shm.hashing import (
    SEED_GROUP,
    as_key,
    group_hash,
    group_hash_of,
    hash_bytes,
    key_hash_of,
)
from fastcluster.shm.raw import ld32, ldu64, st16, st32, st64
from fastcluster.shm.rows import ROW_HEAD, RowLayout
from fastcluster.shm.table import (
    E_BUSY,
    E_FULL,
    E_NOT_FOUND,
    E_TOO_LONG,
    H_LIVE,
    H_TOMB,
    K_FREE,
    R_AUX,
    R_EXPIRES,
    R_ORIGIN,
    R_VERSION,
    R_STATE,
    ST_LIVE,
    ST_TOMB,
    blob_used,
    home_of,
    local_index,
    lock_region,
    next_version,
    publish_counts,
    r_state,
    r_version,
    rbase,
    read_row,
    scan_locked,
    seg_span,
    unlock_regions,
    views,
    write_row,
)

KIND_DIALOGS = 2

DIALOG = RowLayout(
    name="dialog",
    kind=KIND_DIALOGS,
    fields=(
        ("start", "<u4", "unix seconds the dialog was created"),
        ("timeout", "<u4", "unix seconds its lifetime ends"),
        ("caller_cseq", "<u4", "last CSeq from the caller"),
        ("callee_cseq", "<u4", "last CSeq from the callee"),
        ("flags", "<u4", "dialog flags (F_*)"),
        ("creator", "<u2", "node that created it (runs its timers when it has no "
                           "sharing tag)"),
    ),
    strings=("callid", "from_tag", "to_tag", "from_uri", "to_uri", "caller_contact",
             "callee_contact", "caller_route", "callee_route", "caller_sock",
             "callee_sock", "profiles", "shtag"),
    aux_name="dlg_state",
)
STRING_INDEX = {name: i for i, name in enumerate(DIALOG.strings)}
S_CALLID, S_FROM_TAG = STRING_INDEX["callid"], STRING_INDEX["from_tag"]
S_PROFILES, S_SHTAG = STRING_INDEX["profiles"], STRING_INDEX["shtag"]
S_TO_TAG = STRING_INDEX["to_tag"]

# OpenSIPS dialog states (dlg_list "state")
DLG_UNCONFIRMED, DLG_EARLY, DLG_CONFIRMED_NA, DLG_CONFIRMED, DLG_DELETED = 1, 2, 3, 4, 5
# flags
F_END = 1  # dlg_end_dlg asked for its end: the node running its timers sends the BYEs
F_PING_CALLER = 2  # in-dialog OPTIONS pings to the caller
F_PING_CALLEE = 4  # and to the callee
EXPIRY_GRACE_S = 60  # a dialog nobody ended is dropped everywhere this long after timeout

# dlg_apply operations and results
OP_CREATE, OP_UPDATE, OP_DELETE, OP_FAIL = 1, 2, 3, 4
E_EXISTS = -8  # OP_CREATE found the dialog (a retransmitted or spiralled INVITE), or
# its tombstone with a caller CSeq as high (the retransmission came after its end)
E_OTHER_CALLEE = -9  # the change names another callee (To tag) than the confirmed dialog

# The identity of an in-dialog request, in int64 words (dlg_in_dialog's `ident`; shm.sipreq
# fast_request writes them): its method, the spans in its bytes of the Call-ID, From and
# To header values (blanks around them excluded), its CSeq number (>= 0); ID_OP receives
# the operation dlg_in_dialog chose.
(ID_METHOD, ID_CALLID_S, ID_CALLID_E, ID_FROM_S, ID_FROM_E, ID_TO_S, ID_TO_E, ID_CSEQ,
 ID_OP, ID_WORDS) = range(10)
ID_ACK, ID_BYE = 1, 2
IN_NONE = -20  # dlg_in_dialog: no live dialog of this request's callee, nothing done
IN_UNSURE = -21  # dlg_in_dialog: a tag it does not read as core.sip.tag_of: nothing done

# per-node ping state in the slot head's local word (never replicated)
PING_CALLER_OUT = 1  # a ping to the caller is unanswered
PING_CALLEE_OUT = 2
PING_CALLER_481 = 4  # the caller answered 481: the dialog is gone there
PING_CALLEE_481 = 8

_D = DIALOG.dtype
O_START, O_TIMEOUT = _D.fields["start"][1], _D.fields["timeout"][1]
O_CALLER_CSEQ, O_CALLEE_CSEQ = _D.fields["caller_cseq"][1], _D.fields["callee_cseq"][1]
O_FLAGS, O_CREATOR = _D.fields["flags"][1], _D.fields["creator"][1]
NSTRINGS = len(DIALOG.strings)
NSTATES = 8  # dlg_count_states buckets (dlg_state values)


def dialog_ids(callid: bytes, from_tag: bytes) -> tuple[int, int]:
    """(key, group) of a dialog."""
    group = group_hash_of(callid)
    return key_hash_of(from_tag, group ^ int(SEED_GROUP)), group


def _fixed_struct() -> tuple[struct.Struct, list[str]]:
    """The fixed part of DIALOG as one struct (fields in offset order, padding as pad
    bytes), and its field names in that order ("lens" stands for the u16 lengths)."""
    codes = {"<u8": "Q", "<i8": "q", "<u4": "I", "<u2": "H", "|u1": "B"}
    fmt, names, at = ["<"], [], 0
    for name, (fdt, off) in sorted(((n, _D.fields[n][:2]) for n in _D.names),
                                   key=lambda x: x[1][1]):
        fmt.append("x" * (off - at))
        if name == "lens":
            fmt.append(f"{NSTRINGS}H")
        else:
            fmt.append(codes[fdt.str])
        names.append(name)
        at = off + fdt.itemsize
    fmt.append("x" * (_D.itemsize - at))
    return struct.Struct("".join(fmt)), names


_FIXED, _FIXED_NAMES = _fixed_struct()
# pack_dialog writes the values in this order: the layout must not move under it
assert _FIXED_NAMES == ["key", "group", "version", "expires", "state", "aux", "origin",
                        "start", "timeout", "caller_cseq", "callee_cseq", "flags", "creator",
                        "lens"], _FIXED_NAMES
_FIXED_SIZE = DIALOG.fixed_size
_STRING_NAMES = frozenset(DIALOG.strings)
_EMPTY = b""


def pack_dialog(row: np.ndarray, row_size: int, *, strings: dict[str, bytes],
                timeout: int, start: int, dlg_state: int, caller_cseq: int = 0,
                callee_cseq: int = 0, flags: int = 0, creator: int = 0,
                deleted: bool = False, expires: int | None = None,
                ids: tuple[int, int] | None = None) -> None:
    """Fill row (uint8[>= body]) with a dialog (or, for dlg_apply, a change of one): its
    expires is timeout + EXPIRY_GRACE_S unless given. Raises ValueError when the
    strings do not fit (nothing is truncated). ids: dialog_ids of its Call-ID and From
    tag when the caller has them. One struct write and one blob copy: it runs for every
    dialog change a SIP worker makes."""
    if not strings.keys() <= _STRING_NAMES:
        raise ValueError(f"unknown dialog strings: {sorted(set(strings) - _STRING_NAMES)}")
    get = strings.get
    values = [get(name, _EMPTY) for name in DIALOG.strings]
    blob = _EMPTY.join(values)
    if len(blob) > row_size - ROW_HEAD - _FIXED_SIZE:
        raise ValueError(f"dialog strings need {len(blob)} bytes, dialog.record_bytes "
                         f"allows {row_size - ROW_HEAD - _FIXED_SIZE}")
    key, group = ids if ids is not None else dialog_ids(values[0], values[1])
    if expires is None:
        expires = timeout + EXPIRY_GRACE_S if timeout else 0
    _FIXED.pack_into(row, 0, key, group, 0, expires, ST_TOMB if deleted else ST_LIVE,
                     dlg_state, 0, start, timeout, caller_cseq, callee_cseq, flags, creator,
                     *map(len, values))
    row[_FIXED_SIZE:_FIXED_SIZE + len(blob)] = np.frombuffer(blob, np.uint8)


# ---------------------------------------------------------------- kernels


@njit(cache=True, inline="always")
def _merge(t, s, p8, op, now_s, out8):
    """Build into out8 the row that results from applying change p8 (operation op) to
    slot s's record; returns the bytes used, or E_TOO_LONG. The identity (key, group,
    Call-ID, From tag), start and creator stay; CSeqs take the larger; flags add up;
    the dialog state never goes back: a change to a lower state (a late 180 after the
    200) only brings its CSeqs and flags. OP_DELETE makes a tombstone of the record."""
    base = rbase(t, s)
    old_state = t.rows8[base + R_AUX]
    new_state = p8[R_AUX]
    take = op == OP_UPDATE and new_state >= old_state
    out8[:t.fixed] = t.rows8[base:base + t.fixed]
    st32(out8, O_CALLER_CSEQ, max(ld32(t.rows8, base + O_CALLER_CSEQ), ld32(p8, O_CALLER_CSEQ)))
    st32(out8, O_CALLEE_CSEQ, max(ld32(t.rows8, base + O_CALLEE_CSEQ), ld32(p8, O_CALLEE_CSEQ)))
    st32(out8, O_FLAGS, ld32(t.rows8, base + O_FLAGS) | ld32(p8, O_FLAGS))
    if op == OP_DELETE or op == OP_FAIL:
        out8[R_STATE] = ST_TOMB
        out8[R_AUX] = DLG_DELETED
        st32(out8, R_EXPIRES, now_s)
    elif take:
        out8[R_AUX] = new_state
        if ld32(p8, O_TIMEOUT):
            st32(out8, O_TIMEOUT, ld32(p8, O_TIMEOUT))
            st32(out8, R_EXPIRES, ld32(p8, R_EXPIRES))
    pos = t.fixed
    for i in range(t.nlens):
        o_off, o_len = seg_span(t, t.rows8, base, i)
        p_off, p_len = seg_span(t, p8, 0, i)
        if take and p_len > 0 and i != S_CALLID and i != S_FROM_TAG:
            if pos + p_len > t.body:
                return E_TOO_LONG
            out8[pos:pos + p_len] = p8[p_off:p_off + p_len]
            st16(out8, t.lens_off + 2 * i, p_len)
            pos += p_len
        else:
            if pos + o_len > t.body:
                return E_TOO_LONG
            out8[pos:pos + o_len] = t.rows8[o_off:o_off + o_len]
            st16(out8, t.lens_off + 2 * i, o_len)
            pos += o_len
    return pos


@njit(cache=True, inline="always")
def _other_callee(t, s, p8):
    """Whether change p8 names a callee (its to_tag, when it has one) other than the
    one slot s's dialog was confirmed with. A forked INVITE may be answered 2xx by two
    callees: the first 2xx's To tag makes the dialog (RFC 3261 §13.2.2.4: each 2xx is
    a dialog of its own); a later 2xx, and the ACK, re-INVITE or BYE of that other
    dialog, must not change or end this one. Before a 2xx (early) the callee is not
    fixed: another branch's 1xx or 2xx may still take the row."""
    base = rbase(t, s)
    if t.rows8[base + R_AUX] < DLG_CONFIRMED_NA:
        return False
    p_off, p_len = seg_span(t, p8, 0, S_TO_TAG)
    o_off, o_len = seg_span(t, t.rows8, base, S_TO_TAG)
    if p_len == 0 or o_len == 0:
        return False
    if p_len != o_len:
        return True
    for i in range(p_len):
        if p8[p_off + i] != t.rows8[o_off + i]:
            return True
    return False


@njit(cache=True, inline="always")
def _stamp(t, out8, version):
    """out8 shows what write_row stores: this node's version and origin."""
    st64(out8, R_VERSION, version)
    st16(out8, R_ORIGIN, t.node_id)


@njit(cache=True)
def dlg_apply(arena, ring, p8, op, now_ms, me, proc, out8):
    """Apply a dialog change under the lock of its slot's region.

    p8: a row made by pack_dialog (uint8[>= body], read only): key and group name the
    dialog. op: OP_CREATE inserts it (E_EXISTS if the dialog is there and live, or ended
    with a caller CSeq at least the new one's -- a late retransmission of its INVITE,
    which must not bring it back; a new INVITE after a failed one, as after a 407, has
    a higher CSeq: the stored one is left as it is); OP_UPDATE merges it into the live
    record (_merge);
    OP_DELETE turns the live record into a tombstone, OP_FAIL too unless it is
    confirmed (E_EXISTS: a 2xx on another branch made it). Whatever was written is pushed
    to `ring`; out8 (uint8[>= body]) receives the resulting row (for E_EXISTS, the
    stored one). OP_UPDATE and OP_DELETE of a change whose to_tag is not the confirmed
    dialog's change nothing (E_OTHER_CALLEE: _other_callee). Returns the slot, or
    E_EXISTS / E_NOT_FOUND (no live record to change) / E_OTHER_CALLEE / E_BUSY /
    E_FULL / E_TOO_LONG."""
    t = views(arena)
    ring = unmanaged(ring)
    p8 = unmanaged(p8)
    out8 = unmanaged(out8)
    if blob_used(t, p8, 0) > t.body - t.fixed:
        return E_TOO_LONG
    key = ldu64(p8, 0)
    group = ldu64(p8, 8)
    home = home_of(t, group)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return E_BUSY
    found, free, hi, status = scan_locked(t, home, key, group, me, lo)
    result = status
    dl = dt = df = 0
    now_s = now_ms // 1000
    if status == 0:
        live = found >= 0 and r_state(t, found) == ST_LIVE
        if op == OP_CREATE:
            if live or found >= 0 and r_state(t, found) == ST_TOMB and \
                    ld32(t.rows8, rbase(t, found) + O_CALLER_CSEQ) >= ld32(p8, O_CALLER_CSEQ):
                # live: a copy of the INVITE made it first; ended with a CSeq as high: a
                # late retransmission of the INVITE of a dialog that is over
                n = t.fixed + blob_used(t, t.rows8, rbase(t, found))
                out8[:n] = t.rows8[rbase(t, found):rbase(t, found) + n]
                result = E_EXISTS
            else:
                target = found
                if found < 0:
                    if t.h[H_LIVE] + t.h[H_TOMB] >= t.capacity or free < 0:
                        target = E_FULL
                    else:
                        target = free
                if target >= 0:
                    n = t.fixed + blob_used(t, p8, 0)
                    out8[:n] = p8[:n]
                    version = next_version(now_ms, 0 if found < 0 else
                                           r_version(t, found))
                    _stamp(t, out8, version)
                    dl, dt, df = write_row(t, ring, proc, target, out8, 0, n, key, version)
                result = target
        elif not live:
            result = E_NOT_FOUND
        elif op == OP_FAIL and t.rows8[rbase(t, found) + R_AUX] >= DLG_CONFIRMED_NA:
            result = E_EXISTS  # confirmed by another branch: it stays
        elif _other_callee(t, found, p8):
            result = E_OTHER_CALLEE
        else:
            n = _merge(t, found, p8, op, now_s, out8)
            if n < 0:
                result = n
            else:
                version = next_version(now_ms, r_version(t, found))
                _stamp(t, out8, version)
                dl, dt, df = write_row(t, ring, proc, found, out8, 0, n, key, version)
                result = found
    unlock_regions(t, lo, hi)
    publish_counts(t, dl, dt, df)
    return result


@njit(cache=True, inline="always")
def _get(t, key, group, out8):
    """dlg_get on the table's views."""
    s = home_of(t, group)
    while s < t.nslots:
        k = atomic_load(t.keys, s)
        if k == 0:
            return E_NOT_FOUND
        if k == key and ldu64(t.rows8, rbase(t, s) + 8) == group:
            if read_row(t, s, out8, 0) == key:
                return s
            # its writer is inside it past the spin budget (descheduled: two cores and
            # eight workers; or dead until the master repairs it): not "no dialog"
            return E_BUSY if atomic_load(t.keys, s) == key else E_NOT_FOUND
        s += 1
    return E_NOT_FOUND


@njit(cache=True)
def dlg_get(arena, key, group, out8):
    """Copy the record (LIVE or TOMB) with this key and group into out8, consistently
    (seqlock). Returns its slot, E_NOT_FOUND, or E_BUSY (the record is being written and
    stayed so past the spin budget: call again, after a yield). Lock-free."""
    return _get(views(arena), key, group, unmanaged(out8))


@njit(cache=True, nogil=True)
def dlg_due(arena, start, end, now_s, pings, out8, out_slots, max_rows):
    """Live dialogs in slots [start, end) whose timers have something to do: lifetime
    over (timeout <= now_s), an end asked for (F_END), or, when `pings`, a confirmed
    dialog with pings on. Their rows go to out8 (one every row_size bytes), their
    slots to out_slots. Returns (next start slot (>= end when done), rows)."""
    t = views(arena)
    out8 = unmanaged(out8)
    s = start
    n = 0
    end = min(end, t.nslots)
    while s < end and n < max_rows:
        if t.keys[s] > K_FREE and r_state(t, s) == ST_LIVE:
            base = rbase(t, s)
            flags = ld32(t.rows8, base + O_FLAGS)
            due = ld32(t.rows8, base + O_TIMEOUT) <= now_s or (flags & F_END) != 0
            if not due and pings and (flags & (F_PING_CALLER | F_PING_CALLEE)) != 0:
                due = t.rows8[base + R_AUX] >= DLG_CONFIRMED_NA
            if due:
                at = n * t.row
                if read_row(t, s, out8, at) > K_FREE and out8[at + R_STATE] == ST_LIVE:
                    out_slots[n] = s
                    n += 1
        s += 1
    return s, n


@njit(cache=True, nogil=True)
def dlg_count_states(arena, out):
    """out[dlg_state] += live dialogs in that state (out: int64[NSTATES])."""
    t = views(arena)
    for s in range(t.nslots):
        if t.keys[s] > K_FREE and r_state(t, s) == ST_LIVE:
            st = t.rows8[rbase(t, s) + R_AUX]
            if st < out.shape[0]:
                out[st] += 1


@njit(cache=True)
def dlg_ping_mark(arena, key, group, set_bits, clear_bits):
    """Change the ping bits of a live dialog's per-node word: clear `clear_bits`, then
    set `set_bits` (atomically: a worker marking a reply and the timer sending the next
    ping may meet). Returns the word as it was, or E_NOT_FOUND."""
    t = views(arena)
    s = home_of(t, group)
    while s < t.nslots:
        k = atomic_load(t.keys, s)
        if k == 0:
            return E_NOT_FOUND
        if k == key and ldu64(t.rows8, rbase(t, s) + 8) == group:
            i = local_index(t, s)
            while True:
                old = atomic_load(t.rows64, i)
                new = (old & ~np.uint64(clear_bits)) | np.uint64(set_bits)
                if atomic_cas(t.rows64, i, old, new) == old:
                    return np.int64(old)
        s += 1
    return E_NOT_FOUND


# ---------------------------------------------------------------- in-dialog requests


@njit(cache=True, inline="always")
def _lower(c):
    return c + 32 if 65 <= c <= 90 else c


@njit(cache=True, inline="always")
def tag_span(d, s, e):
    """(start, end, ok) of the tag parameter in the From/To value d[s:e], as
    core.sip.tag_of reads it (its quick way: the text after the last '>' when there is a
    '<', the first ';tag=' there, up to the next ';'); an absent tag is an empty span.
    ok False: a value tag_of reads its slow way (quotes; a 'tag' not in a plain ';tag=')."""
    lt = False
    gt = -1
    for x in range(s, e):
        c = d[x]
        if c == 34:
            return s, s, False
        if c == 60:
            lt = True
        elif c == 62:
            gt = x
    tail = s
    if lt:
        if gt < 0:
            return s, s, True
        tail = gt + 1
    pos = -1
    blank = False
    word = False  # "tag" anywhere in the tail
    for x in range(tail, e):
        c = d[x]
        if c == 32 or c == 9:
            blank = True
        if x + 3 <= e and _lower(c) == 116 and _lower(d[x + 1]) == 97 and \
                _lower(d[x + 2]) == 103:
            word = True
            if pos < 0 and x > tail and d[x - 1] == 59 and x + 3 < e and d[x + 3] == 61:
                pos = x - 1
    if pos < 0 or blank:
        return s, s, not word
    v = pos + 5
    ve = v
    while ve < e and d[ve] != 59:
        ve += 1
    return v, ve, True


@njit(cache=True, inline="always")
def _live_slot(t, key, group, out8):
    """dlg_get, and whether the record is live: its slot, E_NOT_FOUND or E_BUSY."""
    s = _get(t, key, group, out8)
    if s == E_BUSY:
        return E_BUSY
    return s if s >= 0 and out8[R_STATE] == ST_LIVE else E_NOT_FOUND


@njit(cache=True)
def dlg_in_dialog(arena, ring, data, ident, now_ms, me, proc, p8, out8):
    """The dialog change of an in-dialog ACK or BYE the compiled relay forwards, in one
    call: what services.sip.dialogs.DialogTracker.in_dialog does from the request's
    identity (tests/unit/test_fastpath_dialogs.py holds both ways to the same tables).

    data: the request (uint8, read only); ident: int64[>= ID_WORDS] (ID_*). The dialog is
    the live one of (Call-ID, From tag) -- the caller's request -- else of (Call-ID, To
    tag) -- the callee's; a confirmed one only if the request names its callee's tag
    (services.sip.dialog_rules.same_callee). A BYE deletes a confirmed dialog
    (OP_DELETE), an ACK confirms it (OP_UPDATE to DLG_CONFIRMED), a BYE in an early one
    only raises the CSeq of its side (OP_UPDATE): the change is packed into p8 (uint8[>=
    body]) as pack_dialog packs it and applied by dlg_apply (ring, out8 as there);
    ident[ID_OP] receives the operation. Returns dlg_apply's result, or E_BUSY (nothing
    was done: a lock, or a record being written, stayed busy; call again), IN_NONE (no
    such dialog) / IN_UNSURE (a tag read the slow way: nothing was
    done, the caller goes the Python way) / E_TOO_LONG (the identity does not fit)."""
    t = views(arena)
    p8 = unmanaged(p8)
    out8 = unmanaged(out8)
    fs, fe, fok = tag_span(data, ident[ID_FROM_S], ident[ID_FROM_E])
    ts, te, tok = tag_span(data, ident[ID_TO_S], ident[ID_TO_E])
    if not fok or not tok:
        return IN_UNSURE
    cs = ident[ID_CALLID_S]
    cn = ident[ID_CALLID_E] - cs
    group = group_hash(data, cs, cn)
    seed = group ^ SEED_GROUP
    key = as_key(hash_bytes(data, fs, fe - fs, seed))
    s = _live_slot(t, key, group, out8)
    if s == E_BUSY:
        return E_BUSY  # nothing done: read again (a lock-free read must not say "none")
    if s >= 0:
        from_callee = False
        rs, rn, ks, kn = fs, fe - fs, ts, te - ts  # the dialog's From tag, the callee's
    else:
        if te == ts:
            return IN_NONE
        key = as_key(hash_bytes(data, ts, te - ts, seed))
        s = _live_slot(t, key, group, out8)
        if s == E_BUSY:
            return E_BUSY
        if s < 0:
            return IN_NONE
        from_callee = True
        rs, rn, ks, kn = ts, te - ts, fs, fe - fs
    state = out8[R_AUX]
    if state >= DLG_CONFIRMED_NA and kn > 0:  # same_callee
        o_off, o_len = seg_span(t, out8, 0, S_TO_TAG)
        if o_len > 0:
            if o_len != kn:
                return IN_NONE
            for i in range(kn):
                if out8[o_off + i] != data[ks + i]:
                    return IN_NONE
    if cn + rn + kn > t.body - t.fixed:
        return E_TOO_LONG
    op = OP_UPDATE
    new_state = 0
    if ident[ID_METHOD] == ID_BYE and state >= DLG_CONFIRMED_NA:
        op = OP_DELETE
    elif ident[ID_METHOD] == ID_ACK:
        new_state = DLG_CONFIRMED
    ident[ID_OP] = op
    # the change, as pack_dialog writes it: identity, state, one side's CSeq; no timeout
    p8[:t.fixed] = 0
    st64(p8, 0, key)
    st64(p8, 8, group)
    p8[R_STATE] = ST_LIVE
    p8[R_AUX] = new_state
    st32(p8, O_CALLEE_CSEQ if from_callee else O_CALLER_CSEQ, ident[ID_CSEQ])
    st16(p8, t.lens_off + 2 * S_CALLID, cn)
    st16(p8, t.lens_off + 2 * S_FROM_TAG, rn)
    st16(p8, t.lens_off + 2 * S_TO_TAG, kn)
    pos = t.fixed
    p8[pos:pos + cn] = data[cs:cs + cn]
    pos += cn
    p8[pos:pos + rn] = data[rs:rs + rn]
    pos += rn
    p8[pos:pos + kn] = data[ks:ks + kn]
    return dlg_apply(arena, ring, p8, op, now_ms, me, proc, out8)
