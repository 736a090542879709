"""Dialogs through the proxy of a real cluster, sipp as caller and callee: every node
holds every dialog (dlg_list equal), profiles are counted once cluster-wide, a call set
up through node 1 survives node 1's SIGKILL (its BYE, sent to node 2, reaches the
callee from the replicated dialog and the dialog ends on every node; the sharing tag
moves to one node, the profiles stay counted once), and a dialog's lifetime ends it with
one BYE to each leg sent by the tag's active node only."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support import sipp
from tests.support.nodes import Node, free_port, start_cluster, up_set, wait_synced, wait_until

pytestmark = pytest.mark.sipp

DOMAIN = "example.com"
SETTINGS = {"proxy": {"t1_ms": 50, "t4_ms": 500},
            "usrloc": {"natping_interval_s": 0},
            "dialog": {"profiles": "calls, calls_per_user=from_user"}}


@pytest.fixture(scope="module", autouse=True)
def need_sipp() -> None:
    if not sipp.available():
        pytest.fail("sipp is not installed: scripts/test installs it (Debian: sip-tester)")


def cluster(tmp_path, count: int, dialog: dict | None = None) -> list[Node]:
    """count nodes; the sharing tag vip declared by all, preferred active on node 1."""
    settings = {s: dict(v) for s, v in SETTINGS.items()}
    settings["dialog"].update(dialog or {})

    def tags(n: Node) -> None:
        n.settings["clusterer"]["sharing_tags"] = \
            "vip=active" if n.node_id == 1 else "vip=backup"
        n.write_ini()

    nodes = start_cluster(tmp_path, count, workers=1, settings=settings, before_start=tags)
    try:
        for n in nodes:
            wait_until(lambda n=n: len(up_set(n)) == count - 1, timeout=20,
                       what=f"node {n.node_id} linked")
        wait_synced(nodes)
        wait_until(lambda: all(holder(n) == 1 for n in nodes) and
                   shtag(nodes[0])["State"] == "active", timeout=10,
                   what="vip active on node 1, known everywhere")
    except BaseException:
        for n in nodes:
            n.stop()
        raise
    return nodes


def shtag(node: Node, name: str = "vip") -> dict:
    (t,) = [t for t in node.mi("clusterer_list_shtags") if t["Tag"] == name]
    return t


def holder(node: Node) -> int:
    """The node vip's newest activation names, as this node knows it."""
    return shtag(node)["Holder"]


def dialogs(node: Node) -> list[dict]:
    return sorted(node.mi("dlg_list")["Dialogs"], key=lambda d: d["ID"])


def profile(node: Node, name: str = "calls", value: str | None = None) -> int:
    params = {"profile": name} | ({"value": value} if value is not None else {})
    return node.mi("profile_get_size", **params)["Profile"]["count"]


def stat(node: Node, name: str) -> int:
    return node.mi("get_statistics", statistics=[name])[name]


def register_callee(node: Node, work, port: int) -> None:
    r = sipp.run("register_user", ("127.0.0.1", node.sip_port), work, 1,
                 keys={"user": "bob", "domain": DOMAIN, "expires": 600, "q": "1.0",
                       "contact_host": "127.0.0.1"}, local_port=port,
                 call_ids=f"reg-bob-{port}-%u")
    assert r.successful == 1, r.stdout


class Background:
    """sipp.run in a thread (the test acts on the cluster while the calls are up)."""

    def __init__(self, *args, **kwargs) -> None:
        self.result: sipp.SippResult | None = None
        self.thread = threading.Thread(target=self._run, args=args, kwargs=kwargs)
        self.thread.start()

    def _run(self, *args, **kwargs) -> None:
        self.result = sipp.run(*args, **kwargs)

    def join(self, timeout: float = 90) -> sipp.SippResult:
        self.thread.join(timeout)
        assert self.result is not None, "sipp did not finish"
        return self.result


def confirmed_everywhere(nodes: list[Node], calls: int) -> bool:
    lists = [dialogs(n) for n in nodes]
    return all(len(x) == calls and {d["state"] for d in x} == {4} for x in lists)


