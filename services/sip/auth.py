"""Digest authentication of requests in a SIP worker: the answer to check, the
challenge to send, the counter that says why.

`Authenticator.check(msg, aor)` finds the Authorization for our realm, opens its
nonce (core.digest: stateless, so one issued by any node sharing the key is good),
looks the user up (services.sip.subscribers: cached, SQLite only on a miss), checks
the response, the identity against the To AOR, and finally the nonce count in the
node's replay table (shm.nonces). core.digest.decide makes the decision; this module
is the I/O around it. Unknown users and wrong passwords get the same answers, so
users cannot be enumerated. Neighbours: services.sip.registrar (the caller).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from fastcluster.core import digest as D
from fastcluster.core.config import Config
from fastcluster.core.sip import SipMessage
from fastcluster.core.stats import INDEX
from fastcluster.services.sip.subscribers import Credentials, StoreError

# verdict -> (status, reason); 401s carry a challenge
ANSWERS = {
    D.Verdict.CHALLENGE: (401, "Unauthorized"),
    D.Verdict.BAD_NONCE: (401, "Unauthorized"),
    D.Verdict.STALE: (401, "Unauthorized"),
    D.Verdict.REPLAYED: (401, "Unauthorized"),
    D.Verdict.TABLE_FULL: (401, "Unauthorized"),
    D.Verdict.FAILED: (401, "Unauthorized"),
    D.Verdict.FORBIDDEN: (403, "Forbidden"),
    D.Verdict.MISMATCH: (403, "Forbidden: authenticated as another user"),
    D.Verdict.MALFORMED: (400, "Bad Authorization header"),
}
STALE = frozenset((D.Verdict.STALE, D.Verdict.REPLAYED, D.Verdict.TABLE_FULL))
COUNTER = {v: INDEX[f"auth:{v.value}"] for v in D.Verdict}
I_UNKNOWN, I_DB_ERRORS = INDEX["auth:unknown_users"], INDEX["auth:db_errors"]


class Replay(Protocol):
    def use(self, name: int, nc: int, now_s: int, expires_s: int) -> int: ...


class Store(Protocol):
    def lookup(self, username: str, domain: str) -> Credentials | None: ...


@dataclass
class Outcome:
    verdict: D.Verdict
    status: int  # 0: accepted
    reason: str
    headers: list[tuple[str, str]]


ACCEPTED = Outcome(D.Verdict.ACCEPT, 0, "", [])


def split_aor(aor: str) -> tuple[str, str]:
    """(unescaped user, domain without port) of an AOR key (core.sip.canonical_aor)."""
    if aor.startswith("sips:"):
        aor = aor[5:]
    user, _, hostport = aor.rpartition("@")
    if hostport.startswith("["):
        host = hostport[:hostport.find("]") + 1]
    else:
        host = hostport.partition(":")[0]
    if "%" in user:
        raw = bytearray()
        i = 0
        while i < len(user):
            if user[i] == "%":
                raw.append(int(user[i + 1:i + 3], 16))
                i += 3
            else:
                raw += user[i].encode()
                i += 1
        user = raw.decode("utf-8", "surrogateescape")
    return user, host


class Authenticator:
    def __init__(self, cfg: Config, key: bytes, replay: Replay, store: Store,
                 counts: list[int]) -> None:
        self.codec = D.NonceCodec(key)
        self.replay = replay
        self.store = store
        self.counts = counts
        self.node = cfg["clusterer.node_id"]
        self.apply_config(cfg)

    def apply_config(self, cfg: Config) -> None:
        self.realm = cfg["auth.realm"]
        self.algorithms: tuple[str, ...] = cfg["auth.algorithms"]
        self.expiry_s = cfg["auth.nonce_expiry_s"]
        self.max_failures = cfg["auth.max_failures"]

    def challenge(self, realm: str, failures: int, stale: bool) -> list[tuple[str, str]]:
        nonce = self.codec.make(int(time.time()), failures, self.node)
        return D.challenge(realm, nonce, self.algorithms, stale)

    def check(self, msg: SipMessage, aor: str) -> Outcome:
        """Accept msg as sent by the owner of aor, or say what to answer instead."""
        user, domain = split_aor(aor)
        realm = self.realm or domain
        verdict, failures = self._verdict(msg, user, domain, realm)
        if verdict is not D.Verdict.REPLAYED:  # the registrar tells replays from
            self.counts[COUNTER[verdict]] += 1  # retransmissions, and counts them
        if verdict is D.Verdict.ACCEPT:
            return ACCEPTED
        status, reason = ANSWERS[verdict]
        headers: list[tuple[str, str]] = []
        if status == 401:
            headers = self.challenge(realm, failures, verdict in STALE)
        return Outcome(verdict, status, reason, headers)

    def _verdict(self, msg: SipMessage, user: str, domain: str, realm: str
                 ) -> tuple[D.Verdict, int]:
        """(verdict, failures to carry in the next nonce)."""
        params = None
        for name, value in msg.headers:
            if name == "authorization":
                p = D.parse_credentials(value)
                if p is not None and p.get("realm") == realm:
                    params = p
                    break
        if params is None:
            return D.Verdict.CHALLENGE, 0
        fields = D.answer_fields(params, self.algorithms)
        if fields is None:
            return D.Verdict.MALFORMED, 0
        algorithm, qop, nc = fields
        now = int(time.time())
        nonce = self.codec.open(params["nonce"], now, self.expiry_s)
        if nonce.state is D.Nonce.INVALID:
            return D.decide(nonce.state, False, 0, 0, False, 0), 0
        try:
            creds = self.store.lookup(params["username"], domain)
        except StoreError:
            self.counts[I_DB_ERRORS] += 1
            raise
        stored = creds.for_algorithm(algorithm) if creds is not None else ""
        if creds is None:
            self.counts[I_UNKNOWN] += 1
        response_ok = bool(stored) and D.hmac.compare_digest(
            D.expected_response(algorithm, stored, params["nonce"], msg.method,
                                params["uri"], qop, params.get("nc", ""),
                                params.get("cnonce", "")),
            params["response"].lower())
        identity_ok = params["username"] == user
        replay = D.USE_OK
        if response_ok and identity_ok and nonce.state is D.Nonce.VALID:
            replay = self.replay.use(nonce.tag, nc, now, nonce.issued_s + self.expiry_s)
        verdict = D.decide(nonce.state, response_ok, nonce.failures, self.max_failures,
                           identity_ok, replay)
        return verdict, nonce.failures + 1 if verdict is D.Verdict.FAILED else 0
