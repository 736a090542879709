"""All shared memory of one node instance: the segments, who creates and who removes them.

The master creates every segment before forking (names `/fastcluster.<instance>.<part>`),
children inherit the mappings, and only the master unlinks, at exit. Creation is
all-or-nothing: a failure removes the segments already made. Tools and tests can
`attach` to a running instance read-only in spirit (they never unlink).

A master killed with SIGKILL leaves its segments behind. The next master of the instance
(holding the instance lock, so none of the old processes lives) adopts what they hold
(`Stale` + `adopt`): every row, with its version and origin, is copied into the new
tables (whose sizes may differ), rows left in flight by killed writers are restored
first, and the replication watermarks are lowered to what the old rings never sent --
so nothing the node acknowledged to a client is lost. Old segments of another node id
or layout are discarded, with the reason logged.
Neighbours: shm.segment (one segment), shm.control / shm.tables / shm.ring (layouts),
workers.master (owner).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fastcluster.core.config import Config
from fastcluster.core.digest import derive_key
from fastcluster.shm import control as CT
from fastcluster.shm import nonces as N
from fastcluster.shm import profiles as PF
from fastcluster.shm import ring as R
from fastcluster.shm import shtags as SH
from fastcluster.shm import table as T
from fastcluster.shm import tmring as TR
from fastcluster.shm.segment import Segment, names_with_prefix, remove_stale
from fastcluster.shm.tables import TABLE_INDEX, TABLES, ContactTable, Table
from fastcluster.shm.transactions import TRANSACTION

log = logging.getLogger("shm")
COPY_BYTES = 1 << 22

# the replicated tables (TABLES), then what stays on this node: rings, nonces, the
# proxy's transactions (services.sip.tm) and their timer rings, the sharing tag states
# and the dialog profile counters (both rebuilt at every start)
PARTS = ("control",) + tuple(spec.name for spec in TABLES) + (
    "rings", "nonces", "transactions", "tmrings", "shtags", "profiles")
NONCE_SLOTS_AUTH_OFF = 1024  # a token table: nothing uses it while auth.enable is off


def nonce_slots(cfg: Config) -> int:
    return cfg["auth.nonce_slots"] if cfg["auth.enable"] else NONCE_SLOTS_AUTH_OFF


def nonce_key(cfg: Config) -> bytes:
    """The key digest nonces are signed with: shared by every node with the same
    auth.secret (or clusterer.secret), random per run when both are empty."""
    secret = cfg["auth.secret"] or cfg["clusterer.secret"]
    return derive_key(secret) if secret else os.urandom(32)


def part_sizes(cfg: Config) -> dict[str, int]:
    nprocs = CT.nprocs_for(cfg["core.workers"])
    sizes = {"control": CT.segment_size(nprocs, len(TABLES))}
    for spec in TABLES:
        sizes[spec.name] = Table.size_for(spec.layout, spec.setting(cfg, "capacity"),
                                          spec.setting(cfg, "record_bytes"), nprocs)
    sizes["rings"] = R.segment_size(nprocs, cfg["clusterer.repl_ring_bytes"], len(TABLES))
    sizes["nonces"] = N.segment_size(nonce_slots(cfg))
    sizes["transactions"] = Table.size_for(TRANSACTION, cfg["proxy.transactions"],
                                           cfg["proxy.record_bytes"], nprocs)
    sizes["tmrings"] = TR.segment_size(nprocs)
    sizes["shtags"] = SH.segment_size()
    sizes["profiles"] = PF.segment_size(cfg["dialog.profile_values"])
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
        self.nonces = N.NonceTable(segments["nonces"].buf)
        # local to this node, never replicated (services.sip.tm)
        self.transactions = Table(segments["transactions"].buf, TRANSACTION)
        self.tmrings = segments["tmrings"].buf
        self.shtags = SH.ShtagStates(segments["shtags"].buf)
        self.profiles = PF.ProfileCounters(segments["profiles"].buf)

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
            N.init_segment(made["nonces"].buf, nonce_slots(cfg), nonce_key(cfg))
            Table.create(made["transactions"].buf, TRANSACTION, cfg["proxy.transactions"],
                         cfg["proxy.record_bytes"], nprocs, node_id)
            TR.init_segment(made["tmrings"].buf, nprocs)
            SH.init_segment(made["shtags"].buf)
            PF.init_segment(made["profiles"].buf, cfg["dialog.profile_values"])
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
        self.nonces = self.transactions = None  # type: ignore[assignment]
        self.shtags = self.profiles = None  # type: ignore[assignment]
        self.rings = self.tmrings = np.zeros(0, np.uint8)
        for seg in self.segments.values():
            seg.close()

    def unlink(self) -> None:
        for seg in self.segments.values():
            if seg.owner:
                seg.unlink()


@dataclass
class Stale:
    """The segments a killed master of this instance left, mapped (their names already
    removed: the memory lives until close())."""
    segments: dict[str, Segment]
    names: list[str]
    # table -> (records the old table held, those newer than what the new one had)
    adopted: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def take(cls, prefix: str) -> Stale | None:
        found = names_with_prefix(prefix)
        if not found:
            return None
        segments = {}
        for part in PARTS:
            try:
                segments[part] = Segment.attach(prefix + part)
            except (OSError, ValueError, Exception):  # noqa: BLE001 - gone or damaged
                continue
        return cls(segments, remove_stale(prefix))

    def close(self) -> None:
        for seg in self.segments.values():
            seg.close()

    def adopt_into(self, mem: NodeMemory, node_id: int) -> str | None:
        """Copy what can be used into mem; returns why nothing was (None: adopted)."""
        try:
            old_ctl = CT.Control(self.segments["control"].buf)
        except (KeyError, ValueError) as exc:
            return f"no usable control segment ({exc})"
        if int(old_ctl.words[CT.W_NODE]) != node_id:
            return f"they belong to node {int(old_ctl.words[CT.W_NODE])}, not {node_id}"
        unsent: dict[int, int] = {}
        rings = self.segments.get("rings")
        for spec in TABLES:
            seg = self.segments.get(spec.name)
            if seg is None:
                continue
            try:
                T.check_header(seg.buf, spec.kind)
            except ValueError as exc:
                log.warning("the old %s table is not usable (%s): its rows are lost",
                            spec.name, exc)
                continue
            T.table_salvage(seg.buf)
            self.adopted[spec.name] = _copy_rows(seg.buf, mem.tables[spec.name].buf)
            if rings is not None:
                try:
                    low = int(R.rings_low_version(rings.buf, TABLE_INDEX[spec.name]))
                    R.region(rings.buf, 0)  # layout check
                except (ValueError, IndexError):
                    low = 0  # rings unreadable: everything may be unsent
                unsent[TABLE_INDEX[spec.name]] = low
        _copy_control(old_ctl, mem.control, unsent)
        return None


def _copy_rows(src: np.ndarray, dst: np.ndarray) -> tuple[int, int]:
    """Every record of table src into table dst, versions and origins kept (a record
    dst holds in a newer version stays). Returns (records in src, records applied)."""
    out = np.zeros(COPY_BYTES, dtype=np.uint8)
    gathered = np.zeros(T.GATHER_COUNTS, dtype=np.int64)
    applied = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
    nslots = int(src[:T.HEADER_SIZE].view(np.int64)[T.H_NSLOTS])
    slot, now_s = 0, int(time.time())
    while slot < nslots:
        slot, nbytes, _ = T.table_gather(src, slot, out, COPY_BYTES, gathered)
        slot = int(slot)
        T.apply_entries(dst, out, int(nbytes), now_s, 0, T.lock_word(0, CT.SLOT_MASTER),
                        CT.SLOT_MASTER, R.no_ring(), T.NO_SEEN, applied)
    return int(applied[T.AC_ENTRIES]), int(applied[T.AC_APPLIED])


def _copy_control(old: CT.Control, new: CT.Control, unsent: dict[int, int]) -> None:
    """Replication watermarks (lowered to what the old rings never sent), tombstone
    horizons and the last contact carry over."""
    new.words[CT.W_LAST_CONTACT] = old.words[CT.W_LAST_CONTACT]
    tables = min(old.peers.shape[0], new.peers.shape[0])
    new.horizons[:tables] = old.horizons[:tables]
    new.peers[:tables] = old.peers[:tables]
    for index, low in unsent.items():
        if index < tables:
            rows = new.peers[index]
            live = rows[:, 0] != 0
            rows[live, 1] = np.minimum(rows[live, 1], low)
