"""What an operator gets from running nodes: GET /metrics parsed by prometheus_client's
own parser (every statistic, the links, capabilities, syncs, replication lag, rings),
the status page and metrics behind the MI token, systemd notifications, JSON logs."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from fastcluster.core.stats import ALIASES, COUNTERS, GAUGES, metric_name
from fastcluster.workers.demo import register_burst
from tests.support.nodes import Node, start_cluster, up_set, wait_synced, wait_until


def get(url: str, token: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def scrape(node: Node) -> dict[str, list]:
    """metric family name -> samples, as Prometheus would read GET /metrics."""
    code, ctype, body = get(f"http://127.0.0.1:{node.mi_port}/metrics",
                            node.settings.get("mi", {}).get("token"))
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def value(families: dict[str, list], name: str, **labels: str) -> float | None:
    for s in families.get(name, []):
        if s.name == name or s.name in (name + "_total",):
            if all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def histogram(families: dict[str, list], name: str, **labels: str) -> tuple[float, float]:
    """(count, sum) of a histogram's series with these labels."""
    count = total = 0.0
    for s in families.get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            if s.name == name + "_count":
                count += s.value
            elif s.name == name + "_sum":
                total += s.value
    return count, total


def test_metrics_of_a_cluster(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2, workers=1)
    third = None
    try:
        one, two = nodes
        wait_until(lambda: up_set(one) == {2} and up_set(two) == {1}, 20, "joined")
        wait_synced(nodes)
        burst = register_burst(("127.0.0.1", one.sip_port), 300, 100, "metrics.example")
        assert burst["answers"] == {"200": 300}
        wait_until(lambda: two.mi("get_statistics", statistics=[
            "usrloc:registered_contacts"])["usrloc:registered_contacts"] == 300, 10,
            "replicated to node 2")

        f2 = scrape(two)
        stats = two.mi("get_statistics")
        # every statistic of get_statistics, under its declared name, aliases excepted
        for group, name, _ in COUNTERS + GAUGES:
            assert value(f2, metric_name(f"{group}:{name}")) is not None, (group, name)
        assert set(stats) == {f"{g}:{n}" for g, n, _ in COUNTERS + GAUGES} | set(ALIASES)
        assert value(f2, "fastcluster_usrloc_registered_contacts") == 300
        assert value(f2, "fastcluster_clusterer_repl_rows_applied") >= 300
        assert value(f2, "fastcluster_node_up", cluster="1", node="1") == 1
        assert value(f2, "fastcluster_link_state", node="1", state="Up") == 1
        assert value(f2, "fastcluster_link_rtt_seconds", node="1") >= 0
        assert value(f2, "fastcluster_capability_state", capability="usrloc-contact-repl",
                     node="1", state="synced") == 1
        assert value(f2, "fastcluster_capability_state", capability="usrloc-contact-repl",
                     node="2", state="synced") == 1
        count, total = histogram(f2, "fastcluster_replication_lag_seconds", table="contacts")
        assert count >= 1 and 0 <= total / count < 5, (count, total)
        assert value(f2, "fastcluster_natping_partitions") == 4096

        f1 = scrape(one)
        assert value(f1, "fastcluster_replication_ring_rows_pushed", table="contacts") >= 300
        assert value(f1, "fastcluster_replication_ring_fill_ratio", table="contacts") < 1
        assert value(f1, "fastcluster_replication_backlog_bytes", node="2") is not None
        owned = value(f1, "fastcluster_natping_partitions_owned") + \
            value(f2, "fastcluster_natping_partitions_owned")
        assert owned == 4096  # every partition has exactly one owner

        # a node joining later syncs the 300 contacts: its sync is measured
        third = Node(tmp_path, node_id=3, workers=1,
                     settings={"clusterer": {"seeds": one.bin_addr}})
        third.start()
        wait_synced([third])
        f3 = scrape(third)
        count, rows = histogram(f3, "fastcluster_sync_records",
                                capability="usrloc-contact-repl")
        assert count == 1 and rows == 300, (count, rows)
        count, seconds = histogram(f3, "fastcluster_sync_duration_seconds",
                                   capability="usrloc-contact-repl")
        assert count == 1 and 0 < seconds < 30
        page = third.mi("status")
        usrloc = next(c for c in page["capabilities"] if c["name"] == "usrloc-contact-repl")
        assert usrloc["last_sync"]["records"] == 300
    finally:
        for n in nodes + ([third] if third else []):
            n.stop()


def test_pages_and_metrics_behind_the_token(tmp_path) -> None:
    node = Node(tmp_path, settings={"mi": {"token": "s3cret"}}).start()
    try:
        base = f"http://127.0.0.1:{node.mi_port}"
        assert get(f"{base}/metrics")[0] == 401
        assert get(f"{base}/")[0] == 401
        assert get(f"{base}/metrics", "wrong")[0] == 401
        assert get(f"{base}/metrics?token=wrong")[0] == 401
        assert get(f"{base}/metrics", "s3cret")[0] == 200
        code, ctype, page = get(f"{base}/?token=s3cret")  # a browser can only do this
        assert code == 200 and ctype.startswith("text/html") and b"<svg" in page
        # the token in a query string opens GET pages, never the JSON-RPC endpoint
        req = urllib.request.Request(f"{base}/mi?token=s3cret", data=json.dumps(
            {"jsonrpc": "2.0", "method": "ps", "id": 1}).encode())
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("POST /mi?token= was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        assert node.mi("get_statistics", statistics="mi:unauthorized")[
            "mi:unauthorized"] == 5
    finally:
        node.stop()


def test_systemd_notifications(tmp_path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        node = Node(tmp_path, settings={"core": {"log_format": "json"}})
        try:
            node.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
            messages = []
            while not any(m.startswith("READY=1") for m in messages):
                messages.append(sock.recv(4096).decode())
            ready = next(m for m in messages if m.startswith("READY=1"))
            assert f"MAINPID={node.pid}" in ready and "STATUS=node 1 running" in ready
            # READY=1 only once every child booted: they all answer in ps
            assert len(node.mi("ps")["Processes"]) == 2 + 3
            assert sock.recv(4096) == b"WATCHDOG=1"  # every 0.2 s (half of 0.4 s)
            node.signal(1)  # SIGHUP
            seen = [sock.recv(4096) for _ in range(6)]
            seen = [m for m in seen if m != b"WATCHDOG=1"]
            assert seen[:2] == [b"RELOADING=1", b"READY=1"], seen
            node.stop()
            while sock.recv(4096) != b"STOPPING=1":
                pass
        finally:
            node.stop()
    # [core] log_format = json: every line the node wrote is one JSON object
    lines = node.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert any(r["msg"].startswith("node 1 started") and r["proc"] == "master"
               for r in records)
    assert {r["proc"] for r in records} >= {"master", "cluster"}


def test_the_demo_burst_retransmits_what_its_full_socket_dropped(tmp_path) -> None:
    """`fastcluster demo register` retransmits as a phone does: with a receive buffer
    too small for a window of answers (CI once lost 43 of 500 answers this way, the
    REGISTERs all applied), every REGISTER still ends answered 200."""
    node = Node(tmp_path, workers=1).start()
    try:
        burst = register_burst(("127.0.0.1", node.sip_port), 300, 100, "lossy.example",
                               rcvbuf=8192)
        assert burst["answers"] == {"200": 300} and burst["unanswered"] == 0, burst
    finally:
        node.stop()
