"""Dialog tracking (services.sip.dialogs) inside the proxy of a SIP worker, and the
timer process's side of it (services.sip.tm_timer, services.sip.dialog_timer), over
in-memory tables: every way an INVITE can end >= 300 deletes its dialog, a forked call
answered twice keeps the first callee's dialog, callee strings too long are refused
and counted, profiles count a dialog once and fail closed for limited profiles."""
from __future__ import annotations

import types

from fastcluster.core.sip import parse_message
from fastcluster.core.stats import INDEX
from fastcluster.services.sip.dialog_timer import DialogTimer
from fastcluster.shm import dialogs as D
from fastcluster.shm import profiles as PF
from fastcluster.shm import table as T
from tests.support.registrar import LISTEN
from tests.unit.test_proxy import (
    BOB1,
    BOB2,
    CALLER,
    Proxy,
    invite,
    only,
    response_to,
    run_timer,
    status,
    timer_for,
)


class Tracked(Proxy):
    """The proxy with dialog tracking on its own dialog, profile and tag tables."""

    def __init__(self, contacts: list[tuple] | None = None, record_bytes: int = 512,
                 profile_values: int = 64, **kw) -> None:
        super().__init__(contacts, **kw)
        self.plug_dialogs(64, record_bytes, profile_values)

    def dialog(self, n: int) -> dict | None:
        """Dialog of invite(n) (Call-ID call-n, From tag an), live or a tombstone."""
        return self.tracker.store.get(f"call-{n}".encode(), f"a{n}".encode())

    def live(self, n: int) -> bool:
        d = self.dialog(n)
        return d is not None and d["state"] == T.ST_LIVE

    def timers(self) -> tuple:
        """The timer process: transaction timers wired to its dialog timers."""
        tm = timer_for(self)
        timer = types.SimpleNamespace(
            mem=types.SimpleNamespace(dialogs=self.dialogs, shtags=self.shtags,
                                      profiles=self.profiles),
            rings={"dialogs": self.ring2}, cfg=self.app.worker.cfg, stats=tm.stats,
            me=T.lock_word(2, 2), slot=2)
        dt = DialogTimer(timer, lambda i: self.sock, [LISTEN], 0.1)
        tm.on_invite_failed = dt.invite_failed
        dt.cancel_invite = tm.cancel_invite
        return tm, dt


def in_dialog(method: str, n: int, to_tag: str, cseq: int, dst: tuple = BOB1) -> bytes:
    """A request of the caller in the dialog of invite(n) with callee tag to_tag."""
    route = f"Route: <sip:{LISTEN[0]}:{LISTEN[1]};lr>\r\n"
    return invite(n, branch=f"z9hG4bK-{method}{to_tag}{cseq}", extra=route, method=method,
                  ruri=f"sip:bob@{dst[0]}:{dst[1]}").replace(
        b"To: <sip:bob@example.com>", f"To: <sip:bob@example.com>;tag={to_tag}".encode()
    ).replace(f"1 {method}".encode(), f"{cseq} {method}".encode())


# ---------------------------------------------------------------- 1: local failures


def test_a_timer_b_408_deletes_the_dialog_at_once() -> None:
    p = Tracked(settings={"proxy.t1_ms": "20", "proxy.t2_ms": "80"})
    tm, _ = p.timers()
    only(p.feed(invite(50), CALLER), BOB1)
    assert p.live(50)
    p.sock.sent.clear()
    run_timer(tm, 64 * 0.02 + 0.3)  # Timer B: the callee never answered
    assert [status(d) for d in only(p.sock.sent, CALLER)][:1] == [408]
    d = p.dialog(50)
    assert d["state"] == T.ST_TOMB and d["dlg_state"] == D.DLG_DELETED
    assert tm.stats[INDEX["dialog:failed_dialogs"]] == 1


