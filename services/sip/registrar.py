"""The SIP application of a worker: a registrar (RFC 3261 §10.3, RFC 3327 Path, RFC 5626
instance/reg-id, nathelper-style NAT detection) plus OPTIONS 200 to the server itself;
every other request and every reply goes to the proxy (services.sip.proxy).

Per REGISTER: parse, resolve every contact's expiry (423 below usrloc.min_expires,
clamped to usrloc.max_expires), pack the request into this worker's buffer, and let one
kernel call (shm.contacts.ul_register) apply it atomically to the AOR and produce the
Contact lines of the 200 OK. The server is stateless: a retransmitted REGISTER (same
Call-ID and CSeq as a binding) is answered again from the table, unchanged. This module
is the hot path: it avoids work per message that could be done once per worker. Neighbours: core.sip (parse/build),
shm.contacts (kernel), services.usrloc (AOR form), workers.sip_worker (transport).
"""
from __future__ import annotations

import email.utils
import logging
import os
import re
import socket
import time
from typing import Any

import numpy as np

from fastcluster.core.config import Config
from fastcluster.core.digest import Verdict
from fastcluster.core.sip import (
    SipMessage,
    SipParseError,
    aor_of,
    build_response,
    parse_contacts,
    parse_message,
    parse_uri,
)
from fastcluster.core.stats import INDEX
from fastcluster.services.sip import checks
from fastcluster.services.sip import routing as RT
from fastcluster.services.sip.auth import Authenticator
from fastcluster.services.sip.natping import parse_callid
from fastcluster.services.sip.plainreg import PlainRegister
from fastcluster.services.sip.proxy import Proxy
from fastcluster.services.sip.subscribers import StoreError
from fastcluster.shm import contacts as C
from fastcluster.shm import partitions as P
from fastcluster.shm import table as T
from fastcluster.shm import control as CT
from fastcluster.shm.tables import TABLE_INDEX, retry_busy

log = logging.getLogger("registrar")

# OpenSIPS method bits, so "Methods" means the same in both.
METHOD_BITS = {"INVITE": 1, "CANCEL": 2, "ACK": 4, "BYE": 8, "INFO": 16, "OPTIONS": 32,
               "UPDATE": 64, "REGISTER": 128, "MESSAGE": 256, "SUBSCRIBE": 512,
               "NOTIFY": 1024, "PRACK": 2048, "REFER": 4096, "PUBLISH": 8192}
ALLOW = checks.ALLOW

_I = INDEX
I_RCV_REQ, I_RCV_RPL, I_BAD = _I["core:rcv_requests"], _I["core:rcv_replies"], _I["core:bad_msgs"]
I_DROP = _I["core:drop_requests"]
I_BAD_AOR, I_439 = _I["registrar:bad_aor"], _I["registrar:outbound_first_hop"]
I_REPLAYED, I_RETRANS = _I["auth:replayed_nonces"], _I["auth:retransmissions"]
I_SENT = _I["sl:sent_replies"]
I_CLASS = [_I.get(f"sl:{c}xx_replies", I_SENT) for c in range(7)]
I_ACCEPT, I_REJECT = _I["registrar:accepted_regs"], _I["registrar:rejected_regs"]
I_TOO_LONG, I_FULL = _I["usrloc:refused_too_long"], _I["usrloc:refused_table_full"]
I_COLLIDE, I_WAITS = _I["usrloc:key_collisions"], _I["usrloc:lock_waits"]
I_PING_RPL = _I["nathelper:ping_replies"]
I_NOT_SYNCED = _I["registrar:refused_not_synced"]
CONTACTS_BIT = 1 << TABLE_INDEX["contacts"]
I_ERR_RPL = _I["core:err_replies"]
I_RCV_REGISTER, I_RCV_OPTIONS = _I["core:rcv_requests_register"], _I["core:rcv_requests_options"]

# Looks for the binding a retransmitted digest answer's original is committing (bounded:
# a real replay costs RETRANS_TRIES kernel calls and yields, never a sleep).
RETRANS_TRIES = 4
# kernel result -> (status, reason, counter or -1)
KERNEL_ERRORS = {
    # Not "Invalid CSeq number": sipp takes the first "CSeq" in a reply, reason included.
    C.REG_E_CSEQ: (400, "Out of order request", -1),
    C.REG_E_TOO_MANY: (403, "Too many registered contacts", -1),
    C.REG_E_OUT_SPACE: (500, "Too many bindings to list", -1),
    T.E_FULL: (503, "Location table full", I_FULL),
    T.E_TOO_LONG: (500, "Contact too long for usrloc.record_bytes", I_TOO_LONG),
    T.E_COLLISION: (500, "Binding key collision", I_COLLIDE),
}


