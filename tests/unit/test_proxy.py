"""The proxy of a SIP worker (services.sip.proxy) over in-memory tables: call flows,
CANCEL, forking, refusals, retransmissions, home-node routing, and the timers of the
timer process (services.sip.tm_timer) on the same tables."""
from __future__ import annotations

import time
import types

import numpy as np
import pytest

from fastcluster.core.sip import parse_message
from fastcluster.core.stats import INDEX
from fastcluster.services.sip.tm_timer import TmTimer
from fastcluster.shm import control as CT
from fastcluster.shm import table as T
from fastcluster.shm.hashing import group_hash_of
from tests.support.registrar import LISTEN, Harness, register

CALLER = ("192.0.2.10", 5070)
BOB1 = ("203.0.113.21", 5081)
BOB2 = ("203.0.113.22", 5082)
PEER = ("192.0.2.2", 5070)  # node 2's SIP listener


def invite(n: int = 1, ruri: str = "sip:bob@example.com", extra: str = "",
           branch: str | None = None, mf: int = 70, method: str = "INVITE") -> bytes:
    branch = branch or f"z9hG4bK-c{n}"
    return (f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch={branch};rport\r\n"
            f"From: <sip:alice@example.com>;tag=a{n}\r\nTo: <sip:bob@example.com>\r\n"
            f"Call-ID: call-{n}\r\nCSeq: 1 {method}\r\n{extra}"
            f"Contact: <sip:alice@{CALLER[0]}:{CALLER[1]}>\r\nMax-Forwards: {mf}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n").encode()


