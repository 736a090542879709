"""Persistence with real nodes: the whole cluster stopped and started again keeps every
registration (SIGTERM: nothing lost; kill -9 with the shared memory gone too, as after a
power cut: at most the last flush interval), a node restarted alone keeps what it missed
and resurrects nothing, another node's database is refused. SQLite and a real
PostgreSQL server."""
from __future__ import annotations

import os
import socket
import time

import pytest

from tests.support import leaks, postgres, sipp
from tests.support.nodes import (
    Node,
    all_equal,
    free_port,
    start_cluster,
    wait_synced,
    wait_until,
)
from tests.support.writer import Writer

FAST = {"clusterer": {"seed_fallback_interval_s": 1}}


def register(node: Node, tmp, users: int, prefix: str, cseq: int = 1, expires: int = 3600,
             lport: int | None = None) -> None:
    r = sipp.run("register", ("127.0.0.1", node.sip_port), tmp / f"sipp-{prefix}-{cseq}",
                 users, rate=5000, keys={"user": prefix, "reg_cseq": cseq,
                                         "expires": expires}, local_port=lport)
    assert (r.successful, r.failed) == (users, 0), r.stdout


def restart_all(nodes: list[Node], how: str) -> None:
    for n in nodes:
        if how == "term":
            assert n.stop() == 0
        else:  # a power cut: the masters die and their shared memory is gone too
            kids = n.children()
            n.kill9()
            wait_until(lambda: not any(leaks.alive(k) for k in kids), what="children gone")
            n.stop()  # removes the segments a killed master left
    for n in nodes:
        n.start(wait=False)
    for n in nodes:
        n.wait_ready()
    wait_synced(nodes, timeout=60)


def settings_for(url: str | None) -> dict:
    settings = {k: dict(v) for k, v in FAST.items()}
    settings["persistence"] = {"flush_interval_ms": 100}
    if url:
        settings["persistence"]["url"] = url
    return settings


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        yield lambda i: None
        return
    why = postgres.available()
    if why:  # the README's test command installs it: missing in CI is a failure
        (pytest.fail if os.environ.get("CI") else pytest.skip)(why)
    with postgres.server() as url:
        yield lambda i: postgres.database(url, f"node{i}")


def load(nodes: list[Node], contacts: int, dialogs: int) -> None:
    """contacts the same on every node (loaded into shared memory, as replication would
    apply them: the sipp part is replicated for real), dialogs written on node 1 and
    replicated."""
    for n in nodes:
        writer = Writer(n.shm_prefix)
        try:
            writer.load_contacts(contacts, seed=5, version_ms=1_700_000_000_000)
            if n is nodes[0]:
                for i in range(dialogs):
                    writer.put_dialog(f"call-{i}", f"tag-{i}")
        finally:
            writer.close()


def state(node: Node) -> tuple[dict, dict]:
    return node.mi("ul_digest"), node.mi("dlg_digest")


