"""The transaction kernels (shm.transactions, shm.tmwheel) against the plain-Python
reference (tests/support/tm_reference.py), the §16.7 decisions by tables, and the
table's limits and repair."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

from fastcluster.shm import table as T
from fastcluster.shm import tmring as TR
from fastcluster.shm import tmwheel as W
from fastcluster.shm import transactions as X
from fastcluster.shm.tables import Table
from fastcluster.shm.txwork import TxWork
from tests.support.tm_reference import Reference

T1, T2, T4, TC = 500, 4000, 5000, 180_000
RECORD = 2048
PROC = 1
ME = T.lock_word(4242, PROC)
SRC = ("192.0.2.7", 5071)


def params() -> np.ndarray:
    p = np.zeros(X.P_WORDS, dtype=np.int64)
    p[X.P_T1], p[X.P_T2], p[X.P_T4], p[X.P_TC] = T1, T2, T4, TC
    return p


class Rig:
    """A transaction table, a timer ring and the Python wrapper, at a fake clock."""

    def __init__(self, capacity: int = 256, record: int = RECORD) -> None:
        self.buf = np.zeros(Table.size_for(X.TRANSACTION, capacity, record, 3), np.uint8)
        self.table = Table.create(self.buf, X.TRANSACTION, capacity, record, 3, 1)
        self.rings = np.zeros(TR.segment_size(3, 1 << 12), np.uint8)
        TR.init_segment(self.rings, 3, 1 << 12)
        self.p = params()
        self.work = TxWork(self.buf, self.rings, PROC, ME, self.p, [0] * 64)
        self.now = 10_000_000
        self.rowbuf = np.zeros(self.table.row_size, np.uint8)

    def reply_at(self, key: int, branch: int, status: int, mclass: int, rsp: bytes):
        w = self.work.work[:X.IN_STR].view(np.int64)
        n = len(rsp)
        self.work.work[X.IN_STR:X.IN_STR + n] = np.frombuffer(rsp, np.uint8)
        w[X.I_KIND], w[X.I_NOW], w[X.I_NOW_S] = mclass, self.now, self.now // 1000
        w[X.I_KEY] = np.int64(np.uint64(key))
        w[X.I_BRANCH], w[X.I_STATUS], w[X.I_RSP_LEN] = branch, status, n
        r = X.tx_reply(self.buf, self.work.work, self.work.ring, self.p, ME, PROC)
        return r, self.work.out()

    def request_at(self, kind: int, ident: bytes, request: bytes, targets: bytes,
                   groups: bytes, flags: int):
        """tx_request packed at the fake clock."""
        w = self.work.work[:X.IN_STR].view(np.int64)
        data = ident + request + targets
        self.work.work[X.IN_STR:X.IN_STR + len(data)] = np.frombuffer(data, np.uint8)
        w[X.I_KIND], w[X.I_NOW], w[X.I_NOW_S] = kind, self.now, self.now // 1000
        w[X.I_FLAGS], w[X.I_CSEQ], w[X.I_SOCK], w[X.I_FAM], w[X.I_PORT] = flags, 1, 0, 4, 5071
        w[X.I_NB] = len(groups) if kind == X.K_REQUEST else 0
        w[X.I_IDENT_LEN], w[X.I_REQ_LEN], w[X.I_TGT_LEN] = len(ident), len(request), \
            len(targets)
        g = np.zeros(8, np.uint8)
        g[:len(groups)] = np.frombuffer(groups, np.uint8)
        self.work.work[8 * X.I_GROUPS:8 * X.I_GROUPS + 8] = g
        r = X.tx_request(self.buf, self.work.work, self.work.ring, self.p, ME, PROC)
        return r, self.work.out()

    def fire(self, slot: int, key: int):
        row = self.row(slot, key)
        out = np.zeros(X.OUT_WORDS, np.int64)
        actions, due, deleted = X.tx_fire(self.buf, slot, np.uint64(key), row["sched_ms"],
                                          self.now, self.now // 1000, self.p, ME, PROC, out)
        return actions, out, deleted

    def row(self, slot: int, key: int) -> dict:
        n = X.tx_read(self.buf, slot, np.uint64(key), self.rowbuf)
        assert n > 0, "row gone"
        rec = self.rowbuf[:X.TRANSACTION.fixed_size].view(X.TRANSACTION.dtype)[0]
        out = {name: rec[name] for name in X.TRANSACTION.dtype.names}
        pos = X.TRANSACTION.fixed_size
        lens = [int(v) for v in rec["lens"]]
        strings = []
        for ln in lens:
            strings.append(bytes(self.rowbuf[pos:pos + ln]))
            pos += ln
        out["strings"] = strings
        return out


def _abs(t0: int, v: int) -> int:
    return t0 + int(v) if v else 0


def compare_row(rig: Rig, ref: Reference, ident: bytes, slot: int, key: int) -> None:
    tx = ref.txs[ident]
    r = rig.row(slot, key)
    t0 = int(r["t0_ms"])
    assert t0 == tx.t0
    assert int(r["aux"]) == tx.sstate
    assert int(r["flags"]) == tx.flags
    assert int(r["status"]) == tx.status
    assert int(r["best"]) == tx.best
    if tx.best:
        assert int(r["best_branch"]) == tx.best_branch
    assert _abs(t0, r["s_retr"]) == tx.s_retr
    assert _abs(t0, r["s_end"]) == tx.s_end
    assert int(r["s_retr_n"]) == tx.s_retr_n
    assert int(r["nbranches"]) == len(tx.branches)
    for i, b in enumerate(tx.branches):
        got = (int(r["b_state"][i]), int(r["b_flags"][i]), int(r["b_group"][i]),
               int(r["b_retr_n"][i]), int(r["b_status"][i]), _abs(t0, r["b_retr"][i]),
               _abs(t0, r["b_deadline"][i]), _abs(t0, r["b_timer_c"][i]),
               _abs(t0, r["b_cancel"][i]), _abs(t0, r["b_cancel_end"][i]))
        want = (b.state, b.flags, b.group, b.retr_n, b.status, b.retr, b.deadline,
                b.timer_c, b.cancel, b.cancel_end)
        assert got == want, f"branch {i}"
    assert int(r["sched_ms"]) == tx.sched
    if tx.flags & X.F_RESP:
        assert r["strings"][X.S_RESPONSE] == tx.response


def compare_answer(o, a, check_status: bool = True) -> None:
    assert o.result == a.result
    if a.result in (X.R_NEW, X.R_MATCH):
        assert o.actions == a.actions
        assert o.cancel == a.cancel
        assert o.start == a.start
        if check_status:
            assert o.status == a.status


STATUSES = [100, 180, 183, 200, 202, 302, 401, 404, 408, 480, 486, 487, 500, 503, 600,
            603]


@pytest.mark.parametrize("seed", range(12))
def test_kernels_match_reference(seed: int) -> None:
    rng = random.Random(seed)
    rig = Rig()
    ref = Reference(T1, T2, T4, TC, RECORD)
    live: dict[bytes, tuple[int, int]] = {}  # ident -> (slot, key)
    counter = 0
    for _ in range(600):
        rig.now += rng.choice([0, 1, 7, 50, 400, 900, 3000, 9000, 40_000])
        ev = rng.random()
        if ev < 0.15 or not live:
            counter += 1
            ident = f"z9hG4bK{seed}-{counter}\0192.0.2.7:5071\0INVITE".encode()
            nb = rng.randint(1, X.MAX_BRANCHES)
            serial = rng.random() < 0.3
            groups = bytes(sorted(rng.randint(0, 2) for _ in range(nb))) if serial \
                else bytes(nb)
            flags = (X.F_INVITE if rng.random() < 0.7 else 0) | (X.F_SERIAL if serial else 0)
            request, targets = b"INVITE x" * rng.randint(1, 20), b"t" * rng.randint(1, 40)
            r, o = rig.request_at(X.K_REQUEST, ident, request, targets, groups, flags)
            a = ref.request(X.K_REQUEST, ident, rig.now, flags, tuple(groups),
                            len(ident) + len(request) + len(targets))
            compare_answer(o, a)
            live[ident] = (o.slot, o.key)
        else:
            ident = rng.choice(sorted(live))
            slot, key = live[ident]
            tx = ref.txs[ident]
            kind = rng.random()
            if kind < 0.45:
                i = rng.randrange(len(tx.branches) + (1 if rng.random() < 0.05 else 0))
                status = rng.choice(STATUSES)
                mclass = X.M_INVITE if tx.flags & X.F_INVITE else X.M_OTHER
                if rng.random() < 0.08:
                    mclass = X.M_CANCEL
                rsp = b"SIP/2.0 %d x\r\n" % status * rng.choice([1, 5, 200])
                r, o = rig.reply_at(key, i, status, mclass, rsp)
                a = ref.reply(ident, i, status, mclass, rsp, rig.now)
                compare_answer(o, a)
            elif kind < 0.6:
                k = rng.choice([X.K_REQUEST, X.K_ACK, X.K_CANCEL])
                r, o = rig.request_at(k, ident, b"", b"", b"", 0)
                a = ref.request(k, ident, rig.now)
                compare_answer(o, a)
            else:
                row = rig.row(slot, key)
                due = int(row["due_ms"])
                if due and rng.random() < 0.8:
                    rig.now = max(rig.now, due)
                actions, out, deleted = rig.fire(slot, key)
                a, ref_deleted = ref.fire(ident, rig.now)
                assert deleted == ref_deleted
                assert actions == a.actions
                if not deleted:
                    assert out[X.O_RETRANS] == a.retrans
                    assert out[X.O_RETRANS_CANCEL] == a.retrans_cancel
                    assert out[X.O_CANCEL] == a.cancel
                    assert out[X.O_START] == a.start
                    if actions & (X.A_SEND_LOCAL | X.A_SEND_STORED):
                        assert out[X.O_STATUS_OUT] == a.status
                if deleted:
                    del live[ident]
                    continue
        if ident in ref.txs:
            compare_row(rig, ref, ident, *live[ident])
    assert rig.table.counters()["live"] == len(ref.txs)


@pytest.mark.parametrize("status, best, better", [
    (486, 0, True), (486, 486, False), (404, 486, False), (302, 486, True),
    (401, 486, True), (486, 401, False), (407, 500, True), (503, 486, False),
    (603, 302, True), (302, 603, False), (600, 603, False), (500, 408, False),
    (408, 500, True), (484, 404, True), (415, 420, False),
])
def test_response_selection(status: int, best: int, better: bool) -> None:
    """§16.7 step 6: 6xx first, then the lowest class, 401/407/415/420/484 in 4xx."""
    assert X.better_response(status, best) == better


@pytest.mark.parametrize("n, invite, want", [
    (0, True, 500), (1, True, 1000), (3, True, 4000), (6, True, 32000),
    (0, False, 500), (1, False, 1000), (3, False, 4000), (4, False, 4000),
])
def test_retransmission_intervals(n: int, invite: bool, want: int) -> None:
    """Timer A doubles without a cap; Timer E (and G) stop doubling at T2."""
    assert X.retrans_interval(n, T1, T2, invite) == want


def test_full_table_too_long_and_collision() -> None:
    rig = Rig(capacity=16, record=512)
    for i in range(16):
        r, o = rig.request_at(X.K_REQUEST, b"id%d" % i, b"INVITE", b"t", b"\0", X.F_INVITE)
        assert r == X.R_NEW
    r, _ = rig.request_at(X.K_REQUEST, b"one-too-many", b"INVITE", b"t", b"\0", X.F_INVITE)
    assert r == X.E_FULL
    rig2 = Rig(capacity=16, record=512)
    r, _ = rig2.request_at(X.K_REQUEST, b"big", b"x" * 600, b"t", b"\0", X.F_INVITE)
    assert r == X.E_TOO_LONG and rig2.table.counters()["live"] == 0
    # a different identity that hashes to the same key: simulated by changing the
    # stored identity of an existing row
    r, o = rig2.request_at(X.K_REQUEST, b"victim", b"INVITE", b"t", b"\0", X.F_INVITE)
    slot = o.slot
    h = rig2.buf[:T.HEADER_SIZE].view(np.int64)
    at = int(h[T.H_OFF_ROWS]) + slot * rig2.table.row_size + T.ROW_HEAD + \
        X.TRANSACTION.fixed_size
    rig2.buf[at] ^= 0x20  # "victim" -> "Victim"
    r, _ = rig2.request_at(X.K_REQUEST, b"victim", b"INVITE", b"t", b"\0", X.F_INVITE)
    assert r == X.E_COLLISION


def test_large_responses_are_forwarded_not_stored() -> None:
    rig = Rig(record=600)
    r, o = rig.request_at(X.K_REQUEST, b"nonce", b"BYE " * 100, b"t", b"\0", 0)
    key = o.key
    r, o = rig.reply_at(key, 0, 200, X.M_OTHER, b"y" * 400)
    assert o.actions & X.A_FORWARD
    row = rig.row(o.slot, key)
    assert not int(row["flags"]) & X.F_RESP and row["strings"][X.S_RESPONSE] == b""
    # the retransmitted BYE is then absorbed without a stored answer
    r, o = rig.request_at(X.K_REQUEST, b"nonce", b"", b"", b"", 0)
    assert r == X.R_MATCH and o.actions == 0


def test_repair_restores_a_row_torn_by_a_dead_writer() -> None:
    """The lock and undo rules of shm.table hold for transactions: a writer killed
    between seq-odd and seq-even leaves a row the master restores, and its locks."""
    rig = Rig()
    r, o = rig.request_at(X.K_REQUEST, b"torn", b"INVITE", b"t", b"\0", X.F_INVITE)
    slot, key = o.slot, o.key
    before = rig.row(slot, key)
    t = rig.table
    h = rig.buf[:T.HEADER_SIZE].view(np.int64)
    rows = int(h[T.H_OFF_ROWS])
    base = rows + slot * t.row_size
    body = slice(base + T.ROW_HEAD, base + t.row_size)
    dead_proc, dead_pid = 2, 999_999
    undo = int(h[T.H_OFF_UNDO]) + dead_proc * int(h[T.H_UNDO_SIZE])
    u = rig.buf[undo:undo + 32].view(np.int64)
    rig.buf[undo + T.UNDO_ROW_AT:undo + T.UNDO_ROW_AT + t.row_size - T.ROW_HEAD] = \
        rig.buf[body]
    u[1], u[2], u[3], u[0] = slot, np.int64(np.uint64(key)), 1, 1
    seq = rig.buf[base:base + 4].view(np.uint32)
    seq[0] += 1  # odd: a writer inside
    rig.buf[body.start + 40:body.start + 200] = 0xEE  # half-written garbage
    locks = rig.buf[int(h[T.H_OFF_LOCKS]):].view(np.int64)
    region = slot >> T.REGION_SHIFT
    locks[region * T.LOCK_STRIDE] = T.lock_word(dead_pid, dead_proc)
    fixed, freed = t.repair(np.zeros(256, np.uint8), dead_pid, dead_proc,
                            T.lock_word(os.getpid(), 0))
    assert (fixed, freed) == (1, 1)
    after = rig.row(slot, key)
    assert {k: str(v) for k, v in after.items()} == {k: str(v) for k, v in before.items()}
    # and the row works: a reply goes through
    r, o = rig.reply_at(key, 0, 180, X.M_INVITE, b"SIP/2.0 180 x\r\n\r\n")
    assert r == X.R_MATCH and o.actions & X.A_FORWARD


def test_wheel_fires_rows_when_due_and_drops_stale_entries() -> None:
    rig = Rig()
    rings = TR.all_rings(rig.rings)
    r, o = rig.request_at(X.K_REQUEST, b"w1", b"INVITE", b"t", b"\0", X.F_INVITE)
    slot, key = o.slot, o.key
    assert rings[PROC, TR.W_HEAD] == 1  # the worker armed it: Timer A at now + T1
    wheel = W.wheel_new(1024, rig.now)
    out = np.zeros((16, W.ACTION_WORDS), np.int64)
    nact, fired, more = W.tm_tick(rig.buf, rings, wheel, rig.p, rig.now + T1 - 20,
                                  rig.now // 1000, ME, PROC, out, 100)
    assert (nact, fired) == (0, 0)  # drained, not due yet
    nact, fired, more = W.tm_tick(rig.buf, rings, wheel, rig.p, rig.now + T1 + 20,
                                  rig.now // 1000, ME, PROC, out, 100)
    assert (nact, fired) == (1, 1) and out[0, W.A_ACTIONS] & X.A_RETRANS
    assert out[0, W.A_SLOT] == slot and out[0, W.A_RETRANS] == 1
    # a stale duplicate (an older time) is dropped; the live entry is the rescheduled one
    W.wheel_insert(wheel, rig.now + T1 + 30, slot, np.uint64(key))
    nact, fired, _ = W.tm_tick(rig.buf, rings, wheel, rig.p, rig.now + T1 + 60,
                               rig.now // 1000, ME, PROC, out, 100)
    assert (nact, fired) == (0, 1) and wheel[W.M_STALE] == 1
    # the 2xx ends it: after Timer M and L the row is freed by the wheel
    rig.now += T1 + 60
    rig.reply_at(key, 0, 200, X.M_INVITE, b"SIP/2.0 200 OK\r\n\r\n")
    end = rig.now + 64 * T1 + 100
    now = rig.now
    while now < end + 1000 and rig.table.counters()["live"]:
        now += 300
        W.tm_tick(rig.buf, rings, wheel, rig.p, now, now // 1000, ME, PROC, out, 100)
    assert rig.table.counters()["live"] == 0 and end - 400 <= now <= end + 1000


def test_sweep_rearms_rows_whose_entry_was_lost() -> None:
    rig = Rig()
    r, o = rig.request_at(X.K_REQUEST, b"lost", b"INVITE", b"t", b"\0", X.F_INVITE)
    wheel = W.wheel_new(1024, rig.now)  # the ring entry is never drained: lost
    out = np.zeros((16, W.ACTION_WORDS), np.int64)
    later = rig.now + T1 + 5000
    nxt, armed = W.tm_sweep(rig.buf, wheel, 0, rig.table.nregions, later, 2000, ME)
    assert (nxt, armed) == (0, 1)
    nact, fired, _ = W.tm_tick(rig.buf, np.zeros((0, 64), np.int64), wheel, rig.p, later,
                               later // 1000, ME, PROC, out, 100)
    assert nact == 1 and out[0, W.A_ACTIONS] & X.A_RETRANS
