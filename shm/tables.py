"""The replicated tables, declared once (TABLES), and their Python side: typed wrappers
that call the kernels, retry busy locks, and decode rows for the MI.

A `TableSpec` names everything a table needs; the segments (shm.node), the rings (one per
process and table), replication and full sync (services.cluster.replication), expiry
(workers.timer), crash repair (workers.master) and kernel warm-up (shm.warm) all loop
over TABLES. Adding a table is one declaration here plus its row layout and kernels.

Kernels never validate; these wrappers do, at the boundary. A busy lock (E_BUSY) is
retried after yielding the CPU: a holder that died is repaired by the master within
milliseconds of reaping it, a stuck one is killed by the master's watchdog.
Neighbours: shm.table / shm.contacts (kernels), shm.node (owns the segments),
services.usrloc, services.registrar.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastcluster.shm import contacts as C
from fastcluster.shm import table as T
from fastcluster.shm.dialogs import DIALOG
from fastcluster.shm.hashing import group_hash_of
from fastcluster.shm.rows import RowLayout

SCAN_BATCH = 1024


def retry_busy(call: Callable[[], int], on_wait: Callable[[], None] | None = None) -> int:
    """Call a kernel until it stops answering E_BUSY; yield, then sleep, between tries."""
    tries = 0
    while True:
        result = call()
        if result != T.E_BUSY:
            return result
        if on_wait is not None:
            on_wait()
        tries += 1
        if tries < 8:
            os.sched_yield()
        else:
            time.sleep(min(0.001 * (tries - 7), 0.01))


class Table:
    """A table segment seen through its row layout."""

    def __init__(self, buf: np.ndarray, layout: RowLayout) -> None:
        T.check_header(buf, layout.kind)
        self.buf = buf
        self.layout = layout
        h = buf[:T.HEADER_SIZE].view(np.int64)
        self.row_size = int(h[T.H_ROW])
        self.nslots = int(h[T.H_NSLOTS])
        self.capacity = int(h[T.H_CAPACITY])
        self.nregions = int(h[T.H_NREGIONS])

    @staticmethod
    def create(buf: np.ndarray, layout: RowLayout, capacity: int, record_bytes: int,
               nprocs: int, node_id: int) -> Table:
        T.init_table(buf, layout.kind, capacity, layout.row_size(record_bytes),
                     layout.fixed_size, layout.lens_off, len(layout.strings), nprocs, node_id,
                     *layout.order_at)
        spec = SPEC_BY_KIND.get(layout.kind)  # a replicated table, or a local one
        return spec.open(buf) if spec is not None else Table(buf, layout)

    @staticmethod
    def size_for(layout: RowLayout, capacity: int, record_bytes: int, nprocs: int) -> int:
        return T.geometry(capacity, layout.row_size(record_bytes), nprocs)["size"]

    def counters(self) -> dict[str, int]:
        return T.counters(self.buf)

    def put(self, row: np.ndarray, ring: np.ndarray, me: int, proc: int,
            now_ms: int | None = None) -> int:
        """Local write of a packed row (see table_put); returns the slot or an E_*."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return retry_busy(lambda: T.table_put(self.buf, ring, row, now, me, proc))

    def batches(self, live_only: bool = True) -> Iterator[list[dict]]:
        """Every record, decoded, in slot order, in batches that hold all the records of
        a group together (consistent per row, not a snapshot; memory stays bounded)."""
        rows = np.zeros(2 * SCAN_BATCH * self.row_size, dtype=np.uint8)
        slots = np.zeros(2 * SCAN_BATCH, dtype=np.int64)
        start = 0
        while start < self.nslots:
            start, n = T.table_scan(self.buf, start, live_only, rows, SCAN_BATCH,
                                    2 * SCAN_BATCH, slots)
            if n:
                yield self.layout.decode(rows, n, self.row_size)

    def rows(self, live_only: bool = True) -> Iterator[dict]:
        """Every record, decoded, in slot order (consistent per row, not a snapshot)."""
        for batch in self.batches(live_only):
            yield from batch

    def group(self, ident: bytes, live_only: bool = True, max_rows: int = 1024) -> list[dict]:
        """Records whose first string (AOR / Call-ID) is ident."""
        data = np.frombuffer(ident, dtype=np.uint8).copy() if ident else np.zeros(1, np.uint8)
        out = np.zeros(max_rows * self.row_size, dtype=np.uint8)
        n = T.table_group(self.buf, np.uint64(group_hash_of(ident)), data, len(ident),
                          live_only, out, max_rows)
        return self.layout.decode(out, n, self.row_size)

    def digest(self, live_only: bool = True) -> tuple[int, str]:
        n, d = T.table_digest(self.buf, live_only)
        return int(n), f"{int(d):016x}"

    def count_groups(self) -> int:
        return int(T.table_count_groups(self.buf))

    def expire(self, now_s: int, tomb_min_s: int, tomb_max_s: int, horizons: np.ndarray,
               me: int, budget_regions: int | None = None, start: int = 0
               ) -> tuple[int, list[int]]:
        """One expiry pass over `budget_regions` lock regions from `start` (all by
        default); see table_expire for when a tombstone goes. Returns (next region,
        [expired, tombs purged, slots emptied])."""
        out = np.zeros(3, dtype=np.int64)
        count = self.nregions if budget_regions is None else budget_regions
        nxt = retry_busy(lambda: T.table_expire(self.buf, start, count, now_s, tomb_min_s,
                                                tomb_max_s, horizons, me, out))
        return int(nxt), [int(v) for v in out]

    def range_digests(self) -> np.ndarray:
        return T.range_digests(self.buf)

    def repair(self, ring: np.ndarray, pid: int, proc: int, me: int) -> tuple[int, int]:
        """After process `pid` (slot proc) died: see table_repair; me: the caller's lock
        word."""
        fixed, freed = T.table_repair(self.buf, ring, pid, proc, me)
        return int(fixed), int(freed)


