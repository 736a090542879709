"""Micro-benchmarks for the SIP hot path in fastcluster.core.sip.

The registrar must sustain ~20,000 REGISTER/s per machine in Python, which
leaves a few microseconds per step.  Targets on the reference machine:
parse_message <= 8 us, parse_contacts (one contact) <= 3 us,
build_response (200 OK with one Contact) <= 4 us.  The figures are reported,
not asserted, because shared CI machines are too noisy for hard limits.

Run: .venv/bin/pytest bench/test_bench_sip.py --benchmark-only -q
"""

from __future__ import annotations

from typing import Any

from fastcluster.core.sip import (
    build_request,
    build_response,
    parse_contacts,
    parse_message,
    parse_uri,
    parse_via,
    tag_of,
)

# What sipp's REGISTER scenarios put on the wire (~400 bytes).
REGISTER = (
    b"REGISTER sip:192.168.1.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.10:5061;branch=z9hG4bK-12345-1-0;rport\r\n"
    b"From: <sip:user0001@192.168.1.1>;tag=12345SIPpTag001\r\n"
    b"To: <sip:user0001@192.168.1.1>\r\n"
    b"Call-ID: 1-12345@192.168.1.10\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:user0001@192.168.1.10:5061;transport=udp>;expires=3600\r\n"
    b"Max-Forwards: 70\r\n"
    b"Expires: 3600\r\n"
    b"User-Agent: SIPp/Linux 3.7.2 registrar load test\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
CONTACT = "<sip:user0001@192.168.1.10:5061;transport=udp>;expires=3600"
SOURCE = ("203.0.113.5", 40061)


def test_parse_message(benchmark: Any) -> None:
    benchmark.extra_info["bytes"] = len(REGISTER)
    msg = benchmark(parse_message, REGISTER)
    assert (msg.method, msg.expires, msg.content_length) == ("REGISTER", 3600, 0)


def test_parse_contacts(benchmark: Any) -> None:
    msg = parse_message(REGISTER)
    contacts = benchmark(parse_contacts, msg)
    assert contacts is not None and contacts[0].params == {"expires": "3600"}


def test_build_response_200_one_contact(benchmark: Any) -> None:
    msg = parse_message(REGISTER)
    out = benchmark(build_response, msg, 200, "OK", [("Contact", CONTACT)], to_tag="a5f3", received=SOURCE)
    assert out.startswith(b"SIP/2.0 200 OK\r\n") and b"rport=40061" in out


def test_tag_of(benchmark: Any) -> None:
    msg = parse_message(REGISTER)
    assert benchmark(tag_of, msg.from_) == "12345SIPpTag001"


def test_parse_via(benchmark: Any) -> None:
    msg = parse_message(REGISTER)
    assert benchmark(parse_via, msg.vias[0]).params["rport"] is None


def test_parse_uri(benchmark: Any) -> None:
    assert benchmark(parse_uri, "sip:user0001@192.168.1.10:5061;transport=udp").port == 5061


def test_build_request_options_ping(benchmark: Any) -> None:
    headers = [
        ("Via", "SIP/2.0/UDP 192.168.1.1:5060;branch=z9hG4bK-ping-1"),
        ("Max-Forwards", "70"),
        ("From", "<sip:ping@192.168.1.1>;tag=p1"),
        ("To", "<sip:user0001@192.168.1.10:5061>"),
        ("Call-ID", "ping-1@192.168.1.1"),
        ("CSeq", "1 OPTIONS"),
    ]
    out = benchmark(build_request, "OPTIONS", "sip:user0001@192.168.1.10:5061", headers)
    assert out.endswith(b"Content-Length: 0\r\n\r\n")


def register_round_trip(data: bytes) -> bytes:
    """What a registrar worker does per REGISTER, minus the table update."""
    msg = parse_message(data)
    contacts = parse_contacts(msg)
    assert contacts is not None
    tag_of(msg.to)
    return build_response(msg, 200, "OK", [("Contact", contacts[0].raw)], to_tag="a5f3", received=SOURCE)


def test_register_round_trip(benchmark: Any) -> None:
    assert benchmark(register_round_trip, REGISTER).startswith(b"SIP/2.0 200 OK")
