"""Calls through a stateful proxy with sipp (INVITE/100/180/200/ACK/BYE/200): calls/s,
failed calls and CPU per call, for fastcluster and Kamailio 5.6 side by side in one run;
and call setup latency at a fixed rate, through the proxy and direct.

    .venv/bin/python -m bench.load_calls [--calls 30000] [--rate 20000] [--limit 300]
        [--workers 8] [--dispatch reuseport] [--only fastcluster|kamailio] [--runs 1]
    .venv/bin/python -m bench.load_calls --latency [--calls 3000] [--rate 100]

Load: one sipp UAC and one sipp UAS on this machine, the UAS registered through the
proxy as bob@example.com (the proxy looks it up for every call). Closed loop by default
(sipp -users LIMIT: LIMIT calls in progress, each ended call starting the next); `--open`
runs at exactly --rate instead. CPU per call is the CPU time (user + system) of every
process of the proxy during the run (fastcluster: master, workers, cluster, timer;
Kamailio: all its processes) over the calls answered; sipp's own CPU is printed apart,
with the share of a core it used: near 100 % means sipp, not the proxy, set the pace. Kamailio runs with
`-x tlsf` (its faster allocator) and the config in bench/kamailio/proxy.cfg.in (tm,
registrar lookup, record_route, dialog with one profile, 2 children). Latency: INVITE to
200 OK measured by a scripted caller with a scripted callee (tests/support/pyuas.py;
sipp's response times are whole milliseconds), one call at a time at --rate, p50 and p99,
through the proxy minus direct (caller -> callee). Figures on a shared 2-core VM are noisy: compare within one run.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

from bench.cpu import cpu_seconds  # noqa: E402
from bench.latency import percentile  # noqa: E402
from tests.support import leaks, sipp  # noqa: E402
from tests.support.nodes import Node, free_port, wait_mapped  # noqa: E402
from tests.support.pyuas import PyUac, PyUas  # noqa: E402

DOMAIN = "example.com"
CALLEE = "bob"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
# A proxy whose processes share one UDP socket (Kamailio's children; fastcluster with
# sip.dispatch = shared) may send a call's 180 after its 200: two processes took the two
# replies and the one with the 200 sent first. A UA drops such a 180 (its INVITE
# transaction ended with the 200) and the call goes on; sipp by default aborts the call
# ("unexpected message") and counted about a quarter of Kamailio+DMQ's calls failed for it. The
# caller goes on past unexpected messages instead (a call that really misses a message
# still fails, on its recv timeout) and the bench prints what it went past (-trace_err).
TOLERATE_LATE_1XX = ["-default_behaviors", "all,-abortunexp"]


class Proxy:
    name = "proxy"
    port = 0

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Fastcluster(Proxy):
    name = "fastcluster"

    def __init__(self, tmp: pathlib.Path, workers: int, dispatch: str, transactions: int,
                 track: str = "all") -> None:
        self.node = Node(tmp, workers=workers, settings={
            "core": {"log_level": "warning"}, "sip": {"dispatch": dispatch},
            "proxy": {"transactions": transactions},
            # ended dialogs stay dialog.tombstone_ttl_s: room for a whole run's calls
            "dialog": {"track": track, "capacity": 1_000_000}}).start()
        wait_mapped([self.node])  # steady state: the workers' page mapping done
        self.port = self.node.sip_port
        self.label = f"fastcluster -w {workers} ({dispatch}, dialog.track = {track})"

    def pids(self) -> list[int]:
        return [p["PID"] for p in self.node.mi("ps")["Processes"]]

    def stats(self) -> dict[str, int]:
        return self.node.mi("get_statistics", statistics=["tm:", "proxy:"])

    def stop(self) -> None:
        self.node.stop()


class Kamailio(Proxy):
    name = "kamailio"

    def __init__(self, tmp: pathlib.Path, config: str = "proxy", children: int = 2) -> None:
        """config: bench/kamailio/<config>.cfg.in (proxy; registrar for the REGISTER
        comparisons in bench.sip_profile)."""
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        self.port = free_port(socket.SOCK_DGRAM)
        cfg = tmp / "kamailio.cfg"
        cfg.write_text((REPO / "bench" / "kamailio" / f"{config}.cfg.in").read_text()
                       .replace("{port}", str(self.port)).replace("{mpath}", KAMAILIO_MODULES)
                       .replace("{children}", str(children)))
        self.log = open(tmp / "kamailio.log", "wb")
        self.proc = subprocess.Popen([binary, "-f", str(cfg), "-x", "tlsf", "-DD", "-E",
                                      "-m", "1024", "-M", "16", "-w", str(tmp)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        leaks.register(self.proc.pid)
        self.label = f"kamailio 5.6 -x tlsf ({children} children)"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited: {(tmp / 'kamailio.log').read_text()}")
            if len(leaks.children_of(self.proc.pid)) >= children + 1:
                time.sleep(0.5)
                return
            time.sleep(0.1)
        raise RuntimeError("kamailio did not start")

    def pids(self) -> list[int]:
        return [self.proc.pid] + leaks.children_of(self.proc.pid)

    def stats(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def start_uas(tmp: pathlib.Path, port: int, calls: int, timeout_s: int) -> subprocess.Popen:
    proc = subprocess.Popen(["sipp", "-sf", str(sipp.SCENARIOS / "uas.xml"), "-i", "127.0.0.1",
                             "-p", str(port), "-nostdin", "-m", str(calls), "-timeout",
                             f"{timeout_s}s", "-buff_size", str(sipp.CLIENT_RCVBUF)], cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    leaks.register(proc.pid)
    time.sleep(0.3)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def register_callee(target: tuple[str, int], tmp: pathlib.Path, uport: int) -> None:
    r = sipp.run("register_user", target, tmp, 1, call_ids="reg-%u",
                 keys={"user": CALLEE, "domain": DOMAIN, "expires": 3600, "q": "1.0",
                       "contact_host": "127.0.0.1"}, local_port=uport)
    if r.successful != 1:
        raise RuntimeError(f"REGISTER through the proxy failed:\n{r.stdout}")


def run_load(proxy: Proxy, tmp: pathlib.Path, calls: int, rate: int, limit: int,
             open_loop: bool, hold_ms: int) -> dict[str, float]:
    target = ("127.0.0.1", proxy.port)
    uport = free_port(socket.SOCK_DGRAM)
    register_callee(target, tmp, uport)
    uas = start_uas(tmp, uport, calls, 600)
    try:
        pids = proxy.pids()
        cpu0 = cpu_seconds(*pids)
        uas0 = cpu_seconds(uas.pid)
        kids0 = _children_cpu()
        started = time.monotonic()
        r = sipp.run("uac", target, tmp, calls, rate=rate, limit=calls, timeout_s=600,
                     closed_loop=0 if open_loop else limit,
                     keys={"callee": CALLEE, "domain": DOMAIN}, call_ids="c%u-%p",
                     extra=["-d", str(hold_ms), "-trace_err",
                            *TOLERATE_LATE_1XX])
        wall = time.monotonic() - started
        cpu = cpu_seconds(*pids) - cpu0
        uas_cpu = cpu_seconds(uas.pid) - uas0
        uac_cpu = _children_cpu() - kids0  # sipp.run reaped the UAC
    finally:
        stop(uas)
    unexpected = r.unexpected()
    late_1xx = sum(n for what, n in unexpected.items() if what in ("100", "180"))
    return {"ok": r.successful, "failed": r.failed, "rate": r.rate, "wall": wall,
            "cpu": cpu, "us_per_call": cpu / max(r.successful, 1) * 1e6,
            "uac_cpu": uac_cpu, "uas_cpu": uas_cpu, "late_1xx": late_1xx,
            "other_unexpected": {k: v for k, v in unexpected.items()
                                 if k not in ("100", "180")}}


def unexpected_note(r: dict[str, object]) -> str:
    """The caller's view of messages it went on past: a 180 after the 200 is the
    proxy's reordering (harmless to a real UA), anything else is worth a look."""
    note = f"; {r['late_1xx']} late 1xx ignored" if r["late_1xx"] else ""
    if r["other_unexpected"]:
        note += f"; OTHER unexpected messages {dict(r['other_unexpected'])}"
    return note


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_latency(proxy: Proxy | None, calls: int, rate: int) -> dict[str, float]:
    """INVITE -> 200 OK at `rate` calls/s, through `proxy` or (None) straight to the
    callee, measured by a scripted caller (sipp's response times are whole ms)."""
    callee = PyUas("answer")
    caller = PyUac()
    try:
        if proxy is not None:
            target = ("127.0.0.1", proxy.port)
            status = callee.register(target, f"{CALLEE}@{DOMAIN}")
            if not status.endswith("200 OK"):
                raise RuntimeError(f"REGISTER through the proxy: {status}")
            aor = f"{CALLEE}@{DOMAIN}"
        else:
            target = callee.addr
            aor = f"{CALLEE}@{callee.addr[0]}:{callee.addr[1]}"
        callee.start()
        times = []
        step = 1.0 / rate
        due = time.monotonic()
        for n in range(calls):
            due += step
            times.append(caller.call(target, aor, n, copies=1) * 1000)
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    finally:
        caller.close()
        callee.stop()
    return {"n": len(times), "p50": percentile(times, 50), "p99": percentile(times, 99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=30_000)
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--open", action="store_true", help="open loop at exactly --rate")
    ap.add_argument("--hold-ms", type=int, default=0, help="sipp -d: ACK to BYE")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--dispatch", choices=("shared", "reuseport"), default="reuseport")
    ap.add_argument("--transactions", type=int, default=1_000_000)
    ap.add_argument("--only", choices=("fastcluster", "kamailio"))
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--dialogs", choices=("all", "none", "both"), default="all",
                    help="dialog.track of the fastcluster node (both: without, then with, "
                    "side by side)")
    ap.add_argument("--latency", action="store_true",
                    help="call setup latency at --rate (default 100/s): proxy vs direct")
    ns = ap.parse_args()
    tracks = ["none", "all"] if ns.dialogs == "both" else [ns.dialogs]
    systems = [f"fastcluster/{t}" for t in tracks if ns.only in (None, "fastcluster")]
    systems += ["kamailio"] if ns.only in (None, "kamailio") else []
    if ns.latency:
        rate = ns.rate if ns.rate != 20_000 else 100
        calls = ns.calls if ns.calls != 30_000 else 3000
        with tempfile.TemporaryDirectory() as d:
            tmp = pathlib.Path(d)
            direct = run_latency(None, calls, rate)
            print(f"direct caller -> callee: {direct['n']} calls at {rate}/s, INVITE->200 "
                  f"p50 {direct['p50']:.3f} ms, p99 {direct['p99']:.3f} ms", flush=True)
            for name in systems:
                proxy = _start(name, tmp / name, ns)
                try:
                    r = run_latency(proxy, calls, rate)
                finally:
                    proxy.stop()
                print(f"{proxy.label}: INVITE->200 p50 {r['p50']:.3f} ms "
                      f"(+{r['p50'] - direct['p50']:.3f}), p99 {r['p99']:.3f} ms "
                      f"(+{r['p99'] - direct['p99']:.3f})", flush=True)
        return 0
    for run in range(ns.runs):
        with tempfile.TemporaryDirectory() as d:
            tmp = pathlib.Path(d)
            for name in systems:
                proxy = _start(name, tmp / name, ns)
                try:
                    r = run_load(proxy, tmp / name, ns.calls, ns.rate, ns.limit, ns.open,
                                 ns.hold_ms)
                    extra = proxy.stats() if isinstance(proxy, Fastcluster) else {}
                finally:
                    proxy.stop()
                loop = f"open loop -r {ns.rate}" if ns.open else f"closed loop of {ns.limit}"
                print(f"run {run + 1} {proxy.label}, {loop}: {r['ok']} ok, {r['failed']} "
                      f"failed, {r['rate']:.0f} calls/s, proxy CPU {r['cpu']:.1f} s = "
                      f"{r['us_per_call']:.0f} us/call; sipp UAC {r['uac_cpu'] / r['wall']:.0%}"
                      f" of a core, UAS {r['uas_cpu'] / r['wall']:.0%}{unexpected_note(r)}",
                      flush=True)
                if extra:
                    keep = {k: v for k, v in extra.items() if v and k.startswith(
                        ("tm:retrans", "tm:refused", "tm:lock", "tm:timer", "tm:expired"))}
                    if keep:
                        print(f"    {keep}", flush=True)
    return 0


def _start(name: str, tmp: pathlib.Path, ns: argparse.Namespace) -> Proxy:
    tmp.mkdir(parents=True, exist_ok=True)
    if name == "kamailio":
        return Kamailio(tmp)
    return Fastcluster(tmp, ns.workers, ns.dispatch, ns.transactions,
                       track=name.split("/")[1])


if __name__ == "__main__":
    sys.exit(main())
