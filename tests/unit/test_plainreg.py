"""The plain-REGISTER path (services.sip.plainreg, with and without its compiled way,
shm.plainreg) against the general way: the same requests through two registrars, one
with the plain path and one without, must give the same replies byte for byte, the
same counters and the same table rows; and each plain way must take the forms it is
meant for (else it would prove nothing)."""
from __future__ import annotations

import random
import types

import numpy as np
import pytest

from fastcluster.services.sip import plainreg, registrar
from fastcluster.shm import plainreg as K
from fastcluster.shm import table as T
from tests.support.registrar import Harness

SRC = ("192.0.2.10", 5070)

RURIS = ["sip:example.com", "sip:192.0.2.1:5060", "sip:EXAMPLE.com", "sip:h:70000",
         "sip:bob@example.com", "sips:example.com", "sip:example.com;transport=udp"]
VIAS = ["SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-{n}",
        "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-{n};rport",
        "SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK-{n}",
        "SIP/2.0/UDP rport.example.com:5070;branch=z9hG4bKrport{n}",
        "SIP/2.0/UDP 192.0.2.10:99999;branch=z9hG4bK-{n};rport",
        "SIP/2.0/TCP 192.0.2.10:5070;branch=z9hG4bK-{n}",
        "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-{n};rport;received=1.2.3.4",
        "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-{n}, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-x",
        "SIP/2.0/UDP 192.0.2.10:5070 ;branch=z9hG4bK-{n}"]
USERS = ["alice", "u{n}", "Al.ice-1_x", "al'ice(1)&=+$,!~*", "%41lice", "al%20ice"]
HOSTS = ["example.com", "EXAMPLE.com", "192.0.2.10", "198.51.100.7"]
TOS = ["<sip:{u}@{h}>", "<sip:{u}@{h}>;tag=abc", '"Al" <sip:{u}@{h}>', "sip:{u}@{h}",
       "<sip:{u}@{h}:5060>", "<sips:{u}@{h}>"]
CONTACTS = ["<sip:{u}@192.0.2.10:5070>", "<sip:{u}@192.0.2.10:5070>;expires={e}",
            "<sip:{u}@{h}>", "<sip:{u}@{h}:5060>;expires={e}", "<sip:{u}@192.0.2.10:0>",
            "<sip:{u}@192.0.2.10:70000>", "<sip:{u}@192.0.2.10:05070>", "*",
            "<sip:{u}@192.0.2.10:5070>, <sip:{u}@192.0.2.11>",
            "<sip:{u}@192.0.2.10:5070>;q=0.5", "<sip:{u}@192.0.2.10:5070>;EXPIRES=5",
            "<sip:{u}@192.0.2.10:5070;transport=udp>", "<sip:{u}@Host.Example:5070>"]
EXPIRES = ["0", "30", "3600", "100000", "abc", "0007", "99999999999"]
CSEQS = ["{c} REGISTER", "00{c} REGISTER", "{c} INVITE", "4294967296 REGISTER",
         "{c}  REGISTER"]
OPTIONAL = ["Max-Forwards: 70", "Max-Forwards: 0", "User-Agent: sipp load test",
            "Allow: INVITE, ACK, REGISTER", "Supported: path, outbound",
            "Content-Length: 0", "Content-Length: 00", "Require: path", "X-Extra: 1",
            "Path: <sip:edge.example.com;lr>", "call-id: dup-{n}", "Expires: {e}",
            "Max-Forwards: 7x", "User-Agent:  padded", 'Allow: invite,ACK , "BYE",FOO',
            "Allow: ,, REGISTER ,", 'Allow: "INVITE, subscribe"', "Allow: PUBLISH,PRACK,REFER"]


