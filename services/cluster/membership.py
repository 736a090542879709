"""Membership: who the members of this node's clusters are, as descriptions flooded with
sequence numbers (NODES), and how they leave (LEAVE), are removed (REMOVE) or are
disabled in a cluster (SET_STATUS).

A joining node sends its description to the seed it dials; every node floods the
descriptions it had not seen, so all nodes adopt all members. A description carries a
sequence number that grows across restarts (topology.Sequencer): an older one never
overwrites a newer one, and a removed node stays removed until it describes itself
anew. Known members are kept in the data directory (members.json) and dialled at the
next start, seeds or not, so a restarted node -- the first seed included -- finds its
cluster again. A member nobody here has seen for node_timeout_s x FORGET_FACTOR is
forgotten (a node that left for good, or a ghost a peer announced). Neighbours:
services.cluster.node (links, the node's state), routing (what a membership change does
to reachability).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from fastcluster.core.messages import Leave, Msg, NodeDesc, Nodes, Remove, SetStatus
from fastcluster.services.cluster.dispatch import Delivery
from fastcluster.services.cluster.topology import Peer

if TYPE_CHECKING:
    from fastcluster.services.cluster.node import ClusterNode

log = logging.getLogger("clusterer")

FORGET_FACTOR = 1800  # node timeouts (1 hour with the LAN preset)
LEFT_REDIAL_MS = 5000  # a node that left is dialled again this often (it may restart)
SAVE_EVERY_S = 10.0  # members.json is rewritten at most this often (and on changes)
MAX_NODE_ID = 65535


def valid_id(node_id: int) -> bool:
    return 1 <= node_id <= MAX_NODE_ID


class MemberFile:
    """members.json in the data directory: {"node_id": me, "members": {id: {url,
    clusters, last_seen_ms (unix)}}}, written whole (temporary file, then rename)."""

    def __init__(self, path: str, me: int) -> None:
        self.path = path
        self.me = me

    def load(self) -> dict[int, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): starting without the members it listed",
                        self.path, exc)
            return {}
        if data.get("node_id") != self.me:
            log.warning("%s belongs to node %s, not to this node %d: ignored", self.path,
                        data.get("node_id"), self.me)
            return {}
        out = {}
        for key, member in (data.get("members") or {}).items():
            try:
                node_id = int(key)
                url = (str(member["url"][0]), int(member["url"][1]))
                out[node_id] = {"url": url, "clusters": [int(c) for c in member["clusters"]],
                                "last_seen_ms": int(member.get("last_seen_ms", 0))}
            except (KeyError, TypeError, ValueError, IndexError):
                continue
        return {n: m for n, m in out.items() if valid_id(n) and n != self.me}

    def save(self, members: dict[int, dict[str, Any]]) -> None:
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"node_id": self.me, "members": {str(n): m for n, m in
                                                           sorted(members.items())}}, fh)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)


class Membership:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.disabled: dict[int, set[int]] = {node.me: set()}  # node -> disabled clusters
        self.desc_seq: dict[int, int] = {}
        self.removed: dict[int, int] = {}  # node -> description seq at removal
        self.my_desc_seq = node.seq.next(int(time.time() * 1000))
        self.file: MemberFile | None = None
        self.saved: dict[int, dict[str, Any]] = {}
        self.saved_at = 0.0

    def remember(self, path: str) -> None:
        """Load the members of the previous run (they are dialled like static nodes)."""
        self.file = MemberFile(path, self.node.me)
        now_wall, now_mono = time.time() * 1000, time.monotonic() * 1000
        for node_id, member in self.file.load().items():
            peer = self.peer(node_id)
            if peer.url is None:
                peer.url = member["url"]
            peer.clusters = frozenset(member["clusters"])
            peer.remembered = True
            age = max(0.0, now_wall - member["last_seen_ms"]) if member["last_seen_ms"] else 0
            peer.last_seen_ms = int(now_mono - age)
        if self.node.peers:
            log.info("members known from %s: %s", path, sorted(self.node.peers))

    def persist(self, now_ms: int) -> None:
        """Write members.json if the members changed, or every SAVE_EVERY_S."""
        if self.file is None:
            return
        wall = time.time() * 1000
        members = {p.node_id: {"url": list(p.url), "clusters": sorted(p.clusters),
                               "last_seen_ms": int(wall - (now_ms - p.last_seen_ms))}
                   for p in self.node.peers.values() if p.url and p.clusters}
        if set(members) != set(self.saved) or time.monotonic() - self.saved_at > SAVE_EVERY_S:
            self.file.save(members)
            self.saved, self.saved_at = members, time.monotonic()

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
            if not valid_id(node_id) or not all(valid_id(c) for c in desc.clusters):
                node.count("clusterer:bad_messages")
                continue
            if node_id == node.me or not desc.url:
                continue
            if node_id in self.removed and seq <= self.removed[node_id]:
                continue
            known = node_id in node.peers
            if known and seq < self.desc_seq.get(node_id, 0):
                continue
            peer = self.peer(node_id)
            if not known:
                peer.last_seen_ms = int(time.monotonic() * 1000)  # the forget clock starts
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
        peer.next_retry_ms = int(time.monotonic() * 1000) + LEFT_REDIAL_MS
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
        self.forget(p.target, removed=True)

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
        self.forget(node_id, removed=True)

    def forget(self, node_id: int, why: str = "removed", removed: bool = False) -> None:
        """Drop a node: removed by an operator (`removed`), or unseen for long."""
        node = self.node
        log.info("node %d %s", node_id, why)
        self.removed[node_id] = self.desc_seq.get(node_id, 0)
        conn = node.conns.pop(node_id, None)
        if conn is not None:
            conn.close()
        node.peers.pop(node_id, None)
        node.flood.forget(node_id)
        for hook in node.events.forget + (node.events.removals if removed else []):
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
