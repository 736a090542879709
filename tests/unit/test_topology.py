"""Topology decisions as tables of cases: link states, probe rounds, routes, floods."""
from __future__ import annotations

import pytest

from fastcluster.services.cluster.topology import (
    FloodFilter,
    Link,
    Peer,
    Sequencer,
    Timing,
    needs_ping,
    next_link_state,
    probe_round_due,
    routes,
)

T = Timing(ping_interval_ms=100, ping_timeout_ms=300, node_timeout_ms=2000)
NOW = 100_000


def peer(**kw) -> Peer:
    p = Peer(9)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# (case, peer fields, connected, probers, expected)
LINK_CASES = [
    ("fresh connection, no pong yet", dict(link=Link.DOWN, last_rx_ms=NOW), True, 2, Link.PROBE),
    ("pong but peer has not acked", dict(link=Link.PROBE, last_rx_ms=NOW, pong_ms=NOW),
     True, 2, Link.PROBE),
    ("both directions confirmed", dict(link=Link.PROBE, last_rx_ms=NOW, pong_ms=NOW,
                                       peer_ack=True), True, 2, Link.UP),
    ("confirmation too old", dict(link=Link.UP, last_rx_ms=NOW, pong_ms=NOW - 500,
                                  peer_ack=True), True, 2, Link.PROBE),
    ("silent Up link starts probing", dict(link=Link.UP, last_rx_ms=NOW - 301, pong_ms=NOW - 301,
                                           peer_ack=True), True, 2, Link.PROBE),
    ("closed Up link starts probing", dict(link=Link.UP, last_rx_ms=NOW - 5), False, 2,
     Link.PROBE),
    ("all probers say dead", dict(link=Link.PROBE, probing_since_ms=NOW - 10,
                                  probe_round_ms=NOW - 10, probe_answers={1, 2}), False, 2,
     Link.DOWN),
    ("some probers have not answered", dict(link=Link.PROBE, probing_since_ms=NOW - 10,
                                            probe_round_ms=NOW - 10, probe_answers={1}),
     False, 2, Link.PROBE),
    ("round timed out without alive", dict(link=Link.PROBE, probing_since_ms=NOW - 300,
                                           probe_round_ms=NOW - 300), False, 2, Link.DOWN),
    ("no probers: wait a round", dict(link=Link.PROBE, probing_since_ms=NOW - 100,
                                      probe_round_ms=NOW - 100), False, 0, Link.PROBE),
    ("someone hears it: stay in Probe", dict(link=Link.PROBE, probing_since_ms=NOW - 1500,
                                            probe_round_ms=NOW - 100, probe_alive=True),
     False, 2, Link.PROBE),
    ("heard but past node_timeout", dict(link=Link.PROBE, probing_since_ms=NOW - 2001,
                                        probe_round_ms=NOW - 100, probe_alive=True), False, 2,
     Link.DOWN),
    ("Down stays Down until reconnected", dict(link=Link.DOWN, last_rx_ms=NOW - 5000), False,
     2, Link.DOWN),
    ("left node is Down at once", dict(link=Link.UP, last_rx_ms=NOW, pong_ms=NOW,
                                       peer_ack=True, left=True), True, 2, Link.DOWN),
    ("disabled node is Down", dict(link=Link.UP, last_rx_ms=NOW, pong_ms=NOW, peer_ack=True,
                                   enabled=False), True, 2, Link.DOWN),
]


@pytest.mark.parametrize("case, fields, connected, probers, expected", LINK_CASES,
                         ids=[c[0] for c in LINK_CASES])
def test_next_link_state(case, fields, connected, probers, expected) -> None:
    assert next_link_state(peer(**fields), connected, NOW, T, probers) == expected


@pytest.mark.parametrize("fields, due", [
    (dict(), True),
    (dict(probing_since_ms=NOW - 50, probe_round_ms=NOW - 50), False),
    (dict(probing_since_ms=NOW - 400, probe_round_ms=NOW - 400, probe_alive=True), True),
    (dict(probing_since_ms=NOW - 400, probe_round_ms=NOW - 100, probe_alive=True), False),
])
def test_probe_rounds(fields, due) -> None:
    assert probe_round_due(peer(**fields), NOW, T) == due


@pytest.mark.parametrize("fields, expected", [
    (dict(link=Link.PROBE), True),  # unconfirmed: ping
    (dict(link=Link.PROBE, ping_sent_ms=NOW - 100), False),  # one outstanding
    (dict(link=Link.UP, last_tx_ms=NOW - 50, pong_ms=NOW - 50), False),  # busy link
    (dict(link=Link.UP, last_tx_ms=NOW - 100, pong_ms=NOW - 100), True),  # idle link
])
def test_needs_ping(fields, expected) -> None:
    assert needs_ping(peer(**fields), NOW, T) == expected


ROUTE_CASES = [
    # (case, me, my_up, adverts, members, expected next hops)
    ("full mesh", 1, {2, 3}, {2: {1, 3}, 3: {1, 2}}, {1, 2, 3}, {2: 2, 3: 3}),
    ("relay through 2", 1, {2}, {2: {1, 3}, 3: {2}}, {1, 2, 3}, {2: 2, 3: 2}),
    ("one-sided advert is no link", 1, {2}, {2: {1, 3}, 3: set()}, {1, 2, 3}, {2: 2}),
    ("tie goes to the lowest id", 1, {4, 2}, {2: {1, 3}, 4: {1, 3}, 3: {2, 4}}, {1, 2, 3, 4},
     {2: 2, 4: 4, 3: 2}),
    ("two hops", 1, {2}, {2: {1, 3}, 3: {2, 4}, 4: {3}}, {1, 2, 3, 4}, {2: 2, 3: 2, 4: 2}),
    ("non-members are not used", 1, {2}, {2: {1, 3}, 3: {2}}, {1, 3}, {}),
    ("alone", 1, set(), {}, {1}, {}),
]


@pytest.mark.parametrize("case, me, my_up, adverts, members, expected", ROUTE_CASES,
                         ids=[c[0] for c in ROUTE_CASES])
def test_routes(case, me, my_up, adverts, members, expected) -> None:
    assert routes(me, my_up, adverts, members) == expected


def test_flood_filter_and_sequences_survive_restart() -> None:
    f = FloodFilter()
    assert f.fresh(9, 2, 10) and not f.fresh(9, 2, 10) and not f.fresh(9, 2, 5)
    assert f.fresh(9, 2, 11) and f.fresh(8, 2, 1)
    f.forget(2)
    assert f.fresh(9, 2, 1)
    before = Sequencer()
    a = before.next(1000)
    assert before.next(1000) == a + 1
    after_restart = Sequencer()  # a new process, a later clock
    assert after_restart.next(1001) > before.next(1000)
