"""Dialog tracking in a SIP worker: the proxy's DialogHook (services.sip.proxy).

An initial INVITE the proxy is about to relay is *admitted* here: its dialog is created
in the shared dialog table (state unconfirmed, the caller's side: tags, URIs, Contact,
route set, CSeq) and counted in its profiles -- or refused, before any branch goes out,
when a profile limit would be passed (403), the table is full (503) or the strings do
not fit (500). A profile value that cannot be counted (the counters are full, the
value too long) refuses the call when the profile has a limit (fail closed: 503, or
500 for a value too long to ever fit), and is only counted when it has none.
Responses to the INVITE make it early (1xx with a To tag) or confirmed (2xx: the
callee's side, and its lifetime [dialog] default_timeout_s from now). Whenever the
INVITE transaction ends upstream with a final >= 300 the dialog is deleted: a received
failure (on_invite_reply), a response the proxy makes itself after admitting it
(`invite_failed`: a 5xx for a full transaction table, the final again to a
retransmission of a failed INVITE) and the timer process's 408 (tm_timer, through
`fail_invite`). Profile counts follow the table at the timer's next recount.
In-dialog requests move it along: the ACK confirms it, a BYE deletes it, others raise
the CSeqs -- each only for the dialog of its callee: a forked INVITE answered 2xx by
two callees makes two dialogs (RFC 3261 §13.2.2.4); the row keeps the first 2xx's To
tag, the other dialog (its ACK, re-INVITEs, BYE) passes through the proxy untracked
and cannot change or end the row (shm.dialogs E_OTHER_CALLEE). A BYE in an early
dialog does not delete the row either: the INVITE's final response decides (another
branch may still answer 2xx). Callee strings that do not fit the row are never cut: a
1xx leaves the row as it was, a 2xx ends its tracking (dialog:callee_too_long, logged;
the call itself goes on through the Record-Route). Every change is a `dlg_apply` kernel
call (shm.dialogs): merged under the row's lock and replicated.

A node that did not route a call may get its in-dialog requests (the routing node
died, its address moved): the proxy asks `owns` whether a live dialog is known here
before it routes such a request for the dead node. Replies to the BYEs and pings this
node sends itself (services.sip.dialog_timer) are taken by `on_own_reply`.
Neighbours: services.sip.proxy (the hook's caller), services.sip.dialog_rules (pure
rules), shm.dialogs, shm.profiles, shm.shtags.
"""
from __future__ import annotations

import logging
import struct
import time
from typing import Any, Callable

import numpy as np

from fastcluster.core.config import Config
from fastcluster.core.sip import SipMessage, SipParseError, parse_name_addr, tag_of
from fastcluster.core.stats import INDEX
from fastcluster.services.sip import dialog_rules as DR
from fastcluster.services.sip import messages as M
from fastcluster.services.sip import routing as RT
from fastcluster.services.sip.dialog_invite import CompiledInvite
from fastcluster.shm import dialogs as D
from fastcluster.shm import table as T
from fastcluster.shm.hashing import group_hash_of
from fastcluster.shm.profiles import MAX_NAME, REMOTE_SCOPE, name_of
from fastcluster.shm.tables import retry_busy

log = logging.getLogger("dialog")

_I = INDEX
I_PROCESSED, I_FAILED = _I["dialog:processed_dialogs"], _I["dialog:failed_dialogs"]
I_TERMINATED, I_REFUSED = _I["dialog:terminated_dialogs"], _I["dialog:refused"]
I_PROFILE_REFUSED = _I["dialog:profile_refused"]
I_VALUES_REFUSED = _I["dialog:profile_values_refused"]
I_PING_RPL, I_OWN_RPL = _I["dialog:ping_replies"], _I["dialog:own_replies"]
I_WAITS = _I["dialog:lock_waits"]
I_TOO_LONG = _I["dialog:callee_too_long"]
UNCONFIRMED_MARGIN_S = 32  # an unconfirmed dialog outlives Timer C by this (64*T1)
# The per-node word of a dialog row (shm.dialogs: never replicated) holds, on the node
# that created the dialog, its INVITE transaction's key but the low 4 bits (the ping
# bits of the node running its timers) and the top one (the word stays >= 0, apart
# from dlg_ping_mark's negative E_NOT_FOUND): what dlg_end_dlg on an early dialog
# needs to CANCEL it (services.sip.dialog_timer; 32 candidate keys are looked up).
TX_KEY_MASK = 0x7FFF_FFFF_FFFF_FFF0
LIMIT_STATUS = 403


