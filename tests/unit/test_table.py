"""Table kernels against the plain-Python reference, byte for byte, on random operation
sequences; plus the error cases (full, too long, corrupt) and the hashes."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastcluster.shm import hashing
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.contacts import CONTACT
from fastcluster.shm.rows import ROW_HEAD
from fastcluster.shm.tables import Table
from tests.support import reference as ref

NPROCS = 4
ME = T.lock_word(1, 1)
NOW_S = 1_800_000_000
NO_HORIZONS = np.zeros(T.NODE_IDS, dtype=np.int64)
NOW_MS = NOW_S * 1000


def make_table(capacity: int = 200, record_bytes: int = 64) -> np.ndarray:
    buf = np.zeros(Table.size_for(CONTACT, capacity, record_bytes, NPROCS), dtype=np.uint8)
    Table.create(buf, CONTACT, capacity, record_bytes, NPROCS, node_id=7)
    return buf


def make_row(rs: int, key: int, group: int, strings: list[bytes], state: int = T.ST_LIVE,
             expires: int = NOW_S + 60, version: int = 0, origin: int = 0) -> np.ndarray:
    row = np.zeros(rs, dtype=np.uint8)
    rec = row[:CONTACT.fixed_size].view(CONTACT.dtype)
    rec["key"], rec["group"], rec["state"], rec["expires"] = key, group, state, expires
    rec["version"], rec["origin"] = version, origin
    rec["lens"] = [len(s) for s in strings] + [0] * (len(CONTACT.strings) - len(strings))
    pos = CONTACT.fixed_size
    for s in strings:
        row[pos:pos + len(s)] = np.frombuffer(s, np.uint8)
        pos += len(s)
    return row


def entry_of(row: np.ndarray) -> np.ndarray:
    rec = row[:CONTACT.fixed_size].view(CONTACT.dtype)[0]
    nbytes = CONTACT.fixed_size + int(rec["lens"].sum())
    length = (R.ENTRY_HEADER + nbytes + 7) & ~7
    out = np.zeros(length, dtype=np.uint8)
    out[:4].view(np.uint32)[0] = length
    out[4:6].view(np.uint16)[0] = CONTACT.kind
    out[R.ENTRY_HEADER:R.ENTRY_HEADER + nbytes] = row[:nbytes]
    return out


def comparable(buf: np.ndarray) -> tuple[bytes, bytes, tuple[int, int, int]]:
    """What must be equal between kernel and reference: keys, row bytes of records,
    counters."""
    h = buf[:T.HEADER_SIZE].view(np.int64)
    n, rs = int(h[T.H_NSLOTS]), int(h[T.H_ROW])
    keys = buf[int(h[T.H_OFF_KEYS]):int(h[T.H_OFF_KEYS]) + 8 * n].view(np.uint64)
    rows = buf[int(h[T.H_OFF_ROWS]):int(h[T.H_OFF_ROWS]) + rs * n].reshape(n, rs).copy()
    rows[keys <= 1] = 0  # contents of empty/free slots do not matter
    rows[:, :8] = 0  # seqlock words: concurrency machinery
    for i in np.nonzero(keys > 1)[0]:  # only the used part of a body is meaningful
        lens = rows[i, ROW_HEAD + CONTACT.lens_off:ROW_HEAD + CONTACT.lens_off + 12].view("<u2")
        rows[i, ROW_HEAD + CONTACT.fixed_size + int(lens.sum()):] = 0
    return keys.tobytes(), rows.tobytes(), (int(h[T.H_LIVE]), int(h[T.H_TOMB]),
                                            int(h[T.H_FREE]))


def test_hashes_match_reference() -> None:
    rng = random.Random(1)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        seed = rng.getrandbits(64)
        arr = np.frombuffer(data, np.uint8).copy() if data else np.zeros(1, np.uint8)
        assert int(hashing.hash_bytes(arr, 0, len(data), np.uint64(seed))) == \
            ref.hash_bytes(data, seed)
        assert int(hashing.mix64(np.uint64(seed))) == ref.mix64(seed)


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_reference(seed: int) -> None:
    rng = random.Random(seed)
    a, b = make_table(), make_table()
    model = ref.RefTable(b)
    rs = int(a[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    ring = R.no_ring()
    # few groups whose homes collide, so probe runs cross each other and regions
    groups = [hashing.as_key(np.uint64(rng.getrandbits(64))) for _ in range(25)]
    live: list[tuple[int, int, list[bytes]]] = []
    now_ms = NOW_MS
    for step in range(600):
        op = rng.random()
        now_ms += rng.randrange(0, 3000)
        if op < 0.45 or not live:
            group = int(rng.choice(groups))
            key = rng.getrandbits(64) | 2
            strings = [b"aor%d" % group, bytes(rng.randrange(97, 123) for _ in
                                                range(rng.randrange(0, 40)))]
            row = make_row(rs, key, group, strings, expires=now_ms // 1000 + rng.randrange(1, 20))
            live.append((key, group, strings))
        elif op < 0.7:
            key, group, strings = rng.choice(live)
            row = make_row(rs, key, group, strings, expires=now_ms // 1000 + rng.randrange(1, 20))
        elif op < 0.8:
            key, group, strings = rng.choice(live)
            row = make_row(rs, key, group, strings, state=T.ST_TOMB, expires=now_ms // 1000)
        elif op < 0.9:
            key, group, strings = rng.choice(live)
            row = make_row(rs, key, group, strings, version=(now_ms + rng.randrange(-5000, 5000))
                           << 16, origin=rng.randrange(1, 5),
                           expires=now_ms // 1000 + rng.randrange(-5, 20))
            e = entry_of(row)
            counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
            off = T.apply_entries(a, e, len(e), now_ms // 1000, 10, ME, 1, ring, T.NO_SEEN, counts)
            expect = model.apply(e.tobytes(), now_ms // 1000, 10)
            assert off == len(e) and counts[T.AC_CORRUPT] == 0
            assert (counts[T.AC_APPLIED] == 1) == (expect >= 0), (step, expect, counts)
            assert comparable(a) == comparable(b), step
            continue
        else:
            out = np.zeros(3, dtype=np.int64)
            nxt = T.table_expire(a, 0, 1 << 20, now_ms // 1000, 10, 10, NO_HORIZONS, ME, out)
            assert nxt == 0
            assert list(out) == model.expire(now_ms // 1000, 10)
            assert comparable(a) == comparable(b), step
            continue
        got = T.table_put(a, ring, row.copy(), now_ms, ME, 1)
        expect = model.put(row.tobytes(), now_ms)
        assert got == expect, step
        assert comparable(a) == comparable(b), step
    # reads agree as well
    assert T.table_digest(a, True)[0] == model.digest(True)[0]
    assert int(T.table_digest(a, True)[1]) == model.digest(True)[1]
    assert int(T.table_digest(a, False)[1]) == model.digest(False)[1]
    table = Table(a, CONTACT)
    scanned = list(table.rows(live_only=False))
    assert [r["key"] for r in scanned] == [int.from_bytes(r[:8], "little")
                                           for _, r in model.scan(False)]
    for key, group, strings in live[:50]:
        assert T.table_find(a, np.uint64(key), np.uint64(group)) == model.find(key, group)
        got = table.group(strings[0])
        want = model.group(group, strings[0], True) if hashing.group_hash_of(strings[0]) == \
            group else []
        assert len(got) <= len(model.group(group, strings[0], True)) or not want


def test_group_and_find_batch() -> None:
    a = make_table()
    rs = int(a[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    aor = b"alice@example.com"
    group = hashing.group_hash_of(aor)
    keys = []
    for i in range(5):
        key = 1000 + i
        T.table_put(a, R.no_ring(), make_row(rs, key, group, [aor, b"sip:%d" % i]), NOW_MS, ME, 1)
        keys.append(key)
    T.table_put(a, R.no_ring(), make_row(rs, keys[0], group, [aor, b"x"], state=T.ST_TOMB),
                NOW_MS, ME, 1)
    table = Table(a, CONTACT)
    assert sorted(r["uri"] for r in table.group(aor)) == [b"sip:%d" % i for i in range(1, 5)] \
        or sorted(r["uri"] for r in table.group(aor)) == ["sip:%d" % i for i in range(1, 5)]
    assert len(table.group(aor, live_only=False)) == 5
    assert table.group(b"bob@example.com") == []
    versions = np.zeros(6, dtype=np.int64)
    qk = np.array(keys + [999], dtype=np.uint64)
    qg = np.full(6, group, dtype=np.uint64)
    assert T.table_find_batch(a, qk, qg, versions) == 5
    assert versions[-1] == -1 and (versions[:5] > 0).all()


def test_full_table_refuses_and_overwrites_nothing() -> None:
    a = make_table(capacity=16)
    rs = int(a[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    for i in range(16):
        assert T.table_put(a, R.no_ring(), make_row(rs, 10 + i, 99 + (i << 40), [b"g"]),
                           NOW_MS, ME, 1) >= 0
    before = comparable(a)
    assert T.table_put(a, R.no_ring(), make_row(rs, 500, 12345 << 32, [b"g"]), NOW_MS, ME,
                       1) == T.E_FULL
    assert comparable(a) == before
    # an update of an existing record still works when full
    assert T.table_put(a, R.no_ring(), make_row(rs, 10, 99, [b"g", b"new"]), NOW_MS, ME, 1) >= 0


def test_too_long_is_refused_not_truncated() -> None:
    a = make_table(record_bytes=16)
    rs = int(a[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    row = make_row(rs + 64, 5, 6, [b"x" * 10, b"y" * 10])  # 20 bytes of strings > 16
    before = comparable(a)
    assert T.table_put(a, R.no_ring(), row[:rs].copy(), NOW_MS, ME, 1) == T.E_TOO_LONG
    assert comparable(a) == before


def test_ring_carries_local_writes_and_apply_is_idempotent() -> None:
    a, b = make_table(), make_table()
    seg = np.zeros(R.segment_size(2, 1 << 16), dtype=np.uint8)
    R.init_segment(seg, 2, 1 << 16)
    ring = R.region(seg, 1)
    rs = int(a[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    for i in range(50):
        T.table_put(a, ring, make_row(rs, 100 + i, (i % 7) << 33, [b"g%d" % (i % 7), b"u"]),
                    NOW_MS + i, ME, 1)
    T.table_put(a, ring, make_row(rs, 100, 0, [b"g0"], state=T.ST_TOMB), NOW_MS + 99, ME, 1)
    out = np.zeros(1 << 16, dtype=np.uint8)
    n = R.ring_drain(ring, out, 0)
    assert R.stats(ring)["pending_bytes"] == 0
    for _ in range(2):  # applying twice changes nothing the second time
        counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
        assert T.apply_entries(b, out, n, NOW_S, 60, ME, 1, R.no_ring(), T.NO_SEEN, counts) == n
    assert counts[T.AC_APPLIED] == 0 and counts[T.AC_STALE] == 51 and counts[T.AC_ENTRIES] == 51
    assert T.table_digest(a, False)[1] == T.table_digest(b, False)[1]
    assert T.table_digest(a, True)[0] == 49


def test_gather_reproduces_the_table() -> None:
    a, b = make_table(capacity=500), make_table(capacity=500)
    rs = int(a[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    for i in range(400):
        T.table_put(a, R.no_ring(), make_row(rs, 7 + i, (i * 2654435761) << 20, [b"a%d" % i]),
                    NOW_MS, ME, 1)
    chunk = np.zeros(4096, dtype=np.uint8)
    start, total = 0, np.zeros(2, dtype=np.int64)
    applied = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
    while start < int(a[:T.HEADER_SIZE].view(np.int64)[T.H_NSLOTS]):
        start, nbytes, _ = T.table_gather(a, start, chunk, chunk.shape[0], total)
        assert nbytes <= 4096
        T.apply_entries(b, chunk, nbytes, NOW_S, 60, ME, 1, R.no_ring(), T.NO_SEEN, applied)
    assert total[T.GC_ENTRIES] == 400 and applied[T.AC_APPLIED] == 400
    assert applied[T.AC_CHECKSUM] == total[T.GC_CHECKSUM]  # checksums of what was sent and what was received
    assert T.table_digest(a, True) == T.table_digest(b, True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_apply_never_crashes_on_garbage(data: bytes) -> None:
    a = make_table(capacity=32)
    buf = np.frombuffer(data, np.uint8).copy() if data else np.zeros(1, np.uint8)
    counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
    off = T.apply_entries(a, buf, len(data), NOW_S, 60, ME, 1, R.no_ring(), T.NO_SEEN, counts)
    assert 0 <= off <= len(data)
    assert off == len(data) or counts[T.AC_CORRUPT] == 1
    table = Table(a, CONTACT)
    c = table.counters()
    T.table_recount(a)
    assert table.counters() == c  # counters stayed exact


def test_ring_wraps_and_records_gaps() -> None:
    seg = np.zeros(R.segment_size(1, 1 << 16), dtype=np.uint8)
    R.init_segment(seg, 1, 1 << 16)
    ring = R.region(seg, 0)
    src = np.arange(300, dtype=np.uint8)
    out = np.zeros(1 << 16, dtype=np.uint8)
    pushed = 0
    for round_ in range(20):
        for i in range(250):  # 250 * 312 bytes > 64 KiB: the ring fills every round
            if R.ring_push(ring, 1, src, 0, 300, 1000 + pushed) == 1:
                pushed += 1
        n = R.ring_drain(ring, out, 0)
        assert n % 312 == 0
        for e in range(n // 312):
            assert out[e * 312:e * 312 + 4].view(np.uint32)[0] == 312
            assert (out[e * 312 + 8:e * 312 + 308] == src).all()
    st_ = R.stats(ring)
    assert st_["pushed"] == pushed and st_["gaps"] > 0
    gap = R.ring_take_gap(ring)
    assert gap >= 1000 and R.ring_take_gap(ring) == 0


def test_sync_resumes_from_a_hash_position_on_a_table_of_another_size() -> None:
    """A receiver that got part of a sync from one donor completes it from another donor
    whose table has another size: the position is in hash space, not in slots."""
    donor1, donor2 = make_table(capacity=3000), make_table(capacity=5000)
    rs = int(donor1[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    rng = random.Random(3)
    for i in range(2500):
        group = hashing.as_key(np.uint64(rng.getrandbits(64)))
        for donor in (donor1, donor2):
            T.table_put(donor, R.no_ring(), make_row(rs, 100 + i, int(group), [b"a%d" % i]),
                        NOW_MS, ME, 1)
    receiver = make_table(capacity=4000)
    chunk = np.zeros(8192, dtype=np.uint8)
    counts, applied = np.zeros(2, dtype=np.int64), np.zeros(T.APPLY_COUNTS, dtype=np.int64)
    h1 = int(donor1[:T.HEADER_SIZE].view(np.int64)[T.H_NHOME])
    start, position = 0, 0
    for _ in range(5):  # donor 1 sends five chunks, then dies
        start, nbytes, covered = T.table_gather(donor1, start, chunk, 8192, counts)
        assert nbytes <= 8192
        T.apply_entries(receiver, chunk, nbytes, NOW_S, 60, ME, 1, R.no_ring(), T.NO_SEEN,
                        applied)
        position = max(position, T.position_of_slot(h1, covered))
    assert 0 < position < 1 << 32
    h2 = int(donor2[:T.HEADER_SIZE].view(np.int64)[T.H_NHOME])
    start = T.slot_of_position(h2, position)
    nslots2 = int(donor2[:T.HEADER_SIZE].view(np.int64)[T.H_NSLOTS])
    while start < nslots2:
        start, nbytes, covered = T.table_gather(donor2, start, chunk, 8192, counts)
        T.apply_entries(receiver, chunk, nbytes, NOW_S, 60, ME, 1, R.no_ring(), T.NO_SEEN,
                        applied)
    assert T.table_digest(receiver, True) == T.table_digest(donor1, True)


@pytest.mark.parametrize("nhome", [16, 1111, 1_111_112])
def test_positions_and_slots_agree(nhome: int) -> None:
    for slot in (0, 1, nhome // 3, nhome - 1, nhome):
        position = T.position_of_slot(nhome, slot)
        if slot < nhome:
            assert T.slot_of_position(nhome, position) >= slot
            assert position == 0 or T.slot_of_position(nhome, position - 1) < slot
        else:
            assert position == 1 << 32


def test_entry_of_another_table_is_refused() -> None:
    a = make_table()
    rs = int(a[:T.HEADER_SIZE].view(np.int64)[T.H_ROW])
    e = entry_of(make_row(rs, 77, 5 << 40, [b"x"]))
    e[4] = 2  # a dialog entry offered to the contact table
    counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
    assert T.apply_entries(a, e, len(e), NOW_S, 60, ME, 1, R.no_ring(), T.NO_SEEN, counts) == 0
    assert counts[T.AC_CORRUPT] == 1 and counts[T.AC_APPLIED] == 0
    assert Table(a, CONTACT).counters()["live"] == 0


def test_a_bindings_rows_are_ordered_by_cseq_within_its_call_id() -> None:
    """Two nodes writing the same binding in the same ms (a client that registered on
    one node and removed on another right after) make rows of equal versions; the CSeq
    within the Call-ID orders them (RFC 3261 §10.3), in whatever order they arrive, and
    with the later one's clock behind too. Another Call-ID: (version, origin) decide."""
    v = T.hlc_version(NOW_MS)

    def row(cseq: int, state: int, version: int, origin: int, callid: bytes) -> np.ndarray:
        r = make_row(200, 99, 5, [b"alice@example.com", b"sip:a@h", callid], state=state,
                     version=version, origin=origin)
        r[:CONTACT.fixed_size].view(CONTACT.dtype)["cseq"] = cseq
        return r

    register = row(9, T.ST_LIVE, v, 3, b"c1")
    for removal, other, want in (
            (row(10, T.ST_TOMB, v, 1, b"c1"), register, T.ST_TOMB),
            (row(10, T.ST_TOMB, v - (5 << T.HLC_SHIFT), 1, b"c1"), register, T.ST_TOMB),
            (row(10, T.ST_TOMB, v, 1, b"c2"), register, T.ST_LIVE)):
        for first, second in ((other, removal), (removal, other)):
            buf, ref_buf = make_table(record_bytes=128), make_table(record_bytes=128)
            ref_t = ref.RefTable(ref_buf)
            counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
            for r in (first, second):
                e = entry_of(r)
                T.apply_entries(buf, e, e.shape[0], NOW_S, 60, ME, 1, R.no_ring(),
                                T.NO_SEEN, counts)
                ref_t.apply(e.tobytes(), NOW_S, 60)
            h = buf[:T.HEADER_SIZE].view(np.int64)
            assert (int(h[T.H_LIVE]), int(h[T.H_TOMB])) == \
                ((1, 0) if want == T.ST_LIVE else (0, 1))
            assert comparable(buf) == comparable(ref_buf)
