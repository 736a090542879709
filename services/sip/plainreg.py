"""The plain REGISTER, answered without the general parser: the form sipp and most
phones send (one UDP Via, a `<sip:user@host>` To without tag, one plain Contact, no
body, no authentication, Path, Require or reg-id) recognised by a few regex matches
and packed straight for the registrar kernel, the 200 OK written from one template.

bench/sip_profile.py showed the SIP worker spending ~55-70 us of CPU per REGISTER under
load, two thirds of it in Python around the kernel (parse_message, parse_contacts,
the checks, build_response: ~38 us in one process); this path does the same work for
the plain form in about half of that, and its compiled way (shm.plainreg: the same
form from an IPv4 source, recognised, applied and answered in one numba call, ~8 us),
tried first, in a fifth. Anything it does not recognise, and any outcome other than
the kernel's REG_OK or an error answer, goes the general way (services.sip.registrar),
which both ways must match byte for byte: the reply, the counters and the table
(tests/unit/test_plainreg.py checks them on generated requests).
Neighbours: services.sip.registrar (SipApp: its buffers, kernel call and counters),
core.sip (stamp_top_via), shm.contacts (pack_register), shm.plainreg.
"""
from __future__ import annotations

import os
import re
import socket
import time
from typing import Any

import numpy as np

from fastcluster.core.sip import parse_message, stamp_top_via
from fastcluster.shm import contacts as C
from fastcluster.shm import mmsg as M
from fastcluster.shm import plainreg as K

# Start line: a Request-URI without user part or parameters (checks.request_uri_host's
# plain form), then header lines "Name: value" with no spaces at the edges of a value,
# printable ASCII only, and the blank line that ends the head (no body).
_START = re.compile(r"REGISTER sip:[A-Za-z0-9.\-]+(?::([0-9]{1,5}))? SIP/2\.0\r\n")
_HEADERS = re.compile(r"(?:[A-Za-z\-]+: [!-~](?:[ -~]*[!-~])?\r\n)+\r\n")
# The top Via that checks.check_via passes at once: UDP, a host or IPv4, branch, rport.
_VIA = re.compile(r"SIP/2\.0/UDP [A-Za-z0-9.\-]+(?::[0-9]{1,5})?"
                  r";branch=[A-Za-z0-9\-.!%*_+`'~]+(?:;rport)?")
# core.sip.aor_of's plain form, without any header parameter (so without a To tag).
_TO = re.compile(r"<sip:([A-Za-z0-9\-_.!~*'()&=+$,]+)@([A-Za-z0-9.\-]+)>")
_CONTACT = re.compile(r"<sip:([A-Za-z0-9\-_.!~*'()&=+$,]+)@([A-Za-z0-9.\-]+)"
                      r"(?::([0-9]{1,5}))?>(?:;expires=([0-9]{1,9}))?")
_CSEQ = re.compile(r"([0-9]{1,9}) REGISTER")
_NUMBER = re.compile(r"[0-9]{1,9}")
# Headers this path understands (exact spelling); any other one sends the request the
# general way. Each maps to its slot in `values`.
_NAMES = {"Via": 0, "From": 1, "To": 2, "Call-ID": 3, "CSeq": 4, "Contact": 5,
          "Expires": 6, "User-Agent": 7, "Allow": 8, "Max-Forwards": 9,
          "Content-Length": 10, "Supported": 11}
_REQUIRED = (0, 1, 2, 3, 4, 5)


