"""Digest authentication through SipApp (the code a worker runs) with a real SQLite
subscriber database: challenge and answer, SHA-256 and MD5, refreshes with a rising
nonce count, replays, stale nonces, wrong passwords up to the 403, unknown users
answered like wrong passwords, identity against the To AOR, and nonces of one node
answered to another."""
from __future__ import annotations

import time
from unittest import mock

import pytest

from fastcluster.core import digest as D
from fastcluster.services.sip import subscribers
from tests.support.registrar import Harness, authorization, challenges, register

AUTH = {"auth.enable": "yes", "auth.algorithms": "SHA-256, MD5"}


def status(reply: str | None) -> int:
    assert reply is not None
    return int(reply.split(" ", 2)[1])


@pytest.fixture
def db(tmp_path) -> str:
    path = str(tmp_path / "subscriber.sqlite")
    subscribers.set_user(path, "alice@example.com", "", "wonderland", create=True)
    subscribers.set_user(path, "bob@example.com", "", "builder", create=True)
    return path


def login(h: Harness, user: str = "alice", password: str = "wonderland", alg: int = 0,
          **kw) -> tuple[str, dict[str, str]]:
    first = h.send(register(aor=f"{user}@example.com", **kw))
    assert status(first) == 401
    ch = challenges(first)[alg]
    reply = h.send(register(aor=f"{user}@example.com", cseq=kw.get("cseq", 1) + 1,
                            extra=authorization(ch, user, password)))
    return reply, ch


