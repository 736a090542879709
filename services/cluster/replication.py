"""Replication of the shared tables with acknowledged streams: one `TableReplica` per
replicated table of shm.tables.TABLES, bound to the cluster through the narrow API only.

Sending. Every repl_interval_ms the cluster process drains a table's rings (one kernel
call) and sends the batch to every reachable member that has the capability, numbered
per (table, destination). For each member the replica keeps what that member may lack:
the batches it was sent and has not acknowledged, and a floor -- the lowest version of
this node's rows it was not handed at all (unreachable, lagging, a ring gap). Their
minimum is the member's *watermark*. Whenever rows may have been lost on the way -- a
batch unacknowledged for ACK_TIMEOUT_S, a gap the receiver reports, a new route, the
member back, restarted, or drained after lagging -- the replica re-sends every row of
this node with a version at or above the watermark, scanned from the table itself
(the table is the log: a row changed since holds its newest version, a deleted one its
tombstone). The watermarks live in shared memory (shm.control), so a new cluster
process resumes where the old one stopped instead of discarding anything.

Receiving. Rows are applied by (version, origin), idempotently, in any order (a full
sync can run at the same time); two rows of one contact binding with the same Call-ID
by their CSeq first (shm.rows RowLayout.order: a client that registered on one node
and removed on another within the same ms made rows of equal versions). Every ACK_INTERVAL_S the receiver acknowledges the
batches it applied to their origin, and names at once the ones a gap in the numbers
showed were lost.

Tombstones. A member's watermark tells which of this node's tombstones it holds: the
minimum over every known member (up or down), capped at the time it is computed (less
a margin), is this node's *horizon*, published to all each HORIZON_INTERVAL_S. The
timer purges a tombstone only below its origin's horizon (and after tombstone_ttl_s),
or after clusterer.tombstone_max_s regardless.
Neighbours: shm.ring, shm.table (apply, since-scan), shm.control (watermarks,
horizons), services.cluster.api, services.cluster.ae (anti-entropy).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fastcluster.core.config import Config
from fastcluster.core.messages import ROWS_PREFIX, Msg, ReplAck, ReplHorizon
from fastcluster.services.cluster.api import Capability, ClusterAPI, Delivery, Mode, SendResult
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.control import MAX_PEERS, W_LAST_CONTACT
from fastcluster.shm.node import NodeMemory
from fastcluster.shm.tables import TABLE_INDEX, TABLES, TableSpec

log = logging.getLogger("replication")

BATCH_BYTES = 256 * 1024
MAX_BACKLOG = 32 << 20  # bytes queued towards one member before it counts as lagging
NO_FLOOR = (1 << 63) - 1
ACK_INTERVAL_S = 0.01
ACK_TIMEOUT_S = 2.0  # a batch unacknowledged for this long is re-sent (from the table)
HORIZON_INTERVAL_S = 1.0
NEWEST_MAX_AGE_S = 1.0  # TableData.newest_ms is read again after this long
NEW_MEMBER_MARGIN_MS = 3_000  # a member first seen now may lack rows of this long ago
HORIZON_MARGIN_MS = 2_000  # rows a worker wrote that this process may not have drained yet
MAX_UNACKED = 4096  # batches remembered per member (older ones merge: only the minimum
#                     version of what is unacknowledged matters)
MAX_MISSING = 64  # gap ranges reported in one acknowledgement
NO_RING = R.no_ring()


class Host(Protocol):
    """What replication needs from the process it runs in (the cluster process)."""
    cfg: Config
    mem: NodeMemory
    me: int  # lock word of the loop thread's writes
    slot: int
    aux_me: int  # lock word and process slot of the thread that applies sync chunks
    aux_slot: int
    aux_pool: Executor

    def count(self, name: str, n: int = 1) -> None: ...


@dataclass
class PeerOut:
    """What this node sent one member for one table."""
    node: int
    next_seq: int = 1
    unacked: collections.deque = field(default_factory=collections.deque)  # [seq, minv, t]
    floor: int = NO_FLOOR  # lowest version of ours it was not handed
    hold: int = NO_FLOOR  # a re-send from this version is under way
    resending: asyncio.Task | None = None
    again: bool = False  # another re-send was asked for while one ran

    def watermark(self) -> int:
        low = min(self.floor, self.hold)
        for entry in self.unacked:
            if entry[1] < low:
                low = entry[1]
        return low

    def sent(self, seq: int, min_version: int, now: float) -> None:
        if len(self.unacked) >= MAX_UNACKED:
            last = self.unacked.pop()
            min_version = min(min_version, last[1])
            now = min(now, last[2])
        self.unacked.append([seq, min_version, now])

    def acked(self, ranges: list[int]) -> int:
        """Forget the batches in [first, last] ranges; returns how many."""
        if not self.unacked:
            return 0
        pairs = list(zip(ranges[::2], ranges[1::2]))
        keep = collections.deque(e for e in self.unacked
                                 if not any(a <= e[0] <= b for a, b in pairs))
        done = len(self.unacked) - len(keep)
        self.unacked = keep
        return done


@dataclass
class PeerIn:
    """What this node received from one origin for one table."""
    epoch: int = 0
    highest: int = 0
    acked: list[int] = field(default_factory=list)  # flat [first, last, ...] to report
    missing: list[int] = field(default_factory=list)

    def received(self, epoch: int, seq: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.highest = epoch, seq - 1
            self.acked, self.missing = [], []
        if seq > self.highest + 1 and len(self.missing) < 2 * MAX_MISSING:
            self.missing += [self.highest + 1, seq - 1]
        self.highest = max(self.highest, seq)

    def applied(self, seq: int) -> None:
        if self.acked and self.acked[-1] == seq - 1:
            self.acked[-1] = seq
        else:
            self.acked += [seq, seq]


class TableSource:
    """Donor side of a full sync of one table: chunks of whole probe runs from a
    hash-space position on (gathered in a thread: the kernel releases the GIL)."""

    def __init__(self, table: Any, position: int) -> None:
        self.table = table
        self.nhome = int(table.buf[:T.HEADER_SIZE].view(np.int64)[T.H_NHOME])
        self.slot = T.slot_of_position(self.nhome, position)

    async def next_chunk(self, out: np.ndarray, max_bytes: int, counts: np.ndarray
                         ) -> tuple[int, int] | None:
        loop = asyncio.get_running_loop()
        while self.slot < self.table.nslots:
            slot, nbytes, covered = await loop.run_in_executor(
                None, lambda: T.table_gather(self.table.buf, self.slot, out, max_bytes, counts))
            self.slot = int(slot)
            if nbytes:
                return int(nbytes), T.position_of_slot(self.nhome, int(covered))
        return None


class TableData:
    """The data side of a replicated table: what a donor streams, how received rows are
    applied (realtime, anti-entropy, sync chunks), mirror sync marks."""

    def __init__(self, host: Host, spec: TableSpec) -> None:
        self.host = host
        self.spec = spec
        self.table = host.mem.tables[spec.name]
        self.counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
        self.seen = T.NO_SEEN  # slots a mirror sync has received (empty: no mirror sync)
        self._newest = (0, -NEWEST_MAX_AGE_S)  # (newest_ms, when it was read: monotonic)

    @property
    def tomb_ttl_s(self) -> int:
        return self.spec.setting(self.host.cfg, "tombstone_ttl_s")

    def source(self, position: int) -> TableSource:
        return TableSource(self.table, position)

    async def apply(self, data: bytes | memoryview, counts: np.ndarray, in_thread: bool,
                    seen: np.ndarray = T.NO_SEEN) -> bool:
        """Apply every entry (yielding while a lock is busy). False: corrupt data."""
        buf = np.frombuffer(data, dtype=np.uint8).copy()  # kernels take writable arrays
        loop = asyncio.get_running_loop()
        off, host = 0, self.host
        me, slot = (host.aux_me, host.aux_slot) if in_thread else (host.me, host.slot)
        # a row that expires within the tolerated clock skew is still taken
        now_s = int(time.time() - host.cfg["clusterer.max_clock_skew_ms"] / 1000)
        while off < len(buf):
            args = (self.table.buf, buf[off:], len(buf) - off, now_s,
                    self.tomb_ttl_s, me, slot, NO_RING, seen, counts)
            if in_thread:
                done = await loop.run_in_executor(host.aux_pool,
                                                  lambda: T.apply_entries(*args))
            else:
                done = T.apply_entries(*args)
            off += int(done)
            if counts[T.AC_CORRUPT]:
                return False
            if off < len(buf):
                await asyncio.sleep(0.001)  # a lock was busy: let its holder finish
        return True

    async def apply_chunk(self, data: bytes, counts: np.ndarray) -> bool:
        return await self.apply(data, counts, in_thread=True, seen=self.seen)

    def newest_ms(self) -> int:
        """When the newest row was written (0: none), read at most every
        NEWEST_MAX_AGE_S: it takes a scan of the whole table (~4 ms for 1M slots, on
        the core a SIP worker may be waiting for), and a node waiting for a donor asks
        for it at every sync tick. Its callers decide over seconds."""
        now = time.monotonic()
        value, at = self._newest
        if now - at >= NEWEST_MAX_AGE_S:
            value = T.version_ms(int(T.table_newest(self.table.buf)))
            self._newest = (value, now)
        return value

    def mirror_mark(self, on: bool) -> None:
        self.seen = np.zeros(self.table.nslots, dtype=np.uint8) if on else T.NO_SEEN

    async def mirror_finish(self, cutoff_version: int) -> int:
        """Drop what the donor did not send and is older than cutoff_version."""
        seen, self.seen = self.seen, T.NO_SEEN
        if not seen.shape[0]:
            return 0
        out = np.zeros(1, dtype=np.int64)
        row = np.zeros(self.table.row_size, dtype=np.uint8)
        loop = asyncio.get_running_loop()
        host = self.host
        while await loop.run_in_executor(host.aux_pool, lambda: T.table_mirror_drop(
                self.table.buf, seen, cutoff_version, int(time.time()), host.aux_me,
                host.aux_slot, R.no_ring(), row, out)) == T.E_BUSY:
            await asyncio.sleep(0.001)
        return int(out[0])

    async def apply_rows(self, data: bytes | memoryview) -> bool:
        """Rows from realtime replication or anti-entropy, counted."""
        before = self.counts.copy()
        ok = await self.apply(data, self.counts, in_thread=False, seen=self.seen)
        d = self.counts - before
        host = self.host
        host.count("clusterer:repl_rows_applied", int(d[T.AC_APPLIED]))
        host.count("clusterer:repl_rows_stale", int(d[T.AC_STALE]))
        host.count("clusterer:repl_rows_refused", int(d[T.AC_TOO_LONG] + d[T.AC_FULL]))
        self.counts[T.AC_CORRUPT] = 0
        return ok


class TableReplica:
    def __init__(self, host: Host, api: ClusterAPI, spec: TableSpec, cluster: int) -> None:
        self.host = host
        self.api = api
        self.spec = spec
        self.name = spec.capability
        self.cluster = cluster
        self.data = TableData(host, spec)
        self.table = self.data.table
        self.index = TABLE_INDEX[spec.name]
        self.node_id = host.cfg["clusterer.node_id"]
        self.epoch = int.from_bytes(os.urandom(8), "little") >> 1
        self.out = np.zeros(BATCH_BYTES, dtype=np.uint8)  # prefix, then entries
        self.entries = self.out[ROWS_PREFIX.size:]
        self.peers: dict[int, PeerOut] = {}
        self.origins: dict[int, PeerIn] = {}
        self.saved = host.mem.control.peers[self.index]
        self.horizons = host.mem.control.horizons[self.index]
        for node, watermark in self.saved.tolist():
            if node:  # a previous cluster process's members: resume from their watermark
                self.peers[node] = PeerOut(node, floor=watermark)
        data = self.data
        api.register_capability(Capability(self.name, spec.kind, cluster, data.source,
                                           data.apply_chunk, self.apply_batch,
                                           data.newest_ms, data.mirror_mark,
                                           data.mirror_finish))

    # ---------------------------------------------------------------- members

    def peer(self, node: int) -> PeerOut:
        out = self.peers.get(node)
        if out is None:
            # first seen now: it may lack what we wrote just before we knew it
            out = self.peers[node] = PeerOut(node, floor=_version_ms(
                time.time() * 1000 - NEW_MEMBER_MARGIN_MS))
        return out

    def members(self) -> list[int]:
        """Every member that holds (or will hold) the table: known, up or not."""
        return sorted((self.api.members(self.cluster) | set(self.peers)) - {self.api.me})

    def forget(self, node: int) -> None:
        out = self.peers.pop(node, None)
        if out is not None and out.resending is not None:
            out.resending.cancel()
        self.origins.pop(node, None)

    def save(self) -> None:
        """Keep every member's watermark in shared memory (a new cluster process resumes
        from them)."""
        rows = [(node, out.watermark()) for node, out in sorted(self.peers.items())]
        if len(rows) > MAX_PEERS:
            log.warning("more than %d members: watermarks of the last ones not kept",
                        MAX_PEERS)
            rows = rows[:MAX_PEERS]
        self.saved[:] = 0
        if rows:
            self.saved[:len(rows)] = rows

    def horizon(self) -> int:
        """Every member has all our rows below this version."""
        return horizon_of([self.peer(node).watermark() for node in self.members()],
                          time.time() * 1000)

    # ---------------------------------------------------------------- receiving

    async def apply_batch(self, d: Delivery) -> bool:
        epoch, _, _ = ROWS_PREFIX.unpack_from(d.payload)
        state = self.origins.get(d.source)
        if state is None:
            state = self.origins[d.source] = PeerIn()
        seq = d.header.sequence
        state.received(epoch, seq)
        ok = await self.data.apply_rows(memoryview(d.payload)[ROWS_PREFIX.size:])
        if ok and state.epoch == epoch:
            state.applied(seq)
        return ok

    def send_acks(self) -> None:
        for origin, state in self.origins.items():
            if state.acked or state.missing:
                if state.missing:
                    self.host.count("clusterer:repl_gaps_seen", len(state.missing) // 2)
                self.api.send(self.cluster, origin, Msg.REPL_ACK, ReplAck(
                    self.spec.kind, state.epoch, state.acked, state.missing[:2 * MAX_MISSING]))
                state.acked, state.missing = [], []

    def handle_ack(self, node: int, ack: ReplAck) -> None:
        out = self.peers.get(node)
        if out is None or ack.epoch != self.epoch:
            return  # acknowledges an earlier cluster process of ours: already re-sent
        out.acked(ack.acked)
        if ack.missing:
            self.resend(node, "it reported a gap")

    # ---------------------------------------------------------------- sending

    def drain(self) -> None:
        """Send what this node's processes changed since the last drain."""
        off = 0
        while True:
            off, more = R.rings_drain(self.host.mem.rings, self.index, self.entries, off)
            off = int(off)
            if not more:
                break
            if off > BATCH_BYTES // 2:  # the output is full: send it and go on
                self._send(off)
                off = 0
        if off:
            self._send(off)

    def _send(self, nbytes: int) -> None:
        rows, low = (int(v) for v in T.entries_summary(self.entries, nbytes))
        enabled = self.api.capability_enabled(self.name)
        now = time.monotonic()
        targets = set(self.api.peers_with(self.name)) if enabled else set()
        ROWS_PREFIX.pack_into(self.out, 0, self.epoch, self.spec.kind, 0)
        data = self.out[:ROWS_PREFIX.size + nbytes].tobytes()
        for node in self.members():
            out = self.peer(node)
            backlog = self.api.backlog(self.cluster, node) if node in targets else None
            if backlog is None or backlog > MAX_BACKLOG:
                if backlog is not None and out.floor == NO_FLOOR:
                    log.warning("node %d is not reading fast enough: catching it up from "
                                "the table later", node)
                out.floor = min(out.floor, low)  # handed later, from the table
                continue
            if self._send_to(out, data, low, now):
                self.host.count("clusterer:repl_rows_sent", rows)
            else:
                out.floor = min(out.floor, low)

    def _send_to(self, out: PeerOut, data: bytes, low: int, now: float) -> bool:
        seq = out.next_seq
        if self.api.send(self.cluster, out.node, Msg.REPL, raw=data, seq=seq) != \
                SendResult.SUCCESS:
            return False
        out.next_seq += 1
        out.sent(seq, low, now)
        return True

    def repair_gaps(self) -> None:
        gap = int(R.rings_take_gaps(self.host.mem.rings, self.index))
        if gap:
            self.host.count("clusterer:repl_gaps")
            log.warning("replication ring was full: re-sending this node's changes from the "
                        "table")
            for node in self.members():
                out = self.peer(node)
                out.floor = min(out.floor, gap)

    def check(self) -> None:
        """Re-send to every member that may lack rows and can be reached now."""
        now = time.monotonic()
        reachable = set(self.api.peers_with(self.name))
        for node, out in list(self.peers.items()):
            if node not in reachable or out.resending is not None:
                continue
            backlog = self.api.backlog(self.cluster, node)
            if backlog is None or backlog > MAX_BACKLOG // 4:
                continue
            if out.unacked and now - out.unacked[0][2] > ACK_TIMEOUT_S:
                self.host.count("clusterer:repl_resends")
                self.resend(node, "batches unacknowledged for %.0f s" % ACK_TIMEOUT_S)
            elif out.floor != NO_FLOOR or out.hold != NO_FLOOR:
                self.resend(node, "it missed changes")

    def resend(self, node: int, why: str) -> None:
        """Re-send to `node` every row of ours at or above its watermark."""
        out = self.peer(node)
        if out.resending is not None:
            out.again = True
            return
        out.resending = self.api.spawn(self._resend(out, why))

    async def _resend(self, out: PeerOut, why: str) -> None:
        since = out.watermark()
        out.hold, out.floor = since, NO_FLOOR
        out.unacked.clear()
        buf = np.zeros(BATCH_BYTES, dtype=np.uint8)
        loop = asyncio.get_running_loop()
        start, sent = 0, 0
        done = False
        try:
            while start < self.table.nslots:
                start, nbytes = await loop.run_in_executor(None, lambda: T.table_since(
                    self.table.buf, start, since, self.node_id, buf[ROWS_PREFIX.size:],
                    BATCH_BYTES - ROWS_PREFIX.size))
                start, nbytes = int(start), int(nbytes)
                if not nbytes:
                    continue
                rows, low = T.entries_summary(buf[ROWS_PREFIX.size:], nbytes)
                ROWS_PREFIX.pack_into(buf, 0, self.epoch, self.spec.kind, 0)
                if not self._send_to(out, buf[:ROWS_PREFIX.size + nbytes].tobytes(),
                                     int(low), time.monotonic()):
                    return  # no route any more: the hold stays, the next check retries
                sent += int(rows)
                await self.api.drain(self.cluster, out.node)
            done = True
        finally:
            if done:
                out.hold = NO_FLOOR
            out.resending = None
            if done:
                self.host.count("clusterer:repl_rows_sent", sent)
                if sent:
                    log.info("%s: re-sent node %d the %d rows changed here since it may "
                             "have missed them (%s)", self.name, out.node, sent, why)
            if out.again:
                out.again = False
                self.resend(out.node, why)

    # ---------------------------------------------------------------- events

    def on_node_event(self, node: int, up: bool) -> None:
        if up and node in self.peers:
            self.resend(node, "it is reachable again")

    def on_route_change(self, node: int) -> None:
        out = self.peers.get(node)
        if out is not None and (out.unacked or out.floor != NO_FLOOR):
            self.resend(node, "its route changed")  # rows may sit in a dead connection

    def on_node_restart(self, node: int) -> None:
        out = self.peer(node)
        out.floor = min(out.watermark(), _version_ms(
            time.time() * 1000 - NEW_MEMBER_MARGIN_MS))
        out.unacked.clear()
        self.origins.pop(node, None)

    def publish_horizon(self) -> None:
        if not self.api.capability_synced(self.name):
            return  # until synced, this node may not know every member yet
        horizon = self.horizon()
        self.horizons[self.node_id] = horizon
        self.api.broadcast(self.cluster, Msg.REPL_HORIZON,
                           ReplHorizon(self.spec.kind, horizon))

    def handle_horizon(self, node: int, horizon: int) -> None:
        if self.api.knows(node):
            self.horizons[node] = horizon


