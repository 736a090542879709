"""The Python face of the transaction table: packing requests and replies for the
kernels (shm.transactions), reading their answers, and carrying out what they ask for
(sending responses upstream, requests, CANCELs and ACKs down a branch).

A `TxWork` is one process's buffers and timer ring; `Sender` turns kernel actions
into datagrams and is shared by the SIP workers (actions of a request or a reply) and
the timer process (actions of timers: retransmissions, a 408, a CANCEL). Whatever a
branch carries is rebuilt from the row (the request as received, the branch's target
line, the key) by `branch_request`, a deterministic function: a retransmission from the
timer is byte for byte what the worker sent. Neighbours: shm.transactions (kernels),
services.sip.messages (builders), services.sip.proxy, services.sip.tm_timer.
"""
from __future__ import annotations

import logging
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastcluster.core.sip import SipMessage, SipParseError, build_response, parse_message
from fastcluster.core.stats import INDEX
from fastcluster.services.sip import messages as M
from fastcluster.services.sip.routing import Target, decode_targets, process_routes
from fastcluster.shm import tmring as TR
from fastcluster.shm import transactions as X
from fastcluster.shm.tables import retry_busy

log = logging.getLogger("tm")

_IN = struct.Struct("<8q16s8q8s")  # input words I_KIND .. I_GROUPS
_OUT = struct.Struct("<10q16s8q")  # output words O_RESULT .. O_RETRANS_CANCEL
REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 403: "Forbidden", 404: "Not Found",
           408: "Request Timeout", 416: "Unsupported URI Scheme",
           420: "Bad Extension", 480: "Temporarily Unavailable",
           481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
           483: "Too Many Hops", 487: "Request Terminated", 500: "Server Internal Error",
           503: "Service Unavailable", 513: "Message Too Large"}
I_RETRANS, I_LOCAL, I_RELAYED = (INDEX["tm:retransmissions"], INDEX["tm:local_replies"],
                                  INDEX["tm:relayed_replies"])
I_TX_CLASS = [INDEX.get(f"tm:{c}xx_transactions", -1) for c in range(7)]
I_UAC, I_WAITS = INDEX["tm:UAC_transactions"], INDEX["tm:lock_waits"]


def params_from(cfg: Any) -> np.ndarray:
    """The timer parameters the kernels take, from the settings."""
    p = np.zeros(X.P_WORDS, dtype=np.int64)
    p[X.P_T1], p[X.P_T2], p[X.P_T4] = cfg["proxy.t1_ms"], cfg["proxy.t2_ms"], cfg["proxy.t4_ms"]
    p[X.P_TC] = cfg["proxy.invite_timeout_s"] * 1000
    return p


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


def raw_address(ip: str) -> tuple[int, bytes]:
    if ":" in ip:
        return 6, socket.inet_pton(socket.AF_INET6, ip)
    return 4, socket.inet_pton(socket.AF_INET, ip) + bytes(12)


def local_tag(node: int, key: int | None) -> str:
    """The To tag of responses we make: a node signature (ACKs to our own stateless
    replies are recognised by it) and, for a transaction's, its key (the same tag on
    every copy, whichever process builds it)."""
    sig = zlib.crc32(f"fastcluster-{node}".encode())
    return f"fcL{sig:08x}" + (f".{key:x}" if key is not None else ".s")


