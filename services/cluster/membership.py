"""Membership: who the members of this node's clusters are, as descriptions flooded with
sequence numbers (NODES), and how they leave (LEAVE), are removed (REMOVE) or are
disabled in a cluster (SET_STATUS).

A joining node sends its description to the seed it dials; every node floods the
descriptions it had not seen, so all nodes adopt all members. A description carries a
sequence number that grows across restarts (topology.Sequencer): an older one never
overwrites a newer one, and a removed node stays removed until it describes itself
anew. Neighbours: services.cluster.node (links, the node's state), routing (what a
membership change does to reachability).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from fastcluster.core.messages import Leave, Msg, NodeDesc, Nodes, Remove, SetStatus
from fastcluster.services.cluster.dispatch import Delivery
from fastcluster.services.cluster.topology import Peer

if TYPE_CHECKING:
    from fastcluster.services.cluster.node import ClusterNode

log = logging.getLogger("clusterer")


class Membership:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.disabled: dict[int, set[int]] = {node.me: set()}  # node -> disabled clusters
        self.desc_seq: dict[int, int] = {}
        self.removed: dict[int, int] = {}  # node -> description seq at removal
        self.my_desc_seq = node.seq.next(int(time.time() * 1000))

    def peer(self, node_id: int) -> Peer:
        """The peer record of a node, created on first mention."""
        peers = self.node.peers
        peer = peers.get(node_id)
        if peer is None:
            peer = peers[node_id] = Peer(node_id)
            self.disabled.setdefault(node_id, set())
        return peer

    def members(self, cluster: int) -> set[int]:
        """Enabled members of a cluster that this node knows (itself included)."""
        out = {p.node_id for p in self.node.peers.values()
               if cluster in p.clusters and cluster not in self.disabled.get(p.node_id, ())}
        if cluster not in self.disabled[self.node.me]:
            out.add(self.node.me)
        return out

    def enabled(self, cluster: int) -> bool:
        return cluster in self.node.clusters and cluster not in self.disabled[self.node.me]

    def enabled_any(self) -> bool:
        return any(self.enabled(c) for c in self.node.clusters)

    def my_desc(self) -> NodeDesc:
        n = self.node
        return NodeDesc(n.me, n.incarnation, list(n.url), [list(a) for a in n.sip],
                        list(n.clusters), sorted(self.disabled[n.me]), self.my_desc_seq)

    def peer_desc(self, peer: Peer) -> NodeDesc:
        return NodeDesc(peer.node_id, peer.incarnation, list(peer.url) if peer.url else None,
                        [list(a) for a in peer.sip], sorted(peer.clusters),
                        sorted(self.disabled.get(peer.node_id, ())),
                        self.desc_seq.get(peer.node_id, 0))

    def known_descs(self, exclude: int) -> list[NodeDesc]:
        """Every description worth telling a new neighbour (this node's first)."""
        return [self.my_desc()] + [self.peer_desc(p) for p in self.node.peers.values()
                                   if p.url and p.node_id != exclude]

    def flood_node(self, node_id: int, exclude: int | None) -> None:
        peer = self.node.peers.get(node_id)
        if peer is not None and peer.url:
            self.node.routing.flood(Msg.NODES, Nodes([self.peer_desc(peer)]), exclude)

    # ---------------------------------------------------------------- handlers

    def handle_nodes(self, d: Delivery) -> None:
        node = self.node
        fresh = []
        for desc in d.payload.nodes:
            node_id, seq = desc.id, desc.seq
            if node_id == node.me or not desc.url:
                continue
            if node_id in self.removed and seq <= self.removed[node_id]:
                continue
            known = node_id in node.peers
            if known and seq < self.desc_seq.get(node_id, 0):
                continue
            peer = self.peer(node_id)
            if seq > self.desc_seq.get(node_id, 0) or not known:
                fresh.append(desc)
            self.desc_seq[node_id] = max(seq, self.desc_seq.get(node_id, 0))
            if not (node_id in node.conns and peer.url):
                peer.url = (str(desc.url[0]), int(desc.url[1]))
            peer.clusters = frozenset(desc.clusters)
            peer.sip = tuple((str(a[0]), int(a[1])) for a in desc.sip)
            if desc.inc and node_id not in node.conns and desc.inc != peer.incarnation:
                peer.incarnation = desc.inc
                peer.left = False  # a new incarnation of a node that left: dial it again
            old_disabled = self.disabled.get(node_id, set())
            self.disabled[node_id] = set(desc.disabled)
            if not known:
                log.info("node %d at %s:%d adopted (clusters %s)", node_id, peer.url[0],
                         peer.url[1], sorted(peer.clusters))
            if old_disabled != self.disabled[node_id]:
                log.info("node %d is disabled in clusters %s", node_id,
                         sorted(self.disabled[node_id]))
        if fresh:
            node.routing.flood(Msg.NODES, Nodes(fresh), exclude=d.via)
            node.routing.recompute()

    def handle_leave(self, d: Delivery) -> None:
        p: Leave = d.payload
        node = self.node
        if p.origin == node.me or not node.flood.fresh(int(Msg.LEAVE), p.origin, p.seq):
            return
        node.routing.flood(Msg.LEAVE, p, exclude=d.via)
        peer = node.peers.get(p.origin)
        if peer is None:
            return
        log.info("node %d left the cluster", p.origin)
        peer.left = True
        node.heartbeats.evaluate(peer)
        node.routing.forget_advert(p.origin)

    def handle_remove(self, d: Delivery) -> None:
        p: Remove = d.payload
        node = self.node
        if not node.flood.fresh(int(Msg.REMOVE), p.origin, p.seq):
            return
        node.routing.flood(Msg.REMOVE, p, exclude=d.via)
        if p.target == node.me:
            log.warning("node %d removed this node from the cluster: disabling it", p.origin)
            for c in node.clusters:
                self.set_status(c, False)
            return
        self.forget(p.target)

    def handle_set_status(self, d: Delivery) -> None:
        self.set_status(d.payload.cluster, d.payload.status)

    # ---------------------------------------------------------------- actions

    def leave_message(self) -> Leave:
        return Leave(self.node.me, self.node.seq.next(int(time.time() * 1000)))

    def remove(self, node_id: int) -> None:
        """clusterer_remove_node: forget a node here and on every node."""
        node = self.node
        seq = node.seq.next(int(time.time() * 1000))
        node.flood.fresh(int(Msg.REMOVE), node.me, seq)
        node.routing.flood(Msg.REMOVE, Remove(node_id, node.me, seq), exclude=None)
        self.forget(node_id)

    def forget(self, node_id: int) -> None:
        node = self.node
        log.info("node %d removed", node_id)
        self.removed[node_id] = self.desc_seq.get(node_id, 0)
        conn = node.conns.pop(node_id, None)
        if conn is not None:
            conn.close()
        node.peers.pop(node_id, None)
        node.flood.forget(node_id)
        for hook in node.events.forget:
            hook(node_id)
        node.routing.forget_advert(node_id)
        node.routing.advertise()

    def set_status(self, cluster: int, enabled: bool) -> None:
        node = self.node
        if enabled:
            self.disabled[node.me].discard(cluster)
        else:
            self.disabled[node.me].add(cluster)
        self.my_desc_seq = node.seq.next(int(time.time() * 1000))
        log.info("this node %s in cluster %d", "enabled" if enabled else "disabled", cluster)
        node.routing.flood(Msg.NODES, Nodes([self.my_desc()]), exclude=None)
        node.routing.advertise()

    def set_remote_status(self, cluster: int, node_id: int, enabled: bool) -> bool:
        """clusterer_set_status for another node: False when it cannot be reached."""
        return self.node.routing.send_control(cluster, node_id, Msg.SET_STATUS,
                                              SetStatus(cluster, enabled))
