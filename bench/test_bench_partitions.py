"""Ping partitions on 1M contacts: hashing and owner assignment, the due-this-tick
selection, and how many contacts change owner when a node leaves or joins.

    .venv/bin/pytest bench/test_bench_partitions.py --benchmark-only -s

Targets (issue 6): hash + owner assignment for 1,000,000 contacts <= 15 ms on one core;
due selection over a 1M-contact table <= 10 ms; a node leaving 1 of N moves about 1/N
of the contacts (OpenSIPS 2.4's `aor_hash % nr_nodes` moves most of them).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from numba import njit

from bench.test_bench_tables import N, RECORD_BYTES, _insert_all, make_rows, new_table
from fastcluster.shm import partitions as P
from fastcluster.shm import table as T
from fastcluster.shm.contacts import CONTACT, FLAG_NAT, O_FLAGS
from fastcluster.shm.hashing import group_hash

PARTITIONS = 4096
NODES = 3


@njit(cache=True)
def _hash_aors(buf, offs, lens, out):
    """What REGISTER does once per contact: the AOR's group hash (stored in the row)."""
    for i in range(offs.shape[0]):
        out[i] = group_hash(buf, offs[i], lens[i])


@njit(cache=True)
def _owner_of(groups, owners, out):
    """Each contact's owner: its partition's entry in the map."""
    mask = np.uint64(owners.shape[0] - 1)
    for i in range(groups.shape[0]):
        out[i] = owners[np.int64(groups[i] & mask)]


@njit(cache=True)
def _owner_modulo(groups, n, nodes, out):
    """OpenSIPS 2.4: the node at index hash % nr_nodes of the (sorted) node list."""
    for i in range(groups.shape[0]):
        out[i] = nodes[np.int64(groups[i] % np.uint64(n))]


@pytest.fixture(scope="module")
def aors():
    """1M distinct AORs like a real registrar's (user<n>@domain, 22 bytes on average)."""
    names = [f"user{i}@example.com".encode() for i in range(N)]
    lens = np.array([len(a) for a in names], dtype=np.int64)
    offs = np.zeros(N, dtype=np.int64)
    offs[1:] = np.cumsum(lens)[:-1]
    return np.frombuffer(b"".join(names), dtype=np.uint8), offs, lens


def test_hash_and_owner_assignment(benchmark, aors) -> None:
    buf, offs, lens = aors
    groups = np.zeros(N, dtype=np.uint64)
    owners = np.zeros(PARTITIONS, dtype=np.uint16)
    owner = np.zeros(N, dtype=np.uint16)
    nodes = np.arange(1, NODES + 1, dtype=np.int64)
    parts = {"hash": [], "map": [], "lookup": []}

    def run() -> None:
        t0 = time.perf_counter()
        _hash_aors(buf, offs, lens, groups)
        t1 = time.perf_counter()
        P.compute_owners(nodes, NODES, owners)
        t2 = time.perf_counter()
        _owner_of(groups, owners, owner)
        t3 = time.perf_counter()
        for name, t in (("hash", t1 - t0), ("map", t2 - t1), ("lookup", t3 - t2)):
            parts[name].append(t * 1e3)

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    counts = np.bincount(owner, minlength=NODES + 1)[1:]
    assert counts.sum() == N and counts.min() > 0.3 * N
    total = benchmark.stats.stats.min * 1e3
    best = {k: min(v) for k, v in parts.items()}
    benchmark.extra_info.update({f"{k}_ms": v for k, v in best.items()}, total_ms=total)
    print(f"\nhash + owner of {N:,} contacts: {total:.2f} ms (best of 10; hash "
          f"{best['hash']:.2f} ms, rendezvous map of {PARTITIONS} partitions over {NODES} "
          f"nodes {best['map']:.3f} ms, owner lookup {best['lookup']:.2f} ms); "
          f"contacts per node {counts.tolist()}")


@pytest.fixture(scope="module")
def nat_table():
    rows, _, _ = make_rows(N, 7)
    rs = CONTACT.row_size(RECORD_BYTES)
    flags = rows.reshape(N, rs)[:, O_FLAGS:O_FLAGS + 4]
    flags[:] = np.frombuffer(np.uint32(FLAG_NAT).tobytes(), np.uint8)
    buf = new_table()
    _insert_all(buf, rows, N, 1)
    return buf


