"""Dialog tracking on the compiled relays (services.sip.fastpath): with dialog.track = all
the compiled paths stay on and call the dialog hook themselves. Two proxies with dialog
tracking, one with the compiled paths switched off, get the same calls (plain ones and
mutated in-dialog requests); they must send the same datagrams, count the same things
and leave the same dialogs in their tables. And the identity read from a request's head
(messages.dialog_identity) is the one parse_message gives, for every request the
compiled relay takes."""
from __future__ import annotations

import random

from fastcluster.core.sip import parse_message, tag_of
from fastcluster.core.stats import COUNTERS
from fastcluster.services.sip.messages import dialog_identity
from fastcluster.shm import dialogs as D
from tests.support.registrar import LISTEN
from tests.unit.test_proxy import BOB1, CALLER, Proxy, invite, response_to
from tests.unit.test_sipreq import _mutate

ROUTE = f"Route: <sip:{LISTEN[0]}:{LISTEN[1]};lr>\r\n"
VOLATILE = {"version", "start", "timeout", "expires", "origin"}


class DialogPair:
    """The same proxy with dialog tracking twice; `python` never takes the compiled
    paths. `taken` counts what the compiled paths took on `fast`."""

    def __init__(self) -> None:
        self.fast = Proxy(dialogs=True)
        self.python = Proxy(dialogs=True)
        self.python.app.fast.fq_listeners = None
        self.python.app.fast.reply = lambda *a: False  # type: ignore[assignment]
        self.taken: list[bytes] = []
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


def call(pair: DialogPair, n: int) -> tuple[bytes, bytes]:
    """INVITE, 180, 200 through the pair; the caller's ACK and BYE for the dialog."""
    out = pair.feed(invite(n), CALLER)
    fwd = [d for d, a in out if a == BOB1][0]
    for code in (180, 200):
        pair.feed(response_to(fwd, code, tag=f"b{n}"), BOB1)
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
    # the 180 and both 200s, the ACK and the BYE went the compiled way
    assert len(pair.taken) == 5, pair.taken


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
