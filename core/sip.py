"""SIP message parsing and response building for the UDP hot path.

This module turns one UDP datagram into a :class:`SipMessage` (RFC 3261 §7,
§18.3) and turns a request back into the bytes of a response (§8.2.6).  It
also parses the pieces a registrar and a proxy need on top of that: SIP/TEL
URIs, name-addr / addr-spec values (From, To, Contact), Via values and the
``tag`` parameter.

It is pure Python and depends on nothing else in fastcluster.  The workers
call :func:`parse_message` on every packet and :func:`build_response` for
every answer; the registrar calls :func:`parse_contacts`; the NAT pinger
calls :func:`build_request`.  Shared-memory tables and the clusterer only
ever see the strings this module extracts.

Error contract: every parsing entry point raises only :class:`SipParseError`.
``status == 0`` means the message cannot be answered (garbage, or one of
Via/From/To/Call-ID/CSeq is unusable) and must be dropped; any other status
means the caller should answer a request with that status, using
``err.request`` (the partially parsed request) with :func:`build_response`.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "NameAddr",
    "SipMessage",
    "SipParseError",
    "SipUri",
    "Via",
    "aor_key",
    "aor_of",
    "build_request",
    "build_response",
    "canonical_aor",
    "parse_contacts",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_list",
    "stamp_top_via",
    "tag_of",
]


class SipParseError(Exception):
    """A message, URI or header value that cannot be accepted.

    ``status`` is the SIP status to answer with (400, 505, ...) or 0 when no
    answer is possible and the packet must be dropped.  ``reason`` is short
    enough to go straight into a status line.  ``request`` is set only by
    :func:`parse_message` when ``status != 0``: it carries everything needed
    to build the error response.
    """

    def __init__(self, status: int, reason: str, request: SipMessage | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.request = request

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


# --------------------------------------------------------------------------
# Character classes and static tables.  Everything here is built once at
# import; nothing grows with traffic.

_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(rf"[{_TOKEN_CHARS}]+")
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_QUOTED_RE = re.compile(_QUOTED, re.S)
_UNESCAPE_RE = re.compile(r"\\(.)", re.S)

# Every control byte except HTAB; CR and LF are only legal as CRLF pairs.
_CTL_BYTES = bytes(range(0, 9)) + bytes(range(10, 32)) + b"\x7f"
# In the slow path the head is decoded with surrogateescape, so undecodable
# bytes show up as lone surrogates next to the control characters.
_BAD_TEXT_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f\udc80-\udcff]")
# A quoted-string may carry control characters as quoted-pairs (RFC 3261 §25.1: a
# backslash then %x00-09 / %x0B-0C / %x0E-7F; RFC 4475 §3.1.1.2 puts NUL, BEL, DEL in
# a display name this way).  Lines are checked again with such strings removed.
_QUOTED_CTL_RE = re.compile(
    '"(?:[^"\\\\\x00-\x08\x0a-\x1f\x7f\udc80-\udcff]|\\\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"')
# Only the whitespace after the line break is consumed: a leading "[ \t]*"
# would make the substitution quadratic on long runs of spaces.
_FOLD_RE = re.compile(r"\r\n[ \t]+")
_LWS_STARTS = (" ", "\t")
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")

_LWS_RUN_RE = re.compile(r"[ \t]+")
_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/([0-9]{1,4})\.([0-9]{1,4})")
_STATUS_LINE_RE = re.compile(
    r"[Ss][Ii][Pp]/([0-9]{1,4})\.([0-9]{1,4})[ \t]+([1-6][0-9][0-9])(?:[ \t]+(.*))?", re.S
)
_KNOWN_METHODS = frozenset(
    (
        "REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "SUBSCRIBE",
        "NOTIFY", "PUBLISH", "MESSAGE", "INFO", "PRACK", "UPDATE", "REFER",
    )
)

# sent-protocol LWS sent-by, stopping where the via-params (or the next
# comma-separated Via value) begin.  Hostnames accept '_' because real
# deployments use it even though RFC 1034 labels do not.
_VIA_HEAD_RE = re.compile(
    rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)"
    r"[ \t]+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)"
    r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*(?=[;,]|\Z)"
)

# One ";name[=value]" header parameter (RFC 3261 generic-param).  Values may
# be a token, a host (IPv6 references and bare IPv6 in 'received' carry ':'
# and brackets) or a quoted-string.
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*([{_TOKEN_CHARS}]+)"
    rf"(?:[ \t]*=[ \t]*({_QUOTED}|[{_TOKEN_CHARS}\[\]:]+))?[ \t]*",
    re.S,
)

# Comma-list elements: a quoted-string or <...> is atomic, so commas inside
# display names and URIs do not split.  Unterminated quotes/brackets run to
# the end instead of failing, which keeps splitting total.
_LIST_PIECE_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|<[^>]*>?|[^,"<]+|,', re.S)
_SEMI_PIECE_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|[^;"]+|;', re.S)

# Unquoted display-name words.  RFC 3261 wants tokens; UTF-8 words are
# accepted because phones send them.  ':', ';' and '@' are excluded so that
# an addr-spec whose quoted parameter contains '<' is not mistaken for one.
_DISPLAY_WORDS_RE = re.compile(r'[^\x00-\x20\x7f"<>;:,@\\]+(?:[ \t]+[^\x00-\x20\x7f"<>;:,@\\]+)*[ \t]*')
_URI_SHAPE_RE = re.compile(r'[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f<>"]+')

_SIP_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_SIP_PASSWORD_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*")
_HOSTPORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::([0-9]{1,5}))?")
_URI_PCHARS_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")
_URI_HEADERS_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$=&]|%[0-9A-Fa-f]{2})+")
# The leading class excludes digits on purpose: overlapping classes around
# the mandatory digit would backtrack quadratically on long non-matches.
_TEL_NUMBER_RE = re.compile(r"\+?[.()\-]*[0-9A-Fa-f*#][0-9A-Fa-f*#.()\-]*")

_MAX_CSEQ = 2**31 - 1
_MAX_EXPIRES = 2**32 - 1
# RFC 3261 §20.19: a malformed Expires value is read as 3600 seconds.
_MALFORMED_EXPIRES = 3600

# Headers whose value the parser extracts into SipMessage attributes.
_K_VIA, _K_FROM, _K_TO, _K_CALLID, _K_CSEQ, _K_MAXFWD, _K_CLEN, _K_EXPIRES = range(1, 9)

_HEADER_NAMES = (
    "via", "from", "to", "call-id", "cseq", "contact", "max-forwards",
    "content-length", "content-type", "content-encoding", "content-disposition",
    "content-language", "expires", "min-expires", "user-agent", "server",
    "allow", "allow-events", "supported", "require", "proxy-require",
    "unsupported", "route", "record-route", "path", "service-route", "accept",
    "accept-encoding", "accept-language", "authorization",
    "proxy-authorization", "www-authenticate", "proxy-authenticate",
    "authentication-info", "subject", "event", "refer-to", "referred-by",
    "session-expires", "min-se", "identity", "identity-info",
    "accept-contact", "reject-contact", "request-disposition", "date",
    "timestamp", "organization", "priority", "reply-to", "retry-after",
    "warning", "in-reply-to", "alert-info", "call-info", "error-info",
    "mime-version", "p-asserted-identity", "p-preferred-identity", "privacy",
    "replaces", "rseq", "rack", "sip-etag", "sip-if-match",
    "subscription-state", "security-client", "security-server",
    "security-verify", "history-info", "reason", "p-associated-uri",
    "p-charging-vector", "p-access-network-info", "p-visited-network-id",
)
# Spellings seen on the wire that neither lower, UPPER nor Dash-Title produce.
_ODD_SPELLINGS = (
    "Call-ID", "CSeq", "WWW-Authenticate", "MIME-Version", "RSeq", "RAck",
    "SIP-ETag", "SIP-If-Match", "Min-SE", "P-Associated-URI",
)
_COMPACT_FORMS = {
    "i": "call-id", "m": "contact", "f": "from", "t": "to", "v": "via",
    "l": "content-length", "k": "supported", "c": "content-type",
    "e": "content-encoding", "s": "subject", "o": "event", "u": "allow-events",
    "r": "refer-to", "b": "referred-by", "x": "session-expires",
    "y": "identity", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition",
}
_KINDS = {
    "via": _K_VIA, "from": _K_FROM, "to": _K_TO, "call-id": _K_CALLID,
    "cseq": _K_CSEQ, "max-forwards": _K_MAXFWD, "content-length": _K_CLEN,
    "expires": _K_EXPIRES,
}
_DUPLICATE_REASONS = {
    _K_FROM: "Duplicate From", _K_TO: "Duplicate To", _K_CALLID: "Duplicate Call-ID",
    _K_CSEQ: "Duplicate CSeq", _K_MAXFWD: "Duplicate Max-Forwards",
    _K_CLEN: "Duplicate Content-Length",
}
# get_all() splits these on commas (RFC 3261 §7.3.1 allows combining them).
_LIST_HEADERS = frozenset(
    (
        "via", "contact", "route", "record-route", "path", "service-route",
        "allow", "allow-events", "supported", "require", "proxy-require",
        "unsupported", "accept", "accept-encoding", "accept-language",
        "content-encoding", "content-language", "in-reply-to", "alert-info",
        "call-info", "error-info", "warning", "accept-contact",
        "reject-contact", "request-disposition", "security-client",
        "security-server", "security-verify", "history-info", "reason",
        "p-associated-uri", "p-asserted-identity", "p-preferred-identity",
    )
)


def _build_canon() -> dict[str, tuple[str, int]]:
    table: dict[str, tuple[str, int]] = {}
    for low in _HEADER_NAMES:
        entry = (low, _KINDS.get(low, 0))
        title = "-".join(part.capitalize() for part in low.split("-"))
        for spelling in (low, low.upper(), title):
            table[spelling] = entry
    for spelling in _ODD_SPELLINGS:
        table[spelling] = table[spelling.lower()]
    for short, full in _COMPACT_FORMS.items():
        table[short] = table[short.upper()] = table[full]
    return table


# Exact wire spelling -> (canonical name, kind).  The common spellings hit on
# the first lookup; anything else goes through _canon_slow.
_CANON = _build_canon()


def _canon_slow(name: str) -> tuple[str, int] | None:
    """Canonicalise a header name not in _CANON; None if it is not a token."""
    name = name.rstrip(" \t")
    # Validate before lower(): non-ASCII letters such as U+212A (Kelvin) lower
    # to ASCII and would otherwise sneak in as compact forms.
    if _TOKEN_RE.fullmatch(name) is None:
        return None
    low = name.lower()
    return _CANON.get(low) or (low, 0)


def _canonical_name(name: str) -> str:
    entry = _CANON.get(name)
    if entry is None:
        entry = _canon_slow(name.strip(" \t"))
        if entry is None:
            return name.strip(" \t").lower()
    return entry[0]


def _unquote(quoted: str) -> str:
    inner = quoted[1:-1]
    if "\\" in inner:
        inner = _UNESCAPE_RE.sub(r"\1", inner)
    return inner


def _split_commas(value: str) -> list[str]:
    """Split a comma list, keeping quoted-strings and <...> intact.

    Elements are stripped; empty elements are kept so that callers that care
    about malformed lists (parse_contacts) can see them.
    """
    if "," not in value:
        return [value.strip(" \t")]
    if '"' not in value and "<" not in value:
        return [part.strip(" \t") for part in value.split(",")]
    parts: list[str] = []
    current: list[str] = []
    for piece in _LIST_PIECE_RE.findall(value):
        if piece == ",":
            parts.append("".join(current).strip(" \t"))
            current = []
        else:
            current.append(piece)
    parts.append("".join(current).strip(" \t"))
    return parts


def split_list(value: str) -> list[str]:
    """The elements of a comma-separated header value (Path, Route, ...), quoted
    strings and <...> kept whole, empty elements dropped."""
    return [part for part in _split_commas(value) if part]


def _parse_params(text: str, reason: str) -> dict[str, str | None]:
    """Parse ``*(SEMI generic-param)``; SipParseError(400, reason) otherwise."""
    params: dict[str, str | None] = {}
    pos = 0
    end = len(text)
    match = _PARAM_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            if text[pos:].strip(" \t"):
                raise SipParseError(400, reason)
            break
        name = m.group(1).lower()
        value = m.group(2)
        if value is not None and value[:1] == '"':
            value = _unquote(value)
        # First occurrence wins: a duplicate must not let a later copy
        # override what an earlier hop or check already looked at.
        if name not in params:
            params[name] = value
        pos = m.end()
    return params


# --------------------------------------------------------------------------
# Messages


class SipMessage:
    """One parsed SIP request or response (see module docstring)."""

    __slots__ = (
        "is_request", "method", "ruri", "status", "reason", "headers", "body",
        "call_id", "cseq_num", "cseq_method", "from_", "to", "vias",
        "max_forwards", "content_length", "expires", "_cseq_raw",
    )

    is_request: bool
    method: str
    ruri: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    call_id: str
    cseq_num: int
    cseq_method: str
    from_: str
    to: str
    vias: list[str]
    max_forwards: int
    content_length: int
    expires: int
    _cseq_raw: str

    def __init__(
        self,
        *,
        is_request: bool = True,
        method: str = "",
        ruri: str = "",
        status: int = 0,
        reason: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        call_id: str = "",
        cseq_num: int = -1,
        cseq_method: str = "",
        from_: str = "",
        to: str = "",
        vias: list[str] | None = None,
        max_forwards: int = -1,
        content_length: int = -1,
        expires: int = -1,
    ) -> None:
        self.is_request = is_request
        self.method = method
        self.ruri = ruri
        self.status = status
        self.reason = reason
        self.headers = [] if headers is None else headers
        self.body = body
        self.call_id = call_id
        self.cseq_num = cseq_num
        self.cseq_method = cseq_method
        self.from_ = from_
        self.to = to
        self.vias = [] if vias is None else vias
        self.max_forwards = max_forwards
        self.content_length = content_length
        self.expires = expires
        # The CSeq text as received, echoed verbatim in responses (§8.2.6.2);
        # empty means "rebuild it from cseq_num and cseq_method".
        self._cseq_raw = ""

    def get(self, name: str) -> str | None:
        """First value of header ``name`` (any case, compact form accepted)."""
        key = _canonical_name(name)
        for hname, value in self.headers:
            if hname == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name``, comma lists split into elements."""
        key = _canonical_name(name)
        values = [value for hname, value in self.headers if hname == key]
        if key not in _LIST_HEADERS:
            return values
        out: list[str] = []
        for value in values:
            out.extend(part for part in _split_commas(value) if part)
        return out

    def __repr__(self) -> str:
        if self.is_request:
            return f"<SipMessage {self.method} {self.ruri} call-id={self.call_id!r}>"
        return f"<SipMessage {self.status} {self.reason} call-id={self.call_id!r}>"


