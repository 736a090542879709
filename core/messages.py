"""Cluster message types and their payloads, declared once: number, name, payload schema.

Each line of MESSAGES is one message type: its number (append only: a released number
keeps its meaning forever), its name, and its payload -- a dataclass whose fields are the
msgpack map's keys, or RAW for payloads carried as bytes (rows, sync chunks, script
messages), whose binary layout is documented where they are built. The `Msg` enum, the
raw set the codec needs, the validation of every received payload and the build
fingerprint two nodes compare in their handshake are all derived from this table.

A payload that is valid msgpack but not of its type's shape is a `BadMessage`: the
receiver counts it and drops that message, keeping the link (core.wire drops the link
only for bytes that are not msgpack at all). Neighbours: core.wire (framing),
services.cluster (senders and handlers), tests/unit/test_messages.py (round trips,
golden bytes).
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
import types
import typing
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

RAW = None  # the payload is raw bytes


class BadMessage(ValueError):
    """A payload that does not match its message type's schema."""


# ---------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Hello:
    """Handshake opening (HELLO) and the acceptor's answer (CHALLENGE, with `mac`)."""
    id: int
    inc: int  # incarnation: random per start of the node
    url: list[Any]  # [host, port] of its bin_listen
    clusters: list[int]
    agree: dict[str, Any]  # settings and build facts that must be equal on both nodes
    purpose: str  # "link" or "sync"
    nonce: bytes
    mac: bytes | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    mac: bytes


@dataclass(frozen=True, slots=True)
class Empty:
    pass


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    ack: bool  # the sender had a PONG to its own PING lately (its direction works)
    t: int  # sender's monotonic ms, echoed in the PONG


@dataclass(frozen=True, slots=True)
class Pong:
    ack: bool
    t: int  # the PING's t
    w: int = 0  # responder's wall clock, unix ms (clock skew between nodes)


@dataclass(frozen=True, slots=True)
class NodeDesc:
    id: int
    inc: int
    url: list[Any] | None  # [host, port]
    sip: list[list[Any]]  # [[host, port], ...] of its SIP listeners
    clusters: list[int]
    disabled: list[int]  # clusters it is disabled in
    seq: int  # description sequence (newest wins)


@dataclass(frozen=True, slots=True)
class Nodes:
    nodes: list[NodeDesc]


@dataclass(frozen=True, slots=True)
class Lsa:
    origin: int
    seq: int
    lsa: dict[int, list[int]]  # cluster -> Up neighbours of origin


@dataclass(frozen=True, slots=True)
class ProbeReq:
    target: int


@dataclass(frozen=True, slots=True)
class ProbeRpl:
    target: int
    alive: bool


@dataclass(frozen=True, slots=True)
class Leave:
    origin: int
    seq: int


@dataclass(frozen=True, slots=True)
class Remove:
    target: int
    origin: int
    seq: int


@dataclass(frozen=True, slots=True)
class SetStatus:
    cluster: int
    status: bool


@dataclass(frozen=True, slots=True)
class MiReq:
    tag: int
    cmd: str
    params: Any


@dataclass(frozen=True, slots=True)
class MiError:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class MiRpl:
    tag: int
    node: int
    result: Any = None
    error: MiError | None = None


@dataclass(frozen=True, slots=True)
class Caps:
    origin: int
    seq: int
    # capability -> [state, enabled, syncs being donated, synced since (unix ms, 0: not),
    #                newest data held (unix ms of its newest version, 0: none)]
    caps: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class SyncReq:
    cap: str
    position: int  # hash-space position to start from (resume)
    chunk: int  # largest chunk the receiver wants, bytes
    window: int  # chunks in flight


@dataclass(frozen=True, slots=True)
class SyncAck:
    seq: int


@dataclass(frozen=True, slots=True)
class SyncEnd:
    rows: int
    checksum: int
    chunks: int


@dataclass(frozen=True, slots=True)
class SyncAbort:
    reason: str


@dataclass(frozen=True, slots=True)
class ScriptCtl:
    """Local only (cluster process <-> script process): one or more of these fields."""
    hello: int | None = None  # script pid, when it connects
    mi: list[Any] | None = None  # the script's MI commands (described)
    mi_call: list[Any] | None = None  # [call id, name, params]
    mi_reply: list[Any] | None = None  # [call id, ok, value]
    snapshot: dict[int, Any] | None = None  # cluster view for the script's API
    event: list[Any] | None = None  # [cluster, node, up]
    shtag: list[Any] | None = None  # [tag, cluster, active, reason]: a tag changed here


@dataclass(frozen=True, slots=True)
class ReplAck:
    """Receiver -> origin: realtime batches of a table applied here, as sequence ranges
    [first, last, first, last, ...] of the origin's stream towards this node; `missing`
    lists the ranges a gap showed were lost (the origin re-sends at once)."""
    kind: int
    epoch: int
    acked: list[int]
    missing: list[int]


