"""The script process's side of the script API: one connection to the cluster process,
the flusher that writes bursts, the reader that calls the hooks (see the package
docstring for the behaviour). Neighbours: services.script (the API), workers.script,
services.script.bridge (the other end of the connection).
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack

from fastcluster.core.config import Config
from fastcluster.core.stats import INDEX
from fastcluster.core.messages import BadMessage, Msg, ScriptCtl, from_wire
from fastcluster.core.wire import CorruptFrame, Decoder, Header, encode
from fastcluster.services.cluster.api import SendResult
from fastcluster.services.script import (
    HOOKS,
    MI_COMMANDS,
    MessageTooLarge,
    ScriptMIError,
    describe_commands,
)

log = logging.getLogger("script")

FRAME_ITEMS_BYTES = 256 << 10  # messages packed together in one frame, at most
MAX_ABANDONED = 8  # hung hook threads before the process gives up (and is respawned)
SEND_TIMEOUT_S = 2.0  # a cluster process that reads nothing for this long is gone
FRAME = -1  # a pending entry that is a complete frame (control messages)
BURST_GAP_S = 100e-6  # messages closer than this form a burst: written by the flusher
FIXARRAY_2 = b"\x92"  # msgpack: an array of two elements follows

# ---------------------------------------------------------------- the runtime

class Waiter:
    def __init__(self, expected: set[int]) -> None:
        self.expected = expected
        self.replies: dict[int, Any] = {}
        self.done = threading.Event()

    def add(self, node: int, msg: Any) -> None:
        self.replies.setdefault(node, msg)
        if self.expected <= set(self.replies):
            self.done.set()


def frames_of(items: list[tuple[int, int, int, bytes]], me: int) -> list[bytes]:
    """One frame per run of messages to the same destination (kind, cluster, dst), at
    most FRAME_ITEMS_BYTES of messages each; FRAME entries are complete frames."""
    frames: list[bytes] = []
    run: list[bytes] = []
    size = 0
    key: tuple[int, int, int] | None = None

    def close_run() -> None:
        if run and key is not None:
            frames.append(encode(Header(Msg(key[0]), key[1], me, key[2]), raw=b"".join(run)))

    for kind, cluster, dst, item in items:
        if kind == FRAME:
            close_run()
            frames.append(item)
            key, run, size = None, [], 0
            continue
        if (kind, cluster, dst) != key or size + len(item) > FRAME_ITEMS_BYTES:
            close_run()
            key, run, size = (kind, cluster, dst), [], 0
        run.append(item)
        size += len(item)
    close_run()
    return frames


class Runtime:
    """Everything the API needs; one per script process (module global `_runtime`)."""

    def __init__(self, proc: Any, module: Any) -> None:
        self.proc = proc
        self.me: int = proc.cfg["clusterer.node_id"]
        self.address = proc.cfg.script_address
        self.max_frame = proc.cfg["clusterer.max_frame_bytes"]
        self.hooks = {name: getattr(module, name, None) for name in HOOKS}
        self.sock: socket.socket | None = None
        self.snapshot: dict[int, dict[str, Any]] = {}  # cluster -> {enabled, nodes}
        self.pending: list[tuple[int, int, int, bytes]] = []  # kind, cluster, dst, item
        self.pending_lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.last_queued = 0.0
        self.flush_wanted = threading.Event()
        self.count_lock = threading.Lock()
        self.backlog: collections.deque = collections.deque()  # hook calls to make
        self.waiters: dict[str, Waiter] = {}
        self.tag_prefix = os.urandom(4).hex()
        self.tags = itertools.count(1)
        self.abandoned: list[_Reader] = []
        self.mi_pool = ThreadPoolExecutor(4, thread_name_prefix="script-mi")
        threading.Thread(target=self._flusher, name="script-flusher", daemon=True).start()
        self.reader: _Reader | None = None
        self.connected = threading.Event()
        for name, fn in self.hooks.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"script hook {name} is not a function")

    @property
    def cfg(self) -> Config:
        return self.proc.cfg  # follows reloads

    def count(self, name: str, n: int = 1) -> None:
        with self.count_lock:
            self.proc.stats[INDEX[name]] += n

    # -- connection

    def connect(self) -> bool:
        """(Re)connect to the cluster process; True when connected."""
        if self.connected.is_set():
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            log.debug("cluster process not reachable yet: %s", exc)
            return False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        _timeval(SEND_TIMEOUT_S))
        self.sock = sock
        self.connected.set()
        self.control(ScriptCtl(hello=os.getpid(), mi=describe_commands()))
        self.reader = _Reader(self, sock, Decoder(self.max_frame))
        return True

    def lost(self, sock: socket.socket, why: str) -> None:
        if self.sock is sock and self.connected.is_set():
            log.warning("connection to the cluster process lost (%s): reconnecting", why)
            self.connected.clear()
            self.snapshot = {}
        try:
            sock.close()
        except OSError:
            pass

    def close(self) -> None:
        if self.sock is not None:
            self.lost(self.sock, "stopping")
        self.mi_pool.shutdown(wait=False, cancel_futures=True)

    # -- sending

    def control(self, payload: ScriptCtl) -> None:
        """A control message for the cluster process (in order with the messages)."""
        frame = encode(Header(Msg.SCRIPT_CTL, 0, self.me, self.me), payload)
        with self.pending_lock:
            self.pending.append((FRAME, 0, 0, frame))
        self._flush()

    def _queued(self) -> None:
        """Something was added to pending: write it now, unless it is part of a burst (the
        previous message came less than BURST_GAP_S ago). A burst is left to the flusher
        thread, which runs when the sender pauses or the interpreter switches threads and
        then writes everything queued at once: a few large frames instead of one write
        per message. A lone message (a request, its reply) goes at once."""
        now = time.monotonic()
        burst = now - self.last_queued < BURST_GAP_S
        self.last_queued = now
        if not burst:
            self._flush()
        elif not self.flush_wanted.is_set():
            self.flush_wanted.set()

    def _flusher(self) -> None:
        while True:
            self.flush_wanted.wait()
            self.flush_wanted.clear()
            self._flush()

    def _flush(self) -> None:
        """Write what is pending. Whoever holds the connection writes everything queued
        meanwhile, and looks again after releasing it, so nothing is left behind."""
        while self.pending:
            if not self.out_lock.acquire(blocking=False):
                return
            try:
                with self.pending_lock:
                    items, self.pending = self.pending, []
                sock = self.sock
                if sock is None or not self.connected.is_set():
                    self.count("script:dropped_msgs", len(items))
                    continue
                try:
                    sock.sendall(b"".join(frames_of(items, self.me)))
                except OSError as exc:  # a timeout may have cut a frame: stream lost
                    self.count("script:dropped_msgs", len(items))
                    self.lost(sock, f"send: {exc}")
            finally:
                self.out_lock.release()

    def pack(self, tag: str, msg: Any) -> bytes:
        """The wire item [tag, msg]; refuses what cannot be sent, before sending."""
        try:
            body = msgpack.packb(msg, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            self.count("script:refused_msgs")
            raise TypeError(f"a cluster message must be msgpack-able (str, bytes, int, "
                            f"float, bool, None, lists, dicts): {exc}") from None
        limit = self.cfg["script.max_message_bytes"]
        if len(body) > limit:
            self.count("script:refused_msgs")
            raise MessageTooLarge(f"cluster message of {len(body)} bytes (msgpack) exceeds "
                                  f"script.max_message_bytes ({limit})")
        return FIXARRAY_2 + msgpack.packb(tag) + body

    def queue_items(self, kind: Msg, cluster: int, dsts: list[int], item: bytes) -> None:
        """Queue one message to each of dsts (this node's own come back through the
        cluster process, in order with the rest)."""
        with self.pending_lock:
            self.pending.extend((int(kind), cluster, d, item) for d in dsts)
        self._queued()
        self.count("script:requests_sent" if kind == Msg.SCRIPT_REQ else
                   "script:replies_sent", len(dsts))

    def route(self, cluster: int, dst: int | None) -> SendResult:
        """Result code for a send to dst (None: a broadcast), from the cluster view."""
        view = self.snapshot.get(cluster)
        if view is None:
            return SendResult.SEND_ERR  # unknown cluster, or no cluster process yet
        if not view["enabled"]:
            return SendResult.CURR_DISABLED
        nodes = view["nodes"]
        if dst is None:
            return SendResult.SUCCESS if self.up_nodes(cluster) else SendResult.DEST_DOWN
        if dst == self.me:
            return SendResult.SUCCESS
        if dst not in nodes:
            return SendResult.SEND_ERR
        return SendResult.SUCCESS if nodes[dst]["up"] else SendResult.DEST_DOWN

    def up_nodes(self, cluster: int) -> list[int]:
        view = self.snapshot.get(cluster)
        return sorted(n for n, d in view["nodes"].items() if d["up"] and n != self.me) \
            if view else []

    def new_tag(self, cluster: int) -> str:
        return f"{cluster}-{self.me}-{self.tag_prefix}{next(self.tags):016x}"

    # -- receiving

    def dispatch(self, frames: list[Any]) -> None:
        """Frames read from the cluster process: replies to their waiters, hook calls to
        the backlog, control messages applied."""
        for frame in frames:
            h = frame.header
            if h.type in (Msg.SCRIPT_REQ, Msg.SCRIPT_RPL):
                self._deliver(h.type, h.cluster, h.source, frame.payload)
            elif h.type == Msg.SCRIPT_CTL:
                try:
                    self._control(from_wire(ScriptCtl, frame.payload))
                except BadMessage as exc:
                    log.warning("malformed control frame from the cluster process: %s", exc)

    def _deliver(self, kind: Msg, cluster: int, source: int, raw: bytes) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                    max_buffer_size=max(len(raw), 1 << 16))
        unpacker.feed(raw)
        try:
            for item in unpacker:
                if not (isinstance(item, list) and len(item) == 2 and
                        isinstance(item[0], str)):
                    log.warning("malformed script message from node %d dropped", source)
                    continue
                tag, msg = item
                if kind == Msg.SCRIPT_RPL:
                    self.count("script:replies_received")
                    waiter = self.waiters.get(tag)
                    if waiter is not None:
                        waiter.add(source, msg)
                        continue
                    self._event("on_reply", (cluster, source, msg, tag))
                else:
                    self.count("script:requests_received")
                    self._event("on_request", (cluster, source, msg, tag))
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
            log.warning("undecodable script messages from node %d dropped: %s", source, exc)

    def _event(self, hook: str, args: tuple) -> None:
        if self.hooks[hook] is not None:
            self.backlog.append((hook, args))

    def _control(self, p: ScriptCtl) -> None:
        if p.snapshot is not None:
            self.snapshot = {int(c): {"enabled": bool(v["enabled"]),
                                      "nodes": {int(n): d for n, d in v["nodes"].items()}}
                             for c, v in p.snapshot.items()}
        if p.event is not None:
            cluster, node, up = p.event
            self._event("on_node_state", (int(cluster), int(node), bool(up)))
        if p.shtag is not None:
            tag, cluster, active, reason = p.shtag
            self._event("on_shtag_change", (str(tag), int(cluster), bool(active), str(reason)))
        if p.mi_call is not None:
            call_id, name, params = p.mi_call
            self.mi_pool.submit(self._mi_call, call_id, name, params or {})

    def _mi_call(self, call_id: int, name: str, params: dict[str, Any]) -> None:
        fn = MI_COMMANDS.get(name)
        try:
            if fn is None:
                raise ScriptMIError(404, f"the script has no MI command {name}")
            reply = ScriptCtl(mi_reply=[call_id, True, fn(**params)])
            msgpack.packb(reply.mi_reply, use_bin_type=True)
        except ScriptMIError as exc:
            reply = ScriptCtl(mi_reply=[call_id, False, {"code": exc.code,
                                                         "message": exc.message}])
        except Exception as exc:  # noqa: BLE001 - reported to the MI caller, logged here
            log.exception("script MI command %s failed", name)
            reply = ScriptCtl(mi_reply=[call_id, False, {"code": 500, "message":
                                                         f"{type(exc).__name__}: {exc}"}])
        self.control(reply)

    # -- hooks

    def watch(self) -> None:
        """Called by the process's main loop: abandon a hook past its time."""
        reader = self.reader
        if reader is None:
            return
        timeout = self.cfg["script.hook_timeout_s"]
        with reader.lock:
            started, what = reader.current
            if not started or time.monotonic() - started <= timeout:
                return
            reader.abandoned = True
        self.reader = _Reader(self, reader.sock, reader.decoder)
        self.count("script:hooks_abandoned")
        self.abandoned = [r for r in self.abandoned if r.thread.is_alive()] + [reader]
        log.error("script hook %s still running after %.1f s: abandoned (it keeps its "
                  "thread; a new reader thread takes the next events)", what, timeout)
        if len(self.abandoned) > MAX_ABANDONED:
            raise RuntimeError(f"{len(self.abandoned)} script hooks hang: restarting "
                               "the script process")

    def pump(self, until: threading.Event, timeout: float) -> None:
        """Wait for `until`; in the reader thread (a hook waiting for replies), read the
        connection meanwhile, queueing the hook calls that arrive for later."""
        reader = self.reader
        if reader is None or threading.current_thread() is not reader.thread:
            until.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while not until.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.reader is not reader:  # abandoned meanwhile: the new reader reads
                until.wait(left)
                return
            if not reader.read(min(left, 0.05)):
                return


