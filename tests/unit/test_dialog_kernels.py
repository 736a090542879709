"""The dialog kernels (shm.dialogs) against a plain-Python reference of their merge
rules, on random sequences of changes; and their edges: a full table, strings too long,
the due-dialog scan, state counts, per-node ping bits."""
from __future__ import annotations

import random

import numpy as np
import pytest

from fastcluster.shm import dialogs as D
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.tables import Table

STRINGS = D.DIALOG.strings
NOW = 1_800_000_000


def make(capacity: int = 64, record_bytes: int = 512) -> tuple[Table, np.ndarray]:
    buf = np.zeros(Table.size_for(D.DIALOG, capacity, record_bytes, 2), dtype=np.uint8)
    table = Table.create(buf, D.DIALOG, capacity, record_bytes, 2, node_id=7)
    seg = np.zeros(R.segment_size(2, 1 << 16), dtype=np.uint8)
    R.init_segment(seg, 2, 1 << 16)
    return table, R.region(seg, 1)


def apply(table: Table, ring: np.ndarray, op: int, strings: dict, now_ms: int, **fields
          ) -> tuple[int, dict]:
    patch = np.zeros(table.row_size, dtype=np.uint8)
    out = np.zeros(table.row_size, dtype=np.uint8)
    fields.setdefault("timeout", 0)
    fields.setdefault("start", 0)
    fields.setdefault("dlg_state", 0)
    D.pack_dialog(patch, table.row_size, strings=strings, **fields)
    r = D.dlg_apply(table.buf, ring, patch, op, now_ms, T.lock_word(1, 1), 1, out)
    return int(r), D.DIALOG.decode(out, 1, table.row_size)[0]


def stored(table: Table, callid: str, tag: str) -> dict | None:
    out = np.zeros(table.row_size, dtype=np.uint8)
    key, group = D.dialog_ids(callid.encode(), tag.encode())
    if D.dlg_get(table.buf, np.uint64(key), np.uint64(group), out) < 0:
        return None
    return D.DIALOG.decode(out, 1, table.row_size)[0]


