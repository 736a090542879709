"""Metrics: names and help from core.stats, the exposition parsed by prometheus_client's
own parser, the sync observation state machine (a table of cases), the replication lag
read from a batch, and docs/statistics.md kept current."""
from __future__ import annotations

import asyncio
import pathlib
import struct

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastcluster.core import stats
from fastcluster.core.messages import ROWS_PREFIX
from fastcluster.core.stats import COUNTERS, GAUGES, METRICS, metric_name
from fastcluster.services.mi import metrics
from fastcluster.services.mi.metrics import Observer, SyncWatch
from fastcluster.shm import ring as R
from fastcluster.shm import table as T

REPO = pathlib.Path(__file__).resolve().parents[2]

SNAPSHOT = {
    "version": "9.9", "node_id": 1,
    "processes": [{"name": "master", "pid": 1, "heartbeat_age_ms": 0, "restarts": 0},
                  {"name": "sip-1", "pid": 2, "heartbeat_age_ms": 40, "restarts": 1}],
    "clusters": [{"cluster_id": 1, "nodes": [
        {"node_id": 1, "me": True},
        {"node_id": 2, "me": False, "reachable": True, "next_hop": 2, "direct_link": "Up",
         "rtt_ms": 3, "clock_skew_ms": -2, "backlog_bytes": 0},
        {"node_id": 3, "me": False, "reachable": True, "next_hop": 2,
         "direct_link": "Down", "rtt_ms": 0, "clock_skew_ms": 0, "backlog_bytes": None}]}],
    "capabilities": [{"name": "usrloc-contact-repl", "cluster": 1,
                      "sync": {"donor": 2, "records": 500, "percent": 25.0, "rate": 1},
                      "nodes": [{"node_id": 1, "state": "sync in progress", "enabled": True},
                                {"node_id": 2, "state": "synced", "enabled": True}]}],
    "rings": [{"table": "contacts", "fill_ratio": 0.25, "pending_bytes": 1024, "pushed": 7,
               "not_pushed": 1}],
    "partitions": {"total": 4096, "owned": 1365, "epoch": 3, "owners": {}},
}


def parse(text: bytes) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def samples(family, **labels) -> list[float]:
    return [s.value for s in family.samples
            if all(s.labels.get(k) == v for k, v in labels.items())]


def test_every_statistic_and_metric_is_exposed_with_its_declared_help() -> None:
    values = {f"{g}:{n}": i for i, (g, n, _) in enumerate(COUNTERS + GAUGES)}
    families = parse(metrics.render(values, SNAPSHOT, Observer()))
    for i, (group, name, doc) in enumerate(COUNTERS):
        family = families[metric_name(f"{group}:{name}")]
        assert family.type == "counter" and family.documentation == doc
        assert samples(family) == [float(i)]
    for group, name, doc in GAUGES:
        family = families[metric_name(f"{group}:{name}")]
        assert family.type == "gauge" and family.documentation == doc
    for m in METRICS:
        family = families[stats.METRIC_PREFIX + m.name]
        assert family.type == m.kind and family.documentation == m.help, m.name


def test_cluster_metrics_from_a_snapshot() -> None:
    f = parse(metrics.render({}, SNAPSHOT))
    assert samples(f["fastcluster_node_up"], node="3") == [1.0]
    assert samples(f["fastcluster_node_next_hop"], node="3") == [2.0]
    assert samples(f["fastcluster_link_state"], node="2", state="Up") == [1.0]
    assert samples(f["fastcluster_link_state"], node="3", state="Down") == [1.0]
    assert samples(f["fastcluster_link_state"], node="3", state="Up") == [0.0]
    assert samples(f["fastcluster_link_rtt_seconds"], node="2") == [0.003]
    assert samples(f["fastcluster_link_clock_skew_seconds"], node="2") == [-0.002]
    assert samples(f["fastcluster_replication_backlog_bytes"], node="2") == [0.0]
    assert samples(f["fastcluster_replication_backlog_bytes"], node="3") == []  # no route
    assert samples(f["fastcluster_capability_state"], node="1",
                   state="sync in progress") == [1.0]
    assert samples(f["fastcluster_sync_progress_ratio"]) == [0.25]
    assert samples(f["fastcluster_sync_records_received"]) == [500.0]
    assert samples(f["fastcluster_replication_ring_fill_ratio"], table="contacts") == [0.25]
    assert samples(f["fastcluster_replication_ring_rows_not_pushed"],
                   table="contacts") == [1.0]
    assert samples(f["fastcluster_natping_partitions_owned"]) == [1365.0]
    assert samples(f["fastcluster_process_heartbeat_age_seconds"], process="sip-1") == [0.04]
    assert samples(f["fastcluster_build_info"], version="9.9") == [1.0]


