"""The command line as an operator meets it: --version, --help naming the subcommands
first, `fastcluster mi` finding the MI as the node does (-c FILE, environment, flags),
log lines as JSON or to syslog."""
from __future__ import annotations

import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading

import pytest

from fastcluster.core.cli import COMMANDS

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FASTCLUSTER_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "fastcluster.core.cli", *args],
                          capture_output=True, text=True, timeout=60, env=full)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("fastcluster 0.1.0 (Python 3.")
    assert "numba" in result.stdout


def test_help_lists_the_subcommands_first() -> None:
    out = run_cli("--help").stdout
    first_option = out.index("--core-workers")
    listing = out[:first_option]
    for name, text in COMMANDS.items():
        assert f"  {name}  " in listing or f"  {name} " in listing, name
        assert text in listing
    assert out.index("commands:") < out.index("options:")


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Recorder.seen.append({"port": self.server.server_address[1], "path": self.path,
                              "auth": self.headers.get("Authorization"), "body": body})
        data = json.dumps({"jsonrpc": "2.0", "result": "OK", "id": body.get("id")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mi_servers():
    servers = [http.server.HTTPServer(("127.0.0.1", 0), Recorder) for _ in range(3)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    Recorder.seen = []
    yield [s.server_address[1] for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


def test_mi_finds_the_node_as_the_node_reads_its_settings(tmp_path, mi_servers) -> None:
    from_file, from_env, from_flag = mi_servers
    ini = tmp_path / "node.ini"
    ini.write_text(f"[mi]\nlisten = 127.0.0.1:{from_file}\ntoken = file-token\n")
    cases = [
        (["-c", str(ini), "ps"], {}, from_file, "Bearer file-token"),
        (["ps"], {"FASTCLUSTER_MI_LISTEN": f"127.0.0.1:{from_env}"}, from_env, None),
        # the environment wins over the file, as for the node
        (["-c", str(ini), "ps"], {"FASTCLUSTER_MI_LISTEN": f"127.0.0.1:{from_env}",
                                  "FASTCLUSTER_MI_TOKEN": "env-token"}, from_env,
         "Bearer env-token"),
        (["-c", str(ini), "--mi-url", f"127.0.0.1:{from_flag}", "--mi-token", "t", "ps"],
         {}, from_flag, "Bearer t"),
        (["--mi-url", f"http://127.0.0.1:{from_flag}/mi", "ps"], {}, from_flag, None),
    ]
    for args, env, port, auth in cases:
        Recorder.seen = []
        result = run_cli("mi", *args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert [(r["port"], r["path"], r["auth"]) for r in Recorder.seen] == \
            [(port, "/mi", auth)], args


def test_mi_takes_positional_and_named_values(tmp_path, mi_servers) -> None:
    env = {"FASTCLUSTER_MI_LISTEN": f"127.0.0.1:{mi_servers[0]}"}
    run_cli("mi", "ul_show_contact", "location", "alice@example.com", env=env)
    run_cli("mi", "get_statistics", 'statistics=["usrloc:", "core:"]', env=env)
    run_cli("mi", "clusterer_set_status", "1", "0", env=env)
    params = [r["body"]["params"] for r in Recorder.seen]
    assert params == [["location", "alice@example.com"],
                      {"statistics": ["usrloc:", "core:"]}, ["1", "0"]]
    mixed = run_cli("mi", "ps", "a=1", "b", env=env)
    assert mixed.returncode == 2 and "either all as name=value" in mixed.stderr


def test_mi_reports_an_unreachable_node(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("mi", "ps", env={"FASTCLUSTER_MI_LISTEN": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port}/mi" in result.stderr


LOG_SNIPPET = """
import logging, sys
from fastcluster.core import logsetup
logsetup.setup(7, "sip-3", "info", *sys.argv[1:])
logging.getLogger("registrar").info("hello %s", "world")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("registrar").exception("it broke\\non two lines")
"""


def test_json_log_lines() -> None:
    result = subprocess.run([sys.executable, "-c", LOG_SNIPPET, "json"], capture_output=True,
                            text=True, timeout=30)
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "hello world" and first["level"] == "INFO"
    assert first["node"] == 7 and first["proc"] == "sip-3" and first["logger"] == "registrar"
    assert first["pid"] > 0 and first["ts"].endswith("Z")
    assert second["msg"] == "it broke\non two lines" and "ZeroDivisionError" in second["exc"]


def test_text_log_lines_by_default() -> None:
    result = subprocess.run([sys.executable, "-c", LOG_SNIPPET], capture_output=True,
                            text=True, timeout=30)
    assert " node=7 sip-3[" in result.stderr and "] INFO registrar: hello world" in \
        result.stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_syslog_target(tmp_path, fmt: str) -> None:
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        result = subprocess.run([sys.executable, "-c", LOG_SNIPPET, fmt, "syslog", path,
                                 "local3"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        first = sock.recv(65536).decode()
    # <facility * 8 + severity>: local3 is 19, info is 6
    assert first.startswith(f"<{19 * 8 + 6}>fastcluster: ")
    line = first[len(f"<{19 * 8 + 6}>fastcluster: "):].rstrip("\0")
    if fmt == "json":
        assert json.loads(line)["msg"] == "hello world"
    else:
        assert line.startswith("node=7 sip-3[") and line.endswith("INFO registrar: hello world")


def test_a_node_without_syslog_socket_refuses_to_start(tmp_path) -> None:
    from tests.support import leaks

    result = run_cli("--core-log-target", "syslog", "--core-syslog-address",
                     str(tmp_path / "missing.sock"), "--core-instance",
                     f"{leaks.SESSION_TOKEN}xsyslog", "--core-run-dir", str(tmp_path),
                     "--core-data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert "cannot log to syslog" in result.stderr


def test_a_slow_kernel_load_says_it_is_compiling() -> None:
    """Loading cached kernels takes ~0.3 s; anything slower is the first compile, and
    the log says so (then how far it got) instead of staying silent for a minute."""
    import time

    from fastcluster.workers.master import warm_with_progress

    said: list[str] = []

    def slow(progress) -> float:
        time.sleep(1.3)
        progress(1, 2, "tables", 1.3)
        progress(2, 2, "contacts", 1.4)
        return 1.4

    assert warm_with_progress(slow, said.append) == 1.4
    assert said[0].startswith("compiling the numba kernels into ")
    assert "1-3 minutes" in said[0]
    assert said[1:] == ["kernels: 1/2 compiled (tables), 1 s",
                        "kernels: 2/2 compiled (contacts), 1 s"]
    said.clear()
    warm_with_progress(lambda progress: (progress(1, 1, "tables", 0.1), 0.1)[1], said.append)
    assert said == []  # a warm cache: nothing to say
