"""The timer process's wheel of transaction timers, and the kernel that serves it.

The wheel lives in the timer process's own memory (it is rebuilt from the table by a
sweep when the timer process starts): TICK_MS buckets over a lap of NBUCKETS ticks, each
a linked list of entries (due ms, slot, key) in a fixed pool. `tm_tick`, called every
timer tick, drains every process's timer ring (shm.tmring) into the wheel, takes the
entries of the ticks that have fully passed, and fires each row's timers under its
region lock (shm.transactions.fire); a row that still has timers goes back into the
wheel at its next due time. What needs SIP messages (retransmissions, CANCELs, a 408,
a final response again) is returned as action records for Python; most entries need
nothing (a response stopped the retransmissions; the row's linger ended and it is
freed in the kernel). An entry beyond one lap stays in its bucket until its lap comes.
A pool that runs out drops the entry and counts it, like a full ring: `tm_sweep`, run a
slice per tick, re-arms any row whose live entry is overdue by more than a grace time.
Neighbours: shm.tmring, shm.transactions, services.sip.tm (Python side), workers.timer.

Wheel array (int64): META_WORDS words of state (free list head, entries in use,
last fully processed tick, drops, entries fired, stale entries), then the bucket heads,
then per pool entry: next, due, slot, key.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.atomics import atomic_load, atomic_store, unmanaged
from fastcluster.shm.raw import ld64
from fastcluster.shm.table import K_FREE, lock_region, rbase, unlock_regions, views
from fastcluster.shm.tmring import ENTRY_WORDS, W_ENTRIES, W_HEAD, W_TAIL
from fastcluster.shm.transactions import (
    A_DELETED,
    O_CANCEL,
    O_RETRANS,
    O_RETRANS_CANCEL,
    O_SCHED,
    O_START,
    O_STATUS_OUT,
    OUT_WORDS,
    fire,
)

TICK_MS = 10
NBUCKETS = 1 << 15  # one lap: 327 s
META_WORDS = 8
M_FREE, M_USED, M_CURSOR, M_DROPS, M_FIRED, M_STALE, M_CAP = range(7)
ACTION_WORDS = 8  # per action record: slot, key, actions, retrans, retrans cancel,
A_SLOT, A_KEY, A_ACTIONS, A_RETRANS, A_RETRANS_CANCEL, A_CANCEL, A_START, A_STATUS = \
    range(8)  # cancel, start masks, status


def wheel_new(capacity: int, now_ms: int) -> np.ndarray:
    """An empty wheel for `capacity` entries, its cursor just before now."""
    w = np.zeros(META_WORDS + NBUCKETS + 4 * capacity, dtype=np.int64)
    _wheel_init(w, capacity, now_ms)
    return w


@njit(cache=True)
def _wheel_init(w, capacity, now_ms):
    w[M_CAP] = capacity
    w[META_WORDS:META_WORDS + NBUCKETS] = -1
    base = META_WORDS + NBUCKETS
    for e in range(capacity):
        w[base + 4 * e] = e + 1 if e + 1 < capacity else -1
    w[M_FREE] = 0 if capacity else -1
    w[M_CURSOR] = now_ms // TICK_MS - 1


@njit(cache=True, inline="always")
def _insert(w, due, slot, key):
    e = w[M_FREE]
    if e < 0:
        w[M_DROPS] += 1
        return False
    base = META_WORDS + NBUCKETS
    p = base + 4 * e
    w[M_FREE] = w[p]
    tick = due // TICK_MS
    if tick <= w[M_CURSOR]:
        tick = w[M_CURSOR] + 1
    bucket = META_WORDS + (tick & (NBUCKETS - 1))
    w[p] = w[bucket]
    w[p + 1] = due
    w[p + 2] = slot
    w[p + 3] = key
    w[bucket] = e
    w[M_USED] += 1
    return True


@njit(cache=True)
def wheel_insert(w, due, slot, key):
    """Python entry point (tests): insert one entry."""
    return _insert(w, due, slot, np.int64(key))


@njit(cache=True)
def _drain(rings, w):
    n = 0
    for r in range(rings.shape[0]):
        ring = rings[r]
        cap = (ring.shape[0] - W_ENTRIES) // ENTRY_WORDS
        if cap == 0:
            continue
        head = atomic_load(ring, W_HEAD)
        tail = ring[W_TAIL]
        while tail < head:
            i = W_ENTRIES + (tail & (cap - 1)) * ENTRY_WORDS
            _insert(w, ring[i], ring[i + 1], ring[i + 2])
            tail += 1
            n += 1
        atomic_store(ring, W_TAIL, tail)
    return n


@njit(cache=True)
def tm_tick(arena, rings, w, params, now, now_s, me, proc, out, max_fire):
    """One timer tick: drain the rings into the wheel, then fire the entries of every
    tick that has fully passed (at most max_fire of them, and no more than the action
    records out can hold: the rest wait for the next call). rings: int64[nrings, words]
    (shm.tmring.all_rings); w: the wheel; out: int64[k, ACTION_WORDS].
    Returns (action records written, entries fired, True if it stopped early)."""
    t = views(arena)
    w = unmanaged(w)
    out = unmanaged(out)
    _drain(rings, w)
    o = np.zeros(OUT_WORDS, dtype=np.int64)
    base = META_WORDS + NBUCKETS
    nact = 0
    fired = 0
    last = now // TICK_MS - 1  # the last tick that has fully passed
    cursor = w[M_CURSOR]
    if last - cursor > NBUCKETS:
        cursor = last - NBUCKETS  # far behind (a frozen process): one lap covers all
    while cursor < last:
        tick = cursor + 1
        bucket = META_WORDS + (tick & (NBUCKETS - 1))
        prev = -1
        e = w[bucket]
        while e >= 0:
            p = base + 4 * e
            nxt = w[p]
            due = w[p + 1]
            if due // TICK_MS > tick:  # a later lap
                prev = e
                e = nxt
                continue
            if fired >= max_fire or nact >= out.shape[0]:
                w[M_CURSOR] = cursor
                w[M_FIRED] += fired
                return nact, fired, True
            # unlink e and give it back to the pool
            if prev < 0:
                w[bucket] = nxt
            else:
                w[base + 4 * prev] = nxt
            slot, key = w[p + 2], np.uint64(w[p + 3])
            w[p] = w[M_FREE]
            w[M_FREE] = e
            w[M_USED] -= 1
            e = nxt
            fired += 1
            if slot < 0 or slot >= t.nslots or t.keys[slot] != key:
                w[M_STALE] += 1
                continue
            r = slot >> t.shift
            if not lock_region(t, r, me):
                _insert(w, now + TICK_MS, slot, key)  # busy: try again next tick
                continue
            o[:] = 0
            actions, nxt_due, deleted = fire(t, slot, key, due, now, now_s, params, proc, o)
            unlock_regions(t, r, r)
            if actions == 0 and nxt_due == 0 and not deleted:
                w[M_STALE] += 1
            if nxt_due:
                _insert(w, nxt_due, slot, key)
            if actions and actions != A_DELETED:
                rec = out[nact]
                rec[A_SLOT] = slot
                rec[A_KEY] = np.int64(key)
                rec[A_ACTIONS] = actions
                rec[A_RETRANS] = o[O_RETRANS]
                rec[A_RETRANS_CANCEL] = o[O_RETRANS_CANCEL]
                rec[A_CANCEL] = o[O_CANCEL]
                rec[A_START] = o[O_START]
                rec[A_STATUS] = o[O_STATUS_OUT]
                nact += 1
        cursor = tick
    w[M_CURSOR] = cursor
    w[M_FIRED] += fired
    return nact, fired, False


@njit(cache=True)
def tm_sweep(arena, w, start_region, nregions, now, grace_ms, me):
    """Re-arm rows of lock regions [start, start + nregions) whose live wheel entry is
    overdue by more than grace_ms (a full ring or pool dropped it, a writer died before
    pushing it, the timer process restarted: grace_ms < 0 re-arms every row). Returns
    (next region (0 after the last), rows re-armed), or (-1, 0) if a lock was busy."""
    t = views(arena)
    w = unmanaged(w)
    nreg = (t.nslots + (1 << t.shift) - 1) >> t.shift
    r = start_region
    end = min(nreg, start_region + nregions)
    armed = 0
    while r < end:
        if not lock_region(t, r, me):
            return -1, armed
        lo = r << t.shift
        hi = min(t.nslots, (r + 1) << t.shift)
        for s in range(lo, hi):
            k = t.keys[s]
            if k <= K_FREE:
                continue
            sched = ld64(t.rows8, rbase(t, s) + O_SCHED)
            if sched and (grace_ms < 0 or sched < now - grace_ms):
                if _insert(w, sched, s, np.int64(k)):
                    armed += 1
        unlock_regions(t, r, r)
        r += 1
    return (0 if r >= nreg else r), armed