@dataclass
class TxOut:
    result: int
    slot: int
    key: int
    actions: int
    status: int
    cancel: int
    start: int
    sock: int
    upstream: tuple[str, int] | None
    rsp_len: int
    req_len: int
    tgt_len: int
    sstate: int
    flags: int
    nbranches: int
    retrans: int
    retrans_cancel: int


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

    def _pack(self, kind: int, now_ms: int, now_s: int, flags: int, cseq: int, sock: int,
              family: int, port: int, addr: bytes, nb: int, strings: tuple[bytes, ...],
              key: int, branch: int, status: int, groups: bytes) -> None:
        pos = X.IN_STR
        mv = self.mv
        for s in strings:
            mv[pos:pos + len(s)] = s
            pos += len(s)
        ident = strings[0] if len(strings) > 0 else b""
        lens = [len(s) for s in strings] + [0] * (4 - len(strings))
        _IN.pack_into(mv, 0, kind, now_ms, now_s, flags, cseq, sock, family, port, addr, nb,
                      *lens, signed(key), branch, status, groups)
        del ident

    def request(self, kind: int, ident: bytes, request: bytes, targets: bytes, groups: bytes,
                nb: int, flags: int, cseq: int, sock: int, src: tuple[str, int]) -> int:
        """tx_request; returns the result (R_* or E_*; E_BUSY is retried here)."""
        if len(ident) + len(request) + len(targets) > X.IN_STR_BYTES:
            return X.E_TOO_LONG
        family, raw = raw_address(src[0])
        self._pack(kind, int(time.monotonic() * 1000), int(time.time()), flags, cseq, sock,
                   family, src[1], raw, nb, (ident, request, targets), 0, 0, 0,
                   groups.ljust(8, b"\0"))
        return retry_busy(self._request, self._wait)

    def _request(self) -> int:
        return X.tx_request(self.arena, self.work, self.ring, self.params, self.me, self.proc)

    def reply(self, key: int, branch: int, status: int, mclass: int, response: bytes) -> int:
        if len(response) > X.IN_STR_BYTES:
            response = b""
        self._pack(mclass, int(time.monotonic() * 1000), int(time.time()), 0, 0, 0, 0, 0,
                   bytes(16), 0, (b"", b"", b"", response), key, branch, status, bytes(8))
        # the response is the fourth string: I_RSP_LEN, at the start of the strings area
        mv = self.mv
        mv[X.IN_STR:X.IN_STR + len(response)] = response
        return retry_busy(self._reply, self._wait)

    def _reply(self) -> int:
        return X.tx_reply(self.arena, self.work, self.ring, self.params, self.me, self.proc)

    def out(self) -> TxOut:
        v = _OUT.unpack_from(self.mv, X.OUT_AT)
        return TxOut(v[0], v[1], unsigned(v[2]), v[3], v[4], v[5], v[6], v[7],
                     address_of(v[8], v[10], v[9]), v[11], v[12], v[13], v[14], v[15],
                     v[16], v[17], v[18])

    def out_strings(self, o: TxOut) -> tuple[bytes, bytes, bytes]:
        """(stored response, request, targets) the kernel copied out."""
        a = X.OUT_DATA
        b = a + o.rsp_len
        c = b + o.req_len
        d = c + o.tgt_len
        mv = self.mv
        return bytes(mv[a:b]), bytes(mv[b:c]), bytes(mv[c:d])


# ---------------------------------------------------------------- building branches


@dataclass(frozen=True)
class Listener:
    index: int
    host: str
    port: int

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def via_value(listener: Listener, key: int, index: int, loop: int) -> str:
    return f"SIP/2.0/UDP {listener.hostport};branch={M.branch_id(key, index, loop)}"


def record_routes(in_l: Listener, out_l: Listener) -> list[str]:
    """Record-Route lines: one entry, or two (`r2=on`) when the request leaves from
    another listener than it came in on (the first faces the next hop)."""
    if in_l.index == out_l.index:
        return [f"Record-Route: <sip:{out_l.hostport};lr>"]
    return [f"Record-Route: <sip:{out_l.hostport};lr;r2=on>",
            f"Record-Route: <sip:{in_l.hostport};lr;r2=on>"]


def branch_request(data: bytes, msg: SipMessage, target: Target, key: int, index: int,
                   in_sock: int, listeners: list[Listener]) -> bytes:
    """The request as sent on branch `index` (deterministic: retransmissions by the
    timer rebuild exactly this)."""
    out_l = listeners[target.sock] if target.sock < len(listeners) else listeners[0]
    in_l = listeners[in_sock] if in_sock < len(listeners) else listeners[0]
    d = process_routes(msg.ruri, msg.get_all("route"), [(x.host, x.port) for x in listeners])
    lines = ["Via: " + via_value(out_l, key, index, M.loop_hash(msg))]
    if not _has_to_tag(msg) and msg.method not in ("ACK", "CANCEL"):
        lines += record_routes(in_l, out_l)
    if "strict" in d.notes:
        pop = len(msg.get_all("route"))
        new_routes = list(target.routes) + d.routes
    else:
        pop = d.popped
        new_routes = list(target.routes)
    lines += M.route_lines(new_routes)
    mf = msg.max_forwards - 1 if msg.max_forwards > 0 else 70
    return M.forward_request(data, msg, target.ruri, lines, pop, mf)


def _has_to_tag(msg: SipMessage) -> bool:
    to = msg.to
    return ";tag=" in to.lower() or "; tag=" in to.lower()


