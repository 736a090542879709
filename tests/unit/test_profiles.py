"""Dialog profile counters (shm.profiles): admission counts, remote sums, and the recount
from the dialog table -- which dialogs a node counts (its active tags, its untagged
dialogs), and that a count is never below the truth while a recount runs."""
from __future__ import annotations

import numpy as np

from fastcluster.shm import dialogs as D
from fastcluster.shm import profiles as PF
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.tables import Table

NOW = 1_800_000_000
ME = 7


def counters(capacity: int = 64) -> PF.ProfileCounters:
    seg = np.zeros(PF.segment_size(capacity), dtype=np.uint8)
    PF.init_segment(seg, capacity)
    return PF.ProfileCounters(seg)


def dialog_table(rows: list[tuple[str, str, str, int, bool]]) -> Table:
    """rows: (callid, shtag, profiles, creator, live)."""
    buf = np.zeros(Table.size_for(D.DIALOG, 256, 512, 2), dtype=np.uint8)
    table = Table.create(buf, D.DIALOG, 256, 512, 2, node_id=ME)
    patch = np.zeros(table.row_size, dtype=np.uint8)
    out = np.zeros_like(patch)
    for callid, tag, profiles, creator, live in rows:
        D.pack_dialog(patch, table.row_size, strings={
            "callid": callid.encode(), "from_tag": b"t", "shtag": tag.encode(),
            "profiles": profiles.encode()}, timeout=NOW + 60, start=NOW, dlg_state=4,
            creator=creator)
        D.dlg_apply(buf, R.no_ring(), patch, D.OP_CREATE, NOW * 1000, T.lock_word(1, 1), 1,
                    out)
        if not live:
            D.dlg_apply(buf, R.no_ring(), patch, D.OP_DELETE, NOW * 1000, T.lock_word(1, 1),
                        1, out)
    return table


def n(scope: str, profile: str) -> bytes:
    return PF.name_of(scope.encode(), profile.encode())


def test_admissions_and_remote_sums() -> None:
    c = counters()
    assert c.add([n("vip1", "calls"), n("vip1", "per_user/alice")], 1) == 2
    assert c.add([n("vip1", "calls")], 1) == 1
    assert c.get([n("vip1", "calls"), n("vip1", "per_user/alice"), n("", "calls")]) == \
        [2, 1, 0]
    assert c.add([n("vip1", "calls")], -1) == 1
    assert c.set_remote({b"calls": 5, b"per_user/bob": 2}) == 0
    assert c.get([n("*", "calls"), n("*", "per_user/bob"), n("*", "nothing")]) == [5, 2, 0]
    c.set_remote({b"calls": 1})  # what is no longer reported goes to 0
    assert c.get([n("*", "calls"), n("*", "per_user/bob")]) == [1, 0]
    assert c.entries() == {(b"vip1", b"calls"): (0, 1, 0),
                           (b"vip1", b"per_user/alice"): (0, 1, 0),
                           (b"*", b"calls"): (0, 0, 1)}


def test_full_counters_and_long_names_are_refused_and_counted() -> None:
    c = counters(capacity=16)
    assert c.add([n("", f"v/{i}") for i in range(20)], 1) == 16
    assert c.refused == 4 and c.used == 16
    c2 = counters()
    assert c2.add([n("", "x" * PF.MAX_NAME)], 1) == 0 and c2.refused == 1


ROWS = [
    ("a", "vip1", "calls\nper_user/alice", 1, True),  # tag active here: counted
    ("b", "vip1", "calls\nper_user/bob", 2, True),
    ("c", "vip2", "calls\nper_user/carol", ME, True),  # tag active elsewhere: not here
    ("d", "", "calls\nper_user/alice", ME, True),  # untagged, made here: counted
    ("e", "", "calls", 8, True),  # untagged, made by node 8: not here
    ("f", "vip1", "calls", 1, False),  # ended: not counted
    ("g", "vip1", "", 1, True),  # in no profile
]


