"""Topology with real nodes on loopback: join, failure detection, restart, relays, secret,
corrupt frames, leave, status, removal, several clusters, the view in shared memory."""
from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import socket
import threading
import time

import numpy as np

from fastcluster.core.config import load
from fastcluster.core.stats import COUNTERS
from fastcluster.core.wire import Header, Msg, encode
from fastcluster.services.cluster.node import ClusterNode
from fastcluster.shm.control import VIEW_UP
from fastcluster.shm.node import NodeMemory
from tests.support import leaks
from tests.support.nodes import Node, cluster_view, free_port, start_cluster, up_set, \
    wait_until


def stop_all(nodes: list[Node]) -> None:
    for n in nodes:
        n.stop()


def test_join_through_one_seed_kill_and_restart(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 4)
    try:
        for n in nodes:
            wait_until(lambda n=n: up_set(n) == {m.node_id for m in nodes} - {n.node_id} and
                       all(v[1] == "Up" for v in cluster_view(n).values()),
                       what=f"full mesh of direct links on node {n.node_id}")
        victim = nodes[1]
        victim.kill9()
        for n in (nodes[0], nodes[2], nodes[3]):
            wait_until(lambda n=n: cluster_view(n)[2][0] == "Down", timeout=3,
                       what=f"node 2 Down on node {n.node_id}")
        victim.start()
        for n in nodes:
            wait_until(lambda n=n: up_set(n) == {m.node_id for m in nodes} - {n.node_id},
                       what=f"node 2 back on node {n.node_id}")
        # the live set is published to shared memory for workers and the timer
        mem = NodeMemory.attach("/" + nodes[0].shm_prefix)
        try:
            cluster, me, entries = mem.control.read_view(0)
            assert cluster == 1 and me == 1
            assert {nid for nid, flags, _ in entries if flags & VIEW_UP} == {1, 2, 3, 4}
            # with each node's first SIP listener (the proxy routes through home nodes)
            assert mem.control.read_view_sip(0) == {
                n.node_id: ("127.0.0.1", n.sip_port) for n in nodes}
        finally:
            mem.close()
    finally:
        stop_all(nodes)


def test_graceful_leave_is_seen_at_once(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 3, settings={"clusterer": {"node_timeout_s": 30}})
    try:
        for n in nodes:
            wait_until(lambda n=n: len(up_set(n)) == 2, what="mesh")
        nodes[2].stop()
        for n in nodes[:2]:
            wait_until(lambda n=n: cluster_view(n)[3][0] == "Down", timeout=1,
                       what="left node down")
            assert "node 3 left the cluster" in n.log()
    finally:
        stop_all(nodes)


def test_wrong_secret_is_refused_and_changes_nothing(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2)
    intruder = Node(tmp_path, node_id=9, workers=1,
                    settings={"clusterer": {"secret": "not-the-secret",
                                            "seeds": nodes[0].bin_addr}})
    try:
        wait_until(lambda: len(up_set(nodes[0])) == 1, what="mesh")
        intruder.start()
        wait_until(lambda: "cluster secret differs" in nodes[0].log(),
                   what="refusal logged by the seed")
        wait_until(lambda: "cluster secret differs" in intruder.log(),
                   what="refusal logged by the intruder")
        assert 9 not in cluster_view(nodes[0]) and 9 not in cluster_view(nodes[1])
        assert cluster_view(intruder) == {}
        stats = nodes[0].mi("get_statistics", statistics=["clusterer:refused_links"])
        assert stats["clusterer:refused_links"] >= 1
    finally:
        stop_all(nodes + [intruder])


def test_duplicate_node_id_is_refused_on_both_sides(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2)
    twin = Node(tmp_path, node_id=2, workers=1,
                settings={"clusterer": {"seeds": nodes[0].bin_addr}})
    try:
        wait_until(lambda: up_set(nodes[0]) == {2}, what="mesh")
        twin.start()
        wait_until(lambda: "duplicate node id 2" in nodes[0].log(), what="seed refuses")
        wait_until(lambda: "duplicate node id 2" in twin.log(), what="twin told")
        assert cluster_view(nodes[0])[2][0] == "Up"  # the real node 2 is untouched
    finally:
        stop_all(nodes + [twin])


