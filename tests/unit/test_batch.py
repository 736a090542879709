"""A SIP worker's batched receive (services.sip.batch over shm.mmsg: recvmmsg, the
compiled plain REGISTER, sendmmsg, the rest through SipApp.handle) against the general
way, on real UDP sockets on 127.0.0.1: every request answered once, to where it came
from, with the bytes the general way sends, and the same counters, rows, dirty marks and
replication ring when the general way sees the requests in the order the batch applied
them."""
from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time

import numpy as np
import pytest

from fastcluster.services.sip.batch import BatchReader
from fastcluster.shm import mmsg as M
from fastcluster.shm import plainreg as K
from fastcluster.shm import table as T
from tests.unit.test_plainreg import frozen_clock, pair, request, rows  # noqa: F401

SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
PLAIN = ("REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:{p};branch=z9hG4bK"
         "-{n}\r\nFrom: <sip:u{n}@example.com>;tag=1\r\nTo: <sip:u{n}@example.com>\r\n"
         "Call-ID: q{n}\r\nCSeq: 1 REGISTER\r\nContact: <sip:u{n}@127.0.0.2:{p}>\r\n"
         "Max-Forwards: 70\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n")


def udp(host: str, family: int = socket.AF_INET) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(5)
    return s


def replies(client: socket.socket, n: int) -> list[bytes]:
    return [client.recvfrom(1 << 16)[0] for _ in range(n)]


LOOP = 1 << 30  # batches: the compiled loop runs until something stops it


def serve_all(reader: BatchReader, listener: object, n: int, loop: bool = False
              ) -> tuple[list[int], int, int]:
    """Read n datagrams; the order the batch applied them in (the compiled answers of
    each batch first), how many receive calls it took and how many the compiled way
    answered. loop: the compiled loop over what is queued (MSG_DONTWAIT, batch after
    full batch, as a worker with several listeners drains one), else one batch per
    call, blocking for its first datagram."""
    order, calls, compiled = [], 0, 0
    while len(order) < n:
        if loop:
            total = reader.serve(listener, False, time.monotonic_ns() + 10**9, LOOP)
            last = total - M.BATCH * ((total - 1) // M.BATCH)  # the others were full
        else:
            total = last = reader.serve(listener, True)
        calls += 1
        assert total > 0, "a datagram sent was not received"
        compiled += total - last  # whole batches before the last: all answered
        order += list(range(len(order), len(order) + total - last))
        status = reader.batch.status[:last]
        compiled += int(status.sum())
        index = list(range(len(order), len(order) + last))
        order += [index[i] for i in range(last) if status[i]]
        order += [index[i] for i in range(last) if not status[i]]
    return order, calls, compiled


@pytest.mark.parametrize("seed,loop", [(21, False), (22, False), (23, True), (24, True)])
def test_batches_agree_with_the_general_way(seed: int, loop: bool) -> None:
    rng = random.Random(seed)
    plain, general = pair()
    server = udp("127.0.0.1")
    clients = [udp(host) for host in SOURCES]
    plain.listener.sock = server
    server.settimeout(None)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
    reader = BatchReader(plain.app)
    again = []  # a datagram the compiled way declined is not offered to it a second time
    plain.app.plain._compiled = lambda *a: again.append(a) or False  # type: ignore
    answered = n = 0
    try:
        while n < 2000:
            size = rng.choice([1, 1, 3, 17, M.BATCH, M.BATCH + 9])
            sent = []
            for k in range(size):
                text = request(rng, n + k).replace("\n", "\r\n").encode()
                client = rng.choice(clients)
                client.sendto(text, server.getsockname())
                sent.append((text, client))
            order, _, compiled = serve_all(reader, plain.listener, size, loop)
            answered += compiled
            expected: dict[socket.socket, list[bytes]] = {c: [] for c in clients}
            for i in order:
                text, client = sent[i]
                before = len(general.sock.sent)
                general.app.handle(text, client.getsockname(), general.listener)
                for data, addr in general.sock.sent[before:]:
                    assert addr == client.getsockname()
                    expected[client].append(data)
            for client in clients:
                got = replies(client, len(expected[client]))
                assert sorted(got) == sorted(expected[client])
            assert plain.counts == general.counts
            n += size
        for client in clients:  # nothing more than the general way sent
            client.settimeout(0.05)
            with pytest.raises(socket.timeout):
                client.recvfrom(1 << 16)
    finally:
        server.close()
        for c in clients:
            c.close()
    assert rows(plain) == rows(general)
    assert np.array_equal(T.dirty_marks(plain.table.buf), T.dirty_marks(general.table.buf))
    assert np.array_equal(plain.ring, general.ring) and np.count_nonzero(plain.ring)
    # both ways were exercised
    assert 0.25 * n < answered < plain.count("core:rcv_requests")
    assert again == []


def test_a_queue_of_plain_registers_is_read_and_answered_in_few_calls() -> None:
    plain, _ = pair()
    server, client = udp("127.0.0.1"), udp("127.0.0.2")
    plain.listener.sock = server
    reader = BatchReader(plain.app)
    text = PLAIN
    port = client.getsockname()[1]
    try:
        for n in range(100):
            client.sendto(text.format(n=n, p=port).encode(), server.getsockname())
        time.sleep(0.05)
        _, calls, compiled = serve_all(reader, plain.listener, 100)
        assert calls == 4  # 32 + 32 + 32 + 4
        assert compiled == 100
        got = replies(client, 100)
        assert all(r.startswith(b"SIP/2.0 200 OK\r\n") for r in got)
        assert sorted(int(r.split(b"Call-ID: q")[1].split(b"\r\n")[0]) for r in got) == \
            list(range(100))
        assert plain.count("registrar:accepted_regs") == 100
        assert plain.count("sl:sent_replies") == plain.count("sl:2xx_replies") == 100
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 10000))
        assert reader.serve(plain.listener, True) == 0  # nothing waiting: a timeout
        assert reader.serve(plain.listener, False) == 0
    finally:
        server.close()
        client.close()


