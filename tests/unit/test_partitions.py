"""Ping partitions: the kernels (shm.partitions) against plain-Python references, on
contacts registered through the registrar's own code."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from fastcluster.services.sip.natping import CALLID_PREFIX, parse_callid, pings_it
from fastcluster.shm import partitions as P
from fastcluster.shm import table as T
from fastcluster.shm.contacts import CONTACT, FLAG_NAT, contact_key_of
from fastcluster.shm.hashing import group_hash_of
from tests.support import reference as ref
from tests.support.registrar import Harness, register

PARTS = 64
SEED = 0x706172746974696F


def ref_owners(nodes: list[int], count: int) -> list[int]:
    """Rendezvous: the node with the highest score, the lowest id on a tie."""
    def score(p: int, node: int) -> int:
        return ref.mix64(ref.mix64(p ^ SEED) ^ ref.mix64(node))
    return [max(nodes, key=lambda n: (score(p, n), -n)) if nodes else 0
            for p in range(count)]


def kernel_owners(nodes: list[int], count: int = PARTS) -> np.ndarray:
    owners = np.zeros(count, dtype=np.uint16)
    P.compute_owners(np.array(nodes or [0], dtype=np.int64), len(nodes), owners)
    return owners


@pytest.mark.parametrize("nodes", [[], [1], [1, 2], [3, 7, 9], list(range(1, 17)),
                                   [65535, 2, 40000]])
def test_owners_match_reference(nodes: list[int]) -> None:
    assert kernel_owners(nodes).tolist() == ref_owners(nodes, PARTS)


def test_a_leaving_node_moves_only_its_partitions_and_a_joining_one_takes_its_share() -> None:
    count = 4096
    for n in range(2, 10):
        before = kernel_owners(list(range(1, n + 1)), count)
        after = kernel_owners(list(range(1, n)), count)
        moved = before != after
        assert (before[moved] == n).all() and (before == n).sum() == moved.sum()
        assert abs(moved.sum() / count - 1 / n) < 0.05  # about 1/n; hash % n moves most
        # the join is the same change the other way: only what node n wins moves
        assert ((after != before) == (before == n)).all()


def fill(h: Harness, rng: random.Random, count: int) -> None:
    """Contacts of 150 AORs, some behind NAT (a private Contact address), some removed
    (tombstones), some about to expire."""
    for i in range(count):
        aor = f"u{rng.randrange(150)}@example.com"
        host = "10.1.1.1" if rng.random() < 0.6 else "192.0.2.10"
        expires = rng.choice([1, 600, 3600])
        path = f"Path: <sip:edge{i % 3}.example.com;lr>\n" if rng.random() < 0.3 else ""
        reply = h.send(register(aor=aor, callid=f"c{i}", expires=expires, extra=path,
                                contacts=[f"<sip:{aor.split('@')[0]}x{i}@{host}:5060>"]))
        assert reply is not None and " 200 " in reply
        if rng.random() < 0.1:
            h.send(register(aor=aor, callid=f"c{i}", cseq=2, expires=0,
                            contacts=[f"<sip:{aor.split('@')[0]}x{i}@{host}:5060>"]))


def ref_select(buf: np.ndarray, first: int, end: int, owners: np.ndarray,
               old: np.ndarray, me: int, gained: np.ndarray) -> list[int]:
    """Ours by partition (only the gained ones, if any), or, without gained, by origin:
    registered through `me`."""
    t = T.views(buf)
    out = []
    for s in range(first, min(end, int(t.nslots))):
        key = int(t.keys[s])
        p = key & (owners.shape[0] - 1)
        if key <= 1:
            continue
        if me in (owners[p], old[p]):
            if gained.shape[0] == 0 or gained[p]:
                out.append(s)
        elif gained.shape[0] == 0 and int(T.r_origin(t, s)) == me:
            out.append(s)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_due_selection_and_ping_targets_match_reference(seed: int) -> None:
    rng = random.Random(seed)
    h = Harness(capacity=600, min_expires=1)
    fill(h, rng, 400)
    buf = h.table.buf
    t = T.views(buf)
    nslots = int(t.nslots)
    for slot in range(nslots):  # as if half had registered through nodes 2 and 3
        if t.keys[slot] > 1 and rng.random() < 0.5:
            t.rows16[(T.rbase(t, slot) + T.R_ORIGIN) >> 1] = rng.choice([2, 3])
    owners = kernel_owners([1, 2, 3])
    old = kernel_owners([1, 2]) if seed % 2 else owners
    gained = np.array([rng.random() < 0.3 for _ in range(PARTS if seed >= 2 else 0)],
                      dtype=np.uint8)  # empty: no restriction
    # the selection, resumed in small batches over a sub-range
    first, end = rng.randrange(50), nslots - rng.randrange(50)
    got, s, out = [], first, np.zeros(7, dtype=np.int64)
    while s < end:
        n, s = P.select_due(buf, s, end, owners, old, 1, gained, out, 7)
        got += out[:n].tolist()
    assert got == ref_select(buf, first, end, owners, old, 1, gained) and got
    # what the pings need, for the live, unexpired, NAT-ed ones, in small buffers
    now = int(time.time()) + 2  # the contacts registered with Expires: 1 are over
    slots = np.array(got, dtype=np.int64)
    expected = []
    for slot in got:
        body = t.rows8[T.rbase(t, slot):T.rbase(t, slot) + int(t.body)]
        (rec,) = CONTACT.decode(body, 1, int(t.body))
        if rec["state"] == T.ST_LIVE and rec["expires"] > now and rec["flags"] & FLAG_NAT:
            expected.append((slot, rec["key"], 4, 5070, rec["sock"], rec["uri"], rec["path"]))
    assert expected and any(e[-1] for e in expected) and any(not e[-1] for e in expected)
    targets = np.zeros(200, dtype=np.uint8)
    entries, i = [], 0
    while i < len(got):
        count, used, i = P.ping_targets(buf, slots, i, len(got), now, True, FLAG_NAT,
                                        targets, targets.shape[0])
        assert count > 0 or i == len(got)
        off = 0
        for _ in range(count):
            slot, key, fam, port, sock, ulen, plen, _ = \
                targets[off:off + 64].view(np.int64).tolist()
            assert bytes(targets[off + 64:off + 68]) == bytes([192, 0, 2, 10])
            text = off + P.TARGET_HEAD
            uri = bytes(targets[text:text + ulen]).decode()
            path = bytes(targets[text + ulen:text + ulen + plen]).decode()
            entries.append((slot, key & (2 ** 64 - 1), fam, port, sock, uri, path))
            off += P.TARGET_HEAD + ((ulen + plen + 7) & ~7)
        assert off == used
    assert entries == expected


def test_missed_pings_and_replies() -> None:
    h = Harness()
    for i in range(3):
        h.send(register(aor=f"m{i}@example.com", callid=f"m{i}",
                        contacts=[f"<sip:m{i}@10.0.0.1:5060>"]))
    t = T.views(h.table.buf)
    slots = np.array([s for s in range(int(t.nslots)) if t.keys[s] > 1], dtype=np.int64)
    assert slots.shape[0] == 3
    for expected in (1, 2, 3):
        assert P.mark_ping(h.table.buf, slots, 3) == expected
    now = int(time.time())
    assert P.mark_reply(h.table.buf, slots[0], t.keys[slots[0]], now) == 1
    assert P.mark_reply(h.table.buf, slots[1], np.uint64(12345), now) == 0  # another record
    assert P.mark_reply(h.table.buf, -1, np.uint64(2), now) == 0
    over = np.zeros(3, dtype=np.int64)
    m = P.missed_over(h.table.buf, slots, 3, 2, over)
    assert sorted(over[:m].tolist()) == sorted(slots[1:].tolist())
    assert P.mark_ping(h.table.buf, slots[:1], 1) == 1  # the reply reset the count


def test_contact_keys_carry_the_aor_partition_and_ping_callids_round_trip() -> None:
    rng = random.Random(5)
    h = Harness()
    for i in range(50):
        aor = f"k{rng.getrandbits(40):x}@example.com"
        uri = f"sip:k{i}@10.0.0.{i}:5060"
        h.send(register(aor=aor, callid=f"k{i}", contacts=[f"<{uri}>"]))
        (rec,) = h.contacts(aor)
        key = contact_key_of(aor.encode(), uri.encode())
        assert rec["key"] == key
        assert key & 0xFFFF == group_hash_of(aor.encode()) & 0xFFFF
    for key in (2, 2 ** 63 + 5, 2 ** 64 - 1):  # keys above 2**63 too
        assert parse_callid(f"{CALLID_PREFIX}7-123-{key:x}") == (123, key)
    assert parse_callid(f"{CALLID_PREFIX}7-123--5") is None
    assert parse_callid("fcpingx") is None and parse_callid("other") is None


@pytest.mark.parametrize("me, origin, live, behind_nat, mine, pings", [
    (1, 1, {2}, True, False, True),     # ours, behind a NAT: we ping it wherever it is
    (1, 2, {2}, True, True, False),     # node 2's, alive: node 2 pings it, not the owner
    (1, 2, set(), True, True, True),    # node 2's, gone: the partition's owner does
    (1, 2, set(), True, False, False),  # ... and only the owner
    (1, 2, {2}, False, True, True),     # a public address or a Path: by partition
    (1, 1, {2}, False, False, False),
    (1, 0, {2}, True, True, True),      # no origin known: by partition
])
def test_who_pings_a_contact(me, origin, live, behind_nat, mine, pings) -> None:
    assert pings_it(me, origin, live, behind_nat, mine) is pings
