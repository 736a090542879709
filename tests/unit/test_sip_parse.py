"""Table-style unit tests for fastcluster.core.sip.

Covers what a registrar/proxy relies on: start lines, header names and
compact forms, comma lists, name-addr vs addr-spec, URIs (incl. IPv6), Via,
UDP Content-Length rules, folding, error statuses, and the response and
request builders.  The messages are written for these tests in the spirit of
the RFC 4475 torture tests, not copied from it.
"""

from __future__ import annotations

import pytest

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

VIA = "SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bK-reg-1;rport"
BASE_HEADERS: list[tuple[str, str]] = [
    ("Via", VIA),
    ("From", "<sip:alice@example.com>;tag=fromtag1"),
    ("To", "<sip:alice@example.com>"),
    ("Call-ID", "reg-1@192.0.2.10"),
    ("CSeq", "1 REGISTER"),
]


def wire(
    start: str = "REGISTER sip:example.com SIP/2.0",
    headers: list[tuple[str, str]] | None = None,
    extra: list[str] | None = None,
    body: bytes = b"",
    eol: str = "\r\n",
) -> bytes:
    """Assemble a datagram from a start line, (name, value) pairs and raw lines."""
    lines = [start]
    lines += [f"{name}: {value}" for name, value in (BASE_HEADERS if headers is None else headers)]
    lines += extra or []
    return (eol.join(lines) + eol + eol).encode() + body


def replace_header(name: str, value: str | None) -> list[tuple[str, str]]:
    """BASE_HEADERS with ``name`` set to ``value`` (or removed for None)."""
    out = [(n, v) for n, v in BASE_HEADERS if n != name]
    if value is not None:
        out.append((name, value))
    return out


