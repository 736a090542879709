"""The clusterer: membership, heartbeats, indirect probes, link-state flooding, routing,
relaying, node events; and the API the other cluster layers send through.

Lives in the cluster process's asyncio loop. A node joins by dialling any seed: the
seed adopts it and floods its description; the newcomer gets every known description
back and dials everyone. Each direct link is checked both ways (services.topology),
probed through the other nodes before being declared Down, and the set of Up links is
flooded as a link-state advertisement; every node computes the same shortest paths and
relays what is addressed to nodes it has no direct link with. Upper layers (capabilities,
replication, sync, script messages) register handlers for their message types and call
`send` / `broadcast`, which answer with a `SendResult` (OpenSIPS's send codes).
Neighbours: services.topology (decisions), services.links (connections), core.wire.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastcluster.core.config import Config
from fastcluster.core.stats import INDEX
from fastcluster.core.wire import BROADCAST, Frame, Header, Msg, encode
from fastcluster.services.cluster.api import SendResult
from fastcluster.services.cluster.links import Connection, Hello, LinkManager, Refused
from fastcluster.services.cluster.topology import (
    FloodFilter,
    Link,
    Peer,
    Sequencer,
    Timing,
    needs_ping,
    next_link_state,
    probe_round_due,
    routes,
)

log = logging.getLogger("clusterer")

# Settings every node of a cluster must share: each node computes the NAT ping partition
# map itself, and nodes that cut the contacts into different partitions would miss or
# double pings. A link to a node with another value is refused, with the reason logged.
AGREE = ("usrloc.ping_partitions",)


NodeEvent = Callable[[int, int, bool], None]  # (cluster, node, reachable)
Handler = Callable[[Frame, Connection | None], Awaitable[None] | None]


def now_ms() -> int:
    return int(time.monotonic() * 1000)


class Clusterer:
    def __init__(self, cfg: Config, stats: Any) -> None:
        self.cfg = cfg
        self.stats = stats
        self.me: int = cfg["clusterer.node_id"]
        self.clusters: tuple[int, ...] = cfg["clusterer.cluster_id"]
        self.url: tuple[str, int] = cfg["clusterer.bin_listen"]
        self.sip = tuple((host, port) for _, host, port in cfg["sip.listen"])
        self.incarnation = int.from_bytes(os.urandom(6), "big") << 16 | (os.getpid() & 0xFFFF)
        self.timing = Timing(cfg.timing("ping_interval_ms"), cfg.timing("ping_timeout_ms"),
                             cfg.timing("node_timeout_s") * 1000)
        self.peers: dict[int, Peer] = {}
        self.conns: dict[int, Connection] = {}
        self.adverts: dict[int, tuple[int, dict[int, set[int]]]] = {}  # origin -> (seq, lsa)
        self.disabled: dict[int, set[int]] = {self.me: set()}  # node -> disabled clusters
        self.desc_seq: dict[int, int] = {}
        self.removed: dict[int, int] = {}  # node -> description seq at removal
        self.reachable: dict[int, dict[int, int]] = {c: {} for c in self.clusters}
        self.flood = FloodFilter()
        self.seq = Sequencer()
        self.my_desc_seq = self.seq.next(int(time.time() * 1000))
        self.my_lsa: dict[int, list[int]] = {}
        self.handlers: dict[Msg, Handler] = {}
        self.subscribers: list[NodeEvent] = []
        self.pending_mi: dict[int, asyncio.Future] = {}
        self._mi_tag = 0
        self.dialing: set[tuple[str, int]] = set()
        self.tasks: set[asyncio.Task] = set()
        self.links = LinkManager(self.me, self.incarnation, self.url, frozenset(self.clusters),
                                 cfg["clusterer.secret"], cfg["clusterer.max_frame_bytes"],
                                 self._check_peer, self._count,
                                 {key: cfg[key] for key in AGREE})
        self.stopping = False
        self.mi_runner: Callable[[str, Any], Awaitable[Any]] | None = None
        self.on_sync_connection: Callable[[Connection], Awaitable[None]] | None = None
        self.on_recompute: Callable[[], None] | None = None  # after any topology change
        self.on_link_up: list[Callable[[int], None]] = []  # a link connection registered
        self.on_forget: list[Callable[[int], None]] = []  # a node was removed
        for node_id, host, port in cfg["clusterer.nodes"]:
            if node_id != self.me:
                self._peer(node_id).url = (host, port)
                self._peer(node_id).static = True

    # ---------------------------------------------------------------- helpers

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[INDEX[name]] += n

    def _peer(self, node_id: int) -> Peer:
        peer = self.peers.get(node_id)
        if peer is None:
            peer = self.peers[node_id] = Peer(node_id)
            self.disabled.setdefault(node_id, set())
        return peer

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def members(self, cluster: int) -> set[int]:
        """Enabled members of a cluster that this node knows (itself included)."""
        out = {p.node_id for p in self.peers.values()
               if cluster in p.clusters and cluster not in self.disabled.get(p.node_id, ())}
        if cluster not in self.disabled[self.me]:
            out.add(self.me)
        return out

    def enabled(self, cluster: int) -> bool:
        return cluster in self.clusters and cluster not in self.disabled[self.me]

    def is_up(self, cluster: int, node_id: int) -> bool:
        return node_id in self.reachable.get(cluster, {})

    def up_nodes(self, cluster: int) -> list[int]:
        return sorted(self.reachable.get(cluster, {}))

    def my_desc(self) -> dict[str, Any]:
        return {"id": self.me, "inc": self.incarnation, "url": list(self.url),
                "sip": [list(a) for a in self.sip], "clusters": list(self.clusters),
                "disabled": sorted(self.disabled[self.me]), "seq": self.my_desc_seq}

    def peer_desc(self, peer: Peer) -> dict[str, Any]:
        return {"id": peer.node_id, "inc": peer.incarnation,
                "url": list(peer.url) if peer.url else None,
                "sip": [list(a) for a in peer.sip], "clusters": sorted(peer.clusters),
                "disabled": sorted(self.disabled.get(peer.node_id, ())),
                "seq": self.desc_seq.get(peer.node_id, 0)}

    # ---------------------------------------------------------------- start / stop

    async def start(self, bin_sock: Any) -> None:
        await self.links.serve(bin_sock, self._on_connection)
        for host, port in self.cfg["clusterer.seeds"]:
            if (host, port) != self.url:
                self._spawn(self._dial((host, port), None))
        self._spawn(self._tick_loop())

    async def stop(self) -> None:
        """Graceful leave: tell everyone at once, then close."""
        self.stopping = True
        seq = self.seq.next(int(time.time() * 1000))
        for conn in list(self.conns.values()):
            conn.send(encode(Header(Msg.LEAVE, 0, self.me, BROADCAST),
                             {"origin": self.me, "seq": seq}))
        for conn in list(self.conns.values()):
            try:
                await asyncio.wait_for(conn.drain(), 0.5)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass
            conn.close()
        await self.links.close()
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
        for key in AGREE:
            if hello.agree.get(key) != self.links.agree[key]:
                return f"{key} differs: {self.links.agree[key]} here, " \
                       f"{hello.agree.get(key)} on node {hello.node_id} (it must be the " \
                       "same on every node)"
        if hello.purpose == "link":
            conn = self.conns.get(hello.node_id)
            peer = self.peers.get(hello.node_id)
            if conn is not None and peer is not None and peer.incarnation != hello.incarnation \
                    and now_ms() - peer.last_rx_ms <= self.timing.ping_timeout_ms:
                where = f"{peer.url[0]}:{peer.url[1]}" if peer.url else "?"
                return f"duplicate node id {hello.node_id}: node {hello.node_id} is already " \
                       f"up at {where}"
        return None

    async def _dial(self, addr: tuple[str, int], node_id: int | None) -> None:
        if addr in self.dialing or self.stopping:
            return
        self.dialing.add(addr)
        try:
            conn = await self.links.dial(addr[0], addr[1], "link")
        except Refused as exc:
            self._count("clusterer:refused_links")
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
        peer = self._peer(hello.node_id)
        if peer.incarnation and peer.incarnation != hello.incarnation:
            log.info("node %d restarted (new incarnation)", hello.node_id)
            peer.pong_ms = 0
            peer.peer_ack = False
        peer.incarnation = hello.incarnation
        peer.url = hello.url
        peer.clusters = frozenset(hello.clusters)
        peer.left = False
        self.removed.pop(hello.node_id, None)
        now = now_ms()
        peer.last_rx_ms = now
        peer.probing_since_ms = 0
        peer.probe_answers.clear()
        peer.probe_alive = False
        self.conns[hello.node_id] = conn
        # Tell it everything we know: descriptions, link states.
        nodes = [self.my_desc()] + [self.peer_desc(p) for p in self.peers.values()
                                    if p.url and p.node_id != hello.node_id]
        conn.send(encode(Header(Msg.NODES, 0, self.me, hello.node_id), {"nodes": nodes}))
        for origin, (seq, lsa) in self.adverts.items():
            conn.send(encode(Header(Msg.LSA, 0, self.me, BROADCAST),
                             {"origin": origin, "seq": seq,
                              "lsa": {c: sorted(v) for c, v in lsa.items()}}))
        for hook in self.on_link_up:
            hook(hello.node_id)
        self._send_ping(peer, conn, now)
        self._evaluate(peer, now)
        self._flood_node(hello.node_id, exclude=hello.node_id)
        self._spawn(self._read(conn))

    async def _read(self, conn: Connection) -> None:
        why = await self.links.read_loop(conn, self._on_frame)
        if self.conns.get(conn.peer_id) is conn:
            del self.conns[conn.peer_id]
            peer = self.peers.get(conn.peer_id)
            if peer is not None and not self.stopping:
                log.info("link to node %d lost: %s", conn.peer_id, why)
                self._evaluate(peer, now_ms())

    # ---------------------------------------------------------------- frames

    def _on_frame(self, conn: Connection, frame: Frame) -> Awaitable[None] | None:
        peer = self.peers.get(conn.peer_id)
        now = now_ms()
        if peer is not None:
            peer.last_rx_ms = now
        h = frame.header
        if h.destination not in (self.me, BROADCAST):
            self._relay(frame)
            return None
        kind = h.type
        if kind == Msg.PING:
            if peer is not None:
                peer.peer_ack = bool(frame.payload.get("ack")) if isinstance(frame.payload,
                                                                             dict) else False
                conn.send(encode(Header(Msg.PONG, 0, self.me, conn.peer_id),
                                 {"ack": self._our_direction_ok(peer, now),
                                  "t": frame.payload.get("t", 0)
                                  if isinstance(frame.payload, dict) else 0}))
                self._evaluate(peer, now)
            return None
        if kind == Msg.PONG:
            if peer is not None:
                peer.pong_ms = now
                peer.ping_sent_ms = 0
                peer.peer_ack = bool(frame.payload.get("ack")) if isinstance(frame.payload,
                                                                             dict) else False
                self._evaluate(peer, now)
            return None
        try:
            if kind == Msg.NODES:
                self._handle_nodes(frame, conn.peer_id)
            elif kind == Msg.LSA:
                self._handle_lsa(frame, conn.peer_id)
            elif kind == Msg.PROBE_REQ:
                self._handle_probe_req(frame, conn)
            elif kind == Msg.PROBE_RPL:
                self._handle_probe_rpl(frame, conn.peer_id)
            elif kind == Msg.LEAVE:
                self._handle_leave(frame, conn.peer_id)
            elif kind == Msg.REMOVE:
                self._handle_remove(frame, conn.peer_id)
            else:
                return self._deliver(frame, conn)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._count("clusterer:bad_messages")
            log.warning("malformed %s from node %d: %s", kind.name, conn.peer_id, exc)
        return None

    def _deliver(self, frame: Frame, conn: Connection | None) -> Awaitable[None] | None:
        h = frame.header
        if h.type == Msg.SET_STATUS:
            self._handle_set_status(frame)
            return None
        if h.type == Msg.MI_REQ:
            return self._handle_mi_req(frame)
        if h.type == Msg.MI_RPL:
            fut = self.pending_mi.pop(int(frame.payload["tag"]), None)
            if fut is not None and not fut.done():
                fut.set_result(frame.payload)
            return None
        if h.cluster and not self.enabled(h.cluster):
            return None  # a disabled node drops what it receives for that cluster
        handler = self.handlers.get(h.type)
        if handler is None:
            self._count("clusterer:bad_messages")
            return None
        return handler(frame, conn)

    def _relay(self, frame: Frame) -> None:
        h = frame.header
        if h.ttl <= 0:
            self._count("clusterer:unroutable_msgs")
            return
        hop = self._next_hop_any(h.cluster, h.destination)
        conn = self.conns.get(hop) if hop is not None else None
        if conn is None:
            self._count("clusterer:unroutable_msgs")
            return
        conn.send(encode(h.forwarded(), raw=frame.raw))
        self._count("clusterer:relayed_msgs")

    def _next_hop_any(self, cluster: int, dest: int) -> int | None:
        """Next hop for control traffic: the cluster's route, any cluster's route, or a
        direct link even to a node disabled in every cluster (so it can be re-enabled)."""
        if cluster in self.reachable and dest in self.reachable[cluster]:
            return self.reachable[cluster][dest]
        for table in self.reachable.values():
            if dest in table:
                return table[dest]
        peer = self.peers.get(dest)
        if dest in self.conns and peer is not None and peer.link == Link.UP:
            return dest
        return None

    # ---------------------------------------------------------------- sending API

    def send(self, cluster: int, dest: int, kind: Msg, payload: Any = None,
             raw: bytes | None = None) -> SendResult:
        if not self.enabled(cluster):
            return SendResult.CURR_DISABLED
        hop = self.reachable.get(cluster, {}).get(dest)
        conn = self.conns.get(hop) if hop is not None else None
        if conn is None:
            return SendResult.DEST_DOWN
        data = encode(Header(kind, cluster, self.me, dest), payload, raw)
        return SendResult.SUCCESS if conn.send(data) else SendResult.SEND_ERR

    def broadcast(self, cluster: int, kind: Msg, payload: Any = None,
                  raw: bytes | None = None) -> tuple[SendResult, list[int]]:
        """Send to every reachable node of the cluster; returns (result, nodes sent to)."""
        if not self.enabled(cluster):
            return SendResult.CURR_DISABLED, []
        targets = self.up_nodes(cluster)
        if not targets:
            return SendResult.DEST_DOWN, []
        sent = [n for n in targets if self.send(cluster, n, kind, payload, raw) ==
                SendResult.SUCCESS]
        return (SendResult.SUCCESS if sent else SendResult.SEND_ERR), sent

    def conn_to(self, cluster: int, dest: int) -> Connection | None:
        hop = self.reachable.get(cluster, {}).get(dest)
        return self.conns.get(hop) if hop is not None else None

    # ---------------------------------------------------------------- heartbeats

    def _our_direction_ok(self, peer: Peer, now: int) -> bool:
        t = self.timing
        return peer.pong_ms > 0 and now - peer.pong_ms <= t.ping_interval_ms + t.ping_timeout_ms

    def _send_ping(self, peer: Peer, conn: Connection, now: int) -> None:
        conn.send(encode(Header(Msg.PING, 0, self.me, peer.node_id),
                         {"ack": self._our_direction_ok(peer, now), "t": now}))
        peer.ping_sent_ms = now
        peer.last_tx_ms = now

    async def _tick_loop(self) -> None:
        tick = max(0.005, min(self.timing.ping_interval_ms, self.timing.ping_timeout_ms) / 4000)
        while not self.stopping:
            try:
                self.tick(now_ms())
            except Exception:
                log.exception("clusterer tick failed")
            await asyncio.sleep(tick)

    def tick(self, now: int) -> None:
        for peer in list(self.peers.values()):
            conn = self.conns.get(peer.node_id)
            if conn is not None and needs_ping(peer, now, self.timing):
                self._send_ping(peer, conn, now)
            self._evaluate(peer, now)
            if conn is None and peer.url and not peer.left and self.enabled_any() and \
                    (peer.link != Link.DOWN or now >= peer.next_retry_ms) and \
                    peer.url not in self.dialing:
                if peer.link == Link.DOWN:
                    peer.next_retry_ms = now + int(self.timing.node_timeout_ms)
                self._spawn(self._dial(peer.url, peer.node_id))

    def enabled_any(self) -> bool:
        return any(self.enabled(c) for c in self.clusters)

    def _evaluate(self, peer: Peer, now: int) -> None:
        connected = peer.node_id in self.conns
        probers = [p for p in self.peers.values()
                   if p.node_id != peer.node_id and p.link == Link.UP]
        new = next_link_state(peer, connected, now, self.timing, len(probers))
        if new == Link.PROBE and probe_round_due(peer, now, self.timing) and (
                not connected or now - peer.last_rx_ms > self.timing.ping_timeout_ms):
            peer.probing_since_ms = peer.probing_since_ms or now
            peer.probe_round_ms = now
            peer.probe_alive = False
            peer.probe_answers.clear()
            for p in probers:
                c = self.conns.get(p.node_id)
                if c is not None:
                    c.send(encode(Header(Msg.PROBE_REQ, 0, self.me, p.node_id),
                                  {"target": peer.node_id}))
            new = next_link_state(peer, connected, now, self.timing, len(probers))
        if new == Link.UP:
            peer.probing_since_ms = 0
        if new == peer.link:
            return
        old = peer.link
        peer.link = new
        peer.link_since_ms = now
        log.info("link to node %d: %s -> %s", peer.node_id, old.value, new.value)
        if new == Link.DOWN:
            peer.probing_since_ms = 0
            peer.next_retry_ms = now + int(self.timing.node_timeout_ms)
            peer.pong_ms = 0
            peer.peer_ack = False
            conn = self.conns.pop(peer.node_id, None)
            if conn is not None:
                conn.close()
        self._advertise()

    # ---------------------------------------------------------------- probes

    def _handle_probe_req(self, frame: Frame, conn: Connection) -> None:
        target = int(frame.payload["target"])
        peer = self.peers.get(target)
        now = now_ms()
        alive = peer is not None and target in self.conns and \
            now - peer.last_rx_ms <= self.timing.ping_timeout_ms
        conn.send(encode(Header(Msg.PROBE_RPL, 0, self.me, conn.peer_id),
                         {"target": target, "alive": alive}))

    def _handle_probe_rpl(self, frame: Frame, source: int) -> None:
        peer = self.peers.get(int(frame.payload["target"]))
        if peer is None or not peer.probing_since_ms:
            return
        peer.probe_answers.add(source)
        if frame.payload.get("alive"):
            peer.probe_alive = True
        self._evaluate(peer, now_ms())

    # ---------------------------------------------------------------- link-state

    def _advertise(self) -> None:
        """Flood our Up links if they changed, and recompute routes."""
        lsa = {c: sorted(p.node_id for p in self.peers.values()
                         if p.link == Link.UP and c in p.clusters)
               for c in self.clusters}
        if lsa != self.my_lsa:
            self.my_lsa = lsa
            seq = self.seq.next(int(time.time() * 1000))
            self.adverts[self.me] = (seq, {c: set(v) for c, v in lsa.items()})
            self.flood.fresh(int(Msg.LSA), self.me, seq)
            self._flood(Msg.LSA, {"origin": self.me, "seq": seq, "lsa": lsa}, exclude=None)
        self._recompute()

    def flood_all(self, kind: Msg, payload: Any, exclude: int | None) -> None:
        """Send a flooded message to every neighbour (but `exclude`); receivers forward
        what is fresh to theirs (sequence numbers stop the echo)."""
        self._flood(kind, payload, exclude)

    def _flood(self, kind: Msg, payload: Any, exclude: int | None) -> None:
        data = encode(Header(kind, 0, self.me, BROADCAST), payload)
        for node_id, conn in list(self.conns.items()):
            if node_id != exclude and self.peers[node_id].link != Link.DOWN:
                conn.send(data)

    def _handle_lsa(self, frame: Frame, source: int) -> None:
        p = frame.payload
        origin, seq = int(p["origin"]), int(p["seq"])
        if origin == self.me or not self.flood.fresh(int(Msg.LSA), origin, seq):
            return
        self.adverts[origin] = (seq, {int(c): {int(n) for n in v} for c, v in p["lsa"].items()})
        self._flood(Msg.LSA, p, exclude=source)
        self._recompute()

    def _recompute(self) -> None:
        lsa_of = {o: adv for o, (_, adv) in self.adverts.items()}
        for cluster in self.clusters:
            members = self.members(cluster)
            if self.me not in members:
                new: dict[int, int] = {}
            else:
                my_up = {p.node_id for p in self.peers.values()
                         if p.link == Link.UP and p.node_id in members}
                adverts = {o: adv.get(cluster, set()) for o, adv in lsa_of.items() if o != self.me}
                new = routes(self.me, my_up, adverts, members)
            old = self.reachable[cluster]
            self.reachable[cluster] = new
            for node in sorted(set(old) | set(new)):
                was, now_ = node in old, node in new
                if was != now_:
                    self._count("clusterer:node_up_events" if now_ else
                                "clusterer:node_down_events")
                    log.info("cluster %d: node %d is %s", cluster, node,
                             f"up (next hop {new[node]})" if now_ else "down")
                    for fn in self.subscribers:
                        try:
                            fn(cluster, node, now_)
                        except Exception:
                            log.exception("node event subscriber failed")
                elif was and old[node] != new[node]:
                    log.info("cluster %d: node %d now via node %d", cluster, node, new[node])
        if self.on_recompute is not None:
            self.on_recompute()

    # ---------------------------------------------------------------- membership

    def _flood_node(self, node_id: int, exclude: int | None) -> None:
        peer = self.peers.get(node_id)
        if peer is None or not peer.url:
            return
        self._flood(Msg.NODES, {"nodes": [self.peer_desc(peer)]}, exclude=exclude)

    def _handle_nodes(self, frame: Frame, source: int) -> None:
        fresh = []
        for d in frame.payload["nodes"]:
            node_id, seq = int(d["id"]), int(d.get("seq", 0))
            if node_id == self.me or not d.get("url"):
                continue
            if node_id in self.removed and seq <= self.removed[node_id]:
                continue
            known = node_id in self.peers
            if known and seq < self.desc_seq.get(node_id, 0):
                continue
            peer = self._peer(node_id)
            if seq > self.desc_seq.get(node_id, 0) or not known:
                fresh.append(d)
            self.desc_seq[node_id] = max(seq, self.desc_seq.get(node_id, 0))
            if not (node_id in self.conns and peer.url):
                peer.url = (str(d["url"][0]), int(d["url"][1]))
            peer.clusters = frozenset(int(c) for c in d["clusters"])
            peer.sip = tuple((str(a[0]), int(a[1])) for a in d.get("sip") or ())
            if d.get("inc") and node_id not in self.conns and \
                    int(d["inc"]) != peer.incarnation:
                peer.incarnation = int(d["inc"])
                peer.left = False  # a new incarnation of a node that left: dial it again
            old_disabled = self.disabled.get(node_id, set())
            self.disabled[node_id] = {int(c) for c in d.get("disabled", ())}
            if not known:
                log.info("node %d at %s:%d adopted (clusters %s)", node_id, peer.url[0],
                         peer.url[1], sorted(peer.clusters))
            if old_disabled != self.disabled[node_id]:
                log.info("node %d is disabled in clusters %s", node_id,
                         sorted(self.disabled[node_id]))
        if fresh:
            self._flood(Msg.NODES, {"nodes": fresh}, exclude=source)
            self._recompute()

    def _handle_leave(self, frame: Frame, source: int) -> None:
        origin, seq = int(frame.payload["origin"]), int(frame.payload["seq"])
        if origin == self.me or not self.flood.fresh(int(Msg.LEAVE), origin, seq):
            return
        self._flood(Msg.LEAVE, frame.payload, exclude=source)
        peer = self.peers.get(origin)
        if peer is None:
            return
        log.info("node %d left the cluster", origin)
        peer.left = True
        self._evaluate(peer, now_ms())
        self.adverts.pop(origin, None)
        self._recompute()

    def remove_node(self, node_id: int) -> None:
        seq = self.seq.next(int(time.time() * 1000))
        payload = {"target": node_id, "origin": self.me, "seq": seq}
        self.flood.fresh(int(Msg.REMOVE), self.me, seq)
        self._flood(Msg.REMOVE, payload, exclude=None)
        self._forget(node_id)

    def _handle_remove(self, frame: Frame, source: int) -> None:
        p = frame.payload
        origin, seq, target = int(p["origin"]), int(p["seq"]), int(p["target"])
        if not self.flood.fresh(int(Msg.REMOVE), origin, seq):
            return
        self._flood(Msg.REMOVE, p, exclude=source)
        if target == self.me:
            log.warning("node %d removed this node from the cluster: disabling it", origin)
            for c in self.clusters:
                self.set_status(c, False)
            return
        self._forget(target)

    def _forget(self, node_id: int) -> None:
        log.info("node %d removed", node_id)
        self.removed[node_id] = self.desc_seq.get(node_id, 0)
        conn = self.conns.pop(node_id, None)
        if conn is not None:
            conn.close()
        self.peers.pop(node_id, None)
        self.adverts.pop(node_id, None)
        self.flood.forget(node_id)
        for hook in self.on_forget:
            hook(node_id)
        self._advertise()

    # ---------------------------------------------------------------- status

    def set_status(self, cluster: int, enabled: bool) -> None:
        if enabled:
            self.disabled[self.me].discard(cluster)
        else:
            self.disabled[self.me].add(cluster)
        self.my_desc_seq = self.seq.next(int(time.time() * 1000))
        log.info("this node %s in cluster %d", "enabled" if enabled else "disabled", cluster)
        self._flood(Msg.NODES, {"nodes": [self.my_desc()]}, exclude=None)
        self._advertise()

    def _handle_set_status(self, frame: Frame) -> None:
        self.set_status(int(frame.payload["cluster"]), bool(frame.payload["status"]))

    # ---------------------------------------------------------------- remote MI

    async def _handle_mi_req(self, frame: Frame) -> None:
        p = frame.payload
        reply: dict[str, Any] = {"tag": p["tag"], "node": self.me}
        if self.mi_runner is None:
            reply["error"] = {"code": 500, "message": "MI not available"}
        else:
            answer = await self.mi_runner(str(p["cmd"]), p.get("params"))
            reply.update(answer or {})
        self.send_direct_or_relay(frame.header.cluster, frame.header.source, Msg.MI_RPL, reply)

    def send_direct_or_relay(self, cluster: int, dest: int, kind: Msg, payload: Any) -> None:
        hop = self._next_hop_any(cluster, dest)
        conn = self.conns.get(hop) if hop is not None else None
        if conn is not None:
            conn.send(encode(Header(kind, cluster, self.me, dest), payload))

    async def run_remote_mi(self, cluster: int, dest: int, cmd: str, params: Any,
                            timeout: float) -> dict[str, Any]:
        self._mi_tag += 1
        tag = self._mi_tag
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending_mi[tag] = fut
        result = self.send(cluster, dest, Msg.MI_REQ, {"tag": tag, "cmd": cmd,
                                                      "params": params})
        if result != SendResult.SUCCESS:
            self.pending_mi.pop(tag, None)
            return {"node": dest, "error": {"code": 400, "message": {
                SendResult.DEST_DOWN: "Destination down",
                SendResult.CURR_DISABLED: "Local node disabled"}.get(result, "Send error")}}
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.pending_mi.pop(tag, None)
            return {"node": dest, "error": {"code": 408, "message": "No reply in time"}}
