"""Property and fuzz tests for fastcluster.core.sip.

The parser faces the open network, so the central property is totality:
for any datagram, parse_message returns a SipMessage or raises
SipParseError, never anything else, and what it returns is safe to echo
(build_response must produce a message that parses back).  The other
properties tie the fast paths to the general ones (tag_of vs
parse_name_addr, get_all comma splitting, URI canonical form).
"""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastcluster.core.sip import _QUOTED_CTL_RE  # noqa: PLC2701 (the rule under test)
from fastcluster.core.sip import (
    SipMessage,
    SipParseError,
    build_request,
    build_response,
    parse_contacts,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    tag_of,
)

# No example database: the lead commits this tree and a .hypothesis/ folder
# would only be noise; the seeds below are cheap to rediscover.
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bK-1;rport\r\n"
    b'From: "Al, B" <sip:alice@example.com>;tag=ft1\r\n'
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: 1-2@192.0.2.10\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b'Contact: <sip:alice@192.0.2.10:5061>;expires=3600;+sip.instance="<urn:uuid:1>", sip:b@h\r\n'
    b"Max-Forwards: 70\r\n"
    b"Expires: 3600\r\n"
    b"User-Agent: fuzz\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"body"
)

# Fragments that matter to a SIP parser; sequences of them reach far deeper
# than uniformly random bytes do.
FRAGMENTS = [
    b"\r\n", b"\r\n\r\n", b"\n", b"\r", b" ", b"\t", b"\r\n ", b":", b";", b",", b"=", b"<", b">",
    b'"', b"\\", b"@", b"[", b"]", b"/", b"*", b"?", b"%", b"%4", b"\x00", b"\x7f", b"\xff",
    b"\xc3\xa9", b"\xe2\x80\xa8", b"0", b"1", b"70", b"99999999999", b"-1",
    b"SIP/2.0", b"SIP/2.0 200 OK", b"sip/2.0", b"REGISTER", b"INVITE", b"sip:", b"sips:", b"tel:+1",
    b"a@b", b"[2001:db8::1]", b"192.0.2.1", b":5060", b"Via", b"v", b"From", b"f", b"To", b"t",
    b"Call-ID", b"i", b"CSeq", b"1 REGISTER", b"Contact", b"m", b"Content-Length", b"l",
    b"Max-Forwards", b"Expires", b"SIP/2.0/UDP h", b";branch=z9hG4bK1", b";rport", b";tag=x",
    b";received=", b"*", b"x-h",
]

SOURCE = ("198.51.100.7", 40123)


def check_message(msg: SipMessage) -> None:
    """Invariants every parsed message (or attached error request) must hold."""
    assert isinstance(msg.headers, list)
    for name, value in msg.headers:
        assert name and name.isascii() and name == name.lower() and ":" not in name
        assert "\r" not in value and "\n" not in value
        # NUL only as a quoted-pair in a quoted-string (RFC 3261 §25.1, RFC 4475 §3.1.1.2)
        assert "\x00" not in _QUOTED_CTL_RE.sub("", value)
    assert msg.vias == [v for n, v in msg.headers if n == "via"]
    assert msg.from_ == msg.get("from") and msg.to == msg.get("to") and msg.call_id == msg.get("call-id")
    assert msg.content_length == -1 or msg.content_length >= len(msg.body)
    if msg.is_request:
        assert msg.method and msg.status == 0
    else:
        assert msg.method == "" and 100 <= msg.status <= 699
    # Everything downstream code may call must keep to the error contract.
    assert isinstance(tag_of(msg.from_), str) and isinstance(tag_of(msg.to), str)
    for call in (
        lambda: parse_contacts(msg),
        lambda: [parse_via(v) for v in msg.get_all("via")],
        lambda: parse_name_addr(msg.to),
        lambda: parse_uri(msg.ruri),
        lambda: msg.get_all("supported"),
    ):
        try:
            call()
        except SipParseError as err:
            assert err.status == 400


