"""Capabilities: which node holds valid data of which replicated table.

Each capability (declared once in CAPS) replicates one shared table inside one cluster
(`[usrloc] replication_cluster`, `[dialog] replication_cluster`; 0 switches it off).
For every node and capability there is a state -- not synced, sync pending, sync in
progress, synced (OpenSIPS's values) -- and an enabled flag; each node floods its own
(CAPS, sequence-numbered) and every node knows every node's. A disabled capability
neither sends nor accepts its data and is never a donor. The donor choice is a pure
function (tested with tables). Neighbours: services.clusterer (flooding, topology),
services.replication, services.sync, shm.control (published for workers and the timer).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from fastcluster.core.config import Config
from fastcluster.core.wire import BROADCAST, Frame, Header, Msg, encode
from fastcluster.services.mi.registry import MIError, command
from fastcluster.services.cluster.topology import FloodFilter, Link, Sequencer

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


@dataclass(frozen=True)
class CapSpec:
    name: str
    kind: int  # the table's kind (wire table id)
    table: str  # attribute of NodeMemory
    cluster_setting: str


CAPS: tuple[CapSpec, ...] = (
    CapSpec("usrloc-contact-repl", 1, "contacts", "usrloc.replication_cluster"),
    CapSpec("dialog-dlg-repl", 2, "dialogs", "dialog.replication_cluster"),
)
CAPS_BY_NAME = {c.name: c for c in CAPS}
CAPS_BY_KIND = {c.kind: c for c in CAPS}


@dataclass
class CapInfo:
    state: CapState = CapState.NOT_SYNCED
    enabled: bool = True
    donating: int = 0  # syncs this node is serving now (donor choice prefers idle ones)


def choose_donor(candidates: list[tuple[int, bool, int]], exclude: set[int]) -> int | None:
    """Donor among (node id, direct link Up, syncs it serves) candidates -- all reachable
    with the capability synced and enabled: a direct link first, then the least busy,
    then the lowest id, so every node picks the same way."""
    pool = [c for c in candidates if c[0] not in exclude]
    if not pool:
        return None
    return min(pool, key=lambda c: (not c[1], c[2], c[0]))[0]


def cap_cluster(cfg: Config, spec: CapSpec) -> int:
    return cfg.replication_cluster(spec.cluster_setting)


class Capabilities:
    def __init__(self, cfg: Config, clusterer: Any,
                 on_change: Callable[[], None]) -> None:
        self.cfg = cfg
        self.cl = clusterer
        self.on_change = on_change
        self.active = [c for c in CAPS if cap_cluster(cfg, c)]
        self.local: dict[str, CapInfo] = {c.name: CapInfo() for c in self.active}
        self.remote: dict[int, dict[str, CapInfo]] = {}
        self.flood = FloodFilter()
        self.seq = Sequencer()
        self.my_seq = 0
        self.sync_status: dict[str, dict[str, Any]] = {}  # filled by services.sync
        clusterer.handlers[Msg.CAPS] = self.handle_caps
        clusterer.on_link_up.append(self._send_all)

    def cluster_of(self, name: str) -> int:
        return cap_cluster(self.cfg, CAPS_BY_NAME[name])

    def info(self, node: int, name: str) -> CapInfo | None:
        if node == self.cl.me:
            return self.local.get(name)
        return self.remote.get(node, {}).get(name)

    def enabled_here(self, name: str) -> bool:
        info = self.local.get(name)
        return info is not None and info.enabled

    def kind_mask(self) -> int:
        """Bit (1 << kind) of every table this node accepts data for."""
        mask = 0
        for c in self.active:
            if self.local[c.name].enabled:
                mask |= 1 << c.kind
        return mask

    def peers_with(self, name: str) -> list[int]:
        """Reachable nodes of the capability's cluster that have it enabled."""
        cluster = self.cluster_of(name)
        out = []
        for node in self.cl.up_nodes(cluster):
            info = self.remote.get(node, {}).get(name)
            if info is None or info.enabled:  # unknown yet: send, the node filters
                out.append(node)
        return out

    def donor_candidates(self, name: str) -> list[tuple[int, bool, int]]:
        cluster = self.cluster_of(name)
        out = []
        for node in self.cl.up_nodes(cluster):
            info = self.remote.get(node, {}).get(name)
            if info is not None and info.enabled and info.state == CapState.SYNCED:
                peer = self.cl.peers.get(node)
                direct = peer is not None and peer.link == Link.UP
                out.append((node, direct, info.donating))
        return out

    def set_local(self, name: str, state: CapState | None = None,
                  enabled: bool | None = None, donating_delta: int = 0) -> None:
        info = self.local[name]
        old = (info.state, info.enabled)
        if state is not None:
            info.state = state
        if enabled is not None:
            info.enabled = enabled
        info.donating += donating_delta
        if (info.state, info.enabled) != old:
            log.info("capability %s: %s%s", name, info.state.text,
                     "" if info.enabled else " (disabled)")
        self._announce()
        self.on_change()

    # -- flooding

    def _payload(self) -> dict[str, Any]:
        return {"origin": self.cl.me, "seq": self.my_seq,
                "caps": {n: [int(i.state), i.enabled, i.donating]
                         for n, i in self.local.items()}}

    def _announce(self) -> None:
        self.my_seq = self.seq.next(int(time.time() * 1000))
        self.flood.fresh(int(Msg.CAPS), self.cl.me, self.my_seq)
        self.cl.flood_all(Msg.CAPS, self._payload(), exclude=None)

    def _send_all(self, node: int) -> None:
        """A new link: tell that node every capability state we know."""
        conn = self.cl.conns.get(node)
        if conn is None:
            return
        if self.my_seq == 0:
            self.my_seq = self.seq.next(int(time.time() * 1000))
        conn.send(encode(Header(Msg.CAPS, 0, self.cl.me, BROADCAST), self._payload()))
        for origin, caps in self.remote.items():
            seq = self.flood.seen.get((int(Msg.CAPS), origin))
            if seq is not None:
                conn.send(encode(Header(Msg.CAPS, 0, self.cl.me, BROADCAST), {
                    "origin": origin, "seq": seq,
                    "caps": {n: [int(i.state), i.enabled, i.donating]
                             for n, i in caps.items()}}))

    def handle_caps(self, frame: Frame, conn: Any) -> None:
        p = frame.payload
        origin, seq = int(p["origin"]), int(p["seq"])
        if origin == self.cl.me or not self.flood.fresh(int(Msg.CAPS), origin, seq):
            return
        caps = {}
        for name, (state, enabled, donating) in p["caps"].items():
            caps[str(name)] = CapInfo(CapState(int(state)), bool(enabled), int(donating))
        self.remote[origin] = caps
        self.cl.flood_all(Msg.CAPS, p, exclude=conn.peer_id if conn is not None else None)
        self.on_change()

    def forget(self, node: int) -> None:
        self.remote.pop(node, None)
        self.flood.forget(node)

    def view_bits(self, node: int) -> int:
        """Capability states packed for shm.control views: 4 bits per capability in
        CAPS order: 0 unknown, 1 not synced, 2 pending, 3 in progress, 4 synced; bit 3
        set when enabled."""
        bits = 0
        code = {CapState.NOT_SYNCED: 1, CapState.SYNC_PENDING: 2,
                CapState.SYNC_IN_PROGRESS: 3, CapState.SYNCED: 4}
        for i, spec in enumerate(CAPS):
            info = self.info(node, spec.name)
            if info is not None:
                bits |= (code[info.state] | (8 if info.enabled else 0)) << (4 * i)
        return bits


