"""The control segment: process slots with heartbeats, per-process statistics, and the
reload area through which the master hands new settings to its children.

The master writes a slot when it forks a child and clears it when it reaps it; the child
stamps its heartbeat (CLOCK_MONOTONIC milliseconds, the same clock in every process) and
increments its own statistics row (single writer each: no atomics needed). Neighbours:
workers.master (owner), workers.child (stamping), services.mi (ps, get_statistics).

Layout (little-endian, W = 8-byte word):

    offset  size             field
    0       8                magic b"FCCTRL01"
    W1      8                layout version (CONTROL_LAYOUT_VERSION)
    W2      8                nprocs: process slots
    W3      8                nstats: counters per process
    W4      8                node id
    W5      8                master pid
    W6      8                start time (unix ms)
    W7      8                reload generation: bumped after the reload area is written
    W8      8                reload area length (bytes used)
    W9      8                stop flag: 1 while the master is stopping the node
    W11     8                ntables: replicated tables (shm.tables.TABLES)
    W12     8                synced tables: bit t set while table t of TABLES is synced
                             here (or not replicated); the cluster process writes it
    W10     8                last contact (unix ms): the cluster process's last moment
                             with its tables synced and another member reachable (or
                             alone by choice); 0 never. A node restarted on its old
                             tables after more than [clusterer] tombstone_max_s does a
                             mirror sync
    512     64 * nprocs      process slots, each 8 words: pid, role, number,
                             heartbeat (monotonic ms), started (monotonic ms),
                             restarts, state, reserved
    ...     8*nstats*nprocs  statistics: one int64 row per process slot
    ...     RELOAD_BYTES     reload area: msgpack of the reloadable settings
    ...     VIEW_BYTES * MAX_VIEWS  cluster views, one per cluster this node is in:
                             W0 epoch (odd while the cluster process writes it),
                             W1 cluster id, W2 entries, W3 this node's id, W4..7 reserved,
                             then MAX_VIEW_NODES uint64 entries:
                             bits 0-15 node id, 16-31 VIEW_* flags,
                             32-63 capability states (4 bits per capability)
    ...     24 * MAX_VIEW_NODES * MAX_VIEWS  SIP address of each view entry's node (its
                             first listener), written with the view under its epoch:
                             W0 family (4, 6; 0: unknown) | port << 8, W1..2 address
    ...     64 + 2 * MAX_PARTITIONS  partition map: W0 epoch (odd while written),
                             W1 partitions, W2 when it changed (unix ms), W3..7 reserved,
                             then the owner node id of each partition (uint16, 0: none)
    ...     8*STATUS_WORDS*nprocs    status words per process slot (e.g. the timer's
                             last NAT ping cycle: see services.natping)
    ...     8*NODE_IDS*ntables   tombstone horizons per table, by origin node id: the
                             version below which that origin knows every member has
                             its changes (the cluster process writes, the timer reads)
    ...     16*MAX_PEERS*ntables  replication peers per table: (node id, watermark)
                             pairs, node id 0 = free: the lowest version of this
                             node's changes that peer may lack (the cluster process
                             keeps them here so a new cluster process resumes)
"""
from __future__ import annotations

import socket
import time

import numpy as np

from fastcluster.core.stats import COUNTERS

CONTROL_MAGIC = int.from_bytes(b"FCCTRL01", "little")
CONTROL_LAYOUT_VERSION = 3
HEADER = 512
SLOT_WORDS = 8
RELOAD_BYTES = 65536
MAX_VIEWS = 8  # clusters per node
MAX_VIEW_NODES = 256  # nodes per cluster seen by workers and the timer
VIEW_BYTES = 64 + 8 * MAX_VIEW_NODES
VIEW_SIP_WORDS = 3
VIEW_UP, VIEW_ME, VIEW_ENABLED = 1, 2, 4
MAX_PARTITIONS = 65536
PMAP_BYTES = 64 + 2 * MAX_PARTITIONS
STATUS_WORDS = 16
NODE_IDS = 1 << 16
MAX_PEERS = 256
W_MAGIC, W_VERSION, W_NPROCS, W_NSTATS, W_NODE, W_MASTER, W_START = range(7)
W_NTABLES = 11
W_SYNCED = 12  # bit t: table t of shm.tables.TABLES is synced here (or not replicated)
W_RELOAD_GEN, W_RELOAD_LEN, W_STOPPING, W_LAST_CONTACT = 7, 8, 9, 10
P_PID, P_ROLE, P_NUMBER, P_HEARTBEAT, P_STARTED, P_RESTARTS, P_STATE = range(7)