class Reference:
    """The merge rules of dlg_apply, written plainly."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict] = {}

    def apply(self, op: int, p: dict, now_s: int) -> str:
        ident = (p["callid"], p["from_tag"])
        old = self.rows.get(ident)
        live = old is not None and old["state"] == T.ST_LIVE
        if op == D.OP_CREATE:
            if live:
                return "exists"
            if old is not None and old["caller_cseq"] >= p["caller_cseq"]:
                return "exists"  # ended: a late retransmission of its INVITE
            self.rows[ident] = dict(p, state=T.ST_LIVE)
            return "ok"
        if not live:
            return "not found"
        if op == D.OP_FAIL and old["dlg_state"] >= D.DLG_CONFIRMED_NA:
            return "exists"
        if op in (D.OP_UPDATE, D.OP_DELETE) and old["dlg_state"] >= D.DLG_CONFIRMED_NA \
                and old["to_tag"] and p["to_tag"] and old["to_tag"] != p["to_tag"]:
            return "other callee"  # a change for another callee's dialog
        new = dict(old)
        new["caller_cseq"] = max(old["caller_cseq"], p["caller_cseq"])
        new["callee_cseq"] = max(old["callee_cseq"], p["callee_cseq"])
        new["flags"] = old["flags"] | p["flags"]
        if op in (D.OP_DELETE, D.OP_FAIL):
            new.update(state=T.ST_TOMB, dlg_state=D.DLG_DELETED, expires=now_s)
        elif p["dlg_state"] >= old["dlg_state"]:
            new["dlg_state"] = p["dlg_state"]
            if p["timeout"]:
                new["timeout"], new["expires"] = p["timeout"], p["expires"]
            for s in STRINGS[2:]:
                if p[s]:
                    new[s] = p[s]
        self.rows[ident] = new
        return "ok"


def random_patch(rng: random.Random, ident: tuple[str, str]) -> dict:
    p = {"callid": ident[0], "from_tag": ident[1]}
    for s in STRINGS[2:]:
        p[s] = rng.choice(["", "", f"{s}-{rng.randrange(100)}"])
    timeout = rng.choice([0, NOW + rng.randrange(1000)])
    p.update(dlg_state=rng.randrange(0, 5), timeout=timeout,
             expires=timeout + D.EXPIRY_GRACE_S if timeout else 0,
             caller_cseq=rng.randrange(10), callee_cseq=rng.randrange(10),
             flags=rng.choice([0, 0, D.F_END, D.F_PING_CALLEE]), creator=3)
    return p


@pytest.mark.parametrize("seed", range(6))
def test_dlg_apply_matches_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    table, ring = make()
    ref = Reference()
    idents = [(f"call-{i}", f"tag-{i}") for i in range(8)]
    ops = [D.OP_CREATE, D.OP_UPDATE, D.OP_UPDATE, D.OP_UPDATE, D.OP_DELETE, D.OP_FAIL]
    now_ms = NOW * 1000
    for _ in range(600):
        ident = rng.choice(idents)
        op = rng.choice(ops)
        p = random_patch(rng, ident)
        now_ms += rng.randrange(0, 3000)
        before = stored(table, *ident)
        strings = {s: p[s].encode() for s in STRINGS}
        r, out = apply(table, ring, op, strings, now_ms, **{
            k: p[k] for k in ("dlg_state", "timeout", "caller_cseq", "callee_cseq",
                              "flags", "creator")}, start=NOW)
        want = ref.apply(op, dict(p, start=NOW), now_ms // 1000)
        got = "ok" if r >= 0 else {D.E_EXISTS: "exists", T.E_NOT_FOUND: "not found",
                                   D.E_OTHER_CALLEE: "other callee"}[r]
        assert got == want, (op, p, before)
        row = stored(table, *ident)
        if want == "ok":
            expect = ref.rows[ident]
            for name in ("state", "dlg_state", "timeout", "expires", "caller_cseq",
                         "callee_cseq", "flags", "start", "creator", *STRINGS):
                assert row[name] == expect[name], (name, op, p, before)
            assert row["origin"] == 7 and row == out
            assert before is None or row["version"] > before["version"]
        else:
            assert row == before  # nothing changed
    counts = table.counters()
    assert counts["live"] == sum(r["state"] == T.ST_LIVE for r in ref.rows.values())
    assert counts["tomb"] == sum(r["state"] == T.ST_TOMB for r in ref.rows.values())
    # every change went to the ring, and replicates like any row
    wire = np.zeros(1 << 16, dtype=np.uint8)
    n = int(R.ring_drain(ring, wire, 0))
    other, _ = make()
    got = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
    T.apply_entries(other.buf, wire, n, NOW, 60, T.lock_word(2, 1), 1, R.no_ring(), T.NO_SEEN,
                    got)
    assert other.digest(live_only=False) == table.digest(live_only=False)


def test_a_state_never_goes_back_and_a_late_180_changes_no_strings() -> None:
    table, ring = make()
    ids = {"callid": b"c", "from_tag": b"a"}
    assert apply(table, ring, D.OP_CREATE, ids, NOW * 1000, dlg_state=1)[0] >= 0
    r, row = apply(table, ring, D.OP_UPDATE, dict(ids, to_tag=b"b1", callee_contact=b"x"),
                   NOW * 1000, dlg_state=D.DLG_CONFIRMED_NA, timeout=NOW + 99)
    assert r >= 0 and row["dlg_state"] == 3 and row["to_tag"] == "b1"
    r, row = apply(table, ring, D.OP_UPDATE, dict(ids, to_tag=b"b1", callee_contact=b"y"),
                   NOW * 1000, dlg_state=D.DLG_EARLY, timeout=NOW + 1, caller_cseq=5)
    assert row["dlg_state"] == 3 and row["to_tag"] == "b1" and row["timeout"] == NOW + 99
    assert row["caller_cseq"] == 5 and row["callee_contact"] == "x"  # CSeqs still rise
    # a failure on another branch leaves a confirmed dialog alone
    assert apply(table, ring, D.OP_FAIL, ids, NOW * 1000)[0] == D.E_EXISTS
    r, row = apply(table, ring, D.OP_DELETE, ids, NOW * 1000 + 5000)
    assert row["state"] == T.ST_TOMB and row["dlg_state"] == D.DLG_DELETED
    assert row["expires"] == NOW + 5 and row["to_tag"] == "b1"


def test_a_second_callee_neither_changes_nor_ends_the_confirmed_dialog() -> None:
    """A forked INVITE answered 2xx by two callees: the first 2xx's To tag makes the
    dialog; the second 2xx, and that other dialog's ACK and BYE, change nothing."""
    table, ring = make()
    ids = {"callid": b"f", "from_tag": b"a"}
    apply(table, ring, D.OP_CREATE, ids, NOW * 1000, dlg_state=D.DLG_UNCONFIRMED)
    # early, two branches ringing: the callee is not fixed yet, the last 1xx/2xx takes it
    apply(table, ring, D.OP_UPDATE, dict(ids, to_tag=b"b2"), NOW * 1000,
          dlg_state=D.DLG_EARLY)
    r, row = apply(table, ring, D.OP_UPDATE, dict(ids, to_tag=b"b1", callee_contact=b"one"),
                   NOW * 1000, dlg_state=D.DLG_CONFIRMED_NA, timeout=NOW + 99)
    assert r >= 0 and row["to_tag"] == "b1"
    for op, state in ((D.OP_UPDATE, D.DLG_CONFIRMED_NA), (D.OP_UPDATE, D.DLG_CONFIRMED),
                      (D.OP_DELETE, 0)):
        r, _ = apply(table, ring, op, dict(ids, to_tag=b"b2", callee_contact=b"two"),
                     NOW * 1000, dlg_state=state, caller_cseq=7)
        assert r == D.E_OTHER_CALLEE
        row = stored(table, "f", "a")
        assert row["state"] == T.ST_LIVE and row["to_tag"] == "b1"
        assert row["callee_contact"] == "one" and row["caller_cseq"] == 0
    # its own callee's requests, and changes naming no callee (timers, MI), apply
    assert apply(table, ring, D.OP_UPDATE, dict(ids, to_tag=b"b1"), NOW * 1000,
                 dlg_state=D.DLG_CONFIRMED)[1]["dlg_state"] == D.DLG_CONFIRMED
    assert apply(table, ring, D.OP_UPDATE, ids, NOW * 1000, flags=D.F_END)[0] >= 0
    assert apply(table, ring, D.OP_DELETE, dict(ids, to_tag=b"b1"), NOW * 1000)[0] >= 0


