"""Micro-benchmarks of digest authentication in a SIP worker: what an authenticated
REGISTER adds to the plain one, piece by piece, and the subscriber cache (an LRU hit
against an SQLite read of a 200k-user database). Figures are reported, not asserted.

Run: .venv/bin/pytest bench/test_bench_auth.py --benchmark-only -q
"""
from __future__ import annotations

import itertools
import time

import pytest

from fastcluster.core import digest as D
from fastcluster.services.sip import subscribers
from tests.support.registrar import Harness, authorization, challenges, register

USERS = 200_000


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("auth") / "subscriber.sqlite")
    subscribers.add_users(path, ((f"u{i}@example.com", "pw") for i in range(USERS)))
    return path


@pytest.fixture(scope="module")
def answer() -> tuple[str, dict[str, str]]:
    codec = D.NonceCodec(b"k" * 32)
    ch = {"realm": "example.com", "nonce": codec.make(int(time.time()), 0, 1),
          "algorithm": "MD5"}
    line = authorization(ch, "u1", "pw")
    return line.split(": ", 1)[1], ch


def test_parse_credentials(benchmark, answer) -> None:
    value, _ = answer
    assert benchmark(D.parse_credentials, value)["username"] == "u1"


def test_open_nonce_first_time_and_cached(benchmark, answer) -> None:
    _, ch = answer
    codec = D.NonceCodec(b"k" * 32)
    now = int(time.time())

    def first() -> D.NonceInfo:
        codec._opened.clear()
        return codec.open(ch["nonce"], now, 300)

    assert benchmark(first).state is D.Nonce.VALID
    started = time.perf_counter()
    for _ in range(10000):
        codec.open(ch["nonce"], now, 300)
    benchmark.extra_info["cached_us"] = (time.perf_counter() - started) / 10000 * 1e6


def test_expected_response(benchmark, answer) -> None:
    value, ch = answer
    p = D.parse_credentials(value)
    h = D.ha1("MD5", "u1", "example.com", "pw")
    assert benchmark(D.expected_response, "MD5", h, ch["nonce"], "REGISTER", p["uri"],
                     "auth", p["nc"], p["cnonce"]) == p["response"]


def test_credentials_sqlite_miss(benchmark, db) -> None:
    cache = subscribers.CredentialCache(db, 0)  # no cache: every lookup reads SQLite
    names = itertools.cycle(range(0, USERS, 7))
    benchmark(lambda: cache.lookup(f"u{next(names)}", "example.com"))
    cache.close()


def test_credentials_cache_hit(benchmark, db) -> None:
    cache = subscribers.CredentialCache(db, 1024)
    cache.lookup("u1", "example.com")
    assert benchmark(cache.lookup, "u1", "example.com") is not None
    cache.close()


def test_authenticated_refresh_beside_plain(benchmark, db) -> None:
    """One REGISTER refresh through SipApp with a digest answer (nonce count rising);
    the plain refresh, same code without authentication, in extra_info and printed."""
    h = Harness(capacity=1000, settings={"auth.enable": "yes", "auth.algorithms": "MD5"},
                db_path=db)
    ch = challenges(h.send(register(aor="u1@example.com")))[0]
    src = ("192.0.2.10", 5070)
    rounds = 2000
    auth = iter([register(aor="u1@example.com", cseq=n, extra=authorization(
        ch, "u1", "pw", nc=n - 1)).replace("\n", "\r\n").encode()
        for n in range(2, rounds + 12)])
    benchmark.pedantic(lambda: h.app.handle(next(auth), src, h.listener), rounds=rounds,
                       iterations=1, warmup_rounds=10)
    assert h.count("auth:accepted") == rounds + 10 and h.count("auth:replayed_nonces") == 0
    plain = Harness(capacity=1000)
    datas = [register(cseq=n).replace("\n", "\r\n").encode() for n in range(1, rounds + 1)]
    started = time.perf_counter()
    for data in datas:
        plain.app.handle(data, src, plain.listener)
    plain_us = (time.perf_counter() - started) / rounds * 1e6
    benchmark.extra_info["plain_refresh_us"] = plain_us
    assert plain.count("registrar:accepted_regs") == rounds
    print(f"\nauthenticated refresh: {benchmark.stats.stats.median * 1e6:.1f} us median; "
          f"plain refresh: {plain_us:.1f} us mean")
