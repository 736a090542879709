"""Hosts of a test network: one network namespace per node, joined by a bridge in the
test's own namespace (which reaches every node), and packet filters to cut links.

    net = Network(3)            # namespaces with 10.200.K.11, .12, .13; the test is .1
    net.cut(1, 3)               # both directions between nodes 1 and 3
    net.cut(1, 3, one_way=True) # packets from 1 to 3 only
    net.heal()
    net.close()                 # namespaces, bridge and their rules are gone
    net.diagnostics()           # the state of every link, address and neighbour, as text

Names carry this test session's token, so nothing here touches another session's (or a
real host's) interfaces. Needs root and iproute2 + iptables (the README's test command
installs them).
"""
from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time

from tests.support import leaks

TOKEN = leaks.SESSION_TOKEN[1:7]
_networks = itertools.count()


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def _run(*args: str, check: bool = True) -> None:
    subprocess.run(list(args), check=check, capture_output=True, timeout=30)


def _output(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    return f"$ {' '.join(args)}\n{done.stdout}{done.stderr}"


def _free_subnet(start: int) -> int:
    """A 10.200.<n>.0/24 (100 <= n < 200) no route here uses yet, trying n = 100 +
    start % 100 first: a subnet another session (or an interface left behind) already
    routes would take this network's traffic onto the wrong bridge."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"],
                            capture_output=True, text=True, timeout=30).stdout
    for i in range(100):
        n = 100 + (start + i) % 100
        if f"10.200.{n}." not in routes:
            return n
    raise RuntimeError("every 10.200.100-199.0/24 subnet is routed here already")


class Network:
    def __init__(self, nodes: int) -> None:
        k = next(_networks) % 36  # a fresh name per network: interfaces go away lazily
        tag = f"{TOKEN[:5]}{'0123456789abcdefghijklmnopqrstuvwxyz'[k]}"
        self.subnet = _free_subnet(int(TOKEN[:2], 16) + k)  # 10.200.<subnet>.0/24
        self.bridge = f"fcb{tag}"
        self.names = {i: f"fc{tag}{i}" for i in range(1, nodes + 1)}
        self.rules: list[tuple[int, list[str]]] = []
        made = []
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            made.append("bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i, ns in self.names.items():
                _run("ip", "netns", "add", ns)
                made.append(ns)
                host, inner = f"{ns}h", f"{ns}n"
                _run("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
                _run("ip", "link", "set", inner, "netns", ns)
                _run("ip", "link", "set", host, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", inner)
                _run("ip", "-n", ns, "link", "set", inner, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            self.check_reachable()
        except BaseException:
            self.close()
            raise

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Every node's address answers ARP from this namespace (the test's side of the
        bridge), else RuntimeError with diagnostics()."""
        missing = dict(self.names)
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            while missing and time.monotonic() < deadline:
                for i in list(missing):
                    try:
                        probe.sendto(b"", (self.ip(i), 9))  # discard: nobody listens
                    except OSError:
                        pass  # an unresolved neighbour: asked again below
                time.sleep(0.05)
                for i in list(missing):
                    neigh = subprocess.run(
                        ["ip", "neigh", "show", self.ip(i), "dev", self.bridge],
                        capture_output=True, text=True, timeout=30).stdout
                    if "lladdr" in neigh:
                        del missing[i]
        if missing:
            raise RuntimeError(f"nodes {sorted(missing)} do not answer ARP on "
                               f"{self.bridge}:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        """Links, addresses, neighbours and filters of the test's side and every node's
        namespace, for an error message."""
        out = [_output("ip", "-d", "link", "show", self.bridge),
               _output("ip", "addr", "show", self.bridge),
               _output("ip", "route", "show", "match", self.gateway),
               _output("bridge", "link", "show"),
               _output("bridge", "fdb", "show", "br", self.bridge),
               _output("ip", "neigh", "show", "dev", self.bridge)]
        for i, ns in self.names.items():
            out += [_output("ip", "route", "get", self.ip(i)),
                    _output("ip", "-n", ns, "addr"),
                    _output("ip", "-n", ns, "neigh"),
                    _output("ip", "netns", "exec", ns, "iptables", "-S")]
        return "\n".join(out)

    @property
    def gateway(self) -> str:
        return f"10.200.{self.subnet}.1"

    def ip(self, node: int) -> str:
        return f"10.200.{self.subnet}.{10 + node}"

    def cut(self, a: int, b: int, one_way: bool = False) -> None:
        """Drop packets from a to b (and from b to a unless one_way)."""
        pairs = [(a, b)] if one_way else [(a, b), (b, a)]
        for src, dst in pairs:
            rule = ["INPUT", "-s", self.ip(src), "-j", "DROP"]
            _run("ip", "netns", "exec", self.names[dst], "iptables", "-I", *rule)
            self.rules.append((dst, rule))

    def isolate(self, node: int) -> None:
        for other in self.names:
            if other != node:
                self.cut(node, other)

    def heal(self) -> None:
        for dst, rule in self.rules:
            _run("ip", "netns", "exec", self.names[dst], "iptables", "-D", *rule,
                 check=False)
        self.rules.clear()

    def close(self) -> None:
        for ns in self.names.values():
            _run("ip", "link", "del", f"{ns}h", check=False)  # both ends of the pair
            _run("ip", "netns", "del", ns, check=False)  # its rules go with it
        _run("ip", "link", "del", self.bridge, check=False)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
