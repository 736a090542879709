"""Prometheus exposition of a node (`GET /metrics` on the MI server), with
prometheus_client.

Every name, help text, label set and bucket list comes from core.stats (COUNTERS, GAUGES,
METRICS): `render` turns the statistics and one status snapshot (services.mi.status)
into metric families and lets prometheus_client write the text format. What no table
or view holds -- how long full syncs took and how many rows they brought, how old
replicated rows are when they are applied -- is observed here, in the cluster process,
by `Observer`: the cluster API the process hands its consumers (`ObservedAPI`) wraps
each registered capability's sync-chunk and realtime-batch callbacks to count rows and
read the oldest version of each batch (one kernel call, shm.table.entries_summary), and
the capability state changes the process publishes tell when a sync starts and ends
(`SyncWatch`, a pure state machine tested with tables). Neighbours: core.stats,
services.mi.status (the snapshot), services.mi.pages (the route), workers.cluster
(wiring).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fastcluster.core.messages import ROWS_PREFIX
from fastcluster.core.stats import COUNTERS, GAUGES, METRIC_PREFIX, METRICS, metric_name
from fastcluster.services.cluster.api import Capability, ClusterAPI, Delivery
from fastcluster.shm import table as T
from fastcluster.shm.tables import SPEC_BY_KIND

log = logging.getLogger("metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DECLARED = {m.name: m for m in METRICS}
LINK_STATES = ("Up", "Probe", "Down")
CAP_STATES = ("not synced", "sync pending", "sync in progress", "synced")


# ---------------------------------------------------------------- observations


class SyncWatch:
    """When does a full sync start and end, and how many rows did it bring?

    `chunk` is told the running row count of a sync session after each applied chunk
    (a session is one donor connection: a sync that switches donor has several);
    `update` is told this node's state of every capability after each change. A sync
    runs from the first "sync in progress" to "synced"; states in between (a failed
    session waiting for another donor) keep it running. "synced" without "sync in
    progress" (a seed falling back on its own data) is no sync. Returns the syncs that
    ended: (capability, seconds, rows)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started: dict[str, float] = {}
        self.sessions: dict[str, dict[int, int]] = {}  # capability -> session -> rows

    def chunk(self, name: str, session: int, rows: int) -> None:
        if name in self.started:
            self.sessions.setdefault(name, {})[session] = rows

    def update(self, states: dict[str, str]) -> list[tuple[str, float, int]]:
        ended = []
        now = self.clock()
        for name, state in states.items():
            if state == "sync in progress" and name not in self.started:
                self.started[name] = now
                self.sessions[name] = {}
            elif state == "synced" and name in self.started:
                rows = sum(self.sessions.pop(name, {}).values())
                ended.append((name, now - self.started.pop(name), rows))
        return ended

    def rows_so_far(self, name: str) -> int:
        return sum(self.sessions.get(name, {}).values())


def _histogram(name: str) -> Histogram:
    m = DECLARED[name]
    return Histogram(m.name, m.help, m.labels, namespace=METRIC_PREFIX.rstrip("_"),
                     buckets=m.buckets, registry=None)


class Observer:
    """The histograms of one cluster process, fed from its loop, read by its MI thread
    (prometheus_client's metrics are thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.sync_seconds = _histogram("sync_duration_seconds")
        self.sync_rows = _histogram("sync_records")
        self.lag = _histogram("replication_lag_seconds")
        self.watch = SyncWatch(clock)
        self.last_sync: dict[str, dict[str, Any]] = {}  # for the status page
        self._lock = threading.Lock()
        self.failed = False

    def collectors(self) -> list[Histogram]:
        return [self.sync_seconds, self.sync_rows, self.lag]

    def capability_states(self, states: dict[str, str]) -> None:
        with self._lock:
            ended = self.watch.update(states)
        for name, seconds, rows in ended:
            self.sync_seconds.labels(name).observe(seconds)
            self.sync_rows.labels(name).observe(rows)
            self.last_sync[name] = {"seconds": round(seconds, 3), "records": rows,
                                    "ended_ms": int(time.time() * 1000)}

    def sync_chunk(self, name: str, counts: np.ndarray) -> None:
        with self._lock:
            self.watch.chunk(name, id(counts), int(counts[T.AC_ENTRIES]))

    def batch(self, table: str, payload: bytes, now_ms: float | None = None) -> None:
        """A realtime batch was applied: observe the age of its oldest row."""
        entries = np.frombuffer(payload, dtype=np.uint8, offset=ROWS_PREFIX.size).copy()
        rows, low = T.entries_summary(entries, entries.shape[0])
        if rows:
            now = time.time() * 1000 if now_ms is None else now_ms
            lag_ms = max(0.0, now - T.version_ms(int(low)))
            self.lag.labels(table).observe(lag_ms / 1000)

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        """An observation that fails must never fail the replication it watches: it is
        logged once and skipped."""
        try:
            fn(*args)
        except Exception:
            if not self.failed:
                log.exception("metrics: an observation failed (logged once; replication "
                              "goes on)")
            self.failed = True

    def observe(self, cap: Capability) -> Capability:
        """The capability with its sync-chunk and realtime-batch callbacks observed."""
        table = SPEC_BY_KIND[cap.wire_id].name if cap.wire_id in SPEC_BY_KIND \
            else cap.name
        apply_chunk, apply_batch = cap.apply_chunk, cap.apply_batch

        async def chunk(data: bytes, counts: np.ndarray) -> bool:
            ok = await apply_chunk(data, counts)
            self._safely(self.sync_chunk, cap.name, counts)
            return ok

        async def batch(d: Delivery) -> bool:
            ok = await apply_batch(d)
            if ok:
                self._safely(self.batch, table, d.payload)
            return ok

        return dataclasses.replace(cap, apply_chunk=chunk, apply_batch=batch)


OBSERVER = Observer()  # the cluster process's (one per process, like prometheus's REGISTRY)


class ObservedAPI(ClusterAPI):
    """The cluster API as the cluster process hands it to its consumers: the same,
    with every registered capability's data paths observed for the metrics."""

    observer: Observer = OBSERVER

    def register_capability(self, cap: Capability) -> None:
        super().register_capability(self.observer.observe(cap))


