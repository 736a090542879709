"""`fastcluster demo`: a local cluster in one command, for a first look and for trying
failures by hand.

    fastcluster demo [-n 3] [-w 2]          start N nodes on loopback, joined through
                                            node 1; Ctrl-C stops them all
    fastcluster demo register [-n 1000]     REGISTER a burst of users with a running demo

Node K gets instance <prefix>K, its own folder (INI, log, data) under the demo folder,
SIP udp:HOST:(sip_port+K-1), MI HOST:(mi_port+K-1), cluster port HOST:(bin_port+K-1).
The demo compiles or loads the kernels once (the nodes then load them from the same
cache), starts the nodes as `fastcluster -c nodeK.ini` processes (each in its own
session, with the parent-death signal set to SIGTERM: they stop with the demo), waits
until every node sees every other Up, prints how to reach each and what to try, and
supervises them: a node that dies is restarted after RESTART_S, as systemd would, so
`kill -9` shows failure detection, rejoin and resync. Ctrl-C (or SIGTERM) stops every
node gracefully, then removes any shared-memory name a killed node left. The state of
a running demo (pids, addresses) is in demo.json in its folder: `demo register` reads
it. Neighbours: core.cli (the command), workers.master (what each node runs).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from fastcluster.core.errors import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from fastcluster.workers import osutil

RESTART_S = 2.0
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
NO_RESTART = (EXIT_CONFIG, 3)  # bad configuration, a child failed at boot: say so, stop


def default_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"fastcluster-demo-{os.getuid()}")


@dataclass
class DemoNode:
    node_id: int
    host: str
    sip_port: int
    mi_port: int
    bin_port: int
    instance: str
    folder: pathlib.Path
    seed: str  # HOST:PORT of node 1 ("" for node 1 itself)
    workers: int
    proc: subprocess.Popen | None = None
    restarts: int = 0
    restart_at: float = 0.0
    log: Any = field(default=None, repr=False)

    @property
    def ini(self) -> pathlib.Path:
        return self.folder / "node.ini"

    @property
    def mi_url(self) -> str:
        return f"http://{self.host}:{self.mi_port}/mi"

    @property
    def page_url(self) -> str:
        return f"http://{self.host}:{self.mi_port}/"

    def write_ini(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        seeds = f"seeds = {self.seed}\n" if self.seed else ""
        self.ini.write_text(
            f"# fastcluster demo, node {self.node_id}\n"
            f"[core]\nworkers = {self.workers}\ninstance = {self.instance}\n"
            f"run_dir = {self.folder}\ndata_dir = {self.folder / 'data'}\n"
            "shm_prefault = no\n\n"
            f"[sip]\nlisten = udp:{self.host}:{self.sip_port}\n\n"
            f"[mi]\nlisten = {self.host}:{self.mi_port}\n\n"
            f"[clusterer]\nnode_id = {self.node_id}\n"
            f"bin_listen = {self.host}:{self.bin_port}\n{seeds}\n"
            "[usrloc]\ncapacity = 100000\n\n[dialog]\ncapacity = 10000\n")

    def start(self, demo_pid: int) -> None:
        self.log = open(self.folder / "node.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastcluster.core.cli", "-c", str(self.ini)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            preexec_fn=lambda: osutil.die_with_parent(demo_pid, signal.SIGTERM))

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def info(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "pid": self.proc.pid if self.proc else 0,
                "sip": [self.host, self.sip_port], "mi_url": self.mi_url,
                "page": self.page_url, "ini": str(self.ini),
                "log": str(self.folder / "node.log"), "instance": self.instance}


def plan(n: int, workers: int, host: str, sip_port: int, mi_port: int, bin_port: int,
         folder: pathlib.Path, prefix: str) -> list[DemoNode]:
    """The demo's nodes: distinct ports, instances and folders; all join through node 1."""
    return [DemoNode(k, host, sip_port + k - 1, mi_port + k - 1, bin_port + k - 1,
                     f"{prefix}{k}", folder / f"node{k}",
                     "" if k == 1 else f"{host}:{bin_port}", workers)
            for k in range(1, n + 1)]


