"""Proxy routing decisions (services.sip.routing) and message builders
(services.sip.messages), by tables."""
from __future__ import annotations

import pytest

from fastcluster.core.sip import parse_message
from fastcluster.services.sip import messages as M
from fastcluster.services.sip import routing as RT
from fastcluster.shm.contacts import FLAG_NAT

ME = [("192.0.2.1", 5060), ("198.51.100.1", 5060)]


@pytest.mark.parametrize("uri, want", [
    ("sip:bob@example.com", ("example.com", 0)),
    ("sip:bob@Example.COM:5070;transport=udp", ("example.com", 5070)),
    ("<sip:192.0.2.1:5060;lr>", ("192.0.2.1", 5060)),
    ("sips:[2001:db8::1]:5061", ("2001:db8::1", 5061)),
    ("sip:example.com", ("example.com", 0)),
    ("tel:+15551234", None),
    ("sip:a:pw@h.example:99?x=y", ("h.example", 99)),
    ("<sip:1.2.3.4:65535>", ("1.2.3.4", 65535)),
    ("<sip:1.2.3.4:99999>", None),  # no socket can send there (OverflowError)
])
def test_uri_hostport(uri: str, want) -> None:
    assert RT.uri_hostport(uri) == want


@pytest.mark.parametrize("ruri, routes, want", [
    # no Route: nothing changes
    ("sip:bob@example.com", [], ("sip:bob@example.com", [], 0, None, None, False)),
    # our own Record-Route entry on top (in a dialog): popped
    ("sip:bob@203.0.113.9:5062", ["<sip:192.0.2.1:5060;lr>"],
     ("sip:bob@203.0.113.9:5062", [], 1, None, None, False)),
    # port omitted means 5060
    ("sip:bob@203.0.113.9", ["<sip:192.0.2.1;lr>", "<sip:203.0.113.5;lr>"],
     ("sip:bob@203.0.113.9", ["<sip:203.0.113.5;lr>"], 1, None, None, False)),
    # a route that is not ours stays: loose routing to it
    ("sip:bob@203.0.113.9", ["<sip:203.0.113.5;lr>", "<sip:192.0.2.1;lr>"],
     ("sip:bob@203.0.113.9", ["<sip:203.0.113.5;lr>", "<sip:192.0.2.1;lr>"], 0, None, None,
      False)),
    # double Record-Route (r2=on): both popped, the second names the listener to use
    ("sip:bob@203.0.113.9", ["<sip:192.0.2.1:5060;lr;r2=on>",
                             "<sip:198.51.100.1:5060;lr;r2=on>"],
     ("sip:bob@203.0.113.9", [], 2, 1, None, False)),
    # two of ours without r2: only the first (a spiral through us again)
    ("sip:bob@203.0.113.9", ["<sip:192.0.2.1:5060;lr>", "<sip:192.0.2.1:5060;lr>"],
     ("sip:bob@203.0.113.9", ["<sip:192.0.2.1:5060;lr>"], 1, None, None, False)),
    # a strict router before us put our entry in the Request-URI (§16.4)
    ("sip:192.0.2.1:5060;lr", ["<sip:203.0.113.5;lr>", "<sip:bob@203.0.113.9>"],
     ("sip:bob@203.0.113.9", ["<sip:203.0.113.5;lr>"], 0, None, None, True)),
    # a peer node's hint: where the contact is and from which listener
    ("sip:bob@10.9.9.9:5060", ["<sip:192.0.2.1:5060;lr;fcr=203.0.113.7:40000;fcs=1>"],
     ("sip:bob@10.9.9.9:5060", [], 1, None, ("203.0.113.7", 40000), False)),
])
def test_process_routes(ruri, routes, want) -> None:
    d = RT.process_routes(ruri, routes, ME)
    got = (d.ruri, d.routes, d.popped, d.out_sock, d.home_dst, "strict" in d.notes)
    assert got == want
    if d.home_dst:
        assert d.home_sock == 1


def B(uri: str, **kw) -> RT.Binding:
    kw.setdefault("expires", 2000)
    return RT.Binding(uri, **kw)


