"""Persistence: the shared tables written behind to a database, and loaded back at start,
so a whole-cluster restart loses nothing (or at most the last flush interval, on a power
cut).

Writing. Every write to a shared table -- a REGISTER in a SIP worker, a row replicated
or synced from another node, an anti-entropy repair, a mirror sync's local tombstone --
sets the record's dirty mark in shared memory (shm.table). A thread of the cluster
process takes the marked records every [persistence] flush_interval_ms
(table_take_dirty: nogil, no lock) and appends them to the table's log as one batch
(services.cluster.store). The SIP workers never touch the database. The backlog is the
set of marks, bounded by the table: a slow database makes batches bigger, never memory
grow; a flush the database refuses is counted and the whole table is marked, so the
next flush that works writes everything again (nothing is silently lost). When a
table's log has grown to twice its snapshot (and at least COMPACT_MIN_BYTES), the
thread writes a new snapshot of the table, flushing between its batches, and drops the
log the snapshot covers: the database stays about the size of the table, and rows that
expired or were purged go with the old snapshot.

Loading. The master loads the database before it forks (load_into): the snapshot's and
the log's records are applied by (version, origin) -- in any order, the newest version
wins -- then one expiry pass drops what expired while the node was down, and the marks
are cleared (the database has them). The node's last contact and its replication
watermarks come back with them, so the node re-sends what it had not replicated and
mirrors a donor if it was away longer than tombstone_max_s.
Neighbours: services.cluster.store (SQLite, PostgreSQL), shm.table (marks, apply),
workers.master (load), workers.cluster (the writer thread).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastcluster.core.config import Config
from fastcluster.core.stats import INDEX
from fastcluster.services.cluster.store import Store, StoreError, describe, open_store
from fastcluster.shm import control as CT
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.node import NodeMemory
from fastcluster.shm.tables import TABLES

log = logging.getLogger("persistence")

FLUSH_BYTES = 4 << 20  # at most this much of a table per batch
COMPACT_MIN_BYTES = 16 << 20  # a log smaller than this is never compacted
STATUS_EVERY_S = 5.0


def enabled(cfg: Config) -> bool:
    return cfg["persistence.url"].strip().lower() != "off"


def open_for(cfg: Config) -> Store:
    """The configured store, checked to be this node's, with this build's layouts."""
    store = open_store(cfg["persistence.url"].strip(),
                       os.path.join(cfg.data_dir, "tables.sqlite"),
                       [spec.name for spec in TABLES])
    try:
        store.check(cfg["clusterer.node_id"], {s.name: s.layout_text for s in TABLES})
    except BaseException:
        store.close()
        raise
    return store


@dataclass
class Loaded:
    rows: dict[str, int]  # table -> records held after loading
    skipped: dict[str, int]  # table -> entries superseded, expired or purged
    seconds: float
    where: str


def load_into(cfg: Config, mem: NodeMemory) -> Loaded | None:
    """Load the database into fresh tables (the master, before it forks). Raises
    StoreError for a database this node must not use, or a damaged one."""
    if not enabled(cfg):
        return None
    started = time.monotonic()
    store = open_for(cfg)
    try:
        rows, skipped = {}, {}
        me = T.lock_word(os.getpid(), CT.SLOT_MASTER)
        for spec in TABLES:
            table = mem.tables[spec.name]
            counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
            for batch in store.batches(spec.name):
                _apply(table.buf, np.frombuffer(batch, dtype=np.uint8).copy(), me, counts)
                if counts[T.AC_CORRUPT] or counts[T.AC_TOO_LONG]:
                    raise StoreError(f"{describe(store)}: a {spec.name} record is damaged "
                                     "(or longer than this build's rows)")
                if counts[T.AC_FULL]:
                    raise StoreError(f"{describe(store)}: the {spec.name} records do not fit "
                                     f"in [{spec.name}] size: raise it")
            # everything was applied as if at time 0 (an older version of a record must
            # not stay because its newer version has expired): now drop what is gone
            table.expire(int(time.time()), spec.setting(cfg, "tombstone_ttl_s"),
                         cfg["clusterer.tombstone_max_s"],
                         np.zeros(65536, dtype=np.int64), me)
            T.dirty_marks(table.buf)[:] = 0  # the database holds them already
            c = table.counters()
            held = c["live"] + c["tomb"]
            rows[spec.name] = held
            skipped[spec.name] = int(counts[T.AC_ENTRIES]) - held
        _restore_meta(store, mem.control)
        mem.control.stats[CT.SLOT_MASTER, INDEX["persistence:rows_loaded"]] += sum(rows.values())
        return Loaded(rows, skipped, time.monotonic() - started, describe(store))
    finally:
        store.close()


def _apply(arena: np.ndarray, buf: np.ndarray, me: int, counts: np.ndarray) -> None:
    off = 0
    while off < buf.shape[0]:
        off += int(T.apply_entries(arena, buf[off:], buf.shape[0] - off, 0, 0, me,
                                   CT.SLOT_MASTER, R.no_ring(), T.NO_SEEN, counts))
        if counts[T.AC_CORRUPT] or counts[T.AC_FULL] or counts[T.AC_TOO_LONG]:
            return
        if off < buf.shape[0]:
            time.sleep(0.001)  # a region busy: only a repair by the master itself


def _restore_meta(store: Store, control: CT.Control) -> None:
    meta = dict(store.check(int(control.words[CT.W_NODE]), {s.name: s.layout_text
                                                             for s in TABLES}))
    last = int(meta.get("last_contact_ms", "0"))
    control.words[CT.W_LAST_CONTACT] = max(int(control.words[CT.W_LAST_CONTACT]), last)
    marks = json.loads(meta.get("watermarks", "{}"))
    for index, spec in enumerate(TABLES):
        rows = control.peers[index]
        if rows[:, 0].any():
            continue  # shared memory of a killed master is fresher
        saved = marks.get(spec.name, [])[:rows.shape[0]]
        for i, (node, mark) in enumerate(saved):
            rows[i] = (node, mark)


class Persistence:
    """The write-behind thread of the cluster process."""

    def __init__(self, cfg: Config, mem: NodeMemory, stats: np.ndarray) -> None:
        self.cfg = cfg
        self.mem = mem
        self.stats = stats  # a statistics row of its own (one writer per row)
        self.interval = cfg["persistence.flush_interval_ms"] / 1000
        self.store: Store | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="persistence", daemon=True)
        self.out = np.zeros(FLUSH_BYTES, dtype=np.uint8)
        self.counts = np.zeros(T.GATHER_COUNTS, dtype=np.int64)
        self.log_bytes: dict[str, int] = {}  # table -> bytes in its log
        self.snap_bytes: dict[str, int] = {}  # table -> bytes in its snapshot
        self.flushed = 0.0  # monotonic time of the last flush
        self.state: dict[str, Any] = {"backend": "", "last_flush_ms": 0, "last_rows": 0,
                                      "last_seconds": 0.0, "failures": 0, "error": "",
                                      "snapshots": 0, "size_bytes": 0}
        self.last_error = ""

    def start(self) -> None:
        self.store = open_for(self.cfg)
        self.state["backend"] = describe(self.store)
        for spec in TABLES:
            _, self.log_bytes[spec.name], self.snap_bytes[spec.name] = \
                self.store.stats(spec.name)
        self._guard(self._refresh_status)
        self.thread.start()

    def stop(self) -> None:
        """A last flush of everything changed (a graceful stop loses nothing)."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(30)
        if self.store is not None:
            self.store.close()

    def status(self) -> dict[str, Any]:
        backlog = {name: int(np.count_nonzero(T.dirty_marks(t.buf)[:t.nslots]))
                   for name, t in self.mem.tables.items()}
        return {**self.state, "backlog_rows": backlog,
                "log_bytes": dict(self.log_bytes), "snapshot_bytes": dict(self.snap_bytes),
                "flush_interval_ms": self.cfg["persistence.flush_interval_ms"]}

    def _run(self) -> None:
        status = time.monotonic()
        while True:
            stopping = self.stopping.wait(self.interval)
            self.flush()
            if not stopping:
                self._guard(self._compact_if_due)
            now = time.monotonic()
            if now - status > STATUS_EVERY_S or stopping:
                status = now
                self._guard(self._refresh_status)
            if stopping:
                return

    def flush(self) -> int:
        """Append what changed since the last flush; returns the records written."""
        started = self.flushed = time.monotonic()
        written = 0
        try:
            for spec in TABLES:
                written += self._flush_table(spec.name)
            self._save_meta()
        except Exception as exc:  # noqa: BLE001 - the database's trouble, not a crash
            self._failed("flush", exc)
            for table in self.mem.tables.values():
                T.table_mark_all(table.buf)
            return 0
        if self.last_error:
            log.info("the database works again")
            self.last_error = self.state["error"] = ""
        self.stats[INDEX["persistence:flushes"]] += 1
        self.stats[INDEX["persistence:rows_written"]] += written
        self.state.update(last_flush_ms=int(time.time() * 1000), last_rows=written,
                          last_seconds=round(time.monotonic() - started, 4))
        return written

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats[INDEX["persistence:failures"]] += 1
        self.state["failures"] += 1
        self.state["error"] = f"{what}: {type(exc).__name__}: {exc}"[:300]
        if self.state["error"] != self.last_error:
            self.last_error = self.state["error"]
            log.error("%s failed (%s): everything is written again once the database "
                      "works", what, self.last_error)

    def _flush_table(self, name: str) -> int:
        table = self.mem.tables[name]
        assert self.store is not None
        region, written = 0, 0
        while region < table.nregions:
            before = int(self.counts[T.GC_ENTRIES])
            region, nbytes = T.table_take_dirty(table.buf, region, self.out, FLUSH_BYTES,
                                                self.counts)
            region, nbytes = int(region), int(nbytes)
            if nbytes:
                self.store.append(name, self.out[:nbytes].tobytes())
                self.log_bytes[name] = self.log_bytes.get(name, 0) + nbytes
                written += int(self.counts[T.GC_ENTRIES]) - before
        return written

    def _save_meta(self) -> None:
        assert self.store is not None
        control = self.mem.control
        marks = {spec.name: [[int(n), int(w)] for n, w in control.peers[i].tolist() if n]
                 for i, spec in enumerate(TABLES)}
        self.store.set_meta({"last_contact_ms": str(int(control.words[CT.W_LAST_CONTACT])),
                             "watermarks": json.dumps(marks)})

    def _compact_if_due(self) -> None:
        assert self.store is not None
        for spec in TABLES:
            name = spec.name
            if self.log_bytes[name] < max(COMPACT_MIN_BYTES, 2 * self.snap_bytes[name]):
                continue
            started = time.monotonic()
            upto = self.store.last_seq(name)  # every batch flushed so far: the snapshot,
            written = [0]  # taken after, holds each of its records or a newer version
            self.store.snapshot(name, self._gather(name, written), upto)
            self.snap_bytes[name] = written[0]
            _, self.log_bytes[name], _ = self.store.stats(name)
            self.state["snapshots"] += 1
            self.stats[INDEX["persistence:snapshots"]] += 1
            log.info("%s: snapshot of %d bytes in %.2f s, log compacted", name, written[0],
                     time.monotonic() - started)

    def _gather(self, name: str, written: list[int]) -> Iterator[bytes]:
        """The table's records, a batch at a time; flushes keep going meanwhile (a
        snapshot of a big table takes a while)."""
        table = self.mem.tables[name]
        out = np.zeros(FLUSH_BYTES, dtype=np.uint8)
        counts = np.zeros(T.GATHER_COUNTS, dtype=np.int64)
        slot = 0
        while slot < table.nslots:
            slot, nbytes, _ = T.table_gather(table.buf, slot, out, FLUSH_BYTES, counts)
            slot, nbytes = int(slot), int(nbytes)
            if nbytes:
                written[0] += nbytes
                yield out[:nbytes].tobytes()
            if time.monotonic() - self.flushed >= self.interval:
                self.flush()
            if self.stopping.is_set():
                raise _Stopping  # the old snapshot and the log stay as they were

    def _refresh_status(self) -> None:
        assert self.store is not None
        self.state["size_bytes"] = self.store.size_bytes()

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except _Stopping:
            pass
        except Exception as exc:  # noqa: BLE001
            self._failed(fn.__name__.strip("_"), exc)


class _Stopping(Exception):
    pass


__all__ = ["Loaded", "Persistence", "StoreError", "enabled", "load_into", "open_for"]