def test_a_timer_c_408_deletes_an_early_dialog() -> None:
    p = Tracked(settings={"proxy.invite_timeout_s": "1", "proxy.t1_ms": "50"})
    tm, _ = p.timers()
    (fwd,) = only(p.feed(invite(51), CALLER), BOB1)
    p.feed(response_to(fwd, 180), BOB1)
    assert p.dialog(51)["dlg_state"] == D.DLG_EARLY
    run_timer(tm, 1.3)
    assert 408 in [status(d) for d in only(p.sock.sent, CALLER)]
    assert not p.live(51)
    p.feed(response_to(fwd, 487), BOB1)  # the callee confirms the CANCEL: absorbed
    assert not p.live(51)


def test_a_stored_failure_sent_by_the_timer_deletes_the_dialog() -> None:
    """Two branches: one fails 486 (kept: the other may still answer), the other never
    answers; Timer B ends it and the timer sends the 486 upstream."""
    p = Tracked([BOB1, BOB2], settings={"proxy.t1_ms": "20", "proxy.t2_ms": "80"})
    tm, _ = p.timers()
    out = p.feed(invite(52), CALLER)
    p.feed(response_to(only(out, BOB1)[0], 486), BOB1)
    assert p.live(52)
    p.sock.sent.clear()
    run_timer(tm, 64 * 0.02 + 0.3)
    assert [status(d) for d in only(p.sock.sent, CALLER)][:1] == [486]
    assert not p.live(52)


def test_a_full_transaction_table_after_admission_deletes_the_dialog() -> None:
    p = Tracked(tx_capacity=16)
    for i in range(16):
        p.feed(invite(100 + i), CALLER)
    (r,) = only(p.feed(invite(116), CALLER), CALLER)
    assert status(r) == 503 and p.stat("tm:refused_table_full") == 1
    assert p.dialog(116)["state"] == T.ST_TOMB and p.live(115)


def test_a_retransmission_of_a_failed_invite_does_not_bring_its_dialog_back() -> None:
    p = Tracked()
    inv = invite(53)
    (fwd,) = only(p.feed(inv, CALLER), BOB1)
    (busy,) = only(p.feed(response_to(fwd, 486), BOB1), CALLER)
    assert status(busy) == 486 and not p.live(53)
    (again,) = only(p.feed(inv, CALLER), CALLER)  # it crossed the 486: the 486 again
    assert status(again) == 486 and not p.live(53)
    ack = invite(53, method="ACK").replace(b"To: <sip:bob@example.com>",
                                           b"To: " + parse_message(busy).to.encode())
    p.feed(ack, CALLER)
    assert p.feed(inv, CALLER) == [] and not p.live(53)  # confirmed: absorbed silently


def test_a_487_after_cancel_deletes_the_dialog() -> None:
    p = Tracked()
    inv = invite(54)
    (fwd,) = only(p.feed(inv, CALLER), BOB1)
    p.feed(response_to(fwd, 180), BOB1)
    p.feed(inv.replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL"),
           CALLER)
    (up,) = only(p.feed(response_to(fwd, 487), BOB1), CALLER)
    assert status(up) == 487 and not p.live(54)


# ---------------------------------------------------------------- 2: forked 2xx


def test_a_second_2xx_of_a_forked_call_neither_takes_nor_ends_the_first_dialog() -> None:
    p = Tracked([BOB1, BOB2])
    out = p.feed(invite(60), CALLER)
    f1, f2 = only(out, BOB1)[0], only(out, BOB2)[0]
    p.feed(response_to(f1, 200, tag="b1", contact=BOB1), BOB1)
    # the second callee answers before the CANCEL reaches it: forwarded upstream (§16.7)
    (up,) = only(p.feed(response_to(f2, 200, tag="b2", contact=BOB2), BOB2), CALLER)
    assert status(up) == 200
    d = p.dialog(60)
    assert d["to_tag"] == "b1" and d["callee_contact"] == f"sip:bob@{BOB1[0]}:{BOB1[1]}"
    # the caller ACKs both and hangs up the second one: the first stays
    p.feed(in_dialog("ACK", 60, "b2", 1, BOB2), CALLER)
    p.feed(in_dialog("ACK", 60, "b1", 1, BOB1), CALLER)
    assert p.dialog(60)["dlg_state"] == D.DLG_CONFIRMED
    (bye2,) = only(p.feed(in_dialog("BYE", 60, "b2", 2, BOB2), CALLER), BOB2)
    assert parse_message(bye2).method == "BYE"  # routed all the same
    d = p.dialog(60)
    assert d["state"] == T.ST_LIVE and d["to_tag"] == "b1" and d["caller_cseq"] == 1
    assert not p.tracker.owns(parse_message(in_dialog("BYE", 60, "b2", 3, BOB2)))
    assert p.tracker.owns(parse_message(in_dialog("BYE", 60, "b1", 3, BOB1)))
    p.feed(in_dialog("BYE", 60, "b1", 3, BOB1), CALLER)
    assert not p.live(60) and p.stat("dialog:terminated_dialogs") == 1