def parse_error(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    return info.value


# --------------------------------------------------------------------------
# Start lines

REQUEST_LINES = [
    ("register", "REGISTER sip:example.com SIP/2.0", "REGISTER", "sip:example.com"),
    ("unknown-method", "FROBNICATE sip:example.com SIP/2.0", "FROBNICATE", "sip:example.com"),
    ("lower-case-version", "REGISTER sip:example.com sip/2.0", "REGISTER", "sip:example.com"),
    ("runs-of-spaces", "REGISTER   sip:example.com \t SIP/2.0", "REGISTER", "sip:example.com"),
    ("tel-ruri", "REGISTER tel:+15551234 SIP/2.0", "REGISTER", "tel:+15551234"),
    ("sips-ipv6", "REGISTER sips:[2001:db8::1]:5061 SIP/2.0", "REGISTER", "sips:[2001:db8::1]:5061"),
    (
        "escaped-user-with-semicolon",
        "REGISTER sip:user;par=u%40example.net@example.com SIP/2.0",
        "REGISTER",
        "sip:user;par=u%40example.net@example.com",
    ),
    ("unknown-scheme", "REGISTER urn:service:sos SIP/2.0", "REGISTER", "urn:service:sos"),
]


@pytest.mark.parametrize(("start", "method", "ruri"), [c[1:] for c in REQUEST_LINES], ids=[c[0] for c in REQUEST_LINES])
def test_request_line(start: str, method: str, ruri: str) -> None:
    headers = replace_header("CSeq", f"7 {method}")
    msg = parse_message(wire(start, headers))
    assert msg.is_request
    assert (msg.method, msg.ruri, msg.status, msg.reason) == (method, ruri, 0, "")


STATUS_LINES = [
    ("ok", "SIP/2.0 200 OK", 200, "OK"),
    ("multi-word", "SIP/2.0 486 Busy Here", 486, "Busy Here"),
    ("no-reason", "SIP/2.0 100", 100, ""),
    ("utf8-reason", "SIP/2.0 200 Très bien", 200, "Très bien"),
    ("lower-case-version", "sip/2.0 180 Ringing", 180, "Ringing"),
    ("extension-code", "SIP/2.0 699 Whatever", 699, "Whatever"),
]


@pytest.mark.parametrize(("start", "status", "reason"), [c[1:] for c in STATUS_LINES], ids=[c[0] for c in STATUS_LINES])
def test_status_line(start: str, status: int, reason: str) -> None:
    msg = parse_message(wire(start))
    assert not msg.is_request
    assert (msg.method, msg.ruri, msg.status, msg.reason) == ("", "", status, reason)
    assert msg.cseq_method == "REGISTER"


BAD_START_LINES = [
    ("garbage", "HELLO WORLD", 0),
    ("empty", "", 0),
    ("missing-version", "REGISTER sip:example.com", 0),
    ("http", "GET / HTTP/1.1", 0),
    ("method-not-token", "REG@STER sip:example.com SIP/2.0", 0),
    ("version-3", "REGISTER sip:example.com SIP/3.0", 505),
    ("version-2.1", "REGISTER sip:example.com SIP/2.1", 505),
    ("space-in-ruri", "REGISTER sip:exa mple.com SIP/2.0", 400),
    ("ruri-without-scheme", "REGISTER example.com SIP/2.0", 400),
    ("response-version-3", "SIP/3.0 200 OK", 0),
    ("status-two-digits", "SIP/2.0 20 OK", 0),
    ("status-700", "SIP/2.0 700 Nope", 0),
    ("status-glued-reason", "SIP/2.0 200OK", 0),
]


@pytest.mark.parametrize(("start", "status"), [c[1:] for c in BAD_START_LINES], ids=[c[0] for c in BAD_START_LINES])
def test_bad_start_line(start: str, status: int) -> None:
    err = parse_error(wire(start))
    assert err.status == status
    if status == 505:
        assert err.reason == "Version Not Supported"
    if status:
        # Answerable errors carry the request so that a response can be built.
        assert err.request is not None
        assert err.request.call_id == "reg-1@192.0.2.10"
    else:
        assert err.request is None


# --------------------------------------------------------------------------
# Header names: compact forms, case, spacing

COMPACT_FORMS = [
    ("i", "call-id"), ("m", "contact"), ("f", "from"), ("t", "to"), ("v", "via"),
    ("l", "content-length"), ("k", "supported"), ("c", "content-type"),
    ("e", "content-encoding"), ("s", "subject"), ("o", "event"), ("u", "allow-events"),
    ("r", "refer-to"), ("b", "referred-by"), ("x", "session-expires"), ("y", "identity"),
    ("a", "accept-contact"), ("j", "reject-contact"), ("d", "request-disposition"),
]


@pytest.mark.parametrize(("short", "full"), COMPACT_FORMS)
@pytest.mark.parametrize("upper", [False, True], ids=["lower", "upper"])
def test_compact_form_is_expanded(short: str, full: str, upper: bool) -> None:
    value = {"call-id": "reg-1@192.0.2.10", "from": BASE_HEADERS[1][1], "to": BASE_HEADERS[2][1],
             "via": VIA, "content-length": "0"}.get(full, "x-value")
    headers = [(n, v) for n, v in BASE_HEADERS if n.lower() != full]
    headers.append((short.upper() if upper else short, value))
    msg = parse_message(wire(headers=headers))
    assert (full, value) in msg.headers
    assert msg.get(full) == value
    assert msg.get(short) == value


HEADER_NAME_SPELLINGS = [
    ("upper", "CALL-ID: abc", "call-id", "abc"),
    ("mixed", "cAlL-iD: abc", "call-id", "abc"),
    ("odd-cseq", "cseq: 1 REGISTER", "cseq", "1 REGISTER"),
    ("space-before-colon", "Subject  : hello", "subject", "hello"),
    ("tab-before-colon", "Subject\t:\thello", "subject", "hello"),
    ("no-space-after-colon", "Subject:hello", "subject", "hello"),
    ("trailing-space", "Subject: hello   ", "subject", "hello"),
    ("empty-value", "Subject:", "subject", ""),
    ("unknown-header", "X-Weird.Name_!%*+`'~: v", "x-weird.name_!%*+`'~", "v"),
    ("colon-in-value", "Subject: a:b:c", "subject", "a:b:c"),
    ("utf8-value", "Subject: Grüße, 你好", "subject", "Grüße, 你好"),
]


@pytest.mark.parametrize(("line", "name", "value"), [c[1:] for c in HEADER_NAME_SPELLINGS], ids=[c[0] for c in HEADER_NAME_SPELLINGS])
def test_header_name_spelling(line: str, name: str, value: str) -> None:
    headers = [(n, v) for n, v in BASE_HEADERS if n.lower() != name]
    msg = parse_message(wire(headers=headers, extra=[line]))
    assert (name, value) in msg.headers
    assert msg.get(name.upper()) == value


BAD_HEADER_LINES = [
    ("no-colon", "This line has no colon", "Bad header line"),
    ("space-in-name", "Bad Name: x", "Bad header name"),
    ("empty-name", ": x", "Bad header name"),
    ("non-ascii-name", "Ünknown: x", "Bad header name"),
    ("kelvin-sign-is-not-k", "\u212a: path", "Bad header name"),
]


@pytest.mark.parametrize(("line", "reason"), [c[1:] for c in BAD_HEADER_LINES], ids=[c[0] for c in BAD_HEADER_LINES])
def test_bad_header_line_is_400_with_request(line: str, reason: str) -> None:
    err = parse_error(wire(extra=[line]))
    assert (err.status, err.reason) == (400, reason)
    assert err.request is not None and err.request.get("call-id") == "reg-1@192.0.2.10"


def test_headers_keep_wire_order_and_repeats() -> None:
    msg = parse_message(
        wire(extra=["Route: <sip:p1.example.com;lr>", "Subject: s", "Route: <sip:p2.example.com;lr>"])
    )
    names = [n for n, _ in msg.headers]
    assert names == ["via", "from", "to", "call-id", "cseq", "route", "subject", "route"]
    assert msg.get("route") == "<sip:p1.example.com;lr>"
    assert msg.get("x-absent") is None
    assert msg.get_all("x-absent") == []


# --------------------------------------------------------------------------
# Comma lists

GET_ALL_CASES = [
    (
        "quoted-comma-and-uri-comma",
        ["Contact: \"Smith, Bob\" <sip:bob@192.0.2.4>, <sip:a,b@example.com>;q=0.5"],
        "contact",
        ['"Smith, Bob" <sip:bob@192.0.2.4>', "<sip:a,b@example.com>;q=0.5"],
    ),
    (
        "escaped-quote-then-comma",
        ['Contact: "Bob \\"the, builder\\"" <sip:b@example.com>, sip:c@example.com'],
        "contact",
        ['"Bob \\"the, builder\\"" <sip:b@example.com>', "sip:c@example.com"],
    ),
    (
        "quoted-param-with-comma",
        ['Contact: <sip:a@example.com>;+sip.instance="<urn:x,y>";expires=5, <sip:b@example.com>'],
        "contact",
        ['<sip:a@example.com>;+sip.instance="<urn:x,y>";expires=5', "<sip:b@example.com>"],
    ),
    (
        "lines-and-commas-mixed",
        ["Route: <sip:p1;lr>, <sip:p2;lr>", "Route: <sip:p3;lr>"],
        "route",
        ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"],
    ),
    ("tokens-with-odd-spacing", ["Supported: path ,outbound,  gruu"], "supported", ["path", "outbound", "gruu"]),
    ("compact-supported", ["k: timer, 100rel"], "supported", ["timer", "100rel"]),
    ("empty-list-header", ["Supported:"], "supported", []),
    ("empty-elements-dropped", ["Allow: INVITE,,ACK,"], "allow", ["INVITE", "ACK"]),
    ("date-is-not-a-list", ["Date: Sat, 13 Nov 2010 23:29:00 GMT"], "date", ["Sat, 13 Nov 2010 23:29:00 GMT"]),
    ("subject-is-not-a-list", ["Subject: a, b"], "subject", ["a, b"]),
    (
        "authorization-is-not-a-list",
        ['Authorization: Digest username="a", realm="b"'],
        "authorization",
        ['Digest username="a", realm="b"'],
    ),
]


@pytest.mark.parametrize(("extra", "name", "expected"), [c[1:] for c in GET_ALL_CASES], ids=[c[0] for c in GET_ALL_CASES])
def test_get_all(extra: list[str], name: str, expected: list[str]) -> None:
    msg = parse_message(wire(extra=extra))
    assert msg.get_all(name) == expected


def test_get_all_vias_splits_combined_values_but_vias_keeps_lines() -> None:
    second = "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p1, SIP/2.0/TCP [2001:db8::2]:5070;branch=z9hG4bK-p2"
    msg = parse_message(wire(headers=[*BASE_HEADERS, ("v", second)]))
    assert msg.vias == [VIA, second]
    values = msg.get_all("Via")
    assert len(values) == 3
    assert [parse_via(v).host for v in values] == ["192.0.2.10", "proxy.example.com", "[2001:db8::2]"]


# --------------------------------------------------------------------------
# name-addr / addr-spec

NAME_ADDRS = [
    ("quoted-display", '"Bob" <sip:bob@example.com>;tag=1', "Bob", "sip:bob@example.com", {"tag": "1"}),
    ("token-display", "Bob Smith <sip:bob@example.com>", "Bob Smith", "sip:bob@example.com", {}),
    ("no-display", "<sip:bob@example.com>", "", "sip:bob@example.com", {}),
    ("empty-quoted-display", '"" <sip:bob@example.com>', "", "sip:bob@example.com", {}),
    (
        "uri-params-stay-in-uri",
        "<sip:bob@192.0.2.4:5060;transport=tcp>;expires=60;q=0.7",
        "",
        "sip:bob@192.0.2.4:5060;transport=tcp",
        {"expires": "60", "q": "0.7"},
    ),
    ("addr-spec-params-are-header-params", "sip:bob@example.com;tag=1;x", "", "sip:bob@example.com", {"tag": "1", "x": None}),
    ("addr-spec-bare", "sip:bob@example.com", "", "sip:bob@example.com", {}),
    ("addr-spec-space-before-semi", "sip:bob@example.com ;tag=9", "", "sip:bob@example.com", {"tag": "9"}),
    (
        "escaped-quotes-in-display",
        '"The \\"Boss\\" \\\\ Co" <sip:boss@example.com>',
        'The "Boss" \\ Co',
        "sip:boss@example.com",
        {},
    ),
    ("angle-in-quoted-display", '"a <b> c" <sip:x@example.com>', "a <b> c", "sip:x@example.com", {}),
    (
        "instance-id-unquoted",
        '<sip:a@192.0.2.5>;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1',
        "",
        "sip:a@192.0.2.5",
        {"+sip.instance": "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>", "reg-id": "1"},
    ),
    (
        "addr-spec-with-quoted-angle-param",
        'sip:a@192.0.2.5;+sip.instance="<urn:uuid:1>"',
        "",
        "sip:a@192.0.2.5",
        {"+sip.instance": "<urn:uuid:1>"},
    ),
    ("spaces-around-params", "<sip:a@example.com> ; tag = xyz ; lr ", "", "sip:a@example.com", {"tag": "xyz", "lr": None}),
    ("param-name-lowercased", "<sip:a@example.com>;TAG=AbC", "", "sip:a@example.com", {"tag": "AbC"}),
    ("duplicate-param-first-wins", "<sip:a@example.com>;tag=1;tag=2", "", "sip:a@example.com", {"tag": "1"}),
    ("utf8-token-display", "Jöhn <sip:j@example.com>", "Jöhn", "sip:j@example.com", {}),
    ("no-space-before-angle", '"Al"<sip:al@example.com>', "Al", "sip:al@example.com", {}),
    ("tel-uri", "<tel:+1-201-555-0123>;tag=t", "", "tel:+1-201-555-0123", {"tag": "t"}),
    ("ipv6-uri", "<sip:a@[2001:db8::1]:5060>", "", "sip:a@[2001:db8::1]:5060", {}),
    ("ipv6-host-param", "<sip:a@example.com>;received=[2001:db8::1]", "", "sip:a@example.com", {"received": "[2001:db8::1]"}),
]


@pytest.mark.parametrize(("text", "display", "uri", "params"), [c[1:] for c in NAME_ADDRS], ids=[c[0] for c in NAME_ADDRS])
def test_parse_name_addr(text: str, display: str, uri: str, params: dict[str, str | None]) -> None:
    na = parse_name_addr(text)
    assert (na.display, na.uri, na.params) == (display, uri, params)
    assert na.raw == text.strip()


BAD_NAME_ADDRS = [
    ("empty", ""),
    ("blank", "   "),
    ("unterminated-quote", '"Bob <sip:bob@example.com>'),
    ("unterminated-angle", "<sip:bob@example.com"),
    ("empty-angle", "Bob <>"),
    ("no-scheme", "<bob@example.com>"),
    ("quoted-display-without-angle", '"Bob" sip:bob@example.com'),
    ("space-inside-addr-spec", "sip:bob @example.com"),
    ("junk-after-angle", "<sip:bob@example.com>junk"),
    ("empty-param-name", "<sip:bob@example.com>;=x"),
    ("empty-param", "<sip:bob@example.com>;;tag=1"),
    ("unterminated-quoted-param", '<sip:bob@example.com>;x="abc'),
    ("angle-in-unquoted-param", "<sip:bob@example.com>;x=<y>"),
    ("unquoted-angle-after-addr-spec", "sip:bob@example.com;x <sip:y@z>"),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_NAME_ADDRS], ids=[c[0] for c in BAD_NAME_ADDRS])
