"""Replication of the shared tables: realtime batches and the data side of full sync, one
`TableReplica` per replicated table of shm.tables.TABLES, bound to the cluster through
the narrow API only.

Every REPL_INTERVAL the cluster process drains a table's rings (one kernel call) and
hands each batch of raw entries to the API, which sends it to every reachable node of
the capability's cluster that has it enabled. Receivers apply rows by (version, origin)
without re-queuing them, so order and duplicates do not matter and a full sync can run
at the same time. Nothing is lost silently:
- a full ring records a gap; the rows of this node from that version on are re-sent
  from the table to everyone;
- a peer whose link is backed up past MAX_BACKLOG is skipped and caught up from the
  table once it drains;
- a peer that was down gets this node's rows changed since it went down when it comes
  back (partitions heal without a full sync).
Neighbours: shm.ring (rings), shm.table (apply, gather, since-scan), services.cluster.api.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import numpy as np

from fastcluster.core.config import Config
from fastcluster.services.cluster.api import Capability, ClusterAPI
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.node import NodeMemory
from fastcluster.shm.tables import TABLE_INDEX, TABLES, TableSpec

log = logging.getLogger("replication")

BATCH_BYTES = 256 * 1024
MAX_BACKLOG = 32 << 20  # bytes queued to one peer before it is treated as lagging
CATCH_UP_MARGIN_MS = 5000  # rows changed this long before a peer was seen down are re-sent
NO_RING = R.no_ring()


class Host(Protocol):
    """What replication needs from the process it runs in (the cluster process)."""
    cfg: Config
    mem: NodeMemory
    me: int  # lock word
    slot: int

    def count(self, name: str, n: int = 1) -> None: ...


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


class TableReplica:
    def __init__(self, host: Host, api: ClusterAPI, spec: TableSpec, cluster: int) -> None:
        self.host = host
        self.api = api
        self.spec = spec
        self.name = spec.capability
        self.cluster = cluster
        self.table = host.mem.tables[spec.name]
        self.index = TABLE_INDEX[spec.name]
        self.tomb_ttl_s = spec.setting(host.cfg, "tombstone_ttl_s")
        self.out = np.zeros(BATCH_BYTES, dtype=np.uint8)
        self.rx = np.zeros(1 << 20, dtype=np.uint8)
        self.counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
        self.down_since: dict[int, int] = {}
        self.lagging: dict[int, int] = {}
        api.register_capability(Capability(self.name, spec.kind, cluster, self.source,
                                           self.apply_chunk, self.apply_batch))

    # ---------------------------------------------------------------- applying

    def source(self, position: int) -> TableSource:
        return TableSource(self.table, position)

    def _buffer(self, data: bytes) -> np.ndarray:
        if len(data) > self.rx.shape[0]:
            self.rx = np.zeros(1 << max(20, len(data).bit_length()), dtype=np.uint8)
        self.rx[:len(data)] = np.frombuffer(data, dtype=np.uint8)
        return self.rx

    async def apply(self, data: bytes, counts: np.ndarray, in_thread: bool) -> bool:
        """Apply every entry (yielding while a lock is busy). False: corrupt data."""
        buf = self._buffer(data) if not in_thread else \
            np.frombuffer(data, dtype=np.uint8).copy()
        loop = asyncio.get_running_loop()
        off = 0
        host = self.host
        while off < len(data):
            args = (self.table.buf, buf[off:len(data)], len(data) - off, int(time.time()),
                    self.tomb_ttl_s, host.me, host.slot, NO_RING, counts)
            if in_thread:
                done = await loop.run_in_executor(None, lambda: T.apply_entries(*args))
            else:
                done = T.apply_entries(*args)
            off += int(done)
            if counts[T.AC_CORRUPT]:
                return False
            if off < len(data):
                await asyncio.sleep(0.001)  # a lock was busy: let its holder finish
        return True

    async def apply_chunk(self, data: bytes, counts: np.ndarray) -> bool:
        return await self.apply(data, counts, in_thread=True)

    async def apply_batch(self, data: bytes, source: int) -> bool:
        before = self.counts.copy()
        ok = await self.apply(data, self.counts, in_thread=False)
        d = self.counts - before
        host = self.host
        host.count("clusterer:repl_rows_applied", int(d[T.AC_APPLIED]))
        host.count("clusterer:repl_rows_stale", int(d[T.AC_STALE]))
        host.count("clusterer:repl_rows_refused", int(d[T.AC_TOO_LONG] + d[T.AC_FULL]))
        self.counts[T.AC_CORRUPT] = 0
        return ok

    # ---------------------------------------------------------------- sending

    def drain(self) -> None:
        """Send what this node's processes changed since the last drain."""
        off = 0
        while True:
            off, more = R.rings_drain(self.host.mem.rings, self.index, self.out, off)
            off = int(off)
            if not more:
                break
            if off > BATCH_BYTES // 2:  # the output is full: send it and go on
                self._send(off)
                off = 0
        if off:
            self._send(off)

    def _send(self, nbytes: int) -> None:
        data = self.out[:nbytes].tobytes()
        rows = _count_entries(data)
        to = []
        for node in self.api.peers_with(self.name):
            if node in self.lagging:
                continue
            backlog = self.api.backlog(self.cluster, node)
            if backlog is not None and backlog > MAX_BACKLOG:
                self.lagging[node] = _version_ms(time.time() * 1000 - CATCH_UP_MARGIN_MS)
                log.warning("node %d is not reading fast enough: catching it up from the "
                            "table later", node)
                continue
            to.append(node)
        sent = self.api.replicate(self.name, data, to)
        self.host.count("clusterer:repl_rows_sent", rows * len(sent))

    def repair_gaps(self) -> None:
        gap = int(R.rings_take_gaps(self.host.mem.rings, self.index))
        if gap:
            self.host.count("clusterer:repl_gaps")
            log.warning("replication ring was full: re-sending this node's changes from the "
                        "table")
            for node in self.api.peers_with(self.name):
                self.catch_up(node, gap)

    def retry_lagging(self) -> None:
        for node, since in list(self.lagging.items()):
            backlog = self.api.backlog(self.cluster, node)
            if backlog is None:
                del self.lagging[node]  # down: it catches up when it comes back
                self.down_since.setdefault(node, since)
            elif backlog < MAX_BACKLOG // 4:
                del self.lagging[node]
                self.catch_up(node, since)

    def catch_up(self, node: int, since_version: int) -> None:
        self.api.spawn(self._send_since(node, since_version))

    async def _send_since(self, node: int, since_version: int) -> None:
        """Re-send this node's rows of the table changed since a version, to one node."""
        out = np.zeros(BATCH_BYTES, dtype=np.uint8)
        loop = asyncio.get_running_loop()
        start, sent = 0, 0
        origin = self.host.cfg["clusterer.node_id"]
        while start < self.table.nslots:
            start, nbytes = await loop.run_in_executor(None, lambda: T.table_since(
                self.table.buf, start, since_version, origin, out, BATCH_BYTES))
            start, nbytes = int(start), int(nbytes)
            if nbytes:
                data = out[:nbytes].tobytes()
                if not self.api.replicate(self.name, data, [node]):
                    return
                sent += _count_entries(data)
                await self.api.drain(self.cluster, node)
        self.host.count("clusterer:repl_rows_sent", sent)
        log.info("caught node %d up on %s: %d rows changed here since it was away", node,
                 self.name, sent)

    def on_node_event(self, cluster: int, node: int, up: bool) -> None:
        if cluster != self.cluster:
            return
        if not up:
            self.down_since.setdefault(
                node, _version_ms(time.time() * 1000 - CATCH_UP_MARGIN_MS))
        elif node in self.down_since:
            self.catch_up(node, self.down_since.pop(node))