# ---------------------------------------------------------------- exposition


def _family(name: str, labels: Iterable[str] = ()) -> Metric:
    m = DECLARED[name]
    cls = CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily
    assert tuple(labels) == m.labels or not labels, name
    return cls(METRIC_PREFIX + m.name, m.help, labels=list(m.labels))


class _Snapshot:
    """A collector over one snapshot (built per scrape, never registered globally)."""

    def __init__(self, stats: dict[str, int], status: dict[str, Any],
                 observed: Iterable[Any]) -> None:
        self.stats, self.status, self.observed = stats, status, list(observed)

    def collect(self) -> Iterator[Metric]:
        yield from statistic_families(self.stats)
        yield from status_families(self.status)
        for collector in self.observed:
            yield from collector.collect()


def statistic_families(stats: dict[str, int]) -> Iterator[Metric]:
    """Every statistic of get_statistics (aliases are the same series: not repeated)."""
    for kind, declared in (("counter", COUNTERS), ("gauge", GAUGES)):
        for group, name, doc in declared:
            stat = f"{group}:{name}"
            if stat not in stats:
                continue
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(metric_name(stat), doc)
            family.add_metric([], stats[stat])
            yield family


def status_families(status: dict[str, Any]) -> Iterator[Metric]:
    """The labelled metrics of core.stats.METRICS from a status snapshot."""
    info = _family("build_info")
    info.add_metric([status.get("version", "unknown")], 1)
    yield info
    beat = _family("process_heartbeat_age_seconds")
    for p in status.get("processes", []):
        beat.add_metric([p["name"]], p["heartbeat_age_ms"] / 1000)
    yield beat
    families = {n: _family(n) for n in ("node_up", "node_next_hop", "link_state",
                                         "link_rtt_seconds", "link_clock_skew_seconds",
                                         "replication_backlog_bytes")}
    for cluster in status.get("clusters", []):
        cid = str(cluster["cluster_id"])
        for n in cluster["nodes"]:
            if n.get("me"):
                continue
            key = [cid, str(n["node_id"])]
            families["node_up"].add_metric(key, 1 if n["reachable"] else 0)
            families["node_next_hop"].add_metric(key, n["next_hop"] or 0)
            for state in LINK_STATES:
                families["link_state"].add_metric(key + [state],
                                                  1 if n["direct_link"] == state else 0)
            families["link_rtt_seconds"].add_metric(key, n["rtt_ms"] / 1000)
            families["link_clock_skew_seconds"].add_metric(key, n["clock_skew_ms"] / 1000)
            if n.get("backlog_bytes") is not None:
                families["replication_backlog_bytes"].add_metric(key, n["backlog_bytes"])
    yield from families.values()
    caps = {n: _family(n) for n in ("capability_state", "capability_enabled",
                                    "sync_progress_ratio", "sync_records_received")}
    for cap in status.get("capabilities", []):
        for n in cap["nodes"]:
            key = [str(cap["cluster"]), cap["name"], str(n["node_id"])]
            for state in CAP_STATES:
                caps["capability_state"].add_metric(key + [state],
                                                    1 if n["state"] == state else 0)
            caps["capability_enabled"].add_metric(key, 1 if n["enabled"] else 0)
        if cap.get("sync"):
            caps["sync_progress_ratio"].add_metric([cap["name"]],
                                                   cap["sync"].get("percent", 0) / 100)
            caps["sync_records_received"].add_metric([cap["name"]],
                                                     cap["sync"].get("records", 0))
    yield from caps.values()
    rings = {n: _family(n) for n in ("replication_ring_fill_ratio",
                                     "replication_ring_pending_bytes",
                                     "replication_ring_rows_pushed",
                                     "replication_ring_rows_not_pushed")}
    for ring in status.get("rings", []):
        key = [ring["table"]]
        rings["replication_ring_fill_ratio"].add_metric(key, ring["fill_ratio"])
        rings["replication_ring_pending_bytes"].add_metric(key, ring["pending_bytes"])
        rings["replication_ring_rows_pushed"].add_metric(key, ring["pushed"])
        rings["replication_ring_rows_not_pushed"].add_metric(key, ring["not_pushed"])
    yield from rings.values()
    parts = status.get("partitions")
    if parts:
        for name, value in (("natping_partitions", parts["total"]),
                            ("natping_partitions_owned", parts["owned"])):
            family = _family(name)
            family.add_metric([], value)
            yield family


def render(stats: dict[str, int], status: dict[str, Any],
           observer: Observer | None = None) -> bytes:
    """The text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats, status, observer.collectors() if observer else ()))
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "OBSERVER", "ObservedAPI", "Observer", "SyncWatch", "render"]
