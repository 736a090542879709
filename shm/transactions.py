"""The transaction table: RFC 3261 §17 server and client transactions of the proxy, in
shared memory, and the kernels that match and advance them.

One row is one proxy transaction (§16): the server transaction facing upstream and up to
MAX_BRANCHES client transactions (branches) facing the targets, with the response
context of §16.7. Requests, their retransmissions, ACK and CANCEL land on whichever SIP
worker the socket hands them to, and replies too, so the row lives in the shared table
engine of shm.table (same segment format, striped locks, undo area, master repair) and
every change is one kernel call under the row's region lock. The table is local to a
node: it is never replicated (no ring push), and a row's `origin` is this node.

Identity: the row key is a hash of `ident`, the request's §17.2.3 matching fields (top
Via branch + sent-by + method, INVITE for ACK and CANCEL; or the RFC 2543 fields), and
`ident` itself is kept to refuse a 64-bit collision (E_COLLISION). Our own branches are
`z9hG4bK` + the row key + the branch index (services.sip.messages), so a reply finds
its row by key without any search.

Timers live in the row as millisecond offsets from t0_ms (0: off); `due_ms` is the
earliest. A process that makes `due_ms` earlier than the armed `sched_ms` pushes
(due, slot, key) into its timer ring (shm.tmring); the timer process's wheel
(shm.tmwheel) calls `fire` at that time. An entry whose time is not `sched_ms` any
more is stale and dropped, so a row has one live wheel entry. Timer names follow RFC
3261 §17 and RFC 6026: A/E request retransmission, B/F client timeout, C (§16.8) the
proxy's INVITE timeout, D/K/M client linger, G final response retransmission, H/I/J/L
server linger. All lingers are 64*T1 except K and I (T4).

Decisions (response ranking, §16.7) are small njit functions callable from Python and
tested with tables; the kernels were checked against the plain Python model in
tests/support/tm_reference.py. Neighbours: shm.table (engine), shm.tmring / shm.tmwheel
(timers), services.sip.tm (Python side), services.sip.proxy (the proxy).

Transaction row (fixed part; the blob follows):

{layout}

Strings: ident (§17.2.3 identity), request (the request as received: CANCEL, ACK,
retransmissions and local replies are rebuilt from it), targets (one line per branch:
listener, destination host and port, Request-URI, Route values; written by the proxy),
response (the last response sent upstream, or the best final one not yet sent).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.atomics import atomic_add, atomic_store, unmanaged
from fastcluster.shm.hashing import as_key, hash_bytes
from fastcluster.shm.raw import ld16, ld32, ld64, st16, st32, st64
from fastcluster.shm.rows import RowLayout
from fastcluster.shm.table import (
    E_BUSY,
    E_COLLISION,
    E_FULL,
    E_TOO_LONG,
    H_FREE,
    H_LIVE,
    H_TOMB,
    K_FREE,
    R_AUX,
    R_EXPIRES,
    R_GROUP,
    R_KEY,
    R_ORIGIN,
    R_STATE,
    R_VERSION,
    ST_LIVE,
    UNDO_ROW_AT,
    blob_used,
    bytes_equal,
    home_of,
    local_index,
    lock_region,
    rbase,
    read_row,
    scan_locked,
    seg_span,
    seq_index,
    undo_commit,
    undo_end,
    unlock_regions,
    views,
)
from fastcluster.shm.tmring import tmr_push

KIND_TRANSACTIONS = 3
MAX_BRANCHES = 8
SEED_TX = np.uint64(0x7472616E73616374)  # "transact"

TRANSACTION = RowLayout(
    name="transaction",
    kind=KIND_TRANSACTIONS,
    fields=(
        ("t0_ms", "<i8", "monotonic ms at creation: every timer below counts from here"),
        ("sched_ms", "<i8", "time of this row's live timer-wheel entry (0: none)"),
        ("due_ms", "<i8", "earliest pending timer, monotonic ms (0: none)"),
        ("flags", "<u4", "F_* bits"),
        ("cseq", "<u4", "CSeq number of the request"),
        ("s_retr", "<u4", "Timer G: next retransmission of a non-2xx final upstream"),
        ("s_end", "<u4", "Timer H/I/J/L: end of the server transaction"),
        ("status", "<u2", "last status sent upstream (0: none)"),
        ("best", "<u2", "best final status of the response context (0: none)"),
        ("src_port", "<u2", "where responses go: port"),
        ("s_retr_n", "u1", "Timer G retransmissions so far"),
        ("nbranches", "u1", "branches (targets) of this transaction"),
        ("in_sock", "u1", "listener the request came in on (responses leave from it)"),
        ("src_family", "u1", "4 or 6"),
        ("best_branch", "u1", "branch whose response is the best so far"),
        ("src_addr", "V16", "where responses go: address (IPv4 in the first 4 bytes)"),
        ("b_state", f"{MAX_BRANCHES}u1", "per branch: BS_*"),
        ("b_flags", f"{MAX_BRANCHES}u1", "per branch: BF_*"),
        ("b_group", f"{MAX_BRANCHES}u1", "per branch: serial forking group (q order)"),
        ("b_retr_n", f"{MAX_BRANCHES}u1", "per branch: retransmissions (request or CANCEL)"),
        ("b_status", f"{MAX_BRANCHES}<u2", "per branch: final status (408: timed out)"),
        ("b_retr", f"{MAX_BRANCHES}<u4", "per branch: Timer A/E, next retransmission"),
        ("b_deadline", f"{MAX_BRANCHES}<u4", "per branch: Timer B/F, then D/K/M linger"),
        ("b_timer_c", f"{MAX_BRANCHES}<u4", "per branch: Timer C (INVITE)"),
        ("b_cancel", f"{MAX_BRANCHES}<u4", "per branch: next CANCEL retransmission"),
        ("b_cancel_end", f"{MAX_BRANCHES}<u4", "per branch: when the CANCEL gives up"),
    ),
    strings=("ident", "request", "targets", "response"),
    aux_name="tx_state",
)
__doc__ = __doc__.format(layout=TRANSACTION.layout_table())

S_IDENT, S_REQUEST, S_TARGETS, S_RESPONSE = range(4)
_D = TRANSACTION.dtype
(O_T0, O_SCHED, O_DUE, O_FLAGS, O_CSEQ, O_SRETR, O_SEND, O_STATUS, O_BEST, O_SPORT,
 O_SRETRN, O_NBR, O_INSOCK, O_SFAM, O_BESTB, O_SADDR, O_BSTATE, O_BFLAGS, O_BGROUP,
 O_BRETRN, O_BSTATUS, O_BRETR, O_BDEAD, O_BC, O_BCANCEL, O_BCEND) = (
    _D.fields[name][1] for name in (
        "t0_ms", "sched_ms", "due_ms", "flags", "cseq", "s_retr", "s_end", "status", "best",
        "src_port", "s_retr_n", "nbranches", "in_sock", "src_family", "best_branch",
        "src_addr", "b_state", "b_flags", "b_group", "b_retr_n", "b_status", "b_retr",
        "b_deadline", "b_timer_c", "b_cancel", "b_cancel_end"))
O_LENS = TRANSACTION.lens_off

# server transaction state (the row's aux byte)
SS_TRYING, SS_PROCEEDING, SS_COMPLETED, SS_CONFIRMED, SS_ACCEPTED, SS_TERMINATED = range(1, 7)
SS_NAMES = ("", "Trying", "Proceeding", "Completed", "Confirmed", "Accepted", "Terminated")
# branch (client transaction) state
BS_UNUSED, BS_CALLING, BS_PROCEEDING, BS_COMPLETED, BS_ACCEPTED, BS_TIMEOUT, BS_SKIPPED = \
    range(7)
BS_NAMES = ("unused", "Calling", "Proceeding", "Completed", "Accepted", "Timed out",
            "Skipped")
# row flags
F_INVITE = 1  # an INVITE transaction
F_SERIAL = 2  # serial forking: branch groups start one after the other
F_RFC2543 = 4  # the request had no RFC 3261 branch
F_FINAL_SENT = 8  # a final response went upstream
F_RESP = 16  # the response string holds a response
F_RESP_PENDING = 32  # ... the best final one, not sent yet (forking)
F_BEST_LOCAL = 64  # the best final is one we make (408 of a timed-out branch)
F_FINAL_LOCAL = 128  # the final sent upstream was made here (Timer G rebuilds it)
F_CANCELED = 256  # CANCEL received, or a 2xx/6xx ended the forking: no new branch
# branch flags
BF_CANCEL_WANTED = 1  # cancel as soon as a provisional response arrives (§9.1)
BF_CANCEL_SENT = 2
BF_CANCEL_DONE = 4  # our CANCEL got its final response, or gave up

# request kinds (tx_request) and reply method classes (tx_reply)
K_REQUEST, K_ACK, K_CANCEL = 1, 2, 3
M_INVITE, M_CANCEL, M_OTHER = 1, 2, 3

# results (>= 0 never: these are positive codes; table errors are negative)
R_NEW, R_MATCH, R_NOT_FOUND = 1, 2, 3
# actions for the caller (bit mask)
A_NEW = 1  # a transaction was created: send 100 (INVITE) and the first branches
A_FORWARD = 2  # send the response in hand upstream
A_SEND_STORED = 4  # send the stored response (copied out) upstream
A_SEND_LOCAL = 8  # build a response with O_STATUS from the request (copied out)
A_SEND_100 = 16  # send 100 Trying upstream (an INVITE retransmission)
A_CANCEL = 32  # send CANCEL on the branches of O_CANCEL
A_START = 64  # send the request on the branches of O_START (serial forking)
A_ACK = 128  # ACK the non-2xx final in hand on its branch (hop by hop)
A_200_CANCEL = 256  # answer 200 to the CANCEL in hand
A_RETRANS = 512  # retransmit the request on the branches of O_RETRANS
A_RETRANS_CANCEL = 1024  # retransmit the CANCEL on the branches of O_RETRANS_CANCEL
A_DELETED = 2048  # the row ended (timer)
A_FIRST_FINAL = 4096  # this answer sends the transaction's final response upstream
NEEDS_REQUEST = A_SEND_LOCAL | A_CANCEL | A_START | A_RETRANS | A_RETRANS_CANCEL | A_ACK

# timer parameters (an int64 array the processes keep)
P_T1, P_T2, P_T4, P_TC, P_WORDS = 0, 1, 2, 3, 8
SAFETY_S = 60  # a row whose timers all went missing is freed by the expiry sweep

# work buffer: input words, input strings, output words, output data
IN_WORDS = 64
(I_KIND, I_NOW, I_NOW_S, I_FLAGS, I_CSEQ, I_SOCK, I_FAM, I_PORT, I_ADDR, I_ADDR2, I_NB,
 I_IDENT_LEN, I_REQ_LEN, I_TGT_LEN, I_RSP_LEN, I_KEY, I_BRANCH, I_STATUS, I_GROUPS) = range(19)
IN_STR = 8 * IN_WORDS
IN_STR_BYTES = 3 << 16
OUT_AT = IN_STR + IN_STR_BYTES
OUT_WORDS = 32
(O_RESULT, O_SLOT, O_KEY, O_ACTIONS, O_STATUS_OUT, O_CANCEL, O_START, O_SOCK, O_FAM,
 O_PORT, O_ADDR, O_ADDR2, O_RSP_LEN, O_REQ_LEN, O_TGT_LEN, O_SSTATE, O_FLAGS_OUT, O_NB,
 O_RETRANS, O_RETRANS_CANCEL) = range(20)
OUT_DATA = OUT_AT + 8 * OUT_WORDS
WORK_BYTES = OUT_DATA + (3 << 16)


# ---------------------------------------------------------------- decisions (pure)


@njit(cache=True)
def response_rank(status):
    """Order of final responses for §16.7 step 6 (lower is better): any 6xx, then the
    lowest class; within 4xx, 401, 407, 415, 420 and 484 first (they let the caller
    retry). 2xx are never ranked: they are forwarded at once."""
    cls = status // 100
    if cls == 6:
        return 0
    sub = 1
    if status in (401, 407, 415, 420, 484):
        sub = 0
    return cls * 10 + sub


@njit(cache=True)
def better_response(status, best):
    """Whether a final `status` replaces `best` (0: none yet); the earlier wins ties."""
    return best == 0 or response_rank(status) < response_rank(best)


@njit(cache=True)
def retrans_interval(n, t1, t2, invite):
    """Interval before the (n+1)-th retransmission: Timer A doubles from T1 without cap
    (INVITE), Timer E (and G, and our CANCEL) doubles from T1 up to T2."""
    v = t1 << min(n, 20)
    if not invite and v > t2:
        return t2
    return v


# ---------------------------------------------------------------- row helpers


@njit(cache=True, inline="always")
def _u8(t, b, off):
    return np.int64(t.rows8[b + off])


@njit(cache=True, inline="always")
def _tget(t, b, off, i):
    """A u32 timer offset of branch i (or of the row, i = 0 with a row field)."""
    return ld32(t.rows8, b + off + 4 * i)


@njit(cache=True, inline="always")
def _tset(t, b, off, i, at, t0):
    """Arm a timer at absolute time `at` (0 switches it off)."""
    if at == 0:
        st32(t.rows8, b + off + 4 * i, 0)
    else:
        st32(t.rows8, b + off + 4 * i, max(1, at - t0))


@njit(cache=True, inline="always")
def _due_of(t, b, t0, off, i):
    v = ld32(t.rows8, b + off + 4 * i)
    return t0 + v if v else 0


@njit(cache=True, inline="always")
def _bstate(t, b, i):
    return np.int64(t.rows8[b + O_BSTATE + i])


@njit(cache=True, inline="always")
def _set_bstate(t, b, i, v):
    t.rows8[b + O_BSTATE + i] = v


@njit(cache=True, inline="always")
def _bflags(t, b, i):
    return np.int64(t.rows8[b + O_BFLAGS + i])


@njit(cache=True, inline="always")
def _set_bflags(t, b, i, v):
    t.rows8[b + O_BFLAGS + i] = v


@njit(cache=True, inline="always")
def _active(st):
    return st == BS_CALLING or st == BS_PROCEEDING


@njit(cache=True)
def _row_due(t, b):
    """Earliest pending timer of the row (absolute ms), 0 if none."""
    t0 = ld64(t.rows8, b + O_T0)
    due = 0
    for off in (O_SRETR, O_SEND):
        v = ld32(t.rows8, b + off)
        if v and (due == 0 or t0 + v < due):
            due = t0 + v
    nb = _u8(t, b, O_NBR)
    for i in range(nb):
        for off in (O_BRETR, O_BDEAD, O_BC, O_BCANCEL):
            v = ld32(t.rows8, b + off + 4 * i)
            if v and (due == 0 or t0 + v < due):
                due = t0 + v
    return due


@njit(cache=True)
def _expires_for(due, now_ms, now_s):
    """Wall-clock safety expiry: the table's expiry sweep frees a row whose timers all
    went missing SAFETY_S after its last due time."""
    ahead = (due - now_ms) // 1000 if due > now_ms else 0
    return now_s + ahead + SAFETY_S


@njit(cache=True, inline="always")
def _undo_begin_used(t, proc, s):
    """shm.table.undo_begin, saving only the used part of the row (fixed + strings):
    a transaction row is mostly blob, and repair restores whole bodies anyway."""
    base = proc * t.usz
    w = base >> 3
    old = t.keys[s]
    t.undo64[w + 1] = s
    t.undo64[w + 2] = np.int64(old)
    if old > K_FREE:
        t.undo64[w + 3] = 1
        b = rbase(t, s)
        n = t.fixed + blob_used(t, t.rows8, b)
        if n > t.body:
            n = t.body
        t.undo8[base + UNDO_ROW_AT:base + UNDO_ROW_AT + n] = t.rows8[b:b + n]
    else:
        t.undo64[w + 3] = 0
    atomic_store(t.undo64, w, 1)
    q = seq_index(t, s)
    atomic_store(t.rows32, q, t.rows32[q] + np.uint32(1))


@njit(cache=True)
def _arm(t, b, s, key, ring, now_ms, now_s):
    """Recompute due_ms; when it is earlier than the armed entry (or none is armed),
    re-arm: sched_ms = due, and return the due time the caller pushes after the row is
    committed (0: nothing to push)."""
    due = _row_due(t, b)
    st64(t.rows8, b + O_DUE, due)
    if due:
        st32(t.rows8, b + R_EXPIRES, _expires_for(due, now_ms, now_s))
    sched = ld64(t.rows8, b + O_SCHED)
    if due and (sched == 0 or due < sched):
        st64(t.rows8, b + O_SCHED, due)
        return due
    return 0


@njit(cache=True)
def _set_response(t, b, src, off, n):
    """Replace the response string (the last one) if it fits. Returns True if stored."""
    roff, rlen = seg_span(t, t.rows8, b, S_RESPONSE)
    start = roff - b
    if start + n > t.body:
        st16(t.rows8, b + O_LENS + 2 * S_RESPONSE, 0)
        return False
    t.rows8[roff:roff + n] = src[off:off + n]
    st16(t.rows8, b + O_LENS + 2 * S_RESPONSE, n)
    return True


@njit(cache=True)
def _copy_out(t, b, out, what_mask):
    """Copy strings of the row to the output data area: bit 1 response, 2 request,
    4 targets (in that order). Writes their lengths in the output words."""
    o = out[:8 * OUT_WORDS].view(np.int64)
    pos = 8 * OUT_WORDS
    for idx, word, bit in ((S_RESPONSE, O_RSP_LEN, 1), (S_REQUEST, O_REQ_LEN, 2),
                           (S_TARGETS, O_TGT_LEN, 4)):
        if what_mask & bit:
            off, n = seg_span(t, t.rows8, b, idx)
            out[pos:pos + n] = t.rows8[off:off + n]
            o[word] = n
            pos += n
        else:
            o[word] = 0


@njit(cache=True)
def _out_upstream(t, b, o):
    o[O_SOCK] = _u8(t, b, O_INSOCK)
    o[O_FAM] = _u8(t, b, O_SFAM)
    o[O_PORT] = ld16(t.rows8, b + O_SPORT)
    o[O_ADDR] = ld64(t.rows8, b + O_SADDR)
    o[O_ADDR2] = ld64(t.rows8, b + O_SADDR + 8)
    o[O_SSTATE] = _u8(t, b, R_AUX)
    o[O_NB] = _u8(t, b, O_NBR)


# ---------------------------------------------------------------- branch logic


@njit(cache=True)
def _start_cancel(t, b, i, now, t1):
    """Begin our CANCEL of branch i (its request got a provisional response)."""
    t0 = ld64(t.rows8, b + O_T0)
    _set_bflags(t, b, i, _bflags(t, b, i) | BF_CANCEL_SENT)
    t.rows8[b + O_BRETRN + i] = 0
    _tset(t, b, O_BCANCEL, i, now + t1, t0)
    _tset(t, b, O_BCEND, i, now + 64 * t1, t0)


@njit(cache=True)
def _cancel_branches(t, b, except_i, now, t1):
    """CANCEL every pending branch but except_i (CANCEL received, 2xx or 6xx): those
    with a provisional response now (mask returned), those without as soon as one
    arrives; branches not started never will be."""
    mask = 0
    flags = ld32(t.rows8, b + O_FLAGS)
    st32(t.rows8, b + O_FLAGS, flags | F_CANCELED)
    if not flags & F_INVITE:
        return 0  # only INVITE can be cancelled (§9)
    nb = _u8(t, b, O_NBR)
    for j in range(nb):
        if j == except_i:
            continue
        st = _bstate(t, b, j)
        bf = _bflags(t, b, j)
        if st == BS_PROCEEDING and not bf & BF_CANCEL_SENT:
            _start_cancel(t, b, j, now, t1)
            mask |= 1 << j
        elif st == BS_CALLING:
            _set_bflags(t, b, j, bf | BF_CANCEL_WANTED)
        elif st == BS_UNUSED:
            _set_bstate(t, b, j, BS_SKIPPED)
    return mask


@njit(cache=True)
def _start_branch(t, b, i, now, p):
    t0 = ld64(t.rows8, b + O_T0)
    invite = ld32(t.rows8, b + O_FLAGS) & F_INVITE
    _set_bstate(t, b, i, BS_CALLING)
    t.rows8[b + O_BRETRN + i] = 0
    _tset(t, b, O_BRETR, i, now + p[P_T1], t0)
    _tset(t, b, O_BDEAD, i, now + 64 * p[P_T1], t0)
    if invite:
        _tset(t, b, O_BC, i, now + p[P_TC], t0)


@njit(cache=True)
def _no_active(t, b):
    nb = _u8(t, b, O_NBR)
    for j in range(nb):
        if _active(_bstate(t, b, j)):
            return False
    return True


@njit(cache=True)
def _next_group(t, b):
    """Serial forking: the lowest group among branches not started yet (-1: none)."""
    nb = _u8(t, b, O_NBR)
    g = -1
    for j in range(nb):
        if _bstate(t, b, j) == BS_UNUSED:
            gj = np.int64(t.rows8[b + O_BGROUP + j])
            if g < 0 or gj < g:
                g = gj
    return g


@njit(cache=True)
def _send_final(t, b, now, p, arriving_is_best, o):
    """Every branch is done: start the next serial group, or send the best response
    (§16.7 step 6). arriving_is_best: the response in the caller's hand is the best (it
    is forwarded as is). Returns the actions; O_START / O_STATUS_OUT are written in o."""
    flags = ld32(t.rows8, b + O_FLAGS)
    t0 = ld64(t.rows8, b + O_T0)
    if not flags & F_CANCELED:
        g = _next_group(t, b)
        if g >= 0:
            mask = 0
            nb = _u8(t, b, O_NBR)
            for j in range(nb):
                if _bstate(t, b, j) == BS_UNUSED and t.rows8[b + O_BGROUP + j] == g:
                    _start_branch(t, b, j, now, p)
                    mask |= 1 << j
            o[O_START] = mask
            return A_START
    best = np.int64(ld16(t.rows8, b + O_BEST))
    local = best == 0 or best == 503 or flags & F_BEST_LOCAL or (
        not arriving_is_best and not flags & F_RESP)
    if best == 0:
        best = 500  # cannot happen: a finished branch always leaves a status
    elif best == 503:
        best = 500  # §16.7 step 6: a 503 is not passed upstream
    if local:
        actions = A_SEND_LOCAL
        flags = (flags | F_FINAL_LOCAL) & ~F_RESP
    elif arriving_is_best:
        actions = A_FORWARD
    else:
        actions = A_SEND_STORED
    actions |= A_FIRST_FINAL
    flags = (flags | F_FINAL_SENT) & ~F_RESP_PENDING
    st32(t.rows8, b + O_FLAGS, flags)
    st16(t.rows8, b + O_STATUS, best)
    o[O_STATUS_OUT] = best
    t.rows8[b + R_AUX] = SS_COMPLETED
    if flags & F_INVITE:
        t.rows8[b + O_SRETRN] = 0
        _tset(t, b, O_SRETR, 0, now + p[P_T1], t0)  # Timer G
    _tset(t, b, O_SEND, 0, now + 64 * p[P_T1], t0)  # Timer H (INVITE) or J
    return actions


@njit(cache=True)
def _branch_timeout(t, b, i):
    """Branch i ends without a final response (Timer B, F or C): a 408 of our own
    enters the response context (§16.8)."""
    _set_bstate(t, b, i, BS_TIMEOUT)
    st16(t.rows8, b + O_BSTATUS + 2 * i, 408)
    for off in (O_BRETR, O_BDEAD, O_BC):
        st32(t.rows8, b + off + 4 * i, 0)
    flags = ld32(t.rows8, b + O_FLAGS)
    if not flags & F_FINAL_SENT:
        best = np.int64(ld16(t.rows8, b + O_BEST))
        if better_response(408, best):
            st16(t.rows8, b + O_BEST, 408)
            t.rows8[b + O_BESTB] = i
            st32(t.rows8, b + O_FLAGS, (flags | F_BEST_LOCAL) & ~F_RESP_PENDING)


@njit(cache=True)
def _on_reply(t, b, i, status, mclass, rsp, rsp_off, rsp_len, now, p, o):
    """A response on branch i (the state machine of §16.7 and §17.1). Returns actions."""
    t0 = ld64(t.rows8, b + O_T0)
    flags = ld32(t.rows8, b + O_FLAGS)
    invite = flags & F_INVITE
    t1 = p[P_T1]
    st = _bstate(t, b, i)
    bf = _bflags(t, b, i)
    if mclass == M_CANCEL:  # a response to our CANCEL
        if status >= 200 and bf & BF_CANCEL_SENT:
            _set_bflags(t, b, i, bf | BF_CANCEL_DONE)
            st32(t.rows8, b + O_BCANCEL + 4 * i, 0)
            st32(t.rows8, b + O_BCEND + 4 * i, 0)
        return 0
    if (mclass == M_INVITE) != (invite != 0):
        return 0  # a response whose CSeq method is not this transaction's
    actions = 0
    if status < 200:
        if not _active(st):
            return 0
        if st == BS_CALLING:
            _set_bstate(t, b, i, BS_PROCEEDING)
            if invite:
                st32(t.rows8, b + O_BRETR + 4 * i, 0)  # Timer A stops
                st32(t.rows8, b + O_BDEAD + 4 * i, 0)  # Timer B too: Timer C rules now
            else:
                _tset(t, b, O_BRETR, i, now + p[P_T2], t0)  # Timer E at T2
        if invite and status > 100:
            _tset(t, b, O_BC, i, now + p[P_TC], t0)  # §16.7 step 2: reset Timer C
        if bf & BF_CANCEL_WANTED and not bf & BF_CANCEL_SENT:
            _start_cancel(t, b, i, now, t1)
            o[O_CANCEL] = 1 << i
            actions |= A_CANCEL
        if status > 100 and not flags & F_FINAL_SENT:
            actions |= A_FORWARD
            st16(t.rows8, b + O_STATUS, status)
            if t.rows8[b + R_AUX] == SS_TRYING:
                t.rows8[b + R_AUX] = SS_PROCEEDING
            if not flags & F_RESP_PENDING:
                if _set_response(t, b, rsp, rsp_off, rsp_len):
                    flags |= F_RESP
                else:
                    flags &= ~F_RESP
                st32(t.rows8, b + O_FLAGS, flags)
        return actions
    # a final response
    if not _active(st):
        # a retransmission, or a late final on a branch that timed out or was skipped
        if invite and status < 300:
            return A_FORWARD  # 2xx go end to end, every copy
        if invite and (st == BS_COMPLETED or st == BS_TIMEOUT):
            return A_ACK
        return 0
    st16(t.rows8, b + O_BSTATUS + 2 * i, status)
    st32(t.rows8, b + O_BRETR + 4 * i, 0)
    st32(t.rows8, b + O_BC + 4 * i, 0)
    if invite and status < 300:
        _set_bstate(t, b, i, BS_ACCEPTED)
        _tset(t, b, O_BDEAD, i, now + 64 * t1, t0)  # Timer M
    elif invite:
        _set_bstate(t, b, i, BS_COMPLETED)
        _tset(t, b, O_BDEAD, i, now + 64 * t1, t0)  # Timer D
        actions |= A_ACK
    else:
        _set_bstate(t, b, i, BS_COMPLETED)
        _tset(t, b, O_BDEAD, i, now + p[P_T4], t0)  # Timer K
    if status < 300:
        if invite or not flags & F_FINAL_SENT:
            actions |= A_FORWARD
        if not flags & F_FINAL_SENT:
            actions |= A_FIRST_FINAL
            flags |= F_FINAL_SENT
            st16(t.rows8, b + O_STATUS, status)
            if invite:
                t.rows8[b + R_AUX] = SS_ACCEPTED
                _tset(t, b, O_SEND, 0, now + 64 * t1, t0)  # Timer L
                flags &= ~(F_RESP | F_RESP_PENDING)
            else:
                t.rows8[b + R_AUX] = SS_COMPLETED
                _tset(t, b, O_SEND, 0, now + 64 * t1, t0)  # Timer J
                flags &= ~F_RESP_PENDING
                if _set_response(t, b, rsp, rsp_off, rsp_len):
                    flags |= F_RESP
                else:
                    flags &= ~F_RESP
            st32(t.rows8, b + O_FLAGS, flags)
            mask = _cancel_branches(t, b, i, now, t1)
            if mask:
                o[O_CANCEL] = o[O_CANCEL] | mask
                actions |= A_CANCEL
        return actions
    if flags & F_FINAL_SENT:
        return actions  # a non-2xx after the final went up: absorbed (and ACKed)
    best = np.int64(ld16(t.rows8, b + O_BEST))
    arriving_is_best = False
    if status >= 600 or (best < 600 and better_response(status, best)):
        arriving_is_best = True
        st16(t.rows8, b + O_BEST, status)
        t.rows8[b + O_BESTB] = i
        flags &= ~F_BEST_LOCAL
        if _set_response(t, b, rsp, rsp_off, rsp_len):
            flags |= F_RESP | F_RESP_PENDING
        else:
            flags &= ~(F_RESP | F_RESP_PENDING)  # too long to keep: its status is
        st32(t.rows8, b + O_FLAGS, flags)      # answered locally if it must wait
        if status >= 600:
            mask = _cancel_branches(t, b, i, now, t1)
            if mask:
                o[O_CANCEL] = o[O_CANCEL] | mask
                actions |= A_CANCEL
    if _no_active(t, b):
        actions |= _send_final(t, b, now, p, arriving_is_best, o)
    return actions


# ---------------------------------------------------------------- kernels


@njit(cache=True, inline="always")
def _locate(t, key, me):
    """Lock the key's home region and probe. Returns (found, free, lo, hi, status);
    on a status other than 0 (E_BUSY, or E_FULL: the probe ran off the table without
    finding the key) nothing stays locked."""
    home = home_of(t, key)
    lo = home >> t.shift
    if not lock_region(t, lo, me):
        return -1, -1, lo, lo - 1, E_BUSY
    found, free, hi, status = scan_locked(t, home, key, key, me, lo)
    if status != 0:
        unlock_regions(t, lo, hi)
    return found, free, lo, hi, status


@njit(cache=True)
def tx_request(arena, work, ring, params, me, proc):
    """Match or create the server transaction of a request (work buffer: see the
    module constants). Kinds: K_REQUEST creates a row when none matches (R_NEW, A_NEW);
    a retransmission gets the last response again (R_MATCH with A_SEND_STORED,
    A_SEND_100 or nothing); K_ACK absorbs the ACK of a non-2xx final (R_MATCH) or is
    R_NOT_FOUND (an ACK for 2xx: forward it); K_CANCEL (ident made with method INVITE)
    cancels the pending branches (A_200_CANCEL | A_CANCEL) or is R_NOT_FOUND (481).
    Errors: E_BUSY, E_FULL, E_TOO_LONG, E_COLLISION. Returns the result, also in the
    output's O_RESULT."""
    t = views(arena)
    work = unmanaged(work)
    ring = unmanaged(ring)
    w = work[:IN_STR].view(np.int64)
    out = work[OUT_AT:]
    o = out[:8 * OUT_WORDS].view(np.int64)
    o[:] = 0
    kind = w[I_KIND]
    now = w[I_NOW]
    ilen, qlen, glen = w[I_IDENT_LEN], w[I_REQ_LEN], w[I_TGT_LEN]
    key = as_key(hash_bytes(work, IN_STR, ilen, SEED_TX))
    o[O_KEY] = np.int64(key)
    found, free, lo, hi, status = _locate(t, key, me)
    if status != 0:
        if status == E_FULL and kind != K_REQUEST:
            status = R_NOT_FOUND
        o[O_RESULT] = status
        return status
    result = R_MATCH
    push_due = 0
    target = found
    if found >= 0:
        b = rbase(t, found)
        off, ln = seg_span(t, t.rows8, b, S_IDENT)
        if ln != ilen or not bytes_equal(t.rows8, off, work, IN_STR, ilen):
            unlock_regions(t, lo, hi)
            o[O_RESULT] = E_COLLISION
            return E_COLLISION
        o[O_SLOT] = found
        _out_upstream(t, b, o)
        flags = ld32(t.rows8, b + O_FLAGS)
        sstate = _u8(t, b, R_AUX)
        actions = 0
        if kind == K_REQUEST:
            # a retransmission (§17.2.1, §17.2.2; RFC 6026: absorbed once accepted)
            if sstate == SS_PROCEEDING or sstate == SS_COMPLETED:
                if flags & F_RESP and not flags & F_RESP_PENDING:
                    actions = A_SEND_STORED
                elif sstate == SS_COMPLETED and flags & F_FINAL_LOCAL:
                    actions = A_SEND_LOCAL
                    o[O_STATUS_OUT] = ld16(t.rows8, b + O_STATUS)
                elif flags & F_INVITE and sstate == SS_PROCEEDING:
                    actions = A_SEND_100
        elif kind == K_ACK:
            if flags & F_INVITE and sstate == SS_COMPLETED:
                t0 = ld64(t.rows8, b + O_T0)
                _undo_begin_used(t, proc, found)
                t.rows8[b + R_AUX] = SS_CONFIRMED
                st32(t.rows8, b + O_SRETR, 0)  # Timer G stops
                _tset(t, b, O_SEND, 0, now + params[P_T4], t0)  # Timer I
                push_due = _arm(t, b, found, key, ring, now, w[I_NOW_S])
                undo_commit(t, found)
                undo_end(t, proc)
            elif sstate == SS_ACCEPTED or not flags & F_INVITE:
                result = R_NOT_FOUND  # an ACK for a 2xx (same branch: RFC 2543 UAs)
        else:  # K_CANCEL
            actions = A_200_CANCEL
            if flags & F_INVITE and not flags & F_FINAL_SENT:
                _undo_begin_used(t, proc, found)
                mask = _cancel_branches(t, b, -1, now, params[P_T1])
                push_due = _arm(t, b, found, key, ring, now, w[I_NOW_S])
                undo_commit(t, found)
                undo_end(t, proc)
                if mask:
                    o[O_CANCEL] = mask
                    actions |= A_CANCEL
        o[O_ACTIONS] = actions
        o[O_FLAGS_OUT] = ld32(t.rows8, b + O_FLAGS)
        if o[O_STATUS_OUT] == 0:
            o[O_STATUS_OUT] = ld16(t.rows8, b + O_STATUS)
        if actions & A_SEND_STORED:
            _copy_out(t, b, out, 1)
        if actions & NEEDS_REQUEST:
            _copy_out(t, b, out, 6)
    elif kind != K_REQUEST:
        result = R_NOT_FOUND
    elif t.h[H_LIVE] + t.h[H_TOMB] >= t.capacity or free < 0:
        result = E_FULL
    elif ilen + qlen + glen > t.body - t.fixed:
        result = E_TOO_LONG
    else:
        target = free
        result = R_NEW
        b = rbase(t, free)
        old = t.keys[free]
        _undo_begin_used(t, proc, free)
        t.rows8[b:b + t.fixed] = 0
        st64(t.rows8, b + R_KEY, key)
        st64(t.rows8, b + R_GROUP, key)
        st64(t.rows8, b + R_VERSION, w[I_NOW_S] << 16)
        t.rows8[b + R_STATE] = ST_LIVE
        st16(t.rows8, b + R_ORIGIN, t.node_id)
        flags = w[I_FLAGS] & (F_INVITE | F_SERIAL | F_RFC2543)
        st32(t.rows8, b + O_FLAGS, flags)
        t.rows8[b + R_AUX] = SS_PROCEEDING if flags & F_INVITE else SS_TRYING
        st64(t.rows8, b + O_T0, now)
        st32(t.rows8, b + O_CSEQ, w[I_CSEQ])
        t.rows8[b + O_INSOCK] = w[I_SOCK]
        t.rows8[b + O_SFAM] = w[I_FAM]
        st16(t.rows8, b + O_SPORT, w[I_PORT])
        t.rows8[b + O_SADDR:b + O_SADDR + 16] = work[8 * I_ADDR:8 * I_ADDR + 16]
        nb = min(w[I_NB], MAX_BRANCHES)
        t.rows8[b + O_NBR] = nb
        first = 255
        for j in range(nb):
            g = np.int64(work[8 * I_GROUPS + j])
            t.rows8[b + O_BGROUP + j] = g
            if g < first:
                first = g
        mask = 0
        for j in range(nb):
            if not flags & F_SERIAL or t.rows8[b + O_BGROUP + j] == first:
                _start_branch(t, b, j, now, params)
                mask |= 1 << j
        # strings: ident, request, targets, response (empty)
        pos = b + t.fixed
        src = IN_STR
        for idx, n in ((S_IDENT, ilen), (S_REQUEST, qlen), (S_TARGETS, glen)):
            t.rows8[pos:pos + n] = work[src:src + n]
            st16(t.rows8, b + O_LENS + 2 * idx, n)
            pos += n
            src += n
        st16(t.rows8, b + O_LENS + 2 * S_RESPONSE, 0)
        push_due = _arm(t, b, free, key, ring, now, w[I_NOW_S])
        if old != key:
            t.rows64[local_index(t, free)] = 0
            atomic_store(t.keys, free, key)
        undo_commit(t, free)
        undo_end(t, proc)
        atomic_add(t.h, H_LIVE, 1)
        if old == K_FREE:
            atomic_add(t.h, H_FREE, -1)
        o[O_SLOT] = free
        o[O_ACTIONS] = A_NEW
        o[O_START] = mask
        o[O_FLAGS_OUT] = flags
        _out_upstream(t, b, o)
    unlock_regions(t, lo, hi)
    if push_due:
        tmr_push(ring, push_due, target, key)
    o[O_RESULT] = result
    return result


