"""Calls and NAT pings through any node: the callee registered through node 1 from behind
a NAT that only lets node 1's listener in; the caller calls through node 2, and node 2
pings the contacts of its partitions. Both go through node 1, and every packet the
callee gets comes from node 1."""
from __future__ import annotations

import time

import pytest

from tests.support import sipp
from tests.support.nodes import start_cluster, up_set, wait_synced, wait_until
from tests.support.pyuas import PyUas

pytestmark = pytest.mark.sipp
DOMAIN = "example.com"


def test_caller_on_node_2_callee_registered_on_node_1_behind_nat(tmp_path) -> None:
    # NAT pinging is off here (the next test has it): only the calls' packets counted
    nodes = start_cluster(tmp_path, 2, workers=2,
                          settings={"proxy": {"t1_ms": 50, "t4_ms": 500},
                                    "usrloc": {"natping_interval_s": 0}})
    n1, n2 = nodes
    node1_sip = ("127.0.0.1", n1.sip_port)
    callee = PyUas("answer", allowed={node1_sip})
    try:
        for n in nodes:
            wait_until(lambda n=n: len(up_set(n)) == 1, what=f"node {n.node_id} linked")
        wait_synced(nodes)
        # a private Contact: the registrar keeps the source address as the received one
        assert callee.register(node1_sip, f"bob@{DOMAIN}",
                               contact="sip:bob@10.9.9.9:5060").endswith("200 OK")
        callee.start()
        (c,) = wait_until(lambda: n2.mi("ul_show_contact", aor=f"bob@{DOMAIN}")["Contacts"],
                          what="the contact replicated to node 2")
        assert c["Received"] == f"sip:127.0.0.1:{callee.addr[1]}"
        r = sipp.run("uac", ("127.0.0.1", n2.sip_port), tmp_path / "sipp", 10, rate=5,
                     keys={"callee": "bob", "domain": DOMAIN}, call_ids="x%u-%p",
                     extra=["-d", "50", "-trace_err"], timeout_s=60)
        diag = [n.mi("get_statistics", statistics=["tm:", "core:drop_replies",
                                                   "core:fwd_replies", "proxy:"])
                for n in nodes]
        assert (r.successful, r.failed) == (10, 0), (r.errors_log(), diag,
                                                     callee.received[-12:], r.stdout)
        wait_until(lambda: callee.completed == 10, what="10 calls ended at the callee")
        assert callee.refused == [] and callee.errors == [], callee.received
        assert {src for _, src in callee.received} == {node1_sip}
        assert callee.count("INVITE") == 10 and callee.count("BYE") == 10
        assert callee.count("ACK") >= 10
        wait_until(lambda: n2.mi("get_statistics", statistics=["proxy:home_routed"])
                   ["proxy:home_routed"] == 10, what="node 2 routed through node 1")
        # node 1 proxied the INVITEs and the BYEs (its Record-Route kept it in the dialog)
        wait_until(lambda: n1.mi("get_statistics", statistics=["tm:UAS_transactions"])
                   ["tm:UAS_transactions"] == 20, what="node 1 proxied INVITEs and BYEs")
        assert n1.mi("get_statistics", statistics=["proxy:lookups"])["proxy:lookups"] == 0
    finally:
        callee.stop()
        for n in nodes:
            n.stop()



def test_nat_pings_of_phones_registered_through_node_1_come_from_node_1(tmp_path) -> None:
    nodes = start_cluster(tmp_path, 2, workers=2,
                          settings={"usrloc": {"natping_interval_s": 1, "max_pings_lost": 3}})
    n1, n2 = nodes
    node1_sip = ("127.0.0.1", n1.sip_port)
    phones = PyUas("answer", allowed={node1_sip})  # one NAT, 16 phones behind it
    try:
        wait_synced(nodes)
        for i in range(16):  # spread over both nodes' partitions
            assert phones.register(node1_sip, f"bob{i}@{DOMAIN}",
                                   contact=f"sip:bob{i}@10.9.9.9:5060",
                                   callid=f"reg-{i}").endswith("200 OK")
        phones.start()
        wait_until(lambda: all(n.mi("ul_digest")["contacts"] == 16 for n in nodes),
                   what="16 contacts on both nodes")
        stats = lambda n: n.mi("get_statistics", statistics=["nathelper:"])  # noqa: E731
        wait_until(lambda: stats(n1)["nathelper:pings_as_home"] >= 2 and
                   stats(n1)["nathelper:ping_replies"] >= 16, timeout=15,
                   what="node 1 pinged its phones in node 2's partitions too, answered")
        time.sleep(5)  # a contact nobody answers for would be removed by now
        assert phones.refused == [] and phones.errors == [], phones.received
        assert stats(n2)["nathelper:pings_sent"] == 0
        for n in nodes:
            assert stats(n)["nathelper:contacts_removed"] == 0
            assert n.mi("ul_digest")["contacts"] == 16
    finally:
        phones.stop()
        for n in nodes:
            n.stop()
