"""Pure rules of dialog tracking (services.sip.dialog_rules), with tables of cases."""
from __future__ import annotations

import pytest

from fastcluster.core.settings import PROFILE_FIELDS
from fastcluster.core.sip import parse_message
from fastcluster.services.sip import dialog_rules as DR
from fastcluster.shm.dialogs import DLG_CONFIRMED_NA, DLG_EARLY

MINE = frozenset({("192.0.2.1", 5060), ("198.51.100.1", 5060)})


@pytest.mark.parametrize("status, to_tag, final, expected", [
    (100, "", 0, None),  # Trying: nothing
    (180, "", 0, None),  # a 1xx without a To tag makes no dialog
    (180, "b1", 0, DLG_EARLY),
    (183, "b2", 0, DLG_EARLY),
    (200, "b1", 200, DLG_CONFIRMED_NA),
    (200, "b1", 0, DLG_CONFIRMED_NA),  # a 2xx retransmission, or a second 2xx
    (486, "b1", 0, None),  # one branch failed, others may answer
    (486, "b1", 486, DR.FAILED),  # the transaction's final answer is a failure
    (408, "", 408, DR.FAILED),
    (603, "x", 480, DR.FAILED),  # another branch's failure went upstream
])
def test_state_of_reply(status, to_tag, final, expected) -> None:
    assert DR.state_of_reply(status, to_tag, final) == expected


A, B, C = "<sip:a.example.com;lr>", "<sip:b.example.com;lr>", "<sip:c.example.com;lr>"
US = "<sip:192.0.2.1:5060;lr>"
US2 = ["<sip:198.51.100.1:5060;lr;r2=on>", "<sip:192.0.2.1:5060;lr;r2=on>"]


@pytest.mark.parametrize("rr, caller, callee", [
    ([US], [], []),  # caller -> us -> callee
    ([f"{B}, {US}, {A}"], [A], [B]),  # caller -> A -> us -> B -> callee
    ([C, B, US, A], [A], [B, C]),  # one entry per header line; callee side reversed
    ([f"{C}, {B}", f"{US}, {A}, <sip:z.example.com;lr>"], [A, "<sip:z.example.com;lr>"],
     [B, C]),
    ([B, *US2, A], [A], [B]),  # our double Record-Route (r2=on) is in neither
    ([B, A], [], [A, B]),  # no entry of ours: all lead to the callee
    ([], [], []),
])
def test_route_sets(rr, caller, callee) -> None:
    assert DR.route_sets(rr, MINE) == (caller, callee)


def test_caller_route_of_the_initial_invite() -> None:
    assert DR.caller_route_of_request([f"{B}, {A}"]) == [B, A]
    assert DR.caller_route_of_request([]) == []


INVITE = ("INVITE sip:bob@example.com;transport=udp SIP/2.0\r\n"
          "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1\r\n"
          'From: "Alice" <sip:alice@Atlanta.example.com>;tag=a1\r\n'
          "To: sip:bob@example.com\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
          "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("rules, expected", [
    ((), []),
    ((("calls", ""),), ["calls"]),
    ((("calls", ""), ("calls_per_user", "from_user")), ["calls", "calls_per_user/alice"]),
    ((("by_domain", "from_domain"),), ["by_domain/atlanta.example.com"]),
    ((("callee", "to_user"), ("to", "to_uri")), ["callee/bob", "to/sip:bob@example.com"]),
    ((("r", "ruri_user"), ("rd", "ruri_domain")), ["r/bob", "rd/example.com"]),
    ((("src", "source_ip"),), ["src/192.0.2.10"]),
    ((("f", "from_uri"),), ["f/sip:alice@Atlanta.example.com"]),
])
def test_profiles_of_an_invite(rules, expected) -> None:
    assert DR.profiles_of(rules, parse_message(INVITE), "192.0.2.10") == expected


def test_every_declared_field_has_a_reader() -> None:
    assert tuple(DR.FIELD_VALUES) == PROFILE_FIELDS


def test_an_empty_value_puts_the_dialog_in_no_entry() -> None:
    msg = parse_message(INVITE.replace(b"sip:alice@", b"sip:"))
    assert DR.profiles_of((("u", "from_user"), ("all", "")), msg, "") == ["all"]


@pytest.mark.parametrize("counts, limits, over", [
    ({"calls": 3}, {"calls": 3}, None),
    ({"calls": 4}, {"calls": 3}, "calls"),
    ({"per_user/alice": 3, "calls": 1}, {"per_user": 2}, "per_user/alice"),
    ({"per_user/alice": 2}, {"per_user": 2}, None),
    ({"other": 100}, {"per_user": 2}, None),
    ({"per_user/a": 1, "per_user/b": 5}, {"per_user": 2, "calls": 10}, "per_user/b"),
])
def test_limits(counts, limits, over) -> None:
    assert DR.exceeded(counts, limits) == over


