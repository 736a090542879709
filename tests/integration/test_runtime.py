"""A real node: processes, supervision, signals, instance lock, shared-memory lifetime."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fastcluster.services.mi.client import MIError
from fastcluster.shm.node import PARTS
from tests.support import leaks
from tests.support.nodes import Node, wait_mapped


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def roles(node: Node) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in node.mi("ps")["Processes"]:
        out.setdefault(p["Role"], []).append(p["PID"])
    return out


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().split(b"\0")[0].decode()


def time_slice_ns(pid: int) -> int:
    """The scheduler's slice of a process (/proc/PID/sched se.slice; 0 if not shown)."""
    with open(f"/proc/{pid}/sched") as fh:
        for line in fh:
            if line.startswith("se.slice"):
                return int(line.split(":")[1])
    return 0


def kernel_sets_time_slices() -> bool:
    """Whether this kernel grants a process its own slice (Linux 6.12+)."""
    out = subprocess.run([sys.executable, "-c", "from fastcluster.workers import osutil; "
                          "print(osutil.set_time_slice(100_000))"],
                         capture_output=True, text=True, check=True).stdout
    return int(out) == 100_000


def test_node_runs_supervised_processes_and_stops_clean(tmp_path) -> None:
    node = Node(tmp_path, workers=3).start()
    try:
        r = roles(node)
        assert len(r["master"]) == 1 and r["master"][0] == node.pid
        assert len(r["sip"]) == 3 and len(r["cluster"]) == 1 and len(r["timer"]) == 1
        assert sorted(node.children()) == sorted(r["sip"] + r["cluster"] + r["timer"])
        assert cmdline(r["sip"][0]).startswith("fastcluster: sip worker ")
        assert cmdline(r["cluster"][0]) == "fastcluster: cluster"
        procs = node.mi("ps")["Processes"]
        assert all(p["Heartbeat_age_ms"] < 2000 for p in procs)
        assert len(node.shm_names()) == len(PARTS)
        stats = node.mi("get_statistics", statistics=["usrloc:", "core:"])
        assert stats["usrloc:registered_contacts"] == 0 and "core:bad_msgs" in stats
        assert "ps" in node.mi("which")
        if kernel_sets_time_slices():  # sip.time_slice_us (100), set as workers boot
            wait_for(lambda: all(time_slice_ns(pid) == 100_000 for pid in r["sip"]),
                     what="the SIP workers' 100 us time slice")
            assert time_slice_ns(r["cluster"][0]) > 100_000
        started = time.monotonic()
    finally:
        code = node.stop()
    assert code == 0
    assert time.monotonic() - started < 5
    assert node.shm_names() == []


def test_crashed_child_is_respawned_and_stuck_child_is_replaced(tmp_path) -> None:
    node = Node(tmp_path, workers=2, settings={"core": {"child_timeout_s": 1.0,
                                                        "graceful_timeout_s": 0.5}}).start()
    try:
        victim = roles(node)["sip"][0]
        os.kill(victim, signal.SIGKILL)
        def respawned() -> list[int]:
            sip = roles(node).get("sip", [])
            return sip if len(sip) == 2 and victim not in sip else []

        leaks.register(max(wait_for(respawned, what="respawn")))
        assert "died (signal 9); respawning" in node.log()
        timer = roles(node)["timer"][0]
        os.kill(timer, signal.SIGSTOP)  # stuck: no heartbeat, ignores SIGTERM
        def replaced() -> bool:
            now = roles(node).get("timer", [])  # one ps: the timer may be between lives
            return bool(now) and now[0] != timer

        wait_for(replaced, timeout=15, what="stuck timer replaced")
        leaks.register(roles(node)["timer"][0])
        assert "stuck: no heartbeat" in node.log() and "SIGKILL" in node.log()
        assert not leaks.alive(timer)
    finally:
        assert node.stop() == 0
    assert node.shm_names() == []


