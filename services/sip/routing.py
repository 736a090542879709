"""Where a proxied request goes: the decisions of RFC 3261 §16.4-§16.6, RFC 3327 (Path),
RFC 5626 (flows) and our home-node rule, as pure functions over plain values.

- `process_routes`: §16.4 Route processing (strict-router fix-up, our own Route entries
  popped, double Record-Route recognised), and the home-node hint a peer node left in
  its Route to us.
- `select_bindings`: the live contacts of an AOR to try, one flow per RFC 5626 instance,
  in serial groups by q when asked.
- `binding_target`: where one contact is reached: its Path (as Route), its received
  address (NAT or outbound flow), or its URI; through the node it registered on when
  that is another live node of the cluster (so its NAT binding holds).
Every function here is tested with tables (tests/unit/test_routing.py). Neighbours:
services.sip.proxy (the I/O around them), services.sip.location (bindings),
services.sip.messages.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from fastcluster.shm.contacts import FLAG_NAT, Q_NONE

HOME_DST = "fcr"  # Route URI parameter: the destination the home node sends to
HOME_SOCK = "fcs"  # ... and the listener it sends from
_URI_HOSTPORT = re.compile(r"^(?:sips?):(?:[^@;?>]*@)?(\[[^\]]+\]|[^:;?>]+)(?::([0-9]+))?",
                           re.I)


class Binding(NamedTuple):
    """One live contact of an AOR, as the proxy needs it (services.sip.location)."""
    uri: str
    path: tuple[str, ...] = ()
    q: int = Q_NONE  # per mille
    flags: int = 0
    reg_id: int = 0
    instance: str = ""
    received: tuple[str, int] | None = None  # source address of the REGISTER
    sock: int = 0  # listener index on the node it registered through
    origin: int = 0  # that node
    expires: int = 0
    last_modified: int = 0


class Target(NamedTuple):
    """One branch: send `ruri` to host:port from listener `sock`, with these Routes."""
    sock: int
    host: str
    port: int
    ruri: str
    routes: tuple[str, ...] = ()
    group: int = 0
    home: int = 0  # the node it is routed through (0: direct)

    def line(self) -> str:
        """One line of a transaction's `targets` string (shm.transactions)."""
        return "\t".join((str(self.sock), self.host, str(self.port), self.ruri,
                          "\x1f".join(self.routes), str(self.group), str(self.home)))

    @staticmethod
    def from_line(line: str) -> Target:
        sock, host, port, ruri, routes, group, home = line.split("\t")
        return Target(int(sock), host, int(port), ruri,
                      tuple(r for r in routes.split("\x1f") if r), int(group), int(home))


def encode_targets(targets: list[Target]) -> bytes:
    return "".join(t.line() + "\n" for t in targets).encode("utf-8", "surrogateescape")


def decode_targets(data: bytes) -> list[Target]:
    text = data.decode("utf-8", "surrogateescape")
    return [Target.from_line(line) for line in text.split("\n") if line]


# ---------------------------------------------------------------- URIs


_HOSTPORTS: dict[str, tuple[str, int] | None] = {}


def uri_hostport(uri: str) -> tuple[str, int] | None:
    """(host, port or 0) of a sip/sips URI (inside <> or not), host lower case and
    without brackets; None if it is not one (or its port is beyond 65535). Cached: the same URIs (contacts, our
    Record-Route) come back on every request of a call."""
    hit = _HOSTPORTS.get(uri, False)
    if hit is not False:
        return hit  # type: ignore[return-value]
    if len(_HOSTPORTS) > 65536:
        _HOSTPORTS.clear()
    found = _HOSTPORTS[uri] = _uri_hostport(uri)
    return found


def _uri_hostport(uri: str) -> tuple[str, int] | None:
    text = uri.strip()
    if text.startswith("<"):
        text = text[1:text.find(">")] if ">" in text else text[1:]
    m = _URI_HOSTPORT.match(text)
    if m is None:
        return None
    host = m.group(1).lower()
    if host.startswith("["):
        host = host[1:-1]
    port = int(m.group(2)) if m.group(2) else 0
    return (host, port) if port <= 65535 else None  # no socket takes a bigger one


def uri_params(uri: str) -> dict[str, str]:
    """The URI parameters of a Route/Path value (`<sip:h;lr;a=b>` -> {lr: "", a: b})."""
    text = uri.strip()
    if text.startswith("<"):
        text = text[1:text.find(">")] if ">" in text else text[1:]
    text = text.split("?", 1)[0]
    out = {}
    for part in text.split(";")[1:]:
        name, _, value = part.partition("=")
        out[name.strip().lower()] = value.strip()
    return out


def uri_of(value: str) -> str:
    """The URI of a name-addr (`<sip:x;lr>` -> `sip:x;lr`)."""
    text = value.strip()
    if "<" in text:
        start = text.find("<") + 1
        end = text.find(">", start)
        return text[start:end if end >= 0 else len(text)]
    return text


def has_user(uri: str) -> bool:
    """Whether a SIP URI has a user part: an "@" anywhere (parameters and headers
    cannot hold one unescaped; a user part may hold ";" and "?", RFC 4475 §3.1.1)."""
    return "@" in uri


def is_local(hostport: tuple[str, int] | None, listeners: frozenset[tuple[str, int]]) -> bool:
    """Whether a URI's host:port names one of our listeners (port 0 means 5060)."""
    if hostport is None:
        return False
    host, port = hostport
    return (host, port or 5060) in listeners


