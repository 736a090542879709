"""Capability decisions as tables: donor choice; sync chunk framing."""
from __future__ import annotations

import zlib

import pytest

from fastcluster.core.wire import CorruptFrame
from fastcluster.services.cluster.capabilities import CapState, choose_donor
from fastcluster.services.cluster.sync import chunk_payload, split_chunk


@pytest.mark.parametrize("case, candidates, exclude, expected", [
    ("none", [], set(), None),
    ("only one", [(3, True, 0)], set(), 3),
    ("direct link first", [(2, False, 0), (5, True, 0)], set(), 5),
    ("least busy next", [(2, True, 2), (5, True, 0), (7, True, 1)], set(), 5),
    ("lowest id breaks ties", [(9, True, 1), (4, True, 1), (6, True, 1)], set(), 4),
    ("excluded skipped", [(2, True, 0), (5, True, 0)], {2}, 5),
    ("all excluded", [(2, True, 0)], {2}, None),
    ("relayed only", [(8, False, 3), (6, False, 3)], set(), 6),
])
def test_choose_donor(case, candidates, exclude, expected) -> None:
    assert choose_donor(candidates, exclude) == expected


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