def test_parse_name_addr_rejects(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_name_addr(text)
    assert info.value.status == 400


TAGS = [
    ("name-addr", "<sip:a@example.com>;tag=abc", "abc"),
    ("addr-spec", "sip:a@example.com;tag=abc", "abc"),
    ("none", "<sip:a@example.com>", ""),
    ("uri-param-is-not-tag", "<sip:a@example.com;tag=uri>", ""),
    ("uri-param-and-header-tag", "<sip:a@example.com;tag=uri>;tag=hdr", "hdr"),
    ("in-quoted-display", '"x;tag=no" <sip:a@example.com>', ""),
    ("after-quoted-display", '"x" <sip:a@example.com>;tag=yes', "yes"),
    ("spaces-and-case", "<sip:a@example.com> ; TAG = Up ", "Up"),
    ("similar-name", "<sip:a@example.com>;tagx=1", ""),
    ("middle", "<sip:a@example.com>;x=1;tag=t;y=2", "t"),
    ("upper-name", "<sip:a@example.com>;TAG=v", "v"),
    ("flag-tag", "<sip:a@example.com>;tag", ""),
    ("empty-text", "", ""),
    ("garbage", "<<<", ""),
    ("quoted-other-param", '<sip:a@example.com>;x="a;tag=b";tag=c', "c"),
]


@pytest.mark.parametrize(("text", "tag"), [c[1:] for c in TAGS], ids=[c[0] for c in TAGS])
def test_tag_of(text: str, tag: str) -> None:
    assert tag_of(text) == tag


# --------------------------------------------------------------------------
# Contacts

CONTACTS = [
    ("single", ["Contact: <sip:a@192.0.2.1:5061>;expires=3600"], [("sip:a@192.0.2.1:5061", {"expires": "3600"})]),
    ("compact-and-addr-spec", ["m: sip:a@192.0.2.1"], [("sip:a@192.0.2.1", {})]),
    (
        "two-lines-and-comma",
        ["Contact: <sip:a@h1>;q=1, \"B, Jr\" <sip:b@h2>", "Contact: sip:c@h3;expires=0"],
        [("sip:a@h1", {"q": "1"}), ("sip:b@h2", {}), ("sip:c@h3", {"expires": "0"})],
    ),
    ("none", [], []),
]


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in CONTACTS], ids=[c[0] for c in CONTACTS])
def test_parse_contacts(extra: list[str], expected: list[tuple[str, dict[str, str | None]]]) -> None:
    contacts = parse_contacts(parse_message(wire(extra=extra)))
    assert contacts is not None
    assert [(c.uri, c.params) for c in contacts] == expected


def test_parse_contacts_wildcard() -> None:
    msg = parse_message(wire(extra=["Contact: *", "Expires: 0"]))
    assert parse_contacts(msg) is None
    assert msg.expires == 0


BAD_CONTACTS = [
    ("star-and-uri-same-line", ["Contact: *, <sip:a@h>"]),
    ("star-and-uri-two-lines", ["Contact: *", "Contact: <sip:a@h>"]),
    ("two-stars", ["Contact: *", "Contact: *"]),
    ("star-with-param", ["Contact: *;expires=0"]),
    ("empty-element", ["Contact: <sip:a@h>,,<sip:b@h>"]),
    ("empty-header", ["Contact:"]),
    ("malformed", ["Contact: <sip:a@h"]),
    ("bad-param", ["Contact: <sip:a@h>;=1"]),
]


@pytest.mark.parametrize("extra", [c[1] for c in BAD_CONTACTS], ids=[c[0] for c in BAD_CONTACTS])
def test_parse_contacts_rejects(extra: list[str]) -> None:
    msg = parse_message(wire(extra=extra))
    with pytest.raises(SipParseError) as info:
        parse_contacts(msg)
    assert (info.value.status, info.value.reason) == (400, "Bad Contact")


# --------------------------------------------------------------------------
# URIs

