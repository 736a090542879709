"""The registrar of a real node driven by sipp (and raw UDP), checked through the MI."""
from __future__ import annotations

import os
import random
import socket

import pytest

from tests.support import sipp
from tests.support.nodes import Node, free_port, wait_until

pytestmark = pytest.mark.sipp


@pytest.fixture(scope="module", autouse=True)
def need_sipp() -> None:
    if not sipp.available():
        pytest.fail("sipp is not installed: scripts/test installs it (Debian: sip-tester)")


def stats(node: Node, *names: str) -> dict[str, int]:
    return node.mi("get_statistics", statistics=list(names))


def contact_of(node: Node, user: str) -> dict:
    (contact,) = node.mi("ul_show_contact", aor=f"{user}@example.com")["Contacts"]
    return contact


def test_register_refresh_refuse_query_remove_wildcard(tmp_path) -> None:
    node = Node(tmp_path, workers=2).start()
    try:
        target, work, lport, n = ("127.0.0.1", node.sip_port), tmp_path / "sipp", \
            free_port(socket.SOCK_DGRAM), 3000
        keys = {"user": "u", "reg_cseq": 1, "expires": 3600}

        def run(scenario: str, **kw) -> sipp.SippResult:
            k = {**keys, **kw.pop("keys", {})}
            return sipp.run(scenario, target, work, kw.pop("calls", n), rate=2000, keys=k,
                            local_port=lport, **kw)

        r = run("register")
        assert (r.successful, r.failed) == (n, 0), r.stdout
        wait_until(lambda: stats(node, "registrar:accepted_regs")["registrar:accepted_regs"]
                   == n, what="counters flushed")
        s = stats(node, "usrloc:registered_contacts", "usrloc:registered_aors")
        assert s == {"usrloc:registered_contacts": n, "usrloc:registered_aors": n}
        c = contact_of(node, "u17")
        assert c["Contact"] == f"sip:u17@127.0.0.1:{lport}" and c["Cseq"] == 1
        assert 3590 <= c["Expires"] <= 3600 and c["User-agent"] == "sipp-fastcluster"

        r = run("register", keys={"reg_cseq": 2, "expires": 1800})
        assert (r.successful, r.failed) == (n, 0)
        c = contact_of(node, "u17")
        assert c["Cseq"] == 2 and 1790 <= c["Expires"] <= 1800
        assert stats(node, "usrloc:registered_contacts")["usrloc:registered_contacts"] == n

        r = run("register_refused", keys={"reg_cseq": 1}, calls=500)  # an older CSeq
        assert (r.successful, r.failed) == (500, 0), r.stdout
        assert contact_of(node, "u17")["Expires"] > 1700  # not overwritten
        r = run("register", keys={"reg_cseq": 2, "expires": 600}, calls=500)  # same CSeq:
        assert (r.successful, r.failed) == (500, 0), r.stdout  # a retransmission, answered
        assert contact_of(node, "u17")["Expires"] > 1700  # and changes nothing

        r = run("query", calls=200, call_ids="q%u-%p")
        assert (r.successful, r.failed) == (200, 0), r.stdout

        r = run("register", keys={"reg_cseq": 3, "expires": 0})
        assert (r.successful, r.failed) == (n, 0)
        s = stats(node, "usrloc:registered_contacts", "usrloc:tombstones")
        assert s == {"usrloc:registered_contacts": 0, "usrloc:tombstones": n}

        r = run("register", keys={"reg_cseq": 4})
        assert (r.successful, r.failed) == (n, 0)
        r = run("wildcard", keys={"reg_cseq": 5})
        assert (r.successful, r.failed) == (n, 0)
        assert stats(node, "usrloc:registered_contacts")["usrloc:registered_contacts"] == 0

        r = sipp.run("options", target, work, 50, call_ids="o%u-%p")
        assert (r.successful, r.failed) == (50, 0)
        wait_until(lambda: stats(node, "sl:2xx_replies")["sl:2xx_replies"] >= 5 * n + 250,
                   what="2xx counted")
    finally:
        node.stop()


