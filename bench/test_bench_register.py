"""A whole REGISTER in one process: SipApp.handle on the datagram sipp sends, through
the plain path's compiled way (shm.plainreg), its Python way (services.sip.plainreg)
and the general way, each time for a new user (an insert into the contact table, the
reply built, no socket); and 32 of them at a time over a socket on 127.0.0.1, read one
by one (recvfrom, then SipApp.handle) or as a batch (services.sip.batch: recvmmsg, one
compiled call, sendmmsg); the client's sends and reads are in both.

Run: .venv/bin/pytest bench/test_bench_register.py --benchmark-only -q
"""
from __future__ import annotations

import itertools
import socket
from typing import Any

import pytest

from tests.support.registrar import Harness

SRC = ("127.0.0.1", 5070)


def datagram(n: int) -> bytes:
    return (f"REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-1-0\r\n"
            f"From: <sip:load{n}@example.com>;tag={n}x1234\r\n"
            f"To: <sip:load{n}@example.com>\r\n"
            f"Call-ID: reg-load{n}@fastcluster\r\n"
            f"CSeq: 1 REGISTER\r\n"
            f"Contact: <sip:load{n}@127.0.0.1:5070>\r\n"
            f"Max-Forwards: 70\r\nExpires: 3600\r\nUser-Agent: sipp-fastcluster\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("way", ["compiled", "plain", "general"])
def test_register_new_user(benchmark: Any, way: str) -> None:
    h = Harness(capacity=1_200_000)
    h.app.plain.enabled = way != "general"
    h.app.plain.compiled = way == "compiled"
    numbers = itertools.count()
    handle, listener = h.app.handle, h.listener

    def one() -> None:
        handle(datagram(next(numbers)), SRC, listener)
        if len(h.sock.sent) > 1000:
            h.sock.sent.clear()

    benchmark.pedantic(one, rounds=20_000, warmup_rounds=1000)
    assert h.count("registrar:accepted_regs") == 21_000


@pytest.mark.parametrize("way", ["batch", "recvfrom"])
def test_register_32_queued_over_a_socket(benchmark: Any, way: str) -> None:
    from fastcluster.services.sip.batch import BatchReader

    h = Harness(capacity=1_200_000)
    server, client = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    server.bind(("127.0.0.1", 0))
    client.bind(("127.0.0.1", 0))
    h.listener.sock = server
    reader = BatchReader(h.app)
    numbers = itertools.count()
    handle, listener, to = h.app.handle, h.listener, server.getsockname()

    def round_of_32() -> None:
        for _ in range(32):
            client.sendto(datagram(next(numbers)), to)
        if way == "batch":
            assert reader.serve(listener, False) == 32
        else:
            for _ in range(32):
                data, addr = server.recvfrom(65535)
                handle(data, addr, listener)
        for _ in range(32):
            client.recv(65535)

    try:
        benchmark.pedantic(round_of_32, rounds=600, warmup_rounds=20)
    finally:
        server.close()
        client.close()
    assert h.count("registrar:accepted_regs") == 620 * 32