def test_no_credentials_get_a_challenge_per_algorithm(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    reply = h.send(register())
    assert status(reply) == 401
    chs = challenges(reply)
    assert [c["algorithm"] for c in chs] == ["SHA-256", "MD5"]
    assert {c["realm"] for c in chs} == {"example.com"} and chs[0]["qop"] == "auth"
    assert chs[0]["nonce"] == chs[1]["nonce"] and "stale" not in chs[0]
    assert h.contacts("alice@example.com") == [] and h.count("auth:challenges") == 1


@pytest.mark.parametrize("alg", [0, 1])  # SHA-256, MD5
def test_right_answer_registers(db: str, alg: int) -> None:
    h = Harness(settings=AUTH, db_path=db)
    reply, _ = login(h, alg=alg)
    assert status(reply) == 200
    assert len(h.contacts("alice@example.com")) == 1 and h.count("auth:accepted") == 1


def test_refreshes_reuse_the_nonce_with_a_rising_count(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    _, ch = login(h, alg=1)
    for cseq, nc in ((3, 2), (4, 3), (5, 7)):
        reply = h.send(register(cseq=cseq, extra=authorization(ch, "alice", "wonderland",
                                                                 nc=nc)))
        assert status(reply) == 200
    queries = h.credentials.queries
    assert queries == 1  # one SQLite lookup; the refreshes came from the cache
    assert h.count("auth:accepted") == 4


def test_replayed_answer_gets_a_stale_challenge(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    _, ch = login(h)
    answer = authorization(ch, "alice", "wonderland")  # nc 1 again, another CSeq
    reply = h.send(register(cseq=5, contacts=["<sip:mallory@198.51.100.1:5060>"],
                            extra=answer))
    assert status(reply) == 401 and challenges(reply)[0]["stale"] == "true"
    assert h.count("auth:replayed_nonces") == 1
    assert [c["uri"] for c in h.contacts("alice@example.com")] == \
        ["sip:alice@192.0.2.10:5070"]  # the replayed Contact never landed


def test_retransmission_of_an_answered_register_is_answered_again(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    first = h.send(register())
    answer = register(cseq=2, extra=authorization(challenges(first)[0], "alice", "wonderland"))
    ok = h.send(answer)
    version = h.contacts("alice@example.com")[0]["version"]
    again = h.send(answer)  # the phone did not get the 200 and sends the same again
    assert status(ok) == status(again) == 200
    assert h.contacts("alice@example.com")[0]["version"] == version  # nothing changed
    assert h.count("auth:retransmissions") == 1 and h.count("auth:replayed_nonces") == 0
    # the same credentials, Call-ID and CSeq but another Contact: not a retransmission
    forged = answer.replace("<sip:alice@192.0.2.10:5070>", "<sip:eve@198.51.100.1:5060>")
    assert status(h.send(forged)) == 401 and h.count("auth:replayed_nonces") == 1
    assert [c["uri"] for c in h.contacts("alice@example.com")] == \
        ["sip:alice@192.0.2.10:5070"]


def test_expired_nonce_with_right_password_is_stale(db: str) -> None:
    h = Harness(settings={**AUTH, "auth.nonce_expiry_s": "30"}, db_path=db)
    _, ch = login(h)
    later = time.time() + 31
    with mock.patch("time.time", return_value=later):
        reply = h.send(register(cseq=5, extra=authorization(ch, "alice", "wonderland", nc=2)))
    assert status(reply) == 401 and challenges(reply)[0]["stale"] == "true"
    assert h.count("auth:stale_nonces") == 1


def test_wrong_password_gets_new_challenges_then_403(db: str) -> None:
    h = Harness(settings={**AUTH, "auth.max_failures": "2"}, db_path=db)
    reply = h.send(register())
    answers = []
    for attempt in range(3):
        ch = challenges(reply)[0]
        reply = h.send(register(cseq=2 + attempt,
                                extra=authorization(ch, "alice", "not-the-password")))
        answers.append(status(reply))
    assert answers == [401, 401, 403]
    assert h.count("auth:failed") == 2 and h.count("auth:forbidden") == 1
    assert h.contacts("alice@example.com") == []


def test_unknown_user_is_answered_like_a_wrong_password(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    known = h.send(register(cseq=2, extra=authorization(
        challenges(h.send(register()))[0], "alice", "bad")))
    unknown = h.send(register(aor="zed@example.com", cseq=2, extra=authorization(
        challenges(h.send(register(aor="zed@example.com")))[0], "zed", "bad")))
    assert status(known) == status(unknown) == 401
    assert [l.split(" nonce=")[0] for l in known.split("\r\n") if "WWW" in l] == \
        [l.split(" nonce=")[0] for l in unknown.split("\r\n") if "WWW" in l]
    assert h.count("auth:unknown_users") == 1 and h.count("auth:failed") == 2


def test_authenticated_as_someone_else_is_403(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    ch = challenges(h.send(register(aor="alice@example.com")))[0]
    # bob's right password, for alice's AOR
    reply = h.send(register(aor="alice@example.com", cseq=2,
                            extra=authorization(ch, "alice", "builder", username="bob")))
    assert status(reply) == 403 and h.count("auth:identity_mismatch") == 1
    assert h.contacts("alice@example.com") == []


def test_wildcard_removal_needs_credentials_too(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    login(h)
    reply = h.send(register(cseq=9, contacts=["*"], expires=0))
    assert status(reply) == 401 and len(h.contacts("alice@example.com")) == 1


def test_nonce_of_another_node_sharing_the_key(db: str) -> None:
    key = D.derive_key("cluster")
    node1 = Harness(settings=AUTH, db_path=db, nonce_key=key)
    node2 = Harness(settings=AUTH, db_path=db, nonce_key=key)
    ch = challenges(node1.send(register()))[0]
    reply = node2.send(register(cseq=2, extra=authorization(ch, "alice", "wonderland")))
    assert status(reply) == 200
    node3 = Harness(settings=AUTH, db_path=db, nonce_key=D.derive_key("other"))
    reply = node3.send(register(cseq=3, extra=authorization(ch, "alice", "wonderland")))
    assert status(reply) == 401 and node3.count("auth:bad_nonces") == 1


def test_credentials_of_another_realm_are_not_ours(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    ch = dict(challenges(h.send(register()))[0], realm="elsewhere.org")
    reply = h.send(register(cseq=2, extra=authorization(ch, "alice", "wonderland")))
    assert status(reply) == 401 and h.count("auth:challenges") == 2


def test_malformed_answer_is_400(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    ch = challenges(h.send(register()))[0]
    bad = authorization(ch, "alice", "wonderland").replace("qop=auth, nc=00000001, ", "qop=auth, ")
    reply = h.send(register(cseq=2, extra=bad))
    assert status(reply) == 400 and h.count("auth:bad_credentials") == 1


def test_answer_without_qop_is_single_use(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    ch = challenges(h.send(register()))[1]
    answer = authorization(ch, "alice", "wonderland", qop=False)  # RFC 2069 style
    assert status(h.send(register(cseq=2, extra=answer))) == 200
    assert status(h.send(register(cseq=3, extra=answer))) == 401


def test_password_change_is_seen_after_refresh(db: str) -> None:
    h = Harness(settings=AUTH, db_path=db)
    assert status(login(h)[0]) == 200
    subscribers.set_user(db, "alice@example.com", "", "new-password", create=False)
    h.credentials.refresh()  # what the worker does on its idle beat
    reply, _ = login(h, cseq=10)
    assert status(reply) == 401  # the old password no longer works
    assert status(login(h, password="new-password", cseq=20)[0]) == 200


def test_fixed_realm(tmp_path) -> None:
    path = str(tmp_path / "s.sqlite")
    subscribers.set_user(path, "alice@example.com", "fastcluster", "pw", create=True)
    h = Harness(settings={**AUTH, "auth.realm": "fastcluster"}, db_path=path)
    reply, ch = login(h, password="pw")
    assert ch["realm"] == "fastcluster" and status(reply) == 200


def test_database_error_is_500_and_counted(tmp_path) -> None:
    path = tmp_path / "gone.sqlite"
    h = Harness(settings=AUTH, db_path=str(path))
    path.unlink()
    ch = challenges(h.send(register()))[0]
    reply = h.send(register(cseq=2, extra=authorization(ch, "alice", "x")))
    assert status(reply) == 500 and h.count("auth:db_errors") == 1
