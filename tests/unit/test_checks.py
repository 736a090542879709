"""services.sip.checks: the request checks of RFC 3261 §8.2 / §10.3, RFC 3327 and
RFC 5626 as tables of inputs and answers."""
from __future__ import annotations

import pytest

from fastcluster.core.sip import SipParseError, parse_message
from fastcluster.services.sip import checks


def msg(extra: str = "", method: str = "REGISTER", ruri: str = "sip:example.com",
        via: str = "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1;rport"):
    text = (f"{method} {ruri} SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@example.com>;tag=1\r\n"
            f"To: <sip:a@example.com>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n{extra}"
            "Content-Length: 0\r\n\r\n")
    return parse_message(text.encode())


@pytest.mark.parametrize("method, status, counter", [
    ("REGISTER", None, None),
    ("OPTIONS", None, None),
    ("INVITE", 405, "core:method_not_allowed"),
    ("MESSAGE", 405, "core:method_not_allowed"),
    ("SUBSCRIBE", 405, "core:method_not_allowed"),
    ("BYE", 481, "core:no_transaction"),
    ("CANCEL", 481, "core:no_transaction"),
    ("RE%47IST%45R", 501, "core:unsupported_methods"),  # RFC 4475 §3.1.1.5
    ("FOO", 501, "core:unsupported_methods"),
])
def test_check_method(method: str, status: int | None, counter: str | None) -> None:
    r = checks.check_method(method)
    assert (r and r.status, r and r.counter) == (status, counter)
    if status in (405, 501):
        assert ("Allow", "REGISTER, OPTIONS") in r.headers


@pytest.mark.parametrize("ruri, status", [
    ("sip:example.com", None),
    ("sips:example.com:5061", None),
    ("sip:alice@example.com;transport=udp", None),
    ("SIP:EXAMPLE.com", None),
    ("sip:[2001:db8::10]", None),  # RFC 5118 §4.1
    ("sip:[2001:db8::10:5070]", None),  # §4.3: well-formed, if not what was meant
    ("sip:[2001:db8::10]:5070", None),  # §4.4
    ("sip:user@[2001:db8::192.0.2.1]", None),  # §4.10, the correct form
    ("sip:2001:db8::10", 400),  # §4.2: no brackets
    ("sip:user@[2001:db8:::192.0.2.1]", 400),  # §4.10: three colons
    ("sip:[2001:db8::xyz]", 400),
    ("sip:example.com:99999", 400),
    ("nobodyKnowsThisScheme:totallyopaquecontent", 416),  # RFC 4475 §3.1.4.2
    ("soap.beep://192.0.2.103:3002", 416),  # RFC 4475 §3.1.4.3
    ("tel:+15551111", 416),
])
def test_check_request_uri(ruri: str, status: int | None) -> None:
    r = checks.check_request_uri(ruri)
    assert (r and r.status) == status
    if status:
        assert r.counter == ("core:unsupported_uri_scheme" if status == 416
                             else "core:bad_request_uri")


@pytest.mark.parametrize("ruri, host", [
    ("sip:Example.COM", "example.com"),
    ("sip:u@[2001:DB8:0::10]:5060", "[2001:db8::10]"),
    ("sips:10.0.0.1;lr", "10.0.0.1"),
])
def test_request_uri_host(ruri: str, host: str) -> None:
    assert checks.request_uri_host(ruri) == host


@pytest.mark.parametrize("extra, unsupported", [
    ("", None),
    ("Require: path\r\n", None),
    ("Require: outbound, path\r\n", None),
    ("Supported: gruu, timer\r\n", None),  # Supported never fails anything
    ("Proxy-Require: noProxiesSupportThis\r\n", None),  # for proxies only
    ("Require: nothingSupportsThis, nothingSupportsThisEither\r\n",  # RFC 4475 §3.1.4.5
     "nothingsupportsthis, nothingsupportsthiseither"),
    ("Require: path, 100rel\r\n", "100rel"),
    ("Require: foo\r\nRequire: foo\r\n", "foo"),
])
def test_check_require(extra: str, unsupported: str | None) -> None:
    r = checks.check_require(msg(extra))
    if unsupported is None:
        assert r is None
    else:
        assert (r.status, r.counter, r.headers) == (420, "core:bad_extensions",
                                                    (("Unsupported", unsupported),))