def check_answer(msg: SipMessage, status: int, reason: str) -> None:
    """The response we would send must itself be a well-formed message."""
    out = build_response(msg, status, reason, [("Server", "fuzz")], to_tag="tt", received=SOURCE)
    if not 0 <= msg.cseq_num <= 2**31 - 1:
        # The CSeq is echoed verbatim (§8.2.6.2), so the answer carries the
        # same defect and a strict parser may drop it; that is the client's
        # problem, not a reason to rewrite its CSeq.
        assert f"\r\nCSeq: {msg.get('cseq')}\r\n".encode() in out
        return
    back = parse_message(out)
    assert (back.status, back.reason) == (status, reason)
    assert (back.call_id, back.from_, back.cseq_method) == (msg.call_id, msg.from_, msg.cseq_method)
    assert len(back.vias) == len(msg.vias)
    assert back.vias[1:] == msg.vias[1:]
    try:
        parse_name_addr(msg.to)
    except SipParseError:
        return  # a malformed To gets the tag appended but cannot be read back
    assert tag_of(back.to) == (tag_of(msg.to) or "tt")


def check_datagram(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as err:
        assert isinstance(err.status, int) and err.reason and "\n" not in err.reason
        if err.status == 0:
            assert err.request is None
            return
        assert err.status in (400, 505)
        assert err.request is not None and err.request.is_request
        check_message(err.request)
        check_answer(err.request, err.status, err.reason)
        return
    check_message(msg)
    if msg.is_request:
        check_answer(msg, 200, "OK")


@FUZZ
@given(st.binary(max_size=1200))
def test_random_bytes(data: bytes) -> None:
    check_datagram(data)


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=80))
def test_sip_flavoured_garbage(pieces: list[bytes]) -> None:
    check_datagram(b"".join(pieces))


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.sampled_from([b"REGISTER sip:h SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n"]))
def test_garbage_after_valid_start_line(pieces: list[bytes], start: bytes) -> None:
    check_datagram(start + REGISTER.split(b"\r\n", 1)[1].replace(b"Content-Length: 4\r\n", b"") + b"".join(pieces))


MUTATION = st.tuples(
    st.sampled_from(["replace", "insert", "delete", "duplicate"]),
    st.integers(min_value=0, max_value=len(REGISTER)),
    st.integers(min_value=0, max_value=40),
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(min_size=1, max_size=4)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    for op, pos, length, payload in mutations:
        pos = min(pos, len(data))
        if op == "replace":
            data = data[:pos] + payload + data[pos + len(payload) :]
        elif op == "insert":
            data = data[:pos] + payload + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + length :]
        else:
            data = data[:pos] + data[pos : pos + length] + data[pos:]
    return data


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_register(mutations: list[tuple[str, int, int, bytes]]) -> None:
    check_datagram(mutate(REGISTER, mutations))


@FUZZ
@given(st.integers(min_value=0, max_value=len(REGISTER)), st.sampled_from([b"", b"\r\n", b"\n"]))
def test_truncated_register(cut: int, tail: bytes) -> None:
    check_datagram(REGISTER[:cut] + tail)


def test_every_truncation_point() -> None:
    # Exhaustive, and cheap: a UDP datagram cut anywhere must never crash us.
    for cut in range(len(REGISTER) + 1):
        check_datagram(REGISTER[:cut])
        check_datagram(REGISTER[:cut].replace(b"\r\n", b"\n"))


# --------------------------------------------------------------------------
# Structured round trips

TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-.!%*_+`'~", min_size=1, max_size=12)
# URI parameters allow fewer characters than header tokens ('%' must escape).
URI_TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-.!*_+'~", min_size=1, max_size=12)
HOST = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", *[st.integers(0, 255)] * 4),
    st.sampled_from(["[2001:db8::1]", "[::1]", "[2001:db8:0:0:1::5]"]),
)
USER = st.text(alphabet=string.ascii_letters + string.digits + "-_.!~*'()&=+$", min_size=1, max_size=12)
QUOTED_CONTENT = st.text(alphabet=string.ascii_letters + string.digits + ' ,;:<>@=\\"éß', max_size=12)
LWS = st.sampled_from(["", " ", "  ", "\t"])


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def uris(draw: st.DrawFn) -> str:
    user = draw(st.one_of(st.none(), USER))
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    uparams = draw(st.lists(st.tuples(URI_TOKEN, st.one_of(st.none(), URI_TOKEN)), max_size=3))
    text = "sip:" + (f"{user}@" if user else "") + draw(HOST) + (f":{port}" if port else "")
    for name, value in uparams:
        text += f";{name}" + ("" if value is None else f"={value}")
    return text


@st.composite
def header_params(draw: st.DrawFn) -> list[tuple[str, str | None]]:
    value = st.one_of(st.none(), TOKEN, QUOTED_CONTENT.map(quote))
    return draw(st.lists(st.tuples(TOKEN, value), max_size=4))


@st.composite
def name_addrs(draw: st.DrawFn) -> tuple[str, str, dict[str, str | None]]:
    """(text, uri, expected header params) for a well-formed From/To/Contact value."""
    uri = draw(uris())
    params = draw(header_params())
    if draw(st.booleans()):
        params.insert(draw(st.integers(0, len(params))), ("tag", draw(TOKEN)))
    rendered = "".join(
        f"{draw(LWS)};{draw(LWS)}{name}" + ("" if value is None else f"{draw(LWS)}={draw(LWS)}{value}")
        for name, value in params
    )
    form = draw(st.sampled_from(["quoted", "tokens", "bare", "addr-spec"]))
    if form == "addr-spec" and ";" not in uri and "?" not in uri:
        text = uri + rendered
    elif form == "quoted":
        text = f"{quote(draw(QUOTED_CONTENT))}{draw(LWS)}<{uri}>{rendered}"
    elif form == "tokens":
        text = " ".join(draw(st.lists(TOKEN, min_size=1, max_size=3))) + f" <{uri}>{rendered}"
    else:
        text = f"<{uri}>{rendered}"
    expected: dict[str, str | None] = {}
    for name, value in params:
        if value is not None and value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        expected.setdefault(name.lower(), value)
    return text, uri, expected


@FUZZ
@given(name_addrs())
def test_name_addr_round_trip_and_tag_of_agree(case: tuple[str, str, dict[str, str | None]]) -> None:
    text, uri, expected = case
    na = parse_name_addr(text)
    assert (na.uri, na.params) == (uri, expected)
    # The tag_of fast path must agree with the full parser.
    assert tag_of(text) == (expected.get("tag") or "")


@FUZZ
@given(st.lists(name_addrs(), min_size=1, max_size=4), st.lists(LWS, min_size=4, max_size=4))
def test_contact_list_splitting(cases: list[tuple[str, str, dict[str, str | None]]], spaces: list[str]) -> None:
    joined = (spaces[0] + "," + spaces[1]).join(text for text, _, _ in cases)
    msg = parse_message(REGISTER.replace(b"Contact: ", b"Contact: " + joined.encode() + b"\r\nX-Old: "))
    contacts = parse_contacts(msg)
    assert contacts is not None
    assert [(c.uri, c.params) for c in contacts[: len(cases)]] == [(uri, params) for _, uri, params in cases]
    assert msg.get_all("contact")[: len(cases)] == [text.strip() for text, _, _ in cases]


HEADER_VALUE = st.text(
    alphabet=string.ascii_letters + string.digits + " \t!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\"éü€",
    max_size=40,
).map(lambda s: s.strip(" \t"))


@FUZZ
@given(
    st.lists(st.tuples(st.one_of(TOKEN, st.sampled_from(["Subject", "s", "Route", "Supported", "X-A"])), HEADER_VALUE), max_size=8),
    st.binary(max_size=60),
)
def test_build_request_then_parse_round_trip(extra: list[tuple[str, str]], body: bytes) -> None:
    reserved = {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "content-length", "l", "max-forwards", "expires"}
    extra = [(n, v) for n, v in extra if n.lower() not in reserved]
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-r"),
        ("From", "<sip:a@h>;tag=1"),
        ("To", "<sip:b@h>"),
        ("Call-ID", "rt@h"),
        ("CSeq", "9 MESSAGE"),
        *extra,
    ]
    msg = parse_message(build_request("MESSAGE", "sip:b@h", headers, body))
    got = [(n, v) for n, v in msg.headers if n != "content-length"]
    assert [v for _, v in got] == [v for _, v in headers]
    assert (msg.body, msg.content_length) == (body, len(body))


@FUZZ
@given(uris())
def test_uri_canonical_form_is_a_fixed_point(text: str) -> None:
    uri = parse_uri(text)
    again = parse_uri(str(uri))
    assert str(again) == str(uri)
    assert (again.user, again.host, again.port, again.params) == (uri.user, uri.host, uri.port, uri.params)


URI_ALPHABET = string.ascii_letters[:12] + string.digits[:4] + ":;@=?&[]%.+-<>\" \t,!~*'()/$"


@FUZZ
@given(st.text(alphabet=URI_ALPHABET, max_size=40), st.sampled_from(["sip:", "sips:", "tel:", "", "SIP:"]))
def test_uri_parser_is_total(text: str, scheme: str) -> None:
    try:
        uri = parse_uri(scheme + text)
    except SipParseError as err:
        assert (err.status, err.reason) == (400, "Bad URI")
        return
    assert str(parse_uri(str(uri))) == str(uri)


@FUZZ
@given(st.text(alphabet=URI_ALPHABET + "é\\", max_size=50), st.sampled_from(["", "<sip:", '"', "sip:a@b", "SIP/2.0/UDP "]))
def test_value_parsers_are_total(text: str, prefix: str) -> None:
    value = prefix + text
    assert isinstance(tag_of(value), str)
    for parser in (parse_name_addr, parse_via):
        try:
            parser(value)
        except SipParseError as err:
            assert err.status == 400


# --------------------------------------------------------------------------
# Adversarial sizes: every path must stay linear in the datagram size.

N = 60_000
HEAD = REGISTER.split(b"Content-Length")[0]
PATHOLOGICAL = [
    ("spaces-in-request-line", b"INVITE " + b" " * N + b"x\r\n\r\n"),
    ("spaces-before-version", b"INVITE sip:a" + b" " * N + b"SIP/2.0x\r\n" + HEAD.split(b"\r\n", 1)[1] + b"\r\n"),
    ("spaces-then-fold", HEAD + b"Subject: a" + b" " * N + b"b\r\n c\r\n\r\n"),
    ("many-folds", HEAD + b"Subject: a\r\n" + b" \r\n" * (N // 3) + b"\r\n"),
    ("many-folds-bare-lf", HEAD.replace(b"\r\n", b"\n") + b"Subject: a\n" + b" \n" * (N // 2) + b"\n"),
    ("many-headers", HEAD + b"X: 1\r\n" * (N // 6) + b"\r\n"),
    ("many-vias", HEAD + b"v: SIP/2.0/UDP h\r\n" * (N // 18) + b"\r\n"),
    ("long-via-host", HEAD.replace(b"192.0.2.10:5061", b"a" * N + b"!") + b"\r\n"),
    ("unterminated-quote-contact", HEAD + b'Contact: "' + b"a\\" * (N // 2) + b"\r\n\r\n"),
    ("many-contacts", HEAD + b"Contact: " + b'"x,y" <sip:a@b>,' * (N // 18) + b"\r\n\r\n"),
    ("many-params", HEAD + b"Contact: <sip:a@b>" + b";a=b" * (N // 4) + b"\r\n\r\n"),
    ("nul-bytes", b"\x00" * N),
    ("invalid-utf8", b"\xff" * N),
]


@pytest.mark.parametrize("data", [c[1] for c in PATHOLOGICAL], ids=[c[0] for c in PATHOLOGICAL])
def test_pathological_input_is_fast(data: bytes) -> None:
    began = time.perf_counter()
    check_datagram(data)
    # A quadratic path would take seconds to minutes at this size.
    assert time.perf_counter() - began < 0.5


PATHOLOGICAL_VALUES = [
    ("tel-digits", "tel:" + "1" * N + "!"),
    ("user-chars", "sip:" + "a" * N + "!@b"),
    ("display-words", "a " * (N // 2) + "<"),
    ("backslashes", '"' + "\\\\" * (N // 2)),
    ("params", "<sip:a@b>" + ";a=b" * (N // 4) + "!"),
    ("via-spaces", "SIP/2.0/UDP h" + " " * N + "x"),
    ("tags", "<sip:a@b>" + "; tag =" * (N // 7)),
]


@pytest.mark.parametrize("text", [c[1] for c in PATHOLOGICAL_VALUES], ids=[c[0] for c in PATHOLOGICAL_VALUES])
def test_pathological_values_are_fast(text: str) -> None:
    began = time.perf_counter()
    tag_of(text)
    for parser in (parse_uri, parse_name_addr, parse_via):
        try:
            parser(text)
        except SipParseError:
            pass
    assert time.perf_counter() - began < 0.5