def busy_ports(nodes: list[DemoNode]) -> list[str]:
    """Ports some other program holds (a node would fail with 'address in use')."""
    busy = []
    for node in nodes:
        for port, kind, what in ((node.sip_port, socket.SOCK_DGRAM, "udp"),
                                 (node.mi_port, socket.SOCK_STREAM, "tcp"),
                                 (node.bin_port, socket.SOCK_STREAM, "tcp")):
            with socket.socket(socket.AF_INET, kind) as sock:
                try:
                    sock.bind((node.host, port))
                except OSError:
                    busy.append(f"{port}/{what}")
    return busy


def _cli() -> str:
    """How to call `fastcluster` from here (the console script next to this Python)."""
    script = pathlib.Path(sys.executable).with_name("fastcluster")
    if not script.exists():
        return "python -m fastcluster.core.cli"
    try:
        return os.path.relpath(script) if not os.path.relpath(script).startswith("..") \
            else str(script)
    except ValueError:
        return str(script)


# ---------------------------------------------------------------- running


class Demo:
    def __init__(self, nodes: list[DemoNode], folder: pathlib.Path) -> None:
        self.nodes = nodes
        self.folder = folder
        self.pid = os.getpid()
        self.stopping = False

    def handle_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def write_state(self) -> None:
        state = {"pid": self.pid, "nodes": [n.info() for n in self.nodes]}
        tmp = self.folder / "demo.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.folder / "demo.json")

    def start(self) -> None:
        for node in self.nodes:
            node.write_ini()
            node.start(self.pid)
        self.write_state()

    def wait_joined(self, timeout: float) -> bool:
        """Until every node sees every other node Up (or a node exits, or timeout)."""
        from fastcluster.services.mi.client import MIError, call

        deadline = time.monotonic() + timeout
        want = {n.node_id for n in self.nodes}
        while time.monotonic() < deadline and not self.stopping:
            if any(n.proc is None or n.proc.poll() is not None for n in self.nodes):
                return False
            try:
                if all(_up_set(call(n.mi_url, "clusterer_list", {}, timeout=2)) ==
                       want - {n.node_id} for n in self.nodes):
                    return True
            except (OSError, MIError):
                pass
            time.sleep(0.2)
        return False

    def supervise(self) -> None:
        """Restart nodes that die (not those that refuse their configuration)."""
        while not self.stopping:
            now = time.monotonic()
            for node in self.nodes:
                assert node.proc is not None
                code = node.proc.poll()
                if code is None:
                    continue
                if node.restart_at == 0.0:
                    node.close_log()
                    how = f"signal {-code}" if code < 0 else f"exit code {code}"
                    if code in NO_RESTART:
                        print(f"\nnode {node.node_id} stopped ({how}) and would again: see "
                              f"{node.folder / 'node.log'}", flush=True)
                        self.stopping = True
                        break
                    print(f"\nnode {node.node_id} exited ({how}); restarting it in "
                          f"{RESTART_S:g} s, as systemd would", flush=True)
                    node.restart_at = now + RESTART_S
                elif now >= node.restart_at:
                    node.restart_at = 0.0
                    node.restarts += 1
                    node.start(self.pid)
                    self.write_state()
                    print(f"node {node.node_id} restarted (pid {node.proc.pid}): it rejoins "
                          "and syncs from the others", flush=True)
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM every node, SIGKILL after STOP_TIMEOUT_S, then remove what a killed
        node left in /dev/shm. Returns how many shm names had to be removed."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"node {node.node_id} did not stop in {STOP_TIMEOUT_S:g} s: SIGKILL")
                node.proc.kill()
                node.proc.wait(5)
            node.close_log()
        removed = 0
        for node in self.nodes:
            removed += remove_shm(node.instance)
        (self.folder / "demo.json").unlink(missing_ok=True)
        return removed


def remove_shm(instance: str) -> int:
    """Unlink /dev/shm/fastcluster.<instance>.* (what a killed master leaves)."""
    import posix_ipc

    removed = 0
    prefix = f"fastcluster.{instance}."
    for name in os.listdir("/dev/shm"):
        if name.startswith(prefix):
            try:
                posix_ipc.unlink_shared_memory("/" + name)
                removed += 1
            except posix_ipc.ExistentialError:
                pass
    return removed