class PlainRegister:
    """One per SipApp; `handle` answers a plain REGISTER (True) or declines (False,
    having changed nothing)."""

    def __init__(self, app: Any) -> None:
        from fastcluster.services.sip import registrar  # it imports this module

        self.R = registrar
        self.app = app
        self.server_lines = ""
        self.enabled = True
        # the compiled way (shm.plainreg), tried first
        self.compiled = True
        self.words = np.zeros(K.W_WORDS, dtype=np.int64)
        self.tag = np.frombuffer(app.to_tag.encode(), dtype=np.uint8).copy()
        self.fixed = np.zeros(0, dtype=np.uint8)
        self.date: tuple[bytes, np.ndarray] = (b"", np.zeros(0, dtype=np.uint8))
        self.out = np.zeros(C.WORK_BYTES - C.WORK_OUT + 4096, dtype=np.uint8)
        self.out_mv = memoryview(self.out)  # type: ignore[arg-type]
        self._ips: dict[str, np.ndarray | None] = {}
        self.sent = np.zeros(3, dtype=np.int64)  # shm.mmsg.send_batch's words
        # the statistics row the kernel counts into (SipApp.counts: a memoryview of it)
        self.stats = np.frombuffer(app.counts, dtype=np.int64)
        R = registrar
        self.counters = np.zeros(K.C_COUNTERS, dtype=np.int64)
        self.counters[[K.C_RCV_REQ, K.C_RCV_REGISTER, K.C_ACCEPT, K.C_SENT, K.C_2XX,
                       K.C_DROP]] = (R.I_RCV_REQ, R.I_RCV_REGISTER, R.I_ACCEPT, R.I_SENT,
                                     R.I_CLASS[2], R.I_DROP)

    def apply_config(self, app: Any) -> None:
        """After SipApp.apply_config: the general way owns anything the settings make
        special (served domains, authentication, a Server header that needs escaping)."""
        lines = "".join(f"{n}: {v}\r\n" for n, v in app.server)
        self.server_lines = lines
        self.enabled = app.auth is None and not app.domains and \
            lines.count("\r") == lines.count("\n") == len(app.server)
        self.fixed = np.frombuffer(lines.encode(), dtype=np.uint8).copy()
        w = self.words
        w[K.W_MIN_EXPIRES], w[K.W_MAX_EXPIRES] = app.min_expires, app.max_expires
        w[K.W_DEFAULT_EXPIRES], w[K.W_MAX_CONTACTS] = app.default_expires, app.max_contacts
        w[K.W_TAG_LEN] = len(self.tag)

    def _compiled(self, data: bytes, addr: tuple, listener: Any) -> bool:
        """The compiled way: True when it answered (200 OK)."""
        ip = self._ips.get(addr[0], False)
        if ip is False:  # dotted IPv4 text, once per source; None: not IPv4
            ip = None
            try:
                socket.inet_aton(addr[0])
                if addr[0].count(".") == 3:
                    ip = np.frombuffer(addr[0].encode(), dtype=np.uint8).copy()
            except OSError:
                pass
            if len(self._ips) > 65536:
                self._ips.clear()
            self._ips[addr[0]] = ip
        if ip is None:
            return False
        app = self.app
        w = self._clock(listener)
        w[K.W_N], w[K.W_SRC_PORT], w[K.W_SRC_IP_LEN] = len(data), addr[1], len(ip)
        n = K.plain_register(app.table, app.ring, app.work, app.me, app.proc,
                             np.frombuffer(data, dtype=np.uint8), ip, w, self.tag,
                             self.fixed, self.date[1], self.out)
        if n <= 0:
            return False  # nothing changed: the Python way decides
        self._count(1)
        listener.sock.sendto(self.out_mv[:n], addr)
        self._sent(1)
        return True

    def _clock(self, listener: Any) -> np.ndarray:
        """The kernel's words for a request now, on `listener`; the Date line too."""
        line = self.app.date_line()
        w = self.words
        if line is not self.date[0]:
            self.date = (line, np.frombuffer(line, dtype=np.uint8).copy())
            w[K.W_DATE_S] = self.app.date_line.second
        now = time.time()
        w[K.W_SOCK], w[K.W_NOW_S], w[K.W_NOW_MS] = listener.index, int(now), int(now * 1000)
        return w

    def _count(self, n: int) -> None:
        counts = self.app.counts
        R = self.R
        counts[R.I_RCV_REQ] += n
        counts[R.I_RCV_REGISTER] += n
        counts[R.I_ACCEPT] += n

    def _sent(self, n: int) -> None:
        counts = self.app.counts
        counts[self.R.I_SENT] += n
        counts[self.R.I_CLASS[2]] += n

    def receive(self, batch: M.Batch, listener: Any, flags: int, until_ns: int,
                batches: int, epfd: int = -1) -> tuple[int, int, int]:
        """Receive on `listener` into `batch` (shm.mmsg flags; with an epoll fd, a socket
        the workers share: shm.mmsg.wait_batch, flags unused) and answer the plain
        REGISTERs, batch after batch in one kernel call (shm.plainreg.serve: until a
        batch holds a datagram for the Python way, nothing more comes, `batches` were
        taken or CLOCK_MONOTONIC passes until_ns). Returns (the last receive's datagrams
        or -errno, how many of them were answered, the datagrams received in all);
        batch.status[i] is 0 for each one of the last batch the Python way must handle.
        With the compiled way off, one batch is received and all of it goes to Python."""
        fd = listener.sock.fileno()
        if not (self.enabled and self.compiled):
            if epfd >= 0:
                n = M.wait_batch(epfd, fd, batch.rx, batch.events, until_ns, self.words[
                    K.W_TS:K.W_TS + 2])
            else:
                n = M.recv_batch(fd, batch.rx, batch.size, flags)
            if n > 0:
                batch.status[:n] = 0
            return n, 0, max(n, 0)
        app = self.app
        w = self.words
        n = K.serve(fd, flags, epfd, batch.events, listener.index, until_ns, batches,
                    app.table, app.ring, app.work, app.me, app.proc, batch.rx, batch.names,
                    batch.bufs, w, self.tag, self.fixed, self.date[1], batch.tx,
                    batch.tx_iov, batch.outs, batch.status, self.sent, self.stats,
                    self.counters)
        if w[K.W_REFUSED]:  # as a sendto that raised: counted as dropped, logged once
            app.log_once(f"answers not sent: {os.strerror(int(w[K.W_REFUSED]))}")
        if n <= 0:
            return n, 0, int(w[K.W_TOTAL])
        k = int(w[K.W_ANSWERED])
        if k == K.STALE_DATE:  # a new second: its Date line, then the same way
            k = self.answer_batch(batch, n, listener)
        return n, k, int(w[K.W_TOTAL])

    def answer_batch(self, batch: M.Batch, count: int, listener: Any) -> int:
        """The compiled way over a received batch (shm.mmsg.Batch): the plain REGISTERs
        among its `count` datagrams answered and sent; batch.status[i] is 0 for each one
        the Python way must handle. Returns how many were answered."""
        if not (self.enabled and self.compiled):
            batch.status[:count] = 0
            return 0
        app = self.app
        w = self._clock(listener)
        k = K.answer_batch(app.table, app.ring, app.work, app.me, app.proc,
                           listener.sock.fileno(), count, batch.rx, batch.names, batch.bufs,
                           w, self.tag, self.fixed, self.date[1], batch.tx, batch.tx_iov,
                           batch.outs, batch.status, self.sent)
        if k:
            self._answered(k)
        return k

    def _answered(self, k: int) -> None:
        """Counters after the compiled way answered k requests of a batch."""
        sent = self.sent
        self._count(k)
        self._sent(int(sent[0]))
        if sent[1]:  # as a sendto that raised: counted as dropped, logged once
            self.app.counts[self.R.I_DROP] += int(sent[1])
            self.app.log_once(f"answers not sent: {os.strerror(int(sent[2]))}")

    def handle(self, data: bytes, addr: tuple, listener: Any, compiled: bool = True) -> bool:
        """compiled=False: the compiled way already declined it (answer_batch)."""
        if not self.enabled:
            return False
        if compiled and self.compiled and self._compiled(data, addr, listener):
            return True
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            return False
        m = _START.match(text)
        if m is None or m.group(1) is not None and int(m.group(1)) > 65535:
            return False
        start = m.end()
        if _HEADERS.fullmatch(text, start) is None:
            return False
        values: list[str | None] = [None] * 12
        names = _NAMES
        for line in text[start:-4].split("\r\n"):
            name, _, value = line.partition(": ")
            slot = names.get(name)
            if slot is None or values[slot] is not None:
                return False
            values[slot] = value
        for slot in _REQUIRED:
            if values[slot] is None:
                return False
        via, from_, to, call_id, cseq, contact, expires_text, ua, allow, max_fwd, \
            length, _ = values
        to_m = _TO.fullmatch(to)  # type: ignore[arg-type]
        c_m = _CONTACT.fullmatch(contact)  # type: ignore[arg-type]
        cseq_m = _CSEQ.fullmatch(cseq)  # type: ignore[arg-type]
        if to_m is None or c_m is None or cseq_m is None or \
                _VIA.fullmatch(via) is None:  # type: ignore[arg-type]
            return False
        if length is not None and length != "0" or \
                max_fwd is not None and _NUMBER.fullmatch(max_fwd) is None:
            return False
        app = self.app
        if expires_text is not None:
            if _NUMBER.fullmatch(expires_text) is None:
                return False
            header_expires = int(expires_text)
        else:
            header_expires = -1
        c_user, c_host, c_port, c_expires = c_m.groups()
        if c_expires is not None:
            expires = int(c_expires)
        else:
            expires = header_expires if header_expires >= 0 else app.default_expires
        if expires:
            if expires < app.min_expires:
                return False  # 423, the general way
            if expires > app.max_expires:
                expires = app.max_expires
        port = 0
        if c_port is not None:
            port = int(c_port)
            if not 0 < port < 65536:
                return False
        return self._register(data, addr, listener, via, from_, to,  # type: ignore[arg-type]
                              call_id, cseq, to_m, c_user, c_host, c_port, port,  # type: ignore[arg-type]
                              expires, ua, allow)

    def _register(self, data: bytes, addr: tuple, listener: Any, via: str, from_: str,
                  to: str, call_id: str, cseq: str, to_m: re.Match, c_user: str,
                  c_host: str, c_port: str | None, port: int, expires: int,
                  ua: str | None, allow: str | None) -> bool:
        R = self.R
        app = self.app
        host = c_host.lower()
        uri = f"sip:{c_user}@{host}:{c_port}" if c_port is not None else \
            f"sip:{c_user}@{host}"
        src_ip, src_port = addr[0], addr[1]
        nat = host != src_ip or (port or 5060) != src_port
        family, raw = R.address_bytes(src_ip) if nat else (0, bytes(16))
        now = time.time()
        n = C.pack_register(  # positional, as SipApp._register (the hot path)
            app.req, app.req_mv, f"{to_m.group(1)}@{to_m.group(2).lower()}".encode(),
            call_id.encode(), int(cseq[:cseq.find(" ")]), ua.encode() if ua else b"", b"",
            int(now), int(now * 1000), app.max_contacts, False, family,
            src_port if nat else 0, raw, listener.index, 0,
            R.methods_mask(allow) if allow else 0,
            [(uri.encode(), b"", expires, -1, 0, -1, C.FLAG_NAT if nat else 0)], 0)
        if n < 0:
            return False  # nothing written: the general way answers 500
        counts = app.counts
        counts[R.I_RCV_REQ] += 1
        counts[R.I_RCV_REGISTER] += 1
        status = R.retry_busy(app.kernel, app.lock_wait)
        if status != C.REG_OK:  # rare: answered as SipApp.register does
            code, reason, counter = R.KERNEL_ERRORS.get(status,
                                                         (500, f"Server error {status}", -1))
            counts[R.I_REJECT] += 1
            if counter >= 0:
                counts[counter] += 1
            app.reply(parse_message(data), code, reason, addr, listener)
            return True
        counts[R.I_ACCEPT] += 1
        text_len = int(app.out_words[2])
        head = (f"SIP/2.0 200 OK\r\nVia: {stamp_top_via(via, addr[:2])}\r\nFrom: {from_}"
                f"\r\nTo: {to};tag={app.to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n"
                f"{self.server_lines}")
        listener.sock.sendto(b"".join((
            head.encode(), app.date_line(),
            app.out[C.OUT_TEXT:C.OUT_TEXT + text_len].tobytes(),
            b"Content-Length: 0\r\n\r\n")), addr)
        counts[R.I_SENT] += 1
        counts[R.I_CLASS[2]] += 1
        return True
