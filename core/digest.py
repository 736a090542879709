"""HTTP Digest for SIP (RFC 3261 §22, RFC 7616 hashing as RFC 8760 brings it to SIP):
credentials parsing, the hashes, stateless nonces, and the decision on an answer.

Pure logic, no I/O: services.sip.auth feeds it the request, the stored HA1 and the
replay table's word, and turns its verdict into 401/403 replies and counters.

Nonces are stateless so any node holding the same key verifies them (a phone
challenged by node 1 may answer node 2): 24 bytes, base64url (32 characters):

    offset  size  field
    0       1     version (NONCE_VERSION)
    1       4     issue time, unix seconds (big-endian)
    5       1     failed answers so far (the 403 after auth.max_failures travels here)
    6       2     node id that issued it
    8       4     random salt
    12      12    HMAC-SHA-256(key, bytes 0..11), truncated

The first 8 MAC bytes name the nonce in the replay table (shm.nonces), which keeps
the highest nonce count seen per nonce until it expires.
"""
from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import re
import struct
from typing import NamedTuple

NONCE_VERSION = 1
NONCE_HEAD = struct.Struct(">BIBHI")
NONCE_BYTES = NONCE_HEAD.size + 12
NONCE_CHARS = NONCE_BYTES * 4 // 3
CLOCK_SKEW_S = 5  # a nonce "issued" further in the future than this is not ours
OPENED_CACHE = 8192  # verified nonces a worker remembers (cleared when full)

HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
HEX_LENGTHS = {name: 2 * h().digest_size for name, h in HASHES.items()}
# Columns of the subscriber table holding each algorithm's HA1 (OpenSIPS names).
HA1_COLUMNS = {"MD5": "ha1", "SHA-256": "ha1_sha256"}

# auth-param: name = token / quoted-string, comma separated (RFC 7616 §3.4). The
# quoted-string is written unrolled ("[^"\\]*(?:\\.[^"\\]*)*"): an alternation per character
# made parsing a phone's answer cost 23 us instead of 3.
_NAME = r"[A-Za-z][A-Za-z0-9_\-*]*"
_VALUE = r'"[^"\\]*(?:\\.[^"\\]*)*"|[^ \t,"]*'
_ITEMS_RE = re.compile(rf"[ \t]*({_NAME})[ \t]*=[ \t]*({_VALUE})[ \t]*(?:,|\Z)", re.S)
_ALL_ITEMS_RE = re.compile(rf"(?:[ \t]*{_NAME}[ \t]*=[ \t]*(?:{_VALUE})[ \t]*(?:,|\Z))*", re.S)
_UNQUOTE_RE = re.compile(r"\\(.)", re.S)
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")
_HEX = frozenset("0123456789abcdef")