URIS = [
    ("plain", "sip:alice@atlanta.com", ("sip", "alice", "", "atlanta.com", 0, {}, ""), "sip:alice@atlanta.com"),
    (
        "case-folding",
        "SIP:Alice@AtLanTa.COM:5060",
        ("sip", "Alice", "", "atlanta.com", 5060, {}, ""),
        "sip:Alice@atlanta.com:5060",
    ),
    (
        "sips-ipv6-password-params",
        "sips:bob:s3cr%65t@[2001:DB8::1]:5061;transport=TCP;LR",
        ("sips", "bob", "s3cr%65t", "[2001:db8::1]", 5061, {"transport": "TCP", "lr": None}, ""),
        "sips:bob:s3cr%65t@[2001:db8::1]:5061;transport=TCP;lr",
    ),
    ("ipv6-no-user", "sip:[::1]", ("sip", "", "", "[::1]", 0, {}, ""), "sip:[::1]"),
    (
        "ipv4-mapped-ipv6",
        "sip:[::ffff:192.0.2.1]:5060",
        ("sip", "", "", "[::ffff:192.0.2.1]", 5060, {}, ""),
        "sip:[::ffff:192.0.2.1]:5060",
    ),
    (
        "semicolon-in-user",
        "sip:alice;day=tuesday@atlanta.com",
        ("sip", "alice;day=tuesday", "", "atlanta.com", 0, {}, ""),
        "sip:alice;day=tuesday@atlanta.com",
    ),
    (
        "phone-user",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        ("sip", "+1-212-555-1212", "1234", "gateway.com", 0, {"user": "phone"}, ""),
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
    ),
    (
        "uri-headers",
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com&priority=urgent",
        ("sip", "", "", "atlanta.com", 0, {"method": "REGISTER"}, "to=alice%40atlanta.com&priority=urgent"),
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com&priority=urgent",
    ),
    (
        "maddr-ttl",
        "sip:host.example.com:5060;maddr=239.255.255.1;ttl=15",
        ("sip", "", "", "host.example.com", 5060, {"maddr": "239.255.255.1", "ttl": "15"}, ""),
        "sip:host.example.com:5060;maddr=239.255.255.1;ttl=15",
    ),
    ("escaped-user", "sip:%61lice@atlanta.com", ("sip", "%61lice", "", "atlanta.com", 0, {}, ""), "sip:%61lice@atlanta.com"),
    (
        "tel",
        "tel:+1-201-555-0123;Phone-Context=example.com",
        ("tel", "+1-201-555-0123", "", "", 0, {"phone-context": "example.com"}, ""),
        "tel:+1-201-555-0123;phone-context=example.com",
    ),
    ("tel-local", "TEL:7042;phone-context=+1", ("tel", "7042", "", "", 0, {"phone-context": "+1"}, ""), "tel:7042;phone-context=+1"),
]


@pytest.mark.parametrize(("text", "fields", "canonical"), [c[1:] for c in URIS], ids=[c[0] for c in URIS])
def test_parse_uri(text: str, fields: tuple[object, ...], canonical: str) -> None:
    uri = parse_uri(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params, uri.headers) == fields
    assert str(uri) == canonical
    # The canonical text is a fixed point.
    assert str(parse_uri(canonical)) == canonical


BAD_URIS = [
    ("other-scheme", "http://example.com/"),
    ("no-scheme", "alice@example.com"),
    ("empty-after-scheme", "sip:"),
    ("empty-user", "sip:@example.com"),
    ("two-ats", "sip:a@b@example.com"),
    ("port-too-big", "sip:example.com:99999"),
    ("port-not-numeric", "sip:example.com:abc"),
    ("bad-ipv6", "sip:[2001:db8::zz]"),
    ("ipv6-two-double-colons", "sip:[1::2::3]"),
    ("bad-password", "sip:alice:p%zz@example.com"),
    ("bad-uri-headers", "sip:example.com?a b"),
    ("unclosed-ipv6", "sip:[2001:db8::1"),
    ("ipv6-without-brackets", "sip:2001:db8::1"),
    ("space-in-user", "sip:a b@example.com"),
    ("empty-param-name", "sip:example.com;=x"),
    ("bad-escape", "sip:%zz@example.com"),
    ("bad-host-char", "sip:exa!mple.com"),
    ("tel-empty", "tel:"),
    ("tel-letters", "tel:call-me"),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_URIS], ids=[c[0] for c in BAD_URIS])
def test_parse_uri_rejects(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    assert (info.value.status, info.value.reason) == (400, "Bad URI")


# --------------------------------------------------------------------------
# Via

VIAS = [
    (
        "typical",
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;rport",
        ("SIP/2.0/UDP", "UDP", "10.0.0.1", 5060, {"branch": "z9hG4bK776asdhds", "rport": None}),
    ),
    (
        "lws-everywhere",
        "SIP / 2.0 / tcp  Host.Example.COM : 5070 ; branch = z9hG4bK1 ; received=192.0.2.1",
        ("SIP/2.0/TCP", "TCP", "host.example.com", 5070, {"branch": "z9hG4bK1", "received": "192.0.2.1"}),
    ),
    (
        "ipv6-sent-by-and-received",
        "SIP/2.0/UDP [2001:DB8::9:1]:5070;branch=z9hG4bKx;received=2001:db8::9:255;rport=5071",
        ("SIP/2.0/UDP", "UDP", "[2001:db8::9:1]", 5070, {"branch": "z9hG4bKx", "received": "2001:db8::9:255", "rport": "5071"}),
    ),
    ("no-port-ipv6-maddr", "SIP/2.0/TLS h.example.com;maddr=[::1]", ("SIP/2.0/TLS", "TLS", "h.example.com", 0, {"maddr": "[::1]"})),
    ("no-params", "SIP/2.0/SCTP h", ("SIP/2.0/SCTP", "SCTP", "h", 0, {})),
    ("extension-param-quoted", 'SIP/2.0/UDP h;x="a;b"', ("SIP/2.0/UDP", "UDP", "h", 0, {"x": "a;b"})),
]


@pytest.mark.parametrize(("text", "fields"), [c[1:] for c in VIAS], ids=[c[0] for c in VIAS])
def test_parse_via(text: str, fields: tuple[object, ...]) -> None:
    via = parse_via(text)
    assert (via.sent_protocol, via.transport, via.host, via.port, via.params) == fields


BAD_VIAS = [
    ("no-transport", "SIP/2.0 host"),
    ("no-host", "SIP/2.0/UDP"),
    ("port-too-big", "SIP/2.0/UDP host:99999"),
    ("junk-after-host", "SIP/2.0/UDP host junk"),
    ("bad-ipv6", "SIP/2.0/UDP [::zz]"),
    ("ipv6-two-double-colons", "SIP/2.0/UDP [1::2::3]"),
    ("two-values", "SIP/2.0/UDP a, SIP/2.0/UDP b"),
    ("empty-param", "SIP/2.0/UDP a;;branch=1"),
    ("empty", ""),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_VIAS], ids=[c[0] for c in BAD_VIAS])
