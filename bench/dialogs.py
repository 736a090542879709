"""Dialog replication and sharing tag figures with real nodes on loopback (issue 16).

    .venv/bin/python -m bench.dialogs calls [--calls 20000] [--limit 300] [--workers 2]
        [--children 2] [--open --rate 3000] [--only fastcluster|kamailio] [--runs 1]
        [--persistence on|off|both]
    .venv/bin/python -m bench.dialogs lag [--rate 1000] [--seconds 15] [--every 1]
    .venv/bin/python -m bench.dialogs takeover [--trials 20] [--dialogs 1000]
    .venv/bin/python -m bench.dialogs sync [--dialogs 100000]

calls: two fastcluster nodes replicating dialogs and contacts (dialog-dlg-repl,
usrloc-contact-repl, dialog-prof-repl, a sharing tag), calls through node 1 (sipp,
closed loop, bench.load_calls's scenario: INVITE/180/200/ACK/BYE), then two Kamailio
5.6 instances (-x tlsf) replicating usrloc and dialogs with DMQ (dmq_usrloc, dialog
enable_dmq; bench/kamailio/proxy_dmq.cfg.in), side by side in one run. CPU per call:
every process of both instances over the calls answered. Node 2's dialog count is
checked to follow (dlg_list empty at the end, processed dialogs replicated); on the
Kamailio side, the KDMQ requests node 1 sent against those node 2 received (kamcmd), and
its shared memory peak. The caller goes on past a 180 that arrives after the 200
(bench.load_calls.TOLERATE_LATE_1XX) and the line says how many it saw.

lag: the same two fastcluster nodes, sipp at exactly RATE calls/s through node 1 (open
loop, bench.load_calls's scenario); this process reads both nodes' dialog tables
(DialogWatch) and stamps when each first shows each call created, confirmed (200) and
deleted (BYE): the lag of a change is node 2's stamp minus node 1's, p50/p99/max over
every change of the watched calls (all calls after the first --skip-s seconds by
default). Cross-check: node 2's sight minus the change's version (the HLC node 1
stamped it with, whole ms of the same clock).

takeover: three nodes declaring the tag vip, DIALOGS dialogs of that tag in profile
`calls` (written through node 3's shared memory, replicated); each trial kills -9 the
tag's holder and times, polling both survivors' MI every 2 ms, kill -> one survivor
active and both agreeing; meanwhile it samples profile_get_size calls on both: above
DIALOGS would be a double count. Then the killed node is started again (it stays
backup) and the next trial kills the holder, wherever it is now.

sync: a donor holding DIALOGS dialogs shaped like tracked calls (tags, URIs, contacts,
route sets, profiles, sharing tag: ~250 bytes of strings), then a fresh node joins:
time from its sync request to synced (its log), and dlg_digest equal.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import signal
import socket
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

import numpy as np  # noqa: E402

from bench.cpu import cpu_seconds  # noqa: E402
from bench.latency import log_problems, summary  # noqa: E402
from bench.load_calls import KAMAILIO_MODULES, run_load, unexpected_note  # noqa: E402
from fastcluster.shm import dialogs as D  # noqa: E402
from fastcluster.shm import table as T  # noqa: E402
from fastcluster.shm.dialogs import pack_dialog  # noqa: E402
from fastcluster.shm.node import NodeMemory  # noqa: E402
from tests.support import leaks  # noqa: E402
from tests.support.nodes import (  # noqa: E402
    Node,
    cap_state,
    free_port,
    start_cluster,
    up_set,
    wait_mapped,
    wait_synced,
    wait_until,
)
from tests.support.writer import SLOT, Writer  # noqa: E402

DOMAIN = "example.com"


# ---------------------------------------------------------------- calls


class FastclusterPair:
    name = "fastcluster"

    def __init__(self, tmp: pathlib.Path, workers: int, persist: bool = True,
                 dispatch: str = "reuseport") -> None:
        def tags(n: Node) -> None:
            n.settings["clusterer"]["sharing_tags"] = \
                "vip=active" if n.node_id == 1 else "vip=backup"
            n.write_ini()

        self.nodes = start_cluster(tmp, 2, workers=workers, before_start=tags, settings={
            "core": {"log_level": "warning"}, "sip": {"dispatch": dispatch},
            "proxy": {"transactions": 1_000_000}, "dialog": {"capacity": 200_000,
                                                             "profiles": "calls"},
            "usrloc": {"natping_interval_s": 0},
            "persistence": {} if persist else {"url": "off"}})
        wait_synced(self.nodes)
        wait_mapped(self.nodes)
        self.port = self.nodes[0].sip_port
        self.label = f"2 fastcluster nodes -w {workers} {dispatch} replicating dialogs" + (
            "" if persist else ", persistence off")

    def pids(self) -> list[int]:
        return [p["PID"] for n in self.nodes for p in n.mi("ps")["Processes"]]

    def processes(self) -> list[tuple[str, int]]:
        return [(f"node {n.node_id} {p['Type']}", p["PID"])
                for n in self.nodes for p in n.mi("ps")["Processes"]]

    def check(self, ok: int) -> str:
        n1, n2 = self.nodes
        try:
            wait_until(lambda: n2.mi("get_statistics", statistics=["dialog:active_dialogs"])
                       ["dialog:active_dialogs"] == 0, timeout=30, what="node 2 drained")
        except AssertionError:
            keys = ["dialog:", "clusterer:repl_rows_sent", "clusterer:repl_rows_applied",
                    "clusterer:repl_rows_stale", "clusterer:repl_gaps",
                    "clusterer:repl_resends"]
            live = n2.mi("dlg_list")
            raise AssertionError(
                f"node 2 still holds live dialogs 30 s after the calls ended; node 1: "
                f"{n1.mi('get_statistics', statistics=keys)}, {n1.mi('dlg_digest')}; node 2: "
                f"{n2.mi('get_statistics', statistics=keys)}, {n2.mi('dlg_digest')}; "
                f"node 2's dlg_list: {str(live)[:4000]}") from None
        s1 = n1.mi("get_statistics", statistics=["dialog:processed_dialogs", "tm:lock_waits",
                                                 "dialog:lock_waits"])
        return (f"node 1 tracked {s1['dialog:processed_dialogs']} dialogs (lock waits: tm "
                f"{s1['tm:lock_waits']}, dialog {s1['dialog:lock_waits']}), node 2 holds 0 live")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


SHM_MB = 2048  # of each Kamailio instance (-m)


class KamailioPair:
    name = "kamailio"

    def __init__(self, tmp: pathlib.Path, children: int = 2) -> None:
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        ports = [free_port(socket.SOCK_DGRAM) for _ in range(4)]
        self.port = ports[0]
        self.procs: list[subprocess.Popen] = []
        self.logs = []
        self.ctl = [tmp / f"kamailio{i}.ctl" for i in range(2)]
        template = (REPO / "bench" / "kamailio" / "proxy_dmq.cfg.in").read_text()
        for i, (port, dmq, peer) in enumerate(((ports[0], ports[1], ports[3]),
                                               (ports[2], ports[3], ports[1]))):
            cfg = tmp / f"kamailio{i}.cfg"
            cfg.write_text(template.replace("{port}", str(port))
                           .replace("{dmq_port}", str(dmq))
                           .replace("{peer_dmq_port}", str(peer))
                           .replace("{children}", str(children))
                           .replace("{ctl}", str(self.ctl[i]))
                           .replace("{mpath}", KAMAILIO_MODULES))
            log = open(tmp / f"kamailio{i}.log", "wb")
            self.logs.append(log)
            # -m: each transaction stays 5 s after it ends (tm wt_timer), and every call
            # adds ~4 KDMQ transactions to its INVITE and BYE: at 3,000 calls/s node 1
            # ran out of 512 MB (500s to INVITEs, KDMQ not sent) after ~8,000 calls.
            proc = subprocess.Popen([binary, "-f", str(cfg), "-x", "tlsf", "-DD", "-E",
                                     "-m", str(SHM_MB), "-M", "16", "-w", str(tmp)],
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            leaks.register(proc.pid)
            self.procs.append(proc)
        self.label = f"2 kamailio 5.6 -x tlsf ({children} children) with DMQ usrloc + dialogs"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise RuntimeError(f"kamailio exited: {(tmp / f'kamailio{i}.log').read_text()}")
            if all(len(leaks.children_of(p.pid)) >= 3 for p in self.procs):
                time.sleep(1.0)  # the DMQ nodes meet
                return
            time.sleep(0.1)
        raise RuntimeError("kamailio did not start")

    def pids(self) -> list[int]:
        return [x for p in self.procs for x in [p.pid] + leaks.children_of(p.pid)]

    def processes(self) -> list[tuple[str, int]]:
        """(label, pid) of every process, labelled as `kamcmd core.psx` describes it."""
        out = []
        for i in range(2):
            text = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl[i]}", "core.psx"],
                                  capture_output=True, text=True, timeout=10).stdout
            pid = None
            for line in text.splitlines():
                name, _, value = line.strip().partition(":")
                if name == "PID":
                    pid = int(value)
                elif name == "DSC" and pid is not None:
                    out.append((f"node {i + 1} {value.strip()}", pid))
                    pid = None
        return out

    def stats(self, i: int) -> dict[str, int]:
        """Instance i's statistics (kamcmd over its ctl socket), "group:name" -> value."""
        out = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl[i]}", "stats.get_statistics",
                              "all"], capture_output=True, text=True, timeout=10).stdout
        stats = {}
        for line in out.splitlines():
            name, _, value = line.strip().partition(" = ")
            if value.strip().lstrip("-").isdigit():
                stats[name] = int(value)
        return stats

    def check(self, ok: int) -> str:
        """That DMQ replicated: every dialog change node 1 sent (a KDMQ request, a local
        tm transaction) reached node 2, and node 2 holds no live dialog at the end."""
        def drained() -> bool:
            return self.stats(1).get("dialog:active_dialogs", -1) == 0

        wait_until(drained, timeout=30, what="kamailio node 2 drained")
        s1, s2 = self.stats(0), self.stats(1)
        peak = max(self.shm_max_used(i) for i in range(2)) / (1 << 20)
        return (f"node 1 tracked {s1.get('dialog:processed_dialogs')} dialogs and sent "
                f"{s1.get('tmx:UAC_transactions')} KDMQ requests (tmx:UAC_transactions), "
                f"node 2 received {s2.get('core:rcv_requests')} requests and holds 0 live; "
                f"shm peak {peak:.0f} of {SHM_MB} MB")

    def shm_max_used(self, i: int) -> int:
        out = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl[i]}", "core.shmmem"],
                             capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            name, _, value = line.strip().partition(":")
            if name == "max_used":
                return int(value)
        return -1

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for log in self.logs:
            log.close()


