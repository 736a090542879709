"""Plain-Python reference of the transaction kernels (shm.transactions): the same state
machine over Python objects, one transaction per identity, absolute times, no table.

tests/unit/test_transactions.py runs random sequences of requests, retransmissions,
replies, ACKs, CANCELs and timer firings on both and compares every answer and every
field of every row. Written for reading: one method per kernel entry point, the RFC
3261 / 6026 timer names in comments, no shared code with the kernels beyond the
constants that name states, flags and actions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fastcluster.shm import transactions as X


@dataclass
class Branch:
    state: int = X.BS_UNUSED
    flags: int = 0
    group: int = 0
    status: int = 0
    retr_n: int = 0
    retr: int = 0  # absolute ms, 0: off (Timer A/E)
    deadline: int = 0  # Timer B/F, then D/K/M
    timer_c: int = 0
    cancel: int = 0
    cancel_end: int = 0


@dataclass
class Tx:
    flags: int
    t0: int
    sstate: int
    room: int  # bytes left for the response string
    branches: list[Branch] = field(default_factory=list)
    status: int = 0
    best: int = 0
    best_branch: int = 0
    s_retr: int = 0
    s_retr_n: int = 0
    s_end: int = 0
    response: bytes = b""
    sched: int = 0


@dataclass
class Answer:
    result: int
    actions: int = 0
    status: int = 0
    cancel: int = 0
    start: int = 0
    retrans: int = 0
    retrans_cancel: int = 0


def _active(st: int) -> bool:
    return st in (X.BS_CALLING, X.BS_PROCEEDING)


def rank(status: int) -> int:
    if status // 100 == 6:
        return 0
    return status // 100 * 10 + (0 if status in (401, 407, 415, 420, 484) else 1)


def better(status: int, best: int) -> bool:
    return best == 0 or rank(status) < rank(best)


def interval(n: int, t1: int, t2: int, invite: bool) -> int:
    v = t1 << min(n, 20)
    return v if invite or v <= t2 else t2


class Reference:
    def __init__(self, t1: int, t2: int, t4: int, tc: int, room: int) -> None:
        self.t1, self.t2, self.t4, self.tc = t1, t2, t4, tc
        self.room = room  # body bytes for strings (record_bytes)
        self.txs: dict[bytes, Tx] = {}

    # ------------------------------------------------------------ helpers

    def _start_cancel(self, b: Branch, now: int) -> None:
        b.flags |= X.BF_CANCEL_SENT
        b.retr_n = 0
        b.cancel = now + self.t1
        b.cancel_end = now + 64 * self.t1

    def _cancel_branches(self, tx: Tx, except_i: int, now: int) -> int:
        tx.flags |= X.F_CANCELED
        if not tx.flags & X.F_INVITE:
            return 0
        mask = 0
        for j, b in enumerate(tx.branches):
            if j == except_i:
                continue
            if b.state == X.BS_PROCEEDING and not b.flags & X.BF_CANCEL_SENT:
                self._start_cancel(b, now)
                mask |= 1 << j
            elif b.state == X.BS_CALLING:
                b.flags |= X.BF_CANCEL_WANTED
            elif b.state == X.BS_UNUSED:
                b.state = X.BS_SKIPPED
        return mask

    def _start_branch(self, tx: Tx, b: Branch, now: int) -> None:
        b.state = X.BS_CALLING
        b.retr_n = 0
        b.retr = now + self.t1  # Timer A / E
        b.deadline = now + 64 * self.t1  # Timer B / F
        if tx.flags & X.F_INVITE:
            b.timer_c = now + self.tc

    def _set_response(self, tx: Tx, rsp: bytes) -> bool:
        if len(rsp) > tx.room:
            tx.response = b""
            return False
        tx.response = rsp
        return True

    def _send_final(self, tx: Tx, now: int, arriving_is_best: bool, a: Answer) -> int:
        if not tx.flags & X.F_CANCELED:
            pending = [b.group for b in tx.branches if b.state == X.BS_UNUSED]
            if pending:
                g = min(pending)
                for j, b in enumerate(tx.branches):
                    if b.state == X.BS_UNUSED and b.group == g:
                        self._start_branch(tx, b, now)
                        a.start |= 1 << j
                return X.A_START
        best = tx.best
        local = best in (0, 503) or bool(tx.flags & X.F_BEST_LOCAL) or (
            not arriving_is_best and not tx.flags & X.F_RESP)
        best = 500 if best in (0, 503) else best
        if local:
            actions = X.A_SEND_LOCAL
            tx.flags = (tx.flags | X.F_FINAL_LOCAL) & ~X.F_RESP
        elif arriving_is_best:
            actions = X.A_FORWARD
        else:
            actions = X.A_SEND_STORED
        actions |= X.A_FIRST_FINAL
        tx.flags = (tx.flags | X.F_FINAL_SENT) & ~X.F_RESP_PENDING
        tx.status = best
        a.status = best
        tx.sstate = X.SS_COMPLETED
        if tx.flags & X.F_INVITE:
            tx.s_retr_n = 0
            tx.s_retr = now + self.t1  # Timer G
        tx.s_end = now + 64 * self.t1  # Timer H (INVITE) or J
        return actions

    def _timeout(self, tx: Tx, i: int) -> None:
        b = tx.branches[i]
        b.state, b.status = X.BS_TIMEOUT, 408
        b.retr = b.deadline = b.timer_c = 0
        if not tx.flags & X.F_FINAL_SENT and better(408, tx.best):
            tx.best, tx.best_branch = 408, i
            tx.flags = (tx.flags | X.F_BEST_LOCAL) & ~X.F_RESP_PENDING

    def due(self, tx: Tx) -> int:
        times = [tx.s_retr, tx.s_end]
        for b in tx.branches:
            times += [b.retr, b.deadline, b.timer_c, b.cancel]
        times = [x for x in times if x]
        return min(times) if times else 0

    def _arm(self, tx: Tx) -> None:
        due = self.due(tx)
        if due and (tx.sched == 0 or due < tx.sched):
            tx.sched = due

    # ------------------------------------------------------------ entry points

    def request(self, kind: int, ident: bytes, now: int, flags: int = 0,
                groups: tuple[int, ...] = (), used: int = 0) -> Answer:
        """tx_request. used: bytes of ident + request + targets (the rest is room)."""
        tx = self.txs.get(ident)
        if tx is None:
            if kind != X.K_REQUEST:
                return Answer(X.R_NOT_FOUND)
            flags &= X.F_INVITE | X.F_SERIAL | X.F_RFC2543
            tx = Tx(flags, now, X.SS_PROCEEDING if flags & X.F_INVITE else X.SS_TRYING,
                    self.room - used)
            tx.branches = [Branch(group=g) for g in groups[:X.MAX_BRANCHES]]
            first = min(groups) if groups else 255
            a = Answer(X.R_NEW, X.A_NEW)
            for j, b in enumerate(tx.branches):
                if not flags & X.F_SERIAL or b.group == first:
                    self._start_branch(tx, b, now)
                    a.start |= 1 << j
            self.txs[ident] = tx
            self._arm(tx)
            return a
        a = Answer(X.R_MATCH)
        if kind == X.K_REQUEST:
            if tx.sstate in (X.SS_PROCEEDING, X.SS_COMPLETED):
                if tx.flags & X.F_RESP and not tx.flags & X.F_RESP_PENDING:
                    a.actions = X.A_SEND_STORED
                elif tx.sstate == X.SS_COMPLETED and tx.flags & X.F_FINAL_LOCAL:
                    a.actions = X.A_SEND_LOCAL
                    a.status = tx.status
                elif tx.flags & X.F_INVITE and tx.sstate == X.SS_PROCEEDING:
                    a.actions = X.A_SEND_100
        elif kind == X.K_ACK:
            if tx.flags & X.F_INVITE and tx.sstate == X.SS_COMPLETED:
                tx.sstate = X.SS_CONFIRMED
                tx.s_retr = 0  # Timer G stops
                tx.s_end = now + self.t4  # Timer I
                self._arm(tx)
            elif tx.sstate == X.SS_ACCEPTED or not tx.flags & X.F_INVITE:
                return Answer(X.R_NOT_FOUND)
        else:
            a.actions = X.A_200_CANCEL
            if tx.flags & X.F_INVITE and not tx.flags & X.F_FINAL_SENT:
                a.cancel = self._cancel_branches(tx, -1, now)
                if a.cancel:
                    a.actions |= X.A_CANCEL
                self._arm(tx)
        if a.status == 0:
            a.status = tx.status
        return a

    def reply(self, ident: bytes, i: int, status: int, mclass: int, rsp: bytes,
              now: int) -> Answer:
        tx = self.txs.get(ident)
        if tx is None or not 0 <= i < len(tx.branches):
            return Answer(X.R_NOT_FOUND)
        a = Answer(X.R_MATCH)
        a.actions = self._on_reply(tx, i, status, mclass, rsp, now, a)
        self._arm(tx)
        if not a.actions & X.A_SEND_LOCAL and a.status == 0:
            a.status = tx.status
        return a

    def _on_reply(self, tx: Tx, i: int, status: int, mclass: int, rsp: bytes, now: int,
                  a: Answer) -> int:
        invite = bool(tx.flags & X.F_INVITE)
        b = tx.branches[i]
        if mclass == X.M_CANCEL:
            if status >= 200 and b.flags & X.BF_CANCEL_SENT:
                b.flags |= X.BF_CANCEL_DONE
                b.cancel = b.cancel_end = 0
            return 0
        if (mclass == X.M_INVITE) != invite:
            return 0
        actions = 0
        if status < 200:
            if not _active(b.state):
                return 0
            if b.state == X.BS_CALLING:
                b.state = X.BS_PROCEEDING
                if invite:
                    b.retr = b.deadline = 0  # Timer A and B stop; Timer C rules
                else:
                    b.retr = now + self.t2  # Timer E at T2
            if invite and status > 100:
                b.timer_c = now + self.tc
            if b.flags & X.BF_CANCEL_WANTED and not b.flags & X.BF_CANCEL_SENT:
                self._start_cancel(b, now)
                a.cancel = 1 << i
                actions |= X.A_CANCEL
            if status > 100 and not tx.flags & X.F_FINAL_SENT:
                actions |= X.A_FORWARD
                tx.status = status
                if tx.sstate == X.SS_TRYING:
                    tx.sstate = X.SS_PROCEEDING
                if not tx.flags & X.F_RESP_PENDING:
                    if self._set_response(tx, rsp):
                        tx.flags |= X.F_RESP
                    else:
                        tx.flags &= ~X.F_RESP
            return actions
        if not _active(b.state):
            if invite and status < 300:
                return X.A_FORWARD
            if invite and b.state in (X.BS_COMPLETED, X.BS_TIMEOUT):
                return X.A_ACK
            return 0
        b.status = status
        b.retr = b.timer_c = 0
        if invite and status < 300:
            b.state, b.deadline = X.BS_ACCEPTED, now + 64 * self.t1  # Timer M
        elif invite:
            b.state, b.deadline = X.BS_COMPLETED, now + 64 * self.t1  # Timer D
            actions |= X.A_ACK
        else:
            b.state, b.deadline = X.BS_COMPLETED, now + self.t4  # Timer K
        if status < 300:
            if invite or not tx.flags & X.F_FINAL_SENT:
                actions |= X.A_FORWARD
            if not tx.flags & X.F_FINAL_SENT:
                actions |= X.A_FIRST_FINAL
                tx.flags |= X.F_FINAL_SENT
                tx.status = status
                tx.s_end = now + 64 * self.t1  # Timer L or J
                if invite:
                    tx.sstate = X.SS_ACCEPTED
                    tx.flags &= ~(X.F_RESP | X.F_RESP_PENDING)
                else:
                    tx.sstate = X.SS_COMPLETED
                    tx.flags &= ~X.F_RESP_PENDING
                    if self._set_response(tx, rsp):
                        tx.flags |= X.F_RESP
                    else:
                        tx.flags &= ~X.F_RESP
                mask = self._cancel_branches(tx, i, now)
                if mask:
                    a.cancel |= mask
                    actions |= X.A_CANCEL
            return actions
        if tx.flags & X.F_FINAL_SENT:
            return actions
        arriving_is_best = False
        if status >= 600 or (tx.best < 600 and better(status, tx.best)):
            arriving_is_best = True
            tx.best, tx.best_branch = status, i
            tx.flags &= ~X.F_BEST_LOCAL
            if self._set_response(tx, rsp):
                tx.flags |= X.F_RESP | X.F_RESP_PENDING
            else:
                tx.flags &= ~(X.F_RESP | X.F_RESP_PENDING)
            if status >= 600:
                mask = self._cancel_branches(tx, i, now)
                if mask:
                    a.cancel |= mask
                    actions |= X.A_CANCEL
        if not any(_active(x.state) for x in tx.branches):
            actions |= self._send_final(tx, now, arriving_is_best, a)
        return actions

    def fire(self, ident: bytes, now: int) -> tuple[Answer, bool]:
        """The row's timers at `now` (its live wheel entry fires). (answer, deleted)."""
        tx = self.txs[ident]
        a = Answer(X.R_MATCH)
        invite = bool(tx.flags & X.F_INVITE)
        t1, t2 = self.t1, self.t2
        timed_out = False
        for i, b in enumerate(tx.branches):
            if _active(b.state):
                if b.retr and b.retr <= now:
                    n = b.retr_n
                    a.retrans |= 1 << i
                    a.actions |= X.A_RETRANS
                    b.retr_n = min(n + 1, 255)
                    b.retr = now + (t2 if b.state == X.BS_PROCEEDING else
                                    interval(n + 1, t1, t2, invite))
                if invite and b.timer_c and b.timer_c <= now:  # Timer C
                    if b.state == X.BS_PROCEEDING and not b.flags & X.BF_CANCEL_SENT:
                        self._start_cancel(b, now)
                        a.cancel |= 1 << i
                        a.actions |= X.A_CANCEL
                    self._timeout(tx, i)
                    timed_out = True
                elif b.deadline and b.deadline <= now:  # Timer B or F
                    self._timeout(tx, i)
                    timed_out = True
            elif b.deadline and b.deadline <= now:
                b.deadline = 0  # Timer D/K/M: linger over
            if (b.flags & X.BF_CANCEL_SENT and not b.flags & X.BF_CANCEL_DONE and b.cancel
                    and b.cancel <= now):
                if b.cancel_end <= now:
                    b.flags |= X.BF_CANCEL_DONE
                    b.cancel = 0
                else:
                    n = b.retr_n
                    b.retr_n = min(n + 1, 255)
                    b.cancel = now + interval(n + 1, t1, t2, False)
                    a.retrans_cancel |= 1 << i
                    a.actions |= X.A_RETRANS_CANCEL
        if timed_out and not tx.flags & X.F_FINAL_SENT and not any(
                _active(b.state) for b in tx.branches):
            a.actions |= self._send_final(tx, now, False, a)
        if tx.sstate == X.SS_COMPLETED and invite:
            if tx.s_end and tx.s_end <= now:  # Timer H
                tx.sstate = X.SS_TERMINATED
                tx.s_retr = tx.s_end = 0
            elif tx.s_retr and tx.s_retr <= now:  # Timer G
                n = tx.s_retr_n
                tx.s_retr_n = min(n + 1, 255)
                tx.s_retr = now + interval(n + 1, t1, t2, False)
                a.actions |= X.A_SEND_LOCAL if tx.flags & X.F_FINAL_LOCAL else X.A_SEND_STORED
                a.status = tx.status
        elif tx.s_end and tx.s_end <= now:  # Timer I, J or L
            tx.sstate = X.SS_TERMINATED
            tx.s_end = tx.s_retr = 0
        done = bool(tx.flags & X.F_FINAL_SENT) and tx.sstate == X.SS_TERMINATED and not any(
            _active(b.state) or b.deadline or (b.flags & X.BF_CANCEL_SENT and
                                               not b.flags & X.BF_CANCEL_DONE)
            for b in tx.branches)
        if done and not a.actions:
            del self.txs[ident]
            a.actions = X.A_DELETED
            return a, True
        due = self.due(tx)
        tx.sched = due or (now + 1 if done else 0)
        return a, False
