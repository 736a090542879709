"""Authenticated TCP connections between nodes (asyncio): accept, dial, handshake, frames.

Handshake (mutual, the secret never crosses the wire):
    connector -> HELLO     {id, inc, url, clusters, agree, purpose, nonce_c}
    acceptor  -> CHALLENGE {id, inc, url, clusters, agree, nonce_a, mac_a}
    connector -> AUTH      {mac_c}            (after checking mac_a)
    acceptor  -> WELCOME   {}                 (after checking mac_c)
mac_x = HMAC-SHA256(secret, role | nonce_c | nonce_a | connector id | acceptor id).
Either side answers a failure with REFUSE {reason} and closes; nothing about the other
node is believed before the handshake ends, so a wrong secret changes no state.
A corrupt frame drops that connection only (counted). Before the handshake ends a
frame may be at most PRE_AUTH_FRAME bytes, so a stranger cannot make this node buffer
more. `purpose` separates the control link (heartbeats, topology, replication) from
bulk sync connections, so a big sync never queues behind or in front of heartbeats.
Neighbours: core.wire (codec), core.messages (payloads), services.cluster.node (what
the frames mean).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastcluster.core.messages import Auth, BadMessage, Empty, Msg, Refuse, from_wire
from fastcluster.core.messages import Hello as HelloMsg
from fastcluster.core.wire import CorruptFrame, Decoder, Frame, Header, encode, encode_parts

log = logging.getLogger("links")

HANDSHAKE_TIMEOUT_S = 3.0
BAD_SECRET = "the cluster secret differs (authentication failed)"
READ_CHUNK = 1 << 18
PURPOSES = ("link", "sync")
PRE_AUTH_FRAME = 16384  # largest frame accepted before the handshake ends
MAX_HANDSHAKES = 64  # connections in their handshake at once, from anywhere
MAX_HANDSHAKES_PER_ADDRESS = 8  # ... from one address
MAX_CONNECTIONS = 1024  # authenticated connections (links and syncs) at once


class Refused(Exception):
    """The handshake failed; the reason is logged by the caller."""


@dataclass
class Hello:
    """What a handshake tells about the other end."""
    node_id: int
    incarnation: int
    url: tuple[str, int]
    clusters: frozenset[int]
    purpose: str
    agree: dict[str, Any]  # settings and build facts equal on every node (node.AGREE)


def _mac(secret: bytes, role: bytes, nonce_c: bytes, nonce_a: bytes, id_c: int,
         id_a: int) -> bytes:
    msg = b"fastcluster-auth|" + role + b"|" + nonce_c + nonce_a + \
        id_c.to_bytes(2, "big") + id_a.to_bytes(2, "big")
    return hmac.new(secret, msg, hashlib.sha256).digest()


class Connection:
    """One authenticated connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 decoder: Decoder, peer: Hello, initiator: bool,
                 early: list[Frame] | None = None) -> None:
        self.reader, self.writer, self.decoder = reader, writer, decoder
        self.peer = peer
        self.initiator = initiator
        self.early = early or []  # frames that arrived together with the handshake's last
        self.closed = False
        self.on_close: Callable[[], None] | None = None

    @property
    def peer_id(self) -> int:
        return self.peer.node_id

    def send(self, data: bytes) -> bool:
        if self.closed or self.writer.is_closing():
            return False
        self.writer.write(data)
        return True

    def send_parts(self, parts: list[Any]) -> bool:
        if self.closed or self.writer.is_closing():
            return False
        self.writer.writelines(parts)
        return True

    async def recv(self, timeout: float) -> Frame:
        """The next frame, for connections read in sequence (sync sessions). Raises
        asyncio.TimeoutError, ConnectionError, or CorruptFrame."""
        while not self.early:
            data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
            if not data:
                raise ConnectionError("closed by the other node")
            self.early.extend(self.decoder.feed(data))
        return self.early.pop(0)

    def buffered(self) -> int:
        transport = self.writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
            if self.on_close is not None:
                self.on_close()


FrameHandler = Callable[[Connection, Frame], None]  # must not block: the link waits