def test_a_node_with_other_ping_partitions_is_refused(tmp_path) -> None:
    """Nodes that cut the contacts into other partitions would miss or double NAT
    pings: the link is refused, with the reason in both logs."""
    nodes = start_cluster(tmp_path, 1)
    odd = Node(tmp_path, node_id=2, workers=1,
               settings={"usrloc": {"ping_partitions": 8192},
                         "clusterer": {"seeds": nodes[0].bin_addr}})
    try:
        odd.start()
        reason = "usrloc.ping_partitions differs"
        wait_until(lambda: reason in nodes[0].log(), what="seed refuses")
        wait_until(lambda: reason in odd.log(), what="newcomer told")
        assert cluster_view(nodes[0]) == {} and cluster_view(odd) == {}
    finally:
        stop_all(nodes + [odd])


def test_corrupt_frames_drop_only_that_connection(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2)
    try:
        wait_until(lambda: up_set(nodes[0]) == {2}, what="mesh")
        host, port = nodes[0].bin_addr.split(":")
        garbage = [os.urandom(n) for n in (1, 7, 100, 5000)] + [
            b"\xff\xff\xff\x7f" + os.urandom(50),
            encode(Header(Msg.PING, 0, 5, 1), {"t": 1})[:-3] + b"\xc1\xc1\xc1",
            encode(Header(Msg.HELLO, 0, 5, 1), {"id": "x"})]
        for blob in garbage:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(blob)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
        assert up_set(nodes[0]) == {2} and up_set(nodes[1]) == {1}
        stats = nodes[0].mi("get_statistics", statistics=["clusterer:"])
        assert stats["clusterer:refused_links"] >= len(garbage)
        assert nodes[0].mi("ps")["Processes"][1]["Restarts"] == 0
    finally:
        stop_all(nodes)


def test_status_remove_and_remote_mi(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 3)
    try:
        for n in nodes:
            wait_until(lambda n=n: len(up_set(n)) == 2, what="mesh")
        assert nodes[0].mi("cluster_send_mi", cluster_id=1, destination=3,
                           cmd_name="ps")["Processes"]
        every = nodes[0].mi("clusterer_broadcast_mi", cluster_id=1, cmd_name="ul_digest")
        assert sorted(item["node"] for item in every["Nodes"]) == [1, 2, 3]
        nodes[0].mi("clusterer_set_status", cluster_id=1, status=0, node_id=3)
        for n in nodes[:2]:
            wait_until(lambda n=n: cluster_view(n)[3][0] == "Down", what="3 disabled")
        assert cluster_view(nodes[0])[3][1] == "Up"  # the link itself is fine
        nodes[1].mi("clusterer_set_status", cluster_id=1, status=1, node_id=3)
        wait_until(lambda: cluster_view(nodes[0])[3][0] == "Up", what="3 enabled")
        nodes[2].stop()
        wait_until(lambda: cluster_view(nodes[0])[3][0] == "Down", what="3 stopped")
        nodes[0].mi("clusterer_remove_node", cluster_id=1, node_id=3)
        for n in nodes[:2]:
            wait_until(lambda n=n: 3 not in cluster_view(n), what="3 forgotten")
    finally:
        stop_all(nodes)


def test_several_clusters_are_separate(tmp_path) -> None:
    hub = Node(tmp_path, node_id=1, workers=1, settings={"clusterer": {"cluster_id": "1,2"}})
    a = Node(tmp_path, node_id=2, workers=1, settings={"clusterer": {"cluster_id": 1}})
    b = Node(tmp_path, node_id=3, workers=1, settings={"clusterer": {"cluster_id": 2}})
    for n in (a, b):
        n.settings["clusterer"]["seeds"] = hub.bin_addr
        n.write_ini()
    nodes = [hub, a, b]
    try:
        for n in nodes:
            n.start()
        wait_until(lambda: up_set(hub, 1) == {2} and up_set(hub, 2) == {3}, what="hub views")
        assert up_set(a, 1) == {1} and cluster_view(a, 2) == {}
        assert up_set(b, 2) == {1} and 2 not in cluster_view(b, 2)
        topo = hub.mi("clusterer_list_topology")["Clusters"]
        assert [c["cluster_id"] for c in topo] == [1, 2]
    finally:
        stop_all(nodes)