@pytest.mark.parametrize("bindings, serial, want", [
    # parallel: one group, highest q first, expired ones left out
    ([B("sip:a@h", q=500), B("sip:b@h", q=1000), B("sip:c@h", expires=900)], False,
     [("sip:b@h", 0), ("sip:a@h", 0)]),
    # no q is 1.0
    ([B("sip:a@h", q=700), B("sip:b@h")], False, [("sip:b@h", 0), ("sip:a@h", 0)]),
    # serial: groups by q, equal q together
    ([B("sip:a@h", q=500), B("sip:b@h", q=1000), B("sip:c@h", q=1000), B("sip:d@h", q=100)],
     True, [("sip:b@h", 0), ("sip:c@h", 0), ("sip:a@h", 1), ("sip:d@h", 2)]),
    # RFC 5626: one flow per instance, the most recently registered
    ([B("sip:a@h1", instance="<urn:1>", reg_id=1, last_modified=10),
      B("sip:a@h2", instance="<urn:1>", reg_id=2, last_modified=20),
      B("sip:b@h", instance="<urn:2>", reg_id=1, last_modified=5)], False,
     [("sip:a@h2", 0), ("sip:b@h", 0)]),
    # an instance without reg-id is a plain contact
    ([B("sip:a@h1", instance="<urn:1>"), B("sip:a@h2", instance="<urn:1>")], False,
     [("sip:a@h1", 0), ("sip:a@h2", 0)]),
])
def test_select_bindings(bindings, serial, want) -> None:
    got = [(b.uri, g) for b, g in RT.select_bindings(bindings, 1000, serial, 8)]
    assert sorted(got[:len(want)]) == sorted(want) and len(got) == len(want)
    if serial:
        assert got == want


def test_select_bindings_keeps_the_highest_q_within_max_branches() -> None:
    bindings = [B(f"sip:u{i}@h", q=i * 10) for i in range(12)]
    got = RT.select_bindings(bindings, 1000, False, 8)
    assert [b.uri for b, _ in got] == [f"sip:u{i}@h" for i in range(11, 3, -1)]


def resolve(host: str, port: int):
    return {"edge.example": ("203.0.113.50", port or 5060)}.get(host, (host, port or 5060))


NODES = {2: ("192.0.2.2", 5070)}


@pytest.mark.parametrize("binding, want", [
    # plain: its URI, from the listener it registered on
    (B("sip:bob@203.0.113.9:5062", sock=1), (1, "203.0.113.9", 5062, (), 0)),
    # NATed: the source address of its REGISTER
    (B("sip:bob@10.0.0.5:5060", flags=FLAG_NAT, received=("203.0.113.9", 40000)),
     (0, "203.0.113.9", 40000, (), 0)),
    # an outbound flow (reg-id) goes to its flow even without the NAT flag
    (B("sip:bob@10.0.0.5", instance="<urn:x>", reg_id=1, received=("203.0.113.9", 40001)),
     (0, "203.0.113.9", 40001, (), 0)),
    # Path: to its first hop, Path as Route (RFC 3327)
    (B("sip:bob@10.0.0.5", path=("<sip:edge.example;lr>",), flags=FLAG_NAT,
       received=("203.0.113.50", 5060)),
     (0, "203.0.113.50", 5060, ("<sip:edge.example;lr>",), 0)),
    # registered through node 2 (live): through node 2, with where node 2 sends it
    (B("sip:bob@10.0.0.5", flags=FLAG_NAT, received=("203.0.113.9", 40000), origin=2, sock=1),
     (0, "192.0.2.2", 5070, ("<sip:192.0.2.2:5070;lr;fcr=203.0.113.9:40000;fcs=1>",), 2)),
    # through node 2 with a Path: node 2 routes by the Path, no hint
    (B("sip:bob@10.0.0.5", path=("<sip:edge.example;lr>",), origin=2),
     (0, "192.0.2.2", 5070, ("<sip:192.0.2.2:5070;lr>", "<sip:edge.example;lr>"), 2)),
    # registered through node 3, which is not live: straight to it
    (B("sip:bob@203.0.113.9:5062", origin=3), (0, "203.0.113.9", 5062, (), 0)),
    # ourselves
    (B("sip:bob@203.0.113.9:5062", origin=1), (0, "203.0.113.9", 5062, (), 0)),
])
def test_binding_target(binding, want) -> None:
    t = RT.binding_target(binding, 0, 1, NODES, resolve)
    assert (t.sock, t.host, t.port, t.routes, t.home) == want
    assert t.ruri == binding.uri
    assert RT.Target.from_line(t.line()) == t


@pytest.mark.parametrize("host, domains, want", [
    ("example.com", (), True), ("example.com", ("example.com",), True),
    ("Other.org", ("example.com",), False), ("192.0.2.1", ("example.com",), True),
])
def test_serves_domain(host, domains, want) -> None:
    assert RT.serves_domain(host, domains, frozenset(ME)) == want


# ---------------------------------------------------------------- messages

INVITE = ("INVITE sip:bob@example.com SIP/2.0\r\n"
          "Via: SIP/2.0/UDP 203.0.113.9:5062;branch=z9hG4bK-1;rport\r\n"
          "Route: <sip:192.0.2.1;lr>, <sip:203.0.113.5;lr>\r\n"
          "route: <sip:203.0.113.6;lr>\r\n"
          "f: <sip:alice@example.com>;tag=a\r\nt: <sip:bob@example.com>\r\n"
          "i: cid\r\nCSeq: 1 INVITE\r\nMax-Forwards: 7\r\nl: 3\r\n\r\nabc")


