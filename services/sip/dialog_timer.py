"""Dialog timers and profile recounts, in the timer process.

Only the node that runs a dialog's timers acts on it: the node where the dialog's
sharing tag is active (shm.shtags), or, for a dialog without a tag, the node that
created it. For those dialogs, once per SCAN_S (a slice of the table each tick):
- lifetime over, or an end asked for (dlg_end_dlg: F_END): a confirmed dialog gets a
  BYE to each leg, as if from the other party, and is deleted (replicated: every
  node drops it); an unconfirmed one at its lifetime is only deleted (Timer C answered
  its INVITE). An early (or unconfirmed) dialog dlg_end_dlg ended gets no BYE -- no
  leg has a dialog yet -- but, as OpenSIPS's dlg_end_dlg does (t_cancel_trans on its
  initial transaction), its INVITE is CANCELled: by the node that created it, which
  holds the transaction (services.sip.tm_timer.cancel_invite, found through the key
  kept in the row's per-node word: services.sip.dialogs.bind_invite), whichever node
  runs its timers; the callees' 487 goes upstream and deletes the dialog. If that
  node is gone, its transaction went with it: the dialog ends at its lifetime;
- every [dialog] ping_interval_s: an OPTIONS to each leg of a confirmed dialog; a leg
  whose previous ping is still unanswered, or that answered 481 or 408, ends it the
  same way (the workers note the replies in the row's per-node word).
Requests of our own (pings, BYEs) go where the proxy would send an in-dialog request
to that leg -- its route set's first hop, else the address its messages came from
(NAT), else its Contact (dialog_rules.leg_destination) -- from the listener the leg
used (its `*_sock`), with that listener in the Via, so the replies come back there.
A BYE goes once (no retransmission): its replies are only counted.
An INVITE the timer process itself answers with a failure (tm_timer: the 408 of Timer
B/C) has its dialog deleted at once (`invite_failed`), wherever its timers run.

The profile counts of this node (shm.profiles) are recounted from the table every
RECOUNT_S, and at once when a tag changes state here, over a slice of the table per
tick. Neighbours: workers.timer (the loop), shm.dialogs (dlg_due, dlg_apply),
shm.profiles (prof_begin/scan/end), services.sip.dialogs (DialogStore),
services.sip.dialog_rules (requests).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastcluster.core.config import Config
from fastcluster.core.sip import SipParseError, parse_message, tag_of
from fastcluster.core.stats import INDEX
from fastcluster.services.sip import dialog_rules as DR
from fastcluster.services.sip import dialogs as DL
from fastcluster.services.sip.dialogs import DialogStore
from fastcluster.services.sip.dns import Resolver
from fastcluster.shm import dialogs as D
from fastcluster.shm import profiles as PF

log = logging.getLogger("dialog")

SCAN_S = 1.0  # every live dialog is looked at this often
RECOUNT_S = 1.0  # profile counts are rebuilt from the table this often
MAX_DUE = 1024  # due dialogs handled per tick at most (the rest next tick)
_I = INDEX
I_EXPIRED, I_FAILED = _I["dialog:expired_dialogs"], _I["dialog:failed_dialogs"]
I_BY_MI, I_BY_PING = _I["dialog:ended_by_mi"], _I["dialog:ended_by_ping"]
I_BYES, I_PINGS = _I["dialog:byes_sent"], _I["dialog:pings_sent"]
I_VALUES_REFUSED = _I["dialog:profile_values_refused"]


class DialogTimer:
    def __init__(self, timer: Any, sock_of: Any, listeners: list[tuple[str, int]],
                 tick_s: float) -> None:
        mem = timer.mem
        self.stats = timer.stats
        self.store = DialogStore(mem.dialogs, timer.rings["dialogs"], timer.me, timer.slot,
                                 timer.stats)
        self.arena = mem.dialogs.buf
        self.nslots = mem.dialogs.nslots
        self.row_size = mem.dialogs.row_size
        self.tags = mem.shtags
        self.profiles = mem.profiles
        self.node = timer.cfg["clusterer.node_id"]
        self.sock_of = sock_of
        self.via_hosts = [DR.hostport(h, p) for h, p in listeners]
        self.by_label = {f"udp:{DR.hostport(h, p)}": i for i, (h, p) in enumerate(listeners)}
        self.resolver = Resolver()
        self.ticks = max(1, int(SCAN_S / tick_s))
        self.rows = np.zeros(MAX_DUE * self.row_size, dtype=np.uint8)
        self.slots = np.zeros(MAX_DUE, dtype=np.int64)
        self.cursor = 0
        self.pass_pings = False
        self.next_ping = 0.0
        self.serial = 0
        # (key_high, Call-ID, From tag) -> CANCEL an INVITE transaction of this node
        self.cancel_invite: Callable[[int, str, str], bool] | None = None
        # profile recount
        self.scratch = np.zeros(self.profiles.nslots, dtype=np.int64)
        self.row8 = np.zeros(self.row_size, dtype=np.uint8)
        self.name8 = np.zeros(PF.NAME_BYTES, dtype=np.uint8)
        self.recount_at = -1  # slot the recount under way is at (-1: none)
        self.next_recount = 0.0
        self.tag_gen = -1
        self.active8 = np.zeros(1, dtype=np.uint8)
        self.nactive = 0
        self.apply_config(timer.cfg)

    def apply_config(self, cfg: Config) -> None:
        self.ping_s = cfg["dialog.ping_interval_s"]
        self.cluster = cfg.replication_cluster("dialog.replication_cluster") or \
            cfg["clusterer.cluster_id"][0]

    def invite_failed(self, request: bytes) -> None:
        """tm_timer answered an INVITE (as received: `request`) with a failure: an
        initial INVITE's dialog goes (OP_FAIL: unless a 2xx confirmed it)."""
        try:
            msg = parse_message(request)
        except SipParseError:
            return
        if tag_of(msg.to):
            return  # a re-INVITE: its failure does not end the dialog
        if self.store.fail(msg.call_id.encode(), tag_of(msg.from_).encode()):
            self.stats[I_FAILED] += 1

    def runs(self, row: dict, active: frozenset[str]) -> bool:
        """Whether this node runs a dialog's timers."""
        return row["shtag"] in active if row["shtag"] else row["creator"] == self.node

    # ---------------------------------------------------------------- the tick

    def tick(self, now: float) -> None:
        if self.tags.generation != self.tag_gen:
            self.tag_gen = self.tags.generation
            active = sorted(self.tags.active(self.cluster))
            self.active8 = np.frombuffer(b"".join(a.encode() + b"\0" for a in active) or
                                         b"\0", dtype=np.uint8).copy()
            self.nactive = len(active)
            self.recount_at = -1
            self.next_recount = 0.0  # counts move with the tags: recount at once
        self._recount(now)
        self._timers(now)

    def _timers(self, now: float) -> None:
        if self.cursor == 0:
            self.pass_pings = bool(self.ping_s) and now >= self.next_ping
            if self.pass_pings:
                self.next_ping = now + self.ping_s
        end = self.cursor + -(-self.nslots // self.ticks)
        now_s = int(time.time())
        active = self.tags.active(self.cluster)
        while self.cursor < end:
            nxt, n = D.dlg_due(self.arena, self.cursor, end, now_s, self.pass_pings,
                               self.rows, self.slots, MAX_DUE)
            self.cursor = int(nxt)
            for row in D.DIALOG.decode(self.rows, int(n), self.row_size):
                if row["flags"] & D.F_END and row["dlg_state"] < D.DLG_CONFIRMED_NA and \
                        row["creator"] == self.node:
                    self._cancel_early(row)
                if self.runs(row, active):
                    self._due_safely(row, now_s)
            if n < MAX_DUE:
                break
        if self.cursor >= self.nslots:
            self.cursor = 0

    def _due_safely(self, row: dict, now_s: int) -> None:
        """_due, and a dialog whose timers fail is ended here rather than failing the
        timer process (which also runs transactions, expiry and NAT pings) each tick."""
        try:
            self._due(row, now_s)
        except Exception:  # noqa: BLE001 - whatever a hostile row holds
            log.exception("dialog %r: its timers failed; it is removed", row.get("callid"))
            try:
                self.store.apply(D.OP_DELETE, {"callid": row["callid"].encode(),
                                               "from_tag": row["from_tag"].encode()})
                self.stats[I_FAILED] += 1
            except Exception:  # noqa: BLE001
                log.exception("dialog %r could not be removed", row.get("callid"))

    def _cancel_early(self, row: dict) -> None:
        """dlg_end_dlg on an early dialog made here: CANCEL its INVITE's branches."""
        word = int(D.dlg_ping_mark(self.arena, np.uint64(row["key"]), np.uint64(row["group"]),
                                   0, 0))
        high = word & DL.TX_KEY_MASK if word >= 0 else 0
        if high and self.cancel_invite is not None and \
                self.cancel_invite(high, row["callid"], row["from_tag"]):
            return
        log.info("dialog %s: dlg_end_dlg on an early dialog whose INVITE is not pending "
                 "here any more; it ends with its INVITE or at its lifetime", row["callid"])

    def _due(self, row: dict, now_s: int) -> None:
        ids = {"callid": row["callid"].encode(), "from_tag": row["from_tag"].encode()}
        confirmed = row["dlg_state"] >= D.DLG_CONFIRMED_NA
        if row["flags"] & D.F_END and not confirmed and row["timeout"] > now_s:
            return  # early: its creator CANCELs the INVITE (_cancel_early); its final ends it
        if row["flags"] & D.F_END or row["timeout"] <= now_s:
            if not confirmed:
                if self.store.apply(D.OP_FAIL, ids) >= 0:
                    self.stats[I_FAILED] += 1
                return
            self.end(row, ids, I_BY_MI if row["flags"] & D.F_END else I_EXPIRED)
            return
        key, group = np.uint64(row["key"]), np.uint64(row["group"])
        word = int(D.dlg_ping_mark(self.arena, key, group, 0, 0))
        if word < 0:
            return
        if word & (D.PING_CALLER_481 | D.PING_CALLEE_481 | D.PING_CALLER_OUT |
                   D.PING_CALLEE_OUT):
            self.end(row, ids, I_BY_PING)
            return
        out = 0
        for callee, flag, bit in ((False, D.F_PING_CALLER, D.PING_CALLER_OUT),
                                  (True, D.F_PING_CALLEE, D.PING_CALLEE_OUT)):
            if row["flags"] & flag and self.send(row, callee, "OPTIONS", "p"):
                self.stats[I_PINGS] += 1
                out |= bit
        if out:
            D.dlg_ping_mark(self.arena, key, group, out, 0)

    def end(self, row: dict, ids: dict[str, bytes], counter: int) -> None:
        """BYE to both legs, then the dialog deleted (everywhere)."""
        for callee in (True, False):
            if self.send(row, callee, "BYE", "b"):
                self.stats[I_BYES] += 1
        if self.store.apply(D.OP_DELETE, ids) >= 0:
            self.stats[counter] += 1

    def send(self, row: dict, callee: bool, method: str, kind: str) -> bool:
        leg = DR.leg_of(row, callee)
        label, source = DR.split_sock(row["callee_sock" if callee else "caller_sock"])
        hp = DR.leg_destination(leg, source)
        sock = self.by_label.get(label, 0)
        dst = self.resolver.address(*hp) if hp is not None else None
        if dst is None:
            log.info("dialog %s: no address for the %s leg (%s)", row["callid"],
                     "callee" if callee else "caller", DR.next_hop(leg))
            return False
        self.serial += 1
        branch = DR.own_branch(kind, callee, row["key"], self.serial)
        try:
            data = DR.in_dialog_request(method, leg, row["callid"], self.via_hosts[sock],
                                        branch)
            self.sock_of(sock).sendto(data, dst)
        except (OSError, ValueError, OverflowError) as exc:
            log.info("dialog %s: %s to the %s leg not sent: %s", row["callid"], method,
                     "callee" if callee else "caller", exc)
            return False
        return True

    # ---------------------------------------------------------------- profiles

    def _recount(self, now: float) -> None:
        if self.recount_at < 0:
            if now < self.next_recount:
                return
            self.next_recount = now + RECOUNT_S
            PF.prof_begin(self.profiles.buf, self.scratch)
            self.recount_at = 0
        end = self.recount_at + -(-self.nslots // self.ticks)
        nxt, _, refused = PF.prof_scan(self.arena, self.profiles.buf, self.recount_at,
                                       end - self.recount_at, self.active8, self.nactive,
                                       self.node, self.scratch, self.row8, self.name8)
        if refused:
            self.stats[I_VALUES_REFUSED] += int(refused)
        self.recount_at = int(nxt)
        if self.recount_at >= self.nslots:
            PF.prof_end(self.profiles.buf, self.scratch)
            self.recount_at = -1
