"""The compiled path for in-dialog ACK and BYE (shm.sipreq) against the Python way: two
proxies on separate in-memory tables, one of them with the compiled paths switched off,
get the same requests (plain ones and thousands of mutated ones); they must send the
same datagrams to the same places and count the same things."""
from __future__ import annotations

import random

import pytest

from fastcluster.core.stats import COUNTERS
from tests.unit.test_proxy import BOB1, CALLER, Proxy, invite, response_to

OURS = "<sip:192.0.2.1:5060;lr>"


def request(method: str = "BYE", ruri: str = "sip:bob@203.0.113.21:5081",
            routes: str = OURS, extra: str = "", mf: str | None = "70", n: int = 1,
            body: str = "", to_tag: str = ";tag=b1", cl: bool = True) -> bytes:
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{method}-{n}"]
    if routes:
        lines.append(f"Route: {routes}")
    lines += [f"From: <sip:alice@example.com>;tag=a{n}", f"To: <sip:bob@example.com>{to_tag}",
              f"Call-ID: dlg-{n}", f"CSeq: {2 if method == 'BYE' else 1} {method}"]
    if mf is not None:
        lines.append(f"Max-Forwards: {mf}")
    lines += [x for x in extra.split("\n") if x]
    if cl:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


class Pair:
    """The same proxy twice; `python` never takes the compiled paths."""

    def __init__(self) -> None:
        self.fast = Proxy(contacts=[])
        self.python = Proxy(contacts=[])
        self.python.app.fast.fq_listeners = None
        self.python.app.fast.reply = lambda *a: False  # type: ignore[assignment]
        self.taken = 0
        real = self.fast.app.fast.request

        def spy(*a):
            ok = real(*a)
            self.taken += ok
            return ok

        self.fast.app.fast.request = spy  # type: ignore[assignment]

    def check(self, data: bytes) -> None:
        got = self.fast.feed(data, CALLER)
        want = self.python.feed(data, CALLER)
        assert got == want, data
        diff = {name for (g, name, _), a, b in zip(COUNTERS, self.fast.counts,
                                                   self.python.counts) if a != b}
        assert not diff, (data, diff)


@pytest.mark.parametrize("data", [
    request("BYE"), request("ACK"),
    request("BYE", routes=f"{OURS}, <sip:198.51.100.7:5070;lr>"),
    request("ACK", routes=f"{OURS},<sip:198.51.100.7;lr>"),
    request("BYE", mf=None), request("ACK", mf="1"),
    request("BYE", body="hello", extra="Content-Type: text/plain"),
    request("BYE", ruri="sip:203.0.113.21"),
    request("BYE", extra="X-Thing: a\nroute: <sip:198.51.100.9;lr>"),  # two Route lines
    request("BYE", routes="<sip:192.0.2.1:5060;lr;r2=on>, <sip:192.0.2.1:5060;lr;r2=on>"),
    request("BYE", ruri="sip:bob@host.invalid"),  # a name: the Python way resolves it
    request("BYE", to_tag=""),  # not in a dialog
    request("BYE", mf="0"), request("BYE", extra="Proxy-Require: x"),
    request("ACK", to_tag=";tag=fcL12345678.s"),
])
def test_in_dialog_requests_same_both_ways(data: bytes) -> None:
    pair = Pair()
    pair.check(data)
    pair.check(data)  # and its retransmission


def test_plain_ones_take_the_compiled_path() -> None:
    pair = Pair()
    for i, data in enumerate([request("BYE", n=1), request("ACK", n=2),
                              request("BYE", n=3, routes=f"{OURS}, <sip:198.51.100.7;lr>")]):
        pair.check(data)
    assert pair.taken == 3


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        i = rng.randrange(len(b))
        if op < 0.3:
            b[i] = rng.choice(b" :;,<>@\r\n\t0Aa=\x00\x80.")
        elif op < 0.5:
            b[i:i] = bytes([rng.randrange(32, 127)])
        elif op < 0.7:
            del b[i:i + rng.randint(1, 6)]
        else:
            j = rng.randrange(len(b))
            b[j:j + 3] = bytes(b[j:j + 3]).swapcase()
    return bytes(b)


def test_mutated_requests_same_both_ways() -> None:
    rng = random.Random(7)
    bases = [request("BYE"), request("ACK"),
             request("BYE", routes=f"{OURS}, <sip:198.51.100.7:5070;lr>"),
             request("ACK", mf=None, body="x", extra="Content-Type: a/b")]
    pair = Pair()
    for k in range(3000):
        data = _mutate(rng, rng.choice(bases)).replace(b"-1\r\n", f"-{k}\r\n".encode(), 1)
        pair.check(data)
    assert pair.taken > 300


def test_the_hot_path_uses_only_warmed_kernel_signatures() -> None:
    """A kernel called with other array types than warm_kernels used is compiled again,
    inside the worker, for longer than its heartbeat allows: the master kills it."""
    from fastcluster.shm import sipreq as RQ
    from fastcluster.shm import sipscan as SC
    from fastcluster.shm import transactions as X
    from fastcluster.shm.warm import warm_kernels

    from fastcluster.shm import dialogs as D
    from fastcluster.shm import dlg_invite as DY

    warm_kernels()
    kernels = (RQ.fast_request, SC.fast_reply, X.tx_request, X.tx_reply, D.dlg_in_dialog,
               D.dlg_apply, D.dlg_get, DY.dlg_invite_reply, DY.dlg_invite_create)
    before = [len(k.signatures) for k in kernels]
    p = Proxy()  # bob registered at BOB1
    (fwd,) = [d for d, a in p.feed(invite(90), CALLER) if a == BOB1]
    p.feed(response_to(fwd, 180), BOB1)  # the compiled reply path
    for data in (request("BYE", n=5), request("ACK", n=6)):  # the compiled request path
        p.feed(data, CALLER)
    assert p.stat("tm:relayed_replies") == 1 and p.stat("core:fwd_requests") == 1
    # with dialog tracking: the compiled dialog changes (shm.dialogs.dlg_in_dialog,
    # shm.dlg_invite.dlg_invite_create and dlg_invite_reply)
    p = Proxy(dialogs=True, settings={"dialog.profiles": "calls"})
    (fwd,) = [d for d, a in p.feed(invite(1), CALLER) if a == BOB1]
    for code in (180, 200):
        p.feed(response_to(fwd, code), BOB1)
    for data in (request("ACK"), request("BYE")):
        p.feed(data.replace(b"dlg-1", b"call-1"), CALLER)
    assert p.stat("dialog:terminated_dialogs") == 1
    assert p.stat("dialog:processed_dialogs") == 1
    assert DY.dlg_invite_create.signatures  # the INVITE's dialog was the kernel's
    assert [len(k.signatures) for k in kernels] == before
