"""The status page in a real browser: headless Chromium loads node 1's page while node 3
is killed and restarted; the page, never reloaded, shows node 3 Down and then Up and
synced again. Screenshots of each stage are kept in test-artifacts/status_page/."""
from __future__ import annotations

import os
import time

import pytest

from tests.support import browser
from tests.support.nodes import start_cluster, up_set, wait_synced, wait_until

if not browser.available():  # scripts/test installs them; CI must not skip
    pytestmark = pytest.mark.skipif(os.environ.get("CI") != "true",
                                    reason="needs chromium and chromium-driver (Debian)")

NODES_JS = """
const out = {};
for (const g of document.querySelectorAll('#graph g.node'))
  out[g.dataset.node] = g.dataset.link;
return out;"""
CAPS_JS = """
const out = {};
for (const td of document.querySelectorAll('#caps td[data-node]'))
  out[td.dataset.cap + '/' + td.dataset.node] = td.dataset.state;
return out;"""


def all_synced(caps: dict[str, str], nodes: range) -> bool:
    return all(caps.get(f"{cap}/{n}") == "synced" for n in nodes
               for cap in ("usrloc-contact-repl", "dialog-dlg-repl", "dialog-prof-repl"))


def test_status_page_follows_a_node_killed_and_restarted(tmp_path) -> None:
    shots = browser.artifacts_dir() / "status_page"
    nodes = start_cluster(tmp_path, 3, workers=1)
    page = None
    try:
        one, _, three = nodes
        wait_until(lambda: up_set(one) == {2, 3}, 20, "node 1 sees 2 and 3 Up")
        wait_synced(nodes)
        page = browser.Browser(tmp_path / "browser")
        page.get(f"http://127.0.0.1:{one.mi_port}/")
        page.run("window.loadedOnce = 'yes'; return 1;")  # gone if the page reloads
        page.wait("return document.querySelectorAll('#graph g.node').length === 3 && "
                  "[...document.querySelectorAll('#graph g.node')].every("
                  "g => g.dataset.link === 'Up');", 30, "three nodes Up")
        page.wait(f"const caps = (() => {{{CAPS_JS}}})(); "
                  "return Object.values(caps).length === 9 && "  # 3 capabilities
                  "Object.values(caps).every(s => s === 'synced');", 30, "all synced")
        assert page.run(NODES_JS) == {"1": "Up", "2": "Up", "3": "Up"}
        assert page.run("return document.querySelector('#graph g.node[data-me=yes]')"
                        ".dataset.node") == "1"
        # three links, each reported Up by both ends
        assert page.run("return [...document.querySelectorAll('#graph line.link')].map("
                        "l => l.dataset.link + ':' + l.dataset.both).sort();") == \
            ["1-2:yes", "1-3:yes", "2-3:yes"]
        # the partition map: every node owns some, together all of them
        owners = page.wait("const rows = document.querySelectorAll('#partitions "
                           "tr[data-owner]'); return rows.length === 3 && "
                           "[...rows].map(r => r.dataset.owner);", 20, "3 owners")
        assert owners == ["1", "2", "3"]
        assert page.run("return document.getElementById('partitions').dataset.total") == \
            "4096"
        page.screenshot(shots / "1-all-up.png")

        three.kill9()
        page.wait("const g = document.querySelector('#graph g.node[data-node=\"3\"]'); "
                  "return g && g.dataset.link === 'Down';", 10, "node 3 Down")
        assert page.run(NODES_JS) == {"1": "Up", "2": "Up", "3": "Down"}
        assert page.run("return document.querySelector('#caps td[data-node=\"3\"]"
                        "[data-cap=usrloc-contact-repl]').dataset.reachable") == "no"
        assert page.run("return [...document.querySelectorAll('#nodes tr[data-node]')]"
                        ".map(r => r.dataset.node + ':' + r.dataset.link);") == \
            ["1:Up", "2:Up", "3:Down"]
        page.wait("return document.querySelectorAll('#partitions tr[data-owner]')"
                  ".length === 2;", 10, "node 3's partitions taken over")
        page.screenshot(shots / "2-node3-down.png")

        three.start()
        page.wait(f"return (() => {{{NODES_JS}}})()['3'] === 'Up';", 30, "node 3 Up again")
        page.wait(f"const caps = (() => {{{CAPS_JS}}})(); "
                  "return caps['usrloc-contact-repl/3'] === 'synced' && "
                  "caps['dialog-dlg-repl/3'] === 'synced';", 30, "node 3 synced again")
        page.wait("return document.querySelectorAll('#partitions tr[data-owner]')"
                  ".length === 3;", 10, "node 3 owns partitions again")
        # it keeps polling by itself, about once a second, and was never reloaded
        before = int(page.run("return document.body.dataset.updates"))
        time.sleep(3.5)
        assert int(page.run("return document.body.dataset.updates")) >= before + 2
        assert page.run("return window.loadedOnce") == "yes"
        assert "cannot reach" not in page.run("return document.getElementById('error')"
                                              ".textContent")
        page.screenshot(shots / "3-node3-back.png")
        assert all(p.stat().st_size > 10_000 for p in shots.glob("*.png"))
    finally:
        if page is not None:
            page.close()
        for n in nodes:
            n.stop()


def test_status_page_draws_a_route_through_a_relay(tmp_path, cut_link) -> None:
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    cut_link(hosts[0], hosts[2])  # nodes 1 and 3 reach each other only through node 2
    nodes = start_cluster(tmp_path, 3, hosts=hosts, seed_index=1)
    page = None
    try:
        wait_until(lambda: up_set(nodes[0]) == {2, 3}, 20, "node 3 reachable from node 1")
        page = browser.Browser(tmp_path / "browser")
        page.get(f"http://127.0.0.1:{nodes[0].mi_port}/")
        routes = page.wait("const r = [...document.querySelectorAll('#graph "
                           "polyline.route')]; return r.length === 1 && "
                           "r.map(p => p.dataset.node + ' via ' + p.dataset.via);", 30,
                           "a relayed route")
        assert routes == ["3 via 2"]
        assert page.run(NODES_JS) == {"1": "Up", "2": "Up", "3": "Up"}
        assert page.run("return [...document.querySelectorAll('#graph line.link')].map("
                        "l => l.dataset.link).sort();") == ["1-2", "2-3"]
        label = page.run("return document.querySelector('#graph g.node[data-node=\"3\"]')"
                         ".textContent;")
        assert "via 2" in label
        page.screenshot(browser.artifacts_dir() / "status_page" / "4-relayed-route.png")
    finally:
        if page is not None:
            page.close()
        for n in nodes:
            n.stop()
