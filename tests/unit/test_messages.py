"""Message payload schemas (core.messages): every type round-trips through its schema
and the codec, golden bytes for a few, malformed payloads are refused as BadMessage,
and the build fingerprint follows the schemas and row layouts."""
from __future__ import annotations

import dataclasses
import pathlib
import types
import typing

import pytest

from fastcluster.core import messages as M
from fastcluster.core.messages import MESSAGES, RAW, SCHEMA, BadMessage, Msg
from fastcluster.core.wire import Decoder, Header, encode
from fastcluster.workers.cluster import build_fingerprint

GOLDEN = pathlib.Path(__file__).parent / "golden"


def sample(tp, depth: int = 0):
    """A value of annotation tp (deterministic, non-trivial)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return {"any": [1, "x"]}
    if origin in (typing.Union, types.UnionType):
        return sample(next(a for a in args if a is not type(None)), depth)
    if origin is list:
        return [sample(args[0], depth + 1), sample(args[0], depth + 1)] if args else [1]
    if origin is dict:
        return {sample(args[0], depth + 1): sample(args[1], depth + 1)}
    if dataclasses.is_dataclass(tp):
        return instance(tp, depth + 1)
    return {int: 7 + depth, bool: True, str: "text", bytes: b"\x00\x01" * 8,
            float: 0.5}[tp]


def instance(cls, depth: int = 0):
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: sample(hints[f.name], depth) for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("number, name, cls", MESSAGES, ids=[m[1] for m in MESSAGES])
def test_every_type_round_trips_through_its_schema(number, name, cls) -> None:
    kind = Msg(number)
    assert kind.name == name and SCHEMA[kind] is cls
    header = Header(kind, 1, 2, 3, 4)
    if cls is RAW:
        frames = Decoder(1 << 20).feed(encode(header, raw=b"rows"))
        assert M.decode(kind, frames[0].payload) == b"rows"
        return
    payload = instance(cls)
    frames = Decoder(1 << 20).feed(encode(header, payload))
    assert frames[0].header == header
    assert M.decode(kind, frames[0].payload) == payload


def test_optional_fields_are_left_out_and_come_back_as_none() -> None:
    rpl = M.MiRpl(tag=3, node=2, result={"ok": 1})
    assert M.to_wire(rpl) == {"tag": 3, "node": 2, "result": {"ok": 1}}
    assert M.decode(Msg.MI_RPL, M.to_wire(rpl)) == rpl
    ctl = M.ScriptCtl(event=[1, 2, True])
    assert M.to_wire(ctl) == {"event": [1, 2, True]}


@pytest.mark.parametrize("kind, payload, why", [
    (Msg.PING, {"ack": True}, "missing t"),
    (Msg.PING, {"ack": 1, "t": 5}, "expected a boolean"),
    (Msg.PING, [True, 5], "expected a map"),
    (Msg.LSA, {"origin": 1, "seq": 2, "lsa": {1: ["x"]}}, "expected an integer"),
    (Msg.NODES, {"nodes": [{"id": 1}]}, "missing inc"),
    (Msg.CAPS, {"origin": 1, "seq": 2, "caps": [1]}, "expected a map"),
    (Msg.SYNC_END, {"rows": True, "checksum": 1, "chunks": 1}, "expected an integer"),
])
def test_malformed_payloads_are_bad_messages(kind, payload, why) -> None:
    with pytest.raises(BadMessage, match=why):
        M.decode(kind, payload)


def test_unknown_fields_are_ignored() -> None:
    # a newer build may add fields; the fingerprint is what refuses other builds
    assert M.decode(Msg.PROBE_REQ, {"target": 4, "extra": 1}) == M.ProbeReq(4)


def test_golden_payload_frames() -> None:
    frames = {
        "lsa.bin": encode(Header(Msg.LSA, 0, 1, 0, 0, 16), M.Lsa(1, 5, {1: [2, 3]})),
        "caps.bin": encode(Header(Msg.CAPS, 0, 2, 0, 0, 16),
                           M.Caps(2, 9, {"usrloc-contact-repl": [1, 1, 0]})),
        "nodes.bin": encode(Header(Msg.NODES, 0, 1, 2, 0, 16), M.Nodes([M.NodeDesc(
            1, 77, ["127.0.0.1", 5555], [["127.0.0.1", 5060]], [1], [], 12)])),
    }
    for name, data in frames.items():
        assert data == (GOLDEN / name).read_bytes(), name


def test_fingerprint_follows_schemas_and_layouts() -> None:
    assert build_fingerprint() == build_fingerprint()
    assert M.fingerprint("a") != M.fingerprint("b")
    assert M.fingerprint() != M.fingerprint("contacts:1")
    before = M.schema_text()
    assert "6 PING Ping(ack:<class 'bool'>,t:<class 'int'>)" in before.splitlines()
