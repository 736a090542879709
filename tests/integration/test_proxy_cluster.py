"""Calls through any node: the callee registered through node 1 from behind a NAT that
only lets node 1's listener in; the caller calls through node 2. Node 2 routes the
INVITE through node 1, and every packet the callee gets comes from node 1."""
from __future__ import annotations

import pytest

from tests.support import sipp
from tests.support.nodes import start_cluster, up_set, wait_synced, wait_until
from tests.support.pyuas import PyUas

pytestmark = pytest.mark.sipp
DOMAIN = "example.com"


def test_caller_on_node_2_callee_registered_on_node_1_behind_nat(tmp_path) -> None:
    # NAT pinging is off: the ping partition of the contact may belong to node 2, which
    # pings from its own listener (a NAT would drop those; see the closing note)
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
        assert (r.successful, r.failed) == (10, 0), (r.stdout, diag, callee.received)
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