def shared_wait(server: socket.socket) -> select.epoll:
    """The epoll a worker of a shared socket waits in (workers.sip_worker)."""
    ep = select.epoll()
    ep.register(server.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
    return ep


@pytest.mark.parametrize("wait", ["recvmmsg", "epoll"])
def test_the_compiled_loop_comes_back_for_the_heartbeat_under_a_steady_trickle(
        wait: str) -> None:
    """A worker's loop (blocking, no batch limit) never times out while requests keep
    coming: it must still come back by its deadline, having answered them all; blocked
    in recvmmsg (its own socket) or waiting in epoll_wait (a shared one)."""
    plain, _ = pair()
    server, client = udp("127.0.0.1"), udp("127.0.0.2")
    server.settimeout(None)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200000))
    plain.listener.sock = server
    reader = BatchReader(plain.app)
    ep = shared_wait(server) if wait == "epoll" else None
    epfd = ep.fileno() if ep is not None else -1
    port = client.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:  # 3 s at most: a loop that missed its deadline ends with it
        n = 0
        end = time.monotonic() + 3
        while not stop.is_set() and time.monotonic() < end:
            client.sendto(PLAIN.format(n=n, p=port).encode(), server.getsockname())
            n += 1
            time.sleep(0.002)

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        reader.serve(plain.listener, True)  # the first second's Date line, set once
        start = time.monotonic()
        total = reader.serve(plain.listener, True, time.monotonic_ns() + 150_000_000, LOOP,
                             epfd)
        took = time.monotonic() - start
    finally:
        stop.set()
        sender.join()
        if ep is not None:
            ep.close()
    try:
        assert 0.15 <= took < 2, took  # by its deadline, not at the end of the trickle
        assert total > 10
        answered = plain.count("registrar:accepted_regs")
        assert plain.count("sl:2xx_replies") == answered == plain.count("core:rcv_requests")
        assert len(replies(client, answered)) == answered
    finally:
        server.close()
        client.close()


