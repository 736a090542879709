"""Full sync and replication figures with real nodes on loopback.

    .venv/bin/python -m bench.replication sync [--contacts 1000000]
    .venv/bin/python -m bench.replication lag [--rate 10000] [--probes 500]

sync: a donor holding N contacts (loaded through shared memory), then a fresh node
joins: time from its sync request to synced (its log), the donor's private memory
before and at its peak during the sync, then MI-requested resyncs (request -> synced,
polled every 2 ms). lag: sipp registers unique users on node 1 at RATE/s; meanwhile a
probe registers its own AOR every few ms and times, from its 200 OK, how long until the
contact can be read in node 2's shared memory.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import socket
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fastcluster.core.config import kernel_cache_dir, numba_cache_base  # noqa: E402

os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(numba_cache_base())  # the nodes' rule

from bench.latency import log_problems, summary  # noqa: E402
from fastcluster.shm.node import NodeMemory  # noqa: E402
from tests.support import sipp  # noqa: E402
from tests.support.nodes import Node, cap_state, start_cluster, wait_synced, wait_until  # noqa: E402
from tests.support.writer import Writer  # noqa: E402


def rss_anon_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def log_time(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")


def sync(contacts: int, tmp: pathlib.Path) -> None:
    settings = {"usrloc": {"capacity": int(contacts * 1.1) + 1000},
                "clusterer": {"seed_fallback_interval_s": 0.5},
                "core": {"log_level": "info"}}
    donor = start_cluster(tmp, 1, settings=settings)[0]
    receiver = None
    try:
        wait_synced([donor])
        writer = Writer(donor.shm_prefix)
        try:
            writer.load_contacts(contacts, seed=5)
        finally:
            writer.close()
        cluster_pid = next(p["PID"] for p in donor.mi("ps")["Processes"]
                           if p["Role"] == "cluster")
        before = rss_anon_kb(cluster_pid)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_anon_kb(cluster_pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        receiver = Node(tmp, node_id=2, workers=1, settings={
            **settings, "clusterer": {"seeds": donor.bin_addr}}).start()
        wait_until(lambda: cap_state(receiver) == "synced", timeout=120, what="synced")
        done.set()
        sampler.join()
        lines = receiver.log().splitlines()
        asked = next(log_time(l) for l in lines if "usrloc-contact-repl: sync wanted" in l)
        synced = next(l for l in lines if "usrloc-contact-repl: synced from" in l)
        took = (log_time(synced) - asked).total_seconds()
        print(f"fresh node, {contacts} contacts: request -> synced {took:.3f} s "
              f"({synced.split('INFO sync: ')[1]})")
        print(f"donor cluster process private memory: {before / 1024:.0f} MB before, "
              f"{peak[0] / 1024:.0f} MB at peak (+{(peak[0] - before) / 1024:.1f} MB; sync "
              f"chunks of {donor.settings['clusterer'].get('sync_packet_size', 1 << 20)} "
              f"bytes, window 4)")
        assert receiver.mi("ul_digest") == donor.mi("ul_digest")
        for i in range(3):
            t = time.perf_counter()
            receiver.mi("ul_cluster_sync")
            wait_until(lambda: cap_state(receiver) == "synced", timeout=120, step=0.002)
            print(f"MI resync {i + 1} (rows already there): {time.perf_counter() - t:.3f} s")
    finally:
        donor.stop()
        if receiver is not None:
            receiver.stop()


def lag(rate: int, probes: int, tmp: pathlib.Path) -> None:
    settings = {"usrloc": {"capacity": 400_000}, "clusterer": {"seed_fallback_interval_s": 0.5},
                "core": {"log_level": "warning"}}
    nodes = start_cluster(tmp, 2, workers=4, settings=settings)
    try:
        wait_synced(nodes)
        mem = NodeMemory.attach("/" + nodes[1].shm_prefix)
        mem.contacts.group(b"warm-up@lag")  # load the lookup kernel before measuring
        results: list[float] = []
        stop = threading.Event()
        load = threading.Thread(target=lambda: sipp.run(
            "register", ("127.0.0.1", nodes[0].sip_port), tmp / "load", rate * 12,
            rate=rate, limit=1000, keys={"user": "bg", "reg_cseq": 1, "expires": 3600},
            timeout_s=60))
        load.start()
        time.sleep(1.0)  # load running
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(2)
            port = s.getsockname()[1]
            for i in range(probes):
                aor = f"probe{i}@lag.example.com"
                msg = (f"REGISTER sip:lag.example.com SIP/2.0\r\nVia: SIP/2.0/UDP "
                       f"127.0.0.1:{port};branch=z9hG4bK-p{i}\r\nFrom: <sip:{aor}>;tag=p{i}\r\n"
                       f"To: <sip:{aor}>\r\nCall-ID: probe-{i}\r\nCSeq: 1 REGISTER\r\n"
                       f"Contact: <sip:probe{i}@127.0.0.1:{port}>\r\nExpires: 600\r\n"
                       f"Content-Length: 0\r\n\r\n").encode()
                s.sendto(msg, ("127.0.0.1", nodes[0].sip_port))
                reply = s.recv(4096)
                ok_at = time.perf_counter()
                assert reply.startswith(b"SIP/2.0 200"), reply[:40]
                key = aor.encode()
                while not mem.contacts.group(key):
                    if time.perf_counter() - ok_at > 5:
                        raise AssertionError(f"probe {i} never replicated")
                results.append(time.perf_counter() - ok_at)
                time.sleep(0.01)
        stop.set()
        load.join()
        mem.close()
        for line in log_problems(nodes):
            print(line)
        slow = [(i, round(v * 1000)) for i, v in enumerate(results) if v > 0.05]
        print(f"probes over 50 ms (probe, ms): {slow[:20]}")
        print(f"replication lag at {rate} REGISTER/s on node 1, probes: {summary(results)}")
    finally:
        for n in nodes:
            n.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sync")
    s.add_argument("--contacts", type=int, default=1_000_000)
    g = sub.add_parser("lag")
    g.add_argument("--rate", type=int, default=10_000)
    g.add_argument("--probes", type=int, default=500)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if ns.what == "sync":
            sync(ns.contacts, pathlib.Path(tmp))
        else:
            lag(ns.rate, ns.probes, pathlib.Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
