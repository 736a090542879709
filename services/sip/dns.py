"""Name resolution for the proxy: addresses of hosts in URIs, and RFC 3263 server
location (SRV, then A/AAAA) for requests relayed to foreign domains.

Contacts, Paths and Routes nearly always carry IP addresses, which never touch DNS.
Names are resolved in the worker, blocking, and cached (`CACHE_S`, failures for
`NEGATIVE_S`): relaying to foreign domains is off by default and meant for a few
well-known peers. UDP only, as the rest of fastcluster: RFC 3263's NAPTR step is
skipped (it only chooses a transport), SRV `_sip._udp` records are ordered by priority
and, within one, by weight (RFC 2782). The SRV query is a minimal stdlib DNS client
(one question, answers with name compression) against the first nameserver of
/etc/resolv.conf. Neighbours: services.sip.proxy.
"""
from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
import time

CACHE_S = 60.0
NEGATIVE_S = 10.0
QUERY_TIMEOUT_S = 1.0
TYPE_SRV = 33


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def order_srv(records: list[tuple[int, int, int, str]], rng: random.Random | None = None
              ) -> list[tuple[str, int]]:
    """RFC 2782 order of SRV records (priority, weight, port, target): lowest priority
    first; within a priority, a weighted random order (weight 0 last among equals)."""
    rng = rng or random.Random()
    out = []
    for prio in sorted({r[0] for r in records}):
        group = [r for r in records if r[0] == prio and r[3] != "."]
        while group:
            total = sum(r[1] for r in group)
            if total == 0:
                pick = group[0]
            else:
                x = rng.uniform(0, total)
                acc = 0.0
                pick = group[-1]
                for r in group:
                    acc += r[1]
                    if x <= acc and r[1] > 0:
                        pick = r
                        break
            group.remove(pick)
            out.append((pick[3], pick[2]))
    return out


def _name(data: bytes, pos: int) -> tuple[str, int]:
    """A (possibly compressed) domain name at pos: (name, position after it)."""
    labels = []
    end = -1
    for _ in range(128):
        n = data[pos]
        if n & 0xC0 == 0xC0:
            if end < 0:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | data[pos + 1]
            continue
        if n == 0:
            pos += 1
            break
        labels.append(data[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return ".".join(labels) or ".", (end if end >= 0 else pos)


def srv_query(name: str, server: tuple[str, int], timeout: float = QUERY_TIMEOUT_S
              ) -> list[tuple[int, int, int, str]]:
    """SRV records of `name` from `server`: (priority, weight, port, target)."""
    qid = int.from_bytes(os.urandom(2), "big")
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode("ascii")
    q += b"\0" + struct.pack(">HH", TYPE_SRV, 1)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, server)
        data, _ = s.recvfrom(4096)
    rid, flags, qd, an = struct.unpack_from(">HHHH", data)
    if rid != qid or flags & 0x000F:
        return []
    pos = 12
    for _ in range(qd):
        _, pos = _name(data, pos)
        pos += 4
    out = []
    for _ in range(an):
        _, pos = _name(data, pos)
        rtype, _, _, rdlen = struct.unpack_from(">HHIH", data, pos)
        pos += 10
        if rtype == TYPE_SRV:
            prio, weight, port = struct.unpack_from(">HHH", data, pos)
            target, _ = _name(data, pos + 6)
            out.append((prio, weight, port, target))
        pos += rdlen
    return out


def system_nameserver() -> tuple[str, int] | None:
    try:
        with open("/etc/resolv.conf", encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1], 53
    except OSError:
        pass
    return None


class Resolver:
    """Cached resolution (one per process)."""

    def __init__(self, nameserver: tuple[str, int] | None = None) -> None:
        self.nameserver = nameserver
        self._cache: dict[tuple[str, int, bool], tuple[float, tuple[str, int] | None]] = {}
        self._literal: dict[tuple[str, int], tuple[str, int]] = {}

    def address(self, host: str, port: int) -> tuple[str, int] | None:
        """(ip, port) of host (port 0: 5060); IP literals cost a dict lookup."""
        hit = self._literal.get((host, port))
        if hit is not None:
            return hit
        if host and (host[0].isdigit() or ":" in host) and is_ip(host):
            if len(self._literal) > 65536:
                self._literal.clear()
            found = self._literal[(host, port)] = (host, port or 5060)
            return found
        return self._cached(host, port, False)

    def rfc3263(self, host: str, port: int) -> tuple[str, int] | None:
        """RFC 3263 for UDP: an IP or an explicit port goes to A/AAAA; otherwise SRV
        `_sip._udp.host` first, then A/AAAA on 5060."""
        if is_ip(host) or port:
            return self.address(host, port)
        return self._cached(host, 0, True)

    def _cached(self, host: str, port: int, srv: bool) -> tuple[str, int] | None:
        now = time.monotonic()
        hit = self._cache.get((host, port, srv))
        if hit is not None and hit[0] > now:
            return hit[1]
        result = self._resolve_srv(host) if srv else self._resolve(host, port)
        self._cache[(host, port, srv)] = (now + (CACHE_S if result else NEGATIVE_S), result)
        if len(self._cache) > 4096:
            self._cache.clear()
        return result

    def _resolve(self, host: str, port: int) -> tuple[str, int] | None:
        try:
            infos = socket.getaddrinfo(host, port or 5060, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError):
            return None
        for family in (socket.AF_INET, socket.AF_INET6):
            for info in infos:
                if info[0] == family:
                    return info[4][0], info[4][1]
        return None

    def _resolve_srv(self, host: str) -> tuple[str, int] | None:
        server = self.nameserver or system_nameserver()
        if server is not None:
            try:
                records = srv_query(f"_sip._udp.{host}", server)
            except (OSError, struct.error, IndexError):
                records = []
            for target, port in order_srv(records):
                found = self._resolve(target, port)
                if found is not None:
                    return found
        return self._resolve(host, 5060)
