"""REGISTER load with sipp against a real node: throughput, failures, CPU per REGISTER.

    .venv/bin/python -m bench.load_register [--users 200000] [--workers 8]
        [--dispatch shared|reuseport] [--limit 200] [--rate 0] [--replicas 0]
        [--persistence on|off|both]
        [--auth off|on|both]

--auth on: digest authentication (MD5: sipp 3.6 speaks no SHA-256) with one subscriber per
user in the SQLite database; each sipp call is the register_auth scenario: a REGISTER
challenged (401), the answer and 3 refreshes within the nonce's life (200 each), so 5
REGISTERs and 4 answered 200 per user. --auth both runs the unauthenticated load, then
the authenticated one, in one invocation (fresh node each), and prints them side by side.

Closed loop (sipp -users LIMIT: LIMIT REGISTERs outstanding per sipp, each answer starting
the next; --rate R instead opens R per second up to LIMIT outstanding), unique users,
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
from typing import Any
from concurrent.futures import ThreadPoolExecutor

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fastcluster.core.config import kernel_cache_dir, numba_cache_base  # noqa: E402

os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(numba_cache_base())  # the nodes' rule

from bench.cpu import cpu_seconds  # noqa: E402
from fastcluster.services.sip import subscribers  # noqa: E402
from tests.support import sipp  # noqa: E402
from tests.support.nodes import Node, start_cluster, wait_mapped, wait_until  # noqa: E402

def node_pids(node: Node) -> list[int]:
    return [p["PID"] for p in node.mi("ps")["Processes"]]


def role_pids(node: Node) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in node.mi("ps")["Processes"]:
        out.setdefault(p["Role"], []).append(p["PID"])
    return out


REGISTERS_PER_CALL = {False: 1, True: 5}  # register.xml; register_auth.xml (401 + 4)
OK_PER_CALL = {False: 1, True: 4}  # REGISTERs answered 200 per call


def run(users: int, workers: int, dispatch: str, limit: int, rate: int, replicas: int,
        tmp: pathlib.Path, prefault: str = "start", sipps: int = 1,
        auth: bool = False, persist: bool = True) -> dict[str, float]:
    settings = {"sip": {"dispatch": dispatch}, "usrloc": {"capacity": max(users * 2, 1000)},
                "core": {"log_level": "warning", "shm_prefault": prefault},
                "persistence": {} if persist else {"url": "off"}}
    each = users // sipps
    if auth:
        settings["auth"] = {"enable": "yes", "algorithms": "MD5", "nonce_expiry_s": 3600}

    def provision(node: Node) -> None:
        if auth:
            subscribers.add_users(node.db_path, ((f"load{i}x{j}@example.com", "secret")
                                                 for i in range(sipps) for j in range(each)))

    if replicas:
        nodes = start_cluster(tmp, replicas + 1, workers=workers, settings=settings,
                              before_start=provision)
        for n in nodes:
            wait_until(lambda n=n: len([1 for c in n.mi("clusterer_list")["Clusters"][0]
                                        ["Nodes"] if c["link_state"] == "Up"]) == replicas,
                       what="cluster up", timeout=30)
    else:
        node = Node(tmp, workers=workers, settings=settings)
        provision(node)
        nodes = [node.start()]
    wait_mapped(nodes)  # steady state: the SIP workers' page mapping done

    def load(i: int) -> sipp.SippResult:
        if not auth:
            return sipp.run("register", target, tmp / f"sipp{i}", each, rate=rate,
                            limit=limit, keys={"user": f"load{i}x", "reg_cseq": 1,
                                               "expires": 3600}, timeout_s=600,
                            closed_loop=0 if rate else limit)
        inf = sipp.users_file(tmp / f"users{i}.csv", f"load{i}x", each, "secret")
        return sipp.run("register_auth", target, tmp / f"sipp{i}", each, rate=rate,
                        limit=limit, keys={"expires": 3600}, timeout_s=600,
                        call_ids=f"auth{i}x%u-%p", extra=["-inf", str(inf)],
                        closed_loop=0 if rate else limit)

    try:
        pids = [p for n in nodes for p in node_pids(n)]
        roles = role_pids(nodes[0])
        target = ("127.0.0.1", nodes[0].sip_port)
        cpu0 = cpu_seconds(*pids)
        role0 = {r: cpu_seconds(*ps) for r, ps in roles.items()}
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        with ThreadPoolExecutor(sipps) as pool:
            results = list(pool.map(load, range(sipps)))
        wall = time.monotonic() - started
        calls = sum(r.successful for r in results)
        ok = calls * OK_PER_CALL[auth]
        registers = calls * REGISTERS_PER_CALL[auth]
        failed = sum(r.failed for r in results)
        # aggregate rate: all calls over the longest sipp's own run time
        seconds = max(r.successful / r.rate if r.rate else wall for r in results)
        rate_seen = ok / seconds
        cpu = cpu_seconds(*pids) - cpu0
        by_role = {r: round(cpu_seconds(*ps) - role0[r], 2) for r, ps in roles.items()}
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # sipp: the only children reaped
        sipp_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
        per_node = [cpu_seconds(*node_pids(n)) for n in nodes]
        lag_s = 0.0
        if replicas:
            t0 = time.monotonic()
            wait_until(lambda: all(n.mi("ul_digest")["contacts"] == calls for n in nodes),
                       timeout=60, what="replicas complete", step=0.05)
            lag_s = time.monotonic() - t0
        got = nodes[0].mi("get_statistics", statistics=[
            "usrloc:registered_contacts", "auth:db_lookups", "auth:accepted"])
        return {"ok": ok, "failed": failed, "sipp_rate": rate_seen,
                "registers_per_s": registers / seconds, "registers": registers,
                "wall_s": wall, "cpu_s": cpu, "sipp_cpu_s": sipp_cpu,
                "cpu_us_per_register": cpu / max(registers, 1) * 1e6,
                "cpu_us_per_ok": cpu / max(ok, 1) * 1e6,
                "contacts": got["usrloc:registered_contacts"],
                "db_lookups": got["auth:db_lookups"], "auth_accepted": got["auth:accepted"],
                "replicas_converged_after_s": lag_s, "per_node_cpu_total_s": per_node,
                "cpu_s_by_role": by_role}
    finally:
        for n in nodes:
            n.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--dispatch", choices=("shared", "reuseport"), default="shared")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--rate", type=int, default=0,
                    help="open REGISTERs at this rate up to --limit outstanding (sipp -r "
                         "-l) instead of the closed loop (0)")
    ap.add_argument("--replicas", type=int, default=0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--prefault", choices=("start", "background", "no"),
                    default="start", help="core.shm_prefault")
    ap.add_argument("--sipps", type=int, default=1,
                    help="sipp processes in parallel, users split among them (one sipp "
                         "is single-threaded: ~110k/s against a trivial responder here)")
    ap.add_argument("--auth", choices=("off", "on", "both"), default="off",
                    help="digest authentication (both: unauthenticated then authenticated "
                         "runs, side by side)")
    ap.add_argument("--persistence", choices=("off", "on", "both"), default="on",
                    help="write-behind to the embedded SQLite database (both: without, "
                         "then with, side by side)")
    ns = ap.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}
    for i in range(ns.runs):
        for auth in modes[ns.auth]:
            for persist in modes[ns.persistence]:
                r = _one(ns, auth, persist)
                _report(ns, i, auth, persist, r)
    return 0


def _one(ns: argparse.Namespace, auth: bool, persist: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        return run(ns.users, ns.workers, ns.dispatch, ns.limit, ns.rate, ns.replicas,
                   pathlib.Path(d), ns.prefault, ns.sipps, auth, persist)


def _report(ns: argparse.Namespace, i: int, auth: bool, persist: bool,
            r: dict[str, Any]) -> None:
    label = ("auth " if auth else "plain") + (", db on" if persist else ", db off")
    extra = (f" ({r['registers_per_s']:.0f} REGISTER/s with the 401s; "
             f"{r['cpu_us_per_ok']:.1f} us per 200; SQLite lookups "
             f"{r['db_lookups']})" if auth else "")
    print(f"run {i + 1} {label}: {r['ok']} answered 200, {r['failed']} failed calls, "
          f"{r['sipp_rate']:.0f} REGISTER/s answered 200 (sipp), wall "
          f"{r['wall_s']:.1f} s, node CPU {r['cpu_s']:.1f} s = "
          f"{r['cpu_us_per_register']:.1f} us/REGISTER{extra}, sipp CPU "
          f"{r['sipp_cpu_s']:.1f} s ({r['sipp_cpu_s'] / r['wall_s']:.0%} of a core), "
          f"contacts {r['contacts']}, node CPU by role {r['cpu_s_by_role']}"
          + (f", replicas equal {r['replicas_converged_after_s']:.2f} s after sipp"
             if ns.replicas else ""), flush=True)

if __name__ == "__main__":
    sys.exit(main())
