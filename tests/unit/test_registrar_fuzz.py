"""Property tests of the registrar as a worker runs it, authentication on: whatever a
REGISTER (or any request) carries -- mutated Authorization, To, Via, Require, Contact,
Path values, or random bytes in place of a well-formed answer -- the worker answers or
drops it without an exception, and every answer it sends parses back."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastcluster.core.sip import parse_message
from fastcluster.services.sip import subscribers
from tests.support.registrar import Harness, authorization, challenges, register

FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
PIECES = ['"', "\\", ",", ";", "=", " ", "<", ">", "@", ":", "[", "]", "%", "%00", "\x00",
          "Digest", "username", "realm", "nonce", "uri", "response", "qop", "auth", "nc",
          "cnonce", "algorithm", "MD5", "SHA-256", "sip:", "tel:", "example.com", "alice",
          "00000001", "0" * 32, "f" * 64, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "stale", "true",
          "[2001:db8::1]", "2001:db8::1", "branch", "rport", "received", "lr", "ob", "path",
          "outbound", "*", "reg-id", "+sip.instance", "9" * 12, "-1"]
FIELD = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)


def harness(tmp_path) -> Harness:
    path = str(tmp_path / "s.sqlite")
    subscribers.add_users(path, [("alice@example.com", "pw")])
    return Harness(settings={"auth.enable": "yes", "auth.max_failures": "1"}, db_path=path)


def answered_well(h: Harness, data: bytes) -> None:
    before = len(h.sock.sent)
    h.app.handle(data, ("192.0.2.10", 5070), h.listener)
    assert not h.app._logged, h.app._logged  # an exception reached the worker's guard
    for out, _ in h.sock.sent[before:]:
        reply = parse_message(out)
        assert not reply.is_request and 100 <= reply.status <= 699


@FUZZ
@given(data=st.data())
def test_mutated_authenticated_register(tmp_path, data) -> None:
    h = harness(tmp_path)
    first = h.send(register())
    ch = challenges(first)[0]
    good = authorization(ch, "alice", "pw")
    name = data.draw(st.sampled_from(["Authorization", "To", "Via", "Require", "Contact",
                                      "Path", "Supported", "Expires"]))
    value = data.draw(FIELD)
    if name == "Authorization":
        value = data.draw(st.sampled_from([value, good[len("Authorization: "):] + value,
                                           good[len("Authorization: "):].replace(
                                               ch["nonce"], value)]))
        text = register(cseq=2, extra=f"Authorization: {value}")
    else:
        text = register(cseq=2, extra=f"{good}\n{name}: {value}")
    try:
        raw = text.replace("\n", "\r\n").encode()
    except UnicodeEncodeError:
        return
    answered_well(h, raw)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_after_a_valid_head(tmp_path, tail: bytes) -> None:
    h = harness(tmp_path)
    head = register(cseq=3).replace("\n", "\r\n").encode().split(b"Content-Length")[0]
    answered_well(h, head + tail)


def test_the_fuzz_reaches_acceptance(tmp_path) -> None:
    # sanity: the unmutated answer is accepted, so mutations start from a valid one
    h = harness(tmp_path)
    ch = challenges(h.send(register()))[0]
    reply = h.send(register(cseq=2, extra=authorization(ch, "alice", "pw")))
    assert reply is not None and reply.startswith("SIP/2.0 200 ")
