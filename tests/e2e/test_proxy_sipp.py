"""Calls through a real node's proxy, with sipp as caller (UAC) and callee (UAS):
basic calls, CANCEL, busy, no answer (Timer C), forking, retransmissions in both
directions, malformed replies, and a worker killed with SIGKILL during calls."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from tests.support import sipp
from tests.support.nodes import Node, free_port, wait_until
from tests.support.pyuas import PyUac, PyUas

pytestmark = pytest.mark.sipp

DOMAIN = "example.com"
FAST = {"t1_ms": 50, "t4_ms": 500}  # transactions linger 64*T1 = 3.2 s


@pytest.fixture(scope="module", autouse=True)
def need_sipp() -> None:
    if not sipp.available():
        pytest.fail("sipp is not installed: scripts/test installs it (Debian: sip-tester)")


def start(tmp_path, workers: int = 1, **proxy) -> Node:
    # One worker unless a test needs two: two workers on one socket may relay a call's
    # 180 and 200 at once and the 180 can arrive last, which UDP allows and the proxy
    # handles (tests/unit/test_proxy.py), but sipp counts as a failed call.
    return Node(tmp_path, workers=workers, settings={"proxy": {**FAST, **proxy}}).start()


def stats(node: Node, *names: str) -> dict[str, int]:
    return node.mi("get_statistics", statistics=list(names))


def stat(node: Node, name: str) -> int:
    return stats(node, name)[name]


def register(node: Node, work, port: int, user: str = "bob", q: str = "1.0",
             contact_host: str = "127.0.0.1") -> None:
    r = sipp.run("register_user", ("127.0.0.1", node.sip_port), work, 1,
                 keys={"user": user, "domain": DOMAIN, "expires": 600, "q": q,
                       "contact_host": contact_host}, local_port=port,
                 call_ids=f"reg-{user}-{port}-%u")
    assert r.successful == 1, r.stdout


def uac(node: Node, work, scenario: str, calls: int, rate: int = 50,
        extra: list[str] | None = None) -> sipp.SippResult:
    return sipp.run(scenario, ("127.0.0.1", node.sip_port), work, calls, rate=rate,
                    keys={"callee": "bob", "domain": DOMAIN}, call_ids="c%u-%p",
                    extra=["-d", "20", "-trace_err"] + (extra or []), timeout_s=60)


def drained(node: Node, timeout: float = 20) -> None:
    """Every transaction ended and left the table (no stuck ones)."""
    try:
        wait_until(lambda: stat(node, "tm:inuse_transactions") == 0, timeout=timeout,
                   what="transaction table empty", step=0.2)
    except AssertionError as exc:  # say which ones stayed
        raise AssertionError(f"{exc}; left: {node.mi('t_list')} {node.mi('t_stats')}") from None


def test_basic_calls_then_the_table_empties(tmp_path) -> None:
    node = start(tmp_path)
    try:
        work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
        register(node, work, port)
        uas = sipp.Uas("uas", port, work, 100)
        r = uac(node, work, "uac", 100)
        u = uas.finish()
        assert (r.successful, r.failed) == (100, 0), r.stdout
        assert (u.successful, u.failed) == (100, 0), uas.errors()
        wait_until(lambda: stat(node, "tm:2xx_transactions") == 200, what="counters")
        s = stats(node, "tm:UAS_transactions", "tm:UAC_transactions", "core:fwd_requests",
                  "core:rcv_requests_invite", "core:rcv_requests_bye", "proxy:lookups")
        assert s == {"tm:UAS_transactions": 200, "tm:UAC_transactions": 200,
                     "core:fwd_requests": 100, "core:rcv_requests_invite": 100,
                     "core:rcv_requests_bye": 100, "proxy:lookups": 100}
        listed = node.mi("t_list", limit=5)["Transactions"]
        assert listed and {t["method"] for t in listed} <= {"INVITE", "BYE"}
        drained(node)
        assert node.mi("t_stats")["current"] == 0
    finally:
        node.stop()


def test_cancel_before_answer(tmp_path) -> None:
    node = start(tmp_path)
    try:
        work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
        register(node, work, port)
        uas = sipp.Uas("uas_ring_cancel", port, work, 20)
        r = uac(node, work, "uac_cancel", 20)
        u = uas.finish()
        assert (r.successful, r.failed) == (20, 0), r.stdout
        assert (u.successful, u.failed) == (20, 0), uas.errors()
        wait_until(lambda: stat(node, "core:rcv_requests_cancel") == 20, what="counted")
        drained(node)
    finally:
        node.stop()


def test_busy(tmp_path) -> None:
    node = start(tmp_path)
    try:
        work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
        register(node, work, port)
        uas = sipp.Uas("uas_busy", port, work, 20)
        r = uac(node, work, "uac_busy", 20)
        u = uas.finish()
        assert (r.successful, r.failed) == (20, 0), r.stdout
        assert (u.successful, u.failed) == (20, 0), uas.errors()
        wait_until(lambda: stat(node, "tm:4xx_transactions") == 20, what="486s counted")
    finally:
        node.stop()


def test_reply_retransmissions(tmp_path) -> None:
    """A non-2xx final sent again is ACKed again and never reaches the caller twice;
    a 2xx sent again goes end to end (the caller ACKs it again)."""
    node = start(tmp_path)
    callee = PyUas("busy_twice")
    try:
        assert callee.register(("127.0.0.1", node.sip_port), f"bob@{DOMAIN}").endswith("200 OK")
        callee.start()
        work = tmp_path / "sipp"
        r = uac(node, work, "uac_busy", 10, rate=10)
        assert (r.successful, r.failed) == (10, 0), r.stdout
        wait_until(lambda: callee.completed == 10, what="both ACKs of every call")
        assert callee.count("ACK") == 20 and callee.count("INVITE") == 10
        wait_until(lambda: stat(node, "core:rcv_replies_4xx") == 20, what="counted")
        assert stats(node, "tm:4xx_transactions", "tm:relayed_replies") == {
            "tm:4xx_transactions": 10, "tm:relayed_replies": 10}
        # a 2xx retransmission goes end to end, and the caller ACKs it again
        twice = PyUas("answer_twice")
        try:
            assert twice.register(("127.0.0.1", node.sip_port), f"carol@{DOMAIN}",
                                  callid="reg-carol").endswith("200 OK")
            twice.start()
            r = sipp.run("uac", ("127.0.0.1", node.sip_port), work, 10, rate=10,
                         keys={"callee": "carol", "domain": DOMAIN}, call_ids="r%u-%p",
                         extra=["-d", "20"], timeout_s=60)
            assert (r.successful, r.failed) == (10, 0), r.stdout
            wait_until(lambda: twice.completed == 10, what="calls ended")
            assert twice.count("INVITE") == 10 and twice.count("BYE") == 10
        finally:
            twice.stop()
        # both 200s of every INVITE and the 200 of the BYE went up; a 180 overtaken by
        # its 200 (two workers) is dropped, as it must be once the branch is answered
        wait_until(lambda: stat(node, "core:rcv_replies_2xx") == 30, what="2xx counted")
        assert 10 + 30 <= stat(node, "tm:relayed_replies") <= 10 + 40
        drained(node)
    finally:
        callee.stop()
        node.stop()


def test_no_answer_timer_c_408_to_the_caller_cancel_to_the_callee(tmp_path) -> None:
    node = start(tmp_path, invite_timeout_s=1)
    try:
        work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
        register(node, work, port)
        uas = sipp.Uas("uas_ring_cancel", port, work, 10)
        r = uac(node, work, "uac_timeout", 10, rate=10)
        u = uas.finish()
        assert (r.successful, r.failed) == (10, 0), r.stdout
        assert (u.successful, u.failed) == (10, 0), uas.errors()
        wait_until(lambda: stat(node, "tm:local_replies") >= 10, what="408s counted")
        drained(node)
    finally:
        node.stop()


def test_forking_to_two_contacts_one_answers(tmp_path) -> None:
    node = start(tmp_path)
    try:
        work = tmp_path / "sipp"
        answers, rings = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        register(node, work, answers)
        register(node, work, rings)
        assert len(node.mi("ul_show_contact", aor=f"bob@{DOMAIN}")["Contacts"]) == 2
        ua = sipp.Uas("uas", answers, work, 10)
        ub = sipp.Uas("uas_ring_cancel", rings, work, 10)
        r = uac(node, work, "uac", 10, rate=5)
        a, b = ua.finish(), ub.finish()
        assert (r.successful, r.failed) == (10, 0), r.stdout
        assert (a.successful, a.failed) == (10, 0), ua.errors()
        assert (b.successful, b.failed) == (10, 0), ub.errors()
        wait_until(lambda: stat(node, "tm:UAC_transactions") == 30, what="branches")
        drained(node)
    finally:
        node.stop()


def test_retransmitted_invite_is_absorbed(tmp_path) -> None:
    """The caller sends every INVITE twice (a Python caller: sipp gives up when a
    response comes between two sends); the callee sees it once, the caller gets the
    100 Trying again."""
    node = start(tmp_path)
    caller = PyUac()
    try:
        work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
        register(node, work, port)
        uas = sipp.Uas("uas", port, work, 10)
        for n in range(10):
            caller.call(("127.0.0.1", node.sip_port), f"bob@{DOMAIN}", n, copies=2)
        u = uas.finish()
        assert (u.successful, u.failed) == (10, 0), uas.errors()
        wait_until(lambda: stat(node, "core:rcv_requests_invite") == 20, what="counted")
        # one INVITE and one BYE per call went to the callee
        assert stat(node, "tm:UAC_transactions") == 20
        assert stat(node, "tm:absorbed_retransmissions") == 10
        assert caller.received.count("100 INVITE") >= 10
    finally:
        caller.close()
        node.stop()


def test_malformed_replies_are_counted_and_dropped(tmp_path) -> None:
    node = start(tmp_path)
    try:
        target = ("127.0.0.1", node.sip_port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(50):
                s.sendto(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKfc00\r\n"
                         b"CSeq: %d INVITE\r\n\r\n" % i, target)
                s.sendto(b"SIP/2.0 2000 Nope\r\n\r\n", target)
        wait_until(lambda: stat(node, "core:err_replies") == 100, what="counted")
        work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
        register(node, work, port)
        uas = sipp.Uas("uas", port, work, 5)
        r = uac(node, work, "uac", 5)
        assert (r.successful, r.failed) == (5, 0) and uas.finish().successful == 5
        assert len(node.mi("ps")["Processes"]) == 4  # nothing crashed
    finally:
        node.stop()


def test_worker_killed_during_calls_leaves_no_stuck_transaction(tmp_path) -> None:
    node = start(tmp_path, workers=2)
    try:
        work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
        register(node, work, port)
        uas = sipp.Uas("uas", port, work, 100000, timeout_s=40)
        result: dict[str, sipp.SippResult] = {}

        def load() -> None:
            result["r"] = uac(node, work, "uac", 800, rate=200)

        th = threading.Thread(target=load)
        th.start()
        time.sleep(1.5)
        victim = next(p["PID"] for p in node.mi("ps")["Processes"]
                      if p["Type"] == "sip worker 1")
        os.kill(victim, signal.SIGKILL)
        th.join(90)
        r = result["r"]
        assert r.successful + r.failed == 800 and r.successful >= 600, r.stdout
        wait_until(lambda: len([p for p in node.mi("ps")["Processes"]
                                if p["Role"] == "sip"]) == 2, what="worker respawned")
        # calls the dead worker held end by their timers; none stays
        drained(node, timeout=30)
        again = uac(node, work, "uac", 50)
        # two workers: a 180 overtaken by its 200 fails a call in sipp's eyes (see start)
        assert again.successful >= 48 and again.successful + again.failed == 50, \
            again.stdout
        uas.proc.send_signal(signal.SIGTERM)
        uas.finish(10)
    finally:
        node.stop()
