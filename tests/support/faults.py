"""Fault cases for the guarantee "nothing acknowledged is ever lost": three real nodes in
network namespaces with the README's layout (node 1 has no seeds, nodes 2 and 3 name
node 1), REGISTER load from tests.support.loadgen recording what every client was told,
a fault, then the check -- every node converges (equal digests) and holds exactly what
the clients were told: no registration lost, no removal resurrected.

The same cases run short in CI (tests/fault/test_faults.py) and long, repeated, with
more load (`python -m bench.faults`). Each case takes a `Scale` (seconds of fault,
REGISTER rate) and returns an `Outcome`.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.support import leaks
from tests.support.loadgen import Loadgen, Report, live_bindings
from tests.support.netns import Network
from tests.support.nodes import Node, wait_until

SETTINGS = {
    "core": {"child_timeout_s": 3},
    "usrloc": {"capacity": 50_000},
    "dialog": {"capacity": 1_000},
    "clusterer": {"seed_fallback_interval_s": 1},
}


@dataclass(frozen=True)
class Scale:
    fault_s: float  # how long the fault lasts
    rate: float  # REGISTER transactions per second during the case
    users: int = 300


CI = Scale(fault_s=4.0, rate=300)
NIGHTLY = Scale(fault_s=20.0, rate=1500, users=2000)


@dataclass
class Outcome:
    case: str
    report: Report
    converged_s: float  # from the end of the fault to equal digests on every node
    note: str = ""

    def line(self) -> str:
        return (f"{self.case:28s} {'OK  ' if self.report.ok else 'FAIL'} converged in "
                f"{self.converged_s:5.2f} s; {self.report.line()} {self.note}")


class FaultCluster:
    def __init__(self, tmp: pathlib.Path, scale: Scale, settings: dict | None = None) -> None:
        self.scale = scale
        self.net = Network(3)
        merged = {k: dict(v) for k, v in SETTINGS.items()}
        for section, values in (settings or {}).items():
            merged.setdefault(section, {}).update(values)
        try:
            self.nodes = {i: Node(tmp, node_id=i, workers=2, settings=merged,
                                  bin_host=self.net.ip(i), netns=self.net.names[i])
                          for i in (1, 2, 3)}
            for n in self.nodes.values():
                n.diagnose = self.net.diagnostics
            for i in (2, 3):
                self.nodes[i].settings["clusterer"]["seeds"] = self.nodes[1].bin_addr
                self.nodes[i].write_ini()
            for n in self.nodes.values():
                n.start(wait=False)
            for n in self.nodes.values():
                n.wait_ready()
            self.wait_synced()
        except BaseException:
            self.close()
            raise
        self.gen = Loadgen(self.targets(), users=scale.users,
                           bind=(self.net.gateway, 0), seed=int(time.time()))

    def targets(self, nodes: Iterator[int] | None = None) -> list[tuple[str, int]]:
        return [(self.nodes[i].host, self.nodes[i].sip_port)
                for i in (nodes if nodes is not None else self.nodes)]

    def close(self) -> None:
        for n in getattr(self, "nodes", {}).values():
            with contextlib.suppress(Exception):
                n.stop()
        self.net.close()

    # ---------------------------------------------------------------- helpers

    def wait_synced(self, nodes: list[int] | None = None, timeout: float = 60) -> None:
        for i in nodes or list(self.nodes):
            n = self.nodes[i]
            wait_until(lambda n=n: all(c["state"] == "synced" for c in _caps(n)),
                       timeout=timeout, what=f"node {i} synced")

    def cluster_pid(self, node: int) -> int:
        return next(p["PID"] for p in self.nodes[node].mi("ps")["Processes"]
                    if p["Role"] == "cluster")

    def converge(self, timeout: float = 60) -> float:
        """Seconds until every node holds the same live contacts (digests equal)."""
        started = time.monotonic()
        wait_until(lambda: len({json.dumps(n.mi("ul_digest")) for n in
                                self.nodes.values()}) == 1,
                   timeout=timeout, what="equal digests on every node", step=0.05)
        return time.monotonic() - started

    def run(self, case: str, fault: Callable[[], str | None]) -> Outcome:
        """Load for a second, then the fault under load (it returns a note). When the
        fault ends no new transaction starts; the ones under way end (answered or timed
        out), then the check: seconds from the end of the fault until every node holds
        the same contacts, and what each holds against what the clients were told."""
        self.gen.start(self.scale.rate)
        time.sleep(1.0)
        note = fault() or ""
        ended = time.monotonic()
        self.gen.stop()
        self.converge()
        converged = time.monotonic() - ended
        self.wait_synced()
        live = {i: live_bindings(n.mi("ul_dump")) for i, n in self.nodes.items()}
        return Outcome(case, self.gen.verify(live), converged, note)

    def restart(self, node: int, graceful: bool = True) -> None:
        """Stop a node (SIGTERM or SIGKILL of its master) and start it again; the load
        avoids it meanwhile."""
        n = self.nodes[node]
        self.gen.set_targets(self.targets(i for i in self.nodes if i != node))
        if graceful:
            assert n.stop() == 0
        else:
            kids = n.children()
            n.kill9()
            wait_until(lambda: not any(leaks.alive(k) for k in kids), what="children gone")
        n.start()
        self.wait_synced([node])
        self.gen.set_targets(self.targets())


def _caps(node: Node) -> list[dict]:
    return [cap for c in node.mi("clusterer_list_cap")["Clusters"] for cap in c["Capabilities"]]


# ---------------------------------------------------------------- the cases


def partial_partition(fc: FaultCluster) -> str:
    fc.net.cut(1, 3)  # 1 and 3 still reach each other through 2
    time.sleep(fc.scale.fault_s)
    fc.net.heal()
    return ""


def one_way_partition(fc: FaultCluster) -> str:
    fc.net.cut(1, 3, one_way=True)
    time.sleep(fc.scale.fault_s)
    fc.net.heal()
    return ""


def flapping_link(fc: FaultCluster) -> str:
    end = time.monotonic() + fc.scale.fault_s
    while time.monotonic() < end:
        fc.net.cut(1, 3)
        time.sleep(0.4)
        fc.net.heal()
        time.sleep(0.4)
    return ""


def long_partition(fc: FaultCluster) -> str:
    """Node 3 cut off from both others longer than usrloc.tombstone_ttl_s (the case is
    run with a short one): removals on either side must not come back."""
    fc.net.isolate(3)
    time.sleep(fc.scale.fault_s)
    fc.net.heal()
    return ""


def freeze_cluster_process(fc: FaultCluster) -> str:
    pid = fc.cluster_pid(2)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(min(fc.scale.fault_s, 2.0))  # below core.child_timeout_s
    os.kill(pid, signal.SIGCONT)
    return ""


def freeze_past_the_watchdog(fc: FaultCluster) -> str:
    pid = fc.cluster_pid(2)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(max(fc.scale.fault_s, 5.0))  # past core.child_timeout_s: killed, respawned
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: fc.cluster_pid(2) != pid, timeout=20, what="a new cluster process")
    return ""


def kill_cluster_process(fc: FaultCluster) -> str:
    for _ in range(2):
        pid = fc.cluster_pid(2)
        leaks.register(pid)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: fc.cluster_pid(2) != pid, timeout=20, what="respawned")
        time.sleep(fc.scale.fault_s / 2)
    return ""


def kill_master(fc: FaultCluster) -> str:
    fc.restart(2, graceful=False)
    return ""


def rolling_restart(fc: FaultCluster) -> str:
    for node in (1, 2, 3):  # through the seed first
        fc.restart(node)
        time.sleep(fc.scale.fault_s / 3)
    return ""


def seed_restart(fc: FaultCluster) -> str:
    fc.restart(1)
    return ""


def heavy_mi(fc: FaultCluster) -> str:
    """Batches of cheap commands and whole-table dumps at node 1 during the load: no
    node may see another as down because of them."""
    batch = [{"jsonrpc": "2.0", "method": m, "id": i} for i, m in
             enumerate(["get_statistics", "clusterer_list", "ul_digest", "ps"] * 25)]
    stop = time.monotonic() + fc.scale.fault_s
    calls = 0
    while time.monotonic() < stop:
        fc.nodes[1].post(batch)
        fc.nodes[1].mi("ul_dump")
        calls += 101
    down = sum(n.mi("get_statistics", statistics=["clusterer:node_down_events"])
               ["clusterer:node_down_events"] for n in fc.nodes.values())
    assert down == 0, f"{down} node down events during the MI load"
    return f"({calls} MI calls, no node seen down)"


CASES: dict[str, tuple[Callable[[FaultCluster], str], dict]] = {
    "partial partition 1-3": (partial_partition, {}),
    "one-way partition 1->3": (one_way_partition, {}),
    "flapping link 1-3": (flapping_link, {}),
    "partition > tombstone ttl": (long_partition, {"usrloc": {"tombstone_ttl_s": 1}}),
    "cluster process frozen": (freeze_cluster_process, {}),
    "frozen past the watchdog": (freeze_past_the_watchdog, {}),
    "cluster process killed x2": (kill_cluster_process, {}),
    "master killed": (kill_master, {}),
    "rolling restart 1,2,3": (rolling_restart, {}),
    "seed restarted alone": (seed_restart, {}),
    "MI batches during load": (heavy_mi, {}),
}


def run_case(tmp: pathlib.Path, name: str, scale: Scale) -> Outcome:
    fault, settings = CASES[name]
    fc = FaultCluster(tmp, scale, settings)
    try:
        return fc.run(name, lambda: fault(fc))
    finally:
        fc.close()