def test_static_provisioning(tmp_path) -> None:
    nodes = [Node(tmp_path, node_id=i, workers=1) for i in (1, 2, 3)]
    listing = ",".join(f"{n.node_id}@{n.bin_addr}" for n in nodes)
    for n in nodes:
        n.settings["clusterer"]["nodes"] = listing
        n.write_ini()
        n.start(wait=False)
    try:
        for n in nodes:
            n.wait_ready()
        for n in nodes:
            wait_until(lambda n=n: len(up_set(n)) == 2, what="static mesh")
    finally:
        stop_all(nodes)


def test_relay_when_a_direct_link_is_cut(tmp_path, cut_link) -> None:
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    cut_link(hosts[0], hosts[2])  # node 1 and node 3 cannot talk directly
    nodes = start_cluster(tmp_path, 3, hosts=hosts, seed_index=1)
    try:
        wait_until(lambda: cluster_view(nodes[0]).get(3, ("", "", ""))[0] == "Up",
                   timeout=15, what="node 3 reachable from node 1")
        state, direct, hop = cluster_view(nodes[0])[3]
        assert (state, hop) == ("Up", "2") and direct != "Up"
        assert cluster_view(nodes[2])[1][2] == "2"
        # a request to a node without a direct link is relayed
        assert nodes[0].mi("cluster_send_mi", cluster_id=1, destination=3,
                           cmd_name="uptime")["Up since"]
        stats = nodes[1].mi("get_statistics", statistics=["clusterer:relayed_msgs"])
        assert stats["clusterer:relayed_msgs"] >= 2
        # the relay dies: node 3 becomes unreachable from node 1
        nodes[1].kill9()
        wait_until(lambda: cluster_view(nodes[0])[3][0] == "Down", timeout=5,
                   what="3 unreachable once the relay is gone")
    finally:
        stop_all(nodes)
        leaks.check(set())  # nothing else of ours may linger with the rule in place


def test_a_slow_remote_mi_command_never_holds_up_the_link(tmp_path) -> None:
    """A remote MI command that takes 3 s runs beside the link, not in its reader: both
    nodes stay Up (never Probe) and heartbeats keep flowing meanwhile."""
    probe = str(pathlib.Path(__file__).resolve().parent.parent / "support" / "scripts" /
                "probe.py")
    nodes = start_cluster(tmp_path, 2, settings={"script": {"module": probe}})
    try:
        wait_until(lambda: up_set(nodes[0]) == {2} and up_set(nodes[1]) == {1}, what="mesh")
        answer: dict = {}
        caller = threading.Thread(target=lambda: answer.update(result=nodes[0].mi(
            "cluster_send_mi", cluster_id=1, destination=2, cmd_name="probe_sleep",
            cmd_params={"seconds": 3})))
        started = time.monotonic()
        caller.start()
        states = set()
        while caller.is_alive():
            for n in nodes:
                states |= {v[1] for v in cluster_view(n).values()}
                states |= {v[0] for v in cluster_view(n).values()}
            time.sleep(0.05)
        caller.join()
        assert time.monotonic() - started >= 3.0 and answer == {"result": "slept"}
        assert states == {"Up"}, states
        for n in nodes:
            down = n.mi("get_statistics", statistics=["clusterer:node_down_events"])
            assert down["clusterer:node_down_events"] == 0
    finally:
        stop_all(nodes)


def test_another_build_is_refused_with_a_clear_log_on_both_sides(tmp_path, caplog) -> None:
    """Two builds whose row layouts or message schemas differ never exchange rows: the
    handshake refuses, and both sides say why."""
    node = start_cluster(tmp_path, 1)[0]
    loop = asyncio.new_event_loop()
    try:
        cfg = load(cli={"clusterer.node_id": "7", "clusterer.bin_listen":
                        f"127.0.0.1:{free_port()}", "clusterer.secret": "test-secret",
                        "clusterer.seeds": node.bin_addr}, environ={})
        other = ClusterNode(cfg, np.zeros(len(COUNTERS), dtype=np.int64), "0000ffff0000ffff")
        caplog.set_level(logging.WARNING, logger="clusterer")

        async def dial() -> None:
            other.dial(cfg["clusterer.seeds"][0])
            await asyncio.sleep(1.0)
            await other.stop()

        loop.run_until_complete(dial())
        reason = "another build: its row layouts or message schemas differ"
        wait_until(lambda: reason in node.log(), what="the node's log line")
        assert any(reason in r.getMessage() for r in caplog.records)
        assert cluster_view(node) == {}
    finally:
        loop.close()
        node.stop()
