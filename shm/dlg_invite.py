"""The dialog changes of an initial INVITE transaction read from the bytes, one kernel
call each: the dialog an INVITE creates (dlg_invite_create: what
services.sip.dialogs.DialogTracker.admit stores after parse_message, when no profile has
a limit) and the change a response to it makes (dlg_invite_reply: what
DialogTracker.on_invite_reply does, for the plain responses the compiled relay,
shm.sipscan.fast_reply, takes). Plain: CRLF lines of printable ASCII, header names
followed by their colon, one From/To/Call-ID, at most one Contact (`<uri>...` without
quotes or commas), Record-Route values without quotes or commas inside <>; tags as
core.sip.tag_of reads them its quick way; an INVITE's From and To as `<uri>...`.
Anything else answers IN_UNSURE before doing anything, and the caller goes the Python
way, as it does for a change that does not fit the row (E_TOO_LONG: its rules for a
callee side too long are Python's). tests/unit/test_fastpath_dialogs.py holds both ways
to the same tables. Neighbours: shm.dialogs (dlg_apply, tag_span),
services.sip.dialogs, services.sip.dialog_invite, services.sip.fastpath.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.atomics import unmanaged
from fastcluster.shm.dialogs import (
    DLG_CONFIRMED_NA,
    DLG_EARLY,
    DLG_UNCONFIRMED,
    EXPIRY_GRACE_S,
    IN_NONE,
    IN_UNSURE,
    O_CALLER_CSEQ,
    O_CREATOR,
    O_FLAGS,
    O_START,
    O_TIMEOUT,
    OP_CREATE,
    OP_FAIL,
    OP_UPDATE,
    S_CALLID,
    S_FROM_TAG,
    S_PROFILES,
    S_SHTAG,
    S_TO_TAG,
    STRING_INDEX,
    dlg_apply,
    tag_span,
)
from fastcluster.shm.hashing import SEED_GROUP, as_key, group_hash, hash_bytes
from fastcluster.shm.raw import st16, st32, st64
from fastcluster.shm.sipscan import _is_token, _lower, _name_is
from fastcluster.shm.table import E_TOO_LONG, R_AUX, R_EXPIRES, R_STATE, ST_LIVE, views

# dlg_invite_reply's words: inputs, then what it chose
(W_STATUS, W_FINAL, W_NOW_S, W_LIFETIME_S, W_UNCONFIRMED_S, W_NOW_MS, W_OP,
 W_WORDS) = range(8)
# dlg_invite_create's words: inputs (W_NOW_S, W_UNCONFIRMED_S and W_NOW_MS as above),
# then the new dialog's dialog_ids
W_CSEQ, W_FLAGS, W_CREATOR, W_KEY, W_GROUP = range(W_OP, W_OP + 5)
C_WORDS = W_GROUP + 1
# our listeners (`mine` rows): their host text in mine_text, as services.sip.routing
# compares it (a Record-Route entry's host lower-cased, its port or 5060)
M_TEXT, M_LEN, M_PORT, M_WORDS = 0, 1, 2, 3
MAX_ENTRIES = 32  # Record-Route entries read; more: the Python way
S_CALLEE_CONTACT = STRING_INDEX["callee_contact"]
S_CALLER_ROUTE, S_CALLEE_ROUTE = STRING_INDEX["caller_route"], STRING_INDEX["callee_route"]
S_CALLEE_SOCK = STRING_INDEX["callee_sock"]
S_FROM_URI, S_TO_URI = STRING_INDEX["from_uri"], STRING_INDEX["to_uri"]
S_CALLER_CONTACT, S_CALLER_SOCK = STRING_INDEX["caller_contact"], STRING_INDEX["caller_sock"]
MAX_RR = 8  # Record-Route lines read; more: the Python way

_L_FROM = np.frombuffer(b"from", dtype=np.uint8)
_L_TO = np.frombuffer(b"to", dtype=np.uint8)
_L_CALLID = np.frombuffer(b"call-id", dtype=np.uint8)
_L_CONTACT = np.frombuffer(b"contact", dtype=np.uint8)
_L_RR = np.frombuffer(b"record-route", dtype=np.uint8)
H_OTHER, H_FROM, H_TO, H_CALLID, H_CONTACT, H_RR = range(6)
NKINDS = 6  # _scan's spans: value start, end and count of each kind (the last one seen)


@njit(cache=True, inline="always")
def _kind(d, a, n):
    if n == 1:
        c = _lower(d[a])
        if c == 102:
            return H_FROM
        if c == 116:
            return H_TO
        if c == 105:
            return H_CALLID
        if c == 109:
            return H_CONTACT
        return H_OTHER
    if _name_is(d, a, n, _L_FROM):
        return H_FROM
    if _name_is(d, a, n, _L_TO):
        return H_TO
    if _name_is(d, a, n, _L_CALLID):
        return H_CALLID
    if _name_is(d, a, n, _L_CONTACT):
        return H_CONTACT
    if _name_is(d, a, n, _L_RR):
        return H_RR
    return H_OTHER


@njit(cache=True, inline="always")
def _trim(d, s, e):
    while s < e and (d[s] == 32 or d[s] == 9):
        s += 1
    while e > s and (d[e - 1] == 32 or d[e - 1] == 9):
        e -= 1
    return s, e


@njit(cache=True)
def _mine(d, s, e, mine, mine_text):
    """Whether Record-Route entry d[s:e] names one of our listeners, as
    routing.is_local(uri_hostport(uri_of(entry))) says; -1: not sure (the Python way)."""
    us, ue = s, e
    for x in range(s, e):
        if d[x] == 60:
            us = x + 1
            ue = e
            for y in range(us, e):
                if d[y] == 62:
                    ue = y
                    break
            break
    us, ue = _trim(d, us, ue)
    if us < ue and d[us] == 60:
        return -1
    # ^sips?:
    if ue - us < 4 or _lower(d[us]) != 115 or _lower(d[us + 1]) != 105 or \
            _lower(d[us + 2]) != 112:
        return 0
    h = us + 3
    if h < ue and _lower(d[h]) == 115:
        h += 1
    if h >= ue or d[h] != 58:
        return 0
    h += 1
    x = h
    while x < ue and d[x] != 64 and d[x] != 59 and d[x] != 63 and d[x] != 62:
        x += 1
    if x < ue and d[x] == 64:
        h = x + 1
    he = h
    while he < ue and d[he] != 58 and d[he] != 59 and d[he] != 63 and d[he] != 62:
        he += 1
    if he == h or d[h] == 91:
        return -1  # no host after a user part, or [IPv6]: the regex's own way
    port = 0
    if he < ue and d[he] == 58:
        x = he + 1
        while x < ue and 48 <= d[x] <= 57:
            port = port * 10 + d[x] - 48
            if port > 65535:
                return 0
            x += 1
    if port == 0:
        port = 5060
    for j in range(mine.shape[0]):
        ms, ml = mine[j, M_TEXT], mine[j, M_LEN]
        if mine[j, M_PORT] != port or ml != he - h:
            continue
        same = True
        for i in range(ml):
            if _lower(d[h + i]) != mine_text[ms + i]:
                same = False
                break
        if same:
            return 1
    return 0


@njit(cache=True, inline="always")
def _scan(data, spans, rr_s, rr_e):
    """The header lines of data (after its first line), if plain: spans[3k:3k+3] the
    value (blanks around it excluded) of the last header of kind k (H_*) and how many
    there were, rr_s/rr_e each Record-Route value. Returns how many Record-Route
    values, or -1: not plain (folded or non-printable lines, a blank before a colon,
    more than MAX_RR Record-Route lines)."""
    n = data.shape[0]
    p = 0
    while p < n and data[p] != 13:
        p += 1
    if p + 1 >= n or data[p + 1] != 10:
        return -1
    spans[:] = -1
    for k in range(NKINDS):
        spans[3 * k + 2] = 0
    nrr = 0
    while True:
        ls = p + 2
        if ls + 1 < n and data[ls] == 13 and data[ls + 1] == 10:
            return nrr
        if ls >= n or data[ls] == 32 or data[ls] == 9:
            return -1
        e = ls
        while e < n and data[e] != 13:
            c = data[e]
            if (c < 32 and c != 9) or c > 126:
                return -1
            e += 1
        if e + 1 >= n or data[e + 1] != 10:
            return -1
        c = ls
        while c < e and data[c] != 58:
            if not _is_token(data[c]):
                return -1
            c += 1
        if c == ls or c >= e:
            return -1
        k = _kind(data, ls, c - ls)
        vs, ve = _trim(data, c + 1, e)
        if k == H_RR:
            if nrr == MAX_RR:
                return -1
            rr_s[nrr] = vs
            rr_e[nrr] = ve
            nrr += 1
        elif k != H_OTHER:
            spans[3 * k] = vs
            spans[3 * k + 1] = ve
            spans[3 * k + 2] += 1
        p = e


@njit(cache=True, inline="always")
def _plain_head(data, spans, rr_s, rr_e):
    """_scan, and one From, To and Call-ID, at most one Contact: how many Record-Route
    values, or -1."""
    nrr = _scan(data, spans, rr_s, rr_e)
    if nrr < 0 or spans[3 * H_FROM + 2] != 1 or spans[3 * H_TO + 2] != 1 or \
            spans[3 * H_CALLID + 2] != 1 or spans[3 * H_CONTACT + 2] > 1:
        return -1
    return nrr


@njit(cache=True, inline="always")
def _entries(data, rr_s, rr_e, nrr, es, ee):
    """The Record-Route entries, in order, into es/ee (as dialog_rules' split_values
    gives them, blanks excluded); how many, or -1 when not plain (quotes, a comma inside
    <>, an unbalanced '>', more than MAX_ENTRIES)."""
    ne = 0
    for i in range(nrr):
        depth = 0
        a = rr_s[i]
        for x in range(rr_s[i], rr_e[i] + 1):
            c = data[x] if x < rr_e[i] else 44
            if c == 34:
                return -1
            if c == 60:
                depth += 1
            elif c == 62:
                depth -= 1
                if depth < 0:
                    return -1
            elif c == 44:
                if depth != 0:
                    return -1
                s, e = _trim(data, a, x)
                if s < e:
                    if ne == MAX_ENTRIES:
                        return -1
                    es[ne] = s
                    ee[ne] = e
                    ne += 1
                a = x + 1
    return ne


@njit(cache=True, inline="always")
def _angle_uri(data, s, e):
    """(start, end) of the URI of a value d[s:e] that starts with '<' and holds no
    quote or comma, as services.sip.dialogs._uri reads it (up to the first '>');
    (-1, -1) for any other value."""
    if e <= s or data[s] != 60:
        return -1, -1
    ue = -1
    for x in range(s, e):
        c = data[x]
        if c == 34 or c == 44:
            return -1, -1
        if c == 62 and ue < 0:
            ue = x
    if ue < 0:
        return -1, -1
    return s + 1, ue


@njit(cache=True, inline="always")
def _route_len(es, ee, a, b):
    """Bytes of entries a..b-1 joined with ", "."""
    n = 0
    for i in range(a, b):
        n += ee[i] - es[i] + (2 if i > a else 0)
    return n


@njit(cache=True, inline="always")
def _put_route(out, pos, data, es, ee, order):
    """Entries es/ee in `order` (indices) joined with ", " into out at pos; the end."""
    for j in range(order.shape[0]):
        i = order[j]
        if j:
            out[pos] = 44
            out[pos + 1] = 32
            pos += 2
        pos = _put(out, pos, data, es[i], ee[i] - es[i])
    return pos


@njit(cache=True, inline="always")
def _identity(t, p8, data, cid_s, cid_e, fs, fe):
    """The row head of a change to the dialog of Call-ID data[cid_s:cid_e] and From tag
    data[fs:fe] (dialog_ids' key and group, live, no strings yet); (key, group)."""
    cn = cid_e - cid_s
    group = group_hash(data, cid_s, cn)
    key = as_key(hash_bytes(data, fs, fe - fs, group ^ SEED_GROUP))
    p8[:t.fixed] = 0
    st64(p8, 0, key)
    st64(p8, 8, group)
    p8[R_STATE] = ST_LIVE
    st16(p8, t.lens_off + 2 * S_CALLID, cn)
    st16(p8, t.lens_off + 2 * S_FROM_TAG, fe - fs)
    return key, group


@njit(cache=True)
def dlg_invite_create(arena, ring, data, sock, profiles, shtag, words, me, proc, p8, out8):
    """The dialog of an initial INVITE (data: uint8, read only), as DialogTracker.admit
    creates it (OP_CREATE): unconfirmed, the caller's side (tags, From/To URIs, Contact,
    the Record-Route entries as its route set, CSeq) and the strings sock (caller_sock),
    profiles and shtag. words: int64[C_WORDS] (W_NOW_S, W_UNCONFIRMED_S, W_NOW_MS,
    W_CSEQ, W_FLAGS, W_CREATOR; W_KEY and W_GROUP receive its dialog_ids). Returns
    dlg_apply's result (E_EXISTS: a live dialog is there; E_BUSY: apply p8 again), or
    IN_UNSURE (nothing was done: the Python way; a dialog too long for the row too)."""
    p8 = unmanaged(p8)
    t = views(arena)
    spans = np.empty(3 * NKINDS, dtype=np.int64)
    rr_s = np.empty(MAX_RR, dtype=np.int64)
    rr_e = np.empty(MAX_RR, dtype=np.int64)
    nrr = _plain_head(data, spans, rr_s, rr_e)
    if nrr < 0:
        return IN_UNSURE
    from_s, from_e = spans[3 * H_FROM], spans[3 * H_FROM + 1]
    fs, fe, fok = tag_span(data, from_s, from_e)
    ts, te, tok = tag_span(data, spans[3 * H_TO], spans[3 * H_TO + 1])
    fus, fue = _angle_uri(data, from_s, from_e)
    tus, tue = _angle_uri(data, spans[3 * H_TO], spans[3 * H_TO + 1])
    if not fok or not tok or te > ts or fus < 0 or tus < 0:
        return IN_UNSURE
    cus = cue = 0
    if spans[3 * H_CONTACT + 2]:
        cus, cue = _angle_uri(data, spans[3 * H_CONTACT], spans[3 * H_CONTACT + 1])
        if cus < 0:
            return IN_UNSURE
    es = np.empty(MAX_ENTRIES, dtype=np.int64)
    ee = np.empty(MAX_ENTRIES, dtype=np.int64)
    ne = _entries(data, rr_s, rr_e, nrr, es, ee)
    if ne < 0:
        return IN_UNSURE
    cid_s, cid_e = spans[3 * H_CALLID], spans[3 * H_CALLID + 1]
    route_len = _route_len(es, ee, 0, ne)
    total = (cid_e - cid_s) + (fe - fs) + (fue - fus) + (tue - tus) + (cue - cus) + \
        route_len + sock.shape[0] + profiles.shape[0] + shtag.shape[0]
    if total > t.body - t.fixed:
        return IN_UNSURE  # too long: the Python way refuses it (500)
    key, group = _identity(t, p8, data, cid_s, cid_e, fs, fe)
    words[W_KEY] = np.int64(key)
    words[W_GROUP] = np.int64(group)
    now_s = words[W_NOW_S]
    timeout = now_s + words[W_UNCONFIRMED_S]
    p8[R_AUX] = DLG_UNCONFIRMED
    st32(p8, R_EXPIRES, timeout + EXPIRY_GRACE_S)
    st32(p8, O_START, now_s)
    st32(p8, O_TIMEOUT, timeout)
    st32(p8, O_CALLER_CSEQ, max(words[W_CSEQ], 0))
    st32(p8, O_FLAGS, words[W_FLAGS])
    st16(p8, O_CREATOR, words[W_CREATOR])
    st16(p8, t.lens_off + 2 * S_FROM_URI, fue - fus)
    st16(p8, t.lens_off + 2 * S_TO_URI, tue - tus)
    st16(p8, t.lens_off + 2 * S_CALLER_CONTACT, cue - cus)
    st16(p8, t.lens_off + 2 * S_CALLER_ROUTE, route_len)
    st16(p8, t.lens_off + 2 * S_CALLER_SOCK, sock.shape[0])
    st16(p8, t.lens_off + 2 * S_PROFILES, profiles.shape[0])
    st16(p8, t.lens_off + 2 * S_SHTAG, shtag.shape[0])
    pos = t.fixed  # the strings in their order (shm.dialogs DIALOG.strings)
    pos = _put(p8, pos, data, cid_s, cid_e - cid_s)
    pos = _put(p8, pos, data, fs, fe - fs)
    pos = _put(p8, pos, data, fus, fue - fus)
    pos = _put(p8, pos, data, tus, tue - tus)
    pos = _put(p8, pos, data, cus, cue - cus)
    pos = _put_route(p8, pos, data, es, ee, np.arange(ne))
    pos = _put(p8, pos, sock, 0, sock.shape[0])
    pos = _put(p8, pos, profiles, 0, profiles.shape[0])
    pos = _put(p8, pos, shtag, 0, shtag.shape[0])
    return dlg_apply(arena, ring, p8, OP_CREATE, words[W_NOW_MS], me, proc, out8)


@njit(cache=True)
def dlg_invite_reply(arena, ring, data, mine, mine_text, sock, words, me, proc, p8, out8):
    """The dialog change of a response to an initial INVITE (data: uint8, read only),
    as DialogTracker.on_invite_reply makes it. words: int64[W_WORDS] (W_STATUS its status,
    W_FINAL the transaction's final response upstream if it made one, else 0, W_NOW_S,
    W_LIFETIME_S / W_UNCONFIRMED_S the dialog's lifetime when confirmed / not yet,
    W_NOW_MS; W_OP receives the operation); mine: int64[k, M_WORDS] and mine_text: our
    listeners; sock: the callee_sock string (uint8). Returns dlg_apply's result (E_BUSY:
    apply p8 again), IN_NONE (the dialog does not change), or IN_UNSURE (nothing was
    done: the Python way)."""
    p8 = unmanaged(p8)
    t = views(arena)
    spans = np.empty(3 * NKINDS, dtype=np.int64)
    rr_s = np.empty(MAX_RR, dtype=np.int64)
    rr_e = np.empty(MAX_RR, dtype=np.int64)
    nrr = _plain_head(data, spans, rr_s, rr_e)
    if nrr < 0:
        return IN_UNSURE
    fs, fe, fok = tag_span(data, spans[3 * H_FROM], spans[3 * H_FROM + 1])
    ts, te, tok = tag_span(data, spans[3 * H_TO], spans[3 * H_TO + 1])
    if not fok or not tok:
        return IN_UNSURE
    status = words[W_STATUS]
    op = OP_UPDATE
    state = 0
    if 200 <= status < 300:
        state = DLG_CONFIRMED_NA
    elif words[W_FINAL] >= 300:
        op = OP_FAIL
    elif 100 < status < 200 and te > ts:
        state = DLG_EARLY
    else:
        return IN_NONE
    words[W_OP] = op
    cid_s, cid_e = spans[3 * H_CALLID], spans[3 * H_CALLID + 1]
    cn = cid_e - cid_s
    fn = fe - fs
    _identity(t, p8, data, cid_s, cid_e, fs, fe)
    if op == OP_FAIL:
        if cn + fn > t.body - t.fixed:
            return E_TOO_LONG
        p8[t.fixed:t.fixed + cn] = data[cid_s:cid_e]
        p8[t.fixed + cn:t.fixed + cn + fn] = data[fs:fe]
        return dlg_apply(arena, ring, p8, op, words[W_NOW_MS], me, proc, out8)
    es = np.empty(MAX_ENTRIES, dtype=np.int64)
    ee = np.empty(MAX_ENTRIES, dtype=np.int64)
    ne = _entries(data, rr_s, rr_e, nrr, es, ee)
    if ne < 0:
        return IN_UNSURE
    first = last = -1
    for i in range(ne):
        m = _mine(data, es[i], ee[i], mine, mine_text)
        if m < 0:
            return IN_UNSURE
        if m:
            if first < 0:
                first = i
            last = i
    # caller route: after our last entry; callee route: before our first, reversed
    c0, c1 = (last + 1, ne) if first >= 0 else (0, 0)
    k1 = first if first >= 0 else ne
    cr_len = _route_len(es, ee, c0, c1)
    ke_len = _route_len(es, ee, 0, k1)
    # the Contact's URI
    us = ue = 0
    if spans[3 * H_CONTACT + 2]:
        us, ue = _angle_uri(data, spans[3 * H_CONTACT], spans[3 * H_CONTACT + 1])
        if us < 0:
            return IN_UNSURE
    tn = te - ts
    sn = sock.shape[0]
    total = cn + fn + tn + (ue - us) + cr_len + ke_len + sn
    if total > t.body - t.fixed:
        return IN_UNSURE  # too long: the Python way's rules
    p8[R_AUX] = state
    timeout = words[W_NOW_S] + (words[W_LIFETIME_S] if state == DLG_CONFIRMED_NA else
                                words[W_UNCONFIRMED_S])
    st32(p8, O_TIMEOUT, timeout)
    st32(p8, R_EXPIRES, timeout + EXPIRY_GRACE_S)
    st16(p8, t.lens_off + 2 * S_TO_TAG, tn)
    st16(p8, t.lens_off + 2 * S_CALLEE_CONTACT, ue - us)
    st16(p8, t.lens_off + 2 * S_CALLER_ROUTE, cr_len)
    st16(p8, t.lens_off + 2 * S_CALLEE_ROUTE, ke_len)
    st16(p8, t.lens_off + 2 * S_CALLEE_SOCK, sn)
    pos = t.fixed  # the strings in their order (shm.dialogs DIALOG.strings)
    pos = _put(p8, pos, data, cid_s, cn)
    pos = _put(p8, pos, data, fs, fn)
    pos = _put(p8, pos, data, ts, tn)
    pos = _put(p8, pos, data, us, ue - us)
    pos = _put_route(p8, pos, data, es, ee, np.arange(c0, c1))
    pos = _put_route(p8, pos, data, es, ee, np.arange(k1 - 1, -1, -1))
    pos = _put(p8, pos, sock, 0, sn)
    r = dlg_apply(arena, ring, p8, op, words[W_NOW_MS], me, proc, out8)
    if r == E_TOO_LONG:
        return IN_UNSURE  # nothing changed: the Python way's rules for a long callee side
    return r


@njit(cache=True, inline="always")
def _put(out, pos, src, a, n):
    out[pos:pos + n] = src[a:a + n]
    return pos + n
