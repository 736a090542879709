"""Transaction timers, in the timer process: the wheel (shm.tmwheel), the actions timers
ask for, and the sweeps that keep the table honest.

Every TICK_S the wheel takes what the workers queued in their timer rings and fires the
rows that are due (one kernel call); most firings need no SIP message (a response
already stopped the retransmissions, a linger ended and the row is freed in the
kernel). The rest come back as action records: the row is read (seqlock) and
services.sip.tm.Sender sends the retransmission, the CANCEL, the 408 or the final
response again, from this process's copy of the SIP listeners. At start the wheel is
empty, so every row is re-armed from the table once; after that a slice of the table
per tick re-arms any row whose wheel entry went missing (a full ring, a writer killed
between its commit and its push) and `table_expire` frees rows whose timers all went
missing (a safety net, counted). When a timer sends an INVITE transaction's final
response upstream and it is a failure (the 408 of Timer B/C, or a stored failure of
another branch once the last one timed out), `on_invite_failed` gets the request:
dialog tracking deletes the INVITE's dialog then and there (workers.timer wires it to
services.sip.dialog_timer), as the workers do for a failure that arrives; and
`cancel_invite` CANCELs the pending branches of an INVITE whose early dialog
dlg_end_dlg ended (as a CANCEL from the caller would). Neighbours:
workers.timer (the loop), shm.tmwheel, services.sip.tm.
"""
from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastcluster.core.sip import SipParseError, parse_message, tag_of
from fastcluster.core.stats import INDEX
from fastcluster.services.sip.tm import Listener, Sender, params_from
from fastcluster.shm import table as T
from fastcluster.shm import tmring as TR
from fastcluster.shm import tmwheel as W
from fastcluster.shm import transactions as X
from fastcluster.shm.txwork import TxOut, TxWork, address_of

log = logging.getLogger("tm")

TICK_S = W.TICK_MS / 1000
MAX_FIRE = 200_000  # entries per tick at most (the rest wait a tick)
MAX_ACTIONS = 4096
SWEEP_PASS_S = 10.0  # re-arm check over the whole table
GRACE_MS = 2000  # an entry this overdue went missing (the wheel serves every tick)
I_REARMED = INDEX["tm:timer_rearmed"]

_D = X.TRANSACTION.dtype
# status words of the timer's slot used here (shm.control status area; natping has 0-6)
S_WHEEL_ENTRIES, S_WHEEL_DROPS, S_FIRED, S_STALE = 8, 9, 10, 11


def _fixed_fields() -> tuple[struct.Struct, list[str]]:
    names = ["flags", "status", "src_port", "in_sock", "src_family", "src_addr"]
    fmts = {"flags": "I", "status": "H", "src_port": "H", "in_sock": "B", "src_family": "B",
            "src_addr": "16s"}
    order = sorted((_D.fields[n][1], n) for n in names)
    fmt = "<"
    pos = 0
    out = []
    for off, name in order:
        fmt += "x" * (off - pos) + fmts[name]
        pos = off + struct.calcsize("<" + fmts[name])
        out.append(name)
    return struct.Struct(fmt), out


_ROW, _ROW_NAMES = _fixed_fields()
_RI = {n: i for i, n in enumerate(_ROW_NAMES)}
_LENS = struct.Struct("<4H")


