"""Capabilities, realtime replication and full sync with real nodes (and sipp)."""
from __future__ import annotations

import socket

import pytest

from fastcluster.services.mi.client import MIError
from tests.support import sipp
from tests.support.nodes import (
    Node,
    all_equal,
    cap_entry,
    cap_state,
    digests,
    free_port,
    start_cluster,
    wait_synced,
    wait_until,
)
from tests.support.writer import Writer

FAST = {"clusterer": {"seed_fallback_interval_s": 0.5}}


def stats(node: Node, *names: str) -> dict:
    return node.mi("get_statistics", statistics=list(names))


def register(node: Node, tmp, users: int, prefix: str, cseq: int = 1, expires: int = 3600,
             lport: int | None = None) -> None:
    r = sipp.run("register", ("127.0.0.1", node.sip_port), tmp / "sipp", users, rate=5000,
                 keys={"user": prefix, "reg_cseq": cseq, "expires": expires},
                 local_port=lport)
    assert (r.successful, r.failed) == (users, 0), r.stdout


def stop_all(nodes: list[Node]) -> None:
    for n in nodes:
        n.stop()


@pytest.mark.sipp
def test_replication_join_restart_and_caps(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 3, settings=FAST)
    fourth = None
    try:
        wait_synced(nodes)
        lport = free_port(socket.SOCK_DGRAM)
        register(nodes[0], tmp_path, 20000, "r", lport=lport)
        wait_until(lambda: all_equal(nodes) and nodes[2].mi("ul_digest")["contacts"] == 20000,
                   timeout=10, what="contacts on every node")
        contact = nodes[2].mi("ul_show_contact", aor="r7@example.com")["Contacts"][0]
        assert contact["Origin"] == 1 and contact["Contact"].startswith("sip:r7@")
        # dialogs go through the same path (written by the test-only writer)
        writer = Writer(nodes[1].shm_prefix)
        try:
            for i in range(200):
                assert writer.put_dialog(f"call-{i}", f"tag-{i}") >= 0
            for i in range(50):
                writer.put_dialog(f"call-{i}", f"tag-{i}", deleted=True)
        finally:
            writer.close()
        wait_until(lambda: all_equal(nodes, "dlg_digest") and
                   nodes[0].mi("dlg_digest")["dialogs"] == 150, timeout=10, what="dialogs")
        # unregistrations replicate too
        register(nodes[0], tmp_path, 20000, "r", cseq=2, expires=0, lport=lport)
        wait_until(lambda: all_equal(nodes) and nodes[1].mi("ul_digest")["contacts"] == 0,
                   timeout=10, what="removals on every node")
        register(nodes[1], tmp_path, 5000, "s")  # changes can come from any node
        wait_until(lambda: all_equal(nodes) and nodes[0].mi("ul_digest")["contacts"] == 5000,
                   timeout=10, what="contacts from node 2")
        # a fourth node joins and syncs
        fourth = Node(tmp_path, node_id=4, workers=1,
                      settings={"clusterer": {"seeds": nodes[2].bin_addr}}).start()
        wait_synced([fourth])
        assert all_equal(nodes + [fourth]) and all_equal(nodes + [fourth], "dlg_digest")
        # node 2 is killed and restarted: it syncs again
        nodes[1].kill9()
        wait_until(lambda: cap_entry(nodes[0])["Nodes"][1]["reachable"] is False, timeout=5,
                   what="node 2 seen down")
        nodes[1].start()
        wait_synced([nodes[1]])
        assert all_equal(nodes + [fourth])
        assert "synced from node" in nodes[1].log()
        # every node knows every node's capability states
        entry = cap_entry(fourth)
        assert {n["node_id"]: n["state"] for n in entry["Nodes"]} == \
            {1: "synced", 2: "synced", 3: "synced", 4: "synced"}
        # a disabled capability neither sends nor accepts; enabling it resyncs
        nodes[2].mi("clusterer_set_cap_status", cluster_id=1, capability="usrloc-contact-repl",
                    status=0)
        wait_until(lambda: cap_entry(nodes[0])["Nodes"][2]["enabled"] == "no", what="flooded")
        register(nodes[0], tmp_path, 1000, "t")
        wait_until(lambda: nodes[1].mi("ul_digest")["contacts"] == 6000, what="replicated")
        assert nodes[2].mi("ul_digest")["contacts"] == 5000
        nodes[2].mi("clusterer_set_cap_status", cluster_id=1, capability="usrloc-contact-repl",
                    status=1)
        wait_until(lambda: all_equal(nodes + [fourth]), timeout=10, what="resynced")
    finally:
        stop_all(nodes + ([fourth] if fourth else []))


def test_donor_killed_in_the_middle_of_a_big_sync(tmp_path) -> None:
    big = {"usrloc": {"capacity": 600_000}, **FAST}
    donors = start_cluster(tmp_path, 2, settings=big)
    receiver = None
    try:
        wait_synced(donors)
        for n in donors:  # the same 500k rows on both donors, without replication
            writer = Writer(n.shm_prefix)
            try:
                assert writer.load_contacts(500_000, seed=7, version_ms=1_700_000_000_000) \
                    == 500_000
            finally:
                writer.close()
        assert all_equal(donors)
        receiver = Node(tmp_path, node_id=3, workers=1, settings={
            "usrloc": {"capacity": 600_000},
            "clusterer": {"seeds": donors[0].bin_addr, "sync_packet_size": 65536,
                          "sync_window": 1, "sync_timeout_s": 1}}).start()
        progress = wait_until(lambda: (cap_entry(receiver).get("sync") or {}).get("records", 0)
                              > 50_000 and cap_entry(receiver)["sync"], timeout=30,
                              what="sync under way", step=0.005)
        donor = next(n for n in donors if n.node_id == progress["donor"])
        other = next(n for n in donors if n is not donor)
        donor.kill9()
        wait_until(lambda: cap_state(receiver) == "synced", timeout=60, what="sync completed")
        assert receiver.mi("ul_digest") == other.mi("ul_digest")
        log = receiver.log()
        assert "failed after" in log and "resuming at position" in log
        assert f"synced from node {other.node_id}" in log
        assert stats(receiver, "clusterer:sync_failed")["clusterer:sync_failed"] >= 1
    finally:
        stop_all(donors + ([receiver] if receiver else []))


