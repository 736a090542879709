"""The registrar's answers to what RFC 3261 §8.2/§10.3, RFC 3327, RFC 5626 and the
RFC 4475 §3.1.4 application-layer messages ask, through SipApp over an in-memory table.
The AORs of the issue's report: tel: URIs never share a record, odd schemes and
bracketless IPv6 never create bindings, unknown Require is refused."""
from __future__ import annotations

import pytest

from tests.support.registrar import Harness, register


def status(reply: str | None) -> int:
    assert reply is not None
    return int(reply.split(" ", 2)[1])


def header(reply: str, name: str) -> list[str]:
    return [l.split(":", 1)[1].strip() for l in reply.split("\r\n")
            if l.lower().startswith(name.lower() + ":")]


def raw_register(ruri: str = "sip:example.com", to: str = "<sip:alice@example.com>",
                 contact: str = "<sip:alice@192.0.2.10:5070>", extra: str = "",
                 via: str = "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1;rport",
                 cseq: int = 1, expires: int = 600) -> str:
    return (f"REGISTER {ruri} SIP/2.0\nVia: {via}\nFrom: {to};tag=t1\nTo: {to}\n"
            f"Call-ID: cid-{cseq}\nCSeq: {cseq} REGISTER\nMax-Forwards: 70\n"
            f"Contact: {contact}\nExpires: {expires}\n{extra}Content-Length: 0\n\n")


def test_tel_aors_are_refused_and_never_touch_each_other() -> None:
    h = Harness()
    for number in ("tel:+15551111", "tel:+15552222"):
        assert status(h.send(raw_register(to=f"<{number}>"))) == 416
    wildcard = raw_register(to="<tel:+15552222>", contact="*", expires=0)
    assert status(h.send(wildcard)) == 416
    assert h.table.counters()["live"] == 0
    assert h.count("registrar:bad_aor") == 3 and h.count("registrar:rejected_regs") == 3


def test_sip_aors_that_differ_only_by_escaping_are_one_record() -> None:
    h = Harness()
    assert status(h.send(raw_register(to="<sip:%61lice@example.com>"))) == 200
    assert status(h.send(raw_register(to="<sip:alice@EXAMPLE.com>", cseq=2))) == 200
    assert len(h.contacts("alice@example.com")) == 1
    assert status(h.send(raw_register(to="<sips:alice@example.com>", cseq=3))) == 200
    assert len(h.contacts("sips:alice@example.com")) == 1  # sips: is another AOR


@pytest.mark.parametrize("ruri, code", [
    ("nobodyKnowsThisScheme:x", 416),
    ("tel:+15551111", 416),
    ("sip:2001:db8::10", 400),  # RFC 5118 §4.2
    ("sip:user@[2001:db8:::192.0.2.1]", 400),  # RFC 5118 §4.10
])
def test_request_uri_refusals_create_nothing(ruri: str, code: int) -> None:
    h = Harness()
    assert status(h.send(raw_register(ruri=ruri))) == code
    assert h.table.counters()["live"] == 0


def test_register_with_ipv6_request_uri_is_served() -> None:
    h = Harness()  # RFC 5118 §4.1 in spirit: a registrar addressed by its IPv6 address
    reply = h.send(raw_register(ruri="sip:[2001:db8::10]",
                                contact='"Caller" <sip:caller@[2001:db8::1]>'))
    assert status(reply) == 200
    assert h.contacts("alice@example.com")[0]["uri"] == "sip:caller@[2001:db8::1]"


def test_unsupported_require_is_420_and_path_outbound_are_fine() -> None:
    h = Harness()
    reply = h.send(raw_register(extra="Require: foo, path\n"))
    assert status(reply) == 420 and header(reply, "Unsupported") == ["foo"]
    assert h.count("core:bad_extensions") == 1
    assert status(h.send(raw_register(extra="Require: path, outbound\n", cseq=2))) == 200


def test_path_is_stored_and_echoed_only_when_supported() -> None:
    h = Harness()
    path = "<sip:edge.example.com;lr>"
    reply = h.send(raw_register(extra=f"Path: {path}\n"))
    assert status(reply) == 200 and header(reply, "Path") == []
    assert h.contacts("alice@example.com")[0]["path"] == path
    reply = h.send(raw_register(extra=f"Path: {path}\nSupported: path\n", cseq=2))
    assert header(reply, "Path") == [path]


OUTBOUND = '<sip:alice@192.0.2.10:5070>;+sip.instance="<urn:uuid:1>";reg-id=1'
EDGE_VIA = "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-e"
UA_VIA = "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-ua\n"


def test_outbound_reg_id_direct_gets_supported_outbound() -> None:
    h = Harness()
    reply = h.send(raw_register(contact=OUTBOUND, extra="Supported: outbound, path\n"))
    assert status(reply) == 200 and header(reply, "Supported") == ["outbound"]
    assert h.contacts("alice@example.com")[0]["reg_id"] == 1


def test_outbound_through_an_edge_with_ob_is_honoured() -> None:
    h = Harness()
    reply = h.send(raw_register(contact=OUTBOUND, via=EDGE_VIA, extra=(
        UA_VIA + "Path: <sip:edge.example.com;lr;ob>\nSupported: outbound, path\n")))
    assert status(reply) == 200 and header(reply, "Supported") == ["outbound"]