def test_a_bye_in_an_early_dialog_leaves_the_row_to_the_invites_final() -> None:
    p = Tracked([BOB1, BOB2])
    out = p.feed(invite(61), CALLER)
    f1, f2 = only(out, BOB1)[0], only(out, BOB2)[0]
    p.feed(response_to(f2, 180, tag="b2", contact=BOB2), BOB2)
    p.feed(in_dialog("BYE", 61, "b2", 2, BOB2), CALLER)
    assert p.live(61)  # the other branch may still answer
    p.feed(response_to(f1, 200, tag="b1", contact=BOB1), BOB1)
    assert p.dialog(61)["to_tag"] == "b1" and p.live(61)


# ---------------------------------------------------------------- 7: dlg_end_dlg, early


def end_dlg(p: Tracked, n: int) -> None:
    """What MI dlg_end_dlg writes (services.sip.dialog): F_END on the dialog."""
    assert p.tracker.store.apply(D.OP_UPDATE, {"callid": f"call-{n}".encode(),
                                               "from_tag": f"a{n}".encode()},
                                 flags=D.F_END) >= 0


def scan(dt: DialogTimer) -> None:
    """One pass of the dialog timers over the whole table."""
    for _ in range(dt.ticks + 1):
        dt._timers(1e9)


def test_dlg_end_dlg_on_an_early_dialog_cancels_its_invite_and_sends_no_bye() -> None:
    p = Tracked([BOB1, BOB2])
    tm, dt = p.timers()
    out = p.feed(invite(55), CALLER)
    f1, f2 = only(out, BOB1)[0], only(out, BOB2)[0]
    p.feed(response_to(f1, 180, tag="b1"), BOB1)
    p.feed(response_to(f2, 180, tag="b2", contact=BOB2), BOB2)
    end_dlg(p, 55)
    p.sock.sent.clear()
    scan(dt)
    sent = [parse_message(d) for d, _ in p.sock.sent]
    assert sorted((m.method, a) for m, (_, a) in zip(sent, p.sock.sent)) == \
        [("CANCEL", BOB1), ("CANCEL", BOB2)]
    assert p.live(55)  # until the INVITE's final
    scan(dt)  # the next pass sends no CANCEL again
    assert len(p.sock.sent) == 2
    (c1,) = [d for d, a in p.sock.sent if a == BOB1]
    assert parse_message(c1).vias[0] == parse_message(f1).vias[0]  # our branch's CANCEL
    assert only(p.feed(response_to(f1, 487), BOB1), CALLER) == []
    (up,) = only(p.feed(response_to(f2, 487, tag="b2", contact=BOB2), BOB2), CALLER)
    assert status(up) == 487 and not p.live(55)
    assert tm.stats[INDEX["dialog:byes_sent"]] == 0


