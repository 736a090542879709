"""Realtime replication: every change any process makes reaches every node that has the
capability, in batches, idempotently.

Every REPL_INTERVAL the cluster process drains all processes' rings (one kernel call),
split by table, and sends each capability's rows as raw entries (REPL) to every
reachable node of its cluster that has the capability enabled. Receivers apply rows by
(version, origin) without re-queuing them, so order and duplicates do not matter and a
full sync can run at the same time. Nothing is lost silently:
- a full ring records a gap; the rows of this node from that version on are re-sent
  from the table to everyone;
- a peer whose connection is backed up past MAX_BACKLOG is skipped and caught up from
  the table once it drains;
- a peer that was down gets this node's rows changed since it went down when it comes
  back (partitions heal without a full sync).
Neighbours: shm.ring (rings), shm.table (apply, since-scan), services.capabilities,
services.clusterer (send, node events), services.sync (same apply path).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from fastcluster.core.stats import INDEX
from fastcluster.core.wire import Frame, Msg
from fastcluster.services.cluster.capabilities import CAPS_BY_KIND, CAPS_BY_NAME, Capabilities
from fastcluster.services.cluster.api import SendResult
from fastcluster.shm import ring as R
from fastcluster.shm import table as T

log = logging.getLogger("replication")

BATCH_BYTES = 256 * 1024
MAX_BACKLOG = 32 << 20  # bytes queued to one peer before it is treated as lagging
CATCH_UP_MARGIN_MS = 5000  # rows changed this long before a peer was seen down are re-sent
NO_RING = R.no_ring()


class Applier:
    """Applies raw entries (REPL frames, sync chunks) to this node's tables."""

    def __init__(self, proc: Any, caps: Capabilities) -> None:
        self.mem = proc.mem
        self.me = proc.me
        self.slot = proc.slot
        self.caps = caps
        self.ttl = {1: proc.cfg["usrloc.tombstone_ttl_s"], 2: proc.cfg["dialog.tombstone_ttl_s"]}
        self.rx = np.zeros(1 << 20, dtype=np.uint8)

    def _buffer(self, data: bytes) -> np.ndarray:
        if len(data) > self.rx.shape[0]:
            self.rx = np.zeros(1 << max(20, len(data).bit_length()), dtype=np.uint8)
        self.rx[:len(data)] = np.frombuffer(data, dtype=np.uint8)
        return self.rx

    def apply_now(self, data: bytes, counts: np.ndarray) -> int:
        """Apply in this thread; returns the offset reached (see apply_entries)."""
        buf = self._buffer(data)
        kind = int.from_bytes(data[4:6], "little") if len(data) >= 8 else 1
        return int(T.apply_entries(self.mem.contacts.buf, self.mem.dialogs.buf, buf,
                                   len(data), int(time.time()), self.ttl.get(kind, 60),
                                   self.me, self.slot, NO_RING, self.caps.kind_mask(), counts))

    async def apply(self, data: bytes, counts: np.ndarray, in_thread: bool) -> bool:
        """Apply every entry (yielding while a lock is busy). False: corrupt data."""
        buf = self._buffer(data)
        kind = int.from_bytes(data[4:6], "little") if len(data) >= 8 else 1
        loop = asyncio.get_running_loop()
        off = 0
        while off < len(data):
            args = (self.mem.contacts.buf, self.mem.dialogs.buf, buf[off:len(data)],
                    len(data) - off, int(time.time()), self.ttl.get(kind, 60), self.me,
                    self.slot, NO_RING, self.caps.kind_mask(), counts)
            if in_thread:
                done = await loop.run_in_executor(None, lambda: T.apply_entries(*args))
            else:
                done = T.apply_entries(*args)
            off += int(done)
            if counts[7]:
                return False
            if off < len(data):
                await asyncio.sleep(0.001)  # a lock was busy: let its holder finish
        return True


