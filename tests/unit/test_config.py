"""Settings: load order, validation errors naming file/section/key, CLI, reload, docs."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from fastcluster.core import config
from fastcluster.core.config import ConfigError, load
from fastcluster.core.settings import SETTINGS

REPO = pathlib.Path(__file__).resolve().parents[2]


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "node.ini"
    path.write_text(text)
    return str(path)


def test_defaults_run_alone_on_loopback() -> None:
    cfg = load(environ={})
    assert cfg["core.workers"] == 8
    assert cfg["sip.listen"] == (("udp", "127.0.0.1", 5060),)
    assert cfg["mi.listen"] == ("127.0.0.1", 8888)
    assert cfg["clusterer.node_id"] == 1
    assert cfg["clusterer.bin_listen"] == ("127.0.0.1", 5555)
    assert cfg.instance == "n1"
    assert cfg.shm_prefix == "/fastcluster.n1."


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_default_parses(setting) -> None:
    setting.parse(setting.default)


def test_load_order_default_ini_env_cli(tmp_path: pathlib.Path) -> None:
    ini = write(tmp_path, "[core]\nworkers = 3\nlog_level = debug\n[usrloc]\nmax_contacts = 4\n")
    env = {"FASTCLUSTER_CORE_WORKERS": "5", "FASTCLUSTER_USRLOC_MIN_EXPIRES": "30"}
    cfg = load(ini, cli={"core.workers": "6"}, environ=env)
    assert cfg["core.workers"] == 6 and cfg.sources["core.workers"].startswith("command line")
    assert cfg["usrloc.min_expires"] == 30 and "environment" in cfg.sources["usrloc.min_expires"]
    assert cfg["usrloc.max_contacts"] == 4 and ini in cfg.sources["usrloc.max_contacts"]
    assert cfg["core.log_level"] == "debug"
    assert cfg["usrloc.max_expires"] == 3600 and cfg.sources["usrloc.max_expires"] == "default"


@pytest.mark.parametrize("text, section, key, reason", [
    ("[core]\nworkrs = 2\n", "core", "workrs", "did you mean 'workers'"),
    ("[cor]\nworkers = 2\n", "cor", "", "unknown section"),
    ("[core]\nworkers = many\n", "core", "workers", "not an integer"),
    ("[core]\nworkers = 0\n", "core", "workers", "outside 1..256"),
    ("[core]\nlog_level = loud\n", "core", "log_level", "not one of"),
    ("[sip]\nlisten = tcp:1.2.3.4:5060\n", "sip", "listen", "only UDP"),
    ("[sip]\nlisten = udp:nohost:5060\n", "sip", "listen", "not an IP address"),
    ("[mi]\nlisten = 127.0.0.1:99999\n", "mi", "listen", "outside 1..65535"),
    ("[clusterer]\nnode_id = 70000\n", "clusterer", "node_id", "outside"),
    ("[clusterer]\nseeds = 127.0.0.1\n", "clusterer", "seeds", "not HOST:PORT"),
    ("[clusterer]\nbin_listen = 10.0.0.1:5555\n", "clusterer", "bin_listen",
     "empty [clusterer] secret"),
    ("[usrloc]\nping_partitions = 5000\n", "usrloc", "ping_partitions", "power of two"),
    ("[usrloc]\nping_partitions = 1024\n", "usrloc", "ping_partitions", "outside"),
    ("[usrloc]\nmin_expires = 4000\n", "usrloc", "min_expires", "greater than"),
    ("[core]\nworkers = 2\nworkers = 3\n", "core", "workers", "given twice"),
    ("[mi]\nlisten = 127.0.0.1:5555\n", "mi", "listen", "same address"),
])
def test_bad_ini_names_file_section_key_reason(tmp_path, text, section, key, reason) -> None:
    ini = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(ini, environ={})
    assert err.value.section == section and err.value.key == key
    assert reason in err.value.reason
    assert ini in err.value.source or "default" in err.value.source or \
        "command line" in err.value.source
    message = str(err.value)
    assert f"[{section}]" in message and reason in message


def test_unknown_environment_key_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load(environ={"FASTCLUSTER_CORE_WORKRS": "3"})
    assert "FASTCLUSTER_CORE_WORKRS" in str(err.value) and "did you mean" in str(err.value)


def test_unrelated_environment_is_ignored() -> None:
    assert load(environ={"FASTCLUSTER_FOO": "x", "HOME": "/"})["core.workers"] == 8


def test_presets_and_explicit_timing() -> None:
    lan = load(environ={})
    assert lan.timing("ping_interval_ms") == 100
    wan = load(cli={"clusterer.preset": "wan"}, environ={})
    assert wan.timing("ping_timeout_ms") == 1500
    mixed = load(cli={"clusterer.preset": "wan", "clusterer.ping_interval_ms": "200"},
                 environ={})
    assert mixed.timing("ping_interval_ms") == 200


def test_reload_applies_reloadable_and_keeps_the_rest(tmp_path: pathlib.Path) -> None:
    path = pathlib.Path(write(tmp_path, "[usrloc]\nmax_contacts = 4\n[core]\nworkers = 2\n"))
    old = load(str(path), environ={})
    path.write_text("[usrloc]\nmax_contacts = 7\n[core]\nworkers = 9\n")
    cfg, applied, ignored = config.reload(old)
    assert cfg["usrloc.max_contacts"] == 7 and "usrloc.max_contacts" in applied
    assert cfg["core.workers"] == 2 and "core.workers" in ignored


def test_replication_cluster_auto_and_checked() -> None:
    cfg = load(cli={"clusterer.cluster_id": "7,3"}, environ={})
    assert cfg.replication_cluster("usrloc.replication_cluster") == 7
    assert load(cli={"usrloc.replication_cluster": "0"}, environ={}).replication_cluster(
        "usrloc.replication_cluster") == 0
    with pytest.raises(ConfigError) as err:
        load(cli={"clusterer.cluster_id": "2", "dialog.replication_cluster": "1"}, environ={})
    assert "not one of [clusterer] cluster_id" in str(err.value)


def test_secret_is_masked() -> None:
    cfg = load(cli={"clusterer.secret": "s3cr3t"}, environ={})
    assert cfg.public()["clusterer.secret"] == "***"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastcluster.core.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_check_config_ok_and_bad(tmp_path: pathlib.Path) -> None:
    good = run_cli("check-config", "-c", write(tmp_path, "[core]\nworkers = 2\n"))
    assert good.returncode == 0, good.stderr
    assert "configuration OK" in good.stdout and "core.workers" in good.stdout
    bad_ini = tmp_path / "bad.ini"
    bad_ini.write_text("[usrloc]\ncapacity = lots\n")
    bad = run_cli("check-config", "-c", str(bad_ini))
    assert bad.returncode == 2
    assert str(bad_ini) in bad.stderr and "[usrloc] capacity" in bad.stderr


def test_run_with_bad_value_exits_2_and_starts_nothing(tmp_path: pathlib.Path) -> None:
    result = run_cli("--clusterer-node-id", "0")
    assert result.returncode == 2
    assert "[clusterer] node_id" in result.stderr and "command line" in result.stderr


def test_help_lists_every_setting() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for s in SETTINGS:
        assert s.flag in result.stdout, s.flag


def test_settings_reference_is_current() -> None:
    committed = (REPO / "docs" / "settings.md").read_text()
    assert committed == config.render_reference(), \
        "docs/settings.md is stale: run `fastcluster settings-doc > docs/settings.md`"


@pytest.mark.parametrize("cli, ok", [
    ({}, True),  # loopback everywhere: nothing needed
    ({"mi.listen": "0.0.0.0:8888"}, False),
    ({"mi.listen": "0.0.0.0:8888", "mi.token": "t"}, True),
    ({"mi.listen": "[::1]:8888"}, True),
    ({"sip.listen": "udp:192.0.2.1:5060"}, False),
    ({"sip.listen": "udp:127.0.0.1:5060,udp:[::]:5060"}, False),
    ({"sip.listen": "udp:192.0.2.1:5060", "auth.enable": "yes"}, True),
    ({"sip.listen": "udp:192.0.2.1:5060", "auth.allow_open_registrar": "yes"}, True),
])
def test_open_listeners_need_a_token_or_authentication(cli: dict, ok: bool) -> None:
    if ok:
        load(cli=cli, environ={})
    else:
        with pytest.raises(ConfigError) as err:
            load(cli=cli, environ={})
        # located at the value the operator gave, naming what to set and its origin
        assert err.value.key == "listen" and "loopback" in str(err.value)
        assert "command line --" in err.value.source
        assert "[mi] token = (empty) (default)" in str(err.value) or \
            "[auth] enable = no (default)" in str(err.value)


@pytest.mark.parametrize("text, parsed", [
    ("", ()),
    ("Example.COM, b.org", ("example.com", "b.org")),
    ("10.0.0.1, [2001:DB8::1]", ("10.0.0.1", "[2001:db8::1]")),
    ("bad_domain-.x", None), ("a..b", None), ("a.org, a.org", None),
])
def test_sip_domains(text: str, parsed) -> None:
    if parsed is None:
        with pytest.raises(ConfigError):
            load(cli={"sip.domains": text}, environ={})
    else:
        assert load(cli={"sip.domains": text}, environ={})["sip.domains"] == parsed


@pytest.mark.parametrize("text, parsed", [
    ("SHA-256, MD5", ("SHA-256", "MD5")), ("md5", ("MD5",)), ("MD5,sha-256", ("MD5", "SHA-256")),
    ("", None), ("SHA-512-256", None), ("MD5, md5", None),
])
def test_auth_algorithms(text: str, parsed) -> None:
    if parsed is None:
        with pytest.raises(ConfigError):
            load(cli={"auth.algorithms": text}, environ={})
    else:
        assert load(cli={"auth.algorithms": text}, environ={})["auth.algorithms"] == parsed


def test_data_dir_and_subscriber_database(monkeypatch) -> None:
    cfg = load(cli={"core.instance": "edge1"}, environ={})
    monkeypatch.setattr(config.os, "geteuid", lambda: 0)
    assert cfg.data_dir == "/var/lib/fastcluster/edge1"
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/state")
    assert cfg.data_dir == "/state/fastcluster/edge1"
    assert cfg.auth_db_path == "/state/fastcluster/edge1/subscriber.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/op")
    assert cfg.data_dir == "/home/op/.local/state/fastcluster/edge1"
    cfg = load(cli={"core.data_dir": "/srv/fc", "auth.db_path": "/etc/fc/users.db"},
               environ={})
    assert cfg.data_dir == "/srv/fc" and cfg.auth_db_path == "/etc/fc/users.db"
    assert load(cli={"core.data_dir": "/srv/fc"}, environ={}).auth_db_path == \
        "/srv/fc/subscriber.sqlite"


def test_check_config_prints_values_as_written_with_their_origin(tmp_path) -> None:
    ini = write(tmp_path, "[mi]\nlisten = 127.0.0.1:8898\n\n[usrloc]\n"
                          "replication_cluster = auto\n")
    result = run_cli("check-config", "-c", ini, "--clusterer-seeds",
                     "127.0.0.1:5556, 127.0.0.1:5557")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "127.0.0.1:8898" in lines["mi.listen"] and f"({ini}:2)" in lines["mi.listen"]
    assert " auto " in lines["usrloc.replication_cluster"] and f"({ini}:5)" in \
        lines["usrloc.replication_cluster"]
    assert "127.0.0.1:5556, 127.0.0.1:5557" in lines["clusterer.seeds"]
    assert "(command line --clusterer-seeds)" in lines["clusterer.seeds"]
    assert "udp:127.0.0.1:5060" in lines["sip.listen"] and "(default)" in lines["sip.listen"]
    assert "-1" not in lines["dialog.replication_cluster"]


@pytest.mark.parametrize("args, env, location, names", [
    # the error sits at the value the operator gave, whichever setting it is, and
    # names every other value involved with its own origin
    ({"usrloc.max_expires": "30"}, {}, "command line --usrloc-max-expires "
     "([usrloc] max_expires)", ["[usrloc] max_expires = 30;",
                                "[usrloc] min_expires = 60 (default)"]),
    ({}, {"FASTCLUSTER_USRLOC_MIN_EXPIRES": "7200"}, "environment "
     "FASTCLUSTER_USRLOC_MIN_EXPIRES ([usrloc] min_expires)",
     ["[usrloc] max_expires = 3600 (default)"]),
    ({"clusterer.bin_listen": "192.0.2.1:5555"}, {}, "command line "
     "--clusterer-bin-listen ([clusterer] bin_listen)",
     ["[clusterer] secret = (empty) (default)"]),
    ({"clusterer.preset": "wan", "clusterer.ping_timeout_ms": "100"}, {},
     "command line --clusterer-ping-timeout-ms ([clusterer] ping_timeout_ms)",
     ["[clusterer] preset = wan (command line --clusterer-preset)",
      "[clusterer] ping_interval_ms = 0 (default)"]),
])
def test_cross_field_errors_name_the_real_origins(args, env, location, names) -> None:
    with pytest.raises(ConfigError) as err:
        load(cli=args, environ=env)
    message = str(err.value)
    assert message.startswith(location + ": "), message
    assert message.count(location) == 1  # one location, not repeated
    for name in names:
        assert name in message, message
    assert "default:" not in message


def test_errors_give_one_location_with_the_line(tmp_path) -> None:
    ini = write(tmp_path, "[core]\nworkers = 2\n\n[usrloc]\nmin_expires = x\n")
    with pytest.raises(ConfigError) as err:
        load(ini, environ={})
    assert str(err.value) == f"{ini}:5 [usrloc] min_expires: 'x' is not an integer"


def test_missing_script_module_is_a_config_error(tmp_path) -> None:
    missing = tmp_path / "nope.py"
    result = run_cli("check-config", "--script-module", str(missing))
    assert result.returncode == 2
    assert f"{missing} is not a file" in result.stderr
    assert "command line --script-module ([script] module)" in result.stderr
    present = tmp_path / "hooks.py"
    present.write_text("")
    assert load(cli={"script.module": str(present)}, environ={})["script.module"]


def test_ini_sample_is_current_and_valid(tmp_path) -> None:
    sample = REPO / "fastcluster.ini.sample"
    assert sample.read_text() == config.render_ini_sample(), \
        "fastcluster.ini.sample is stale: run `fastcluster ini-sample > fastcluster.ini.sample`"
    cfg = load(str(sample), environ={})  # everything commented out: the defaults
    assert all(cfg.sources[s.name] == "default" for s in SETTINGS)
    # every key is there at its default: uncommenting all of them changes nothing
    uncommented = tmp_path / "all.ini"
    uncommented.write_text("\n".join(line[1:] if line.startswith(";") else line
                                     for line in sample.read_text().splitlines()))
    full = load(str(uncommented), environ={})
    for s in SETTINGS:
        assert full.sources[s.name].startswith(str(uncommented)), s.name
        assert full[s.name] == cfg[s.name], s.name
        assert f"Also {s.flag}" in sample.read_text().replace("\n# ", " ")


def test_numba_cache_rule() -> None:
    """One rule for the console script, the scripts, the demo and the tests."""
    assert config.numba_cache_base("", {}).endswith("/.cache/fastcluster/numba")
    assert config.numba_cache_base("", {"XDG_CACHE_HOME": "/c"}) == "/c/fastcluster/numba"
    assert config.numba_cache_base("", {"NUMBA_CACHE_DIR": "/n", "XDG_CACHE_HOME": "/c"}) \
        == "/n"
    assert config.numba_cache_base("/s", {"NUMBA_CACHE_DIR": "/n"}) == "/s"
    assert "NUMBA_CACHE_DIR" not in (REPO / "scripts" / "env.sh").read_text().replace(
        "$NUMBA_CACHE_DIR", "")
