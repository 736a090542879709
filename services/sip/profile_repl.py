"""Cluster-wide dialog profile counts (capability dialog-prof-repl), in the cluster
process, through the narrow cluster API only.

Each node counts the dialogs it is responsible for (shm.profiles: those of the sharing
tags active here, and those without a tag it created) and sends its counts to the
others (PROF_COUNTS): what changed every PUBLISH_S, everything every FULL_S and to a
node that comes up. What changed comes from one compiled pass over the counters
(shm.profiles.prof_local_delta, against the counts last sent, kept here), so a tick
costs Python work only for the values that changed (bench/profile_delta.py, 10k
values, 10 changing per tick: 12.7 ms per tick with the Python walk over every value
it replaces, 0.16 ms now). A receiver keeps each node's counts, by scope, and takes a tag's
counts only from the node holding the tag (so after a takeover nothing is counted
twice: the old holder's counts of that tag are ignored the moment the new activation
is known), a node's untagged counts while it keeps sending them, and forgets a node's
counts [dialog] profile_expiry_s after its last message (it went away). The sum of the
other nodes' counts goes to the "*" scope of shm.profiles, where the workers' limits
read it. A stream that lost a message waits for the next full set. Neighbours:
services.cluster.api, shm.profiles, services.sip.dialogs (admission, limits).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastcluster.core.messages import Msg, ProfCounts
from fastcluster.services.cluster.api import Capability, ClusterAPI, Delivery, Mode
from fastcluster.shm.profiles import REMOTE_SCOPE, ProfileCounters, prof_local_delta

log = logging.getLogger("profiles")

CAPABILITY = "dialog-prof-repl"
WIRE_ID = 16  # its capability's id (it has no realtime rows: never a table kind)
PUBLISH_S = 0.1
FULL_S = 2.0

Counts = dict[str, dict[str, int]]  # scope -> profile -> dialogs


@dataclass
class NodeCounts:
    counts: Counts = field(default_factory=dict)
    seq: int = 0
    last: float = 0.0  # monotonic time of its last message
    stale: bool = False  # a message was lost: wait for the next full set


class _NoRows:
    async def next_chunk(self, out: np.ndarray, max_bytes: int, counts: np.ndarray
                         ) -> tuple[int, int] | None:
        return None  # counts are not synced: every node sends its own


class LocalCounts:
    """This node's counts (local + recent) by scope and profile, kept up to date from
    the counters' changes (prof_local_delta) rather than rebuilt by a walk."""

    def __init__(self, profiles: ProfileCounters) -> None:
        self.profiles = profiles
        n = profiles.nslots
        self.sent_keys = np.zeros(n, dtype=np.int64)
        self.sent_vals = np.zeros(n, dtype=np.int64)
        self.out = np.zeros((n, 4), dtype=np.int64)
        self.keys = profiles.keys.view(np.int64)
        self.names: dict[int, tuple[int, str, str]] = {}  # slot -> (key, scope, profile)
        self.counts: Counts = {}  # scope -> profile -> dialogs (every scope but "*")

    def update(self) -> dict[tuple[str, str], int]:
        """Take what changed since the last call: (scope, profile) -> count now."""
        m = int(prof_local_delta(self.profiles.buf, self.sent_keys, self.sent_vals, False,
                                 self.out))
        gone: dict[tuple[str, str], int] = {}
        now: dict[tuple[str, str], int] = {}
        for s, key, value, old_key in self.out[:m].tolist():
            if old_key != key and old_key != 0:
                old = self.names.pop(s, None)
                if old is not None:
                    gone[(old[1], old[2])] = 0  # reclaimed: that name has no count now
            if key == 0:
                continue
            name = self.names.get(s)
            if name is None or name[0] != key:
                scope, profile = self.profiles.name_at(s)
                if int(self.keys[s]) != key:  # reclaimed while read: next time
                    self.sent_keys[s] = -1
                    continue
                name = self.names[s] = (key, scope.decode("utf-8", "replace"),
                                        profile.decode("utf-8", "replace"))
            if name[1] != "*":
                now[(name[1], name[2])] = value
        changed = {**gone, **now}  # a name that moved to another slot keeps its count
        for (scope, profile), value in changed.items():
            mine = self.counts.setdefault(scope, {})
            if value:
                mine[profile] = value
            else:
                mine.pop(profile, None)
        return changed