_LENS, _LENS_OFF = struct.Struct(f"<{D.NSTRINGS}H"), D.DIALOG.lens_off


class DialogStore:
    """One process's handle on the dialog kernels: a change packed, applied, read."""

    def __init__(self, table: Any, ring: np.ndarray, me: int, proc: int,
                 counts: Any) -> None:
        self.table = table
        self.arena = table.buf
        self.row_size = table.row_size
        self.ring = ring
        self.me, self.proc = me, proc
        self.counts = counts
        self.patch = np.zeros(self.row_size, dtype=np.uint8)
        self.out = np.zeros(self.row_size, dtype=np.uint8)
        self._last: tuple[bytes, bytes, tuple[int, int]] = (b"", b"", (0, 0))

    def _ids(self, callid: bytes, tag: bytes) -> tuple[int, int]:
        """dialog_ids, remembered for the last dialog asked about (a request's dialog is
        looked up, then changed)."""
        last = self._last
        if last[0] == callid and last[1] == tag:
            return last[2]
        ids = D.dialog_ids(callid, tag)
        self._last = (callid, tag, ids)
        return ids

    def _wait(self) -> None:
        self.counts[I_WAITS] += 1

    def apply(self, op: int, strings: dict[str, bytes], *, state: int = 0, timeout: int = 0,
              start: int = 0, caller_cseq: int = 0, callee_cseq: int = 0, flags: int = 0,
              creator: int = 0) -> int:
        """dlg_apply of a change; the slot, or E_* (E_TOO_LONG when the strings do not
        fit the row)."""
        try:
            D.pack_dialog(self.patch, self.row_size, strings=strings, timeout=timeout,
                          start=start, dlg_state=state, caller_cseq=caller_cseq,
                          callee_cseq=callee_cseq, flags=flags, creator=creator,
                          ids=self._ids(strings.get("callid", b""),
                                        strings.get("from_tag", b"")))
        except ValueError:
            return T.E_TOO_LONG
        now_ms = int(time.time() * 1000)
        return retry_busy(lambda: D.dlg_apply(self.arena, self.ring, self.patch, op, now_ms,
                                              self.me, self.proc, self.out), self._wait)

    def reapply(self, op: int) -> int:
        """dlg_apply of the change already in `patch` (a kernel found the lock busy)."""
        self._wait()
        return retry_busy(lambda: D.dlg_apply(self.arena, self.ring, self.patch, op,
                                              int(time.time() * 1000), self.me, self.proc,
                                              self.out), self._wait)

    def get(self, callid: bytes, tag: bytes) -> dict | None:
        """The dialog (live or a tombstone) of Call-ID and caller tag, decoded."""
        if self._read(callid, tag) < 0:
            return None
        return D.DIALOG.decode(self.out, 1, self.row_size)[0]

    def live(self, callid: bytes, tag: bytes) -> bool:
        return self._read(callid, tag) >= 0 and self.out[T.R_STATE] == T.ST_LIVE

    def _read(self, callid: bytes, tag: bytes) -> int:
        """dlg_get into `out`: the slot or E_NOT_FOUND (a record being written is read
        again: a lock-free read that gave up must not pass for "no dialog")."""
        key, group = (np.uint64(v) for v in self._ids(callid, tag))
        return retry_busy(lambda: D.dlg_get(self.arena, key, group, self.out), self._wait)

    def out_string(self, index: int) -> bytes:
        """String `index` (shm.dialogs STRING_INDEX) of the row in `out`."""
        lens = _LENS.unpack_from(self.out, _LENS_OFF)
        off = D.DIALOG.fixed_size + sum(lens[:index])
        return bytes(self.out[off:off + lens[index]])

    def fail(self, callid: bytes, from_tag: bytes) -> bool:
        """The INVITE of a dialog ended with a final >= 300: delete the dialog unless a
        2xx confirmed it (OP_FAIL). Whether it was deleted."""
        return self.apply(D.OP_FAIL, {"callid": callid, "from_tag": from_tag}) >= 0

    def out_state(self) -> int:
        """dlg_state of the row the last apply left in `out`."""
        return int(self.out[T.R_AUX])