@pytest.mark.sipp
def test_the_whole_cluster_restarts_with_every_registration(tmp_path, backend) -> None:
    urls = [backend(i) for i in (1, 2, 3)]
    nodes = start_cluster(tmp_path, 3, settings=settings_for(None))
    for n, url in zip(nodes, urls):
        if url:
            n.settings["persistence"]["url"] = url
            n.write_ini()
    try:
        if any(urls):  # the nodes were started before their databases were set
            restart_all(nodes, "term")
        wait_synced(nodes)
        lport = free_port(socket.SOCK_DGRAM)
        register(nodes[0], tmp_path, 3000, "p", lport=lport)
        register(nodes[1], tmp_path, 1000, "q")
        register(nodes[0], tmp_path, 500, "p", cseq=2, expires=0, lport=lport)  # removals
        load(nodes, 46_500, 300)
        wait_until(lambda: all_equal(nodes) and all_equal(nodes, "dlg_digest") and
                   nodes[2].mi("ul_digest")["contacts"] == 50_000, timeout=30,
                   what="replicated")
        before = state(nodes[0])
        assert before[1]["dialogs"] == 300, before
        restart_all(nodes, "term")  # SIGTERM: nothing lost
        for n in nodes:
            assert state(n) == before, n.log()
            # loaded from its own database (the MI counter: the log's start may be cut)
            loaded = n.mi("get_statistics", statistics=["persistence:rows_loaded"])
            assert loaded["persistence:rows_loaded"] > 0, n.log()
        status = nodes[0].mi("persistence_status")
        assert status["backlog_rows"] == {"contacts": 0, "dialogs": 0}, status
        assert status["failures"] == 0 and status["log_bytes"]["contacts"] > 0, status
        time.sleep(0.5)  # two flush intervals: everything changed is in the databases
        restart_all(nodes, "kill")  # no SIGTERM, no shared memory: only the databases
        for n in nodes:
            assert state(n) == before
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.sipp
def test_a_node_restarted_alone_keeps_what_it_missed_and_resurrects_nothing(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 3, settings=settings_for(None))
    try:
        wait_synced(nodes)
        lport = free_port(socket.SOCK_DGRAM)
        register(nodes[0], tmp_path, 2000, "a", lport=lport)
        wait_until(lambda: all_equal(nodes) and nodes[2].mi("ul_digest")["contacts"] == 2000,
                   timeout=20, what="replicated")
        time.sleep(0.5)
        assert nodes[2].stop() == 0  # node 3 away, its database holding the 2000
        register(nodes[0], tmp_path, 1000, "a", cseq=2, expires=0, lport=lport)
        register(nodes[1], tmp_path, 700, "b")
        # node 2's last REGISTERs are replicated asynchronously: wait for both to agree
        wait_until(lambda: nodes[0].mi("ul_digest") == nodes[1].mi("ul_digest")
                   and nodes[0].mi("ul_digest")["contacts"] == 1700,
                   timeout=20, what="1700 contacts on nodes 1 and 2")
        expected = nodes[0].mi("ul_digest")
        nodes[2].start()
        wait_synced([nodes[2]])
        wait_until(lambda: all_equal(nodes), timeout=20, what="converged")
        assert nodes[2].mi("ul_digest") == expected  # the removed 1000 stayed removed
        loaded = nodes[2].mi("get_statistics", statistics=["persistence:rows_loaded"])
        assert loaded["persistence:rows_loaded"] > 0, nodes[2].log()
    finally:
        for n in nodes:
            n.stop()


def test_another_nodes_database_is_refused(tmp_path) -> None:
    first = Node(tmp_path, node_id=1, workers=1).start()
    db = first.dir / "data" / "tables.sqlite"
    first.stop()
    other = Node(tmp_path, node_id=2, workers=1,
                 settings={"persistence": {"url": f"sqlite://{db}"}})
    other.start(wait=False)
    assert other.wait_exit(30) == 2
    assert "belongs to node 1, this is node 2" in other.log()
    assert other.shm_names() == []


@pytest.mark.sipp
def test_db_export_and_import_move_the_tables(tmp_path) -> None:
    import subprocess
    import sys

    node = Node(tmp_path, node_id=1, workers=1,
                settings={"persistence": {"flush_interval_ms": 50}}).start()
    try:
        register(node, tmp_path, 300, "x")
        before = node.mi("ul_digest")
        time.sleep(0.3)
    finally:
        node.stop()
    dump = tmp_path / "dump.jsonl"
    run = [sys.executable, "-m", "fastcluster.core.cli", "db"]
    out = subprocess.run(run + ["export", str(dump), "-c", str(node.ini)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "exported 300 rows" in out.stderr, out.stderr
    fresh = tmp_path / "fresh.sqlite"
    node.settings["persistence"]["url"] = f"sqlite://{fresh}"
    node.write_ini()
    out = subprocess.run(run + ["import", str(dump), "-c", str(node.ini)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "imported 300 rows" in out.stderr, out.stderr
    node.start()  # on the imported database
    try:
        assert node.mi("ul_digest") == before
    finally:
        node.stop()