@dataclass(frozen=True, slots=True)
class ReplHorizon:
    """An origin's tombstone horizon for a table: every member has all its changes of
    a version below this (its tombstones older than that may go everywhere)."""
    kind: int
    horizon: int


@dataclass(frozen=True, slots=True)
class AeDigests:
    """Anti-entropy: the sender's range digests of a table (NRANGES int64, little-endian)."""
    kind: int
    digests: bytes


@dataclass(frozen=True, slots=True)
class AePull:
    """Anti-entropy: send me your rows of these ranges (a bitmap of NRANGES bits)."""
    kind: int
    ranges: bytes


@dataclass(frozen=True, slots=True)
class Shtags:
    """A node's sharing tags of one cluster: those it declares (tag -> 1 if it prefers
    to be active at start, else 0) and the newest activation it knows of every tag
    (tag -> [epoch, holder node]). Sent on every change, to nodes that come up, and
    every SHTAG_REFRESH_S (services.cluster.shtags)."""
    cluster: int
    declared: dict[str, int]
    known: dict[str, list[int]]
    reason: str = ""  # why the sender changed a tag, for the receivers' logs


@dataclass(frozen=True, slots=True)
class ProfCounts:
    """A node's dialog profile counts in one cluster: scope (a sharing tag active on the
    sender, or "" for its dialogs without a tag) -> profile (`name` or `name/value`) ->
    dialogs. full: the whole set; else what changed since the message numbered seq - 1
    (0: none left). services.sip.profile_repl."""
    cluster: int
    seq: int
    full: bool
    counts: dict[str, dict[str, int]]


# Raw payloads of REPL and AE_ROWS start with this prefix, then row entries (shm.ring
# entry layout): u64 stream epoch of the sender (0 for AE_ROWS), u16 table kind, u16
# flags, 4 bytes reserved. The frame header's `sequence` numbers REPL batches per
# (sender, table, destination).
ROWS_PREFIX = struct.Struct("<QHH4x")


# ---------------------------------------------------------------- the table

MESSAGES: tuple[tuple[int, str, type | None], ...] = (
    (1, "HELLO", Hello),         # connector -> acceptor: who I am, my nonce
    (2, "CHALLENGE", Hello),     # acceptor: who I am, my nonce, proof I know the secret
    (3, "AUTH", Auth),           # connector: proof I know the secret
    (4, "WELCOME", Empty),       # acceptor: link authenticated
    (5, "REFUSE", Refuse),       # either side: reason, then the connection is closed
    (6, "PING", Ping),           # heartbeat on an idle link
    (7, "PONG", Pong),
    (8, "NODES", Nodes),         # node descriptions (join, adoption, flooding)
    (9, "LSA", Lsa),             # link-state advertisement: a node's Up neighbours
    (10, "PROBE_REQ", ProbeReq),  # "can you reach node X?" (before declaring it down)
    (11, "PROBE_RPL", ProbeRpl),
    (12, "LEAVE", Leave),        # a node stops gracefully: mark it down at once
    (13, "REMOVE", Remove),      # clusterer_remove_node: forget a node everywhere
    (14, "SET_STATUS", SetStatus),  # clusterer_set_status on a remote node
    (15, "MI_REQ", MiReq),       # run an MI command on a node (cluster_send_mi)
    (16, "MI_RPL", MiRpl),
    (17, "CAPS", Caps),          # capability states of a node (flooded)
    (18, "REPL", RAW),           # realtime replication: row entries (shm.ring layout)
    (19, "SYNC_REQ", SyncReq),   # receiver -> donor: send me capability X from P
    (20, "SYNC_CHUNK", RAW),     # donor -> receiver: msgpack meta + row entries
    (21, "SYNC_ACK", SyncAck),   # receiver -> donor: applied up to chunk N
    (22, "SYNC_END", SyncEnd),   # donor -> receiver: count and checksum of all sent
    (23, "SYNC_ABORT", SyncAbort),  # either side gives up
    (24, "SCRIPT_REQ", RAW),     # user script requests: a msgpack stream of [tag, msg]
    (25, "SCRIPT_RPL", RAW),     # and replies
    (26, "SCRIPT_CTL", ScriptCtl),  # local only, cluster process <-> script process
    (27, "REPL_ACK", ReplAck),   # receiver -> origin: realtime batches applied / lost
    (28, "REPL_HORIZON", ReplHorizon),  # origin -> all: its tombstone horizon
    (29, "AE_DIGESTS", AeDigests),  # anti-entropy: my range digests, compare them
    (30, "AE_PULL", AePull),     # anti-entropy: send me your rows of these ranges
    (31, "AE_ROWS", RAW),        # anti-entropy: rows of differing ranges
    (32, "SHTAGS", Shtags),      # a node's sharing tags: declared, newest activations
    (33, "PROF_COUNTS", ProfCounts),  # a node's dialog profile counts (dialog-prof-repl)
)

Msg = IntEnum("Msg", [(name, number) for number, name, _ in MESSAGES],  # type: ignore[misc]
              module=__name__)
