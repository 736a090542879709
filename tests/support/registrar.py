"""An in-memory registrar for unit tests: SipApp, the code a worker runs, over a contact
table and ring in private memory, with a socket that records what would be sent. It
has a transaction table, timer rings and a control segment too, so the proxy of the
same SipApp runs on it (tests/unit/test_proxy.py); with dialogs=True, a dialog table,
profile counters and sharing tag states too, and the worker's DialogTracker plugged into
the proxy (dialog.track = all)."""
from __future__ import annotations

import types

import numpy as np

from fastcluster.core.config import load
from fastcluster.core.stats import COUNTERS, INDEX
from fastcluster.services.sip import subscribers
from fastcluster.services.sip.auth import Authenticator
from fastcluster.services.sip.registrar import SipApp
from fastcluster.services.sip.subscribers import CredentialCache
from fastcluster.shm import control as CT
from fastcluster.shm import nonces as N
from fastcluster.shm import profiles as PF
from fastcluster.shm import ring as R
from fastcluster.shm import shtags as SH
from fastcluster.shm import table as T
from fastcluster.shm import tmring as TR
from fastcluster.shm.contacts import CONTACT
from fastcluster.shm.dialogs import DIALOG
from fastcluster.shm.tables import TABLES, ContactTable, Table
from fastcluster.shm.transactions import TRANSACTION

SRC = ("192.0.2.10", 5070)
LISTEN = ("192.0.2.1", 5060)  # the worker's listener


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, addr: tuple) -> None:
        self.sent.append((bytes(data), addr))  # a copy, as the kernel takes (a buffer
        # the sender reuses must not change what was sent)


class Harness:
    """settings: other "section.key" values; with auth.enable, db_path names the
    subscriber database (tests.support.registrar.authorization answers) and the nonce replay
    table lives in private memory (nonce_slots)."""

    def __init__(self, capacity: int = 1000, record_bytes: int = 256,
                 settings: dict[str, str] | None = None, db_path: str = "",
                 nonce_key: bytes = b"k" * 32, tx_capacity: int = 1000,
                 dialogs: bool = False, **usrloc) -> None:
        cli = {f"usrloc.{k}": str(v) for k, v in usrloc.items()}
        cli.update(settings or {})
        if db_path:
            cli["auth.db_path"] = db_path
        cfg = load(cli=cli, environ={})
        buf = np.zeros(Table.size_for(CONTACT, capacity, record_bytes, 4), dtype=np.uint8)
        self.table = Table.create(buf, CONTACT, capacity, record_bytes, 4, node_id=1)
        assert isinstance(self.table, ContactTable)
        seg = np.zeros(R.segment_size(4, 1 << 20), dtype=np.uint8)
        R.init_segment(seg, 4, 1 << 20)
        self.ring = R.region(seg, 3)
        tx_buf = np.zeros(Table.size_for(TRANSACTION, tx_capacity, 2048, 4), dtype=np.uint8)
        self.transactions = Table.create(tx_buf, TRANSACTION, tx_capacity, 2048, 4, node_id=1)
        self.tmrings = np.zeros(TR.segment_size(4, 1024), dtype=np.uint8)
        TR.init_segment(self.tmrings, 4, 1024)
        self.control = CT.Control.init(np.zeros(CT.segment_size(4, len(TABLES)), np.uint8),
                                       4, 1, 1, len(TABLES))
        self.control.words[CT.W_SYNCED] = -1  # every table synced (a lone node)
        self.sock = FakeSocket()
        self.listener = types.SimpleNamespace(sock=self.sock, index=0, host=LISTEN[0],
                                              port=LISTEN[1])
        worker = types.SimpleNamespace(
            mem=types.SimpleNamespace(contacts=self.table, transactions=self.transactions,
                                      tmrings=self.tmrings, control=self.control),
            rings={"contacts": self.ring}, me=T.lock_word(1, 3), slot=3, cfg=cfg, pid=1,
            listeners=[self.listener])
        self.stats = np.zeros(len(COUNTERS), dtype=np.int64)  # as a worker's row
        self.counts = memoryview(self.stats)  # type: ignore[arg-type]
        self.credentials: CredentialCache | None = None
        if cfg["auth.enable"]:
            slots = cfg["auth.nonce_slots"]
            nbuf = np.zeros(N.segment_size(slots), dtype=np.uint8)
            N.init_segment(nbuf, slots, nonce_key)
            self.nonces = N.NonceTable(nbuf)
            subscribers.ensure(cfg.auth_db_path)
            self.credentials = CredentialCache(cfg.auth_db_path, cfg["auth.cache_entries"],
                                               self.counts)
            worker.authenticator = Authenticator(cfg, self.nonces.key, self.nonces,
                                                 self.credentials, self.counts)
        self.app = SipApp(worker, self.counts)
        self.tracker = None
        if dialogs:
            self.plug_dialogs(tx_capacity, cfg["dialog.record_bytes"],
                              cfg["dialog.profile_values"])

    def plug_dialogs(self, capacity: int, record_bytes: int, profile_values: int) -> None:
        """Dialog tracking on private tables: the dialog table (`dialogs`), its ring
        (the worker's region 3; `ring2`: region 2, the timer process's), profile
        counters and sharing tag states, and the worker's DialogTracker (`tracker`)
        plugged into the proxy."""
        from fastcluster.services.sip.dialogs import DialogTracker

        worker = self.app.worker
        buf = np.zeros(Table.size_for(DIALOG, capacity, record_bytes, 4), dtype=np.uint8)
        self.dialogs = Table.create(buf, DIALOG, capacity, record_bytes, 4, node_id=1)
        seg = np.zeros(R.segment_size(4, 1 << 16), dtype=np.uint8)
        R.init_segment(seg, 4, 1 << 16)
        self.ring2 = R.region(seg, 2)
        pseg = np.zeros(PF.segment_size(profile_values), dtype=np.uint8)
        PF.init_segment(pseg, profile_values)
        self.profiles = PF.ProfileCounters(pseg)
        tbuf = np.zeros(SH.segment_size(), dtype=np.uint8)
        SH.init_segment(tbuf)
        self.shtags = SH.ShtagStates(tbuf)
        worker.mem.dialogs, worker.mem.profiles = self.dialogs, self.profiles
        worker.mem.shtags = self.shtags
        worker.rings["dialogs"] = R.region(seg, 3)
        self.tracker = DialogTracker(worker, self.counts, self.app.proxy.local,
                                     [f"udp:{LISTEN[0]}:{LISTEN[1]}"])
        self.app.proxy.dialogs = self.tracker

    def send(self, text: str, src: tuple = SRC) -> str | None:
        data = text.replace("\n", "\r\n").encode()
        before = len(self.sock.sent)
        self.app.handle(data, src, self.listener)
        if len(self.sock.sent) == before:
            return None
        return self.sock.sent[-1][0].decode()

    def contacts(self, aor: str) -> list[dict]:
        return self.table.group(aor.encode())

    def count(self, name: str) -> int:
        return self.counts[INDEX[name]]