def test_due_selection(benchmark, nat_table) -> None:
    """One full sweep of the 1M-contact table as node 1 of 3 (the timer does it in
    slices, one per tick): the selection by partition, which reads the key array only,
    then the extraction of what the pings need, which reads the owned rows once."""
    owners = np.zeros(PARTITIONS, dtype=np.uint16)
    P.compute_owners(np.arange(1, NODES + 1, dtype=np.int64), NODES, owners)
    slots = np.zeros(N, dtype=np.int64)
    no_gain = np.zeros(0, dtype=np.uint8)
    nslots = int(nat_table[:T.HEADER_SIZE].view(np.int64)[T.H_NSLOTS])
    targets = np.zeros(64 << 20, dtype=np.uint8)
    now_s = int(time.time())

    def select() -> int:
        n, end = P.select_due(nat_table, 0, nslots, owners, owners, 1, no_gain, slots, N)
        assert end == nslots
        return int(n)

    selected = benchmark.pedantic(select, rounds=10, iterations=1, warmup_rounds=1)
    select_ms = benchmark.stats.stats.min * 1e3
    extract = []
    for _ in range(5):
        started = time.perf_counter()
        count, _, done = P.ping_targets(nat_table, slots, 0, selected, now_s, True, FLAG_NAT,
                                        targets, targets.shape[0])
        extract.append((time.perf_counter() - started) * 1e3)
    expected = int(P.count_owned(nat_table, owners, 1, True, FLAG_NAT))
    assert selected == expected == count and done == selected
    assert 0.3 * N < selected < 0.37 * N
    benchmark.extra_info.update(selection_ms=select_ms, targets_ms=min(extract),
                                selected=selected)
    print(f"\ndue selection over {N:,} contacts ({nslots:,} slots) as node 1 of {NODES}: "
          f"{select_ms:.2f} ms for {selected:,} contacts (key array only); building their "
          f"ping targets (one read of each owned row): {min(extract):.2f} ms")


def test_contacts_moved_by_membership_changes(benchmark, aors) -> None:
    """Fraction of contacts whose pinger changes when the last of N nodes leaves (and
    when it comes back): rendezvous partitions vs OpenSIPS 2.4's hash % N."""
    buf, offs, lens = aors
    groups = np.zeros(N, dtype=np.uint64)
    _hash_aors(buf, offs, lens, groups)
    owners = np.zeros(PARTITIONS, dtype=np.uint16)
    before, after = np.zeros(N, dtype=np.uint16), np.zeros(N, dtype=np.uint16)
    lines = []
    for n in range(2, 9):
        nodes = np.arange(1, n + 1, dtype=np.int64)
        P.compute_owners(nodes, n, owners)
        _owner_of(groups, owners, before)
        P.compute_owners(nodes, n - 1, owners)  # node n left
        _owner_of(groups, owners, after)
        rendezvous = float(np.count_nonzero(before != after)) / N
        assert not np.any((before != after) & (before != n))  # only its contacts moved
        _owner_modulo(groups, n, nodes, before)
        _owner_modulo(groups, n - 1, nodes, after)
        modulo = float(np.count_nonzero(before != after)) / N
        benchmark.extra_info[f"moved_rendezvous_{n}"] = rendezvous
        benchmark.extra_info[f"moved_modulo_{n}"] = modulo
        lines.append(f"  {n} -> {n - 1} nodes: rendezvous {rendezvous:6.1%}   "
                     f"hash % N {modulo:6.1%}   ideal {1 / n:6.1%}")
        assert abs(rendezvous - 1 / n) < 0.03
    nodes = np.arange(1, 9, dtype=np.int64)
    benchmark.pedantic(P.compute_owners, args=(nodes, 8, owners), rounds=20, iterations=1)
    print(f"\ncontacts that change pinger when one node leaves ({N:,} contacts, "
          f"{PARTITIONS} partitions; a join moves the same share back):\n" + "\n".join(lines)
          + f"\nrendezvous map over 8 nodes: {benchmark.stats.stats.min * 1e3:.3f} ms")
