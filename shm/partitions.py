"""Ping partitions: kernels for the partition map and for picking due contacts.

A contact's partition is its AOR hash (computed once at REGISTER) masked to P
partitions (P a power of two). The contact's key carries those low bits of the AOR hash
(shm.contacts.with_partition), so a sweep reads the partition from the compact key array
and only the rows of the partitions it owns are read (once, to build the pings). Each partition's owner is chosen by
rendezvous hashing: the eligible node with the highest score mix(partition, node). When
a node joins or leaves only the partitions it wins or held move (about 1/N), unlike
`hash % N`, where most move. The cluster process computes the map on every change and
publishes it in the control segment; the timer reads it and pings the contacts it owns.
Neighbours: shm.control (where the map lives), services.natping (the pinging),
workers.timer, bench/test_bench_partitions.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcluster.shm.atomics import (
    atomic_cas,
    atomic_load,
    atomic_store,
    prefetch_read,
    unmanaged,
)
from fastcluster.shm.contacts import (
    O_FLAGS,
    O_RADDR,
    O_RFAM,
    O_RPORT,
    PARTITION_BITS,
    S_PATH,
    S_URI,
)
from fastcluster.shm.control import MAX_PARTITIONS
from fastcluster.shm.hashing import mix64
from fastcluster.shm.raw import copy, ld16, ld32, st64
from fastcluster.shm.table import (
    K_FREE,
    R_AUX,
    R_EXPIRES,
    R_STATE,
    ST_LIVE,
    local_index,
    r_origin,
    rbase,
    seg_span,
    views,
)

SEED_PARTITION = np.uint64(0x706172746974696F)  # "partitio"
PREFETCH = 16  # contacts ping_targets looks ahead to prefetch their rows
NO_OWNER = 0
assert MAX_PARTITIONS == 1 << PARTITION_BITS  # every partition is readable from a key
# The contact slot's per-node word (shm.table slot head): bits 0-15 pings sent since the
# last reply, bits 16-47 unix time of the last reply. Timer and workers both write it.
MISSED_MASK = np.uint64(0xFFFF)
REPLY_SHIFT = np.uint64(16)


@njit(cache=True, inline="always")
def score(partition, node):
    return mix64(mix64(np.uint64(partition) ^ SEED_PARTITION) ^ mix64(np.uint64(node)))


@njit(cache=True)
def compute_owners(nodes, n, owners):
    """owners[p] = the node among nodes[:n] with the highest score for partition p
    (NO_OWNER when n == 0). nodes: uint16/int64 node ids; owners: uint16[P]."""
    for p in range(owners.shape[0]):
        best = NO_OWNER
        best_score = np.uint64(0)
        for i in range(n):
            sc = score(p, nodes[i])
            if best == NO_OWNER or sc > best_score or (sc == best_score and nodes[i] < best):
                best = nodes[i]
                best_score = sc
        owners[p] = best


@njit(cache=True)
def select_due(arena, first, end, owners, owners_old, me, gained, out, max_out):
    """The slots among [first, end) holding a record of a partition this node owns in
    the current map (or the previous one: while views may disagree a duplicate ping is
    better than a missed one), or, in other partitions, a record registered through this
    node (its origin: a NAT lets only that node in, so the pinger (services.sip.natping)
    pings those itself); when `gained` is a non-empty mask, only the records of the
    partitions marked in gained[p] (a node that gains partitions pings them at once).
    Reads the key array, and a row's origin only outside our partitions: ping_targets,
    which reads the row anyway to build the ping, drops what is not a live (NAT-ed)
    contact. Returns how many slots it wrote to out (at most max_out) and the slot
    where it stopped.

    owners, owners_old: uint16[P]; gained: uint8[P] (or empty); out: int64[max_out].
    """
    t = views(arena)
    owners = unmanaged(owners)
    owners_old = unmanaged(owners_old)
    mask = np.uint64(owners.shape[0] - 1)
    n = 0
    s = first
    end = min(end, t.nslots)
    use_gained = gained.shape[0] > 0
    while s < end and n < max_out:
        k = t.keys[s]
        p = np.int64(k & mask)
        out[n] = s  # kept (n moves on) only when the slot qualifies
        if k > K_FREE:
            if (owners[p] == me) | (owners_old[p] == me):
                n += not use_gained or gained[p] != 0
            elif not use_gained:
                n += r_origin(t, s) == me
        s += 1
    return n, s


# A ping target in ping_targets' output: TARGET_WORDS int64 words [slot, key, family,
# port, sock, uri_len, path_len, origin], 16 address bytes, then the URI and the Path (the
# contact's stored Path header values, RFC 3327), padded to 8 bytes. origin: the node
# the contact registered through (its home: the only one its NAT may let in).
TARGET_WORDS = 8
TARGET_HEAD = 8 * TARGET_WORDS + 16


@njit(cache=True)
def ping_targets(arena, slots, first, n, now_s, nat_only, flag_nat, out, out_max):
    """For the contacts at slots[first:n] that are LIVE, unexpired and NAT-flagged
    (unless not nat_only), write what a ping needs into out (one TARGET_HEAD head plus
    URI and Path each). Returns (entries, bytes, next): it stops before an entry that
    does not fit, and the caller goes on from slots[next]. Address: the received address
    when the contact is NAT-ed, else family 0 (the caller resolves the URI's host)."""
    t = views(arena)
    out = unmanaged(out)
    slots = unmanaged(slots)
    off = 0
    count = 0
    i = first
    while i < n:
        if i + PREFETCH < n:  # the rows are scattered: overlap their cache misses
            ahead = rbase(t, slots[i + PREFETCH])
            prefetch_read(t.rows8, ahead + R_STATE)
            prefetch_read(t.rows8, ahead + O_FLAGS)
            prefetch_read(t.rows8, ahead + O_FLAGS + 64)  # the lengths, the AOR and URI
        s = slots[i]
        base = rbase(t, s)
        if t.keys[s] <= K_FREE or t.rows8[base + R_STATE] != ST_LIVE or \
                ld32(t.rows8, base + R_EXPIRES) <= now_s or \
                (nat_only and not ld32(t.rows8, base + O_FLAGS) & flag_nat):
            i += 1
            continue
        uoff, ulen = seg_span(t, t.rows8, base, S_URI)
        poff, plen = seg_span(t, t.rows8, base, S_PATH)
        need = TARGET_HEAD + ((ulen + plen + 7) & ~7)
        if off + need > out_max:
            break
        st64(out, off, s)
        st64(out, off + 8, t.keys[s])
        st64(out, off + 16, t.rows8[base + O_RFAM])
        st64(out, off + 24, ld16(t.rows8, base + O_RPORT))
        st64(out, off + 32, t.rows8[base + R_AUX])  # the listener it registered through
        st64(out, off + 40, ulen)
        st64(out, off + 48, plen)
        st64(out, off + 56, r_origin(t, s))
        copy(out, off + 64, t.rows8, base + O_RADDR, 16)
        copy(out, off + TARGET_HEAD, t.rows8, uoff, ulen)
        copy(out, off + TARGET_HEAD + ulen, t.rows8, poff, plen)
        off += need
        count += 1
        i += 1
    return count, off, i


@njit(cache=True)
def mark_ping(arena, slots, n):
    """A ping was sent to each of slots[:n]: count it as missed until a reply comes
    (local word: bits 0-15 pings without reply). Returns the highest count seen."""
    t = views(arena)
    worst = 0
    for i in range(n):
        q = local_index(t, slots[i])
        word = atomic_load(t.rows64, q)
        while True:
            missed = min(word & MISSED_MASK, MISSED_MASK - np.uint64(1)) + np.uint64(1)
            seen = atomic_cas(t.rows64, q, word, (word & ~MISSED_MASK) | missed)
            if seen == word:
                break
            word = seen  # a worker recorded a reply meanwhile: count on top of that
        if np.int64(missed) > worst:
            worst = np.int64(missed)
    return worst


@njit(cache=True)
def mark_reply(arena, slot, key, now_s):
    """A reply to a ping of (slot, key) came: reset its missed count, note the time.
    Returns 1 if the contact is still there, 0 if the slot holds another record."""
    t = views(arena)
    if slot < 0 or slot >= t.nslots or t.keys[slot] != np.uint64(key):
        return 0
    atomic_store(t.rows64, local_index(t, slot),
                 np.uint64(now_s & 0xFFFFFFFF) << REPLY_SHIFT)
    return 1


@njit(cache=True)
def missed_over(arena, slots, n, limit, out):
    """Slots among slots[:n] whose contact missed more than `limit` pings in a row."""
    t = views(arena)
    m = 0
    for i in range(n):
        if np.int64(atomic_load(t.rows64, local_index(t, slots[i])) & MISSED_MASK) > limit:
            out[m] = slots[i]
            m += 1
    return m


@njit(cache=True, nogil=True)
def count_owned(arena, owners, me, nat_only, flag_nat):
    """Live contacts (NAT-flagged unless not nat_only) in partitions owned by `me`."""
    t = views(arena)
    mask = np.uint64(owners.shape[0] - 1)
    n = 0
    for s in range(t.nslots):
        k = t.keys[s]
        if k > K_FREE and owners[np.int64(k & mask)] == me:
            base = rbase(t, s)
            if t.rows8[base + R_STATE] == ST_LIVE and (
                    not nat_only or ld32(t.rows8, base + O_FLAGS) & flag_nat):
                n += 1
    return n