def branch_routes(msg: SipMessage, target: Target, listeners: list[Listener]) -> list[str]:
    """The Route values the request carried on a branch (CANCEL and ACK repeat them)."""
    d = process_routes(msg.ruri, msg.get_all("route"), [(x.host, x.port) for x in listeners])
    return list(target.routes) + d.routes


# ---------------------------------------------------------------- carrying out actions


class Sender:
    """Sends what transaction actions ask for. sock_of(listener index) gives the socket
    to send from (workers: their listeners; the timer: its own when needed)."""

    def __init__(self, listeners: list[Listener], sock_of: Callable[[int], Any], node: int,
                 counts: list[int] | np.ndarray) -> None:
        self.listeners = listeners
        self.sock_of = sock_of
        self.node = node
        self.counts = counts
        self.server: list[tuple[str, str]] = []

    def send(self, data: bytes, sock: int, dst: tuple[str, int] | None) -> None:
        if dst is None:
            return
        try:
            self.sock_of(sock).sendto(data, dst)
        except OSError as exc:  # unreachable destination: the transaction times out
            log.debug("send to %s failed: %s", dst, exc)

    def local_response(self, req: SipMessage, status: int, key: int,
                       src: tuple[str, int] | None) -> bytes:
        return build_response(req, status, REASONS.get(status, "Error"), self.server,
                              to_tag=local_tag(self.node, key), received=src)

    def run(self, actions: int, o: TxOut, key: int, response: bytes, request: bytes,
            targets: bytes, arriving: bytes | None = None, req: SipMessage | None = None,
            branch: int = -1) -> None:
        """Carry out `actions` of a kernel answer `o` (stored response, request and
        targets as copied out; `arriving`: the response in hand, Via stripped, on
        `branch`; `req`: the request in hand, parsed, when the caller has it)."""
        if actions & X.A_FIRST_FINAL:
            i = I_TX_CLASS[min(o.status // 100, 6)]
            if i >= 0:
                self.counts[i] += 1
        if actions & X.A_FORWARD and arriving is not None:
            self.send(arriving, o.sock, o.upstream)
            self.counts[I_RELAYED] += 1
        if actions & X.A_SEND_STORED and response:
            self.send(response, o.sock, o.upstream)
            self.counts[I_RELAYED] += 1
        if not actions & X.NEEDS_REQUEST:
            return
        if req is None:
            try:
                req = parse_message(request)
            except SipParseError:
                log.error("transaction %x: stored request does not parse", key)
                return
        if actions & X.A_SEND_LOCAL:
            self.send(self.local_response(req, o.status, key, None), o.sock, o.upstream)
            self.counts[I_LOCAL] += 1
        tlist = decode_targets(targets) if targets else []
        for i, t in enumerate(tlist):
            bit = 1 << i
            if actions & X.A_START and o.start & bit:
                self.send(branch_request(request, req, t, key, i, o.sock, self.listeners),
                          t.sock, (t.host, t.port))
                self.counts[I_UAC] += 1
            if actions & X.A_RETRANS and o.retrans & bit:
                self.send(branch_request(request, req, t, key, i, o.sock, self.listeners),
                          t.sock, (t.host, t.port))
                self.counts[I_RETRANS] += 1
            if actions & X.A_CANCEL and o.cancel & bit:
                self.send(self.cancel(req, t, key, i), t.sock, (t.host, t.port))
            if actions & X.A_RETRANS_CANCEL and o.retrans_cancel & bit:
                self.send(self.cancel(req, t, key, i), t.sock, (t.host, t.port))
                self.counts[I_RETRANS] += 1
            if actions & X.A_ACK and i == branch and arriving is not None:
                self.ack(req, t, key, i, arriving)

    def cancel(self, req: SipMessage, t: Target, key: int, i: int) -> bytes:
        out_l = self.listeners[t.sock] if t.sock < len(self.listeners) else self.listeners[0]
        return M.build_cancel(req, t.ruri, via_value(out_l, key, i, M.loop_hash(req)),
                              branch_routes(req, t, self.listeners))

    def ack(self, req: SipMessage, t: Target, key: int, i: int, response: bytes) -> None:
        out_l = self.listeners[t.sock] if t.sock < len(self.listeners) else self.listeners[0]
        data = M.build_ack(req, t.ruri, via_value(out_l, key, i, M.loop_hash(req)),
                           branch_routes(req, t, self.listeners), M.to_header(response))
        self.send(data, t.sock, (t.host, t.port))
