"""Plain-Python reference of the table kernels (shm.table, shm.hashing).

Same segment layout and same algorithm (linear probing from the home slot, EMPTY/FREE
markers, versions, tombstones), written for clarity with Python ints and no numba, so
tests can run an operation on two copies of a table -- kernel on one, reference on the
other -- and compare the bytes. Locks, seqlocks and undo areas are concurrency
machinery the reference leaves out (single-threaded), so they are not compared.
"""
from __future__ import annotations

import numpy as np

from fastcluster.shm import table as T
from fastcluster.shm.ring import ENTRY_HEADER
from fastcluster.shm.rows import ROW_HEAD

M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    x &= M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def hash_bytes(data: bytes, seed: int) -> int:
    n = len(data)
    if n >= 8:  # whole words, the last one ending at the last byte
        words = [data[i:i + 8] for i in range(0, n - 8, 8)] + [data[n - 8:]]
    else:
        words = [data]  # zero-padded
    h = seed ^ 0x9E3779B185EBCA87
    for word in words:
        h = (h + int.from_bytes(word, "little") * 0xC2B2AE3D27D4EB4F) & M64
        h = (((h << 31) | (h >> 33)) & M64) * 0x9E3779B185EBCA87 & M64
    return mix64(h ^ n)


def row_checksum(key: int, version: int, origin: int) -> int:
    return mix64(key ^ mix64((version & M64) ^ (origin << 48)))


