"""The stateful proxy of a SIP worker (RFC 3261 §16): every request that is not for the
registrar, and every response.

A request is validated (§16.3: Max-Forwards, loops, Proxy-Require), its Route header
processed (§16.4, services.sip.routing), its targets found (§16.5: the next Route hop;
a home node's hint; the registered contacts of a served AOR; the Request-URI host of a
foreign domain when relaying is on), then one kernel call (shm.transactions) creates
its transaction -- or finds it, when this is a retransmission -- and the branches are
sent (§16.6: our Via, Record-Route, Max-Forwards, the contact as Request-URI, its Path
or its home node as Route). A response finds its transaction by our branch in its top
Via and the kernel says what to do with it (§16.7). ACK for 2xx and responses without
a transaction are forwarded statelessly (§16.11). Timers run in the timer process
(services.sip.tm_timer). Dialog tracking (the next issue) plugs into `DialogHook`: the
three call sites are marked "dialog hook". Neighbours: services.sip.registrar
(dispatch), services.sip.tm, services.sip.routing, services.sip.messages,
services.sip.location, services.sip.dns.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Any, Protocol

import numpy as np

from fastcluster.core.config import Config
from fastcluster.core.sip import SipMessage, build_response, tag_of
from fastcluster.core.stats import INDEX
from fastcluster.services.sip import messages as M
from fastcluster.services.sip import routing as RT
from fastcluster.services.sip.dns import Resolver
from fastcluster.services.sip.location import Location
from fastcluster.services.sip.tm import (
    REASONS,
    Listener,
    Sender,
    TxWork,
    branch_request,
    local_tag,
    params_from,
    raw_address,
    route_decision,
)
from fastcluster.services.sip.usrloc import normalize_aor
from fastcluster.shm import control as CT
from fastcluster.shm import sipreq as RQ
from fastcluster.shm import sipscan as SC
from fastcluster.shm import transactions as X
from fastcluster.shm.sipreq import fast_request
from fastcluster.shm.sipscan import fast_reply

log = logging.getLogger("proxy")
_monotonic, _time, _frombuffer = time.monotonic, time.time, np.frombuffer

_I = INDEX
I_METHOD = {m.upper(): _I[f"core:rcv_requests_{m}"] for m in (
    "invite", "ack", "bye", "cancel", "options", "register", "message", "subscribe",
    "notify", "info", "update", "prack", "refer", "publish")}
I_RPL_CLASS = [_I.get(f"core:rcv_replies_{c}xx", -1) for c in range(7)]
I_SENT, I_483, I_DROP = _I["sl:sent_replies"], _I["core:too_many_hops"], \
    _I["core:drop_requests"]
I_SL_CLASS = [_I.get(f"sl:{c}xx_replies", I_SENT) for c in range(7)]
I_FWD_REQ, I_FWD_RPL, I_DROP_RPL = (_I["core:fwd_requests"], _I["core:fwd_replies"],
                                    _I["core:drop_replies"])
I_UAS, I_UAC, I_RCV_TX = _I["tm:UAS_transactions"], _I["tm:UAC_transactions"], \
    _I["tm:received_replies"]
I_ABSORBED = _I["tm:absorbed_retransmissions"]
I_FULL, I_TOO_LONG, I_COLLIDE = (_I["tm:refused_table_full"], _I["tm:refused_too_long"],
                                 _I["tm:key_collisions"])
I_LOOKUPS, I_404, I_480 = _I["proxy:lookups"], _I["proxy:not_found"], \
    _I["proxy:no_contacts"]
I_HOME, I_RELAYED_FOREIGN, I_FOREIGN = (_I["proxy:home_routed"],
                                        _I["proxy:relayed_foreign"],
                                        _I["proxy:refused_foreign"])
I_RELAYED = _I["tm:relayed_replies"]
I_LOOPS, I_UNROUTABLE = _I["proxy:loops"], _I["proxy:unroutable"]

KERNEL_ERRORS = {X.E_FULL: (503, I_FULL), X.E_TOO_LONG: (513, I_TOO_LONG),
                 X.E_COLLISION: (500, I_COLLIDE)}


class DialogHook(Protocol):
    """What dialog tracking implements (not part of this issue: no implementation is
    wired yet, `Proxy.dialogs` stays None). The proxy calls it where RFC 3261 §12
    dialogs are born and change, after the transaction kernel accepted the message."""

    def on_initial_invite(self, msg: SipMessage, key: int, src: tuple[str, int]) -> None:
        """An INVITE without To tag created transaction `key` (a dialog may start)."""

    def on_invite_reply(self, msg: SipMessage, key: int, branch: int) -> None:
        """A response to that INVITE arrived on `branch` (1xx with a To tag: early
        dialog; 2xx: confirmed; >= 300: the attempt failed)."""

    def on_in_dialog(self, msg: SipMessage) -> None:
        """A request with a To tag (BYE, re-INVITE, ACK, ...) is being forwarded."""


class Refused(Exception):
    """A request answered with an error instead of being proxied."""

    def __init__(self, status: int, counter: int = -1,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(status)
        self.status, self.counter, self.headers = status, counter, headers


class Proxy:
    def __init__(self, app: Any) -> None:
        worker = app.worker
        self.app = app
        self.counts = app.counts
        self.node = worker.cfg["clusterer.node_id"]
        self.listeners = [Listener(s.index, s.host, s.port) for s in worker.listeners]
        self.socks = [s.sock for s in sorted(worker.listeners, key=lambda x: x.index)]
        self.pairs = [(x.host, x.port) for x in self.listeners]
        self.local = frozenset(self.pairs)
        self.via_needles = tuple(x.hostport for x in self.listeners)
        self.mine = frozenset(x.hostport.lower() for x in self.listeners)  # Via sent-by
        self.mine_bytes = np.frombuffer(b"".join(m.encode() + b"\0" for m in sorted(self.mine)),
                                        dtype=np.uint8)
        self.scan = np.zeros(SC.S_WORDS, dtype=np.int64)
        # the compiled path for in-dialog ACK and BYE (IPv4 listeners only)
        self.fq = np.zeros(RQ.Q_WORDS, dtype=np.int64)
        self.fq_listeners = self.fq_text = None
        if all(":" not in x.host for x in self.listeners):
            texts = b"".join(x.hostport.lower().encode() for x in self.listeners)
            rows, at = [], 0
            for x in self.listeners:
                t = x.hostport.lower().encode()
                rows.append((int.from_bytes(socket.inet_aton(x.host), "big"), x.port, at,
                             len(t)))
                at += len(t)
            self.fq_listeners = np.array(rows, dtype=np.int64).reshape(-1, RQ.L_WORDS)
            self.fq_text = np.frombuffer(texts, dtype=np.uint8)
        self._src_cache: dict[str, tuple[int, np.ndarray]] = {}
        self._ips: dict[int, str] = {}
        self.params = params_from(worker.cfg)
        self.tx = TxWork(worker.mem.transactions.buf, worker.mem.tmrings, worker.slot,
                         worker.me, self.params, self.counts)
        self.sender = Sender(self.listeners, self._sock, self.node, self.counts)
        self.location = Location(worker.mem.contacts.buf)
        self.control = worker.mem.control
        self.tag = local_tag(self.node, None)
        self.tag_sig = self.tag[:11]  # "fcL" + node signature
        self.resolver = Resolver()
        self.dialogs: DialogHook | None = None  # dialog hook: set by dialog tracking
        self._view_epoch = -1
        self._nodes: dict[int, tuple[str, int]] = {}
        self._peer_ips: frozenset[str] = frozenset()
        self._target_cache: dict[tuple[bytes, int], tuple[list[RT.Target], bytes]] = {}
        self._aors: dict[str, str] = {}  # Request-URI -> AOR
        self.apply_reload(worker.cfg)

    def apply_reload(self, cfg: Config) -> None:
        self.domains = cfg["sip.domains"]
        self.relay_foreign = cfg["proxy.relay_foreign"]
        self.serial = cfg["proxy.forking"] == "serial"
        self.params[:] = params_from(cfg)
        self.sender.server = self.app.server

    def _sock(self, index: int) -> Any:
        return self.socks[index] if index < len(self.socks) else self.socks[0]

    # ---------------------------------------------------------------- cluster view

    def nodes(self) -> dict[int, tuple[str, int]]:
        """Live nodes of the first cluster and their SIP addresses (cached per view
        epoch: the cluster process republishes on every change)."""
        epoch = int(self.control.views[0, 0])
        if epoch != self._view_epoch and not epoch & 1:
            _, me, entries = self.control.read_view(0)
            sip = self.control.read_view_sip(0)
            self._nodes = {n: sip[n] for n, flags, _ in entries
                           if flags & CT.VIEW_UP and n in sip and n != me}
            self._peer_ips = frozenset(h for h, _ in self._nodes.values())
            self._view_epoch = epoch
        return self._nodes

    # ---------------------------------------------------------------- requests

    def handle_request(self, msg: SipMessage, data: bytes, addr: tuple, listener: Any) -> None:
        method = msg.method
        i = I_METHOD.get(method)
        if i is not None:
            self.counts[i] += 1
        if method == "ACK":
            self._ack(msg, data, addr, listener)
            return
        if method == "CANCEL":
            self._cancel(msg, addr, listener)
            return
        try:
            if msg.max_forwards == 0:
                raise Refused(483, I_483)
            if msg.get("proxy-require") is not None:
                raise Refused(420, -1, [("Unsupported", ", ".join(
                    msg.get_all("proxy-require")))])
            if self._looped(msg, data):
                raise Refused(482, I_LOOPS)
            d = route_decision(msg, self.listeners)
            targets, encoded = self._targets(msg, d, addr)
        except Refused as r:
            if r.counter >= 0:
                self.counts[r.counter] += 1
            self.reply(msg, r.status, addr, listener, r.headers)
            return
        invite = method == "INVITE"
        flags = X.F_INVITE if invite else 0
        groups = bytes(t.group for t in targets)
        if self.serial and any(groups):
            flags |= X.F_SERIAL
        ident, rfc2543 = self.ident(msg, method)
        if rfc2543:
            flags |= X.F_RFC2543
        result = self.tx.request(X.K_REQUEST, ident, data, encoded, groups, len(targets),
                                 flags, msg.cseq_num, listener.index, addr)
        if result == X.R_NEW:
            key, start = self.tx.new_key_start()
            self.counts[I_UAS] += 1
            if invite:
                self.reply(msg, 100, addr, listener)
            if self.dialogs is not None:
                if tag_of(msg.to):
                    self.dialogs.on_in_dialog(msg)  # dialog hook
                elif invite:
                    self.dialogs.on_initial_invite(msg, key, addr)  # dialog hook
            loop = M.loop_hash(msg)
            for idx, t in enumerate(targets):
                if start >> idx & 1:
                    out = branch_request(data, msg, t, key, idx, listener.index,
                                         self.listeners, d, loop)
                    self.sender.send(out, t.sock, (t.host, t.port))
                    self.counts[I_UAC] += 1
                    if t.home:
                        self.counts[I_HOME] += 1
        elif result == X.R_MATCH:
            o = self.tx.out()
            self.counts[I_ABSORBED] += 1
            if o.actions & X.A_SEND_100:
                self.reply(msg, 100, addr, listener)
            elif o.actions:
                response, request, tgt = self.tx.out_strings(o)
                self.sender.run(o.actions, o, o.key, response, request, tgt, req=msg)
        else:
            status, counter = KERNEL_ERRORS.get(result, (500, -1))
            if counter >= 0:
                self.counts[counter] += 1
            self.reply(msg, status, addr, listener)

    def ident(self, msg: SipMessage, method: str) -> tuple[bytes, bool]:
        """§17.2.3 matching identity: the top Via's branch and sent-by with the method
        (INVITE for ACK and CANCEL), or the RFC 2543 fields. (ident, is RFC 2543)."""
        sent_by, branch = M.via_parts(msg.vias[0])
        if method in ("ACK", "CANCEL"):
            method = "INVITE"
        if branch.startswith(M.COOKIE):
            return f"{branch}\0{sent_by}\0{method}".encode("utf-8", "surrogateescape"), False
        text = "\0".join(("2543", msg.ruri, tag_of(msg.from_), msg.call_id,
                          str(msg.cseq_num), M.first_value(msg.vias[0]), method))
        return text.encode("utf-8", "surrogateescape"), True

    def _looped(self, msg: SipMessage, data: bytes) -> bool:
        """§16.3 step 4: a Via of ours whose branch carries this request's loop hash."""
        needles = self.via_needles
        if not any(n in v for v in msg.vias for n in needles):
            return False
        h = None
        for header in msg.vias:
            for value in M.split_values(header):
                sent_by, branch = M.via_parts(value)
                if sent_by in self.mine:
                    parsed = M.parse_branch(branch)
                    if parsed is not None:
                        if h is None:
                            h = M.loop_hash(msg) & 0xFFFFFFFF
                        if parsed[2] == h:
                            return True
        return False

    def _from_peer(self, addr: tuple) -> bool:
        """Whether a datagram came from another node of the cluster (by address: the
        only ones whose home-node hints are followed)."""
        self.nodes()
        return addr[0] in self._peer_ips

    def _targets(self, msg: SipMessage, d: RT.RouteDecision, addr: tuple
                 ) -> tuple[list[RT.Target], bytes]:
        """The branches of a request and their `targets` string (§16.5)."""
        if d.routes:  # loose routing: the next hop is the top Route (§16.12)
            t = [self._hop(RT.uri_of(d.routes[0]), d.ruri, d.out_sock)]
            return t, RT.encode_targets(t)
        ruri = d.ruri or msg.ruri
        if d.home_dst is not None and d.popped and self._from_peer(addr):
            # a peer node sends us a call for a contact that registered through us
            sock = d.home_sock if d.home_sock is not None and \
                d.home_sock < len(self.listeners) else 0
            t = [RT.Target(sock, d.home_dst[0], d.home_dst[1], ruri)]
            return t, RT.encode_targets(t)
        hp = RT.uri_hostport(ruri)
        if hp is None:
            raise Refused(416, I_UNROUTABLE)
        if d.popped and tag_of(msg.to) and not RT.is_local(hp, self.local):
            # in a dialog we record-routed: the Request-URI is the remote target
            t = [self._hop(ruri, ruri, d.out_sock)]
            return t, RT.encode_targets(t)
        if RT.is_local(hp, self.local) or RT.serves_domain(hp[0], self.domains, self.local):
            if not RT.has_user(ruri):
                raise Refused(404, I_404)
            aor = self._aors.get(ruri)
            if aor is None:
                if len(self._aors) > 65536:
                    self._aors.clear()
                aor = self._aors[ruri] = normalize_aor(ruri)
            return self._lookup(aor)
        if not self.relay_foreign:
            raise Refused(403, I_FOREIGN)
        self.counts[I_RELAYED_FOREIGN] += 1
        t = [self._hop(ruri, ruri, d.out_sock, srv=True)]
        return t, RT.encode_targets(t)

    def _hop(self, uri: str, ruri: str, out_sock: int | None, srv: bool = False) -> RT.Target:
        hp = RT.uri_hostport(uri)
        if hp is None:
            raise Refused(416, I_UNROUTABLE)
        dst = self.resolver.rfc3263(*hp) if srv else self.resolver.address(*hp)
        if dst is None:
            raise Refused(503 if srv else 404, I_UNROUTABLE)
        return RT.Target(out_sock or 0, dst[0], dst[1], ruri)

    def _lookup(self, aor: str) -> tuple[list[RT.Target], bytes]:
        """§16.5 location lookup: the AOR's contacts as branches (404: never registered
        or all removed; 480: none alive or reachable). Targets are cached per contact
        row version and cluster view."""
        self.counts[I_LOOKUPS] += 1
        rows = self.location.lookup(aor)
        if not rows:
            raise Refused(404, I_404)
        now = int(time.time())
        self.nodes()
        epoch = self._view_epoch
        if len(rows) == 1 and not self.serial:  # the common case, without sorting
            raw, b = rows[0]
            if b.expires <= now:
                raise Refused(480, I_480)
            hit = self._target_cache.get((raw, epoch))
            if hit is None:
                t = RT.binding_target(b, 0, self.node, self.nodes(), self.resolver.address)
                if t is None:
                    raise Refused(480, I_480)
                hit = ([t], RT.encode_targets([t]))
                if len(self._target_cache) > 65536:
                    self._target_cache.clear()
                self._target_cache[(raw, epoch)] = hit
            return hit
        bindings = [b for _, b in rows]
        chosen = RT.select_bindings(bindings, now, self.serial, X.MAX_BRANCHES)
        nodes = self.nodes()
        targets = []
        for b, group in chosen:
            t = RT.binding_target(b, group, self.node, nodes, self.resolver.address)
            if t is not None:
                targets.append(t)
        if not targets:
            raise Refused(480, I_480)
        return targets, RT.encode_targets(targets)

    def _ack(self, msg: SipMessage, data: bytes, addr: tuple, listener: Any) -> None:
        totag = tag_of(msg.to)
        if totag.startswith(self.tag_sig) and totag[11:13] == ".s":
            return  # the ACK of a response we made without a transaction
        ident, _ = self.ident(msg, "ACK")
        result = self.tx.request(X.K_ACK, ident, b"", b"", b"", 0, 0, msg.cseq_num,
                                 listener.index, addr)
        if result != X.R_NOT_FOUND:
            return  # the ACK of a non-2xx final: absorbed by its transaction (§17.2.1)
        if self.dialogs is not None:
            self.dialogs.on_in_dialog(msg)  # dialog hook
        self.stateless_request(msg, data, addr)

    def stateless_request(self, msg: SipMessage, data: bytes, addr: tuple) -> None:
        """§16.11: forward without a transaction (an ACK for a 2xx): Route, or the
        Request-URI of a dialog we record-routed, or a foreign one when relaying."""
        if msg.max_forwards == 0:
            self.counts[I_DROP] += 1
            return
        d = route_decision(msg, self.listeners)
        ruri = d.ruri or msg.ruri
        try:
            hp = RT.uri_hostport(ruri)
            if d.routes:
                t = self._hop(RT.uri_of(d.routes[0]), ruri, d.out_sock)
            elif d.home_dst is not None and d.popped and self._from_peer(addr):
                t = RT.Target(d.home_sock or 0, d.home_dst[0], d.home_dst[1], ruri)
            elif hp is None or RT.is_local(hp, self.local):
                raise Refused(404)
            elif d.popped:  # in a dialog we record-routed: to the remote target
                t = self._hop(ruri, ruri, d.out_sock)
            elif self.relay_foreign and not RT.serves_domain(hp[0], self.domains, self.local):
                t = self._hop(ruri, ruri, d.out_sock, srv=True)
            else:
                raise Refused(404)  # not routed through us: nothing to do with it
        except Refused:
            self.counts[I_DROP] += 1
            return
        out_l = self.listeners[t.sock] if t.sock < len(self.listeners) else self.listeners[0]
        _, top = M.via_parts(msg.vias[0])
        via = f"Via: SIP/2.0/UDP {out_l.hostport};branch=" + M.stateless_branch(top, ruri)
        mf = msg.max_forwards - 1 if msg.max_forwards > 0 else 70
        if "strict" in d.notes:
            routes = d.routes
            out = M.forward_request(data, msg, ruri, [via, "Route: " + ", ".join(routes)]
                                    if routes else [via], len(msg.get_all("route")), mf)
        else:
            out = M.forward_request(data, msg, ruri, [via], d.popped, mf)
        self.sender.send(out, t.sock, (t.host, t.port))
        self.counts[I_FWD_REQ] += 1

    def _cancel(self, msg: SipMessage, addr: tuple, listener: Any) -> None:
        ident, _ = self.ident(msg, "CANCEL")
        result = self.tx.request(X.K_CANCEL, ident, b"", b"", b"", 0, 0, msg.cseq_num,
                                 listener.index, addr)
        if result != X.R_MATCH:
            self.reply(msg, 481, addr, listener)
            return
        o = self.tx.out()
        self.reply(msg, 200, addr, listener, key=o.key)  # §16.10
        if o.actions & X.A_CANCEL:
            response, request, targets = self.tx.out_strings(o)
            self.sender.run(X.A_CANCEL, o, o.key, b"", request, targets)

    def reply(self, msg: SipMessage, status: int, addr: tuple, listener: Any,
              headers: list[tuple[str, str]] | None = None, key: int | None = None) -> None:
        """A response of our own, sent to where the request came from."""
        extra = self.app.server + (headers or [])
        tag = None if status == 100 else (local_tag(self.node, key) if key is not None
                                          else self.tag)
        data = build_response(msg, status, REASONS.get(status, "Error"), extra, to_tag=tag,
                              received=addr[:2])
        listener.sock.sendto(data, addr)
        self.counts[I_SENT] += 1
        self.counts[I_SL_CLASS[status // 100]] += 1

    # ---------------------------------------------------------------- responses

    def fast_request(self, data: bytes, addr: tuple, listener: Any) -> bool:
        """An in-dialog ACK or BYE routed by our Record-Route, relayed in one compiled
        call (shm.sipreq.fast_request). False: nothing was done, go the Python way."""
        if self.dialogs is not None or self.fq_listeners is None:
            return False
        src = self._src_cache.get(addr[0])
        if src is None:
            fam, raw = raw_address(addr[0])
            if len(self._src_cache) > 65536:
                self._src_cache.clear()
            # a writable copy: the array type must be the one warmed before fork (a
            # read-only view is another numba signature, compiled in the worker)
            src = self._src_cache[addr[0]] = (fam, np.frombuffer(raw, dtype=np.uint8).copy())
        tx = self.tx
        q = self.fq
        r = fast_request(tx.arena, _frombuffer(data, np.uint8), len(data), self.fq_listeners,
                         self.fq_text, listener.index, src[0], addr[1], src[1], tx.work,
                         tx.ring, self.params, tx.me, tx.proc, int(_monotonic() * 1000),
                         int(_time()), q)
        if r == SC.FALLBACK:
            return False
        counts = self.counts
        if q[RQ.Q_KIND] == RQ.KIND_ACK:
            if r == X.R_MATCH:
                counts[I_METHOD["ACK"]] += 1
                return True  # the ACK of a non-2xx: absorbed
            if r != X.R_NOT_FOUND:
                return False
            counts[I_METHOD["ACK"]] += 1
            counts[I_FWD_REQ] += 1
        elif r == X.R_NEW:
            counts[I_METHOD["BYE"]] += 1
            counts[I_UAS] += 1
            counts[I_UAC] += 1
        elif r == X.R_MATCH:
            counts[I_METHOD["BYE"]] += 1
            counts[I_ABSORBED] += 1
            o = tx.out()
            if o.actions:
                response, request, tgt = tx.out_strings(o)
                self.sender.run(o.actions, o, o.key, response, request, tgt)
            return True
        else:
            return False  # refused (full table ...): the Python way answers
        n = int(q[RQ.Q_LEN])
        ip = int(q[RQ.Q_DST_IP])
        host = self._ips.get(ip)
        if host is None:
            host = self._ips[ip] = socket.inet_ntop(socket.AF_INET, ip.to_bytes(4, "big"))
        self.sender.send(bytes(tx.mv[X.OUT_DATA:X.OUT_DATA + n]), int(q[RQ.Q_SOCK]),
                         (host, int(q[RQ.Q_DST_PORT])))
        return True

    def fast_reply(self, data: bytes, listener: Any) -> bool:
        """A plain response to one of our branches, relayed in one compiled call
        (shm.sipscan.fast_reply): parse, match, strip, transaction update. False: not
        such a response (nothing was done), parse it and go the Python way. With a
        dialog hook the Python way is always taken (the hook wants a parsed message)."""
        if self.dialogs is not None:
            return False
        tx = self.tx
        now = _monotonic()
        r = fast_reply(tx.arena, _frombuffer(data, np.uint8), len(data), self.mine_bytes,
                       tx.work, tx.ring, self.params, tx.me, tx.proc, int(now * 1000),
                       int(_time()), self.scan)
        if r < 0:  # FALLBACK, or a busy lock: the Python way retries
            return False
        scan = self.scan
        counts = self.counts
        status = int(scan[0])
        i = I_RPL_CLASS[status // 100]
        if i >= 0:
            counts[i] += 1
        a, b = int(scan[4]), int(scan[5])
        stripped = data[:a] + data[b:]
        if r != X.R_MATCH:
            self._stateless_reply(stripped, listener)
            return True
        counts[I_RCV_TX] += 1
        actions, sock, upstream = tx.forward_to()
        if actions == X.A_FORWARD:
            self.sender.send(stripped, sock, upstream)
            counts[I_RELAYED] += 1
        elif actions:
            o = tx.out()
            response, request, targets = tx.out_strings(o)
            self.sender.run(actions, o, o.key, response, request, targets, arriving=stripped,
                            branch=int(scan[2]))
        return True

    def handle_reply(self, msg: SipMessage, data: bytes, addr: tuple, listener: Any) -> None:
        status = msg.status
        i = I_RPL_CLASS[min(status // 100, 6)]
        if i >= 0:
            self.counts[i] += 1
        sent_by, branch = M.via_parts(msg.vias[0])
        parsed = M.parse_branch(branch)
        stripped = M.strip_top_via(data)
        if stripped is None or sent_by not in self.mine:
            self.counts[I_DROP_RPL] += 1  # not sent by us
            return
        if parsed is None:
            self._stateless_reply(stripped, listener)
            return
        key, idx, _ = parsed
        method = msg.cseq_method
        mclass = X.M_INVITE if method == "INVITE" else (X.M_CANCEL if method == "CANCEL"
                                                        else X.M_OTHER)
        result = self.tx.reply(key, idx, status, mclass, stripped)
        if result != X.R_MATCH:
            self._stateless_reply(stripped, listener)
            return
        self.counts[I_RCV_TX] += 1
        actions, sock, upstream = self.tx.forward_to()
        if actions == X.A_FORWARD:  # a provisional or a retransmitted 2xx: pass it on
            self.sender.send(stripped, sock, upstream)
            self.counts[I_RELAYED] += 1
        elif actions:
            o = self.tx.out()
            response, request, targets = self.tx.out_strings(o)
            self.sender.run(actions, o, key, response, request, targets, arriving=stripped,
                            branch=idx)
        if self.dialogs is not None and mclass == X.M_INVITE:
            self.dialogs.on_invite_reply(msg, key, idx)  # dialog hook

    def _stateless_reply(self, stripped: bytes, listener: Any) -> None:
        """§16.11 / §18.2.2: to the next Via's received/rport, else its sent-by."""
        dst = next_via_address(stripped)
        if dst is None:
            self.counts[I_DROP_RPL] += 1
            return
        dst = self.resolver.address(*dst)
        if dst is None:
            self.counts[I_DROP_RPL] += 1
            return
        self.sender.send(stripped, listener.index, dst)
        self.counts[I_FWD_RPL] += 1


def next_via_address(data: bytes) -> tuple[str, int] | None:
    """Where a response goes (§18.2.2 with RFC 3581): the top Via's received (else its
    host) and rport value (else its port, else 5060)."""
    m = M.TOP_VIA.search(data)
    if m is None:
        return None
    value = M.first_value(m.group(1).decode("utf-8", "surrogateescape"))
    head, _, params = value.partition(";")
    sent_by = head.rsplit(None, 1)[-1]
    if sent_by.startswith("["):
        host, _, rest = sent_by[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = sent_by.partition(":")
    port = int(port_text) if port_text.isdigit() else 5060
    for p in params.split(";"):
        name, _, val = p.strip().partition("=")
        name = name.lower()
        if name == "received" and val:
            host = val.strip("[]")
        elif name == "rport" and val.isdigit():
            port = int(val)
    return (host, port) if host else None