def calls(ns: argparse.Namespace) -> None:
    persist = {"on": [True], "off": [False], "both": [True, False]}[ns.persistence]
    systems = [("fastcluster", p) for p in persist if ns.only in (None, "fastcluster")]
    systems += [("kamailio", False)] if ns.only in (None, "kamailio") else []
    for run in range(ns.runs):
        with tempfile.TemporaryDirectory() as d:
            for name, on in systems:
                tmp = pathlib.Path(d) / f"{name}{int(on)}"
                tmp.mkdir()
                pair = FastclusterPair(tmp, ns.workers, on, ns.dispatch) \
                    if name == "fastcluster" else \
                    KamailioPair(tmp, ns.children)
                try:
                    procs = pair.processes()
                    before = [cpu_seconds(pid) for _, pid in procs]
                    r = run_load(pair, tmp, ns.calls, ns.rate, ns.limit, ns.open, 0)
                    split = [(label, (cpu_seconds(pid) - b) / max(r["ok"], 1) * 1e6)
                             for (label, pid), b in zip(procs, before)]
                    note = pair.check(r["ok"])
                finally:
                    pair.stop()
                loop = f"open loop -r {ns.rate}" if ns.open else f"closed loop of {ns.limit}"
                print(f"run {run + 1} {pair.label}, {loop}: {r['ok']} ok, "
                      f"{r['failed']} failed, {r['rate']:.0f} calls/s, CPU of both "
                      f"{r['cpu']:.1f} s = {r['us_per_call']:.0f} us/call; sipp UAC "
                      f"{r['uac_cpu'] / r['wall']:.0%} of a core, UAS "
                      f"{r['uas_cpu'] / r['wall']:.0%}{unexpected_note(r)}. {note}",
                      flush=True)
                print("    CPU per call by process: " + ", ".join(
                    f"{label} {us:.0f} us" for label, us in split if us >= 0.5), flush=True)