def test_parse_via_rejects(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_via(text)
    assert (info.value.status, info.value.reason) == (400, "Bad Via")


# --------------------------------------------------------------------------
# Content-Length on UDP (RFC 3261 §18.3)

CONTENT_LENGTHS: list[tuple[str, list[str], bytes, bytes | None, int]] = [
    ("absent-takes-rest", [], b"v=0\r\n", b"v=0\r\n", -1),
    ("absent-no-body", [], b"", b"", -1),
    ("zero", ["Content-Length: 0"], b"", b"", 0),
    ("exact", ["Content-Length: 5"], b"hello", b"hello", 5),
    ("shorter-truncates", ["Content-Length: 5"], b"hello, world", b"hello", 5),
    ("zero-ignores-extra", ["Content-Length: 0"], b"trailing junk", b"", 0),
    ("leading-zeros", ["Content-Length: 0005"], b"hello", b"hello", 5),
    ("compact", ["l: 3"], b"abcdef", b"abc", 3),
    ("binary-body", ["Content-Length: 4"], b"\x00\xff\r\n", b"\x00\xff\r\n", 4),
    ("body-with-blank-lines", ["Content-Length: 8"], b"\r\n\r\nabcd", b"\r\n\r\nabcd", 8),
    ("longer-is-400", ["Content-Length: 50"], b"short", None, 400),
    ("non-numeric", ["Content-Length: five"], b"hello", None, 400),
    ("negative", ["Content-Length: -1"], b"", None, 400),
    ("huge", ["Content-Length: 99999999999999999999999"], b"", None, 400),
    ("duplicate", ["Content-Length: 0", "Content-Length: 0"], b"", None, 400),
]


@pytest.mark.parametrize(
    ("extra", "body", "expected_body", "expected"),
    [c[1:] for c in CONTENT_LENGTHS],
    ids=[c[0] for c in CONTENT_LENGTHS],
)
def test_content_length(extra: list[str], body: bytes, expected_body: bytes | None, expected: int) -> None:
    data = wire(extra=extra, body=body)
    if expected_body is None:
        err = parse_error(data)
        assert err.status == expected
        assert err.request is not None
        return
    msg = parse_message(data)
    assert msg.body == expected_body
    assert msg.content_length == expected


def test_content_length_longer_on_response_is_dropped() -> None:
    err = parse_error(wire("SIP/2.0 200 OK", extra=["Content-Length: 10"], body=b"abc"))
    assert (err.status, err.request) == (0, None)


# --------------------------------------------------------------------------
# Mandatory headers, CSeq, Max-Forwards, Expires

MISSING = [
    ("via", replace_header("Via", None), "Missing Via"),
    ("from", replace_header("From", None), "Missing From"),
    ("to", replace_header("To", None), "Missing To"),
    ("call-id", replace_header("Call-ID", None), "Missing Call-ID"),
    ("cseq", replace_header("CSeq", None), "Missing CSeq"),
    ("empty-call-id", replace_header("Call-ID", ""), "Missing Call-ID"),
    ("empty-from", replace_header("From", ""), "Missing From"),
    ("garbage-via", replace_header("Via", "not a via"), "Bad Via"),
    ("via-without-host", replace_header("Via", "SIP/2.0/UDP ;branch=1"), "Bad Via"),
]


@pytest.mark.parametrize(("headers", "reason"), [c[1:] for c in MISSING], ids=[c[0] for c in MISSING])
@pytest.mark.parametrize("start", ["REGISTER sip:example.com SIP/2.0", "SIP/2.0 200 OK"], ids=["request", "response"])
def test_missing_mandatory_header_is_unanswerable(start: str, headers: list[tuple[str, str]], reason: str) -> None:
    err = parse_error(wire(start, headers))
    assert (err.status, err.reason, err.request) == (0, reason, None)


def test_max_forwards_is_optional() -> None:
    msg = parse_message(wire())
    assert msg.max_forwards == -1
    assert parse_message(wire(extra=["Max-Forwards: 70"])).max_forwards == 70
    assert parse_message(wire(extra=["Max-Forwards: 0"])).max_forwards == 0


CSEQS = [
    ("simple", "1 REGISTER", 1, None),
    ("zero", "0 REGISTER", 0, None),
    ("max", "2147483647 REGISTER", 2147483647, None),
    ("lws", "  42 \t REGISTER ", 42, None),
    ("leading-zeros", "000000000007 REGISTER", 7, None),
    ("too-big", "2147483648 REGISTER", None, 400),
    ("way-too-big", "99999999999999999999999 REGISTER", None, 400),
    ("negative", "-1 REGISTER", None, 400),
    ("not-a-number", "one REGISTER", None, 400),
    ("method-mismatch", "1 INVITE", None, 400),
    ("method-case-mismatch", "1 register", None, 400),
    ("no-method", "1", None, 0),
    ("no-number", "REGISTER", None, 0),
    ("three-words", "1 REGISTER x", None, 0),
    ("bad-method-token", "1 REG@STER", None, 0),
]


@pytest.mark.parametrize(("value", "num", "status"), [c[1:] for c in CSEQS], ids=[c[0] for c in CSEQS])
def test_cseq(value: str, num: int | None, status: int | None) -> None:
    data = wire(headers=replace_header("CSeq", value))
    if status is None:
        msg = parse_message(data)
        assert (msg.cseq_num, msg.cseq_method) == (num, "REGISTER")
        return
    err = parse_error(data)
    assert (err.status, err.reason) == (status, "Bad CSeq")
    if status:
        assert err.request is not None
        # The response must echo the CSeq exactly as received.
        response = build_response(err.request, err.status, err.reason)
        assert f"\r\nCSeq: {value}\r\n".encode() in response


SCALARS = [
    ("max-forwards-bad", ["Max-Forwards: seventy"], "Bad Max-Forwards"),
    ("max-forwards-negative", ["Max-Forwards: -1"], "Bad Max-Forwards"),
    ("max-forwards-duplicate", ["Max-Forwards: 70", "Max-Forwards: 69"], "Duplicate Max-Forwards"),
    ("to-duplicate", ["To: <sip:bob@example.com>"], "Duplicate To"),
    ("from-duplicate", ["f: <sip:eve@example.com>;tag=2"], "Duplicate From"),
    ("call-id-duplicate-compact", ["i: other@host"], "Duplicate Call-ID"),
    ("cseq-duplicate", ["CSeq: 2 REGISTER"], "Duplicate CSeq"),
]


@pytest.mark.parametrize(("extra", "reason"), [c[1:] for c in SCALARS], ids=[c[0] for c in SCALARS])
def test_single_valued_header_problems_are_400(extra: list[str], reason: str) -> None:
    err = parse_error(wire(extra=extra))
    assert (err.status, err.reason) == (400, reason)
    assert err.request is not None
    # The first copy is the one the answer echoes.
    assert err.request.to == "<sip:alice@example.com>"
    assert err.request.call_id == "reg-1@192.0.2.10"


EXPIRES = [
    ("absent", [], -1),
    ("plain", ["Expires: 3600"], 3600),
    ("zero", ["Expires: 0"], 0),
    ("malformed-is-3600", ["Expires: soon"], 3600),
    ("http-date-is-malformed", ["Expires: Thu, 01 Dec 1994 16:00:00 GMT"], 3600),
    ("clamped", ["Expires: 99999999999999"], 2**32 - 1),
    ("clamped-ten-digits", ["Expires: 9999999999"], 2**32 - 1),
    ("first-wins", ["Expires: 60", "Expires: 120"], 60),
]


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in EXPIRES], ids=[c[0] for c in EXPIRES])
def test_expires(extra: list[str], expected: int) -> None:
    assert parse_message(wire(extra=extra)).expires == expected


# --------------------------------------------------------------------------
# Framing: folding, line ends, encoding


def test_folded_header_is_unfolded() -> None:
    data = wire(extra=["Subject: I know you're there,", "     pick up the phone", "\tand talk to me!"])
    assert parse_message(data).get("subject") == "I know you're there, pick up the phone and talk to me!"


