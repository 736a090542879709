"""Registrar rules (RFC 3261 §10.3, RFC 3327, RFC 5626, nathelper NAT detection) through
SipApp, the code a worker runs, over an in-memory contact table."""
from __future__ import annotations

import pytest

from fastcluster.shm import control as CT
from fastcluster.shm.contacts import FLAG_NAT
from tests.support.registrar import Harness, register


def status(reply: str | None) -> int:
    assert reply is not None
    return int(reply.split(" ", 2)[1])


def contact_lines(reply: str) -> list[str]:
    return [l for l in reply.split("\r\n") if l.startswith("Contact:")]


def test_add_refresh_and_remove() -> None:
    h = Harness()
    reply = h.send(register(expires=600))
    assert status(reply) == 200
    assert contact_lines(reply) == ["Contact: <sip:alice@192.0.2.10:5070>;expires=600"]
    assert "Date: " in reply and ";rport=5070" in reply
    (rec,) = h.contacts("alice@example.com")
    assert rec["cseq"] == 1 and rec["callid"] == "cid-1" and rec["flags"] & FLAG_NAT == 0
    reply = h.send(register(cseq=2, expires=1200))
    assert contact_lines(reply) == ["Contact: <sip:alice@192.0.2.10:5070>;expires=1200"]
    assert h.contacts("alice@example.com")[0]["cseq"] == 2
    reply = h.send(register(cseq=3, expires=0))
    assert status(reply) == 200 and contact_lines(reply) == []
    assert h.contacts("alice@example.com") == []
    assert len(h.table.group(b"alice@example.com", live_only=False)) == 1  # tombstone
    assert h.count("registrar:accepted_regs") == 3


def test_expires_parameter_wins_over_header_and_defaults_apply() -> None:
    h = Harness()
    reply = h.send(register(contacts=["<sip:a@192.0.2.10:5070>;expires=300",
                                      "<sip:b@192.0.2.10:5070>"], expires=900))
    assert sorted(contact_lines(reply)) == ["Contact: <sip:a@192.0.2.10:5070>;expires=300",
                                            "Contact: <sip:b@192.0.2.10:5070>;expires=900"]
    reply = h.send(register(aor="bob@example.com", contacts=["<sip:bob@192.0.2.10:5070>"]))
    assert contact_lines(reply) == ["Contact: <sip:bob@192.0.2.10:5070>;expires=3600"]


def test_min_expires_423_and_max_expires_clamp() -> None:
    h = Harness(min_expires=120, max_expires=1000)
    reply = h.send(register(expires=30))
    assert status(reply) == 423 and "Min-Expires: 120" in reply
    assert h.contacts("alice@example.com") == []
    reply = h.send(register(cseq=2, expires=5000))
    assert contact_lines(reply) == ["Contact: <sip:alice@192.0.2.10:5070>;expires=1000"]


def test_out_of_order_cseq_on_same_callid_fails_but_other_callid_is_fine() -> None:
    h = Harness()
    h.send(register(cseq=5, expires=600))
    reply = h.send(register(cseq=4, expires=900))
    assert status(reply) == 400 and "Out of order request" in reply
    rec = h.contacts("alice@example.com")[0]
    assert rec["cseq"] == 5 and rec["expires"] - rec["last_modified"] == 600
    reply = h.send(register(cseq=1, callid="other", expires=900))  # another Call-ID
    assert status(reply) == 200
    assert h.contacts("alice@example.com")[0]["callid"] == "other"


def test_retransmission_is_answered_again_without_changes() -> None:
    h = Harness()
    first = h.send(register(cseq=5, contacts=["<sip:a@192.0.2.10:5070>",
                                              "<sip:b@192.0.2.10:5070>"], expires=600))
    version = {r["uri"]: r["version"] for r in h.contacts("alice@example.com")}
    again = h.send(register(cseq=5, contacts=["<sip:a@192.0.2.10:5070>",
                                              "<sip:b@192.0.2.10:5070>"], expires=600))
    assert status(again) == 200
    assert sorted(contact_lines(again)) == sorted(contact_lines(first))
    assert {r["uri"]: r["version"] for r in h.contacts("alice@example.com")} == version
    # a retransmitted wildcard removal is answered 200 too
    assert status(h.send(register(cseq=6, contacts=["*"], expires=0))) == 200
    assert status(h.send(register(cseq=6, contacts=["*"], expires=0))) == 200
    assert h.contacts("alice@example.com") == []


