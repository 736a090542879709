"""What a request must pass before the registrar acts on it (RFC 3261 §8.2 and §10.3,
RFC 3327, RFC 5626), as pure functions: each returns None or the `Refusal` to answer,
with the counter that records its cause. services.sip.registrar calls them in the
order of §8.2 (Via, Request-URI, extensions) then §10.3 (domain, AOR); the proxy's
requests pass the first two; they are
tested by tables in tests/unit/test_checks.py. The common forms take one regex match.
Neighbours: core.sip (parsing), core.stats (the counters named here).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from fastcluster.core.sip import SipMessage, SipParseError, parse_name_addr, parse_uri, \
    parse_via

# Methods this node answers as the UAS of a request addressed to itself (a Request-URI
# without user part: §8.2.1); every method addressed to a user is proxied.
SERVED = ("REGISTER", "OPTIONS")
ALLOW = ", ".join(SERVED)
# Known methods (405 with Allow when addressed to this node); others are 501.
KNOWN = frozenset(("INVITE", "ACK", "BYE", "CANCEL", "SUBSCRIBE", "NOTIFY", "PUBLISH",
                   "MESSAGE", "INFO", "PRACK", "UPDATE", "REFER"))
# Requests that can only belong to a transaction or dialog: none exists here (481).
IN_DIALOG = frozenset(("BYE", "CANCEL"))
# Option tags a client may Require of this registrar (RFC 3327 path, RFC 5626 outbound).
SUPPORTED = frozenset(("path", "outbound"))
SUPPORTED_HEADER = ", ".join(sorted(SUPPORTED))


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    counter: str  # core.stats name
    headers: tuple[tuple[str, str], ...] = ()


def check_method(method: str) -> Refusal | None:
    """§8.2.1, for a request addressed to this node itself: served methods pass; the
    rest get their answer (services.sip.proxy asks, before looking for a user)."""
    if method in SERVED:
        return None
    if method in IN_DIALOG:
        return Refusal(481, "Call/Transaction Does Not Exist", "core:no_transaction")
    if method in KNOWN:
        return Refusal(405, "Method Not Allowed", "core:method_not_allowed",
                       (("Allow", ALLOW),))
    return Refusal(501, "Not Implemented", "core:unsupported_methods", (("Allow", ALLOW),))


# sip:host[:port][;params] (a registrar's usual Request-URI) or sip:user@host...
_PLAIN_RURI = re.compile(r"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,]+@)?([A-Za-z0-9.\-]+)"
                         r"(?::([0-9]{1,5}))?(?:;[A-Za-z0-9\-_.!~*'()=]+)*")


def request_uri_host(ruri: str) -> str:
    """The host of a SIP/SIPS Request-URI (lower case, IPv6 bracketed and compressed).
    Raises SipParseError: 416 for another scheme (§8.2.2.1), 400 if malformed (RFC 5118
    §4.2: an IPv6 address needs its brackets)."""
    m = _PLAIN_RURI.fullmatch(ruri)
    if m is not None and (m.group(2) is None or int(m.group(2)) <= 65535):
        return m.group(1).lower()
    scheme = ruri[:ruri.find(":") + 1].lower()
    if scheme != "sip:" and scheme != "sips:":
        raise SipParseError(416, "Unsupported URI Scheme")
    try:
        host = parse_uri(ruri).host
    except SipParseError:
        raise SipParseError(400, "Bad Request-URI") from None
    if host[:1] == "[":
        host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
    return host


def check_request_uri(ruri: str) -> Refusal | None:
    try:
        request_uri_host(ruri)
    except SipParseError as exc:
        counter = "core:unsupported_uri_scheme" if exc.status == 416 else \
            "core:bad_request_uri"
        return Refusal(exc.status, exc.reason, counter)
    return None


def _option_tags(values: list[str]) -> list[str]:
    return [v.strip().lower() for v in values if v.strip()]


def check_require(msg: SipMessage) -> Refusal | None:
    """§8.2.2.3: 420 listing the Require option tags not supported (never for ACK or
    CANCEL, which cannot be rejected; Proxy-Require is for proxies, ignored here)."""
    if msg.method in ("ACK", "CANCEL"):
        return None
    required = msg.get_all("require")
    if not required:
        return None
    unsupported = [tag for tag in _option_tags(required) if tag not in SUPPORTED]
    if not unsupported:
        return None
    return Refusal(420, "Bad Extension", "core:bad_extensions",
                   (("Unsupported", ", ".join(dict.fromkeys(unsupported))),))


# The Via every phone and sipp send: no spaces, a host or IPv4, branch and rport.
_PLAIN_VIA = re.compile(r"SIP/2\.0/[A-Za-z]+ [A-Za-z0-9.\-]+(?::[0-9]{1,5})?"
                        r"(?:;(?:branch=[A-Za-z0-9\-.!%*_+`'~]+|rport))*")
_TOKEN_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def _valid_via_param(name: str, value: str | None) -> bool:
    if name == "branch":
        return bool(value) and _TOKEN_VALUE.fullmatch(value) is not None
    if name == "rport":
        return value is None or (value.isdigit() and 0 < int(value) <= 65535)
    if name == "ttl":
        return value is not None and value.isdigit() and int(value) <= 255
    if name == "received":
        if value is None:
            return False
        # RFC 5118 §4.5: tolerate the brackets some stacks put around IPv6 here
        text = value[1:-1] if value[:1] == "[" and value[-1:] == "]" else value
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return False
        return True
    if name == "maddr":
        if not value:
            return False
        try:
            parse_uri(f"sip:{value}")
        except SipParseError:
            return False
    return True


def check_via(msg: SipMessage) -> Refusal | None:
    """The top Via must parse, with well-formed branch/rport/received/ttl/maddr (an
    answer goes where it says: RFC 3261 §18.2.2, RFC 3581)."""
    top = msg.vias[0]
    if "," not in top and _PLAIN_VIA.fullmatch(top) is not None:
        return None
    try:
        via = parse_via(top.split(",", 1)[0] if '"' not in top else top)
    except SipParseError:
        return Refusal(400, "Bad Via", "core:bad_via")
    for name, value in via.params.items():
        if not _valid_via_param(name, value):
            return Refusal(400, f"Bad Via {name} parameter", "core:bad_via")
    return None


def served_domain(host: str, domains: tuple[str, ...]) -> bool:
    return not domains or host in domains


def check_request_domain(ruri: str, domains: tuple[str, ...]) -> Refusal | None:
    """§10.3 step 1: a REGISTER for a domain this registrar does not serve (an IP
    address passes: an edge proxy may address the node directly)."""
    if not domains:
        return None
    host = request_uri_host(ruri)
    if host in domains:
        return None
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return Refusal(403, "Domain not served here", "registrar:foreign_domain")
    return None


def check_aor_domain(aor: str, domains: tuple[str, ...]) -> Refusal | None:
    """§10.3 step 5: the To AOR must belong to a served domain (404 otherwise)."""
    if not domains:
        return None
    hostport = aor.rpartition("@")[2]
    if hostport.startswith("sips:"):
        hostport = hostport[5:]
    host = hostport[:hostport.find("]") + 1] if hostport[:1] == "[" else \
        hostport.partition(":")[0]
    if host in domains:
        return None
    return Refusal(404, "Not Found (domain not served)", "registrar:foreign_domain")


def outbound_honoured(msg: SipMessage, path: list[str]) -> bool | None:
    """RFC 5626 §6 for a REGISTER whose contacts carry reg-id: True when the registrar
    may apply outbound (the UA is the first hop: one Via; or the first Path URI has
    ';ob'), False when the first hop lacks outbound support (439)."""
    if len(msg.vias) == 1 and "," not in msg.vias[0]:
        return True
    if not path:
        return False
    try:
        first = parse_uri(parse_name_addr(path[0]).uri)
    except SipParseError:
        return False
    return "ob" in first.params
