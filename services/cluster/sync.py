"""Full sync: a node with no data (or told to by the MI, or back from being cut off)
pulls a whole table from a donor, in chunks, while realtime replication goes on.

Receiver: picks a donor (capabilities.choose_donor), dials it on a separate `sync`
connection (never queued behind heartbeats), asks SYNC_REQ {capability, position},
applies each SYNC_CHUNK through the capability's apply_chunk (table kernels run in a
thread and release the GIL) and acknowledges it. A chunk is raw entries behind a small msgpack header {seq, rows, crc,
covered}; `covered` is the hash-space position below which the receiver now has every
record, so a sync that loses its donor (dead, or silent for sync_timeout_s) resumes
from there with another donor, whatever that donor's table size. SYNC_END carries the
rows sent in the session and their checksum; the receiver declares the capability
synced only if both match what it received, never on a partial or corrupt sync.
Donor: streams the chunks its capability's sync_source gathers, at most sync_window
unacknowledged, so neither side holds more than a few chunks in memory. With no donor in
sight, a node declares its own data synced only as capabilities.may_declare_synced
allows (never while a member it knows of may hold data). A mirror sync (a node back on
old tables after more than clusterer.tombstone_max_s) also drops what the donor lacks
that is older than the node's last contact.
Neighbours: capabilities (states, donor choice), api (Capability: the data side),
links (connections), services.cluster.replication (the tables' sources and appliers).
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from fastcluster.core.messages import BadMessage, Msg, SyncAbort, SyncAck, SyncEnd, SyncReq, \
    from_wire
from fastcluster.core.wire import CorruptFrame, Header, encode, encode_parts
from fastcluster.services.cluster.capabilities import (
    Capabilities,
    CapState,
    choose_donor,
    may_declare_synced,
)
from fastcluster.services.cluster.links import Connection, Refused
from fastcluster.shm import table as T

if TYPE_CHECKING:
    from fastcluster.services.cluster.node import ClusterNode

log = logging.getLogger("sync")

TICK_S = 0.1
EXCLUDE_S = 30.0  # a donor that failed is not picked again for this long (if others exist)
_META = struct.Struct("<I")


@dataclass
class Want:
    """Receiver state of one capability."""
    requested_at: float = 0.0  # monotonic; 0: no sync wanted
    reason: str = ""
    position: int = 0  # hash-space position fully received (resume point)
    session: asyncio.Task | None = None
    excluded: dict[int, float] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    mirror_ms: int = 0  # > 0: a mirror sync; drop what the donor lacks older than this
    alone_since: float = 0.0  # monotonic: no other member reachable since (0: some is)
    alone_wall_ms: int = 0


def chunk_payload(meta: dict[str, Any], entries: memoryview) -> bytes:
    """The raw payload of a SYNC_CHUNK: u32 header length, msgpack header, entries."""
    head = msgpack.packb(meta)
    return b"".join((_META.pack(len(head)), head, entries))


def split_chunk(raw: bytes) -> tuple[dict[str, Any], bytes]:
    if len(raw) < 4:
        raise CorruptFrame("short sync chunk")
    (n,) = _META.unpack_from(raw)
    if 4 + n > len(raw):
        raise CorruptFrame("sync chunk header overruns")
    try:
        meta = msgpack.unpackb(raw[4:4 + n], raw=False, max_str_len=256, max_map_len=16,
                               max_array_len=16, max_bin_len=0)
    except Exception as exc:
        raise CorruptFrame(f"bad sync chunk header: {type(exc).__name__}") from None
    if not isinstance(meta, dict):
        raise CorruptFrame("bad sync chunk header")
    return meta, raw[4 + n:]


class SyncManager:
    def __init__(self, node: ClusterNode, caps: Capabilities, last_contact_ms: int) -> None:
        """last_contact_ms: when this node last held synced tables with the cluster in
        sight, if it starts on tables it held before (0: it starts empty or new)."""
        self.node = node
        self.last_contact_ms = last_contact_ms
        self.cfg = node.cfg
        self.caps = caps
        self.want: dict[str, Want] = {}
        self.progress: dict[str, dict[str, Any]] = {}  # syncs under way here, for the MI
        self.chunk_bytes = self.cfg["clusterer.sync_packet_size"]
        self.window = self.cfg["clusterer.sync_window"]
        self.timeout_s = self.cfg["clusterer.sync_timeout_s"]
        seed = self.cfg["clusterer.seed"]
        self.seed = seed == "yes" or (seed == "auto" and not self.cfg["clusterer.seeds"])
        self.tombstone_max_s = self.cfg["clusterer.tombstone_max_s"]
        self.donor = SyncDonor(node, caps)
        node.events.nodes.append(self.on_node_event)

    def add(self, name: str) -> None:
        """A capability was registered: it can be synced."""
        self.want[name] = Want()

    def _count(self, name: str, n: int = 1) -> None:
        self.node.count(name, n)

    # ---------------------------------------------------------------- requests

    def start(self) -> None:
        """Ask for everything at start: a node on tables it held before, away longer
        than clusterer.tombstone_max_s, mirrors the donor (what the cluster deleted
        meanwhile left no tombstone); any other merges."""
        away_s = time.time() - self.last_contact_ms / 1000
        for name in self.want:
            if not self.caps.enabled_here(name):
                continue
            if self.last_contact_ms and away_s > self.tombstone_max_s and \
                    self.caps.registered[name].newest_ms():
                self.request(name, f"node start, {away_s:.0f} s after its last contact",
                             mirror_ms=self.last_contact_ms)
            else:
                self.request(name, "node start")

    def request(self, name: str, reason: str, mirror_ms: int = 0) -> None:
        want = self.want[name]
        if want.session is not None and not want.session.done():
            return  # one at a time; the running one already fetches everything
        want.requested_at = time.monotonic()
        want.reason = reason
        want.position = 0
        want.mirror_ms = mirror_ms
        self.caps.registered[name].mirror_mark(bool(mirror_ms))
        self.caps.set_local(name, state=CapState.SYNC_PENDING)
        log.info("%s: %s wanted (%s)", name, "mirror sync" if mirror_ms else "sync", reason)
        self._try_start(name)

    async def run(self) -> None:
        while True:
            for name in self.want:
                try:
                    self._tick(name)
                except Exception:
                    log.exception("sync tick failed")
            await asyncio.sleep(TICK_S)

    def _tick(self, name: str) -> None:
        want = self.want[name]
        info = self.caps.local[name]
        if not info.enabled:
            return
        cluster = self.caps.cluster_of(name)
        if self.node.routing.up_nodes(cluster):
            # Back after being cut off from every member longer than tombstone_max_s:
            # deletes made meanwhile may have left no tombstone; mirror a donor.
            if want.alone_since and info.state == CapState.SYNCED and \
                    time.monotonic() - want.alone_since > self.tombstone_max_s:
                self.request(name, "back after %.0f s cut off" %
                             (time.monotonic() - want.alone_since),
                             mirror_ms=want.alone_wall_ms)
            want.alone_since = 0.0
        elif not want.alone_since and self.node.membership.members(cluster) - {self.node.me}:
            want.alone_since = time.monotonic()
            want.alone_wall_ms = int(time.time() * 1000)
        if not want.requested_at or (want.session is not None and not want.session.done()):
            return
        if self._try_start(name):
            return
        waited = time.monotonic() - want.requested_at
        if want.mirror_ms and waited >= self.cfg["clusterer.seed_fallback_interval_s"]:
            log.warning("%s: no donor synced since before this node's last contact: "
                        "merging instead of mirroring", name)
            want.mirror_ms = 0
            self.caps.registered[name].mirror_mark(False)
            return
        known = self.node.membership.members(cluster) - {self.node.me}
        if may_declare_synced(self.node.me, self.caps.registered[name].newest_ms(), waited,
                              self.cfg["clusterer.seed_fallback_interval_s"], self.seed,
                              known, self.caps.reachable_states(name)):
            log.info("%s: no donor found for %.1f s (%s): this node declares its own data "
                     "synced", name, waited,
                     "no member known" if not known else
                     f"members {sorted(known)} unreachable or waiting, this node has the "
                     "newest data")
            want.requested_at = 0.0
            self.caps.set_local(name, state=CapState.SYNCED)

    def _try_start(self, name: str) -> bool:
        want = self.want[name]
        now = time.monotonic()
        excluded = {n for n, until in want.excluded.items() if until > now}
        candidates = self.caps.donor_candidates(name)
        donor = choose_donor(candidates, excluded, want.mirror_ms)
        if donor is None and excluded:
            donor = choose_donor(candidates, set(), want.mirror_ms)  # better a failed one
        if donor is None:
            return False
        want.session = self.node.spawn(self._receive(name, donor))
        return True

    def on_node_event(self, cluster: int, node: int, up: bool) -> None:
        """A node came up: a sync waiting for a donor may start now."""
        if not up:
            return
        for name, want in self.want.items():
            idle = want.session is None or want.session.done()
            if want.requested_at and idle and self.caps.cluster_of(name) == cluster:
                self._try_start(name)

    # ---------------------------------------------------------------- receiver

    async def _receive(self, name: str, donor: int) -> None:
        want = self.want[name]
        cap = self.caps.registered[name]
        peer = self.node.peers.get(donor)
        if peer is None or peer.url is None:
            want.excluded[donor] = time.monotonic() + EXCLUDE_S
            return
        started = time.monotonic()
        applying = 0.0
        rows = 0
        received_rows = 0
        checksum = 0
        conn: Connection | None = None
        counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
        me = self.node.me
        try:
            conn = await self.node.links.dial(peer.url[0], peer.url[1], "sync")
            conn.send(encode(Header(Msg.SYNC_REQ, self.caps.cluster_of(name), me, donor),
                             SyncReq(name, want.position, self.chunk_bytes, self.window)))
            self.caps.set_local(name, state=CapState.SYNC_IN_PROGRESS)
            log.info("%s: syncing from node %d (from position %d)", name, donor,
                     want.position)
            while True:
                frame = await conn.recv(self.timeout_s)
                kind = frame.header.type
                if kind == Msg.SYNC_CHUNK:
                    meta, entries = split_chunk(frame.payload)
                    if zlib.crc32(entries) != meta.get("crc"):
                        self._count("clusterer:sync_corrupt_chunks")
                        raise CorruptFrame(f"chunk {meta.get('seq')} fails its checksum")
                    before = counts[T.AC_ENTRIES]
                    t_apply = time.monotonic()
                    if not await cap.apply_chunk(entries, counts):
                        self._count("clusterer:sync_corrupt_chunks")
                        raise CorruptFrame(f"chunk {meta.get('seq')} holds a corrupt row")
                    applying += time.monotonic() - t_apply
                    n = int(counts[T.AC_ENTRIES] - before)
                    if n != int(meta.get("rows", -1)):
                        raise CorruptFrame(f"chunk {meta.get('seq')}: {n} rows, header says "
                                           f"{meta.get('rows')}")
                    received_rows += n
                    checksum = int(counts[T.AC_CHECKSUM])
                    want.position = max(want.position, int(meta.get("covered", 0)))
                    elapsed = max(time.monotonic() - started, 1e-6)
                    want.progress = {"donor": donor, "records": received_rows,
                                     "percent": round(100 * want.position / (1 << 32), 1),
                                     "rate": round(received_rows / elapsed)}
                    self.progress[name] = want.progress
                    conn.send(encode(Header(Msg.SYNC_ACK, 0, me, donor),
                                     SyncAck(int(meta.get("seq", -1)))))
                elif kind == Msg.SYNC_END:
                    end = _typed(SyncEnd, frame.payload)
                    if end.rows != received_rows or end.checksum != checksum:
                        self._count("clusterer:sync_failed")
                        raise CorruptFrame(f"end marker: donor sent {end.rows} rows (checksum "
                                           f"{end.checksum & (2**64 - 1):016x}), "
                                           f"this node got {received_rows} "
                                           f"({checksum & (2**64 - 1):016x})")
                    break
                elif kind == Msg.SYNC_ABORT:
                    raise Refused(f"donor gave up: {_typed(SyncAbort, frame.payload).reason}")
                else:
                    raise CorruptFrame(f"unexpected {kind.name} in a sync")
            elapsed = time.monotonic() - started
            if want.mirror_ms and cap.mirror_finish is not None:
                dropped = await cap.mirror_finish(int(T.hlc_version(want.mirror_ms)))
                self._count("clusterer:mirror_dropped", dropped)
                log.info("%s: mirror sync dropped %d rows the cluster deleted while this "
                         "node was away", name, dropped)
            want.requested_at = 0.0
            want.position = 0
            want.mirror_ms = 0
            self.progress.pop(name, None)
            self._count("clusterer:syncs_done")
            self.caps.set_local(name, state=CapState.SYNCED)
            log.info("%s: synced from node %d: %d rows (%d applied, %d older than ours) in "
                     "%.3f s (%.3f s applying)", name, donor, received_rows,
                     int(counts[T.AC_APPLIED]), int(counts[T.AC_STALE]), elapsed, applying)
            conn.close()
        except (OSError, asyncio.TimeoutError, Refused, CorruptFrame, ConnectionError,
                BadMessage, KeyError, TypeError, ValueError) as exc:
            what = "no progress for %.1f s" % self.timeout_s \
                if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            log.warning("%s: sync from node %d failed after %d rows: %s; resuming at "
                        "position %d with another donor", name, donor, received_rows,
                        what, want.position)
            self._count("clusterer:sync_failed")
            want.excluded[donor] = time.monotonic() + EXCLUDE_S
            if conn is not None:
                conn.close()
            if isinstance(exc, CorruptFrame):
                want.position = 0  # a donor that sent corrupt data: redo all from another
            self.caps.set_local(name, state=CapState.SYNC_PENDING)
            # the next tick picks another donor and resumes from want.position
        finally:
            want.session = None if want.session is asyncio.current_task() else want.session


class SyncDonor:
    """The donor side: serves sync connections other nodes dial."""

    def __init__(self, node: ClusterNode, caps: Capabilities) -> None:
        self.node = node
        self.caps = caps
        self.chunk_bytes = node.cfg["clusterer.sync_packet_size"]
        self.window = node.cfg["clusterer.sync_window"]
        self.timeout_s = node.cfg["clusterer.sync_timeout_s"]
        node.on_sync_connection = self.serve

    def _count(self, name: str, n: int = 1) -> None:
        self.node.count(name, n)

    async def serve(self, conn: Connection) -> None:
        """A receiver dialled us for a sync."""
        self.node.spawn(self._donate(conn))

    async def _donate(self, conn: Connection) -> None:
        name = "?"
        me = self.node.me
        try:
            frame = await conn.recv(self.timeout_s)
            if frame.header.type != Msg.SYNC_REQ:
                raise CorruptFrame("expected SYNC_REQ")
            req = _typed(SyncReq, frame.payload)
            name = req.cap
            if not self.caps.synced_here(name):
                conn.send(encode(Header(Msg.SYNC_ABORT, 0, me, conn.peer_id),
                                 SyncAbort(f"{name} is not synced and enabled here")))
                return
            chunk = max(4096, min(req.chunk, self.chunk_bytes))
            window = max(1, min(req.window, 64))
            self.caps.set_local(name, donating_delta=1)
            try:
                await self._stream(conn, name, chunk, window, req.position)
            finally:
                self.caps.set_local(name, donating_delta=-1)
        except (OSError, asyncio.TimeoutError, CorruptFrame, ConnectionError, BadMessage,
                KeyError, TypeError, ValueError) as exc:
            log.warning("%s: sync for node %d stopped: %s", name, conn.peer_id,
                        str(exc) or type(exc).__name__)
        finally:
            conn.close()

    async def _stream(self, conn: Connection, name: str, chunk: int, window: int,
                      position: int) -> None:
        source = self.caps.registered[name].sync_source(position)
        counts = np.zeros(T.GATHER_COUNTS, dtype=np.int64)
        me = self.node.me
        acked = -1
        seq = 0
        ack_event = asyncio.Event()
        buffers = [np.zeros(chunk, dtype=np.uint8) for _ in range(window + 1)]
        started = time.monotonic()

        async def read_acks() -> str:
            """Collect acknowledgements; returns why the receiver stopped talking."""
            nonlocal acked
            try:
                while True:
                    f = await conn.recv(self.timeout_s * 4)
                    if f.header.type == Msg.SYNC_ACK:
                        acked = max(acked, _typed(SyncAck, f.payload).seq)
                        ack_event.set()
                    elif f.header.type == Msg.SYNC_ABORT:
                        return "the receiver gave up"
            except (ConnectionError, OSError, asyncio.TimeoutError, CorruptFrame,
                    BadMessage) as exc:
                return str(exc) or type(exc).__name__
            finally:
                ack_event.set()

        acks = asyncio.ensure_future(read_acks())
        try:
            while True:
                while seq - acked > window:
                    ack_event.clear()
                    if acks.done():
                        raise ConnectionError(acks.result())
                    await asyncio.wait_for(ack_event.wait(), self.timeout_s)
                out = buffers[seq % len(buffers)]
                before = int(counts[T.GC_ENTRIES])
                got = await source.next_chunk(out, chunk, counts)
                if got is None:
                    break
                nbytes, covered = got
                entries = memoryview(out)[:nbytes]
                meta = {"seq": seq, "rows": int(counts[T.GC_ENTRIES]) - before,
                        "crc": zlib.crc32(entries), "covered": covered}
                conn.send_parts(encode_parts(Header(Msg.SYNC_CHUNK, 0, me, conn.peer_id),
                                             chunk_payload(meta, entries)))
                await conn.drain()
                seq += 1
            conn.send(encode(Header(Msg.SYNC_END, 0, me, conn.peer_id),
                             SyncEnd(int(counts[T.GC_ENTRIES]), int(counts[T.GC_CHECKSUM]),
                                     seq)))
            await conn.drain()
            while acked < seq - 1 and not acks.done():
                ack_event.clear()
                try:
                    await asyncio.wait_for(ack_event.wait(), self.timeout_s)
                except asyncio.TimeoutError:
                    break
            self._count("clusterer:syncs_donated")
            log.info("%s: sent %d rows to node %d in %d chunks, %.3f s", name, int(counts[T.GC_ENTRIES]),
                     conn.peer_id, seq, time.monotonic() - started)
        finally:
            acks.cancel()




def _typed(cls: type, payload: Any) -> Any:
    """A sync control message's payload, checked (BadMessage if it does not fit)."""
    return from_wire(cls, payload)