def _split_head_slow(data: bytes) -> tuple[list[str], bytes, str]:
    """Frame a datagram the tolerant way.

    Used when the fast path sees anything unusual: bare LF line ends, stray
    control characters, invalid UTF-8, or no blank line.  Offending header
    lines are dropped and reported as the returned error reason, so a request
    whose Via/From/To/Call-ID/CSeq survived can still be answered with 400.
    """
    m = _HEAD_END_RE.search(data)
    if m is None:
        # No blank line: tolerate it (hand-written tools omit it) and treat
        # the whole datagram as header section without a body.
        head, body = data.rstrip(b"\r\n"), b""
    else:
        head, body = data[: m.start()], data[m.end():]
    text = head.decode("utf-8", "surrogateescape")
    # Continuations are collected per logical line and joined once, so many
    # folded lines cost linear rather than quadratic time.
    groups: list[list[str]] = []
    for line in text.split("\n"):
        if line[-1:] == "\r":
            line = line[:-1]
        if groups and line[:1] in _LWS_STARTS:
            groups[-1].append(line.strip(" \t"))
        else:
            groups.append([line])
    lines = [group[0] if len(group) == 1 else " ".join(group) for group in groups]
    error = ""
    kept: list[str] = []
    for index, line in enumerate(lines):
        bad = _BAD_TEXT_RE.search(line)
        if bad is not None and '"' in line:
            bad = _BAD_TEXT_RE.search(_QUOTED_CTL_RE.sub("", line))
        if bad is None:
            kept.append(line)
            continue
        if not error:
            error = "Bad UTF-8 in header" if bad.group() >= "\udc80" else "Bad control character"
        if index == 0:
            # The start line cannot be dropped; blanking it makes the
            # message unanswerable, which is right for a corrupt first line.
            kept.append("")
    return kept, body, error


