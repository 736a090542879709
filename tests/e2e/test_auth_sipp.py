"""Digest authentication on real nodes with real traffic: sipp's [authentication] for
the challenge, the answer and refreshes within the nonce's life, wrong passwords up to
the 403; raw UDP phones for SHA-256, replays, and a nonce of node 1 answered to node 2.
(sipp 3.6 only speaks MD5 and gives up on a SHA-256 first challenge, so its nodes
offer MD5.)"""
from __future__ import annotations

import socket
import time

import pytest

from fastcluster.services.sip import subscribers
from tests.support import sipp
from tests.support.nodes import Node, start_cluster, wait_synced, wait_until
from tests.support.registrar import authorization, challenges

pytestmark = pytest.mark.sipp
MD5_ONLY = {"auth": {"enable": "yes", "algorithms": "MD5"}}


@pytest.fixture(scope="module", autouse=True)
def need_sipp() -> None:
    if not sipp.available():
        pytest.fail("sipp is not installed: scripts/test installs it (Debian: sip-tester)")


def stats(node: Node, *names: str) -> dict[str, int]:
    return node.mi("get_statistics", statistics=list(names))


def test_challenge_answer_and_refreshes_with_sipp(tmp_path) -> None:
    n = 2000
    node = Node(tmp_path, workers=2, settings=MD5_ONLY)
    subscribers.add_users(node.db_path, ((f"s{i}@example.com", "secret") for i in range(n)))
    node.start()
    try:
        users = sipp.users_file(tmp_path / "users.csv", "s", n, "secret")
        r = sipp.run("register_auth", ("127.0.0.1", node.sip_port), tmp_path / "sipp", n,
                     rate=2000, keys={"expires": 600}, call_ids="auth%u-%p",
                     extra=["-inf", str(users)])
        assert (r.successful, r.failed) == (n, 0), r.stdout
        names = ("auth:accepted", "auth:challenges", "auth:retransmissions", "auth:failed",
                 "usrloc:registered_contacts", "registrar:accepted_regs")

        def counted() -> bool:  # every worker's counters flushed (on its beat)
            s = stats(node, *names)
            # a loaded machine makes sipp retransmit now and then: a retransmitted first
            # REGISTER is challenged again, a retransmitted answer is answered again
            return (s["auth:accepted"] == 4 * n and s["auth:challenges"] >= n
                    and s["auth:failed"] == 0 and s["usrloc:registered_contacts"] == n
                    and s["registrar:accepted_regs"] == 4 * n + s["auth:retransmissions"])

        wait_until(counted, what="the answer and 3 refreshes per phone accepted")
    finally:
        node.stop()


def test_wrong_password_is_403_after_retries_with_sipp(tmp_path) -> None:
    n = 300
    node = Node(tmp_path, workers=2, settings=MD5_ONLY)
    subscribers.add_users(node.db_path, ((f"w{i}@example.com", "right") for i in range(n)))
    node.start()
    try:
        users = sipp.users_file(tmp_path / "users.csv", "w", n, "wrong")
        r = sipp.run("register_auth_wrong", ("127.0.0.1", node.sip_port), tmp_path / "sipp",
                     n, rate=1000, keys={"expires": 600}, call_ids="wrong%u-%p",
                     extra=["-inf", str(users)])
        assert (r.successful, r.failed) == (n, 0), r.stdout
        names = ("auth:forbidden", "auth:failed", "auth:challenges", "auth:accepted",
                 "usrloc:registered_contacts")

        def counted() -> bool:
            s = stats(node, *names)
            return (s["auth:challenges"] >= n  # more if sipp retransmitted a first REGISTER
                    and (s["auth:forbidden"], s["auth:failed"], s["auth:accepted"],
                         s["usrloc:registered_contacts"]) == (n, 2 * n, 0, 0))

        wait_until(counted, what="two new challenges, then 403, per phone")
    finally:
        node.stop()