# ---------------------------------------------------------------- lag

MILESTONES = ("created", "confirmed", "deleted")


def milestone(out: np.ndarray) -> int:
    """How far the dialog row dlg_get copied into out has got: 0 created, 1 confirmed
    (its 200 went through: dlg_state >= 3), 2 deleted (a tombstone)."""
    if out[T.R_STATE] == T.ST_TOMB:
        return 2
    return 1 if out[T.R_AUX] >= 3 else 0


class DialogWatch:
    """Watches sipp's calls (bench/sipp/uac.xml: Call-ID c<n>-<pid>, caller tag
    <pid>c<n>) in node 1's and node 2's dialog tables, read from this process (as
    bench.replication's contact lag reads node 2's contacts), and stamps when each
    table first shows each milestone of each call. A sweep reads every watched call on
    node 1 then on node 2: a stamp is late by at most one sweep; a change node 2 shows
    before node 1's stamp (node 1 changed between the two reads) is stamped on node 1 at
    its read, so its lag is the time between the two reads."""

    AHEAD = 4  # calls not seen yet on node 1 that are watched there
    GIVE_UP_S = 10.0

    def __init__(self, nodes: list[Node], every: int) -> None:
        self.mems = [NodeMemory.attach("/" + n.shm_prefix) for n in nodes]
        self.arenas = [m.dialogs.buf for m in self.mems]
        self.outs = [np.zeros(m.dialogs.row_size, dtype=np.uint8) for m in self.mems]
        for arena, out in zip(self.arenas, self.outs):  # load the kernel before the load
            D.dlg_get(arena, np.uint64(2), np.uint64(2), out)
        self.pid, self.every, self.next = 0, every, 0  # next: the next call to watch
        self.watched: dict[int, tuple[np.uint64, np.uint64, list[list[float | None]]]] = {}
        self.first_seen: dict[int, float] = {}
        self.lags: list[list[float]] = [[] for _ in MILESTONES]
        self.hlc_lags: list[float] = []  # node 2's sight minus the change's version ms
        self.done = self.missed = self.incomplete = self.sweeps = 0
        self.last_sweep = self.longest_gap = 0.0  # a long gap: stamps late on both nodes

    def start(self, pid: int, first: int) -> None:
        """Watch the calls of sipp `pid` from call number `first` on."""
        self.pid, self.next = pid, first
        for _ in range(self.AHEAD):
            self._add()

    def _add(self) -> None:
        n = self.next
        key, group = D.dialog_ids(f"c{n}-{self.pid}".encode(), f"{self.pid}c{n}".encode())
        self.watched[n] = (np.uint64(key), np.uint64(group),
                           [[None] * len(MILESTONES), [None] * len(MILESTONES)])
        self.next += self.every

    def sweep(self) -> None:
        self.sweeps += 1
        now = time.perf_counter()
        if self.last_sweep:
            self.longest_gap = max(self.longest_gap, now - self.last_sweep)
        self.last_sweep = now
        for n, (key, group, stamps) in list(self.watched.items()):
            seen_here = stamps[0][0] is not None
            t1 = time.perf_counter()
            m1 = milestone(self.outs[0]) if D.dlg_get(self.arenas[0], key, group,
                                                      self.outs[0]) >= 0 else -1
            if m1 >= 0 and not seen_here:
                self.first_seen[n] = t1
                self._add()  # keep AHEAD unseen calls watched
            for m in range(m1 + 1):
                if stamps[0][m] is None:
                    stamps[0][m] = t1
            if m1 < 0 and not seen_here:
                if n + self.every * 1000 < self.next:  # sipp skipped it (or never sent)
                    del self.watched[n]
                    self.missed += 1
                continue
            out = self.outs[1]
            if D.dlg_get(self.arenas[1], key, group, out) >= 0:
                t2 = time.perf_counter()
                wall = time.time()
                m2 = milestone(out)
                if stamps[1][m2] is None:
                    version = int(out[T.R_VERSION:T.R_VERSION + 8].view(np.uint64)[0])
                    self.hlc_lags.append(wall - T.version_ms(version) / 1000)
                for m in range(m2 + 1):
                    if stamps[1][m] is None:
                        stamps[1][m] = t2
                        if stamps[0][m] is None:
                            stamps[0][m] = t1
                        self.lags[m].append(t2 - stamps[0][m])
            if stamps[1][-1] is not None:
                del self.watched[n]
                self.done += 1
            elif t1 - self.first_seen[n] > self.GIVE_UP_S:
                del self.watched[n]
                self.incomplete += 1

    def finish(self) -> None:
        """Calls seen on node 1 and not yet deleted on node 2 count incomplete."""
        self.incomplete += sum(1 for n in self.watched if n in self.first_seen)
        self.watched.clear()

    def close(self) -> None:
        for m in self.mems:
            m.close()