class RefTable:
    def __init__(self, arena: np.ndarray) -> None:
        h = arena[:T.HEADER_SIZE].view(np.int64)
        self.h = h
        self.nslots, self.nhome, self.row = int(h[T.H_NSLOTS]), int(h[T.H_NHOME]), int(h[T.H_ROW])
        self.body = self.row - ROW_HEAD
        self.fixed, self.lens_off, self.nlens = int(h[T.H_FIXED]), int(h[T.H_LENS_OFF]), \
            int(h[T.H_NLENS])
        self.capacity, self.node_id, self.kind = int(h[T.H_CAPACITY]), int(h[T.H_NODE_ID]), \
            int(h[T.H_KIND])
        ok = int(h[T.H_OFF_KEYS])
        self.keys = arena[ok:ok + 8 * self.nslots].view(np.uint64)
        orw = int(h[T.H_OFF_ROWS])
        self.rows = arena[orw:orw + self.row * self.nslots]

    # -- field access
    def rowbytes(self, s: int) -> bytes:
        """The row body of slot s (the head is per-node bookkeeping)."""
        base = s * self.row + ROW_HEAD
        return bytes(self.rows[base:base + self.body])

    @staticmethod
    def f(row: bytes, off: int, size: int) -> int:
        return int.from_bytes(row[off:off + size], "little")

    def group_of(self, s: int) -> int:
        return self.f(self.rowbytes(s), T.R_GROUP, 8)

    def used(self, row: bytes) -> int:
        return sum(self.f(row, self.lens_off + 2 * i, 2) for i in range(self.nlens))

    def seg(self, row: bytes, index: int) -> bytes:
        off = self.fixed + sum(self.f(row, self.lens_off + 2 * i, 2) for i in range(index))
        return row[off:off + self.f(row, self.lens_off + 2 * index, 2)]

    def home(self, group: int) -> int:
        return ((group >> 32) * self.nhome) >> 32

    def count(self, name: int, delta: int) -> None:
        self.h[name] += delta

    # -- operations
    def find(self, key: int, group: int) -> int:
        s = self.home(group)
        while s < self.nslots:
            k = int(self.keys[s])
            if k == 0:
                return T.E_NOT_FOUND
            if k == key and self.group_of(s) == group:
                return s
            s += 1
        return T.E_NOT_FOUND

    def _probe(self, key: int, group: int) -> tuple[int, int, bool]:
        """(found, first free, ran off the end)."""
        s, free = self.home(group), -1
        while s < self.nslots:
            k = int(self.keys[s])
            if k == 0:
                return -1, free if free >= 0 else s, False
            if k == 1:
                free = s if free < 0 else free
            elif k == key and self.group_of(s) == group:
                return s, free, False
            s += 1
        return -1, free, True

    def _write(self, s: int, row: bytes) -> None:
        old_key = int(self.keys[s])
        old_state = self.f(self.rowbytes(s), T.R_STATE, 1) if old_key > 1 else 0
        base = s * self.row + ROW_HEAD
        self.rows[base:base + len(row)] = np.frombuffer(row, np.uint8)
        new_state = row[T.R_STATE]
        if old_state != new_state:
            for st, d in ((old_state, -1), (new_state, 1)):
                if st == T.ST_LIVE:
                    self.count(T.H_LIVE, d)
                elif st == T.ST_TOMB:
                    self.count(T.H_TOMB, d)
        if old_key == 1:
            self.count(T.H_FREE, -1)
        if old_key != self.f(row, T.R_KEY, 8):
            self.rows[s * self.row + 8:s * self.row + 16] = 0  # local data reset
        self.keys[s] = self.f(row, T.R_KEY, 8)

    def put(self, row: bytes, now_ms: int) -> int:
        row = row[:self.body]
        if self.used(row) > self.body - self.fixed:
            return T.E_TOO_LONG
        key, group = self.f(row, T.R_KEY, 8), self.f(row, T.R_GROUP, 8)
        found, free, off_end = self._probe(key, group)
        if off_end:
            return T.E_FULL
        version = now_ms << 16
        if found >= 0:
            version = max(version, self.f(self.rowbytes(found), T.R_VERSION, 8) + 1)
            target = found
        elif row[T.R_STATE] == T.ST_TOMB:
            return T.E_NOT_FOUND
        elif int(self.h[T.H_LIVE]) + int(self.h[T.H_TOMB]) >= self.capacity or free < 0:
            return T.E_FULL
        else:
            target = free
        b = bytearray(row)
        b[T.R_VERSION:T.R_VERSION + 8] = version.to_bytes(8, "little")
        b[T.R_ORIGIN:T.R_ORIGIN + 2] = self.node_id.to_bytes(2, "little")
        self._write(target, bytes(b))
        return target

    def apply(self, entry: bytes, now_s: int, ttl: int) -> int:
        row = entry[ENTRY_HEADER:]
        if len(row) < self.fixed or self.fixed + self.used(row) > len(row):
            return T.E_CORRUPT
        used = self.used(row)
        if used > self.body - self.fixed:
            return T.E_TOO_LONG
        state = row[T.R_STATE]
        key, group = self.f(row, T.R_KEY, 8), self.f(row, T.R_GROUP, 8)
        if state not in (T.ST_LIVE, T.ST_TOMB) or key <= 1:
            return T.E_CORRUPT
        version, origin = self.f(row, T.R_VERSION, 8), self.f(row, T.R_ORIGIN, 2)
        expires = self.f(row, T.R_EXPIRES, 4)
        found, free, off_end = self._probe(key, group)
        if off_end:
            return T.E_FULL
        if found >= 0:
            old = self.rowbytes(found)
            sv, so = self.f(old, T.R_VERSION, 8), self.f(old, T.R_ORIGIN, 2)
            newer = (version, origin) > (sv, so)
            oo, si = int(self.h[T.H_ORDER_OFF]), int(self.h[T.H_ORDER_STR])
            if oo and self.seg(row, si) and self.seg(row, si) == self.seg(old, si) and \
                    self.f(row, oo, 4) != self.f(old, oo, 4):
                newer = self.f(row, oo, 4) > self.f(old, oo, 4)  # the record's own order
            if not newer:
                return T.E_STALE
            target = found
        elif (state == T.ST_LIVE and expires <= now_s) or \
                (state == T.ST_TOMB and expires + ttl <= now_s):
            return T.E_STALE
        elif int(self.h[T.H_LIVE]) + int(self.h[T.H_TOMB]) >= self.capacity or free < 0:
            return T.E_FULL
        else:
            target = free
        self._write(target, row[:self.fixed + used])
        return target

    def group(self, group: int, ident: bytes, live_only: bool) -> list[bytes]:
        out, s = [], self.home(group)
        while s < self.nslots and int(self.keys[s]) != 0:
            if int(self.keys[s]) > 1 and self.group_of(s) == group:
                row = self.rowbytes(s)
                if self.seg(row, 0) == ident and (not live_only or row[T.R_STATE] == T.ST_LIVE):
                    out.append(row)
            s += 1
        return out

    def scan(self, live_only: bool) -> list[tuple[int, bytes]]:
        return [(s, self.rowbytes(s)) for s in range(self.nslots)
                if int(self.keys[s]) > 1 and
                (not live_only or self.rowbytes(s)[T.R_STATE] == T.ST_LIVE)]

    def expire(self, now_s: int, ttl: int) -> list[int]:
        out = [0, 0, 0]
        region = 1 << int(self.h[T.H_SHIFT])
        for lo in range(0, self.nslots, region):
            hi = min(self.nslots, lo + region)
            for s in range(lo, hi):
                if int(self.keys[s]) <= 1:
                    continue
                row = self.rowbytes(s)
                st, ex = row[T.R_STATE], self.f(row, T.R_EXPIRES, 4)
                if (st == T.ST_LIVE and ex <= now_s) or (st == T.ST_TOMB and ex + ttl <= now_s):
                    self.keys[s] = 1
                    self.count(T.H_FREE, 1)
                    self.count(T.H_LIVE if st == T.ST_LIVE else T.H_TOMB, -1)
                    out[0 if st == T.ST_LIVE else 1] += 1
            for s in range(hi - 1, lo - 1, -1):
                if int(self.keys[s]) == 1 and (s + 1 == self.nslots or int(self.keys[s + 1]) == 0):
                    self.keys[s] = 0
                    self.count(T.H_FREE, -1)
                    out[2] += 1
        return out

    def digest(self, live_only: bool) -> tuple[int, int]:
        n, d = 0, 0
        for s, row in self.scan(live_only):
            n += 1
            d = (d + row_checksum(int(self.keys[s]), self.f(row, T.R_VERSION, 8),
                                  self.f(row, T.R_ORIGIN, 2))) & M64
        return n, d
