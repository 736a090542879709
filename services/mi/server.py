"""The MI's HTTP side, in a thread of its own: JSON-RPC 2.0 at `POST /mi`, and the status
page and Prometheus metrics at `GET /` and `GET /metrics` (services.mi.pages).

The server runs its own asyncio loop in an `MIThread`, so no MI request -- a batch of
cheap commands, a dump of a million contacts, a slow client -- ever holds up the
cluster process's loop and its heartbeats. Each command runs where it belongs
(`MIThread.run_command`): commands marked `cluster` (they use the cluster API) in the
cluster loop, quick ones in the MI loop, `heavy` ones (whole-table reads) in a small
pool of worker threads. `Streamed` results are written as they are produced (chunked
transfer encoding), a chunk of JSON at a time, so a dump costs a chunk of memory, not
the table. Table writes from MI commands go through this thread's own process slot
(its undo area and rings). With `[mi] token` set, every request must carry it as a
bearer token (401 otherwise, counted). At most MAX_CONNECTIONS clients at a time; a slow or stuck
one only holds its own connection. Neighbours: services.mi.registry (dispatch),
workers.cluster (host).
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastcluster.core.config import Config
from fastcluster.services.cluster.api import ClusterAPI
from fastcluster.core.stats import INDEX
from fastcluster.services.mi.pages import ROUTES, query_authorization
from fastcluster.services.mi.registry import Command, Streamed, authorized, dispatch, \
    handle_body
from fastcluster.shm.node import NodeMemory

log = logging.getLogger("mi")

MAX_HEADER_BYTES = 16384
MAX_BODY_BYTES = 1 << 20
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 32
HEAVY_THREADS = 2
STREAM_CHUNK_BYTES = 1 << 20
CLUSTER_CALL_TIMEOUT_S = 30.0  # cluster commands are quick; remote ones wait < 10 s


@dataclass
class MIContext:
    """What MI commands see (services.mi.registry.MINode)."""
    cfg: Config
    mem: NodeMemory
    cluster: ClusterAPI
    rings: dict[str, np.ndarray]  # the MI thread's own process slot
    me: int
    slot: int
    sip_sockets: list[str]
    thread: MIThread
    stats: np.ndarray  # the MI thread's statistics row (its own process slot)
    persistence: Any = None  # services.cluster.persistence.Persistence, if on

    async def run_mi(self, cmd: str, params: Any) -> dict[str, Any]:
        """Run an MI command here (for cluster_broadcast_mi, or for another node):
        {"result": ...} or {"error": ...}."""
        reply = await dispatch(self, {"jsonrpc": "2.0", "method": cmd,
                                      "params": params if params is not None else {}, "id": 0})
        assert reply is not None
        if isinstance(reply.get("result"), Streamed):  # an answer for elsewhere: whole
            streamed = reply["result"]
            reply["result"] = json.loads(await asyncio.get_running_loop().run_in_executor(
                self.thread.pool, lambda: "".join(_json_pieces(streamed.prefix,
                                                               streamed.items,
                                                               streamed.suffix))))
        return {k: v for k, v in reply.items() if k in ("result", "error")}

    async def run_command(self, cmd: Command, kwargs: dict[str, Any]) -> Any:
        return await self.thread.run_command(self, cmd, kwargs)


class MIThread:
    """The MI's thread, loop and server."""

    def __init__(self, cluster_loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.cluster_loop = cluster_loop
        self.sock = sock
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool = ThreadPoolExecutor(HEAVY_THREADS, thread_name_prefix="mi-heavy")
        self.thread = threading.Thread(target=self._run, name="mi", daemon=True)
        self.ready = threading.Event()
        self.stopped: asyncio.Event | None = None
        self.context: MIContext | None = None

    def start(self, context: MIContext) -> None:
        self.context = context
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the MI thread did not start")

    def stop(self) -> None:
        if self.loop is not None and self.stopped is not None:
            self.loop.call_soon_threadsafe(self.stopped.set)
            self.thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        assert self.context is not None
        server = MIServer(self.context, self.sock, self.pool)
        await server.start()
        self.ready.set()
        await self.stopped.wait()
        await server.close()

    async def run_command(self, node: MIContext, cmd: Command, kwargs: dict[str, Any]) -> Any:
        """Run cmd in its place; callable from the cluster loop or the MI loop."""
        target = self.cluster_loop if cmd.cluster else self.loop
        assert target is not None
        if asyncio.get_running_loop() is target:
            return await self._here(node, cmd, kwargs)
        future = asyncio.run_coroutine_threadsafe(self._here(node, cmd, kwargs), target)
        return await asyncio.wait_for(asyncio.wrap_future(future), CLUSTER_CALL_TIMEOUT_S)

    async def _here(self, node: MIContext, cmd: Command, kwargs: dict[str, Any]) -> Any:
        if cmd.heavy:
            result = await asyncio.get_running_loop().run_in_executor(
                self.pool, lambda: cmd.handler(node, **kwargs))
        else:
            result = cmd.handler(node, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


class MIServer:
    """HTTP/1.1 on an already-listening socket (bound by the master)."""

    def __init__(self, node: MIContext, sock: socket.socket, pool: ThreadPoolExecutor) -> None:
        self.node = node
        self.sock = sock
        self.pool = pool
        self.server: asyncio.base_events.Server | None = None
        self.clients = 0

    async def start(self) -> None:
        self.sock.setblocking(False)
        self.server = await asyncio.start_server(self._client, sock=self.sock,
                                                 limit=MAX_HEADER_BYTES)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CONNECTIONS:
            await self._send(writer, 503, b'{"error": "too many MI connections"}', False)
            writer.close()
            return
        self.clients += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError,
                        asyncio.LimitOverrunError, ConnectionError):
                    return
                keep = await self._request(head, reader, writer)
                if not keep:
                    return
        finally:
            self.clients -= 1
            writer.close()

    async def _request(self, head: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close" and lines[0].endswith("1.1")
        if len(parts) != 3:
            await self._send(writer, 400, b'{"error": "bad request line"}', False)
            return False
        method, path = parts[0], parts[1]
        route, _, query = path.partition("?")
        token = self.node.cfg["mi.token"]
        if not authorized(token, headers.get("authorization")) and not (
                method == "GET" and authorized(token, query_authorization(query))):
            self.node.stats[INDEX["mi:unauthorized"]] += 1
            await self._send(writer, 401, b'{"error": "missing or wrong MI token"}', False)
            return False
        if method == "GET" and route in ROUTES:  # the status page, the metrics
            code, content_type, page = await ROUTES[route](self.node)
            await self._send(writer, code, page, keep, content_type)
            return keep
        if route != "/mi":
            await self._send(writer, 404, b'{"error": "use POST /mi (GET / is the status '
                                          b'page, GET /metrics the metrics)"}', keep)
            return keep
        if method != "POST":
            await self._send(writer, 405, b'{"error": "use POST /mi"}', keep)
            return keep
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            await self._send(writer, 411, b'{"error": "Content-Length needed"}', False)
            return False
        if not 0 <= length <= MAX_BODY_BYTES:
            await self._send(writer, 413, b'{"error": "body too large"}', False)
            return False
        try:
            body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            return False
        reply = await handle_body(self.node, body)
        if isinstance(reply, dict) and isinstance(reply.get("result"), Streamed):
            return await self._stream(writer, reply, keep)
        data = b"" if reply is None else json.dumps(reply).encode()
        await self._send(writer, 200 if data else 204, data, keep)
        return keep

    async def _stream(self, writer: asyncio.StreamWriter, reply: dict[str, Any],
                      keep: bool) -> bool:
        """Write a Streamed result chunk by chunk (produced in a worker thread)."""
        result: Streamed = reply["result"]
        head = json.dumps({k: v for k, v in reply.items() if k != "result"})[:-1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: " +
                     (b"keep-alive" if keep else b"close") + b"\r\n\r\n")
        pieces = _json_pieces(head + ', "result": ' + result.prefix, result.items,
                              result.suffix + "}")
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await loop.run_in_executor(self.pool, _next_chunk, pieces)
                if not chunk:
                    break
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            return False
        return keep

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, keep: bool,
                    content_type: str = "application/json") -> None:
        reason = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
                  404: "Not Found",
                  405: "Method Not Allowed", 411: "Length Required",
                  413: "Payload Too Large", 503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: "
                     f"{'keep-alive' if keep else 'close'}\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass


def _json_pieces(prefix: str, items: Iterator[Any], suffix: str) -> Iterator[str]:
    yield prefix
    first = True
    for item in items:
        yield json.dumps(item) if first else "," + json.dumps(item)
        first = False
    yield suffix


def _next_chunk(pieces: Iterator[str]) -> bytes:
    """About STREAM_CHUNK_BYTES of the stream (b"" at the end)."""
    out: list[str] = []
    size = 0
    for piece in pieces:
        out.append(piece)
        size += len(piece)
        if size >= STREAM_CHUNK_BYTES:
            break
    return "".join(out).encode()


__all__ = ["MIContext", "MIServer", "MIThread"]