def test_a_worker_of_a_shared_socket_waits_in_epoll_until_its_deadline() -> None:
    """Waiting in epoll_wait (shm.mmsg.wait_batch): what is queued is taken at once;
    with nothing coming the loop returns 0 at its deadline, not before; a datagram
    sent meanwhile ends the wait and is answered; one a Python way must handle comes
    back to Python. The compiled way off, the same wait hands everything to Python."""
    plain, general = pair()
    server, client = udp("127.0.0.1"), udp("127.0.0.2")
    plain.listener.sock = server
    reader = BatchReader(plain.app)
    port = client.getsockname()[1]
    ep = shared_wait(server)
    try:
        for n in range(40):
            client.sendto(PLAIN.format(n=n, p=port).encode(), server.getsockname())
        got, calls = 0, 0
        while got < 40 and calls < 3:  # back early for a new second's Date line only
            got += reader.serve(plain.listener, True, time.monotonic_ns() + 100_000_000,
                                LOOP, ep.fileno())
            calls += 1
        assert got == 40
        assert len(replies(client, 40)) == 40
        start = time.monotonic()
        assert reader.serve(plain.listener, True, time.monotonic_ns() + 50_000_000, LOOP,
                            ep.fileno()) == 0
        assert 0.05 <= time.monotonic() - start < 2
        late = threading.Timer(0.05, lambda: client.sendto(
            PLAIN.format(n=99, p=port).encode(), server.getsockname()))
        late.start()
        total = reader.serve(plain.listener, True, time.monotonic_ns() + 300_000_000, 1,
                             ep.fileno())
        late.join()
        assert total == 1 and len(replies(client, 1)) == 1
        options = (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:{port}"
                   f";branch=z9hG4bK-o\r\nFrom: <sip:o@x>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
                   f"Call-ID: o\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        client.sendto(options, server.getsockname())
        assert reader.serve(plain.listener, True, time.monotonic_ns() + 10**9, LOOP,
                            ep.fileno()) == 1  # back at once, for Python
        assert replies(client, 1)[0].startswith(b"SIP/2.0 200 OK\r\n")
        assert plain.count("registrar:accepted_regs") == 41
        plain.app.plain.enabled = False
        client.sendto(PLAIN.format(n=100, p=port).encode(), server.getsockname())
        assert reader.serve(plain.listener, True, time.monotonic_ns() + 10**9, LOOP,
                            ep.fileno()) == 1
        assert replies(client, 1)[0].startswith(b"SIP/2.0 200 OK\r\n")
        assert plain.count("registrar:accepted_regs") == 42
    finally:
        ep.close()
        server.close()
        client.close()


def test_a_batch_received_in_another_second_goes_back_to_python_and_is_answered_once(
        ) -> None:
    """The compiled loop holds the Date line of one second; a batch received in
    another (here: the kernel's clock moved on, the frozen Python clock did not) is
    left to Python, which answers it with its own clock's line, once."""
    plain, general = pair()
    server, client = udp("127.0.0.1"), udp("127.0.0.2")
    plain.listener.sock = server
    reader = BatchReader(plain.app)
    port = client.getsockname()[1]
    words = plain.app.plain.words
    try:
        for n in range(3):
            text = PLAIN.format(n=n, p=port).encode()
            client.sendto(text, server.getsockname())
            if n == 2:  # the kernel's clock a second ahead of the line it was given
                words[K.W_CLOCK_NS] += 10**9
            assert reader.serve(plain.listener, False, 0, LOOP) == 1
            assert words[K.W_ANSWERED] == (K.STALE_DATE if n != 1 else 1)
            general.app.handle(text, client.getsockname(), general.listener)
            assert replies(client, 1) == [general.sock.sent[-1][0]]
        assert plain.counts == general.counts
        assert plain.count("registrar:accepted_regs") == 3
    finally:
        server.close()
        client.close()


def test_ipv6_sources_go_the_python_way_with_their_full_address() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = udp("::1", socket.AF_INET6)
    except OSError:
        pytest.skip("no ::1 here")
    client = udp("::1", socket.AF_INET6)
    plain, general = pair()
    plain.listener.sock = server
    reader = BatchReader(plain.app)
    text = ("REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:{p};branch=z9hG4bK6"
            "\r\nFrom: <sip:six@example.com>;tag=1\r\nTo: <sip:six@example.com>\r\n"
            "Call-ID: six\r\nCSeq: 1 REGISTER\r\nContact: <sip:six@[::1]:{p}>\r\n\r\n"
            ).format(p=client.getsockname()[1]).encode()
    try:
        client.sendto(text, server.getsockname())
        assert reader.serve(plain.listener, True) == 1
        assert reader.batch.status[0] == 0
        assert reader.batch.address(0) == client.getsockname()
        general.app.handle(text, client.getsockname(), general.listener)
        assert replies(client, 1) == [general.sock.sent[-1][0]]
        assert plain.counts == general.counts
        assert rows(plain) == rows(general)
    finally:
        server.close()
        client.close()


def test_an_answer_the_kernel_refuses_is_counted_and_the_rest_are_sent() -> None:
    """sendmmsg stops at a message it cannot send: that one is skipped and counted."""
    server, client = udp("127.0.0.1"), udp("127.0.0.1")
    batch = M.Batch(64, 3)
    for k, payload in enumerate((b"one", b"two", b"three")):
        batch.outs[k, :len(payload)] = np.frombuffer(payload, np.uint8)
        batch.tx_iov[k, 1] = len(payload)
        name = batch.names[k]
        port = client.getsockname()[1] if k != 1 else 0  # port 0: EINVAL
        name[:2] = (socket.AF_INET, 0)
        name[2:4] = (port >> 8, port & 0xFF)
        name[4:8] = (127, 0, 0, 1)
        batch.tx[k, M.H_NAME] = name.ctypes.data
        batch.tx[k, M.H_NAMELEN] = 16
    words = np.zeros(3, dtype=np.int64)
    try:
        assert M.send_batch(server.fileno(), batch.tx, 3, words) == 2
        assert list(words[:2]) == [2, 1] and words[2] > 0
        assert replies(client, 2) == [b"one", b"three"]
    finally:
        server.close()
        client.close()


def test_sources_kept_past_their_limit_are_read_again(monkeypatch) -> None:
    """Batch.address keeps the IPv4 sources it decoded: with fewer kept than sources
    (the cache starts again), every datagram still gets its own source."""
    monkeypatch.setattr(M, "ADDRESSES_KEPT", 3)
    batch = M.Batch(64, 2)
    sources = [(f"10.0.{i}.{200 + i}", 5060 + 1000 * i) for i in range(8)]
    for _ in range(2):
        for host, port in sources:
            batch.names[1, :8] = np.frombuffer(struct.pack("<H", socket.AF_INET) +
                                               struct.pack("!H", port) +
                                               socket.inet_aton(host), np.uint8)
            assert batch.address(1) == (host, port)
