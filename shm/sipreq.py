"""In-dialog ACK and BYE routed by our Record-Route, relayed in one compiled call: the
requests of a call after its INVITE (services.sip.proxy does the same in Python).

Taken: `ACK` or `BYE sip:... SIP/2.0` with a To tag, plain CRLF lines of printable
ASCII, one From/To/Call-ID/CSeq (its method the request's, no leading zero), at most one
Max-Forwards (not 0) and Content-Length (fitting), no Proxy-Require, an RFC 3261 top Via
`SIP/2.0/UDP`, none of our own Vias (loops are the Python way's), and a top Route that
is exactly our single Record-Route entry `<sip:HOST:PORT;lr>`; the next hop (the next
Route, else the Request-URI) an IPv4 address that is not ours. Anything else: FALLBACK,
parse it in Python. Then, as the Python way does: ACK -> the transaction kernel (an ACK
of a non-2xx is absorbed there), else forwarded statelessly with a branch derived from
its own (zlib CRC-32, as messages.stateless_branch); BYE -> a server transaction
(shm.transactions.tx_request) and our branch with its key and loop hash (CRC-32, as
messages.loop_hash). The forwarded request is built byte for byte as
messages.forward_request builds it; tests/unit/test_sipreq.py runs both ways on the same
requests and compares what they send and what they leave in the table.
Neighbours: shm.sipscan (scanner helpers), shm.transactions, services.sip.proxy.
"""
from __future__ import annotations

import zlib

import numpy as np
from numba import njit

from fastcluster.shm import transactions as X
from fastcluster.shm.dialogs import (
    ID_ACK,
    ID_BYE,
    ID_CALLID_E,
    ID_CALLID_S,
    ID_CSEQ,
    ID_FROM_E,
    ID_FROM_S,
    ID_METHOD,
    ID_TO_E,
    ID_TO_S,
    ID_WORDS,
)
from fastcluster.shm.sipscan import FALLBACK, _exact, _is_token, _lower, _name_is

# output words (the forwarded request is in the work buffer's output data area); from
# Q_IDENT, the request's dialog identity as shm.dialogs.dlg_in_dialog reads it (ID_*)
(Q_RESULT, Q_KIND, Q_LEN, Q_DST_IP, Q_DST_PORT, Q_SOCK, Q_KEY, Q_IDENT) = range(8)
Q_WORDS = Q_IDENT + ID_WORDS
KIND_ACK, KIND_BYE = ID_ACK, ID_BYE
# fields of each listener in the `listeners` array: ip (u32), port, hostport text span
L_IP, L_PORT, L_TEXT, L_TEXT_LEN, L_WORDS = 0, 1, 2, 3, 4

_CRC = np.zeros(256, dtype=np.uint32)
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0xEDB88320 if _c & 1 else _c >> 1
    _CRC[_i] = _c
assert zlib.crc32(b"123456789") == 0xCBF43926

