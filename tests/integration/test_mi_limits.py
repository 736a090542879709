"""No client can stall the cluster process: the MI runs in its own thread with bounded
batches and streamed dumps, and the cluster port bounds what strangers may hold."""
from __future__ import annotations

import socket
import threading
import time

from tests.support import leaks
from tests.support.nodes import Node, start_cluster, up_set, wait_until
from tests.support.writer import Writer


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def cluster_pid(node: Node) -> int:
    return next(p["PID"] for p in node.mi("ps")["Processes"] if p["Role"] == "cluster")


def test_batches_are_bounded_and_heavy_commands_go_alone(tmp_path) -> None:
    node = Node(tmp_path, workers=1).start()
    try:
        too_many = [{"jsonrpc": "2.0", "method": "uptime", "id": i} for i in range(101)]
        assert "at most 100" in node.post(too_many)["error"]["message"]
        mixed = node.post([{"jsonrpc": "2.0", "method": "uptime", "id": 1},
                            {"jsonrpc": "2.0", "method": "ul_dump", "id": 2}])
        assert "result" in mixed[0] and "call it alone" in mixed[1]["error"]["message"]
    finally:
        node.stop()


def test_mi_load_and_a_big_dump_never_stall_the_cluster(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2, settings={"usrloc": {"capacity": 200_000}})
    try:
        wait_until(lambda: up_set(nodes[0]) == {2} and up_set(nodes[1]) == {1}, what="mesh")
        writer = Writer(nodes[0].shm_prefix)
        try:
            assert writer.load_contacts(150_000, seed=5) == 150_000
        finally:
            writer.close()
        pid = cluster_pid(nodes[0])
        before = rss_kb(pid)
        stop = threading.Event()
        states: set[str] = set()

        def watch() -> None:
            while not stop.is_set():
                for c in nodes[1].mi("clusterer_list")["Clusters"][0]["Nodes"]:
                    states.add(c["link_state"])
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            batch = [{"jsonrpc": "2.0", "method": m, "id": i} for i, m in
                     enumerate(["get_statistics", "clusterer_list", "ul_digest"] * 33)]
            for _ in range(20):
                assert len(nodes[0].post(batch)) == 99
            dump = nodes[0].mi("ul_dump")
        finally:
            stop.set()
            watcher.join()
        # (the writer's AORs are binary: several decode to the same text, so count contacts)
        assert sum(len(a["Contacts"]) for a in dump["Domains"][0]["AORs"]) == 150_000
        assert states == {"Up"}, states
        assert nodes[1].mi("get_statistics", statistics=["clusterer:node_down_events"]) == \
            {"clusterer:node_down_events": 0}
        # streamed a chunk at a time: the cluster process did not hold the dump
        assert rss_kb(pid) - before < 150_000, (before, rss_kb(pid))
    finally:
        for n in nodes:
            n.stop()


def test_strangers_cannot_hold_the_cluster_port(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2)
    idle: list[socket.socket] = []
    try:
        wait_until(lambda: up_set(nodes[0]) == {2}, what="mesh")
        host, port = nodes[0].bin_addr.split(":")
        for _ in range(20):  # connections that never say a word
            s = socket.create_connection((host, int(port)), timeout=5)
            idle.append(s)
        time.sleep(0.5)
        closed = 0
        for s in idle:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except OSError:
                pass
        assert closed >= 20 - 8, closed  # beyond 8 per address: closed at once
        stats = nodes[0].mi("get_statistics", statistics=["clusterer:refused_links"])
        assert stats["clusterer:refused_links"] >= 12
        assert up_set(nodes[0]) == {2} and up_set(nodes[1]) == {1}
        assert leaks.alive(nodes[0].pid)
    finally:
        for s in idle:
            s.close()
        for n in nodes:
            n.stop()