def test_full_table_and_strings_too_long_are_refused() -> None:
    table, ring = make(capacity=16, record_bytes=128)
    for i in range(16):
        assert apply(table, ring, D.OP_CREATE, {"callid": f"c{i}".encode(),
                                                "from_tag": b"t"}, NOW * 1000)[0] >= 0
    assert apply(table, ring, D.OP_CREATE, {"callid": b"one more", "from_tag": b"t"},
                 NOW * 1000)[0] == T.E_FULL
    ids = {"callid": b"c0", "from_tag": b"t"}
    assert apply(table, ring, D.OP_DELETE, ids, NOW * 1000)[0] >= 0
    # made again over its tombstone by a new INVITE (a higher CSeq)
    assert apply(table, ring, D.OP_CREATE, dict(ids, caller_route=b"r" * 70),
                 NOW * 1000, caller_cseq=1)[0] >= 0
    # the patch fits, the merged row would not: refused, the stored one unchanged
    big = {s: b"x" * 14 for s in STRINGS[2:6]}
    r, _ = apply(table, ring, D.OP_UPDATE, dict(ids, **big), NOW * 1000, dlg_state=2)
    assert r == T.E_TOO_LONG and stored(table, "c0", "t")["to_tag"] == ""
    with pytest.raises(ValueError):  # a change that cannot fit at all is refused early
        apply(table, ring, D.OP_UPDATE, dict(ids, to_uri=b"y" * 126), NOW * 1000)


