"""Anti-entropy figures with real nodes on loopback.

    .venv/bin/python -m bench.antientropy [--contacts 1000000] [--seconds 30]

Two nodes hold the same N contacts (loaded through shared memory, identical rows), both
synced, no traffic: the CPU each cluster process spends over SECONDS (anti-entropy
rounds, heartbeats, horizons: everything it does when there is nothing to do), as a
share of one core. Then rows are written into node 2 only, bypassing replication (as a
divergence that slipped past it would look): how long until both nodes hold the same
contacts again, and how many ranges and rows anti-entropy exchanged.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

from tests.support.nodes import Node, start_cluster, wait_synced, wait_until  # noqa: E402
from tests.support.writer import Writer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cluster_pid(node: Node) -> int:
    return next(p["PID"] for p in node.mi("ps")["Processes"] if p["Role"] == "cluster")


def stat(node: Node, name: str) -> int:
    return node.mi("get_statistics", statistics=[name])[name]


def run(contacts: int, seconds: float, diverge: int, tmp: pathlib.Path) -> None:
    settings = {"usrloc": {"capacity": int(contacts * 1.1) + 10_000},
                "clusterer": {"seed_fallback_interval_s": 0.5}}
    nodes = start_cluster(tmp, 2, workers=1, settings=settings)
    try:
        wait_synced(nodes)
        for n in nodes:  # the same rows on both (same seed, same versions)
            writer = Writer(n.shm_prefix)
            try:
                writer.load_contacts(contacts, seed=11, version_ms=1_700_000_000_000)
            finally:
                writer.close()
        assert nodes[0].mi("ul_digest") == nodes[1].mi("ul_digest")
        time.sleep(3)
        pids = [cluster_pid(n) for n in nodes]
        before = [cpu_s(p) for p in pids]
        repaired = stat(nodes[1], "clusterer:ae_ranges_repaired")
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        shares = [100 * (cpu_s(p) - b) / elapsed for p, b in zip(pids, before)]
        print(f"{contacts} identical contacts on 2 nodes, idle for {elapsed:.0f} s: cluster "
              f"process CPU {shares[0]:.2f} % and {shares[1]:.2f} % of one core; ranges "
              f"repaired meanwhile: {stat(nodes[1], 'clusterer:ae_ranges_repaired') - repaired}")
        writer = Writer(nodes[1].shm_prefix)
        try:  # rows node 1 never heard of: what anti-entropy is for
            writer.load_contacts(diverge, seed=12)
        finally:
            writer.close()
        diverged = time.monotonic()
        wait_until(lambda: nodes[0].mi("ul_digest") == nodes[1].mi("ul_digest"),
                   timeout=60, what="anti-entropy repair", step=0.01)
        print(f"{diverge} rows written on node 2 only: equal again after "
              f"{time.monotonic() - diverged:.2f} s; ranges exchanged "
              f"{stat(nodes[0], 'clusterer:ae_ranges_repaired') + stat(nodes[1], 'clusterer:ae_ranges_repaired')}, "
              f"rows applied by anti-entropy {stat(nodes[0], 'clusterer:ae_rows_applied')}")
    finally:
        for n in nodes:
            n.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--diverge", type=int, default=1000)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fc-ae-") as tmp:
        run(ns.contacts, ns.seconds, ns.diverge, pathlib.Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
