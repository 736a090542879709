"""Capabilities: which node holds valid data of which replicated data set.

A consumer registers a capability (api.Capability) in one cluster. For every node and
capability there is a state -- not synced, sync pending, sync in progress, synced
(OpenSIPS's values) -- and an enabled flag; each node floods its own (CAPS,
sequence-numbered) and every node knows every node's. A disabled capability neither
sends nor accepts its data and is never a donor. Realtime batches (REPL) are handed to
the capability their prefix names (services.cluster.replication numbers, acknowledges
and re-sends them). The donor choice is a pure function (tested with tables).
Neighbours: services.cluster.node (floods, routing), sync (states), api (the front).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from fastcluster.core.messages import ROWS_PREFIX, Caps, Msg
from fastcluster.core.wire import BROADCAST
from fastcluster.services.cluster.api import Capability
from fastcluster.services.cluster.dispatch import Delivery, Mode
from fastcluster.services.cluster.membership import valid_id
from fastcluster.services.cluster.topology import Link, Sequencer

if TYPE_CHECKING:
    from fastcluster.services.cluster.node import ClusterNode

log = logging.getLogger("caps")


class CapState(IntEnum):
    NOT_SYNCED = -3
    SYNC_PENDING = -2
    SYNC_IN_PROGRESS = -1
    SYNCED = 1

    @property
    def text(self) -> str:
        return {-3: "not synced", -2: "sync pending", -1: "sync in progress",
                1: "synced"}[self.value]


# 4-bit codes of the states in the shared-memory views (0: unknown)
VIEW_CODE = {CapState.NOT_SYNCED: 1, CapState.SYNC_PENDING: 2, CapState.SYNC_IN_PROGRESS: 3,
             CapState.SYNCED: 4}


@dataclass
class CapInfo:
    state: CapState = CapState.NOT_SYNCED
    enabled: bool = True
    donating: int = 0  # syncs this node is serving now (donor choice prefers idle ones)
    synced_since_ms: int = 0  # unix ms it became synced (0: not synced)
    data_ms: int = 0  # unix ms of the newest version it holds (0: none), while not synced


@dataclass(frozen=True)
class CapView:
    """A capability as the MI shows it: this node's state and every member's."""
    name: str
    cluster: int
    state: CapState
    enabled: bool
    nodes: list[tuple[int, CapInfo | None, bool]]  # (node, its info, reachable)
    sync: dict[str, Any] | None  # progress of a sync under way here


def choose_donor(candidates: list[tuple[int, bool, int, int]], exclude: set[int],
                 synced_before_ms: int = 0) -> int | None:
    """Donor among (node id, direct link Up, syncs it serves, synced since ms) candidates
    -- all reachable with the capability synced and enabled: a direct link first, then
    the node synced longest (it holds what the cluster kept, not what a node that just
    fell back on its own data has), then the least busy, then the lowest id, so every
    node picks the same way. synced_before_ms > 0: only nodes synced since before that
    moment (a mirror sync must not copy a node that was not there all along)."""
    pool = [c for c in candidates if c[0] not in exclude and
            (not synced_before_ms or 0 < c[3] <= synced_before_ms)]
    if not pool:
        return None
    return min(pool, key=lambda c: (not c[1], c[3], c[2], c[0]))[0]


def may_declare_synced(me: int, my_data_ms: int, waited_s: float, fallback_s: float,
                       seed: bool, known: set[int],
                       reachable: dict[int, tuple[bool, int]]) -> bool:
    """Whether a node that found no donor may declare its own data synced.

    known: members it knows of (from this run or from its data directory); reachable:
    node -> (synced, newest data ms) of the members it can reach. A node never part of a
    cluster falls back if it is a seed. A node that knows members falls back only once
    every one of them has stayed unreachable or unsynced (waiting as well: the whole
    cluster restarted) for fallback_s, and then only the one with the newest data (the
    lowest id among equals): the others sync from it."""
    if waited_s < fallback_s or any(synced for synced, _ in reachable.values()):
        return False
    if not known:
        return seed
    candidates = {me: my_data_ms}
    candidates.update({n: data for n, (synced, data) in reachable.items() if not synced})
    return max(candidates.items(), key=lambda kv: (kv[1], -kv[0]))[0] == me


class Capabilities:
    def __init__(self, node: ClusterNode, on_change: Callable[[], None]) -> None:
        self.node = node
        self.on_change = on_change
        self.registered: dict[str, Capability] = {}
        self.by_wire: dict[int, Capability] = {}
        self.local: dict[str, CapInfo] = {}
        self.remote: dict[int, dict[str, CapInfo]] = {}
        self.seq = Sequencer()
        self.my_seq = 0
        node.dispatcher.register(Msg.CAPS, self.handle_caps, Mode.INLINE)
        node.dispatcher.register(Msg.REPL, self.handle_repl, Mode.ORDERED)
        node.events.links.append(self._send_all)
        node.events.forgets.append(self.forget)

    def register(self, cap: Capability) -> None:
        if cap.name in self.registered or cap.wire_id in self.by_wire:
            raise RuntimeError(f"capability {cap.name} registered twice")
        self.registered[cap.name] = cap
        self.by_wire[cap.wire_id] = cap
        self.local[cap.name] = CapInfo()

    def cluster_of(self, name: str) -> int:
        return self.registered[name].cluster

    def info(self, node: int, name: str) -> CapInfo | None:
        if node == self.node.me:
            return self.local.get(name)
        return self.remote.get(node, {}).get(name)

    def enabled_here(self, name: str) -> bool:
        info = self.local.get(name)
        return info is not None and info.enabled

    def synced_here(self, name: str) -> bool:
        info = self.local.get(name)
        return info is not None and info.enabled and info.state == CapState.SYNCED

    def peers_with(self, name: str) -> list[int]:
        """Reachable nodes of the capability's cluster that have it enabled."""
        out = []
        for node in self.node.routing.up_nodes(self.cluster_of(name)):
            info = self.remote.get(node, {}).get(name)
            if info is None or info.enabled:  # unknown yet: send, the node filters
                out.append(node)
        return out

    def donor_candidates(self, name: str) -> list[tuple[int, bool, int, int]]:
        out = []
        for node in self.node.routing.up_nodes(self.cluster_of(name)):
            info = self.remote.get(node, {}).get(name)
            if info is not None and info.enabled and info.state == CapState.SYNCED:
                peer = self.node.peers.get(node)
                direct = peer is not None and peer.link == Link.UP
                out.append((node, direct, info.donating, info.synced_since_ms))
        return out

    def reachable_states(self, name: str) -> dict[int, tuple[bool, int]]:
        """node -> (synced, newest data ms) of the reachable members with it enabled."""
        out = {}
        for node in self.node.routing.up_nodes(self.cluster_of(name)):
            info = self.remote.get(node, {}).get(name)
            if info is not None and info.enabled:
                out[node] = (info.state == CapState.SYNCED, info.data_ms)
        return out

    def sharing_nodes(self, name: str) -> list[int]:
        """Nodes that share the capability's work (NAT pinging): reachable, synced and
        enabled; if none is synced yet (a cluster starting), those enabled -- someone
        working beats nobody working. A node without the capability: itself alone."""
        me = self.node.me
        if name not in self.registered:
            return [me]
        nodes = [me] + self.node.routing.up_nodes(self.cluster_of(name))
        enabled = [(n, i) for n, i in ((n, self.info(n, name)) for n in nodes)
                   if i is not None and i.enabled]
        synced = [n for n, i in enabled if i.state == CapState.SYNCED]
        return sorted(synced or [n for n, _ in enabled])

    def set_local(self, name: str, state: CapState | None = None,
                  enabled: bool | None = None, donating_delta: int = 0) -> None:
        info = self.local[name]
        old = (info.state, info.enabled)
        if state is not None:
            if state == CapState.SYNCED and info.state != CapState.SYNCED:
                info.synced_since_ms = int(time.time() * 1000)
            elif state != CapState.SYNCED:
                info.synced_since_ms = 0
            info.state = state
        if enabled is not None:
            info.enabled = enabled
        info.donating += donating_delta
        if (info.state, info.enabled) != old:
            log.info("capability %s: %s%s", name, info.state.text,
                     "" if info.enabled else " (disabled)")
        self._announce()
        self.on_change()

    # ---------------------------------------------------------------- realtime batches

    async def handle_repl(self, d: Delivery) -> None:
        if len(d.payload) < ROWS_PREFIX.size:
            self.node.count("clusterer:bad_messages")
            return
        _, kind, _ = ROWS_PREFIX.unpack_from(d.payload)
        cap = self.by_wire.get(kind)
        if cap is None:
            self.node.count("clusterer:bad_messages")
            return
        if not self.enabled_here(cap.name):
            return  # disabled here: accepts nothing
        if not await cap.apply_batch(d):
            self.node.count("clusterer:corrupt_frames")
            log.warning("corrupt replication rows from node %d: dropping that connection",
                        d.source)
            conn = self.node.conns.get(d.via)
            if conn is not None:
                conn.close()

    # ---------------------------------------------------------------- flooding

    def _payload(self, origin: int, seq: int, caps: dict[str, CapInfo]) -> Caps:
        if origin == self.node.me:
            for name, info in caps.items():
                info.data_ms = 0 if info.state == CapState.SYNCED else \
                    self.registered[name].newest_ms()
        return Caps(origin, seq, {n: [int(i.state), int(i.enabled), i.donating,
                                      i.synced_since_ms, i.data_ms]
                                  for n, i in caps.items()})

    def _announce(self) -> None:
        node = self.node
        self.my_seq = self.seq.next(int(time.time() * 1000))
        node.flood.fresh(int(Msg.CAPS), node.me, self.my_seq)
        node.routing.flood(Msg.CAPS, self._payload(node.me, self.my_seq, self.local),
                           exclude=None)

    def _send_all(self, peer: int) -> None:
        """A new link: tell that node every capability state we know."""
        node = self.node
        conn = node.conns.get(peer)
        if conn is None:
            return
        if self.my_seq == 0:
            self.my_seq = self.seq.next(int(time.time() * 1000))
        node.send_on(conn, Msg.CAPS, self._payload(node.me, self.my_seq, self.local),
                     dest=BROADCAST)
        for origin, caps in self.remote.items():
            seq = node.flood.seen.get((int(Msg.CAPS), origin))
            if seq is not None:
                node.send_on(conn, Msg.CAPS, self._payload(origin, seq, caps), dest=BROADCAST)

    def handle_caps(self, d: Delivery) -> None:
        p: Caps = d.payload
        node = self.node
        if not valid_id(p.origin):
            node.count("clusterer:bad_messages")
            return
        if p.origin == node.me or not node.flood.fresh(int(Msg.CAPS), p.origin, p.seq):
            return
        caps = {}
        for name, values in p.caps.items():
            state, enabled, donating, since, data = (list(values) + [0] * 5)[:5]
            try:
                caps[name] = CapInfo(CapState(state), bool(enabled), donating, since, data)
            except ValueError:
                node.count("clusterer:bad_messages")
                return
        self.remote[p.origin] = caps
        node.routing.flood(Msg.CAPS, p, exclude=d.via)
        self.on_change()

    def forget(self, node: int) -> None:
        self.remote.pop(node, None)

    # ---------------------------------------------------------------- views

    def view_bits(self, node: int) -> int:
        """Capability states packed for shm.control views: 4 bits per capability in
        registration order (VIEW_CODE; 0 unknown), bit 3 set when enabled."""
        bits = 0
        for i, name in enumerate(self.registered):
            info = self.info(node, name)
            if info is not None:
                bits |= (VIEW_CODE[info.state] | (8 if info.enabled else 0)) << (4 * i)
        return bits

    def views(self, progress: dict[str, dict[str, Any]]) -> list[CapView]:
        node = self.node
        out = []
        for name, cap in self.registered.items():
            mine = self.local[name]
            members = sorted({node.me} | node.membership.members(cap.cluster))
            out.append(CapView(name, cap.cluster, mine.state, mine.enabled,
                               [(n, self.info(n, name),
                                 n == node.me or node.routing.is_up(cap.cluster, n))
                                for n in members], progress.get(name)))
        return out