def test_due_scan_counts_and_ping_bits() -> None:
    table, ring = make()
    due = {"late": (NOW - 1, 0, 4), "ended": (NOW + 500, D.F_END, 4),
           "pinged": (NOW + 500, D.F_PING_CALLER, 4), "early": (NOW + 500, D.F_PING_CALLER, 2),
           "quiet": (NOW + 500, 0, 4)}
    for callid, (timeout, flags, state) in due.items():
        apply(table, ring, D.OP_CREATE, {"callid": callid.encode(), "from_tag": b"t"},
              NOW * 1000, timeout=timeout, flags=flags, dlg_state=state)
    rows = np.zeros(16 * table.row_size, dtype=np.uint8)
    slots = np.zeros(16, dtype=np.int64)

    def scan(pings: bool) -> set[str]:
        nxt, n = D.dlg_due(table.buf, 0, table.nslots, NOW, pings, rows, slots, 16)
        assert nxt >= table.nslots
        return {r["callid"] for r in D.DIALOG.decode(rows, int(n), table.row_size)}

    assert scan(False) == {"late", "ended"}
    assert scan(True) == {"late", "ended", "pinged"}
    counts = np.zeros(D.NSTATES, dtype=np.int64)
    D.dlg_count_states(table.buf, counts)
    assert counts[4] == 4 and counts[2] == 1
    key, group = (np.uint64(v) for v in D.dialog_ids(b"pinged", b"t"))
    assert D.dlg_ping_mark(table.buf, key, group, D.PING_CALLER_OUT, 0) == 0
    assert D.dlg_ping_mark(table.buf, key, group, D.PING_CALLEE_OUT, 0) == D.PING_CALLER_OUT
    assert D.dlg_ping_mark(table.buf, key, group, 0, D.PING_CALLER_OUT) == \
        D.PING_CALLER_OUT | D.PING_CALLEE_OUT
    assert D.dlg_ping_mark(table.buf, key, group, 0, 0) == D.PING_CALLEE_OUT
    # an update keeps the per-node word (it is not replicated, it belongs to this node)
    apply(table, ring, D.OP_UPDATE, {"callid": b"pinged", "from_tag": b"t"}, NOW * 1000,
          caller_cseq=9)
    assert D.dlg_ping_mark(table.buf, key, group, 0, 0) == D.PING_CALLEE_OUT
    missing = np.uint64(D.dialog_ids(b"nope", b"t")[0])
    assert D.dlg_ping_mark(table.buf, missing, group, 1, 0) == T.E_NOT_FOUND


def seq_word(arena: np.ndarray, slot: int) -> np.ndarray:
    """A uint32 view whose element 0 is slot's seqlock word (shm.table seq_index): odd
    while a writer is inside the row."""
    h = arena[:T.HEADER_SIZE].view(np.int64)
    return arena[int(h[T.H_OFF_ROWS]) + slot * int(h[T.H_ROW]):].view(np.uint32)


def test_a_record_being_written_reads_busy_not_missing() -> None:
    """A writer descheduled inside a row (its seqlock odd past the readers' spin
    budget) made a lock-free read answer "no such dialog": a BYE read that, ended
    nothing, and the call stayed live for its lifetime. Busy, the reader calls again."""
    table, ring = make()
    ids = {"callid": b"c", "from_tag": b"a"}
    r, _ = apply(table, ring, D.OP_CREATE, ids, NOW * 1000)
    assert r >= 0
    key, group = (np.uint64(v) for v in D.dialog_ids(b"c", b"a"))
    out = np.zeros(table.row_size, dtype=np.uint8)
    assert D.dlg_get(table.buf, key, group, out) == r
    seq = seq_word(table.buf, r)
    seq[0] += 1  # a writer inside
    assert D.dlg_get(table.buf, key, group, out) == T.E_BUSY
    seq[0] += 1  # it left
    assert D.dlg_get(table.buf, key, group, out) == r
    missing = D.dialog_ids(b"c", b"other")
    assert D.dlg_get(table.buf, np.uint64(missing[0]), np.uint64(missing[1]), out) == \
        T.E_NOT_FOUND