class Replication:
    def __init__(self, proc: Any, clusterer: Any, caps: Capabilities, applier: Applier) -> None:
        self.proc = proc
        self.cl = clusterer
        self.caps = caps
        self.applier = applier
        self.stats = proc.stats
        self.interval_s = proc.cfg["clusterer.repl_interval_ms"] / 1000
        self.out = {1: np.zeros(BATCH_BYTES, dtype=np.uint8),
                    2: np.zeros(BATCH_BYTES, dtype=np.uint8)}
        self.down_since: dict[tuple[str, int], int] = {}
        self.lagging: dict[tuple[str, int], int] = {}
        self.counts = np.zeros(9, dtype=np.int64)
        clusterer.handlers[Msg.REPL] = self.handle_repl
        clusterer.subscribers.append(self.on_node_event)

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[INDEX[name]] += n

    # ---------------------------------------------------------------- sending

    async def run(self) -> None:
        while True:
            try:
                self.drain()
                gap = int(R.rings_take_gaps(self.proc.mem.rings))
                if gap:
                    self._count("clusterer:repl_gaps")
                    log.warning("replication ring was full: re-sending this node's changes "
                                "from the table")
                    for spec in self.caps.active:
                        for node in self.caps.peers_with(spec.name):
                            self._catch_up(spec.name, node, gap)
                self._retry_lagging()
            except Exception:
                log.exception("replication drain failed")
            await asyncio.sleep(self.interval_s)

    def drain(self) -> None:
        offs = {1: 0, 2: 0}
        while True:
            a, b, more = R.rings_drain(self.proc.mem.rings, self.out[1], offs[1], self.out[2],
                                       offs[2])
            offs[1], offs[2] = int(a), int(b)
            if not more:
                break
            for kind in (1, 2):  # an output is full: send it and go on
                if offs[kind] > BATCH_BYTES // 2:
                    self._send(kind, offs[kind])
                    offs[kind] = 0
        for kind in (1, 2):
            if offs[kind]:
                self._send(kind, offs[kind])

    def _send(self, kind: int, nbytes: int) -> None:
        spec = CAPS_BY_KIND.get(kind)
        if spec is None or spec.name not in self.caps.local or \
                not self.caps.enabled_here(spec.name):
            return  # not replicated here, or disabled: this node sends nothing
        data = self.out[kind][:nbytes].tobytes()
        cluster = self.caps.cluster_of(spec.name)
        rows = _count_entries(data)
        for node in self.caps.peers_with(spec.name):
            key = (spec.name, node)
            if key in self.lagging:
                continue
            conn = self.cl.conn_to(cluster, node)
            if conn is not None and conn.buffered() > MAX_BACKLOG:
                self.lagging[key] = _version_ms(time.time() * 1000 - CATCH_UP_MARGIN_MS)
                log.warning("node %d is not reading fast enough: catching it up from the "
                            "table later", node)
                continue
            if self.cl.send(cluster, node, Msg.REPL, raw=data) == SendResult.SUCCESS:
                self._count("clusterer:repl_rows_sent", rows)

    def _retry_lagging(self) -> None:
        for key, since in list(self.lagging.items()):
            name, node = key
            conn = self.cl.conn_to(self.caps.cluster_of(name), node)
            if conn is None:
                del self.lagging[key]  # down: it catches up when it comes back
                self.down_since.setdefault(key, since)
            elif conn.buffered() < MAX_BACKLOG // 4:
                del self.lagging[key]
                self._catch_up(name, node, since)

    def _catch_up(self, name: str, node: int, since_version: int) -> None:
        self.cl._spawn(self._send_since(name, node, since_version))

    async def _send_since(self, name: str, node: int, since_version: int) -> None:
        """Re-send this node's rows of a table changed since a version, to one node."""
        spec = CAPS_BY_NAME[name]
        table = getattr(self.proc.mem, spec.table)
        cluster = self.caps.cluster_of(name)
        out = np.zeros(BATCH_BYTES, dtype=np.uint8)
        loop = asyncio.get_running_loop()
        start, sent = 0, 0
        while start < table.nslots:
            start, nbytes = await loop.run_in_executor(None, lambda: T.table_since(
                table.buf, start, since_version, self.cl.me, out, BATCH_BYTES))
            start, nbytes = int(start), int(nbytes)
            if nbytes:
                conn = self.cl.conn_to(cluster, node)
                if conn is None:
                    return
                if self.cl.send(cluster, node, Msg.REPL, raw=out[:nbytes].tobytes()) != \
                        SendResult.SUCCESS:
                    return
                sent += _count_entries(out[:nbytes].tobytes())
                await conn.drain()
        self._count("clusterer:repl_rows_sent", sent)
        log.info("caught node %d up on %s: %d rows changed here since it was away", node,
                 name, sent)

    # ---------------------------------------------------------------- events

    def on_node_event(self, cluster: int, node: int, up: bool) -> None:
        for spec in self.caps.active:
            if self.caps.cluster_of(spec.name) != cluster:
                continue
            key = (spec.name, node)
            if not up:
                self.down_since.setdefault(
                    key, _version_ms(time.time() * 1000 - CATCH_UP_MARGIN_MS))
            elif key in self.down_since:
                self._catch_up(spec.name, node, self.down_since.pop(key))

    # ---------------------------------------------------------------- receiving

    async def handle_repl(self, frame: Frame, conn: Any) -> None:
        before = self.counts.copy()
        ok = await self.applier.apply(frame.payload, self.counts, in_thread=False)
        d = self.counts - before
        self._count("clusterer:repl_rows_applied", int(d[0]))
        self._count("clusterer:repl_rows_stale", int(d[1]))
        self._count("clusterer:repl_rows_refused", int(d[2] + d[3]))
        if not ok:
            self.counts[7] = 0
            self._count("clusterer:corrupt_frames")
            log.warning("corrupt replication rows from node %d: dropping that connection",
                        frame.header.source)
            if conn is not None:
                conn.close()


def _version_ms(ms: float) -> int:
    return max(0, int(ms)) << 16


def _count_entries(data: bytes) -> int:
    n = off = 0
    while off + 8 <= len(data):
        length = int.from_bytes(data[off:off + 4], "little")
        if length < 8:
            break
        n += 1
        off += length
    return n
