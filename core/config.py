"""Loading, validating and reloading a node's settings.

Load order: embedded defaults (core.settings), INI file (`-c FILE`), environment
(`FASTCLUSTER_SECTION_KEY`), command line (`--section-key VALUE`). Every problem is a
`ConfigError` naming its source, section, key and reason; the CLI turns it into exit
code 2 before anything starts. Derived values (instance name, shm prefix, timing from a
preset) are computed here, once. Neighbours: core.settings (the declarations), core.cli.
"""
from __future__ import annotations

import configparser
import difflib
import hashlib
import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from fastcluster.core.settings import (
    PRESETS,
    SECTIONS,
    SETTINGS,
    SETTINGS_BY_NAME,
    Setting,
    SettingValueError,
)

ENV_PREFIX = "FASTCLUSTER_"


class ConfigError(Exception):
    """A setting that cannot be used; str() names source, section, key and reason."""

    def __init__(self, source: str, section: str, key: str, reason: str) -> None:
        self.source, self.section, self.key, self.reason = source, section, key, reason
        super().__init__(f"{where(source, section, key)}: {reason}")


def where(source: str, section: str, key: str) -> str:
    """One location for a setting's value: `FILE:LINE [section] key`, `default [section]
    key`, or the environment variable / command-line flag with the INI name it sets."""
    name = f"[{section}] {key}" if key else f"[{section}]" if section else ""
    if not name:
        return source
    if source.startswith(("environment ", "command line ")):
        return f"{source} ({name})"
    return f"{source} {name}"


@dataclass(frozen=True)
class Config:
    """Immutable, validated settings: `cfg["usrloc.capacity"]` or `cfg.usrloc.capacity`."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]  # where each value came from (default, FILE:LINE, ...)
    ini_path: str | None = None
    cli: Mapping[str, str] = field(default_factory=dict)  # raw command-line layer, for reload
    texts: Mapping[str, str] = field(default_factory=dict)  # each value as written

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __getattr__(self, section: str) -> SimpleNamespace:
        if section not in SECTIONS:
            raise AttributeError(section)
        prefix = section + "."
        return SimpleNamespace(**{
            name[len(prefix):]: value
            for name, value in self.values.items() if name.startswith(prefix)
        })

    # -- derived values, computed in one place

    @property
    def instance(self) -> str:
        return self.values["core.instance"] or f"n{self.values['clusterer.node_id']}"

    @property
    def shm_prefix(self) -> str:
        """Every shared-memory name of this instance starts with this."""
        return f"/fastcluster.{self.instance}."

    @property
    def script_address(self) -> str:
        """Abstract unix socket (no file to clean up) on which the cluster process takes
        the script process's connection; unique per instance, like the shm names."""
        return f"\0fastcluster.{self.instance}.script"

    @property
    def run_dir(self) -> str:
        if self.values["core.run_dir"]:
            return self.values["core.run_dir"]
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        return os.path.join(xdg, "fastcluster") if xdg else f"/tmp/fastcluster-{os.getuid()}"

    @property
    def lock_path(self) -> str:
        return os.path.join(self.run_dir, f"fastcluster.{self.instance}.lock")

    @property
    def data_dir(self) -> str:
        """Where this instance keeps files across runs (core.data_dir, else a per-user
        or system state folder per instance)."""
        if self.values["core.data_dir"]:
            return os.path.expanduser(self.values["core.data_dir"])
        if os.geteuid() == 0:
            return os.path.join("/var/lib/fastcluster", self.instance)
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(state, "fastcluster", self.instance)

    @property
    def auth_db_path(self) -> str:
        """The subscriber database (auth.db_path, else in data_dir)."""
        if self.values["auth.db_path"]:
            return os.path.expanduser(self.values["auth.db_path"])
        return os.path.join(self.data_dir, "subscriber.sqlite")

    @property
    def numba_cache_dir(self) -> str:
        return numba_cache_base(self.values["core.numba_cache_dir"])

    def replication_cluster(self, name: str) -> int:
        """usrloc.replication_cluster or dialog.replication_cluster, auto resolved."""
        value = self.values[name]
        return self.values["clusterer.cluster_id"][0] if value == -1 else value

    def sharing_tags(self) -> list[tuple[str, int, str]]:
        """clusterer.sharing_tags with each tag's cluster resolved: (name, cluster,
        active|backup)."""
        first = self.values["clusterer.cluster_id"][0]
        return [(name, cluster or first, state)
                for name, cluster, state in self.values["clusterer.sharing_tags"]]

    def dialog_sharing_tag(self) -> str:
        """The tag dialogs created here carry ("": none): dialog.sharing_tag, else the
        first sharing tag of the dialog replication cluster."""
        if self.values["dialog.sharing_tag"]:
            return self.values["dialog.sharing_tag"]
        cluster = self.replication_cluster("dialog.replication_cluster")
        return next((n for n, c, _ in self.sharing_tags() if c == cluster), "")

    def timing(self, key: str) -> float:
        """ping_interval_ms, ping_timeout_ms or node_timeout_s, with the preset applied."""
        explicit = self.values[f"clusterer.{key}"]
        return explicit if explicit else PRESETS[self.values["clusterer.preset"]][key]

    def public(self) -> dict[str, Any]:
        """Values safe to print (secrets masked)."""
        out = {}
        for s in SETTINGS:
            value = self.values[s.name]
            out[s.name] = ("***" if value else "") if s.secret else value
        return out

    def text(self, name: str) -> str:
        """The value as the operator wrote it (`auto`, `127.0.0.1:8898`), secrets masked."""
        if SETTINGS_BY_NAME[name].secret:
            return "***" if self.values[name] else ""
        if name in self.texts:
            return self.texts[name].strip()
        return str(self.values[name])

    def describe(self, name: str, with_origin: bool = True) -> str:
        """`[usrloc] max_expires = 3600 (default)`, for errors involving several
        settings."""
        text = self.text(name)
        shown = text if text else "(empty)"
        origin = self.sources.get(name, "default")
        return f"{ini_name(name)} = {shown}" + (f" ({origin})" if with_origin else "")