def test_dialogs_replicated_dlg_list_equal_profiles_cluster_wide(tmp_path) -> None:
    calls = 10
    nodes = cluster(tmp_path, 3)
    n1 = nodes[0]
    work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
    try:
        register_callee(n1, work, port)
        uas = sipp.Uas("uas", port, work, calls, timeout_s=90)
        caller = Background("uac", ("127.0.0.1", n1.sip_port), work, calls, rate=20,
                            keys={"callee": "bob", "domain": DOMAIN}, call_ids="d%u-%p",
                            extra=["-d", "6000", "-trace_err"], timeout_s=60)
        wait_until(lambda: confirmed_everywhere(nodes, calls), timeout=20,
                   what="every call confirmed on every node", step=0.1)
        first = dialogs(n1)
        assert [dialogs(n) for n in nodes[1:]] == [first, first]
        d = first[0]
        assert d["sharing_tag"] == "vip" and d["callee_tag"] and d["caller_tag"]
        assert d["timeout"] - d["timestart"] == 43200  # [dialog] default_timeout_s
        # counted once, by vip's active node (node 1), seen the same on every node
        wait_until(lambda: [profile(n) for n in nodes] == [calls] * 3, timeout=5,
                   what="calls counted cluster-wide")
        # (a dialog admitted while the holder recounts is counted twice until the next
        # recount, within a second: by design never below the truth, shm/profiles.py)
        wait_until(lambda: [profile(n, "calls_per_user", "caller1") for n in nodes] ==
                   [1, 1, 1], timeout=5, what="one call of caller1 counted everywhere")
        assert profile(nodes[2], "calls_per_user") == calls
        r, u = caller.join(), uas.finish(timeout=60)
        assert (r.successful, r.failed) == (calls, 0), r.stdout
        assert (u.successful, u.failed) == (calls, 0), uas.errors()
        wait_until(lambda: all(dialogs(n) == [] for n in nodes), timeout=10,
                   what="the dialogs ended on every node")
        wait_until(lambda: [profile(n) for n in nodes] == [0, 0, 0], timeout=5,
                   what="profiles back to 0 everywhere")
        assert stat(n1, "dialog:processed_dialogs") == calls
        assert stat(n1, "dialog:terminated_dialogs") == calls
    finally:
        for n in nodes:
            n.stop()


def test_call_survives_sigkill_of_the_node_that_routed_it(tmp_path) -> None:
    """Calls set up through node 1; node 1 SIGKILLed; the callers send their BYEs to
    node 2 (as if node 1's address had moved there): node 2 routes them from the
    replicated dialogs, the callee gets them, and the dialogs end on every node. The tag
    moves to exactly one node and the profiles stay counted once."""
    calls = 5
    nodes = cluster(tmp_path, 3)
    n1, n2, n3 = nodes
    work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
    try:
        register_callee(n1, work, port)
        wait_until(lambda: n2.mi("ul_show_contact", aor=f"bob@{DOMAIN}")["Contacts"],
                   what="contact replicated")
        uas = sipp.Uas("uas_via", port, work, calls, timeout_s=90)
        caller = Background("uac_takeover", ("127.0.0.1", n1.sip_port), work, calls,
                            rate=50, keys={"callee": "bob", "domain": DOMAIN,
                                           "bye_host": "127.0.0.1", "bye_port": n2.sip_port},
                            call_ids="k%u-%p", extra=["-d", "5000", "-trace_err"],
                            timeout_s=60)
        wait_until(lambda: confirmed_everywhere(nodes, calls), timeout=20,
                   what="every call confirmed on every node", step=0.05)
        wait_until(lambda: [profile(n) for n in nodes] == [calls] * 3, timeout=5,
                   what="calls counted cluster-wide")
        killed_at = time.monotonic()
        n1.kill9()
        survivors = [n2, n3]
        wait_until(lambda: [holder(n) for n in survivors] in ([2, 2], [3, 3]), timeout=5,
                   what="vip taken over by one node, known by both", step=0.01)
        took_s = time.monotonic() - killed_at
        holders = [shtag(n) for n in survivors]
        assert sum(t["State"] == "active" for t in holders) == 1, holders
        assert {t["Epoch"] for t in holders} == {2}, holders
        assert took_s < 3.0, took_s
        # the new holder counts the dialogs now: once, on both nodes
        wait_until(lambda: [profile(n) for n in survivors] == [calls] * 2, timeout=5,
                   what="calls counted once after the takeover")
        assert [dialogs(n2)] == [dialogs(n3)] and len(dialogs(n2)) == calls
        r, u = caller.join(), uas.finish(timeout=60)
        assert (r.successful, r.failed) == (calls, 0), r.stdout
        assert (u.successful, u.failed) == (calls, 0), uas.errors()
        assert stat(n2, "dialog:taken_over_requests") >= calls
        wait_until(lambda: all(dialogs(n) == [] for n in survivors), timeout=10,
                   what="the dialogs ended on every node")
        wait_until(lambda: [profile(n) for n in survivors] == [0, 0], timeout=5,
                   what="profiles back to 0")
        # nobody sent BYEs of its own (the callers hung up)
        assert [stat(n, "dialog:byes_sent") for n in survivors] == [0, 0]
    finally:
        for n in nodes:
            n.stop()