class ContactTable(Table):
    def __init__(self, buf: np.ndarray, layout: RowLayout = C.CONTACT) -> None:
        super().__init__(buf, layout)

    def remove(self, aor: bytes, uri: bytes, ring: np.ndarray, me: int, proc: int) -> int:
        """Turn the AOR's contacts (or the one with this URI) into tombstones."""
        a = np.frombuffer(aor, np.uint8).copy() if aor else np.zeros(1, np.uint8)
        u = np.frombuffer(uri, np.uint8).copy() if uri else np.zeros(1, np.uint8)
        row = np.zeros(self.row_size, dtype=np.uint8)
        now = int(time.time() * 1000)
        return retry_busy(lambda: C.ul_remove(self.buf, ring, a, len(aor), u, len(uri), now,
                                              me, proc, row))


@dataclass(frozen=True)
class TableSpec:
    """One replicated table. Its settings are `[section] capacity, record_bytes,
    tombstone_ttl_s, replication_cluster`; rows expire at their `expires` (LIVE) or
    tombstone_ttl_s after it (TOMB), on every node alike (expiry is not replicated)."""
    name: str  # NodeMemory attribute, shared-memory segment part, log name
    layout: RowLayout  # row layout; layout.kind is the wire table id
    section: str  # settings section
    capability: str  # replication capability (OpenSIPS's name)
    wrapper: type[Table] = Table

    @property
    def kind(self) -> int:
        return self.layout.kind

    def setting(self, cfg: Any, key: str) -> Any:
        return cfg[f"{self.section}.{key}"]

    @property
    def layout_text(self) -> str:
        """What must match for rows to be exchanged or loaded: kind, fields, strings."""
        return f"{self.name}:{self.kind}:{self.layout.dtype.descr}:{self.layout.strings}"

    def open(self, buf: np.ndarray) -> Table:
        return self.wrapper(buf, self.layout)


TABLES: tuple[TableSpec, ...] = (
    TableSpec("contacts", C.CONTACT, "usrloc", "usrloc-contact-repl", ContactTable),
    TableSpec("dialogs", DIALOG, "dialog", "dialog-dlg-repl"),
)
SPEC_BY_NAME = {spec.name: spec for spec in TABLES}
SPEC_BY_KIND = {spec.kind: spec for spec in TABLES}
TABLE_INDEX = {spec.name: i for i, spec in enumerate(TABLES)}  # ring index of a table