def test_folded_via_still_parses() -> None:
    headers = replace_header("Via", "SIP/2.0/UDP 192.0.2.10:5061\r\n ;branch=z9hG4bK-f1\r\n\t;rport")
    msg = parse_message(wire(headers=headers))
    via = parse_via(msg.vias[0])
    assert (via.host, via.params) == ("192.0.2.10", {"branch": "z9hG4bK-f1", "rport": None})


def test_folding_with_bare_lf_line_ends() -> None:
    data = wire(extra=["Subject: one", "  two"], eol="\n")
    assert parse_message(data).get("subject") == "one two"


def test_fold_right_after_start_line_is_unanswerable() -> None:
    data = b"REGISTER sip:example.com SIP/2.0\r\n continued\r\n" + wire()[len(b"REGISTER sip:example.com SIP/2.0\r\n") :]
    assert parse_error(data).status == 0


LINE_ENDS = [
    ("crlf", "\r\n"),
    ("bare-lf", "\n"),
]


@pytest.mark.parametrize("eol", [c[1] for c in LINE_ENDS], ids=[c[0] for c in LINE_ENDS])
def test_line_ends(eol: str) -> None:
    msg = parse_message(wire(extra=["Content-Length: 4"], body=b"abcd", eol=eol))
    assert (msg.method, msg.call_id, msg.body) == ("REGISTER", "reg-1@192.0.2.10", b"abcd")


def test_mixed_line_ends() -> None:
    data = wire().replace(b"\r\nTo:", b"\nTo:")
    assert parse_message(data).to == "<sip:alice@example.com>"


def test_leading_crlfs_are_skipped() -> None:
    assert parse_message(b"\r\n\r\n" + wire()).method == "REGISTER"


def test_keepalive_is_dropped() -> None:
    assert parse_error(b"\r\n\r\n").status == 0


def test_missing_blank_line_is_tolerated() -> None:
    data = wire()[:-2]
    assert parse_message(data).call_id == "reg-1@192.0.2.10"


def test_utf8_header_values_are_kept() -> None:
    headers = replace_header("From", '"José Ñúñez" <sip:jose@example.com>;tag=n1')
    msg = parse_message(wire(headers=headers))
    assert msg.from_ == '"José Ñúñez" <sip:jose@example.com>;tag=n1'
    assert parse_name_addr(msg.from_).display == "José Ñúñez"


def test_invalid_utf8_in_unrelated_header_is_400() -> None:
    data = wire(extra=["Subject: caf\u00e9"]).replace("caf\u00e9".encode(), b"caf\xe9")
    err = parse_error(data)
    assert (err.status, err.reason) == (400, "Bad UTF-8 in header")
    assert err.request is not None
    assert err.request.get("subject") is None  # the bad line is not kept


def test_invalid_utf8_in_from_is_unanswerable() -> None:
    data = wire().replace(b"alice@example.com>;tag", b"al\xc3ice@example.com>;tag")
    assert parse_error(data).status == 0


def test_invalid_utf8_in_start_line_is_unanswerable() -> None:
    data = wire("REGISTER sip:\u00e9xample.com SIP/2.0").replace("\u00e9".encode(), b"\xe9")
    assert parse_error(data).status == 0


def test_invalid_utf8_in_body_is_fine() -> None:
    msg = parse_message(wire(extra=["Content-Length: 3"], body=b"\xff\xfe\xfd"))
    assert msg.body == b"\xff\xfe\xfd"


CONTROL_CHARACTERS = [
    ("nul", b"\x00"),
    ("lone-cr", b"\r"),
    ("vertical-tab", b"\x0b"),
    ("escape", b"\x1b"),
    ("delete", b"\x7f"),
]


@pytest.mark.parametrize("char", [c[1] for c in CONTROL_CHARACTERS], ids=[c[0] for c in CONTROL_CHARACTERS])
def test_control_character_in_header_is_400(char: bytes) -> None:
    data = wire(extra=["Subject: a_b"]).replace(b"a_b", b"a" + char + b"b")
    err = parse_error(data)
    assert (err.status, err.reason) == (400, "Bad control character")


def test_tab_in_value_is_fine() -> None:
    assert parse_message(wire(extra=["Subject: a\tb"])).get("subject") == "a\tb"


def test_memoryview_and_bytearray_input() -> None:
    data = wire()
    assert parse_message(memoryview(data)).call_id == parse_message(bytearray(data)).call_id


# --------------------------------------------------------------------------
# Torture-style messages (written for this suite, inspired by RFC 4475)


def test_torture_mostly_unusual_but_valid() -> None:
    data = (
        "OPTIONS sip:%75ser;ext=1@[2001:db8::10]:5070;transport=udp;lr?h=v SIP/2.0\r\n"
        "vIA  : SIP / 2.0 /udp  [2001:DB8::9]:5090 ;branch=z9hG4bK.a~b!c*d;rport ;received=2001:db8::9\r\n"
        "v:SIP/2.0/TCP p.example.com;branch=z9hG4bKp, SIP/2.0/TLS q.example.com\r\n"
        "  ;branch=z9hG4bKq\r\n"
        "TO:\t\"Tortured, \\\"Quoted\\\" Name\" <sip:to@example.com;tag=not-a-tag>\r\n"
        "f: sip:from@example.com;tag=a48s\r\n"
        "i: 0ha0isndaksdj@10.0.0.1\r\n"
        "cseq:   8\t OPTIONS\r\n"
        "Max-Forwards: 0068\r\n"
        "X-Empty:\r\n"
        "X-Unicode: \u2603 snow\r\n"
        "Contact: \"Mr, Comma\" <sip:c@example.com>;q=0.1,<sip:d@[::1]>;+sip.instance=\"<urn:uuid:1>\"\r\n"
        "k: path,\r\n gruu\r\n"
        "c: application/sdp\r\n"
        "l: 3\r\n"
        "\r\n"
        "v=0ignored"
    ).encode()
    msg = parse_message(data)
    assert msg.method == "OPTIONS"
    assert parse_uri(msg.ruri).user == "%75ser;ext=1"
    assert parse_uri(msg.ruri).host == "[2001:db8::10]"
    assert len(msg.vias) == 2
    assert [parse_via(v).host for v in msg.get_all("via")] == ["[2001:db8::9]", "p.example.com", "q.example.com"]
    assert parse_via(msg.get_all("via")[2]).params == {"branch": "z9hG4bKq"}
    assert tag_of(msg.to) == ""
    assert parse_name_addr(msg.to).display == 'Tortured, "Quoted" Name'
    assert tag_of(msg.from_) == "a48s"
    assert (msg.cseq_num, msg.cseq_method, msg.max_forwards) == (8, "OPTIONS", 68)
    assert msg.get("x-empty") == ""
    contacts = parse_contacts(msg)
    assert contacts is not None
    assert [c.display for c in contacts] == ["Mr, Comma", ""]
    assert contacts[1].params["+sip.instance"] == "<urn:uuid:1>"
    assert msg.get_all("supported") == ["path", "gruu"]
    assert msg.get("content-type") == "application/sdp"
    assert msg.body == b"v=0"


