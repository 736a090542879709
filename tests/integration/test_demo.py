"""`fastcluster demo` as a new user runs it: three nodes that see each other Up, printed
addresses that answer, a REGISTER burst replicated to every node, a node killed and
brought back, and Ctrl-C leaving no process and no shared-memory name behind."""
from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

from fastcluster.services.mi.client import call
from tests.support import leaks
from tests.support.nodes import up_set, wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]


def free_base(count: int) -> int:
    """A port such that base .. base+count-1 are free for TCP and UDP (best effort)."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


class MiNode:
    """Just enough of tests.support.nodes.Node for up_set()."""

    def __init__(self, url: str) -> None:
        self.url = url

    def mi(self, method: str, **params) -> dict:
        return call(self.url, method, params, timeout=10)


def read_until(proc: subprocess.Popen, needle: str, timeout: float, out: list[str]) -> None:
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            out.append(line)
            if needle in line:
                return
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"no {needle!r} in the demo's output:\n{''.join(out)}")


def test_demo_cluster_in_one_command(tmp_path) -> None:
    folder = tmp_path / "demo"
    sip, mi, bin_ = free_base(3), free_base(3), free_base(3)
    prefix = f"{leaks.SESSION_TOKEN}xdemo"
    cli = [sys.executable, "-m", "fastcluster.core.cli"]
    demo = subprocess.Popen(
        cli + ["demo", "-n", "3", "-w", "1", "--dir", str(folder), "--sip-port", str(sip),
               "--mi-port", str(mi), "--bin-port", str(bin_), "--instance-prefix", prefix],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    leaks.register(demo.pid)
    out: list[str] = []
    try:
        read_until(demo, "Ctrl-C stops every node", 120, out)
        text = "".join(out)
        assert "3 nodes up" in text
        state = json.loads((folder / "demo.json").read_text())
        for n in state["nodes"]:
            leaks.register(n["pid"])
            for kid in leaks.children_of(n["pid"]):
                leaks.register(kid)
            # what the demo printed for each node is where it answers
            assert f"udp:127.0.0.1:{n['sip'][1]}" in text and n["page"] in text
            assert str(n["pid"]) in text
        nodes = [MiNode(n["mi_url"]) for n in state["nodes"]]
        for i, node in enumerate(nodes, 1):
            assert up_set(node) == {1, 2, 3} - {i}
        assert [n["sip"][1] for n in state["nodes"]] == [sip, sip + 1, sip + 2]
        assert len({n["instance"] for n in state["nodes"]}) == 3

        # the printed commands work as printed: `mi -c nodeK.ini` and `demo register`
        listed = subprocess.run(cli + ["mi", "-c", str(folder / "node1" / "node.ini"),
                                       "clusterer_list"], capture_output=True, text=True,
                                timeout=30)
        assert listed.returncode == 0 and '"link_state": "Up"' in listed.stdout
        burst = subprocess.run(cli + ["demo", "register", "-n", "500", "--dir", str(folder)],
                               capture_output=True, text=True, timeout=60)
        assert burst.returncode == 0, burst.stdout + burst.stderr
        assert "500 answered 200" in burst.stdout
        assert "node 1: 500, node 2: 500, node 3: 500" in burst.stdout
        shown = subprocess.run(cli + ["mi", "-c", str(folder / "node3" / "node.ini"),
                                      "ul_show_contact", "location",
                                      "user1@demo.example"],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "sip:user1@127.0.0.1" in shown.stdout

        # kill -9 node 3: the others see it Down, the demo restarts it, it comes back
        os.kill(state["nodes"][2]["pid"], signal.SIGKILL)
        wait_until(lambda: up_set(nodes[0]) == {2}, 10, "node 3 Down on node 1")
        read_until(demo, "node 3 restarted", 30, out)
        restarted = json.loads((folder / "demo.json").read_text())["nodes"][2]["pid"]
        leaks.register(restarted)
        wait_until(lambda: up_set(nodes[0]) == {2, 3} and up_set(nodes[2]) == {1, 2}, 30,
                   "node 3 back")
        wait_until(lambda: call(state["nodes"][2]["mi_url"], "get_statistics",
                                {"statistics": ["usrloc:registered_contacts"]})[
            "usrloc:registered_contacts"] == 500, 30, "node 3 synced again")
        for kid in leaks.children_of(restarted):
            leaks.register(kid)

        # Ctrl-C stops everything and cleans up
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
        out.append(demo.stdout.read() or "")
        assert "demo stopped" in "".join(out)
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"fastcluster.{prefix}")]
        assert not (folder / "demo.json").exists()
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            demo.wait(30)
        demo.stdout.close()


def test_demo_refuses_busy_ports(tmp_path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "fastcluster.core.cli", "demo", "-n", "2", "--dir",
             str(tmp_path / "d"), "--mi-port", str(port - 1), "--sip-port",
             str(free_base(2)), "--bin-port", str(free_base(2)), "--instance-prefix",
             f"{leaks.SESSION_TOKEN}xbusy"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{port}/tcp" in result.stderr and "--mi-port" in result.stderr


def test_scripts_run_demo_is_fastcluster_demo() -> None:
    script = (REPO / "scripts" / "run").read_text()
    assert 'if [ "${1:-}" = "--demo" ]; then' in script
    assert 'exec .venv/bin/fastcluster demo "$@"' in script
