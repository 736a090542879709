"""Where persistence keeps the tables: SQLite (the embedded default, WAL, in the data
directory) or PostgreSQL (psycopg 3), with one schema and one behaviour.

Schema (version SCHEMA_VERSION):

    meta(name PRIMARY KEY, value)     schema_version, node_id, layouts (JSON: the row
                                      layout each table was written with),
                                      last_contact_ms, watermarks (JSON)
    <table>_snap(seq PRIMARY KEY,     a snapshot of a shared table (contacts, dialogs):
                 batch)               batches of records, each record a wire entry
                                      (shm.ring layout: 8-byte header, then the row body
                                      with its version, origin and expiry)
    <table>_log(seq PRIMARY KEY,      every batch of changed records since the snapshot,
                batch)                appended by each flush

A flush is one INSERT of one batch per table, whatever the number of records: appending
costs no B-tree insert per record, so the database keeps up with the SIP workers.
Loading applies the snapshot's and the log's records by (version, origin) -- the order
does not matter, the newest version wins (DESIGN.md §4; a binding's rows of one Call-ID
by CSeq first, shm.rows RowLayout.order, and a dump export keeps the same row) -- so
compaction only has to
write a new snapshot and drop the log it covers, in one transaction. A database written
by another node id, or with another row layout or schema version, is refused with a
message saying which. `url`: "" or "sqlite:///PATH" for SQLite, "postgresql://..." for
PostgreSQL. Neighbours: services.cluster.persistence (writer, loader, compaction),
core.cli (db export / import).
"""
from __future__ import annotations

import base64
import json
import os
import sqlite3
import struct
from collections.abc import Iterator
from typing import Any, Protocol

from fastcluster.shm.rows import RowLayout
from fastcluster.shm.tables import TABLES

SCHEMA_VERSION = 2
_ENTRY = struct.Struct("<I4x")
_PREFIX = struct.Struct("<QQqIBxH")  # key, group, version, expires, state, (aux), origin
_U32 = struct.Struct("<I")
_LAYOUTS = {spec.name: spec.layout for spec in TABLES}


class StoreError(Exception):
    """A database this node must not use (another node's, another layout), or one it
    cannot open: the message says which and what to do."""


class Store(Protocol):
    url: str

    def check(self, node_id: int, layouts: dict[str, str]) -> dict[str, str]: ...
    def set_meta(self, values: dict[str, str]) -> None: ...
    def append(self, table: str, batch: bytes) -> None: ...
    def batches(self, table: str) -> Iterator[bytes]: ...
    def snapshot(self, table: str, batches: Iterator[bytes], upto: int) -> None: ...
    def last_seq(self, table: str) -> int: ...
    def stats(self, table: str) -> tuple[int, int, int]: ...  # log batches, log bytes,
    #                                                          snapshot bytes
    def size_bytes(self) -> int: ...
    def close(self) -> None: ...


def open_store(url: str, default_path: str, tables: list[str]) -> Store:
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, tables)
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite://"):], tables)
    if url:
        raise StoreError(f"[persistence] url {url!r}: use sqlite:///PATH or "
                         "postgresql://... (or off)")
    return SqliteStore(default_path, tables)


def _check_meta(meta: dict[str, str], url: str, node_id: int,
                layouts: dict[str, str]) -> dict[str, str]:
    """Refuse another node's database or another layout; returns the meta."""
    if not meta:
        return meta
    version = int(meta.get("schema_version", "0"))
    if version != SCHEMA_VERSION:
        raise StoreError(f"{url} has schema version {version}, this build uses "
                         f"{SCHEMA_VERSION}: export it with the build that wrote it "
                         "(fastcluster db export) and import it here")
    if meta.get("node_id") and int(meta["node_id"]) != node_id:
        raise StoreError(f"{url} belongs to node {meta['node_id']}, this is node "
                         f"{node_id}: point [persistence] url or [core] data_dir at "
                         "this node's own, or move that file away")
    stored = json.loads(meta.get("layouts", "{}"))
    for table, layout in layouts.items():
        if table in stored and stored[table] != layout:
            raise StoreError(f"{url}: the {table} rows were written with another row "
                             "layout (another build): export them with that build "
                             "(fastcluster db export) and import them here")
    return meta


