"""Script-level cluster messages with real nodes: the probe script
(tests/support/scripts/probe.py) sends, answers, records what its hooks see, and
misbehaves on demand; the tests look at it through its own MI commands."""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import time

import pytest

from fastcluster.services.mi.client import MIError
from tests.support.nodes import Node, cluster_view, start_cluster, up_set, wait_until

PROBE = str(pathlib.Path(__file__).resolve().parent.parent / "support" / "scripts" /
            "probe.py")
EXAMPLE = str(pathlib.Path(__file__).resolve().parents[2] / "examples" / "cluster_stats.py")


def stop_all(nodes: list[Node]) -> None:
    for n in nodes:
        n.stop()


def script_cluster(tmp_path, count: int = 3, script: str = PROBE, hosts=None,
                   **script_settings) -> list[Node]:
    """Nodes running the probe script, each seeing the others up through its API (or
    through the cluster's view, for another script)."""
    settings = {"script": {"module": script, **script_settings}}
    nodes = start_cluster(tmp_path, count, settings=settings, hosts=hosts,
                          seed_index=1 if hosts else 0)
    seen = script_up if script == PROBE else up_set
    try:
        for n in nodes:
            wait_until(lambda n=n: seen(n) == set(range(1, count + 1)) - {n.node_id},
                       timeout=20, what=f"node {n.node_id} sees the cluster")
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def script_up(node: Node, cluster: int = 1) -> set[int]:
    view = node.mi("probe_snapshot").get(str(cluster))
    if not view:
        return set()
    return {int(n) for n, d in view["nodes"].items() if d["up"] and int(n) != node.node_id}


def events(node: Node, kind: str) -> list[list]:
    return node.mi("probe_events", kind=kind)


def stat(node: Node, name: str) -> int:
    return node.mi("get_statistics", statistics=[name])[name]


def test_round_trip_broadcast_and_result_codes(tmp_path) -> None:
    nodes = script_cluster(tmp_path)
    n1, n2, n3 = nodes
    try:
        # request() waits for the reply: the echo comes back from node 2
        got = n1.mi("probe_request", cluster=1, node=2, msg={"echo": "hi"})
        assert got == {"replies": {"2": {"echo": "hi", "node": 2}}, "missing": []}
        # send + on_reply: node 3 sees the request with its tag, node 1 the reply
        tag = n1.mi("probe_send", cluster=1, node=3, msg={"echo": [1, 2.5, None, "é"]})
        assert isinstance(tag, str)
        reply = wait_until(lambda: [e for e in events(n1, "reply") if e[4] == tag],
                           what="the reply from node 3")
        assert reply == [["reply", 1, 3, {"echo": [1, 2.5, None, "é"], "node": 3}, tag]]
        assert [e for e in events(n3, "request") if e[4] == tag] == \
            [["request", 1, 1, {"echo": [1, 2.5, None, "é"]}, tag]]

        # a broadcast reaches every other node exactly once, and not the sender
        btag = n2.mi("probe_broadcast", cluster=1, msg={"echo": "all"})
        wait_until(lambda: len([e for e in events(n2, "reply") if e[4] == btag]) == 2,
                   what="both replies to the broadcast")
        time.sleep(0.3)  # a duplicate would have arrived by now
        for n in nodes:
            got = [e[2] for e in events(n, "request") if e[4] == btag]
            assert got == ([] if n is n2 else [2]), n.node_id
        assert sorted(e[2] for e in events(n2, "reply") if e[4] == btag) == [1, 3]
        # include_self: the sender's own on_request too
        stag = n2.mi("probe_broadcast", cluster=1, msg={"seq": -1}, include_self=1)
        for n in nodes:
            wait_until(lambda n=n: [e for e in events(n, "request") if e[4] == stag],
                       what=f"include_self broadcast at node {n.node_id}")
        # a hook that itself waits for another node's reply
        got = n1.mi("probe_request", cluster=1, node=2, msg={"ask": 3})
        assert got["replies"] == {"2": {"asked": {"3": {"echo": "asked", "node": 3}}}}
        # request() to all nodes
        got = n3.mi("probe_request", cluster=1, msg={"echo": 7})
        assert got == {"replies": {"1": {"echo": 7, "node": 1}, "2": {"echo": 7, "node": 2}},
                       "missing": []}

        # oversize and unpackable messages are refused before anything is sent
        refused = n1.mi("probe_big", cluster=1, node=2, size=70_000)
        assert "MessageTooLarge" in refused["refused"]
        assert "script.max_message_bytes (65536)" in refused["refused"]
        assert stat(n1, "script:refused_msgs") == 1
        big = n1.mi("probe_big", cluster=1, node=2, size=65_000)
        assert isinstance(big, str)
        wait_until(lambda: [e for e in events(n2, "request") if e[4] == big],
                   what="a message just under the limit")

        # result codes
        assert n1.mi("probe_send", cluster=1, node=9, msg="x") == \
            {"result": "SEND_ERR", "code": -2}
        assert n1.mi("probe_send", cluster=5, node=2, msg="x")["result"] == "SEND_ERR"
        # cluster_check_addr
        assert n1.mi("probe_check", cluster=1, ip="127.0.0.1") is True
        assert n1.mi("probe_check", cluster=1, ip="127.0.0.1", addr_type="bin") is True
        assert n1.mi("probe_check", cluster=1, ip="10.1.2.3") is False
        assert n1.mi("probe_check", cluster=1, ip="not an ip") is False
        assert n1.mi("probe_check", cluster=7, ip="127.0.0.1") is False

        # a node leaves: the hooks hear it, and sends to it are refused as DEST_DOWN
        n3.stop()
        wait_until(lambda: [1, 3, False] in [e[1:] for e in events(n1, "node")],
                   what="node 3 down at node 1's script")
        assert n1.mi("probe_send", cluster=1, node=3, msg="x") == \
            {"result": "DEST_DOWN", "code": -1}
        assert n1.mi("probe_request", cluster=1, msg={"echo": 0})["replies"] == \
            {"2": {"echo": 0, "node": 2}}
        sent = stat(n1, "script:requests_sent")
        assert sent >= 4, sent
        assert stat(n2, "script:requests_received") >= 4
    finally:
        stop_all(nodes)