def recount(table: Table, c: PF.ProfileCounters, active: list[str], slices: int = 1,
            between=None) -> tuple[int, int]:
    active8 = np.frombuffer(b"".join(a.encode() + b"\0" for a in active) or b"\0",
                            np.uint8).copy()
    scratch = np.zeros(c.nslots, dtype=np.int64)
    row8 = np.zeros(table.row_size, dtype=np.uint8)
    name8 = np.zeros(PF.NAME_BYTES, dtype=np.uint8)
    PF.prof_begin(c.buf, scratch)
    at, counted, refused = 0, 0, 0
    step = -(-table.nslots // slices)
    while at < table.nslots:
        at, k, r = PF.prof_scan(table.buf, c.buf, at, step, active8, len(active), ME,
                                scratch, row8, name8)
        counted += k
        refused += r
        if between is not None:
            between()
    PF.prof_end(c.buf, scratch)
    return counted, refused


def test_recount_counts_what_this_node_is_responsible_for() -> None:
    table = dialog_table(ROWS)
    c = counters()
    generation = c.generation
    assert recount(table, c, ["vip1"]) == (3, 0)
    assert c.generation == generation + 1
    assert {k: v[0] for k, v in c.entries().items()} == {
        (b"vip1", b"calls"): 2, (b"vip1", b"per_user/alice"): 1,
        (b"vip1", b"per_user/bob"): 1, (b"", b"calls"): 1, (b"", b"per_user/alice"): 1}
    # vip2 moves here, vip1 away: the counts follow at the next recount
    recount(table, c, ["vip2"])
    assert {k: v[0] for k, v in c.entries().items()} == {
        (b"vip2", b"calls"): 1, (b"vip2", b"per_user/carol"): 1, (b"", b"calls"): 1,
        (b"", b"per_user/alice"): 1}


def test_a_count_is_never_below_the_truth_while_a_recount_runs() -> None:
    table = dialog_table(ROWS[:2])
    c = counters()
    recount(table, c, ["vip1"])
    calls = [n("vip1", "calls")]
    assert c.get(calls) == [2]
    # a worker admits three dialogs during the next recount (one before it starts)
    c.add(calls, 1)
    seen = []

    def admit() -> None:
        c.add(calls, 1)
        seen.append(c.get(calls)[0])

    recount(table, c, ["vip1"], slices=3, between=admit)
    # in the table: 2 (the admitted ones are not written in this test); counted: 2 plus
    # the admissions made since the recount began (the one before it is dropped)
    assert all(v >= 3 for v in seen)
    assert c.get(calls) == [2 + 3]


def test_names_without_counts_are_reclaimed_and_lookups_walk_past_them() -> None:
    c = counters(capacity=16)
    names = [n("", f"v/{i}") for i in range(16)]
    assert c.add(names, 1) == 16 and c.add([n("", "one more")], 1) == 0
    # only the odd values have a dialog in the table: the even ones end at the recount
    table = dialog_table([(f"c{i}", "", f"v/{i}", ME, True) for i in range(1, 16, 2)])
    recount(table, c, [])
    assert c.used == 8 and c.reclaimed == 8
    assert c.get(names) == [i % 2 for i in range(16)]
    fresh = [n("", f"w/{i}") for i in range(8)]
    assert c.add(fresh, 1) == 8 and c.used == 16  # their room is taken again
    assert c.get(names + fresh) == [i % 2 for i in range(16)] + [1] * 8
    assert c.add([n("", "one more")], 1) == 0
    # a remote count keeps its name; one no longer reported goes at the next recount
    c2 = counters()
    c2.set_remote({b"calls": 2})
    recount(table, c2, [])
    assert c2.get([n("*", "calls")]) == [2]
    c2.set_remote({})
    recount(table, c2, [])
    assert (b"*", b"calls") not in c2.entries() and c2.reclaimed >= 1


def test_local_delta_reports_only_what_changed() -> None:
    c = counters()
    sent_keys = np.zeros(c.nslots, dtype=np.int64)
    sent_vals = np.zeros(c.nslots, dtype=np.int64)
    out = np.zeros((c.nslots, 4), dtype=np.int64)

    def delta(full: bool = False) -> dict[bytes, int]:
        m = int(PF.prof_local_delta(c.buf, sent_keys, sent_vals, full, out))
        return {b"\0".join(c.name_at(int(r[0]))): int(r[2]) for r in out[:m]}

    c.add([n("", "a"), n("", "b")], 1)
    assert delta() == {b"\0a": 1, b"\0b": 1}
    assert delta() == {}
    c.add([n("", "a")], 1)
    assert delta() == {b"\0a": 2}
    assert delta(full=True) == {b"\0a": 2, b"\0b": 1}
    c.add([n("", "b")], -1)
    assert delta() == {b"\0b": 0}


def test_kept_name_packs_count_the_right_names_past_their_limit(monkeypatch) -> None:
    """add_each keeps the packed arrays of the name lists it was given: with fewer kept
    than lists in use (the cache starts again), every count still lands on its names."""
    monkeypatch.setattr(PF, "PACKS_KEPT", 3)
    pc = counters(64)
    lists = [[n("", f"p{i}"), n("", "calls")] for i in range(7)]
    for _ in range(3):
        for names in lists:
            assert pc.add_each(names, 1) == [True, True]
    assert pc.get([n("", f"p{i}") for i in range(7)]) == [3] * 7
    assert pc.get([n("", "calls")]) == [21]
