"""Cluster wire format: frames, message types (declared once, append-only), one codec.

    frame   = u32 length of the rest | u16 header length | header | payload
    header  = msgpack array [protocol, type, cluster, source, destination, sequence, ttl]
    payload = msgpack (control messages) or raw bytes (replication rows, sync chunks)

A decoder never raises anything but `CorruptFrame` for any input; the link that sent a
corrupt frame is dropped, nothing else. Sizes are bounded (`MAX_HEADER`, the frame
limit given by [clusterer] max_frame_bytes). Message types are numbers that are never
reused or renumbered; they and their payload schemas are declared in core.messages.
Neighbours: services.links (framing on sockets), services.topology and the other cluster
layers (payload meaning), tests/unit/test_wire.py (round trips, golden bytes, fuzz).
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from fastcluster.core.messages import RAW_PAYLOAD, Msg, to_wire

PROTOCOL = 1
MAX_HEADER = 256
DEFAULT_TTL = 16  # hops a relayed message may still take
BROADCAST = 0  # destination of a message for every node of the cluster
_PREFIX = struct.Struct("<IH")


class CorruptFrame(Exception):
    """Bytes that are not a valid frame: drop the connection that sent them."""


@dataclass(frozen=True, slots=True)
class Header:
    type: Msg
    cluster: int
    source: int
    destination: int
    sequence: int = 0
    ttl: int = DEFAULT_TTL
    protocol: int = PROTOCOL

    def forwarded(self) -> Header:
        return Header(self.type, self.cluster, self.source, self.destination, self.sequence,
                      self.ttl - 1, self.protocol)


@dataclass(frozen=True, slots=True)
class Frame:
    header: Header
    payload: Any  # decoded msgpack object, or bytes for RAW_PAYLOAD types
    raw: bytes  # the payload bytes as received (relaying forwards them untouched)


def encode(header: Header, payload: Any = None, raw: bytes | None = None) -> bytes:
    """One frame. `payload` (a core.messages payload, or any msgpack-able value) is
    msgpack-encoded unless `raw` bytes are given."""
    if dataclasses.is_dataclass(payload):
        payload = to_wire(payload)
    head = msgpack.packb([header.protocol, int(header.type), header.cluster, header.source,
                          header.destination, header.sequence, header.ttl])
    body = raw if raw is not None else msgpack.packb(payload, use_bin_type=True)
    if len(head) > MAX_HEADER:
        raise ValueError("frame header too large")
    return _PREFIX.pack(2 + len(head) + len(body), len(head)) + head + body


def encode_parts(header: Header, raw: bytes | memoryview) -> list[bytes | memoryview]:
    """Like encode(raw=...) but returns [prefix+header, raw] so big payloads are not
    copied into a new bytes object (written with writelines / sendmsg)."""
    head = msgpack.packb([header.protocol, int(header.type), header.cluster, header.source,
                          header.destination, header.sequence, header.ttl])
    return [_PREFIX.pack(2 + len(head) + len(raw), len(head)) + head, raw]


def _decode_header(data: bytes) -> Header:
    try:
        fields = msgpack.unpackb(data, use_list=True, raw=False, max_bin_len=0,
                                 max_str_len=0, max_array_len=16, max_map_len=0)
    except Exception as exc:  # msgpack raises several types on garbage
        raise CorruptFrame(f"bad header: {type(exc).__name__}") from None
    if not isinstance(fields, list) or len(fields) != 7 or \
            not all(type(f) is int for f in fields):
        raise CorruptFrame("bad header shape")
    protocol, mtype, cluster, source, destination, sequence, ttl = fields
    if protocol != PROTOCOL:
        raise CorruptFrame(f"protocol {protocol}, this node speaks {PROTOCOL}")
    try:
        kind = Msg(mtype)
    except ValueError:
        raise CorruptFrame(f"unknown message type {mtype}") from None
    if not (0 <= cluster <= 0xFFFF and 0 <= source <= 0xFFFF and 0 <= destination <= 0xFFFF
            and 0 <= sequence < 1 << 64 and 0 <= ttl <= 255):
        raise CorruptFrame("header field out of range")
    return Header(kind, cluster, source, destination, sequence, ttl, protocol)


def decode_payload(kind: Msg, body: bytes, max_bytes: int) -> Any:
    if kind in RAW_PAYLOAD:
        return body
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, max_bin_len=max_bytes,
                               max_str_len=max_bytes, max_array_len=max_bytes,
                               max_map_len=max_bytes, max_ext_len=0)
    except Exception as exc:
        raise CorruptFrame(f"bad {kind.name} payload: {type(exc).__name__}") from None


class Decoder:
    """Incremental: feed bytes as they come, get whole frames out."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self.buf
        buf += data
        out = []
        pos, end = 0, len(buf)
        try:
            while end - pos >= _PREFIX.size:
                length, head_len = _PREFIX.unpack_from(buf, pos)
                if length > self.max_frame:
                    raise CorruptFrame(f"frame of {length} bytes exceeds {self.max_frame}")
                if head_len > MAX_HEADER or head_len + 2 > length or head_len == 0:
                    raise CorruptFrame("bad header length")
                total = 4 + length
                if end - pos < total:
                    break
                header = _decode_header(bytes(buf[pos + 6:pos + 6 + head_len]))
                body = bytes(buf[pos + 6 + head_len:pos + total])
                pos += total
                out.append(Frame(header, decode_payload(header.type, body, self.max_frame),
                                 body))
        finally:
            del buf[:pos]  # once per feed: many small frames cost no quadratic moves
        return out

    @property
    def pending(self) -> int:
        return len(self.buf)
