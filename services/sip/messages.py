"""What a proxy writes: requests forwarded on a branch, responses passed upstream, and
the CANCEL, ACK and branch identifiers of RFC 3261 §16 and §9.1.

Pure functions over the bytes as received: a forwarded request keeps every header the
way the sender spelled it (names, order, compact forms), only the Request-URI, our Via,
Record-Route, Route and Max-Forwards change; a forwarded response only loses its top
Via. When a request's head is not plain CRLF lines (folded headers, bare LF), it is
rebuilt from the parsed headers instead. Branch identifiers carry the transaction key
and the branch index, so a response finds its transaction row without a search (the
`z9hG4bK` cookie first, RFC 3261 §8.1.1.7), and a loop-detection hash (§16.6 step 8).
Neighbours: core.sip (parser, build_request/build_response), services.sip.proxy and
services.sip.tm (callers), shm.transactions (the keys).
"""
from __future__ import annotations

import re
import zlib

from fastcluster.core.sip import SipMessage, build_request, tag_of

COOKIE = "z9hG4bK"
STATEFUL = COOKIE + "fc"  # + 16 hex key + 1 hex branch index + 8 hex loop hash
STATELESS = COOKIE + "fs"  # + 16 hex: a hash, the same for every retransmission
_KEY_AT = len(STATEFUL)
_IDX_AT = _KEY_AT + 16
_LOOP_AT = _IDX_AT + 1

_HEAD_LINES = re.compile(rb"\r\n(route|max-forwards)[ \t]*:[ \t]*([^\r\n]*)", re.I)
TOP_VIA = re.compile(rb"\r\n(?:via|v)[ \t]*:[ \t]*([^\r\n]*)", re.I)
_IDENTITY = re.compile(rb"\r\n(call-id|i|from|f|to|t|cseq)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)",
                       re.I)
_IDENTITY_NAMES = {b"i": b"call-id", b"f": b"from", b"t": b"to"}
_CANON = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq",
          "max-forwards": "Max-Forwards", "content-length": "Content-Length",
          "content-type": "Content-Type", "record-route": "Record-Route", "route": "Route",
          "www-authenticate": "WWW-Authenticate", "mime-version": "MIME-Version"}


def branch_id(key: int, index: int, loop: int) -> str:
    return f"{STATEFUL}{key:016x}{index:x}{loop & 0xFFFFFFFF:08x}"


def parse_branch(branch: str) -> tuple[int, int, int] | None:
    """(key, branch index, loop hash) of one of our stateful branches, or None."""
    if not branch.startswith(STATEFUL) or len(branch) < _LOOP_AT + 8:
        return None
    try:
        return (int(branch[_KEY_AT:_IDX_AT], 16), int(branch[_IDX_AT], 16),
                int(branch[_LOOP_AT:_LOOP_AT + 8], 16))
    except ValueError:
        return None


def stateless_branch(top_branch: str, extra: str) -> str:
    """A branch for a request forwarded without a transaction: the same for every
    retransmission of that request (§16.11), derived from its top branch."""
    a = zlib.crc32(top_branch.encode("utf-8", "surrogateescape"))
    b = zlib.crc32(extra.encode("utf-8", "surrogateescape"), a ^ 0x5BD1E995)
    return f"{STATELESS}{a:08x}{b:08x}"


def first_value(header_value: str) -> str:
    """The first element of a comma-joined header value (Via, Route), quotes and <>
    respected."""
    if "," not in header_value:
        return header_value.strip()
    depth = 0
    quoted = False
    for i, ch in enumerate(header_value):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            return header_value[:i].strip()
    return header_value.strip()


def split_values(header_value: str) -> list[str]:
    """Every element of a comma-joined header value, quotes and <> respected."""
    out = []
    rest = header_value
    while rest.strip():
        v = first_value(rest)
        out.append(v)
        cut = rest.find(v) + len(v)
        rest = rest[cut:].lstrip()
        if rest.startswith(","):
            rest = rest[1:]
        else:
            break
    return out