class TmTimer:
    def __init__(self, timer: Any) -> None:
        mem = timer.mem
        cfg = timer.cfg
        self.table = mem.transactions
        self.arena = self.table.buf
        self.rings = TR.all_rings(mem.tmrings)
        self.params = params_from(cfg)
        self.stats = timer.stats
        self.status = mem.control.status[timer.slot]
        self.me, self.proc = timer.me, timer.slot
        now = int(time.monotonic() * 1000)
        self.wheel = W.wheel_new(2 * self.table.capacity + (1 << 16), now)
        self.out = np.zeros((MAX_ACTIONS, W.ACTION_WORDS), dtype=np.int64)
        self.readbuf = np.zeros(self.table.row_size, dtype=np.uint8)
        self.listeners = [Listener(s.index, s.host, s.port) for s in timer.ctx.sip]
        self.socks: dict[int, socket.socket] = {}
        for s in timer.ctx.sip:
            sock = s.sock
            if sock is None:  # reuseport: send from the listener's address, any port
                sock = socket.socket(s.family, socket.SOCK_DGRAM)
                sock.bind((s.host, 0))
            self.socks[s.index] = sock
        self.sender = Sender(self.listeners, lambda i: self.socks.get(i) or self.socks[0],
                             cfg["clusterer.node_id"], self.stats)
        self.sweep_region = 0
        # the request of an INVITE whose final upstream, sent by a timer, is >= 300
        self.on_invite_failed: Callable[[bytes], None] | None = None
        self.work = TxWork(self.arena, mem.tmrings, timer.slot, timer.me, self.params,
                           self.stats)  # for the CANCELs dlg_end_dlg asks for
        self.apply_config(cfg)
        started = time.perf_counter()
        rearmed = self.sweep(0, self.table.nregions, -1)
        if rearmed:
            log.info("re-armed the timers of %d transactions in %.3f s", rearmed,
                     time.perf_counter() - started)

    def apply_config(self, cfg: Any) -> None:
        self.params[:] = params_from(cfg)
        self.sender.server = [("Server", cfg["sip.server_header"])] \
            if cfg["sip.server_header"] else []

    def sweep(self, start: int, nregions: int, grace_ms: int) -> int:
        now = int(time.monotonic() * 1000)
        region, armed = start, 0
        end = start + nregions
        while region < end:
            nxt, n = W.tm_sweep(self.arena, self.wheel, region, end - region, now, grace_ms,
                                self.me)
            armed += n
            if nxt < 0:  # a busy lock: yield and go on from where it stopped
                time.sleep(0)
                continue
            if nxt == 0:
                break
            region = nxt
        return armed

    def tick(self) -> bool:
        """Serve due timers; returns True if more are due right away."""
        now = int(time.monotonic() * 1000)
        nact, _, more = W.tm_tick(self.arena, self.rings, self.wheel, self.params, now,
                                  int(time.time()), self.me, self.proc, self.out, MAX_FIRE)
        for k in range(nact):
            try:
                self._act(self.out[k])
            except Exception:  # noqa: BLE001 - one bad row must not stop the timers
                log.exception("transaction timer action failed")
        # a slice of the re-arm sweep
        per_tick = max(1, int(self.table.nregions * TICK_S / SWEEP_PASS_S) + 1)
        region = self.sweep_region
        nxt, armed = W.tm_sweep(self.arena, self.wheel, region, per_tick, now, GRACE_MS,
                                self.me)
        if nxt >= 0:
            self.sweep_region = nxt
        if armed:
            self.stats[I_REARMED] += armed
        return more

    def _strings(self, slot: int, key: int) -> list[bytes] | None:
        """The strings of row `slot` if it still holds `key` (seqlock read)."""
        if X.tx_read(self.arena, slot, np.uint64(key), self.readbuf) == 0:
            return None
        mv = memoryview(self.readbuf)
        pos = X.TRANSACTION.fixed_size
        out = []
        for ln in _LENS.unpack_from(mv, X.O_LENS):
            out.append(bytes(mv[pos:pos + ln]))
            pos += ln
        return out

    def cancel_invite(self, key_high: int, callid: str, from_tag: str) -> bool:
        """CANCEL the pending branches of the INVITE transaction whose key is key_high
        but its top bit and low 4 bits (what dialog tracking keeps of it), whose request has
        this Call-ID and From tag: as if its caller had sent the CANCEL (the callees
        answer 487, which goes upstream and ends the early dialog). Whether it was
        found; CANCELs already sent are not sent again."""
        for low in range(32):
            key = key_high | (low & 15) | (low >> 4) << 63
            if key < 2:
                continue
            slot = int(T.table_find(self.arena, np.uint64(key), np.uint64(key)))
            strings = self._strings(slot, key) if slot >= 0 else None
            if strings is None:
                continue
            try:
                req = parse_message(strings[X.S_REQUEST])
            except SipParseError:
                continue
            if req.method != "INVITE" or req.call_id != callid or tag_of(req.from_) != from_tag:
                continue
            r = self.work.request(X.K_CANCEL, strings[X.S_IDENT], b"", b"", b"", 0, 0,
                                  req.cseq_num, 0, ("0.0.0.0", 0))
            if r != X.R_MATCH:
                return False
            o = self.work.out()
            if o.actions & X.A_CANCEL:
                _, request, targets = self.work.out_strings(o)
                self.sender.run(X.A_CANCEL, o, o.key, b"", request, targets, req=req)
            return True
        return False

    def _act(self, rec: np.ndarray) -> None:
        slot, key = int(rec[W.A_SLOT]), int(rec[W.A_KEY]) & ((1 << 64) - 1)
        n = X.tx_read(self.arena, slot, np.uint64(key), self.readbuf)
        if n == 0:
            return  # the row ended meanwhile
        mv = memoryview(self.readbuf)
        v = _ROW.unpack_from(mv, 0)
        lens = _LENS.unpack_from(mv, X.O_LENS)
        pos = X.TRANSACTION.fixed_size
        strings = []
        for ln in lens:
            strings.append(bytes(mv[pos:pos + ln]))
            pos += ln
        flags = v[_RI["flags"]]
        upstream = address_of(v[_RI["src_family"]], v[_RI["src_addr"]], v[_RI["src_port"]])
        o = TxOut(X.R_MATCH, slot, key, int(rec[W.A_ACTIONS]), int(rec[W.A_STATUS]),
                  int(rec[W.A_CANCEL]), int(rec[W.A_START]), v[_RI["in_sock"]], upstream,
                  lens[X.S_RESPONSE], lens[X.S_REQUEST], lens[X.S_TARGETS], 0, flags, 0,
                  int(rec[W.A_RETRANS]), int(rec[W.A_RETRANS_CANCEL]))
        response = strings[X.S_RESPONSE] if flags & X.F_RESP else b""
        self.sender.run(o.actions, o, key, response, strings[X.S_REQUEST],
                        strings[X.S_TARGETS])
        if o.actions & X.A_FIRST_FINAL and o.status >= 300 and flags & X.F_INVITE and \
                self.on_invite_failed is not None:
            self.on_invite_failed(strings[X.S_REQUEST])

    def publish(self) -> None:
        """Wheel figures into the timer's status words (read by the MI: t_stats)."""
        w = self.wheel
        st = self.status
        st[S_WHEEL_ENTRIES], st[S_WHEEL_DROPS] = w[W.M_USED], w[W.M_DROPS]
        st[S_FIRED], st[S_STALE] = w[W.M_FIRED], w[W.M_STALE]


def wheel_status(control: Any) -> dict[str, int]:
    from fastcluster.shm.control import SLOT_TIMER

    st = control.status[SLOT_TIMER]
    return {"wheel_entries": int(st[S_WHEEL_ENTRIES]), "wheel_drops": int(st[S_WHEEL_DROPS]),
            "timers_fired": int(st[S_FIRED]), "stale_entries": int(st[S_STALE])}
