"""The master: owns the instance lock, the sockets and every shared-memory name; forks,
supervises, reaps, repairs and respawns the children; stops them all.

Start: lock the instance (a second master of the same instance refuses), remove shm
names a dead run left, bind every listening socket (a busy port fails here, before any
child exists), load the numba kernels, create the shared memory, fork the children.
Loop: signal handlers only enqueue; the loop dispatches `handle_<signal>`, reaps
children (repairing what a killed child left in the tables before anything else can
stumble on it), respawns with backoff, and stops children whose heartbeat went stale.
A child that exits with EXIT_BOOT halts the node with its message. Stop: SIGTERM to all,
SIGKILL after core.graceful_timeout_s, unlink every shm name, release the lock.
Neighbours: workers.child (what runs after fork), workers.sip_worker/cluster/timer.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgpack
import numpy as np

from fastcluster.core import config as config_mod
from fastcluster.core import logsetup
from fastcluster.core.config import Config, ConfigError
from fastcluster.core.errors import EXIT_BOOT, EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, StartupError
from fastcluster.core.settings import SETTINGS
from fastcluster.shm import control as CT
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.workers import osutil
from fastcluster.workers.child import Child, NodeContext, SipSocket, child_entry

if TYPE_CHECKING:
    from fastcluster.shm.node import NodeMemory, Stale

log = logging.getLogger("master")

TICK_S = 0.1
PAUSED_S = 1.0  # a loop turn this late means the master itself did not run
COMPILE_NOTICE_S = 1.0  # loading cached kernels takes ~0.3 s: longer means compiling
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT)


@dataclass
class ChildState:
    slot: int
    cls: type[Child]
    number: int
    pid: int = 0
    crashes: list[float] = field(default_factory=list)
    respawn_at: float = 0.0
    term_sent_at: float = 0.0  # watchdog: SIGTERM sent, SIGKILL due after the grace time


def _bind(family: int, kind: int, host: str, port: int, what: str,
          reuseport: bool = False) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        return sock
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(f"cannot listen on {what} {host}:{port}: {reason}") from None


def bind_sip(cfg: Config) -> list[SipSocket]:
    out = []
    shared = cfg["sip.dispatch"] == "shared"
    for index, (proto, host, port) in enumerate(cfg["sip.listen"]):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = _bind(family, socket.SOCK_DGRAM, host, port, f"sip {proto}",
                     reuseport=not shared)
        if cfg["sip.rcvbuf_bytes"]:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg["sip.rcvbuf_bytes"])
        out.append(SipSocket(index, proto, host, port, sock, reuseport=not shared))
    return out


def adopt_stale(cfg: Config, stale: Stale, mem: NodeMemory) -> None:
    """Copy into mem what a killed master's segments hold (shm.node.Stale), and say so."""
    started = time.monotonic()
    try:
        why = stale.adopt_into(mem, cfg["clusterer.node_id"])
    finally:
        stale.close()
    log.warning("removed %d shared-memory names left by a previous run: %s",
                len(stale.names), ", ".join(stale.names))
    if why is not None:
        log.warning("the tables they held were not adopted: %s", why)
    else:
        log.warning("adopted the tables a killed master left: %s in %.2f s; this node "
                    "re-sends what it had not replicated and syncs",
                    ", ".join(f"{n} {held} ({newer} newer than what was loaded)"
                              for n, (held, newer) in stale.adopted.items()),
                    time.monotonic() - started)


def load_tables(cfg: Config, mem: NodeMemory) -> None:
    """The tables as the database kept them (services.cluster.persistence)."""
    from fastcluster.services.cluster.persistence import StoreError, load_into

    try:
        loaded = load_into(cfg, mem)
    except StoreError as exc:
        raise StartupError(f"persistence: {exc}") from None
    if loaded is not None:
        log.info("loaded from %s in %.2f s: %s (skipped, expired or older: %s)",
                 loaded.where, loaded.seconds,
                 ", ".join(f"{n} {r}" for n, r in loaded.rows.items()),
                 ", ".join(f"{n} {r}" for n, r in loaded.skipped.items()))


def open_subscribers(cfg: Config) -> None:
    """Create the subscriber database if authentication needs it (the workers open
    it read-only), or say loudly that the registrar is open."""
    if not cfg["auth.enable"]:
        if any(not ipaddress.ip_address(h).is_loopback for _, h, _ in cfg["sip.listen"]):
            log.warning("authentication is off on a non-loopback SIP listener "
                        "(auth.allow_open_registrar): anyone may register any AOR")
        return
    from fastcluster.services.sip.subscribers import StoreError, ensure, list_users

    path = cfg.auth_db_path
    try:
        ensure(path)
        users = len(list_users(path))
    except (StoreError, OSError) as exc:
        raise StartupError(f"subscriber database: {exc}") from None
    log.info("authentication on: %d subscribers in %s", users, path)


