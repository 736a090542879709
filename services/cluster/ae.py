"""Anti-entropy: nodes compare per-range digests of each replicated table in the
background and exchange only the rows of ranges that differ, so any divergence that
slipped past acknowledged replication heals within seconds, without an operator.

Each table keeps a digest per range of the group hash (shm.table: the wrapping sum of
row_checksum over its LIVE and TOMB records, updated by every write), so a round costs
sending 32 KB, not a scan. Every AE_INTERVAL_S a node whose table is synced sends its
digests (AE_DIGESTS) to the next AE_FANOUT synced members, round robin. The receiver
compares them with its own; a range is repaired when it differed in two rounds in a row
and neither side changed it in between (so rows still in flight are not repaired for
nothing), or when it kept differing for STREAK_ROUNDS rounds. Repair is both ways: the
receiver sends its rows of those ranges (AE_ROWS) and asks for the sender's (AE_PULL);
rows are applied by (version, origin) like any other. At most MAX_RANGES ranges per
round. Neighbours: services.cluster.replication (the tables, applying rows),
shm.table (digests, gather by ranges), services.cluster.api.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

import numpy as np

from fastcluster.core.messages import ROWS_PREFIX, AeDigests, AePull, Msg
from fastcluster.services.cluster.api import ClusterAPI, Delivery, Mode
from fastcluster.services.cluster.replication import Host, Replication, TableReplica
from fastcluster.shm import table as T

log = logging.getLogger("antientropy")

AE_INTERVAL_S = 0.5
AE_FANOUT = 4
STREAK_ROUNDS = 4
MAX_RANGES = 256
ROWS_BYTES = 1 << 20


@dataclass
class Seen:
    """The last comparison with one member, for one table."""
    mine: np.ndarray
    theirs: np.ndarray
    streak: np.ndarray  # rounds in a row each range differed


def ranges_to_repair(mine: np.ndarray, theirs: np.ndarray, last: Seen | None
                     ) -> tuple[np.ndarray, Seen]:
    """Ranges to repair now (indexes), and what to remember for the next round: those
    that differed last round too, unchanged on both sides since, or for STREAK_ROUNDS
    rounds whatever happened."""
    differ = mine != theirs
    if last is None:
        streak = differ.astype(np.int64)
        return np.zeros(0, dtype=np.int64), Seen(mine, theirs, streak)
    streak = np.where(differ, last.streak + 1, 0)
    stable = (mine == last.mine) & (theirs == last.theirs)
    repair = differ & (last.streak > 0) & (stable | (streak >= STREAK_ROUNDS))
    return np.flatnonzero(repair)[:MAX_RANGES], Seen(mine, theirs, streak)


class AntiEntropy:
    def __init__(self, host: Host, api: ClusterAPI, replication: Replication) -> None:
        self.host = host
        self.api = api
        self.replication = replication
        self.seen: dict[tuple[int, int], Seen] = {}
        self.turn = itertools.count()
        api.handle(Msg.AE_DIGESTS, self.handle_digests, Mode.ORDERED)
        api.handle(Msg.AE_PULL, self.handle_pull, Mode.ORDERED)
        api.handle(Msg.AE_ROWS, self.handle_rows, Mode.ORDERED)
        api.on_forget(self.forget)

    def forget(self, node: int) -> None:
        for key in [k for k in self.seen if k[1] == node]:
            del self.seen[key]

    def _partners(self, replica: TableReplica) -> list[int]:
        nodes = [n for n in self.api.synced_nodes(replica.name) if n != self.api.me]
        if len(nodes) <= AE_FANOUT:
            return nodes
        start = next(self.turn) % len(nodes)
        return [nodes[(start + i) % len(nodes)] for i in range(AE_FANOUT)]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(AE_INTERVAL_S)
            for replica in self.replication.tables.values():
                try:
                    if not self.api.capability_synced(replica.name):
                        continue
                    digests = AeDigests(replica.spec.kind,
                                        replica.table.range_digests().tobytes())
                    for node in self._partners(replica):
                        self.api.send(replica.cluster, node, Msg.AE_DIGESTS, digests)
                except Exception:
                    log.exception("anti-entropy round of %s failed", replica.name)

    async def handle_digests(self, d: Delivery) -> None:
        replica = self.replication.replica(d.payload.kind)
        if replica is None or not self.api.capability_synced(replica.name) or \
                len(d.payload.digests) != 8 * T.NRANGES:
            return
        theirs = np.frombuffer(d.payload.digests, dtype="<i8").copy()
        mine = replica.table.range_digests().copy()
        key = (replica.spec.kind, d.source)
        repair, self.seen[key] = ranges_to_repair(mine, theirs, self.seen.get(key))
        if not repair.shape[0]:
            return
        self.host.count("clusterer:ae_ranges_repaired", int(repair.shape[0]))
        log.info("%s: %d ranges differ from node %d: exchanging their rows", replica.name,
                 int(repair.shape[0]), d.source)
        wanted = np.zeros(T.NRANGES, dtype=np.uint8)
        wanted[repair] = 1
        self.api.send(replica.cluster, d.source, Msg.AE_PULL,
                      AePull(replica.spec.kind, np.packbits(wanted).tobytes()))
        await self._send_rows(replica, d.source, wanted)

    async def handle_pull(self, d: Delivery) -> None:
        replica = self.replication.replica(d.payload.kind)
        if replica is None or len(d.payload.ranges) != T.NRANGES // 8:
            return
        wanted = np.unpackbits(np.frombuffer(d.payload.ranges, dtype=np.uint8))
        await self._send_rows(replica, d.source, wanted.astype(np.uint8))

    async def _send_rows(self, replica: TableReplica, node: int, wanted: np.ndarray) -> None:
        out = np.zeros(ROWS_BYTES, dtype=np.uint8)
        counts = np.zeros(T.GATHER_COUNTS, dtype=np.int64)
        loop = asyncio.get_running_loop()
        first = 0
        while first < T.NRANGES:
            first, nbytes = await loop.run_in_executor(None, lambda: T.table_gather_ranges(
                replica.table.buf, wanted, first, out[ROWS_PREFIX.size:],
                ROWS_BYTES - ROWS_PREFIX.size, counts))
            first, nbytes = int(first), int(nbytes)
            if nbytes:
                ROWS_PREFIX.pack_into(out, 0, 0, replica.spec.kind, 0)
                self.api.send(replica.cluster, node, Msg.AE_ROWS,
                              raw=out[:ROWS_PREFIX.size + nbytes].tobytes())
                await self.api.drain(replica.cluster, node)

    async def handle_rows(self, d: Delivery) -> None:
        if len(d.payload) < ROWS_PREFIX.size:
            return
        _, kind, _ = ROWS_PREFIX.unpack_from(d.payload)
        replica = self.replication.replica(kind)
        if replica is None or not self.api.capability_enabled(replica.name):
            return
        before = int(replica.data.counts[T.AC_APPLIED])
        await replica.data.apply_rows(memoryview(d.payload)[ROWS_PREFIX.size:])
        self.host.count("clusterer:ae_rows_applied",
                        int(replica.data.counts[T.AC_APPLIED]) - before)