class LinkManager:
    def __init__(self, me: int, incarnation: int, url: tuple[str, int],
                 clusters: frozenset[int], secret: str, max_frame: int,
                 check_peer: Callable[[Hello], str | None],
                 count: Callable[[str], None], agree: dict[str, Any]) -> None:
        """check_peer(hello) -> None to accept, or the reason to refuse (duplicate id,
        no cluster in common, this node disabled ...). count(statistic name) records
        refused links and corrupt frames."""
        self.me, self.incarnation, self.url, self.clusters = me, incarnation, url, clusters
        self.secret = secret.encode()
        self.max_frame = max_frame
        self.check_peer = check_peer
        self.server: asyncio.base_events.Server | None = None
        self.count = count
        self.agree = agree
        self.handshakes: dict[str, int] = {}  # address -> connections in handshake
        self.connections = 0

    def _hello(self, purpose: str, nonce: bytes, mac: bytes | None = None) -> HelloMsg:
        return HelloMsg(self.me, self.incarnation, list(self.url), sorted(self.clusters),
                        self.agree, purpose, nonce, mac)

    @staticmethod
    def _parse_hello(frame: Frame, purpose: str | None = None) -> tuple[Hello, HelloMsg]:
        try:
            p = from_wire(HelloMsg, frame.payload)
            url = (str(p.url[0]), int(p.url[1]))
            hello = Hello(p.id, p.inc, url, frozenset(p.clusters), purpose or p.purpose,
                          dict(p.agree))
        except (BadMessage, TypeError, ValueError, IndexError):
            raise Refused("malformed handshake") from None
        if not 1 <= hello.node_id <= 65535 or hello.purpose not in PURPOSES or \
                len(p.nonce) != 16:
            raise Refused("malformed handshake")
        return hello, p

    # -- reading one frame during the handshake

    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader, decoder: Decoder,
                          queue: list[Frame]) -> Frame:
        """Next frame; frames read beyond it stay in `queue` (the peer may send its
        first messages right behind the handshake's last one)."""
        while not queue:
            data = await reader.read(4096)
            if not data:
                raise Refused("connection closed during handshake")
            queue.extend(decoder.feed(data))
        return queue.pop(0)

    def _send(self, writer: asyncio.StreamWriter, kind: Msg, dst: int, payload: Any) -> None:
        writer.write(encode(Header(kind, 0, self.me, dst), payload))

    # -- connector side

    async def dial(self, host: str, port: int, purpose: str = "link") -> Connection:
        """Connect and authenticate. Raises OSError (network) or Refused (handshake)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(self.url[0], 0),
                                    limit=READ_CHUNK), HANDSHAKE_TIMEOUT_S)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = Decoder(PRE_AUTH_FRAME)
        try:
            conn = await asyncio.wait_for(self._connector(reader, writer, decoder, purpose),
                                          HANDSHAKE_TIMEOUT_S)
            decoder.max_frame = self.max_frame
            return conn
        except (Refused, CorruptFrame, asyncio.TimeoutError, OSError) as exc:
            writer.close()
            if isinstance(exc, asyncio.TimeoutError):
                raise Refused("handshake timed out") from None
            if isinstance(exc, CorruptFrame):
                raise Refused(f"corrupt handshake: {exc}") from None
            raise

    async def _connector(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         decoder: Decoder, purpose: str) -> Connection:
        nonce_c = os.urandom(16)
        queue: list[Frame] = []
        self._send(writer, Msg.HELLO, 0, self._hello(purpose, nonce_c))
        frame = await self._read_frame(reader, decoder, queue)
        if frame.header.type == Msg.REFUSE:
            raise Refused(f"refused by the other node: {_reason(frame.payload)}")
        if frame.header.type != Msg.CHALLENGE:
            raise Refused("expected CHALLENGE")
        peer, challenge = self._parse_hello(frame, purpose)
        nonce_a = challenge.nonce
        expect = _mac(self.secret, b"acceptor", nonce_c, nonce_a, self.me, peer.node_id)
        if not hmac.compare_digest(expect, challenge.mac or b""):
            self._send(writer, Msg.REFUSE, peer.node_id, Refuse(BAD_SECRET))
            raise Refused(f"node {peer.node_id} at {_addr(peer.url)}: {BAD_SECRET}")
        reason = self.check_peer(peer)
        if reason:
            self._send(writer, Msg.REFUSE, peer.node_id, Refuse(reason))
            raise Refused(reason)
        self._send(writer, Msg.AUTH, peer.node_id,
                   Auth(_mac(self.secret, b"connector", nonce_c, nonce_a, self.me,
                             peer.node_id)))
        frame = await self._read_frame(reader, decoder, queue)
        if frame.header.type == Msg.REFUSE:
            raise Refused(f"refused by node {peer.node_id}: {_reason(frame.payload)}")
        if frame.header.type != Msg.WELCOME:
            raise Refused("expected WELCOME")
        return Connection(reader, writer, decoder, peer, initiator=True, early=queue)

    # -- acceptor side

    async def serve(self, sock: socket.socket,
                    on_connection: Callable[[Connection], Awaitable[None]]) -> None:
        sock.setblocking(False)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            s = writer.get_extra_info("socket")
            if s is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            decoder = Decoder(PRE_AUTH_FRAME)
            where = writer.get_extra_info("peername")
            address = where[0] if isinstance(where, tuple) else str(where)
            if sum(self.handshakes.values()) >= MAX_HANDSHAKES or \
                    self.handshakes.get(address, 0) >= MAX_HANDSHAKES_PER_ADDRESS or \
                    self.connections >= MAX_CONNECTIONS:
                self.count("clusterer:refused_links")
                writer.close()  # too many at once: no reading, no buffering
                return
            self.handshakes[address] = self.handshakes.get(address, 0) + 1
            try:
                conn = await asyncio.wait_for(self._acceptor(reader, writer, decoder),
                                              HANDSHAKE_TIMEOUT_S)
                decoder.max_frame = self.max_frame
            except (Refused, CorruptFrame, asyncio.TimeoutError, OSError) as exc:
                self.count("clusterer:refused_links")
                if isinstance(exc, CorruptFrame):
                    self.count("clusterer:corrupt_frames")
                log.warning("refused a connection from %s: %s",
                            _addr(where[:2]) if isinstance(where, tuple) else where,
                            exc if str(exc) else type(exc).__name__)
                writer.close()
                return
            finally:
                self.handshakes[address] -= 1
                if not self.handshakes[address]:
                    del self.handshakes[address]
            self.connections += 1
            conn.on_close = self._closed
            await on_connection(conn)

        self.server = await asyncio.start_server(accepted, sock=sock, limit=READ_CHUNK)

    def _closed(self) -> None:
        self.connections -= 1

    async def _acceptor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        decoder: Decoder) -> Connection:
        queue: list[Frame] = []
        frame = await self._read_frame(reader, decoder, queue)
        if frame.header.type != Msg.HELLO:
            raise Refused("expected HELLO")
        peer, hello = self._parse_hello(frame)
        nonce_c = hello.nonce
        nonce_a = os.urandom(16)
        self._send(writer, Msg.CHALLENGE, peer.node_id, self._hello(
            peer.purpose, nonce_a, _mac(self.secret, b"acceptor", nonce_c, nonce_a,
                                        peer.node_id, self.me)))
        frame = await self._read_frame(reader, decoder, queue)
        if frame.header.type == Msg.REFUSE:
            raise Refused(f"node {peer.node_id} at {_addr(peer.url)}: "
                          f"{_reason(frame.payload)}")
        try:
            auth = from_wire(Auth, frame.payload) if frame.header.type == Msg.AUTH else None
        except BadMessage:
            auth = None
        if auth is None:
            raise Refused("expected AUTH")
        expect = _mac(self.secret, b"connector", nonce_c, nonce_a, peer.node_id, self.me)
        if not hmac.compare_digest(expect, auth.mac):
            self._send(writer, Msg.REFUSE, peer.node_id, Refuse(BAD_SECRET))
            raise Refused(f"node {peer.node_id} at {_addr(peer.url)}: {BAD_SECRET}")
        reason = self.check_peer(peer)
        if reason:
            self._send(writer, Msg.REFUSE, peer.node_id, Refuse(reason))
            raise Refused(f"node {peer.node_id} at {_addr(peer.url)}: {reason}")
        self._send(writer, Msg.WELCOME, peer.node_id, Empty())
        return Connection(reader, writer, decoder, peer, initiator=False, early=queue)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    # -- reading frames after the handshake

    async def read_loop(self, conn: Connection, on_frame: FrameHandler) -> str:
        """Deliver frames until the connection ends; returns why it ended."""
        try:
            for frame in conn.early:
                on_frame(conn, frame)
            conn.early = []
            while True:
                data = await conn.reader.read(READ_CHUNK)
                if not data:
                    return "closed by the other node"
                for frame in conn.decoder.feed(data):
                    on_frame(conn, frame)
        except CorruptFrame as exc:
            self.count("clusterer:corrupt_frames")
            log.warning("corrupt frame from node %d: %s; dropping that connection",
                        conn.peer_id, exc)
            return f"corrupt frame: {exc}"
        except (ConnectionError, OSError) as exc:
            return f"connection error: {exc}"
        finally:
            conn.close()


def _addr(url: tuple[str, int]) -> str:
    return f"[{url[0]}]:{url[1]}" if ":" in url[0] else f"{url[0]}:{url[1]}"


def _reason(payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("reason"), str):
        return payload["reason"][:200]
    return "no reason given"


__all__ = ["Connection", "Hello", "LinkManager", "Refused", "encode", "encode_parts"]
