"""Real `fastcluster` nodes for integration tests: start, call the MI, kill, stop.

Each node gets a unique instance name (so shm names never clash with another test or a
real node), free ports on 127.0.0.1, its own INI file and log file. Every pid it starts
(the master and the children it forks) is registered with tests.support.leaks.
"""
from __future__ import annotations

import itertools
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import posix_ipc

from fastcluster.services.mi.client import MIError, call
from tests.support import leaks

_seq = itertools.count(1)
PYTHON = sys.executable


# Ports for listeners come from below the kernel's ephemeral range (32768-60999 by
# default): a port from that range may be taken, while its node is stopped, as the local
# port of any outgoing connection (a peer re-dialling it can even connect to itself),
# and the node cannot listen on it again when it restarts.
PORTS = range(20000, 32768)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (best effort), outside the
    ephemeral range. `kind` is kept for callers that name the protocol they need."""
    for _ in range(200):
        port = random.choice(PORTS)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


class Node:
    def __init__(self, tmp: pathlib.Path, node_id: int = 1, workers: int = 2,
                 settings: dict[str, dict[str, Any]] | None = None,
                 instance: str | None = None, bin_host: str = "127.0.0.1",
                 netns: str | None = None) -> None:
        """netns: run inside that network namespace, every listener on bin_host (its
        address there) with the standard ports; else on loopback with free ports."""
        self.node_id = node_id
        self.instance = instance or f"{leaks.SESSION_TOKEN}x{next(_seq)}"
        self.dir = tmp / f"node{node_id}-{self.instance}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.netns = netns
        self.host = bin_host if netns else "127.0.0.1"
        if netns:
            self.sip_port, self.mi_port, self.bin_port = 5060, 8888, 5555
        else:
            self.sip_port = free_port(socket.SOCK_DGRAM)
            self.mi_port = free_port()
            self.bin_port = free_port()
        self.mi_url = f"http://{self.host}:{self.mi_port}/mi"
        self.bin_addr = f"{bin_host}:{self.bin_port}"
        base: dict[str, dict[str, Any]] = {
            "core": {"workers": workers, "instance": self.instance,
                     "run_dir": str(self.dir), "data_dir": str(self.dir / "data"),
                     "log_level": "info"},
            "sip": {"listen": f"udp:{self.host}:{self.sip_port}"},
            "mi": {"listen": f"{self.host}:{self.mi_port}"},
            "clusterer": {"node_id": node_id, "bin_listen": self.bin_addr,
                          "secret": "test-secret"},
            "usrloc": {"capacity": 100_000},
            "dialog": {"capacity": 10_000},
            "proxy": {"transactions": 10_000},
        }
        if netns:  # listeners on a network address: the MI needs a token, SIP auth or
            # the operator's explicit choice of an open registrar (the tests register
            # without credentials)
            base["mi"]["token"] = "test-token"
            base["auth"] = {"allow_open_registrar": "yes"}
        for section, values in (settings or {}).items():
            base.setdefault(section, {}).update(values)
        self.settings = base
        self.ini = self.dir / "node.ini"
        self.write_ini()
        self.log_path = self.dir / "node.log"
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self.killed = False  # SIGKILLed by the test: its shm names are ours to remove
        # the state of the network between the test and a netns node, for errors
        self.diagnose: Callable[[], str] | None = None

    def write_ini(self) -> None:
        lines = []
        for section, values in self.settings.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in values.items()]
            lines.append("")
        self.ini.write_text("\n".join(lines))

    @property
    def db_path(self) -> str:
        """The node's subscriber database (auth.db_path default: in core.data_dir)."""
        return str(self.dir / "data" / "subscriber.sqlite")

    @property
    def shm_prefix(self) -> str:
        return f"fastcluster.{self.instance}."

    def shm_names(self) -> list[str]:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(self.shm_prefix))

    def start(self, wait: bool = True, timeout: float = 60.0, args: list[str] | None = None,
              env: dict[str, str] | None = None) -> Node:
        """env: extra environment variables for the node (NOTIFY_SOCKET, ...)."""
        env = {**os.environ, **(env or {})}
        self.killed = False
        self._log = open(self.log_path, "ab")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(
            prefix + [PYTHON, "-m", "fastcluster.core.cli", "-c", str(self.ini)] + (args or []),
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self.proc.pid
        leaks.register(self.pid)
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                try:  # a node that never became ready is not left running (benches
                    self.stop()  # have no leak check to stop it)
                except Exception:  # noqa: BLE001 - the readiness error is the one to see
                    pass
                raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited with {self.proc.returncode}:"
                                   f"\n{self.log()}")
            try:
                procs = self.mi("ps")["Processes"]
                expected = self.settings["core"]["workers"] + 3 + (
                    1 if self.settings.get("script", {}).get("module") else 0)
                if len(procs) >= expected:
                    for p in procs:
                        leaks.register(p["PID"])
                    return
            except (OSError, MIError) as exc:
                last = exc
            time.sleep(0.05)
        network = f"\n{self.diagnose()}" if self.diagnose else ""
        raise TimeoutError(f"node {self.node_id} not ready ({last}):\n{self.log()}{network}")

    def mi(self, method: str, *args: Any, **params: Any) -> Any:
        """Call the MI by name (params) or positionally (args), with the node's token."""
        token = self.settings.get("mi", {}).get("token") or None
        return call(self.mi_url, method, list(args) if args else params, timeout=30,
                    token=token)

    def post(self, body: Any) -> Any:
        """A raw JSON-RPC body (a batch, say) to the MI, with the node's token."""
        headers = {"Content-Type": "application/json"}
        token = self.settings.get("mi", {}).get("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.mi_url, data=json.dumps(body).encode(),
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def children(self) -> list[int]:
        return leaks.children_of(self.pid)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill9(self) -> None:
        """SIGKILL the master only (its children die by the parent-death signal)."""
        kids = self.children()
        for k in kids:
            leaks.register(k)
        os.kill(self.pid, signal.SIGKILL)
        self.wait_exit(10)
        self.killed = True

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None and not self._log.closed:
                self._log.close()
            if self.killed:  # what the next start of the instance would remove
                for name in self.shm_names():
                    posix_ipc.unlink_shared_memory("/" + name)
            return self.proc.returncode if self.proc else None
        for k in self.children():
            leaks.register(k)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait_exit(5)
            raise


def cluster_view(node: Node, cluster: int = 1) -> dict[int, tuple[str, str, str]]:
    """node id -> (link_state, direct_link, next_hop) from clusterer_list."""
    for c in node.mi("clusterer_list")["Clusters"]:
        if c["cluster_id"] == cluster:
            return {n["node_id"]: (n["link_state"], n["direct_link"], n["next_hop"])
                    for n in c["Nodes"]}
    return {}


def up_set(node: Node, cluster: int = 1) -> set[int]:
    return {n for n, (state, _, _) in cluster_view(node, cluster).items() if state == "Up"}


def wait_until(predicate, timeout: float = 10.0, what: str = "condition", step: float = 0.02):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, MIError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def start_cluster(tmp, count: int, workers: int = 1, settings=None, hosts=None,
                  seed_index: int = 0, before_start=None) -> list[Node]:
    """count nodes, ids 1..count, every one but the seed joining through the seed.
    before_start(node) runs for each node before any starts (e.g. adding users)."""
    settings = {section: dict(values) for section, values in (settings or {}).items()}
    nodes = [Node(tmp, node_id=i + 1, workers=workers, settings=settings,
                  bin_host=hosts[i] if hosts else "127.0.0.1") for i in range(count)]
    seed = nodes[seed_index]
    for n in nodes:
        if n is not seed:
            n.settings["clusterer"]["seeds"] = seed.bin_addr
            n.write_ini()
    for n in nodes:
        if before_start is not None:
            before_start(n)
    try:
        for n in nodes:
            n.start(wait=False)
        for n in nodes:
            n.wait_ready()
    except BaseException:
        for n in nodes:
            n.stop()
        raise
    return nodes


def cap_state(node: Node, name: str = "usrloc-contact-repl") -> str:
    for c in node.mi("clusterer_list_cap")["Clusters"]:
        for cap in c["Capabilities"]:
            if cap["name"] == name:
                return cap["state"]
    return "absent"


def cap_entry(node: Node, name: str = "usrloc-contact-repl") -> dict:
    for c in node.mi("clusterer_list_cap")["Clusters"]:
        for cap in c["Capabilities"]:
            if cap["name"] == name:
                return cap
    return {}


def digests(nodes: list[Node], command: str = "ul_digest") -> list[dict]:
    return [n.mi(command) for n in nodes]


def all_equal(nodes: list[Node], command: str = "ul_digest") -> bool:
    d = digests(nodes, command)
    return all(x == d[0] for x in d)


def wait_synced(nodes: list[Node], timeout: float = 30.0) -> None:
    for n in nodes:
        wait_until(lambda n=n: cap_state(n) == "synced" and
                   cap_state(n, "dialog-dlg-repl") == "synced", timeout=timeout,
                   what=f"node {n.node_id} synced")


def wait_mapped(nodes: list[Node], timeout: float = 60.0) -> None:
    """Until every SIP worker of each node has mapped the tables' pages (it does in the
    background after it starts serving): a measure of CPU begun sooner counts that too."""
    for n in nodes:
        wait_until(lambda n=n: n.mi("get_statistics", statistics=["core:sip_tables_mapped"])[
            "core:sip_tables_mapped"] >= n.settings["core"]["workers"], timeout=timeout,
            what=f"node {n.node_id}'s SIP workers mapped the tables")