@njit(cache=True)
def tx_reply(arena, work, ring, params, me, proc):
    """Apply a response to the branch it names (input words I_KEY, I_BRANCH,
    I_STATUS, I_KIND = the CSeq method class; the response, stripped of our Via, as
    the input string of I_RSP_LEN bytes). Returns R_MATCH with the actions in
    O_ACTIONS (A_FORWARD: send the one in hand; A_SEND_STORED / A_SEND_LOCAL: send that
    one instead; A_ACK; A_CANCEL / A_START on the branches of O_CANCEL / O_START), or
    R_NOT_FOUND (forward it statelessly), or E_BUSY."""
    t = views(arena)
    work = unmanaged(work)
    ring = unmanaged(ring)
    w = work[:IN_STR].view(np.int64)
    out = work[OUT_AT:]
    o = out[:8 * OUT_WORDS].view(np.int64)
    o[:] = 0
    key = np.uint64(w[I_KEY])
    now = w[I_NOW]
    o[O_KEY] = w[I_KEY]
    if key <= K_FREE:
        o[O_RESULT] = R_NOT_FOUND
        return R_NOT_FOUND
    found, free, lo, hi, status = _locate(t, key, me)
    if status != 0:
        if status != E_BUSY:
            status = R_NOT_FOUND
        o[O_RESULT] = status
        return status
    if found < 0:
        unlock_regions(t, lo, hi)
        o[O_RESULT] = R_NOT_FOUND
        return R_NOT_FOUND
    b = rbase(t, found)
    i = w[I_BRANCH]
    if i < 0 or i >= _u8(t, b, O_NBR):
        unlock_regions(t, lo, hi)
        o[O_RESULT] = R_NOT_FOUND
        return R_NOT_FOUND
    _undo_begin_used(t, proc, found)
    actions = _on_reply(t, b, i, w[I_STATUS], w[I_KIND], work, IN_STR, w[I_RSP_LEN], now,
                        params, o)
    push_due = _arm(t, b, found, key, ring, now, w[I_NOW_S])
    undo_commit(t, found)
    undo_end(t, proc)
    o[O_SLOT] = found
    o[O_ACTIONS] = actions
    o[O_FLAGS_OUT] = ld32(t.rows8, b + O_FLAGS)
    _out_upstream(t, b, o)
    if not actions & A_SEND_LOCAL and o[O_STATUS_OUT] == 0:
        o[O_STATUS_OUT] = ld16(t.rows8, b + O_STATUS)
    if actions & A_SEND_STORED:
        _copy_out(t, b, out, 1 | (6 if actions & NEEDS_REQUEST else 0))
    elif actions & NEEDS_REQUEST:
        _copy_out(t, b, out, 6)
    unlock_regions(t, lo, hi)
    if push_due:
        tmr_push(ring, push_due, found, key)
    o[O_RESULT] = R_MATCH
    return R_MATCH