class Replication:
    """Every replicated table of this node, and the loop that drains their rings."""

    def __init__(self, host: Host, api: ClusterAPI) -> None:
        self.interval_s = host.cfg["clusterer.repl_interval_ms"] / 1000
        self.tables: list[TableReplica] = []
        for spec in TABLES:
            cluster = host.cfg.replication_cluster(f"{spec.section}.replication_cluster")
            if cluster:
                self.tables.append(TableReplica(host, api, spec, cluster))
        api.on_node_event(self.on_node_event)

    def on_node_event(self, cluster: int, node: int, up: bool) -> None:
        for replica in self.tables:
            replica.on_node_event(cluster, node, up)

    def drain(self) -> None:
        for replica in self.tables:
            replica.drain()

    async def run(self) -> None:
        while True:
            for replica in self.tables:
                try:
                    replica.drain()
                    replica.repair_gaps()
                    replica.retry_lagging()
                except Exception:
                    log.exception("replication of %s failed", replica.name)
            await asyncio.sleep(self.interval_s)


def _version_ms(ms: float) -> int:
    return int(T.hlc_version(max(0, int(ms))))


def _count_entries(data: bytes) -> int:
    n = off = 0
    while off + 8 <= len(data):
        length = int.from_bytes(data[off:off + 4], "little")
        if length < 8:
            break
        n += 1
        off += length
    return n