def test_atomic_request_one_bad_binding_changes_nothing() -> None:
    h = Harness()
    h.send(register(cseq=5, contacts=["<sip:a@192.0.2.10:5070>"], expires=600))
    reply = h.send(register(cseq=3, contacts=["<sip:new@192.0.2.10:5070>",
                                              "<sip:a@192.0.2.10:5070>"], expires=600))
    assert status(reply) == 400
    assert [r["uri"] for r in h.contacts("alice@example.com")] == ["sip:a@192.0.2.10:5070"]


def test_wildcard_removal_rules() -> None:
    h = Harness()
    h.send(register(cseq=1, contacts=["<sip:a@192.0.2.10:5070>", "<sip:b@192.0.2.10:5070>"],
                    expires=600))
    assert status(h.send(register(cseq=2, contacts=["*"], expires=60))) == 400
    assert status(h.send(register(cseq=2, contacts=["*"]))) == 400  # Expires missing
    assert status(h.send(register(cseq=0, contacts=["*"], expires=0))) == 400  # old CSeq
    assert status(h.send(register(cseq=2, contacts=["*", "<sip:c@x>"], expires=0))) == 400
    assert len(h.contacts("alice@example.com")) == 2
    reply = h.send(register(cseq=2, contacts=["*"], expires=0))
    assert status(reply) == 200 and contact_lines(reply) == []
    assert h.contacts("alice@example.com") == []


def test_query_without_contact_lists_bindings() -> None:
    h = Harness()
    h.send(register(contacts=["<sip:a@192.0.2.10:5070>;q=0.7"], expires=600))
    reply = h.send(register(cseq=1, callid="query", contacts=[]))
    assert status(reply) == 200
    assert contact_lines(reply) == ["Contact: <sip:a@192.0.2.10:5070>;expires=600;q=0.7"]


def test_max_contacts() -> None:
    h = Harness(max_contacts=2)
    h.send(register(contacts=["<sip:a@192.0.2.10:5070>", "<sip:b@192.0.2.10:5070>"],
                    expires=600))
    reply = h.send(register(cseq=2, contacts=["<sip:c@192.0.2.10:5070>"], expires=600))
    assert status(reply) == 403
    # replacing one binding by another in the same request stays within the limit
    reply = h.send(register(cseq=3, contacts=["<sip:a@192.0.2.10:5070>;expires=0",
                                              "<sip:c@192.0.2.10:5070>"], expires=600))
    assert status(reply) == 200
    assert sorted(r["uri"] for r in h.contacts("alice@example.com")) == [
        "sip:b@192.0.2.10:5070", "sip:c@192.0.2.10:5070"]


@pytest.mark.parametrize("q, shown", [("1", "1"), ("1.0", "1"), ("0.5", "0.5"),
                                      ("0.125", "0.125"), ("0", "0"), ("0.05", "0.05")])
def test_q_values(q: str, shown: str) -> None:
    h = Harness()
    reply = h.send(register(contacts=[f"<sip:a@192.0.2.10:5070>;q={q}"], expires=60))
    assert contact_lines(reply) == [f"Contact: <sip:a@192.0.2.10:5070>;expires=60;q={shown}"]


@pytest.mark.parametrize("bad", ["<sip:a@x>;q=1.5", "<sip:a@x>;q=high", "<sip:a@x>;expires=-1",
                                 "<sip:a@x>;expires=soon", "<sip:a@x>;reg-id=x"])
def test_bad_contact_parameters_get_400(bad: str) -> None:
    h = Harness()
    assert status(h.send(register(contacts=[bad], expires=60))) == 400
    assert h.contacts("alice@example.com") == []