class Refuse(Exception):
    """A REGISTER refused before the table is touched."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None,
                 counter: int = -1) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers, self.counter = status, reason, headers, counter


def refuse(refusal: checks.Refusal) -> Refuse:
    return Refuse(refusal.status, refusal.reason, list(refusal.headers),
                  INDEX[refusal.counter])


def methods_mask(text: str) -> int:
    mask = 0
    for m in text.replace('"', "").split(","):
        mask |= METHOD_BITS.get(m.strip().upper(), 0)
    return mask


def address_bytes(ip: str) -> tuple[int, bytes]:
    """(family 4/6, 16 bytes) of a source address."""
    if ":" in ip:
        return 6, socket.inet_pton(socket.AF_INET6, ip)
    return 4, socket.inet_pton(socket.AF_INET, ip) + bytes(12)


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
# sip:user@host[:port][;params] with a plain host: the form nearly every UA sends.
_PLAIN_CONTACT = re.compile(r"sip:([^@;?<>\[\]\s\"]+)@([A-Za-z0-9.\-_]+)(?::([0-9]{1,5}))?"
                            r"((?:;[^?<>\s\"]*)?)")


def contact_parts(uri: str) -> tuple[str, str, int]:
    """(canonical URI, host, port) of a Contact URI. Canonical: scheme and host in lower
    case (RFC 3261 §19.1.4 compares them case-insensitively), the rest as sent. Plain
    sip URIs take a regex path; anything else goes through parse_uri, which raises
    SipParseError(400) for a bad URI."""
    m = _PLAIN_CONTACT.fullmatch(uri)
    if m is not None:
        user, host, port, params = m.groups()
        host = host.lower()
        if port is None:
            return f"sip:{user}@{host}{params}", host, 0
        if 0 < int(port) < 65536:
            return f"sip:{user}@{host}:{port}{params}", host, int(port)
    colon = uri.find(":")
    scheme = uri[:colon].lower()
    rest = uri[colon + 1:]
    start = rest.find("@") + 1
    end = len(rest)
    for stop in (";", "?"):
        p = rest.find(stop, start)
        if 0 <= p < end:
            end = p
    hostport = rest[start:end]
    host, sep, port_text = hostport.partition(":")
    if scheme in ("sip", "sips") and host and _HOST_CHARS.issuperset(host) and \
            (not sep or port_text.isdigit() and 0 < int(port_text) < 65536):
        host = host.lower()
        canonical = f"{scheme}:{rest[:start]}{host}{':' + port_text if sep else ''}{rest[end:]}"
        return canonical, host, int(port_text) if sep else 0
    u = parse_uri(uri)  # IPv6 references, tel:, odd forms; validates or raises 400
    host = u.host.lower()
    canonical = f"{scheme}:{rest[:start]}{hostport.lower()}{rest[end:]}"
    return canonical, host.strip("[]"), u.port


class DateLine:
    """`Date:` header line (RFC 3261 §10.3 step 8), formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode()
        return self.line


