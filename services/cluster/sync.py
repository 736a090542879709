"""Full sync: a node with no data (or told to by the MI, or back from being cut off)
pulls a whole table from a donor, in chunks, while realtime replication goes on.

Receiver: picks a donor (services.capabilities.choose_donor), dials it on a separate
`sync` connection (never queued behind heartbeats), asks SYNC_REQ {capability,
position}, applies each SYNC_CHUNK in a thread (the kernel releases the GIL) and
acknowledges it. A chunk is raw entries behind a small msgpack header {seq, rows, crc,
covered}; `covered` is the hash-space position below which the receiver now has every
record, so a sync that loses its donor (dead, or silent for sync_timeout_s) resumes
from there with another donor, whatever that donor's table size. SYNC_END carries the
rows sent in the session and their checksum; the receiver declares the capability
synced only if both match what it received, never on a partial or corrupt sync.
Donor: streams chunks gathered in a thread, at most sync_window unacknowledged, so
neither side holds more than a few chunks in memory. A seed with no donor in sight
becomes synced with its own data after seed_fallback_interval_s.
Neighbours: services.capabilities (states, donor choice), services.replication
(Applier), services.links (connections), shm.table (gather kernel).
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from fastcluster.core.stats import INDEX
from fastcluster.core.wire import CorruptFrame, Header, Msg, encode, encode_parts
from fastcluster.services.cluster.capabilities import CAPS_BY_NAME, Capabilities, CapState, choose_donor
from fastcluster.services.cluster.links import Connection, Refused
from fastcluster.services.mi.registry import MIError, command
from fastcluster.services.cluster.replication import Applier
from fastcluster.shm import table as T

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
    def __init__(self, proc: Any, clusterer: Any, caps: Capabilities, applier: Applier) -> None:
        self.proc = proc
        self.cfg = proc.cfg
        self.cl = clusterer
        self.caps = caps
        self.applier = applier
        self.stats = proc.stats
        self.want: dict[str, Want] = {c.name: Want() for c in caps.active}
        self.chunk_bytes = self.cfg["clusterer.sync_packet_size"]
        self.window = self.cfg["clusterer.sync_window"]
        self.timeout_s = self.cfg["clusterer.sync_timeout_s"]
        seed = self.cfg["clusterer.seed"]
        self.seed = seed == "yes" or (seed == "auto" and not self.cfg["clusterer.seeds"])
        self.had_peers: dict[str, bool] = {c.name: False for c in caps.active}
        self.cut_off_since: dict[str, float] = {}
        clusterer.on_sync_connection = self.serve
        clusterer.subscribers.append(self.on_node_event)

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[INDEX[name]] += n

    # ---------------------------------------------------------------- requests

    def start(self) -> None:
        """At start every table is empty: ask for all of it."""
        for name in self.want:
            if self.caps.enabled_here(name):
                self.request(name, "node start")

    def request(self, name: str, reason: str) -> None:
        want = self.want[name]
        if want.session is not None and not want.session.done():
            return  # one at a time; the running one already fetches everything
        want.requested_at = time.monotonic()
        want.reason = reason
        want.position = 0
        self.caps.set_local(name, state=CapState.SYNC_PENDING)
        log.info("%s: sync wanted (%s)", name, reason)
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
        # A node cut off from every other node (not a blip) resyncs once it sees them.
        if self.cl.up_nodes(self.caps.cluster_of(name)):
            since = self.cut_off_since.pop(name, None)
            if since is not None and info.state == CapState.SYNCED and \
                    time.monotonic() - since > self.cl.timing.ping_timeout_ms / 1000:
                self.request(name, "back from being cut off")
            self.had_peers[name] = True
        elif self.had_peers[name]:
            self.cut_off_since.setdefault(name, time.monotonic())
        if not want.requested_at or (want.session is not None and not want.session.done()):
            return
        if self._try_start(name):
            return
        waited = time.monotonic() - want.requested_at
        if self.seed and waited >= self.cfg["clusterer.seed_fallback_interval_s"]:
            log.info("%s: no donor found for %.1f s: this seed declares its own data synced",
                     name, waited)
            want.requested_at = 0.0
            self.caps.set_local(name, state=CapState.SYNCED)

    def _try_start(self, name: str) -> bool:
        want = self.want[name]
        now = time.monotonic()
        excluded = {n for n, until in want.excluded.items() if until > now}
        candidates = self.caps.donor_candidates(name)
        donor = choose_donor(candidates, excluded)
        if donor is None and excluded:
            donor = choose_donor(candidates, set())  # better a failed donor than none
        if donor is None:
            return False
        want.session = self.cl._spawn(self._receive(name, donor))
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
        peer = self.cl.peers.get(donor)
        if peer is None or peer.url is None:
            want.excluded[donor] = time.monotonic() + EXCLUDE_S
            return
        started = time.monotonic()
        applying = 0.0
        rows = 0
        received_rows = 0
        checksum = 0
        conn: Connection | None = None
        counts = np.zeros(9, dtype=np.int64)
        try:
            conn = await self.cl.links.dial(peer.url[0], peer.url[1], "sync")
            conn.send(encode(Header(Msg.SYNC_REQ, self.caps.cluster_of(name), self.cl.me,
                                    donor), {"cap": name, "position": want.position,
                                             "chunk": self.chunk_bytes,
                                             "window": self.window}))
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
                    before5 = counts[5]
                    t_apply = time.monotonic()
                    if not await self.applier.apply(entries, counts, in_thread=True):
                        self._count("clusterer:sync_corrupt_chunks")
                        raise CorruptFrame(f"chunk {meta.get('seq')} holds a corrupt row")
                    applying += time.monotonic() - t_apply
                    n = int(counts[5] - before5)
                    if n != int(meta.get("rows", -1)):
                        raise CorruptFrame(f"chunk {meta.get('seq')}: {n} rows, header says "
                                           f"{meta.get('rows')}")
                    received_rows += n
                    checksum = int(counts[6])
                    want.position = max(want.position, int(meta.get("covered", 0)))
                    elapsed = max(time.monotonic() - started, 1e-6)
                    want.progress = {"donor": donor, "records": received_rows,
                                     "percent": round(100 * want.position / (1 << 32), 1),
                                     "rate": round(received_rows / elapsed)}
                    self.caps.sync_status[name] = want.progress
                    conn.send(encode(Header(Msg.SYNC_ACK, 0, self.cl.me, donor),
                                     {"seq": meta.get("seq")}))
                elif kind == Msg.SYNC_END:
                    end = frame.payload
                    rows = int(end["rows"])
                    if rows != received_rows or int(end["checksum"]) != checksum:
                        self._count("clusterer:sync_failed")
                        raise CorruptFrame(f"end marker: donor sent {rows} rows (checksum "
                                           f"{int(end['checksum']) & (2**64 - 1):016x}), "
                                           f"this node got {received_rows} "
                                           f"({checksum & (2**64 - 1):016x})")
                    break
                elif kind == Msg.SYNC_ABORT:
                    raise Refused(f"donor gave up: {frame.payload.get('reason')}")
                else:
                    raise CorruptFrame(f"unexpected {kind.name} in a sync")
            elapsed = time.monotonic() - started
            want.requested_at = 0.0
            want.position = 0
            self.caps.sync_status.pop(name, None)
            self._count("clusterer:syncs_done")
            self.caps.set_local(name, state=CapState.SYNCED)
            log.info("%s: synced from node %d: %d rows (%d applied, %d older than ours) in "
                     "%.3f s (%.3f s applying)", name, donor, received_rows, int(counts[0]),
                     int(counts[1]), elapsed, applying)
            conn.close()
        except (OSError, asyncio.TimeoutError, Refused, CorruptFrame, ConnectionError,
                KeyError, TypeError, ValueError) as exc:
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

    # ---------------------------------------------------------------- donor

    async def serve(self, conn: Connection) -> None:
        """A receiver dialled us for a sync."""
        self.cl._spawn(self._donate(conn))

    async def _donate(self, conn: Connection) -> None:
        name = "?"
        try:
            frame = await conn.recv(self.timeout_s)
            if frame.header.type != Msg.SYNC_REQ or not isinstance(frame.payload, dict):
                raise CorruptFrame("expected SYNC_REQ")
            req = frame.payload
            name = str(req["cap"])
            spec = CAPS_BY_NAME.get(name)
            info = self.caps.local.get(name)
            if spec is None or info is None or not info.enabled or \
                    info.state != CapState.SYNCED:
                conn.send(encode(Header(Msg.SYNC_ABORT, 0, self.cl.me, conn.peer_id),
                                 {"reason": f"{name} is not synced and enabled here"}))
                return
            chunk = max(4096, min(int(req.get("chunk", self.chunk_bytes)), self.chunk_bytes))
            window = max(1, min(int(req.get("window", self.window)), 64))
            position = int(req.get("position", 0))
            self.caps.set_local(name, donating_delta=1)
            try:
                await self._stream(conn, name, spec.table, chunk, window, position)
            finally:
                self.caps.set_local(name, donating_delta=-1)
        except (OSError, asyncio.TimeoutError, CorruptFrame, ConnectionError, KeyError,
                TypeError, ValueError) as exc:
            log.warning("%s: sync for node %d stopped: %s", name, conn.peer_id,
                        str(exc) or type(exc).__name__)
        finally:
            conn.close()

    async def _stream(self, conn: Connection, name: str, table_name: str, chunk: int,
                      window: int, position: int) -> None:
        table = getattr(self.proc.mem, table_name)
        loop = asyncio.get_running_loop()
        nhome = int(table.buf[:T.HEADER_SIZE].view(np.int64)[T.H_NHOME])
        slot = T.slot_of_position(nhome, position)
        counts = np.zeros(2, dtype=np.int64)
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
                        acked = max(acked, int(f.payload["seq"]))
                        ack_event.set()
                    elif f.header.type == Msg.SYNC_ABORT:
                        return "the receiver gave up"
            except (ConnectionError, OSError, asyncio.TimeoutError, CorruptFrame,
                    KeyError, TypeError, ValueError) as exc:
                return str(exc) or type(exc).__name__
            finally:
                ack_event.set()

        acks = asyncio.ensure_future(read_acks())
        try:
            while slot < table.nslots:
                while seq - acked > window:
                    ack_event.clear()
                    if acks.done():
                        raise ConnectionError(acks.result())
                    await asyncio.wait_for(ack_event.wait(), self.timeout_s)
                out = buffers[seq % len(buffers)]
                before = int(counts[0])
                slot, nbytes, covered = await loop.run_in_executor(
                    None, lambda: T.table_gather(table.buf, slot, out, chunk, counts))
                slot, nbytes, covered = int(slot), int(nbytes), int(covered)
                if nbytes == 0 and slot < table.nslots:
                    continue
                entries = memoryview(out)[:nbytes]
                meta = {"seq": seq, "rows": int(counts[0]) - before,
                        "crc": zlib.crc32(entries), "covered": T.position_of_slot(nhome, covered)}
                conn.send_parts(encode_parts(
                    Header(Msg.SYNC_CHUNK, 0, self.cl.me, conn.peer_id),
                    chunk_payload(meta, entries)))
                await conn.drain()
                seq += 1
            conn.send(encode(Header(Msg.SYNC_END, 0, self.cl.me, conn.peer_id),
                             {"rows": int(counts[0]), "checksum": int(counts[1]),
                              "chunks": seq}))
            await conn.drain()
            while acked < seq - 1 and not acks.done():
                ack_event.clear()
                try:
                    await asyncio.wait_for(ack_event.wait(), self.timeout_s)
                except asyncio.TimeoutError:
                    break
            self._count("clusterer:syncs_donated")
            log.info("%s: sent %d rows to node %d in %d chunks, %.3f s", name, int(counts[0]),
                     conn.peer_id, seq, time.monotonic() - started)
        finally:
            acks.cancel()


# ---------------------------------------------------------------- MI


def _request(node: Any, name: str) -> str:
    sync: SyncManager = node.sync
    if name not in sync.want:
        raise MIError(400, "Clustering not enabled for this table")
    if not sync.caps.enabled_here(name):
        raise MIError(400, "Capability disabled")
    sync.request(name, "MI request")
    return "OK"


@command("ul_cluster_sync")
def mi_ul_cluster_sync(node: Any) -> str:
    """Start a full sync of the contacts from a donor."""
    return _request(node, "usrloc-contact-repl")


@command("dlg_cluster_sync")
def mi_dlg_cluster_sync(node: Any) -> str:
    """Start a full sync of the dialogs from a donor."""
    return _request(node, "dialog-dlg-repl")