def register(aor: str = "alice@example.com", cseq: int = 1, callid: str = "cid-1",
             contacts: list[str] | None = None, expires: int | None = None,
             extra: str = "") -> str:
    lines = ["REGISTER sip:example.com SIP/2.0",
             "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1;rport",
             f"From: <sip:{aor}>;tag=t1", f"To: <sip:{aor}>", f"Call-ID: {callid}",
             f"CSeq: {cseq} REGISTER", "Max-Forwards: 70"]
    lines += [f"Contact: {c}" for c in (contacts if contacts is not None else
                                         ["<sip:alice@192.0.2.10:5070>"])]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if extra:
        lines += extra.strip().split("\n")
    lines += ["Content-Length: 0", "", ""]
    return "\n".join(lines)


def challenges(reply: str) -> list[dict[str, str]]:
    """The WWW-Authenticate params of a 401, in order."""
    from fastcluster.core.digest import parse_credentials

    out = []
    for line in reply.split("\r\n"):
        if line.startswith("WWW-Authenticate:"):
            params = parse_credentials(line.split(":", 1)[1])
            assert params is not None, line
            out.append(params)
    return out


def authorization(challenge: dict[str, str], user: str, password: str,
                  uri: str = "sip:example.com", method: str = "REGISTER", nc: int = 1,
                  cnonce: str = "c0ffee", username: str | None = None,
                  qop: bool = True) -> str:
    """The Authorization line a phone knowing the password sends (RFC 7616)."""
    from fastcluster.core.digest import expected_response, ha1

    algorithm = challenge["algorithm"]
    name = username if username is not None else user
    h = ha1(algorithm, name, challenge["realm"], password)
    ncs = f"{nc:08x}"
    response = expected_response(algorithm, h, challenge["nonce"], method, uri,
                                 "auth" if qop else "", ncs if qop else "",
                                 cnonce if qop else "")
    tail = f', qop=auth, nc={ncs}, cnonce="{cnonce}"' if qop else ""
    return (f'Authorization: Digest username="{name}", realm="{challenge["realm"]}", '
            f'nonce="{challenge["nonce"]}", uri="{uri}", response="{response}", '
            f'algorithm={algorithm}{tail}')
