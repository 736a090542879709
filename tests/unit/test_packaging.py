"""The systemd unit agrees with the code it starts: readiness by sd_notify, reload by
SIGHUP, no restart after the exit codes that would fail again, and the directories
systemd creates are where core.config puts the node's files."""
from __future__ import annotations

import configparser
import pathlib
import shlex

from fastcluster.core import config
from fastcluster.core.errors import EXIT_BOOT, EXIT_CONFIG

REPO = pathlib.Path(__file__).resolve().parents[2]


def unit() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment]  (systemd keys are CamelCase)
    parser.read_string((REPO / "fastcluster.service").read_text())
    return parser["Service"]


def test_unit_notifies_reloads_and_stops_as_the_master_does() -> None:
    service = unit()
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_CONFIG), str(EXIT_BOOT)]
    assert int(service["WatchdogSec"]) > 0
    start = shlex.split(service["ExecStart"])
    check = shlex.split(service["ExecStartPre"])
    assert start[0] == check[0] and check[1] == "check-config"
    assert start[1:] == check[2:] == ["-c", "/etc/fastcluster/fastcluster.ini"]


def test_unit_directories_are_where_the_node_puts_its_files(monkeypatch) -> None:
    service = unit()
    assert service["RuntimeDirectory"] == service["StateDirectory"] == \
        service["CacheDirectory"] == "fastcluster"
    # systemd's %t, %S, %C for a system service
    env = dict(item.split("=", 1) for item in shlex.split(
        service["Environment"].replace("%t", "/run").replace("%S", "/var/lib")
        .replace("%C", "/var/cache")))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(config.os, "geteuid", lambda: 998)  # User=fastcluster
    cfg = config.load(str(REPO / "fastcluster.ini.sample"), environ={})
    assert cfg.run_dir == "/run/fastcluster"
    assert cfg.data_dir == "/var/lib/fastcluster/n1"
    assert cfg.numba_cache_dir == "/var/cache/fastcluster/numba"