def via_parts(via_value: str) -> tuple[str, str]:
    """(sent-by, branch) of the first Via value; "" where absent. Cheap: no regex."""
    top = first_value(via_value) if "," in via_value else via_value
    semi = top.find(";")
    head = top if semi < 0 else top[:semi]
    sent_by = head.rsplit(None, 1)[-1].lower() if head.strip() else ""
    branch = ""
    if semi >= 0:
        low = top.lower()
        at = low.find(";branch=", semi)
        if at >= 0:
            start = at + 8
            end = top.find(";", start)
            branch = (top[start:] if end < 0 else top[start:end]).strip()
    return sent_by, branch


def loop_hash(msg: SipMessage) -> int:
    """§16.6 step 8: a hash of what identifies this request at this hop (Request-URI,
    From, To, Call-ID, CSeq number); the same request coming back unchanged is a loop,
    a changed one (a new Request-URI) a spiral. Whole From/To values rather than their
    tags, and no Proxy-Require (refused with 420 before this): same outcome, cheaper."""
    return zlib.crc32("|".join((msg.ruri, msg.from_, msg.to, msg.call_id,
                                str(msg.cseq_num))).encode("utf-8", "surrogateescape"))


def _head_body(data: bytes, msg: SipMessage) -> tuple[bytes, bytes] | None:
    sep = data.find(b"\r\n\r\n")
    if sep < 0:
        return None
    head = data[:sep]
    if b"\n " in head or b"\n\t" in head or head.count(b"\n") != head.count(b"\r\n"):
        return None
    body = data[sep + 4:]
    if len(body) != len(msg.body):
        body = msg.body  # Content-Length cut the datagram short: forward what counts
    return head, body


def forward_request(data: bytes, msg: SipMessage, ruri: str, top_lines: list[str],
                    pop_routes: int, max_forwards: int) -> bytes:
    """The request as sent on a branch: Request-URI `ruri`, `top_lines` (our Via,
    Record-Route, new Route lines: complete "Name: value" lines, in order) first,
    the first `pop_routes` Route values removed, Max-Forwards set."""
    split = _head_body(data, msg)
    if split is None:
        return _rebuild(msg, ruri, top_lines, pop_routes, max_forwards)
    head, body = split
    eol = head.find(b"\r\n")
    rest = head[eol:] if eol >= 0 else b""
    start = f"{msg.method} {ruri} SIP/2.0".encode()
    pieces = [start]
    for line in top_lines:
        pieces.append(b"\r\n")
        pieces.append(line.encode())
    have_mf = False
    pos = 0
    todo = pop_routes
    for m in _HEAD_LINES.finditer(rest):
        name = m.group(1).lower()
        if name == b"max-forwards":
            pieces.append(rest[pos:m.start(2)])
            pieces.append(str(max_forwards).encode())
            pos = m.end(2)
            have_mf = True
        elif todo > 0:
            values = split_values(m.group(2).decode("utf-8", "surrogateescape"))
            drop = min(todo, len(values))
            todo -= drop
            pieces.append(rest[pos:m.start()])
            if drop < len(values):
                pieces.append(b"\r\n" + m.group(1) + b": " + ", ".join(
                    values[drop:]).encode("utf-8", "surrogateescape"))
            pos = m.end()
    pieces.append(rest[pos:])
    if not have_mf:
        pieces.append(f"\r\nMax-Forwards: {max_forwards}".encode())
    pieces.append(b"\r\n\r\n")
    pieces.append(body)
    return b"".join(pieces)


