"""The script runtime without processes: how it frames what it sends, what it refuses,
and how it reads what arrives (tests/integration/test_script.py runs it for real)."""
from __future__ import annotations

import io
import socket
import threading
import types

import msgpack
import numpy as np
import pytest

from fastcluster.core.stats import INDEX
from fastcluster.core.wire import Decoder, Header, Msg, encode
from fastcluster.services import script
from fastcluster.services.script import runtime as api


class Cfg(dict):
    script_address = "\0fastcluster.unit-test.script"


@pytest.fixture
def rt():
    cfg = Cfg({"clusterer.node_id": 1, "clusterer.max_frame_bytes": 1 << 20,
               "script.max_message_bytes": 1000, "script.hook_timeout_s": 1.0})
    proc = types.SimpleNamespace(cfg=cfg, stats=np.zeros(len(INDEX), np.int64))
    calls = []
    module = types.SimpleNamespace(on_request=lambda *a: calls.append(("req", a)),
                                   on_reply=lambda *a: calls.append(("rpl", a)))
    runtime = api.Runtime(proc, module)
    runtime.calls = calls
    yield runtime
    runtime.close()


def decode_all(frames: list[bytes]):
    out = []
    for frame in Decoder(1 << 20).feed(b"".join(frames)):
        h = frame.header
        items = list(msgpack.Unpacker(io.BytesIO(frame.raw), raw=False)) \
            if h.type != Msg.SCRIPT_CTL else frame.payload
        out.append((h.type, h.cluster, h.destination, items))
    return out


def test_one_frame_per_run_of_one_destination_in_order(rt) -> None:
    req, rpl = int(Msg.SCRIPT_REQ), int(Msg.SCRIPT_RPL)
    ctl = encode(Header(Msg.SCRIPT_CTL, 0, 1, 1), {"hello": 1})
    items = [(req, 1, 2, rt.pack("a", 1)), (req, 1, 2, rt.pack("b", 2)),
             (req, 1, 3, rt.pack("c", 3)), (api.FRAME, 0, 0, ctl),
             (req, 1, 3, rt.pack("d", 4)), (rpl, 1, 3, rt.pack("e", 5))]
    got = decode_all(api.frames_of(items, rt.me))
    assert got == [(Msg.SCRIPT_REQ, 1, 2, [["a", 1], ["b", 2]]),
                   (Msg.SCRIPT_REQ, 1, 3, [["c", 3]]),
                   (Msg.SCRIPT_CTL, 0, 1, {"hello": 1}),
                   (Msg.SCRIPT_REQ, 1, 3, [["d", 4]]),
                   (Msg.SCRIPT_RPL, 1, 3, [["e", 5]])]


def test_a_long_run_is_split_into_bounded_frames(rt) -> None:
    item = rt.pack("t", "x" * 900)
    n = api.FRAME_ITEMS_BYTES // len(item) * 3
    frames = api.frames_of([(int(Msg.SCRIPT_REQ), 1, 2, item)] * n, rt.me)
    assert len(frames) >= 3
    got = decode_all(frames)
    assert sum(len(items) for *_, items in got) == n
    assert all(len(f) <= api.FRAME_ITEMS_BYTES + 64 for f in frames)


def test_oversize_and_unpackable_messages_are_refused_and_counted(rt) -> None:
    with pytest.raises(script.MessageTooLarge, match="script.max_message_bytes"):
        rt.pack("t", "x" * 1000)
    with pytest.raises(TypeError, match="msgpack-able"):
        rt.pack("t", object())
    assert rt.proc.stats[INDEX["script:refused_msgs"]] == 2
    assert rt.pack("t", "x" * 990)  # just under the limit once encoded


def test_malformed_items_are_dropped_alone(rt) -> None:
    raw = rt.pack("t1", {"a": 1}) + msgpack.packb(["no tag"]) + rt.pack("t2", [2])
    rt._deliver(Msg.SCRIPT_REQ, 1, 5, raw)
    rt._deliver(Msg.SCRIPT_REQ, 1, 5, b"\xc1")  # never valid msgpack
    assert list(rt.backlog) == [("on_request", (1, 5, {"a": 1}, "t1")),
                                ("on_request", (1, 5, [2], "t2"))]
    assert rt.proc.stats[INDEX["script:requests_received"]] == 2


def test_replies_go_to_their_waiter_and_hooks_run_in_order(rt) -> None:
    waiter = api.Waiter({2})
    rt.waiters["w"] = waiter
    rt._deliver(Msg.SCRIPT_RPL, 1, 2, rt.pack("w", "for the waiter") +
                rt.pack("other", "for on_reply"))
    assert waiter.done.is_set() and waiter.replies == {2: "for the waiter"}
    a, b = socket.socketpair()
    try:
        reader = api._Reader.__new__(api._Reader)  # its loop, without its thread
        reader.rt, reader.sock, reader.decoder = rt, a, Decoder(1 << 20)
        reader.lock, reader.abandoned, reader.current = threading.Lock(), False, (0.0, "")
        b.sendall(encode(Header(Msg.SCRIPT_REQ, 1, 3, 1), raw=rt.pack("q", "hello")))
        assert reader._hooks() and reader.read(1.0) and reader._hooks()
    finally:
        a.close()
        b.close()
    assert rt.calls == [("rpl", (1, 2, "for on_reply", "other")),
                        ("req", (1, 3, "hello", "q"))]