def serves_domain(host: str, domains: tuple[str, ...],
                  listeners: frozenset[tuple[str, int]]) -> bool:
    """A Request-URI host this node serves: any when no domains are configured, else
    one of them or one of our own addresses."""
    if not domains:
        return True
    host = host.lower()
    return host in domains or any(host == h for h, _ in listeners)


# ---------------------------------------------------------------- Route processing


@dataclass
class RouteDecision:
    ruri: str
    routes: list[str]  # what remains, in order (values as received)
    popped: int  # Route values removed from the request
    out_sock: int | None = None  # second of a double Record-Route: leave from it
    home_dst: tuple[str, int] | None = None  # a peer node's hint (HOME_DST)
    home_sock: int | None = None
    notes: list[str] = field(default_factory=list)


def process_routes(ruri: str, routes: list[str], listeners: list[tuple[str, int]]
                   ) -> RouteDecision:
    """§16.4: if the Request-URI is one of our Record-Route entries (a strict router
    before us), it is replaced by the last Route; then the top Route entry is removed
    if it is ours, and the next one too when the first says `r2=on` (our double
    Record-Route: the second names the listener to leave from). A home-node hint
    (HOME_DST, HOME_SOCK) in our entry is returned; the caller trusts it only from a
    peer node."""
    mine = frozenset((h, p) for h, p in listeners)
    routes = list(routes)
    d = RouteDecision(ruri, routes, 0)
    if routes and not has_user(ruri) and is_local(uri_hostport(ruri), mine):
        d.ruri = uri_of(routes[-1])
        routes.pop()
        d.notes.append("strict")
    if routes and is_local(uri_hostport(uri_of(routes[0])), mine):
        params = uri_params(routes[0])
        routes.pop(0)
        d.popped = 1
        if HOME_DST in params:
            d.home_dst = _hostport_text(params[HOME_DST])
            try:
                d.home_sock = int(params.get(HOME_SOCK, "0"))
            except ValueError:
                d.home_sock = None
        if "r2" in params and routes:
            hp = uri_hostport(uri_of(routes[0]))
            if is_local(hp, mine):
                routes.pop(0)
                d.popped = 2
                d.out_sock = _listener_index(hp, listeners)  # type: ignore[arg-type]
    d.routes = routes
    return d


def _listener_index(hp: tuple[str, int], listeners: list[tuple[str, int]]) -> int | None:
    host, port = hp
    for i, (h, p) in enumerate(listeners):
        if h == host and p == (port or 5060):
            return i
    return None


def _hostport_text(text: str) -> tuple[str, int] | None:
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if not host:
        return None
    try:
        return host.lower(), int(port) if port else 5060
    except ValueError:
        return None


# ---------------------------------------------------------------- contacts


def select_bindings(bindings: list[Binding], now_s: int, serial: bool, max_branches: int
                    ) -> list[tuple[Binding, int]]:
    """(binding, group) pairs to try: live ones only; per RFC 5626 instance with
    outbound flows (reg-id > 0), only the most recently refreshed flow; ordered by q
    (highest first); groups of equal q when serial, else one group. At most
    max_branches (the highest q kept)."""
    live = [b for b in bindings if b.expires > now_s]
    flows: dict[str, Binding] = {}
    plain = []
    for b in live:
        if b.instance and b.reg_id > 0:
            best = flows.get(b.instance)
            if best is None or b.last_modified > best.last_modified:
                flows[b.instance] = b
        else:
            plain.append(b)
    chosen = plain + list(flows.values())
    chosen.sort(key=lambda b: (-_q(b), -b.last_modified))
    chosen = chosen[:max_branches]
    out = []
    group = 0
    prev = None
    for b in chosen:
        if serial and prev is not None and _q(b) != prev:
            group += 1
        prev = _q(b)
        out.append((b, group if serial else 0))
    return out


def _q(b: Binding) -> int:
    return 1000 if b.q == Q_NONE else b.q


def binding_target(b: Binding, group: int, me: int, nodes: dict[int, tuple[str, int]],
                   resolve) -> Target | None:
    """Where to send one binding's branch. `nodes`: live nodes' SIP addresses (node id
    -> (host, port)); `resolve(host, port) -> (ip, port) | None` for names. Through
    b.origin when that node is another live one (the Route to it carries the
    destination it should use); else: the Path's first hop (Path as Route), the
    received address for a NATed contact or an outbound flow, the URI's host."""
    routes = list(b.path)
    if routes:
        hop = uri_hostport(uri_of(routes[0]))
        dst = resolve(*hop) if hop else None
    elif b.received is not None and (b.flags & FLAG_NAT or b.reg_id > 0):
        dst = b.received
    else:
        hp = uri_hostport(b.uri)
        dst = resolve(*hp) if hp else None
    if dst is None:
        return None
    if b.origin and b.origin != me and b.origin in nodes:
        host, port = nodes[b.origin]
        h = f"[{host}]" if ":" in host else host
        d = f"[{dst[0]}]" if ":" in dst[0] else dst[0]
        hint = "" if b.path else f";{HOME_DST}={d}:{dst[1]};{HOME_SOCK}={b.sock}"
        home_route = f"<sip:{h}:{port};lr{hint}>"
        return Target(0, host, port, b.uri, (home_route, *routes), group, b.origin)
    return Target(b.sock, dst[0], dst[1], b.uri, tuple(routes), group, 0)
