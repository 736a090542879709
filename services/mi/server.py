"""The MI's HTTP side: JSON-RPC 2.0 at `POST /mi` on an already-listening socket.

A slow or stuck client only holds its own connection. Neighbours: services.mi.registry
(dispatch), workers.cluster (host).
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from fastcluster.services.mi.registry import handle_body

log = logging.getLogger("mi")

MAX_HEADER_BYTES = 16384
MAX_BODY_BYTES = 1 << 20
IDLE_TIMEOUT_S = 30.0


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
        reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed", 411: "Length Required",
                  413: "Payload Too Large"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: "
                     f"{'keep-alive' if keep else 'close'}\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