def test_instance_and_reg_id_are_the_binding_identity() -> None:
    h = Harness()
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    h.send(register(contacts=[f"<sip:a@192.0.2.10:5070>;{inst};reg-id=1"], expires=600))
    # the same instance and reg-id from a new address replaces the binding (RFC 5626)
    reply = h.send(register(cseq=2, contacts=[f"<sip:a@198.51.100.7:6000>;{inst};reg-id=1"],
                            expires=600))
    assert status(reply) == 200
    recs = h.contacts("alice@example.com")
    assert [r["uri"] for r in recs] == ["sip:a@198.51.100.7:6000"]
    assert recs[0]["instance"] == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
    assert recs[0]["reg_id"] == 1
    assert '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1' in reply
    # another reg-id of the same instance is a second flow
    h.send(register(cseq=3, contacts=[f"<sip:a@198.51.100.7:6001>;{inst};reg-id=2"],
                    expires=600))
    assert len(h.contacts("alice@example.com")) == 2


def test_path_is_stored_and_echoed_when_supported() -> None:
    h = Harness()
    path = "Path: <sip:edge1.example.com;lr>\nPath: <sip:edge2.example.com;lr>"
    reply = h.send(register(expires=60, extra=path + "\nSupported: path"))
    assert "Path: <sip:edge1.example.com;lr>, <sip:edge2.example.com;lr>" in reply
    assert h.contacts("alice@example.com")[0]["path"] == \
        "<sip:edge1.example.com;lr>, <sip:edge2.example.com;lr>"
    reply = h.send(register(cseq=2, expires=60, extra=path))
    assert "Path:" not in reply  # the UA did not say it supports Path


def test_nat_detection_stores_received_address() -> None:
    h = Harness()
    h.send(register(contacts=["<sip:alice@10.0.0.5:5060>"], expires=60))
    rec = h.contacts("alice@example.com")[0]
    assert rec["flags"] & FLAG_NAT and rec["recv_family"] == 4 and rec["recv_port"] == 5070
    assert bytes(rec["recv_addr"])[:4] == bytes([192, 0, 2, 10])
    h.send(register(aor="bob@example.com", contacts=["<sip:bob@192.0.2.10:5070>"], expires=60))
    assert h.contacts("bob@example.com")[0]["flags"] & FLAG_NAT == 0
    h.send(register(aor="v6@example.com", contacts=["<sip:v6@[2001:db8::1]:5060>"],
                    expires=60), src=("2001:db8::9", 5080, 0, 0))
    rec = h.contacts("v6@example.com")[0]
    assert rec["flags"] & FLAG_NAT and rec["recv_family"] == 6


def test_uri_comparison_ignores_case_of_scheme_and_host() -> None:
    h = Harness()
    h.send(register(contacts=["<SIP:Alice@EXAMPLE.org:5060>"], expires=60))
    h.send(register(cseq=2, contacts=["<sip:Alice@example.org:5060>"], expires=120))
    recs = h.contacts("alice@example.com")
    assert len(recs) == 1 and recs[0]["uri"] == "sip:Alice@example.org:5060"


def test_too_long_contact_is_refused_not_truncated() -> None:
    h = Harness(record_bytes=96)
    reply = h.send(register(contacts=["<sip:" + "x" * 80 + "@192.0.2.10:5070>"], expires=60))
    assert status(reply) == 500 and "record_bytes" in reply
    assert h.contacts("alice@example.com") == []
    assert h.count("usrloc:refused_too_long") == 1


def test_full_table_answers_503() -> None:
    h = Harness(capacity=16)
    for i in range(16):
        assert status(h.send(register(aor=f"u{i}@example.com", expires=60))) == 200
    reply = h.send(register(aor="late@example.com", expires=60))
    assert status(reply) == 503 and h.count("usrloc:refused_table_full") == 1
    assert h.table.counters()["live"] == 16