def _uri(value: str) -> str:
    """The URI of a From/To/Contact value (the first, for a list)."""
    try:
        return parse_name_addr(M.first_value(value)).uri
    except SipParseError:
        return RT.uri_of(value)


class ProfileAdmission:
    """A new dialog's counts in its profiles (shm.profiles), for DialogTracker.admit:
    taken before its dialog is made, given back when it is refused -- past a limit on
    the cluster-wide counts, or a value that could not be counted for a limited
    profile."""

    def __init__(self, mem: Any, counts: Any, log_once: Callable[[str], None]) -> None:
        self.profiles = mem.profiles
        self.tags = mem.shtags
        self.counts = counts
        self.log_once = log_once
        self.limits: dict[str, int] = {}
        self.shtag = ""
        self.cluster = 0

    def configure(self, limits: dict[str, int], shtag: str, cluster: int) -> None:
        self.limits, self.shtag, self.cluster = limits, shtag, cluster

    def release(self, counted: list[bytes]) -> None:
        self.profiles.add(counted, -1)

    def reserve(self, entries: list[str]) -> tuple[list[bytes], int]:
        """Count a new dialog in its profile entries: (the counter names counted, the
        status to refuse it with or 0). A refused dialog is counted nowhere."""
        names = [name_of(self.shtag.encode(), e.encode()) for e in entries]
        if not names:
            return [], 0
        ok = self.profiles.add_each(names, 1)
        counted = [n for n, good in zip(names, ok) if good]
        missing = [e for e, good in zip(entries, ok) if not good]
        too_long = {e for e, n in zip(entries, names) if len(n) > MAX_NAME}
        if self.limits and self.profiles.remote_refused:
            # the other nodes' counts could not all be stored: a limited profile
            # cannot be checked either
            missing += [e for e in entries if e not in missing and
                        DR.limit_of(e, self.limits) is not None]
        refusal = DR.uncounted_status(missing, self.limits, too_long)
        if missing:
            self.counts[I_VALUES_REFUSED] += len(missing)
            self.log_once("a profile value could not be counted: dialog.profile_values "
                          "are all used, or the value is too long (a profile with a "
                          "limit refuses the call, one without admits it uncounted)")
        if refusal:
            self.profiles.add(counted, -1)
            self.counts[I_REFUSED] += 1
            return [], refusal
        if self.limits and self.over_limit(entries) is not None:
            self.profiles.add(counted, -1)
            self.counts[I_PROFILE_REFUSED] += 1
            return [], LIMIT_STATUS
        return counted, 0

    def over_limit(self, entries: list[str]) -> str | None:
        """The first of a new dialog's profile entries whose cluster-wide count (the new
        dialog, already reserved, included) is above its limit."""
        limited = [e for e in entries if DR.limit_of(e, self.limits) is not None]
        if not limited:
            return None
        scopes = {b"", self.shtag.encode()} | {name.encode() for name, c in self.tags.read()
                                               if c == self.cluster}
        names = []
        for e in limited:
            names += [name_of(s, e.encode()) for s in scopes] + [name_of(REMOTE_SCOPE,
                                                                        e.encode())]
        values = self.profiles.get(names)
        per = len(scopes) + 1
        counts = {e: sum(values[i * per:(i + 1) * per]) for i, e in enumerate(limited)}
        return DR.exceeded(counts, self.limits)