class Replication:
    """Every replicated table of this node, the loop that drains their rings, and the
    acknowledgements and horizons they exchange."""

    def __init__(self, host: Host, api: ClusterAPI) -> None:
        self.host = host
        self.api = api
        self.interval_s = host.cfg["clusterer.repl_interval_ms"] / 1000
        self.tables: dict[int, TableReplica] = {}
        for spec in TABLES:
            cluster = host.cfg.replication_cluster(f"{spec.section}.replication_cluster")
            if cluster:
                self.tables[spec.kind] = TableReplica(host, api, spec, cluster)
        api.on_node_event(self.on_node_event)
        api.on_route_change(self.on_route_change)
        api.on_node_restart(self.on_node_restart)
        api.on_forget(self.on_forget)
        api.handle(Msg.REPL_ACK, self.handle_ack, Mode.INLINE)
        api.handle(Msg.REPL_HORIZON, self.handle_horizon, Mode.INLINE)

    def replica(self, kind: int) -> TableReplica | None:
        return self.tables.get(kind)

    def on_node_event(self, cluster: int, node: int, up: bool) -> None:
        for replica in self.tables.values():
            if replica.cluster == cluster:
                replica.on_node_event(node, up)

    def on_route_change(self, cluster: int, node: int) -> None:
        for replica in self.tables.values():
            if replica.cluster == cluster:
                replica.on_route_change(node)

    def on_node_restart(self, node: int) -> None:
        for replica in self.tables.values():
            replica.on_node_restart(node)

    def on_forget(self, node: int) -> None:
        for replica in self.tables.values():
            replica.forget(node)

    def handle_ack(self, d: Delivery) -> None:
        replica = self.tables.get(d.payload.kind)
        if replica is not None:
            replica.handle_ack(d.source, d.payload)

    def handle_horizon(self, d: Delivery) -> None:
        replica = self.tables.get(d.payload.kind)
        if replica is not None:
            replica.handle_horizon(d.source, d.payload.horizon)

    def drain(self) -> None:
        for replica in self.tables.values():
            replica.drain()

    async def run(self) -> None:
        last_acks = last_slow = 0.0
        last_horizon = time.monotonic()
        while True:
            now = time.monotonic()
            for replica in self.tables.values():
                try:
                    replica.drain()
                    if now - last_acks >= ACK_INTERVAL_S:
                        replica.send_acks()
                    if now - last_slow >= 0.1:
                        replica.repair_gaps()
                        replica.check()
                        replica.save()
                    if now - last_horizon >= HORIZON_INTERVAL_S:
                        replica.publish_horizon()
                except Exception:
                    log.exception("replication of %s failed", replica.name)
            if now - last_acks >= ACK_INTERVAL_S:
                last_acks = now
            if now - last_slow >= 0.1:
                last_slow = now
            if now - last_horizon >= HORIZON_INTERVAL_S:
                last_horizon = now
                self.note_contact()
            await asyncio.sleep(self.interval_s)

    def note_contact(self) -> None:
        """Remember, in shared memory, when this node last held synced tables with the
        cluster in sight (a restart on old tables needs it)."""
        replicas = list(self.tables.values())
        if replicas and all(self.api.capability_synced(r.name) for r in replicas) and \
                all(self.api.up_nodes(r.cluster) or not r.members() for r in replicas):
            self.host.mem.control.words[W_LAST_CONTACT] = int(time.time() * 1000)

    async def flush(self, timeout_s: float) -> None:
        """At a graceful stop: send the last changes and wait (bounded) until every
        reachable member acknowledged them."""
        deadline = time.monotonic() + timeout_s
        self.drain()
        while time.monotonic() < deadline:
            for replica in self.tables.values():
                replica.send_acks()
            pending = [(r.name, node) for r in self.tables.values()
                       for node, out in r.peers.items()
                       if out.unacked and self.api.is_up(r.cluster, node)]
            if not pending:
                return
            await asyncio.sleep(0.01)
        log.warning("stopping with changes not acknowledged by %s (they get them from "
                    "the others or at the next sync)", pending)


def _version_ms(ms: float) -> int:
    return int(T.hlc_version(max(0, int(ms))))


def horizon_of(watermarks: list[int], now_ms: float) -> int:
    """The horizon of an origin whose members' watermarks these are, computed at
    wall-clock now_ms: their minimum, but never above the version of now less
    HORIZON_MARGIN_MS. A row made after the horizon is computed is no member's yet,
    however long the horizon stays published (uncapped, a horizon computed with nothing
    pending let the timer purge a tombstone made a moment later before any member had
    it; a partitioned member then brought the deleted row back)."""
    return min([_version_ms(now_ms - HORIZON_MARGIN_MS), *watermarks])
