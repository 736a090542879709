"""The README's "Running a cluster" commands, run exactly as written.

The one-machine block runs in a network namespace of its own (its 127.0.0.1 and ports
5555, 8888, ... are private), the several-machines block in two namespaces joined by a
veth pair carrying 10.0.0.1 and 10.0.0.2. Each node also gets a private /dev/shm, /tmp
and /var/lib (a mount namespace), so the default instance names (n1, n2), lock files
and data folders of the commands as written never meet a real node of this machine.
Needs root and iproute2, like the fault suite."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.support import leaks, netns

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
pytestmark = pytest.mark.netns
if netns.available() is not None or not (BIN / "fastcluster").exists():
    pytestmark = [pytest.mark.netns, pytest.mark.skip(
        reason=netns.available() or "needs the fastcluster console script")]

# a private /dev/shm, /tmp and /var/lib for the command, then the command itself
PRIVATE = ("mount -t tmpfs none /dev/shm && mount -t tmpfs none /tmp && "
           "mount -t tmpfs none /var/lib && exec \"$@\"")


def readme_blocks() -> list[list[str]]:
    """The shell blocks that follow a 'test_readme.py runs this block' comment, as
    commands (continuation lines joined, comments dropped)."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"<!-- tests/integration/test_readme\.py runs this block[^>]*-->\n"
                        r"```sh\n(.*?)```", text, re.S)
    out = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", "", block)
        out.append([line.split(" #")[0].strip() for line in joined.splitlines()
                    if line.strip()])
    return out


def env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("FASTCLUSTER_") and k != "XDG_RUNTIME_DIR"}
    base["PATH"] = f"{BIN}:{base.get('PATH', '')}"
    return base


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)

    def start(self, command: str, log: pathlib.Path) -> subprocess.Popen:
        fh = open(log, "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, "unshare", "--mount", "--propagation",
             "private", "sh", "-c", PRIVATE, "sh", *shlex.split(command)],
            stdout=fh, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
        fh.close()
        leaks.register(proc.pid)
        return proc

    def run(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *shlex.split(command)],
                              capture_output=True, text=True, timeout=30, env=env())

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=30)


def up_in(result: subprocess.CompletedProcess) -> set[int]:
    """Node ids whose link_state is Up in a `fastcluster mi clusterer_list` output."""
    return {int(i) for i, state in re.findall(
        r'"node_id": (\d+),.*?"link_state": "(\w+)"', result.stdout, re.S) if state == "Up"}


def wait_for(check, timeout: float, what: str, procs: list[subprocess.Popen],
             logs: list[pathlib.Path]):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.3)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
                      for log in logs if log.exists())
    raise AssertionError(f"{what} (last: {last!r})\n{tails}")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()  # `exec` made the node the process itself: a graceful stop
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def register_children(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        for kid in leaks.children_of(p.pid):
            leaks.register(kid)


def test_one_machine_example_as_written(tmp_path) -> None:
    one_machine = readme_blocks()[0]
    nodes = [c for c in one_machine if not c.startswith("fastcluster mi")]
    checks = [c for c in one_machine if c.startswith("fastcluster mi")]
    assert len(nodes) == 2 and len(checks) == 2
    ns = Namespace(f"fcr{leaks.SESSION_TOKEN[1:7]}a")
    procs: list[subprocess.Popen] = []
    logs = [tmp_path / f"node{i}.log" for i in (1, 2)]
    try:
        procs = [ns.start(cmd, log) for cmd, log in zip(nodes, logs)]
        # node 1 sees node 2 Up, node 2 sees node 1 Up: the README's own checks
        wait_for(lambda: [up_in(ns.run(c)) for c in checks] == [{2}, {1}] or
                 [ns.run(c).stderr for c in checks], 90, "the two nodes see each other",
                 procs, logs)
        register_children(procs)
    finally:
        stop(procs)
        ns.close()
    assert [p.returncode for p in procs] == [0, 0]


def test_several_machines_example_as_written(tmp_path) -> None:
    machines = readme_blocks()[1]
    assert len(machines) == 2
    addresses = [re.search(r"--clusterer-bin-listen (10\.0\.0\.\d+):", c).group(1)
                 for c in machines]
    assert addresses == ["10.0.0.1", "10.0.0.2"]
    token = leaks.SESSION_TOKEN[1:7]
    spaces = [Namespace(f"fcr{token}m{i}") for i in (1, 2)]
    veth = (f"fcv{token}a", f"fcv{token}b")
    procs: list[subprocess.Popen] = []
    logs = [tmp_path / f"machine{i}.log" for i in (1, 2)]
    try:
        subprocess.run(["ip", "link", "add", veth[0], "netns", spaces[0].name, "type",
                        "veth", "peer", "name", veth[1], "netns", spaces[1].name],
                       check=True, timeout=30)
        for ns, dev, address in zip(spaces, veth, addresses):
            subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{address}/24", "dev", dev],
                           check=True, timeout=30)
            subprocess.run(["ip", "-n", ns.name, "link", "set", dev, "up"], check=True,
                           timeout=30)
        procs = [ns.start(cmd, log) for ns, cmd, log in zip(spaces, machines, logs)]
        # each machine's MI is on its own 127.0.0.1:8888 (the default)
        wait_for(lambda: [up_in(ns.run("fastcluster mi clusterer_list"))
                          for ns in spaces] == [{2}, {1}], 90,
                 "the two machines see each other", procs, logs)
        register_children(procs)
    finally:
        stop(procs)
        for ns in spaces:
            ns.close()
    assert [p.returncode for p in procs] == [0, 0]
