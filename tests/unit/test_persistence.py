"""Persistence without nodes: the batch log and its snapshot (SQLite), what a load makes
of them (newest version wins, expired rows dropped), the write-behind thread's flush,
compaction and recovery from a refused flush, and databases that must be refused."""
from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

from fastcluster.core import config
from fastcluster.core.stats import INDEX
from fastcluster.services.cluster import persistence as P
from fastcluster.services.cluster import store as S
from fastcluster.shm import table as T
from fastcluster.shm.node import NodeMemory
from fastcluster.shm.tables import TABLES
from tests.support.writer import Writer

LAYOUTS = {s.name: s.layout_text for s in TABLES}


class Node:
    """A node's memory (small tables), a writer into it and its config; the database in
    a temporary folder. restart() is a restart with no shared memory left."""

    def __init__(self, data_dir) -> None:
        self.cfg = config.load(cli={"clusterer.node_id": "7", "core.data_dir": str(data_dir),
                                    "core.instance": f"ut{os.getpid()}",
                                    "usrloc.capacity": "20000", "dialog.capacity": "1000",
                                    "core.workers": "1"})
        self.mem = NodeMemory.create(self.cfg, os.getpid())
        self.writer = Writer(self.cfg.shm_prefix)

    def persistence(self, stats: np.ndarray | None = None) -> P.Persistence:
        p = P.Persistence(self.cfg, self.mem, np.zeros(len(INDEX), np.int64) if stats is None
                          else stats)
        p.store = P.open_for(self.cfg)
        return p

    def close(self) -> None:
        self.writer.close()
        self.mem.close()
        self.mem.unlink()

    def restart(self) -> P.Loaded | None:
        self.close()
        self.mem = NodeMemory.create(self.cfg, os.getpid())
        self.writer = Writer(self.cfg.shm_prefix)
        return P.load_into(self.cfg, self.mem)


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path)
    yield n
    n.close()


def test_the_log_is_read_after_the_snapshot_and_a_snapshot_drops_what_it_covers(tmp_path):
    db = S.SqliteStore(str(tmp_path / "t.sqlite"), ["contacts"])
    db.check(1, {"contacts": "x"})
    db.append("contacts", b"a")
    db.append("contacts", b"b")
    upto = db.last_seq("contacts")
    db.append("contacts", b"c")  # after the snapshot was taken: stays
    db.snapshot("contacts", iter([b"s1", b"s2"]), upto)
    assert list(db.batches("contacts")) == [b"s1", b"s2", b"c"]
    assert db.stats("contacts") == (1, 1, 4)
    db.close()


def test_another_node_or_layout_or_schema_is_refused(tmp_path):
    path = str(tmp_path / "t.sqlite")
    db = S.SqliteStore(path, ["contacts"])
    db.check(1, {"contacts": "x"})
    with pytest.raises(S.StoreError, match="belongs to node 1, this is node 2"):
        db.check(2, {"contacts": "x"})
    with pytest.raises(S.StoreError, match="another row layout"):
        db.check(1, {"contacts": "y"})
    db.set_meta({"schema_version": "1"})
    with pytest.raises(S.StoreError, match="schema version 1"):
        db.check(1, {"contacts": "x"})
    db.close()
    with pytest.raises(S.StoreError, match="use sqlite:///PATH"):
        S.open_store("mysql://x", path, ["contacts"])


def test_flush_load_and_compaction_keep_exactly_the_newest_rows(node, monkeypatch):
    node.writer.load_contacts(3000, seed=1, version_ms=1_000)
    node.writer.load_contacts(3000, seed=1, version_ms=2_000)  # the same records, newer
    node.writer.load_contacts(500, seed=2, version_ms=1_000)
    p = node.persistence()
    assert p.flush() == 3500  # marks coalesce: a record written twice is logged once
    assert p.flush() == 0
    assert not T.dirty_marks(node.mem.contacts.buf).any()
    node.writer.load_contacts(200, seed=3, version_ms=3_000)
    assert p.flush() == 200
    for name in TABLES:
        _, p.log_bytes[name.name], p.snap_bytes[name.name] = p.store.stats(name.name)
    monkeypatch.setattr(P, "COMPACT_MIN_BYTES", 1)
    p._compact_if_due()
    assert p.state["snapshots"] == 1 and p.store.stats("contacts")[:2] == (0, 0)
    node.writer.load_contacts(100, seed=4, version_ms=3_000)
    p.flush()  # in the log, after the snapshot
    p.store.close()
    digest = node.mem.contacts.digest(live_only=False)

    loaded = node.restart()
    assert loaded is not None and loaded.rows["contacts"] == 3800
    assert node.mem.contacts.digest(live_only=False) == digest
    assert not T.dirty_marks(node.mem.contacts.buf).any()


