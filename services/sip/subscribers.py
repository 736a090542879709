"""The subscriber database: who may register, as SQLite (the embedded default).

One table, `subscriber`, with OpenSIPS's column names for what a registrar needs:
username, domain and the HA1 of each digest algorithm (never the password). The CLI
(`fastcluster user add|passwd|del|list`) writes it; the master creates it at start
when authentication is on; each SIP worker reads it through a `CredentialCache`: a
read-only connection and an LRU of recent answers (unknown users included, so a
scanner costs one query per name), dropped as soon as SQLite reports another
connection's commit (PRAGMA data_version, looked at on the worker's idle beat, at
most IDLE_S = 0.2 s later). A REGISTER therefore touches SQLite only on a cache miss,
a B-tree lookup of a few microseconds in WAL mode, where readers never wait for a
writer. Neighbours: core.digest (HA1), services.sip.auth (the reader), core.cli.
"""
from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from urllib.parse import quote

from fastcluster.core.digest import HA1_COLUMNS, HASHES, ha1
from fastcluster.core.stats import INDEX

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriber (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    domain TEXT NOT NULL DEFAULT '',
    ha1 TEXT NOT NULL DEFAULT '',
    ha1_sha256 TEXT NOT NULL DEFAULT '',
    UNIQUE (username, domain)
);
"""
I_DB_LOOKUPS = INDEX["auth:db_lookups"]
BUSY_TIMEOUT_S = 0.05  # the longest a worker waits for SQLite (then: 500, counted)
_LOOKUP = "SELECT ha1, ha1_sha256 FROM subscriber WHERE username = ? AND domain = ?"


class StoreError(Exception):
    """The database cannot be used (missing, unreadable, not ours)."""


@dataclass(frozen=True)
class Credentials:
    ha1: str  # MD5
    ha1_sha256: str

    def for_algorithm(self, algorithm: str) -> str:
        return self.ha1 if algorithm == "MD5" else self.ha1_sha256


def ensure(path: str) -> None:
    """Create the folder (0700), the file (0600) and the table if missing; WAL mode."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from None


def _split(user: str) -> tuple[str, str]:
    name, at, domain = user.rpartition("@")
    if not at or not name or not domain:
        raise ValueError(f"{user!r} is not USER@DOMAIN")
    return name, domain.lower()


def hashes(username: str, realm: str, password: str) -> dict[str, str]:
    """column -> HA1 for every algorithm we know."""
    return {HA1_COLUMNS[a]: ha1(a, username, realm, password) for a in HASHES}


def set_user(path: str, user: str, realm: str, password: str, create: bool) -> None:
    """Add USER@DOMAIN (create) or change the password of an existing one. realm: the
    realm clients will be challenged with (auth.realm, or the domain when empty)."""
    username, domain = _split(user)
    cols = hashes(username, realm or domain, password)
    ensure(path)
    with closing(sqlite3.connect(path)) as db, db:
        if create:
            try:
                db.execute("INSERT INTO subscriber (username, domain, ha1, ha1_sha256) "
                           "VALUES (?, ?, ?, ?)",
                           (username, domain, cols["ha1"], cols["ha1_sha256"]))
            except sqlite3.IntegrityError:
                raise ValueError(f"{user} exists already (use passwd)") from None
        else:
            cur = db.execute("UPDATE subscriber SET ha1 = ?, ha1_sha256 = ? "
                             "WHERE username = ? AND domain = ?",
                             (cols["ha1"], cols["ha1_sha256"], username, domain))
            if cur.rowcount == 0:
                raise ValueError(f"no user {user}")


def add_users(path: str, users: Iterable[tuple[str, str]], realm: str = "") -> int:
    """Add many (USER@DOMAIN, password) at once, in one transaction (provisioning,
    tests, benchmarks); existing users are updated. Returns how many."""
    rows = []
    for user, password in users:
        username, domain = _split(user)
        cols = hashes(username, realm or domain, password)
        rows.append((username, domain, cols["ha1"], cols["ha1_sha256"]))
    ensure(path)
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT INTO subscriber (username, domain, ha1, ha1_sha256) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT (username, domain) DO UPDATE SET "
                       "ha1 = excluded.ha1, ha1_sha256 = excluded.ha1_sha256", rows)
    return len(rows)


def delete_user(path: str, user: str) -> None:
    username, domain = _split(user)
    if not os.path.exists(path):
        raise ValueError(f"no user {user} (no database at {path})")
    with closing(sqlite3.connect(path)) as db, db:
        if db.execute("DELETE FROM subscriber WHERE username = ? AND domain = ?",
                      (username, domain)).rowcount == 0:
            raise ValueError(f"no user {user}")


def list_users(path: str, domain: str = "") -> list[str]:
    if not os.path.exists(path):
        return []
    with closing(sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)) as db:
        if domain:
            rows = db.execute("SELECT username, domain FROM subscriber WHERE domain = ? "
                              "ORDER BY domain, username", (domain.lower(),))
        else:
            rows = db.execute("SELECT username, domain FROM subscriber "
                              "ORDER BY domain, username")
        return [f"{u}@{d}" for u, d in rows]


class CredentialCache:
    """A worker's read-only view of the subscriber table (see the module docstring)."""

    def __init__(self, path: str, capacity: int, counts: list[int] | None = None) -> None:
        self.path = path
        self.capacity = capacity
        self.counts = counts  # the worker's counters: auth:db_lookups per SQLite query
        self.cache: OrderedDict[tuple[str, str], Credentials | None] = OrderedDict()
        self.queries = 0  # SQLite lookups made (cache misses), for tests and benches
        self._db: sqlite3.Connection | None = None
        self._version = -1
        self._inode = -1

    def _connect(self) -> sqlite3.Connection:
        try:
            st = os.stat(self.path)
            # WAL readers never wait for writers; the short busy timeout bounds the
            # rare waits left (a writer recovering the WAL index) instead of sqlite3's 5 s.
            db = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True,
                                 check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            db.execute("PRAGMA query_only = 1")
            version = db.execute("PRAGMA data_version").fetchone()[0]
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        self._db, self._inode, self._version = db, st.st_ino, version
        return db

    def lookup(self, username: str, domain: str) -> Credentials | None:
        """The HA1s of username@domain, None if unknown. Raises StoreError."""
        key = (username, domain)
        cache = self.cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        db = self._db or self._connect()
        try:
            row = db.execute(_LOOKUP, key).fetchone()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"{self.path}: {exc}") from None
        self.queries += 1
        if self.counts is not None:
            self.counts[I_DB_LOOKUPS] += 1
        found = Credentials(row[0], row[1]) if row else None
        if self.capacity:
            cache[key] = found
            if len(cache) > self.capacity:
                cache.popitem(last=False)
        return found

    def refresh(self) -> None:
        """Forget cached answers if the database changed since (cheap: one PRAGMA and
        one stat). Called from the worker's idle beat."""
        if self._db is None:
            return
        try:
            if os.stat(self.path).st_ino != self._inode:  # replaced: reopen
                self.close()
                self.cache.clear()
                return
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
        except (OSError, sqlite3.Error):
            self.close()
            self.cache.clear()
            return
        if version != self._version:
            self._version = version
            self.cache.clear()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
