"""The narrow clusterer API: the only part of services.cluster that consumers import.

What OpenSIPS's clusterer offers its modules through api.h, for fastcluster's consumers
(table replication, NAT ping partitions, the script bridge, the MI commands):

    register_capability(Capability)      a replicated data set: how to serve a sync, how
                                         to apply a sync chunk and a realtime batch
    send / broadcast / send_control      messages, answered with a SendResult
    handle(kind, handler, mode)          receive a message type (dispatch.Mode says how)
    on_node_event / on_topology_change   node reachability and any topology change
    peers_with / backlog / drain         who takes a capability's realtime batches
    synced_nodes / my_index / next_hop   who shares work (partitioning) and routes
    nodes / capabilities / request_sync  views and actions for the MI
    shtags / shtag_set_active / ...      sharing tags (OpenSIPS's shtag_* API)

Everything behind it -- links, heartbeats, membership, routing, capability floods, the
sync protocol -- is private to the package; workers.cluster builds it and hands this
object to the consumers. Results are enums, as in OpenSIPS; nothing here raises for an
expected network outcome. Neighbours: services.cluster.node (the layers it fronts),
capabilities, sync.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fastcluster.core.messages import Msg
from fastcluster.services.cluster.dispatch import Delivery, Mode

if TYPE_CHECKING:
    from fastcluster.services.cluster.capabilities import Capabilities, CapView
    from fastcluster.services.cluster.node import ClusterNode
    from fastcluster.services.cluster.shtags import SharingTags
    from fastcluster.services.cluster.sync import SyncManager

log = logging.getLogger("clusterer")

__all__ = ["Capability", "ClusterAPI", "Delivery", "Events", "Mode", "NodeView", "SendResult",
           "SyncSource"]


class SendResult(IntEnum):
    """Outcome of a send, with OpenSIPS's clusterer API values."""
    SUCCESS = 0
    CURR_DISABLED = 1  # this node is disabled in that cluster
    DEST_DOWN = -1  # destination (or every node) unreachable
    SEND_ERR = -2


NodeEvent = Callable[[int, int, bool], None]  # (cluster, node, reachable)


class Events:
    """Subscribers of the cluster's events; one failing subscriber never stops the
    others (it is logged)."""

    def __init__(self) -> None:
        self.nodes: list[NodeEvent] = []  # a node became reachable / unreachable
        self.routes: list[Callable[[int, int], None]] = []  # a node's next hop changed
        self.topologies: list[Callable[[], None]] = []  # after any topology change
        self.links: list[Callable[[int], None]] = []  # a direct link was established
        self.forgets: list[Callable[[int], None]] = []  # a node was removed or forgotten
        # ... removed by an operator (clusterer_remove_node, here or on another node),
        # not merely unseen for long: a partition is no reason to stop counting a node
        self.removals: list[Callable[[int], None]] = []
        self.restarts: list[Callable[[int], None]] = []  # a node came back as a new process

    @staticmethod
    def _fire(subscribers: list[Callable[..., None]], *args: Any) -> None:
        for fn in subscribers:
            try:
                fn(*args)
            except Exception:
                log.exception("cluster event subscriber %r failed", fn)

    def node(self, cluster: int, node: int, up: bool) -> None:
        self._fire(self.nodes, cluster, node, up)

    def route(self, cluster: int, node: int) -> None:
        self._fire(self.routes, cluster, node)

    def topology(self) -> None:
        self._fire(self.topologies)

    def link_up(self, node: int) -> None:
        self._fire(self.links, node)

    def restart(self, node: int) -> None:
        self._fire(self.restarts, node)

    @property
    def forget(self) -> list[Callable[[int], None]]:
        return self.forgets


class SyncSource(Protocol):
    """The donor side of a capability's full sync: chunks of row entries."""

    async def next_chunk(self, out: np.ndarray, max_bytes: int, counts: np.ndarray
                         ) -> tuple[int, int] | None:
        """Write the next entries into out (at most max_bytes), adding [entries,
        checksum] to counts; returns (bytes, covered position), or None when done."""