DLG = {"callid": "c1", "from_tag": "a1", "to_tag": "b1",
       "from_uri": "sip:alice@example.com", "to_uri": "sip:bob@example.com",
       "caller_contact": "sip:alice@192.0.2.10:5070", "callee_contact":
       "sip:bob@203.0.113.21:5081", "caller_route": A, "callee_route": f"{B}, {C}",
       "caller_cseq": 3, "callee_cseq": 0}


def test_legs_go_as_if_from_the_other_party() -> None:
    callee = DR.leg_of(DLG, callee=True)
    assert callee.ruri == "sip:bob@203.0.113.21:5081" and callee.routes == [B, C]
    assert callee.from_ == "<sip:alice@example.com>;tag=a1"
    assert callee.to == "<sip:bob@example.com>;tag=b1" and callee.cseq == 4
    assert DR.next_hop(callee) == "sip:b.example.com;lr"
    caller = DR.leg_of(DLG, callee=False)
    assert caller.ruri == "sip:alice@192.0.2.10:5070" and caller.routes == [A]
    assert caller.from_ == "<sip:bob@example.com>;tag=b1" and caller.cseq == 1
    no_route = DR.leg_of(dict(DLG, caller_route=""), callee=False)
    assert DR.next_hop(no_route) == "sip:alice@192.0.2.10:5070"


def test_a_bye_of_our_own_parses_and_names_the_dialog() -> None:
    leg = DR.leg_of(DLG, callee=True)
    branch = DR.own_branch("b", True, 0xABCDEF0123456789, 7)
    msg = parse_message(DR.in_dialog_request("BYE", leg, "c1", "192.0.2.1:5060", branch))
    assert msg.method == "BYE" and msg.ruri == leg.ruri and msg.call_id == "c1"
    assert msg.get_all("route") == [B, C] and msg.cseq_num == 4
    assert msg.from_ == leg.from_ and msg.to == leg.to and msg.max_forwards == 70
    assert DR.parse_own_branch(branch) == ("b", True, 0xABCDEF0123456789)
    assert DR.parse_own_branch(DR.own_branch("p", False, 5, 1)) == ("p", False, 5)


@pytest.mark.parametrize("branch", ["z9hG4bKfc0123", "z9hG4bKfdx10000000000000005.1",
                                    "z9hG4bKfdb2000000000000000.1", "z9hG4bKfdb1zz",
                                    "z9hG4bK-other"])
def test_other_branches_are_not_ours(branch) -> None:
    assert DR.parse_own_branch(branch) is None


@pytest.mark.parametrize("state, stored, tag, same", [
    (1, b"", b"b1", True),  # unconfirmed: any callee
    (2, b"b2", b"b1", True),  # early: another branch may still take the row
    (3, b"b1", b"b1", True),
    (3, b"b1", b"b2", False),  # confirmed with b1: b2's 2xx is a dialog of its own
    (4, b"b1", b"b2", False),
    (4, b"b1", b"", True),  # a change naming no callee (timers, MI)
    (4, b"", b"b2", True),
])
def test_same_callee(state, stored, tag, same) -> None:
    assert DR.same_callee(state, stored, tag) is same


@pytest.mark.parametrize("missing, limits, too_long, status", [
    ([], {"per_user": 2}, set(), 0),
    (["calls"], {"per_user": 2}, set(), 0),  # no limit: fails open (counted)
    (["per_user/bob"], {"per_user": 2}, set(), 503),  # counters full: fail closed
    (["per_user/" + "x" * 200], {"per_user": 2}, {"per_user/" + "x" * 200}, 500),
    (["calls", "per_user/bob"], {"calls": 9}, set(), 503),
])
def test_an_uncounted_value_of_a_limited_profile_refuses_the_call(missing, limits, too_long,
                                                                  status) -> None:
    assert DR.uncounted_status(missing, limits, too_long) == status


@pytest.mark.parametrize("routes, source, want", [
    ("", ("198.51.100.7", 40000), ("198.51.100.7", 40000)),  # NAT: where it came from
    ("", None, ("203.0.113.21", 5081)),  # no source known: the Contact
    (B, ("198.51.100.7", 40000), ("b.example.com", 0)),  # a route set: its first hop
])
def test_requests_of_our_own_go_where_the_legs_requests_would(routes, source, want) -> None:
    leg = DR.leg_of(dict(DLG, callee_route=routes), callee=True)
    assert DR.leg_destination(leg, source) == want


@pytest.mark.parametrize("value, label, source", [
    ("udp:192.0.2.1:5060 198.51.100.7:40000", "udp:192.0.2.1:5060", ("198.51.100.7", 40000)),
    ("udp:[2001:db8::1]:5060 [2001:db8::9]:5070", "udp:[2001:db8::1]:5060",
     ("2001:db8::9", 5070)),
    ("udp:192.0.2.1:5060", "udp:192.0.2.1:5060", None),  # a row written before
    ("", "", None),
])
def test_a_legs_sock_string(value, label, source) -> None:
    assert DR.split_sock(value) == (label, source)
    if source is not None:
        assert DR.sock_value(label, source) == value