def derive_key(secret: str) -> bytes:
    """The nonce key of a shared secret (the same on every node that shares it)."""
    return hmac.new(b"fastcluster digest nonce key", secret.encode(), hashlib.sha256).digest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), hex, as the subscriber table stores it."""
    return HASHES[algorithm](f"{username}:{realm}:{password}".encode()).hexdigest()


def expected_response(algorithm: str, ha1_hex: str, nonce: str, method: str, uri: str,
                      qop: str, nc: str, cnonce: str) -> str:
    """The response a client knowing the password sends (RFC 7616 §3.4.1; qop auth or
    none, the RFC 2069 form)."""
    h = HASHES[algorithm]
    ha2 = h(f"{method}:{uri}".encode()).hexdigest()
    if qop:
        text = f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"
    else:
        text = f"{ha1_hex}:{nonce}:{ha2}"
    return h(text.encode()).hexdigest()


# The parameters a digest answer carries (RFC 7616 §3.4): names known to be tokens.
_KNOWN_NAMES = frozenset(("username", "realm", "nonce", "uri", "response", "algorithm",
                          "cnonce", "opaque", "qop", "nc", "userhash"))
_NAME_RE = re.compile(_NAME)


def parse_credentials(value: str) -> dict[str, str] | None:
    """The auth-params of a `Digest` Authorization value (names lower-cased, values
    unquoted); None if it is not Digest or not well formed. Never raises.

    What phones send (no backslash, no comma inside a quoted value) is split on commas;
    anything else, or anything that split does not read cleanly, takes the regex path
    (tests/unit/test_digest.py proves both give the same answer)."""
    scheme, _, rest = value.strip(" \t").partition(" ")
    if scheme.lower() != "digest":
        return None
    if "\\" not in rest:
        params = _split_credentials(rest)
        if params is not None:
            return params
    return _parse_credentials_slow(rest)


def _split_credentials(rest: str) -> dict[str, str] | None:
    """The common form by str methods; None when the regex path must decide."""
    params: dict[str, str] = {}
    if not rest:
        return params
    for part in rest.split(","):
        name, eq, text = part.partition("=")
        name = name.strip(" \t").lower()
        text = text.strip(" \t")
        if not eq or (name not in _KNOWN_NAMES and _NAME_RE.fullmatch(name) is None):
            return None
        if text[:1] == '"':
            if len(text) < 2 or text[-1] != '"' or '"' in text[1:-1]:
                return None
            text = text[1:-1]
        elif '"' in text or " " in text or "\t" in text:
            return None
        if name in params:
            return None
        params[name] = text
    return params


def _parse_credentials_slow(rest: str) -> dict[str, str] | None:
    if _ALL_ITEMS_RE.fullmatch(rest) is None:  # one C-speed pass decides the shape
        return None
    params: dict[str, str] = {}
    for name, text in _ITEMS_RE.findall(rest):
        name = name.lower()
        if text[:1] == '"':
            text = text[1:-1]
            if "\\" in text:
                text = _UNQUOTE_RE.sub(r"\1", text)
        if name in params:
            return None  # a repeated parameter: which one was signed?
        params[name] = text
    return params


class Nonce(enum.IntEnum):
    """What opening a nonce tells."""
    VALID = 0
    EXPIRED = 1
    INVALID = 2  # not ours: garbled, forged, or another key


class NonceInfo(NamedTuple):  # a NamedTuple: built per request, 5x cheaper than a dataclass
    state: Nonce
    issued_s: int = 0
    failures: int = 0
    node: int = 0
    tag: int = 0  # the replay table's name for it


class NonceCodec:
    """Makes and opens nonces under one key."""

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        # nonce -> (issued, failures, node, tag) of nonces whose MAC was checked: a
        # phone's refreshes reuse its nonce, and this skips the decode and the HMAC.
        self._opened: dict[str, tuple[int, int, int, int]] = {}

    def _sign(self, head: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(head)
        return mac.digest()[:NONCE_BYTES - NONCE_HEAD.size]

    def make(self, now_s: int, failures: int, node: int) -> str:
        head = NONCE_HEAD.pack(NONCE_VERSION, now_s & 0xFFFFFFFF, min(failures, 255),
                               node & 0xFFFF, int.from_bytes(os.urandom(4), "big"))
        return base64.urlsafe_b64encode(head + self._sign(head)).decode()

    def open(self, nonce: str, now_s: int, expiry_s: int) -> NonceInfo:
        fields = self._opened.get(nonce)
        if fields is None:
            fields = self._verify(nonce)
            if fields is None:
                return NonceInfo(Nonce.INVALID)
            if len(self._opened) >= OPENED_CACHE:
                self._opened.clear()
            self._opened[nonce] = fields
        issued, failures, node, tag = fields
        if issued > now_s + CLOCK_SKEW_S:
            return NonceInfo(Nonce.INVALID)
        state = Nonce.EXPIRED if now_s - issued > expiry_s else Nonce.VALID
        return NonceInfo(state, issued, failures, node, tag)

    def _verify(self, nonce: str) -> tuple[int, int, int, int] | None:
        """The fields of a nonce signed with our key, else None."""
        if len(nonce) != NONCE_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce)
        except (binascii.Error, ValueError):
            return None
        head, mac = raw[:NONCE_HEAD.size], raw[NONCE_HEAD.size:]
        if len(raw) != NONCE_BYTES or raw[0] != NONCE_VERSION or \
                not hmac.compare_digest(mac, self._sign(head)):
            return None
        _, issued, failures, node, _ = NONCE_HEAD.unpack(head)
        return issued, failures, node, int.from_bytes(mac[:8], "little")


class Verdict(enum.Enum):
    """What to answer to a request, and which counter says why."""
    ACCEPT = "accepted"
    CHALLENGE = "challenges"  # no credentials for our realm: 401
    BAD_NONCE = "bad_nonces"  # a nonce we did not issue: 401
    STALE = "stale_nonces"  # right password, expired nonce: 401 stale=true
    REPLAYED = "replayed_nonces"  # nonce count already used: 401 stale=true
    TABLE_FULL = "nonce_table_full"  # no room to track the count: 401 stale=true
    FAILED = "failed"  # wrong password or unknown user, retries left: 401
    FORBIDDEN = "forbidden"  # wrong again after auth.max_failures: 403
    MISMATCH = "identity_mismatch"  # authenticated as someone else than the To AOR: 403
    MALFORMED = "bad_credentials"  # a Digest answer missing what it needs: 400


# Replay table answers (shm.nonces.nonce_use)
USE_OK, USE_REPLAY, USE_FULL = 0, 1, 2


def decide(nonce: Nonce, response_ok: bool, failures: int, max_failures: int,
           identity_ok: bool, replay: int) -> Verdict:
    """The verdict on a well-formed Digest answer for our realm.

    nonce: what opening its nonce said; response_ok: the response matches the stored
    HA1 (False for an unknown user: both get the same answer, so users cannot be
    enumerated); failures: wrong answers the nonce already carries; identity_ok: the
    authenticated user is the To AOR; replay: the replay table's answer (only looked
    at when everything else passed, so a bad answer never consumes a nonce count).
    """
    if nonce is Nonce.INVALID:
        return Verdict.BAD_NONCE
    if not response_ok:
        return Verdict.FORBIDDEN if failures >= max_failures else Verdict.FAILED
    if nonce is Nonce.EXPIRED:
        return Verdict.STALE
    if not identity_ok:
        return Verdict.MISMATCH
    if replay == USE_REPLAY:
        return Verdict.REPLAYED
    if replay == USE_FULL:
        return Verdict.TABLE_FULL
    return Verdict.ACCEPT


REQUIRED = ("username", "realm", "nonce", "uri", "response")


def answer_fields(params: dict[str, str], algorithms: tuple[str, ...]
                  ) -> tuple[str, str, int] | None:
    """(algorithm, qop, nonce count) of a Digest answer we can check, or None when it
    is malformed or uses what we did not offer (RFC 7616 §3.4: qop auth needs nc and
    cnonce; without qop the nonce is single-use, counted as nc 1)."""
    if any(name not in params for name in REQUIRED):
        return None
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in algorithms:
        return None
    response = params["response"].lower()
    if len(response) != HEX_LENGTHS[algorithm] or not _HEX.issuperset(response):
        return None
    qop = params.get("qop", "")
    if not qop:
        return algorithm, "", 1
    if qop != "auth" or _NC_RE.fullmatch(params.get("nc", "")) is None or \
            not params.get("cnonce"):
        return None
    nc = int(params["nc"], 16)
    return (algorithm, qop, nc) if nc > 0 else None


def challenge(realm: str, nonce: str, algorithms: tuple[str, ...], stale: bool
              ) -> list[tuple[str, str]]:
    """The WWW-Authenticate headers of a 401, one per algorithm, preferred first."""
    tail = ", stale=true" if stale else ""
    quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
    return [("WWW-Authenticate",
             f'Digest realm="{quoted}", nonce="{nonce}", qop="auth", algorithm={a}{tail}')
            for a in algorithms]