def _request(method: str, port: int, mf: int = 70, ruri: str = "sip:bob@example.com") -> bytes:
    return (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{method}"
            f"\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
            f"Call-ID: {method}-{port}\r\nCSeq: 1 {method}\r\nMax-Forwards: {mf}\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _ask(sock: socket.socket, data: bytes, to: tuple) -> tuple[str, tuple]:
    sock.sendto(data, to)
    reply, src = sock.recvfrom(65535)
    return reply.decode(), src


def test_other_methods_fuzz_and_survival(tmp_path) -> None:
    node = Node(tmp_path, workers=2).start()
    try:
        pids = sorted(p["PID"] for p in node.mi("ps")["Processes"])
        to = ("127.0.0.1", node.sip_port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
            port = s.getsockname()[1]
            # an INVITE goes to the proxy: bob@example.com never registered
            assert _ask(s, _request("INVITE", port), to)[0].startswith("SIP/2.0 404")
            assert _ask(s, _request("FOO", port), to)[0].startswith("SIP/2.0 404")  # the same
            assert _ask(s, _request("MESSAGE", port, mf=0), to)[0].startswith("SIP/2.0 483")
            reply, _ = _ask(s, _request("OPTIONS", port, ruri="sip:127.0.0.1"), to)
            assert reply.startswith("SIP/2.0 200") and "Allow:" in reply
            # thousands of malformed datagrams: garbage and mutated requests
            rng = random.Random(7)
            good = _request("REGISTER", port).replace(
                b"Content-Length", b"Contact: <sip:x@1.2.3.4>\r\nContent-Length")
            for i in range(3000):
                if i % 3 == 0:
                    blob = os.urandom(rng.randrange(1, 1500))
                else:
                    b = bytearray(good)
                    for _ in range(rng.randrange(1, 8)):
                        b[rng.randrange(len(b))] = rng.randrange(256)
                    blob = bytes(b[:rng.randrange(20, len(b) + 1)])
                s.sendto(blob, to)
            s.settimeout(0.2)
            try:
                while True:
                    s.recvfrom(65535)
            except socket.timeout:
                pass
            s.settimeout(5)
            reply, _ = _ask(s, _request("OPTIONS", port, ruri="sip:127.0.0.1"), to)
            assert reply.startswith("SIP/2.0 200")
        assert sorted(p["PID"] for p in node.mi("ps")["Processes"]) == pids  # nobody died
        bad = stats(node, "core:bad_msgs")["core:bad_msgs"]
        assert bad > 500
    finally:
        node.stop()


def test_ipv4_and_ipv6_listeners_reply_from_the_socket_used(tmp_path) -> None:
    p4, p6 = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    node = Node(tmp_path, workers=2,
                settings={"sip": {"listen": f"udp:127.0.0.1:{p4},udp:[::1]:{p6}"}}).start()
    try:
        for family, host, port in ((socket.AF_INET, "127.0.0.1", p4),
                                   (socket.AF_INET6, "::1", p6)):
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((host, 0))
                s.settimeout(5)
                me = s.getsockname()[1]
                ruri = f"sip:[{host}]" if ":" in host else f"sip:{host}"  # RFC 5118 §4.2
                reply, src = _ask(s, _request("OPTIONS", me, ruri=ruri), (host, port))
                assert reply.startswith("SIP/2.0 200") and src[1] == port
        sockets = {c["Socket"] for c in []} | {l for l in ("udp:127.0.0.1", "udp:[::1]")}
        assert sockets
    finally:
        node.stop()


def test_contacts_expire_in_the_timer(tmp_path) -> None:
    node = Node(tmp_path, workers=1, settings={"usrloc": {"min_expires": 1}}).start()
    try:
        r = sipp.run("register", ("127.0.0.1", node.sip_port), tmp_path / "sipp", 200,
                     keys={"user": "e", "reg_cseq": 1, "expires": 2})
        assert (r.successful, r.failed) == (200, 0)
        assert stats(node, "usrloc:registered_contacts")["usrloc:registered_contacts"] == 200
        wait_until(lambda: stats(node, "usrloc:registered_contacts")[
            "usrloc:registered_contacts"] == 0, timeout=6, what="expiry")
        wait_until(lambda: stats(node, "usrloc:expired_contacts")[
            "usrloc:expired_contacts"] == 200, what="expiry counted")
    finally:
        node.stop()


def test_reuseport_dispatch(tmp_path) -> None:
    node = Node(tmp_path, workers=2, settings={"sip": {"dispatch": "reuseport"}}).start()
    try:
        r = sipp.run("register", ("127.0.0.1", node.sip_port), tmp_path / "sipp", 500,
                     keys={"user": "r", "reg_cseq": 1, "expires": 300})
        assert (r.successful, r.failed) == (500, 0), r.stdout
        assert stats(node, "usrloc:registered_contacts")["usrloc:registered_contacts"] == 500
    finally:
        node.stop()