class DialogTracker:
    """The proxy's DialogHook in one SIP worker."""

    def __init__(self, worker: Any, counts: Any, local: frozenset[tuple[str, int]],
                 labels: list[str]) -> None:
        mem = worker.mem
        self.store = DialogStore(mem.dialogs, worker.rings["dialogs"], worker.me,
                                 worker.slot, counts)
        self.counts = counts
        self.node = worker.cfg["clusterer.node_id"]
        self.mine = local  # our listeners: our own Record-Route entries
        self.labels = labels  # "udp:HOST:PORT" of each listener, by index
        self._logged: set[str] = set()
        self.admission = ProfileAdmission(mem, counts, self._log_once)
        self.invite = CompiledInvite(self.store, local, labels)
        self._admitted: tuple[Any, int, int] | None = None  # (INVITE, its dialog_ids)
        self.apply_config(worker.cfg)

    def apply_config(self, cfg: Config) -> None:
        self.track = cfg["dialog.track"] == "all"
        self.domains = cfg["dialog.track_domains"]
        self.lifetime_s = cfg["dialog.default_timeout_s"]
        self.unconfirmed_s = cfg["proxy.invite_timeout_s"] + UNCONFIRMED_MARGIN_S
        self.ping_flags = D.F_PING_CALLER | D.F_PING_CALLEE if \
            cfg["dialog.ping_interval_s"] else 0
        self.rules = cfg["dialog.profiles"]
        self.limits = dict(cfg["dialog.profile_limits"])
        self.shtag = cfg.dialog_sharing_tag()
        self.admission.configure(self.limits, self.shtag, cfg.replication_cluster(
            "dialog.replication_cluster") or cfg["clusterer.cluster_id"][0])

    def _log_once(self, cause: str) -> None:
        if cause not in self._logged and len(self._logged) < 100:
            self._logged.add(cause)
            log.warning("%s (further ones are only counted)", cause)

    # ---------------------------------------------------------------- initial INVITE

    def tracked(self, msg: SipMessage) -> bool:
        if not self.track:
            return False
        if not self.domains:
            return True
        hp = RT.uri_hostport(msg.ruri)
        return hp is not None and hp[0].lower() in self.domains

    def admit(self, msg: SipMessage, src: tuple, listener: int, data: bytes | None = None
              ) -> int:
        """An initial INVITE about to be proxied: create its dialog and count it in its
        profiles. 0: go on; else the status to refuse it with (counted). With no
        profile limit to check first, and its bytes (`data`), the dialog is created
        from them in one kernel call (shm.dlg_invite) and counted after."""
        if not self.tracked(msg):
            return 0
        entries = DR.profiles_of(self.rules, msg, src[0])
        if data is not None and not self.limits:
            made = self.invite.create(np.frombuffer(data, np.uint8), msg.cseq_num, listener,
                                      src, "\n".join(entries), self.shtag,
                                      self.unconfirmed_s, self.ping_flags, self.node)
            if made is not None:
                self._admitted = (msg, made[1], made[2])
                if made[0] >= 0:  # counted after: no profile has a limit to refuse it
                    self.admission.reserve(entries)
                return self._created(made[0])
        callid = msg.call_id.encode()
        from_tag = tag_of(msg.from_).encode()
        if self.store.live(callid, from_tag):
            return 0  # a retransmission, or a spiral back through us: already there
        counted, refusal = self.admission.reserve(entries)
        if refusal:
            return refusal
        now = int(time.time())
        caller_route = DR.caller_route_of_request(msg.get_all("record-route"))
        contact = msg.get("contact")
        r = self.store.apply(D.OP_CREATE, {
            "callid": callid, "from_tag": from_tag, "from_uri": _uri(msg.from_).encode(),
            "to_uri": _uri(msg.to).encode(),
            "caller_contact": _uri(contact).encode() if contact else b"",
            "caller_route": ", ".join(caller_route).encode(),
            "caller_sock": DR.sock_value(self.labels[listener] if listener < len(self.labels)
                                         else "", src[:2]).encode(),
            "profiles": "\n".join(entries).encode(), "shtag": self.shtag.encode()},
            state=D.DLG_UNCONFIRMED, timeout=now + self.unconfirmed_s, start=now,
            caller_cseq=max(0, msg.cseq_num), flags=self.ping_flags, creator=self.node)
        if r < 0 and counted:  # not created here: counted by whoever created it, or nobody
            self.admission.release(counted)
        return self._created(r)

    def _created(self, r: int) -> int:
        """What admit answers for dlg_apply's result r of the new dialog (counted)."""
        if r >= 0:
            self.counts[I_PROCESSED] += 1
            return 0
        if r == D.E_EXISTS:
            return 0  # a copy of the INVITE on another worker made it first
        self.counts[I_REFUSED] += 1
        if r == T.E_TOO_LONG:
            self._log_once("an INVITE was refused 500: its dialog does not fit "
                           "dialog.record_bytes")
            return 500
        self._log_once(f"an INVITE was refused 503: the dialog table is full ({r}); it "
                       "holds the live dialogs and those ended in the last "
                       "dialog.tombstone_ttl_s: raise dialog.capacity")
        return 503

    # ---------------------------------------------------------------- responses

    def bind_invite(self, msg: SipMessage, tx_key: int) -> None:
        """The transaction of an admitted INVITE was made: keep its key with the
        dialog, in this node's per-node word (TX_KEY_LOW)."""
        got = self._admitted
        if got is not None and got[0] is msg:
            key, group = got[1], got[2]
        else:
            key, group = D.dialog_ids(msg.call_id.encode(), tag_of(msg.from_).encode())
        D.dlg_ping_mark(self.store.arena, np.uint64(key), np.uint64(group),
                        np.int64(tx_key & TX_KEY_MASK), np.int64(TX_KEY_MASK))

    def on_invite_reply(self, msg: SipMessage, key: int, branch: int, final_status: int,
                        listener: int = -1, src: tuple | None = None) -> None:
        to_tag = tag_of(msg.to)
        state = DR.state_of_reply(msg.status, to_tag, final_status)
        if state is None:
            return
        ids = {"callid": msg.call_id.encode(), "from_tag": tag_of(msg.from_).encode()}
        if state == DR.FAILED:
            if self.store.fail(ids["callid"], ids["from_tag"]):
                self.counts[I_FAILED] += 1
            return
        caller_route, callee_route = DR.route_sets(msg.get_all("record-route"), self.mine)
        contact = msg.get("contact")
        now = int(time.time())
        timeout = now + (self.lifetime_s if state == D.DLG_CONFIRMED_NA else self.unconfirmed_s)
        base = dict(ids)
        label = self.labels[listener] if 0 <= listener < len(self.labels) else ""
        ids.update(to_tag=to_tag.encode(),
                   callee_contact=_uri(contact).encode() if contact else b"",
                   callee_sock=DR.sock_value(label, src[:2] if src else None).encode()
                   if label else b"",
                   caller_route=", ".join(caller_route).encode(),
                   callee_route=", ".join(callee_route).encode())
        r = self.store.apply(D.OP_UPDATE, ids, state=state, timeout=timeout)
        if r != T.E_TOO_LONG:
            return  # E_OTHER_CALLEE: a 2xx of another callee, a dialog of its own
        self.counts[I_TOO_LONG] += 1
        if state != D.DLG_CONFIRMED_NA:
            self._log_once("a 1xx's callee side (To tag, Contact, route set) does not fit "
                           "dialog.record_bytes: the dialog stays as it was")
            return
        # never a dialog with a callee side cut short: this call goes on untracked
        self._log_once("a 2xx's callee side (To tag, Contact, route set) does not fit "
                       "dialog.record_bytes: the call goes on untracked (its dialog is "
                       "deleted, dialog:callee_too_long)")
        if len(to_tag) < 256:
            base["to_tag"] = to_tag.encode()  # not the row of another callee's 2xx
        if self.store.apply(D.OP_DELETE, base) >= 0:
            self.counts[I_FAILED] += 1

    def invite_failed(self, msg: SipMessage) -> None:
        """The proxy answered an initial INVITE it admitted with a final >= 300 of its
        own (or again, to a retransmission of a failed one): its dialog goes."""
        if self.store.fail(msg.call_id.encode(), tag_of(msg.from_).encode()):
            self.counts[I_FAILED] += 1

    def on_own_reply(self, msg: SipMessage, branch: str) -> bool:
        """A reply to a BYE or ping this node sent itself (services.sip.dialog_timer):
        taken here (True), or not one of those (False)."""
        own = DR.parse_own_branch(branch)
        if own is None:
            return False
        kind, callee, key = own
        if kind == "b":
            self.counts[I_OWN_RPL] += 1
            return True
        self.counts[I_PING_RPL] += 1
        if msg.status < 200:
            return True
        out_bit = D.PING_CALLEE_OUT if callee else D.PING_CALLER_OUT
        gone = msg.status == 481 or msg.status == 408
        set_bits = (D.PING_CALLEE_481 if callee else D.PING_CALLER_481) if gone else 0
        D.dlg_ping_mark(self.store.arena, np.uint64(key),
                        np.uint64(group_hash_of(msg.call_id.encode())), set_bits, out_bit)
        return True

    # ---------------------------------------------------------------- in-dialog requests

    def _ids(self, call_id: str, from_tag_text: str, to_tag_text: str
             ) -> tuple[dict[str, bytes], bool, int] | None:
        """The dialog's identity strings (with the callee's tag as the request names
        it), whether the request comes from the callee (its From tag is the dialog's To
        tag), and the dialog's state; None if no live dialog of this callee is known."""
        callid = call_id.encode()
        from_tag = from_tag_text.encode()
        to_tag = to_tag_text.encode()
        if self.store.live(callid, from_tag):
            ids, from_callee, callee_tag = {"callid": callid, "from_tag": from_tag}, False, \
                to_tag
        elif to_tag and self.store.live(callid, to_tag):
            ids, from_callee, callee_tag = {"callid": callid, "from_tag": to_tag}, True, \
                from_tag
        else:
            return None
        state = int(self.store.out[T.R_AUX])
        if not DR.same_callee(state, self.store.out_string(D.S_TO_TAG), callee_tag):
            return None  # another callee's dialog (a forked call answered twice)
        if callee_tag:
            ids["to_tag"] = callee_tag
        return ids, from_callee, state

    def owns(self, msg: SipMessage) -> bool:
        """Whether a live dialog of this in-dialog request is known here."""
        return self._ids(msg.call_id, tag_of(msg.from_), tag_of(msg.to)) is not None

    def on_in_dialog(self, msg: SipMessage) -> None:
        self.in_dialog(msg.method, msg.call_id, tag_of(msg.from_), tag_of(msg.to),
                       msg.cseq_num)

    def on_invite_reply_compiled(self, data: np.ndarray, status: int, final_status: int,
                                 listener: int, src: tuple | None) -> bool:
        """on_invite_reply in one kernel call from the response's bytes (shm.dlg_invite);
        False: nothing was done, parse it and call on_invite_reply."""
        done = self.invite.change(data, status, final_status, listener, src,
                                   self.lifetime_s, self.unconfirmed_s)
        if done is None:
            return False
        if done[0] >= 0 and done[1] == D.OP_FAIL:
            self.counts[I_FAILED] += 1
        return True

    def in_dialog_compiled(self, data: np.ndarray, ident: np.ndarray) -> bool:
        """in_dialog in one kernel call (shm.dialogs.dlg_in_dialog) for a request the
        compiled relay took; False: a tag the kernel leaves to core.sip.tag_of, nothing
        was done."""
        store = self.store

        def change() -> int:
            return D.dlg_in_dialog(store.arena, store.ring, data, ident,
                                   int(time.time() * 1000), store.me, store.proc, store.patch,
                                   store.out)

        r = change()
        if r == T.E_BUSY:  # nothing done (a lock, or the row being written): again
            store._wait()
            r = retry_busy(change, store._wait)
        if r == D.IN_UNSURE:
            return False
        op = int(ident[D.ID_OP])
        if r >= 0 and op == D.OP_DELETE:
            self.counts[I_TERMINATED] += 1
        return True

    def in_dialog(self, method: str, call_id: str, from_tag: str, to_tag: str,
                  cseq_num: int) -> None:
        """on_in_dialog from the request's identity (the compiled relay's way)."""
        found = self._ids(call_id, from_tag, to_tag)
        if found is None:
            return
        ids, from_callee, state = found
        cseq = max(0, cseq_num)
        cseqs = {"callee_cseq": cseq} if from_callee else {"caller_cseq": cseq}
        if method == "BYE" and state >= D.DLG_CONFIRMED_NA:
            if self.store.apply(D.OP_DELETE, ids, **cseqs) >= 0:
                self.counts[I_TERMINATED] += 1
        elif method == "ACK":
            self.store.apply(D.OP_UPDATE, ids, state=D.DLG_CONFIRMED, **cseqs)
        else:  # (a BYE in an early dialog: the INVITE's final response decides)
            self.store.apply(D.OP_UPDATE, ids, **cseqs)