# ---------------------------------------------------------------- MI


@command("clusterer_list_cap")
def mi_clusterer_list_cap(node: Any) -> dict[str, Any]:
    """Every capability of every cluster: this node's state, each node's state, and the
    progress of a sync under way (donor, records, percent, rate)."""
    caps: Capabilities = node.caps
    clusters: dict[int, list[dict[str, Any]]] = {}
    for spec in caps.active:
        cluster = caps.cluster_of(spec.name)
        mine = caps.local[spec.name]
        nodes = []
        for n in sorted({caps.cl.me} | caps.cl.members(cluster)):
            info = caps.info(n, spec.name)
            nodes.append({"node_id": n, "state": info.state.text if info else "unknown",
                          "enabled": ("yes" if info.enabled else "no") if info else "unknown",
                          "reachable": n == caps.cl.me or caps.cl.is_up(cluster, n)})
        item: dict[str, Any] = {"name": spec.name, "state": mine.state.text,
                                "enabled": "yes" if mine.enabled else "no", "Nodes": nodes}
        if spec.name in caps.sync_status:
            item["sync"] = caps.sync_status[spec.name]
        clusters.setdefault(cluster, []).append(item)
    return {"Clusters": [{"cluster_id": c, "Capabilities": items}
                         for c, items in sorted(clusters.items())]}


@command("clusterer_set_cap_status")
def mi_clusterer_set_cap_status(node: Any, cluster_id: Any, capability: str,
                                status: Any) -> str:
    """Enable (1) or disable (0) a capability on this node."""
    caps: Capabilities = node.caps
    spec = CAPS_BY_NAME.get(capability)
    if spec is None or spec not in caps.active:
        raise MIError(404, "Capability not found")
    if caps.cluster_of(capability) != int(cluster_id):
        raise MIError(404, "Capability not in that cluster")
    if str(status) not in ("0", "1"):
        raise MIError(400, "Bad value for 'status'")
    enabled = str(status) == "1"
    was = caps.local[capability].enabled
    caps.set_local(capability, enabled=enabled)
    if enabled and not was:  # it missed what changed while it was disabled
        node.sync.request(capability, "capability enabled")
    return "OK"
