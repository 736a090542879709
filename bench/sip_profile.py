"""Where a REGISTER's time goes between the wire and the workers: a latency profile of
the SIP path of one node (and of Kamailio `-x tlsf`, registrar only, in the same run).

    .venv/bin/python -m bench.sip_profile [--workers 2,8] [--dispatch shared,reuseport]
        [--rates 1,1000,10000,max] [--users 200000] [--kamailio] [--seconds 3]
        [--one-at-a-time 2000] [--only-kamailio] [--null] [--baseline TREE]
        [--set section.key=value ...]

Per system (fastcluster -w N in each dispatch mode, contacts in memory only
(persistence.url=off) as Kamailio's; Kamailio 5.6 `-x tlsf`, 2 children, usrloc db_mode
0, bench/kamailio/registrar.cfg.in; with --null, bench/responder/null_registrar.c, which
answers 200 and stores nothing: what the client itself reaches) and per load:
- `1`, `1000`, `10000`: an open-loop client (this process) sends REGISTERs for new
  users at that rate; `max`: one sipp, closed loop of 200 (`-users 200`), --users unique users
  (bench/sipp/register.xml, as bench.load_register), with this client probing at 200/s
  beside it; `ping`: one request at a time (the next one 1 ms after each reply).
- round trip per REGISTER, from just before `sendto` to the reply's arrival as the
  kernel stamped it on the client's socket (SO_TIMESTAMPNS: the client's own wake-up
  is not counted). Loopback delivery happens inside `sendto`, so this is the time from
  the datagram's arrival at the node to the reply sent, plus ~2 us;
- per process: CPU (busy share of the phase), time spent runnable but waiting for a
  core (`/proc/PID/schedstat`: queueing behind other processes, sipp included),
  voluntary / involuntary context switches and minor page faults per REGISTER;
- the listening socket's receive queue (`/proc/net/udp`, sampled every 5 ms: bytes
  waiting for a worker, max and mean) and its drops during the phase;
- sipp's CPU (share of one core: near 100 % means sipp, not the node, set the pace),
  the load average before the run.
Figures on the shared 2-core VM are noisy: compare within one run, repeat (--repeat).
--baseline /path/to/another/checkout (with its own .venv and warmed .numba_cache) runs
that tree's node too, in the same run with the same client and sipp, labelled by its
folder name: before/after comparisons of two builds. (SIP_PROFILE_TREE runs only that
tree, with its own .venv python running this file.)
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

REPO = pathlib.Path(os.environ.get("SIP_PROFILE_TREE") or
                    pathlib.Path(__file__).resolve().parents[1])
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

from tests.support import sipp  # noqa: E402
from tests.support.nodes import Node  # noqa: E402

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
NULL_SOURCE = pathlib.Path(__file__).resolve().parent / "responder" / "null_registrar.c"
PROBE_RATE = 200  # REGISTER/s the client sends beside sipp at saturation
REQUEST = ("REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-pf{tag}-{n}\r\n"
           "From: <sip:pf{tag}x{n}@example.com>;tag={n}\r\n"
           "To: <sip:pf{tag}x{n}@example.com>\r\n"
           "Call-ID: pf{tag}-{n}@bench\r\n"
           "CSeq: 1 REGISTER\r\n"
           "Contact: <sip:pf{tag}x{n}@127.0.0.1:{lport}>\r\n"
           "Max-Forwards: 70\r\n"
           "Expires: 3600\r\n"
           "User-Agent: sip-profile\r\n"
           "Content-Length: 0\r\n\r\n")


# ------------------------------------------------------------------ the client


@dataclass
class Latencies:
    sent: int = 0
    rtt_us: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def pct(self, p: float) -> float:
        s = sorted(self.rtt_us)
        return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


class Client:
    """Sends REGISTERs for fresh users and matches replies by Call-ID."""

    def __init__(self, target: tuple[str, int], tag: str) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.lport = self.sock.getsockname()[1]
        self.tag = tag
        self.n = 0
        self.sent_ns: dict[int, int] = {}

    def close(self) -> None:
        self.sock.close()

    def send(self, out: Latencies) -> None:
        n = self.n
        self.n += 1
        data = REQUEST.format(port=self.target[1], lport=self.lport, tag=self.tag,
                              n=n).encode()
        self.sent_ns[n] = time.time_ns()
        self.sock.sendto(data, self.target)
        out.sent += 1

    def drain(self, out: Latencies) -> int:
        got = 0
        marker = f"Call-ID: pf{self.tag}-".encode()
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, 64)
            except (BlockingIOError, InterruptedError):
                return got
            stamp = time.time_ns()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    stamp = sec * 1_000_000_000 + nsec
            status = int(data[8:11])
            out.statuses[status] = out.statuses.get(status, 0) + 1
            i = data.find(marker)
            if i < 0:
                continue
            j = data.find(b"@", i)
            n = int(data[i + len(marker):j])
            t0 = self.sent_ns.pop(n, None)
            if t0 is not None and status >= 200:
                out.rtt_us.append((stamp - t0) / 1000)
                got += 1

    def open_loop(self, rate: float, seconds: float, stop: threading.Event | None = None
                  ) -> Latencies:
        out = Latencies()
        step = 1.0 / rate
        start = time.monotonic()
        due = start
        end = start + seconds
        while True:
            now = time.monotonic()
            if stop is not None and stop.is_set() or now >= end:
                break
            while due <= now:
                self.send(out)
                due += step
            select.select([self.sock], [], [], max(0.0, min(due, end) - time.monotonic()))
            self.drain(out)
        self._tail(out)
        return out

    def ping_pong(self, count: int, gap_s: float = 0.001) -> Latencies:
        out = Latencies()
        for _ in range(count):
            self.send(out)
            deadline = time.monotonic() + 1.0
            while not self.drain(out) and time.monotonic() < deadline:
                select.select([self.sock], [], [], 0.1)
            time.sleep(gap_s)
        return out

    def _tail(self, out: Latencies) -> None:
        deadline = time.monotonic() + 1.0
        while self.sent_ns and time.monotonic() < deadline:
            select.select([self.sock], [], [], 0.05)
            self.drain(out)
        self.sent_ns.clear()


# ------------------------------------------------------------------ the observers


def proc_counters(pid: int) -> tuple[float, float, int, int, int]:
    """(cpu s, run-queue wait s, voluntary, involuntary context switches, minor page
    faults) so far; CPU and wait from /proc/PID/schedstat (nanoseconds, not clock
    ticks)."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as fh:
            run_ns, wait_ns = (int(x) for x in fh.read().split()[:2])
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            minflt = int(fh.read().rsplit(")", 1)[1].split()[7])
        vol = invol = 0
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("voluntary_ctxt_switches"):
                    vol = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol = int(line.split()[1])
        return run_ns / 1e9, wait_ns / 1e9, vol, invol, minflt
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0, 0, 0, 0