def test_outbound_through_an_edge_without_outbound_is_439() -> None:
    h = Harness()
    reply = h.send(raw_register(contact=OUTBOUND, via=EDGE_VIA, extra=(
        UA_VIA + "Path: <sip:edge.example.com;lr>\nSupported: outbound, path\n")))
    assert status(reply) == 439
    assert h.count("registrar:outbound_first_hop") == 1
    assert h.table.counters()["live"] == 0


def test_domains_served() -> None:
    h = Harness(settings={"sip.domains": "example.com, b.org"})
    assert status(h.send(raw_register())) == 200
    assert status(h.send(raw_register(to="<sip:bob@b.org>", cseq=2))) == 200
    assert status(h.send(raw_register(to="<sip:eve@evil.org>", cseq=3))) == 404
    assert status(h.send(raw_register(ruri="sip:evil.org", cseq=4))) == 403
    assert status(h.send(raw_register(ruri="sip:192.0.2.1", cseq=5))) == 200  # edge proxy
    assert h.count("registrar:foreign_domain") == 2


# RFC 4475 §3.1.4, application-layer semantics, as a registrar answers them.

def test_rfc4475_unksm2_unknown_schemes_in_to_and_contact() -> None:
    h = Harness()
    reply = h.send("REGISTER sip:example.com SIP/2.0\nTo: isbn:2983792873\n"
                   "From: <http://www.example.com>;tag=3234233\n"
                   "Call-ID: unksm2.daksdj@hyphenated-host.example.com\n"
                   "CSeq: 234902 REGISTER\nMax-Forwards: 70\n"
                   "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw\n"
                   "Contact: <name:John_Smith>\nl: 0\n\n")
    assert status(reply) == 416 and h.table.counters()["live"] == 0


def test_rfc4475_bext01_require_and_proxy_require() -> None:
    h = Harness()
    reply = h.send("OPTIONS sip:user@example.com SIP/2.0\nTo: sip:j_user@example.com\n"
                   "From: sip:caller@example.net;tag=242etr\nMax-Forwards: 6\n"
                   "Call-ID: bext01.0ha0isndaksdj\n"
                   "Require: nothingSupportsThis, nothingSupportsThisEither\n"
                   "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis\n"
                   "CSeq: 8 OPTIONS\nVia: SIP/2.0/UDP fold-and-staple.example.com;"
                   "branch=z9hG4bKkdjuw\nContent-Length: 0\n\n")
    # an OPTIONS for a user is proxied: the proxy refuses what Proxy-Require asks of it
    assert status(reply) == 420
    assert header(reply, "Unsupported") == ["noProxiesSupportThis, norDoAnyProxiesSupportThis"]
    reply = h.send("OPTIONS sip:example.com SIP/2.0\nTo: sip:j_user@example.com\n"
                   "From: sip:caller@example.net;tag=242etr\nMax-Forwards: 6\n"
                   "Call-ID: bext01.1\nRequire: nothingSupportsThis\n"
                   "CSeq: 8 OPTIONS\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKkdjuw2\n"
                   "Content-Length: 0\n\n")
    assert status(reply) == 420  # for this node itself: the UAS refuses what Require asks
    assert header(reply, "Unsupported") == ["nothingsupportsthis"]


def test_rfc4475_unkscm_options_with_unknown_scheme() -> None:
    h = Harness()
    reply = h.send("OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\n"
                   "To: sip:user@example.com\nFrom: sip:caller@example.net;tag=384\n"
                   "Max-Forwards: 3\nCall-ID: unkscm.nasdfasser0q239nwsdfasdkl34\n"
                   "CSeq: 3923423 OPTIONS\n"
                   "Via: SIP/2.0/UDP host9.example.com;branch=z9hG4bKkdjuw39234\n"
                   "Content-Length: 0\n\n")
    assert status(reply) == 416 and h.count("core:unsupported_uri_scheme") == 1


def test_rfc4475_regescrt_escaped_header_in_contact_is_stored_as_given() -> None:
    h = Harness()  # §3.1.4.14: a contact URI carrying an escaped Route header
    reply = h.send(raw_register(
        contact="<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"))
    assert status(reply) == 200


def test_to_display_name_with_escaped_controls_is_served() -> None:
    h = Harness()  # the "Missing To": a legal quoted-pair NUL in the display name
    reply = h.send(raw_register(to='"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" '
                                   "<sip:alice@example.com>"))
    assert status(reply) == 200 and len(h.contacts("alice@example.com")) == 1


def test_options_for_this_node_or_at_max_forwards_0_is_answered_here() -> None:
    h = Harness()
    for ruri in ("sip:example.com", "sip:user@example.com"):
        reply = h.send(f"OPTIONS {ruri} SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5070;"
                       "branch=z9hG4bK-9\nFrom: <sip:a@example.com>;tag=1\n"
                       "To: <sip:b@example.com>\nCall-ID: o\nCSeq: 1 OPTIONS\n"
                       "Max-Forwards: 0\nContent-Length: 0\n\n")
        assert status(reply) == 200
        assert header(reply, "Supported") == ["outbound, path"]


def test_bad_via_parameters_are_400() -> None:
    h = Harness()
    reply = h.send(raw_register(via="SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1;"
                                    "rport=nope"))
    assert status(reply) == 400 and "Bad Via rport" in reply
    assert h.count("core:bad_via") == 1 and h.table.counters()["live"] == 0
