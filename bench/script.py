"""Script-level cluster messages between two idle nodes: request/reply round trip and
one-way throughput, measured inside the script process through the script API.

    .venv/bin/python -m bench.script [--rtt 5000] [--oneway 200000] [--size 16]

Both nodes run bench/scripts/pingpong.py. Round trip: node 1's script calls request()
to node 2 one at a time (its script answers from on_request with cluster_send_rpl);
printed are the percentiles of those calls. One-way: node 1's script sends N requests
with cluster_send_req as fast as it can; node 2's on_request counts them; the rate is
N over the time from the first send to the last arrival (CLOCK_MONOTONIC is shared by
the processes of one machine). Targets (issue 7): p50 <= 0.5 ms, p99 <= 2 ms; one-way
>= 50,000 messages/s. The two nodes, their cluster processes and scripts share this
machine's cores.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fastcluster.core.config import kernel_cache_dir, numba_cache_base  # noqa: E402

os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(numba_cache_base())  # the nodes' rule

from bench.cpu import cpu_seconds  # noqa: E402
from tests.support.nodes import start_cluster, wait_until  # noqa: E402

SCRIPT = str(REPO / "bench" / "scripts" / "pingpong.py")


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", type=int, default=5000, help="round trips")
    ap.add_argument("--oneway", type=int, default=200_000, help="one-way messages")
    ap.add_argument("--size", type=int, default=16, help="payload bytes")
    ap.add_argument("--runs", type=int, default=3, help="one-way runs")
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="fc-script-"))
    nodes = start_cluster(tmp, 2, settings={"script": {"module": SCRIPT}})
    a, b = nodes
    try:
        wait_until(lambda: a.mi("bench_rtt", node=2, count=1)["lost"] == 0, timeout=20,
                   what="node 2 answering")
        a.mi("bench_rtt", node=2, count=500, size=args.size)  # warm-up
        lat = sorted(a.mi("bench_rtt", node=2, count=args.rtt, size=args.size)
                     ["latencies_us"])
        print(f"round trip, {args.rtt:,} request()/reply of {args.size} B, one at a time: "
              f"p50 {percentile(lat, 0.5) / 1e3:.3f} ms, p90 {percentile(lat, 0.9) / 1e3:.3f}"
              f" ms, p99 {percentile(lat, 0.99) / 1e3:.3f} ms, max {lat[-1] / 1e3:.3f} ms, "
              f"mean {statistics.fmean(lat) / 1e3:.3f} ms (targets p50 <= 0.5, p99 <= 2)")

        pids = {f"{n.node_id}:{p['Role']}": p["PID"] for n in nodes
                for p in n.mi("ps")["Processes"] if p["Role"] in ("cluster", "script")}
        for run in range(args.runs):
            b.mi("bench_received", reset=1)
            cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
            sent = a.mi("bench_send", node=2, count=args.oneway, size=args.size)
            got = wait_until(lambda: (r := b.mi("bench_received"))["count"] >= sent["sent"]
                             and r, timeout=120, step=0.05, what="every message at node 2")
            cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
            elapsed = got["last"] - sent["t0"]
            print(f"one-way run {run + 1}: {sent['sent']:,} messages of {args.size} B in "
                  f"{elapsed:.3f} s = {sent['sent'] / elapsed:,.0f}/s (target >= 50,000/s; "
                  f"the sender's API took {sent['t1'] - sent['t0']:.3f} s); CPU us/message: "
                  + ", ".join(f"{k} {v / sent['sent'] * 1e6:.1f}" for k, v in cpu.items()))
    finally:
        for n in nodes:
            n.stop()


if __name__ == "__main__":
    main()
