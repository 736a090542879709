"""The MI as OpenSIPS tools drive it, on a real node: positional parameters, ul_add,
ul_flush, list_statistics, statistic aliases, the access token, and the CLI
(`fastcluster mi` with positional values and a token, `fastcluster user`)."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from fastcluster.services.mi.client import MIError, call
from tests.support.nodes import Node, wait_until

CLI = [sys.executable, "-m", "fastcluster.core.cli"]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


def test_usrloc_commands_positional_and_named(tmp_path) -> None:
    node = Node(tmp_path, workers=1).start()
    try:
        assert node.mi("ul_add", "location", "alice@example.com",
                       "sip:alice@192.0.2.1:5060", 600, "0.5", 0, "NAT", 0) == "OK"
        assert node.mi("ul_add", aor="sip:alice@EXAMPLE.com", contact="<sip:a2@192.0.2.2>",
                       expires=300, methods="INVITE,MESSAGE") == "OK"
        shown = node.mi("ul_show_contact", "location", "alice@example.com")
        assert shown["AOR"] == "alice@example.com"
        by_uri = {c["Contact"]: c for c in shown["Contacts"]}
        assert by_uri["sip:alice@192.0.2.1:5060"]["Q"] == "0.5"
        assert by_uri["sip:alice@192.0.2.1:5060"]["Cflags"] == "NAT"
        assert by_uri["sip:a2@192.0.2.2"]["Methods"] == 1 | 256
        assert 290 <= by_uri["sip:a2@192.0.2.2"]["Expires"] <= 300
        assert node.mi("ul_show_contact", aor="%61lice@example.com")["AOR"] == \
            "alice@example.com"  # the one canonical AOR
        with pytest.raises(MIError) as err:
            node.mi("ul_show_contact", "elsewhere", "alice@example.com")
        assert err.value.error["code"] == 404
        with pytest.raises(MIError) as err:
            node.mi("ul_show_contact", "location", "tel:+1555")
        assert err.value.error["code"] == 400
        assert node.mi("ul_rm_contact", "location", "alice@example.com",
                       "sip:a2@192.0.2.2") == "OK"
        assert len(node.mi("ul_show_contact", "location", "alice@example.com")
                   ["Contacts"]) == 1
        assert node.mi("ul_rm", "location", "alice@example.com") == "OK"
        with pytest.raises(MIError):
            node.mi("ul_show_contact", "location", "alice@example.com")
        # ul_flush expires what is due now, without waiting for the timer's sweep
        node.mi("ul_add", "location", "brief@example.com", "sip:b@192.0.2.3", 1, "", 0, "", 0)
        time.sleep(1.1)
        assert node.mi("ul_flush") == "OK"
        assert node.mi("get_statistics", "usrloc:registered_contacts") == \
            {"usrloc:registered_contacts": 0}
    finally:
        node.stop()


def test_statistics_aliases_and_list(tmp_path) -> None:
    node = Node(tmp_path, workers=1).start()
    try:
        node.mi("ul_add", aor="a@example.com", contact="sip:a@192.0.2.1", expires=60)
        node.mi("ul_add", aor="a@example.com", contact="sip:a2@192.0.2.1", expires=60)
        stats = node.mi("get_statistics", statistics=["usrloc:registered_users",
                                                      "usrloc:location-contacts"])
        assert stats == {"usrloc:registered_users": 1, "usrloc:location-contacts": 2}
        assert node.mi("get_statistics", statistics=["registered_users"]) == \
            {"usrloc:registered_users": 1}
        listed = node.mi("list_statistics")
        assert listed["core:rcv_requests"] == "incremental"
        assert listed["usrloc:registered_contacts"] == "non-incremental"
        assert listed["usrloc:registered_users"] == "non-incremental"
        assert listed["auth:challenges"] == "incremental"
        assert set(node.mi("list_statistics", statistics=["mi:"])) == {"mi:unauthorized"}
        with pytest.raises(MIError):
            node.mi("list_statistics", statistics=["nope:"])
    finally:
        node.stop()


def test_token_required_and_sent_by_the_cli(tmp_path) -> None:
    node = Node(tmp_path, workers=1, settings={"mi": {"token": "t0ken"}}).start()
    try:
        assert node.mi("uptime")  # the test client sends the node's token
        with pytest.raises(OSError, match="HTTP 401"):
            call(node.mi_url, "uptime")
        with pytest.raises(OSError, match="HTTP 401"):
            call(node.mi_url, "uptime", token="wrong")
        req = urllib.request.Request(node.mi_url, data=b"{}", headers={
            "Authorization": "Basic dDBrZW4="})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 401
        err.value.close()
        r = cli("mi", "-c", str(node.ini), "ul_add", "location", "c@example.com",
                "sip:c@192.0.2.9", "60", "", "0", "", "0")
        assert r.returncode == 0 and r.stdout.strip() == '"OK"', r.stderr
        r = cli("mi", "--mi-url", node.mi_url, "--mi-token", "t0ken", "get_statistics",
                "usrloc:registered_contacts")
        assert r.returncode == 0 and '"usrloc:registered_contacts": 1' in r.stdout
        r = cli("mi", "--mi-url", node.mi_url, "uptime")
        assert r.returncode == 1 and "401" in r.stderr
        r = cli("mi", "--mi-url", node.mi_url, "ps", "a=1", "positional")
        assert r.returncode == 2  # named and positional mixed
        wait_until(lambda: node.mi("get_statistics", "mi:unauthorized")
                   ["mi:unauthorized"] >= 4, what="refusals counted")
    finally:
        node.stop()


def test_refuses_to_start_open_without_token_or_auth(tmp_path) -> None:
    r = cli("check-config", "--mi-listen", "0.0.0.0:8899")
    assert r.returncode == 2 and "mi.token" not in r.stderr and "[mi] token" in r.stderr
    r = cli("check-config", "--mi-listen", "0.0.0.0:8899", "--mi-token", "x")
    assert r.returncode == 0, r.stderr
    r = cli("check-config", "--sip-listen", "udp:0.0.0.0:5099")
    assert r.returncode == 2 and "[auth] enable" in r.stderr
    for extra in (["--auth-enable", "yes"], ["--auth-allow-open-registrar", "yes"]):
        r = cli("check-config", "--sip-listen", "udp:0.0.0.0:5099", *extra)
        assert r.returncode == 0, r.stderr


def test_user_cli(tmp_path) -> None:
    data = ["--core-data-dir", str(tmp_path / "d")]
    assert cli("user", "add", "alice@example.com", "--password", "pw", *data).returncode == 0
    r = cli("user", "add", "alice@example.com", "--password", "pw", *data)
    assert r.returncode == 1 and "exists" in r.stderr
    assert cli("user", "add", "bob@b.org", "--password-stdin", *data,
               stdin="s3cret\n").returncode == 0
    assert cli("user", "list", *data).stdout.split() == ["bob@b.org", "alice@example.com"]
    assert cli("user", "list", "b.org", *data).stdout.split() == ["bob@b.org"]
    assert cli("user", "passwd", "bob@b.org", "--password", "x", *data).returncode == 0
    r = cli("user", "passwd", "zed@b.org", "--password", "x", *data)
    assert r.returncode == 1 and "no user" in r.stderr
    assert cli("user", "del", "bob@b.org", *data).returncode == 0
    assert cli("user", "list", *data).stdout.split() == ["alice@example.com"]
    r = cli("user", "add", "nodomain", "--password", "x", *data)
    assert r.returncode == 1 and "USER@DOMAIN" in r.stderr
    import sqlite3

    db = sqlite3.connect(tmp_path / "d" / "subscriber.sqlite")
    (row,) = db.execute("SELECT username, domain, ha1, ha1_sha256 FROM subscriber")
    db.close()
    from fastcluster.core.digest import ha1

    assert row == ("alice", "example.com", ha1("MD5", "alice", "example.com", "pw"),
                   ha1("SHA-256", "alice", "example.com", "pw"))