def test_lifetime_ends_the_call_with_one_bye_per_leg_from_the_active_node(tmp_path) -> None:
    """Calls through node 2 while vip is active on node 1: at the lifetime, node 1 (and
    only it) sends a BYE to each leg; both legs answer and the dialogs end everywhere."""
    calls = 4
    nodes = cluster(tmp_path, 2, dialog={"default_timeout_s": 10})
    n1, n2 = nodes
    work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
    try:
        register_callee(n2, work, port)
        uas = sipp.Uas("uas_via", port, work, calls, timeout_s=90)
        started = time.monotonic()
        r = sipp.run("uac_wait_bye", ("127.0.0.1", n2.sip_port), work, calls, rate=20,
                     keys={"callee": "bob", "domain": DOMAIN}, call_ids="l%u-%p",
                     extra=["-trace_err"], timeout_s=60)
        u = uas.finish(timeout=30)
        assert (r.successful, r.failed) == (calls, 0), r.stdout
        assert (u.successful, u.failed) == (calls, 0), uas.errors()
        assert time.monotonic() - started >= 9.5  # not before the lifetime
        wait_until(lambda: all(dialogs(n) == [] for n in nodes), timeout=10,
                   what="the dialogs ended on every node")
        assert stat(n1, "dialog:byes_sent") == 2 * calls
        assert stat(n2, "dialog:byes_sent") == 0
        assert stat(n1, "dialog:expired_dialogs") == calls
        wait_until(lambda: stat(n1, "dialog:own_replies") == 2 * calls, timeout=5,
                   what="both legs answered every BYE")
    finally:
        for n in nodes:
            n.stop()


def test_profile_limit_holds_across_nodes_and_dlg_end_dlg_ends_calls_from_the_holder(
        tmp_path) -> None:
    """At most 2 calls to a user across the cluster: 2 calls through node 1 are up; a
    third through node 2 is refused 403 (node 1's counts, replicated). dlg_end_dlg asked
    on node 2 ends both calls: the tag's active node (node 1) sends the BYEs."""
    nodes = cluster(tmp_path, 2, dialog={"profiles": "calls, per_callee=to_user",
                                         "profile_limits": "per_callee=2"})
    n1, n2 = nodes
    work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
    try:
        register_callee(n1, work, port)
        uas = sipp.Uas("uas_via", port, work, 2, timeout_s=90)
        held = Background("uac_wait_bye", ("127.0.0.1", n1.sip_port), work, 2, rate=20,
                          keys={"callee": "bob", "domain": DOMAIN}, call_ids="h%u-%p",
                          extra=["-trace_err"], timeout_s=60)
        wait_until(lambda: confirmed_everywhere(nodes, 2), timeout=20,
                   what="both calls confirmed on both nodes", step=0.05)
        wait_until(lambda: profile(n2, "per_callee", "bob") == 2, timeout=5,
                   what="node 1's counts seen on node 2")
        r = sipp.run("uac_refused", ("127.0.0.1", n2.sip_port), work, 1,
                     keys={"callee": "bob", "domain": DOMAIN}, call_ids="x%u-%p",
                     extra=["-trace_err"], timeout_s=30)
        assert (r.successful, r.failed) == (1, 0), r.stdout
        assert stat(n2, "dialog:profile_refused") == 1
        assert len(dialogs(n1)) == 2 and profile(n1, "per_callee", "bob") == 2
        for d in dialogs(n2):
            assert n2.mi("dlg_end_dlg", dialog_id=d["ID"]) == "OK"
        r, u = held.join(), uas.finish(timeout=30)
        assert (r.successful, r.failed) == (2, 0), r.stdout
        assert (u.successful, u.failed) == (2, 0), uas.errors()
        wait_until(lambda: all(dialogs(n) == [] for n in nodes), timeout=10,
                   what="the dialogs ended on every node")
        assert stat(n1, "dialog:ended_by_mi") == 2 and stat(n1, "dialog:byes_sent") == 4
        assert stat(n2, "dialog:byes_sent") == 0
        wait_until(lambda: [profile(n) for n in nodes] == [0, 0], timeout=5,
                   what="profiles back to 0")
    finally:
        for n in nodes:
            n.stop()