_ACK = np.frombuffer(b"ACK", dtype=np.uint8)
_BYE = np.frombuffer(b"BYE", dtype=np.uint8)
_INVITE = np.frombuffer(b"INVITE", dtype=np.uint8)
_SIPV = np.frombuffer(b" SIP/2.0", dtype=np.uint8)
_UDP = np.frombuffer(b"SIP/2.0/UDP ", dtype=np.uint8)
_COOKIE = np.frombuffer(b"z9hG4bK", dtype=np.uint8)
_TAG = np.frombuffer(b";tag=", dtype=np.uint8)
_FS = np.frombuffer(b"z9hG4bKfs", dtype=np.uint8)
_FC = np.frombuffer(b"z9hG4bKfc", dtype=np.uint8)
_VIA_HEAD = np.frombuffer(b"\r\nVia: SIP/2.0/UDP ", dtype=np.uint8)
_BRANCH = np.frombuffer(b";branch=", dtype=np.uint8)
_MF_HEAD = np.frombuffer(b"\r\nMax-Forwards: ", dtype=np.uint8)
_LR = np.frombuffer(b";lr>", dtype=np.uint8)
_SIP_LT = np.frombuffer(b"<sip:", dtype=np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_BAR = np.frombuffer(b"|", dtype=np.uint8)

H_OTHER, H_VIA, H_FROM, H_TO, H_CALLID, H_CSEQ, H_CLEN, H_MAXFWD, H_ROUTE, H_PREQ = range(10)


@njit(cache=True, inline="always")
def crc32(d, a, n, crc):
    """zlib.crc32(d[a:a+n], crc)."""
    c = np.uint32(crc) ^ np.uint32(0xFFFFFFFF)
    for i in range(n):
        c = _CRC[(c ^ np.uint32(d[a + i])) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
    return c ^ np.uint32(0xFFFFFFFF)


_L_VIA = np.frombuffer(b"via", dtype=np.uint8)
_L_FROM = np.frombuffer(b"from", dtype=np.uint8)
_L_TO = np.frombuffer(b"to", dtype=np.uint8)
_L_CALLID = np.frombuffer(b"call-id", dtype=np.uint8)
_L_CSEQ = np.frombuffer(b"cseq", dtype=np.uint8)
_L_CLEN = np.frombuffer(b"content-length", dtype=np.uint8)
_L_MAXFWD = np.frombuffer(b"max-forwards", dtype=np.uint8)
_L_ROUTE = np.frombuffer(b"route", dtype=np.uint8)
_L_PREQ = np.frombuffer(b"proxy-require", dtype=np.uint8)


@njit(cache=True, inline="always")
def _kind(d, a, n):
    if n == 1:
        c = _lower(d[a])
        if c == 118:
            return H_VIA
        if c == 102:
            return H_FROM
        if c == 116:
            return H_TO
        if c == 105:
            return H_CALLID
        if c == 108:
            return H_CLEN
        return H_OTHER
    if _name_is(d, a, n, _L_VIA):
        return H_VIA
    if _name_is(d, a, n, _L_FROM):
        return H_FROM
    if _name_is(d, a, n, _L_TO):
        return H_TO
    if _name_is(d, a, n, _L_CALLID):
        return H_CALLID
    if _name_is(d, a, n, _L_CSEQ):
        return H_CSEQ
    if _name_is(d, a, n, _L_CLEN):
        return H_CLEN
    if _name_is(d, a, n, _L_MAXFWD):
        return H_MAXFWD
    if _name_is(d, a, n, _L_ROUTE):
        return H_ROUTE
    if _name_is(d, a, n, _L_PREQ):
        return H_PREQ
    return H_OTHER


@njit(cache=True, inline="always")
def _ipv4(d, a, e):
    """(ip as u32, port or 0, ok) of `a.b.c.d[:port]` at d[a:e]."""
    ip = 0
    part = 0
    digits = 0
    dots = 0
    p = a
    while p < e and d[p] != 58:
        c = d[p]
        if c == 46:
            if digits == 0 or part > 255:
                return 0, 0, False
            ip = ip * 256 + part
            part = 0
            digits = 0
            dots += 1
        elif 48 <= c <= 57:
            if digits == 1 and part == 0:
                return 0, 0, False  # "01": the Python way keeps the text as written
            part = part * 10 + c - 48
            digits += 1
            if digits > 3:
                return 0, 0, False
        else:
            return 0, 0, False
        p += 1
    if dots != 3 or digits == 0 or part > 255:
        return 0, 0, False
    ip = ip * 256 + part
    port = 0
    if p < e:  # ':port'
        p += 1
        if p == e or e - p > 5:
            return 0, 0, False
        while p < e:
            c = d[p]
            if c < 48 or c > 57:
                return 0, 0, False
            port = port * 10 + c - 48
            p += 1
        if port == 0 or port > 65535:
            return 0, 0, False
    return ip, port, True


@njit(cache=True, inline="always")
def _sip_uri_hostport(d, a, e):
    """Span of host[:port] of `sip:[user@]host[:port][;params]` at d[a:e] (no '<')."""
    if e - a < 5 or d[a] != 115 or d[a + 1] != 105 or d[a + 2] != 112 or d[a + 3] != 58:
        return -1, -1
    s = a + 4
    p = s
    at = -1
    while p < e and d[p] != 59 and d[p] != 63 and d[p] != 62:
        if d[p] == 64:
            if at >= 0:
                return -1, -1
            at = p
        p += 1
    hs = at + 1 if at >= 0 else s
    return hs, p


@njit(cache=True, inline="always")
def _put(out, pos, src, a, n):
    out[pos:pos + n] = src[a:a + n]
    return pos + n


@njit(cache=True, inline="always")
def _put_hex(out, pos, v, digits):
    for i in range(digits - 1, -1, -1):
        out[pos + i] = _HEX[np.int64(v & np.uint64(15))]
        v = v >> np.uint64(4)
    return pos + digits


@njit(cache=True, inline="always")
def _put_dec(out, pos, v):
    digits = 1
    x = v
    while x >= 10:
        x //= 10
        digits += 1
    x = v
    for i in range(digits - 1, -1, -1):
        out[pos + i] = 48 + x % 10
        x //= 10
    return pos + digits


@njit(cache=True)
def fast_request(arena, data, n, listeners, text, in_sock, src_fam, src_port, src_addr,
                 work, ring, params, me, proc, now_ms, now_s, q):
    """See the module doc. listeners: int64[k, L_WORDS] (IPv4 listeners; their
    "host:port" texts in `text`); q: int64[Q_WORDS] answer words. Returns FALLBACK
    (nothing was done), or for an ACK: R_MATCH (absorbed) / R_NOT_FOUND (the forwarded
    request is in the work buffer's output data, Q_LEN bytes, to Q_DST_IP:Q_DST_PORT
    from listener Q_SOCK); for a BYE: tx_request's result (R_NEW: forwarded likewise;
    R_MATCH and errors: answer with the work buffer's output words, as the Python way).
    Whenever the transaction kernel was called, q[Q_IDENT:] holds the request's dialog
    identity (shm.dialogs ID_* words: the spans of its Call-ID, From and To values, its
    CSeq number and method) for dlg_in_dialog."""
    # ---- request line
    if n < 24:
        return FALLBACK
    if _exact(data, 0, 4, np.frombuffer(b"ACK ", dtype=np.uint8)):
        kind = KIND_ACK
        ru = 4
    elif _exact(data, 0, 4, np.frombuffer(b"BYE ", dtype=np.uint8)):
        kind = KIND_BYE
        ru = 4
    else:
        return FALLBACK
    p = ru
    while p < n and data[p] != 32 and data[p] != 13:
        c = data[p]
        if c <= 32 or c > 126:
            return FALLBACK
        p += 1
    ru_end = p
    if p + 10 > n or not _exact(data, p, 8, _SIPV) or data[p + 8] != 13 or data[p + 9] != 10:
        return FALLBACK
    ruri_hs, ruri_he = _sip_uri_hostport(data, ru, ru_end)
    if ruri_hs < 0:
        return FALLBACK
    # ---- headers
    counts = np.zeros(10, dtype=np.int64)
    via_s = via_e = br_s = br_e = sb_s = sb_e = -1
    from_s = from_e = to_s = to_e = cid_s = cid_e = -1
    cseq = -1
    clen = -1
    mf = -1
    route_line = -1  # the CR before the first Route line
    route_name_e = -1
    route_vs = route_ve = -1
    p = ru_end + 8  # the CR ending the request line
    head_end = -1
    while True:
        ls = p + 2
        if ls + 1 < n and data[ls] == 13 and data[ls + 1] == 10:
            head_end = p
            break
        if ls >= n:
            return FALLBACK
        e = ls
        while e < n and data[e] != 13:
            c = data[e]
            if (c < 32 and c != 9) or c > 126:
                return FALLBACK
            e += 1
        if e + 1 >= n or data[e + 1] != 10 or data[ls] == 32 or data[ls] == 9:
            return FALLBACK
        c = ls
        while c < e and _is_token(data[c]):
            c += 1
        name_e = c
        while c < e and (data[c] == 32 or data[c] == 9):
            c += 1
        if name_e == ls or c >= e or data[c] != 58:
            return FALLBACK
        k = _kind(data, ls, name_e - ls)
        vs = c + 1
        while vs < e and (data[vs] == 32 or data[vs] == 9):
            vs += 1
        ve = e
        while ve > vs and (data[ve - 1] == 32 or data[ve - 1] == 9):
            ve -= 1
        counts[k] += 1
        if k == H_VIA:
            for x in range(vs, ve):
                if data[x] == 44:
                    return FALLBACK
            if counts[H_VIA] == 1:
                via_s, via_e = vs, ve
            # a Via of ours: a loop or a spiral, the Python way decides
            x = vs
            if ve - vs > len(_UDP) and _exact(data, vs, len(_UDP), _UDP):
                x = vs + len(_UDP)
            y = x
            while y < ve and data[y] != 59 and data[y] != 32 and data[y] != 9:
                y += 1
            if _is_ours(data, x, y, listeners, text):
                return FALLBACK
            if counts[H_VIA] == 1:
                sb_s, sb_e = x, y
        elif k == H_CSEQ:
            x = vs
            num = 0
            if x < ve and data[x] == 48:
                return FALLBACK  # leading zero: the loop hash hashes str(int)
            while x < ve and 48 <= data[x] <= 57:
                num = num * 10 + data[x] - 48
                x += 1
            if x == vs or x - vs > 10 or num > 2147483647 or x >= ve or data[x] != 32:
                return FALLBACK
            while x < ve and data[x] == 32:
                x += 1
            if not _exact(data, x, ve - x, _ACK if kind == KIND_ACK else _BYE):
                return FALLBACK
            cseq = num
        elif k == H_CLEN or k == H_MAXFWD:
            x = vs
            v = 0
            while x < ve and 48 <= data[x] <= 57:
                v = v * 10 + data[x] - 48
                x += 1
            if x != ve or x == vs or x - vs > 10:
                return FALLBACK
            if k == H_CLEN:
                clen = v
            else:
                mf = v
        elif k == H_FROM:
            from_s, from_e = vs, ve
        elif k == H_TO:
            to_s, to_e = vs, ve
        elif k == H_CALLID:
            cid_s, cid_e = vs, ve
        elif k == H_ROUTE and counts[H_ROUTE] == 1:
            route_line, route_name_e = p, name_e
            route_vs, route_ve = vs, ve
        elif k == H_PREQ:
            return FALLBACK
        p = e
    body = head_end + 4
    if counts[H_VIA] == 0 or counts[H_FROM] != 1 or counts[H_TO] != 1 or \
            counts[H_CALLID] != 1 or counts[H_CSEQ] != 1 or counts[H_CLEN] > 1 or \
            counts[H_MAXFWD] > 1 or counts[H_ROUTE] == 0 or mf == 0:
        return FALLBACK
    if from_e <= from_s or to_e <= to_s or cid_e <= cid_s:
        return FALLBACK
    if clen > n - body:
        return FALLBACK
    body_end = n if clen < 0 else body + clen
    # ---- top Via: SIP/2.0/UDP sent-by;...;branch=z9hG4bK...
    if not _exact(data, via_s, len(_UDP), _UDP) or sb_e <= sb_s:
        return FALLBACK
    if not _plain_sent_by(data, sb_s, sb_e):
        return FALLBACK  # core.sip checks it with its own rules: the Python way
    x = sb_e
    while x < via_e:  # params, ;name=value without spaces, find branch
        if data[x] != 59:
            return FALLBACK
        x += 1
        ns = x
        while x < via_e and data[x] != 59 and data[x] != 61:
            c = data[x]
            if not _is_token(c):
                return FALLBACK
            x += 1
        nl = x - ns
        vs = x
        if x < via_e and data[x] == 61:
            x += 1
            vs = x
            while x < via_e and data[x] != 59:
                c = data[x]
                if c == 32 or c == 9 or c == 34 or c == 44:
                    return FALLBACK
                x += 1
        if nl == 6 and br_s < 0 and _name_is(data, ns, 6, np.frombuffer(b"branch",
                                                                       dtype=np.uint8)):
            br_s, br_e = vs, x
    if br_s < 0 or br_e - br_s <= len(_COOKIE) or not _exact(data, br_s, len(_COOKIE),
                                                               _COOKIE):
        return FALLBACK
    # ---- To tag (as core.sip.tag_of: after the last '>', no blanks)
    gt = -1
    for x in range(to_s, to_e):
        if data[x] == 34:
            return FALLBACK
        if data[x] == 62:
            gt = x
    if gt < 0:
        return FALLBACK
    tag_s = -1
    for x in range(gt + 1, to_e):
        if data[x] == 32 or data[x] == 9:
            return FALLBACK
    x = gt + 1
    while x + 5 <= to_e:
        if data[x] == 59 and _name_is(data, x + 1, 4, np.frombuffer(b"tag=", dtype=np.uint8)):
            tag_s = x + 5
            break
        x += 1
    if tag_s < 0 or tag_s >= to_e or data[tag_s] == 59:
        return FALLBACK
    if kind == KIND_ACK and to_e - tag_s >= 13 and data[tag_s] == 102 and \
            data[tag_s + 1] == 99 and data[tag_s + 2] == 76:
        return FALLBACK  # "fcL...": maybe the ACK of our own reply
    # ---- Route: exactly our entry <sip:HOST:PORT;lr> first
    if not _exact(data, route_vs, len(_SIP_LT), _SIP_LT):
        return FALLBACK
    first_e = route_vs
    while first_e < route_ve and data[first_e] != 62:
        first_e += 1
    if first_e >= route_ve:
        return FALLBACK
    hp_s = route_vs + len(_SIP_LT)
    hp_e = first_e + 1 - len(_LR)
    if hp_e <= hp_s or not _exact(data, hp_e, len(_LR), _LR):
        return FALLBACK
    li = _listener_of(data, hp_s, hp_e, listeners, text)
    if li < 0:
        return FALLBACK
    # what follows the first value: nothing, or ", <next>" ...
    rest_s = first_e + 1
    while rest_s < route_ve and (data[rest_s] == 32 or data[rest_s] == 9):
        rest_s += 1
    if rest_s < route_ve:
        if data[rest_s] != 44:
            return FALLBACK
        rest_s += 1
        while rest_s < route_ve and (data[rest_s] == 32 or data[rest_s] == 9):
            rest_s += 1
        if rest_s >= route_ve:
            return FALLBACK
    # the next hop: the next Route value, else the Request-URI
    if rest_s < route_ve:
        nh_s, nh_e = _route_value_hostport(data, rest_s, route_ve)
        for x in range(rest_s, route_ve):
            if data[x] == 34 or data[x] == 44 and x > rest_s:
                return FALLBACK  # quoted or a third value: the Python way splits them
    elif counts[H_ROUTE] > 1:
        return FALLBACK  # more Route lines: the Python way
    else:
        nh_s, nh_e = ruri_hs, ruri_he
    if nh_s < 0:
        return FALLBACK
    ip, port, ok = _ipv4(data, nh_s, nh_e)
    if not ok:
        return FALLBACK
    rip, rport, rok = _ipv4(data, ruri_hs, ruri_he)
    if rok:  # a Request-URI naming us: strict routing fix-up or a lookup, Python way
        for j in range(listeners.shape[0]):
            if listeners[j, L_IP] == rip and listeners[j, L_PORT] == (rport or 5060):
                return FALLBACK
    if port == 0:
        port = 5060
    for j in range(listeners.shape[0]):
        if listeners[j, L_IP] == ip and listeners[j, L_PORT] == port:
            return FALLBACK  # towards ourselves: the Python way
    # ---- the transaction kernel
    out_sock = 0
    q[Q_KIND] = kind
    q[Q_IDENT + ID_METHOD] = kind
    q[Q_IDENT + ID_CALLID_S] = cid_s
    q[Q_IDENT + ID_CALLID_E] = cid_e
    q[Q_IDENT + ID_FROM_S] = from_s
    q[Q_IDENT + ID_FROM_E] = from_e
    q[Q_IDENT + ID_TO_S] = to_s
    q[Q_IDENT + ID_TO_E] = to_e
    q[Q_IDENT + ID_CSEQ] = cseq
    q[Q_DST_IP] = ip
    q[Q_DST_PORT] = port
    q[Q_SOCK] = out_sock
    w = work[:X.IN_STR].view(np.int64)
    pos = X.IN_STR
    pos = _put(work, pos, data, br_s, br_e - br_s)
    work[pos] = 0
    pos += 1
    for x in range(sb_s, sb_e):
        work[pos] = _lower(data[x])
        pos += 1
    work[pos] = 0
    pos += 1
    mlit = _INVITE if kind == KIND_ACK else _BYE
    pos = _put(work, pos, mlit, 0, len(mlit))
    ilen = pos - X.IN_STR
    w[X.I_NOW] = now_ms
    w[X.I_NOW_S] = now_s
    w[X.I_CSEQ] = cseq
    w[X.I_SOCK] = in_sock
    w[X.I_FAM] = src_fam
    w[X.I_PORT] = src_port
    work[8 * X.I_ADDR:8 * X.I_ADDR + 16] = src_addr[:16]
    w[X.I_IDENT_LEN] = ilen
    w[X.I_FLAGS] = 0
    if kind == KIND_ACK:
        w[X.I_KIND] = X.K_ACK
        w[X.I_NB] = 0
        w[X.I_REQ_LEN] = 0
        w[X.I_TGT_LEN] = 0
        r = X.tx_request(arena, work, ring, params, me, proc)
        q[Q_RESULT] = r
        if r != X.R_NOT_FOUND:
            return r
    else:
        # request as received, then its target line: sock, ip, port, ruri, -, 0, 0
        pos = _put(work, pos, data, 0, n)
        qlen = n
        t0 = pos
        pos = _put_dec(work, pos, out_sock)
        work[pos] = 9
        pos += 1
        pos = _put_ip(work, pos, ip)
        work[pos] = 9
        pos += 1
        pos = _put_dec(work, pos, port)
        work[pos] = 9
        pos += 1
        pos = _put(work, pos, data, ru, ru_end - ru)
        for b in (9, 9, 48, 9, 48, 10):
            work[pos] = b
            pos += 1
        w[X.I_KIND] = X.K_REQUEST
        w[X.I_NB] = 1
        w[X.I_REQ_LEN] = qlen
        w[X.I_TGT_LEN] = pos - t0
        work[8 * X.I_GROUPS:8 * X.I_GROUPS + 8] = 0
        r = X.tx_request(arena, work, ring, params, me, proc)
        q[Q_RESULT] = r
        if r != X.R_NEW:
            return r
        o = work[X.OUT_AT:X.OUT_AT + 8 * X.OUT_WORDS].view(np.int64)
        q[Q_KEY] = o[X.O_KEY]
    # ---- the forwarded request, into the output data area
    out = work[X.OUT_DATA:]
    pos = _put(out, 0, data, 0, ru_end + 8)  # the request line, unchanged
    pos = _put(out, pos, _VIA_HEAD, 0, len(_VIA_HEAD))
    pos = _put(out, pos, text, listeners[out_sock, L_TEXT], listeners[out_sock, L_TEXT_LEN])
    pos = _put(out, pos, _BRANCH, 0, len(_BRANCH))
    if kind == KIND_ACK:
        a = crc32(data, br_s, br_e - br_s, 0)
        b = crc32(data, ru, ru_end - ru, a ^ np.uint32(0x5BD1E995))
        pos = _put(out, pos, _FS, 0, len(_FS))
        pos = _put_hex(out, pos, np.uint64(a), 8)
        pos = _put_hex(out, pos, np.uint64(b), 8)
    else:
        loop = crc32(data, ru, ru_end - ru, 0)
        loop = crc32(_BAR, 0, 1, loop)
        loop = crc32(data, from_s, from_e - from_s, loop)
        loop = crc32(_BAR, 0, 1, loop)
        loop = crc32(data, to_s, to_e - to_s, loop)
        loop = crc32(_BAR, 0, 1, loop)
        loop = crc32(data, cid_s, cid_e - cid_s, loop)
        loop = crc32(_BAR, 0, 1, loop)
        digits = np.zeros(10, dtype=np.uint8)
        nd = _put_dec(digits, 0, cseq)
        loop = crc32(digits, 0, nd, loop)
        pos = _put(out, pos, _FC, 0, len(_FC))
        pos = _put_hex(out, pos, np.uint64(q[Q_KEY]), 16)
        pos = _put_hex(out, pos, np.uint64(0), 1)
        pos = _put_hex(out, pos, np.uint64(loop), 8)
    # the rest of the head: our Route value dropped, Max-Forwards decremented
    newmf = mf - 1 if mf > 0 else 70
    src = ru_end + 8
    # the head is scanned again for Max-Forwards; the Route line is rewritten
    p = src
    while p < head_end:
        ls = p + 2
        e = ls
        while data[e] != 13:
            e += 1
        if p == route_line:
            if rest_s < route_ve:  # keep the other value: "\r\n" + name + ": " + values
                pos = _put(out, pos, data, p, route_name_e - p)
                out[pos] = 58
                out[pos + 1] = 32
                pos += 2
                pos = _put(out, pos, data, rest_s, route_ve - rest_s)
        else:
            c = ls
            while c < e and _is_token(data[c]):
                c += 1
            if _kind(data, ls, c - ls) == H_MAXFWD and c - ls > 1:
                while data[c] != 58:
                    c += 1
                c += 1
                while c < e and (data[c] == 32 or data[c] == 9):
                    c += 1
                pos = _put(out, pos, data, p, c - p)
                pos = _put_dec(out, pos, newmf)
            else:
                pos = _put(out, pos, data, p, e - p)
        p = e
    if mf < 0:
        pos = _put(out, pos, _MF_HEAD, 0, len(_MF_HEAD))
        pos = _put_dec(out, pos, newmf)
    for b in (13, 10, 13, 10):
        out[pos] = b
        pos += 1
    pos = _put(out, pos, data, body, body_end - body)
    q[Q_LEN] = pos
    return q[Q_RESULT]


@njit(cache=True, inline="always")
def _plain_sent_by(d, a, e):
    """host[:port] with host of [A-Za-z0-9_.-] and a 1-5 digit port."""
    p = a
    while p < e and d[p] != 58:
        c = d[p]
        if not ((48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95 or
                c == 46 or c == 45):
            return False
        p += 1
    if p == a:
        return False
    if p < e:
        digits = e - p - 1
        if digits < 1 or digits > 5:
            return False
        for x in range(p + 1, e):
            if d[x] < 48 or d[x] > 57:
                return False
    return True


@njit(cache=True, inline="always")
def _put_ip(out, pos, ip):
    for shift in (24, 16, 8, 0):
        pos = _put_dec(out, pos, (ip >> shift) & 255)
        if shift:
            out[pos] = 46
            pos += 1
    return pos


@njit(cache=True, inline="always")
def _is_ours(d, a, e, listeners, text):
    return _listener_of(d, a, e, listeners, text) >= 0


@njit(cache=True)
def _listener_of(d, a, e, listeners, text):
    """Index of the listener whose "host:port" is d[a:e] (case-insensitive), or -1."""
    for j in range(listeners.shape[0]):
        s, ln = listeners[j, L_TEXT], listeners[j, L_TEXT_LEN]
        if ln == e - a:
            same = True
            for i in range(ln):
                if _lower(d[a + i]) != text[s + i]:
                    same = False
                    break
            if same:
                return j
    return -1


@njit(cache=True)
def _route_value_hostport(d, a, e):
    """host[:port] span of a Route value `<sip:...>` at d[a:e], or (-1, -1)."""
    if e - a < 6 or d[a] != 60:
        return -1, -1
    x = a + 1
    while x < e and d[x] != 62:
        x += 1
    if x >= e or x != e - 1:
        return -1, -1
    return _sip_uri_hostport(d, a + 1, x)

