"""Where a proxied request goes (RFC 3261 §16.5): the next Route hop, a home node's
hint, the registered contacts of a served AOR (location lookup, cached per contact row
version and cluster view), or the Request-URI host of a foreign domain when relaying is
on; and the live nodes of the cluster with their SIP addresses (shm.control views).
A request that cannot go anywhere raises `Refused` with its answer. Neighbours:
services.sip.proxy (the caller), services.sip.routing (pure rules),
services.sip.location (bindings), services.sip.dns.
"""
from __future__ import annotations

import time
from typing import Any

from fastcluster.core.config import Config
from fastcluster.core.sip import (
    PASSWORD_IN_AOR,
    SipMessage,
    SipParseError,
    canonical_aor,
    tag_of,
)
from fastcluster.core.stats import INDEX
from fastcluster.services.sip import checks
from fastcluster.services.sip import routing as RT
from fastcluster.services.sip.dns import Resolver
from fastcluster.services.sip.location import Location
from fastcluster.shm import control as CT
from fastcluster.shm import transactions as X

_I = INDEX
I_LOOKUPS, I_404, I_480 = _I["proxy:lookups"], _I["proxy:not_found"], \
    _I["proxy:no_contacts"]
I_RELAYED_FOREIGN, I_FOREIGN = _I["proxy:relayed_foreign"], _I["proxy:refused_foreign"]
I_UNROUTABLE = _I["proxy:unroutable"]


class Refused(Exception):
    """A request answered with an error instead of being proxied."""

    def __init__(self, status: int, counter: int = -1,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(status)
        self.status, self.counter, self.headers = status, counter, headers


class Targets:
    """The target set of each request of one SIP worker's proxy."""

    def __init__(self, worker: Any, counts: Any, listeners: list[Any]) -> None:
        self.counts = counts
        self.node = worker.cfg["clusterer.node_id"]
        self.listeners = listeners  # services.sip.tm.Listener, by index
        self.local = frozenset((x.host, x.port) for x in listeners)
        self.location = Location(worker.mem.contacts.buf)
        self.control = worker.mem.control
        self.resolver = Resolver()
        self._up = CT.UpNodes(self.control)
        self._nodes: dict[int, tuple[str, int]] = {}
        self._peer_ips: frozenset[str] = frozenset()
        self._target_cache: dict[tuple[bytes, int], tuple[list[RT.Target], bytes]] = {}
        self._aors: dict[str, str] = {}  # Request-URI -> AOR
        self.apply_reload(worker.cfg)

    def apply_reload(self, cfg: Config) -> None:
        self.domains = cfg["sip.domains"]
        self.relay_foreign = cfg["proxy.relay_foreign"]
        self.serial = cfg["proxy.forking"] == "serial"

    def nodes(self) -> dict[int, tuple[str, int]]:
        """Live nodes of the first cluster and their SIP addresses (read again when the
        cluster process republished its view)."""
        nodes = self._up.get()
        if nodes is not self._nodes:
            self._nodes = nodes
            self._peer_ips = frozenset(h for h, _ in nodes.values())
        return nodes

    def down_peer(self, hostport: tuple[str, int]) -> int:
        """The node whose SIP address this is, if it is a node of the cluster that is
        not reachable now (0: none)."""
        self._up.get()
        host, port = hostport
        return self._up.down.get((host, port or 5060), 0)

    def from_peer(self, addr: tuple) -> bool:
        """Whether a datagram came from another node of the cluster (by address: the
        only ones whose home-node hints are followed)."""
        self.nodes()
        return addr[0] in self._peer_ips

    def of_request(self, msg: SipMessage, d: RT.RouteDecision, addr: tuple
                   ) -> tuple[list[RT.Target], bytes]:
        """The branches of a request and their `targets` string (§16.5)."""
        if d.routes:  # loose routing: the next hop is the top Route (§16.12)
            t = [self.hop(RT.uri_of(d.routes[0]), d.ruri, d.out_sock)]
            return t, RT.encode_targets(t)
        ruri = d.ruri or msg.ruri
        if d.home_dst is not None and d.popped and self.from_peer(addr):
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
            t = [self.hop(ruri, ruri, d.out_sock)]
            return t, RT.encode_targets(t)
        if RT.is_local(hp, self.local) or RT.serves_domain(hp[0], self.domains, self.local):
            if not RT.has_user(ruri):  # for this node itself, not REGISTER or OPTIONS
                refusal = checks.check_method(msg.method)
                if refusal is None:
                    raise Refused(404, I_404)
                raise Refused(refusal.status, INDEX[refusal.counter], list(refusal.headers))
            aor = self._aors.get(ruri)
            if aor is None:
                if len(self._aors) > 65536:
                    self._aors.clear()
                try:  # the registrar's key of the same AOR (core.sip)
                    aor = canonical_aor(ruri)
                except SipParseError as exc:
                    # a password: well formed (RFC 4475 §3.1.1.2), but never registered
                    status = 404 if exc.reason == PASSWORD_IN_AOR else exc.status or 400
                    raise Refused(status, I_404 if status == 404 else I_UNROUTABLE) from None
                self._aors[ruri] = aor
            return self.lookup(aor)
        if not self.relay_foreign:
            raise Refused(403, I_FOREIGN)
        self.counts[I_RELAYED_FOREIGN] += 1
        t = [self.hop(ruri, ruri, d.out_sock, srv=True)]
        return t, RT.encode_targets(t)

    def hop(self, uri: str, ruri: str, out_sock: int | None, srv: bool = False) -> RT.Target:
        hp = RT.uri_hostport(uri)
        if hp is None:
            raise Refused(416, I_UNROUTABLE)
        dst = self.resolver.rfc3263(*hp) if srv else self.resolver.address(*hp)
        if dst is None:
            raise Refused(503 if srv else 404, I_UNROUTABLE)
        return RT.Target(out_sock or 0, dst[0], dst[1], ruri)

    def lookup(self, aor: str) -> tuple[list[RT.Target], bytes]:
        """§16.5 location lookup: the AOR's contacts as branches (404: never registered
        or all removed; 480: none alive or reachable). Targets are cached per contact
        row version and cluster view."""
        self.counts[I_LOOKUPS] += 1
        rows = self.location.lookup(aor)
        if not rows:
            raise Refused(404, I_404)
        now = int(time.time())
        self.nodes()
        epoch = self._up.epoch
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
