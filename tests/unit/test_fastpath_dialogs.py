"""Dialog tracking on the compiled relays (services.sip.fastpath): with dialog.track = all
the compiled paths stay on and call the dialog hook themselves. Two proxies with dialog
tracking, one with the compiled paths switched off, get the same calls (plain ones and
mutated in-dialog requests, and requests naming their tags every way core.sip.tag_of
reads them); they must send the same datagrams, count the same things and leave the
same dialogs in their tables: the compiled ACK/BYE dialog change
(shm.dialogs.dlg_in_dialog) against DialogTracker.in_dialog. And the identity read from
a request's head (messages.dialog_identity, the fallback for tags the kernel leaves to
tag_of) is the one parse_message gives, for every request the compiled relay takes."""
from __future__ import annotations

import random
import threading
import time

import numpy as np

from fastcluster.core.sip import parse_message, tag_of
from fastcluster.core.stats import COUNTERS
from fastcluster.services.sip.messages import dialog_identity
from fastcluster.shm import dialogs as D
from fastcluster.shm.profiles import name_of
from tests.support.registrar import LISTEN
from tests.unit.test_dialog_kernels import seq_word
from tests.unit.test_proxy import BOB1, CALLER, Proxy, invite, response_to
from tests.unit.test_sipreq import _mutate

ROUTE = f"Route: <sip:{LISTEN[0]}:{LISTEN[1]};lr>\r\n"
VOLATILE = {"version", "start", "timeout", "expires", "origin"}


