"""NAT pinging shared by real nodes: every contact pinged every interval, by exactly one
node in steady state (the node it registered through: a NAT lets only that one in); no
contact left unpinged when a node dies (its partitions' owners take its contacts) or
joins."""
from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict

import pytest

from tests.support import sipp
from tests.support.nodes import Node, free_port, start_cluster, wait_synced, wait_until

INTERVAL = 3
CONTACTS = 30_000
SETTINGS = {"usrloc": {"natping_interval_s": INTERVAL},
            "clusterer": {"seed_fallback_interval_s": 0.5}}

pytestmark = pytest.mark.sipp


class Sink:
    """The contacts' received address: records every ping (time, user, sender port)."""

    def __init__(self, port: int, answer: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.answer = answer
        self.pings: list[tuple[float, bytes, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            now = time.monotonic()
            if not data.startswith(b"OPTIONS "):
                continue
            uri = data.split(b" ", 2)[1]
            user = uri[4:uri.index(b"@")]
            self.pings.append((now, user, addr[1]))
            if self.answer:
                head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
                keep = [h for h in head if h.split(b":", 1)[0] in
                        (b"Via", b"From", b"To", b"Call-ID", b"CSeq")]
                self.sock.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) +
                                 b"\r\nContent-Length: 0\r\n\r\n", addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    def between(self, start: float, end: float) -> list[tuple[float, bytes, int]]:
        return [p for p in self.pings if start <= p[0] < end]


def per_user(pings: list[tuple[float, bytes, int]]) -> dict[bytes, list[tuple[float, int]]]:
    out: dict[bytes, list[tuple[float, int]]] = defaultdict(list)
    for t, user, port in pings:
        out[user].append((t, port))
    return out


def register_nat(node: Node, tmp, count: int, lport: int, prefix: str = "n") -> None:
    r = sipp.run("register_nat", ("127.0.0.1", node.sip_port), tmp / "sipp", count,
                 rate=8000, keys={"user": prefix, "reg_cseq": 1, "expires": 3600},
                 local_port=lport)
    assert (r.successful, r.failed) == (count, 0), r.stdout


def owned(node: Node) -> int:
    return node.mi("ul_ping_partitions")["owned"]


def test_pinging_is_shared_complete_and_survives_death_and_join(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 3, workers=1, settings=SETTINGS)
    fourth = None
    sink = None
    try:
        wait_synced(nodes)
        lport = free_port(socket.SOCK_DGRAM)
        homes = {"a": 1, "b": 2, "c": 3}  # a third of the phones registers through each
        for prefix, node_id in homes.items():
            register_nat(nodes[node_id - 1], tmp_path, CONTACTS // 3, lport, prefix)
        sink = Sink(lport)
        wait_until(lambda: all(n.mi("ul_digest")["contacts"] == CONTACTS for n in nodes),
                   timeout=20, what="replicated")
        assert sum(owned(n) for n in nodes) == 4096
        by_port = {n.sip_port: n.node_id for n in nodes}
        # steady state: every contact pinged every interval, by its home node only
        time.sleep(INTERVAL + 0.5)  # any pinging that started with the map is over
        start = time.monotonic()
        time.sleep(3 * INTERVAL)
        window = per_user(sink.between(start, time.monotonic()))
        assert len(window) == CONTACTS
        for user, pings in window.items():
            assert 2 <= len(pings) <= 4, (user, pings)
            assert {by_port[port] for _, port in pings} == {homes[user[:1].decode()]}, \
                (user, pings)
            gaps = [b[0] - a[0] for a, b in zip(pings, pings[1:])]
            assert max(gaps) <= INTERVAL + 0.5, (user, gaps)
        for n in nodes:  # most of a node's phones are in other nodes' partitions
            as_home = n.mi("get_statistics", statistics=["nathelper:pings_as_home"])
            assert as_home["nathelper:pings_as_home"] > 0
        # a node dies: the partitions' owners take its contacts over (their NAT may drop
        # those pings: at least the contacts are not left silent) within an interval
        # after the death is seen
        victim = nodes[2]
        victim_port = victim.sip_port
        victim_users = {u for u in window if u.startswith(b"c")}
        killed = time.monotonic()
        victim.kill9()
        wait_until(lambda: sum(owned(n) for n in nodes[:2]) == 4096, timeout=5,
                   what="partitions taken over")
        time.sleep(2 * INTERVAL + 1)
        after = per_user(sink.between(killed - INTERVAL, time.monotonic()))
        for user in victim_users:
            times = [t for t, _ in after[user]]
            gaps = [b - a for a, b in zip(times, times[1:])]
            assert times and max(gaps) <= 2 * INTERVAL + 1, (user, gaps)
            assert any(port != victim_port and t > killed for t, port in after[user])
        # a fourth node joins: about a quarter of the partitions move to it
        before = {n.node_id: owned(n) for n in nodes[:2]}
        fourth = Node(tmp_path, node_id=4, workers=1, settings={
            "usrloc": {"natping_interval_s": INTERVAL},
            "clusterer": {"seeds": nodes[0].bin_addr}}).start()
        wait_synced([fourth])
        wait_until(lambda: owned(fourth) > 0, what="node 4 owns partitions")
        moved = owned(fourth)
        assert 0.2 * 4096 <= moved <= 0.5 * 4096, moved  # ideal 1/3 for 3 live nodes
        assert sum(before.values()) - sum(owned(n) for n in nodes[:2]) == moved
        joined = time.monotonic()
        time.sleep(2 * INTERVAL + 0.5)
        final = per_user(sink.between(joined, time.monotonic()))
        assert len(final) == CONTACTS
        assert any(port == fourth.sip_port for pings in final.values() for _, port in pings)
        stats = nodes[0].mi("get_statistics", statistics=["nathelper:"])
        assert stats["nathelper:pings_sent"] > 0 and stats["nathelper:ping_cycles"] > 0
    finally:
        if sink is not None:
            sink.close()
        for n in nodes + ([fourth] if fourth else []):
            n.stop()


def test_replies_are_counted_and_silent_contacts_removed(tmp_path) -> None:
    node = Node(tmp_path, workers=1, settings={
        "usrloc": {"natping_interval_s": 1, "max_pings_lost": 2},
        "clusterer": {"seed_fallback_interval_s": 0.5}}).start()
    answering = silent = None
    try:
        wait_synced([node])
        la, ls = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        for count, lport, prefix in ((50, la, "a"), (50, ls, "s")):
            r = sipp.run("register_nat", ("127.0.0.1", node.sip_port), tmp_path / "sipp",
                         count, keys={"user": prefix, "reg_cseq": 1, "expires": 3600},
                         local_port=lport)
            assert r.successful == count
        answering, silent = Sink(la, answer=True), Sink(ls)
        wait_until(lambda: node.mi("ul_digest")["contacts"] == 50, timeout=15,
                   what="silent contacts removed")
        assert {c["AOR"].split("@")[0][:1] for c in
                node.mi("ul_dump", brief=1)["Domains"][0]["AORs"]} == {"a"}
        stats = node.mi("get_statistics", statistics=["nathelper:"])
        assert stats["nathelper:ping_replies"] >= 50
        assert stats["nathelper:contacts_removed"] == 50
        assert "no answer to 3 pings" in node.log()
    finally:
        for s in (answering, silent):
            if s is not None:
                s.close()
        node.stop()
