"""A strict scanner for the responses the proxy relays, compiled: status, our branch's
transaction key and index, the CSeq method class, and where the top Via line is.

It accepts only plain, well-formed responses: CRLF lines of printable ASCII, no folded
or combined headers, exactly one From, To, Call-ID and CSeq, a Content-Length that fits,
a top Via `SIP/2.0/UDP sent-by;...;branch=z9hG4bKfc<key><index><loop>` whose sent-by is
one of ours. For anything else it says FALLBACK and the worker parses the datagram in
Python (core.sip) and goes the slow way, which decides on it; so what it accepts is a
subset of what core.sip accepts (tests/unit/test_sipscan.py checks that on thousands of
mutated responses, and that both ways extract the same values). Neighbours:
shm.transactions (fast_reply feeds tx_reply), services.sip.proxy (caller).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm import transactions as X

FALLBACK = -100  # not for the fast path: parse it in Python

# scan output words
(S_STATUS, S_KEY, S_BRANCH, S_MCLASS, S_VIA_START, S_VIA_END, S_CALLID, S_CALLID_LEN,
 S_WORDS) = (0, 1, 2, 3, 4, 5, 6, 7, 8)
M_INVITE, M_CANCEL, M_OTHER = X.M_INVITE, X.M_CANCEL, X.M_OTHER

# header kinds (the ones core.sip checks in a response: single ones must be single)
H_OTHER, H_VIA, H_FROM, H_TO, H_CALLID, H_CSEQ, H_CLEN, H_MAXFWD = range(8)
_STATEFUL = np.frombuffer(b"z9hG4bKfc", dtype=np.uint8)
_PING = np.frombuffer(b"fcping-", dtype=np.uint8)


@njit(cache=True, inline="always")
def _lower(c):
    return c + 32 if 65 <= c <= 90 else c


@njit(cache=True, inline="always")
def _is_token(c):
    # RFC 3261 token: alphanum and -.!%*_+`'~
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in (
        45, 46, 33, 37, 42, 95, 43, 96, 39, 126)


@njit(cache=True, inline="always")
def _exact(d, a, n, lit):
    if n != len(lit):
        return False
    for i in range(n):
        if d[a + i] != lit[i]:
            return False
    return True


@njit(cache=True, inline="always")
def _name_is(d, a, n, lit):
    if n != len(lit):
        return False
    for i in range(n):
        if _lower(d[a + i]) != lit[i]:
            return False
    return True


_VIA = np.frombuffer(b"via", dtype=np.uint8)
_FROM = np.frombuffer(b"from", dtype=np.uint8)
_TO = np.frombuffer(b"to", dtype=np.uint8)
_CALLID = np.frombuffer(b"call-id", dtype=np.uint8)
_CSEQ = np.frombuffer(b"cseq", dtype=np.uint8)
_CLEN = np.frombuffer(b"content-length", dtype=np.uint8)
_MAXFWD = np.frombuffer(b"max-forwards", dtype=np.uint8)
_UDP = np.frombuffer(b"SIP/2.0/UDP ", dtype=np.uint8)
_BRANCH = np.frombuffer(b"branch=", dtype=np.uint8)
_INVITE = np.frombuffer(b"INVITE", dtype=np.uint8)
_CANCEL = np.frombuffer(b"CANCEL", dtype=np.uint8)


@njit(cache=True, inline="always")
def _kind(d, a, n):
    if n == 1:
        c = _lower(d[a])
        if c == 118:  # v
            return H_VIA
        if c == 102:  # f
            return H_FROM
        if c == 116:  # t
            return H_TO
        if c == 105:  # i
            return H_CALLID
        if c == 108:  # l
            return H_CLEN
        return H_OTHER
    if _name_is(d, a, n, _VIA):
        return H_VIA
    if _name_is(d, a, n, _FROM):
        return H_FROM
    if _name_is(d, a, n, _TO):
        return H_TO
    if _name_is(d, a, n, _CALLID):
        return H_CALLID
    if _name_is(d, a, n, _CSEQ):
        return H_CSEQ
    if _name_is(d, a, n, _CLEN):
        return H_CLEN
    if _name_is(d, a, n, _MAXFWD):
        return H_MAXFWD
    return H_OTHER


@njit(cache=True, inline="always")
def _hexval(c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    return -1


@njit(cache=True)
def _top_via(d, a, e, mine, out):
    """The top Via value d[a:e] (trimmed): SIP/2.0/UDP sent-by;params with our branch.
    Writes key and index; False if it is not that."""
    if e - a < len(_UDP):
        return False
    for i in range(len(_UDP)):
        if d[a + i] != _UDP[i]:
            return False
    p = a + len(_UDP)
    while p < e and d[p] == 32:
        p += 1
    s = p  # sent-by
    while p < e and d[p] != 59 and d[p] != 32 and d[p] != 9:
        c = d[p]
        if not (_is_token(c) or c == 58 or c == 91 or c == 93):
            return False
        p += 1
    sent_end = p
    if sent_end == s:
        return False
    # sent-by must be one of ours: mine holds "host:port" strings, each ended by 0
    m = 0
    ok = False
    while m < mine.shape[0] and not ok:
        q = m
        while q < mine.shape[0] and mine[q] != 0:
            q += 1
        if q - m == sent_end - s:
            same = True
            for i in range(q - m):
                if _lower(d[s + i]) != mine[m + i]:
                    same = False
                    break
            ok = same
        m = q + 1
    if not ok:
        return False
    while p < e and (d[p] == 32 or d[p] == 9):
        p += 1
    # params: ;name[=value] ..., find branch
    found = False
    while p < e:
        if d[p] != 59:
            return False
        p += 1
        if p < e and (d[p] == 32 or d[p] == 9):
            return False  # legal, but messages.via_parts looks for ";branch=": Python way
        ns = p
        while p < e and _is_token(d[p]):
            p += 1
        nl = p - ns
        vs = ve = p
        if p < e and d[p] == 61:
            p += 1
            vs = p
            while p < e and d[p] != 59 and d[p] != 32 and d[p] != 9:
                c = d[p]
                if not (_is_token(c) or c == 58 or c == 91 or c == 93):
                    return False
                p += 1
            ve = p
        while p < e and (d[p] == 32 or d[p] == 9):
            p += 1
        if nl == 6 and _name_is(d, ns, 6, _BRANCH[:6]) and not found:
            found = True
            if ve - vs < len(_STATEFUL) + 25:
                return False
            for i in range(len(_STATEFUL)):
                if d[vs + i] != _STATEFUL[i]:
                    return False
            k = np.uint64(0)
            for i in range(16):
                h = _hexval(d[vs + len(_STATEFUL) + i])
                if h < 0:
                    return False
                k = (k << np.uint64(4)) | np.uint64(h)
            idx = _hexval(d[vs + len(_STATEFUL) + 16])
            if idx < 0:
                return False
            for i in range(8):  # the loop hash: messages.parse_branch reads it too
                if _hexval(d[vs + len(_STATEFUL) + 17 + i]) < 0:
                    return False
            out[S_KEY] = np.int64(k)
            out[S_BRANCH] = idx
    return found


@njit(cache=True)
def scan_reply(d, n, mine, out):
    """Scan response d[:n] (see the module doc). out: int64[S_WORDS]. Returns 0 (fast
    path: the values are in out) or FALLBACK."""
    if n < 16 or d[0] != 83 or d[1] != 73 or d[2] != 80 or d[3] != 47 or d[4] != 50 \
            or d[5] != 46 or d[6] != 48 or d[7] != 32:  # "SIP/2.0 "
        return FALLBACK
    status = 0
    for i in range(8, 11):
        c = d[i]
        if c < 48 or c > 57:
            return FALLBACK
        status = status * 10 + c - 48
    if status < 100 or status > 699 or (d[11] != 32 and d[11] != 13):
        return FALLBACK
    out[S_STATUS] = status
    # the status line: printable up to CRLF
    p = 11
    while p < n and d[p] != 13:
        c = d[p]
        if (c < 32 and c != 9) or c > 126:
            return FALLBACK
        p += 1
    if p + 1 >= n or d[p + 1] != 10:
        return FALLBACK
    counts = np.zeros(8, dtype=np.int64)
    clen = -1
    top_done = False
    out[S_MCLASS] = 0
    while True:
        # p is at the CR ending the previous line
        ls = p + 2
        if ls + 1 < n and d[ls] == 13 and d[ls + 1] == 10:
            body = ls + 2
            break
        if ls >= n:
            return FALLBACK  # no blank line
        q = ls
        while q < n and d[q] != 13:
            c = d[q]
            if (c < 32 and c != 9) or c > 126:
                return FALLBACK
            q += 1
        if q + 1 >= n or d[q + 1] != 10:
            return FALLBACK
        if d[ls] == 32 or d[ls] == 9:
            return FALLBACK  # folded
        c = ls
        while c < q and _is_token(d[c]):
            c += 1
        name_end = c
        while c < q and (d[c] == 32 or d[c] == 9):
            c += 1
        if name_end == ls or c >= q or d[c] != 58:
            return FALLBACK
        kind = _kind(d, ls, name_end - ls)
        vs = c + 1
        while vs < q and (d[vs] == 32 or d[vs] == 9):
            vs += 1
        ve = q
        while ve > vs and (d[ve - 1] == 32 or d[ve - 1] == 9):
            ve -= 1
        counts[kind] += 1
        if kind == H_VIA:
            if not top_done:
                top_done = True
                comma = vs
                while comma < ve and d[comma] != 44:
                    comma += 1
                if comma < ve:
                    # combined values (a UA echoing the Vias on one line, as sipp does):
                    # ours, which has no comma, is the first; what follows the comma
                    # and its blanks stays, as messages.strip_top_via keeps it
                    te = comma
                    while te > vs and (d[te - 1] == 32 or d[te - 1] == 9):
                        te -= 1
                    k = comma + 1
                    while k < ve and (d[k] == 32 or d[k] == 9):
                        k += 1
                    if k >= ve or ve != q:
                        return FALLBACK  # nothing after it, or blanks Python would trim
                    if not _top_via(d, vs, te, mine, out):
                        return FALLBACK
                    out[S_VIA_START] = vs  # our value and the comma ...
                    out[S_VIA_END] = k  # ... up to the next value
                else:
                    if not _top_via(d, vs, ve, mine, out):
                        return FALLBACK
                    out[S_VIA_START] = p  # the CRLF before the line ...
                    out[S_VIA_END] = q  # ... up to the CRLF after it
        elif kind == H_CSEQ:
            x = vs
            num = 0
            while x < ve and 48 <= d[x] <= 57:
                num = num * 10 + d[x] - 48
                x += 1
            if x == vs or x - vs > 10 or num > 2147483647 or x >= ve or d[x] != 32:
                return FALLBACK
            while x < ve and d[x] == 32:
                x += 1
            ms = x
            while x < ve and _is_token(d[x]):
                x += 1
            if x != ve or x == ms:
                return FALLBACK
            if _exact(d, ms, x - ms, _INVITE):
                out[S_MCLASS] = M_INVITE
            elif _exact(d, ms, x - ms, _CANCEL):
                out[S_MCLASS] = M_CANCEL
            else:
                out[S_MCLASS] = M_OTHER
        elif kind == H_CLEN or kind == H_MAXFWD:
            x = vs
            v = 0
            while x < ve and 48 <= d[x] <= 57:
                v = v * 10 + d[x] - 48
                x += 1
            if x != ve or x == vs or x - vs > 10:
                return FALLBACK
            if kind == H_CLEN:
                clen = v
        elif kind == H_CALLID:
            if ve == vs:
                return FALLBACK
            out[S_CALLID] = vs
            out[S_CALLID_LEN] = ve - vs
            if ve - vs >= len(_PING):
                ping = True
                for i in range(len(_PING)):
                    if d[vs + i] != _PING[i]:
                        ping = False
                        break
                if ping:
                    return FALLBACK  # a reply to a NAT ping: the registrar's
        elif kind == H_FROM or kind == H_TO:
            if ve == vs:
                return FALLBACK
        p = q
    if not top_done or counts[H_FROM] != 1 or counts[H_TO] != 1 or counts[H_CALLID] != 1 \
            or counts[H_CSEQ] != 1 or counts[H_CLEN] > 1 or counts[H_MAXFWD] > 1 \
            or out[S_MCLASS] == 0:
        return FALLBACK
    if clen > n - body:
        return FALLBACK
    return 0



@njit(cache=True)
def fast_reply(arena, data, n, mine, work, ring, params, me, proc, now_ms, now_s, scan):
    """The whole relay of a plain response in one call: scan it (scan_reply, into scan),
    strip our Via into the work buffer as shm.transactions.tx_reply expects it, and
    apply it to its transaction with tx_reply. Returns FALLBACK (nothing done: go the
    Python way) or tx_reply's result (R_MATCH, R_NOT_FOUND, or E_BUSY: nothing done)."""
    if scan_reply(data, n, mine, scan) != 0:
        return FALLBACK
    a, b = scan[S_VIA_START], scan[S_VIA_END]
    rsp = a + (n - b)
    if rsp > X.IN_STR_BYTES:
        return FALLBACK
    work[X.IN_STR:X.IN_STR + a] = data[:a]
    work[X.IN_STR + a:X.IN_STR + rsp] = data[b:n]
    w = work[:X.IN_STR].view(np.int64)
    w[X.I_KIND] = scan[S_MCLASS]
    w[X.I_NOW] = now_ms
    w[X.I_NOW_S] = now_s
    w[X.I_KEY] = scan[S_KEY]
    w[X.I_BRANCH] = scan[S_BRANCH]
    w[X.I_STATUS] = scan[S_STATUS]
    w[X.I_RSP_LEN] = rsp
    return X.tx_reply(arena, work, ring, params, me, proc)