def udp_sockets(port: int) -> list[tuple[int, int]]:
    """(rx_queue bytes, drops) of every UDP socket bound to `port` (several with
    reuseport)."""
    hexport = f":{port:04X}"
    out = []
    with open("/proc/net/udp", encoding="ascii") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            if f[1].endswith(hexport):
                out.append((int(f[4].split(":")[1], 16), int(f[12])))
    return out


class QueueSampler(threading.Thread):
    def __init__(self, port: int, period_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.port, self.period_s = port, period_s
        self.stop_event = threading.Event()
        self.samples: list[int] = []
        self.drops0 = sum(d for _, d in udp_sockets(port))
        self.drops = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.period_s):
            self.samples.append(sum(q for q, _ in udp_sockets(self.port)))

    def finish(self) -> None:
        self.stop_event.set()
        self.join()
        self.drops = sum(d for _, d in udp_sockets(self.port)) - self.drops0


# ------------------------------------------------------------------ one phase


def phase(system: System, load: str, users: int, seconds: float, tmp: pathlib.Path,
          ping: int) -> dict:
    pids = system.pids()
    before = {p: proc_counters(p) for p in pids}
    sampler = QueueSampler(system.port)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = Client(("127.0.0.1", system.port), f"{system.short}{load}{time.monotonic_ns() % 10**6}")
    sampler.start()
    started = time.monotonic()
    registers = 0
    sipp_rate = 0.0
    try:
        if load == "ping":
            lat = client.ping_pong(ping)
        elif load == "max":
            stop = threading.Event()
            probe: list[Latencies] = []
            thread = threading.Thread(target=lambda: probe.append(
                client.open_loop(PROBE_RATE, 600, stop)), daemon=True)
            thread.start()
            r = sipp.run("register", ("127.0.0.1", system.port), tmp / f"sipp-{load}",
                         users, closed_loop=200, keys={
                             "user": f"{system.short}{time.monotonic_ns() % 10**6}x",
                             "reg_cseq": 1, "expires": 3600}, timeout_s=600)
            stop.set()
            thread.join()
            lat = probe[0]
            registers = r.successful
            sipp_rate = r.rate
        else:
            lat = client.open_loop(float(load), seconds)
    finally:
        client.close()
        wall = time.monotonic() - started
        sampler.finish()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    sipp_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
    registers += len(lat.rtt_us)
    after = {p: proc_counters(p) for p in pids}
    d = {p: [a - b for a, b in zip(after[p], before[p])] for p in pids}
    roles = system.roles()
    by_role = {}
    for role, rpids in roles.items():
        cpu = sum(d[p][0] for p in rpids if p in d)
        wait = sum(d[p][1] for p in rpids if p in d)
        vol = sum(d[p][2] for p in rpids if p in d)
        invol = sum(d[p][3] for p in rpids if p in d)
        faults = sum(d[p][4] for p in rpids if p in d)
        by_role[role] = (cpu, wait, vol, invol, faults, len(rpids))
    q = sorted(sampler.samples) or [0]
    return {"load": load, "wall": wall, "registers": registers, "sipp_rate": sipp_rate,
            "lat": lat, "by_role": by_role, "cpu": sum(v[0] for v in d.values()),
            "q_max": q[-1], "q_mean": sum(q) / len(q), "q_p99": q[int(0.99 * (len(q) - 1))],
            "drops": sampler.drops, "sipp_cpu": sipp_cpu}


