"""TxWork: one process's handle on the transaction kernels (shm.transactions) -- its
work buffer, its timer ring, the timer parameters -- packing a request or a response
into the kernels' input words and decoding their answer (TxOut). Used by the proxy of
every SIP worker (services.sip.proxy), the timer process (services.sip.tm_timer) and
the kernel warm-up (shm.warm). Neighbours: shm.transactions (layout, kernels),
shm.tmring (timer rings).
"""
from __future__ import annotations

import socket
import struct
import time
from typing import NamedTuple

import numpy as np

from fastcluster.core.stats import INDEX
from fastcluster.shm import tmring as TR
from fastcluster.shm import transactions as X
from fastcluster.shm.tables import retry_busy

_IN = struct.Struct("<8q16s8q8s")  # input words I_KIND .. I_GROUPS
_NO_ADDR, _NO_GROUPS = bytes(16), bytes(8)
_KEY_START = struct.Struct("<5q")  # O_KEY .. O_START
_FORWARD = struct.Struct("<q24xqqq16s")  # O_ACTIONS, (skip 3), O_SOCK, O_FAM, O_PORT, O_ADDR
_monotonic, _time = time.monotonic, time.time
_OUT = struct.Struct("<10q16s8q")  # output words O_RESULT .. O_RETRANS_CANCEL
I_WAITS = INDEX["tm:lock_waits"]


def signed(key: int) -> int:
    return key - (1 << 64) if key >= 1 << 63 else key


def unsigned(key: int) -> int:
    return key + (1 << 64) if key < 0 else key


def address_of(family: int, raw: bytes, port: int) -> tuple[str, int] | None:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4]), port
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, raw), port
    return None


_RAW: dict[str, tuple[int, bytes]] = {}


def raw_address(ip: str) -> tuple[int, bytes]:
    """(family, 16 bytes) of an IP address string (cached)."""
    hit = _RAW.get(ip)
    if hit is None:
        if len(_RAW) > 65536:
            _RAW.clear()
        if ":" in ip:
            hit = 6, socket.inet_pton(socket.AF_INET6, ip)
        else:
            hit = 4, socket.inet_pton(socket.AF_INET, ip) + bytes(12)
        _RAW[ip] = hit
    return hit


class TxOut(NamedTuple):
    """A kernel's answer (output words; upstream decoded)."""
    result: int
    slot: int
    key: int
    actions: int
    status: int
    cancel: int
    start: int
    sock: int  # the listener the request came in on (responses go out from it)
    upstream: tuple[str, int] | None
    rsp_len: int
    req_len: int
    tgt_len: int
    sstate: int
    flags: int
    nbranches: int
    retrans: int
    retrans_cancel: int


_ADDRESSES: dict[tuple[int, bytes, int], tuple[str, int] | None] = {}


def _upstream(family: int, raw: bytes, port: int) -> tuple[str, int] | None:
    hit = _ADDRESSES.get((family, raw, port))
    if hit is None:
        if len(_ADDRESSES) > 65536:
            _ADDRESSES.clear()
        hit = _ADDRESSES[(family, raw, port)] = address_of(family, raw, port)
    return hit


class TxWork:
    """One process's work buffer, timer ring and parameters for the kernels."""

    def __init__(self, arena: np.ndarray, tmrings: np.ndarray, slot: int, me: int,
                 params: np.ndarray, counts: list[int] | np.ndarray) -> None:
        self.arena = arena
        self.ring = TR.ring(tmrings, slot)
        self.params = params
        self.me, self.proc = me, slot
        self.counts = counts
        self.work = np.zeros(X.WORK_BYTES, dtype=np.uint8)
        self.mv = memoryview(self.work)

    def _wait(self) -> None:
        self.counts[I_WAITS] += 1

    def request(self, kind: int, ident: bytes, request: bytes, targets: bytes, groups: bytes,
                nb: int, flags: int, cseq: int, sock: int, src: tuple[str, int]) -> int:
        """tx_request; returns the result (R_* or E_*; E_BUSY is retried here)."""
        n1, n2, n3 = len(ident), len(request), len(targets)
        if n1 + n2 + n3 > X.IN_STR_BYTES:
            return X.E_TOO_LONG
        family, raw = raw_address(src[0])
        mv = self.mv
        a = X.IN_STR
        mv[a:a + n1] = ident
        mv[a + n1:a + n1 + n2] = request
        mv[a + n1 + n2:a + n1 + n2 + n3] = targets
        _IN.pack_into(mv, 0, kind, int(_monotonic() * 1000), int(_time()), flags, cseq, sock,
                      family, src[1], raw, nb, n1, n2, n3, 0, 0, 0, 0, groups.ljust(8, b"\0"))
        r = X.tx_request(self.arena, self.work, self.ring, self.params, self.me, self.proc)
        if r == X.E_BUSY:
            r = retry_busy(self._request, self._wait)
        return r

    def _request(self) -> int:
        return X.tx_request(self.arena, self.work, self.ring, self.params, self.me, self.proc)

    def reply(self, key: int, branch: int, status: int, mclass: int, response: bytes) -> int:
        """tx_reply for the response in hand (our Via already stripped)."""
        n = len(response)
        if n > X.IN_STR_BYTES:
            response, n = b"", 0
        mv = self.mv
        mv[X.IN_STR:X.IN_STR + n] = response
        _IN.pack_into(mv, 0, mclass, int(_monotonic() * 1000), int(_time()), 0, 0, 0, 0, 0,
                      _NO_ADDR, 0, 0, 0, 0, n, signed(key), branch, status, _NO_GROUPS)
        r = X.tx_reply(self.arena, self.work, self.ring, self.params, self.me, self.proc)
        if r == X.E_BUSY:
            r = retry_busy(self._reply, self._wait)
        return r

    def _reply(self) -> int:
        return X.tx_reply(self.arena, self.work, self.ring, self.params, self.me, self.proc)

    def new_key_start(self) -> tuple[int, int]:
        """(key, branches to start) of R_NEW, without decoding the whole answer."""
        key, start = _KEY_START.unpack_from(self.mv, X.OUT_AT + 8 * X.O_KEY)[::4]
        return (key + (1 << 64) if key < 0 else key), start

    def forward_to(self) -> tuple[int, int, tuple[str, int] | None]:
        """(actions, listener, upstream address) of a reply's answer."""
        actions, sock, fam, port, raw = _FORWARD.unpack_from(self.mv, X.OUT_AT +
                                                             8 * X.O_ACTIONS)
        return actions, sock, _upstream(fam, raw, port)

    def out(self) -> TxOut:
        v = _OUT.unpack_from(self.mv, X.OUT_AT)
        return TxOut(v[0], v[1], v[2] + (1 << 64) if v[2] < 0 else v[2], v[3], v[4], v[5],
                     v[6], v[7], _upstream(v[8], v[10], v[9]), v[11], v[12], v[13], v[14],
                     v[15], v[16], v[17], v[18])

    def out_strings(self, o: TxOut) -> tuple[bytes, bytes, bytes]:
        """(stored response, request, targets) the kernel copied out."""
        a = X.OUT_DATA
        b = a + o.rsp_len
        c = b + o.req_len
        d = c + o.tgt_len
        mv = self.mv
        return bytes(mv[a:b]), bytes(mv[b:c]), bytes(mv[c:d])
