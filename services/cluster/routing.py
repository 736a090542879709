"""Routing: link-state advertisements, reachability, next hops, relaying, and the node
events upper layers subscribe to.

Every node floods the set of its Up direct links (LSA, sequence-numbered); each node
computes the same shortest paths (topology.routes) from its own links and everyone's
advertisements, so nodes without a direct link reach each other through relays. A node
becoming reachable or unreachable in a cluster is a node event. Sending goes to the
destination's next hop; a frame for another node is forwarded untouched (TTL-bounded).
Neighbours: services.cluster.node (connections), topology (routes), heartbeat (what
changes links), membership (who is a member).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastcluster.core.messages import Lsa, Msg
from fastcluster.core.wire import BROADCAST, Frame, Header, encode, encode_parts
from fastcluster.services.cluster.api import SendResult
from fastcluster.services.cluster.dispatch import Delivery
from fastcluster.services.cluster.links import Connection
from fastcluster.services.cluster.membership import valid_id
from fastcluster.services.cluster.topology import Link, routes

if TYPE_CHECKING:
    from fastcluster.services.cluster.node import ClusterNode

log = logging.getLogger("clusterer")


class Routing:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.adverts: dict[int, tuple[int, dict[int, set[int]]]] = {}  # origin -> (seq, lsa)
        self.my_lsa: dict[int, list[int]] = {}
        self.reachable: dict[int, dict[int, int]] = {c: {} for c in node.clusters}

    # ---------------------------------------------------------------- views

    def is_up(self, cluster: int, node_id: int) -> bool:
        return node_id in self.reachable.get(cluster, {})

    def up_nodes(self, cluster: int) -> list[int]:
        return sorted(self.reachable.get(cluster, {}))

    def reachable_anywhere(self, node_id: int) -> bool:
        return any(node_id in table for table in self.reachable.values())

    def next_hop(self, cluster: int, dest: int) -> int | None:
        return self.reachable.get(cluster, {}).get(dest)

    def conn_to(self, cluster: int, dest: int) -> Connection | None:
        hop = self.next_hop(cluster, dest)
        return self.node.conns.get(hop) if hop is not None else None

    def next_hop_any(self, cluster: int, dest: int) -> int | None:
        """Next hop for control traffic: the cluster's route, any cluster's route, or a
        direct link even to a node disabled in every cluster (so it can be re-enabled)."""
        if dest in self.reachable.get(cluster, {}):
            return self.reachable[cluster][dest]
        for table in self.reachable.values():
            if dest in table:
                return table[dest]
        peer = self.node.peers.get(dest)
        if dest in self.node.conns and peer is not None and peer.link == Link.UP:
            return dest
        return None

    def neighbours(self, cluster: int, node_id: int) -> list[int]:
        """A node's Up neighbours in a cluster, as this node knows them."""
        if node_id == self.node.me:
            return sorted(p.node_id for p in self.node.peers.values()
                          if p.link == Link.UP and cluster in p.clusters)
        advert = self.adverts.get(node_id)
        return sorted(advert[1].get(cluster, set())) if advert else []

    # ---------------------------------------------------------------- sending

    def send(self, cluster: int, dest: int, kind: Msg, payload: Any = None,
             raw: bytes | None = None, seq: int = 0) -> SendResult:
        if not self.node.membership.enabled(cluster):
            return SendResult.CURR_DISABLED
        conn = self.conn_to(cluster, dest)
        if conn is None:
            return SendResult.DEST_DOWN
        header = Header(kind, cluster, self.node.me, dest, seq)
        ok = conn.send_parts(encode_parts(header, raw)) if raw is not None else \
            conn.send(encode(header, payload))
        return SendResult.SUCCESS if ok else SendResult.SEND_ERR

    def broadcast(self, cluster: int, kind: Msg, payload: Any = None,
                  raw: bytes | None = None) -> tuple[SendResult, list[int]]:
        """Send to every reachable node of the cluster; returns (result, nodes sent to)."""
        if not self.node.membership.enabled(cluster):
            return SendResult.CURR_DISABLED, []
        targets = self.up_nodes(cluster)
        if not targets:
            return SendResult.DEST_DOWN, []
        sent = [n for n in targets if self.send(cluster, n, kind, payload, raw) ==
                SendResult.SUCCESS]
        return (SendResult.SUCCESS if sent else SendResult.SEND_ERR), sent

    def send_control(self, cluster: int, dest: int, kind: Msg, payload: Any) -> bool:
        """Send along any route (even to or from a disabled node); False if none."""
        hop = self.next_hop_any(cluster, dest)
        conn = self.node.conns.get(hop) if hop is not None else None
        return conn is not None and conn.send(encode(Header(kind, cluster, self.node.me,
                                                            dest), payload))

    def flood(self, kind: Msg, payload: Any, exclude: int | None) -> None:
        """Send a flooded message to every neighbour (but `exclude`); receivers forward
        what is fresh to theirs (sequence numbers stop the echo)."""
        data = encode(Header(kind, 0, self.node.me, BROADCAST), payload)
        for node_id, conn in list(self.node.conns.items()):
            if node_id != exclude and self.node.peers[node_id].link != Link.DOWN:
                conn.send(data)

    def relay(self, frame: Frame) -> None:
        h = frame.header
        if h.ttl <= 0:
            self.node.count("clusterer:unroutable_msgs")
            return
        hop = self.next_hop_any(h.cluster, h.destination)
        conn = self.node.conns.get(hop) if hop is not None else None
        if conn is None:
            self.node.count("clusterer:unroutable_msgs")
            return
        conn.send(encode(h.forwarded(), raw=frame.raw))
        self.node.count("clusterer:relayed_msgs")

    # ---------------------------------------------------------------- link state

    def advertise(self) -> None:
        """Flood our Up links if they changed, and recompute routes."""
        node = self.node
        lsa = {c: sorted(p.node_id for p in node.peers.values()
                         if p.link == Link.UP and c in p.clusters)
               for c in node.clusters}
        if lsa != self.my_lsa:
            self.my_lsa = lsa
            seq = node.seq.next(int(time.time() * 1000))
            self.adverts[node.me] = (seq, {c: set(v) for c, v in lsa.items()})
            node.flood.fresh(int(Msg.LSA), node.me, seq)
            self.flood(Msg.LSA, Lsa(node.me, seq, lsa), exclude=None)
        self.recompute()

    def adverts_for(self, conn: Connection) -> None:
        """Tell a new neighbour every link-state advertisement we hold."""
        for origin, (seq, lsa) in self.adverts.items():
            self.node.send_on(conn, Msg.LSA, Lsa(origin, seq, {c: sorted(v) for c, v in
                                                               lsa.items()}),
                              dest=BROADCAST)

    def handle_lsa(self, d: Delivery) -> None:
        p: Lsa = d.payload
        node = self.node
        if not valid_id(p.origin) or not all(valid_id(n) for v in p.lsa.values() for n in v):
            node.count("clusterer:bad_messages")
            return
        if p.origin == node.me or not node.flood.fresh(int(Msg.LSA), p.origin, p.seq):
            return
        self.adverts[p.origin] = (p.seq, {c: set(v) for c, v in p.lsa.items()})
        self.flood(Msg.LSA, p, exclude=d.via)
        self.recompute()

    def forget_advert(self, node_id: int) -> None:
        self.adverts.pop(node_id, None)
        self.recompute()

    def recompute(self) -> None:
        node = self.node
        lsa_of = {o: adv for o, (_, adv) in self.adverts.items()}
        for cluster in node.clusters:
            members = node.membership.members(cluster)
            if node.me not in members:
                new: dict[int, int] = {}
            else:
                my_up = {p.node_id for p in node.peers.values()
                         if p.link == Link.UP and p.node_id in members}
                adverts = {o: adv.get(cluster, set()) for o, adv in lsa_of.items()
                           if o != node.me}
                new = routes(node.me, my_up, adverts, members)
            old = self.reachable[cluster]
            self.reachable[cluster] = new
            for peer_id in sorted(set(old) | set(new)):
                was, now_ = peer_id in old, peer_id in new
                if was != now_:
                    node.count("clusterer:node_up_events" if now_ else
                               "clusterer:node_down_events")
                    log.info("cluster %d: node %d is %s", cluster, peer_id,
                             f"up (next hop {new[peer_id]})" if now_ else "down")
                    node.events.node(cluster, peer_id, now_)
                elif was and old[peer_id] != new[peer_id]:
                    log.info("cluster %d: node %d now via node %d", cluster, peer_id,
                             new[peer_id])
                    node.events.route(cluster, peer_id)
        node.events.topology()
