"""Persistence figures with real nodes on loopback (issue 14's targets).

    .venv/bin/python -m bench.persistence [--contacts 1000000] [--cluster-contacts 200000]

1. Restart of one node holding CONTACTS contacts (SQLite, the default): the contacts are
   loaded into shared memory (synthetic rows, as replication would apply them) plus 100
   registered with sipp, flushed to the database, the node stopped with SIGTERM and
   started again. Reported: exec -> the MI answers with every contact loaded, and exec
   -> a REGISTER query (no Contact) for a sipp-registered user answered 200 with its
   binding (served from the loaded table).
2. Whole-cluster cold restart: 3 nodes holding the same CLUSTER_CONTACTS contacts, all
   stopped with SIGTERM, all started at once; reported: last node started -> every node
   synced and the three digests equal (and equal to before).

REGISTER throughput with persistence on and off side by side is bench.load_register
(--persistence both).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import socket
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

from tests.support import sipp  # noqa: E402
from tests.support.nodes import (  # noqa: E402
    Node,
    all_equal,
    start_cluster,
    wait_synced,
    wait_until,
)
from tests.support.writer import Writer  # noqa: E402


def load(node: Node, contacts: int, seed: int) -> None:
    writer = Writer(node.shm_prefix)
    try:  # the same seed and version on every node: the same rows
        writer.load_contacts(contacts, seed=seed, version_ms=1_700_000_000_000)
    finally:
        writer.close()


def flushed(node: Node) -> bool:
    status = node.mi("persistence_status")
    return status["failures"] == 0 and not any(status["backlog_rows"].values())


def query(port: int, user: str, timeout: float = 0.05) -> bool:
    """A REGISTER without Contact for user@example.com: True if answered 200 with a
    binding."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        me = s.getsockname()[1]
        msg = (f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{time.monotonic_ns()}\r\n"
               f"From: <sip:{user}@example.com>;tag=q\r\nTo: <sip:{user}@example.com>\r\n"
               f"Call-ID: q{time.monotonic_ns()}\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n").encode()
        s.sendto(msg, ("127.0.0.1", port))
        try:
            data = s.recv(65535)
        except OSError:
            return False
    return data.startswith(b"SIP/2.0 200") and b"\r\nContact:" in data


def one_node(contacts: int, tmp: pathlib.Path) -> None:
    node = Node(tmp / "one", node_id=1, workers=2,
                settings={"usrloc": {"capacity": int(contacts * 1.2) + 10_000}})
    node.start()
    try:
        load(node, contacts, seed=21)
        r = sipp.run("register", ("127.0.0.1", node.sip_port), tmp / "sipp", 100, rate=1000,
                     keys={"user": "p", "reg_cseq": 1, "expires": 3600})
        assert (r.successful, r.failed) == (100, 0), r.stdout
        wait_until(lambda: flushed(node), timeout=120, what="flushed", step=0.2)
        before = node.mi("ul_digest")
        status = node.mi("persistence_status")
        size = status["log_bytes"]["contacts"] + status["snapshot_bytes"]["contacts"]
        assert node.stop() == 0
        started = time.monotonic()
        node.start(wait=False)
        loaded = served = None
        while served is None:
            if node.proc.poll() is not None:
                raise RuntimeError(node.log())
            now = time.monotonic() - started
            if loaded is None:
                try:
                    if node.mi("ul_digest") == before:
                        loaded = time.monotonic() - started
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            if query(node.sip_port, "p1"):
                served = time.monotonic() - started
            if now > 120:
                raise TimeoutError(node.log())
        node.wait_ready()
        wait_until(lambda: node.mi("ul_digest") == before, timeout=30, what="loaded")
        loaded = loaded if loaded is not None else time.monotonic() - started
        line = [ln for ln in node.log().splitlines() if "loaded from" in ln][-1]
        print(f"restart of a node holding {before['contacts']} contacts (contacts "
              f"{size / 1e6:.0f} MB in the database): exec -> SIP query answered from the loaded table "
              f"{served:.2f} s, exec -> MI shows every contact {loaded:.2f} s "
              f"(target 3 s)\n  {line.split(' INFO ')[-1]}")
    finally:
        node.stop()


def cluster(contacts: int, tmp: pathlib.Path) -> None:
    settings = {"usrloc": {"capacity": int(contacts * 1.2) + 10_000},
                "clusterer": {"seed_fallback_interval_s": 1}}
    nodes = start_cluster(tmp / "three", 3, workers=1, settings=settings)
    try:
        wait_synced(nodes)
        for n in nodes:
            load(n, contacts, seed=22)
        wait_until(lambda: all(flushed(n) for n in nodes), timeout=120, what="flushed",
                   step=0.2)
        before = nodes[0].mi("ul_digest")
        for n in nodes:
            assert n.stop() == 0
        for n in nodes:
            n.start(wait=False)
        last = time.monotonic()
        for n in nodes:
            n.wait_ready()
        wait_synced(nodes, timeout=120)
        wait_until(lambda: all_equal(nodes) and nodes[0].mi("ul_digest") == before,
                   timeout=120, what="equal digests", step=0.05)
        took = time.monotonic() - last
        print(f"cold restart of 3 nodes holding {before['contacts']} contacts: last node "
              f"started -> all synced, digests equal to before {took:.2f} s (target 5 s)")
    finally:
        for n in nodes:
            n.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--cluster-contacts", type=int, default=200_000)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fc-persist-") as tmp:
        one_node(ns.contacts, pathlib.Path(tmp))
        cluster(ns.cluster_contacts, pathlib.Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
