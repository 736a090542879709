"""A REGISTER load that remembers what every client was told, for fault tests.

A population of bindings (user, contact), each with its own Call-ID and CSeq, is kept
busy with registrations and removals sent over UDP to the nodes a test allows, at most
one transaction per binding at a time, retransmitted as RFC 3261 says (T1 = 0.5 s, up to
TIMEOUT_S). For each binding the generator records the last operation a node answered
200: that is what the client was told and what every node must hold in the end. A
binding whose latest operation got no answer is *uncertain* (the request may or may not
have been applied) until a later operation is answered; `verify` reports those apart.

    gen = Loadgen(targets=[("10.200.1.11", 5060)], users=300)
    gen.start(rate=400); ...; gen.stop()
    report = gen.verify({node_id: live_bindings_of_that_node, ...})
"""
from __future__ import annotations

import random
import select
import socket
import threading
import time
from dataclasses import dataclass, field

T1_S = 0.5
TIMEOUT_S = 4.0
EXPIRES = 3600


@dataclass
class Binding:
    user: str
    contact: str
    callid: str
    cseq: int = 0
    told: str | None = None  # "registered" / "removed": the last answer 200
    uncertain: bool = False  # the latest operation was never answered
    busy: bool = False


@dataclass
class Pending:
    binding: Binding
    op: str
    data: bytes
    target: tuple[str, int]
    first: float
    next_try: float
    tries: int = 1


@dataclass
class Report:
    bindings: int
    registered: int  # told registered (certain)
    removed: int  # told removed (certain)
    uncertain: int
    lost: dict[int, int] = field(default_factory=dict)  # node -> registered but missing
    resurrected: dict[int, int] = field(default_factory=dict)  # node -> removed but there
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.lost.values()) and not any(self.resurrected.values())

    def line(self) -> str:
        return (f"{self.bindings} bindings: told registered {self.registered}, removed "
                f"{self.removed}, uncertain {self.uncertain}; lost {self.lost}, "
                f"resurrected {self.resurrected}")


