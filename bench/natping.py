"""NAT pinging throughput of one node: OPTIONS sent per second, and what they cost.

    .venv/bin/python -m bench.natping [--contacts 1000000] [--interval 30] [--cycles 2]

One node holds N NAT-ed contacts (loaded through shared memory) whose received address
is a UDP sink in a separate process; the node pings every contact once per interval,
spread over the interval. Printed: pings the sink received per second over whole
cycles, the node's nathelper statistics (sent, cycles, ticks that overran), and the
timer process's CPU time per ping. Target (issue 6): >= 30,000 pings/s by one node
(1M contacts every 30 s).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import socket
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fastcluster.core.config import kernel_cache_dir, numba_cache_base  # noqa: E402

os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(numba_cache_base())  # the nodes' rule

from tests.support import leaks  # noqa: E402
from bench.cpu import cpu_seconds  # noqa: E402
from tests.support.nodes import Node, wait_synced, wait_until  # noqa: E402
from tests.support.writer import Writer  # noqa: E402


def sink(sock: socket.socket, counts, stop, start: float) -> None:
    """Count datagrams per 100 ms bucket since `start` (CLOCK_MONOTONIC, shared by all
    processes) in counts, a shared array."""
    sock.settimeout(0.1)
    recv = sock.recv_into
    buf = bytearray(2048)
    n = len(counts)
    while not stop.is_set():
        try:
            recv(buf)
        except socket.timeout:
            continue
        i = int((time.monotonic() - start) * 10)
        if i < n:
            counts[i] += 1



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--interval", type=int, default=30)
    ap.add_argument("--cycles", type=int, default=2)
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="fc-natping-"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    sock.bind(("127.0.0.1", 0))
    seconds = args.interval * (args.cycles + 2)
    counts = multiprocessing.Array("l", seconds * 10, lock=False)
    stop = multiprocessing.Event()
    start = time.monotonic()
    proc = multiprocessing.Process(target=sink, args=(sock, counts, stop, start),
                                   daemon=True)
    node = Node(tmp, workers=1, settings={
        "usrloc": {"capacity": int(args.contacts * 1.1) + 1000,
                   "natping_interval_s": args.interval},
        "clusterer": {"seed_fallback_interval_s": 0.5}})
    try:
        proc.start()
        leaks.register(proc.pid)
        node.start()
        wait_synced([node])
        timer = next(p["PID"] for p in node.mi("ps")["Processes"] if p["Role"] == "timer")
        writer = Writer(node.shm_prefix)
        try:
            writer.load_contacts(args.contacts, seed=3, origin=1,
                                 received=sock.getsockname())
        finally:
            writer.close()
        loaded = time.monotonic()
        print(f"{args.contacts:,} NAT-ed contacts loaded; pinging every {args.interval} s")

        def cycles() -> int:
            return node.mi("ul_ping_partitions")["last_cycle"]["cycles"]

        first = cycles()
        wait_until(lambda: cycles() > first, timeout=args.interval * 2, what="a cycle end")
        start_cycles, start_cpu, t0 = cycles(), cpu_seconds(timer), time.monotonic()
        s0 = node.mi("get_statistics", statistics=["nathelper:"])
        wait_until(lambda: cycles() >= start_cycles + args.cycles,
                   timeout=args.interval * (args.cycles + 1), step=0.05, what="cycles")
        t1, cpu = time.monotonic(), cpu_seconds(timer) - start_cpu
        s1 = node.mi("get_statistics", statistics=["nathelper:"])
        sent = s1["nathelper:pings_sent"] - s0["nathelper:pings_sent"]
        time.sleep(0.3)
        stop.set()
        proc.join(5)
        buckets = list(counts)
        window = buckets[int((t0 - start) * 10):int((t1 - start) * 10)]
        seconds = [sum(window[i:i + 10]) for i in range(0, len(window) - 9, 10)]
        elapsed = t1 - t0
        per_s = sent / elapsed
        print(f"{args.cycles} cycles in {elapsed:.2f} s: {sent:,} pings sent = {per_s:,.0f}/s "
              f"(target >= 30,000/s); the sink received {sum(window) / elapsed:,.0f}/s, "
              f"each second between {min(seconds):,} and {max(seconds):,}")
        print(f"timer CPU: {cpu:.2f} s = {cpu / max(sent, 1) * 1e6:.1f} us per ping "
              f"({cpu / elapsed:.0%} of a core)")
        delta = {k: s1[k] - s0[k] for k in s1}
        print(f"ticks that overran: {delta['nathelper:ticks_overrun']}, send errors: "
              f"{delta['nathelper:send_errors']}; measured from {t0 - loaded:.1f} s after "
              f"the load")
    finally:
        stop.set()
        node.stop()
        if proc.is_alive():
            proc.terminate()
        proc.join(5)
        sock.close()


if __name__ == "__main__":
    main()
