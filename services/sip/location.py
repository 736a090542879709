"""Location lookup for the proxy: the contacts of an AOR, read lock-free from the shared
contact table and decoded into `routing.Binding`s.

All contacts of an AOR are one group of the table (shm.table.table_group copies them
consistently, seqlock per row); this module only decodes the few fields routing needs,
with one precompiled struct per row instead of the MI's generic numpy decoder (a
lookup is on the path of every initial request). Neighbours: shm.contacts (layout),
shm.table (table_group), services.sip.routing (what is done with them).
"""
from __future__ import annotations

import socket
import struct

import numpy as np

from fastcluster.shm import table as T
from fastcluster.shm.contacts import CONTACT, S_INSTANCE, S_PATH, S_URI
from fastcluster.shm.hashing import group_hash_of
from fastcluster.services.sip.messages import split_values
from fastcluster.services.sip.routing import Binding

MAX_BINDINGS = 64
CACHE_ROWS = 65536  # decoded contacts kept per process (cleared when full)

_D = CONTACT.dtype
_FIELDS = ("expires", "state", "aux", "origin", "last_modified", "reg_id", "flags", "q",
           "recv_port", "recv_family")
_OFFSETS = [_D.fields[n][1] for n in _FIELDS]
_FORMATS = {"expires": "I", "state": "B", "aux": "B", "origin": "H", "last_modified": "I",
            "reg_id": "I", "flags": "I", "q": "H", "recv_port": "H", "recv_family": "B"}


def _struct() -> tuple[struct.Struct, list[str]]:
    """One struct reading the fields in offset order (padding as 'x')."""
    order = sorted(zip(_OFFSETS, _FIELDS))
    fmt = "<"
    pos = 0
    names = []
    for off, name in order:
        fmt += "x" * (off - pos) + _FORMATS[name]
        pos = off + struct.calcsize("<" + _FORMATS[name])
        names.append(name)
    return struct.Struct(fmt), names


_ROW, _NAMES = _struct()
_I = {n: i for i, n in enumerate(_NAMES)}
_ADDR = _D.fields["recv_addr"][1]
_LENS = CONTACT.lens_off
_NLENS = len(CONTACT.strings)
_LENS_FMT = struct.Struct(f"<{_NLENS}H")
_FIXED = CONTACT.fixed_size


class Location:
    """Lookups on one contact table (one per process: it owns the output buffer)."""

    def __init__(self, table_buf: np.ndarray) -> None:
        self.buf = table_buf
        h = table_buf[:T.HEADER_SIZE].view(np.int64)
        self.row = int(h[T.H_ROW])  # table_group writes one row body every row_size
        self.out = np.zeros(MAX_BINDINGS * self.row, dtype=np.uint8)
        self.mv = memoryview(self.out)
        self._cache: dict[bytes, Binding] = {}
        self._groups: dict[str, tuple[np.ndarray, np.uint64, int]] = {}  # AOR -> hash

    def lookup(self, aor: str) -> list[tuple[bytes, Binding]]:
        """Live (not tombstoned) contacts of `aor`, expired or not (routing filters),
        each with its row bytes (an identity that changes with every new version of
        the contact: callers key their own caches with it). Rows seen before are not
        decoded again."""
        hit = self._groups.get(aor)
        if hit is None:
            ident = aor.encode()
            if len(self._groups) > CACHE_ROWS:
                self._groups.clear()
            # a writable copy: the kernel signature warmed before fork (shm.warm)
            hit = self._groups[aor] = (np.frombuffer(ident, dtype=np.uint8).copy(),
                                       np.uint64(group_hash_of(ident)), len(ident))
        data, group, n_ident = hit
        n = T.table_group(self.buf, group, data, n_ident, True, self.out, MAX_BINDINGS)
        out = []
        mv = self.mv
        cache = self._cache
        for i in range(n):
            at = i * self.row
            used = _FIXED + sum(_LENS_FMT.unpack_from(mv, at + _LENS))
            raw = bytes(mv[at:at + used])
            b = cache.get(raw)
            if b is None:
                if len(cache) > CACHE_ROWS:
                    cache.clear()
                b = cache[raw] = self._decode(at)
            out.append((raw, b))
        return out

    def _decode(self, at: int) -> Binding:
        mv = self.mv
        v = _ROW.unpack_from(mv, at)
        lens = _LENS_FMT.unpack_from(mv, at + _LENS)
        pos = at + _FIXED
        strings = []
        for ln in lens:
            strings.append(bytes(mv[pos:pos + ln]).decode("utf-8", "surrogateescape"))
            pos += ln
        received = None
        fam = v[_I["recv_family"]]
        if fam == 4:
            received = (socket.inet_ntop(socket.AF_INET, bytes(mv[at + _ADDR:at + _ADDR + 4])),
                        v[_I["recv_port"]])
        elif fam == 6:
            received = (socket.inet_ntop(socket.AF_INET6,
                                         bytes(mv[at + _ADDR:at + _ADDR + 16])),
                        v[_I["recv_port"]])
        path = strings[S_PATH]
        return Binding(uri=strings[S_URI], path=tuple(split_values(path)) if path else (),
                       q=v[_I["q"]], flags=v[_I["flags"]], reg_id=v[_I["reg_id"]],
                       instance=strings[S_INSTANCE], received=received,
                       sock=v[_I["aux"]], origin=v[_I["origin"]],
                       expires=v[_I["expires"]], last_modified=v[_I["last_modified"]])