def uac_pid(timeout: float = 10) -> int:
    """The sipp UAC this process started (bench.load_calls.run_load, in a thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in leaks.children_of(os.getpid()):
            try:
                cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"uac.xml" in cmd:
                return pid
        time.sleep(0.01)
    raise RuntimeError("no sipp UAC started")


def lag(ns: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        pair = FastclusterPair(tmp, ns.workers)
        watch = None
        try:
            watch = DialogWatch(pair.nodes, ns.every)
            result: dict[str, dict] = {}
            calls = ns.rate * ns.seconds
            load = threading.Thread(target=lambda: result.setdefault("r", run_load(
                pair, tmp, calls, ns.rate, calls, True, 0)))
            load.start()
            watch.start(uac_pid(), first=ns.rate * ns.skip_s)
            t0, cpu0 = time.perf_counter(), time.process_time()
            while load.is_alive():
                watch.sweep()
                if ns.poll_us:
                    time.sleep(ns.poll_us / 1e6)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            load.join()
            watch.finish()
            try:
                note = pair.check(0)
            except AssertionError as e:  # printed with the figures, not instead of them
                note = f"NOT DRAINED: {e}; node 2 " + str(pair.nodes[1].mi(
                    "get_statistics", statistics=["dialog:"]))
        finally:
            if watch is not None:
                watch.close()
            pair.stop()
        r = result["r"]
        for line in log_problems(pair.nodes):
            print(line)
        print(f"load: sipp open loop -r {ns.rate} through node 1 of {pair.label}: "
              f"{r['ok']} ok, {r['failed']} failed, {r['rate']:.0f} calls/s, CPU of both "
              f"nodes {r['us_per_call']:.0f} us/call{unexpected_note(r)}. {note}")
        print(f"probe: every {ns.every} call(s) from call {ns.rate * ns.skip_s}: "
              f"{watch.done} watched to their end on node 2, {watch.missed} never seen on "
              f"node 1, {watch.incomplete} not deleted on node 2 (after {watch.GIVE_UP_S:.0f} "
              f"s or at the end); sweep every {elapsed / max(watch.sweeps, 1) * 1e6:.0f} us on "
              f"average, longest {watch.longest_gap * 1000:.1f} ms; the probe used "
              f"{cpu / elapsed:.0%} of a core")
        for name, lags in zip(MILESTONES, watch.lags):
            print(f"lag node 1 -> node 2, dialog {name}: {summary(lags)}")
        print(f"lag node 1 -> node 2, every change: {summary(sum(watch.lags, []))}")
        print(f"cross-check, node 2's sight minus the change's version (node 1's clock, "
              f"whole ms: up to 1 ms high): {summary(watch.hlc_lags)}")


# ---------------------------------------------------------------- takeover


def tag_view(node: Node) -> tuple[str, int]:
    (t,) = [t for t in node.mi("clusterer_list_shtags") if t["Tag"] == "vip"]
    return t["State"], t["Holder"]


def write_dialogs(node: Node, count: int, tag: str = "vip", profiles: str = "calls",
                  timeout_s: int = 3600) -> None:
    """count dialogs shaped like tracked calls, written through node's shared memory
    (replicated to the others like the node's own)."""
    w = Writer(node.shm_prefix)
    try:
        table = w.mem.dialogs
        row = np.zeros(table.row_size, dtype=np.uint8)
        now = int(time.time())
        for i in range(count):
            pack_dialog(row, table.row_size, strings={
                "callid": f"bench-{i}-{now}@10.0.0.1".encode(), "from_tag": b"a1b2c3d4",
                "to_tag": f"t{i:08x}".encode(), "from_uri": f"sip:u{i}@example.com".encode(),
                "to_uri": b"sip:bob@example.com",
                "caller_contact": f"sip:u{i}@10.0.0.1:5060".encode(),
                "callee_contact": b"sip:bob@10.0.0.2:5060",
                "caller_route": b"<sip:10.0.0.9:5060;lr>",
                "callee_route": b"<sip:10.0.0.8:5060;lr>",
                "caller_sock": b"udp:127.0.0.1:5060", "profiles": profiles.encode(),
                "shtag": tag.encode()}, timeout=now + timeout_s, start=now, dlg_state=4,
                caller_cseq=1, callee_cseq=1, creator=node.node_id)
            while table.put(row, w.rings["dialogs"], w.me, SLOT) < 0:
                time.sleep(0.001)  # the ring drains
    finally:
        w.close()


def takeover(ns: argparse.Namespace) -> None:
    def tags(n: Node) -> None:
        n.settings["clusterer"]["sharing_tags"] = "vip=backup"
        n.write_ini()

    with tempfile.TemporaryDirectory() as d:
        nodes = start_cluster(pathlib.Path(d), 3, workers=1, before_start=tags, settings={
            "core": {"log_level": "warning"}, "dialog": {"profiles": "calls"}})
        try:
            for n in nodes:
                wait_until(lambda n=n: len(up_set(n)) == 2, timeout=30, what="linked")
            wait_synced(nodes)
            write_dialogs(nodes[2], ns.dialogs)

            def size(n: Node) -> int:
                return n.mi("profile_get_size", profile="calls")["Profile"]["count"]

            wait_until(lambda: all(size(n) == ns.dialogs for n in nodes), timeout=30,
                       what="dialogs counted once everywhere")
            times, peak = [], 0
            for trial in range(ns.trials):
                holder = wait_until(lambda: _one_holder(nodes), timeout=10, what="one holder")
                victim = nodes[holder - 1]
                survivors = [n for n in nodes if n is not victim]
                victim.kill9()
                t0 = time.monotonic()
                while True:
                    views = [tag_view(n) for n in survivors]
                    active = [s for s, _ in views].count("active")
                    if active == 1 and len({h for _, h in views}) == 1 and \
                            views[0][1] != holder:
                        break
                    if time.monotonic() - t0 > 10:
                        raise RuntimeError(f"no takeover: {views}")
                    time.sleep(0.002)
                took = time.monotonic() - t0
                times.append(took)
                # the profile count through and after the takeover: never above
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    peak = max(peak, *(size(n) for n in survivors))
                    time.sleep(0.01)
                wait_until(lambda: all(size(n) == ns.dialogs for n in survivors),
                           timeout=10, what="dialogs counted once after the takeover")
                print(f"trial {trial + 1}: node {holder} killed, vip on node "
                      f"{views[0][1]} after {took * 1000:.1f} ms", flush=True)
                victim.stop()
                victim.start()
                wait_until(lambda: all(len(up_set(n)) == 2 for n in nodes), timeout=30,
                           what="three nodes linked again")
                wait_until(lambda: cap_state(victim, "dialog-dlg-repl") == "synced",
                           timeout=30, what="restarted node synced")
            times.sort()
            print(f"takeover after kill -9, {len(times)} trials: median "
                  f"{statistics.median(times) * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms; "
                  f"profile 'calls' ({ns.dialogs} dialogs) at most {peak} on the survivors "
                  f"during the takeovers (above {ns.dialogs}: double count)")
        finally:
            for n in nodes:
                n.stop()


def _one_holder(nodes: list[Node]) -> int:
    views = [tag_view(n) for n in nodes]
    active = [i + 1 for i, (s, _) in enumerate(views) if s == "active"]
    if len(active) == 1 and {h for _, h in views} == set(active):
        return active[0]
    return 0


# ---------------------------------------------------------------- sync


def log_time(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")


def sync(ns: argparse.Namespace) -> None:
    settings = {"dialog": {"capacity": int(ns.dialogs * 1.2) + 1000},
                "clusterer": {"seed_fallback_interval_s": 0.5},
                "core": {"log_level": "info"}}
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        donor = start_cluster(tmp, 1, settings=settings)[0]
        receiver = None
        try:
            wait_synced([donor])
            t = time.perf_counter()
            write_dialogs(donor, ns.dialogs, tag="", timeout_s=86400)
            print(f"{ns.dialogs} dialogs written on the donor in {time.perf_counter() - t:.1f} s",
                  flush=True)
            receiver = Node(tmp, node_id=2, workers=1, settings={
                **settings, "clusterer": {"seeds": donor.bin_addr}}).start()
            wait_until(lambda: cap_state(receiver, "dialog-dlg-repl") == "synced",
                       timeout=120, what="synced")
            lines = receiver.log().splitlines()
            asked = next(log_time(x) for x in lines if "dialog-dlg-repl: sync wanted" in x)
            synced = next(x for x in lines if "dialog-dlg-repl: synced from" in x)
            took = (log_time(synced) - asked).total_seconds()
            print(f"fresh node, {ns.dialogs} dialogs: request -> synced {took:.3f} s "
                  f"({synced.split('INFO sync: ')[1]})")
            assert receiver.mi("dlg_digest") == donor.mi("dlg_digest")
        finally:
            donor.stop()
            if receiver is not None:
                receiver.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("calls")
    c.add_argument("--calls", type=int, default=20_000)
    c.add_argument("--rate", type=int, default=20_000)
    c.add_argument("--limit", type=int, default=300)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--dispatch", choices=("shared", "reuseport"), default="reuseport",
                   help="of fastcluster's SIP workers (one sipp per side: reuseport hashes "
                        "each to one worker)")
    c.add_argument("--open", action="store_true", help="open loop at exactly --rate")
    c.add_argument("--children", type=int, default=2, help="of each Kamailio instance")
    c.add_argument("--only", choices=("fastcluster", "kamailio"))
    c.add_argument("--runs", type=int, default=1)
    c.add_argument("--persistence", choices=("on", "off", "both"), default="on",
                   help="fastcluster's SQLite write-behind (Kamailio's side keeps "
                        "dialogs and contacts in memory only: db_mode 0)")
    t = sub.add_parser("takeover")
    t.add_argument("--trials", type=int, default=20)
    t.add_argument("--dialogs", type=int, default=1000)
    g = sub.add_parser("lag")
    g.add_argument("--rate", type=int, default=1000)
    g.add_argument("--seconds", type=int, default=15, help="of load")
    g.add_argument("--skip-s", type=int, default=1, help="calls of the first seconds unwatched")
    g.add_argument("--every", type=int, default=1, help="watch every Nth call")
    g.add_argument("--poll-us", type=int, default=200, help="pause between sweeps")
    g.add_argument("--workers", type=int, default=2)
    s = sub.add_parser("sync")
    s.add_argument("--dialogs", type=int, default=100_000)
    ns = ap.parse_args()
    {"calls": calls, "lag": lag, "takeover": takeover, "sync": sync}[ns.what](ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
