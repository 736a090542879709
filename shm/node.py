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
from fastcluster.shm import tmring as TR
from fastcluster.shm.contacts import CONTACT
from fastcluster.shm.dialogs import DIALOG
from fastcluster.shm.segment import Segment
from fastcluster.shm.tables import ContactTable, Table
from fastcluster.shm.transactions import TRANSACTION

PARTS = ("control", "contacts", "dialogs", "rings", "transactions", "tmrings")


def part_sizes(cfg: Config) -> dict[str, int]:
    nprocs = CT.nprocs_for(cfg["core.workers"])
    return {
        "control": CT.segment_size(nprocs),
        "contacts": Table.size_for(CONTACT, cfg["usrloc.capacity"],
                                   cfg["usrloc.record_bytes"], nprocs),
        "dialogs": Table.size_for(DIALOG, cfg["dialog.capacity"],
                                  cfg["dialog.record_bytes"], nprocs),
        "rings": R.segment_size(nprocs, cfg["clusterer.repl_ring_bytes"]),
        "transactions": Table.size_for(TRANSACTION, cfg["proxy.transactions"],
                                       cfg["proxy.record_bytes"], nprocs),
        "tmrings": TR.segment_size(nprocs),
    }


class NodeMemory:
    def __init__(self, segments: dict[str, Segment]) -> None:
        self.segments = segments
        self.control = CT.Control(segments["control"].buf)
        self.contacts = ContactTable(segments["contacts"].buf)
        self.dialogs = Table(segments["dialogs"].buf, DIALOG)
        self.rings = segments["rings"].buf
        # local to this node, never replicated (services.sip.tm)
        self.transactions = Table(segments["transactions"].buf, TRANSACTION)
        self.tmrings = segments["tmrings"].buf

    @classmethod
    def create(cls, cfg: Config, master_pid: int) -> NodeMemory:
        nprocs = CT.nprocs_for(cfg["core.workers"])
        node_id = cfg["clusterer.node_id"]
        made: dict[str, Segment] = {}
        try:
            for part, size in part_sizes(cfg).items():
                made[part] = Segment.create(cfg.shm_prefix + part, size)
            CT.Control.init(made["control"].buf, nprocs, node_id, master_pid)
            Table.create(made["contacts"].buf, CONTACT, cfg["usrloc.capacity"],
                         cfg["usrloc.record_bytes"], nprocs, node_id)
            Table.create(made["dialogs"].buf, DIALOG, cfg["dialog.capacity"],
                         cfg["dialog.record_bytes"], nprocs, node_id)
            R.init_segment(made["rings"].buf, nprocs, cfg["clusterer.repl_ring_bytes"])
            Table.create(made["transactions"].buf, TRANSACTION, cfg["proxy.transactions"],
                         cfg["proxy.record_bytes"], nprocs, node_id)
            TR.init_segment(made["tmrings"].buf, nprocs)
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

    def ring(self, slot: int) -> np.ndarray:
        return R.region(self.rings, slot)

    def close(self) -> None:
        self.control = self.contacts = self.dialogs = None  # type: ignore[assignment]
        self.transactions = None  # type: ignore[assignment]
        self.rings = self.tmrings = np.zeros(0, np.uint8)
        for seg in self.segments.values():
            seg.close()

    def unlink(self) -> None:
        for seg in self.segments.values():
            if seg.owner:
                seg.unlink()
