"""The plain REGISTER in one compiled call: recognised, packed for the registrar kernel,
applied (shm.contacts.ul_register) and answered 200 into a reply buffer, with no Python
between the datagram and the reply.

It takes services.sip.plainreg's plain form from an IPv4 source (an IPv6 one goes the
Python way) and handles it the same way, to the byte. For anything else, and for any
kernel outcome but REG_OK, it answers DECLINE having changed nothing (ul_register is
all or nothing), and the worker goes the Python way (plain, then general), which
decides. tests/unit/test_plainreg.py runs all three ways on generated
requests and compares replies, counters, rows, dirty marks and replication rings.
Neighbours: services.sip.plainreg (caller), shm.contacts (the packed request, the
registrar kernel, byte writers), shm.sipscan (byte helpers).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm import contacts as C
from fastcluster.shm import mmsg as M
from fastcluster.shm.contacts import _put_bytes as _put
from fastcluster.shm.contacts import _put_lit as _lit
from fastcluster.shm.contacts import _put_uint
from fastcluster.shm.sipscan import _exact, _is_token
from fastcluster.shm.table import bytes_equal

DECLINE = -1000

# input words (one int64 array: few kernel arguments); serve's: W_CLOCK_NS, the clock
# it reads (0: the system's; tests fix it), W_DATE_S, the second the Date line passed
# is for, W_TOTAL, W_ANSWERED and W_REFUSED its results, W_TS two words for clock_gettime
(W_N, W_SRC_PORT, W_SRC_IP_LEN, W_SOCK, W_NOW_S, W_NOW_MS, W_MIN_EXPIRES, W_MAX_EXPIRES,
 W_DEFAULT_EXPIRES, W_MAX_CONTACTS, W_TAG_LEN, W_CLOCK_NS, W_DATE_S, W_TOTAL, W_ANSWERED,
 W_REFUSED, W_TS, _W_TS2, W_WORDS) = range(19)
STALE_DATE = -1  # serve answered nothing of the batch: the Date line is another second's
# serve's counters: positions in the statistics row its `counters` array gives
C_RCV_REQ, C_RCV_REGISTER, C_ACCEPT, C_SENT, C_2XX, C_DROP, C_COUNTERS = range(7)

# header slots, as services.sip.plainreg._NAMES (exact spelling)
(H_VIA, H_FROM, H_TO, H_CALLID, H_CSEQ, H_CONTACT, H_EXPIRES, H_UA, H_ALLOW, H_MAXFWD,
 H_CLEN, H_SUPPORTED, NHEADERS) = range(13)
_NAMES = [np.frombuffer(name, dtype=np.uint8) for name in (
    b"Via", b"From", b"To", b"Call-ID", b"CSeq", b"Contact", b"Expires", b"User-Agent",
    b"Allow", b"Max-Forwards", b"Content-Length", b"Supported")]
(_N_VIA, _N_FROM, _N_TO, _N_CALLID, _N_CSEQ, _N_CONTACT, _N_EXPIRES, _N_UA, _N_ALLOW,
 _N_MAXFWD, _N_CLEN, _N_SUPPORTED) = _NAMES

_START = np.frombuffer(b"REGISTER sip:", dtype=np.uint8)
_VERSION = np.frombuffer(b" SIP/2.0\r\n", dtype=np.uint8)
_LT_SIP = np.frombuffer(b"<sip:", dtype=np.uint8)
_EXPIRES_PARAM = np.frombuffer(b";expires=", dtype=np.uint8)
_REGISTER = np.frombuffer(b" REGISTER", dtype=np.uint8)
_UDP = np.frombuffer(b"SIP/2.0/UDP ", dtype=np.uint8)
_BRANCH = np.frombuffer(b";branch=", dtype=np.uint8)
_RPORT = np.frombuffer(b";rport", dtype=np.uint8)
_SIP = np.frombuffer(b"sip:", dtype=np.uint8)
_OK_VIA = np.frombuffer(b"SIP/2.0 200 OK\r\nVia: ", dtype=np.uint8)
_FROM_LINE = np.frombuffer(b"\r\nFrom: ", dtype=np.uint8)
_TO_LINE = np.frombuffer(b"\r\nTo: ", dtype=np.uint8)
_TAG = np.frombuffer(b";tag=", dtype=np.uint8)
_CALLID_LINE = np.frombuffer(b"\r\nCall-ID: ", dtype=np.uint8)
_CSEQ_LINE = np.frombuffer(b"\r\nCSeq: ", dtype=np.uint8)
_CRLF = np.frombuffer(b"\r\n", dtype=np.uint8)
_RPORT_EQ = np.frombuffer(b";rport=", dtype=np.uint8)
_RECEIVED = np.frombuffer(b";received=", dtype=np.uint8)
_CLEN_ZERO = np.frombuffer(b"Content-Length: 0\r\n\r\n", dtype=np.uint8)


@njit(cache=True, inline="always")
def _is_host(c):
    # [A-Za-z0-9.\-]
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 46 or c == 45


@njit(cache=True, inline="always")
def _is_user(c):
    # [A-Za-z0-9\-_.!~*'()&=+$,]
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in (
        45, 95, 46, 33, 126, 42, 39, 40, 41, 38, 61, 43, 36, 44)


@njit(cache=True, inline="always")
def _run(d, a, end, kind):
    """End of the run of characters of `kind` (0 host, 1 user, 2 digit, 3 branch) from
    a, at most end."""
    i = a
    while i < end:
        c = d[i]
        if kind == 0:
            ok = _is_host(c)
        elif kind == 1:
            ok = _is_user(c)
        elif kind == 2:
            ok = 48 <= c <= 57
        else:
            ok = _is_token(c)  # a branch: RFC 3261 token characters
        if not ok:
            break
        i += 1
    return i


@njit(cache=True, inline="always")
def _at(d, a, end, lit):
    """Whether d[a:end] starts with lit."""
    return a + len(lit) <= end and _exact(d, a, len(lit), lit)


@njit(cache=True, inline="always")
def _number(d, a, b):
    v = 0
    for i in range(a, b):
        v = v * 10 + d[i] - 48
    return v


@njit(cache=True, inline="always")
def _digits(d, a, b, most):
    """Whether d[a:b] is 1..most digits."""
    return 0 < b - a <= most and _run(d, a, b, 2) == b


@njit(cache=True, inline="always")
def _lower_into(out, pos, src, a, n):
    if pos < 0 or pos + n > out.shape[0]:
        return -1
    for i in range(n):
        c = src[a + i]
        out[pos + i] = c + 32 if 65 <= c <= 90 else c
    return pos + n


@njit(cache=True)
def _headers(d, n, spans):
    """The header lines after the start line, each `Name: value` with a known exact
    name at most once and a value of printable ASCII without blanks at its edges, then
    the blank line that ends the datagram. spans[h] = (start, end) of each value (-1:
    absent). Returns False when the head is not of that form."""
    for h in range(NHEADERS):
        spans[h, 0] = -1
    # the start line: REGISTER sip:host[:port] SIP/2.0 (port <= 65535)
    if not _at(d, 0, n, _START):
        return False
    i = _run(d, len(_START), n, 0)
    if i == len(_START):
        return False
    if i < n and d[i] == 58:
        j = _run(d, i + 1, n, 2)
        if not _digits(d, i + 1, j, 5) or _number(d, i + 1, j) > 65535:
            return False
        i = j
    if not _at(d, i, n, _VERSION):
        return False
    i += len(_VERSION)
    count = 0
    while True:
        if _at(d, i, n, _CRLF):
            return i + 2 == n and count > 0  # the blank line, and no body
        a = i
        while i < n and ((65 <= d[i] <= 90) or (97 <= d[i] <= 122) or d[i] == 45):
            i += 1
        name_len = i - a
        if name_len == 0 or i + 2 > n or d[i] != 58 or d[i + 1] != 32:
            return False
        v = i + 2
        e = v
        while e < n and 32 <= d[e] <= 126:
            e += 1
        if e == v or e + 2 > n or d[e] != 13 or d[e + 1] != 10 or d[v] == 32 or \
                d[e - 1] == 32:
            return False
        slot = -1
        if _exact(d, a, name_len, _N_VIA):
            slot = H_VIA
        elif _exact(d, a, name_len, _N_FROM):
            slot = H_FROM
        elif _exact(d, a, name_len, _N_TO):
            slot = H_TO
        elif _exact(d, a, name_len, _N_CALLID):
            slot = H_CALLID
        elif _exact(d, a, name_len, _N_CSEQ):
            slot = H_CSEQ
        elif _exact(d, a, name_len, _N_CONTACT):
            slot = H_CONTACT
        elif _exact(d, a, name_len, _N_EXPIRES):
            slot = H_EXPIRES
        elif _exact(d, a, name_len, _N_UA):
            slot = H_UA
        elif _exact(d, a, name_len, _N_ALLOW):
            slot = H_ALLOW
        elif _exact(d, a, name_len, _N_MAXFWD):
            slot = H_MAXFWD
        elif _exact(d, a, name_len, _N_CLEN):
            slot = H_CLEN
        elif _exact(d, a, name_len, _N_SUPPORTED):
            slot = H_SUPPORTED
        if slot < 0 or spans[slot, 0] >= 0:
            return False
        spans[slot, 0] = v
        spans[slot, 1] = e
        count += 1
        i = e + 2


_METHOD_NAMES = np.frombuffer(b"INVITECANCELACKBYEINFOOPTIONSUPDATEREGISTERMESSAGESUBSCRIBE"
                              b"NOTIFYPRACKREFERPUBLISH", dtype=np.uint8)
_METHOD_LENS = np.array([6, 6, 3, 3, 4, 7, 6, 8, 7, 9, 6, 5, 5, 7], dtype=np.int64)


@njit(cache=True)
def _methods_mask(d, a, b):
    """services.sip.registrar.methods_mask of the Allow value d[a:b]: quotes dropped,
    split on commas, each name trimmed of spaces and compared in upper case."""
    mask = 0
    piece = np.empty(b - a, dtype=np.uint8)
    i = a
    while i <= b:
        # one comma-separated piece, its quotes dropped
        n = 0
        while i < b and d[i] != 44:
            if d[i] != 34:
                c = d[i]
                piece[n] = c - 32 if 97 <= c <= 122 else c
                n += 1
            i += 1
        i += 1  # past the comma (or the end)
        s, e = 0, n
        while s < e and piece[s] == 32:
            s += 1
        while e > s and piece[e - 1] == 32:
            e -= 1
        off = 0
        for m in range(len(_METHOD_LENS)):
            ln = _METHOD_LENS[m]
            if e - s == ln and bytes_equal(piece, s, _METHOD_NAMES, off, ln):
                mask |= 1 << m
            off += ln
    return mask


@njit(cache=True)
def _sip_user_host(d, a, b, parts):
    """`<sip:user@host` at d[a:b]: parts = [user start, user end, host start, host end];
    returns where the host ends, or -1."""
    if not _at(d, a, b, _LT_SIP):
        return -1
    u = a + len(_LT_SIP)
    ue = _run(d, u, b, 1)
    if ue == u or ue >= b or d[ue] != 64:
        return -1
    hs = ue + 1
    he = _run(d, hs, b, 0)
    if he == hs:
        return -1
    parts[0], parts[1], parts[2], parts[3] = u, ue, hs, he
    return he


# parsed values (one int64 array, beside the header spans)
(F_TO_USER, F_TO_USER_END, F_TO_HOST, F_TO_HOST_END, F_C_USER, F_C_USER_END, F_C_HOST,
 F_C_HOST_END, F_PORT, F_PORT_END, F_CSEQ, F_EXPIRES, F_RPORT, F_NAT, F_WORDS) = range(15)


@njit(cache=True, inline="always")
def _is_ip(d, a, b, ip, ip_len):
    """Whether host d[a:b], in lower case, is the dotted address ip[:ip_len]."""
    if b - a != ip_len:
        return False
    for i in range(ip_len):
        c = d[a + i]
        if (c + 32 if 65 <= c <= 90 else c) != ip[i]:
            return False
    return True


@njit(cache=True)
def _values(d, spans, words, src_ip, f):
    """The plain form's values into f (F_*), or False when a header is not of that
    form or the request is one the Python way answers (423)."""
    for h in (H_VIA, H_FROM, H_TO, H_CALLID, H_CSEQ, H_CONTACT):
        if spans[h, 0] < 0:
            return False
    # To: <sip:user@host>
    a, b = spans[H_TO, 0], spans[H_TO, 1]
    e = _sip_user_host(d, a, b, f[F_TO_USER:F_TO_HOST_END + 1])
    if e < 0 or e + 1 != b or d[e] != 62:
        return False
    # Contact: <sip:user@host[:port]>[;expires=N]
    a, b = spans[H_CONTACT, 0], spans[H_CONTACT, 1]
    e = _sip_user_host(d, a, b, f[F_C_USER:F_C_HOST_END + 1])
    if e < 0:
        return False
    f[F_PORT] = f[F_PORT_END] = -1
    if e < b and d[e] == 58:
        f[F_PORT] = e + 1
        e = f[F_PORT_END] = _run(d, e + 1, b, 2)
        if not _digits(d, f[F_PORT], e, 5):
            return False
    if e >= b or d[e] != 62:
        return False
    e += 1
    c_expires = -1
    if e < b:
        if not _at(d, e, b, _EXPIRES_PARAM) or not _digits(d, e + len(_EXPIRES_PARAM), b, 9):
            return False
        c_expires = _number(d, e + len(_EXPIRES_PARAM), b)
    # CSeq: N REGISTER
    a, b = spans[H_CSEQ, 0], spans[H_CSEQ, 1]
    e = _run(d, a, b, 2)
    if not _digits(d, a, e, 9) or not _at(d, e, b, _REGISTER) or e + len(_REGISTER) != b:
        return False
    f[F_CSEQ] = _number(d, a, e)
    # Via: SIP/2.0/UDP host[:port];branch=B[;rport]
    a, b = spans[H_VIA, 0], spans[H_VIA, 1]
    if not _at(d, a, b, _UDP):
        return False
    e = _run(d, a + len(_UDP), b, 0)
    if e == a + len(_UDP):
        return False
    if e < b and d[e] == 58:
        j = _run(d, e + 1, b, 2)
        if not _digits(d, e + 1, j, 5):
            return False
        e = j
    if not _at(d, e, b, _BRANCH):
        return False
    j = _run(d, e + len(_BRANCH), b, 3)
    if j == e + len(_BRANCH):
        return False
    f[F_RPORT] = 1 if j != b else 0
    if j != b and (not _at(d, j, b, _RPORT) or j + len(_RPORT) != b):
        return False
    # Content-Length 0, Max-Forwards and Expires numbers
    a, b = spans[H_CLEN, 0], spans[H_CLEN, 1]
    if a >= 0 and (b - a != 1 or d[a] != 48):
        return False
    a, b = spans[H_MAXFWD, 0], spans[H_MAXFWD, 1]
    if a >= 0 and not _digits(d, a, b, 9):
        return False
    header_expires = -1
    a, b = spans[H_EXPIRES, 0], spans[H_EXPIRES, 1]
    if a >= 0:
        if not _digits(d, a, b, 9):
            return False
        header_expires = _number(d, a, b)
    if c_expires >= 0:
        expires = c_expires
    elif header_expires >= 0:
        expires = header_expires
    else:
        expires = words[W_DEFAULT_EXPIRES]
    if expires:
        if expires < words[W_MIN_EXPIRES]:
            return False  # 423, the Python way
        if expires > words[W_MAX_EXPIRES]:
            expires = words[W_MAX_EXPIRES]
    f[F_EXPIRES] = expires
    port = 0
    if f[F_PORT] >= 0:
        port = _number(d, f[F_PORT], f[F_PORT_END])
        if not 0 < port < 65536:
            return False
    # NAT: the Contact's host (lower case) is not the source address, or its port
    # (5060 when absent) not the source port
    same = (port if port else 5060) == words[W_SRC_PORT] and _is_ip(
        d, f[F_C_HOST], f[F_C_HOST_END], src_ip, words[W_SRC_IP_LEN])
    f[F_NAT] = 0 if same else 1
    return True


@njit(cache=True)
def _pack(req, d, spans, f, words, src_ip):
    """The request for ul_register, as shm.contacts.pack_register writes it; False when
    it does not fit."""
    aor_len = (f[F_TO_USER_END] - f[F_TO_USER]) + 1 + (f[F_TO_HOST_END] - f[F_TO_HOST])
    callid_a, callid_b = spans[H_CALLID, 0], spans[H_CALLID, 1]
    ua_a, ua_b = spans[H_UA, 0], spans[H_UA, 1]
    ua_len = ua_b - ua_a if ua_a >= 0 else 0
    uri_len = 4 + (f[F_C_USER_END] - f[F_C_USER]) + 1 + (f[F_C_HOST_END] - f[F_C_HOST])
    if f[F_PORT] >= 0:
        uri_len += 1 + f[F_PORT_END] - f[F_PORT]
    pos = (C.REQ_STRINGS + aor_len + (callid_b - callid_a) + ua_len + 7) & ~7
    if pos + 8 * C.CON_WORDS + uri_len > req.shape[0]:
        return False
    nat = f[F_NAT]
    q = req[:C.REQ_STRINGS].view(np.int64)
    q[C.Q_NCONTACTS] = 1
    q[C.Q_CSEQ] = f[F_CSEQ]
    q[C.Q_NOW_S] = words[W_NOW_S]
    q[C.Q_NOW_MS] = words[W_NOW_MS]
    q[C.Q_MAX_CONTACTS] = words[W_MAX_CONTACTS]
    q[C.Q_WILDCARD] = 0
    q[C.Q_RFAM] = 4 if nat else 0
    q[C.Q_RPORT] = words[W_SRC_PORT] if nat else 0
    q[C.Q_SOCK] = words[W_SOCK]
    q[C.Q_FLAGS] = 0
    q[C.Q_AOR_LEN] = aor_len
    q[C.Q_CALLID_LEN] = callid_b - callid_a
    q[C.Q_UA_LEN] = ua_len
    q[C.Q_PATH_LEN] = 0
    a = spans[H_ALLOW, 0]
    q[C.Q_METHODS] = _methods_mask(d, a, spans[H_ALLOW, 1]) if a >= 0 else 0
    q[C.Q_MODE] = 0
    req[C.REQ_ADDR:C.REQ_ADDR + 16] = 0
    if nat:  # the dotted source address as 4 bytes
        k = v = 0
        for i in range(words[W_SRC_IP_LEN]):
            c = src_ip[i]
            if c == 46:
                req[C.REQ_ADDR + k] = v
                k += 1
                v = 0
            else:
                v = v * 10 + c - 48
        req[C.REQ_ADDR + k] = v
    p = _put(req, C.REQ_STRINGS, d, f[F_TO_USER], f[F_TO_USER_END] - f[F_TO_USER])
    req[p] = 64
    p = _lower_into(req, p + 1, d, f[F_TO_HOST], f[F_TO_HOST_END] - f[F_TO_HOST])
    p = _put(req, p, d, callid_a, callid_b - callid_a)
    if ua_len:
        p = _put(req, p, d, ua_a, ua_len)
    p = (p + 7) & ~7
    cw = req[p:p + 8 * C.CON_WORDS].view(np.int64)
    cw[0], cw[1], cw[2], cw[3] = uri_len, 0, f[F_EXPIRES], -1  # uri, instance, expires, q
    cw[4], cw[5], cw[6] = 0, -1, C.FLAG_NAT if nat else 0  # reg-id, methods, flags
    p = _lit(req, p + 8 * C.CON_WORDS, _SIP)
    p = _put(req, p, d, f[F_C_USER], f[F_C_USER_END] - f[F_C_USER])
    req[p] = 64
    p = _lower_into(req, p + 1, d, f[F_C_HOST], f[F_C_HOST_END] - f[F_C_HOST])
    if f[F_PORT] >= 0:
        req[p] = 58
        _put(req, p + 1, d, f[F_PORT], f[F_PORT_END] - f[F_PORT])
    return True


@njit(cache=True)
def _reply(out, d, spans, f, words, src_ip, tag, fixed, date, res):
    """The 200 OK (services.sip.plainreg's template), the Via stamped as
    core.sip.stamp_top_via does to this form; res: ul_register's output. Returns its
    length, or -1 when it does not fit."""
    src_len = words[W_SRC_IP_LEN]
    r = _lit(out, 0, _OK_VIA)
    a, b = spans[H_VIA, 0], spans[H_VIA, 1]
    if f[F_RPORT]:
        r = _put(out, r, d, a, b - len(_RPORT) - a)
        r = _lit(out, r, _RPORT_EQ)
        r = _put_uint(out, r, words[W_SRC_PORT]) if r >= 0 else -1
        r = _lit(out, r, _RECEIVED)
        r = _put(out, r, src_ip, 0, src_len)
    else:
        r = _put(out, r, d, a, b - a)
        if not _is_ip(d, a + len(_UDP), _run(d, a + len(_UDP), b, 0), src_ip, src_len):
            r = _lit(out, r, _RECEIVED)
            r = _put(out, r, src_ip, 0, src_len)
    r = _lit(out, r, _FROM_LINE)
    r = _put(out, r, d, spans[H_FROM, 0], spans[H_FROM, 1] - spans[H_FROM, 0])
    r = _lit(out, r, _TO_LINE)
    r = _put(out, r, d, spans[H_TO, 0], spans[H_TO, 1] - spans[H_TO, 0])
    r = _lit(out, r, _TAG)
    r = _put(out, r, tag, 0, words[W_TAG_LEN])
    r = _lit(out, r, _CALLID_LINE)
    r = _put(out, r, d, spans[H_CALLID, 0], spans[H_CALLID, 1] - spans[H_CALLID, 0])
    r = _lit(out, r, _CSEQ_LINE)
    r = _put(out, r, d, spans[H_CSEQ, 0], spans[H_CSEQ, 1] - spans[H_CSEQ, 0])
    r = _lit(out, r, _CRLF)
    r = _put(out, r, fixed, 0, fixed.shape[0])
    r = _put(out, r, date, 0, date.shape[0])
    r = _put(out, r, res, C.OUT_TEXT, res[:C.OUT_TEXT].view(np.int64)[2])
    return _lit(out, r, _CLEN_ZERO)


@njit(cache=True)
def plain_register(arena, ring, work, me, proc, data, src_ip, words, tag, fixed, date,
                   out):
    """Answer one plain REGISTER (see the module doc). data: the datagram; src_ip: its
    source address as dotted text; words: W_* inputs; tag: the To tag; fixed: the
    Server lines; date: the Date line; out: the reply. Returns the reply's length, or
    DECLINE (nothing changed; or, when the reply does not fit `out`, the request
    applied: the Python way then finds a retransmission and answers it), or the
    registrar kernel's error (nothing changed)."""
    spans = np.empty((NHEADERS, 2), dtype=np.int64)
    f = np.empty(F_WORDS, dtype=np.int64)
    if not _headers(data, words[W_N], spans) or not _values(data, spans, words, src_ip, f) \
            or not _pack(work[C.WORK_REQ:C.WORK_OUT], data, spans, f, words, src_ip):
        return DECLINE
    status = C.ul_register(arena, ring, work, me, proc)
    if status != C.REG_OK:
        return status
    r = _reply(out, data, spans, f, words, src_ip, tag, fixed, date,
               work[C.WORK_OUT:C.WORK_ROW])
    return r if r > 0 else DECLINE


@njit(cache=True)
def answer_batch(arena, ring, work, me, proc, fd, count, rx, names, bufs, words, tag,
                 fixed, date, tx, tx_iov, outs, status, sent):
    """plain_register for each of the `count` datagrams of a received batch
    (shm.mmsg.Batch's arrays) from an IPv4 source; the answers sent with sendmmsg to
    where their requests came from (send_batch: sent). status[i]: 1 answered, 0 for
    the Python way (nothing changed). words: as plain_register's, W_SOCK and the
    clock and settings set; W_N and the source words are set here. Returns how many
    were answered."""
    ip = np.empty(16, dtype=np.uint8)
    k = 0
    for i in range(count):
        status[i] = 0
        ip_len = M.address_text(names[i], ip)
        if ip_len == 0:
            continue
        words[W_N] = rx[i, M.H_LEN] & 0xFFFFFFFF
        words[W_SRC_PORT] = names[i, 2] * 256 + names[i, 3]
        words[W_SRC_IP_LEN] = ip_len
        r = plain_register(arena, ring, work, me, proc, bufs[i], ip[:ip_len], words, tag,
                           fixed, date, outs[k])
        if r <= 0:
            continue
        status[i] = 1
        tx[k, M.H_NAME] = rx[i, M.H_NAME]
        tx[k, M.H_NAMELEN] = rx[i, M.H_NAMELEN]
        tx_iov[k, 1] = r
        k += 1
    M.send_batch(fd, tx, k, sent)
    return k


@njit(cache=True, nogil=True)
def serve(fd, flags, epfd, events, sock, until_ns, batches, arena, ring, work, me, proc,
          rx, names, bufs, words, tag, fixed, date, tx, tx_iov, outs, status, sent, stats,
          counters):
    """A SIP worker's receive loop without Python: up to `batches` times, one recvmmsg
    on fd (shm.mmsg.recv_batch: flags, the batch's arrays; with epfd >= 0, a socket the
    workers share, shm.mmsg.wait_batch instead: flags unused), then answer_batch on what
    came, timed by the clock read after it arrived, its counters added straight into
    the process's statistics row (stats[counters[C_*]]: a worker killed loses none).
    It returns to the caller as soon as a batch holds a datagram for the Python way,
    the Date line is stale, a receive comes back empty (the socket's timeout, nothing
    queued with MSG_DONTWAIT, a signal, until_ns with epfd), a batch taken with
    MSG_DONTWAIT without epfd was not full, or CLOCK_MONOTONIC passes until_ns (the
    worker's heartbeat). sock: the listener's index; `date`: the Date line for second
    words[W_DATE_S]. It runs without the GIL.
    Returns the last recv_batch's result (its datagrams, or -errno); words[W_TOTAL]:
    the datagrams received in all; words[W_ANSWERED]: how many of the last batch were
    answered, or STALE_DATE when `date` is not the current second's (that batch is left
    unanswered for the caller to answer with a fresh line, answer_batch);
    words[W_REFUSED]: the errno of an answer the kernel refused to send, 0 if none."""
    words[W_TOTAL] = 0
    words[W_REFUSED] = 0
    words[W_SOCK] = sock
    n = 0
    for _ in range(batches):
        words[W_ANSWERED] = 0
        if epfd >= 0:
            n = M.wait_batch(epfd, fd, rx, events, until_ns, words[W_TS:W_TS + 2])
        else:
            n = M.recv_batch(fd, rx, rx.shape[0], flags)
        if n <= 0:
            return n
        words[W_TOTAL] += n
        ns = words[W_CLOCK_NS]
        if ns == 0:
            ns = M.clock_ns(M.CLOCK_REALTIME, words[W_TS:W_TS + 2])
        if ns // 1_000_000_000 != words[W_DATE_S]:
            words[W_ANSWERED] = STALE_DATE
            return n
        words[W_NOW_S] = ns // 1_000_000_000
        words[W_NOW_MS] = ns // 1_000_000
        k = answer_batch(arena, ring, work, me, proc, fd, n, rx, names, bufs, words, tag,
                         fixed, date, tx, tx_iov, outs, status, sent)
        words[W_ANSWERED] = k
        stats[counters[C_RCV_REQ]] += k
        stats[counters[C_RCV_REGISTER]] += k
        stats[counters[C_ACCEPT]] += k
        stats[counters[C_SENT]] += sent[0]
        stats[counters[C_2XX]] += sent[0]
        if sent[1]:
            stats[counters[C_DROP]] += sent[1]
            words[W_REFUSED] = sent[2]
        if k < n or (epfd < 0 and flags & M.MSG_DONTWAIT and n < rx.shape[0]) or \
                M.clock_ns(M.CLOCK_MONOTONIC, words[W_TS:W_TS + 2]) >= until_ns:
            return n
    return n