def test_pings_go_where_in_dialog_requests_go_and_repeat_every_interval() -> None:
    """Both legs behind NAT: their Contacts name private addresses, their messages
    come from public ones; the pings go to the latter, from the leg's listener, and
    again at every interval while they are answered."""
    p = Tracked(settings={"dialog.ping_interval_s": "1"})
    _, dt = p.timers()
    inv = invite(57).replace(f"Contact: <sip:alice@{CALLER[0]}:{CALLER[1]}>".encode(),
                             b"Contact: <sip:alice@10.0.0.5:5070>")
    (fwd,) = only(p.feed(inv, CALLER), BOB1)
    p.feed(response_to(fwd, 200, tag="b1", contact=("10.1.1.1", 5999)), BOB1)
    d = p.dialog(57)
    assert d["caller_sock"] == f"udp:{LISTEN[0]}:{LISTEN[1]} {CALLER[0]}:{CALLER[1]}"
    assert d["callee_sock"] == f"udp:{LISTEN[0]}:{LISTEN[1]} {BOB1[0]}:{BOB1[1]}"
    now = 1e9
    for rnd in range(3):
        p.sock.sent.clear()
        for _ in range(dt.ticks):  # one pass over the table
            dt._timers(now)
        assert dt.cursor == 0
        pings = list(p.sock.sent)
        assert sorted(a for _, a in pings) == sorted([CALLER, BOB1]), rnd
        for data, a in pings:
            m = parse_message(data)
            assert m.method == "OPTIONS" and f"{LISTEN[0]}:{LISTEN[1]}" in m.vias[0]
            p.feed(response_to(data, 200, tag=None), a)  # answered
        now += 1.5
    assert dt.stats[INDEX["dialog:pings_sent"]] == 6 and p.live(57)
    assert p.stat("dialog:ping_replies") == 6


def test_dlg_end_dlg_on_a_confirmed_dialog_still_sends_byes() -> None:
    p = Tracked()
    _, dt = p.timers()
    (fwd,) = only(p.feed(invite(56), CALLER), BOB1)
    p.feed(response_to(fwd, 200, tag="b1"), BOB1)
    end_dlg(p, 56)
    p.sock.sent.clear()
    scan(dt)
    assert sorted(parse_message(d).method for d, _ in p.sock.sent) == ["BYE", "BYE"]
    assert not p.live(56)


# ---------------------------------------------------------------- 3: callee too long


def test_a_2xx_whose_callee_side_does_not_fit_ends_tracking_counted_the_call_goes_on() -> None:
    p = Tracked(record_bytes=200)
    (fwd,) = only(p.feed(invite(70), CALLER), BOB1)
    assert p.live(70)
    big = response_to(fwd, 200, tag="t" * 120)
    (up,) = only(p.feed(big, BOB1), CALLER)
    assert status(up) == 200  # the call itself works: the 2xx goes upstream
    assert p.stat("dialog:callee_too_long") == 1 and not p.live(70)
    assert p.dialog(70)["to_tag"] == ""  # nothing was cut and stored


def test_a_1xx_whose_callee_side_does_not_fit_leaves_the_dialog_as_it_was() -> None:
    p = Tracked(record_bytes=200)
    (fwd,) = only(p.feed(invite(71), CALLER), BOB1)
    p.feed(response_to(fwd, 180, tag="t" * 120), BOB1)
    assert p.stat("dialog:callee_too_long") == 1
    d = p.dialog(71)
    assert d["state"] == T.ST_LIVE and d["dlg_state"] == D.DLG_UNCONFIRMED
    p.feed(response_to(fwd, 200, tag="b1"), BOB1)
    assert p.dialog(71)["dlg_state"] == D.DLG_CONFIRMED_NA


# ---------------------------------------------------------------- 4, 8: profiles

PROFILES = {"dialog.profiles": "calls, per_user=from_user"}


def recount(p: Tracked, dt: DialogTimer) -> None:
    dt.next_recount = 0.0
    for _ in range(dt.ticks + 1):
        dt._recount(1e9)


def test_a_duplicate_invite_that_finds_its_dialog_made_is_counted_once(monkeypatch) -> None:
    """Two copies of an INVITE on two workers: both see no dialog, one creates it, the
    other's create finds it (E_EXISTS): the profiles count the dialog once."""
    p = Tracked(settings=PROFILES)
    msg = parse_message(invite(80))
    assert p.tracker.admit(msg, CALLER, 0) == 0
    monkeypatch.setattr(p.tracker.store, "live", lambda callid, tag: False)
    assert p.tracker.admit(msg, CALLER, 0) == 0
    assert p.profiles.get([PF.name_of(b"", b"calls"), PF.name_of(b"", b"per_user/alice")]) \
        == [1, 1]