def ini_name(name: str) -> str:
    """usrloc.max_expires -> [usrloc] max_expires: settings are named in messages as
    operators write them in the INI file."""
    section, _, key = name.partition(".")
    return f"[{section}] {key}"


_SETTING_NAMES = re.compile(r"\b(" + "|".join(re.escape(s.name) for s in SETTINGS) + r")\b")


# ---------------------------------------------------------------- loading


def _parse(setting: Setting, text: str, source: str) -> Any:
    try:
        return setting.parse(text)
    except SettingValueError as exc:
        raise ConfigError(source, setting.section, setting.key, str(exc)) from None


def _unknown(source: str, section: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(source, section, key, f"unknown setting{hint}")


def read_ini(path: str) -> dict[str, tuple[str, str]]:
    """name -> (text, source) for every key of the file; unknown keys are errors."""
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       inline_comment_prefixes=("#", ";"))
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=path)
    except OSError as exc:
        raise ConfigError(path, "", "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", "", f"not UTF-8 text: {exc.reason}") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"{path}:{exc.lineno}", exc.section, exc.option,
                          "given twice in the section") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"{path}:{exc.lineno}", exc.section, "",
                          "section given twice") from None
    except configparser.Error as exc:
        raise ConfigError(path, "", "", str(exc).splitlines()[0]) from None
    lines = _key_lines(path)
    found: dict[str, tuple[str, str]] = {}
    for section in parser.sections():
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise ConfigError(path, section, "", f"unknown section{hint}")
        known = [s.key for s in SETTINGS if s.section == section]
        for key, text in parser.items(section, raw=True):
            if key not in known:
                raise _unknown(path, section, key, known)
            line = lines.get((section, key))
            found[f"{section}.{key}"] = (text, f"{path}:{line}" if line else path)
    return found


