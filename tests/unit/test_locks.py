"""Striped locks across processes: a holder killed by SIGKILL in the middle of a write,
and concurrent writers that must not lose an update."""
from __future__ import annotations

import mmap
import os
import signal
import time
import traceback

import numpy as np
from numba import njit

from fastcluster.shm import hashing
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.atomics import atomic_load, atomic_store, cpu_relax
from fastcluster.shm.contacts import CONTACT
from fastcluster.shm.rows import ROW_HEAD
from fastcluster.shm.tables import Table, retry_busy
from tests.support import leaks
from tests.unit.test_table import NOW_MS, make_row

NPROCS = 4


def shared_zeros(nbytes: int) -> np.ndarray:
    """Memory shared with forked children (anonymous MAP_SHARED)."""
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8)


def shared_table(capacity: int) -> np.ndarray:
    buf = shared_zeros(Table.size_for(CONTACT, capacity, 64, NPROCS))
    Table.create(buf, CONTACT, capacity, 64, NPROCS, node_id=3)
    return buf


@njit(cache=True)
def _hold_mid_write(arena, key, group, me, proc, flags, torn_bytes):
    """Lock the record's region, start writing it (undo saved, seq odd), tear the first
    torn_bytes bytes, tell the parent, then spin until killed."""
    t = T.views(arena)
    home = T.home_of(t, group)
    lo = home >> t.shift
    while not T.lock_region(t, lo, me):
        pass
    found, free, hi, status = T.scan_locked(t, home, key, group, me, lo)
    T.undo_begin(t, proc, found)
    base = T.rbase(t, found)
    for i in range(torn_bytes):
        t.rows8[base + 40 + i] = 0xAB
    atomic_store(flags, 0, 1)
    while atomic_load(flags, 1) == 0:
        cpu_relax()
    return found


def _compile_holder() -> None:
    """Compile in the parent, as the master does: a child must never compile after fork."""
    from numba import types as nt

    u8 = nt.Array(nt.uint8, 1, "C")
    _hold_mid_write.compile((u8, nt.uint64, nt.uint64, nt.int64, nt.int64,
                             nt.Array(nt.int64, 1, "C"), nt.int64))


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    leaks.register(pid)
    return pid