def _parse_request_line_slow(line: str) -> tuple[str, str, int, str]:
    """(method, ruri, error status, error reason) for an unusual request line.

    Tolerates runs of SP/HTAB between the parts.  An empty method means the
    line is not a request line at all.  Written without a backtracking regex
    so a long line of spaces cannot make it quadratic.
    """
    words = _LWS_RUN_RE.split(line.strip(" \t"))
    if len(words) < 3 or _TOKEN_RE.fullmatch(words[0]) is None:
        return "", "", 0, "Bad start line"
    version = _VERSION_RE.fullmatch(words[-1])
    if version is None:
        return "", "", 0, "Bad start line"
    method = words[0]
    ruri = " ".join(words[1:-1])
    if int(version.group(1)) != 2 or int(version.group(2)) != 0:
        return method, ruri, 505, "Version Not Supported"
    if len(words) > 3 or _URI_SHAPE_RE.fullmatch(ruri) is None:
        return method, ruri, 400, "Bad Request-URI"
    return method, ruri, 0, ""


class _Folded(Exception):
    """A header line turned out to be an LWS continuation (raised internally)."""


def parse_message(data: bytes) -> SipMessage:
    """Parse one SIP message received over UDP (RFC 3261 §7, §18.3).

    Raises :class:`SipParseError` and nothing else for any input.
    """
    if type(data) is not bytes:
        data = bytes(data)
    # RFC 5626 keep-alives and sloppy stacks put CRLFs before the start line.
    if data[:1] in b"\r\n":
        data = data.lstrip(b"\r\n")

    # Fast framing: CRLF CRLF ends the head, it is valid UTF-8, and its only
    # control characters are the CRLF pairs between lines (deleting every
    # control byte removes exactly two bytes per line break).  Anything else
    # goes to the tolerant slow framing, which also unfolds continuations.
    sep = data.find(b"\r\n\r\n")
    if sep > 0:
        head = data[:sep]
        try:
            lines = head.decode("utf-8").split("\r\n")
        except UnicodeDecodeError:
            pass
        else:
            if len(head) - len(head.translate(None, _CTL_BYTES)) == 2 * len(lines) - 2:
                try:
                    return _parse_lines(lines, data[sep + 4 :], "")
                except _Folded:
                    pass
                # Rare enough to pay for a second pass: LWS continuation lines
                # are equivalent to one SP (§7.3.1).  Retrying outside the
                # except block keeps _Folded out of any error's context.
                lines = _FOLD_RE.sub(" ", "\r\n".join(lines)).split("\r\n")
                return _parse_lines(lines, data[sep + 4 :], "")
    lines, body, err = _split_head_slow(data)
    return _parse_lines(lines, body, err)


