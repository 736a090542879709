"""All shared memory of one node instance: the segments, who creates and who removes them.

The master creates every segment before forking (names `/fastcluster.<instance>.<part>`),
children inherit the mappings, and only the master unlinks, at exit. Creation is
all-or-nothing: a failure removes the segments already made. Tools and tests can
`attach` to a running instance read-only in spirit (they never unlink).
Neighbours: shm.segment (one segment), shm.control / shm.tables / shm.ring (layouts),
workers.master (owner).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fastcluster.core.config import Config
from fastcluster.shm import control as CT
from fastcluster.shm import ring as R
from fastcluster.shm.segment import Segment
from fastcluster.shm.tables import TABLE_INDEX, TABLES, ContactTable, Table

PARTS = ("control",) + tuple(spec.name for spec in TABLES) + ("rings",)


def part_sizes(cfg: Config) -> dict[str, int]:
    nprocs = CT.nprocs_for(cfg["core.workers"])
    sizes = {"control": CT.segment_size(nprocs, len(TABLES))}
    for spec in TABLES:
        sizes[spec.name] = Table.size_for(spec.layout, spec.setting(cfg, "capacity"),
                                          spec.setting(cfg, "record_bytes"), nprocs)
    sizes["rings"] = R.segment_size(nprocs, cfg["clusterer.repl_ring_bytes"], len(TABLES))
    return sizes


class NodeMemory:
    contacts: ContactTable
    dialogs: Table

    def __init__(self, segments: dict[str, Segment]) -> None:
        self.segments = segments
        self.control = CT.Control(segments["control"].buf)
        self.tables: dict[str, Table] = {}
        for spec in TABLES:
            self.tables[spec.name] = spec.open(segments[spec.name].buf)
            setattr(self, spec.name, self.tables[spec.name])
        self.rings = segments["rings"].buf

    @classmethod
    def create(cls, cfg: Config, master_pid: int) -> NodeMemory:
        nprocs = CT.nprocs_for(cfg["core.workers"])
        node_id = cfg["clusterer.node_id"]
        made: dict[str, Segment] = {}
        try:
            for part, size in part_sizes(cfg).items():
                made[part] = Segment.create(cfg.shm_prefix + part, size)
            CT.Control.init(made["control"].buf, nprocs, node_id, master_pid, len(TABLES))
            for spec in TABLES:
                Table.create(made[spec.name].buf, spec.layout, spec.setting(cfg, "capacity"),
                             spec.setting(cfg, "record_bytes"), nprocs, node_id)
            R.init_segment(made["rings"].buf, nprocs, cfg["clusterer.repl_ring_bytes"],
                           len(TABLES))
            return cls(made)
        except BaseException:
            for seg in made.values():
                seg.close()
                seg.unlink()
            raise

    @classmethod
    def attach(cls, prefix: str) -> NodeMemory:
        segments: dict[str, Segment] = {}
        try:
            for part in PARTS:
                segments[part] = Segment.attach(prefix + part)
            return cls(segments)
        except BaseException:
            for seg in segments.values():
                seg.close()
            raise

    def prefault(self, stop: Callable[[], bool] = lambda: False) -> float:
        """Commit every page of every segment; returns the seconds it took."""
        started = time.perf_counter()
        for seg in self.segments.values():
            seg.prefault(stop)
        return time.perf_counter() - started

    @property
    def nbytes(self) -> int:
        return sum(seg.size for seg in self.segments.values())

    def ring(self, slot: int, table: str) -> np.ndarray:
        """Process slot's replication ring for a table (by TableSpec name)."""
        return R.region(self.rings, slot, TABLE_INDEX[table])

    def close(self) -> None:
        self.control = None  # type: ignore[assignment]
        for spec in TABLES:
            setattr(self, spec.name, None)
        self.tables = {}
        self.rings = np.zeros(0, np.uint8)
        for seg in self.segments.values():
            seg.close()

    def unlink(self) -> None:
        for seg in self.segments.values():
            if seg.owner:
                seg.unlink()
