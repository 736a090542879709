"""The compiled response scanner (shm.sipscan) against the Python way (core.sip and
services.sip.messages): on thousands of mutated responses, whatever the scanner takes
parses in Python to the same status, branch, method class and stripped message."""
from __future__ import annotations

import random

import numpy as np
import pytest

from fastcluster.core.sip import SipParseError, parse_message
from fastcluster.services.sip import messages as M
from fastcluster.shm import sipscan as SC
from fastcluster.shm import transactions as X

MINE = {"192.0.2.1:5060", "[2001:db8::1]:5070"}
MINE_BYTES = np.frombuffer(b"".join(m.encode() + b"\0" for m in sorted(MINE)), np.uint8)
BRANCH = M.branch_id(0x0123456789ABCDEF, 3, 0xDEADBEEF)


def base(status: int = 180, method: str = "INVITE", via: str | None = None) -> bytes:
    via = via or f"SIP/2.0/UDP 192.0.2.1:5060;branch={BRANCH}"
    return (f"SIP/2.0 {status} Whatever\r\nVia: {via}\r\n"
            f"Via: SIP/2.0/UDP 203.0.113.9:5062;branch=z9hG4bK-1;rport=5062\r\n"
            f"Record-Route: <sip:192.0.2.1:5060;lr>\r\nFrom: <sip:a@example.com>;tag=1\r\n"
            f"To: <sip:b@example.com>;tag=2\r\nCall-ID: abc@host\r\nCSeq: 7 {method}\r\n"
            f"Contact: <sip:b@203.0.113.20:5080>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: 5\r\n\r\nv=0\r\n").encode()


# the Vias echoed on one line, as sipp's [last_Via:] does
COMBINED = base().replace(b"\r\nVia: SIP/2.0/UDP 203.0.113.9", b", SIP/2.0/UDP 203.0.113.9")


def python_way(data: bytes):
    """What the Python path would extract, or None where it would not relay it."""
    try:
        msg = parse_message(data)
    except SipParseError:
        return None
    if msg.is_request:
        return None
    sent_by, branch = M.via_parts(msg.vias[0])
    parsed = M.parse_branch(branch)
    stripped = M.strip_top_via(data)
    if parsed is None or sent_by not in MINE or stripped is None:
        return None
    mclass = X.M_INVITE if msg.cseq_method == "INVITE" else (
        X.M_CANCEL if msg.cseq_method == "CANCEL" else X.M_OTHER)
    return msg.status, parsed[0], parsed[1], mclass, stripped


def fast_way(data: bytes):
    out = np.zeros(SC.S_WORDS, np.int64)
    arr = np.frombuffer(data, np.uint8) if data else np.zeros(1, np.uint8)
    if SC.scan_reply(arr, len(data), MINE_BYTES, out) != 0:
        return None
    a, b = int(out[SC.S_VIA_START]), int(out[SC.S_VIA_END])
    return (int(out[SC.S_STATUS]), int(out[SC.S_KEY]) & ((1 << 64) - 1),
            int(out[SC.S_BRANCH]), int(out[SC.S_MCLASS]), data[:a] + data[b:])


@pytest.mark.parametrize("data", [
    base(), base(200), base(487, "CANCEL"), base(200, "BYE"), base(603),
    base(via=f"SIP/2.0/UDP [2001:db8::1]:5070 ;branch={BRANCH};received=1.2.3.4"),
    base().replace(b"Via:", b"v:", 1).replace(b"Call-ID:", b"i:"),
    COMBINED, COMBINED.replace(b", SIP", b" ,\tSIP"),
])
def test_plain_responses_take_the_fast_path(data: bytes) -> None:
    fast = fast_way(data)
    assert fast is not None and fast == python_way(data)


@pytest.mark.parametrize("data", [
    base(via="SIP/2.0/UDP 192.0.2.9:5060;branch=" + BRANCH),  # not our sent-by
    base(via="SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-other"),  # not our branch
    base(via=f"SIP/2.0/UDP 192.0.2.1:5060;branch={BRANCH},"),  # nothing after the comma
    COMBINED.replace(b"rport=5062\r\n", b"rport=5062 \r\n"),  # trailing blank: trimmed
    base().replace(b"From:", b"From: a\r\nFrom:"),  # duplicate From
    base().replace(b"Content-Length: 5", b"Content-Length: 50"),  # beyond the datagram
    base().replace(b"Whatever", "Whätever".encode()),  # not ASCII: Python decides
    base().replace(b"Call-ID: abc@host", b"Call-ID: fcping-1-2-3"),  # a NAT ping reply
    base().replace(b"\r\nTo:", b"\r\n To:"),  # folded
])
def test_anything_unusual_goes_the_python_way(data: bytes) -> None:
    assert fast_way(data) is None


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        i = rng.randrange(len(b)) if b else 0
        if op < 0.25 and b:
            b[i] = rng.randrange(256)
        elif op < 0.4 and b:
            b[i] = rng.choice(b" :;,\r\n\tAaZz0\x00=<>")
        elif op < 0.55:
            b[i:i] = bytes([rng.randrange(32, 127)])
        elif op < 0.7 and b:
            del b[i:i + rng.randint(1, 8)]
        elif op < 0.85:
            lines = bytes(b).split(b"\r\n")
            j = rng.randrange(1, max(2, len(lines) - 2))
            lines.insert(j, lines[rng.randrange(1, max(2, len(lines) - 2))])
            b = bytearray(b"\r\n".join(lines))
        else:
            j = rng.randrange(len(b)) if b else 0
            b[j:j + 4] = bytes(b[j:j + 4]).swapcase()
    return bytes(b)


def test_mutated_responses_never_take_the_fast_path_wrongly() -> None:
    rng = random.Random(1)
    bases = [base(), base(200, "BYE"), base(487, "CANCEL"), base(100),
             base().replace(b"Via:", b"v:", 1),
             base(via=f"SIP/2.0/UDP [2001:db8::1]:5070 ;branch={BRANCH};received=1.2.3.4"),
             COMBINED]
    fast_taken = 0
    for k in range(20000):
        data = _mutate(rng, rng.choice(bases))
        fast = fast_way(data)
        if fast is not None:
            fast_taken += 1
            assert fast == python_way(data), data
    assert fast_taken > 2000  # the comparison was not vacuous
