"""Leak accounting: processes the tests started and /dev/shm names they created.

Every helper that starts a process registers its pid here; `check` fails a test whose
processes still run (and stops them, by pid, so the next test starts clean) or that
left new shm names of this session's nodes (which it then removes)."""
from __future__ import annotations

import os
import signal
import time

import posix_ipc

SHM_DIR = "/dev/shm"
# Test nodes are named t<session token>x<n> (tests.support.nodes), so a session judges
# only its own names and never touches a real node's or another session's (sessions may
# run in other PID namespaces, so the token is random, not the pid).
SESSION_TOKEN = f"t{os.urandom(4).hex()}"
SESSION_PREFIX = f"fastcluster.{SESSION_TOKEN}x"
_started: set[int] = set()


def register(pid: int) -> None:
    _started.add(pid)


def shm_names() -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith(SESSION_PREFIX)}


def alive(pid: int) -> bool:
    """True if pid runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def snapshot() -> set[str]:
    return shm_names()


def check(before: set[str]) -> list[str]:
    problems = []
    deadline = time.monotonic() + 5
    while any(alive(p) for p in _started) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in sorted(_started):
        if alive(pid):
            problems.append(f"process {pid} still running")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _started.clear()
    new = shm_names() - before
    for name in sorted(new):
        problems.append(f"/dev/shm/{name}")
        try:
            posix_ipc.unlink_shared_memory("/" + name)
        except posix_ipc.ExistentialError:
            pass
    return problems
