"""The MI command registry and the JSON-RPC 2.0 dispatch (the HTTP side is
services.mi.server).

Commands register with `@command(name)`: handler(node, **params), where node is what the
process hosting the MI offers (`MINode`, which also decides where each command runs).
Params are by name (a JSON array is accepted too, matched in declaration order, as
OpenSIPS does). A batch holds at most MAX_BATCH requests and no `heavy` command (a dump
of a whole table); results too big to hold are `Streamed`. Errors are JSON-RPC error
objects, never a crash. Neighbours: services.mi.core_cmds / clusterer_cmds, services.sip.usrloc ...
(commands), services.mi.server (HTTP), services.mi.client (`fastcluster mi`).
"""
from __future__ import annotations

import hmac
import inspect
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from fastcluster.core.config import Config
    from fastcluster.services.cluster.api import ClusterAPI
    from fastcluster.shm.node import NodeMemory


log = logging.getLogger("mi")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, SERVER_ERROR = (
    -32700, -32600, -32601, -32602, -32000)
MAX_BATCH = 100  # requests in one JSON-RPC batch


class MINode(Protocol):
    """What MI commands may use of the process hosting the MI (the cluster process)."""
    cfg: Config
    mem: NodeMemory
    cluster: ClusterAPI  # the narrow clusterer API
    rings: dict[str, np.ndarray]  # this process's replication ring per table
    me: int  # lock word
    slot: int
    sip_sockets: list[str]  # labels of the SIP listeners, by index
    persistence: Any  # the write-behind (status()), or None when it is off

    async def run_mi(self, cmd: str, params: Any) -> dict[str, Any]: ...

    async def run_command(self, cmd: Command, kwargs: dict[str, Any]) -> Any:
        """Run a command where it belongs (cluster loop, MI thread, worker thread)."""


class MIError(Exception):
    """A command's refusal: becomes {"code": code, "message": message}."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[..., Any]
    heavy: bool  # a dump of a big table: runs in a worker thread, never in a batch
    doc: str
    # Declared params (commands defined by the user script, whose handler here only
    # forwards): names, and those without a default. None: read from the handler.
    declared: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    cluster: bool = False  # uses the cluster API: runs in the cluster process's loop
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


def command(name: str, *, heavy: bool = False, cluster: bool = False,
            aliases: tuple[str, ...] = (), positional: tuple[str, ...] | None = None
            ) -> Callable:
    """Register handler(node, **params) -> JSON-able result, a coroutine, or Streamed.
    heavy: it reads a whole table (a worker thread; refused inside a batch); cluster: it
    uses node.cluster (it runs in the cluster loop, so it must be quick); positional:
    the order of an array of params, if not the handler's."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in (name,) + aliases:
            if n in REGISTRY:
                raise RuntimeError(f"MI command {n} registered twice")
            REGISTRY[n] = Command(n, fn, heavy, (fn.__doc__ or "").strip().split("\n")[0],
                                  cluster=cluster, positional=positional)
        return fn

    return wrap


@dataclass
class Streamed:
    """A result too big to hold whole: JSON text `prefix`, then the JSON of each item of
    `items` (comma-separated), then `suffix`. The server writes it as it goes."""
    prefix: str
    items: Iterator[Any]
    suffix: str


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
        result = await node.run_command(cmd, kwargs)
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
        if len(request) > MAX_BATCH:
            return _error(None, INVALID_REQUEST, f"a batch holds at most {MAX_BATCH} requests")
        replies = []
        for r in request:
            cmd = REGISTRY.get(r.get("method")) if isinstance(r, dict) else None
            if cmd is not None and cmd.heavy:
                replies.append(_error(r.get("id"), INVALID_REQUEST,
                                      f"{cmd.name} reads a whole table: call it alone, "
                                      "not in a batch"))
            else:
                replies.append(await dispatch(node, r))
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
