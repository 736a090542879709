"""Transaction kernels and the proxy's compiled paths, per operation, and 1M concurrent
transactions in one table at the default widths.

    .venv/bin/pytest bench/test_bench_transactions.py --benchmark-only

Each benchmark is one call from Python (dispatch included), JIT compile excluded (the
session warms the kernels). The capacity check fills a 1M-transaction table (2.5 GB of
memory at proxy.record_bytes = 2048: run it on a machine that has it) and shows the
next request is refused.
"""
from __future__ import annotations

import mmap
import time

import numpy as np
import pytest

from fastcluster.shm import sipreq as RQ
from fastcluster.shm import sipscan as SC
from fastcluster.shm import table as T
from fastcluster.shm import tmring as TR
from fastcluster.shm import transactions as X
from fastcluster.shm.tables import Table
from fastcluster.services.sip import messages as M
from fastcluster.shm.txwork import TxWork

RECORD = 2048
ME = T.lock_word(4242, 1)
INVITE = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:5062;"
          b"branch=z9hG4bK-%d\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>"
          b"\r\nCall-ID: %d\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
TARGET = b"0\t203.0.113.21\t5081\tsip:bob@203.0.113.21:5081\t\t0\t0\n"


def shared(nbytes: int) -> np.ndarray:
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8)


def rig(capacity: int) -> tuple[np.ndarray, TxWork]:
    buf = shared(Table.size_for(X.TRANSACTION, capacity, RECORD, 3))
    Table.create(buf, X.TRANSACTION, capacity, RECORD, 3, 1)
    rings = np.zeros(TR.segment_size(3, 1 << 16), np.uint8)
    TR.init_segment(rings, 3, 1 << 16)
    p = np.array([500, 4000, 5000, 180000, 0, 0, 0, 0], np.int64)
    return buf, TxWork(buf, rings, 1, ME, p, [0] * 64)


def test_new_transaction(benchmark) -> None:
    buf, work = rig(2_000_000)
    n = iter(range(10 ** 9))

    def new() -> int:
        i = next(n)
        return work.request(X.K_REQUEST, b"b%d\0x\0INVITE" % i, INVITE % (i, i), TARGET,
                            b"\0", 1, X.F_INVITE, 1, 0, ("203.0.113.9", 5062))

    assert benchmark(new) == X.R_NEW


def test_reply_to_a_branch(benchmark) -> None:
    buf, work = rig(1000)
    work.request(X.K_REQUEST, b"b\0x\0INVITE", INVITE % (1, 1), TARGET, b"\0", 1, X.F_INVITE,
                 1, 0, ("203.0.113.9", 5062))
    key = work.out().key
    rsp = b"SIP/2.0 180 Ringing\r\n" + b"X: y\r\n" * 10 + b"\r\n"
    assert benchmark(lambda: work.reply(key, 0, 180, X.M_INVITE, rsp)) == X.R_MATCH


def test_compiled_reply_path(benchmark) -> None:
    buf, work = rig(1000)
    work.request(X.K_REQUEST, b"b\0x\0INVITE", INVITE % (1, 1), TARGET, b"\0", 1, X.F_INVITE,
                 1, 0, ("203.0.113.9", 5062))
    key = work.out().key
    data = np.frombuffer(
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=" +
        M.branch_id(key, 0, 1).encode() + b"\r\nVia: SIP/2.0/UDP 203.0.113.9:5062;branch=z9h"
        b"G4bK-1\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\n"
        b"Call-ID: 1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", np.uint8)
    mine = np.frombuffer(b"192.0.2.1:5060\0", np.uint8)
    scan = np.zeros(SC.S_WORDS, np.int64)
    r = benchmark(lambda: SC.fast_reply(buf, data, data.shape[0], mine, work.work, work.ring,
                                        work.params, ME, 1, 10 ** 7, 10 ** 4, scan))
    assert r == X.R_MATCH


def test_compiled_in_dialog_ack(benchmark) -> None:
    buf, work = rig(1000)
    data = np.frombuffer(
        b"ACK sip:bob@203.0.113.21:5081 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:5062;branch="
        b"z9hG4bK-a1\r\nRoute: <sip:192.0.2.1:5060;lr>\r\nFrom: <sip:a@example.com>;tag=1\r\n"
        b"To: <sip:bob@example.com>;tag=2\r\nCall-ID: 1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n", np.uint8)
    lst = np.array([[0xC0000201, 5060, 0, 14]], np.int64)
    text = np.frombuffer(b"192.0.2.1:5060", np.uint8)
    q = np.zeros(RQ.Q_WORDS, np.int64)
    src = np.zeros(16, np.uint8)
    r = benchmark(lambda: RQ.fast_request(buf, data, data.shape[0], lst, text, 0, 4, 5062, src,
                                          work.work, work.ring, work.params, ME, 1, 10 ** 7,
                                          10 ** 4, q))
    assert r == X.R_NOT_FOUND


@pytest.mark.slow
def test_a_million_concurrent_transactions_fit() -> None:
    """1M transactions at the default widths: all created, the next one refused (503)."""
    n = 1_000_000
    started = time.perf_counter()
    buf, work = rig(n)
    for i in range(n):
        r = work.request(X.K_REQUEST, b"m%d\0x\0INVITE" % i, INVITE % (i, i), TARGET, b"\0", 1,
                         X.F_INVITE, 1, 0, ("203.0.113.9", 5062))
        assert r == X.R_NEW
    assert work.request(X.K_REQUEST, b"one more\0x\0INVITE", INVITE % (0, 0), TARGET, b"\0", 1,
                        X.F_INVITE, 1, 0, ("203.0.113.9", 5062)) == X.E_FULL
    assert T.counters(buf)["live"] == n
    seconds = time.perf_counter() - started
    print(f"\n1M transactions: {buf.shape[0] / 2 ** 20:.0f} MB segment, "
          f"{buf.shape[0] / n:.0f} bytes each, filled in {seconds:.1f} s")