ROLES = ("master", "sip", "cluster", "timer", "script")
ROLE_MASTER, ROLE_SIP, ROLE_CLUSTER, ROLE_TIMER, ROLE_SCRIPT = range(5)
# Fixed process slots; SIP workers take FIRST_SIP onwards. A slot is a single writer of
# the tables (its undo area, its rings): the cluster process writes from three threads,
# so it has three -- its loop, its sync applier, its MI thread.
(SLOT_MASTER, SLOT_CLUSTER, SLOT_TIMER, SLOT_SCRIPT, SLOT_CLUSTER_SYNC, SLOT_MI,
 FIRST_SIP) = range(7)


def nprocs_for(workers: int) -> int:
    return FIRST_SIP + workers


def segment_size(nprocs: int, ntables: int) -> int:
    return (HEADER + 8 * SLOT_WORDS * nprocs + 8 * len(COUNTERS) * nprocs + RELOAD_BYTES
            + VIEW_BYTES * MAX_VIEWS + 8 * VIEW_SIP_WORDS * MAX_VIEW_NODES * MAX_VIEWS
            + PMAP_BYTES + 8 * STATUS_WORDS * nprocs
            + 8 * NODE_IDS * ntables + 16 * MAX_PEERS * ntables)


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class Control:
    """Typed views over a control segment's buffer."""

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.words = buf[:HEADER].view(np.int64)
        if int(self.words[W_MAGIC]) != CONTROL_MAGIC:
            raise ValueError("not a control segment (bad magic)")
        if int(self.words[W_VERSION]) != CONTROL_LAYOUT_VERSION:
            raise ValueError("control segment layout version mismatch")
        n = int(self.words[W_NPROCS])
        nstats = int(self.words[W_NSTATS])
        off = HEADER
        self.slots = buf[off:off + 8 * SLOT_WORDS * n].view(np.int64).reshape(n, SLOT_WORDS)
        off += 8 * SLOT_WORDS * n
        self.stats = buf[off:off + 8 * nstats * n].view(np.int64).reshape(n, nstats)
        off += 8 * nstats * n
        self.reload_area = buf[off:off + RELOAD_BYTES]
        off += RELOAD_BYTES
        self.views = buf[off:off + VIEW_BYTES * MAX_VIEWS].view(np.int64).reshape(
            MAX_VIEWS, VIEW_BYTES // 8)
        off += VIEW_BYTES * MAX_VIEWS
        sip_bytes = 8 * VIEW_SIP_WORDS * MAX_VIEW_NODES * MAX_VIEWS
        self.view_sip = buf[off:off + sip_bytes].view(np.int64).reshape(
            MAX_VIEWS, MAX_VIEW_NODES, VIEW_SIP_WORDS)
        off += sip_bytes
        self.pmap_words = buf[off:off + 64].view(np.int64)
        self.pmap = buf[off + 64:off + PMAP_BYTES].view(np.uint16)
        off += PMAP_BYTES
        self.status = buf[off:off + 8 * STATUS_WORDS * n].view(np.int64).reshape(
            n, STATUS_WORDS)
        off += 8 * STATUS_WORDS * n
        ntables = int(self.words[W_NTABLES])
        self.horizons = buf[off:off + 8 * NODE_IDS * ntables].view(np.int64).reshape(
            ntables, NODE_IDS)
        off += 8 * NODE_IDS * ntables
        self.peers = buf[off:off + 16 * MAX_PEERS * ntables].view(np.int64).reshape(
            ntables, MAX_PEERS, 2)
        self.nprocs = n

    @staticmethod
    def init(buf: np.ndarray, nprocs: int, node_id: int, master_pid: int,
             ntables: int) -> Control:
        w = buf[:HEADER].view(np.int64)
        w[W_VERSION] = CONTROL_LAYOUT_VERSION
        w[W_NPROCS] = nprocs
        w[W_NTABLES] = ntables
        w[W_NSTATS] = len(COUNTERS)
        w[W_NODE] = node_id
        w[W_MASTER] = master_pid
        w[W_START] = int(time.time() * 1000)
        w[W_MAGIC] = CONTROL_MAGIC
        return Control(buf)

    # -- process slots (master writes, children stamp heartbeats)

    def set_slot(self, slot: int, pid: int, role: int, number: int) -> None:
        now = monotonic_ms()
        row = self.slots[slot]
        row[P_ROLE], row[P_NUMBER], row[P_STARTED], row[P_HEARTBEAT] = role, number, now, now
        row[P_PID] = pid

    def clear_slot(self, slot: int) -> None:
        self.slots[slot, P_PID] = 0

    def beat(self, slot: int) -> None:
        self.slots[slot, P_HEARTBEAT] = monotonic_ms()

    def processes(self) -> list[dict]:
        now = monotonic_ms()
        out = []
        for slot in range(self.nprocs):
            pid, role, number, beat, started, restarts = (
                int(v) for v in self.slots[slot, :P_STATE])
            if pid:
                out.append({"slot": slot, "pid": pid, "role": ROLES[role], "number": number,
                            "heartbeat_age_ms": now - beat, "uptime_ms": now - started,
                            "restarts": restarts})
        return out

    # -- statistics

    def totals(self) -> np.ndarray:
        return self.stats.sum(axis=0)

    # -- cluster views (the cluster process writes, everyone reads)

    def publish_view(self, index: int, cluster: int, me: int,
                     entries: list[tuple[int, int, int]],
                     sip: list[tuple[str, int] | None] | None = None) -> None:
        """entries: (node id, VIEW_* flags, capability bits); sip: each entry's node's
        first SIP listener (HOST, PORT), or None. Single writer."""
        if len(entries) > MAX_VIEW_NODES:
            raise ValueError(f"cluster {cluster} has more than {MAX_VIEW_NODES} nodes")
        v = self.views[index]
        addrs = self.view_sip[index]
        v[0] += 1  # odd: readers retry
        v[1], v[2], v[3] = cluster, len(entries), me
        for i, (node, flags, caps) in enumerate(entries):
            v[8 + i] = node | (flags << 16) | (caps << 32)
            addrs[i] = _pack_address(sip[i] if sip is not None and i < len(sip) else None)
        v[0] += 1

    def read_view(self, index: int) -> tuple[int, int, list[tuple[int, int, int]]]:
        """(cluster id, this node, entries) as one consistent snapshot."""
        v = self.views[index]
        while True:
            epoch = int(v[0])
            if epoch & 1:
                time.sleep(0)
                continue
            cluster, count, me = int(v[1]), int(v[2]), int(v[3])
            raw = v[8:8 + count].copy()
            if int(v[0]) == epoch:
                return cluster, me, [(int(e) & 0xFFFF, (int(e) >> 16) & 0xFFFF,
                                      (int(e) >> 32) & 0xFFFFFFFF) for e in raw]

    def read_view_sip(self, index: int) -> dict[int, tuple[str, int]]:
        """node id -> its first SIP listener (HOST, PORT), for nodes that have one, as
        one consistent snapshot with the view."""
        v = self.views[index]
        while True:
            epoch = int(v[0])
            if epoch & 1:
                time.sleep(0)
                continue
            count = int(v[2])
            nodes = v[8:8 + count].copy()
            raw = self.view_sip[index, :count].copy()
            if int(v[0]) == epoch:
                out = {}
                for e, words in zip(nodes, raw):
                    addr = _unpack_address(words)
                    if addr is not None:
                        out[int(e) & 0xFFFF] = addr
                return out

    # -- partition map (the cluster process writes, the timer reads)

    def publish_partitions(self, owners: np.ndarray) -> int:
        """Write a new map (uint16 owner per partition); returns its epoch."""
        w = self.pmap_words
        w[0] += 1  # odd: readers retry
        w[1] = owners.shape[0]
        w[2] = int(time.time() * 1000)
        self.pmap[:owners.shape[0]] = owners
        w[0] += 1
        return int(w[0])

    @property
    def partitions_epoch(self) -> int:
        return int(self.pmap_words[0])

    def read_partitions(self) -> tuple[int, np.ndarray]:
        """(epoch, owners copy) as one consistent snapshot; epoch 0: never published."""
        w = self.pmap_words
        while True:
            epoch = int(w[0])
            if epoch & 1:
                time.sleep(0)
                continue
            owners = self.pmap[:int(w[1])].copy()
            if int(w[0]) == epoch:
                return epoch, owners

    # -- reload area (master writes, children poll the generation)

    def publish_reload(self, blob: bytes) -> int:
        if len(blob) > RELOAD_BYTES:
            raise ValueError(f"reload blob of {len(blob)} bytes exceeds {RELOAD_BYTES}")
        self.reload_area[:len(blob)] = np.frombuffer(blob, np.uint8)
        self.words[W_RELOAD_LEN] = len(blob)
        self.words[W_RELOAD_GEN] += 1
        return int(self.words[W_RELOAD_GEN])

    @property
    def reload_generation(self) -> int:
        return int(self.words[W_RELOAD_GEN])

    def reload_blob(self) -> bytes:
        return bytes(self.reload_area[:int(self.words[W_RELOAD_LEN])])


def _pack_address(addr: tuple[str, int] | None) -> np.ndarray:
    words = np.zeros(VIEW_SIP_WORDS, dtype=np.int64)
    if addr is None:
        return words
    host, port = addr
    if ":" in host:
        family, raw = 6, socket.inet_pton(socket.AF_INET6, host)
    else:
        family, raw = 4, socket.inet_pton(socket.AF_INET, host) + bytes(12)
    words[0] = family | (int(port) << 8)
    words[1:3] = np.frombuffer(raw, dtype=np.int64)
    return words


def _unpack_address(words: np.ndarray) -> tuple[str, int] | None:
    family, port = int(words[0]) & 0xFF, int(words[0]) >> 8
    if family not in (4, 6):
        return None
    raw = words[1:3].tobytes()
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4]), port
    return socket.inet_ntop(socket.AF_INET6, raw), port


class UpNodes:
    """The other nodes of view `index` with a SIP listener, read again only when the
    view's epoch moved: those Up (node id -> (HOST, PORT)), what a SIP worker or the
    timer needs to send something through a contact's home node, and those not Up
    ((HOST, PORT) -> node id), to recognise a dead node's Record-Route."""

    def __init__(self, control: Control, index: int = 0) -> None:
        self.control = control
        self.index = index
        self.epoch = -1
        self.nodes: dict[int, tuple[str, int]] = {}
        self.down: dict[tuple[str, int], int] = {}

    def get(self) -> dict[int, tuple[str, int]]:
        epoch = int(self.control.views[self.index, 0])
        if epoch != self.epoch and not epoch & 1:
            _, me, entries = self.control.read_view(self.index)
            sip = self.control.read_view_sip(self.index)
            self.nodes = {n: sip[n] for n, flags, _ in entries
                          if flags & VIEW_UP and n in sip and n != me}
            self.down = {sip[n]: n for n, flags, _ in entries
                         if not flags & VIEW_UP and n in sip and n != me}
            self.epoch = epoch
        return self.nodes