def test_a_limited_profile_whose_value_cannot_be_counted_refuses_the_call() -> None:
    p = Tracked(settings=dict(PROFILES, **{"dialog.profile_limits": "per_user=5"}),
                profile_values=16)
    for i in range(15):  # "calls" and 15 users fill the counters
        assert p.profiles.add([PF.name_of(b"", f"per_user/u{i}".encode())], 1) == 1
    assert p.profiles.add([PF.name_of(b"", b"calls")], 1) == 1
    (r,) = only(p.feed(invite(81), CALLER), CALLER)  # alice: no room for her value
    assert status(r) == 503 and not p.live(81)
    assert p.stat("dialog:profile_values_refused") == 1 and p.stat("dialog:refused") == 1
    assert p.profiles.get([PF.name_of(b"", b"calls")]) == [1]  # taken back


def test_an_unlimited_profile_fails_open_counted() -> None:
    p = Tracked(settings=dict(PROFILES, **{"dialog.profile_limits": "calls=100"}),
                profile_values=16)
    for i in range(15):
        p.profiles.add([PF.name_of(b"", f"per_user/u{i}".encode())], 1)
    p.profiles.add([PF.name_of(b"", b"calls")], 1)
    (trying,) = only(p.feed(invite(82), CALLER), CALLER)
    assert status(trying) == 100 and p.live(82)
    assert p.stat("dialog:profile_values_refused") == 1
    assert p.profiles.get([PF.name_of(b"", b"calls")]) == [2]


def test_a_value_too_long_for_a_limited_profile_is_refused_500() -> None:
    p = Tracked(settings=dict(PROFILES, **{"dialog.profile_limits": "per_user=5"}))
    inv = invite(83).replace(b"sip:alice@example.com", b"sip:" + b"a" * 130 + b"@example.com")
    (r,) = only(p.feed(inv, CALLER), CALLER)
    assert status(r) == 500 and p.stat("dialog:profile_values_refused") == 1


def test_remote_counts_that_could_not_be_stored_fail_limited_profiles_closed() -> None:
    p = Tracked(settings=dict(PROFILES, **{"dialog.profile_limits": "per_user=5"}),
                profile_values=16)
    local = [PF.name_of(b"", b"calls"), PF.name_of(b"", b"per_user/alice")]
    p.profiles.add(local, 1)  # this node's names are there: only the remote ones miss
    p.profiles.add(local, -1)
    assert p.profiles.set_remote({f"per_user/r{i}".encode(): 1 for i in range(18)}) == 4
    (r,) = only(p.feed(invite(84), CALLER), CALLER)
    assert status(r) == 503
    p.profiles.set_remote({})
    (trying,) = only(p.feed(invite(85), CALLER), CALLER)
    assert status(trying) == 100


def test_values_of_ended_calls_are_reclaimed_and_their_room_reused() -> None:
    p = Tracked(settings=dict(PROFILES, **{"dialog.profile_limits": "per_user=5"}),
                profile_values=16)
    _, dt = p.timers()
    for n in range(90, 105):  # 15 callers fill the counters with "calls"
        inv = invite(n).replace(b"sip:alice@", f"sip:user{n}@".encode())
        (fwd,) = only(p.feed(inv, CALLER), BOB1)
        p.feed(response_to(fwd, 486), BOB1)  # each call fails
    assert p.profiles.used == 16
    (r,) = only(p.feed(invite(105), CALLER), CALLER)
    assert status(r) == 503  # alice's value has no room
    recount(p, dt)  # nobody calls any more: every value goes
    assert p.profiles.used == 0 and p.profiles.reclaimed == 16
    (trying,) = only(p.feed(invite(106), CALLER), CALLER)
    assert status(trying) == 100
    recount(p, dt)  # alice's call is up: her value stays, counted once
    assert p.profiles.get([PF.name_of(b"", b"per_user/alice")]) == [1]
    assert p.profiles.used == 2
