"""The cluster process's side of the user script: messages between the script process and
the other nodes, node events, and the MI commands the script defines.

The script process connects to an abstract unix socket the master bound (only a child
of this node's master is accepted: SO_PEERCRED). Both directions carry core.wire frames:
SCRIPT_REQ / SCRIPT_RPL frames from the script are routed like any cluster message (to
the destination or its next hop; relays forward them untouched), and those that arrive
for this node go to the script as they are. The payload, a msgpack stream of [tag, msg],
is never decoded here. SCRIPT_CTL frames carry the cluster snapshot the script answers
its API calls from, node state events, and MI calls and their results. The cluster loop
never waits for the script: what the script has not read yet is bounded by
script.queue_bytes, past which messages are dropped and counted. Neighbours:
services.script (the script side), services.cluster.api (routing, node events),
services.mi (dynamic commands), workers.cluster.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import struct
from typing import Any

import msgpack

from fastcluster.core.messages import BadMessage, Msg, ScriptCtl, from_wire
from fastcluster.core.stats import INDEX
from fastcluster.core.wire import CorruptFrame, Decoder, Frame, Header, encode
from fastcluster.services.cluster.api import ClusterAPI, Delivery, Mode, SendResult
from fastcluster.services.mi import registry as mi

log = logging.getLogger("script")



class ScriptBridge:
    def __init__(self, proc: Any, api: ClusterAPI) -> None:
        self.proc = proc
        self.cl = api
        self.listen_sock: socket.socket | None = proc.ctx.script_sock
        self.link: _ScriptLink | None = None  # the script process's connection
        self.last_snapshot = b""
        self.commands: list[str] = []  # MI commands registered for the script
        self.calls: dict[int, asyncio.Future] = {}
        self.call_ids = itertools.count(1)
        self.server: asyncio.base_events.Server | None = None
        if self.listen_sock is not None:
            api.handle(Msg.SCRIPT_REQ, self.from_node, Mode.INLINE)
            api.handle(Msg.SCRIPT_RPL, self.from_node, Mode.INLINE)
            api.on_node_event(self.on_node_event)
            api.on_shtag_change(self.on_shtag_change)

    def _count(self, name: str, n: int = 1) -> None:
        self.proc.stats[INDEX[name]] += n

    async def start(self) -> None:
        if self.listen_sock is not None:
            self.server = await asyncio.get_running_loop().create_unix_server(
                lambda: _ScriptLink(self), sock=self.listen_sock)

    async def close(self) -> None:
        if self.link is not None:
            self.link.transport.close()
        if self.server is not None:
            self.server.close()

    # -- the script's connection

    def trusted(self, sock: socket.socket) -> str | None:
        """None if the peer is a process of this node, else why it is refused."""
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            ppid = -1
        if uid != os.getuid() or ppid != self.proc.ctx.master_pid:
            return f"pid {pid} (uid {uid}) is not a process of this node"
        return None

    def attach(self, link: _ScriptLink) -> None:
        if self.link is not None:
            self.link.transport.close()  # a new script process replaces the old one
        self.link = link
        self.last_snapshot = b""
        self.push_snapshot()

    def detach(self, link: _ScriptLink, reason: str) -> None:
        if self.link is not link:
            return
        self.link = None
        log.info("script process disconnected (%s)", reason)
        for fut in self.calls.values():
            if not fut.done():
                fut.set_result((False, {"code": 503, "message":
                                        "the script process went away"}))

    def from_script(self, frame: Frame) -> None:
        h = frame.header
        if h.type in (Msg.SCRIPT_REQ, Msg.SCRIPT_RPL):
            if h.destination == self.cl.me:  # the script's message to its own node
                self._forward(h, frame.raw)
            elif self.cl.send(h.cluster, h.destination, h.type, raw=frame.raw) != \
                    SendResult.SUCCESS:
                self._count("clusterer:unroutable_msgs")
        elif h.type == Msg.SCRIPT_CTL:
            try:
                p = from_wire(ScriptCtl, frame.payload)
            except BadMessage as exc:
                log.warning("malformed control frame from the script process: %s", exc)
                return
            if p.hello is not None:
                log.info("script process %s connected", p.hello)
                self._register(p.mi or [])
            if p.mi_reply is not None:
                call_id, ok, value = p.mi_reply
                fut = self.calls.pop(int(call_id), None)
                if fut is not None and not fut.done():
                    fut.set_result((bool(ok), value))
        else:
            log.warning("unexpected %s frame from the script process", h.type.name)

    def _send(self, data: bytes) -> bool:
        link = self.link
        if link is None or link.transport.is_closing():
            return False
        if link.transport.get_write_buffer_size() > self.proc.cfg["script.queue_bytes"]:
            return False
        link.transport.write(data)
        return True

    def _control(self, payload: ScriptCtl) -> bool:
        return self._send(encode(Header(Msg.SCRIPT_CTL, 0, self.cl.me, self.cl.me), payload))

    # -- from the other nodes

    def from_node(self, d: Delivery) -> None:
        self._forward(d.header, d.raw)

    def _forward(self, header: Header, raw: bytes) -> None:
        if not self._send(encode(header, raw=raw)):
            self._count("script:dropped_msgs")

    # -- cluster state for the script's API

    def snapshot(self) -> dict[int, Any]:
        cl = self.cl
        out: dict[int, Any] = {}
        for cid in cl.clusters:
            nodes = {cl.me: {"up": True, "bin": [cl.url[0]], "sip": [a[0] for a in cl.sip]}}
            for view in cl.nodes(cid):
                nodes[view.node_id] = {"up": view.reachable,
                                       "bin": [view.url[0]] if view.url else [],
                                       "sip": [a[0] for a in view.sip]}
            out[cid] = {"enabled": cl.enabled(cid), "nodes": nodes}
        return out

    def push_snapshot(self) -> None:
        """Send the snapshot if it changed (called after every topology change)."""
        if self.link is None:
            return
        snap = self.snapshot()
        packed = msgpack.packb(snap)
        if packed != self.last_snapshot and self._control(ScriptCtl(snapshot=snap)):
            self.last_snapshot = packed

    def on_node_event(self, cluster: int, node: int, up: bool) -> None:
        self.push_snapshot()  # the hook then sees the new state through the API
        if self.link is not None and not self._control(ScriptCtl(event=[cluster, node, up])):
            self._count("script:dropped_msgs")

    def on_shtag_change(self, tag: str, cluster: int, active: bool, reason: str) -> None:
        if self.link is not None and not self._control(ScriptCtl(
                shtag=[tag, cluster, active, reason])):
            self._count("script:dropped_msgs")

    # -- MI commands defined by the script

    def _register(self, described: list[dict[str, Any]]) -> None:
        for name in self.commands:
            mi.unregister(name)
        self.commands = []
        for d in described:
            name = str(d["name"])
            cmd = mi.Command(name, self._proxy(name), False, str(d.get("doc", "")),
                             (tuple(d.get("params", ())), tuple(d.get("required", ()))),
                             cluster=True)
            refused = mi.register(cmd)
            if refused:
                log.error("script MI command %s not added: %s", name, refused)
            else:
                self.commands.append(name)
        if self.commands:
            log.info("script MI commands: %s", ", ".join(self.commands))

    def _proxy(self, name: str):
        async def call(_node: Any, /, **params: Any) -> Any:
            call_id = next(self.call_ids)
            fut = asyncio.get_running_loop().create_future()
            self.calls[call_id] = fut
            if not self._control(ScriptCtl(mi_call=[call_id, name, params])):
                self.calls.pop(call_id, None)
                raise mi.MIError(503, "the script process is not running")
            timeout = self.proc.cfg["script.mi_timeout_s"]
            try:
                ok, value = await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise mi.MIError(408, f"the script's {name} did not answer within "
                                      f"{timeout:g} s (script.mi_timeout_s)") from None
            finally:
                self.calls.pop(call_id, None)
            if not ok:
                raise mi.MIError(int(value.get("code", 500)), str(value.get("message")))
            return value

        return call


class _ScriptLink(asyncio.Protocol):
    """The script process's connection, read as data arrives (a protocol rather than a
    stream reader: one event-loop turn less per message, which the round trip feels)."""

    def __init__(self, bridge: ScriptBridge) -> None:
        self.bridge = bridge
        self.decoder = Decoder(bridge.proc.cfg["clusterer.max_frame_bytes"])
        self.transport: asyncio.Transport | None = None
        self.reason = "closed"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        why = self.bridge.trusted(transport.get_extra_info("socket"))
        if why is not None:
            log.warning("script connection refused: %s", why)
            self.reason = "refused"
            transport.close()
            return
        self.bridge.attach(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except CorruptFrame as exc:
            self.reason = f"corrupt frame: {exc}"
            log.warning("script connection: %s", self.reason)
            self.transport.close()
            return
        for frame in frames:
            self.bridge.from_script(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.detach(self, str(exc) if exc else self.reason)
