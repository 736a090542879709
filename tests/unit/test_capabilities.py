"""Capability decisions as tables: donor choice; sync chunk framing."""
from __future__ import annotations

import zlib

import pytest

from fastcluster.core.wire import CorruptFrame
from fastcluster.services.cluster.capabilities import CapState, choose_donor, may_declare_synced
from fastcluster.services.cluster.sync import chunk_payload, split_chunk


T = 1_800_000_000_000  # some unix ms


@pytest.mark.parametrize("case, candidates, exclude, before, expected", [
    ("none", [], set(), 0, None),
    ("only one", [(3, True, 0, T)], set(), 0, 3),
    ("direct link first", [(2, False, 0, T), (5, True, 0, T + 9)], set(), 0, 5),
    ("synced longest next", [(2, True, 0, T + 5), (5, True, 3, T), (7, True, 0, T + 1)],
     set(), 0, 5),
    ("not the lowest id when another was synced longer", [(1, True, 0, T + 5000),
                                                         (3, True, 0, T)], set(), 0, 3),
    ("least busy among equals", [(2, True, 2, T), (5, True, 0, T), (7, True, 1, T)],
     set(), 0, 5),
    ("lowest id breaks ties", [(9, True, 1, T), (4, True, 1, T), (6, True, 1, T)],
     set(), 0, 4),
    ("excluded skipped", [(2, True, 0, T), (5, True, 0, T)], {2}, 0, 5),
    ("all excluded", [(2, True, 0, T)], {2}, 0, None),
    ("relayed only", [(8, False, 3, T), (6, False, 3, T)], set(), 0, 6),
    ("mirror: only nodes synced all along", [(2, True, 0, T + 10), (5, False, 0, T - 10)],
     set(), T, 5),
    ("mirror: nobody synced all along", [(2, True, 0, T + 10)], set(), T, None),
])
def test_choose_donor(case, candidates, exclude, before, expected) -> None:
    assert choose_donor(candidates, exclude, before) == expected


@pytest.mark.parametrize("case, me, data, waited, seed, known, reachable, expected", [
    ("too early", 1, 0, 1.0, True, set(), {}, False),
    ("a donor is there: sync from it", 1, 0, 9.0, True, {2}, {2: (True, 0)}, False),
    ("new seed alone", 1, 0, 9.0, True, set(), {}, True),
    ("new non-seed waits for a donor", 2, 0, 9.0, False, set(), {}, False),
    ("restarted seed knows members that may hold data: waits", 1, 0, 9.0, True, {2, 3},
     {2: (False, T), 3: (False, T + 1)}, False),
    ("whole cluster restarted: the newest data declares", 3, T + 1, 9.0, False, {1, 2},
     {1: (False, T), 2: (False, 0)}, True),
    ("whole cluster restarted: the others wait for it", 1, T, 9.0, True, {2, 3},
     {2: (False, 0), 3: (False, T + 1)}, False),
    ("equal data: the lowest id", 2, T, 9.0, False, {3}, {3: (False, T)}, True),
    ("every known member unreachable: it declares", 1, 0, 9.0, True, {2, 3}, {}, True),
    ("empty data never beats a reachable member with data", 1, 0, 9.0, True, {2},
     {2: (False, T)}, False),
])
def test_may_declare_synced(case, me, data, waited, seed, known, reachable, expected) -> None:
    assert may_declare_synced(me, data, waited, 5.0, seed, known, reachable) == expected


def test_states_and_texts_follow_opensips() -> None:
    assert [int(s) for s in CapState] == [-3, -2, -1, 1]
    assert [s.text for s in CapState] == ["not synced", "sync pending", "sync in progress",
                                          "synced"]


def test_chunk_round_trip_and_damage() -> None:
    entries = bytes(range(256)) * 4
    meta = {"seq": 3, "rows": 7, "crc": zlib.crc32(entries), "covered": 12345}
    raw = chunk_payload(meta, memoryview(entries))
    got_meta, got = split_chunk(raw)
    assert got_meta == meta and got == entries
    for bad in (b"", b"\x01\x00", b"\xff\xff\x00\x00" + raw[4:], raw[:4] + b"\xc1" + raw[5:]):
        with pytest.raises(CorruptFrame):
            split_chunk(bad)