class DialogPair:
    """The same proxy with dialog tracking twice; `python` never takes the compiled
    paths. `taken` counts what the compiled paths took on `fast`; `slow` the in-dialog
    requests they took whose dialog change went the Python way (a tag the kernel
    leaves to tag_of) instead of shm.dialogs.dlg_in_dialog."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.fast = Proxy(dialogs=True, settings=settings)
        self.python = Proxy(dialogs=True, settings=settings)
        self.python.app.fast.fq_listeners = None
        self.python.app.fast.reply = lambda *a: False  # type: ignore[assignment]
        self.python.tracker.invite.create = lambda *a: None  # type: ignore[method-assign]
        self.created: list[object] = []  # dlg_invite_create's results on `fast`
        real_create = self.fast.tracker.invite.create

        def create(*a):
            made = real_create(*a)
            self.created.append(made)
            return made

        self.fast.tracker.invite.create = create  # type: ignore[method-assign]
        self.taken: list[bytes] = []
        self.slow: list[tuple] = []
        tracker = self.fast.tracker
        real_in_dialog = tracker.in_dialog

        def in_dialog(*ident):
            self.slow.append(ident)
            return real_in_dialog(*ident)

        tracker.in_dialog = in_dialog  # type: ignore[method-assign]
        self.slow_replies: list[object] = []
        real_reply = tracker.on_invite_reply

        def on_invite_reply(msg, *a):
            self.slow_replies.append(msg)
            return real_reply(msg, *a)

        tracker.on_invite_reply = on_invite_reply  # type: ignore[method-assign]
        for name in ("request", "reply"):
            real = getattr(self.fast.app.fast, name)

            def spy(data, *a, real=real):
                ok = real(data, *a)
                if ok:
                    self.taken.append(data)
                return ok

            setattr(self.fast.app.fast, name, spy)

    def feed(self, data: bytes, src: tuple) -> list[tuple[bytes, tuple]]:
        got = self.fast.feed(data, src)
        want = self.python.feed(data, src)
        assert got == want, data
        diff = {name for (g, name, _), a, b in zip(COUNTERS, self.fast.counts,
                                                   self.python.counts) if a != b}
        assert not diff, (data, diff)
        return got

    def dialogs(self, proxy: Proxy) -> list[dict]:
        rows = []
        for d in proxy.dialogs.rows(live_only=False):
            rows.append({k: v for k, v in d.items() if k not in VOLATILE})
        return sorted(rows, key=lambda r: (r["callid"], r["from_tag"]))

    def same_dialogs(self) -> list[dict]:
        a, b = self.dialogs(self.fast), self.dialogs(self.python)
        assert a == b
        return a


def call(pair: DialogPair, n: int, codes: tuple[int, ...] = (180, 200)
         ) -> tuple[bytes, bytes]:
    """INVITE and these responses through the pair; the caller's ACK and BYE for the
    dialog."""
    out = pair.feed(invite(n), CALLER)
    fwd = [d for d, a in out if a == BOB1][0]
    for code in codes:
        pair.feed(response_to(fwd, code, tag=f"b{n}"), BOB1)
    return ack_bye(n)


def ack_bye(n: int) -> tuple[bytes, bytes]:
    """The caller's ACK and BYE for call n's dialog (callee tag b{n})."""
    ack = invite(n, branch=f"z9hG4bK-ack{n}", extra=ROUTE, method="ACK",
                 ruri=f"sip:bob@{BOB1[0]}:{BOB1[1]}").replace(
        b"To: <sip:bob@example.com>", f"To: <sip:bob@example.com>;tag=b{n}".encode())
    bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(
        f"z9hG4bK-ack{n}".encode(), f"z9hG4bK-bye{n}".encode())
    return ack, bye


def test_a_call_tracked_on_the_compiled_paths_as_on_the_python_way() -> None:
    pair = DialogPair()
    ack, bye = call(pair, 1)
    (row,) = pair.same_dialogs()
    assert row["dlg_state"] == D.DLG_CONFIRMED_NA and row["to_tag"] == "b1"
    assert row["callee_contact"] == f"sip:bob@{BOB1[0]}:{BOB1[1]}"
    pair.feed(ack, CALLER)
    (row,) = pair.same_dialogs()
    assert row["dlg_state"] == D.DLG_CONFIRMED and row["caller_cseq"] == 1
    out = pair.feed(bye, CALLER)
    (row,) = pair.same_dialogs()
    assert row["dlg_state"] == D.DLG_DELETED
    pair.feed(response_to([d for d, a in out if a == BOB1][0], 200, tag="b1"), BOB1)
    # the 180 and both 200s, the ACK and the BYE went the compiled way, their dialog
    # changes the kernel's
    assert len(pair.taken) == 5, pair.taken
    assert pair.slow == [] and pair.slow_replies == []
    assert pair.fast.stat("dialog:terminated_dialogs") == 1


def variants(n: int, ack: bytes, bye: bytes) -> list[bytes]:
    """In-dialog requests of call n that test the kernel's reading of the identity and
    its rules: tags as tag_of reads them, the callee's requests, another callee's, a
    CSeq at its limit, identities too long for the row."""
    f = f"<sip:alice@example.com>;tag=a{n}".encode()
    t = f"<sip:bob@example.com>;tag=b{n}".encode()
    out = []
    for req in (ack, bye):
        for a, b in (
                (b"From: " + f, b"From: " + f + b";x=1"),
                (b"From: " + f, b"From: " + f.replace(b";tag", b";TAG")),
                (b"From: " + f, b"From:   " + f + b" \t"),
                (b"From: " + f, b"From: sip:alice@example.com;tag=a%d" % n),
                (b"From: " + f, b"From: sip:alice@example.com;tag=a%d>;tag=z" % n),
                (b"From: " + f, b"From: <sip:alice@example.com;tag=u>;tag=a%d" % n),
                (b"From: " + f, b'From: "A;tag=x" <sip:alice@example.com>;tag=a%d' % n),
                (b"From: " + f, b"From: <sip:alice@example.com>;xtag=a%d" % n),
                (b"From: " + f, b"From: <sip:alice@example.com>;tag=a%d;tag=q" % n),
                (b"From: " + f, b"From: <sip:alice@example.com>;tag="),
                (b"From: " + f, b"From: <sip:alice@example.com"),
                (b"From: " + f, b"From: <sip:alice@example.com>; tag=a%d" % n),
                (b"To: " + t, b"To: " + t + b";y"),
                (b"To: " + t, b"To: <sip:bob@example.com>;tag=other"),
                (b"To: " + t, b"To: <sip:bob@example.com>;tag=b%d" % n + b"x" * 600),
                (b"Call-ID: call-", b"i:call-"),
                (b"Call-ID: call-%d" % n, b"Call-ID: call-%d " % n),
                (b"Call-ID: call-%d" % n, b"Call-ID: call-%d" % n + b"y" * 600),
                (b"CSeq: 2 ", b"CSeq: 2147483647 "),
                (b"CSeq: 1 ", b"CSeq: 9 ")):
            if a in req:
                out.append(req.replace(a, b, 1))
        # the callee's request: the tags swapped
        out.append(req.replace(b"From: " + f, b"From: X").replace(b"To: " + t, b"To: " + f)
                   .replace(b"From: X", b"From: " + t).replace(b"CSeq: 2 ", b"CSeq: 5 "))
    return out


def test_the_kernels_dialog_change_is_the_python_ones() -> None:
    """Calls in every state (early: a 180 only; confirmed, with and without its ACK)
    get ACKs and BYEs from both sides, read every way tag_of reads a tag; after each
    request, both proxies hold the same dialogs and counters (dialog:terminated...)."""
    pair = DialogPair()
    calls = []
    for n in range(1, 13):
        ack, bye = call(pair, n, (180,) if n % 3 == 1 else (180, 200))
        calls.append((n, ack, bye))
    rng = random.Random(3)
    requests = [v for n, ack, bye in calls for v in variants(n, ack, bye)]
    rng.shuffle(requests)
    taken = len(pair.taken)
    for k, data in enumerate(requests):
        pair.feed(data.replace(b"z9hG4bK-", f"z9hG4bK-v{k}-".encode(), 1), CALLER)
        pair.same_dialogs()
    assert len(pair.taken) - taken > len(requests) // 2
    assert 0 < len(pair.slow) < len(requests) // 4  # most changes were the kernel's
    assert pair.fast.stat("dialog:terminated_dialogs") > 3


def test_mutated_in_dialog_requests_leave_the_same_dialogs() -> None:
    rng = random.Random(11)
    pair = DialogPair()
    requests = []
    for n in range(1, 31):
        requests += call(pair, n)
    taken = len(pair.taken)
    for k in range(1500):
        data = _mutate(rng, rng.choice(requests)).replace(
            b"z9hG4bK-", f"z9hG4bK-m{k}-".encode(), 1)
        pair.feed(data, CALLER)
        if k % 100 == 0:
            pair.same_dialogs()
    pair.same_dialogs()
    assert len(pair.taken) - taken > 100


def test_the_identity_read_from_the_head_is_the_parsed_one() -> None:
    rng = random.Random(5)
    pair = DialogPair()
    requests = []
    for n in range(1, 11):
        requests += call(pair, n)
    requests.append(requests[0].replace(b"From: <sip:alice@example.com>;tag=a1",
                                        b'f: "A, b;tag=x" <sip:a@x;tag=uri>;tag=a1'))
    requests.append(requests[1].replace(b"Call-ID:", b"i  :").replace(b"CSeq: 2",
                                                                       b"CSeq:  2"))
    checked = 0
    for k in range(3000):
        data = requests[k] if k < len(requests) else _mutate(rng, rng.choice(requests))
        before = len(pair.taken)
        pair.fast.feed(data, CALLER)
        if len(pair.taken) == before:
            continue
        msg = parse_message(data)
        assert dialog_identity(data) == (msg.method, msg.call_id, tag_of(msg.from_),
                                         tag_of(msg.to), msg.cseq_num), data
        checked += 1
    assert checked > 300


OURS = b"Record-Route: <sip:192.0.2.1:5060;lr>"
REPLY_VARIANTS = [(OURS, v) for v in (
    b"Record-Route: <sip:p2.example.com;lr>, <sip:192.0.2.1:5060;lr>,<sip:p0:5070;lr>",
    b"Record-Route: <sip:p2;lr>\r\nRecord-Route: <sip:192.0.2.1:5060;lr;r2=on>, "
    b"<sip:192.0.2.1:5060;lr;r2=on>\r\nRecord-Route: <sip:p0;lr>, <sip:p00;lr>",
    b"Record-Route: <sip:192.0.2.1;lr>", b"Record-Route: <SIP:u@192.0.2.1:5060;lr>",
    b"Record-Route: <sips:192.0.2.1:5060;lr>", b"Record-Route: <sip:192.0.2.1:05060;lr>",
    b"Record-Route: sip:192.0.2.1:5060;lr", b"Record-Route: <sip:p;lr>",
    b"Record-Route: <sip:[2001:db8::1];lr>, <sip:192.0.2.1:5060;lr>",
    b'Record-Route: "x" <sip:p;lr>, <sip:192.0.2.1:5060;lr>',
    b"Record-Route: <sip:p;a=1,2;lr>, <sip:192.0.2.1:5060;lr>",
    b"Record-Route: , <sip:192.0.2.1:5060;lr>,", b"Record-Route: <sip:192.0.2.1:5061;lr>",
    b"Record-Route: <sip:192.0.2.1:99999;lr>", b"Record-Route: <sip:a@;lr>",
    b"Record-Route: <sip:192.0.2.1:5060;lr>>, <sip:p;lr>", b"record-route: <sip:p>",
    b"Record-Route:<sip:p;lr> ,\t<sip:192.0.2.1:5060;lr>", b"X-RR: 1",
    b"Record-Route: <sip:192.0.2.1:5060>;x, <sip:P.example.COM:5060;lr>")] + [
    (b"Contact: <sip:bob@203.0.113.21:5081>", v) for v in (
        b"Contact: <sip:bob@203.0.113.21:5081>;expires=60", b"m: <sip:b@h>",
        b'Contact: "Bob" <sip:b@h>', b"Contact: sip:b@h", b"Contact: <sip:b@h>, <sip:c@h>",
        b"Contact: <>", b"X-C: 1", b"Contact: <sip:b@h", b"CONTACT:   <sip:b@h;lr>  ",
        b"Contact: <sip:b@h>\r\nContact: <sip:c@h>", b"Contact:")] + [
    (b"From: <", v) for v in (b"f: <", b'From: "A;tag=1" <', b"From:  <", b"From :<")] + [
    (b"Call-ID: ", v) for v in (b"i: ", b"Call-ID:   ", b"call-id:")] + [
    (b"To: <", v) for v in (b"t: <", b"To:<")] + [
    (b";tag=b", v) for v in (b";TAG=b", b";x=1;tag=b", b";tag=" + b"L" * 600 + b"b")]


def test_the_kernels_invite_reply_change_is_the_python_ones() -> None:
    """Responses to initial INVITEs (1xx with and without a tag, 2xx, 2xx of a second
    callee, failures) with route sets, Contacts and tags written every way: after each,
    both proxies hold the same dialogs and counters (shm.dlg_invite against
    DialogTracker.on_invite_reply)."""
    rng = random.Random(17)
    pair = DialogPair()
    taken = 0
    for n in range(1, 121):
        out = pair.feed(invite(n), CALLER)
        fwd = [d for d, a in out if a == BOB1][0]
        plan = rng.choice([(180, 183, 200, 200), (180, 486), (183, 200, 200),
                           (180, 200, 200), (100, 180, 603)])
        for i, code in enumerate(plan):
            tag = None if code == 180 and rng.random() < 0.2 else f"b{n}"
            if i == 3:
                tag = f"b{n}x"  # a 2xx of a second callee
            data = response_to(fwd, code, tag=tag)
            for a, b in rng.sample(REPLY_VARIANTS, rng.choice((0, 1, 1, 2))):
                data = data.replace(a, b, 1)
            before = len(pair.taken)
            pair.feed(data, BOB1)
            taken += len(pair.taken) - before
            pair.same_dialogs()
    assert taken > 300
    assert 0 < len(pair.slow_replies) < taken // 3  # most changes were the kernel's
    assert pair.fast.stat("dialog:failed_dialogs") > 5
    assert pair.fast.stat("dialog:callee_too_long") > 0


INVITE_VARIANTS = [
    (b"From: <sip:alice@example.com>", b'From: "Alice" <sip:alice@example.com>'),
    (b"From: <sip:alice@example.com>", b"From: Alice <sip:alice@example.com>"),
    (b"From: <sip:alice@example.com>", b"From: sip:alice@example.com"),
    (b"From: <sip:alice@example.com>", b"f:<sip:alice@example.com;user=phone>"),
    (b"From: <sip:alice@example.com>", b"FROM: \t<sip:Alice@Example.COM>"),
    (b"From: <sip:alice@example.com>;tag=", b"From: <sip:alice@example.com>;x=1;tag="),
    (b"From: <sip:alice@example.com>;tag=", b"From: <sip:alice@example.com>; tag="),
    (b"From: <sip:alice@example.com>;tag=", b"From: <sip:alice@example.com;tag=u>;tag="),
    (b"To: <sip:bob@example.com>", b"t: <sip:bob@example.com>"),
    (b"To: <sip:bob@example.com>", b"To: Bob <sip:bob@example.com>"),
    (b"To: <sip:bob@example.com>", b"To: sip:bob@example.com"),
    (b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;x=y"),
    (b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com"),
    (b"Call-ID: call-", b"i: call-"),
    (b"Call-ID: call-", b"Call-ID: " + b"L" * 700),
    (b"CSeq: 1 ", b"CSeq: 2147483647 "),
    (b"CSeq: 1 ", b"CSeq: 0 "),
    (b"Contact: <sip:alice@", b"m: <sip:alice@"),
    (b"Contact: <sip:alice@", b"Contact: <sip:x@h>, <sip:alice@"),
    (b"Contact: <sip:alice@", b"Contact: <sip:x@h>\r\nContact: <sip:alice@"),
    (b"Contact: <sip:alice@", b'Contact: "A" <sip:alice@'),
    (b"Contact: <sip:alice@", b"Contact: <sip:alice;ob@"),
    (b"Contact: <sip:alice@127.0.0.1:5070>", b"Contact: sip:alice@127.0.0.1:5070;ob"),
    (b"Contact: <sip:alice@127.0.0.1:5070>", b"Contact: <sip:alice@127.0.0.1:5070>;exp=9"),
    (b"Contact: <sip:alice@127.0.0.1:5070>\r\n", b""),
    (b"Max-Forwards:", b"Record-Route: <sip:p1.example.com;lr>\r\nMax-Forwards:"),
    (b"Max-Forwards:", b"Record-Route: <sip:p1;lr>, <sip:p2;lr>,<sip:p3>\r\n"
                       b"record-route: <sip:p4;lr>\r\nMax-Forwards:"),
    (b"Max-Forwards:", b'Record-Route: "P" <sip:p1;lr>\r\nMax-Forwards:'),
    (b"Max-Forwards:", b"Record-Route: <sip:p1;a=b,c>\r\nMax-Forwards:"),
    (b"Max-Forwards:", b"Record-Route: <sip:p;lr>\r\n" * 9 + b"Max-Forwards:"),
    (b"Max-Forwards:", b"Record-Route: " + b"<sip:p;lr>, " * 40 + b"<sip:q>\r\n"
                       b"Max-Forwards:"),
    (b"Max-Forwards:", b"Record-Route: <sip:p;lr>,\r\n <sip:q;lr>\r\nMax-Forwards:"),
    (b"Max-Forwards:", b"X-Long: " + b"h" * 300 + b"\r\nMax-Forwards:"),
    (b"Max-Forwards:", b"X-Bin: caf\xc3\xa9\r\nMax-Forwards:"),
]


def test_the_kernels_new_dialog_is_the_python_ones() -> None:
    """Initial INVITEs with From, To, Contact, Record-Route, Call-ID and CSeq written
    every way (and retransmitted): after each, both proxies sent the same datagrams and
    hold the same dialogs, profile counts and counters (shm.dlg_invite.dlg_invite_create
    against DialogTracker.admit's Python way)."""
    rng = random.Random(29)
    pair = DialogPair({"dialog.profiles": "calls, per_user=from_user, per_ip=source_ip"})
    sent = []
    for n in range(1, 161):
        data = invite(n)
        for a, b in rng.sample(INVITE_VARIANTS, rng.choice((0, 1, 1, 2, 3))):
            data = data.replace(a, b, 1)
        pair.feed(data, CALLER)
        sent.append(data)
        if rng.random() < 0.1:
            pair.feed(rng.choice(sent), CALLER)  # a retransmission, maybe of another
        pair.same_dialogs()
        names = [name_of(b"", e) for e in (b"calls", b"per_user/alice", b"per_ip/127.0.0.1")]
        assert pair.fast.profiles.get(names) == pair.python.profiles.get(names)
    made = [m for m in pair.created if m is not None]
    assert len(made) > 80 and pair.created.count(None) > 30  # both ways were taken
    assert sum(1 for m in made if m[0] == D.E_EXISTS) > 3  # retransmissions found it
    assert pair.fast.stat("dialog:processed_dialogs") > 100
    assert pair.fast.stat("dialog:refused") > 0  # a Call-ID too long for the row


def test_a_profile_limit_keeps_the_python_way() -> None:
    """With a profile limit the counts come first (a refused INVITE makes no dialog):
    the kernel, which counts after creating, is not used."""
    pair = DialogPair({"dialog.profiles": "calls", "dialog.profile_limits": "calls=2"})
    for n in range(1, 5):
        pair.feed(invite(n), CALLER)
    assert pair.created == []
    assert pair.fast.stat("dialog:profile_refused") == 2
    assert len([r for r in pair.same_dialogs() if r["dlg_state"] != D.DLG_DELETED]) == 2


def test_a_late_invite_retransmission_does_not_bring_back_an_ended_dialog() -> None:
    """A copy of the caller's INVITE handled after the call ended (a retransmission
    that waited in a busy worker) remade the dialog the BYE had deleted: admit runs
    before the transaction absorbs the retransmission, and a 200 retransmission with
    its ACK would then confirm it for its 12 h lifetime. A new INVITE after a failed
    one (a higher CSeq, as after a 407) still makes one."""
    pair = DialogPair()
    out = pair.feed(invite(1), CALLER)
    fwd = [d for d, a in out if a == BOB1][0]
    ok = response_to(fwd, 200, tag="b1")
    pair.feed(ok, BOB1)
    ack, bye = ack_bye(1)
    pair.feed(ack, CALLER)
    out = pair.feed(bye, CALLER)
    pair.feed(response_to([d for d, a in out if a == BOB1][0], 200, tag="b1"), BOB1)
    assert [r["dlg_state"] for r in pair.same_dialogs()] == [D.DLG_DELETED]
    out = pair.feed(invite(1), CALLER)  # the late retransmission: absorbed
    assert not [d for d, a in out if a == BOB1], out
    pair.feed(ok, BOB1)  # the callee's 200 again (it saw the ACK late), the ACK again
    pair.feed(ack, CALLER)
    assert [r["dlg_state"] for r in pair.same_dialogs()] == [D.DLG_DELETED]
    for p in (pair.fast, pair.python):
        assert p.stat("dialog:processed_dialogs") == 1
    # refused, then tried again with credentials: the same Call-ID and From tag, CSeq 2
    out = pair.feed(invite(2), CALLER)
    fwd = [d for d, a in out if a == BOB1][0]
    pair.feed(response_to(fwd, 486, tag="b2"), BOB1)
    assert [r["dlg_state"] for r in pair.same_dialogs()] == [D.DLG_DELETED] * 2
    again = invite(2, branch="z9hG4bK-again2").replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE")
    assert again != invite(2)
    out = pair.feed(again, CALLER)
    assert [d for d, a in out if a == BOB1]
    assert sorted(r["dlg_state"] for r in pair.same_dialogs()) == \
        [D.DLG_UNCONFIRMED, D.DLG_DELETED]


def test_a_bye_waits_for_a_dialog_row_being_written() -> None:
    """The BYE's compiled dialog change met the row with its writer inside (an ACK's
    change on a worker that lost its CPU mid-write): it must wait and end the dialog,
    not take it for absent (seen with -w 8 on two cores: calls left live for 12 h)."""
    p = Proxy(dialogs=True)
    out = p.feed(invite(1), CALLER)
    fwd = [d for d, a in out if a == BOB1][0]
    p.feed(response_to(fwd, 200, tag="b1"), BOB1)
    ack, bye = ack_bye(1)
    p.feed(ack, CALLER)
    (row,) = [r for r in p.dialogs.rows(live_only=False)]
    assert row["dlg_state"] == D.DLG_CONFIRMED
    store = p.tracker.store
    key, group = (int(v) for v in D.dialog_ids(b"call-1", b"a1"))
    slot = D.dlg_get(store.arena, np.uint64(key), np.uint64(group), store.out)
    assert slot >= 0
    seq = seq_word(store.arena, slot)
    waits = p.stat("dialog:lock_waits")
    seq[0] += 1  # a writer inside the row, descheduled
    threading.Timer(0.05, lambda: seq.__setitem__(0, seq[0] + 1)).start()
    started = time.monotonic()
    out = p.feed(bye, CALLER)
    assert time.monotonic() - started >= 0.04  # it waited for the writer
    assert [d for d, a in out if a == BOB1], out  # and the BYE went on
    (row,) = [r for r in p.dialogs.rows(live_only=False)]
    assert row["dlg_state"] == D.DLG_DELETED and row["caller_cseq"] == 2
    assert p.stat("dialog:terminated_dialogs") == 1
    assert p.stat("dialog:lock_waits") > waits