@njit(cache=True)
def fire(t, s, key, at, now, now_s, p, proc, o):
    """The timer of row s (armed for time `at`) fires at `now`: retransmissions, Timers
    B/F/C (a 408 of our own, a CANCEL), G (the final again), H, and the end of the row.
    The caller holds the row's region lock. Returns (actions, next due or 0, deleted)
    with O_RETRANS, O_RETRANS_CANCEL, O_CANCEL, O_START, O_STATUS_OUT in o."""
    if t.keys[s] != key:
        return 0, 0, False
    b = rbase(t, s)
    if ld64(t.rows8, b + O_SCHED) != at:
        return 0, 0, False  # stale: another entry is the live one
    _undo_begin_used(t, proc, s)
    t0 = ld64(t.rows8, b + O_T0)
    flags = ld32(t.rows8, b + O_FLAGS)
    invite = flags & F_INVITE
    t1, t2 = p[P_T1], p[P_T2]
    actions = 0
    timed_out = False
    nb = _u8(t, b, O_NBR)
    for i in range(nb):
        st = _bstate(t, b, i)
        if _active(st):
            v = _tget(t, b, O_BRETR, i)
            if v and t0 + v <= now:
                n = np.int64(t.rows8[b + O_BRETRN + i])
                o[O_RETRANS] = o[O_RETRANS] | (1 << i)
                actions |= A_RETRANS
                if n < 255:
                    t.rows8[b + O_BRETRN + i] = n + 1
                if st == BS_PROCEEDING:  # non-INVITE only (Timer A stops on 1xx)
                    _tset(t, b, O_BRETR, i, now + t2, t0)
                else:
                    _tset(t, b, O_BRETR, i, now + retrans_interval(n + 1, t1, t2,
                                                                     invite != 0), t0)
            c = _tget(t, b, O_BC, i)
            dl = _tget(t, b, O_BDEAD, i)
            if invite and c and t0 + c <= now:  # Timer C
                if st == BS_PROCEEDING and not _bflags(t, b, i) & BF_CANCEL_SENT:
                    _start_cancel(t, b, i, now, t1)
                    o[O_CANCEL] = o[O_CANCEL] | (1 << i)
                    actions |= A_CANCEL
                _branch_timeout(t, b, i)
                timed_out = True
            elif dl and t0 + dl <= now:  # Timer B (INVITE, calling) or F
                _branch_timeout(t, b, i)
                timed_out = True
        else:
            dl = _tget(t, b, O_BDEAD, i)
            if dl and t0 + dl <= now:
                st32(t.rows8, b + O_BDEAD + 4 * i, 0)  # Timer D/K/M: linger over
        bf = _bflags(t, b, i)
        cv = _tget(t, b, O_BCANCEL, i)
        if bf & BF_CANCEL_SENT and not bf & BF_CANCEL_DONE and cv and t0 + cv <= now:
            if t0 + _tget(t, b, O_BCEND, i) <= now:
                _set_bflags(t, b, i, bf | BF_CANCEL_DONE)  # our CANCEL gives up
                st32(t.rows8, b + O_BCANCEL + 4 * i, 0)
            else:
                n = np.int64(t.rows8[b + O_BRETRN + i])
                if n < 255:
                    t.rows8[b + O_BRETRN + i] = n + 1
                _tset(t, b, O_BCANCEL, i, now + retrans_interval(n + 1, t1, t2, False), t0)
                o[O_RETRANS_CANCEL] = o[O_RETRANS_CANCEL] | (1 << i)
                actions |= A_RETRANS_CANCEL
    flags = ld32(t.rows8, b + O_FLAGS)
    if timed_out and not flags & F_FINAL_SENT and _no_active(t, b):
        actions |= _send_final(t, b, now, p, False, o)
    flags = ld32(t.rows8, b + O_FLAGS)
    sstate = _u8(t, b, R_AUX)
    g = _tget(t, b, O_SRETR, 0)
    e = _tget(t, b, O_SEND, 0)
    if sstate == SS_COMPLETED and invite:
        if e and t0 + e <= now:  # Timer H: no ACK came
            t.rows8[b + R_AUX] = SS_TERMINATED
            st32(t.rows8, b + O_SRETR, 0)
            st32(t.rows8, b + O_SEND, 0)
        elif g and t0 + g <= now:  # Timer G
            n = np.int64(t.rows8[b + O_SRETRN])
            if n < 255:
                t.rows8[b + O_SRETRN] = n + 1
            _tset(t, b, O_SRETR, 0, now + retrans_interval(n + 1, t1, t2, False), t0)
            actions |= A_SEND_LOCAL if flags & F_FINAL_LOCAL else A_SEND_STORED
            o[O_STATUS_OUT] = ld16(t.rows8, b + O_STATUS)
    elif e and t0 + e <= now:  # Timer I/J/L
        t.rows8[b + R_AUX] = SS_TERMINATED
        st32(t.rows8, b + O_SEND, 0)
        st32(t.rows8, b + O_SRETR, 0)
    # the end: final sent, server side over, no branch or CANCEL pending or lingering
    done = flags & F_FINAL_SENT and _u8(t, b, R_AUX) == SS_TERMINATED
    if done:
        for i in range(nb):
            bf = _bflags(t, b, i)
            if _active(_bstate(t, b, i)) or _tget(t, b, O_BDEAD, i) or (
                    bf & BF_CANCEL_SENT and not bf & BF_CANCEL_DONE):
                done = False
    if done and not actions:
        atomic_store(t.keys, s, K_FREE)
        undo_commit(t, s)
        undo_end(t, proc)
        atomic_add(t.h, H_LIVE, -1)
        atomic_add(t.h, H_FREE, 1)
        return A_DELETED, 0, True
    due = _row_due(t, b)
    if due == 0 and done:
        due = now + 1  # delete on the next tick, after the actions went out
    st64(t.rows8, b + O_DUE, due)
    st64(t.rows8, b + O_SCHED, due)
    if due:
        st32(t.rows8, b + R_EXPIRES, _expires_for(due, now, now_s))
    undo_commit(t, s)
    undo_end(t, proc)
    return actions, due, False


