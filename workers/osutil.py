"""Operating-system details of the process model: parent-death signal, process titles,
the per-instance lock file.

systemd notifications (sd_notify: readiness, reload, stop, watchdog). Linux only (prctl).
Neighbours: workers.master, workers.child.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` when the parent dies; exit now if it already did."""
    if _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


SYS_SCHED_SETATTR, SYS_SCHED_GETATTR = 314, 315  # x86-64


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32),
                ("flags", ctypes.c_uint64), ("nice", ctypes.c_int32),
                ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64)]


def set_time_slice(ns: int) -> int:
    """Ask the scheduler (EEVDF, Linux 6.12+) for a time slice of `ns` for this process
    (SCHED_OTHER, its nice value kept): a task with a shorter slice than the one
    running gets the CPU as soon as it wakes instead of waiting out the other's slice.
    Returns the slice in force afterwards (0: the kernel does not report one, as
    before 6.12; nothing changed then)."""
    attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr))
    if _libc.syscall(SYS_SCHED_GETATTR, 0, ctypes.byref(attr), attr.size, 0) != 0:
        return 0
    if attr.policy != 0:  # not SCHED_OTHER (an operator's choice): left alone
        return 0
    attr.runtime = ns
    if _libc.syscall(SYS_SCHED_SETATTR, 0, ctypes.byref(attr), 0) != 0:
        return 0
    _libc.syscall(SYS_SCHED_GETATTR, 0, ctypes.byref(attr), attr.size, 0)
    return int(attr.runtime)


class _Title:
    """Rewrites the process's argv area, so `ps` shows the title (like setproctitle).

    The kernel tells where that area is (/proc/self/stat fields arg_start, arg_end);
    CPython keeps its own copy of argv, so overwriting the original is safe.
    """

    def __init__(self) -> None:
        self.area: tuple[int, int] | None = None
        try:
            with open("/proc/self/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            # fields[0] is field 3 (state); arg_start and arg_end are fields 48 and 49.
            start, end = int(fields[45]), int(fields[46])
            if 0 < start < end:
                self.area = (start, end - start)
        except (OSError, ValueError, IndexError):
            self.area = None

    def set(self, title: str) -> None:
        data = title.encode("utf-8", "replace")
        _libc.prctl(PR_SET_NAME, ctypes.c_char_p(data[:15]), 0, 0, 0)
        if self.area is None:
            return
        start, size = self.area
        data = data[:size - 1]
        ctypes.memset(start, 0, size)
        ctypes.memmove(start, data, len(data))


_title = _Title()


def set_title(title: str) -> None:
    """`fastcluster: sip worker 3` in ps, top and /proc/PID/comm (first 15 bytes)."""
    _title.set(title)


class InstanceLock:
    """An flock held for the master's lifetime; a second master of the instance fails.

    The kernel releases the lock when the holder dies, even by SIGKILL, so a stale file
    never blocks a restart. The file keeps the holder's pid for the error message.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            with open(self.path, encoding="ascii") as fh:
                return fh.read().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        # The file stays: unlinking it would let a new master lock a fresh inode while
        # an old one still held the old inode. A file nobody locks is not "running".
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about the service: READY=1, RELOADING=1, STOPPING=1,
    STATUS=..., WATCHDOG=1. A datagram on $NOTIFY_SOCKET, as sd_notify(3) sends it;
    False when there is no such socket (not under systemd) or it refuses."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def sd_watchdog_interval_s() -> float:
    """Half the WatchdogSec= systemd gave this process (0: none): how often to ping."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        pid = int(os.environ.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return 0.0
    return usec / 2e6 if usec > 0 and pid == os.getpid() else 0.0