def test_a_steady_trickle_keeps_the_worker_beating_and_counting(tmp_path) -> None:
    """Datagrams closer together than the worker's idle timeout never let recvfrom time
    out: the worker must still beat (or the watchdog replaces it) and flush counters."""
    node = Node(tmp_path, workers=1, settings={"core": {"child_timeout_s": 1.0}}).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        worker = roles(node)["sip"][0]
        options = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKt"
                   b"\r\nFrom: <sip:t@x>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: trickle"
                   b"\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        sent = 0
        end = time.monotonic() + 3.0  # three heartbeat timeouts
        while time.monotonic() < end:
            sock.sendto(options, ("127.0.0.1", node.sip_port))
            sent += 1
            time.sleep(0.05)
        counted = node.mi("get_statistics", statistics=["core:rcv_requests"])
        assert counted["core:rcv_requests"] >= sent - 10  # flushed within ~IDLE_S
        assert roles(node)["sip"] == [worker]
        assert "stuck" not in node.log()
    finally:
        sock.close()
        assert node.stop() == 0


def _sleeps(pid: int) -> int:
    """The times process `pid` has slept (voluntary context switches)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh
                    if line.startswith("voluntary_ctxt_switches"))


def test_requests_spaced_out_wake_one_worker_of_a_shared_socket(tmp_path) -> None:
    """With sip.dispatch=shared every worker waits on the one socket. Blocked in a read,
    the kernel wakes the worker that has waited longest, so requests spaced out land on
    each worker in turn, each one cold. The workers wait in epoll_wait with
    EPOLLEXCLUSIVE instead (shm.mmsg.wait_batch), which wakes the first idle worker in a
    fixed order: one worker takes the requests spaced out; the others wake for their
    heartbeat (every IDLE_S) and for what comes while the first is busy."""
    node = Node(tmp_path, workers=4, settings={"sip": {"dispatch": "shared"}}).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    port = sock.getsockname()[1]
    try:
        workers = roles(node)["sip"]
        register = ("REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;"
                    "branch=z9hG4bKw{n}\r\nFrom: <sip:w{n}@x>;tag=1\r\nTo: <sip:w{n}@x>\r\n"
                    "Call-ID: wake{n}\r\nCSeq: 1 REGISTER\r\nContact: <sip:w@127.0.0.1:%d>"
                    "\r\nContent-Length: 0\r\n\r\n") % (port, port)
        sent = 300
        before = {p: _sleeps(p) for p in workers}
        for n in range(sent):
            sock.sendto(register.format(n=n).encode(), ("127.0.0.1", node.sip_port))
            assert sock.recv(65535).startswith(b"SIP/2.0 200 OK\r\n")
            time.sleep(0.002)
        woken = sorted(_sleeps(p) - before[p] for p in workers)
        # in turn, each would have ~sent / 4 (plus ~5 heartbeats a second)
        assert woken[-1] >= sent * 0.6, woken
    finally:
        sock.close()
        assert node.stop() == 0


def test_kill9_master_then_restart_leaves_nothing(tmp_path) -> None:
    node = Node(tmp_path, workers=2).start()
    kids = node.children()
    node.kill9()
    wait_for(lambda: not any(leaks.alive(k) for k in kids), what="children to die")
    assert len(node.shm_names()) == len(PARTS)  # the dead master could not clean up
    node.start()
    try:
        assert f"removed {len(PARTS)} shared-memory names left by a previous run" in node.log()
        assert len(node.shm_names()) == len(PARTS)
    finally:
        assert node.stop() == 0
    assert node.shm_names() == []


def test_second_master_of_an_instance_refuses(tmp_path) -> None:
    node = Node(tmp_path, workers=1).start()
    try:
        twin = Node(tmp_path, node_id=1, workers=1, instance=node.instance)
        twin.settings["core"]["run_dir"] = node.settings["core"]["run_dir"]
        twin.write_ini()
        twin.start(wait=False)
        assert twin.wait_exit(60) == 2
        assert "already running" in twin.log() and str(node.pid) in twin.log()
        assert node.mi("ps")["Processes"]  # the first node is untouched
        assert len(node.shm_names()) == len(PARTS)
    finally:
        node.stop()


def test_busy_port_stops_start_with_a_clear_error(tmp_path) -> None:
    node = Node(tmp_path, workers=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", node.mi_port))
        s.listen(1)
        node.start(wait=False)
        assert node.wait_exit(60) == 2
    assert "cannot listen on mi" in node.log() and "address already in use" in node.log()
    assert node.shm_names() == []


def test_boot_failure_halts_instead_of_looping(tmp_path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("raise RuntimeError('this script is broken')\n")
    node = Node(tmp_path, workers=1, settings={"script": {"module": str(script)}})
    node.start(wait=False)
    assert node.wait_exit(60) == 3
    log = node.log()
    assert "this script is broken" in log and "failed at boot: stopping the node" in log
    assert log.count("boot failed") == 1
    assert node.shm_names() == []


def test_bad_config_starts_nothing(tmp_path) -> None:
    node = Node(tmp_path, workers=1, settings={"usrloc": {"max_contacts": "lots"}})
    node.start(wait=False)
    assert node.wait_exit(60) == 2
    assert "[usrloc] max_contacts" in node.log() and str(node.ini) in node.log()
    assert node.shm_names() == []


def test_sighup_reloads_what_can_change(tmp_path) -> None:
    node = Node(tmp_path, workers=1).start()
    try:
        node.settings["usrloc"]["max_contacts"] = 3
        node.settings["core"]["workers"] = 4
        node.write_ini()
        node.signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: reloaded" in node.log(), what="reload")
        log = node.log()
        assert "usrloc.max_contacts" in log.split("SIGHUP: reloaded")[1]
        assert "core.workers changed but needs a restart" in log
        assert len(roles(node)["sip"]) == 1
    finally:
        node.stop()


def test_several_nodes_side_by_side(tmp_path) -> None:
    nodes = [Node(tmp_path, node_id=i, workers=1) for i in (1, 2, 3)]
    for n in nodes:
        n.start(wait=False)
    try:
        for n in nodes:
            n.wait_ready()
        assert len({n.mi("ps")["Processes"][0]["PID"] for n in nodes}) == 3
    finally:
        for n in nodes:
            n.stop()
    assert all(n.shm_names() == [] for n in nodes)


def test_mi_errors_are_json_rpc_errors(tmp_path) -> None:
    import http.client
    import json

    node = Node(tmp_path, workers=1).start()
    try:
        with pytest.raises(MIError) as err:
            node.mi("no_such_command")
        assert err.value.error["code"] == -32601
        with pytest.raises(MIError) as err:
            node.mi("ul_show_contact", bogus=1)
        assert err.value.error["code"] == -32602
        conn = http.client.HTTPConnection("127.0.0.1", node.mi_port, timeout=10)
        conn.request("POST", "/mi", body=b"{not json", headers={"Connection": "close"})
        reply = json.loads(conn.getresponse().read())
        assert reply["error"]["code"] == -32700
        conn.close()
        # a client that connects and says nothing does not block others
        idle = socket.create_connection(("127.0.0.1", node.mi_port))
        assert node.mi("ps")["Processes"]
        idle.close()
        result = subprocess.run([sys.executable, "-m", "fastcluster.core.cli", "mi",
                                 "--mi-url", node.mi_url, "get_statistics",
                                 "statistics=[\"core:rcv_requests\"]"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and json.loads(result.stdout) == {"core:rcv_requests": 0}
    finally:
        node.stop()


def test_sighup_applies_heartbeat_timing_in_the_cluster_process(tmp_path) -> None:
    """ping_interval_ms / ping_timeout_ms are reloadable: after SIGHUP a 1.5 s freeze of
    the other node's cluster process is within the new timeout (with the default LAN
    timing, 300 ms, it would be a down event)."""
    nodes = [Node(tmp_path, node_id=i, workers=1) for i in (1, 2)]
    nodes[1].settings["clusterer"]["seeds"] = nodes[0].bin_addr
    nodes[1].write_ini()
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: all(n.mi("clusterer_list")["Clusters"][0]["Nodes"] and
                             n.mi("clusterer_list")["Clusters"][0]["Nodes"][0]["link_state"]
                             == "Up" for n in nodes), what="both up")
        for n in nodes:
            n.settings["clusterer"].update({"ping_interval_ms": 1000, "ping_timeout_ms": 3000})
            n.write_ini()
            n.signal(signal.SIGHUP)
        for n in nodes:
            wait_for(lambda n=n: "heartbeat timing now: ping every 1000 ms, timeout 3000 ms"
                     in n.log(), what="the cluster process applied the new timing")
        cluster_pid = roles(nodes[1])["cluster"][0]
        os.kill(cluster_pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)
        finally:
            os.kill(cluster_pid, signal.SIGCONT)
        time.sleep(0.5)
        stats = nodes[0].mi("get_statistics", statistics=["clusterer:node_down_events"])
        assert stats["clusterer:node_down_events"] == 0
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.sipp
def test_a_killed_masters_tables_are_adopted(tmp_path) -> None:
    """kill -9 of the master leaves its shared memory: the next start copies every row
    (versions and origins kept) into its new tables, so nothing acknowledged is lost."""
    from tests.support import sipp

    # without the database: the shared memory alone keeps them
    node = Node(tmp_path, workers=2, settings={"persistence": {"url": "off"}}).start()
    try:
        r = sipp.run("register", ("127.0.0.1", node.sip_port), tmp_path / "sipp", 2000,
                     rate=2000, keys={"user": "k", "reg_cseq": 1, "expires": 3600})
        assert (r.successful, r.failed) == (2000, 0), r.stdout
        before = node.mi("ul_digest")
        assert before["contacts"] == 2000
        node.kill9()
        node.settings["usrloc"]["capacity"] = 50_000  # another table size: rows still fit
        node.write_ini()
        node.start()
        assert node.mi("ul_digest") == before
        assert "adopted the tables a killed master left: contacts 2000 (2000 newer than" in node.log()
    finally:
        node.stop()
    assert node.shm_names() == []


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the UDP sockets bound to 127.0.0.1:port (/proc/net/udp)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp", encoding="ascii") as fh:
        return {f.split()[9] for f in fh.readlines()[1:] if f.split()[1] == want}


def _register_from_new_ports(port: int, tag: str, count: int = 8) -> None:
    """REGISTERs from `count` new source ports (the kernel hashes them over the
    reuseport sockets), each answered 200 within 0.4 s (below T1: no retransmission)."""
    clients = []
    try:
        for i in range(count):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(c)
            c.bind(("127.0.0.1", 0))
            c.settimeout(0.4)
            lport = c.getsockname()[1]
            c.sendto((f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport}"
                      f";branch=z9hG4bK{tag}{i}\r\nFrom: <sip:{tag}{i}@example.com>;tag={i}"
                      f"\r\nTo: <sip:{tag}{i}@example.com>\r\nCall-ID: {tag}{i}\r\n"
                      f"CSeq: 1 REGISTER\r\nContact: <sip:{tag}{i}@127.0.0.1:{lport}>\r\n"
                      f"Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
        for c in clients:
            assert c.recv(65535).startswith(b"SIP/2.0 200 OK\r\n")
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("dispatch", ["shared", "reuseport"])
def test_a_node_of_large_tables_answers_from_the_moment_it_is_ready(tmp_path, dispatch) -> None:
    """Each SIP worker maps every page of the tables into its memory at boot (some GB
    here, ~90 ms per GiB). Done before serving, a node of large tables answered its
    first REGISTERs ~0.8-1 s after it was ready, past the phone's first retransmission
    (T1, 500 ms); the workers now map them in a thread while they serve."""
    node = Node(tmp_path, workers=4, settings={
        "sip": {"dispatch": dispatch}, "usrloc": {"capacity": 2_000_000},
        "proxy": {"transactions": 1_000_000},
        "dialog": {"track": "none", "capacity": 1_000_000}}).start()
    try:
        _register_from_new_ports(node.sip_port, "early", count=4)
        wait_mapped([node])  # and each worker says when it has mapped them, once
        assert node.mi("get_statistics", statistics=["core:sip_tables_mapped"])[
            "core:sip_tables_mapped"] == 4
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize("workers", [1, 3])
def test_reuseport_answers_from_the_moment_the_node_is_ready(tmp_path, workers) -> None:
    """In reuseport mode the master's socket goes to SIP worker 1, so the port always
    has a socket: requests sent as soon as the MI answers are answered, not refused
    (they were, while the workers had not bound theirs yet). Each worker ends up with a
    socket of its own and no other process holds one (a socket held but never read
    takes its share of the datagrams), also after worker 1 is killed and respawned."""
    node = Node(tmp_path, workers=workers, settings={"sip": {"dispatch": "reuseport"}}).start()
    try:
        _register_from_new_ports(node.sip_port, "ready")
        wait_for(lambda: len(_socket_inodes(node.sip_port)) == workers,
                 what="a socket per worker")
        first = min(roles(node)["sip"])
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: first not in roles(node).get("sip", []) and
                 len(roles(node).get("sip", [])) == workers, what="worker 1 respawned")
        wait_for(lambda: len(_socket_inodes(node.sip_port)) == workers,
                 what="a socket per worker after the respawn")
        _register_from_new_ports(node.sip_port, "again")
        assert len(_socket_inodes(node.sip_port)) == workers
    finally:
        node.stop()


@pytest.mark.parametrize("dispatch", ["shared", "reuseport"])
def test_sip_workers_killed_under_load_lose_no_register(tmp_path, dispatch: str) -> None:
    """A SIP worker reads a batch of datagrams (up to 32) before it answers any of them.
    Killed with SIGKILL under load, what it had read and not answered is retransmitted
    by the clients (as phones do) and answered by another worker or its replacement:
    every REGISTER ends answered 200, every user is in the table, and the
    registered-contacts gauge counts them all."""
    import threading

    from fastcluster.workers.demo import register_burst

    node = Node(tmp_path, workers=2, settings={"sip": {"dispatch": dispatch}}).start()
    count, result = 40_000, {}
    try:
        burst = threading.Thread(target=lambda: result.update(register_burst(
            ("127.0.0.1", node.sip_port), count, 200, "kill.example", timeout_s=15)))
        burst.start()
        killed = []
        while burst.is_alive() and len(killed) < 3:
            time.sleep(0.1)
            answered = node.mi("get_statistics", statistics=["registrar:accepted_regs"])
            if not 0 < answered["registrar:accepted_regs"] < count:
                continue  # not under load yet, or already done
            sip = roles(node).get("sip", [])
            if len(sip) < 2:
                continue  # one is being respawned
            victim = sip[len(killed) % 2]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

            def respawned(v: int = victim) -> list[int]:
                now = roles(node).get("sip", [])
                return now if len(now) == 2 and v not in now else []

            leaks.register(max(wait_for(respawned, what="respawn")))
        burst.join()
        assert len(killed) >= 2, "the burst ended before two workers could be killed"
        assert result["answers"] == {"200": count} and result["unanswered"] == 0, result
        dump = node.mi("ul_dump", brief=1)["Domains"][0]["AORs"]
        assert sorted(a["AOR"] for a in dump) == sorted(
            f"user{n}@kill.example" for n in range(1, count + 1))
        # and the gauge agrees: the repair after each death recounted with every region
        # held, so the other workers' counts made meanwhile were neither lost nor doubled
        assert node.mi("get_statistics", statistics=["usrloc:registered_contacts"])[
            "usrloc:registered_contacts"] == count
        assert node.log().count("died (signal 9); respawning") == len(killed)
    finally:
        assert node.stop() == 0