@njit(cache=True)
def tx_fire(arena, slot, key, at, now, now_s, params, me, proc, out):
    """fire() for one row under its region lock, for tests and tools (the timer
    process goes through shm.tmwheel.tm_tick). out: int64[OUT_WORDS]. Returns
    (actions, next due, deleted), or (E_BUSY, 0, False)."""
    t = views(arena)
    out = unmanaged(out)
    r = slot >> t.shift
    if not lock_region(t, r, me):
        return E_BUSY, 0, False
    actions, due, deleted = fire(t, slot, np.uint64(key), at, now, now_s, params, proc, out)
    unlock_regions(t, r, r)
    return actions, due, deleted


@njit(cache=True)
def tx_read(arena, slot, key, out8):
    """Copy row `slot` into out8 if it still holds `key` (seqlock read). Returns the
    number of bytes (fixed part + strings) or 0."""
    t = views(arena)
    out8 = unmanaged(out8)
    if slot < 0 or slot >= t.nslots or t.keys[slot] != np.uint64(key):
        return 0
    if read_row(t, slot, out8, 0) != np.uint64(key):
        return 0
    return t.fixed + blob_used(t, out8, 0)


@njit(cache=True)
def tx_count(arena):
    """(rows, INVITE rows, rows still waiting for a final response)."""
    t = views(arena)
    n = inv = pending = 0
    for s in range(t.nslots):
        if t.keys[s] > K_FREE:
            b = rbase(t, s)
            n += 1
            f = ld32(t.rows8, b + O_FLAGS)
            if f & F_INVITE:
                inv += 1
            if not f & F_FINAL_SENT:
                pending += 1
    return n, inv, pending


def ident_key(ident: bytes) -> int:
    """The row key of an ident, from Python (tests, tools): mirrors tx_request."""
    buf = np.frombuffer(ident, dtype=np.uint8).copy() if ident else np.zeros(1, np.uint8)
    return int(_ident_key(buf, len(ident)))


@njit(cache=True)
def _ident_key(buf, n):
    return as_key(hash_bytes(buf, 0, n, SEED_TX))