def test_torture_response_to_torture_request_round_trips() -> None:
    data = wire(
        "INVITE sip:bob@example.com SIP/2.0",
        headers=[
            ("Via", "SIP/2.0/UDP [2001:db8::5]:5060;branch=z9hG4bK-t;rport"),
            ("Via", "SIP/2.0/UDP p.example.com;branch=z9hG4bK-p;received=192.0.2.7"),
            ("From", '"A, B" <sip:a@example.com>;tag=f'),
            ("To", "sip:bob@example.com"),
            ("Call-ID", "t@h"),
            ("CSeq", "314159 INVITE"),
        ],
    )
    msg = parse_message(data)
    response = build_response(msg, 180, "Ringing", to_tag="tt", received=("2001:db8::99", 61000))
    back = parse_message(response)
    assert (back.status, back.reason, back.cseq_num, back.cseq_method) == (180, "Ringing", 314159, "INVITE")
    top = parse_via(back.vias[0])
    assert top.params == {"branch": "z9hG4bK-t", "rport": "61000", "received": "2001:db8::99"}
    assert back.vias[1] == msg.vias[1]
    assert tag_of(back.to) == "tt"
    assert back.from_ == msg.from_


# --------------------------------------------------------------------------
# get() and the SipMessage object


def test_get_accepts_any_case_and_compact_names() -> None:
    msg = parse_message(wire())
    for name in ("Call-ID", "call-id", "CALL-ID", "i", "I", " call-id "):
        assert msg.get(name) == "reg-1@192.0.2.10"
    assert msg.get("v") == VIA
    assert msg.get_all("V") == [VIA]


def test_fields_filled_for_typical_register() -> None:
    data = wire(
        extra=[
            "Contact: <sip:alice@192.0.2.10:5061>;expires=3600",
            "Max-Forwards: 70",
            "Expires: 1800",
            "User-Agent: test",
            "Content-Length: 0",
        ]
    )
    msg = parse_message(data)
    assert msg.is_request
    assert (msg.method, msg.ruri) == ("REGISTER", "sip:example.com")
    assert msg.call_id == "reg-1@192.0.2.10"
    assert (msg.cseq_num, msg.cseq_method) == (1, "REGISTER")
    assert msg.from_ == "<sip:alice@example.com>;tag=fromtag1"
    assert msg.to == "<sip:alice@example.com>"
    assert msg.vias == [VIA]
    assert (msg.max_forwards, msg.content_length, msg.expires) == (70, 0, 1800)
    assert msg.body == b""
    assert "REGISTER" in repr(msg)


def test_reprs_are_informative() -> None:
    assert "200 OK" in repr(parse_message(wire("SIP/2.0 200 OK")))
    assert repr(parse_uri("sip:a@h:5")) == "SipUri('sip:a@h:5')"
    assert "sip:a@h" in repr(parse_name_addr("<sip:a@h>;tag=1"))
    assert repr(parse_via("SIP/2.0/UDP h:5060;branch=z")) == "Via(SIP/2.0/UDP h:5060 {'branch': 'z'})"


def test_get_with_a_name_that_is_not_a_token() -> None:
    assert parse_message(wire()).get("no such name") is None


def test_sip_message_uses_slots() -> None:
    msg = parse_message(wire())
    with pytest.raises(AttributeError):
        msg.unexpected = 1  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# build_response