def test_other_requests_and_responses() -> None:
    h = Harness()
    base = ("{method} {ruri} SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-2\n"
            "From: <sip:a@example.com>;tag=1\nTo: <sip:b@example.com>\nCall-ID: x\n"
            "CSeq: 1 {method}\nMax-Forwards: {mf}\nContent-Length: 0\n\n")
    reply = h.send(base.format(method="OPTIONS", ruri="sip:example.com", mf=70))
    assert status(reply) == 200 and "Allow: REGISTER, OPTIONS" in reply
    # other requests go to the proxy: b@example.com never registered
    assert status(h.send(base.format(method="INVITE", ruri="sip:b@example.com", mf=70))) == 404
    # an unknown method is proxied like any other (RFC 3261 §16.6: a proxy forwards it)
    assert status(h.send(base.format(method="FOOBAR", ruri="sip:b@example.com", mf=70))) == 404
    assert status(h.send(base.format(method="INVITE", ruri="sip:b@example.com", mf=0))) == 483
    # for this node itself (no user part): what it does not serve gets its answer
    reply = h.send(base.format(method="INVITE", ruri="sip:example.com", mf=70))
    assert status(reply) == 405 and "Allow: REGISTER, OPTIONS" in reply
    reply = h.send(base.format(method="FOOBAR", ruri="sip:example.com", mf=70))
    assert status(reply) == 501 and "Allow: REGISTER, OPTIONS" in reply
    assert status(h.send(base.format(method="BYE", ruri="sip:example.com", mf=70))) == 481
    assert h.send(base.format(method="ACK", ruri="sip:b@example.com", mf=70)) is None
    response = ("SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-3\n"
                "From: <sip:a@example.com>;tag=1\nTo: <sip:b@example.com>;tag=2\nCall-ID: y\n"
                "CSeq: 1 OPTIONS\nContent-Length: 0\n\n")
    assert h.send(response) is None
    assert h.count("core:rcv_replies") == 1 and h.count("core:rcv_requests") == 8
    assert h.count("proxy:not_found") == 2 and h.count("core:too_many_hops") == 1
    assert h.count("core:method_not_allowed") == 1 and h.count("core:no_transaction") == 1
    assert h.count("core:unsupported_methods") == 1


def test_malformed_requests_get_400_or_are_dropped() -> None:
    h = Harness()
    bad_cseq = register().replace("CSeq: 1 REGISTER", "CSeq: x REGISTER")
    reply = h.send(bad_cseq)
    assert status(reply) == 400
    assert h.send("garbage\n\n") is None
    assert h.send(register().replace("Call-ID: cid-1\n", "")) is None  # cannot answer
    bad_to = register().replace("To: <sip:alice@example.com>", "To: <sip:alice@ex ample")
    assert status(h.send(bad_to)) == 400
    assert h.count("core:bad_msgs") >= 3
    assert h.contacts("alice@example.com") == []


def test_removing_a_binding_this_node_never_had_leaves_a_tombstone() -> None:
    """A node that has not synced yet must still make the removal win over any copy of
    the binding elsewhere: the tombstone is written whether or not the binding is here."""
    h = Harness()
    reply = h.send(register(contacts=["<sip:alice@192.0.2.10:5070>"], expires=0))
    assert status(reply) == 200 and contact_lines(reply) == []
    (tomb,) = h.table.group(b"alice@example.com", live_only=False)
    assert tomb["state"] == 2 and tomb["uri"] == "sip:alice@192.0.2.10:5070"
    assert h.table.counters()["tomb"] == 1


def test_wildcard_removal_waits_until_the_contacts_are_synced() -> None:
    h = Harness()
    h.send(register(expires=600))
    h.control.words[CT.W_SYNCED] = 0  # this node's contacts not synced yet
    reply = h.send(register(cseq=2, contacts=["*"], expires=0))
    assert status(reply) == 503 and "Retry-After: 1" in reply
    assert h.count("registrar:refused_not_synced") == 1
    assert len(h.contacts("alice@example.com")) == 1
    h.control.words[CT.W_SYNCED] = -1
    assert status(h.send(register(cseq=3, contacts=["*"], expires=0))) == 200
    assert h.contacts("alice@example.com") == []


def test_a_late_copy_of_an_earlier_request_does_not_bring_a_removed_binding_back() -> None:
    """The removal's tombstone keeps its CSeq: a copy of the REGISTER before it (a
    retransmission still queued, or one that went to another node) is out of order."""
    h = Harness()
    assert status(h.send(register(cseq=8, expires=600))) == 200
    assert status(h.send(register(cseq=9, expires=0))) == 200
    reply = h.send(register(cseq=8, expires=600))
    assert status(reply) == 400 and "Out of order request" in reply
    assert h.contacts("alice@example.com") == []
    assert status(h.send(register(cseq=9, expires=0))) == 200  # the removal again
    assert status(h.send(register(cseq=10, expires=600))) == 200  # the next one
    assert len(h.contacts("alice@example.com")) == 1
