"""Compile (first run) or load (cached) every numba kernel, with the exact argument types
production uses, so that forked children never compile.

`freeze_kernels` then forbids compiling: a call with argument types that were not warmed
(a read-only array, another integer width) raises at once instead of compiling for tens
of seconds inside a process whose heartbeat the master watches.

The master calls `warm_kernels()` before it forks; `fastcluster warm` and the test
session call it once to fill the cache (NUMBA_CACHE_DIR must be set before numba is
imported: core.cli does it). Neighbours: every kernel module in shm/.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fastcluster.shm import contacts as C
from fastcluster.shm import dialogs as D
from fastcluster.shm import dlg_invite as DY
from fastcluster.shm import mmsg as M
from fastcluster.shm import nonces as N
from fastcluster.shm import partitions as P
from fastcluster.shm import plainreg as PR
from fastcluster.shm import profiles as PF
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm import tmring as TR
from fastcluster.shm import tmwheel as W
from fastcluster.shm import transactions as X
from fastcluster.shm.dialogs import DIALOG, pack_dialog
from fastcluster.shm.tables import ContactTable, Table
from fastcluster.shm.txwork import TxWork


KERNEL_MODULES = (C, D, DY, M, P, PF, PR, R, T)


def freeze_kernels() -> int:
    """Disable compilation on every kernel warm_kernels compiled; returns how many."""
    frozen = 0
    for module in KERNEL_MODULES:
        for value in vars(module).values():
            if hasattr(value, "disable_compile") and getattr(value, "signatures", None):
                value.disable_compile()
                frozen += 1
    return frozen


Progress = Callable[[int, int, str, float], None]  # (steps done, steps, step, seconds)
STEPS = ("tables", "contacts", "dialogs", "dialog tracking and profiles",
         "replication and sync", "partitions and NAT "
         "pinging", "nonces", "timer and recovery", "transactions")


def warm_kernels(progress: Progress | None = None) -> float:
    """Run every kernel once on small tables; returns the seconds it took. progress is
    called after each of STEPS (the first compile takes minutes: say where it is)."""
    started = time.perf_counter()
    done = iter(range(1, len(STEPS) + 1))

    def step(name: str) -> None:
        assert name in STEPS
        if progress is not None:
            progress(next(done), len(STEPS), name, time.perf_counter() - started)

    nprocs = 2
    ring_buf = np.zeros(R.segment_size(nprocs, 1 << 16), dtype=np.uint8)
    R.init_segment(ring_buf, nprocs, 1 << 16)
    ring = R.region(ring_buf, 1)
    ct_buf = np.zeros(Table.size_for(C.CONTACT, 64, 256, nprocs), dtype=np.uint8)
    contacts = Table.create(ct_buf, C.CONTACT, 64, 256, nprocs, 1)
    assert isinstance(contacts, ContactTable)
    dl_buf = np.zeros(Table.size_for(DIALOG, 64, 512, nprocs), dtype=np.uint8)
    dialogs = Table.create(dl_buf, DIALOG, 64, 512, nprocs, 1)
    me = T.lock_word(1, 1)
    now_s = int(time.time())
    step("tables")

    # contacts: register, read, remove
    work = np.zeros(C.WORK_BYTES, dtype=np.uint8)
    req = work[C.WORK_REQ:C.WORK_OUT]
    C.pack_register(req, memoryview(req), aor=b"warm@x", callid=b"c", cseq=1, user_agent=b"",
                    path=b"", now_s=now_s, now_ms=now_s * 1000, max_contacts=4,
                    wildcard=False, recv_family=0, recv_port=0, recv_addr=bytes(16), sock=0,
                    flags=0, methods=0, contacts=[(b"sip:warm@x", b"", 60, -1, 0, -1, 0)])
    C.ul_register(ct_buf, ring, work, me, 1)
    row = np.zeros(contacts.row_size, dtype=np.uint8)
    contacts.group(b"warm@x")
    list(contacts.rows())
    contacts.digest()
    dialogs.digest()
    contacts.count_groups()
    contacts.remove(b"warm@x", b"", ring, me, 1)
    C.contact_key_of(b"warm@x", b"sip:warm@x")
    C.contact_key_of(b"warm@x", b"sip:warm@x", b"<urn:x>", 1)
    _warm_plain_register(ct_buf, ring, work, me, now_s)
    step("contacts")

    # dialogs: generic put
    drow = np.zeros(dialogs.row_size, dtype=np.uint8)
    pack_dialog(drow, dialogs.row_size, strings={"callid": b"w", "from_tag": b"t"},
                timeout=now_s + 60, start=now_s, dlg_state=4)
    dialogs.put(drow, ring, me, 1)
    rows = np.zeros(dialogs.row_size * 2, dtype=np.uint8)
    rows[:dialogs.row_size] = drow
    T.table_put_batch(dl_buf, ring, rows, 1, now_s * 1000, me, 1, np.zeros(2, np.int64))
    keys = np.zeros(1, dtype=np.uint64)
    T.table_find(dl_buf, keys[0], keys[0])
    T.table_find_batch(dl_buf, keys, keys, np.zeros(1, dtype=np.int64))
    step("dialogs")

    _warm_dialogs(dialogs, dl_buf, ring, me, now_s)
    step("dialog tracking and profiles")

    # replication and sync paths
    wire = np.zeros(1 << 16, dtype=np.uint8)
    n = R.ring_drain(ring, wire, 0)
    R.ring_take_gap(ring)
    R.rings_drain(ring_buf, 0, wire, 0)
    R.rings_take_gaps(ring_buf, 0)
    R.rings_low_version(ring_buf, 0)
    for buf in (ct_buf, dl_buf):  # the generic kernels, for every table of TABLES
        counts = np.zeros(T.APPLY_COUNTS, dtype=np.int64)
        T.apply_entries(buf, wire, n if buf is ct_buf else 0, now_s, 60, me, 1, R.no_ring(),
                        T.NO_SEEN, counts)
        T.apply_entries(buf, wire, 0, now_s, 60, me, 1, R.no_ring(),
                        np.zeros(8, dtype=np.uint8), counts)
        T.table_gather_ranges(buf, np.ones(T.NRANGES, np.uint8), 0, wire, wire.shape[0],
                              np.zeros(T.GATHER_COUNTS, np.int64))
        T.entries_summary(wire, 0)
        T.table_newest(buf)
        T.table_mark_all(buf)
        T.table_take_dirty(buf, 0, wire, wire.shape[0], np.zeros(T.GATHER_COUNTS, np.int64))
        T.table_mirror_drop(buf, np.zeros(1 << 16, np.uint8), 0, now_s, me, 1, R.no_ring(),
                            np.zeros(1024, np.uint8), np.zeros(1, np.int64))
        T.table_gather(buf, 0, wire, wire.shape[0], np.zeros(T.GATHER_COUNTS, np.int64))
        T.table_since(buf, 0, 0, 1, wire, wire.shape[0])
    step("replication and sync")

    # partitions and NAT pinging
    owners = np.zeros(16, dtype=np.uint16)
    P.compute_owners(np.array([1, 2], dtype=np.int64), 2, owners)
    slots = np.zeros(8, dtype=np.int64)
    n, _ = P.select_due(ct_buf, 0, 8, owners, owners, 1, np.zeros(0, np.uint8), slots, 8)
    P.select_due(ct_buf, 0, 8, owners, owners, 1, np.ones(16, np.uint8), slots, 8)
    P.ping_targets(ct_buf, slots, 0, n, now_s, True, 1, np.zeros(4096, np.uint8), 4096)
    P.mark_ping(ct_buf, slots, 0)
    P.mark_reply(ct_buf, 0, np.uint64(2), now_s)
    P.missed_over(ct_buf, slots, 0, 1, slots)
    P.count_owned(ct_buf, owners, 1, True, 1)
    C.ul_remove_slot(ct_buf, ring, 0, np.uint64(2), now_s * 1000, me, 1, row)
    step("partitions and NAT pinging")

    # digest nonce replay table
    nb = np.zeros(N.segment_size(64), dtype=np.uint8)
    N.init_segment(nb, 64, bytes(32))
    N.NonceTable(nb).use(12345, 1, now_s, now_s + 60)
    step("nonces")

    # timer and recovery
    contacts.expire(now_s, 60, 3600, np.zeros(T.NODE_IDS, dtype=np.int64), me)
    contacts.repair(ring, 1, 1, T.lock_word(2, 0))
    T.table_salvage(ct_buf)
    step("timer and recovery")

    _warm_transactions(nprocs, me, now_s)
    step("transactions")
    return time.perf_counter() - started


def _warm_plain_register(ct_buf: np.ndarray, ring: np.ndarray, work: np.ndarray, me: int,
                         now_s: int) -> None:
    """shm.plainreg with services.sip.plainreg's argument types (the datagram a
    read-only view of the received bytes)."""
    words = np.zeros(PR.W_WORDS, dtype=np.int64)
    data = (b"REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKw;rport"
            b"\r\nFrom: <sip:w@x>;tag=1\r\nTo: <sip:w@x>\r\nCall-ID: w\r\nCSeq: 1 REGISTER"
            b"\r\nContact: <sip:w@10.0.0.1:5060>\r\nExpires: 60\r\n\r\n")
    words[PR.W_N], words[PR.W_SRC_PORT], words[PR.W_SRC_IP_LEN] = len(data), 5060, 8
    words[PR.W_NOW_S], words[PR.W_NOW_MS] = now_s, now_s * 1000
    words[PR.W_MAX_EXPIRES], words[PR.W_DEFAULT_EXPIRES] = 3600, 3600
    words[PR.W_MAX_CONTACTS] = 4
    n = PR.plain_register(ct_buf, ring, work, me, 1, np.frombuffer(data, dtype=np.uint8),
                          np.frombuffer(b"10.0.0.1", dtype=np.uint8).copy(), words,
                          np.zeros(4, np.uint8), np.zeros(0, np.uint8), np.zeros(8, np.uint8),
                          np.zeros(1 << 16, np.uint8))
    assert n > 0, n
    # the batch way (services.sip.batch), on no socket: compiled, nothing received
    batch = M.Batch(1024, 1)
    assert M.recv_batch(-1, batch.rx, batch.size, M.MSG_DONTWAIT) < 0
    assert M.wait_batch(-1, -1, batch.rx, batch.events, 0, np.zeros(2, np.int64)) < 0
    sent = np.zeros(3, dtype=np.int64)
    assert PR.answer_batch(ct_buf, ring, work, me, 1, -1, 0, batch.rx, batch.names,
                           batch.bufs, words, np.zeros(4, np.uint8), np.zeros(0, np.uint8),
                           np.zeros(8, np.uint8), batch.tx, batch.tx_iov, batch.outs,
                           batch.status, sent) == 0
    assert PR.serve(-1, M.MSG_DONTWAIT, -1, batch.events, 0, 0, 1, ct_buf, ring, work, me,
                    1, batch.rx, batch.names, batch.bufs, words, np.zeros(4, np.uint8),
                    np.zeros(0, np.uint8), np.zeros(8, np.uint8), batch.tx, batch.tx_iov,
                    batch.outs, batch.status, sent, np.zeros(8, np.int64),
                    np.zeros(PR.C_COUNTERS, np.int64)) < 0


def _warm_dialogs(dialogs: Table, dl_buf: np.ndarray, ring: np.ndarray, me: int,
                  now_s: int) -> None:
    """Dialog tracking, timers and profile counts, with the types their callers use
    (services.sip.dialogs / dialog_timer / dialog MI, shm.profiles.ProfileCounters)."""
    patch = np.zeros(dialogs.row_size, dtype=np.uint8)
    out = np.zeros(dialogs.row_size, dtype=np.uint8)
    strings = {"callid": b"warm-call", "from_tag": b"f", "shtag": b"vip",
               "profiles": b"calls\ncalls_per_user/warm"}
    for op, state in ((D.OP_CREATE, D.DLG_UNCONFIRMED), (D.OP_UPDATE, D.DLG_CONFIRMED_NA),
                      (D.OP_FAIL, 0), (D.OP_DELETE, 0)):
        D.pack_dialog(patch, dialogs.row_size, strings=strings, timeout=now_s + 60,
                      start=now_s, dlg_state=state, creator=1)
        D.dlg_apply(dl_buf, ring, patch, op, now_s * 1000, me, 1, out)
    # an in-dialog ACK and BYE (the compiled relay's way: its request read only, its
    # identity words a slice of fast_request's answer words)
    D.pack_dialog(patch, dialogs.row_size, strings=strings, timeout=now_s + 60,
                  start=now_s, dlg_state=D.DLG_UNCONFIRMED, creator=1)
    D.dlg_apply(dl_buf, ring, patch, D.OP_CREATE, now_s * 1000, me, 1, out)
    for method in (b"ACK", b"BYE"):
        req = np.frombuffer(method + b" sip:b SIP/2.0\r\nFrom: <sip:a>;tag=f\r\n"
                            b"To: <sip:b>;tag=t\r\nCall-ID: warm-call\r\n\r\n", np.uint8)
        words = np.zeros(8 + D.ID_WORDS, dtype=np.int64)
        ident = words[8:]
        head = req.tobytes()
        for (s_at, e_at), name in (((D.ID_FROM_S, D.ID_FROM_E), b"From: "),
                                   ((D.ID_TO_S, D.ID_TO_E), b"To: "),
                                   ((D.ID_CALLID_S, D.ID_CALLID_E), b"Call-ID: ")):
            ident[s_at] = head.index(name) + len(name)
            ident[e_at] = head.index(b"\r\n", int(ident[s_at]))
        ident[D.ID_METHOD] = D.ID_ACK if method == b"ACK" else D.ID_BYE
        ident[D.ID_CSEQ] = 1
        D.dlg_in_dialog(dl_buf, ring, req, ident, now_s * 1000, me, 1, patch, out)
    # an initial INVITE's dialog (services.sip.dialog_invite: read only, its arrays)
    inv = np.frombuffer(b"INVITE sip:b SIP/2.0\r\nRecord-Route: <sip:p;lr>\r\n"
                        b"From: <sip:a>;tag=f2\r\nTo: <sip:b>\r\nCall-ID: warm-call\r\n"
                        b"Contact: <sip:a@h>\r\n\r\n", np.uint8)
    cwords = np.zeros(DY.C_WORDS, dtype=np.int64)
    cwords[DY.W_NOW_S], cwords[DY.W_NOW_MS] = now_s, now_s * 1000
    text = np.frombuffer(b"udp:127.0.0.1:5060 1.2.3.4:5", np.uint8).copy()
    DY.dlg_invite_create(dl_buf, ring, inv, text, text, np.zeros(0, dtype=np.uint8), cwords,
                         me, 1, patch, out)
    # responses to the INVITE (services.sip.dialog_invite: read only, its arrays)
    mine = np.array([[0, 9, 5060]], dtype=np.int64)
    mine_text = np.frombuffer(b"127.0.0.1", dtype=np.uint8).copy()
    words = np.zeros(DY.W_WORDS, dtype=np.int64)
    for status, final, sock in ((180, 0, b""), (200, 0, b"udp:127.0.0.1:5060 1.2.3.4:5"),
                                (486, 486, b"")):
        rpl = np.frombuffer(b"SIP/2.0 %d X\r\nRecord-Route: <sip:127.0.0.1:5060;lr>, "
                            b"<sip:p;lr>\r\nFrom: <sip:a>;tag=f\r\nTo: <sip:b>;tag=t\r\n"
                            b"Call-ID: warm-call\r\nContact: <sip:b@h>\r\n\r\n" % status,
                            np.uint8)
        words[DY.W_STATUS], words[DY.W_FINAL], words[DY.W_NOW_S] = status, final, now_s
        words[DY.W_NOW_MS] = now_s * 1000
        DY.dlg_invite_reply(dl_buf, ring, rpl, mine, mine_text,
                            np.frombuffer(sock, np.uint8).copy() if sock else
                            np.zeros(0, dtype=np.uint8), words, me, 1, patch, out)
    key, group = D.dialog_ids(b"warm-call", b"f")
    D.dlg_get(dl_buf, np.uint64(key), np.uint64(group), out)
    D.dlg_ping_mark(dl_buf, np.uint64(key), np.uint64(group), 0, 0)
    slots = np.zeros(4, dtype=np.int64)
    rows = np.zeros(4 * dialogs.row_size, dtype=np.uint8)
    D.dlg_due(dl_buf, 0, 16, now_s, True, rows, slots, 4)
    D.dlg_due(dl_buf, 0, 16, now_s, False, rows, slots, 4)
    D.dlg_count_states(dl_buf, np.zeros(D.NSTATES, dtype=np.int64))
    seg = np.zeros(PF.segment_size(64), dtype=np.uint8)
    PF.init_segment(seg, 64)
    counters = PF.ProfileCounters(seg)
    names = [PF.name_of(b"vip", b"calls"), PF.name_of(PF.REMOTE_SCOPE, b"calls")]
    counters.add(names, 1)
    counters.get(names)
    counters.set_remote({b"calls": 1})
    scratch = np.zeros(counters.nslots, dtype=np.int64)
    PF.prof_begin(seg, scratch)
    PF.prof_scan(dl_buf, seg, 0, dialogs.nslots, np.frombuffer(b"vip\0", np.uint8).copy(), 1,
                 1, scratch, np.zeros(dialogs.row_size, np.uint8),
                 np.zeros(PF.NAME_BYTES, np.uint8))
    PF.prof_end(seg, scratch)
    counters.add_each(names, -1)
    sent = np.zeros(counters.nslots, dtype=np.int64)
    PF.prof_local_delta(seg, sent, sent.copy(), True,
                        np.zeros((counters.nslots, 4), dtype=np.int64))


def _warm_transactions(nprocs: int, me: int, now_s: int) -> None:
    """The transaction kernels, through the same Python wrappers production uses."""
    tx_buf = np.zeros(Table.size_for(X.TRANSACTION, 64, 2048, nprocs), dtype=np.uint8)
    txs = Table.create(tx_buf, X.TRANSACTION, 64, 2048, nprocs, 1)
    rings_buf = np.zeros(TR.segment_size(nprocs, 64), dtype=np.uint8)
    TR.init_segment(rings_buf, nprocs, 64)
    params = np.array([500, 4000, 5000, 180000, 0, 0, 0, 0], dtype=np.int64)
    work = TxWork(tx_buf, rings_buf, 1, me, params, [0] * 4096)
    src = ("127.0.0.1", 5060)
    for kind in (X.K_REQUEST, X.K_ACK, X.K_CANCEL):
        work.request(kind, b"warm", b"INVITE sip:w SIP/2.0\r\n\r\n", b"t\n", b"\0", 1,
                     X.F_INVITE, 1, 0, src)
    key = work.out().key
    work.reply(key, 0, 180, X.M_INVITE, b"SIP/2.0 180 x\r\n\r\n")
    work.reply(key, 0, 486, X.M_INVITE, b"SIP/2.0 486 x\r\n\r\n")
    X.tx_read(tx_buf, 0, np.uint64(key), np.zeros(txs.row_size, dtype=np.uint8))
    X.tx_count(tx_buf)
    X.ident_key(b"warm")
    wheel = W.wheel_new(256, 0)
    W.wheel_insert(wheel, 5, 0, 2)
    out = np.zeros((4, W.ACTION_WORDS), dtype=np.int64)
    W.tm_tick(tx_buf, TR.all_rings(rings_buf), wheel, params, 10 ** 7, now_s, me, 1, out, 16)
    W.tm_sweep(tx_buf, wheel, 0, 1, 0, -1, me)
    txs.expire(now_s, 0, 3600, np.zeros(T.NODE_IDS, dtype=np.int64), me)
    txs.repair(R.no_ring(), 1, 1, T.lock_word(2, 0))
    from fastcluster.shm import sipscan as SC

    reply = np.frombuffer(b"SIP/2.0 180 R\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bKfc" +
                          b"0" * 25 + b"\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\n"
                          b"CSeq: 1 INVITE\r\n\r\n", dtype=np.uint8)
    mine = np.frombuffer(b"a:1\0", dtype=np.uint8)
    SC.fast_reply(tx_buf, reply, reply.shape[0], mine, work.work, work.ring, params, me, 1,
                  0, now_s, np.zeros(SC.S_WORDS, dtype=np.int64))
    from fastcluster.shm import sipreq as RQ

    lst = np.array([[0x7F000001, 5060, 0, 14]], dtype=np.int64)
    text = np.frombuffer(b"127.0.0.1:5060", dtype=np.uint8)
    for method in (b"ACK", b"BYE"):
        req = np.frombuffer(method + b" sip:b@127.0.0.2:5062 SIP/2.0\r\nVia: SIP/2.0/UDP "
                            b"127.0.0.3:5061;branch=z9hG4bK1\r\nRoute: <sip:127.0.0.1:5060;"
                            b"lr>\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c"
                            b"\r\nCSeq: 1 " + method + b"\r\n\r\n", dtype=np.uint8)
        RQ.fast_request(tx_buf, req, req.shape[0], lst, text, 0, 4, 5061,
                        np.zeros(16, dtype=np.uint8), work.work, work.ring, params, me, 1, 0,
                        now_s, np.zeros(RQ.Q_WORDS, dtype=np.int64))
