"""The management interface: JSON-RPC 2.0 over HTTP (`POST /mi`), and its command registry.

Commands register with `@command(name)`; params are by name (a JSON array is accepted
too, matched in declaration order, as OpenSIPS does). The server runs in the cluster
process's asyncio loop; a command marked `heavy` (dumps of big tables) runs in a worker
thread so heartbeats and replication are never held up behind it, and a slow or stuck
client only holds its own connection. Errors are JSON-RPC error objects, never a crash.
Neighbours: services.mi_core / usrloc / topology ... (commands), workers.cluster (host),
services.mi_client (the `fastcluster mi` side).
"""
from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastcluster.core.stats import INDEX

log = logging.getLogger("mi")

MAX_HEADER_BYTES = 16384
MAX_BODY_BYTES = 1 << 20
IDLE_TIMEOUT_S = 30.0

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, SERVER_ERROR = (
    -32700, -32600, -32601, -32602, -32000)


class MIError(Exception):
    """A command's refusal: becomes {"code": code, "message": message}."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[..., Any]
    heavy: bool
    doc: str
    # Declared params (commands defined by the user script, whose handler here only
    # forwards): names, and those without a default. None: read from the handler.
    declared: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    # The order a JSON array of params binds in, when it is not the handler's: OpenSIPS
    # 3.x tools send ul_show_contact ["location", "alice@..."] (table first) while
    # `aor=` alone must keep working by name.
    positional: tuple[str, ...] | None = None

    @property
    def params(self) -> list[str]:
        if self.declared is not None:
            return list(self.declared[0])
        sig = inspect.signature(self.handler)
        return [p for p in list(sig.parameters)[1:] if not p.startswith("_")]

    @property
    def required(self) -> list[str]:
        if self.declared is not None:
            return list(self.declared[1])
        return [p.name for p in list(inspect.signature(self.handler).parameters.values())[1:]
                if p.default is inspect.Parameter.empty]


REGISTRY: dict[str, Command] = {}


def command(name: str, *, heavy: bool = False, aliases: tuple[str, ...] = (),
            positional: tuple[str, ...] | None = None) -> Callable:
    """Register handler(node, **params) -> JSON-able result (or a coroutine).
    positional: the order of an array of params, if not the handler's."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in (name,) + aliases:
            if n in REGISTRY:
                raise RuntimeError(f"MI command {n} registered twice")
            REGISTRY[n] = Command(n, fn, heavy, (fn.__doc__ or "").strip().split("\n")[0],
                                  positional=positional)
        return fn

    return wrap


def register(cmd: Command) -> str | None:
    """Add a command at run time (the script's); the reason if the name is taken."""
    if cmd.name in REGISTRY:
        return f"MI command {cmd.name} already exists"
    REGISTRY[cmd.name] = cmd
    return None


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def _bind_params(cmd: Command, params: Any) -> dict[str, Any]:
    names = cmd.params
    if params is None:
        return {}
    if isinstance(params, list):
        order = list(cmd.positional) if cmd.positional is not None else names
        if len(params) > len(order):
            raise MIError(INVALID_PARAMS, f"{cmd.name} takes at most {len(order)} params")
        return dict(zip(order, params))
    if isinstance(params, dict):
        unknown = [k for k in params if k not in names]
        if unknown:
            raise MIError(INVALID_PARAMS, f"unknown param(s) for {cmd.name}: "
                                          f"{', '.join(unknown)} (takes: {', '.join(names)})")
        return dict(params)
    raise MIError(INVALID_REQUEST, "params must be an object or an array")


async def dispatch(node: Any, request: Any) -> dict[str, Any] | None:
    """One JSON-RPC request object -> response object (None for a notification)."""
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or \
            not isinstance(request.get("method"), str):
        return _error(None, INVALID_REQUEST, "Invalid Request")
    rid = request.get("id")
    cmd = REGISTRY.get(request["method"])
    try:
        if cmd is None:
            raise MIError(METHOD_NOT_FOUND, f"Method not found: {request['method']}")
        kwargs = _bind_params(cmd, request.get("params"))
        missing = [p for p in cmd.required if p not in kwargs]
        if missing:
            raise MIError(INVALID_PARAMS, f"missing param(s): {', '.join(missing)}")
        if cmd.heavy:
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: cmd.handler(node, **kwargs))
        else:
            result = cmd.handler(node, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    except MIError as exc:
        return _error(rid, exc.code, exc.message)
    except Exception as exc:  # a bug in a command must not take the MI down
        log.exception("MI command %s failed", request.get("method"))
        return _error(rid, SERVER_ERROR, f"{type(exc).__name__}: {exc}")
    if "id" not in request:
        return None
    return {"jsonrpc": "2.0", "result": result, "id": rid}


def _error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": rid}


async def handle_body(node: Any, body: bytes) -> Any:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(None, PARSE_ERROR, "Parse error")
    if isinstance(request, list):
        if not request:
            return _error(None, INVALID_REQUEST, "Invalid Request")
        replies = [await dispatch(node, r) for r in request]
        return [r for r in replies if r is not None] or None
    return await dispatch(node, request)


def authorized(token: str, header: str | None) -> bool:
    """Whether a request may use the MI: no [mi] token is configured (the listener is
    a loopback one: core.config refuses otherwise), or its `Authorization: Bearer`
    header carries the token (compared in constant time)."""
    if not token:
        return True
    scheme, _, value = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())


class MIServer:
    """HTTP/1.1 on an already-listening socket (bound by the master)."""

    def __init__(self, node: Any, sock: socket.socket) -> None:
        self.node = node
        self.sock = sock
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.sock.setblocking(False)
        self.server = await asyncio.start_server(self._client, sock=self.sock,
                                                 limit=MAX_HEADER_BYTES)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        if not authorized(self.node.cfg["mi.token"], headers.get("authorization")):
            self.node.stats[INDEX["mi:unauthorized"]] += 1
            await self._send(writer, 401, b'{"error": "missing or wrong MI token"}', False)
            return False
        method, path = parts[0], parts[1]
        if path.split("?")[0] != "/mi":
            await self._send(writer, 404, b'{"error": "use POST /mi"}', keep)
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
        data = b"" if reply is None else json.dumps(reply).encode()
        await self._send(writer, 200 if data else 204, data, keep)
        return keep

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, keep: bool) -> None:
        reason = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
                  404: "Not Found",
                  405: "Method Not Allowed", 411: "Length Required",
                  413: "Payload Too Large"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: "
                     f"{'keep-alive' if keep else 'close'}\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