def _rebuild(msg: SipMessage, ruri: str, top_lines: list[str], pop_routes: int,
             max_forwards: int) -> bytes:
    """forward_request for an unusual head: from the parsed headers (names in their
    usual spelling)."""
    headers: list[tuple[str, str]] = []
    for line in top_lines:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    todo = pop_routes
    have_mf = False
    for name, value in msg.headers:
        if name == "content-length":
            continue
        if name == "max-forwards":
            value = str(max_forwards)
            have_mf = True
        elif name == "route" and todo > 0:
            values = split_values(value)
            drop = min(todo, len(values))
            todo -= drop
            if drop == len(values):
                continue
            value = ", ".join(values[drop:])
        headers.append((_CANON.get(name, "-".join(p.capitalize() for p in name.split("-"))),
                        value))
    if not have_mf:
        headers.append(("Max-Forwards", str(max_forwards)))
    return build_request(msg.method, ruri, headers, msg.body)


def strip_top_via(data: bytes) -> bytes | None:
    """The response without its first Via value (the one we added), or None if it has
    no Via line we can find."""
    m = TOP_VIA.search(data)
    if m is None:
        return None
    value = m.group(1)
    if b"," in value:
        text = value.decode("utf-8", "surrogateescape")
        first = first_value(text)
        rest = text[text.find(first) + len(first):].lstrip()
        if rest.startswith(","):
            kept = rest[1:].strip().encode("utf-8", "surrogateescape")
            return data[:m.start(1)] + kept + data[m.end(1):]
    return data[:m.start()] + data[m.end():]


def route_lines(routes: list[str]) -> list[str]:
    return [f"Route: {', '.join(routes)}"] if routes else []


def build_cancel(req: SipMessage, ruri: str, via_value: str, routes: list[str]) -> bytes:
    """§9.1: the CANCEL of a request sent with Via `via_value`: same Request-URI,
    Call-ID, From, To, CSeq number and Route; only our Via."""
    headers = [("Via", via_value), ("From", req.from_), ("To", req.to),
               ("Call-ID", req.call_id), ("CSeq", f"{req.cseq_num} CANCEL"),
               ("Max-Forwards", "70")]
    if routes:
        headers.append(("Route", ", ".join(routes)))
    return build_request("CANCEL", ruri, headers)


def build_ack(req: SipMessage, ruri: str, via_value: str, routes: list[str],
              response_to: str) -> bytes:
    """§17.1.1.3: the ACK of a non-2xx final response to an INVITE sent with Via
    `via_value`: To from the response (its tag), the rest from the INVITE."""
    headers = [("Via", via_value), ("From", req.from_), ("To", response_to),
               ("Call-ID", req.call_id), ("CSeq", f"{req.cseq_num} ACK"),
               ("Max-Forwards", "70")]
    if routes:
        headers.append(("Route", ", ".join(routes)))
    return build_request("ACK", ruri, headers)


def to_header(data: bytes) -> str:
    """The To value of a response (for the ACK of a non-2xx), from its bytes."""
    m = re.search(rb"\r\n(?:to|t)[ \t]*:[ \t]*([^\r\n]*)", data, re.I)
    return m.group(1).decode("utf-8", "surrogateescape").strip() if m else ""


def dialog_identity(data: bytes) -> tuple[str, str, str, str, int] | None:
    """(method, Call-ID, From tag, To tag, CSeq number) of a request the compiled relay
    took (shm.sipreq: plain CRLF lines of printable ASCII, one From/To/Call-ID/CSeq),
    read from its head without parsing the rest; None if one of them is missing. The
    same values as core.sip.parse_message gives (tests/unit/test_fastpath_dialogs.py)."""
    head = data[:data.find(b"\r\n\r\n") + 2]
    found: dict[bytes, bytes] = {}
    for m in _IDENTITY.finditer(head):
        name = m.group(1).lower()
        found.setdefault(_IDENTITY_NAMES.get(name, name), m.group(2))
    try:
        callid, from_, to, cseq = (found[b"call-id"], found[b"from"], found[b"to"],
                                   found[b"cseq"])
        number = int(cseq.split(None, 1)[0])
    except (KeyError, ValueError, IndexError):
        return None
    method = data[:data.find(b" ")].decode("ascii")
    return (method, callid.decode("ascii"), tag_of(from_.decode("ascii")),
            tag_of(to.decode("ascii")), number)
