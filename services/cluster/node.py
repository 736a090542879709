"""The cluster node: this node's side of every link, and the layers that share them.

Lives in the cluster process's asyncio loop. It accepts and dials authenticated
connections (services.cluster.links), keeps one link per neighbour, reads every link,
counts any traffic as liveness, forwards what is addressed to other nodes (routing) and
hands the rest to the dispatcher, which never lets a handler hold up a link. The layers
it composes -- membership, heartbeats, routing -- share the peer table and the
connections held here. Consumers never see this class: they bind to the narrow API
(services.cluster.api). Joining: a node dials any seed; the seed adopts it and floods its
description; the newcomer gets every known description back and dials everyone.
Neighbours: links, dispatch, membership, heartbeat, routing, topology, api.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from fastcluster.core.config import Config
from fastcluster.core.messages import Msg, Nodes
from fastcluster.core.stats import INDEX
from fastcluster.core.wire import Frame, Header, encode
from fastcluster.services.cluster.api import Events
from fastcluster.services.cluster.dispatch import Dispatcher, Mode
from fastcluster.services.cluster.heartbeat import Heartbeats, now_ms
from fastcluster.services.cluster.links import Connection, Hello, LinkManager, Refused
from fastcluster.services.cluster.membership import Membership
from fastcluster.services.cluster.routing import Routing
from fastcluster.services.cluster.topology import FloodFilter, Peer, Sequencer, Timing

log = logging.getLogger("clusterer")

# Settings every node of a cluster must share: each node computes the NAT ping partition
# map itself, and nodes that cut the contacts into different partitions would miss or
# double pings. A link to a node with another value is refused, with the reason logged.
AGREE = ("usrloc.ping_partitions",)


def timing_of(cfg: Config) -> Timing:
    return Timing(cfg.timing("ping_interval_ms"), cfg.timing("ping_timeout_ms"),
                  cfg.timing("node_timeout_s") * 1000)


class ClusterNode:
    def __init__(self, cfg: Config, stats: Any, build: str) -> None:
        """build: the fingerprint of row layouts and message schemas (two nodes whose
        fingerprints differ refuse to link)."""
        self.cfg = cfg
        self.stats = stats
        self.me: int = cfg["clusterer.node_id"]
        self.clusters: tuple[int, ...] = cfg["clusterer.cluster_id"]
        self.url: tuple[str, int] = cfg["clusterer.bin_listen"]
        self.sip = tuple((host, port) for _, host, port in cfg["sip.listen"])
        self.incarnation = int.from_bytes(os.urandom(6), "big") << 16 | (os.getpid() & 0xFFFF)
        self.peers: dict[int, Peer] = {}
        self.conns: dict[int, Connection] = {}
        self.flood = FloodFilter()
        self.seq = Sequencer()
        self.events = Events()
        self.dispatcher = Dispatcher(self.count, cfg["clusterer.max_frame_bytes"])
        self.membership = Membership(self)
        self.heartbeats = Heartbeats(self, timing_of(cfg))
        self.routing = Routing(self)
        self.dialing: set[tuple[str, int]] = set()
        self.tasks: set[asyncio.Task] = set()
        agree = {key: cfg[key] for key in AGREE}
        agree["build"] = build
        self.links = LinkManager(self.me, self.incarnation, self.url, frozenset(self.clusters),
                                 cfg["clusterer.secret"], cfg["clusterer.max_frame_bytes"],
                                 self._check_peer, self.count, agree)
        self.stopping = False
        self.on_sync_connection: Callable[[Connection], Awaitable[None]] | None = None
        self.seeds = set(cfg["clusterer.seeds"])
        for node_id, host, port in cfg["clusterer.nodes"]:
            if node_id != self.me:
                peer = self.membership.peer(node_id)
                peer.url = (host, port)
                peer.static = True
        try:
            os.makedirs(cfg.data_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(f"cannot create the data directory {cfg.data_dir} "
                               f"([core] data_dir): {exc.strerror or exc}") from None
        self.membership.remember(os.path.join(cfg.data_dir, "members.json"))
        m, h, r = self.membership, self.heartbeats, self.routing
        for kind, handler in ((Msg.PING, h.handle_ping), (Msg.PONG, h.handle_pong),
                              (Msg.PROBE_REQ, h.handle_probe_req),
                              (Msg.PROBE_RPL, h.handle_probe_rpl),
                              (Msg.NODES, m.handle_nodes), (Msg.LSA, r.handle_lsa),
                              (Msg.LEAVE, m.handle_leave), (Msg.REMOVE, m.handle_remove),
                              (Msg.SET_STATUS, m.handle_set_status)):
            self.dispatcher.register(kind, handler, Mode.INLINE)

    # ---------------------------------------------------------------- helpers

    def count(self, name: str, n: int = 1) -> None:
        self.stats[INDEX[name]] += n

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def send_on(self, conn: Connection, kind: Msg, payload: Any, dest: int | None = None
                ) -> bool:
        """Send to a neighbour over its own link (heartbeats, probes, handshake floods)."""
        return conn.send(encode(Header(kind, 0, self.me, conn.peer_id if dest is None
                                       else dest), payload))

    def apply_config(self, cfg: Config) -> None:
        """Reloaded settings: heartbeat timing applies at the next tick."""
        self.cfg = cfg
        self.heartbeats.set_timing(timing_of(cfg))

    # ---------------------------------------------------------------- start / stop

    async def start(self, bin_sock: Any) -> None:
        await self.links.serve(bin_sock, self._on_connection)
        for host, port in self.cfg["clusterer.seeds"]:
            if (host, port) != self.url:
                self.dial((host, port))
        self.spawn(self.heartbeats.run())

    async def stop(self) -> None:
        """Graceful leave: tell everyone at once, then close."""
        self.stopping = True
        leave = self.membership.leave_message()
        for conn in list(self.conns.values()):
            conn.send(encode(Header(Msg.LEAVE, 0, self.me, 0), leave))
        for conn in list(self.conns.values()):
            try:
                await asyncio.wait_for(conn.drain(), 0.5)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass
            conn.close()
        await self.links.close()
        self.dispatcher.close()
        for task in list(self.tasks):
            task.cancel()

    # ---------------------------------------------------------------- connections

    def _check_peer(self, hello: Hello) -> str | None:
        if hello.node_id == self.me:
            return f"node id {self.me} is already used by the node at " \
                   f"{self.url[0]}:{self.url[1]}"
        if not hello.clusters & set(self.clusters):
            return f"no cluster in common (it has {sorted(hello.clusters)}, this node " \
                   f"{list(self.clusters)})"
        for key, mine in self.links.agree.items():
            if hello.agree.get(key) != mine:
                if key == "build":
                    return f"another build: its row layouts or message schemas differ " \
                           f"(fingerprint {hello.agree.get(key)} on node {hello.node_id}, " \
                           f"{mine} here); upgrade both nodes to the same version"
                return f"{key} differs: {mine} here, {hello.agree.get(key)} on node " \
                       f"{hello.node_id} (it must be the same on every node)"
        if hello.purpose == "link":
            conn = self.conns.get(hello.node_id)
            peer = self.peers.get(hello.node_id)
            if conn is not None and peer is not None and peer.incarnation != hello.incarnation \
                    and now_ms() - peer.last_rx_ms <= self.heartbeats.timing.ping_timeout_ms:
                where = f"{peer.url[0]}:{peer.url[1]}" if peer.url else "?"
                return f"duplicate node id {hello.node_id}: node {hello.node_id} is already " \
                       f"up at {where}"
        return None

    def dialing_to(self, addr: tuple[str, int]) -> bool:
        return addr in self.dialing

    def dial(self, addr: tuple[str, int]) -> None:
        if addr not in self.dialing and not self.stopping:
            self.spawn(self._dial(addr))

    async def _dial(self, addr: tuple[str, int]) -> None:
        if addr in self.dialing or self.stopping:
            return
        self.dialing.add(addr)
        try:
            conn = await self.links.dial(addr[0], addr[1], "link")
        except Refused as exc:
            self.count("clusterer:refused_links")
            log.warning("link to %s:%d refused: %s", addr[0], addr[1], exc)
            return
        except (OSError, asyncio.TimeoutError) as exc:
            log.debug("cannot reach %s:%d: %s", addr[0], addr[1], exc)
            return
        finally:
            self.dialing.discard(addr)
        await self._on_connection(conn)

    async def _on_connection(self, conn: Connection) -> None:
        hello = conn.peer
        if hello.purpose == "sync":
            if self.on_sync_connection is None:
                conn.close()
                return
            await self.on_sync_connection(conn)
            return
        old = self.conns.get(hello.node_id)
        if old is not None and not old.closed:
            # Two connections between the same pair: keep the one the lower id dialled.
            keep_new = (conn.initiator and self.me < hello.node_id) or \
                       (not conn.initiator and hello.node_id < self.me)
            if not keep_new:
                conn.close()
                return
            old.close()
        peer = self.membership.peer(hello.node_id)
        restarted = bool(peer.incarnation) and peer.incarnation != hello.incarnation
        if restarted:
            log.info("node %d restarted (new incarnation)", hello.node_id)
            peer.pong_ms = 0
            peer.peer_ack = False
        peer.incarnation = hello.incarnation
        peer.url = hello.url
        peer.clusters = frozenset(hello.clusters)
        peer.left = False
        self.membership.removed.pop(hello.node_id, None)
        now = now_ms()
        peer.last_rx_ms = now
        peer.probing_since_ms = 0
        peer.probe_answers.clear()
        peer.probe_alive = False
        self.conns[hello.node_id] = conn
        if restarted:
            self.events.restart(hello.node_id)
        # Tell it everything we know: descriptions, link states.
        self.send_on(conn, Msg.NODES, Nodes(self.membership.known_descs(hello.node_id)))
        self.routing.adverts_for(conn)
        self.events.link_up(hello.node_id)
        self.heartbeats.send_ping(peer, conn, now)
        self.heartbeats.evaluate(peer, now)
        self.membership.flood_node(hello.node_id, exclude=hello.node_id)
        self.spawn(self._read(conn))

    async def _read(self, conn: Connection) -> None:
        why = await self.links.read_loop(conn, self._on_frame)
        if self.conns.get(conn.peer_id) is conn:
            del self.conns[conn.peer_id]
            peer = self.peers.get(conn.peer_id)
            if peer is not None and not self.stopping:
                log.info("link to node %d lost: %s", conn.peer_id, why)
                self.heartbeats.evaluate(peer)

    def _on_frame(self, conn: Connection, frame: Frame) -> None:
        peer = self.peers.get(conn.peer_id)
        if peer is not None:
            peer.last_rx_ms = now_ms()
        h = frame.header
        if h.destination not in (self.me, 0):
            self.routing.relay(frame)
            return
        if h.cluster and h.type not in (Msg.SET_STATUS, Msg.MI_REQ, Msg.MI_RPL) and \
                not self.membership.enabled(h.cluster):
            return  # a disabled node drops what it receives for that cluster
        self.dispatcher.deliver(frame, conn.peer_id)