def _parse_lines(lines: list[str], body: bytes, err: str) -> SipMessage:
    """Build the message from unframed lines; ``err`` is a framing problem.

    Raises _Folded on a continuation line so that parse_message can unfold
    and retry; the fast path thereby pays nothing for folding support.
    """
    err_status = 400

    # Start line.
    start = lines[0]
    method = ruri = reason = ""
    status = 0
    is_request = True
    parts = start.split(" ")
    if (
        len(parts) == 3
        and parts[2] == "SIP/2.0"
        and parts[0] in _KNOWN_METHODS
        and ":" in parts[1]
        and "\t" not in start
    ):
        method, ruri = parts[0], parts[1]
    elif start[:4].upper() == "SIP/":
        is_request = False
        m = _STATUS_LINE_RE.fullmatch(start)
        if m is None:
            raise SipParseError(0, "Bad status line")
        if int(m.group(1)) != 2 or int(m.group(2)) != 0:
            raise SipParseError(0, "Version Not Supported")
        status = int(m.group(3))
        reason = (m.group(4) or "").strip(" \t")
    else:
        method, ruri, line_status, line_reason = _parse_request_line_slow(start)
        if not method:
            err_status = 0
            err = err or line_reason
        elif line_reason and not err:
            err_status, err = line_status, line_reason

    # Header lines.  The wanted values are captured in the same pass so the
    # registrar never rescans the list for them.
    headers: list[tuple[str, str]] = []
    append = headers.append
    vias: list[str] = []
    from_ = to = call_id = cseq = mf_text = cl_text = ex_text = None
    canon = _CANON
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            if line[:1] in _LWS_STARTS:
                raise _Folded
            if not err:
                err = "Bad header line"
            continue
        entry = canon.get(name)
        if entry is None:
            if line[:1] in _LWS_STARTS:
                raise _Folded
            entry = _canon_slow(name)
            if entry is None:
                if not err:
                    err = "Bad header name"
                continue
        key, kind = entry
        # strip() also drops Unicode spaces at the edges; harmless for SIP
        # values and measurably cheaper than strip(" \t") on the hot path.
        value = value.strip()
        append((key, value))
        if kind:
            if kind == _K_VIA:
                vias.append(value)
                continue
            # The rest are single-valued (RFC 4475 §3.1.2.19 style test):
            # a second copy is a 400, the first copy is what gets echoed.
            if kind == _K_FROM:
                duplicate = from_ is not None
                if not duplicate:
                    from_ = value
            elif kind == _K_TO:
                duplicate = to is not None
                if not duplicate:
                    to = value
            elif kind == _K_CALLID:
                duplicate = call_id is not None
                if not duplicate:
                    call_id = value
            elif kind == _K_CSEQ:
                duplicate = cseq is not None
                if not duplicate:
                    cseq = value
            elif kind == _K_MAXFWD:
                duplicate = mf_text is not None
                if not duplicate:
                    mf_text = value
            elif kind == _K_CLEN:
                duplicate = cl_text is not None
                if not duplicate:
                    cl_text = value
            else:
                # Expires: not answer-critical, first copy wins quietly.
                duplicate = False
                if ex_text is None:
                    ex_text = value
            if duplicate and not err:
                err = _DUPLICATE_REASONS[kind]

    # CSeq: "number SP method".  Without a method token the client could not
    # match a response to its transaction, so the message is unanswerable;
    # a bad number or a method mismatch is a 400 (§8.1.1.5, §8.2.6).
    cseq_num = -1
    cseq_method = ""
    if cseq is not None:
        cparts = cseq.split()
        if len(cparts) == 2 and (
            cparts[1] in _KNOWN_METHODS or _TOKEN_RE.fullmatch(cparts[1]) is not None
        ):
            cseq_method = cparts[1]
            number = cparts[0]
            if number.isascii() and number.isdigit() and len(number.lstrip("0")) <= 10:
                cseq_num = int(number)
            if (
                cseq_num < 0 or cseq_num > _MAX_CSEQ or (is_request and cseq_method != method)
            ) and not err:
                err = "Bad CSeq"

    max_forwards = -1
    if mf_text is not None:
        if mf_text.isascii() and mf_text.isdigit() and len(mf_text.lstrip("0")) <= 10:
            max_forwards = int(mf_text)
        elif not err:
            err = "Bad Max-Forwards"

    # UDP framing (§18.3): Content-Length cuts the body short; a value past
    # the end of the datagram is an error; no Content-Length means "the rest".
    content_length = -1
    if cl_text is not None:
        if cl_text.isascii() and cl_text.isdigit() and len(cl_text.lstrip("0")) <= 10:
            content_length = int(cl_text)
            if content_length < len(body):
                body = body[:content_length]
            elif content_length > len(body) and not err:
                err = "Bad Content-Length"
        elif not err:
            err = "Bad Content-Length"

    expires = -1
    if ex_text is not None:
        if ex_text.isascii() and ex_text.isdigit():
            expires = int(ex_text) if len(ex_text.lstrip("0")) <= 10 else _MAX_EXPIRES
            if expires > _MAX_EXPIRES:
                expires = _MAX_EXPIRES
        else:
            expires = _MALFORMED_EXPIRES

    # A response (ours or a client's) needs all five to be built or matched.
    missing = ""
    if not vias:
        missing = "Missing Via"
    elif _VIA_HEAD_RE.match(vias[0]) is None:
        missing = "Bad Via"
    elif not from_:
        missing = "Missing From"
    elif not to:
        missing = "Missing To"
    elif not call_id:
        missing = "Missing Call-ID"
    elif cseq is None:
        missing = "Missing CSeq"
    elif not cseq_method:
        missing = "Bad CSeq"

    if err_status == 0:
        raise SipParseError(0, err or "Bad start line")
    if missing:
        raise SipParseError(0, missing)
    if err and not is_request:
        raise SipParseError(0, err)

    msg = SipMessage.__new__(SipMessage)
    msg.is_request = is_request
    msg.method = method
    msg.ruri = ruri
    msg.status = status
    msg.reason = reason
    msg.headers = headers
    msg.body = body
    msg.call_id = call_id  # type: ignore[assignment]  # checked non-empty above
    msg.cseq_num = cseq_num
    msg.cseq_method = cseq_method
    msg.from_ = from_  # type: ignore[assignment]
    msg.to = to  # type: ignore[assignment]
    msg.vias = vias
    msg.max_forwards = max_forwards
    msg.content_length = content_length
    msg.expires = expires
    msg._cseq_raw = cseq  # type: ignore[assignment]
    if err:
        raise SipParseError(err_status, err, msg)
    return msg