def _wait(flags: np.ndarray, index: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while flags[index] == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_killed_lock_holder_is_repaired_and_others_go_on() -> None:
    arena = shared_table(256)
    rs = int(arena[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    group, key = hashing.group_hash_of(b"alice"), 77
    original = make_row(rs, key, group, [b"alice", b"sip:alice@1.2.3.4"])
    T.table_put(arena, R.no_ring(), original.copy(), NOW_MS, T.lock_word(1, 0), 0)
    slot = T.table_find(arena, np.uint64(key), np.uint64(group))
    before = arena.copy()
    flags = shared_zeros(4096).view(np.int64)
    ring_seg = shared_zeros(R.segment_size(NPROCS, 1 << 16))
    R.init_segment(ring_seg, NPROCS, 1 << 16)

    _compile_holder()
    holder = _fork(lambda: _hold_mid_write(arena, np.uint64(key), np.uint64(group),
                                           T.lock_word(os.getpid(), 2), 2, flags, 24))
    assert _wait(flags, 0, 120), "holder never took the lock"

    def other() -> None:
        me = T.lock_word(os.getpid(), 3)
        row = make_row(rs, key, group, [b"alice", b"sip:alice@9.9.9.9"])
        retry_busy(lambda: T.table_put(arena, R.region(ring_seg, 3), row, NOW_MS + 5000, me, 3))
        flags[3] = int(time.monotonic() * 1000)

    waiter = _fork(other)
    time.sleep(0.2)
    assert flags[3] == 0, "the waiter got through a held lock"
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    killed_at = time.monotonic() * 1000
    fixed, freed = Table(arena, CONTACT).repair(R.region(ring_seg, 2), holder, 2,
                                              T.lock_word(os.getpid(), 0))
    assert (fixed, freed) == (1, 1)  # torn row restored, one lock freed
    # the repaired table equals the table before the torn write (seq aside)
    table = Table(arena, CONTACT)
    h = arena[:T.HEADER_SIZE].view(np.int64)
    rows = int(h[T.H_OFF_ROWS])
    body = rows + slot * rs + ROW_HEAD
    now = arena[body:body + rs - ROW_HEAD]
    if not (now == before[body:body + rs - ROW_HEAD]).all():
        # the waiter (its lock freed by the repair) may have written its newer row since,
        # before it set its flag: that row, whole, or the restored one -- never the torn
        assert b"sip:alice@9.9.9.9" in now.tobytes() and table.group(b"alice")[0]["uri"] == \
            "sip:alice@9.9.9.9"
    assert _wait(flags, 3, 10), "the waiter did not go on after the repair"
    _, status = os.waitpid(waiter, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert flags[3] - killed_at < 5000
    recs = table.group(b"alice")
    assert [r["uri"] for r in recs] == ["sip:alice@9.9.9.9"]
    counters = table.counters()
    T.table_recount(arena)
    assert table.counters() == counters and counters["live"] == 1
    assert all(int(w) == 0 for w in
               arena[int(h[T.H_OFF_LOCKS]):int(h[T.H_OFF_UNDO])].view(np.int64))


def test_killed_after_commit_requeues_the_row() -> None:
    arena = shared_table(64)
    rs = int(arena[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    T.table_put(arena, R.no_ring(), make_row(rs, 9, 1 << 50, [b"bob"]), NOW_MS,
                T.lock_word(1, 0), 0)
    # Simulate a writer that finished the row (seq even) but died before clearing undo.
    t_slot = T.table_find(arena, np.uint64(9), np.uint64(1 << 50))
    h = arena[:T.HEADER_SIZE].view(np.int64)
    undo = int(h[T.H_OFF_UNDO]) + 1 * int(h[T.H_UNDO_SIZE])
    arena[undo:undo + 32].view(np.int64)[:] = [1, t_slot, 9, 1]
    ring_seg = np.zeros(R.segment_size(2, 1 << 16), dtype=np.uint8)
    R.init_segment(ring_seg, 2, 1 << 16)
    fixed, freed = Table(arena, CONTACT).repair(R.region(ring_seg, 1), 4242, 1,
                                              T.lock_word(os.getpid(), 0))
    assert (fixed, freed) == (2, 0)
    assert R.stats(R.region(ring_seg, 1))["pushed"] == 1  # replication will carry it


def test_two_processes_insert_without_losing_an_update() -> None:
    n_each = 20000
    arena = shared_table(2 * n_each + 100)
    rs = int(arena[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    flags = shared_zeros(64).view(np.int64)

    def writer(proc: int) -> None:
        me = T.lock_word(os.getpid(), proc)
        rows = np.zeros(n_each * rs, dtype=np.uint8)
        for i in range(n_each):
            # both writers share groups (AORs), so they contend for the same regions
            rows[i * rs:(i + 1) * rs] = make_row(rs, 10 + proc * n_each + i,
                                                 ((i % 997) + 1) << 35, [b"g%d" % (i % 997)])
        out = np.zeros(n_each, dtype=np.int64)
        done = 0
        while done < n_each:
            done += T.table_put_batch(arena, R.no_ring(), rows[done * rs:], n_each - done,
                                      NOW_MS, me, proc, out[done:])
            if done < n_each:
                os.sched_yield()
        assert (out >= 0).all()
        flags[proc] = 1

    pids = [_fork(lambda p=p: writer(p)) for p in (1, 2)]
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    table = Table(arena, CONTACT)
    assert table.counters()["live"] == 2 * n_each
    T.table_recount(arena)
    assert table.counters()["live"] == 2 * n_each
    keys = np.arange(10 + n_each, 10 + 3 * n_each, dtype=np.uint64)  # procs 1 and 2
    groups = np.array([(((i % n_each) % 997) + 1) << 35 for i in range(2 * n_each)],
                      dtype=np.uint64)
    versions = np.zeros(2 * n_each, dtype=np.int64)
    assert T.table_find_batch(arena, keys, groups, versions) == 2 * n_each


def test_repair_recounts_holding_every_region_and_never_waits_on_a_stuck_holder() -> None:
    """table_repair recounts with every region locked (a live writer's delta cannot land
    mid-scan), frees them all after, and leaves a region a live process holds (stuck)
    to it rather than the supervisor waiting forever."""
    arena = shared_table(256)
    h = arena[:T.HEADER_SIZE].view(np.int64)
    rs = int(h[T.H_ROW])
    for key in range(10, 49):  # (keys 0 and 1 mark empty and free slots)
        T.table_put(arena, R.no_ring(), make_row(rs, key, key << 40, [b"u%d" % key]), NOW_MS,
                    T.lock_word(1, 0), 0)
    live = Table(arena, CONTACT).counters()["live"]
    assert live == 39
    locks = arena[int(h[T.H_OFF_LOCKS]):int(h[T.H_OFF_UNDO])].view(np.int64)
    stuck = T.lock_word(os.getpid(), 3)
    locks[2 * T.LOCK_STRIDE] = stuck
    h[T.H_LIVE] += 5  # drift the recount must mend
    table = Table(arena, CONTACT)
    started = time.monotonic()
    assert table.repair(R.no_ring(), 4242, 1, T.lock_word(os.getpid(), 0)) == (0, 0)
    assert time.monotonic() - started < 10
    assert table.counters()["live"] == live
    assert int(locks[2 * T.LOCK_STRIDE]) == stuck  # not taken from its holder
    locks[2 * T.LOCK_STRIDE] = 0
    assert all(int(w) == 0 for w in locks)  # every region it held was given back
    assert int(h[T.H_NREGIONS]) > 2