class Systemd:
    """What the master tells systemd (Type=notify; nothing when not under systemd):
    READY=1 once every child has booted (stamped a heartbeat after its start), then
    WATCHDOG=1 at half of WatchdogSec= if systemd asked for it."""

    def __init__(self, pid: int, status: str) -> None:
        self.pid, self.status = pid, status
        self.ready = False
        self.watchdog_s = osutil.sd_watchdog_interval_s()
        self.watchdog_at = 0.0

    def tick(self, now: float, children: Iterable[ChildState], slots: np.ndarray) -> None:
        if not self.ready and all(c.pid and slots[c.slot, CT.P_HEARTBEAT] >
                                  slots[c.slot, CT.P_STARTED] for c in children):
            self.ready = True
            osutil.sd_notify(f"READY=1\nMAINPID={self.pid}\nSTATUS={self.status}")
        if self.watchdog_s and now - self.watchdog_at >= self.watchdog_s:
            self.watchdog_at = now
            osutil.sd_notify("WATCHDOG=1")


def repair_tables(mem: NodeMemory, slots: tuple[int, ...], pid: int) -> None:
    """Undo what a dead child (pid; its process slots) left in flight in the tables,
    free its locks, recount each table (holding its regions: lock word of the master)."""
    me = T.lock_word(os.getpid(), CT.SLOT_MASTER)
    done = [(name, *table.repair(mem.ring(slot, name), pid, slot, me))
            for slot in slots for name, table in mem.tables.items()]
    # the proxy's transactions: local, never replicated (no ring)
    done.append(("transactions", *mem.transactions.repair(R.no_ring(), pid, slots[0], me)))
    for name, fixed, freed in done:
        if fixed or freed:
            log.warning("repaired %s after pid %d: %s, %d lock(s) freed", name, pid,
                        {0: "no row in flight", 1: "torn row restored",
                         2: "finished row re-queued"}[fixed], freed)