def _up_set(result: dict[str, Any]) -> set[int]:
    return {n["node_id"] for c in result["Clusters"] for n in c["Nodes"]
            if n["link_state"] == "Up"}


def running_demo(folder: pathlib.Path) -> dict[str, Any] | None:
    """The state of a demo whose process still runs, from its demo.json."""
    try:
        state = json.loads((folder / "demo.json").read_text())
        os.kill(int(state["pid"]), 0)
        return state
    except (OSError, ValueError, KeyError):
        return None


def print_welcome(nodes: list[DemoNode], folder: pathlib.Path, seconds: float,
                  extra: str) -> None:
    """What runs where, and what to try. extra: the options `demo register` needs to
    find this demo (a non-default --dir)."""
    cli = _cli()
    print(f"\nfastcluster demo: {len(nodes)} nodes up in {seconds:.1f} s, every one sees "
          f"every other (cluster 1, joined through node 1)\n")
    print(f"  {'node':<5} {'SIP':<22} {'MI and status page':<28} {'cluster link':<18} pid")
    for n in nodes:
        assert n.proc is not None
        print(f"  {n.node_id:<5} {f'udp:{n.host}:{n.sip_port}':<22} {n.page_url:<28} "
              f"{f'{n.host}:{n.bin_port}':<18} {n.proc.pid}")
    first, last = nodes[0], nodes[-1]
    tries = [
        (f"open {first.page_url} in a browser",
         "the live status page: topology, capabilities, syncs, partitions, rates"),
        (f"{cli} mi -c {first.ini} clusterer_list",
         "who sees whom: link states, next hops, round-trip times"),
        (f"{cli} demo register -n 1000{extra}",
         f"1000 REGISTERs to node {first.node_id}, then the contact count of every node"),
        (f"{cli} mi -c {last.ini} ul_show_contact location user1@demo.example",
         f"one of those contacts, replicated to node {last.node_id}"),
        (f"curl -s {first.page_url}metrics | grep fastcluster_node_up",
         "the Prometheus metrics"),
    ]
    scenario = pathlib.Path(__file__).resolve().parents[1] / "bench" / "sipp" / "register.xml"
    if shutil.which("sipp") and scenario.exists():  # a source checkout with sipp
        where = os.path.relpath(scenario) if str(scenario).startswith(os.getcwd()) \
            else str(scenario)
        tries.append((f"sipp {first.host}:{first.sip_port} -sf {where} -m 5000 -r 1000 "
                      f"-key user sipp -key reg_cseq 1 -key expires 3600 -cid_str "
                      f"reg-sipp%u@demo -i {first.host} -nostdin",
                      "5000 REGISTERs from sipp at 1000/s (bench/load_register.py "
                      "measures more)"))
    if len(nodes) > 1 and last.proc is not None:
        tries.append((f"kill -9 {last.proc.pid}",
                      f"node {last.node_id} goes Down on the others within about 0.3 s; "
                      "the demo restarts it 2 s later and it syncs back"))
    print("\nTry, from another shell:")
    for command, what in tries:
        print(f"  {command}\n      {what}")
    print(f"\nLogs, INI files and data: {folder}/nodeK. Ctrl-C stops every node.\n",
          flush=True)