def test_an_expired_newer_version_hides_the_older_one_it_replaced(node):
    node.writer.load_contacts(10, seed=1, version_ms=1_000)  # expires in an hour
    p = node.persistence()
    p.flush()
    # the same records again, newer, with an expiry that has passed by the next start
    buf = np.zeros(1 << 16, dtype=np.uint8)
    n = int(T.table_gather(node.mem.contacts.buf, 0, buf, buf.shape[0],
                           np.zeros(T.GATHER_COUNTS, np.int64))[1])
    off = 0
    while off < n:
        body = buf[off + 8:]
        body[T.R_VERSION:T.R_VERSION + 8].view(np.int64)[0] += 1
        body[T.R_EXPIRES:T.R_EXPIRES + 4].view(np.uint32)[0] = int(time.time()) - 5
        off += int(buf[off:off + 4].view(np.uint32)[0])
    p.store.append("contacts", buf[:n].tobytes())
    p.store.close()
    loaded = node.restart()
    assert loaded is not None
    assert (loaded.rows["contacts"], loaded.skipped["contacts"]) == (0, 20)


def test_a_refused_flush_is_counted_and_everything_is_written_at_the_next(node):
    node.writer.load_contacts(1000, seed=1)
    stats = np.zeros(len(INDEX), dtype=np.int64)
    p = node.persistence(stats)
    assert p.flush() == 1000
    node.writer.load_contacts(10, seed=2)
    real = p.store
    p.store = _Refusing()
    assert p.flush() == 0
    assert p.state["failures"] == 1 and "disk full" in p.state["error"]
    assert stats[INDEX["persistence:failures"]] == 1
    p.store = real
    assert p.flush() == 1010  # the whole table again: nothing the refusal lost
    assert p.state["error"] == ""
    p.store.close()


def test_export_and_import_keep_the_newest_version_of_each_record(node, tmp_path):
    node.writer.load_contacts(50, seed=1, version_ms=1_000)
    p = node.persistence()
    p.flush()
    node.writer.load_contacts(50, seed=1, version_ms=2_000)
    p.flush()
    out = io.StringIO()
    assert S.export_dump(p.store, out, 7, LAYOUTS) == 50
    p.store.close()
    other = S.SqliteStore(str(tmp_path / "other.sqlite"), list(LAYOUTS))
    assert S.import_dump(other, io.StringIO(out.getvalue()), LAYOUTS) == 50
    versions = {v for b in other.batches("contacts") for _, v, *_ in S.entries(b)}
    assert versions == {2_000 << 16}
    with pytest.raises(S.StoreError, match="another row layout"):
        S.import_dump(other, io.StringIO(out.getvalue()), {**LAYOUTS, "contacts": "z"})
    with pytest.raises(S.StoreError, match="not a fastcluster db dump"):
        S.import_dump(other, io.StringIO("{}\n"), LAYOUTS)
    other.close()


class _Refusing:
    def append(self, table, batch):
        raise OSError("disk full")

    def set_meta(self, values):
        raise OSError("disk full")


def test_export_orders_a_bindings_rows_by_cseq_as_the_table_does(tmp_path):
    """Two rows of one binding with equal versions (two nodes' writes of the same ms):
    the dump keeps the later CSeq of the Call-ID, as shm.table.apply_entry would, not
    the higher node id."""
    from tests.unit.test_table import entry_of, make_row

    from fastcluster.shm.contacts import CONTACT

    v = T.hlc_version(1_800_000_000_000)

    def entry(cseq: int, state: int, origin: int) -> bytes:
        row = make_row(200, 99, 5, [b"alice@example.com", b"sip:a@h", b"c1"], state=state,
                       version=v, origin=origin)
        row[:CONTACT.fixed_size].view(CONTACT.dtype)["cseq"] = cseq
        return entry_of(row).tobytes()

    for batches in ([entry(9, T.ST_LIVE, 3), entry(10, T.ST_TOMB, 1)],
                    [entry(10, T.ST_TOMB, 1), entry(9, T.ST_LIVE, 3)]):
        store = S.SqliteStore(str(tmp_path / f"o{len(os.listdir(tmp_path))}.sqlite"),
                              list(LAYOUTS))
        for b in batches:
            store.append("contacts", b)
        out = io.StringIO()
        assert S.export_dump(store, out, 7, LAYOUTS) == 1
        assert '"state": %d' % T.ST_TOMB in out.getvalue().splitlines()[1]
        store.close()