Msg.__doc__ = "Message types (core.messages.MESSAGES)."
SCHEMA: dict[Msg, type | None] = {Msg(number): cls for number, _, cls in MESSAGES}
RAW_PAYLOAD = frozenset(kind for kind, cls in SCHEMA.items() if cls is RAW)


# ---------------------------------------------------------------- validation


def _checker(tp: Any, where: str):
    """A function obj -> value that validates obj against the annotation tp."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return lambda obj: obj
    if origin in (typing.Union, types.UnionType):
        checks = [_checker(a, where) for a in args if a is not type(None)]
        optional = type(None) in args

        def union(obj: Any) -> Any:
            if obj is None and optional:
                return None
            for check in checks:
                try:
                    return check(obj)
                except BadMessage:
                    continue
            raise BadMessage(f"{where}: {type(obj).__name__} is not {tp}")
        return union
    if origin is list:
        item = _checker(args[0], where) if args else (lambda o: o)

        def listing(obj: Any) -> list:
            if not isinstance(obj, list):
                raise BadMessage(f"{where}: expected a list, got {type(obj).__name__}")
            return [item(o) for o in obj]
        return listing
    if origin is dict:
        key, value = (_checker(a, where) for a in args)

        def mapping(obj: Any) -> dict:
            if not isinstance(obj, dict):
                raise BadMessage(f"{where}: expected a map, got {type(obj).__name__}")
            return {key(k): value(v) for k, v in obj.items()}
        return mapping
    if dataclasses.is_dataclass(tp):
        return lambda obj: from_wire(tp, obj)
    if tp is bool:
        def boolean(obj: Any) -> bool:
            if not isinstance(obj, bool):
                raise BadMessage(f"{where}: expected a boolean, got {type(obj).__name__}")
            return obj
        return boolean
    if tp is int:
        def integer(obj: Any) -> int:
            if not isinstance(obj, int) or isinstance(obj, bool):
                raise BadMessage(f"{where}: expected an integer, got {type(obj).__name__}")
            return obj
        return integer
    if tp in (str, bytes, float):
        def plain(obj: Any) -> Any:
            if not isinstance(obj, tp):
                raise BadMessage(f"{where}: expected {tp.__name__}, got {type(obj).__name__}")
            return obj
        return plain
    raise TypeError(f"unsupported payload field type {tp!r} ({where})")


_FIELDS: dict[type, list[tuple[str, Any, bool]]] = {}


def _fields(cls: type) -> list[tuple[str, Any, bool]]:
    """(name, checker, required) per field of a payload class, built once."""
    out = _FIELDS.get(cls)
    if out is None:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and \
                f.default_factory is dataclasses.MISSING
            out.append((f.name, _checker(hints[f.name], f"{cls.__name__}.{f.name}"),
                        required))
        _FIELDS[cls] = out
    return out


def from_wire(cls: type, obj: Any) -> Any:
    """A payload instance from a decoded msgpack map; BadMessage if it does not fit."""
    if not isinstance(obj, dict):
        raise BadMessage(f"{cls.__name__}: expected a map, got {type(obj).__name__}")
    values = {}
    for name, check, required in _fields(cls):
        if name in obj:
            values[name] = check(obj[name])
        elif required:
            raise BadMessage(f"{cls.__name__}: missing {name}")
    return cls(**values)


def to_wire(payload: Any) -> dict[str, Any]:
    """The msgpack map of a payload instance (fields left at None are omitted)."""
    out = {}
    for f in dataclasses.fields(payload):
        value = getattr(payload, f.name)
        if value is None and f.default is None:
            continue
        out[f.name] = to_wire(value) if dataclasses.is_dataclass(value) else \
            [to_wire(v) if dataclasses.is_dataclass(v) else v for v in value] \
            if isinstance(value, list) else value
    return out


def decode(kind: Msg, obj: Any) -> Any:
    """Typed payload of a received frame (raw payloads are returned as they are)."""
    cls = SCHEMA[kind]
    return obj if cls is RAW else from_wire(cls, obj)


def schema_text() -> str:
    """Every message type and its fields, one line each (part of the build fingerprint)."""
    lines = []
    for number, name, cls in MESSAGES:
        if cls is RAW:
            lines.append(f"{number} {name} raw")
            continue
        hints = typing.get_type_hints(cls)
        fields = ",".join(f"{f.name}:{hints[f.name]}" for f in dataclasses.fields(cls))
        lines.append(f"{number} {name} {cls.__name__}({fields})")
    return "\n".join(lines)


def fingerprint(*extra: str) -> str:
    """Hash of the message schemas and `extra` facts (row layouts): two nodes whose
    fingerprints differ must never exchange messages."""
    digest = hashlib.sha256(schema_text().encode())
    for text in extra:
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()[:16]


__all__ = ["BadMessage", "MESSAGES", "Msg", "RAW", "RAW_PAYLOAD", "SCHEMA", "decode",
           "fingerprint", "from_wire", "to_wire"]
