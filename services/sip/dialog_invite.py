"""The compiled dialog changes of an initial INVITE transaction (shm.dlg_invite): the
per-worker arrays their kernels read (our listeners, the *_sock, profiles and sharing
tag strings) and the calls. DialogTracker.admit and on_invite_reply_compiled use it;
whatever a kernel does not take goes the Python way (DialogTracker's admit after
parse_message, on_invite_reply). Neighbours: services.sip.dialogs,
services.sip.dialog_rules (sock_value), shm.dlg_invite.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from fastcluster.services.sip import dialog_rules as DR
from fastcluster.shm import dialogs as D
from fastcluster.shm import dlg_invite as DY
from fastcluster.shm import table as T

_EMPTY = np.zeros(0, dtype=np.uint8)
_CACHED = 65536  # strings kept as arrays, per kind, before the cache starts again


def _array(text: bytes) -> np.ndarray:
    return np.frombuffer(text, np.uint8).copy() if text else _EMPTY


class CompiledInvite:
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
        self.create_words = np.zeros(DY.C_WORDS, dtype=np.int64)
        self._socks: dict[tuple, np.ndarray] = {}
        self._texts: dict[str, np.ndarray] = {}

    def sock(self, listener: int, src: tuple | None) -> np.ndarray:
        """A leg's *_sock string (dialog_rules.sock_value), as an array (cached)."""
        key = (listener, src)
        got = self._socks.get(key)
        if got is None:
            label = self.labels[listener] if 0 <= listener < len(self.labels) else ""
            text = DR.sock_value(label, src[:2] if src else None).encode() if label else b""
            if len(self._socks) > _CACHED:
                self._socks.clear()
            got = self._socks[key] = _array(text)
        return got

    def text(self, value: str) -> np.ndarray:
        """A string as an array (cached): the profile entries, the sharing tag."""
        got = self._texts.get(value)
        if got is None:
            if len(self._texts) > _CACHED:
                self._texts.clear()
            got = self._texts[value] = _array(value.encode())
        return got

    def create(self, data: np.ndarray, cseq: int, listener: int, src: tuple,
               profiles: str, shtag: str, unconfirmed_s: int, flags: int, creator: int
               ) -> tuple[int, int, int] | None:
        """The dialog of an initial INVITE (its bytes, uint8) created in one kernel
        call: (dlg_apply's result, the dialog's key, group), or None: nothing was done
        (not plain, or too long for the row), the Python way."""
        if not 0 <= listener < len(self.labels):
            return None
        store = self.store
        w = self.create_words
        now = time.time()
        w[DY.W_NOW_S], w[DY.W_NOW_MS] = int(now), int(now * 1000)
        w[DY.W_UNCONFIRMED_S], w[DY.W_CSEQ] = unconfirmed_s, cseq
        w[DY.W_FLAGS], w[DY.W_CREATOR] = flags, creator
        r = DY.dlg_invite_create(store.arena, store.ring, data,
                                 self.sock(listener, src[:2]), self.text(profiles),
                                 self.text(shtag), w, store.me, store.proc, store.patch,
                                 store.out)
        if r == D.IN_UNSURE:
            return None
        if r == T.E_BUSY:
            r = store.reapply(D.OP_CREATE)
        mask = 0xFFFF_FFFF_FFFF_FFFF
        return r, int(w[DY.W_KEY]) & mask, int(w[DY.W_GROUP]) & mask

    def change(self, data: np.ndarray, status: int, final_status: int, listener: int,
               src: tuple | None, lifetime_s: int, unconfirmed_s: int) -> tuple[int, int] | None:
        """The change a response to the INVITE makes, in one kernel call: (dlg_apply's
        result or IN_NONE, the operation), or None: nothing was done."""
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