def response_to(request: bytes, status: int, reason: str = "X", tag: str | None = "b1",
                contact: tuple = BOB1, method: str | None = None) -> bytes:
    """What a UAS answers to a request it received (Vias, Record-Route echoed)."""
    msg = parse_message(request)
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in msg.vias]
    lines += [f"Record-Route: {v}" for v in msg.get_all("record-route")]
    to = msg.to if tag is None or "tag=" in msg.to else f"{msg.to};tag={tag}"
    lines += [f"From: {msg.from_}", f"To: {to}", f"Call-ID: {msg.call_id}",
              f"CSeq: {msg.cseq_num} {method or msg.cseq_method}",
              f"Contact: <sip:bob@{contact[0]}:{contact[1]}>", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


class Proxy(Harness):
    def __init__(self, contacts: list[tuple] | None = None, **kw) -> None:
        super().__init__(tx_capacity=kw.pop("tx_capacity", 1000), **kw)
        for i, c in enumerate(contacts if contacts is not None else [BOB1]):
            q = f";q={c[2]}" if len(c) > 2 else ""
            self.send(register(aor="bob@example.com", callid=f"reg-{i}",
                               contacts=[f"<sip:bob@{c[0]}:{c[1]}>{q}"], expires=600),
                      src=c[:2])
        self.sock.sent.clear()

    def feed(self, data: bytes, src: tuple) -> list[tuple[bytes, tuple]]:
        before = len(self.sock.sent)
        self.app.handle(data, src, self.listener)
        return self.sock.sent[before:]

    def stat(self, name: str) -> int:
        return self.counts[INDEX[name]]


def only(out: list, to: tuple) -> list[bytes]:
    return [d for d, a in out if a == to]


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def test_basic_call_through_the_proxy() -> None:
    p = Proxy()
    out = p.feed(invite(), CALLER)
    (trying,), (fwd,) = only(out, CALLER), only(out, BOB1)
    assert status(trying) == 100
    f = parse_message(fwd)
    assert f.ruri == f"sip:bob@{BOB1[0]}:{BOB1[1]}" and f.max_forwards == 69
    assert f.vias[0].startswith(f"SIP/2.0/UDP {LISTEN[0]}:{LISTEN[1]};branch=z9hG4bKfc")
    assert f.vias[1].startswith(f"SIP/2.0/UDP {CALLER[0]}")
    assert f.get_all("record-route") == [f"<sip:{LISTEN[0]}:{LISTEN[1]};lr>"]
    assert f.body == b"v=0\n"
    for code in (100, 180, 200):  # 100 is absorbed, the others forwarded without our Via
        out = p.feed(response_to(fwd, code), BOB1)
        got = only(out, CALLER)
        if code == 100:
            assert got == []
        else:
            r = parse_message(got[0])
            assert r.status == code and len(r.vias) == 1 and CALLER[0] in r.vias[0]
    route = f"Route: <sip:{LISTEN[0]}:{LISTEN[1]};lr>\r\n"
    ack = invite(branch="z9hG4bK-ack", extra=route, method="ACK",
                 ruri=f"sip:bob@{BOB1[0]}:{BOB1[1]}").replace(
        b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=b1")
    (a,) = only(p.feed(ack, CALLER), BOB1)
    a = parse_message(a)  # end to end: stateless, our Route gone, a branch of ours on top
    assert a.method == "ACK" and not a.get_all("route") and "z9hG4bKfs" in a.vias[0]
    bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(
        b"z9hG4bK-ack", b"z9hG4bK-bye")
    (b,) = only(p.feed(bye, CALLER), BOB1)
    assert parse_message(b).method == "BYE" and "z9hG4bKfc" in parse_message(b).vias[0]
    (ok,) = only(p.feed(response_to(b, 200), BOB1), CALLER)
    assert status(ok) == 200
    assert p.stat("tm:UAS_transactions") == 2 and p.stat("tm:2xx_transactions") == 2
    assert p.stat("core:fwd_requests") == 1 and p.stat("proxy:lookups") == 1


def test_cancel_before_answer() -> None:
    p = Proxy()
    inv = invite(2)
    (fwd,) = only(p.feed(inv, CALLER), BOB1)
    p.feed(response_to(fwd, 180), BOB1)
    cancel = inv.replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    out = p.feed(cancel, CALLER)
    (ok,), (down,) = only(out, CALLER), only(out, BOB1)
    assert status(ok) == 200 and parse_message(ok).cseq_method == "CANCEL"
    c = parse_message(down)
    f = parse_message(fwd)
    assert c.method == "CANCEL" and c.vias == [f.vias[0]] and c.ruri == f.ruri
    assert only(p.feed(response_to(down, 200), BOB1), CALLER) == []  # our CANCEL's 200
    out = p.feed(response_to(fwd, 487, "Request Terminated"), BOB1)
    (up,), (ack,) = only(out, CALLER), only(out, BOB1)
    assert status(up) == 487
    ack = parse_message(ack)
    assert ack.method == "ACK" and ack.vias == [f.vias[0]] and "tag=b1" in ack.to
    caller_ack = cancel.replace(b"CANCEL sip", b"ACK sip").replace(b"1 CANCEL", b"1 ACK")
    caller_ack = caller_ack.replace(b"To: <sip:bob@example.com>",
                                    b"To: <sip:bob@example.com>;tag=b1")
    assert p.feed(caller_ack, CALLER) == []  # hop by hop: absorbed
    # a CANCEL that matches nothing
    stray = cancel.replace(b"z9hG4bK-c2", b"z9hG4bK-nothing")
    (r,) = only(p.feed(stray, CALLER), CALLER)
    assert status(r) == 481


def test_busy_is_acked_hop_by_hop_and_forwarded() -> None:
    p = Proxy()
    (fwd,) = only(p.feed(invite(3), CALLER), BOB1)
    out = p.feed(response_to(fwd, 486, "Busy Here"), BOB1)
    assert status(only(out, CALLER)[0]) == 486
    assert parse_message(only(out, BOB1)[0]).method == "ACK"
    # the callee retransmits its 486: ACKed again, not forwarded again
    out = p.feed(response_to(fwd, 486, "Busy Here"), BOB1)
    assert only(out, CALLER) == [] and parse_message(only(out, BOB1)[0]).method == "ACK"
    assert p.stat("tm:4xx_transactions") == 1


def test_parallel_forking_first_2xx_wins_the_other_is_cancelled() -> None:
    p = Proxy([BOB1, BOB2])
    out = p.feed(invite(4), CALLER)
    (f1,), (f2,) = only(out, BOB1), only(out, BOB2)
    assert parse_message(f1).vias[0] != parse_message(f2).vias[0]
    p.feed(response_to(f2, 180, tag="b2", contact=BOB2), BOB2)
    out = p.feed(response_to(f1, 200, contact=BOB1), BOB1)
    assert status(only(out, CALLER)[0]) == 200
    (c,) = only(out, BOB2)
    assert parse_message(c).method == "CANCEL"
    out = p.feed(response_to(f2, 487, tag="b2", contact=BOB2), BOB2)
    assert only(out, CALLER) == []  # the final went up already


@pytest.mark.parametrize("finals, want", [
    ((486, 404), 486),  # same rank: the first one
    ((404, 401), 401),  # 401 is preferred in the 4xx class
    ((503, 480), 480),
    ((503, 503), 500),  # a 503 is never passed upstream
    ((302, 486), 302),  # lowest class
])
def test_response_context_picks_the_best(finals, want) -> None:
    p = Proxy([BOB1, BOB2])
    out = p.feed(invite(5), CALLER)
    fwd = {BOB1: only(out, BOB1)[0], BOB2: only(out, BOB2)[0]}
    assert only(p.feed(response_to(fwd[BOB1], finals[0]), BOB1), CALLER) == []
    (up,) = only(p.feed(response_to(fwd[BOB2], finals[1], tag="b2"), BOB2), CALLER)
    assert status(up) == want


def test_6xx_cancels_the_other_branches() -> None:
    p = Proxy([BOB1, BOB2])
    out = p.feed(invite(6), CALLER)
    f1, f2 = only(out, BOB1)[0], only(out, BOB2)[0]
    p.feed(response_to(f1, 180), BOB1)
    out = p.feed(response_to(f2, 603, "Decline", tag="b2"), BOB2)
    assert only(out, CALLER) == [] and parse_message(only(out, BOB1)[0]).method == "CANCEL"
    (up,) = only(p.feed(response_to(f1, 487), BOB1), CALLER)
    assert status(up) == 603


def test_serial_forking_by_q() -> None:
    p = Proxy([BOB1 + ("1.0",), BOB2 + ("0.5",)], settings={"proxy.forking": "serial"})
    out = p.feed(invite(7), CALLER)
    (f1,) = only(out, BOB1)
    assert only(out, BOB2) == []
    out = p.feed(response_to(f1, 486), BOB1)  # the first group failed: the next one
    assert only(out, CALLER) == []
    (f2,) = only(out, BOB2)
    (ok,) = only(p.feed(response_to(f2, 200, tag="b2", contact=BOB2), BOB2), CALLER)
    assert status(ok) == 200


def test_retransmitted_invite_gets_the_last_provisional_again() -> None:
    p = Proxy()
    inv = invite(8)
    (fwd,) = only(p.feed(inv, CALLER), BOB1)
    out = p.feed(inv, CALLER)
    assert [status(d) for d in only(out, CALLER)] == [100] and only(out, BOB1) == []
    p.feed(response_to(fwd, 180), BOB1)
    out = p.feed(inv, CALLER)
    assert [status(d) for d in only(out, CALLER)] == [180] and only(out, BOB1) == []
    assert p.stat("tm:absorbed_retransmissions") == 2 and p.stat("tm:UAC_transactions") == 1


def test_non_invite_and_rfc2543_requests_are_stateful_too() -> None:
    p = Proxy()
    msg = invite(9, method="MESSAGE", branch="old-style-branch")
    (fwd,) = only(p.feed(msg, CALLER), BOB1)
    assert only(p.feed(msg, CALLER), BOB1) == []  # matched by the RFC 2543 fields
    (ok,) = only(p.feed(response_to(fwd, 200), BOB1), CALLER)
    out = p.feed(msg, CALLER)  # after the final: the final again
    assert only(out, CALLER) == [ok]


@pytest.mark.parametrize("data, code, counter", [
    (invite(10, ruri="sip:nobody@example.com"), 404, "proxy:not_found"),
    (invite(11, mf=0), 483, "core:too_many_hops"),
    (invite(12, extra="Proxy-Require: foo\r\n"), 420, None),
    (invite(13, ruri="tel:+15551234"), 416, "proxy:unroutable"),
])
def test_refusals(data: bytes, code: int, counter: str | None) -> None:
    p = Proxy()
    (r,) = only(p.feed(data, CALLER), CALLER)
    assert status(r) == code
    if counter:
        assert p.stat(counter) == 1
    if code == 420:
        assert b"Unsupported: foo" in r
    # the ACK of such a reply is absorbed (it carries our stateless tag)
    tag = parse_message(r).to.split("tag=")[1]
    ack = data.replace(b"INVITE ", b"ACK ", 1).replace(b"1 INVITE", b"1 ACK").replace(
        b"To: <sip:bob@example.com>", f"To: <sip:bob@example.com>;tag={tag}".encode())
    assert p.feed(ack, CALLER) == []


def test_domains_relaying_and_loops() -> None:
    p = Proxy(settings={"sip.domains": "example.com"})
    (r,) = only(p.feed(invite(14, ruri="sip:carol@198.51.100.9:5090"), CALLER), CALLER)
    assert status(r) == 403 and p.stat("proxy:refused_foreign") == 1
    p = Proxy(settings={"sip.domains": "example.com", "proxy.relay_foreign": "yes"})
    out = p.feed(invite(15, ruri="sip:carol@198.51.100.9:5090"), CALLER)
    (fwd,) = only(out, ("198.51.100.9", 5090))
    assert parse_message(fwd).ruri == "sip:carol@198.51.100.9:5090"
    assert p.stat("proxy:relayed_foreign") == 1
    # our own forwarded request back to us, unchanged: a loop
    (r,) = only(p.feed(fwd.replace(b"sip:carol@198.51.100.9:5090", b"sip:carol@198.51.100.9:5090"),
                       ("198.51.100.9", 5090)), ("198.51.100.9", 5090))
    assert status(r) == 482 and p.stat("proxy:loops") == 1


def test_no_live_contact_is_480(monkeypatch) -> None:
    p = Proxy()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # the contact expired
    (r,) = only(p.feed(invite(16), CALLER), CALLER)
    assert status(r) == 480 and p.stat("proxy:no_contacts") == 1


def test_table_full_is_503_and_too_long_is_513() -> None:
    p = Proxy(tx_capacity=16)
    codes = [status(only(p.feed(invite(100 + i), CALLER), CALLER)[0]) for i in range(17)]
    assert codes == [100] * 16 + [503] and p.stat("tm:refused_table_full") == 1
    p = Proxy()
    big = invite(200, extra="X-Big: " + "x" * 3000 + "\r\n")
    (r,) = only(p.feed(big, CALLER), CALLER)
    assert status(r) == 513 and p.stat("tm:refused_too_long") == 1


def test_replies_not_ours_or_malformed_are_counted_and_dropped() -> None:
    p = Proxy()
    stray = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKx\r\n"
             b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
             b"Content-Length: 0\r\n\r\n")
    assert p.feed(stray, BOB1) == [] and p.stat("core:drop_replies") == 1
    assert p.feed(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n", BOB1) == []
    assert p.feed(b"SIP/2.0 180\r\nCSeq: 1 INVITE\r\n\r\n", BOB1) == []
    assert p.stat("core:err_replies") == 2


def _contact_origin(p: Proxy, origin: int) -> None:
    """Make bob's contact look registered through another node (as replication would)."""
    buf = p.table.buf
    h = buf[:T.HEADER_SIZE].view(np.int64)
    for s in range(int(h[T.H_NSLOTS])):
        key = buf[int(h[T.H_OFF_KEYS]) + 8 * s:int(h[T.H_OFF_KEYS]) + 8 * s + 8].view(
            np.uint64)[0]
        if key > 1:
            base = int(h[T.H_OFF_ROWS]) + s * int(h[T.H_ROW]) + T.ROW_HEAD
            group = buf[base + T.R_GROUP:base + T.R_GROUP + 8].view(np.uint64)[0]
            if group == group_hash_of(b"bob@example.com"):
                buf[base + T.R_ORIGIN:base + T.R_ORIGIN + 2].view(np.uint16)[0] = origin


def test_calls_for_a_contact_of_another_node_go_through_it() -> None:
    p = Proxy()
    _contact_origin(p, 2)
    p.control.publish_view(0, 1, 1, [(1, CT.VIEW_ME | CT.VIEW_UP, 0), (2, CT.VIEW_UP, 0)],
                           [LISTEN, PEER])
    (fwd,) = only(p.feed(invite(20), CALLER), PEER)
    f = parse_message(fwd)
    assert f.ruri == f"sip:bob@{BOB1[0]}:{BOB1[1]}"
    assert f.get_all("route") == [f"<sip:{PEER[0]}:{PEER[1]};lr;fcr={BOB1[0]}:{BOB1[1]};fcs=0>"]
    assert p.stat("proxy:home_routed") == 1
    # node 2 down: straight to the contact
    p.control.publish_view(0, 1, 1, [(1, CT.VIEW_ME | CT.VIEW_UP, 0), (2, 0, 0)],
                           [LISTEN, PEER])
    assert len(only(p.feed(invite(21), CALLER), BOB1)) == 1


def test_a_peer_nodes_hint_is_followed_only_from_a_peer() -> None:
    p = Proxy()
    p.control.publish_view(0, 1, 1, [(1, CT.VIEW_ME | CT.VIEW_UP, 0), (2, CT.VIEW_UP, 0)],
                           [LISTEN, PEER])
    hinted = invite(22, ruri="sip:bob@10.9.9.9:5060",
                    extra=f"Route: <sip:{LISTEN[0]}:{LISTEN[1]};lr;fcr=203.0.113.99:4000;"
                          f"fcs=0>\r\n")
    hinted = hinted.replace(f"{CALLER[0]}:{CALLER[1]}".encode(), f"{PEER[0]}:{PEER[1]}".encode())
    (fwd,) = only(p.feed(hinted, PEER), ("203.0.113.99", 4000))
    assert parse_message(fwd).ruri == "sip:bob@10.9.9.9:5060"
    assert parse_message(fwd).get_all("record-route")
    # the same from anyone else: the hint is ignored (no open relay)
    out = p.feed(hinted.replace(b"z9hG4bK-c22", b"z9hG4bK-c23"), CALLER)
    assert only(out, ("203.0.113.99", 4000)) == []


def timer_for(p: Proxy) -> TmTimer:
    ctx = types.SimpleNamespace(sip=[types.SimpleNamespace(
        index=0, host=LISTEN[0], port=LISTEN[1], sock=p.sock, family=2)])
    timer = types.SimpleNamespace(
        mem=types.SimpleNamespace(transactions=p.transactions, tmrings=p.tmrings,
                                  control=p.control),
        cfg=p.app.worker.cfg, stats=np.zeros(len(INDEX), np.int64), me=T.lock_word(2, 2),
        slot=2, ctx=ctx)
    return TmTimer(timer)


def run_timer(tm: TmTimer, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tm.tick()
        time.sleep(0.005)


def test_timers_retransmit_then_time_out_with_408() -> None:
    p = Proxy(settings={"proxy.t1_ms": "20", "proxy.t2_ms": "80"})
    tm = timer_for(p)
    (fwd,) = only(p.feed(invite(30), CALLER), BOB1)
    p.sock.sent.clear()
    end = time.monotonic() + 3
    while not only(p.sock.sent, CALLER) and time.monotonic() < end:
        run_timer(tm, 0.01)  # Timer A doubles from T1 until Timer B (64*T1)
    to_bob = only(p.sock.sent, BOB1)
    assert 4 <= len(to_bob) <= 7 and all(d == fwd for d in to_bob)
    (r,) = only(p.sock.sent, CALLER)
    assert status(r) == 408 and tm.stats[INDEX["tm:local_replies"]] == 1
    # Timer G repeats the 408 until the caller ACKs; then it stops
    run_timer(tm, 0.2)
    again = only(p.sock.sent, CALLER)
    assert len(again) >= 2 and all(d == r for d in again)
    ack = invite(30, method="ACK").replace(b"To: <sip:bob@example.com>",
                                           b"To: " + parse_message(r).to.encode())
    assert p.feed(ack, CALLER) == []
    p.sock.sent.clear()
    run_timer(tm, 0.2)
    assert only(p.sock.sent, CALLER) == []


def test_timer_c_cancels_a_ringing_branch_and_answers_408() -> None:
    p = Proxy(settings={"proxy.invite_timeout_s": "1", "proxy.t1_ms": "50"})
    tm = timer_for(p)
    (fwd,) = only(p.feed(invite(31), CALLER), BOB1)
    p.feed(response_to(fwd, 180), BOB1)
    p.sock.sent.clear()
    run_timer(tm, 1.3)
    (c,) = [d for d in only(p.sock.sent, BOB1) if parse_message(d).method == "CANCEL"][:1]
    assert [status(d) for d in only(p.sock.sent, CALLER)][:1] == [408]
    out = p.feed(response_to(fwd, 487), BOB1)  # the callee confirms: absorbed, ACKed
    assert only(out, CALLER) == [] and parse_message(only(out, BOB1)[0]).method == "ACK"
    assert parse_message(c).cseq_method == "CANCEL"


def test_transactions_end_and_leave_the_table() -> None:
    p = Proxy(settings={"proxy.t1_ms": "10", "proxy.t4_ms": "50"})
    tm = timer_for(p)
    (fwd,) = only(p.feed(invite(32), CALLER), BOB1)
    p.feed(response_to(fwd, 200), BOB1)
    (fwd,) = only(p.feed(invite(33), CALLER), BOB1)
    p.feed(response_to(fwd, 486), BOB1)
    assert p.transactions.counters()["live"] == 2
    run_timer(tm, 64 * 0.01 + 0.4)  # Timer L/M (64*T1); H for the unACKed 486
    assert p.transactions.counters()["live"] == 0


def test_contact_uri_param_lookup_uses_the_registered_aor() -> None:
    """The Request-URI's parameters and port do not change which AOR is looked up."""
    p = Proxy()
    out = p.feed(invite(40, ruri="sip:bob@EXAMPLE.com;user=phone"), CALLER)
    assert len(only(out, BOB1)) == 1