def test_raising_and_hanging_hooks_leave_the_cluster_healthy(tmp_path) -> None:
    nodes = script_cluster(tmp_path, hook_timeout_s=0.5)
    n1, n2, n3 = nodes
    try:
        assert n1.mi("probe_send", cluster=1, node=2, msg={"raise": "boom on purpose"})
        wait_until(lambda: stat(n2, "script:hook_errors") == 1, what="the hook error")
        wait_until(lambda: "RuntimeError: boom on purpose" in n2.log(),
                   what="the traceback in the log")
        # node 2's hook hangs for 4 s; the next request is served after 0.5 s
        assert n1.mi("probe_send", cluster=1, node=2, msg={"hang": 4})
        got = n1.mi("probe_request", cluster=1, node=2, msg={"echo": "after"}, timeout=3)
        assert got["replies"] == {"2": {"echo": "after", "node": 2}}, got  # within 3 s
        assert stat(n2, "script:hooks_abandoned") == 1
        # while it hangs, nobody is ever seen down
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            for n in nodes:
                assert up_set(n) == {1, 2, 3} - {n.node_id}, (n.node_id, cluster_view(n))
            time.sleep(0.05)
        # the abandoned hook finished in its own thread; the script was never restarted
        wait_until(lambda: events(n2, "hang-finished"), what="the hung hook's end")
        script = [p for p in n2.mi("ps")["Processes"] if p["Role"] == "script"]
        assert script[0]["Restarts"] == 0
        assert "abandoned" in n2.log()
    finally:
        stop_all(nodes)


