"""The compiled dialog change of a response to an initial INVITE (shm.dlg_reply): the
per-worker arrays its kernel reads (our listeners, the callee_sock strings) and the
call. DialogTracker.on_invite_reply_compiled uses it; whatever the kernel does not
take goes to DialogTracker.on_invite_reply. Neighbours: services.sip.dialogs,
services.sip.dialog_rules (sock_value), shm.dlg_reply.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from fastcluster.services.sip import dialog_rules as DR
from fastcluster.shm import dlg_reply as DY
from fastcluster.shm import table as T

_EMPTY = np.zeros(0, dtype=np.uint8)


class CompiledReplies:
    def __init__(self, store: Any, mine: frozenset[tuple[str, int]], labels: list[str]
                 ) -> None:
        self.store = store
        self.labels = labels
        rows, text = [], b""
        for host, port in sorted(mine):
            h = host.encode()
            rows.append((len(text), len(h), port))
            text += h
        self.mine = np.array(rows or [(0, 0, -1)], dtype=np.int64).reshape(-1, DY.M_WORDS)
        self.mine_text = np.frombuffer(text or b"\0", dtype=np.uint8).copy()
        self.words = np.zeros(DY.W_WORDS, dtype=np.int64)
        self._socks: dict[tuple, np.ndarray] = {}

    def sock(self, listener: int, src: tuple | None) -> np.ndarray:
        """The callee_sock string on_invite_reply stores, as an array (cached)."""
        key = (listener, src)
        got = self._socks.get(key)
        if got is None:
            label = self.labels[listener] if 0 <= listener < len(self.labels) else ""
            text = DR.sock_value(label, src[:2] if src else None).encode() if label else b""
            if len(self._socks) > 65536:
                self._socks.clear()
            got = self._socks[key] = np.frombuffer(text, np.uint8).copy() if text else _EMPTY
        return got

    def change(self, data: np.ndarray, status: int, final_status: int, listener: int,
               src: tuple | None, lifetime_s: int, unconfirmed_s: int) -> tuple[int, int] | None:
        """(dlg_apply's result or IN_NONE, the operation), or None: nothing was done."""
        store = self.store
        w = self.words
        now = time.time()
        w[DY.W_STATUS], w[DY.W_FINAL], w[DY.W_NOW_S] = status, final_status, int(now)
        w[DY.W_LIFETIME_S], w[DY.W_UNCONFIRMED_S] = lifetime_s, unconfirmed_s
        w[DY.W_NOW_MS] = int(now * 1000)
        r = DY.dlg_invite_reply(store.arena, store.ring, data, self.mine, self.mine_text,
                                self.sock(listener, src), w, store.me, store.proc,
                                store.patch, store.out)
        if r == DY.IN_UNSURE:
            return None
        op = int(w[DY.W_OP])
        if r == T.E_BUSY:
            r = store.reapply(op)
            if r == T.E_TOO_LONG:
                return None  # nothing changed: the Python way's rules for it
        return r, op
