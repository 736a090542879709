"""What every child process shares: boot after fork, signals, heartbeat, statistics row,
settings reload, and the exit codes the master reads.

A child's life: `child_entry` (in the forked process) sets the parent-death signal, the
title and logging, then `boot()` (a failure there exits with EXIT_BOOT: the master
halts instead of respawning in a loop), then `run()` until SIGTERM sets `stopping`.
Signal handlers only set flags; loops look at them. Neighbours: workers.master (forks),
workers.sip_worker / cluster / timer / script (the roles).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import msgpack

from fastcluster.core import logsetup
from fastcluster.core.config import Config
from fastcluster.core.errors import EXIT_BOOT, EXIT_OK, EXIT_RUNTIME
from fastcluster.core.settings import SETTINGS_BY_NAME
from fastcluster.shm import control as CT
from fastcluster.shm import table as T
from fastcluster.shm.node import NodeMemory
from fastcluster.workers import osutil

log = logging.getLogger("child")


@dataclass
class SipSocket:
    """One SIP listener: its socket and what it listens on. In reuseport mode the
    master's socket is handed to SIP worker 1 (so the port never has no socket between
    the master's bind and the workers' own); the master then drops it (sock None), and
    every other worker, or worker 1 respawned, binds its own."""
    index: int
    proto: str
    host: str
    port: int
    sock: socket.socket | None
    reuseport: bool = False

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.proto}:{host}:{self.port}"


@dataclass
class NodeContext:
    """What the master hands to every child across fork."""
    cfg: Config
    mem: NodeMemory
    sip: list[SipSocket]
    mi_sock: socket.socket | None
    bin_sock: socket.socket | None
    master_pid: int
    script_sock: socket.socket | None = None  # listening; the script process connects
    extra: dict[str, Any] = field(default_factory=dict)

    def close_sockets(self, keep: tuple[str, ...] = ()) -> None:
        """Close the inherited sockets this process does not use (sip, mi, bin,
        script), so a port is held only by the processes that serve it. A reuseport
        listener's socket is kept only with "sip-reuseport" (SIP worker 1): held but
        never read anywhere else, it would take its share of the datagrams."""
        for s in self.sip:
            if s.sock is not None and ("sip" not in keep or
                                       s.reuseport and "sip-reuseport" not in keep):
                s.sock.close()
                s.sock = None
        for name in ("mi", "bin", "script"):
            sock = getattr(self, f"{name}_sock")
            if name not in keep and sock is not None:
                sock.close()


class Child:
    role: int = CT.ROLE_SIP
    title: str = "child"
    writer_slots: tuple[int, ...] = ()  # more process slots its threads write the tables as

    def __init__(self, ctx: NodeContext, slot: int, number: int) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.mem = ctx.mem
        self.slot = slot
        self.number = number
        self.pid = os.getpid()
        self.me = T.lock_word(self.pid, slot)  # the value this process writes in locks
        self.stats = ctx.mem.control.stats[slot]
        # this process's replication ring of each table (it is their only producer)
        self.rings = {name: ctx.mem.ring(slot, name) for name in ctx.mem.tables}
        self.stopping = False
        self._reload_gen = ctx.mem.control.reload_generation

    @property
    def name(self) -> str:
        return self.title

    def boot(self) -> None:
        """Per-process set-up after fork (may raise: the master then halts)."""

    def run(self) -> None:
        raise NotImplementedError

    def beat(self) -> None:
        self.mem.control.beat(self.slot)

    def handle_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def check_reload(self) -> None:
        """Apply settings the master published since the last look (cheap when none)."""
        gen = self.mem.control.reload_generation
        if gen == self._reload_gen:
            return
        self._reload_gen = gen
        values = msgpack.unpackb(self.mem.control.reload_blob(), use_list=False)
        cfg_values = dict(self.cfg.values)
        for name, value in values.items():
            if name in SETTINGS_BY_NAME and SETTINGS_BY_NAME[name].reloadable:
                cfg_values[name] = value
        self.cfg = Config(values=cfg_values, sources=self.cfg.sources,
                          ini_path=self.cfg.ini_path, cli=self.cfg.cli)
        logsetup.set_level(self.cfg["core.log_level"])
        self.apply_reload()

    def apply_reload(self) -> None:
        """Hook for roles whose services cache reloadable settings: each such service has
        an `apply_config(cfg)` that the role calls from here (one pattern everywhere)."""


def child_entry(ctx: NodeContext, cls: type[Child], slot: int, number: int) -> None:
    """Run in the forked child; never returns (os._exit)."""
    code = EXIT_RUNTIME
    try:
        osutil.die_with_parent(ctx.master_pid)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master decides how to stop
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload comes through shm
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        child = cls(ctx, slot, number)
        signal.signal(signal.SIGTERM, child.handle_term)
        osutil.set_title(f"fastcluster: {child.name}")
        logsetup.rename(child.name.replace(" worker ", "-").replace(" ", "-"))
        try:
            child.boot()
        except Exception:
            log.error("boot failed:\n%s", traceback.format_exc())
            code = EXIT_BOOT
            raise
        child.beat()
        child.run()
        code = EXIT_OK
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_RUNTIME
    except BaseException:
        if code != EXIT_BOOT:
            log.error("crashed:\n%s", traceback.format_exc())
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)
