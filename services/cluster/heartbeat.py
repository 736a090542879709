"""Heartbeats: pings on idle links, the two-way check of every direct link, indirect
probes through the other nodes before a silent node is declared Down, and redialling.

The decisions (what state a link is in, when to ping, when to probe) are the pure
functions of services.cluster.topology; this module does the I/O around them on a tick
(a quarter of the shortest timing), and applies new timing when the settings are
reloaded. A link state change floods a new link-state advertisement (routing).
Neighbours: services.cluster.node (connections), topology (decisions), routing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from fastcluster.core.messages import Msg, Ping, Pong, ProbeReq, ProbeRpl
from fastcluster.services.cluster.dispatch import Delivery
from fastcluster.services.cluster.links import Connection
from fastcluster.services.cluster.membership import FORGET_FACTOR, LEFT_REDIAL_MS
from fastcluster.services.cluster.topology import (
    Link,
    Peer,
    Timing,
    needs_ping,
    next_link_state,
    probe_round_due,
)

if TYPE_CHECKING:
    from fastcluster.services.cluster.node import ClusterNode

log = logging.getLogger("clusterer")


def now_ms() -> int:
    return int(time.monotonic() * 1000)


class Heartbeats:
    def __init__(self, node: ClusterNode, timing: Timing) -> None:
        self.node = node
        self.timing = timing

    @property
    def tick_s(self) -> float:
        t = self.timing
        return max(0.005, min(t.ping_interval_ms, t.ping_timeout_ms) / 4000)

    def set_timing(self, timing: Timing) -> None:
        if timing != self.timing:
            log.info("heartbeat timing now: ping every %g ms, timeout %g ms, node "
                     "retry %g s", timing.ping_interval_ms, timing.ping_timeout_ms,
                     timing.node_timeout_ms / 1000)
            self.timing = timing

    # ---------------------------------------------------------------- pings

    def our_direction_ok(self, peer: Peer, now: int) -> bool:
        t = self.timing
        return peer.pong_ms > 0 and now - peer.pong_ms <= t.ping_interval_ms + t.ping_timeout_ms

    def send_ping(self, peer: Peer, conn: Connection, now: int) -> None:
        self.node.send_on(conn, Msg.PING, Ping(self.our_direction_ok(peer, now), now))
        peer.ping_sent_ms = now
        peer.last_tx_ms = now

    def handle_ping(self, d: Delivery) -> None:
        node = self.node
        peer = node.peers.get(d.via)
        conn = node.conns.get(d.via)
        if peer is None or conn is None:
            return
        now = now_ms()
        peer.peer_ack = d.payload.ack
        node.send_on(conn, Msg.PONG, Pong(self.our_direction_ok(peer, now), d.payload.t,
                                          int(time.time() * 1000)))
        self.evaluate(peer, now)

    def handle_pong(self, d: Delivery) -> None:
        peer = self.node.peers.get(d.via)
        if peer is None:
            return
        now = now_ms()
        peer.pong_ms = now
        peer.ping_sent_ms = 0
        peer.peer_ack = d.payload.ack
        if 0 < d.payload.t <= now:
            peer.rtt_ms = now - d.payload.t
            if d.payload.w:
                self._clock(peer, d.payload.w)
        self.evaluate(peer, now)

    def _clock(self, peer: Peer, their_wall_ms: int) -> None:
        """Its clock against ours: the PONG was stamped about half a round trip ago."""
        skew = their_wall_ms - (time.time() * 1000 - peer.rtt_ms / 2)
        peer.skew_ms = int(skew if not peer.skew_ms else 0.8 * peer.skew_ms + 0.2 * skew)
        limit = self.node.cfg["clusterer.max_clock_skew_ms"]
        if abs(peer.skew_ms) > limit and not peer.skew_warned:
            peer.skew_warned = True
            self.node.count("clusterer:clock_skew_warnings")
            log.warning("node %d's clock is %+d ms off this node's (more than "
                        "clusterer.max_clock_skew_ms = %d): versions made there win or lose "
                        "conflicts unfairly; synchronise the clocks (NTP)", peer.node_id,
                        peer.skew_ms, limit)
        elif abs(peer.skew_ms) < limit / 2:
            peer.skew_warned = False

    # ---------------------------------------------------------------- the tick

    async def run(self) -> None:
        while not self.node.stopping:
            try:
                self.tick(now_ms())
            except Exception:
                log.exception("heartbeat tick failed")
            await asyncio.sleep(self.tick_s)

    def tick(self, now: int) -> None:
        node = self.node
        forget_ms = self.timing.node_timeout_ms * FORGET_FACTOR
        for peer in list(node.peers.values()):
            conn = node.conns.get(peer.node_id)
            if conn is not None and needs_ping(peer, now, self.timing):
                self.send_ping(peer, conn, now)
            self.evaluate(peer, now)
            if conn is not None or node.routing.reachable_anywhere(peer.node_id):
                peer.last_seen_ms = now
            elif not peer.static and peer.url not in node.seeds and \
                    now - peer.last_seen_ms > forget_ms:
                node.membership.forget(peer.node_id, "forgotten: not seen for %.0f s" %
                                       ((now - peer.last_seen_ms) / 1000))
                continue
            if conn is None and peer.url and node.membership.enabled_any() and \
                    (peer.link != Link.DOWN or now >= peer.next_retry_ms) and \
                    not node.dialing_to(peer.url):
                if peer.left:  # it said goodbye; it may come back: dial it, slowly
                    peer.next_retry_ms = now + LEFT_REDIAL_MS
                elif peer.link == Link.DOWN:
                    peer.next_retry_ms = now + int(self.timing.node_timeout_ms)
                node.dial(peer.url)
        node.membership.persist(now)

    def evaluate(self, peer: Peer, now: int | None = None) -> None:
        """Move the peer's direct link to the state the decisions say; probe first."""
        node = self.node
        now = now_ms() if now is None else now
        connected = peer.node_id in node.conns
        probers = [p for p in node.peers.values()
                   if p.node_id != peer.node_id and p.link == Link.UP]
        new = next_link_state(peer, connected, now, self.timing, len(probers))
        if new == Link.PROBE and probe_round_due(peer, now, self.timing) and (
                not connected or now - peer.last_rx_ms > self.timing.ping_timeout_ms):
            peer.probing_since_ms = peer.probing_since_ms or now
            peer.probe_round_ms = now
            peer.probe_alive = False
            peer.probe_answers.clear()
            for p in probers:
                c = node.conns.get(p.node_id)
                if c is not None:
                    node.send_on(c, Msg.PROBE_REQ, ProbeReq(peer.node_id))
            new = next_link_state(peer, connected, now, self.timing, len(probers))
        if new == Link.UP:
            peer.probing_since_ms = 0
        if new == peer.link:
            return
        old = peer.link
        peer.link = new
        peer.link_since_ms = now
        log.info("link to node %d: %s -> %s", peer.node_id, old.value, new.value)
        if new == Link.DOWN:
            peer.probing_since_ms = 0
            peer.next_retry_ms = now + int(self.timing.node_timeout_ms)
            peer.pong_ms = 0
            peer.peer_ack = False
            conn = node.conns.pop(peer.node_id, None)
            if conn is not None:
                conn.close()
        node.routing.advertise()

    # ---------------------------------------------------------------- probes

    def handle_probe_req(self, d: Delivery) -> None:
        node = self.node
        target = d.payload.target
        peer = node.peers.get(target)
        alive = peer is not None and target in node.conns and \
            now_ms() - peer.last_rx_ms <= self.timing.ping_timeout_ms
        conn = node.conns.get(d.via)
        if conn is not None:
            node.send_on(conn, Msg.PROBE_RPL, ProbeRpl(target, alive))

    def handle_probe_rpl(self, d: Delivery) -> None:
        peer = self.node.peers.get(d.payload.target)
        if peer is None or not peer.probing_since_ms:
            return
        peer.probe_answers.add(d.via)
        if d.payload.alive:
            peer.probe_alive = True
        self.evaluate(peer)