def _key_lines(path: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line number in an INI file that configparser already read."""
    out: dict[tuple[str, str], int] = {}
    section = ""
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                stripped = line.strip()
                if not stripped or stripped[0] in "#;" or line[0] in " \t":
                    continue
                if stripped.startswith("[") and "]" in stripped:
                    section = stripped[1:stripped.index("]")].strip()
                    continue
                key = re.split(r"[=:]", stripped, maxsplit=1)[0].strip().lower()
                out.setdefault((section, key), number)
    except OSError:
        pass
    return out


def read_env(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """FASTCLUSTER_SECTION_KEY variables; one naming a known section but no key is an error."""
    by_env = {s.env: s for s in SETTINGS}
    found: dict[str, tuple[str, str]] = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        setting = by_env.get(var)
        if setting is None:
            rest = var[len(ENV_PREFIX):].lower()
            section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
            if section is not None:
                known = [s.key for s in SETTINGS if s.section == section]
                raise _unknown(f"environment {var}", section, rest[len(section) + 1:], known)
            continue
        found[setting.name] = (text, f"environment {var}")
    return found


def load(ini_path: str | None = None, cli: Mapping[str, str] | None = None,
         environ: Mapping[str, str] | None = None, check: bool = True) -> Config:
    """Build a validated Config from all sources, later sources winning. check=False
    skips the rules between settings (`fastcluster mi` only wants the MI address)."""
    layers: dict[str, tuple[str, str]] = {s.name: (s.default, "default") for s in SETTINGS}
    if ini_path:
        layers.update(read_ini(ini_path))
    layers.update(read_env(os.environ if environ is None else environ))
    for name, text in (cli or {}).items():
        if name not in SETTINGS_BY_NAME:
            raise ConfigError("command line", *name.partition(".")[::2], "unknown setting")
        layers[name] = (text, f"command line {SETTINGS_BY_NAME[name].flag}")
    values = {name: _parse(SETTINGS_BY_NAME[name], text, src)
              for name, (text, src) in layers.items()}
    sources = {name: src for name, (_, src) in layers.items()}
    texts = {name: text for name, (text, _) in layers.items()}
    cfg = Config(values=values, sources=sources, ini_path=ini_path, cli=dict(cli or {}),
                 texts=texts)
    if check:
        validate(cfg)
    return cfg


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def blame(cfg: Config, names: tuple[str, ...]) -> str:
    """Which of the settings a cross-field error is located at: the first one the
    operator gave (file, environment, command line), else the first one."""
    return next((n for n in names if cfg.sources.get(n, "default") != "default"), names[0])


def validate(cfg: Config) -> None:
    """Rules that involve more than one setting. An error is located at the value the
    operator gave (`blame`) and names the other values involved with their origin."""

    def fail(reason: str, *names: str) -> None:
        at = blame(cfg, names)
        values = [cfg.describe(at, with_origin=False)] + [cfg.describe(n) for n in names
                                                          if n != at]
        section, _, key = at.partition(".")
        reason = _SETTING_NAMES.sub(lambda m: ini_name(m.group(1)), reason)
        raise ConfigError(cfg.sources[at], section, key, f"{reason} ({'; '.join(values)})")

    host, port = cfg["clusterer.bin_listen"]
    if not cfg["clusterer.secret"] and not _is_loopback(host):
        fail("an empty clusterer.secret is refused while clusterer.bin_listen is not a "
             "loopback address", "clusterer.bin_listen", "clusterer.secret")
    mi_host = cfg["mi.listen"][0]
    if not cfg["mi.token"] and not _is_loopback(mi_host):
        fail("an empty mi.token is refused while mi.listen is not a loopback address",
             "mi.listen", "mi.token")
    open_sip = [h for _, h, _ in cfg["sip.listen"] if not _is_loopback(h)]
    if open_sip and not cfg["auth.enable"] and not cfg["auth.allow_open_registrar"]:
        fail(f"authentication is off while sip.listen has the non-loopback address "
             f"{open_sip[0]}: set auth.enable = yes (and add users with `fastcluster user "
             "add`), or auth.allow_open_registrar = yes on purpose", "sip.listen",
             "auth.enable", "auth.allow_open_registrar")
    if cfg["usrloc.min_expires"] > cfg["usrloc.max_expires"]:
        fail("usrloc.min_expires is greater than usrloc.max_expires", "usrloc.min_expires",
             "usrloc.max_expires")
    ping = cfg.timing("ping_interval_ms")
    timeout = cfg.timing("ping_timeout_ms")
    if timeout < ping:
        fail(f"the ping timeout ({timeout:g} ms) is shorter than the ping interval "
             f"({ping:g} ms): every idle link would be probed", "clusterer.ping_timeout_ms",
             "clusterer.ping_interval_ms", "clusterer.preset")
    if cfg["script.max_message_bytes"] + 4096 > cfg["clusterer.max_frame_bytes"]:
        fail("script.max_message_bytes must leave 4096 bytes of clusterer.max_frame_bytes "
             "for framing", "script.max_message_bytes", "clusterer.max_frame_bytes")
    if cfg["clusterer.sync_packet_size"] > cfg["clusterer.max_frame_bytes"] // 2:
        fail("clusterer.sync_packet_size must be at most half of clusterer.max_frame_bytes",
             "clusterer.sync_packet_size", "clusterer.max_frame_bytes")
    for name in ("usrloc.replication_cluster", "dialog.replication_cluster"):
        cluster = cfg.replication_cluster(name)
        if cluster and cluster not in cfg["clusterer.cluster_id"]:
            fail(f"cluster {cluster} is not one of clusterer.cluster_id", name,
                 "clusterer.cluster_id")
    for name, cluster, _ in cfg.sharing_tags():
        if cluster not in cfg["clusterer.cluster_id"]:
            fail(f"tag {name}: cluster {cluster} is not one of clusterer.cluster_id",
                 "clusterer.sharing_tags", "clusterer.cluster_id")
    tag = cfg["dialog.sharing_tag"]
    dlg_cluster = cfg.replication_cluster("dialog.replication_cluster")
    if tag and (tag, dlg_cluster) not in {(n, c) for n, c, _ in cfg.sharing_tags()}:
        fail(f"{tag!r} is not declared in clusterer.sharing_tags for cluster "
             f"{dlg_cluster} (the dialog replication cluster)", "dialog.sharing_tag",
             "clusterer.sharing_tags")
    profiles = {name for name, _ in cfg["dialog.profiles"]}
    for name, _ in cfg["dialog.profile_limits"]:
        if name not in profiles:
            fail(f"profile {name!r} is not in dialog.profiles", "dialog.profile_limits",
                 "dialog.profiles")
    me = cfg["clusterer.node_id"]
    for node_id, nhost, nport in cfg["clusterer.nodes"]:
        if node_id == me and (nhost, nport) != cfg["clusterer.bin_listen"]:
            fail(f"node {me} (this node) is listed with another address than "
                 "clusterer.bin_listen", "clusterer.nodes", "clusterer.node_id",
                 "clusterer.bin_listen")
    used: dict[tuple[str, int], str] = {}
    endpoints = [("mi.listen", cfg["mi.listen"]), ("clusterer.bin_listen", (host, port))]
    endpoints += [("sip.listen", (h, p)) for _, h, p in cfg["sip.listen"]]
    for name, endpoint in endpoints:
        # SIP is UDP, the others TCP: only a TCP/TCP clash is a real conflict.
        if name != "sip.listen" and endpoint in used:
            fail(f"{name} and {used[endpoint]} are the same address", name, used[endpoint])
        if name != "sip.listen":
            used[endpoint] = name
    module = cfg["script.module"]
    if module and not os.path.isfile(os.path.expanduser(module)):
        fail(f"{os.path.abspath(os.path.expanduser(module))} is not a file",
             "script.module")


def reload(old: Config) -> tuple[Config, list[str], list[str]]:
    """Re-read the same sources. Returns (config to use, applied names, ignored names).

    Settings that cannot change without a restart keep their old value and are listed
    as ignored, so the running node stays consistent with its shared memory.
    """
    fresh = load(old.ini_path, cli=old.cli)
    applied, ignored = [], []
    values = dict(old.values)
    for s in SETTINGS:
        if fresh[s.name] == old[s.name]:
            continue
        if s.reloadable:
            values[s.name] = fresh[s.name]
            applied.append(s.name)
        else:
            ignored.append(s.name)
    kept = {n: old for n in ignored}  # what still runs is described as it was
    texts = {s.name: kept.get(s.name, fresh).texts.get(s.name, "") for s in SETTINGS}
    sources = {s.name: kept.get(s.name, fresh).sources.get(s.name, "default")
               for s in SETTINGS}
    cfg = Config(values=values, sources=sources, ini_path=old.ini_path, cli=old.cli,
                 texts=texts)
    validate(cfg)
    return cfg, applied, ignored


def numba_cache_base(setting: str = "", environ: Mapping[str, str] | None = None) -> str:
    """The one rule for where compiled kernels live, whatever starts the node (the
    console script, scripts/run, the demo, the tests): core.numba_cache_dir, else
    $NUMBA_CACHE_DIR, else $XDG_CACHE_HOME/fastcluster/numba (~/.cache/...); the
    kernels go in a subfolder per version of their sources (kernel_cache_dir)."""
    env = os.environ if environ is None else environ
    if setting:
        return os.path.expanduser(setting)
    if env.get("NUMBA_CACHE_DIR"):
        return env["NUMBA_CACHE_DIR"]
    cache = env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "fastcluster", "numba")


def kernel_fingerprint() -> str:
    """Hash of every kernel module's source (the shm package).

    Numba invalidates a cached function only when its own file changes, but kernels
    inline helpers from other modules: a change there would leave stale machine code.
    Keying the cache directory on all kernel sources closes that gap.
    """
    spec = importlib.util.find_spec("fastcluster.shm")
    locations = list(spec.submodule_search_locations or []) if spec else []
    digest = hashlib.sha256()
    for folder in locations:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as fh:
                    digest.update(name.encode() + b"\0" + fh.read())
    return "k" + digest.hexdigest()[:16]


def kernel_cache_dir(base: str) -> str:
    """base/<kernel fingerprint> (unchanged if base already is one)."""
    fingerprint = kernel_fingerprint()
    if os.path.basename(os.path.normpath(base)) == fingerprint:
        return base
    return os.path.join(base, fingerprint)


def render_reference() -> str:
    """docs/settings.md, generated from SETTINGS (a test fails when the file is stale)."""
    lines = [
        "# Settings reference",
        "",
        "Generated from `core/settings.py` by `fastcluster settings-doc`; do not edit.",
        "",
        "Load order: embedded defaults, INI file (`-c FILE`), environment "
        "(`FASTCLUSTER_SECTION_KEY`), command line (`--section-key VALUE`). "
        "Settings marked *reload* are applied on SIGHUP; the others need a restart.",
        "",
    ]
    for section in SECTIONS:
        lines += [f"## [{section}]", "", "| key | type | default | unit | reload | meaning |",
                  "|---|---|---|---|---|---|"]
        for s in SETTINGS:
            if s.section != section:
                continue
            default = f"`{s.default}`" if s.default else "(empty)"
            flags = f"`{s.flag}`" + (f", `{s.short}`" if s.short else "")
            lines.append(f"| `{s.key}` ({flags}, `{s.env}`) | {s.type_doc} | {default} "
                         f"| {s.unit} | {'reload' if s.reloadable else ''} | {s.doc} |")
        lines.append("")
    lines += ["## Timing presets", "", "| preset | ping_interval_ms | ping_timeout_ms | "
              "node_timeout_s |", "|---|---|---|---|"]
    for name, p in PRESETS.items():
        lines.append(f"| {name} | {p['ping_interval_ms']:g} | {p['ping_timeout_ms']:g} | "
                     f"{p['node_timeout_s']:g} |")
    lines.append("")
    return "\n".join(lines)


def render_ini_sample() -> str:
    """fastcluster.ini.sample, generated from SETTINGS: every key commented out at its
    default, with its doc, type, unit and other names (a test fails when it is stale)."""
    import textwrap

    out = [
        "# fastcluster configuration: every setting at its default, commented out.",
        "# Generated from core/settings.py by `fastcluster ini-sample`; do not edit this "
        "copy.",
        "# Copy it (e.g. to /etc/fastcluster/fastcluster.ini), uncomment what you change, "
        "and",
        "# check it with `fastcluster check-config -c FILE`. Load order: these defaults, "
        "this",
        "# file, the environment (FASTCLUSTER_SECTION_KEY), the command line "
        "(--section-key).",
        "# Settings marked 'reloaded on SIGHUP' apply without a restart "
        "(systemctl reload).",
        "",
    ]
    for section in SECTIONS:
        out += [f"[{section}]", ""]
        for s in SETTINGS:
            if s.section != section:
                continue
            facts = [f"Type: {s.type_doc}."]
            if s.unit:
                facts.append(f"Unit: {s.unit}.")
            if s.reloadable:
                facts.append("Reloaded on SIGHUP.")
            facts.append(f"Also {s.flag}" + (f" / {s.short}" if s.short else "") +
                         f", ${s.env}.")
            text = s.doc + " " + " ".join(facts)
            out += textwrap.wrap(text, 86, initial_indent="# ", subsequent_indent="# ",
                                 break_on_hyphens=False)
            out += [f";{s.key} = {s.default}".rstrip(), ""]
    return "\n".join(out)
