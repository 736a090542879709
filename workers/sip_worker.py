"""A SIP worker process: UDP in, the registrar (and later the proxy) on the shared tables,
UDP out from the socket the request came in on.

Dispatch over the workers (sip.dispatch): `shared` (default) has every worker block on
the same socket(s) the master bound, so the kernel hands each datagram to one waiting
worker and the load spreads evenly whatever the sources; `reuseport` gives each worker
its own SO_REUSEPORT socket, which the kernel picks by hashing the source address, so
one upstream proxy lands on one worker. docs/transport.md has the measurements.
Datagrams are read in batches (services.sip.batch: recvmmsg, the plain REGISTERs answered
in one compiled call and one sendmmsg, the rest through SipApp.handle). With one
listener the worker waits inside the compiled loop (shm.plainreg.serve: blocked in
recvmmsg on its own reuseport socket, in epoll_wait with EPOLLEXCLUSIVE on the shared
one), which comes back to Python for a datagram it does not answer, a new second's Date
line, the heartbeat, or when the wait times out to beat and look for reloads; with
several, epoll with EPOLLEXCLUSIVE, then drains each ready socket.
Counters are written straight into this process's statistics row in shared memory (a
memoryview: as cheap as a Python list), so a worker killed with SIGKILL loses none. The
worker beats and looks for reloads at least every IDLE_S, whether it is idle or busy (a
steady trickle of datagrams never lets recvfrom time out, and must not starve the
heartbeat). Neighbours: services.registrar (the application), workers.child.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from time import monotonic_ns

from fastcluster.core.stats import INDEX
from fastcluster.shm import control as CT
from fastcluster.workers.child import Child, SipSocket

log = logging.getLogger("sip")

IDLE_S = 0.2
IDLE_NS = int(IDLE_S * 1e9)
BATCHES = 1 << 30  # one listener: the compiled way keeps serving until IDLE_S has passed
I_TABLES_MAPPED = INDEX["core:sip_tables_mapped"]
POPULATE_PIECE = 16 << 20  # bytes mapped per madvise by the populating thread
DRAIN_BATCHES = 2  # batches taken from one ready socket before looking at the others


class SipWorker(Child):
    role = CT.ROLE_SIP
    title = "sip worker"

    @property
    def name(self) -> str:
        return f"sip worker {self.number}"

    def boot(self) -> None:
        from fastcluster.services.sip.batch import BatchReader
        from fastcluster.services.sip.dialogs import DialogTracker
        from fastcluster.services.sip.registrar import SipApp
        from fastcluster.workers import osutil

        # a worker woken by a datagram takes the CPU from a task with a longer slice
        # (the cluster process's flush, a timer run) instead of waiting for it to end
        if self.cfg["sip.time_slice_us"]:
            granted = osutil.set_time_slice(self.cfg["sip.time_slice_us"] * 1000)
            log.debug("time slice: %s", f"{granted // 1000} us" if granted else
                      "the kernel's (it sets none per task)")

        # reuseport: worker 1 keeps the master's socket, the others bind their own
        keep = ("sip", "sip-reuseport") if self.number == 1 else ("sip",)
        self.ctx.close_sockets(keep=keep)
        self.listeners: list[SipSocket] = []
        for s in self.ctx.sip:
            if s.sock is None:  # reuseport: a socket of our own
                sock = socket.socket(s.family, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if s.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self.cfg["sip.rcvbuf_bytes"]:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                    self.cfg["sip.rcvbuf_bytes"])
                sock.bind((s.host, s.port))
                s = SipSocket(s.index, s.proto, s.host, s.port, sock, reuseport=True)
            self.listeners.append(s)
        self.counts = memoryview(self.stats)
        self.credentials = None
        self.authenticator = None
        if self.cfg["auth.enable"]:
            from fastcluster.services.sip.auth import Authenticator
            from fastcluster.services.sip.subscribers import CredentialCache

            self.credentials = CredentialCache(self.cfg.auth_db_path,
                                               self.cfg["auth.cache_entries"], self.counts)
            self.authenticator = Authenticator(self.cfg, self.mem.nonces.key, self.mem.nonces,
                                               self.credentials, self.counts)
        self.app = SipApp(self, self.counts)
        # every page of the tables mapped: a request's first touch of a page would
        # otherwise cost it a fault (0.3 per REGISTER one at a time, bench.sip_profile).
        # In a thread at nice 19 (madvise runs without the GIL), while this one serves:
        # done first, it kept a node of large tables from answering for ~1 s after it
        # was ready (a phone retransmits after 500 ms).
        threading.Thread(target=self._populate, name="populate", daemon=True).start()
        self.reader = BatchReader(self.app)
        # dialog tracking plugs into the proxy (services.sip.proxy.DialogHook)
        listeners = sorted(self.listeners, key=lambda x: x.index)
        self.dialogs = DialogTracker(self, self.counts, self.app.proxy.local,
                                     [x.label for x in listeners])
        self._wire_dialogs()

    def _populate(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread
        except OSError:
            pass
        for segment in list(self.mem.segments.values()):
            segment.populate(POPULATE_PIECE)
        self.counts[I_TABLES_MAPPED] += 1

    def _wire_dialogs(self) -> None:
        self.app.proxy.dialogs = self.dialogs if self.cfg["dialog.track"] == "all" else None

    def apply_reload(self) -> None:
        self.app.apply_config(self.cfg)
        self.dialogs.apply_config(self.cfg)
        self._wire_dialogs()

    def idle(self) -> None:
        self.beat()
        self.check_reload()
        if self.credentials is not None:
            self.credentials.refresh()  # a `fastcluster user` change shows within IDLE_S

    def run(self) -> None:
        if len(self.listeners) == 1:
            self._run_one(self.listeners[0])
        else:
            self._run_many()

    def _run_one(self, listener: SipSocket) -> None:
        sock = listener.sock
        assert sock is not None
        sock.setblocking(True)
        sec = int(IDLE_S)
        usec = int((IDLE_S - sec) * 1e6)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))
        # A socket every worker reads: blocked in recvmmsg, the worker that waited longest
        # is woken, so requests spaced out visit the workers in turn, each one cold; in
        # epoll_wait with EPOLLEXCLUSIVE the first idle one in a fixed order is
        # (shm.mmsg.wait_batch): spaced out, they keep landing on one warm worker.
        ep = None
        if self.cfg["sip.dispatch"] == "shared":
            ep = select.epoll()
            ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
        epfd = ep.fileno() if ep is not None else -1
        serve = self.reader.serve
        due = monotonic_ns() + IDLE_NS
        try:
            while not self.stopping:  # serve returns by `due` at the latest (or a signal)
                n = serve(listener, True, due, BATCHES, epfd)
                if n == 0 or monotonic_ns() >= due:
                    self.idle()
                    due = monotonic_ns() + IDLE_NS
        finally:
            if ep is not None:
                ep.close()

    def _run_many(self) -> None:
        ep = select.epoll()
        by_fd = {}
        for listener in self.listeners:
            assert listener.sock is not None
            listener.sock.setblocking(False)
            ep.register(listener.sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
            by_fd[listener.sock.fileno()] = listener
        serve = self.reader.serve
        due = monotonic_ns() + IDLE_NS
        try:
            while not self.stopping:
                for fd, _ in ep.poll(IDLE_S):  # level-triggered: the rest waits a poll
                    serve(by_fd[fd], False, due, DRAIN_BATCHES)
                if monotonic_ns() >= due:
                    self.idle()
                    due = monotonic_ns() + IDLE_NS
        finally:
            ep.close()