class Loadgen:
    def __init__(self, targets: list[tuple[str, int]], users: int = 300, contacts: int = 2,
                 domain: str = "example.com", bind: tuple[str, int] = ("0.0.0.0", 0),
                 seed: int = 1) -> None:
        self.targets = list(targets)
        self.domain = domain
        self.rng = random.Random(seed)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(bind)
        self.sock.setblocking(False)
        self.bindings = [Binding(f"u{u}", f"sip:u{u}-{c}@192.0.2.{1 + c}:{5070 + c}",
                                 f"fault-{seed}-{u}-{c}")
                         for u in range(users) for c in range(contacts)]
        self.pending: dict[tuple[str, int], Pending] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.rate = 0.0
        self.sent = self.answered = self.refused = self.timeouts = 0
        self.branch = 0

    # ---------------------------------------------------------------- control

    def set_targets(self, targets: list[tuple[str, int]]) -> None:
        with self.lock:
            self.targets = list(targets)

    def start(self, rate: float) -> None:
        self.rate = rate
        self.thread = threading.Thread(target=self._run, name="loadgen", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop sending; wait until every transaction ended (answer or timeout)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(TIMEOUT_S + 5)
        self.sock.close()

    # ---------------------------------------------------------------- the loop

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_op = time.monotonic()
        while not (self.stopping.is_set() and not self.pending):
            now = time.monotonic()
            if not self.stopping.is_set() and now >= next_op:
                self._new_op(now)
                next_op = max(next_op + interval, now - 1.0)
            self._retransmit(now)
            wait = max(0.0, min(next_op - now, 0.01))
            ready, _, _ = select.select([self.sock], [], [], wait)
            if ready:
                self._receive()

    def _new_op(self, now: float) -> None:
        with self.lock:
            targets = list(self.targets)
        if not targets:
            return
        for _ in range(20):
            b = self.rng.choice(self.bindings)
            if not b.busy:
                break
        else:
            return
        op = "remove" if b.told == "registered" and self.rng.random() < 0.4 else "register"
        b.cseq += 1
        b.busy = True
        target = self.rng.choice(targets)
        data = self._request(b, op)
        self.pending[(b.callid, b.cseq)] = Pending(b, op, data, target, now, now + T1_S)
        self._send(data, target)

    def _request(self, b: Binding, op: str) -> bytes:
        self.branch += 1
        host, port = self.sock.getsockname()
        return (f"REGISTER sip:{self.domain} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKfault{self.branch};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{b.user}@{self.domain}>;tag=f{self.branch}\r\n"
                f"To: <sip:{b.user}@{self.domain}>\r\n"
                f"Call-ID: {b.callid}\r\nCSeq: {b.cseq} REGISTER\r\n"
                f"Contact: <{b.contact}>\r\n"
                f"Expires: {0 if op == 'remove' else EXPIRES}\r\n"
                f"Content-Length: 0\r\n\r\n").encode()

    def _send(self, data: bytes, target: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, target)
            self.sent += 1
        except OSError:
            pass  # an unreachable node: the retransmissions and the timeout decide

    def _retransmit(self, now: float) -> None:
        for key, p in list(self.pending.items()):
            if now - p.first >= TIMEOUT_S:
                del self.pending[key]
                p.binding.busy = False
                p.binding.uncertain = True
                self.timeouts += 1
            elif now >= p.next_try:
                p.tries += 1
                p.next_try = now + min(T1_S * 2 ** (p.tries - 1), 2.0)
                self._send(p.data, p.target)

    def _receive(self) -> None:
        while True:
            try:
                data, _ = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            status, callid, cseq = _parse_reply(data)
            if status < 200:
                continue
            p = self.pending.pop((callid, cseq), None)
            if p is None:
                continue  # an answer to a retransmission already answered
            b = p.binding
            b.busy = False
            if status == 200:
                self.answered += 1
                b.told = "registered" if p.op == "register" else "removed"
                b.uncertain = False
            else:
                self.refused += 1  # refused: nothing changed for this binding

    # ---------------------------------------------------------------- the check

    def verify(self, live: dict[int, set[tuple[str, str]]]) -> Report:
        """Compare what clients were told with each node's live bindings:
        node -> {(aor, contact uri)}."""
        certain = [b for b in self.bindings if b.told and not b.uncertain]
        report = Report(len(self.bindings), sum(b.told == "registered" for b in certain),
                        sum(b.told == "removed" for b in certain),
                        sum(b.uncertain for b in self.bindings))
        for node, held in live.items():
            lost = [b for b in certain if b.told == "registered" and
                    (f"{b.user}@{self.domain}", b.contact) not in held]
            back = [b for b in certain if b.told == "removed" and
                    (f"{b.user}@{self.domain}", b.contact) in held]
            report.lost[node] = len(lost)
            report.resurrected[node] = len(back)
            report.examples += [f"node {node} lost {b.contact} (CSeq {b.cseq})"
                                for b in lost[:3]]
            report.examples += [f"node {node} resurrected {b.contact} (CSeq {b.cseq})"
                                for b in back[:3]]
        return report


def _parse_reply(data: bytes) -> tuple[int, str, int]:
    try:
        text = data.decode("utf-8", "replace")
        head, _, _ = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        callid, cseq = "", -1
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name in ("call-id", "i"):
                callid = value.strip()
            elif name == "cseq":
                cseq = int(value.split()[0])
        return status, callid, cseq
    except (ValueError, IndexError):
        return 0, "", -1


def live_bindings(dump: dict) -> set[tuple[str, str]]:
    """(aor, contact uri) of every contact in a ul_dump result."""
    out = set()
    for aor in dump["Domains"][0]["AORs"]:
        for c in aor.get("Contacts", []):
            out.add((aor["AOR"], c["Contact"]))
    return out