def test_build_response_exact_bytes() -> None:
    msg = parse_message(wire(extra=["Contact: <sip:alice@192.0.2.10:5061>;expires=3600", "Max-Forwards: 70"]))
    out = build_response(msg, 200, "OK", [("Contact", "<sip:alice@192.0.2.10:5061>;expires=3600")], to_tag="totag")
    assert out == (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bK-reg-1;rport\r\n"
        b"From: <sip:alice@example.com>;tag=fromtag1\r\n"
        b"To: <sip:alice@example.com>;tag=totag\r\n"
        b"Call-ID: reg-1@192.0.2.10\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Contact: <sip:alice@192.0.2.10:5061>;expires=3600\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_build_response_with_body_and_compact_request() -> None:
    data = (
        b"OPTIONS sip:example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:a@h>;tag=1\r\n"
        b"t: <sip:b@h>\r\ni: cid\r\nCSeq: 2 OPTIONS\r\n\r\n"
    )
    out = build_response(parse_message(data), 200, "OK", [("Content-Type", "text/plain")], body=b"hi")
    assert out.endswith(b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi")
    assert b"\r\nCall-ID: cid\r\n" in out and b"\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n" in out


TO_TAGS = [
    ("added", "<sip:b@h>", "t1", "<sip:b@h>;tag=t1"),
    ("kept-existing", "<sip:b@h>;tag=old", "t1", "<sip:b@h>;tag=old"),
    ("none-given", "<sip:b@h>", None, "<sip:b@h>"),
    ("uri-tag-is-not-a-tag", "<sip:b@h;tag=u>", "t1", "<sip:b@h;tag=u>;tag=t1"),
]


@pytest.mark.parametrize(("to", "to_tag", "expected"), [c[1:] for c in TO_TAGS], ids=[c[0] for c in TO_TAGS])
def test_build_response_to_tag(to: str, to_tag: str | None, expected: str) -> None:
    msg = parse_message(wire(headers=replace_header("To", to)))
    out = build_response(msg, 200, "OK", to_tag=to_tag)
    assert f"\r\nTo: {expected}\r\n".encode() in out


RECEIVED = [
    ("same-host-no-rport", "SIP/2.0/UDP 192.0.2.10:5061;branch=b", ("192.0.2.10", 5061), "SIP/2.0/UDP 192.0.2.10:5061;branch=b"),
    (
        "different-host",
        "SIP/2.0/UDP 10.0.0.5:5061;branch=b",
        ("192.0.2.10", 5061),
        "SIP/2.0/UDP 10.0.0.5:5061;branch=b;received=192.0.2.10",
    ),
    (
        "domain-name-host",
        "SIP/2.0/UDP pc.example.com;branch=b",
        ("192.0.2.10", 5060),
        "SIP/2.0/UDP pc.example.com;branch=b;received=192.0.2.10",
    ),
    (
        "rport-same-host-still-gets-received",
        "SIP/2.0/UDP 192.0.2.10:5061;rport;branch=b",
        ("192.0.2.10", 40000),
        "SIP/2.0/UDP 192.0.2.10:5061;rport=40000;branch=b;received=192.0.2.10",
    ),
    (
        "rport-with-value-untouched",
        "SIP/2.0/UDP 192.0.2.10:5061;rport=1234;branch=b",
        ("192.0.2.10", 40000),
        "SIP/2.0/UDP 192.0.2.10:5061;rport=1234;branch=b",
    ),
    (
        "existing-received-replaced",
        "SIP/2.0/UDP 10.0.0.5;received=1.1.1.1;branch=b",
        ("192.0.2.10", 5060),
        "SIP/2.0/UDP 10.0.0.5;received=192.0.2.10;branch=b",
    ),
    (
        "ipv6-same-address-other-spelling",
        "SIP/2.0/UDP [2001:DB8:0::1]:5060;branch=b",
        ("2001:db8::1", 5060),
        "SIP/2.0/UDP [2001:DB8:0::1]:5060;branch=b",
    ),
    (
        "ipv6-different-address-unbracketed",
        "SIP/2.0/UDP [2001:db8::1];branch=b;rport",
        ("[2001:db8::2]", 5062),
        "SIP/2.0/UDP [2001:db8::1];branch=b;rport=5062;received=2001:db8::2",
    ),
    (
        "upper-case-rport",
        "SIP/2.0/UDP 10.0.0.5;branch=b;RPORT",
        ("192.0.2.10", 5070),
        "SIP/2.0/UDP 10.0.0.5;branch=b;rport=5070;received=192.0.2.10",
    ),
    (
        "spaced-params-take-general-path",
        "SIP/2.0/UDP 10.0.0.5 ; rport ; branch=b",
        ("192.0.2.10", 5070),
        "SIP/2.0/UDP 10.0.0.5 ;rport=5070; branch=b;received=192.0.2.10",
    ),
    (
        "quoted-param-is-not-rport",
        'SIP/2.0/UDP 10.0.0.5;x="a;rport;b";branch=b',
        ("192.0.2.10", 5070),
        'SIP/2.0/UDP 10.0.0.5;x="a;rport;b";branch=b;received=192.0.2.10',
    ),
    (
        "quoted-param-and-rport",
        'SIP/2.0/UDP 10.0.0.5;x="a;rport";rport',
        ("192.0.2.10", 5070),
        'SIP/2.0/UDP 10.0.0.5;x="a;rport";rport=5070;received=192.0.2.10',
    ),
    (
        "rport-with-empty-value-is-not-bare",
        "SIP/2.0/UDP 192.0.2.10;rport=;branch=b",
        ("192.0.2.10", 5070),
        "SIP/2.0/UDP 192.0.2.10;rport=;branch=b",
    ),
    (
        "unparseable-ipv6-sent-by-differs",
        "SIP/2.0/UDP [1::2::3];branch=b",
        ("2001:db8::1", 5070),
        "SIP/2.0/UDP [1::2::3];branch=b;received=2001:db8::1",
    ),
    (
        "only-first-value-of-combined-line",
        "SIP/2.0/UDP 10.0.0.5;branch=b, SIP/2.0/UDP 10.0.0.6;rport;branch=c",
        ("192.0.2.10", 5070),
        "SIP/2.0/UDP 10.0.0.5;branch=b;received=192.0.2.10, SIP/2.0/UDP 10.0.0.6;rport;branch=c",
    ),
]


@pytest.mark.parametrize(("via", "source", "expected"), [c[1:] for c in RECEIVED], ids=[c[0] for c in RECEIVED])
def test_build_response_received_and_rport(via: str, source: tuple[str, int], expected: str) -> None:
    headers = [("Via", via), ("Via", "SIP/2.0/UDP second.example.com;rport;branch=z")] + BASE_HEADERS[1:]
    msg = parse_message(wire(headers=headers))
    out = build_response(msg, 200, "OK", received=source).decode()
    lines = out.split("\r\n")
    assert lines[1] == f"Via: {expected}"
    # Only the top Via is ever touched, and order is kept.
    assert lines[2] == "Via: SIP/2.0/UDP second.example.com;rport;branch=z"


def test_build_response_from_error_request() -> None:
    err = parse_error(wire(extra=["Content-Length: 99"]))
    assert err.request is not None
    out = build_response(err.request, err.status, err.reason)
    back = parse_message(out)
    assert (back.status, back.reason, back.call_id) == (400, "Bad Content-Length", "reg-1@192.0.2.10")


BUILDER_MISUSE = [
    ("status-low", dict(status=99, reason="x")),
    ("status-high", dict(status=700, reason="x")),
    ("crlf-in-reason", dict(status=200, reason="OK\r\nX-Injected: 1")),
    ("lf-in-header-value", dict(status=200, reason="OK", headers=[("X-A", "a\nb")])),
    ("cr-in-header-name", dict(status=200, reason="OK", headers=[("X\r", "a")])),
    ("content-length-given", dict(status=200, reason="OK", headers=[("content-length", "0")])),
    ("compact-content-length-given", dict(status=200, reason="OK", headers=[("L", "0")])),
    ("crlf-in-to-tag", dict(status=200, reason="OK", to_tag="a\r\nb")),
    ("header-name-not-token", dict(status=200, reason="OK", headers=[("X Y", "a")])),
    ("header-name-with-colon", dict(status=200, reason="OK", headers=[("X:", "a")])),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in BUILDER_MISUSE], ids=[c[0] for c in BUILDER_MISUSE])
def test_build_response_rejects_misuse(kwargs: dict[str, object]) -> None:
    msg = parse_message(wire())
    with pytest.raises(ValueError):
        build_response(msg, **kwargs)  # type: ignore[arg-type]


def test_build_response_refuses_to_answer_a_response() -> None:
    with pytest.raises(ValueError):
        build_response(parse_message(wire("SIP/2.0 200 OK")), 200, "OK")


def test_build_response_leaves_unparseable_constructed_via_alone() -> None:
    msg = SipMessage(vias=["not a via"], from_="<sip:a@h>;tag=1", to="<sip:b@h>", call_id="c", cseq_num=1, cseq_method="BYE")
    assert build_response(msg, 200, "OK", received=("192.0.2.1", 5060)).split(b"\r\n")[1] == b"Via: not a via"


def test_build_response_from_constructed_message() -> None:
    msg = SipMessage(
        method="OPTIONS", ruri="sip:x", vias=["SIP/2.0/UDP h;branch=z9hG4bK1"], from_="<sip:a@h>;tag=1",
        to="<sip:b@h>", call_id="c", cseq_num=5, cseq_method="OPTIONS",
    )
    out = build_response(msg, 200, "OK")
    assert b"\r\nCSeq: 5 OPTIONS\r\n" in out
    assert parse_message(out).status == 200


# --------------------------------------------------------------------------
# build_request


def test_build_request_round_trip() -> None:
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-ping-1"),
        ("Max-Forwards", "70"),
        ("From", "<sip:ping@192.0.2.1>;tag=p1"),
        ("To", "<sip:alice@192.0.2.10:5061>"),
        ("Call-ID", "ping-1@192.0.2.1"),
        ("CSeq", "1 OPTIONS"),
    ]
    out = build_request("OPTIONS", "sip:alice@192.0.2.10:5061", headers)
    assert out.startswith(b"OPTIONS sip:alice@192.0.2.10:5061 SIP/2.0\r\nVia: ")
    assert out.endswith(b"\r\nContent-Length: 0\r\n\r\n")
    msg = parse_message(out)
    assert [(n, v) for n, v in msg.headers][:-1] == [(n.lower(), v) for n, v in headers]
    assert (msg.content_length, msg.max_forwards) == (0, 70)
    with_body = parse_message(build_request("MESSAGE", "sip:a@h", [*headers[:5], ("CSeq", "2 MESSAGE")], b"hello"))
    assert (with_body.body, with_body.content_length) == (b"hello", 5)


BAD_REQUESTS = [
    ("bad-method", "OPT IONS", "sip:a@h", []),
    ("empty-method", "", "sip:a@h", []),
    ("space-in-ruri", "OPTIONS", "sip:a @h", []),
    ("blank-ruri", "OPTIONS", "   ", []),
    ("crlf-in-value", "OPTIONS", "sip:a@h", [("X", "1\r\nY: 2")]),
    ("content-length-given", "OPTIONS", "sip:a@h", [("Content-Length", "0")]),
]


@pytest.mark.parametrize(("method", "ruri", "headers"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_build_request_rejects_misuse(method: str, ruri: str, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        build_request(method, ruri, headers)


def test_parse_error_text() -> None:
    err = SipParseError(400, "Bad CSeq")
    assert (str(err), err.status, err.reason, err.request) == ("400 Bad CSeq", 400, "Bad CSeq", None)