def run(ns: argparse.Namespace) -> int:
    folder = pathlib.Path(ns.dir).resolve()
    state = running_demo(folder)
    if state is not None:
        print(f"fastcluster demo: a demo already runs in {folder} (pid {state['pid']}); "
              "stop it with Ctrl-C, or give another --dir and ports", file=sys.stderr)
        return EXIT_RUNTIME
    nodes = plan(ns.nodes, ns.workers, ns.host, ns.sip_port, ns.mi_port, ns.bin_port,
                 folder, ns.instance_prefix)
    busy = busy_ports(nodes)
    if busy:
        print(f"fastcluster demo: ports in use: {', '.join(busy)} (another node or demo?); "
              "pick others with --sip-port, --mi-port, --bin-port", file=sys.stderr)
        return EXIT_RUNTIME
    shutil.rmtree(folder, ignore_errors=True)  # a fresh cluster every time
    folder.mkdir(parents=True)
    from fastcluster.shm.warm import warm_kernels
    from fastcluster.workers.master import warm_with_progress

    print(f"loading the numba kernels (cache {os.environ.get('NUMBA_CACHE_DIR')})",
          flush=True)
    warm_with_progress(warm_kernels, say=lambda text: print(text, flush=True))
    demo = Demo(nodes, folder)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, demo.handle_signal)
    started = time.monotonic()
    print(f"starting {len(nodes)} nodes ({ns.workers} SIP workers each) in {folder}",
          flush=True)
    demo.start()
    try:
        if not demo.wait_joined(READY_TIMEOUT_S):
            if not demo.stopping:
                print("fastcluster demo: the nodes did not all join; their logs:",
                      file=sys.stderr)
                for n in nodes:
                    tail = (n.folder / "node.log").read_text(errors="replace")[-1500:]
                    print(f"--- node {n.node_id}\n{tail}", file=sys.stderr)
                return EXIT_RUNTIME
            return EXIT_OK
        extra = "" if folder == pathlib.Path(default_dir()).resolve() else f" --dir {folder}"
        print_welcome(nodes, folder, time.monotonic() - started, extra)
        demo.supervise()
        return EXIT_OK
    finally:
        print("\nstopping the demo nodes...", flush=True)
        removed = demo.stop()
        extra = f"; removed {removed} shared-memory names killed nodes left" if removed \
            else ""
        print(f"demo stopped{extra}", flush=True)


# ---------------------------------------------------------------- REGISTER burst


