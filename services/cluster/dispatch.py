"""Delivery of received messages to their handlers, so that no handler ever holds up the
link it arrived on.

A link's reader hands every frame addressed to this node to `Dispatcher.deliver`, which
never awaits: the payload is checked against its schema (core.messages; a bad one is
counted and dropped, the link stays), then the handler runs the way it was registered:

    INLINE      called at once by the reader: short, synchronous work (heartbeats,
                topology, capability floods)
    ORDERED     may await; one queue per (source node, message type), handled in
                arrival order by one task (replication batches)
    CONCURRENT  may await; up to CONCURRENCY messages per source at a time, the rest
                wait their turn (remote MI commands, which may take seconds)

Queues are bounded in bytes (max_queued_bytes per queue): past that, new messages are
dropped and counted (clusterer:dropped_msgs); senders that must not lose anything
(replication) detect the gap and send again. An exception from a handler is our bug,
not the peer's: it is logged with its traceback (once per cause, then counted) and
counted as clusterer:handler_errors; the link and the queue go on.
Neighbours: services.cluster.node (the reader), core.messages (schemas).
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fastcluster.core.messages import BadMessage, Msg, decode
from fastcluster.core.wire import Frame, Header

log = logging.getLogger("dispatch")

CONCURRENCY = 8
MAX_LOGGED_CAUSES = 100


class Mode(Enum):
    INLINE = 0
    ORDERED = 1
    CONCURRENT = CONCURRENCY


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message as handlers see it."""
    header: Header
    payload: Any  # the typed payload (core.messages), or bytes for raw types
    raw: bytes  # the payload bytes as received (relays and bridges forward them)
    via: int  # the neighbour it came from (0: this node itself)

    @property
    def source(self) -> int:
        return self.header.source


Handler = Callable[[Delivery], Awaitable[None] | None]


@dataclass
class _Route:
    handler: Handler
    mode: Mode


@dataclass
class _Queue:
    items: collections.deque = field(default_factory=collections.deque)
    nbytes: int = 0
    running: int = 0


class Dispatcher:
    def __init__(self, count: Callable[[str, int], None], max_queued_bytes: int) -> None:
        self.count = count
        self.max_queued_bytes = max_queued_bytes
        self.routes: dict[Msg, _Route] = {}
        self.queues: dict[tuple[int, Msg], _Queue] = {}
        self.tasks: set[asyncio.Task] = set()
        self.logged: set[str] = set()

    def register(self, kind: Msg, handler: Handler, mode: Mode = Mode.INLINE) -> None:
        if kind in self.routes:
            raise RuntimeError(f"a handler for {kind.name} is registered already")
        self.routes[kind] = _Route(handler, mode)

    def handles(self, kind: Msg) -> bool:
        return kind in self.routes

    def deliver(self, frame: Frame, via: int) -> None:
        """Hand one frame to its handler; never waits."""
        kind = frame.header.type
        route = self.routes.get(kind)
        if route is None:
            self._bad(kind, via, "no handler for this message type here")
            return
        try:
            payload = decode(kind, frame.payload)
        except BadMessage as exc:
            self._bad(kind, via, str(exc))
            return
        item = Delivery(frame.header, payload, frame.raw, via)
        if route.mode is Mode.INLINE:
            self._call(route, item)
            return
        key = (frame.header.source, kind)
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = _Queue()
        size = len(frame.raw)
        if queue.nbytes + size > self.max_queued_bytes and queue.items:
            self.count("clusterer:dropped_msgs", 1)
            self._log_once(f"queue full: {kind.name} from node {frame.header.source}",
                           "%s messages from node %d wait beyond %d bytes: dropping "
                           "(counted as clusterer:dropped_msgs)", kind.name,
                           frame.header.source, self.max_queued_bytes)
            return
        queue.items.append(item)
        queue.nbytes += size
        if queue.running < route.mode.value:
            queue.running += 1
            task = asyncio.ensure_future(self._drain(key, queue, route))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _drain(self, key: tuple[int, Msg], queue: _Queue, route: _Route) -> None:
        try:
            while queue.items:
                item = queue.items.popleft()
                queue.nbytes -= len(item.raw)
                result = self._call(route, item)
                if result is not None:
                    try:
                        await result
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - a bug of ours, not the peer's
                        self._handler_error(item, exc)
        finally:
            queue.running -= 1
            if not queue.items and not queue.running:
                self.queues.pop(key, None)

    def _call(self, route: _Route, item: Delivery) -> Awaitable[None] | None:
        try:
            result = route.handler(item)
        except Exception as exc:  # noqa: BLE001 - a bug of ours, not the peer's
            self._handler_error(item, exc)
            return None
        if result is not None and route.mode is Mode.INLINE:
            if inspect.iscoroutine(result):
                result.close()
            self._handler_error(item, RuntimeError(
                f"inline handler of {item.header.type.name} returned an awaitable"))
            return None
        return result

    def _handler_error(self, item: Delivery, exc: BaseException) -> None:
        self.count("clusterer:handler_errors", 1)
        cause = f"{item.header.type.name}: {type(exc).__name__}: {exc}"[:200]
        if cause not in self.logged and len(self.logged) < MAX_LOGGED_CAUSES:
            self.logged.add(cause)
            log.error("handler of %s from node %d failed (a bug; further ones with this "
                      "cause are only counted as clusterer:handler_errors)",
                      item.header.type.name, item.source, exc_info=exc)

    def _bad(self, kind: Msg, via: int, why: str) -> None:
        self.count("clusterer:bad_messages", 1)
        self._log_once(f"bad {kind.name}: {why}", "malformed %s from node %d: %s",
                       kind.name, via, why)

    def _log_once(self, cause: str, fmt: str, *args: Any) -> None:
        if cause not in self.logged and len(self.logged) < MAX_LOGGED_CAUSES:
            self.logged.add(cause)
            log.warning(fmt, *args)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