def report(system: System, r: dict) -> None:
    lat: Latencies = r["lat"]
    n = max(r["registers"], 1)
    rate = r["sipp_rate"] if r["load"] == "max" else len(lat.rtt_us) / max(r["wall"], 1e-9)
    lost = lat.sent - len(lat.rtt_us)
    roles = []
    for role, (cpu, wait, vol, invol, faults, count) in r["by_role"].items():
        roles.append(f"{role}x{count} busy {cpu / r['wall']:.0%} of a core, "
                     f"{cpu / n * 1e6:.1f} us/REG, run-queue wait {wait / n * 1e6:.1f} us/REG, "
                     f"ctxsw {vol / n:.2f}+{invol / n:.2f}/REG, page faults {faults / n:.2f}/REG")
    sipp_part = (f"; sipp {r['sipp_cpu'] / r['wall']:.0%} of a core" if r["load"] == "max"
                 else "")
    print(f"  {system.label} load {r['load']} ({r['wall']:.1f} s): {rate:,.0f} REGISTER/s, node CPU "
          f"{r['cpu'] / n * 1e6:.1f} us/REG{sipp_part}; round trip ({len(lat.rtt_us)} of "
          f"{lat.sent}{', ' + str(lost) + ' unanswered' if lost else ''}) p50 "
          f"{lat.pct(50):.0f} us, p90 {lat.pct(90):.0f}, p99 {lat.pct(99):.0f}, max "
          f"{lat.pct(100):.0f}; socket queue mean {r['q_mean'] / 1024:.1f} KiB, p99 "
          f"{r['q_p99'] / 1024:.1f}, max {r['q_max'] / 1024:.1f}, drops {r['drops']}",
          flush=True)
    for line in roles:
        print(f"      {line}", flush=True)


# ------------------------------------------------------------------ systems


class System:
    label = ""
    short = ""
    port = 0

    def pids(self) -> list[int]:
        return [p for ps in self.roles().values() for p in ps]

    def roles(self) -> dict[str, list[int]]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class FastclusterSystem(System):
    def __init__(self, tmp: pathlib.Path, workers: int, dispatch: str, users: int,
                 tree: pathlib.Path | None = None, extra: list[str] | None = None) -> None:
        from tests.support import nodes

        # persistence off: contacts in memory only, as Kamailio's side (usrloc db_mode 0);
        # the SQLite write-behind of 200k new contacts also keeps the kernel's writeback
        # busy, CPU no process of the node is charged for (--set persistence.url=... on)
        settings: dict[str, dict[str, object]] = {
            "sip": {"dispatch": dispatch}, "usrloc": {"capacity": max(users * 3, 100_000)},
            "core": {"log_level": "warning"}, "persistence": {"url": "off"}}
        for item in extra or []:  # --set section.key=value
            name, _, value = item.partition("=")
            section, _, key = name.partition(".")
            settings.setdefault(section, {})[key] = value
        node = Node(tmp, workers=workers, settings=settings)
        env = {}
        if tree is not None:  # another build: its python, its kernel cache
            nodes.PYTHON = str(tree / ".venv" / "bin" / "python")
            env["NUMBA_CACHE_DIR"] = str(tree / ".numba_cache")
        try:
            self.node = node.start(env=env)
        finally:
            nodes.PYTHON = sys.executable
        # measured in steady state: until its tables count as synced, a node looks for
        # a donor (seed_fallback_interval_s) beside the load; until its SIP workers
        # mapped the tables' pages, that work runs beside it too
        nodes.wait_synced([self.node])
        nodes.wait_mapped([self.node])
        self.port = self.node.sip_port
        build = f" [{tree.name}]" if tree is not None else ""
        self.label = f"fastcluster{build} -w {workers} {dispatch}" + "".join(
            f" {x}" for x in extra or [])
        self.short = f"f{workers}{dispatch[0]}{'b' if tree is not None else ''}"
        self._roles: dict[str, list[int]] = {}
        for p in self.node.mi("ps")["Processes"]:
            self._roles.setdefault(p["Role"], []).append(p["PID"])

    def roles(self) -> dict[str, list[int]]:
        return self._roles

    def stop(self) -> None:
        self.node.stop()


