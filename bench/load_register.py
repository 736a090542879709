"""REGISTER load with sipp against a real node: throughput, failures, CPU per REGISTER.

    .venv/bin/python -m bench.load_register [--users 200000] [--workers 8]
        [--dispatch shared|reuseport] [--limit 200] [--rate 60000] [--replicas 0]

Closed loop (sipp -l LIMIT: at most LIMIT REGISTERs outstanding per sipp), unique users,
on this machine with sipp included; --sipps N splits the users over N sipp processes. CPU per REGISTER is the CPU time (user + system) of every
process of the node(s) during the run, divided by the REGISTERs answered; sipp's own CPU
is printed apart. --replicas N starts N more nodes that replicate the contacts (issue 5).
"""
from __future__ import annotations

import argparse
import os
import resource
import pathlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

from bench.cpu import cpu_seconds  # noqa: E402
from tests.support import sipp  # noqa: E402
from tests.support.nodes import Node, start_cluster, wait_until  # noqa: E402

def node_pids(node: Node) -> list[int]:
    return [p["PID"] for p in node.mi("ps")["Processes"]]


def run(users: int, workers: int, dispatch: str, limit: int, rate: int, replicas: int,
        tmp: pathlib.Path, prefault: str = "start", sipps: int = 1) -> dict[str, float]:
    settings = {"sip": {"dispatch": dispatch}, "usrloc": {"capacity": max(users * 2, 1000)},
                "core": {"log_level": "warning", "shm_prefault": prefault}}
    if replicas:
        nodes = start_cluster(tmp, replicas + 1, workers=workers, settings=settings)
        for n in nodes:
            wait_until(lambda n=n: len([1 for c in n.mi("clusterer_list")["Clusters"][0]
                                        ["Nodes"] if c["link_state"] == "Up"]) == replicas,
                       what="cluster up", timeout=30)
    else:
        nodes = [Node(tmp, workers=workers, settings=settings).start()]
    try:
        pids = [p for n in nodes for p in node_pids(n)]
        target = ("127.0.0.1", nodes[0].sip_port)
        cpu0 = cpu_seconds(*pids)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        each = users // sipps
        with ThreadPoolExecutor(sipps) as pool:
            results = list(pool.map(
                lambda i: sipp.run("register", target, tmp / f"sipp{i}", each, rate=rate,
                                   limit=limit, keys={"user": f"load{i}x", "reg_cseq": 1,
                                                      "expires": 3600}, timeout_s=600),
                range(sipps)))
        wall = time.monotonic() - started
        ok = sum(r.successful for r in results)
        failed = sum(r.failed for r in results)
        # aggregate rate: all REGISTERs over the longest sipp's own run time
        rate_seen = ok / max(r.successful / r.rate if r.rate else wall for r in results)
        cpu = cpu_seconds(*pids) - cpu0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # sipp: the only children reaped
        sipp_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
        per_node = [cpu_seconds(*node_pids(n)) for n in nodes]
        lag_s = 0.0
        if replicas:
            t0 = time.monotonic()
            wait_until(lambda: all(n.mi("ul_digest")["contacts"] == ok for n in nodes),
                       timeout=60, what="replicas complete", step=0.05)
            lag_s = time.monotonic() - t0
        contacts = nodes[0].mi("get_statistics", statistics=["usrloc:registered_contacts"])
        return {"ok": ok, "failed": failed, "sipp_rate": rate_seen,
                "wall_s": wall, "cpu_s": cpu, "sipp_cpu_s": sipp_cpu,
                "cpu_us_per_register": cpu / max(ok, 1) * 1e6,
                "contacts": contacts["usrloc:registered_contacts"],
                "replicas_converged_after_s": lag_s, "per_node_cpu_total_s": per_node}
    finally:
        for n in nodes:
            n.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--dispatch", choices=("shared", "reuseport"), default="shared")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--rate", type=int, default=60_000)
    ap.add_argument("--replicas", type=int, default=0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--prefault", choices=("start", "background", "no"),
                    default="start", help="core.shm_prefault")
    ap.add_argument("--sipps", type=int, default=1,
                    help="sipp processes in parallel, users split among them (one sipp "
                         "is single-threaded and becomes the ceiling near 20k/s here)")
    ns = ap.parse_args()
    for i in range(ns.runs):
        with tempfile.TemporaryDirectory() as d:
            r = run(ns.users, ns.workers, ns.dispatch, ns.limit, ns.rate, ns.replicas,
                    pathlib.Path(d), ns.prefault, ns.sipps)
        print(f"run {i + 1}: {r['ok']} ok, {r['failed']} failed, "
              f"{r['sipp_rate']:.0f} REGISTER/s (sipp), wall {r['wall_s']:.1f} s, "
              f"node CPU {r['cpu_s']:.1f} s = {r['cpu_us_per_register']:.1f} us/REGISTER, "
              f"sipp CPU {r['sipp_cpu_s']:.1f} s ({r['sipp_cpu_s'] / r['wall_s']:.0%} of a core), "
              f"contacts {r['contacts']}"
              + (f", replicas equal {r['replicas_converged_after_s']:.2f} s after sipp"
                 if ns.replicas else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
