"""core.digest: the hashes against the RFCs' worked examples, the credentials parser,
nonces (round trip, tampering, expiry, another key), and the verdict table."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcluster.core import digest as D
from fastcluster.core.digest import Nonce, Verdict


def test_rfc2617_example_response() -> None:
    h = D.ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert D.expected_response("MD5", h, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "GET",
                               "/dir/index.html", "auth", "00000001", "0a4f113b") \
        == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize("algorithm, response", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_example_responses(algorithm: str, response: str) -> None:
    h = D.ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    assert D.expected_response(algorithm, h, "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                               "GET", "/dir/index.html", "auth", "00000001",
                               "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ") == response


@pytest.mark.parametrize("value, expected", [
    ('Digest username="alice", realm="example.com", nonce="n", uri="sip:example.com", '
     'response="abc"', {"username": "alice", "realm": "example.com", "nonce": "n",
                        "uri": "sip:example.com", "response": "abc"}),
    ('digest username="a",qop=auth,nc=00000001,cnonce="x y"',  # sipp: no spaces
     {"username": "a", "qop": "auth", "nc": "00000001", "cnonce": "x y"}),
    ('Digest realm="a, b", username="q\\"uote"', {"realm": "a, b", "username": 'q"uote'}),
    ("Digest  algorithm=SHA-256 , response=\"f\"", {"algorithm": "SHA-256", "response": "f"}),
    ("Digest", {}),
])
def test_parse_credentials(value: str, expected: dict[str, str]) -> None:
    assert D.parse_credentials(value) == expected


@pytest.mark.parametrize("value", [
    'Basic YWxhZGRpbjpvcGVuc2VzYW1l',
    'NoOneKnowsThisScheme opaque-data=here',  # RFC 4475 §3.1.4.7
    'Digest username="a" realm="b"',  # no comma
    'Digest username="a", username="b"',  # repeated
    'Digest username="unterminated',
    'Digest =x',
])
def test_parse_credentials_refuses(value: str) -> None:
    assert D.parse_credentials(value) is None


KEY = D.derive_key("cluster secret")


def test_nonce_round_trip_and_fields() -> None:
    codec = D.NonceCodec(KEY)
    n = codec.make(1_700_000_000, 2, 7)
    assert len(n) == D.NONCE_CHARS == 32 and n.isascii() and '"' not in n
    info = codec.open(n, 1_700_000_100, 300)
    assert (info.state, info.issued_s, info.failures, info.node) == \
        (Nonce.VALID, 1_700_000_000, 2, 7)
    assert info.tag != 0 and codec.open(n, 1_700_000_100, 300).tag == info.tag
    assert codec.make(1_700_000_000, 2, 7) != n  # salted


def test_nonce_from_another_node_with_the_same_secret_is_valid() -> None:
    n = D.NonceCodec(D.derive_key("s")).make(1000, 0, 1)
    assert D.NonceCodec(D.derive_key("s")).open(n, 1001, 300).state is Nonce.VALID
    assert D.NonceCodec(D.derive_key("other")).open(n, 1001, 300).state is Nonce.INVALID


@pytest.mark.parametrize("now, state", [(1000, Nonce.VALID), (1300, Nonce.VALID),
                                        (1301, Nonce.EXPIRED), (995, Nonce.VALID),
                                        (994, Nonce.INVALID)])  # issued in the future
def test_nonce_expiry(now: int, state: Nonce) -> None:
    codec = D.NonceCodec(KEY)
    assert codec.open(codec.make(1000, 0, 1), now, 300).state is state


def test_tampered_nonces_are_invalid() -> None:
    codec = D.NonceCodec(KEY)
    raw = bytearray(base64.urlsafe_b64decode(codec.make(1000, 2, 1)))
    raw[5] = 0  # reset the failure count: the MAC no longer matches
    assert codec.open(base64.urlsafe_b64encode(bytes(raw)).decode(), 1000, 300).state \
        is Nonce.INVALID
    for bad in ("", "x" * 32, "!" * 32, codec.make(1000, 0, 1)[:-1], "A" * 33):
        assert codec.open(bad, 1000, 300).state is Nonce.INVALID


@pytest.mark.parametrize("nonce, response_ok, failures, identity_ok, replay, verdict", [
    (Nonce.VALID, True, 0, True, D.USE_OK, Verdict.ACCEPT),
    (Nonce.INVALID, True, 0, True, D.USE_OK, Verdict.BAD_NONCE),
    (Nonce.INVALID, False, 9, False, D.USE_OK, Verdict.BAD_NONCE),
    (Nonce.VALID, False, 0, True, D.USE_OK, Verdict.FAILED),
    (Nonce.VALID, False, 1, True, D.USE_OK, Verdict.FAILED),
    (Nonce.VALID, False, 2, True, D.USE_OK, Verdict.FORBIDDEN),  # max_failures = 2
    (Nonce.EXPIRED, False, 0, True, D.USE_OK, Verdict.FAILED),  # a wrong answer is wrong
    (Nonce.EXPIRED, True, 0, True, D.USE_OK, Verdict.STALE),
    (Nonce.EXPIRED, True, 0, False, D.USE_OK, Verdict.STALE),
    (Nonce.VALID, True, 0, False, D.USE_OK, Verdict.MISMATCH),
    (Nonce.VALID, True, 0, True, D.USE_REPLAY, Verdict.REPLAYED),
    (Nonce.VALID, True, 0, True, D.USE_FULL, Verdict.TABLE_FULL),
    (Nonce.VALID, True, 0, False, D.USE_REPLAY, Verdict.MISMATCH),
])
def test_decide(nonce: Nonce, response_ok: bool, failures: int, identity_ok: bool,
                replay: int, verdict: Verdict) -> None:
    assert D.decide(nonce, response_ok, failures, 2, identity_ok, replay) is verdict


GOOD = {"username": "a", "realm": "r", "nonce": "n", "uri": "sip:r", "response": "0" * 32}


@pytest.mark.parametrize("change, fields", [
    ({}, ("MD5", "", 1)),
    ({"qop": "auth", "nc": "0000000a", "cnonce": "c"}, ("MD5", "auth", 10)),
    ({"algorithm": "sha-256", "response": "f" * 64}, ("SHA-256", "", 1)),
    ({"algorithm": "SHA-256"}, None),  # response of the wrong length
    ({"algorithm": "MD5-sess"}, None),  # not offered
    ({"qop": "auth-int", "nc": "00000001", "cnonce": "c"}, None),
    ({"qop": "auth", "cnonce": "c"}, None),  # no nc
    ({"qop": "auth", "nc": "00000000", "cnonce": "c"}, None),
    ({"qop": "auth", "nc": "1", "cnonce": "c"}, None),
    ({"response": "Z" * 32}, None),
    ({"uri": None}, None),
])
def test_answer_fields(change: dict, fields) -> None:
    params = {**GOOD, **change}
    params = {k: v for k, v in params.items() if v is not None}
    assert D.answer_fields(params, ("SHA-256", "MD5")) == fields


def test_challenge_headers() -> None:
    assert D.challenge('ex"am', "NONCE", ("SHA-256", "MD5"), True) == [
        ("WWW-Authenticate",
         'Digest realm="ex\\"am", nonce="NONCE", qop="auth", algorithm=SHA-256, stale=true'),
        ("WWW-Authenticate",
         'Digest realm="ex\\"am", nonce="NONCE", qop="auth", algorithm=MD5, stale=true')]


PIECES = ['username', 'realm', 'nonce', 'uri', 'response', 'qop', 'nc', 'cnonce', 'x-y',
          '=', ',', ' ', '\t', '"', '\\', 'a', 'b c', 'auth', '00000001', 'sip:h', ';', '*',
          '%', "'", 'é']


@settings(max_examples=3000, deadline=None, database=None)
@given(st.lists(st.sampled_from(PIECES), max_size=16).map("".join))
def test_split_path_agrees_with_the_regex_path(rest: str) -> None:
    fast = D._split_credentials(rest)
    if fast is not None and "\\" not in rest:
        assert fast == D._parse_credentials_slow(rest)
    after_scheme = ("Digest " + rest).strip(" \t").partition(" ")[2]
    assert D.parse_credentials("Digest " + rest) == D._parse_credentials_slow(after_scheme)


def test_split_path_reads_what_phones_send() -> None:
    value = ('username="alice",realm="example.com",cnonce="6b8b4567",nc=00000001,qop=auth,'
             'uri="sip:127.0.0.1:5060",nonce="AWsNEK0AAAF_V3cPD-BqsN3tNv5ikwr7",'
             'response="7d3c3d2b0a9f0c3d5e3b8e0a1c2d3e4f",algorithm=MD5')
    assert D._split_credentials(value) == D._parse_credentials_slow(value) is not None


def test_open_caches_verified_nonces_only() -> None:
    codec = D.NonceCodec(KEY)
    n = codec.make(1000, 0, 1)
    assert codec.open(n, 1000, 300).state is Nonce.VALID
    assert codec.open(n, 1400, 300).state is Nonce.EXPIRED  # the cached fields, aged
    assert codec.open("A" * 32, 1000, 300).state is Nonce.INVALID
    assert "A" * 32 not in codec._opened and n in codec._opened
