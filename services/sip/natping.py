"""NAT pinging of this node's partitions (what OpenSIPS nathelper does), in the timer.

Every tick the pinger sweeps the next slice of the contact table, so the whole table is
covered once per natping_interval_s with a flat load; a kernel picks the live,
NAT-flagged (or all) contacts whose partition this node owns or that registered through
this node, `pings_it` keeps those this node pings (a contact registered straight from
behind a NAT is pinged by the node it registered through while that node is live: its
NAT lets no other in; the rest by the partition's owner), and each gets a SIP
OPTIONS (or a CRLF CRLF keep-alive) from the listener it registered through, to its
received address, or, when it registered through an edge proxy that added a Path
(RFC 3327), to the first Path hop with the Path as its Route set, so the edge reaches a
phone behind its NAT. When the partition map changes the partitions gained are pinged at
once, and for OVERLAP_S the partitions just lost are still pinged: while nodes' views
disagree a duplicate ping is better than a missed one. Replies are matched by the SIP
workers (Call-ID fcping-<node>-<slot>-<key>) and reset the contact's missed count; with
usrloc.max_pings_lost > 0 a contact that misses more in a row is removed (replicated).
Neighbours: shm.partitions (kernels), services.partitions (the map), workers.timer,
services.registrar (replies), services.cluster.partitions (the map's owner side).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time
from typing import Any

import numpy as np

from fastcluster.core.config import Config
from fastcluster.core.sip import SipParseError, parse_name_addr, parse_uri, split_list
from fastcluster.core.stats import INDEX
from fastcluster.services.mi.registry import command
from fastcluster.shm import contacts as C
from fastcluster.shm import partitions as P
from fastcluster.shm import table as T
from fastcluster.shm.control import Control, UpNodes
from fastcluster.shm.tables import retry_busy

log = logging.getLogger("natping")

OVERLAP_S = 1.0
BATCH = 4096
CALLID_PREFIX = "fcping-"
KEY_MASK = (1 << 64) - 1
KEEPALIVE = b"\r\n\r\n"
ENTRY = struct.Struct(f"<{P.TARGET_WORDS}q")  # a ping target's words (P.ping_targets)
ROUTE_CACHE = 4096  # Path values remembered with their first hop (few edges, many phones)
# status words of the timer's slot (shm.control status area)
(S_CYCLES, S_LAST_PINGS, S_LAST_SECONDS_US, S_LAST_END_MS, S_CURRENT_PINGS, S_OVERRUNS,
 S_OWNED) = range(7)


def cycle_status(control: Control) -> dict[str, Any]:
    """The timer's ping cycle figures, for the MI."""
    from fastcluster.shm.control import SLOT_TIMER

    w = control.status[SLOT_TIMER]
    return {"cycles": int(w[S_CYCLES]), "pings": int(w[S_LAST_PINGS]),
            "seconds": round(int(w[S_LAST_SECONDS_US]) / 1e6, 3),
            "ended_ms": int(w[S_LAST_END_MS]), "pings_this_cycle": int(w[S_CURRENT_PINGS]),
            "ticks_overrun": int(w[S_OVERRUNS])}


def parse_callid(callid: str) -> tuple[int, int] | None:
    """(slot, key) of one of our ping Call-IDs, or None."""
    if not callid.startswith(CALLID_PREFIX):
        return None
    parts = callid[len(CALLID_PREFIX):].split("-")
    if len(parts) != 3:
        return None
    try:
        return int(parts[1]), int(parts[2], 16)
    except ValueError:
        return None


def pings_it(me: int, origin: int, live: dict[int, Any] | set[int], behind_nat: bool,
             partition_mine: bool) -> bool:
    """Whether this node pings a contact. One registered straight from behind a NAT (a
    received address, no Path) is pinged by the node it registered through while that
    node is live, whatever the partition: the NAT lets only that node in. Any other, or
    one whose node is gone, by its partition's owner. `live`: the other live nodes."""
    if behind_nat and (origin == me or origin in live):
        return origin == me
    return partition_mine