class KamailioSystem(System):
    def __init__(self, tmp: pathlib.Path, children: int) -> None:
        from bench.load_calls import Kamailio

        self.k = Kamailio(tmp, "registrar", children)
        self.port = self.k.port
        self.label = self.k.label
        self.short = "k"

    def roles(self) -> dict[str, list[int]]:
        return {"kamailio": self.k.pids()}

    def stop(self) -> None:
        self.k.stop()


class NullSystem(System):
    """bench/responder/null_registrar.c, built here with cc: it answers 200 and stores
    nothing (~3 us of CPU per REGISTER), so what one sipp reaches against it is what
    the client gives, whatever the server."""

    def __init__(self, tmp: pathlib.Path) -> None:
        from tests.support.nodes import free_port

        exe = tmp / "null_registrar"
        subprocess.run(["cc", "-O2", "-o", str(exe), str(NULL_SOURCE)], check=True)
        self.port = free_port(socket.SOCK_DGRAM)
        self.proc = subprocess.Popen([str(exe), str(self.port)])
        time.sleep(0.1)
        if self.proc.poll() is not None:
            raise RuntimeError(f"null_registrar exited with {self.proc.returncode}")
        self.label = "null responder (C, 1 process, stores nothing)"
        self.short = "n"

    def roles(self) -> dict[str, list[int]]:
        return {"null": [self.proc.pid]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="2,8")
    ap.add_argument("--dispatch", default="shared,reuseport")
    ap.add_argument("--rates", default="ping,1,1000,10000,max")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=3.0, help="per open-loop phase "
                    "(rate 1: at least 20 requests)")
    ap.add_argument("--ping", type=int, default=2000, help="requests one at a time")
    ap.add_argument("--kamailio", action="store_true", help="Kamailio -x tlsf too")
    ap.add_argument("--kamailio-children", type=int, default=2)
    ap.add_argument("--only-kamailio", action="store_true")
    ap.add_argument("--null", action="store_true", help="the same loads against a "
                    "responder in C that stores nothing too (what the client gives)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--baseline", type=pathlib.Path, help="another checkout to run too")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a setting for fastcluster's nodes (both builds)")
    ns = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}",
          flush=True)
    configs: list[tuple[str, int, str]] = []
    if not ns.only_kamailio:
        kinds = ["fastcluster"] + (["baseline"] if ns.baseline else [])
        configs += [(kind, int(w), d) for w in ns.workers.split(",")
                    for d in ns.dispatch.split(",") for kind in kinds]
    if ns.kamailio or ns.only_kamailio:
        configs.append(("kamailio", ns.kamailio_children, ""))
    if ns.null:
        configs.append(("null", 0, ""))
    for rep in range(ns.repeat):
        for kind, workers, dispatch in configs:
            with tempfile.TemporaryDirectory() as d:
                tmp = pathlib.Path(d)
                system: System = (
                    NullSystem(tmp) if kind == "null" else
                    KamailioSystem(tmp, workers) if kind == "kamailio" else
                    FastclusterSystem(tmp, workers, dispatch, ns.users,
                                      ns.baseline if kind == "baseline" else None, ns.set))
                try:
                    print(f"run {rep + 1}: {system.label} (load average "
                          f"{os.getloadavg()[0]:.2f})", flush=True)
                    for load in ns.rates.split(","):
                        seconds = max(ns.seconds, 20.0) if load == "1" else ns.seconds
                        report(system, phase(system, load, ns.users, seconds, tmp, ns.ping))
                finally:
                    system.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