def test_after_a_takeover_the_new_holder_runs_the_lifetime_timers(tmp_path) -> None:
    """Calls through node 2 while vip is active on node 1; node 1 is SIGKILLed before the
    lifetime; the node that took vip over sends one BYE to each leg, the other none."""
    calls = 3
    nodes = cluster(tmp_path, 3, dialog={"default_timeout_s": 10})
    n1, n2, n3 = nodes
    work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
    try:
        register_callee(n2, work, port)
        uas = sipp.Uas("uas_via", port, work, calls, timeout_s=90)
        caller = Background("uac_wait_bye", ("127.0.0.1", n2.sip_port), work, calls,
                            rate=20, keys={"callee": "bob", "domain": DOMAIN},
                            call_ids="t%u-%p", extra=["-trace_err"], timeout_s=60)
        wait_until(lambda: confirmed_everywhere(nodes, calls), timeout=20,
                   what="every call confirmed on every node", step=0.05)
        n1.kill9()
        survivors = [n2, n3]
        wait_until(lambda: [holder(n) for n in survivors] in ([2, 2], [3, 3]), timeout=5,
                   what="vip taken over", step=0.01)
        new = survivors[0] if holder(n2) == 2 else survivors[1]
        other = n3 if new is n2 else n2
        r, u = caller.join(), uas.finish(timeout=30)
        assert (r.successful, r.failed) == (calls, 0), r.stdout
        assert (u.successful, u.failed) == (calls, 0), uas.errors()
        wait_until(lambda: all(dialogs(n) == [] for n in survivors), timeout=10,
                   what="the dialogs ended on every node")
        assert stat(new, "dialog:byes_sent") == 2 * calls
        assert stat(other, "dialog:byes_sent") == 0
        assert stat(new, "dialog:expired_dialogs") == calls
    finally:
        for n in nodes:
            n.stop()


def test_pings_end_a_call_whose_callee_went_away(tmp_path) -> None:
    """[dialog] ping_interval_s = 1: the tag's active node pings both legs of a call set
    up through it; the caller answers (sipp -aa), the callee is killed: its ping goes
    unanswered, and at the next ping the node ends the call (BYE to the caller)."""
    nodes = cluster(tmp_path, 2, dialog={"ping_interval_s": 1})
    n1, n2 = nodes
    work, port = tmp_path / "sipp", free_port(socket.SOCK_DGRAM)
    uas = None
    try:
        register_callee(n1, work, port)
        uas = sipp.Uas("uas_via", port, work, 1, timeout_s=90, extra=["-aa"])
        caller = Background("uac_wait_bye", ("127.0.0.1", n1.sip_port), work, 1, rate=20,
                            keys={"callee": "bob", "domain": DOMAIN}, call_ids="p%u-%p",
                            extra=["-trace_err", "-aa"], timeout_s=60)
        wait_until(lambda: confirmed_everywhere(nodes, 1), timeout=20,
                   what="the call confirmed on both nodes", step=0.05)
        wait_until(lambda: stat(n1, "dialog:ping_replies") >= 4, timeout=10,
                   what="both legs answered pings")
        assert stat(n1, "dialog:ended_by_ping") == 0
        uas.proc.kill()  # the callee goes away without a BYE
        r = caller.join()
        assert (r.successful, r.failed) == (1, 0), r.stdout
        wait_until(lambda: all(dialogs(n) == [] for n in nodes), timeout=10,
                   what="the dialog ended on both nodes")
        assert stat(n1, "dialog:ended_by_ping") == 1
        assert stat(n2, "dialog:pings_sent") == 0  # only the tag's active node pings
    finally:
        if uas is not None:
            uas.finish(timeout=5)
        for n in nodes:
            n.stop()