class _Reader:
    """The thread that reads the connection and calls the hooks, in arrival order (so
    in order per source). A hook that raises is logged with its traceback. One that runs
    past script.hook_timeout_s is abandoned (Runtime.watch): a new reader takes over
    the connection, its decoder and the backlog, and this thread ends when, if ever,
    the hook returns. Reads are serialised by the runtime's read_lock, so a hook that
    was reading while it waited for replies (pump) never splits the stream."""

    def __init__(self, rt: Runtime, sock: socket.socket, decoder: Decoder) -> None:
        self.rt, self.sock, self.decoder = rt, sock, decoder
        self.lock = threading.Lock()
        self.abandoned = False
        self.current: tuple[float, str] = (0.0, "")
        self.thread = threading.Thread(target=self._run, name="script-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self._hooks() and self.read(None):
            pass

    def _hooks(self) -> bool:
        """Call the hooks in the backlog; False once this reader is abandoned."""
        rt = self.rt
        while True:
            with self.lock:
                if self.abandoned:
                    return False
                if not rt.backlog:
                    return True
                hook, args = rt.backlog.popleft()
                self.current = (time.monotonic(), f"{hook}{args!r:.200}")
            try:
                rt.hooks[hook](*args)
            except Exception:  # noqa: BLE001 - a script bug must not stop the node
                rt.count("script:hook_errors")
                log.exception("script hook %s raised", hook)
            finally:
                self.current = (0.0, "")

    def read(self, timeout: float | None) -> bool:
        """Read once (waiting at most timeout seconds, None: no limit) and dispatch what
        arrived; False when the connection is gone or this reader was replaced."""
        with self.rt.read_lock:
            if timeout is None and self.rt.backlog:
                return True  # hook calls a pumping hook queued: those first
            sock = self.sock
            try:
                if timeout is not None and not select.select([sock], [], [], timeout)[0]:
                    return True
                data = sock.recv(1 << 18)
            except (OSError, ValueError) as exc:
                self.rt.lost(sock, f"recv: {exc}")
                return False
            if not data:
                self.rt.lost(sock, "closed by the cluster process")
                return False
            try:
                frames = self.decoder.feed(data)
            except CorruptFrame as exc:
                self.rt.lost(sock, f"corrupt frame: {exc}")
                return False
        self.rt.dispatch(frames)
        return True


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))

