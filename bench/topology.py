"""Topology figures with real nodes on loopback (default timing preset, LAN).

    .venv/bin/python -m bench.topology detect [--trials 20] [--nodes 4]
    .venv/bin/python -m bench.topology false-downs [--seconds 60] [--hogs 4]
    .venv/bin/python -m bench.topology mesh [--nodes 5] [--rounds 3]

detect: kill -9 one node, time until every survivor reports it Down (polled every
5 ms); restart it; repeat. false-downs: saturate both cores with busy processes and
count any node reported not Up. mesh: start N nodes at once, all joining through one
seed; time until every node sees every other one Up over a direct link.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fastcluster.core.config import kernel_cache_dir, numba_cache_base  # noqa: E402

os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(numba_cache_base())  # the nodes' rule

from tests.support.nodes import Node, cluster_view, start_cluster, wait_until  # noqa: E402

POLL_S = 0.005


def full_mesh(nodes: list[Node]) -> bool:
    ids = {n.node_id for n in nodes}
    for n in nodes:
        view = cluster_view(n)
        if {i for i, (state, direct, _) in view.items() if state == "Up" and direct == "Up"} \
                != ids - {n.node_id}:
            return False
    return True


def detect(trials: int, count: int, tmp: pathlib.Path) -> None:
    nodes = start_cluster(tmp, count, settings={"core": {"log_level": "warning"}})
    times: list[float] = []
    try:
        wait_until(lambda: full_mesh(nodes), timeout=30, what="mesh")
        for trial in range(trials):
            victim = nodes[1 + trial % (count - 1)]  # never the seed
            survivors = [n for n in nodes if n is not victim]
            seen: dict[int, float] = {}
            stop = threading.Event()

            def watch(n: Node) -> None:
                while not stop.is_set():
                    try:
                        if cluster_view(n)[victim.node_id][0] == "Down":
                            seen[n.node_id] = time.monotonic()
                            return
                    except Exception:
                        pass
                    time.sleep(POLL_S)

            threads = [threading.Thread(target=watch, args=(n,)) for n in survivors]
            for t in threads:
                t.start()
            killed = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            for t in threads:
                t.join(10)
            stop.set()
            victim.wait_exit(10)
            worst = max(seen.values()) - killed if len(seen) == len(survivors) else float("inf")
            times.append(worst)
            print(f"trial {trial + 1}: node {victim.node_id} Down on all "
                  f"{len(survivors)} survivors after {worst * 1000:.0f} ms", flush=True)
            victim.start()
            wait_until(lambda: full_mesh(nodes), timeout=30, what="mesh again")
    finally:
        for n in nodes:
            n.stop()
    print(f"kill -9 -> Down on every survivor, {len(times)} trials: median "
          f"{statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms, "
          f"min {min(times) * 1000:.0f} ms")


def false_downs(seconds: int, hogs: int, tmp: pathlib.Path) -> None:
    nodes = start_cluster(tmp, 3, settings={"core": {"log_level": "warning"}})
    procs: list[subprocess.Popen] = []
    bad = 0
    samples = 0
    try:
        wait_until(lambda: full_mesh(nodes), timeout=30, what="mesh")
        before = [n.mi("get_statistics", statistics=["clusterer:node_down_events"])
                  ["clusterer:node_down_events"] for n in nodes]
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                 for _ in range(hogs)]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for n in nodes:
                view = cluster_view(n)
                samples += 1
                if any(state != "Up" for state, _, _ in view.values()):
                    bad += 1
                    print(f"node {n.node_id} sees {view}", flush=True)
            time.sleep(0.25)
        after = [n.mi("get_statistics", statistics=["clusterer:node_down_events"])
                 ["clusterer:node_down_events"] for n in nodes]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for n in nodes:
            n.stop()
    events = sum(a - b for a, b in zip(after, before))
    print(f"{seconds} s with {hogs} busy processes on {os.cpu_count()} cores: "
          f"{bad} samples of {samples} showed a node not Up, {events} node-down events")


def mesh(count: int, rounds: int, tmp: pathlib.Path) -> None:
    for r in range(rounds):
        nodes = [Node(tmp / f"r{r}", node_id=i + 1, workers=1,
                      settings={"core": {"log_level": "warning"}}) for i in range(count)]
        for n in nodes[1:]:
            n.settings["clusterer"]["seeds"] = nodes[0].bin_addr
            n.write_ini()
        try:
            for n in nodes:
                n.start(wait=False)
            last_exec = time.monotonic()
            for n in nodes:
                n.wait_ready()
            last_ready = time.monotonic()
            wait_until(lambda: full_mesh(nodes), timeout=30, what="mesh", step=POLL_S)
            done = time.monotonic()
            print(f"round {r + 1}: {count} nodes: full mesh {done - last_exec:.2f} s after "
                  f"the last exec, {(done - last_ready) * 1000:.0f} ms after the last node "
                  f"answered its MI", flush=True)
        finally:
            for n in nodes:
                n.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("detect")
    d.add_argument("--trials", type=int, default=20)
    d.add_argument("--nodes", type=int, default=4)
    f = sub.add_parser("false-downs")
    f.add_argument("--seconds", type=int, default=60)
    f.add_argument("--hogs", type=int, default=4)
    m = sub.add_parser("mesh")
    m.add_argument("--nodes", type=int, default=5)
    m.add_argument("--rounds", type=int, default=3)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if ns.what == "detect":
            detect(ns.trials, ns.nodes, pathlib.Path(tmp))
        elif ns.what == "false-downs":
            false_downs(ns.seconds, ns.hogs, pathlib.Path(tmp))
        else:
            mesh(ns.nodes, ns.rounds, pathlib.Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