def test_relayed_requests_arrive_once_and_in_order(tmp_path, cut_link) -> None:
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    cut_link(hosts[0], hosts[2])  # nodes 1 and 3 only reach each other through node 2
    nodes = script_cluster(tmp_path, hosts=hosts)
    n1, n2, n3 = nodes
    try:
        assert cluster_view(n1)[3][2] == "2"  # next hop
        count = 2000
        assert n1.mi("probe_burst", cluster=1, node=3, count=count) == count
        wait_until(lambda: len(events(n3, "request")) >= count, timeout=20,
                   what="the burst at node 3")
        time.sleep(0.3)
        seqs = [e[3]["seq"] for e in events(n3, "request")]
        assert seqs == list(range(count))
        assert all(e[2] == 1 for e in events(n3, "request"))
        assert events(n2, "request") == []  # the relay only forwards
        assert stat(n2, "clusterer:relayed_msgs") >= 1
        # round trip through the relay, both ways
        assert n1.mi("probe_request", cluster=1, node=3, msg={"echo": "far"})["replies"] == \
            {"3": {"echo": "far", "node": 3}}
        assert n3.mi("probe_request", cluster=1, msg={"echo": "all"})["replies"] == \
            {"1": {"echo": "all", "node": 1}, "2": {"echo": "all", "node": 2}}
    finally:
        stop_all(nodes)


def test_script_mi_commands_and_restart(tmp_path) -> None:
    nodes = script_cluster(tmp_path, count=2, mi_timeout_s=0.5)
    n1, n2 = nodes
    try:
        assert "probe_events" in n1.mi("which")
        with pytest.raises(MIError, match="missing param"):
            n1.mi("probe_send", cluster=1, node=2)
        with pytest.raises(MIError, match="refused on purpose") as err:
            n1.mi("probe_fail", code=409)
        assert err.value.error["code"] == 409
        with pytest.raises(MIError, match="KeyError"):
            n1.mi("probe_fail")
        with pytest.raises(MIError, match="script.mi_timeout_s") as err:
            n1.mi("probe_sleep", seconds=2)
        assert err.value.error["code"] == 408
        assert n1.mi("probe_sleep", seconds=0) == "slept"
        # the script process dies: it is respawned, reconnects and registers again
        pid = [p["PID"] for p in n1.mi("ps")["Processes"] if p["Role"] == "script"][0]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: [p for p in n1.mi("ps")["Processes"]
                            if p["Role"] == "script" and p["PID"] != pid], timeout=10,
                   what="the script process respawned")
        got = wait_until(lambda: n1.mi("probe_request", cluster=1, node=2,
                                       msg={"echo": "again"})["replies"], timeout=10,
                         what="requests after the respawn")
        assert got == {"2": {"echo": "again", "node": 2}}
        assert up_set(n2) == {1}
    finally:
        stop_all(nodes)


def test_a_script_that_fails_to_load_stops_the_node(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_here\n")
    node = Node(tmp_path, settings={"script": {"module": str(bad)}})
    node.start(wait=False)
    try:
        assert node.wait_exit(timeout=60) != 0
        assert "no_such_module_here" in node.log()
    finally:
        node.stop()


def test_example_cluster_stats(tmp_path) -> None:
    nodes = script_cluster(tmp_path, script=EXAMPLE)
    try:
        wait_until(lambda: len(nodes[1].mi("cluster_stats", statistics="core:")["nodes"])
                   == 3, what="the command, answered by every node")
        for n in nodes:  # node k gets k OPTIONS
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(n.node_id):
                    s.sendto(options(n.sip_port, i), ("127.0.0.1", n.sip_port))
                    s.settimeout(5)
                    s.recvfrom(65535)
        # workers flush their counters every 0.2 s
        got = wait_until(lambda: (r := nodes[1].mi("cluster_stats",
                                                   statistics=["core:rcv_requests"]))
                         ["total"]["core:rcv_requests"] == 6 and r, what="all counted")
        assert got["nodes"] == {str(k): {"core:rcv_requests": k} for k in (1, 2, 3)}
        assert got["total"] == {"core:rcv_requests": 6}
        assert got["missing"] == []
        nodes[2].stop()
        wait_until(lambda: up_set(nodes[1]) == {1}, what="node 3 gone")
        got = nodes[1].mi("cluster_stats", statistics="core:rcv_requests")
        assert got["total"] == {"core:rcv_requests": 3}
        assert sorted(got["nodes"]) == ["1", "2"]
    finally:
        stop_all(nodes)


def options(port: int, i: int) -> bytes:
    return (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-st{i}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=a{i}\r\n"
            f"To: <sip:127.0.0.1>\r\nCall-ID: st-{port}-{i}\r\nCSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode()
