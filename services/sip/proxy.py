"""The stateful proxy of a SIP worker (RFC 3261 §16): every request that is not for the
registrar, and every response.

A request is validated (§16.3: Max-Forwards, loops, Proxy-Require), its Route header
processed (§16.4, services.sip.routing), its targets found (§16.5,
services.sip.targets), then one kernel call (shm.transactions) creates
its transaction -- or finds it, when this is a retransmission -- and the branches are
sent (§16.6: our Via, Record-Route, Max-Forwards, the contact as Request-URI, its Path
or its home node as Route). A response finds its transaction by our branch in its top
Via and the kernel says what to do with it (§16.7). ACK for 2xx and responses without
a transaction are forwarded statelessly (§16.11); plain responses and in-dialog
ACK/BYE take compiled relays first (services.sip.fastpath). Timers run in the timer process
(services.sip.tm_timer). Dialog tracking (services.sip.dialogs) plugs into `DialogHook`:
the call sites are marked "dialog hook". With it, an in-dialog request whose next hop is
the Record-Route of a node of the cluster that is down is routed here instead, from the
replicated dialog (`route_for`). Neighbours: services.sip.registrar
(dispatch), services.sip.tm, services.sip.targets, services.sip.fastpath,
services.sip.routing, services.sip.messages.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from fastcluster.core.config import Config
from fastcluster.core.sip import SipMessage, build_response, tag_of
from fastcluster.core.stats import INDEX
from fastcluster.services.sip import messages as M
from fastcluster.services.sip import routing as RT
from fastcluster.services.sip.fastpath import FastPath
from fastcluster.services.sip.targets import Refused, Targets
from fastcluster.services.sip.tm import (
    REASONS,
    Listener,
    Sender,
    branch_request,
    local_tag,
    params_from,
    route_decision,
)
from fastcluster.shm import transactions as X
from fastcluster.shm.txwork import TxWork

log = logging.getLogger("proxy")

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
I_HOME = _I["proxy:home_routed"]
I_RELAYED = _I["tm:relayed_replies"]
I_LOOPS = _I["proxy:loops"]
I_TAKEN = _I["dialog:taken_over_requests"]

KERNEL_ERRORS = {X.E_FULL: (503, I_FULL), X.E_TOO_LONG: (513, I_TOO_LONG),
                 X.E_COLLISION: (500, I_COLLIDE)}


class DialogHook(Protocol):
    """What dialog tracking implements (services.sip.dialogs). The proxy calls it where
    RFC 3261 §12 dialogs are born and change; the call sites are marked "dialog hook"."""

    def admit(self, msg: SipMessage, src: tuple, listener: int, data: bytes | None = None
              ) -> int:
        """An initial INVITE about to be proxied (its targets found; data: its bytes as
        received): 0 to go on, or the status to refuse it with (a profile limit, no room
        for its dialog)."""

    def on_invite_reply(self, msg: SipMessage, key: int, branch: int, final_status: int,
                        listener: int = -1, src: tuple | None = None) -> None:
        """A response to an initial INVITE arrived on `branch` of transaction `key`, on
        `listener` from `src`; final_status: the transaction's final response upstream
        if this one made it (0 otherwise)."""

    def on_invite_reply_compiled(self, data: Any, status: int, final_status: int,
                                 listener: int, src: tuple | None) -> bool:
        """on_invite_reply for the compiled relay in one kernel call, from the response's
        bytes (uint8 array). False: nothing was done, parse it and call on_invite_reply."""

    def bind_invite(self, msg: SipMessage, tx_key: int) -> None:
        """The transaction of an INVITE admit let through was made (key tx_key)."""

    def invite_failed(self, msg: SipMessage) -> None:
        """An initial INVITE `admit` let through is answered >= 300 by the proxy itself
        (no transaction for it, or the final again to a retransmission of a failed
        one): its dialog ends as if the failure had come from downstream."""

    def on_in_dialog(self, msg: SipMessage) -> None:
        """A request with a To tag (BYE, re-INVITE, ACK, ...) is being forwarded."""

    def in_dialog(self, method: str, call_id: str, from_tag: str, to_tag: str,
                  cseq_num: int) -> None:
        """on_in_dialog for the compiled relay, from the request's identity."""

    def in_dialog_compiled(self, data: Any, ident: Any) -> bool:
        """on_in_dialog for the compiled relay in one kernel call: the request's bytes
        (uint8 array) and identity words (shm.dialogs ID_*, as shm.sipreq.fast_request
        leaves them). False: nothing was done, call `in_dialog`."""

    def on_own_reply(self, msg: SipMessage, branch: str) -> bool:
        """A response whose top Via branch may be one of the requests dialog tracking
        sent itself; True if it was (then it is handled)."""

    def owns(self, msg: SipMessage) -> bool:
        """Whether a live dialog of this in-dialog request is known here (the request
        may then be routed for a dead node whose Record-Route it names)."""


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
        self.params = params_from(worker.cfg)
        self.tx = TxWork(worker.mem.transactions.buf, worker.mem.tmrings, worker.slot,
                         worker.me, self.params, self.counts)
        self.sender = Sender(self.listeners, self._sock, self.node, self.counts)
        self.tag = local_tag(self.node, None)
        self.tag_sig = self.tag[:11]  # "fcL" + node signature
        self.dialogs: DialogHook | None = None  # dialog hook: set by dialog tracking
        self.targets = Targets(worker, self.counts, self.listeners)
        self.fast = FastPath(self)
        self.apply_reload(worker.cfg)

    def apply_reload(self, cfg: Config) -> None:
        self.targets.apply_reload(cfg)
        self.params[:] = params_from(cfg)
        self.sender.server = self.app.server

    def _sock(self, index: int) -> Any:
        return self.socks[index] if index < len(self.socks) else self.socks[0]

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
        admitted = False
        try:
            if msg.max_forwards == 0:
                raise Refused(483, I_483)
            if msg.get("proxy-require") is not None:
                raise Refused(420, -1, [("Unsupported", ", ".join(
                    msg.get_all("proxy-require")))])
            if self._looped(msg, data):
                raise Refused(482, I_LOOPS)
            d = self.route_for(msg)
            targets, encoded = self.targets.of_request(msg, d, addr)
            if self.dialogs is not None and method == "INVITE" and not tag_of(msg.to):
                refusal = self.dialogs.admit(msg, addr, listener.index, data)  # dialog hook
                if refusal:
                    raise Refused(refusal)
                admitted = True
        except Refused as r:
            if r.counter >= 0:
                self.counts[r.counter] += 1
            self.reply(msg, r.status, addr, listener, r.headers)
            return
        invite = method == "INVITE"
        flags = X.F_INVITE if invite else 0
        groups = bytes(t.group for t in targets)
        if self.targets.serial and any(groups):
            flags |= X.F_SERIAL
        try:
            ident, rfc2543 = self.ident(msg, method)
            if rfc2543:
                flags |= X.F_RFC2543
            result = self.tx.request(X.K_REQUEST, ident, data, encoded, groups, len(targets),
                                     flags, msg.cseq_num, listener.index, addr)
        except Exception:
            if admitted and self.dialogs is not None:
                self.dialogs.invite_failed(msg)  # dialog hook: nothing will answer it
            raise
        if result == X.R_NEW:
            key, start = self.tx.new_key_start()
            self.counts[I_UAS] += 1
            if invite:
                self.reply(msg, 100, addr, listener)
                if admitted and self.dialogs is not None:
                    self.dialogs.bind_invite(msg, key)  # dialog hook
            if self.dialogs is not None and tag_of(msg.to):
                self.dialogs.on_in_dialog(msg)  # dialog hook
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
            if admitted and o.flags & X.F_FINAL_SENT and o.status >= 300 and self.dialogs:
                self.dialogs.invite_failed(msg)  # a failed INVITE again: admit remade it
            if o.actions & X.A_SEND_100:
                self.reply(msg, 100, addr, listener)
            elif o.actions:
                response, request, tgt = self.tx.out_strings(o)
                self.sender.run(o.actions, o, o.key, response, request, tgt, req=msg)
        else:
            status, counter = KERNEL_ERRORS.get(result, (500, -1))
            if counter >= 0:
                self.counts[counter] += 1
            if admitted and self.dialogs is not None:
                self.dialogs.invite_failed(msg)  # dialog hook
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
        d = self.route_for(msg)
        ruri = d.ruri or msg.ruri
        where = self.targets
        try:
            hp = RT.uri_hostport(ruri)
            if d.routes:
                t = where.hop(RT.uri_of(d.routes[0]), ruri, d.out_sock)
            elif d.home_dst is not None and d.popped and where.from_peer(addr):
                t = RT.Target(d.home_sock or 0, d.home_dst[0], d.home_dst[1], ruri)
            elif hp is None or RT.is_local(hp, self.local):
                raise Refused(404)
            elif d.popped:  # in a dialog we record-routed: to the remote target
                t = where.hop(ruri, ruri, d.out_sock)
            elif where.relay_foreign and not RT.serves_domain(hp[0], where.domains,
                                                              self.local):
                t = where.hop(ruri, ruri, d.out_sock, srv=True)
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

    def route_for(self, msg: SipMessage) -> RT.RouteDecision:
        """§16.4 for a request; with dialog tracking, an in-dialog request whose next hop
        is the Record-Route of a node of the cluster that is down, for a dialog known
        here, has that entry taken as ours: it goes on to the other leg from here."""
        d = route_decision(msg, self.listeners)
        if self.dialogs is None or not d.routes or "strict" in d.notes:
            return d
        hp = RT.uri_hostport(RT.uri_of(d.routes[0]))
        if hp is None or not self.targets.down_peer(hp) or not tag_of(msg.to) or \
                not self.dialogs.owns(msg):  # dialog hook
            return d
        self.counts[I_TAKEN] += 1
        d = RT.process_routes(msg.ruri, msg.get_all("route"),
                              self.pairs + [(hp[0], hp[1] or 5060)])
        if d.out_sock is not None and d.out_sock >= len(self.pairs):
            d.out_sock = None
        return d

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
            if self.dialogs is not None and self.dialogs.on_own_reply(msg, branch):
                return  # a reply to a BYE or ping of our own (dialog hook)
            self.stateless_reply(stripped, listener)
            return
        key, idx, _ = parsed
        method = msg.cseq_method
        mclass = X.M_INVITE if method == "INVITE" else (X.M_CANCEL if method == "CANCEL"
                                                        else X.M_OTHER)
        result = self.tx.reply(key, idx, status, mclass, stripped)
        if result != X.R_MATCH:
            self.stateless_reply(stripped, listener)
            return
        self.counts[I_RCV_TX] += 1
        actions, sock, upstream = self.tx.forward_to()
        final = 0
        o = None
        if actions and actions != X.A_FORWARD:
            o = self.tx.out()
            if actions & X.A_FIRST_FINAL:
                final = o.status
        if self.dialogs is not None and mclass == X.M_INVITE:
            # dialog hook, before the reply goes on: the caller's ACK to a 2xx may reach
            # another worker at once, and must find the dialog with the callee's side
            self.dialogs.on_invite_reply(msg, key, idx, final, listener.index, addr)
        if actions == X.A_FORWARD:  # a provisional or a retransmitted 2xx: pass it on
            self.sender.send(stripped, sock, upstream)
            self.counts[I_RELAYED] += 1
        elif o is not None:
            response, request, targets = self.tx.out_strings(o)
            self.sender.run(actions, o, key, response, request, targets, arriving=stripped,
                            branch=idx)

    def stateless_reply(self, stripped: bytes, listener: Any) -> None:
        """§16.11 / §18.2.2: to the next Via's received/rport, else its sent-by."""
        dst = next_via_address(stripped)
        if dst is None:
            self.counts[I_DROP_RPL] += 1
            return
        dst = self.targets.resolver.address(*dst)
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