# (state updates, each a dict capability -> state, one clock second apart; chunk reports
# between them as ("chunk", capability, session, rows)) -> syncs ended (capability,
# seconds, rows)
SYNC_CASES = [
    ("a sync from start to end",
     [{"u": "sync pending"}, {"u": "sync in progress"}, ("chunk", "u", 1, 10),
      ("chunk", "u", 1, 25), {"u": "synced"}], [("u", 1.0, 25)]),
    ("a donor switch: two sessions add up, the wait between them counts",
     [{"u": "sync in progress"}, ("chunk", "u", 1, 10), {"u": "sync pending"},
      {"u": "sync in progress"}, ("chunk", "u", 2, 5), {"u": "synced"}], [("u", 3.0, 15)]),
    ("a seed falling back on its own data is no sync",
     [{"u": "sync pending"}, {"u": "synced"}], []),
    ("chunks before any sync are ignored",
     [("chunk", "u", 1, 10), {"u": "sync in progress"}, {"u": "synced"}], [("u", 1.0, 0)]),
    ("repeated synced states end a sync once",
     [{"u": "sync in progress"}, {"u": "synced"}, {"u": "synced"}], [("u", 1.0, 0)]),
    ("two capabilities at once",
     [{"u": "sync in progress", "d": "sync in progress"}, ("chunk", "d", 7, 3),
      {"u": "synced", "d": "sync in progress"}, {"u": "synced", "d": "synced"}],
     [("u", 1.0, 0), ("d", 2.0, 3)]),
    ("a second sync later is measured on its own",
     [{"u": "sync in progress"}, ("chunk", "u", 1, 4), {"u": "synced"},
      {"u": "sync pending"}, {"u": "sync in progress"}, ("chunk", "u", 2, 6),
      {"u": "synced"}], [("u", 1.0, 4), ("u", 1.0, 6)]),
]


@pytest.mark.parametrize("what, steps, ended", SYNC_CASES, ids=[c[0] for c in SYNC_CASES])
def test_sync_watch(what: str, steps: list, ended: list) -> None:
    clock = iter(float(t) for t in range(100))
    watch = SyncWatch(clock=lambda: next(clock))
    seen = []
    for step in steps:
        if isinstance(step, tuple):
            watch.chunk(step[1], step[2], step[3])
        else:
            seen += watch.update(step)
    assert seen == ended


def entry(version: int, kind: int = 1) -> bytes:
    body = bytearray(32)
    struct.pack_into("<q", body, T.R_VERSION, version)
    return struct.pack("<IHH", R.ENTRY_HEADER + len(body), kind, 0) + bytes(body)


def test_replication_lag_is_the_age_of_the_oldest_row_of_a_batch() -> None:
    observer = Observer()
    now_ms = 1_800_000_000_000
    hlc = T.HLC_SHIFT
    payload = ROWS_PREFIX.pack(1, 1, 0) + entry((now_ms - 5) << hlc) + \
        entry((now_ms - 40) << hlc | 3) + entry((now_ms - 1) << hlc)
    observer.batch("contacts", payload, now_ms=now_ms)
    observer.batch("contacts", ROWS_PREFIX.pack(1, 1, 0), now_ms=now_ms)  # no rows: nothing
    f = parse(metrics.render({}, {}, observer))["fastcluster_replication_lag_seconds"]
    count = [s.value for s in f.samples if s.name.endswith("_count")]
    total = [s.value for s in f.samples if s.name.endswith("_sum")]
    assert count == [1.0] and total == [pytest.approx(0.040)]
    le_50ms = [s.value for s in f.samples if s.labels.get("le") == "0.05"]
    le_25ms = [s.value for s in f.samples if s.labels.get("le") == "0.025"]
    assert le_50ms == [1.0] and le_25ms == [0.0]


def test_observed_capability_feeds_the_histograms() -> None:
    from fastcluster.services.cluster.api import Capability

    observer = Observer()
    applied = []

    async def apply_chunk(data: bytes, counts: np.ndarray) -> bool:
        counts[T.AC_ENTRIES] += len(data)
        return True

    async def apply_batch(d) -> bool:
        applied.append(d)
        return True

    cap = observer.observe(Capability("usrloc-contact-repl", 1, 1, lambda p: None,
                                      apply_chunk, apply_batch))
    observer.capability_states({"usrloc-contact-repl": "sync in progress"})
    counts = np.zeros(T.APPLY_COUNTS, np.int64)
    assert asyncio.run(cap.apply_chunk(b"x" * 30, counts))
    assert asyncio.run(cap.apply_chunk(b"x" * 12, counts))
    observer.capability_states({"usrloc-contact-repl": "synced"})
    assert observer.last_sync["usrloc-contact-repl"]["records"] == 42
    f = parse(metrics.render({}, {}, observer))
    rows = f["fastcluster_sync_records"]
    assert [s.value for s in rows.samples if s.name.endswith("_sum")] == [42.0]
    assert [s.labels["capability"] for s in rows.samples if s.name.endswith("_count")] == \
        ["usrloc-contact-repl"]


def test_statistics_reference_is_current() -> None:
    committed = (REPO / "docs" / "statistics.md").read_text()
    assert committed == stats.render_statistics_doc(), \
        "docs/statistics.md is stale: run `fastcluster statistics-doc > docs/statistics.md`"
    for group, name, _ in COUNTERS + GAUGES:
        assert f"`{group}:{name}`" in committed


def test_metric_names_are_valid_and_unique() -> None:
    import re

    names = [metric_name(f"{g}:{n}") for g, n, _ in COUNTERS + GAUGES] + \
        [stats.METRIC_PREFIX + m.name for m in METRICS]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", n) for n in names)


def test_a_failing_observation_never_fails_replication(caplog) -> None:
    from fastcluster.services.cluster.api import Capability

    observer = Observer()

    async def apply_batch(d) -> bool:
        return True

    cap = observer.observe(Capability("usrloc-contact-repl", 1, 1, lambda p: None,
                                      apply_batch, apply_batch))

    class Garbled:
        payload = b"\x00"  # shorter than the batch prefix: the observation raises

    assert asyncio.run(cap.apply_batch(Garbled())) is True
    assert asyncio.run(cap.apply_batch(Garbled())) is True
    assert observer.failed
    assert len([r for r in caplog.records if "observation failed" in r.getMessage()]) == 1