def register_burst(target: tuple[str, int], count: int, window: int, domain: str,
                   timeout_s: float = 5.0, rcvbuf: int = 1 << 22) -> dict[str, Any]:
    """count REGISTERs (users user1..userN@domain, one contact each) over one UDP socket,
    at most `window` unanswered at a time, each retransmitted as a phone does (T1 =
    0.5 s, doubling up to T2 = 4 s: a burst of answers can overflow this socket's
    buffer); returns the answers by status code."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # capped by rmem_max
    sock.bind((target[0], 0))
    sock.settimeout(0.05)
    lport = sock.getsockname()[1]
    codes: dict[str, int] = {}
    pending: dict[str, list[Any]] = {}  # Call-ID -> [request, next send, interval]
    sent = 0
    started = time.monotonic()
    last_answer = started
    while (sent < count or pending) and time.monotonic() - last_answer < timeout_s:
        now = time.monotonic()
        while sent < count and len(pending) < window:
            sent += 1
            callid = f"demo-{os.getpid()}-{sent}"
            request = _register(sent, target, lport, domain, callid)
            sock.sendto(request, target)
            pending[callid] = [request, now + 0.5, 0.5]
        for entry in pending.values():
            if now >= entry[1]:
                sock.sendto(entry[0], target)
                entry[2] = min(2 * entry[2], 4.0)
                entry[1] = now + entry[2]
        try:
            data = sock.recv(65535)
        except socket.timeout:
            continue
        status, callid = _status_and_callid(data)
        if callid in pending:
            del pending[callid]
            codes[status] = codes.get(status, 0) + 1
            last_answer = time.monotonic()
    sock.close()
    return {"sent": sent, "answers": codes, "unanswered": len(pending),
            "seconds": time.monotonic() - started}


def _register(i: int, target: tuple[str, int], lport: int, domain: str, callid: str) -> bytes:
    host, port = target
    return (f"REGISTER sip:{domain} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{lport};branch=z9hG4bK-demo-{callid}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:user{i}@{domain}>;tag=demo{i}\r\n"
            f"To: <sip:user{i}@{domain}>\r\n"
            f"Call-ID: {callid}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:user{i}@{host}:{lport}>;expires=3600\r\n"
            f"User-Agent: fastcluster-demo\r\nContent-Length: 0\r\n\r\n").encode()


def _status_and_callid(data: bytes) -> tuple[str, str]:
    text = data.decode("utf-8", "replace")
    first, _, rest = text.partition("\r\n")
    status = first.split(" ")[1] if first.startswith("SIP/2.0 ") else "?"
    for line in rest.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() in ("call-id", "i"):
            return status, value.strip()
    return status, ""


def register(ns: argparse.Namespace) -> int:
    from fastcluster.services.mi.client import MIError, call

    folder = pathlib.Path(ns.dir).resolve()
    state = running_demo(folder)
    if state is None:
        print(f"fastcluster demo register: no demo runs in {folder} (start one with "
              "`fastcluster demo`)", file=sys.stderr)
        return EXIT_RUNTIME
    nodes = {n["node_id"]: n for n in state["nodes"]}
    if ns.node not in nodes:
        print(f"fastcluster demo register: the demo has nodes {sorted(nodes)}",
              file=sys.stderr)
        return EXIT_RUNTIME
    target = tuple(nodes[ns.node]["sip"])
    result = register_burst((str(target[0]), int(target[1])), ns.count, ns.window,
                            ns.domain)
    answers = ", ".join(f"{n} answered {code}" for code, n in sorted(result["answers"].items()))
    rate = result["sent"] / max(result["seconds"], 1e-6)
    print(f"{result['sent']} REGISTERs to node {ns.node} (udp:{target[0]}:{target[1]}): "
          f"{answers or 'no answer'}, {result['unanswered']} unanswered, in "
          f"{result['seconds']:.2f} s ({rate:.0f}/s)")
    time.sleep(0.3)  # replication takes a few milliseconds
    counts = []
    for node_id, n in sorted(nodes.items()):
        try:
            stats = call(n["mi_url"], "get_statistics",
                         {"statistics": ["usrloc:registered_contacts"]}, timeout=5)
            counts.append(f"node {node_id}: {stats['usrloc:registered_contacts']}")
        except (OSError, MIError) as exc:
            counts.append(f"node {node_id}: unreachable ({exc})")
    print("registered contacts: " + ", ".join(counts))
    ok = result["answers"].get("200", 0) == result["sent"]
    return EXIT_OK if ok else EXIT_RUNTIME


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastcluster demo", allow_abbrev=False,
        description="Start a local demo cluster (Ctrl-C stops it), or send a running one "
                    "a burst of REGISTERs (`fastcluster demo register`).")
    actions = p.add_subparsers(dest="action")
    start = actions.add_parser("start", help="start the demo (the default)")
    start.add_argument("-n", "--nodes", type=int, default=3, help="nodes (1..20, default 3)")
    start.add_argument("-w", "--workers", type=int, default=2,
                       help="SIP workers per node (default 2)")
    start.add_argument("--host", default="127.0.0.1", help="loopback address (127.0.0.1)")
    start.add_argument("--sip-port", type=int, default=5060, help="node 1's SIP port "
                       "(5060); node K uses this + K - 1, likewise for the other ports")
    start.add_argument("--mi-port", type=int, default=8888, help="node 1's MI port (8888)")
    start.add_argument("--bin-port", type=int, default=5555,
                       help="node 1's cluster port (5555)")
    start.add_argument("--instance-prefix", default="demo",
                       help="node K's instance is PREFIX + K (default demo)")
    reg = actions.add_parser("register", help="send a running demo a burst of REGISTERs")
    reg.add_argument("-n", "--count", type=int, default=1000,
                     help="REGISTERs to send (1000), users user1..userN")
    reg.add_argument("--node", type=int, default=1, help="node to send them to (1)")
    reg.add_argument("--window", type=int, default=200,
                     help="REGISTERs waiting for an answer at most (200)")
    reg.add_argument("--domain", default="demo.example", help="AOR domain (demo.example)")
    for sub in (start, reg):
        sub.add_argument("--dir", default=default_dir(),
                         help="folder of the demo's nodes (default %(default)s; emptied "
                              "at start)")
    return p


def main(argv: list[str] | tuple[str, ...]) -> int:
    p = parser()
    args = list(argv)
    if not args or args[0] not in ("start", "register", "-h", "--help"):
        args.insert(0, "start")  # `fastcluster demo -n 3`
    ns = p.parse_args(args)
    if ns.action == "register":
        return register(ns)
    if not 1 <= ns.nodes <= 20:
        p.error("--nodes must be 1..20")
    return run(ns)