@dataclass(frozen=True)
class Capability:
    """A replicated data set (OpenSIPS's register_capability)."""
    name: str  # e.g. usrloc-contact-repl
    wire_id: int  # identifies its realtime batches on the wire (a table kind)
    cluster: int
    # donor: a source of sync chunks from a hash-space position
    sync_source: Callable[[int], SyncSource]
    # receiver: apply sync entries (adding to counts, shm.table AC_*); False if corrupt
    apply_chunk: Callable[[bytes, np.ndarray], Awaitable[bool]]
    # receiver: apply a realtime batch (REPL: core.messages.ROWS_PREFIX, then entries);
    # False if corrupt (the link it came on is dropped)
    apply_batch: Callable[[Delivery], Awaitable[bool]]
    # unix ms of the newest version held (0: nothing): while nobody is synced, the node
    # with the newest data becomes the donor (a whole cluster restarting)
    newest_ms: Callable[[], int] = lambda: 0
    # a mirror sync: mark what the donor sends (True: start, False: stop), then drop the
    # rest older than a version (returns how many were dropped)
    mirror_mark: Callable[[bool], None] = lambda on: None
    mirror_finish: Callable[[int], Awaitable[int]] | None = None


@dataclass(frozen=True)
class NodeView:
    """One node of a cluster as this node sees it (clusterer_list)."""
    node_id: int
    url: tuple[str, int] | None
    sip: tuple[tuple[str, int], ...]
    reachable: bool
    next_hop: int | None
    direct_link: str  # Up, Probe, Down
    enabled: bool
    left: bool
    rtt_ms: int
    clock_skew_ms: int