def request(rng: random.Random, n: int) -> str:
    def pick(options: list[str], plain: str) -> str:
        return plain if rng.random() < 0.88 else rng.choice(options)

    u = pick(USERS, "u{n}").format(n=n % 40)
    h = pick(HOSTS, "example.com")
    e = pick(EXPIRES, "3600")
    c = rng.randint(1, 5)
    lines = [f"Via: {pick(VIAS, VIAS[1]).format(n=n)}",
             f"From: <sip:{u}@{h}>;tag=t{n}",
             f"To: {pick(TOS, TOS[0]).format(u=u, h=h)}",
             f"Call-ID: cid-{u}-{n % 3}",
             f"CSeq: {pick(CSEQS, CSEQS[0]).format(c=c)}",
             f"Contact: {pick(CONTACTS, CONTACTS[0]).format(u=u, h=h, e=e)}"]
    lines += [rng.choice(OPTIONAL[:6]).format(n=n, e=e) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.2:
        lines.append(rng.choice(OPTIONAL).format(n=n, e=e))
    if rng.random() < 0.7:
        lines.append(f"Expires: {e}")
    if rng.random() < 0.1:
        lines.pop(rng.randrange(len(lines)))
    rng.shuffle(lines)
    body = "x=1" if rng.random() < 0.03 else ""
    return (f"REGISTER {pick(RURIS, RURIS[0])} SIP/2.0\n" + "\n".join(lines) + "\n\n" + body)


def rows(h: Harness) -> list[tuple]:
    return sorted(tuple(sorted(r.items()))
                  for r in h.table.rows(live_only=False))


FROZEN_NS = 1_800_000_000_250_000_000  # the frozen time.time(), in ns


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """One clock for both ways: remaining expiry times and Date lines must not differ
    because a second ticked between the two (pair() gives it to the kernel that reads
    the clock itself, shm.plainreg.serve)."""
    clock = types.SimpleNamespace(time=lambda: 1_800_000_000.25)
    monkeypatch.setattr(registrar, "time", clock)
    monkeypatch.setattr(plainreg, "time", clock)


def pair(**settings: str) -> tuple[Harness, Harness]:
    plain = Harness(capacity=4000, settings=settings)
    general = Harness(capacity=4000, settings=settings)
    general.app.plain.enabled = False
    plain.app.plain.words[K.W_CLOCK_NS] = FROZEN_NS
    return plain, general


def taken(h: Harness, text: str, src: tuple = SRC) -> bool:
    data = text.replace("\n", "\r\n").encode()
    return h.app.plain.handle(data, src, h.listener)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("seed", [17, 18, 19])
def test_plain_and_general_agree_on_generated_requests(seed: int, compiled: bool) -> None:
    rng = random.Random(seed)
    plain, general = pair()
    plain.app.plain.compiled = compiled
    took, took_compiled = [], []
    handle, handle_compiled = plain.app.plain.handle, plain.app.plain._compiled

    def counted(data: bytes, addr: tuple, listener: object, compiled: bool = True) -> bool:
        took.append(handle(data, addr, listener, compiled))
        return took[-1]

    def counted_compiled(data: bytes, addr: tuple, listener: object) -> bool:
        took_compiled.append(handle_compiled(data, addr, listener))
        return took_compiled[-1]

    plain.app.plain.handle = counted  # type: ignore[method-assign]
    plain.app.plain._compiled = counted_compiled  # type: ignore[method-assign]
    for n in range(3000):
        text = request(rng, n)
        src = SRC if rng.random() < 0.8 else ("203.0.113.9", 40000 + n % 7)
        before = len(plain.sock.sent)
        a = plain.send(text, src)
        b = general.send(text, src)
        assert a == b, text
        assert plain.counts == general.counts, text
        if len(plain.sock.sent) > before:
            assert plain.sock.sent[-1][1] == general.sock.sent[-1][1]
    assert rows(plain) == rows(general)
    # what persistence and replication read: the dirty marks and the ring's changes
    assert np.array_equal(T.dirty_marks(plain.table.buf), T.dirty_marks(general.table.buf))
    assert np.count_nonzero(T.dirty_marks(plain.table.buf)) > 0
    assert np.array_equal(plain.ring, general.ring) and np.count_nonzero(plain.ring)
    assert 0.25 < sum(took) / len(took) < 0.9  # both ways were exercised
    if compiled:  # and the compiled way took a share of what the plain path took
        assert 0.2 < sum(took_compiled) / sum(took) < 0.95, (sum(took_compiled), sum(took))
    else:
        assert not took_compiled


def test_the_plain_path_takes_what_sipp_and_phones_send() -> None:
    plain, _ = pair()
    sipp = ("REGISTER sip:127.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;"
            "branch=z9hG4bK-1-2\nFrom: <sip:u1@example.com>;tag=1x2\n"
            "To: <sip:u1@example.com>\nCall-ID: reg-u1@fastcluster\nCSeq: 1 REGISTER\n"
            "Contact: <sip:u1@127.0.0.1:5070>\nMax-Forwards: 70\nExpires: 3600\n"
            "User-Agent: sipp-fastcluster\nContent-Length: 0\n\n")
    assert plain.app.plain._compiled(sipp.replace("\n", "\r\n").encode(),
                                     ("127.0.0.1", 5070), plain.listener)
    assert taken(plain, sipp.replace("CSeq: 1 ", "CSeq: 2 "), ("127.0.0.1", 5070))
    phone = ("REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5070;"
             "branch=z9hG4bK776asdhds;rport\nMax-Forwards: 70\nTo: <sip:bob@example.com>\n"
             "From: <sip:bob@example.com>;tag=456248\nCall-ID: 843817637684230@998sdasdh09\n"
             "CSeq: 1826 REGISTER\nContact: <sip:bob@192.0.2.10:5070>;expires=600\n"
             "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\nUser-Agent: Phone 1.0\n"
             "Content-Length: 0\n\n")
    assert taken(plain, phone)
    assert plain.count("registrar:accepted_regs") == 3


def test_settings_that_need_the_general_way_turn_it_off(tmp_path) -> None:
    assert not Harness(settings={"sip.domains": "example.com"}).app.plain.enabled
    assert not Harness(settings={"auth.enable": "yes"},
                       db_path=str(tmp_path / "subscribers.db")).app.plain.enabled
    h = Harness(settings={"sip.server_header": "fastcluster"})
    assert h.app.plain.enabled
    a, b = pair(**{"sip.server_header": "fastcluster"})
    text = ("REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK1"
            "\nFrom: <sip:s@example.com>;tag=1\nTo: <sip:s@example.com>\nCall-ID: s1\n"
            "CSeq: 1 REGISTER\nContact: <sip:s@192.0.2.10:5070>\n\n")
    assert taken(a, text)
    assert a.sock.sent[-1][0].decode() == b.send(text)


def test_compiled_methods_mask_is_the_registrars() -> None:
    """shm.plainreg's Allow bitmask against services.sip.registrar.methods_mask."""
    rng = random.Random(5)
    words = list(registrar.METHOD_BITS) + ["FOO", "invite", "Bye", "REGISTERX", "ACK K"]
    for _ in range(3000):
        text = ""
        for _ in range(rng.randint(0, 6)):
            w = rng.choice(words)
            if rng.random() < 0.2:
                w = f'"{w}"' if rng.random() < 0.5 else w[:1] + '"' + w[1:]
            text += " " * rng.randint(0, 2) + w + " " * rng.randint(0, 2) + \
                rng.choice([",", ",", ", ", ",,"])
        text = text[:rng.randint(0, len(text))]
        data = np.frombuffer(text.encode(), dtype=np.uint8)
        assert K._methods_mask(data, 0, len(data)) == registrar.methods_mask(text), text