class Phone:
    """A UDP phone on loopback that speaks digest with our test helper."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.cseq = 0

    def request(self, to: tuple[str, int], auth: str = "", contact: str = "",
                callid: str = "") -> bytes:
        self.cseq += 1
        contact = contact or f"<sip:{self.user}@127.0.0.1:{self.port}>"
        return (f"REGISTER sip:example.com SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{self.cseq};rport\r\n"
                f"From: <sip:{self.user}@example.com>;tag=p\r\n"
                f"To: <sip:{self.user}@example.com>\r\n"
                f"Call-ID: {callid or self.user + '-phone'}\r\nCSeq: {self.cseq} REGISTER\r\n"
                f"Contact: {contact}\r\nMax-Forwards: 70\r\nExpires: 600\r\n"
                + (auth + "\r\n" if auth else "") + "Content-Length: 0\r\n\r\n").encode()

    def ask(self, data: bytes, to: tuple[str, int]) -> str:
        self.sock.sendto(data, to)
        return self.sock.recvfrom(65535)[0].decode()

    def close(self) -> None:
        self.sock.close()


def code(reply: str) -> int:
    return int(reply.split(" ", 2)[1])


def test_sha256_replay_and_stale_with_a_udp_phone(tmp_path) -> None:
    node = Node(tmp_path, workers=2, settings={"auth": {"enable": "yes"}})  # SHA-256, MD5
    subscribers.add_users(node.db_path, [("alice@example.com", "wonderland")])
    node.start()
    phone = Phone("alice", "wonderland")
    to = ("127.0.0.1", node.sip_port)
    try:
        reply = phone.ask(phone.request(to), to)
        assert code(reply) == 401
        ch = challenges(reply)
        assert [c["algorithm"] for c in ch] == ["SHA-256", "MD5"]
        answer = phone.request(to, authorization(ch[0], "alice", "wonderland"))
        assert code(phone.ask(answer, to)) == 200
        # the same datagram again (a retransmission whose 200 was lost, or a replay of
        # it): answered again from the table, nothing changes
        assert code(phone.ask(answer, to)) == 200
        # the captured credentials on another Contact: a stale challenge
        forged = phone.request(to, authorization(ch[0], "alice", "wonderland"),
                               contact="<sip:mallory@192.0.2.66:5060>")
        reply = phone.ask(forged, to)
        assert code(reply) == 401 and challenges(reply)[0]["stale"] == "true"
        # and with the original Call-ID and CSeq too (only the Contact changed)
        same_cseq = answer.replace(f"<sip:alice@127.0.0.1:{phone.port}>".encode(),
                                   b"<sip:mallory@192.0.2.66:5060>")
        assert code(phone.ask(same_cseq, to)) == 401
        (contact,) = node.mi("ul_show_contact", aor="alice@example.com")["Contacts"]
        assert contact["Contact"] == f"sip:alice@127.0.0.1:{phone.port}"
        # the next count of the same nonce is a fine refresh
        nxt = phone.request(to, authorization(ch[0], "alice", "wonderland", nc=2))
        assert code(phone.ask(nxt, to)) == 200
        wait_until(lambda: stats(node, "auth:replayed_nonces", "auth:retransmissions") ==
                   {"auth:replayed_nonces": 2, "auth:retransmissions": 1},
                   what="replays and the retransmission counted")
    finally:
        phone.close()
        node.stop()


def test_nonce_from_node_1_answered_to_node_2(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2, workers=1, settings={
        "auth": {"enable": "yes"}, "clusterer": {"seed_fallback_interval_s": 0.3}},
        before_start=lambda n: subscribers.add_users(n.db_path, [("bob@example.com", "pw")]))
    phone = Phone("bob", "pw")
    try:
        wait_synced(nodes)
        to1, to2 = ("127.0.0.1", nodes[0].sip_port), ("127.0.0.1", nodes[1].sip_port)
        reply = phone.ask(phone.request(to1), to1)
        assert code(reply) == 401
        ch = challenges(reply)[0]
        reply = phone.ask(phone.request(to2, authorization(ch, "bob", "pw")), to2)
        assert code(reply) == 200, reply
        wait_until(lambda: stats(nodes[1], "auth:accepted")["auth:accepted"] == 1,
                   what="accepted by node 2")
        wait_until(lambda: stats(nodes[0], "auth:challenges")["auth:challenges"] == 1,
                   what="the challenge counted by node 1")  # flushed on the worker's beat
        # and node 1 holds the binding too (replicated)
        wait_until(lambda: len(nodes[0].mi("ul_show_contact", aor="bob@example.com")
                               ["Contacts"]) == 1, what="replicated to node 1")
    finally:
        phone.close()
        for n in nodes:
            n.stop()


def test_nonce_of_a_node_with_another_secret_is_refused(tmp_path) -> None:
    a = Node(tmp_path, node_id=1, workers=1, settings={"auth": {"enable": "yes"}})
    b = Node(tmp_path, node_id=2, workers=1, settings={
        "auth": {"enable": "yes"}, "clusterer": {"secret": "another-secret"}})
    for n in (a, b):
        subscribers.add_users(n.db_path, [("carol@example.com", "pw")])
    a.start()
    b.start()
    phone = Phone("carol", "pw")
    try:
        to_a, to_b = ("127.0.0.1", a.sip_port), ("127.0.0.1", b.sip_port)
        ch = challenges(phone.ask(phone.request(to_a), to_a))[0]
        assert code(phone.ask(phone.request(to_b, authorization(ch, "carol", "pw")),
                              to_b)) == 401
        wait_until(lambda: stats(b, "auth:bad_nonces")["auth:bad_nonces"] == 1,
                   what="bad nonce counted")
    finally:
        phone.close()
        a.stop()
        b.stop()