class SipApp:
    def __init__(self, worker: Any, counts: list[int]) -> None:
        self.worker = worker
        self.counts = counts
        self.table = worker.mem.contacts.buf
        self.words = worker.mem.control.words
        self.ring = worker.rings["contacts"]
        self.me = worker.me
        self.proc = worker.slot
        self.work = np.zeros(C.WORK_BYTES, dtype=np.uint8)
        self.req = self.work[C.WORK_REQ:C.WORK_OUT]
        self.req_mv = memoryview(self.req)
        self.out = self.work[C.WORK_OUT:C.WORK_ROW]
        self.out_words = self.out[:C.OUT_TEXT].view(np.int64)
        self.to_tag = f"fc{worker.cfg['clusterer.node_id']:x}.{worker.pid:x}"
        self.date_line = DateLine()
        self._logged: set[str] = set()
        self.auth: Authenticator | None = getattr(worker, "authenticator", None)
        self._path: list[str] | None = None  # of the REGISTER being handled
        self._outbound = False  # its reg-id was honoured (RFC 5626)
        self._replay: Any = None  # its digest answer reused a nonce count (auth.Outcome)
        self.server: list[tuple[str, str]] = []
        self.proxy = Proxy(self)  # every other request, and every response
        self.fast = self.proxy.fast  # compiled relays, tried before parsing
        self.plain = PlainRegister(self)  # the plain REGISTER, tried before parsing
        self.apply_config(worker.cfg)

    def apply_config(self, cfg: Config) -> None:
        if self.auth is not None:
            self.auth.apply_config(cfg)
        self.domains: tuple[str, ...] = cfg["sip.domains"]
        self.min_expires = cfg["usrloc.min_expires"]
        self.max_expires = cfg["usrloc.max_expires"]
        self.default_expires = cfg["usrloc.default_expires"]
        self.max_contacts = cfg["usrloc.max_contacts"]
        self.server = [("Server", cfg["sip.server_header"])] if cfg["sip.server_header"] else []
        self.proxy.apply_reload(cfg)
        self.plain.apply_config(self)

    # ---------------------------------------------------------------- dispatch

    def handle(self, data: bytes, addr: tuple, listener: Any, compiled: bool = True) -> None:
        """Answer one datagram. Never raises: a bug triggered by some input is counted,
        logged once per cause, and the worker goes on with the next datagram.
        compiled=False: the compiled plain REGISTER already declined it (a batch)."""
        try:
            self._handle(data, addr, listener, compiled)
        except Exception as exc:  # noqa: BLE001 - the worker must survive any input
            self.counts[I_DROP] += 1
            cause = f"{type(exc).__name__}: {exc}"[:200]
            if cause not in self._logged:
                if len(self._logged) < 100:
                    self._logged.add(cause)
                log.exception("datagram from %s dropped (%s); further ones with this cause "
                              "are only counted (core:drop_requests)", addr[0], cause)

    def _handle(self, data: bytes, addr: tuple, listener: Any, compiled: bool) -> None:
        counts = self.counts
        head = data[:4]
        if head == b"REGI" and self.plain.handle(data, addr, listener, compiled):
            return
        if head == b"SIP/" and data[4:8] == b"2.0 " and self.fast.reply(data, addr, listener):
            counts[I_RCV_RPL] += 1  # a plain reply relayed by the compiled path
            return
        if (head == b"ACK " or head == b"BYE ") and self.fast.request(data, addr, listener):
            counts[I_RCV_REQ] += 1  # an in-dialog ACK/BYE relayed by the compiled path
            return
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            counts[I_BAD] += 1
            if data[:4] == b"SIP/":
                counts[I_ERR_RPL] += 1  # a malformed reply: dropped
            req = exc.request
            if exc.status and req is not None and req.is_request and req.method != "ACK":
                self.reply(req, exc.status, exc.reason, addr, listener)
            return
        if not msg.is_request:
            counts[I_RCV_RPL] += 1
            ping = parse_callid(msg.call_id)
            if ping is not None and msg.cseq_method == "OPTIONS":
                counts[I_PING_RPL] += 1
                P.mark_reply(self.table, ping[0], np.uint64(ping[1]), int(time.time()))
                return
            self.proxy.handle_reply(msg, data, addr, listener)
            return
        counts[I_RCV_REQ] += 1
        method = msg.method
        # RFC 3261 §8.2, as a UAS: Via first (every answer is routed by it), Request-URI,
        # Require; what is proxied passes §16.3's checks instead (services.sip.proxy)
        # (an OPTIONS for this node, or one that may go no further: §16.3 step 2)
        mine = method == "REGISTER" or method == "OPTIONS" and (
            not RT.has_user(msg.ruri) or msg.max_forwards == 0)
        refusal = checks.check_via(msg) or checks.check_request_uri(msg.ruri) or \
            checks.check_require(msg) if mine else None
        if refusal is not None:
            counts[INDEX[refusal.counter]] += 1
            if method == "REGISTER":
                counts[I_REJECT] += 1
            if method != "ACK":  # an ACK is never answered
                self.reply(msg, refusal.status, refusal.reason, addr, listener,
                           list(refusal.headers))
        elif method == "REGISTER":
            counts[I_RCV_REGISTER] += 1
            self.register(msg, addr, listener)
        elif mine:  # OPTIONS: this node answers for itself (RFC 3261 §11.2)
            counts[I_RCV_OPTIONS] += 1
            self.reply(msg, 200, "OK", addr, listener,
                       [("Allow", ALLOW), ("Accept", "application/sdp"),
                        ("Supported", checks.SUPPORTED_HEADER)])
        else:
            self.proxy.handle_request(msg, data, addr, listener)

    def reply(self, msg: SipMessage, status: int, reason: str, addr: tuple, listener: Any,
              headers: list[tuple[str, str]] | None = None, raw: bytes = b"") -> None:
        extra = self.server + (headers or [])
        data = build_response(msg, status, reason, extra, to_tag=self.to_tag,
                              received=addr[:2], raw_headers=raw)
        listener.sock.sendto(data, addr)
        counts = self.counts
        counts[I_SENT] += 1
        counts[I_CLASS[status // 100]] += 1

    # ---------------------------------------------------------------- REGISTER

    def register(self, msg: SipMessage, addr: tuple, listener: Any) -> None:
        try:
            status = self._register(msg, addr, listener)
        except Refuse as refuse:
            self.counts[I_REJECT] += 1
            if refuse.counter >= 0:
                self.counts[refuse.counter] += 1
            self.reply(msg, refuse.status, refuse.reason, addr, listener, refuse.headers)
            return
        except SipParseError as exc:
            self.counts[I_REJECT] += 1
            self.counts[I_BAD] += 1
            self.reply(msg, exc.status or 400, exc.reason, addr, listener)
            return
        except StoreError as exc:
            self.counts[I_REJECT] += 1
            self.log_once(f"subscriber database: {exc}")
            self.reply(msg, 500, "Credentials unavailable", addr, listener)
            return
        if self._replay is not None:
            replay, self._replay = self._replay, None
            if status == C.REG_E_NOT_RETRANS:  # a replay: it changed nothing
                self.counts[I_REPLAYED] += 1
                self.counts[I_REJECT] += 1
                self.reply(msg, replay.status, replay.reason, addr, listener, replay.headers)
                return
            self.counts[I_RETRANS] += 1
        if status != C.REG_OK:
            code, reason, counter = KERNEL_ERRORS.get(status, (500, f"Server error {status}", -1))
            self.counts[I_REJECT] += 1
            if counter >= 0:
                self.counts[counter] += 1
            self.reply(msg, code, reason, addr, listener)
            return
        self.counts[I_ACCEPT] += 1
        out = self.out
        text_len = int(self.out_words[2])
        headers = None
        if self._path is not None or self._outbound:
            supported = [v.lower() for v in msg.get_all("supported")]
            headers = []
            if self._path is not None and "path" in supported:
                headers.append(("Path", ", ".join(self._path)))  # RFC 3327 §5.3
            if self._outbound and "outbound" in supported:
                headers.append(("Supported", "outbound"))  # RFC 5626 §6
        self.reply(msg, 200, "OK", addr, listener, headers,
                   self.date_line() + out[C.OUT_TEXT:C.OUT_TEXT + text_len].tobytes())

    def _register(self, msg: SipMessage, addr: tuple, listener: Any) -> int:
        """Refuse (raise Refuse / SipParseError) or apply the REGISTER; the kernel's
        status. RFC 3261 §10.3 steps 1-5 here, 6-8 in the kernel."""
        self._replay = None
        if self.domains:
            refusal = checks.check_request_domain(msg.ruri, self.domains)
            if refusal is not None:
                raise refuse(refusal)
        try:
            aor_text = aor_of(msg.to)
        except SipParseError as exc:
            raise Refuse(exc.status, exc.reason, counter=I_BAD_AOR) from None
        if self.domains:
            refusal = checks.check_aor_domain(aor_text, self.domains)
            if refusal is not None:
                raise refuse(refusal)
        if self.auth is not None:
            outcome = self.auth.check(msg, aor_text)
            if outcome.verdict is Verdict.REPLAYED:
                self._replay = outcome  # unless the kernel finds a retransmission
            elif outcome.status:
                raise Refuse(outcome.status, outcome.reason, outcome.headers)
        aor = aor_text.encode()
        contacts = parse_contacts(msg)
        path = msg.get_all("path") if msg.get("path") is not None else None
        self._path = path
        self._outbound = False
        header_expires = msg.expires
        src_ip, src_port = addr[0], addr[1]
        now = time.time()
        now_s = int(now)
        packed: list[tuple[bytes, bytes, int, int, int, int, int]] = []
        wildcard = contacts is None
        if contacts and len(contacts) > C.MAX_REQ_CONTACTS:
            raise Refuse(403, "Too many registered contacts")
        nat_any = 0
        if wildcard:
            if header_expires != 0:
                raise Refuse(400, "Invalid wildcard: Expires must be 0")
            if not self.contacts_synced():
                # Removing every binding needs to know them all: until the sync is done,
                # a binding only the cluster knows would survive (and come back).
                raise Refuse(503, "Contacts not synced yet", [("Retry-After", "1")],
                             counter=I_NOT_SYNCED)
        elif contacts:
            too_brief = False
            for c in contacts:
                params = c.params
                text = params.get("expires")
                if text is not None:
                    try:
                        expires = int(text)
                    except ValueError:
                        raise Refuse(400, "Invalid expires parameter") from None
                    if expires < 0:
                        raise Refuse(400, "Invalid expires parameter")
                else:
                    expires = header_expires if header_expires >= 0 else self.default_expires
                if expires:
                    if expires < self.min_expires:
                        too_brief = True
                    elif expires > self.max_expires:
                        expires = self.max_expires
                q = _q_per_mille(params.get("q"))
                instance = params.get("+sip.instance") or ""
                reg_text = params.get("reg-id")
                try:
                    reg_id = int(reg_text) if reg_text else 0
                except ValueError:
                    raise Refuse(400, "Invalid reg-id parameter") from None
                if reg_id < 0 or reg_id > 0xFFFFFFFF:
                    raise Refuse(400, "Invalid reg-id parameter")
                if reg_id and instance:
                    if not checks.outbound_honoured(msg, path or []):
                        raise Refuse(439, "First Hop Lacks Outbound Support",
                                     counter=I_439)
                    self._outbound = True
                mtext = params.get("methods")
                cmethods = methods_mask(mtext) if mtext else -1
                uri, host, port = contact_parts(c.uri)
                flags = 0
                if host != src_ip or (port or 5060) != src_port:
                    flags = C.FLAG_NAT
                    nat_any = 1
                packed.append((uri.encode(), instance.encode(), expires, q, reg_id, cmethods,
                               flags))
            if too_brief:
                raise Refuse(423, "Interval Too Brief",
                             [("Min-Expires", str(self.min_expires))])
        family, raw = address_bytes(src_ip) if nat_any else (0, bytes(16))
        allow = msg.get("allow")
        ua = msg.get("user-agent") or ""
        n = C.pack_register(  # positional: this is the hot path (see pack_register)
            self.req, self.req_mv, aor, msg.call_id.encode(), msg.cseq_num, ua.encode(),
            ", ".join(path).encode() if path else b"", now_s, int(now * 1000),
            self.max_contacts, wildcard, family, src_port if nat_any else 0, raw,
            listener.index, 0, methods_mask(allow) if allow else 0, packed,
            C.MODE_RETRANS_ONLY if self._replay is not None else 0)
        if n < 0:
            raise Refuse(500, "Contact too long for usrloc.record_bytes", counter=I_TOO_LONG)
        status = retry_busy(self.kernel, self.lock_wait)
        tries = 1
        while status == C.REG_E_NOT_RETRANS and tries < RETRANS_TRIES:
            # Two copies of one request may run in two workers at once: the first took
            # the nonce count and is about to commit; let it, then look again.
            os.sched_yield()
            status = retry_busy(self.kernel, self.lock_wait)
            tries += 1
        return status

    def log_once(self, cause: str) -> None:
        if cause not in self._logged and len(self._logged) < 100:
            self._logged.add(cause)
            log.error("%s (further ones are only counted)", cause)

    def contacts_synced(self) -> bool:
        return bool(int(self.words[CT.W_SYNCED]) & CONTACTS_BIT)

    def kernel(self) -> int:
        return C.ul_register(self.table, self.ring, self.work, self.me, self.proc)

    def lock_wait(self) -> None:
        self.counts[I_WAITS] += 1


def _q_per_mille(text: str | None) -> int:
    if text is None:
        return -1
    try:
        q = float(text)
    except ValueError:
        raise Refuse(400, "Invalid q value") from None
    if not 0.0 <= q <= 1.0:
        raise Refuse(400, "Invalid q value")
    return int(round(q * 1000))

