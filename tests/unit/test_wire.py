"""Wire codec: every message type round-trips, golden bytes, incremental decoding, and
no byte string crashes the decoder."""
from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings, strategies as st

from fastcluster.core.wire import (
    MAX_HEADER,
    RAW_PAYLOAD,
    CorruptFrame,
    Decoder,
    Header,
    Msg,
    encode,
    encode_parts,
)

GOLDEN = pathlib.Path(__file__).parent / "golden"
MAX = 1 << 20


@pytest.mark.parametrize("kind", list(Msg), ids=lambda m: m.name)
def test_every_type_round_trips(kind: Msg) -> None:
    header = Header(kind, cluster=3, source=7, destination=9, sequence=123456789, ttl=5)
    if kind in RAW_PAYLOAD:
        data = encode(header, raw=b"\x00\x01raw rows")
        expect = b"\x00\x01raw rows"
    else:
        payload = {"k": [1, 2, {"x": b"bytes", "s": "text"}], "n": -5}
        data = encode(header, payload)
        expect = payload
    frames = Decoder(MAX).feed(data)
    assert len(frames) == 1
    assert frames[0].header == header and frames[0].payload == expect


def test_message_numbers_never_change() -> None:
    # Append-only: released numbers keep their meaning (compare with the golden list).
    golden = (GOLDEN / "message_types.txt").read_text().split()
    released = [f"{m.value}:{m.name}" for m in Msg]
    assert released[:len(golden)] == golden


def test_golden_frames() -> None:
    ping = encode(Header(Msg.PING, 0, 1, 2, 0, 16), {"ack": True, "t": 1000})
    assert ping == (GOLDEN / "ping.bin").read_bytes()
    repl = encode(Header(Msg.REPL, 1, 2, 0, 7, 16), raw=b"\x10\x00\x00\x00\x01\x00\x00\x00rows")
    assert repl == (GOLDEN / "repl.bin").read_bytes()


def test_incremental_feed_and_parts() -> None:
    frames = [encode(Header(Msg.NODES, 0, 1, 0), {"nodes": [i]}) for i in range(5)]
    parts = encode_parts(Header(Msg.SYNC_CHUNK, 1, 1, 2, 3), memoryview(b"x" * 1000))
    data = b"".join(frames) + b"".join(bytes(p) for p in parts)
    dec = Decoder(MAX)
    got = []
    for i in range(0, len(data), 7):
        got += dec.feed(data[i:i + 7])
    assert [f.payload for f in got[:5]] == [{"nodes": [i]} for i in range(5)]
    assert got[5].payload == b"x" * 1000 and dec.pending == 0


@pytest.mark.parametrize("data, why", [
    (b"\xff\xff\xff\xff\x01\x00", "exceeds"),
    (b"\x10\x00\x00\x00\x00\x00" + b"\x00" * 16, "bad header length"),
    (b"\x05\x00\x00\x00\x03\x01\x93\x01\x02", "bad header length"),
    (encode(Header(Msg.PING, 0, 1, 2), {}).replace(b"\x97\x01\x06", b"\x97\x02\x06"),
     "protocol"),
    (encode(Header(Msg.PING, 0, 1, 2), {}).replace(b"\x97\x01\x06", b"\x97\x01\x7f"),
     "unknown message type"),
])
def test_corrupt_frames_raise_corrupt_frame(data: bytes, why: str) -> None:
    with pytest.raises(CorruptFrame, match=why):
        Decoder(MAX).feed(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_corrupt_frame(data: bytes) -> None:
    try:
        Decoder(4096).feed(data)
    except CorruptFrame:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_mutated_frames_never_crash(pos: int, patch: bytes) -> None:
    good = encode(Header(Msg.LSA, 1, 2, 0, 99), {"origin": 2, "seq": 5, "lsa": {1: [3, 4]}})
    pos = pos % len(good)
    bad = good[:pos] + patch + good[pos + len(patch):]
    try:
        Decoder(4096).feed(bad)
    except CorruptFrame:
        pass


def test_header_size_is_bounded() -> None:
    assert len(encode(Header(Msg.PING, 65535, 65535, 65535, (1 << 64) - 1, 255), {})) < \
        MAX_HEADER
