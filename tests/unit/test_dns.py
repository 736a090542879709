"""RFC 3263 resolution for relayed requests (services.sip.dns): SRV ordering by table,
and the SRV query against a tiny nameserver on loopback."""
from __future__ import annotations

import random
import socket
import struct
import threading

import pytest

from fastcluster.services.sip.dns import Resolver, order_srv


@pytest.mark.parametrize("records, want_first", [
    ([(10, 0, 5060, "b.example"), (5, 0, 5070, "a.example")], [("a.example", 5070)]),
    ([(1, 0, 5060, "."), (2, 0, 5061, "x.example")], [("x.example", 5061)]),  # "." = none
    ([(1, 100, 5060, "w.example"), (1, 0, 5061, "z.example")], [("w.example", 5060)]),
])
def test_srv_order(records, want_first) -> None:
    got = order_srv(records, random.Random(3))
    assert got[:len(want_first)] == want_first
    assert sorted(got) == sorted((t, p) for _, _, p, t in records if t != ".")


def _name(n: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in n.split(".")) + b"\0"


class FakeDns:
    """Answers every query with SRV records (compressed names included)."""

    def __init__(self, records: list[tuple[int, int, int, str]]) -> None:
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        data, src = self.sock.recvfrom(512)
        qid = data[:2]
        q = data[12:]
        end = q.index(b"\0") + 5
        labels, p = [], 0
        while q[p]:
            labels.append(q[p + 1:p + 1 + q[p]].decode())
            p += 1 + q[p]
        self.queries.append(".".join(labels))
        answers = b""
        for prio, weight, port, target in self.records:
            rdata = struct.pack(">HHH", prio, weight, port) + _name(target)
            answers += b"\xc0\x0c" + struct.pack(">HHIH", 33, 1, 60, len(rdata)) + rdata
        head = qid + struct.pack(">HHHHH", 0x8180, 1, len(self.records), 0, 0)
        self.sock.sendto(head + q[:end] + answers, src)

    def close(self) -> None:
        self.thread.join(2)
        self.sock.close()


def test_rfc3263_uses_srv_then_the_targets_address() -> None:
    dns = FakeDns([(10, 0, 5099, "localhost")])
    try:
        r = Resolver(nameserver=dns.addr)
        assert r.rfc3263("voip.example", 0) == ("127.0.0.1", 5099)
        assert dns.queries == ["_sip._udp.voip.example"]
        assert r.rfc3263("voip.example", 0) == ("127.0.0.1", 5099)  # cached: no new query
    finally:
        dns.close()
    # an explicit port or an address skips SRV (RFC 3263 §4.2)
    assert Resolver(nameserver=("127.0.0.1", 9)).rfc3263("198.51.100.7", 0) == \
        ("198.51.100.7", 5060)
    assert Resolver().address("localhost", 5070) == ("127.0.0.1", 5070)