class Master:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pid = os.getpid()
        self.lock = osutil.InstanceLock(cfg.lock_path)
        self.ctx: NodeContext | None = None
        self.children: dict[int, ChildState] = {}
        self.signals: list[int] = []
        self.stopping = False
        self.exit_code = EXIT_OK
        self._stop_prefault = threading.Event()
        self._prefaulting: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self.resumed_at = -1e9
        self.systemd = Systemd(self.pid, f"node {cfg['clusterer.node_id']} running: "
                                         f"{cfg['core.workers']} sip workers")

    # -- start

    def start(self) -> None:
        from fastcluster.shm.node import NodeMemory, Stale  # numba: after NUMBA_CACHE_DIR
        from fastcluster.shm.warm import freeze_kernels, warm_kernels

        if not self.lock.acquire():
            raise StartupError(f"instance {self.cfg.instance!r} is already running (master "
                               f"pid {self.lock.holder()}, lock {self.lock.path})")
        sip = bind_sip(self.cfg)
        open_subscribers(self.cfg)
        mi_host, mi_port = self.cfg["mi.listen"]
        mi_sock = _bind(socket.AF_INET6 if ":" in mi_host else socket.AF_INET,
                        socket.SOCK_STREAM, mi_host, mi_port, "mi")
        bin_host, bin_port = self.cfg["clusterer.bin_listen"]
        bin_sock = _bind(socket.AF_INET6 if ":" in bin_host else socket.AF_INET,
                         socket.SOCK_STREAM, bin_host, bin_port, "clusterer bin")
        script_sock = None
        if self.cfg["script.module"]:
            script_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            script_sock.bind(self.cfg.script_address)
            script_sock.listen(4)
        seconds = warm_with_progress(warm_kernels)
        log.info("kernels ready in %.2f s (%d frozen: no compiling after fork)", seconds,
                 freeze_kernels())
        stale = Stale.take(self.cfg.shm_prefix)  # a killed master's segments
        mem = NodeMemory.create(self.cfg, self.pid)
        try:
            load_tables(self.cfg, mem)  # the database first: what shm adds is newer
            if stale is not None:
                adopt_stale(self.cfg, stale, mem)
        except BaseException:
            mem.unlink()
            mem.close()
            raise
        if self.cfg["core.shm_prefault"] == "start":
            log.info("shared memory committed: %d MB in %.2f s", mem.nbytes >> 20,
                     mem.prefault())
        mem.control.set_slot(CT.SLOT_MASTER, self.pid, CT.ROLE_MASTER, 0)
        self.ctx = NodeContext(self.cfg, mem, sip, mi_sock, bin_sock, self.pid, script_sock)
        self._install_signals()
        for state in self._plan():
            self.children[state.slot] = state
            self._spawn(state)
        self.ctx.close_sockets(keep=("sip", "mi", "bin", "script"))  # reuseport: worker 1's
        if self.cfg["core.shm_prefault"] == "background":
            self._prefaulting = threading.Thread(target=self._prefault, name="prefault",
                                                 daemon=True)
            self._prefaulting.start()
        log.info("node %d started: %d sip workers on %s, mi %s:%d, bin %s:%d",
                 self.cfg["clusterer.node_id"], self.cfg["core.workers"],
                 ", ".join(s.label for s in sip), mi_host, mi_port, bin_host, bin_port)

    def _prefault(self) -> None:
        """Commit the shared memory while the node already runs (children fault only
        page-table entries then, ten times cheaper than allocating)."""
        assert self.ctx is not None
        mem = self.ctx.mem
        seconds = mem.prefault(self._stop_prefault.is_set)
        if not self._stop_prefault.is_set():
            log.info("shared memory committed: %d MB in %.2f s (in the background)",
                     mem.nbytes >> 20, seconds)

    def _plan(self) -> list[ChildState]:
        from fastcluster.workers.cluster import ClusterProcess
        from fastcluster.workers.sip_worker import SipWorker
        from fastcluster.workers.timer import TimerProcess

        plan = [ChildState(CT.SLOT_CLUSTER, ClusterProcess, 0),
                ChildState(CT.SLOT_TIMER, TimerProcess, 0)]
        if self.cfg["script.module"]:
            from fastcluster.workers.script import ScriptProcess

            plan.append(ChildState(CT.SLOT_SCRIPT, ScriptProcess, 0))
        for i in range(self.cfg["core.workers"]):
            plan.append(ChildState(CT.FIRST_SIP + i, SipWorker, i + 1))
        return plan

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, self._enqueue)

    def _enqueue(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _spawn(self, state: ChildState) -> None:
        assert self.ctx is not None
        pid = os.fork()
        if pid == 0:
            child_entry(self.ctx, state.cls, state.slot, state.number)
        state.pid = pid
        state.term_sent_at = 0.0
        self.ctx.mem.control.set_slot(state.slot, pid, state.cls.role, state.number)
        self.ctx.mem.control.slots[state.slot, CT.P_RESTARTS] = len(state.crashes)

    # -- loop

    def loop(self) -> int:
        last = time.monotonic()
        while True:
            try:
                select.select([self._wake_r], [], [], TICK_S)
            except InterruptedError:
                pass
            now = time.monotonic()
            if now - last > PAUSED_S:
                # The whole node was frozen (SIGSTOP, a VM pause): the children's
                # heartbeats are as old as ours. Give them time to beat again.
                log.warning("the master was paused for %.1f s: heartbeats are judged again "
                            "from now", now - last)
                self.resumed_at = now
            last = now
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            while self.signals:
                sig = self.signals.pop(0)
                getattr(self, f"handle_{signal.Signals(sig).name[3:].lower()}")()
            self.reap()
            if self.stopping:
                return self.exit_code
            self.watchdog()
            self.respawn_due()
            assert self.ctx is not None
            self.systemd.tick(now, self.children.values(), self.ctx.mem.control.slots)

    def handle_term(self) -> None:
        log.info("SIGTERM: stopping")
        self.stopping = True

    def handle_int(self) -> None:
        log.info("SIGINT: stopping")
        self.stopping = True

    def handle_quit(self) -> None:
        log.info("SIGQUIT: stopping")
        self.stopping = True

    def handle_chld(self) -> None:
        """Reaping happens on every loop turn; the signal only wakes the loop."""

    def handle_hup(self) -> None:
        assert self.ctx is not None
        osutil.sd_notify("RELOADING=1")
        try:
            self._reload()
        finally:
            osutil.sd_notify("READY=1")

    def _reload(self) -> None:
        assert self.ctx is not None
        try:
            cfg, applied, ignored = config_mod.reload(self.cfg)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded: %s", exc)
            return
        for name in ignored:
            log.warning("SIGHUP: %s changed but needs a restart; keeping %r", name,
                        self.cfg[name])
        self.cfg = cfg
        logsetup.set_level(cfg["core.log_level"])
        blob = msgpack.packb({s.name: cfg[s.name] for s in SETTINGS if s.reloadable})
        gen = self.ctx.mem.control.publish_reload(blob)
        log.info("SIGHUP: reloaded (generation %d): %s", gen,
                 ", ".join(applied) if applied else "nothing changed")

    def reap(self) -> None:
        assert self.ctx is not None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            state = next((c for c in self.children.values() if c.pid == pid), None)
            if state is None:
                continue
            repair_tables(self.ctx.mem, (state.slot,) + state.cls.writer_slots, pid)
            self.ctx.mem.control.clear_slot(state.slot)
            state.pid = 0
            if self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            name = f"{state.cls.title} {state.number}" if state.number else state.cls.title
            if code == EXIT_BOOT:
                log.error("%s (pid %d) failed at boot: stopping the node (see its log "
                          "lines above)", name, pid)
                self.exit_code = EXIT_BOOT
                self.stopping = True
                continue
            now = time.monotonic()
            state.crashes = [t for t in state.crashes if now - t < 60] + [now]
            delay = min(0.1 * 2 ** (len(state.crashes) - 1),
                        self.cfg["core.respawn_backoff_max_s"])
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.error("%s (pid %d) died (%s); respawning in %.1f s", name, pid, how, delay)
            state.respawn_at = now + delay

    def respawn_due(self) -> None:
        now = time.monotonic()
        for state in self.children.values():
            if state.pid == 0 and state.respawn_at and now >= state.respawn_at:
                state.respawn_at = 0.0
                self._spawn(state)

    def watchdog(self) -> None:
        assert self.ctx is not None
        ctl = self.ctx.mem.control
        now_ms = CT.monotonic_ms()
        now = time.monotonic()
        timeout_ms = self.cfg["core.child_timeout_s"] * 1000
        if now - self.resumed_at < self.cfg["core.child_timeout_s"]:
            return
        for state in self.children.values():
            if not state.pid:
                continue
            if state.term_sent_at:
                if now - state.term_sent_at > self.cfg["core.graceful_timeout_s"]:
                    log.error("pid %d ignored SIGTERM: SIGKILL", state.pid)
                    self._kill(state.pid, signal.SIGKILL)
                    state.term_sent_at = now + 3600  # once
                continue
            age = now_ms - int(ctl.slots[state.slot, CT.P_HEARTBEAT])
            if age > timeout_ms:
                log.error("%s (pid %d) stuck: no heartbeat for %.1f s; SIGTERM",
                          state.cls.title, state.pid, age / 1000)
                self._kill(state.pid, signal.SIGTERM)
                state.term_sent_at = now

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # -- stop

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL), then remove all shared memory."""
        self.stopping = True
        osutil.sd_notify("STOPPING=1")
        self._stop_prefault.set()
        if self._prefaulting is not None:
            self._prefaulting.join()
        if self.ctx is not None:
            self.ctx.mem.control.words[CT.W_STOPPING] = 1
        live = [c for c in self.children.values() if c.pid]
        for state in live:
            self._kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg["core.graceful_timeout_s"]
        while any(c.pid for c in self.children.values()):
            self.reap()
            if time.monotonic() > deadline:
                for state in self.children.values():
                    if state.pid:
                        log.warning("pid %d did not stop in time: SIGKILL", state.pid)
                        self._kill(state.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.01)
        if self.ctx is not None:
            self.ctx.close_sockets()
            mem = self.ctx.mem
            mem.unlink()
            mem.close()
            self.ctx = None
        self.lock.release()


def warm_with_progress(warm: Callable[..., float],
                       say: Callable[[str], None] = log.info) -> float:
    """Load the kernels (shm.warm). Loading them from the cache takes well under a
    second; when it takes longer, the kernels are being compiled -- the first start
    after an install or an upgrade, a minute or two on 2 cores -- and the log says so,
    then how far it got, instead of staying silent."""
    slow = threading.Event()

    def announce() -> None:
        slow.set()
        say(f"compiling the numba kernels into "
            f"{os.environ.get('NUMBA_CACHE_DIR', 'the numba cache')}: the first start after "
            "an install or upgrade takes 1-3 minutes on 2 cores; later starts load them in "
            "under a second")
        osutil.sd_notify("STATUS=compiling the numba kernels (first start)")

    def progress(done: int, total: int, step: str, elapsed: float) -> None:
        if slow.is_set():
            say(f"kernels: {done}/{total} compiled ({step}), {elapsed:.0f} s")

    timer = threading.Timer(COMPILE_NOTICE_S, announce)
    timer.daemon = True
    timer.start()
    try:
        return warm(progress)
    finally:
        timer.cancel()
        timer.join()  # no thread of ours may be running at fork


def run_master(cfg: Config) -> int:
    """`fastcluster` in the foreground: returns the process exit code."""
    try:
        logsetup.setup_from(cfg, "master")
    except OSError as exc:
        print(f"fastcluster: cannot log to syslog at {cfg['core.syslog_address']}: {exc}",
              file=sys.stderr)
        return EXIT_CONFIG
    osutil.set_title(f"fastcluster: master (node {cfg['clusterer.node_id']}, "
                     f"instance {cfg.instance})")
    master = Master(cfg)
    try:
        master.start()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        master.stop()
        return EXIT_CONFIG
    except BaseException:
        log.exception("cannot start")
        master.stop()
        return EXIT_RUNTIME
    try:
        code = master.loop()
    finally:
        master.stop()
    log.info("stopped")
    return code