# --------------------------------------------------------------------------
# URIs


class SipUri:
    """A parsed sip:, sips: or tel: URI (RFC 3261 §19.1, RFC 3966)."""

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers")

    def __init__(
        self,
        scheme: str,
        user: str = "",
        password: str = "",
        host: str = "",
        port: int = 0,
        params: dict[str, str | None] | None = None,
        headers: str = "",
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = {} if params is None else params
        self.headers = headers

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.scheme == "tel":
            out.append(self.user)
        else:
            if self.user:
                out.append(self.user)
                if self.password:
                    out.append(":" + self.password)
                out.append("@")
            out.append(self.host)
            if self.port:
                out.append(f":{self.port}")
        for name, value in self.params.items():
            out.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"


def _bad_uri() -> SipParseError:
    return SipParseError(400, "Bad URI")


def _uri_params(text: str) -> dict[str, str | None]:
    """uri-parameters: ``;name[=value]`` with RFC 3261 paramchars."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    pchars = _URI_PCHARS_RE.fullmatch
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if pchars(name) is None or (eq and pchars(value) is None):
            raise _bad_uri()
        low = name.lower()
        if low not in params:
            params[low] = value if eq else None
    return params


def _valid_ipv6_reference(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def parse_uri(text: str) -> SipUri:
    """Parse a sip:, sips: or tel: URI; raise SipParseError(400, "Bad URI")."""
    scheme, colon, rest = text.strip(" \t").partition(":")
    scheme = scheme.lower()
    if not colon or not rest:
        raise _bad_uri()
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if _TEL_NUMBER_RE.fullmatch(number) is None:
            raise _bad_uri()
        return SipUri("tel", number, "", "", 0, _uri_params(ptext), "")
    if scheme != "sip" and scheme != "sips":
        raise _bad_uri()

    # '@' is excluded from every part of a SIP URI except as the userinfo
    # separator, so more than one cannot be split unambiguously.
    user = password = ""
    at_count = rest.count("@")
    if at_count > 1:
        raise _bad_uri()
    if at_count:
        userinfo, _, rest = rest.partition("@")
        user, has_pw, password = userinfo.partition(":")
        if _SIP_USER_RE.fullmatch(user) is None:
            raise _bad_uri()
        if has_pw and _SIP_PASSWORD_RE.fullmatch(password) is None:
            raise _bad_uri()
    rest, has_headers, headers = rest.partition("?")
    if has_headers and _URI_HEADERS_RE.fullmatch(headers) is None:
        raise _bad_uri()
    hostport, has_params, ptext = rest.partition(";")
    m = _HOSTPORT_RE.fullmatch(hostport)
    if m is None:
        raise _bad_uri()
    host = m.group(1).lower()
    if host[0] == "[" and not _valid_ipv6_reference(host):
        raise _bad_uri()
    port = 0
    if m.group(2) is not None:
        port = int(m.group(2))
        if port > 65535:
            raise _bad_uri()
    params = _uri_params(ptext) if has_params else {}
    return SipUri(scheme, user, password, host, port, params, headers)


# --------------------------------------------------------------------------
# name-addr / addr-spec


class NameAddr:
    """One From/To/Contact-style value: display name, URI text, header params."""

    __slots__ = ("display", "uri", "params", "raw")

    def __init__(self, display: str, uri: str, params: dict[str, str | None], raw: str) -> None:
        self.display = display
        self.uri = uri
        self.params = params
        self.raw = raw

    def __repr__(self) -> str:
        return f"NameAddr(display={self.display!r}, uri={self.uri!r}, params={self.params!r})"


def _bad_address() -> SipParseError:
    return SipParseError(400, "Bad address")


def parse_name_addr(text: str) -> NameAddr:
    """Parse a name-addr or addr-spec value with its header parameters.

    In addr-spec form every ``;param`` after the URI belongs to the header
    (RFC 3261 §20.10), which is why URIs with parameters must be in <>.
    Raises SipParseError(400, "Bad address").
    """
    raw = text.strip(" \t")
    if not raw:
        raise _bad_address()
    first = raw[0]
    lt = -1
    display = ""
    if first == "<":
        lt = 0
    elif first == '"':
        m = _QUOTED_RE.match(raw)
        if m is None:
            raise _bad_address()
        display = _unquote(m.group())
        lt = m.end()
        while lt < len(raw) and raw[lt] in " \t":
            lt += 1
        if raw[lt : lt + 1] != "<":
            raise _bad_address()
    else:
        pos = raw.find("<")
        if pos > 0 and _DISPLAY_WORDS_RE.fullmatch(raw, 0, pos) is not None:
            lt = pos
            display = raw[:pos].rstrip(" \t")
    if lt >= 0:
        gt = raw.find(">", lt + 1)
        if gt < 0:
            raise _bad_address()
        uri = raw[lt + 1 : gt]
        rest = raw[gt + 1 :]
    else:
        semi = raw.find(";")
        if semi < 0:
            uri, rest = raw, ""
        else:
            uri, rest = raw[:semi].rstrip(" \t"), raw[semi:]
    if _URI_SHAPE_RE.fullmatch(uri) is None:
        raise _bad_address()
    params = _parse_params(rest, "Bad address") if rest else {}
    return NameAddr(display, uri, params, raw)


def parse_contacts(msg: SipMessage) -> list[NameAddr] | None:
    """All Contact values of ``msg`` in order; None for the lone ``*``.

    An empty list means the message had no Contact at all (a registrar
    treats that as a binding query).  Raises SipParseError(400, "Bad
    Contact") for '*' mixed with anything, empty elements or bad values.
    """
    out: list[NameAddr] = []
    stars = 0
    for hname, value in msg.headers:
        if hname != "contact":
            continue
        for element in _split_commas(value):
            if element == "*":
                stars += 1
                continue
            try:
                out.append(parse_name_addr(element))
            except SipParseError:
                raise SipParseError(400, "Bad Contact") from None
    if stars:
        if stars > 1 or out:
            raise SipParseError(400, "Bad Contact")
        return None
    return out


def _tag_slow(text: str) -> str:
    try:
        tag = parse_name_addr(text).params.get("tag")
    except SipParseError:
        return ""
    return tag or ""


def tag_of(text: str) -> str:
    """The ``tag`` header parameter of a From/To value, '' if none.

    Never raises: a value too malformed to parse has no usable tag.
    """
    if '"' in text:
        return _tag_slow(text)
    if "<" in text:
        gt = text.rfind(">")
        if gt < 0:
            return ""
        # Only what follows the URI's '>' is header params; a ';tag=' inside
        # <...> is a URI parameter and must not be picked up.
        tail = text[gt + 1 :]
    else:
        tail = text
    low = tail.lower()
    pos = low.find(";tag=")
    if pos < 0 or " " in tail or "\t" in tail:
        return _tag_slow(text) if "tag" in low else ""
    value = tail[pos + 5 :]
    end = value.find(";")
    return value if end < 0 else value[:end]


# --------------------------------------------------------------------------
# Addresses of record
#
# One AOR, one record: the registrar, the MI and every other consumer derive the
# key of a user's bindings here and nowhere else.

# Characters a user part may carry unescaped (RFC 3261 §25.1: unreserved and
# user-unreserved); every other byte is written %XX so the key is printable and
# one spelling stands for one unescaped value.
_USER_LITERAL = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/"
)
_ESCAPED_RE = re.compile(r"%([0-9A-Fa-f]{2})")
# The form nearly every phone sends in To: <sip:user@host>, a plain user and a host
# name or IPv4 address, then only token header parameters (the tag).  Anything else
# takes the general path; tests/unit/test_aor.py proves both give the same answer.
_PLAIN_TO_RE = re.compile(
    r"<sip:([A-Za-z0-9\-_.!~*'()&=+$,]+)@([A-Za-z0-9.\-]+)>"
    rf"(?:;[{_TOKEN_CHARS}]+(?:=[{_TOKEN_CHARS}]+)?)*"
)
_SCHEMELESS_RE = re.compile(r"[^:@]*@|[^:]*\Z")


def _normalize_user(user: str) -> str:
    """The user part with its escaping normalised: %XX of a literal character is
    decoded, every other escape is kept with upper-case hex (RFC 3261 §19.1.4 compares
    user parts after unescaping; the result is a bijection of the unescaped value)."""
    if "%" not in user:
        return user
    raw = bytearray()
    pos = 0
    for m in _ESCAPED_RE.finditer(user):
        raw += user[pos:m.start()].encode()
        raw.append(int(m.group(1), 16))
        pos = m.end()
    raw += user[pos:].encode()
    return "".join(chr(b) if b in _USER_LITERAL else f"%{b:02X}" for b in raw)


PASSWORD_IN_AOR = "Password in AOR"  # the 400 reason of canonical_aor for one


def canonical_aor(uri: str) -> str:
    """The address-of-record key of a SIP or SIPS URI (RFC 3261 §10.3 step 5).

    URI parameters and headers are dropped, the user part's escaping is normalised
    (escaped and literal spellings of one character are one AOR, case kept), the host
    is lower-cased (IPv6 in its compressed form) and an explicit port is kept, as
    §19.1.4 compares them.  ``sip:`` AORs read ``user@host`` (the OpenSIPS form);
    ``sips:`` ones keep their scheme, a different AOR.  Raises SipParseError: 416 for
    another scheme (tel:, isbn: ... RFC 4475 §3.1.4.4), 400 for a malformed URI or
    one carrying a password (an AOR is no place for a secret, and two spellings of
    one user must not become two records).
    """
    text = uri.strip(" \t")
    scheme = text[:text.find(":") + 1].lower()
    if scheme != "sip:" and scheme != "sips:":
        raise SipParseError(416, "Unsupported URI Scheme")
    u = parse_uri(text)
    if u.password:
        raise SipParseError(400, PASSWORD_IN_AOR)
    host = u.host
    if host[0] == "[":
        host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
    port = f":{u.port}" if u.port else ""
    prefix = "sips:" if u.scheme == "sips" else ""
    if not u.user:
        return f"{prefix}{host}{port}"
    return f"{prefix}{_normalize_user(u.user)}@{host}{port}"


def aor_of(to_value: str) -> str:
    """The AOR key of a To header value (see canonical_aor; same errors, and 400 for
    a value that is no name-addr/addr-spec).  The common ``<sip:user@host>`` form
    is answered by one regex match."""
    m = _PLAIN_TO_RE.fullmatch(to_value)
    if m is not None:
        return f"{m.group(1)}@{m.group(2).lower()}"
    return canonical_aor(parse_name_addr(to_value).uri)


def aor_key(text: str) -> str:
    """The AOR key of what an operator types (MI): a URI, or ``user@host`` without a
    scheme, read as sip:."""
    text = text.strip(" \t")
    if text[:1] == "<" and text[-1:] == ">":
        text = text[1:-1]
    if _SCHEMELESS_RE.match(text):
        text = "sip:" + text
    return canonical_aor(text)


# --------------------------------------------------------------------------
# Via


class Via:
    """One Via value (RFC 3261 §20.42) with its parameters."""

    __slots__ = ("sent_protocol", "transport", "host", "port", "params")

    def __init__(
        self, sent_protocol: str, transport: str, host: str, port: int, params: dict[str, str | None]
    ) -> None:
        self.sent_protocol = sent_protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    def __repr__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"Via({self.sent_protocol} {self.host}{port} {self.params!r})"


def _bad_via() -> SipParseError:
    return SipParseError(400, "Bad Via")


def parse_via(text: str) -> Via:
    """Parse a single Via value (not a comma list); SipParseError(400, "Bad Via")."""
    m = _VIA_HEAD_RE.match(text)
    if m is None:
        raise _bad_via()
    protocol, version, transport, host, port_text = m.groups()
    host = host.lower()
    if host[0] == "[" and not _valid_ipv6_reference(host):
        raise _bad_via()
    port = 0
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise _bad_via()
    transport = transport.upper()
    rest = text[m.end() :]
    params = _parse_params(rest, "Bad Via") if rest else {}
    return Via(f"{protocol.upper()}/{version}/{transport}", transport, host, port, params)


# --------------------------------------------------------------------------
# Builders


def _same_host(host: str, ip: str) -> bool:
    """Whether a Via sent-by host already names the packet's source address."""
    host = host.lower()
    if host[:1] == "[":
        host = host[1:-1]
    if host == ip.lower():
        return True
    if ":" in host and ":" in ip:
        # IPv6 has many spellings of one address (zero runs, leading zeros).
        try:
            return ipaddress.IPv6Address(host) == ipaddress.IPv6Address(ip)
        except ValueError:
            return False
    return False


def _split_semicolons(text: str) -> list[str]:
    """Split on ';' outside quoted-strings (Via params may be quoted)."""
    parts: list[str] = []
    current: list[str] = []
    for piece in _SEMI_PIECE_RE.findall(text):
        if piece == ";":
            parts.append("".join(current))
            current = []
        else:
            current.append(piece)
    parts.append("".join(current))
    return parts


def _stamp_top_via(line: str, source: tuple[str, int]) -> str:
    """Add received/rport to the first Via value of ``line`` (§18.2.1, RFC 3581 §4)."""
    ip, port = source
    head = line.split(";", 1)[0]
    if "," not in head and "rport" not in line.lower() and \
            head.rpartition(" ")[2].partition(":")[0] == ip:
        # The common case, cheaply: no rport asked and sent-by is the source address.
        return line
    if ip[:1] == "[":
        # 'received' carries a bare IPv6address, not an IPv6reference.
        ip = ip[1:-1]
    if "," in line:
        values = _split_commas(line)
        top, others = values[0], values[1:]
    else:
        top, others = line, []
    m = _VIA_HEAD_RE.match(top)
    if m is None:
        return line
    head_end = m.end()
    params = top[head_end:]
    low = params.lower()
    if "rport" not in low and "received" not in low:
        if _same_host(m.group(4), ip):
            return line
        top = f"{top};received={ip}"
    elif (
        "received" not in low
        and (low.endswith(";rport") or ";rport;" in low)
        and " " not in params
        and "\t" not in params
        and '"' not in params
    ):
        # The sipp/phone common case: a bare ";rport" and nothing to replace.
        at = low.find(";rport;")
        if at < 0:
            at = len(low) - 6
        top = f"{top[:head_end]}{params[:at]};rport={port}{params[at + 6:]};received={ip}"
    else:
        parts = _split_semicolons(params) if '"' in params else params.split(";")
        rport_at = received_at = -1
        for index in range(1, len(parts)):
            pname, eq, _ = parts[index].partition("=")
            pname = pname.strip(" \t").lower()
            if pname == "rport":
                if not eq:
                    rport_at = index
            elif pname == "received":
                received_at = index
        # RFC 3581 wants 'received' whenever rport is filled in, even if the
        # address matches sent-by, so the client can tell it was processed.
        if rport_at < 0 and _same_host(m.group(4), ip):
            return line
        if rport_at >= 0:
            parts[rport_at] = f"rport={port}"
        if received_at >= 0:
            parts[received_at] = "received=" + ip
        else:
            parts.append("received=" + ip)
        top = top[:head_end] + ";".join(parts)
    if others:
        return ", ".join([top, *others])
    return top


stamp_top_via = _stamp_top_via  # what build_response does to the top Via, for callers
# that build a response without a SipMessage (services.sip.plainreg)


def _check_lines(lines: list[str], text: str) -> None:
    # A CR or LF smuggled in through any value would start a new header in
    # the output; counting both against the joins catches all of them at once.
    joins = len(lines) - 1
    if text.count("\n") != joins or text.count("\r") != joins:
        raise ValueError("header names and values must not contain CR or LF")


def _append_extra(out: list[str], headers: list[tuple[str, str]]) -> None:
    for name, value in headers:
        if _TOKEN_RE.fullmatch(name) is None:
            raise ValueError(f"bad header name {name!r}")
        low = name.lower()
        if low == "content-length" or low == "l":
            # The builder owns Content-Length; a second one would make the
            # framing ambiguous for the receiver.
            raise ValueError("Content-Length is added by the builder")
        out.append(f"{name}: {value}")


def build_response(
    msg: SipMessage,
    status: int,
    reason: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    to_tag: str | None = None,
    received: tuple[str, int] | None = None,
    raw_headers: bytes = b"",
) -> bytes:
    """Build the response to request ``msg`` (RFC 3261 §8.2.6).

    Via (in order; the top one stamped with received/rport when ``received``
    is the packet source), From, To (with ``to_tag`` if it has no tag yet),
    Call-ID and CSeq are copied; ``headers`` follow, then ``raw_headers``
    (complete lines, each ending in CRLF, that the caller built from values
    this module already parsed, e.g. the registrar's Contact lines); Content-Length is last.
    Raises ValueError for a status outside 100..699, a non-request ``msg``,
    a header name that is not a token, a Content-Length in ``headers`` or
    CR/LF in any text.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"bad status {status}")
    if not msg.is_request:
        raise ValueError("responses are only built for requests")
    out = [f"SIP/2.0 {status} {reason}"]
    vias = msg.vias
    if vias:
        if received is not None:
            out.append("Via: " + _stamp_top_via(vias[0], received))
            for index in range(1, len(vias)):
                out.append("Via: " + vias[index])
        else:
            for value in vias:
                out.append("Via: " + value)
    out.append("From: " + msg.from_)
    to = msg.to
    if to_tag and not tag_of(to):
        to = f"{to};tag={to_tag}"
    out.append("To: " + to)
    out.append("Call-ID: " + msg.call_id)
    out.append("CSeq: " + (msg._cseq_raw or f"{msg.cseq_num} {msg.cseq_method}"))
    if headers:
        _append_extra(out, headers)
    if raw_headers:
        text = "\r\n".join(out)
        _check_lines(out, text)
        data = b"".join((text.encode(), b"\r\n", raw_headers,
                         f"Content-Length: {len(body)}\r\n\r\n".encode()))
        return data + body if body else data
    out.append(f"Content-Length: {len(body)}")
    text = "\r\n".join(out)
    _check_lines(out, text)
    data = (text + "\r\n\r\n").encode()
    return data + body if body else data


def build_request(
    method: str, ruri: str, headers: list[tuple[str, str]], body: bytes = b""
) -> bytes:
    """Build a request: start line, ``headers`` as given, Content-Length last.

    The caller supplies Via, From, To, Call-ID, CSeq and Max-Forwards.
    Raises ValueError for a non-token method or header name, a blank/spaced
    Request-URI, a Content-Length in ``headers`` or CR/LF in any text.
    """
    if _TOKEN_RE.fullmatch(method) is None:
        raise ValueError(f"bad method {method!r}")
    if _URI_SHAPE_RE.fullmatch(ruri) is None:
        raise ValueError(f"bad Request-URI {ruri!r}")
    out = [f"{method} {ruri} SIP/2.0"]
    _append_extra(out, headers)
    out.append(f"Content-Length: {len(body)}")
    text = "\r\n".join(out)
    _check_lines(out, text)
    data = (text + "\r\n\r\n").encode()
    return data + body if body else data