@pytest.mark.sipp
def test_registrations_during_a_sync_are_not_lost(tmp_path) -> None:
    settings = {"usrloc": {"capacity": 300_000}, **FAST}
    donor = start_cluster(tmp_path, 1, settings=settings)[0]
    receiver = None
    try:
        wait_synced([donor])
        writer = Writer(donor.shm_prefix)
        try:
            writer.load_contacts(200_000, seed=3)
        finally:
            writer.close()
        receiver = Node(tmp_path, node_id=2, workers=1, settings={
            "usrloc": {"capacity": 300_000},
            "clusterer": {"seeds": donor.bin_addr, "sync_packet_size": 65536,
                          "sync_window": 1}}).start(wait=False)
        receiver.wait_ready()
        register(donor, tmp_path, 5000, "during")  # while the receiver syncs
        wait_synced([receiver])
        wait_until(lambda: all_equal([donor, receiver]), timeout=10, what="equal after sync")
        assert receiver.mi("ul_digest")["contacts"] == 205_000
    finally:
        stop_all([donor] + ([receiver] if receiver else []))


@pytest.mark.sipp
def test_full_ring_is_repaired_from_the_table(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2, workers=1, settings={
        "clusterer": {"seed_fallback_interval_s": 0.5, "repl_ring_bytes": 65536,
                      "repl_interval_ms": 500}})
    try:
        wait_synced(nodes)
        register(nodes[0], tmp_path, 10000, "gap")
        wait_until(lambda: all_equal(nodes) and nodes[1].mi("ul_digest")["contacts"] == 10000,
                   timeout=15, what="repaired")
        assert stats(nodes[0], "clusterer:repl_gaps")["clusterer:repl_gaps"] >= 1
        assert "replication ring was full" in nodes[0].log()
    finally:
        stop_all(nodes)


@pytest.mark.sipp
def test_partition_heals_without_losing_changes(tmp_path, cut_link) -> None:
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    nodes = start_cluster(tmp_path, 3, hosts=hosts, settings=FAST)
    try:
        wait_synced(nodes)
        cut_link(hosts[2], hosts[0])
        cut_link(hosts[2], hosts[1])
        wait_until(lambda: cap_entry(nodes[2])["Nodes"][0]["reachable"] is False and
                   cap_entry(nodes[0])["Nodes"][2]["reachable"] is False, timeout=10,
                   what="node 3 cut off")
        register(nodes[0], tmp_path, 2000, "left")  # each side changes on its own
        register(nodes[2], tmp_path, 2000, "right")
        wait_until(lambda: nodes[1].mi("ul_digest")["contacts"] == 2000, timeout=10,
                   what="node 1's side replicated to node 2")
        assert nodes[2].mi("ul_digest")["contacts"] == 2000
        cut_link.heal()
        wait_until(lambda: all_equal(nodes) and nodes[0].mi("ul_digest")["contacts"] == 4000,
                   timeout=30, what="converged after the partition")
    finally:
        stop_all(nodes)


def test_digests_expose_differences(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2, settings={"dialog": {"replication_cluster": 0},
                                                 **FAST})
    try:
        wait_until(lambda: cap_state(nodes[1]) == "synced", what="contacts synced")
        assert cap_state(nodes[0], "dialog-dlg-repl") == "absent"
        writer = Writer(nodes[0].shm_prefix)
        try:
            writer.put_dialog("only-here", "t")
        finally:
            writer.close()
        d = digests(nodes, "dlg_digest")
        assert d[0]["dialogs"] == 1 and d[1]["dialogs"] == 0 and d[0] != d[1]
    finally:
        stop_all(nodes)


def test_anti_entropy_heals_rows_replication_never_carried(tmp_path) -> None:
    """Rows written into node 2's table behind replication's back (as a divergence that
    slipped past it would look): the per-range digests show where, anti-entropy finds
    the same ranges and exchanges their rows, and the nodes agree again."""
    nodes = start_cluster(tmp_path, 2, settings=FAST)
    try:
        wait_synced(nodes)
        writer = Writer(nodes[1].shm_prefix)
        try:
            writer.load_contacts(300, seed=5)
        finally:
            writer.close()
        mine = nodes[1].mi("cluster_range_digests", table="contacts")
        assert mine["ranges_with_rows"] > 0 and len(mine["digests"]) == mine["ranges"]
        wait_until(lambda: nodes[0].mi("ul_digest") == nodes[1].mi("ul_digest"),
                   timeout=20, what="anti-entropy repair")
        assert nodes[0].mi("ul_digest")["contacts"] == 300
        ranges = [n.mi("cluster_range_digests", table="contacts", first=8, count=16)
                  for n in nodes]
        assert ranges[0] == ranges[1] and len(ranges[0]["digests"]) == 16
        repaired = [stats(n, "clusterer:ae_ranges_repaired") for n in nodes]
        assert sum(r["clusterer:ae_ranges_repaired"] for r in repaired) > 0
        with pytest.raises(MIError, match="404: Table not found"):
            nodes[0].mi("cluster_range_digests", table="nope")
    finally:
        stop_all(nodes)