class ProfileReplication:
    def __init__(self, host: Any, api: ClusterAPI) -> None:
        self.host = host
        self.api = api
        cfg = host.cfg
        self.cluster = cfg.replication_cluster("dialog.replication_cluster")
        self.profiles = host.mem.profiles
        self.tags = host.mem.shtags
        self.nodes: dict[int, NodeCounts] = {}
        self.mine = LocalCounts(self.profiles)
        self.sent_scopes: frozenset[bytes] = frozenset()
        self.seq = 0
        self.remote: dict[bytes, int] = {}
        self.apply_config(cfg)
        if not self.cluster:
            return
        api.register_capability(Capability(CAPABILITY, WIRE_ID, self.cluster,
                                           lambda position: _NoRows(), self._no_chunk,
                                           self._no_batch))
        api.handle(Msg.PROF_COUNTS, self.handle, Mode.INLINE)
        api.on_node_event(self.on_node_event)
        api.on_forget(self.forget)

    def apply_config(self, cfg: Any) -> None:
        self.expiry_s = cfg["dialog.profile_expiry_s"]

    @staticmethod
    async def _no_chunk(data: bytes, counts: np.ndarray) -> bool:
        return True

    @staticmethod
    async def _no_batch(d: Delivery) -> bool:
        return True

    # ---------------------------------------------------------------- sending

    def _active(self) -> frozenset[bytes]:
        return frozenset({name.encode() for name in self.tags.active(self.cluster)} | {b""})

    def local_counts(self, active: frozenset[bytes] | None = None) -> Counts:
        """This node's counts by scope: the tags active here and "" (untagged), as of
        the last publication (at most PUBLISH_S old)."""
        scopes = {s.decode() for s in (active if active is not None else self._active())}
        return {scope: dict(c) for scope, c in self.mine.counts.items()
                if scope in scopes and c}

    def publish(self, full: bool) -> None:
        if not self.api.capability_enabled(CAPABILITY):
            return
        changed = self.mine.update()
        active = self._active()
        if active != self.sent_scopes:
            full = True  # a tag moved: the others replace what they hold of us
        if full:
            payload = self.local_counts(active)
        else:
            payload = {}
            for (scope, profile), n in changed.items():
                if scope.encode() in active:
                    payload.setdefault(scope, {})[profile] = n
            if not payload:
                return
        self.sent_scopes = active
        self.seq += 1
        msg = ProfCounts(self.cluster, self.seq, full, payload)
        for node in self.api.peers_with(CAPABILITY):
            self.api.send(self.cluster, node, Msg.PROF_COUNTS, msg)

    def on_node_event(self, cluster: int, node: int, up: bool) -> None:
        if cluster == self.cluster and up:
            self.seq += 1  # it gets everything, numbered in our stream
            self.mine.update()
            self.sent_scopes = self._active()
            counts = self.local_counts(self.sent_scopes)
            for peer in self.api.peers_with(CAPABILITY):
                self.api.send(self.cluster, peer, Msg.PROF_COUNTS,
                              ProfCounts(self.cluster, self.seq, True, counts))

    # ---------------------------------------------------------------- receiving

    def handle(self, d: Delivery) -> None:
        p: ProfCounts = d.payload
        if p.cluster != self.cluster or not self.api.capability_enabled(CAPABILITY):
            return
        st = self.nodes.setdefault(d.source, NodeCounts())
        if p.full:
            st.counts = {s: dict(v) for s, v in p.counts.items()}
            st.stale = False
        elif p.seq == st.seq + 1 and not st.stale:
            for scope, delta in p.counts.items():
                mine = st.counts.setdefault(scope, {})
                for profile, n in delta.items():
                    if n:
                        mine[profile] = n
                    else:
                        mine.pop(profile, None)
        else:
            st.stale = True  # a message went missing: the next full set repairs it
        st.seq = p.seq
        st.last = time.monotonic()
        self.recompute()

    def forget(self, node: int) -> None:
        if self.nodes.pop(node, None) is not None:
            self.recompute()

    def totals(self) -> dict[bytes, int]:
        """profile -> dialogs counted by the other nodes (what each is responsible for)."""
        holders = self.api.shtag_holders(self.cluster)
        now = time.monotonic()
        out: dict[bytes, int] = {}
        for node, st in self.nodes.items():
            if now - st.last > self.expiry_s:
                continue
            for scope, counts in st.counts.items():
                if scope and holders.get(scope) != node:
                    continue  # a tag counts where it is active
                for profile, n in counts.items():
                    key = profile.encode()
                    out[key] = out.get(key, 0) + n
        return out

    def recompute(self) -> None:
        remote = self.totals()
        if remote != self.remote:
            refused = self.profiles.set_remote(remote)
            if refused:
                self.host.count("dialog:profile_values_refused", refused)
            self.remote = remote

    def cluster_counts(self) -> dict[str, int]:
        """profile -> dialogs in the whole cluster (this node's and the others'), for
        profile_get_size."""
        out: dict[str, int] = {}
        for scope, counts in self.local_counts().items():
            for profile, n in counts.items():
                out[profile] = out.get(profile, 0) + n
        for profile, n in self.remote.items():
            out[profile.decode()] = out.get(profile.decode(), 0) + n
        return out

    async def run(self) -> None:
        if not self.cluster:
            return
        last_full = 0.0
        while True:
            await asyncio.sleep(PUBLISH_S)
            try:
                now = time.monotonic()
                full = now - last_full >= FULL_S
                if full:
                    last_full = now
                self.publish(full)
                self.recompute()  # expiries, and tags that moved
            except Exception:
                log.exception("profile replication failed")


__all__ = ["CAPABILITY", "ProfileReplication", "REMOTE_SCOPE"]