def test_require_never_fails_ack_or_cancel() -> None:
    for method in ("ACK", "CANCEL"):
        assert checks.check_require(msg("Require: foo\r\n", method=method)) is None


@pytest.mark.parametrize("via, status", [
    ("SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1;rport", None),
    ("SIP/2.0/UDP host.example.com;branch=z9hG4bK-1", None),
    ("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111", None),
    ("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3", None),
    ("SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200", None),
    ("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw", None),  # RFC 4475 wsinv
    ("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;rport=5060;ttl=16;maddr=224.2.0.1", None),
    ("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1, SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2", None),
    ("SIP/2.0/UDP 192.0.2.1;branch=", 400),
    ("SIP/2.0/UDP 192.0.2.1;branch", 400),
    ("SIP/2.0/UDP 192.0.2.1;rport=abc", 400),
    ("SIP/2.0/UDP 192.0.2.1;rport=70000", 400),
    ("SIP/2.0/UDP 192.0.2.1;received=not-an-ip", 400),
    ("SIP/2.0/UDP 192.0.2.1;received", 400),
    ("SIP/2.0/UDP 192.0.2.1;ttl=300", 400),
    ("SIP/2.0/UDP 192.0.2.1;maddr=", 400),
    ("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;;", 400),
    ("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1 garbage", 400),
    ("SIP/2.0/UDP [2001:db8:::1];branch=z9hG4bK1", 400),  # invalid IPv6 reference
])
def test_check_via(via: str, status: int | None) -> None:
    try:
        m = msg(via=via)
    except SipParseError:
        pytest.fail("the Via should reach the check, not stop the parser")
    r = checks.check_via(m)
    assert (r and r.status) == status
    if status:
        assert r.counter == "core:bad_via"


@pytest.mark.parametrize("ruri, domains, status", [
    ("sip:example.com", (), None),
    ("sip:anything.org", (), None),
    ("sip:example.com", ("example.com",), None),
    ("sip:EXAMPLE.com", ("example.com",), None),
    ("sip:other.org", ("example.com",), 403),
    ("sip:10.0.0.5", ("example.com",), None),  # an edge proxy addressing this node
    ("sip:[2001:db8::1]", ("example.com",), None),
])
def test_check_request_domain(ruri: str, domains: tuple[str, ...], status) -> None:
    r = checks.check_request_domain(ruri, domains)
    assert (r and r.status) == status


@pytest.mark.parametrize("aor, domains, status", [
    ("alice@example.com", (), None),
    ("alice@example.com", ("example.com", "b.org"), None),
    ("alice@b.org:5070", ("example.com", "b.org"), None),
    ("sips:alice@example.com", ("example.com",), None),
    ("alice@other.org", ("example.com",), 404),
    ("alice@[2001:db8::1]", ("[2001:db8::1]",), None),
    ("example.com", ("example.com",), None),
])
def test_check_aor_domain(aor: str, domains: tuple[str, ...], status) -> None:
    r = checks.check_aor_domain(aor, domains)
    assert (r and r.status) == status


@pytest.mark.parametrize("vias, path, honoured", [
    (["SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"], [], True),  # straight from the UA
    (["SIP/2.0/UDP edge;branch=z9hG4bK2", "SIP/2.0/UDP ua;branch=z9hG4bK1"],
     ["<sip:edge.example.com;lr;ob>"], True),
    (["SIP/2.0/UDP edge;branch=z9hG4bK2", "SIP/2.0/UDP ua;branch=z9hG4bK1"],
     ["<sip:edge.example.com;lr>"], False),  # 439
    (["SIP/2.0/UDP edge;branch=z9hG4bK2", "SIP/2.0/UDP ua;branch=z9hG4bK1"], [], False),
    (["SIP/2.0/UDP edge;branch=z9hG4bK2, SIP/2.0/UDP ua;branch=z9hG4bK1"], [], False),
])
def test_outbound_honoured(vias: list[str], path: list[str], honoured: bool) -> None:
    extra = "".join(f"Via: {v}\r\n" for v in vias[1:])
    assert checks.outbound_honoured(msg(extra, via=vias[0]), path) is honoured
