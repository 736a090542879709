"""Hosts of a test network: one network namespace per node, joined by a bridge in the
test's own namespace (which reaches every node), and packet filters to cut links.

    net = Network(3)            # namespaces with 10.200.K.11, .12, .13; the test is .1
    net.cut(1, 3)               # both directions between nodes 1 and 3
    net.cut(1, 3, one_way=True) # packets from 1 to 3 only
    net.heal()
    net.close()                 # namespaces, bridge and their rules are gone

Names carry this test session's token, so nothing here touches another session's (or a
real host's) interfaces. Needs root and iproute2 + iptables (the README's test command
installs them).
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess

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


class Network:
    def __init__(self, nodes: int) -> None:
        k = next(_networks) % 36  # a fresh name per network: interfaces go away lazily
        tag = f"{TOKEN[:5]}{'0123456789abcdefghijklmnopqrstuvwxyz'[k]}"
        self.subnet = 100 + (int(TOKEN[:2], 16) + k) % 100  # 10.200.<subnet>.0/24
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
        except BaseException:
            self.close()
            raise

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