class _SqlStore:
    """What SQLite and PostgreSQL share; subclasses give the connection, the
    placeholder and the column types."""
    url: str
    tables: list[str]
    P = "?"  # the driver's placeholder
    BLOB = "BLOB"
    SEQ = "INTEGER PRIMARY KEY"

    def _create(self) -> None:
        self._exec("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT "
                   "NULL)")
        for table in self.tables:
            for part in ("snap", "log"):
                self._exec(f"CREATE TABLE IF NOT EXISTS {table}_{part} (seq {self.SEQ}, "
                           f"batch {self.BLOB} NOT NULL)")

    def _exec(self, sql: str, args: tuple = ()) -> Any:
        raise NotImplementedError

    def _transaction(self) -> Any:
        raise NotImplementedError

    def check(self, node_id: int, layouts: dict[str, str]) -> dict[str, str]:
        meta = dict(self._exec("SELECT name, value FROM meta").fetchall())
        meta = _check_meta(meta, describe(self), node_id, layouts)
        if not meta:
            self.set_meta({"schema_version": str(SCHEMA_VERSION), "node_id": str(node_id),
                           "layouts": json.dumps(layouts, sort_keys=True)})
        return meta

    def set_meta(self, values: dict[str, str]) -> None:
        with self._transaction():
            for name, value in values.items():
                self._exec(f"INSERT INTO meta (name, value) VALUES ({self.P}, {self.P}) "
                           "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                           (name, value))

    def append(self, table: str, batch: bytes) -> None:
        with self._transaction():
            self._exec(f"INSERT INTO {table}_log (batch) VALUES ({self.P})", (batch,))

    def batches(self, table: str) -> Iterator[bytes]:
        """The snapshot's batches, then the log's."""
        for part in ("snap", "log"):
            seq = -1
            while True:  # one batch at a time: a snapshot never sits whole in memory
                row = self._exec(f"SELECT seq, batch FROM {table}_{part} WHERE seq > "
                                 f"{self.P} ORDER BY seq LIMIT 1", (seq,)).fetchone()
                if row is None:
                    break
                seq = row[0]
                yield bytes(row[1])

    def last_seq(self, table: str) -> int:
        row = self._exec(f"SELECT max(seq) FROM {table}_log").fetchone()
        return int(row[0] or 0)

    def snapshot(self, table: str, batches: Iterator[bytes], upto: int) -> None:
        """Replace the snapshot with `batches` and drop the log batches up to `upto`
        (the snapshot was taken after they were written)."""
        self._exec(f"DROP TABLE IF EXISTS {table}_next")
        self._exec(f"CREATE TABLE {table}_next (seq {self.SEQ}, batch {self.BLOB} NOT NULL)")
        for batch in batches:
            with self._transaction():
                self._exec(f"INSERT INTO {table}_next (batch) VALUES ({self.P})", (batch,))
        with self._transaction():
            self._exec(f"DROP TABLE {table}_snap")
            self._exec(f"ALTER TABLE {table}_next RENAME TO {table}_snap")
            self._exec(f"DELETE FROM {table}_log WHERE seq <= {self.P}", (upto,))

    def stats(self, table: str) -> tuple[int, int, int]:
        """(log batches, log bytes, snapshot bytes)."""
        log = self._exec(f"SELECT count(*), coalesce(sum(length(batch)), 0) FROM "
                         f"{table}_log").fetchone()
        snap = self._exec(f"SELECT coalesce(sum(length(batch)), 0) FROM "
                          f"{table}_snap").fetchone()
        return int(log[0]), int(log[1]), int(snap[0])


class SqliteStore(_SqlStore):
    """The embedded default: one file, WAL, a full fsync per flush (a flush is a few a
    second, so durability costs little)."""

    def __init__(self, path: str, tables: list[str]) -> None:
        self.url = f"sqlite://{path}"
        self.path = path
        self.tables = tables
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=5, check_same_thread=False,
                                      isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._create()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {exc}") from None
        os.chmod(path, 0o600)

    def _exec(self, sql: str, args: tuple = ()) -> Any:
        return self.db.execute(sql, args)

    def _transaction(self) -> Any:
        return _SqliteTransaction(self.db)

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    def close(self) -> None:
        self.db.close()


class _SqliteTransaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


class PostgresStore(_SqlStore):
    """PostgreSQL through psycopg 3: the same schema (BYTEA batches)."""
    P = "%s"
    BLOB = "BYTEA"
    SEQ = "BIGSERIAL PRIMARY KEY"

    def __init__(self, url: str, tables: list[str]) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("[persistence] url is a PostgreSQL one but psycopg 3 is not "
                             "installed: pip install 'psycopg[binary]'") from None
        self.url = url
        self.tables = tables
        try:
            self.db = psycopg.connect(url, autocommit=True, connect_timeout=5)
            self._create()
        except psycopg.Error as exc:
            raise StoreError(f"{_redact(url)}: {exc}".strip()) from None

    def _exec(self, sql: str, args: tuple = ()) -> Any:
        return self.db.execute(sql, args)

    def _transaction(self) -> Any:
        return self.db.transaction()

    def size_bytes(self) -> int:
        return sum(int(self.db.execute("SELECT pg_total_relation_size(%s)",
                                       (name,)).fetchone()[0])
                   for name in ["meta"] + [f"{t}_{p}" for t in self.tables
                                           for p in ("snap", "log")])

    def close(self) -> None:
        self.db.close()


def entries(batch: bytes) -> Iterator[tuple[int, int, int, int, int, bytes]]:
    """(key, version, origin, state, expires, entry) of each wire entry of a batch."""
    off, end = 0, len(batch)
    while off + 8 + _PREFIX.size <= end:
        (length,) = _ENTRY.unpack_from(batch, off)
        if length < 8 + _PREFIX.size or off + length > end:
            return
        key, _, version, expires, state, origin = _PREFIX.unpack_from(batch, off + 8)
        yield key, version, origin, state, expires, batch[off:off + length]
        off += length


def _later(layout: RowLayout | None, entry: bytes, old: bytes, vo: tuple[int, int],
           old_vo: tuple[int, int]) -> bool:
    """Whether wire entry `entry` (version, origin `vo`) replaces `old` of the same
    record, by shm.table's rule: the layout's order field first between rows of the same
    scope string (shm.rows RowLayout.order), then (version, origin)."""
    if layout is not None and layout.order is not None:
        field, scope = layout.order
        at, index = layout.offset(field), layout.strings.index(scope)
        mine, theirs = _scope(layout, entry, index), _scope(layout, old, index)
        if mine and mine == theirs:
            a, = _U32.unpack_from(entry, _ENTRY.size + at)
            b, = _U32.unpack_from(old, _ENTRY.size + at)
            if a != b:
                return a > b
    return vo > old_vo


def _scope(layout: RowLayout, entry: bytes, index: int) -> bytes:
    """String `index` of the row in a wire entry."""
    row = _ENTRY.size
    lens = struct.unpack_from(f"<{len(layout.strings)}H", entry, row + layout.lens_off)
    start = row + layout.fixed_size + sum(lens[:index])
    return entry[start:start + lens[index]]


# ---------------------------------------------------------------- portable dumps

DUMP_FORMAT = "fastcluster-db"


def export_dump(store: Store, out: Any, node_id: int, layouts: dict[str, str]) -> int:
    """The newest version of every record as JSON lines (a header line first); returns
    the records written. Entries are base64: a dump moves between SQLite and PostgreSQL,
    or machines, and the readable fields say what each record is."""
    out.write(json.dumps({"format": DUMP_FORMAT, "schema_version": SCHEMA_VERSION,
                          "node_id": node_id, "layouts": layouts}) + "\n")
    n = 0
    for table in layouts:
        newest: dict[int, tuple[int, int, int, int, bytes]] = {}
        layout = _LAYOUTS.get(table)
        for batch in store.batches(table):
            for key, version, origin, state, expires, entry in entries(batch):
                old = newest.get(key)
                if old is None or _later(layout, entry, old[4], (version, origin),
                                         (old[0], old[1])):
                    newest[key] = (version, origin, state, expires, entry)
        for key, (version, origin, state, expires, entry) in newest.items():
            out.write(json.dumps({"table": table, "key": key, "version": version,
                                  "origin": origin, "state": state, "expires": expires,
                                  "entry": base64.b64encode(entry).decode()}) + "\n")
            n += 1
    return n


def import_dump(store: Store, src: Any, layouts: dict[str, str]) -> int:
    """Records of a dump appended to store's log (loading keeps the newest version of
    each, so an import merges); returns the records read. The dump's row layouts must
    be this build's."""
    header = json.loads(src.readline() or "{}")
    if header.get("format") != DUMP_FORMAT:
        raise StoreError("not a fastcluster db dump (no header line)")
    for table, layout in header.get("layouts", {}).items():
        if layouts.get(table) != layout:
            raise StoreError(f"the dump's {table} rows have another row layout than this "
                             "build's")
    pending: dict[str, list[bytes]] = {}
    n = 0
    for line in src:
        row = json.loads(line)
        chunk = pending.setdefault(row["table"], [])
        chunk.append(base64.b64decode(row["entry"]))
        n += 1
        if len(chunk) >= 10_000:
            store.append(row["table"], b"".join(chunk))
            chunk.clear()
    for table, chunk in pending.items():
        if chunk:
            store.append(table, b"".join(chunk))
    return n


def _redact(url: str) -> str:
    """The URL without its password (log lines, MI)."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, userinfo = head.partition("//")
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{tail}"


def describe(store: Any) -> str:
    return _redact(store.url)