class NatPinger:
    def __init__(self, timer: Any, tick_s: float) -> None:
        self.timer = timer
        self.mem = timer.mem
        self.table = timer.mem.contacts
        self.stats = timer.stats
        self.status = timer.mem.control.status[timer.slot]
        self.tick_s = tick_s
        self.node = timer.cfg["clusterer.node_id"]
        self.listeners = timer.ctx.sip
        # per listener index: the socket pings leave from and the start of their Via
        # (-1: any listener, for contacts whose listener is gone after a restart)
        self.vias: dict[int, tuple[socket.socket, str]] = {}
        for s in self.listeners:
            sock = s.sock
            if sock is None:  # reuseport: send from the listener's address, any port
                sock = socket.socket(s.family, socket.SOCK_DGRAM)
                sock.bind((s.host, 0))
            host, port = sock.getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            self.vias[s.index] = (sock, f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK"
                                        f"{self.node:x}p{os.getpid():x}p")
        if self.vias:
            self.vias[-1] = next(iter(self.vias.values()))
        self.epoch = -1
        self.owners = np.zeros(0, dtype=np.uint16)
        self.owners_old = np.zeros(0, dtype=np.uint16)
        self.overlap_until = 0.0
        self.cursor = 0
        self.cycle_started = time.monotonic()
        self.cycle_pings = 0
        self.slots = np.zeros(BATCH, dtype=np.int64)
        # room for many pings, and always for one whatever its URI length
        self.targets = np.zeros(BATCH * 512 + self.table.row_size, dtype=np.uint8)
        self.row = np.zeros(self.table.row_size, dtype=np.uint8)
        h = self.table.buf[:T.HEADER_SIZE].view(np.int64)
        self.keys = self.table.buf[int(h[T.H_OFF_KEYS]):int(h[T.H_OFF_KEYS]) +
                                   8 * self.table.nslots].view(np.uint64)
        self.branch = 0
        self.no_gain = np.zeros(0, dtype=np.uint8)
        self.routes: dict[str, tuple[tuple, str] | None] = {}
        self.homes = UpNodes(timer.mem.control)  # live nodes a contact may call home
        self.apply_config(timer.cfg)

    def apply_config(self, cfg: Config) -> None:
        self.interval_s = cfg["usrloc.natping_interval_s"]
        self.nat_only = cfg["usrloc.natping_targets"] == "nat"
        self.keepalive = cfg["usrloc.natping_method"] == "keepalive"
        self.from_uri = cfg["usrloc.natping_from"]
        self.max_lost = cfg["usrloc.max_pings_lost"]

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[INDEX[name]] += n

    # ---------------------------------------------------------------- the map

    def refresh_map(self, now: float) -> None:
        control = self.mem.control
        if control.partitions_epoch == self.epoch:
            if self.overlap_until and now >= self.overlap_until:
                self.owners_old = self.owners
                self.overlap_until = 0.0
            return
        epoch, owners = control.read_partitions()
        if epoch == 0 or owners.shape[0] == 0:
            return
        first = self.epoch < 0
        old = self.owners if self.owners.shape == owners.shape else np.zeros_like(owners)
        self.epoch, self.owners = epoch, owners
        self.status[S_OWNED] = int(np.count_nonzero(owners == self.node))
        if first:
            self.owners_old = owners
            return
        self.owners_old = old  # keep pinging what was ours for a little while
        self.overlap_until = now + OVERLAP_S
        gained = ((owners == self.node) & (old != self.node)).astype(np.uint8)
        if gained.any() and self.interval_s:
            n = self._sweep(0, self.table.nslots, gained)
            log.info("partition map %d: %d partitions gained, %d contacts pinged at once",
                     epoch, int(gained.sum()), n)

    # ---------------------------------------------------------------- ticks

    def tick(self, now: float) -> None:
        started = time.monotonic()
        self.refresh_map(now)
        if not self.interval_s or self.owners.shape[0] == 0:
            return
        nslots = self.table.nslots
        per_tick = max(1, -(-nslots * self.tick_s // self.interval_s))
        end = min(nslots, int(self.cursor + per_tick))
        self.cycle_pings += self._sweep(self.cursor, end, self.no_gain)
        self.cursor = end
        self.status[S_CURRENT_PINGS] = self.cycle_pings
        if self.cursor >= nslots:
            elapsed = time.monotonic() - self.cycle_started
            self.status[S_LAST_PINGS] = self.cycle_pings
            self.status[S_LAST_SECONDS_US] = int(elapsed * 1e6)
            self.status[S_LAST_END_MS] = int(time.time() * 1000)
            self.status[S_CYCLES] += 1
            self._count("nathelper:ping_cycles")
            self.cursor = 0
            self.cycle_pings = 0
            self.cycle_started = time.monotonic()
        if time.monotonic() - started > self.tick_s:
            self.status[S_OVERRUNS] += 1
            self._count("nathelper:ticks_overrun")

    def _sweep(self, first: int, end: int, gained: np.ndarray) -> int:
        """Ping every due contact of slots [first, end); returns how many pings."""
        sent = 0
        s = first
        while s < end:
            n, s = P.select_due(self.table.buf, s, end, self.owners, self.owners_old,
                                self.node, gained, self.slots, BATCH)
            n, s = int(n), int(s)
            i = 0
            while i < n:  # several rounds only when the URIs fill self.targets
                count, used, i = P.ping_targets(self.table.buf, self.slots, i, n,
                                                int(time.time()), self.nat_only, C.FLAG_NAT,
                                                self.targets, self.targets.shape[0])
                sent += self._send(int(count), int(used))
                i = int(i)
        return sent

    def _send(self, count: int, used: int) -> int:
        """Send the pings of the first `count` entries (`used` bytes) of self.targets."""
        sent = 0
        data = self.targets[:used].tobytes()
        off = 0
        pinged = []
        keepalive = self.keepalive
        head_len = P.TARGET_HEAD
        homes = self.homes.get()
        mask = self.owners.shape[0] - 1
        as_home = 0
        for _ in range(count):
            slot, key, family, port, sock_index, ulen, plen, origin = \
                ENTRY.unpack_from(data, off)
            mine = self.node in (self.owners[key & mask], self.owners_old[key & mask])
            if not pings_it(self.node, origin, homes, family != 0 and not plen, mine):
                off += head_len + ((ulen + plen + 7) & ~7)
                continue
            as_home += not mine
            text = off + head_len
            uri = data[text:text + ulen].decode("utf-8", "replace")
            route = ""
            if plen:  # through the edge that added the Path, whatever the source was
                path = data[text + ulen:text + ulen + plen].decode("utf-8", "replace")
                hop = self._route(path)
                dest, route = hop if hop is not None else (None, "")
            else:
                dest = _destination(family, data[off + 64:off + 80], port, uri)
            off += head_len + ((ulen + plen + 7) & ~7)
            via = self.vias.get(sock_index) or self.vias.get(-1)
            if dest is None or via is None:
                self._count("nathelper:unreachable")
                continue
            sock, head = via
            if keepalive and not route:
                msg = KEEPALIVE  # a Path'd contact needs the edge to route: OPTIONS
            else:
                self.branch += 1
                msg = (f"OPTIONS {uri} SIP/2.0\r\n{head}{self.branch:x}\r\n{route}"
                       f"From: <{self.from_uri}>;tag={self.node:x}.{self.branch:x}\r\n"
                       f"To: <{uri}>\r\n"
                       f"Call-ID: {CALLID_PREFIX}{self.node}-{slot}-{key & KEY_MASK:x}\r\n"
                       "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                       ).encode()
            try:
                sock.sendto(msg, dest)
                sent += 1
                pinged.append(slot)
            except OSError:
                self._count("nathelper:send_errors")
        if as_home:
            self._count("nathelper:pings_as_home", as_home)
        if pinged:
            slots = np.array(pinged, dtype=np.int64)
            worst = int(P.mark_ping(self.table.buf, slots, len(pinged)))
            if self.max_lost and not keepalive and worst > self.max_lost:
                self._remove_lost(slots)
        self._count("nathelper:pings_sent", sent)
        return sent

    def _route(self, path: str) -> tuple[tuple, str] | None:
        """(first hop address, Route header line) of a stored Path, cached."""
        routes = self.routes
        if path in routes:
            return routes[path]
        if len(routes) >= ROUTE_CACHE:
            routes.clear()
        hop = routes[path] = path_route(path)
        return hop

    def _remove_lost(self, slots: np.ndarray) -> None:
        out = np.zeros(slots.shape[0], dtype=np.int64)
        m = int(P.missed_over(self.table.buf, slots, slots.shape[0], self.max_lost, out))
        for slot in out[:m].tolist():
            key = int(self.keys[slot])
            if key <= 1:
                continue
            done = retry_busy(lambda: C.ul_remove_slot(
                self.table.buf, self.timer.rings["contacts"], slot, np.uint64(key),
                int(time.time() * 1000), self.timer.me, self.timer.slot, self.row))
            if done == 1:
                self._count("nathelper:contacts_removed")
                log.info("contact in slot %d removed: no answer to %d pings", slot,
                         self.max_lost + 1)



def uri_destination(uri: str) -> tuple | None:
    """The (host, port[, 0, 0]) a UDP request for this SIP URI goes to when its host is
    an IP address (maddr wins, as RFC 3261 §18.1.1 says); None for a host name (the
    pinger resolves no names) or a transport other than UDP."""
    try:
        u = parse_uri(uri)
    except SipParseError:
        return None
    if (u.params.get("transport") or "udp").lower() != "udp":
        return None
    host = u.params.get("maddr") or u.host
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    port = u.port or (5061 if u.scheme == "sips" else 5060)
    return (str(ip), port) if ip.version == 4 else (str(ip), port, 0, 0)


def path_route(path: str) -> tuple[tuple, str] | None:
    """Where a request to a contact registered with this Path goes (RFC 3327 §5.3: the
    Path values become the Route set, the first hop receives it), and the Route header
    line carrying them; None if the first hop cannot be reached."""
    hops = split_list(path)
    if not hops:
        return None
    try:
        first = parse_name_addr(hops[0]).uri
    except SipParseError:
        return None
    dest = uri_destination(first)
    if dest is None:
        return None
    return dest, f"Route: {', '.join(hops)}\r\n"


def _destination(family: int, raw: bytes, port: int, uri: str) -> tuple | None:
    """Where a ping without Path goes: the received address, else the URI's host if it
    is an IP address."""
    if family == 4:
        return (socket.inet_ntop(socket.AF_INET, raw[:4]), port)
    if family == 6:
        return (socket.inet_ntop(socket.AF_INET6, raw), port, 0, 0)
    return uri_destination(uri)


@command("ul_ping_partitions", heavy=True)
def mi_ul_ping_partitions(node: Any) -> dict[str, Any]:
    """This node's ping partitions, the contacts in them, and the last ping cycle."""
    epoch, owners = node.mem.control.read_partitions()
    me = node.cfg["clusterer.node_id"]
    mine = np.flatnonzero(owners == me)
    nat_only = node.cfg["usrloc.natping_targets"] == "nat"
    contacts = int(P.count_owned(node.mem.contacts.buf, owners, me, nat_only, C.FLAG_NAT))
    return {"node_id": me, "epoch": epoch, "partitions": int(owners.shape[0]),
            "owned": int(mine.shape[0]), "owned_partitions": _ranges(mine),
            "owners": {str(n): int(c) for n, c in zip(*np.unique(owners, return_counts=True))},
            "contacts": contacts, "targets": node.cfg["usrloc.natping_targets"],
            "interval_s": node.cfg["usrloc.natping_interval_s"],
            "last_cycle": cycle_status(node.mem.control)}


def _ranges(values: np.ndarray) -> list[str]:
    """[0,1,2,5,7,8] -> ["0-2", "5", "7-8"] (compact for 4096 partitions)."""
    out: list[str] = []
    start = prev = None
    for v in values.tolist():
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return out
