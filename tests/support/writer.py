"""Test-only writer into a running node's tables, through its shared memory.

The proxy that creates dialogs comes in a later issue, and loading a million contacts
through sipp takes minutes, so tests write rows directly: attached to the node's
segments, as process slot SLOT_SCRIPT (free when no script is configured), with that
slot's lock word, undo area and replication ring, exactly as a node process would.
- `put`: local writes, pushed to the ring: the node replicates them like its own.
- `load`: remote-style rows (given version and origin) applied without a ring: the
  same rows can be loaded into several nodes, which then hold identical tables.
"""
from __future__ import annotations

import os
import socket
import time

import numpy as np

from fastcluster.shm import control as CT
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.contacts import CONTACT, FLAG_NAT
from fastcluster.shm.dialogs import pack_dialog
from fastcluster.shm.node import NodeMemory

SLOT = CT.SLOT_SCRIPT


class Writer:
    def __init__(self, shm_prefix: str) -> None:
        self.mem = NodeMemory.attach("/" + shm_prefix.lstrip("/"))
        self.me = T.lock_word(os.getpid(), SLOT)
        self.rings = {name: self.mem.ring(SLOT, name) for name in self.mem.tables}

    def close(self) -> None:
        self.mem.close()

    def put_dialog(self, callid: str, from_tag: str, timeout_s: int = 600,
                   deleted: bool = False) -> int:
        table = self.mem.dialogs
        row = np.zeros(table.row_size, dtype=np.uint8)
        now = int(time.time())
        pack_dialog(row, table.row_size, strings={"callid": callid.encode(),
                                                  "from_tag": from_tag.encode(),
                                                  "from_uri": b"sip:a@example.com",
                                                  "to_uri": b"sip:b@example.com"},
                    timeout=now + timeout_s, start=now, dlg_state=4, deleted=deleted)
        return table.put(row, self.rings["dialogs"], self.me, SLOT)

    def load_contacts(self, count: int, seed: int = 1, origin: int = 99,
                      version_ms: int | None = None, batch: int = 100_000,
                      received: tuple[str, int] | None = None) -> int:
        """Apply `count` synthetic contacts (well-formed rows with 60 bytes of strings,
        made by node `origin`); the same seed gives the same rows on every node. With
        `received` (an IPv4 address and port) they are NAT-ed contacts reached there."""
        version = (version_ms or int(time.time() * 1000)) << 16
        expires = int(time.time()) + 3600
        length = (8 + CONTACT.fixed_size + 60 + 7) & ~7
        done = 0
        for start in range(0, count, batch):
            n = min(batch, count - start)
            buf = np.zeros((n, length), dtype=np.uint8)
            idx = np.arange(start, start + n, dtype=np.uint64) + np.uint64(seed << 40)
            buf[:, :4] = np.frombuffer(np.uint32(length).tobytes(), np.uint8)
            buf[:, 4] = CONTACT.kind
            fixed = np.zeros(n, dtype=CONTACT.dtype)
            fixed["key"] = (idx * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(2)
            fixed["group"] = (idx * np.uint64(0xC2B2AE3D27D4EB4F)) | np.uint64(2)
            fixed["version"], fixed["origin"], fixed["state"] = version, origin, T.ST_LIVE
            fixed["expires"], fixed["cseq"], fixed["q"] = expires, 1, 0xFFFF
            fixed["lens"] = [20, 30, 10, 0, 0, 0]
            if received is not None:
                fixed["flags"], fixed["recv_family"] = FLAG_NAT, 4
                fixed["recv_port"] = received[1]
                fixed["recv_addr"] = socket.inet_aton(received[0]) + bytes(12)
            buf[:, 8:8 + CONTACT.fixed_size] = fixed.view(np.uint8).reshape(n, -1)
            blob = 8 + CONTACT.fixed_size
            buf[:, blob:blob + 60] = ord("x")
            buf[:, blob:blob + 8] = idx.view(np.uint8).reshape(n, 8)  # distinct AORs
            flat = buf.reshape(-1)
            counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
            got = 0
            while got < flat.shape[0]:
                got += int(T.apply_entries(self.mem.contacts.buf, flat[got:],
                                           flat.shape[0] - got, int(time.time()), 60, self.me,
                                           SLOT, R.no_ring(), T.NO_SEEN, counts))
                if counts[T.AC_CORRUPT]:
                    raise RuntimeError("writer produced a corrupt row")
            done += int(counts[T.AC_APPLIED])
        return done
