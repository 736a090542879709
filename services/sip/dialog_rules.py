"""Pure rules of dialog tracking (RFC 3261 §12): which replies change a dialog's state,
the route sets towards each leg, the profiles a dialog goes in, and the in-dialog
requests (BYE, OPTIONS) a node sends to a leg by itself. No I/O: tested with tables
(tests/unit/test_dialog_rules.py). Neighbours: services.sip.dialogs (tracking),
services.sip.dialog_timer (lifetime and pings), core.sip, services.sip.routing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastcluster.core.settings import PROFILE_FIELDS
from fastcluster.core.sip import SipMessage, SipParseError, build_request, parse_uri, tag_of
from fastcluster.services.sip import messages as M
from fastcluster.services.sip import routing as RT
from fastcluster.shm.dialogs import DLG_CONFIRMED_NA, DLG_EARLY

FAILED = -1  # state_of_reply: the INVITE failed (the dialog ends)


def state_of_reply(status: int, to_tag: str, final_status: int) -> int | None:
    """The dialog state a response to the initial INVITE leads to: EARLY for a 1xx
    with a To tag (101-199), CONFIRMED_NA for a 2xx, FAILED when the transaction's
    final response upstream is >= 300 (final_status: that status, 0 while none), None
    when the dialog does not change (100, a 1xx without a tag, a branch's failure while
    others may still answer)."""
    if 200 <= status < 300:
        return DLG_CONFIRMED_NA
    if final_status >= 300:
        return FAILED
    if 100 < status < 200 and to_tag:
        return DLG_EARLY
    return None


def same_callee(state: int, stored_tag: bytes, tag: bytes) -> bool:
    """Whether an in-dialog request naming the callee by `tag` (its To tag from the
    caller, its From tag from the callee) belongs to a stored dialog in `state` whose
    To tag is stored_tag. Once a 2xx confirmed it, only that callee's tag matches (a
    forked INVITE answered 2xx twice makes two dialogs, RFC 3261 §13.2.2.4: the other
    one is not tracked); before, any (the callee is not fixed yet). The kernel applies
    the same rule to every change it is given (shm.dialogs._other_callee)."""
    if state < DLG_CONFIRMED_NA or not stored_tag or not tag:
        return True
    return stored_tag == tag


def uncounted_status(missing: list[str], limits: dict[str, int], too_long: set[str]
                     ) -> int:
    """The status an INVITE is refused with when the profile entries `missing` could
    not be counted: a profile with a limit fails closed -- 500 when its value can never
    fit (too_long: longer than a counter name may be), else 503 (the counters are full
    for now) -- one without fails open (0: admit, the miss is only counted)."""
    limited = [e for e in missing if limit_of(e, limits) is not None]
    if not limited:
        return 0
    return 500 if any(e in too_long for e in limited) else 503


def _entries(values: list[str]) -> list[str]:
    out = []
    for v in values:
        out += [e.strip() for e in M.split_values(v) if e.strip()]
    return out


def is_mine(entry: str, mine: frozenset[tuple[str, int]]) -> bool:
    """Whether a Record-Route entry names one of our listeners."""
    return RT.is_local(RT.uri_hostport(RT.uri_of(entry)), mine)


def route_sets(record_routes: list[str], mine: frozenset[tuple[str, int]]
               ) -> tuple[list[str], list[str]]:
    """(towards the caller, towards the callee) from the Record-Route of a response to
    the INVITE as it reaches us: the entries after ours lead to the caller, in order;
    those before ours lead to the callee, in reverse order. Our own entries (one, or
    two with r2=on) are in neither. Without an entry of ours, all lead to the callee."""
    entries = _entries(record_routes)
    ours = [i for i, e in enumerate(entries) if is_mine(e, mine)]
    if not ours:
        return [], entries[::-1]
    return entries[ours[-1] + 1:], entries[:ours[0]][::-1]


def caller_route_of_request(record_routes: list[str]) -> list[str]:
    """The route set towards the caller from the initial INVITE as it reaches us (every
    Record-Route there was added by a proxy between the caller and us)."""
    return _entries(record_routes)


def _uri_parts(value: str) -> tuple[str, str, str]:
    """(uri, user, host) of a From/To value or a URI ("" parts when not a SIP URI)."""
    uri = RT.uri_of(value).split(";", 1)[0] if "<" not in value else RT.uri_of(value)
    try:
        u = parse_uri(uri)
    except SipParseError:
        return uri, "", ""
    return uri, u.user, u.host.lower()


FIELD_VALUES: dict[str, Callable[[SipMessage, str], str]] = {
    "from_user": lambda m, ip: _uri_parts(m.from_)[1],
    "from_domain": lambda m, ip: _uri_parts(m.from_)[2],
    "from_uri": lambda m, ip: _uri_parts(m.from_)[0],
    "to_user": lambda m, ip: _uri_parts(m.to)[1],
    "to_domain": lambda m, ip: _uri_parts(m.to)[2],
    "to_uri": lambda m, ip: _uri_parts(m.to)[0],
    "ruri_user": lambda m, ip: _uri_parts(m.ruri)[1],
    "ruri_domain": lambda m, ip: _uri_parts(m.ruri)[2],
    "source_ip": lambda m, ip: ip,
}
assert tuple(FIELD_VALUES) == PROFILE_FIELDS  # one list of fields, in core.settings


def profiles_of(rules: tuple[tuple[str, str], ...], msg: SipMessage, src_ip: str
                ) -> list[str]:
    """The profile entries of a new dialog: `name` for a rule without a field,
    `name/value` with the INVITE's value of the field (a rule whose value is empty, or
    holds a line break, puts the dialog in no entry of that profile)."""
    out = []
    for name, field in rules:
        if not field:
            out.append(name)
            continue
        value = FIELD_VALUES[field](msg, src_ip)
        if value and "\n" not in value and "\r" not in value:
            out.append(f"{name}/{value}")
    return out


def limit_of(entry: str, limits: dict[str, int]) -> int | None:
    """The limit that applies to a profile entry (`name` or `name/value`), if any."""
    return limits.get(entry.split("/", 1)[0])


def exceeded(counts: dict[str, int], limits: dict[str, int]) -> str | None:
    """The first profile entry whose count (the new dialog included) is above its
    limit, or None."""
    for entry, n in counts.items():
        limit = limit_of(entry, limits)
        if limit is not None and n > limit:
            return entry
    return None


# ---------------------------------------------------------------- requests of our own


@dataclass(frozen=True)
class Leg:
    """Where a request to one leg of a dialog goes, and as whom it is sent."""
    ruri: str  # the leg's Contact
    routes: list[str]  # Route values, in order
    from_: str  # the other leg's identity (name-addr with tag)
    to: str  # the leg's identity
    cseq: int


def leg_of(d: dict, callee: bool) -> Leg:
    """The callee or the caller leg of a decoded dialog row: a request to it goes as if
    from the other party, with a CSeq above what that party used."""
    caller_id = f"<{d['from_uri']}>;tag={d['from_tag']}"
    callee_id = f"<{d['to_uri']}>" + (f";tag={d['to_tag']}" if d["to_tag"] else "")
    routes = [r.strip() for r in M.split_values(d["callee_route" if callee else
                                                  "caller_route"]) if r.strip()]
    if callee:
        return Leg(d["callee_contact"] or d["to_uri"], routes, caller_id, callee_id,
                   d["caller_cseq"] + 1)
    return Leg(d["caller_contact"] or d["from_uri"], routes, callee_id, caller_id,
               d["callee_cseq"] + 1)


def next_hop(leg: Leg) -> str:
    """The URI a request to the leg is sent to: its first Route (loose routing), else
    its Request-URI."""
    return RT.uri_of(leg.routes[0]) if leg.routes else leg.ruri


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sock_value(label: str, source: tuple | None) -> str:
    """A leg's `*_sock` string: the label of the listener the leg's messages came in on
    ("udp:HOST:PORT", dlg_list's *_bind_addr) and, after a space, the address they came
    from (its NAT binding, as received)."""
    return f"{label} {hostport(source[0], source[1])}" if source else label


def split_sock(value: str) -> tuple[str, tuple[str, int] | None]:
    """(listener label, source address or None) of a `*_sock` string."""
    label, _, source = value.partition(" ")
    hp = RT.uri_hostport(f"sip:{source}") if source else None
    return label, ((hp[0], hp[1] or 5060) if hp is not None else None)


def leg_destination(leg: Leg, source: tuple[str, int] | None
                    ) -> tuple[str, int | None] | None:
    """Where a request of our own to a leg goes: its first Route when it has a route
    set (the proxies on the way route it on), else the address the leg's messages came
    from (its NAT binding: a Contact behind NAT names a private address, the
    nathelper rule), else its Contact. (host, port; 0 or None: the default)."""
    if not leg.routes and source is not None:
        return source
    return RT.uri_hostport(next_hop(leg))


def in_dialog_request(method: str, leg: Leg, callid: str, via_host: str, branch: str,
                      extra: list[tuple[str, str]] | None = None) -> bytes:
    """A BYE or OPTIONS to a leg of a dialog, sent by this node itself."""
    headers = [("Via", f"SIP/2.0/UDP {via_host};branch={branch}")]
    if leg.routes:
        headers.append(("Route", ", ".join(leg.routes)))
    headers += [("Max-Forwards", "70"), ("From", leg.from_), ("To", leg.to),
                ("Call-ID", callid), ("CSeq", f"{leg.cseq} {method}")]
    headers += extra or []
    return build_request(method, leg.ruri, headers)


DLG_BRANCH = M.COOKIE + "fd"  # + "b"/"p" (BYE, ping) + leg (0 caller, 1 callee) + hex key


def own_branch(kind: str, callee: bool, key: int, serial: int) -> str:
    """Branch of a request this node sends in a dialog: its replies come back to us and
    say which dialog and leg they answer."""
    return f"{DLG_BRANCH}{kind}{int(callee)}{key:016x}.{serial:x}"


def parse_own_branch(branch: str) -> tuple[str, bool, int] | None:
    """(kind "b"/"p", callee leg, dialog key) of one of own_branch's, else None."""
    if not branch.startswith(DLG_BRANCH) or len(branch) < len(DLG_BRANCH) + 18:
        return None
    at = len(DLG_BRANCH)
    kind, leg = branch[at], branch[at + 1]
    if kind not in "bp" or leg not in "01":
        return None
    try:
        return kind, leg == "1", int(branch[at + 2:at + 18], 16)
    except ValueError:
        return None


def to_tag_of(msg: SipMessage) -> str:
    return tag_of(msg.to)