class ClusterAPI:
    def __init__(self, node: ClusterNode, caps: Capabilities, sync: SyncManager,
                 shtags: SharingTags | None = None) -> None:
        self._node = node
        self._caps = caps
        self._sync = sync
        self._shtags = shtags
        self.me = node.me
        self.clusters = node.clusters
        self.url = node.url
        self.sip = node.sip

    # ---------------------------------------------------------------- messages

    def handle(self, kind: Msg, handler: Callable[[Delivery], Any], mode: Mode) -> None:
        self._node.dispatcher.register(kind, handler, mode)

    def send(self, cluster: int, dest: int, kind: Msg, payload: Any = None,
             raw: bytes | None = None, seq: int = 0) -> SendResult:
        """To one node along its route; `seq` goes in the frame header (numbered
        streams)."""
        return self._node.routing.send(cluster, dest, kind, payload, raw, seq)

    def broadcast(self, cluster: int, kind: Msg, payload: Any = None,
                  raw: bytes | None = None) -> tuple[SendResult, list[int]]:
        return self._node.routing.broadcast(cluster, kind, payload, raw)

    def send_control(self, cluster: int, dest: int, kind: Msg, payload: Any) -> SendResult:
        """Along any route, even to or from a node disabled in the cluster (remote MI,
        clusterer_set_status)."""
        ok = self._node.routing.send_control(cluster, dest, kind, payload)
        return SendResult.SUCCESS if ok else SendResult.DEST_DOWN

    def can_reach(self, cluster: int, dest: int) -> bool:
        return self._node.routing.next_hop_any(cluster, dest) is not None

    # ---------------------------------------------------------------- events

    def on_node_event(self, fn: NodeEvent) -> None:
        self._node.events.nodes.append(fn)

    def on_route_change(self, fn: Callable[[int, int], None]) -> None:
        self._node.events.routes.append(fn)

    def on_topology_change(self, fn: Callable[[], None]) -> None:
        self._node.events.topologies.append(fn)

    def on_node_restart(self, fn: Callable[[int], None]) -> None:
        """A node came back with a new incarnation (its memory is new)."""
        self._node.events.restarts.append(fn)

    def on_forget(self, fn: Callable[[int], None]) -> None:
        """A node was removed from the membership."""
        self._node.events.forgets.append(fn)

    # ---------------------------------------------------------------- views

    def enabled(self, cluster: int) -> bool:
        return self._node.membership.enabled(cluster)

    def up_nodes(self, cluster: int) -> list[int]:
        return self._node.routing.up_nodes(cluster)

    def is_up(self, cluster: int, node_id: int) -> bool:
        return self._node.routing.is_up(cluster, node_id)

    def next_hop(self, cluster: int, node_id: int) -> int | None:
        return self._node.routing.next_hop(cluster, node_id)

    def members(self, cluster: int) -> set[int]:
        return self._node.membership.members(cluster)

    def knows(self, node_id: int) -> bool:
        return node_id in self._node.peers

    def nodes(self, cluster: int) -> list[NodeView]:
        """Every known node of the cluster but this one, by id."""
        node = self._node
        out = []
        for peer in sorted(node.peers.values(), key=lambda p: p.node_id):
            if cluster not in peer.clusters:
                continue
            out.append(NodeView(
                peer.node_id, peer.url, peer.sip, node.routing.is_up(cluster, peer.node_id),
                node.routing.next_hop(cluster, peer.node_id), peer.link.value,
                cluster not in node.membership.disabled.get(peer.node_id, ()), peer.left,
                peer.rtt_ms, peer.skew_ms))
        return out

    def neighbours(self, cluster: int, node_id: int) -> list[int]:
        return self._node.routing.neighbours(cluster, node_id)

    def backlog(self, cluster: int, node_id: int) -> int | None:
        """Bytes waiting to be written towards a node (None: no route)."""
        conn = self._node.routing.conn_to(cluster, node_id)
        return conn.buffered() if conn is not None else None

    async def drain(self, cluster: int, node_id: int) -> None:
        """Wait until the link towards a node has written what it holds."""
        conn = self._node.routing.conn_to(cluster, node_id)
        if conn is not None:
            await conn.drain()

    # ---------------------------------------------------------------- control

    def set_status(self, cluster: int, enabled: bool) -> None:
        self._node.membership.set_status(cluster, enabled)

    def set_remote_status(self, cluster: int, node_id: int, enabled: bool) -> SendResult:
        ok = self._node.membership.set_remote_status(cluster, node_id, enabled)
        return SendResult.SUCCESS if ok else SendResult.DEST_DOWN

    def remove_node(self, node_id: int) -> None:
        self._node.membership.remove(node_id)

    def spawn(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine in the cluster loop, tracked and cancelled at stop."""
        return self._node.spawn(coro)

    # ---------------------------------------------------------------- capabilities

    def register_capability(self, cap: Capability) -> None:
        self._caps.register(cap)
        self._sync.add(cap.name)

    def capabilities(self) -> list[CapView]:
        return self._caps.views(self._sync.progress)

    def capability_enabled(self, name: str) -> bool:
        return self._caps.enabled_here(name)

    def capability_synced(self, name: str) -> bool:
        return self._caps.synced_here(name)

    def set_capability_enabled(self, name: str, enabled: bool) -> None:
        was = self._caps.enabled_here(name)
        self._caps.set_local(name, enabled=enabled)
        if enabled and not was:  # it missed what changed while it was disabled
            self._sync.request(name, "capability enabled")

    def request_sync(self, name: str, reason: str) -> None:
        self._sync.request(name, reason)

    def peers_with(self, name: str) -> list[int]:
        """Reachable nodes that have the capability enabled (or not announced yet)."""
        return self._caps.peers_with(name)

    def synced_nodes(self, name: str) -> list[int]:
        """The live nodes (this one included) that share the capability's work: synced
        and enabled; if none is synced yet, those enabled."""
        return self._caps.sharing_nodes(name)

    def my_index(self, name: str) -> int:
        """This node's place in synced_nodes (-1 if it is not among them)."""
        nodes = self.synced_nodes(name)
        return nodes.index(self.me) if self.me in nodes else -1

    def capability_bits(self, node_id: int) -> int:
        """Packed capability states of a node, for the shared-memory views."""
        return self._caps.view_bits(node_id)

    # ---------------------------------------------------------------- sharing tags

    def shtags(self) -> list[dict[str, Any]]:
        """Every sharing tag this node knows: Tag, Cluster, State (active/backup here),
        Epoch, Holder, Declared_by, Majority, Reason (clusterer_list_shtags)."""
        return self._shtags.listing() if self._shtags is not None else []

    def shtag_set_active(self, name: str, cluster: int) -> str | None:
        """Activate a tag here (the others step down); the reason it is refused, or
        None."""
        if self._shtags is None:
            return "sharing tags are not running"
        return self._shtags.set_active(name, cluster)

    def shtag_holders(self, cluster: int) -> dict[str, int]:
        """tag -> the node its newest activation names (0: none), for a cluster."""
        if self._shtags is None:
            return {}
        return {t.name: t.current.holder for t in self._shtags.tags.values()
                if t.cluster == cluster}

    def on_shtag_change(self, fn: Callable[[str, int, bool, str], None]) -> None:
        """fn(tag, cluster, active here, reason) whenever a tag changes state here."""
        if self._shtags is not None:
            self._shtags.subscribe(fn)
