"""The Python face of the transaction table: packing requests and replies for the
kernels (shm.transactions), reading their answers, and carrying out what they ask for
(sending responses upstream, requests, CANCELs and ACKs down a branch).

A `TxWork` (shm.txwork) is one process's buffers and timer ring; `Sender` turns kernel actions
into datagrams and is shared by the SIP workers (actions of a request or a reply) and
the timer process (actions of timers: retransmissions, a 408, a CANCEL). Whatever a
branch carries is rebuilt from the row (the request as received, the branch's target
line, the key) by `branch_request`, a deterministic function: a retransmission from the
timer is byte for byte what the worker sent. Neighbours: shm.transactions (kernels),
services.sip.messages (builders), services.sip.proxy, services.sip.tm_timer.
"""
from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastcluster.core.sip import SipMessage, SipParseError, build_response, parse_message, tag_of
from fastcluster.core.stats import INDEX
from fastcluster.services.sip import messages as M
from fastcluster.services.sip.routing import (
    RouteDecision,
    Target,
    decode_targets,
    process_routes,
)
from fastcluster.shm import transactions as X
from fastcluster.shm.txwork import TxOut

log = logging.getLogger("tm")

REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 403: "Forbidden", 404: "Not Found",
           408: "Request Timeout", 416: "Unsupported URI Scheme",
           420: "Bad Extension", 480: "Temporarily Unavailable",
           481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
           483: "Too Many Hops", 487: "Request Terminated", 500: "Server Internal Error",
           503: "Service Unavailable", 513: "Message Too Large"}
I_RETRANS, I_LOCAL, I_RELAYED = (INDEX["tm:retransmissions"], INDEX["tm:local_replies"],
                                  INDEX["tm:relayed_replies"])
I_TX_CLASS = [INDEX.get(f"tm:{c}xx_transactions", -1) for c in range(7)]
I_UAC = INDEX["tm:UAC_transactions"]


def params_from(cfg: Any) -> np.ndarray:
    """The timer parameters the kernels take, from the settings."""
    p = np.zeros(X.P_WORDS, dtype=np.int64)
    p[X.P_T1], p[X.P_T2], p[X.P_T4] = cfg["proxy.t1_ms"], cfg["proxy.t2_ms"], cfg["proxy.t4_ms"]
    p[X.P_TC] = cfg["proxy.invite_timeout_s"] * 1000
    return p


def local_tag(node: int, key: int | None) -> str:
    """The To tag of responses we make: a node signature (ACKs to our own stateless
    replies are recognised by it) and, for a transaction's, its key (the same tag on
    every copy, whichever process builds it)."""
    sig = zlib.crc32(f"fastcluster-{node}".encode())
    return f"fcL{sig:08x}" + (f".{key:x}" if key is not None else ".s")


# ---------------------------------------------------------------- building branches


@dataclass(frozen=True)
class Listener:
    index: int
    host: str
    port: int
    hostport: str = field(init=False)
    via_prefix: str = field(init=False)  # "Via: SIP/2.0/UDP host:port;branch=z9hG4bKfc"

    def __post_init__(self) -> None:
        hp = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        object.__setattr__(self, "hostport", hp)
        object.__setattr__(self, "via_prefix", f"Via: SIP/2.0/UDP {hp};branch={M.STATEFUL}")


def via_value(listener: Listener, key: int, index: int, loop: int) -> str:
    return f"SIP/2.0/UDP {listener.hostport};branch={M.branch_id(key, index, loop)}"


_RR: dict[tuple[str, str], list[str]] = {}


def record_routes(in_l: Listener, out_l: Listener) -> list[str]:
    """Record-Route lines: one entry, or two (`r2=on`) when the request leaves from
    another listener than it came in on (the first faces the next hop)."""
    hit = _RR.get((in_l.hostport, out_l.hostport))
    if hit is None:
        if in_l.index == out_l.index:
            hit = [f"Record-Route: <sip:{out_l.hostport};lr>"]
        else:
            hit = [f"Record-Route: <sip:{out_l.hostport};lr;r2=on>",
                   f"Record-Route: <sip:{in_l.hostport};lr;r2=on>"]
        _RR[(in_l.hostport, out_l.hostport)] = hit
    return hit


NO_ROUTES = RouteDecision("", [], 0)  # what process_routes says for a request without Route


_DECISIONS: dict[tuple, RouteDecision] = {}


def route_decision(msg: SipMessage, listeners: list[Listener]) -> RouteDecision:
    """process_routes for a request (cached: the requests of a dialog repeat it). The
    result is shared: never change it."""
    routes = msg.get_all("route")
    if not routes:
        return NO_ROUTES
    key = (msg.ruri, tuple(routes), listeners[0].hostport, len(listeners))
    hit = _DECISIONS.get(key)
    if hit is None:
        if len(_DECISIONS) > 65536:
            _DECISIONS.clear()
        hit = _DECISIONS[key] = process_routes(msg.ruri, routes,
                                               [(x.host, x.port) for x in listeners])
    return hit


def branch_request(data: bytes, msg: SipMessage, target: Target, key: int, index: int,
                   in_sock: int, listeners: list[Listener], d: RouteDecision | None = None,
                   loop: int | None = None) -> bytes:
    """The request as sent on branch `index` (deterministic: retransmissions by the
    timer rebuild exactly this). d and loop: the request's route decision and loop
    hash when the caller has them already."""
    out_l = listeners[target.sock] if target.sock < len(listeners) else listeners[0]
    in_l = listeners[in_sock] if in_sock < len(listeners) else listeners[0]
    if d is None:
        d = route_decision(msg, listeners)
    if loop is None:
        loop = M.loop_hash(msg)
    lines = [f"{out_l.via_prefix}{key:016x}{index:x}{loop & 0xFFFFFFFF:08x}"]
    if msg.method not in ("ACK", "CANCEL") and not _has_to_tag(msg):
        lines += record_routes(in_l, out_l)
    if "strict" in d.notes:
        pop = len(msg.get_all("route"))
        new_routes = list(target.routes) + d.routes
    else:
        pop = d.popped
        new_routes = target.routes
    if new_routes:
        lines.append("Route: " + ", ".join(new_routes))
    mf = msg.max_forwards - 1 if msg.max_forwards > 0 else 70
    return M.forward_request(data, msg, target.ruri, lines, pop, mf)


def _has_to_tag(msg: SipMessage) -> bool:
    return tag_of(msg.to) != ""


def branch_routes(msg: SipMessage, target: Target, listeners: list[Listener]) -> list[str]:
    """The Route values the request carried on a branch (CANCEL and ACK repeat them)."""
    d = route_decision(msg, listeners)
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
