"""A scripted SIP callee in a thread, for what sipp cannot check: where every packet came
from (a NAT that only lets in its binding's peer), and exactly which messages arrived
(a 486 answered twice must be ACKed twice; sipp takes the second, identical ACK for a
retransmission and replies to it again).

`PyUas(mode)`: "answer" (180, 200, then ACK and BYE -> 200), "answer_twice" (the same
with its 200 sent twice) or "busy_twice" (486, and the same 486 again after the ACK);
OPTIONS -> 200 in every mode. Every datagram is recorded with its source; the
`allowed` set, when given, is the only source it accepts (the others are recorded and
dropped, as a NAT would). Registration goes through `register(node_addr, aor, contact)`.
"""
from __future__ import annotations

import socket
import threading
import time

from fastcluster.core.sip import SipMessage, parse_message


def response(msg: SipMessage, status: int, reason: str, tag: str, contact: str,
             cseq: str | None = None) -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in msg.vias]
    lines += [f"Record-Route: {v}" for v in msg.get_all("record-route")]
    to = msg.to if "tag=" in msg.to else f"{msg.to};tag={tag}"
    lines += [f"From: {msg.from_}", f"To: {to}", f"Call-ID: {msg.call_id}",
              f"CSeq: {cseq or f'{msg.cseq_num} {msg.cseq_method}'}",
              f"Contact: <{contact}>", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


class PyUas:
    def __init__(self, mode: str = "answer", allowed: set[tuple[str, int]] | None = None
                 ) -> None:
        self.mode = mode
        self.allowed = allowed
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.addr = self.sock.getsockname()
        self.contact = f"sip:bob@{self.addr[0]}:{self.addr[1]}"
        self.received: list[tuple[str, tuple[str, int]]] = []  # (method or status, src)
        self.refused: list[tuple[str, int]] = []
        self.completed = 0
        self.errors: list[str] = []
        self._acks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def register(self, node: tuple[str, int], aor: str, contact: str | None = None,
                 callid: str = "pyuas-reg") -> str:
        """REGISTER through `node` from this socket (before start())."""
        contact = contact or self.contact
        req = (f"REGISTER sip:{aor.split('@')[1]} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {self.addr[0]}:{self.addr[1]};branch=z9hG4bK-{callid}\r\n"
               f"From: <sip:{aor}>;tag=r\r\nTo: <sip:{aor}>\r\nCall-ID: {callid}\r\n"
               f"CSeq: 1 REGISTER\r\nContact: <{contact}>\r\nExpires: 600\r\n"
               f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        self.sock.sendto(req, node)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            return data.split(b"\r\n", 1)[0].decode()
        raise TimeoutError("no answer to REGISTER")

    def start(self) -> PyUas:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def count(self, what: str) -> int:
        return sum(1 for w, _ in self.received if w == what)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            try:
                msg = parse_message(data)
            except Exception as exc:  # noqa: BLE001 - a test tool records, never dies
                self.errors.append(f"unparsable from {src}: {exc}")
                continue
            what = msg.method if msg.is_request else str(msg.status)
            self.received.append((what, src))
            if self.allowed is not None and src not in self.allowed:
                self.refused.append(src)
                continue
            if not msg.is_request:
                continue
            tag = f"u{abs(hash(msg.call_id)) % 100000}"
            if msg.method == "INVITE":
                if self.mode in ("answer", "answer_twice"):
                    self.sock.sendto(response(msg, 180, "Ringing", tag, self.contact), src)
                    time.sleep(0.002)  # a callee rings before it answers
                    ok = response(msg, 200, "OK", tag, self.contact)
                    self.sock.sendto(ok, src)
                    if self.mode == "answer_twice":
                        self.sock.sendto(ok, src)
                else:
                    self.sock.sendto(response(msg, 486, "Busy Here", tag, self.contact), src)
            elif msg.method == "ACK" and self.mode == "busy_twice":
                acks = self._acks[msg.call_id] = self._acks.get(msg.call_id, 0) + 1
                if acks == 1:  # the first ACK of a call: the 486 "got lost", again
                    self.sock.sendto(response(msg, 486, "Busy Here", tag, self.contact,
                                              cseq=f"{msg.cseq_num} INVITE"), src)
                else:
                    self.completed += 1
            elif msg.method == "OPTIONS":  # a NAT ping (or a keep-alive check)
                self.sock.sendto(response(msg, 200, "OK", tag, self.contact), src)
            elif msg.method == "BYE":
                self.sock.sendto(response(msg, 200, "OK", tag, self.contact), src)
                self.completed += 1


class PyUac:
    """A scripted caller: one call at a time, its INVITE sent `copies` times byte for
    byte (a retransmission), then ACK and BYE along the Record-Route set."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.addr = self.sock.getsockname()
        self.received: list[str] = []

    def close(self) -> None:
        self.sock.close()

    def _request(self, method: str, ruri: str, n: int, cseq: int, to: str,
                 routes: list[str], branch: str) -> bytes:
        route = "".join(f"Route: {r}\r\n" for r in routes)
        body = "v=0\r\n" if method == "INVITE" else ""
        return (f"{method} {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.addr[0]}:{self.addr[1]};branch={branch}\r\n"
                f"{route}From: <sip:alice@example.com>;tag=pa{n}\r\nTo: {to}\r\n"
                f"Call-ID: pyuac-{n}-{self.addr[1]}\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:alice@{self.addr[0]}:{self.addr[1]}>\r\nMax-Forwards: 70\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def _wait(self, status: int, method: str) -> SipMessage:
        while True:
            data, _ = self.sock.recvfrom(65535)
            msg = parse_message(data)
            self.received.append(f"{msg.status} {msg.cseq_method}")
            if msg.status == status and msg.cseq_method == method:
                return msg

    def call(self, proxy: tuple[str, int], aor: str, n: int, copies: int = 2) -> float:
        """One call; returns the seconds from sending the INVITE to receiving its 200."""
        invite = self._request("INVITE", f"sip:{aor}", n, 1, f"<sip:{aor}>", [],
                               f"z9hG4bK-pyuac-{n}")
        started = time.perf_counter()
        for _ in range(copies):
            self.sock.sendto(invite, proxy)
        ok = self._wait(200, "INVITE")
        setup = time.perf_counter() - started
        routes = list(reversed(ok.get_all("record-route")))
        target = ok.get("contact").strip("<>")
        self.sock.sendto(self._request("ACK", target, n, 1, ok.to, routes,
                                       f"z9hG4bK-pyack-{n}"), proxy)
        self.sock.sendto(self._request("BYE", target, n, 2, ok.to, routes,
                                       f"z9hG4bK-pybye-{n}"), proxy)
        self._wait(200, "BYE")
        return setup