def test_forward_request_edits_only_what_a_proxy_may() -> None:
    data = INVITE.encode()
    msg = parse_message(data)
    out = M.forward_request(data, msg, "sip:bob@198.51.100.7:5064",
                            ["Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx",
                             "Record-Route: <sip:192.0.2.1:5060;lr>"], 1, 6)
    assert out.decode() == (
        "INVITE sip:bob@198.51.100.7:5064 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\n"
        "Record-Route: <sip:192.0.2.1:5060;lr>\r\n"
        "Via: SIP/2.0/UDP 203.0.113.9:5062;branch=z9hG4bK-1;rport\r\n"
        "Route: <sip:203.0.113.5;lr>\r\n"
        "route: <sip:203.0.113.6;lr>\r\n"
        "f: <sip:alice@example.com>;tag=a\r\nt: <sip:bob@example.com>\r\n"
        "i: cid\r\nCSeq: 1 INVITE\r\nMax-Forwards: 6\r\nl: 3\r\n\r\nabc")
    # popping across header lines, and a missing Max-Forwards is added
    out = M.forward_request(data.replace(b"Max-Forwards: 7\r\n", b""), msg, msg.ruri,
                            ["Via: X"], 3, 70)
    text = out.decode()
    assert "oute:" not in text and text.endswith("l: 3\r\nMax-Forwards: 70\r\n\r\nabc")


def test_forward_request_rebuilds_an_unusual_head() -> None:
    folded = INVITE.replace("Max-Forwards: 7", "Subject: a\r\n  folded\r\nMax-Forwards: 7")
    data = folded.encode()
    msg = parse_message(data)
    out = M.forward_request(data, msg, msg.ruri, ["Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKy"],
                            1, 6)
    again = parse_message(out)
    assert again.vias[0] == "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKy"
    assert again.get_all("route") == ["<sip:203.0.113.5;lr>", "<sip:203.0.113.6;lr>"]
    assert again.max_forwards == 6 and again.body == b"abc" and again.get("subject") == \
        "a folded"


@pytest.mark.parametrize("response, want", [
    ("SIP/2.0 180 R\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z\r\n"
     "To: x\r\n\r\n", "SIP/2.0 180 R\r\nVia: SIP/2.0/UDP b;branch=z\r\nTo: x\r\n\r\n"),
    ("SIP/2.0 180 R\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z\r\n\r\n",
     "SIP/2.0 180 R\r\nv: SIP/2.0/UDP b;branch=z\r\n\r\n"),
])
def test_strip_top_via(response: str, want: str) -> None:
    assert M.strip_top_via(response.encode()).decode() == want


@pytest.mark.parametrize("via, want", [
    ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport", ("192.0.2.1:5060", "z9hG4bKabc")),
    ("SIP/2.0/UDP host.example;received=1.2.3.4;BRANCH=z9hG4bKq",
     ("host.example", "z9hG4bKq")),
    ("SIP/2.0/UDP a:1;branch=x1, SIP/2.0/UDP b;branch=x2", ("a:1", "x1")),
    ("SIP/2.0/UDP [2001:db8::1]:5060", ("[2001:db8::1]:5060", "")),
])
def test_via_parts(via: str, want) -> None:
    assert M.via_parts(via) == want


def test_branch_ids_round_trip() -> None:
    for key, idx, loop in ((2, 0, 0), ((1 << 64) - 1, 7, 0xFFFFFFFF), (123456789, 3, 42)):
        assert M.parse_branch(M.branch_id(key, idx, loop)) == (key, idx, loop)
    assert M.parse_branch("z9hG4bK-sipp-1") is None
    assert M.stateless_branch("z9hG4bK1", "sip:x") == M.stateless_branch("z9hG4bK1", "sip:x")
    assert M.stateless_branch("z9hG4bK1", "sip:x") != M.stateless_branch("z9hG4bK2", "sip:x")


def test_cancel_and_ack_copy_what_rfc_3261_asks() -> None:
    req = parse_message(INVITE.encode())
    cancel = parse_message(M.build_cancel(req, "sip:bob@198.51.100.7", "SIP/2.0/UDP me;branch=b1",
                                          ["<sip:203.0.113.5;lr>"]))
    assert (cancel.method, cancel.ruri, cancel.vias, cancel.call_id, cancel.cseq_num,
            cancel.cseq_method) == ("CANCEL", "sip:bob@198.51.100.7",
                                    ["SIP/2.0/UDP me;branch=b1"], "cid", 1, "CANCEL")
    assert cancel.from_ == req.from_ and cancel.to == req.to
    assert cancel.get_all("route") == ["<sip:203.0.113.5;lr>"]
    ack = parse_message(M.build_ack(req, "sip:bob@198.51.100.7", "SIP/2.0/UDP me;branch=b1", [],
                                    "<sip:bob@example.com>;tag=z"))
    assert (ack.method, ack.to, ack.cseq_method, ack.cseq_num) == (
        "ACK", "<sip:bob@example.com>;tag=z", "ACK", 1)
