"""Every setting of a node, declared once.

Each `Setting` carries its INI section and key, type, validator, default, unit and doc.
The argparse options (`fastcluster --help`), the INI schema, the environment names and the
generated reference in docs/settings.md are all derived from `SETTINGS` by core.config.
Neighbours: core.config (loading, validation, reload), core.cli (command line).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable

Parser = Callable[[str], Any]


class SettingValueError(ValueError):
    """A value that does not parse or validate; the message is the reason shown to users."""


# ---------------------------------------------------------------- value parsers


def _int_range(lo: int, hi: int) -> Parser:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise SettingValueError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise SettingValueError(f"{value} is outside {lo}..{hi}")
        return value

    parse.__doc__ = f"integer {lo}..{hi}"
    return parse


def _float_range(lo: float, hi: float) -> Parser:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise SettingValueError(f"{text!r} is not a number") from None
        if not lo <= value <= hi:
            raise SettingValueError(f"{value:g} is outside {lo:g}..{hi:g}")
        return value

    parse.__doc__ = f"number {lo:g}..{hi:g}"
    return parse


def _choice(*options: str) -> Parser:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise SettingValueError(f"{text!r} is not one of {', '.join(options)}")
        return value

    parse.__doc__ = "one of " + ", ".join(options)
    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise SettingValueError(f"{text!r} is not a boolean (yes/no, true/false, on/off, 1/0)")


_bool.__doc__ = "boolean"


def _text(text: str) -> str:
    return text.strip()


_text.__doc__ = "text"


def _host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, IPv6 hosts in brackets ([::1]:5555)."""
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise SettingValueError(f"{text!r} is not [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise SettingValueError(f"{text!r} is not HOST:PORT")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise SettingValueError(f"{host!r} is not an IP address") from None
    port = _int_range(1, 65535)(port_text) if port_text.strip().isdigit() else None
    if port is None:
        raise SettingValueError(f"{port_text!r} is not a port number")
    return host, port


_host_port.__doc__ = "HOST:PORT"


def _host_port_list(text: str) -> tuple[tuple[str, int], ...]:
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    return tuple(_host_port(item) for item in items)


_host_port_list.__doc__ = "comma-separated HOST:PORT (may be empty)"


def _sip_listen(text: str) -> tuple[tuple[str, str, int], ...]:
    """udp:HOST:PORT[, ...] -> ((proto, host, port), ...)."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        proto, sep, rest = item.partition(":")
        if not sep or proto.lower() != "udp":
            raise SettingValueError(f"{item!r} is not udp:HOST:PORT (only UDP is supported)")
        host, port = _host_port(rest)
        out.append(("udp", host, port))
    if not out:
        raise SettingValueError("at least one udp:HOST:PORT is needed")
    if len(set(out)) != len(out):
        raise SettingValueError("the same listener is given twice")
    return tuple(out)


_sip_listen.__doc__ = "comma-separated udp:HOST:PORT"


def _domain_list(text: str) -> tuple[str, ...]:
    out = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        if not all(c.isalnum() or c in ".-_:[]" for c in item):
            raise SettingValueError(f"{item!r} is not a domain name or address")
        out.append(item)
    return tuple(dict.fromkeys(out))


_domain_list.__doc__ = "comma-separated domain names (may be empty)"


def _static_nodes(text: str) -> tuple[tuple[int, str, int], ...]:
    """ID@HOST:PORT[, ...]: nodes provisioned in the INI (OpenSIPS db_mode=1 style)."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        ident, sep, addr = item.partition("@")
        if not sep:
            raise SettingValueError(f"{item!r} is not ID@HOST:PORT")
        node_id = _int_range(1, 65535)(ident)
        host, port = _host_port(addr)
        out.append((node_id, host, port))
    ids = [n[0] for n in out]
    if len(set(ids)) != len(ids):
        raise SettingValueError("a node id is listed twice")
    return tuple(out)


_static_nodes.__doc__ = "comma-separated ID@HOST:PORT (may be empty)"


def _cluster_ids(text: str) -> tuple[int, ...]:
    ids = tuple(_int_range(1, 65535)(part) for part in text.split(",") if part.strip())
    if not ids:
        raise SettingValueError("at least one cluster id is needed")
    if len(set(ids)) != len(ids):
        raise SettingValueError("a cluster id is listed twice")
    return ids


_cluster_ids.__doc__ = "comma-separated cluster ids 1..65535"


def _cluster_or_auto(text: str) -> int:
    value = text.strip().lower()
    if value == "auto":
        return -1
    return _int_range(0, 65535)(value)


_cluster_or_auto.__doc__ = "auto, 0 or a cluster id"


def _power_of_two_at_least(lo: int, hi: int) -> Parser:
    base = _int_range(lo, hi)

    def parse(text: str) -> int:
        value = base(text)
        if value & (value - 1):
            raise SettingValueError(f"{value} is not a power of two")
        return value

    parse.__doc__ = f"power of two {lo}..{hi}"
    return parse


def _syslog_address(text: str) -> str:
    """/path/of/unix/socket or HOST:PORT (UDP)."""
    value = text.strip()
    if not value.startswith("/"):
        _host_port(value)
    return value


_syslog_address.__doc__ = "socket path or HOST:PORT"


_HOSTNAME_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9\-_]*[a-z0-9])?")


def _domain_list(text: str) -> tuple[str, ...]:
    """Comma-separated domains (host names or IP addresses), lower-cased."""
    out = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        host = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            labels = item.rstrip(".").split(".")
            if not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
                raise SettingValueError(f"{item!r} is not a domain name or IP address") \
                    from None
        else:
            item = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
        if item in out:
            raise SettingValueError(f"{item!r} is listed twice")
        out.append(item)
    return tuple(out)


_domain_list.__doc__ = "comma-separated domains (may be empty)"

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
SHTAG_STATES = ("active", "backup")


def _sharing_tags(text: str) -> tuple[tuple[str, int, str], ...]:
    """NAME[/CLUSTER]=active|backup[, ...] -> ((name, cluster or 0: the first of
    clusterer.cluster_id, state), ...)."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        tag, sep, state = item.partition("=")
        name, slash, cluster_text = tag.strip().partition("/")
        state = state.strip().lower()
        if not sep or state not in SHTAG_STATES:
            raise SettingValueError(f"{item!r} is not NAME[/CLUSTER]=active|backup")
        if not _NAME.fullmatch(name):
            raise SettingValueError(f"{name!r} is not a tag name (1-32 of A-Z a-z 0-9 _ . -)")
        cluster = _int_range(1, 65535)(cluster_text) if slash else 0
        if any(n == name and c == cluster for n, c, _ in out):
            raise SettingValueError(f"sharing tag {tag.strip()!r} is listed twice")
        out.append((name, cluster, state))
    return tuple(out)


_sharing_tags.__doc__ = "comma-separated NAME[/CLUSTER]=active|backup (may be empty)"

# What a profile's value can be taken from (services.sip.dialog_rules reads them).
PROFILE_FIELDS = ("from_user", "from_domain", "from_uri", "to_user", "to_domain", "to_uri",
                  "ruri_user", "ruri_domain", "source_ip")


def _profile_rules(text: str) -> tuple[tuple[str, str], ...]:
    """NAME[=FIELD][, ...] -> ((name, field or ""), ...)."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, field_name = (x.strip() for x in item.partition("="))
        if not _NAME.fullmatch(name) or "/" in name:
            raise SettingValueError(f"{name!r} is not a profile name (1-32 of A-Z a-z 0-9 "
                                    "_ . -)")
        if sep and field_name not in PROFILE_FIELDS:
            raise SettingValueError(f"{field_name!r} is not one of {', '.join(PROFILE_FIELDS)}")
        if any(n == name for n, _ in out):
            raise SettingValueError(f"profile {name!r} is listed twice")
        out.append((name, field_name))
    return tuple(out)


_profile_rules.__doc__ = ("comma-separated NAME or NAME=FIELD, FIELD one of "
                          + ", ".join(PROFILE_FIELDS) + " (may be empty)")


def _profile_limits(text: str) -> tuple[tuple[str, int], ...]:
    """NAME=MAX[, ...] -> ((name, max), ...)."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, limit = (x.strip() for x in item.partition("="))
        if not sep or not _NAME.fullmatch(name):
            raise SettingValueError(f"{item!r} is not NAME=MAX")
        if any(n == name for n, _ in out):
            raise SettingValueError(f"profile {name!r} has two limits")
        out.append((name, _int_range(0, 1 << 31)(limit)))
    return tuple(out)


_profile_limits.__doc__ = "comma-separated NAME=MAX (may be empty)"

DIGEST_ALGORITHMS = ("SHA-256", "MD5")  # RFC 8760 names, strongest first


def _algorithms(text: str) -> tuple[str, ...]:
    out = []
    for item in (part.strip().upper() for part in text.split(",")):
        if not item:
            continue
        if item not in DIGEST_ALGORITHMS:
            raise SettingValueError(f"{item!r} is not one of {', '.join(DIGEST_ALGORITHMS)}")
        if item in out:
            raise SettingValueError(f"{item!r} is listed twice")
        out.append(item)
    if not out:
        raise SettingValueError("at least one algorithm is needed")
    return tuple(out)


_algorithms.__doc__ = "comma-separated digest algorithms: " + ", ".join(DIGEST_ALGORITHMS)


# ---------------------------------------------------------------- declaration


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    parse: Parser
    default: str  # as text: goes through `parse` like any other source
    doc: str
    unit: str = ""
    reloadable: bool = False  # applied on SIGHUP without a restart
    short: str | None = None  # extra short CLI flag, e.g. "-w"
    secret: bool = False  # never printed (check-config, MI)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def flag(self) -> str:
        return f"--{self.section}-{self.key}".replace("_", "-")

    @property
    def env(self) -> str:
        return f"FASTCLUSTER_{self.section}_{self.key}".upper()

    @property
    def type_doc(self) -> str:
        return (self.parse.__doc__ or "").strip().splitlines()[0]


S = Setting

# Timing presets (memberlist-style): LAN is the default, WAN tolerates slow links,
# LOCAL is for nodes on one machine. Values: ping_interval_ms, ping_timeout_ms,
# node_timeout_s. Detection of a silent node takes about ping_timeout_ms (silence)
# + ping_timeout_ms (indirect probes); a closed connection is seen at once.
PRESETS: dict[str, dict[str, float]] = {
    "lan": {"ping_interval_ms": 100, "ping_timeout_ms": 300, "node_timeout_s": 2.0},
    "wan": {"ping_interval_ms": 500, "ping_timeout_ms": 1500, "node_timeout_s": 10.0},
    "local": {"ping_interval_ms": 50, "ping_timeout_ms": 150, "node_timeout_s": 1.0},
}


def _from_preset(key: str) -> str:
    """'0: from the preset; lan 100, wan 500, local 50' for a timing setting."""
    return "0: from the preset; " + ", ".join(f"{name} {values[key]:g}"
                                              for name, values in PRESETS.items())


SETTINGS: tuple[Setting, ...] = (
    # -- core
    S("core", "workers", _int_range(1, 256), "8",
      "SIP worker processes forked by the master.", short="-w"),
    S("core", "log_level", _choice("debug", "info", "warning", "error"), "info",
      "Lowest level of log lines written.", reloadable=True),
    S("core", "log_format", _choice("text", "json"), "text",
      "text: `DATE TIME node=ID PROC[PID] LEVEL LOGGER: message`; json: one object per "
      "line (ts, level, node, proc, pid, logger, msg, exc) for log shippers."),
    S("core", "log_target", _choice("stderr", "syslog"), "stderr",
      "Where log lines go: stderr (under systemd: the journal) or syslog "
      "(core.syslog_address, ident fastcluster)."),
    S("core", "syslog_address", _syslog_address, "/dev/log",
      "Syslog socket when core.log_target = syslog: the path of a unix datagram socket, "
      "or HOST:PORT for UDP."),
    S("core", "syslog_facility", _choice("daemon", "user", "local0", "local1", "local2",
                                          "local3", "local4", "local5", "local6",
                                          "local7"), "daemon",
      "Syslog facility of the log lines."),
    S("core", "instance", _text, "",
      "Name of this node instance on this machine: it prefixes the shared-memory names "
      "(/dev/shm/fastcluster.INSTANCE.*) and the lock file. Empty means 'n<node_id>'."),
    S("core", "run_dir", _text, "",
      "Folder of the per-instance lock file. Empty means $XDG_RUNTIME_DIR/fastcluster, "
      "else /tmp/fastcluster-<uid>."),
    S("core", "numba_cache_dir", _text, "",
      "Where compiled numba kernels are cached, in a subfolder per version of the kernel "
      "sources. Empty means $NUMBA_CACHE_DIR if set, else "
      "$XDG_CACHE_HOME/fastcluster/numba (~/.cache/fastcluster/numba): the same cache "
      "whether the node is started by the console script, scripts/run, the demo or the "
      "tests."),
    S("core", "data_dir", _text, "",
      "Folder of this instance's state that outlives a restart (known cluster members, "
      "the subscriber database, the persistence database). Empty means /var/lib/fastcluster/<instance> for root, "
      "else $XDG_STATE_HOME/fastcluster/<instance> (~/.local/state/...)."),
    S("core", "shm_prefault", _choice("start", "background", "no"), "start",
      "Commit the shared tables' memory up front, so no request or sync pays first-touch "
      "page faults (2-13 us per 4 KiB page on the VMs measured: a fresh 1M-contact sync "
      "took 1.7 s instead of 0.65 s): start = before the children start (about 0.3-0.6 s "
      "per GB at start); background = a master thread after they start; no = pages are "
      "allocated as rows first land on them."),
    S("core", "child_timeout_s", _float_range(0.5, 3600), "10",
      "Heartbeat age after which a child process is considered stuck and is stopped "
      "(SIGTERM, then SIGKILL after core.graceful_timeout_s) and respawned.", unit="s",
      reloadable=True),
    S("core", "graceful_timeout_s", _float_range(0.1, 60), "3",
      "How long a stopping child may take before SIGKILL.", unit="s", reloadable=True),
    S("core", "respawn_backoff_max_s", _float_range(0.1, 600), "10",
      "Upper bound of the delay before respawning a child that keeps crashing "
      "(doubles from 0.1 s at each crash within a minute).", unit="s", reloadable=True),
    # -- sip
    S("sip", "listen", _sip_listen, "udp:127.0.0.1:5060",
      "SIP listeners, each served by every worker."),
    S("sip", "dispatch", _choice("shared", "reuseport"), "shared",
      "How datagrams reach the workers: one socket shared by all workers (even spread), "
      "or one SO_REUSEPORT socket per worker (kernel hashes by source address). See "
      "docs/transport.md for the measurements."),
    S("sip", "rcvbuf_bytes", _int_range(0, 1 << 30), "8388608",
      "SO_RCVBUF asked for each SIP socket (0 keeps the system default).", unit="bytes"),
    S("sip", "time_slice_us", _int_range(0, 100_000), "100",
      "Time slice the SIP workers ask of the scheduler (Linux 6.12+, EEVDF; the kernel "
      "grants 100 us at least): with a slice shorter than the other tasks', a worker "
      "woken by a datagram takes the CPU at once instead of waiting for the running "
      "task's slice to end (one REGISTER at a time: p50 round trip 25-36 us against "
      "34-46 us with the kernel's default, docs/transport.md). 0 keeps the default.",
      unit="us"),
    S("sip", "server_header", _text, "",
      "Value of a Server header added to replies (empty: none)."),
    S("sip", "domains", _domain_list, "",
      "Domains this node serves: a REGISTER for another one is refused (404; 403 when "
      "its Request-URI names another domain, unless it is an IP address: an edge proxy "
      "addressing this node), requests for them are routed to their registered contacts "
      "(location lookup), others are relayed only with proxy.relay_foreign. Empty: every "
      "domain is served."),
    # -- mi
    S("mi", "listen", _host_port, "127.0.0.1:8888",
      "HOST:PORT of the MI HTTP server (JSON-RPC 2.0 at POST /mi)."),
    S("mi", "token", _text, "",
      "Access token the MI requires as `Authorization: Bearer TOKEN` (`fastcluster mi` "
      "sends it from --mi-token, $FASTCLUSTER_MI_TOKEN or -c FILE). Empty is allowed only "
      "while mi.listen is a loopback address; otherwise the node refuses to start.",
      secret=True),
    # -- auth
    S("auth", "enable", _bool, "no",
      "Digest authentication (RFC 3261 §22, RFC 8760) of REGISTER against the subscriber "
      "database. Off is allowed only while every sip.listen address is a loopback one, "
      "or with auth.allow_open_registrar = yes."),
    S("auth", "allow_open_registrar", _bool, "no",
      "Let a node listening for SIP on a non-loopback address run without "
      "authentication: anyone may then register or remove any AOR."),
    S("auth", "realm", _text, "",
      "Realm of the challenges, and of the HA1 hashes `fastcluster user` stores. Empty: "
      "the domain of the AOR (the To host), as OpenSIPS does.", reloadable=True),
    S("auth", "algorithms", _algorithms, "SHA-256, MD5",
      "Digest algorithms offered, one WWW-Authenticate each, preferred first (RFC 8760 "
      "§2.4; MD5 for older phones).", reloadable=True),
    S("auth", "nonce_expiry_s", _int_range(5, 86400), "300",
      "Life of a nonce: answers to an older one get a new challenge with stale=true. "
      "Within it the nonce may be reused with an increasing nonce count.", unit="s",
      reloadable=True),
    S("auth", "max_failures", _int_range(0, 100), "2",
      "Wrong answers to challenges in a row that get a new challenge; the next one is "
      "answered 403 (the count travels in the nonce, so it holds across nodes).",
      reloadable=True),
    S("auth", "db_path", _text, "",
      "SQLite subscriber database (table subscriber: username, domain, ha1, ha1_sha256, "
      "as OpenSIPS). Empty: <core.data_dir>/subscriber.sqlite."),
    S("auth", "secret", _text, "",
      "Key of the nonces (HMAC-SHA-256): nodes sharing it accept each other's nonces, so "
      "a phone challenged by one node may answer another. Empty: derived from "
      "clusterer.secret; if that is empty too, a random key per run (nonces then hold "
      "only on this node).", secret=True),
    S("auth", "cache_entries", _int_range(0, 10_000_000), "65536",
      "Credentials each SIP worker keeps in memory (LRU, unknown users included), so a "
      "REGISTER reads SQLite only on a miss; dropped when the database changes."),
    S("auth", "nonce_slots", _power_of_two_at_least(1024, 1 << 28), "1048576",
      "Slots of the shared table that remembers the nonce counts seen (replay "
      "protection), 8 bytes each. A nonce that finds both its buckets full is "
      "challenged again (counted: auth:nonce_table_full)."),
    # -- clusterer
    S("clusterer", "node_id", _int_range(1, 65535), "1",
      "This node's id, unique in its clusters."),
    S("clusterer", "cluster_id", _cluster_ids, "1",
      "Cluster(s) this node belongs to (comma-separated for several)."),
    S("clusterer", "bin_listen", _host_port, "127.0.0.1:5555",
      "HOST:PORT where other nodes connect to this one."),
    S("clusterer", "seeds", _host_port_list, "",
      "Nodes to join through (any existing member)."),
    S("clusterer", "nodes", _static_nodes, "",
      "Statically provisioned members, as ID@HOST:PORT (OpenSIPS db_mode=1 style)."),
    S("clusterer", "secret", _text, "",
      "Shared secret authenticating every link (HMAC challenge-response). Empty is "
      "allowed only while bin_listen is a loopback address.", secret=True),
    S("clusterer", "preset", _choice(*PRESETS), "lan",
      "Timing preset; ping_interval_ms, ping_timeout_ms and node_timeout_s given "
      "explicitly override it."),
    S("clusterer", "ping_interval_ms", _int_range(0, 600_000), "0",
      f"Ping period on an idle link ({_from_preset('ping_interval_ms')}).",
      unit="ms", reloadable=True),
    S("clusterer", "ping_timeout_ms", _int_range(0, 600_000), "0",
      "Silence after which a link is probed, and wait for each probe answer "
      f"({_from_preset('ping_timeout_ms')}).", unit="ms", reloadable=True),
    S("clusterer", "node_timeout_s", _float_range(0, 3600), "0",
      f"Retry period of a node that is Down ({_from_preset('node_timeout_s')}).",
      unit="s", reloadable=True),
    S("clusterer", "seed", _choice("auto", "yes", "no"), "auto",
      "A seed falls back to 'synced with its own data' when no donor shows up within "
      "seed_fallback_interval_s; others wait for a donor. auto: a node with no seeds "
      "configured (it starts a cluster) is a seed."),
    S("clusterer", "repl_interval_ms", _int_range(1, 1000), "5",
      "How often the cluster process collects the workers' changes and sends them: "
      "about the most a change waits before it leaves. Each batch costs both ends a "
      "fixed amount of CPU, so under load a shorter interval buys less lag with more "
      "CPU (2 nodes proxying 5,400 calls/s: 2 ms cost 38-42 us of cluster-process CPU "
      "per call, 5 ms 26 us; a dialog change's lag at 1,000 calls/s: p99 3.1 ms against "
      "6.2 ms).",
      unit="ms"),
    S("clusterer", "sync_packet_size", _int_range(4096, 64 << 20), "1048576",
      "Most bytes of table data in one sync chunk.", unit="bytes"),
    S("clusterer", "sync_window", _int_range(1, 64), "4",
      "Sync chunks in flight before the donor waits for an acknowledgement.",
      unit="chunks"),
    S("clusterer", "sync_timeout_s", _float_range(0.1, 3600), "3",
      "A sync that makes no progress for this long switches donor and resumes.", unit="s"),
    S("clusterer", "seed_fallback_interval_s", _float_range(0, 3600), "5",
      "With no synced donor in sight for this long, a seed node declares its own data "
      "synced.", unit="s"),
    S("clusterer", "tombstone_max_s", _int_range(60, 30 * 86400), "3600",
      "Longest a tombstone is kept when some member never acknowledged it (a node down "
      "or cut off); a node away longer than this does a mirror sync when it returns "
      "(it drops what the cluster deleted meanwhile instead of merging it back).",
      unit="s"),
    S("clusterer", "max_clock_skew_ms", _int_range(10, 3_600_000), "1000",
      "Clock difference with another node above which it is logged, counted "
      "(clusterer:clock_skew_warnings) and shown in clusterer_list. Versions of "
      "records are hybrid clocks: a node whose clock is ahead wins conflicts it should "
      "lose.", unit="ms", reloadable=True),
    S("clusterer", "sharing_tags", _sharing_tags, "",
      "Sharing tags this node declares, each active on at most one node of its cluster "
      "at a time: NAME[/CLUSTER]=active|backup (CLUSTER: the first of cluster_id). "
      "`active` is a preference: the node takes the tag at start if no other node holds "
      "it. See shtag_takeover."),
    S("clusterer", "shtag_takeover", _choice("auto", "manual"), "auto",
      "auto: when a tag's active node goes down, one Up node that declares the tag takes "
      "it over, chosen the same way on every node, and only on the side of a partition "
      "that sees a majority of the nodes declaring the tag (an active node that loses "
      "that majority steps down); every activation carries an epoch, the higher wins. "
      "manual: tags change only by clusterer_shtag_set_active (OpenSIPS's way, with "
      "keepalived or an operator)."),
    S("clusterer", "repl_ring_bytes", _power_of_two_at_least(65536, 1 << 30), "4194304",
      "Replication ring of each process: changes waiting for the cluster process. When "
      "full, changes are not lost: the gap is recorded, counted and re-sent from the "
      "table.", unit="bytes"),
    S("clusterer", "max_frame_bytes", _int_range(65536, 256 << 20), "67108864",
      "Largest frame accepted on a cluster link.", unit="bytes"),
    # -- usrloc
    S("usrloc", "capacity", _int_range(16, 200_000_000), "1000000",
      "Contacts the shared table can hold (the table has capacity/0.9 slots; memory is "
      "touched only when used)."),
    S("usrloc", "record_bytes", _int_range(64, 8192), "256",
      "Bytes for the strings of one contact together (AOR, URI, Call-ID, User-Agent, "
      "Path, +sip.instance). A contact whose strings do not fit is refused with 500.",
      unit="bytes"),
    S("usrloc", "min_expires", _int_range(0, 1 << 30), "60",
      "Shorter registrations are refused with 423 and Min-Expires.", unit="s",
      reloadable=True),
    S("usrloc", "max_expires", _int_range(1, 1 << 30), "3600",
      "Longer registrations are clamped to this.", unit="s", reloadable=True),
    S("usrloc", "default_expires", _int_range(1, 1 << 30), "3600",
      "Expiry of a contact with neither an expires parameter nor an Expires header.",
      unit="s", reloadable=True),
    S("usrloc", "max_contacts", _int_range(0, 1000), "10",
      "Most contacts per AOR; more are refused with 403 (0: no limit).", reloadable=True),
    S("usrloc", "tombstone_ttl_s", _int_range(1, 86400), "120",
      "Least time a removed contact is kept as a tombstone; it goes once every member "
      "has it (or after clusterer.tombstone_max_s), so late replicas cannot revive it.",
      unit="s"),
    S("usrloc", "replication_cluster", _cluster_or_auto, "auto",
      "Cluster that replicates contacts (capability usrloc-contact-repl); auto: the first "
      "of clusterer.cluster_id; 0: none."),
    S("usrloc", "natping_interval_s", _int_range(0, 3600), "30",
      "Every NAT-ed contact is pinged once per interval by its partition's owner "
      "(0: no pinging).", unit="s", reloadable=True),
    S("usrloc", "natping_targets", _choice("nat", "all"), "nat",
      "Which contacts are NAT-pinged: those flagged NAT at REGISTER, or all.",
      reloadable=True),
    S("usrloc", "natping_method", _choice("options", "keepalive"), "options",
      "SIP OPTIONS (replies are counted and can remove dead contacts) or a CRLF CRLF "
      "keep-alive datagram.", reloadable=True),
    S("usrloc", "natping_from", _text, "sip:natping@fastcluster.invalid",
      "From URI of the OPTIONS pings.", reloadable=True),
    S("usrloc", "max_pings_lost", _int_range(0, 1000), "0",
      "Remove a contact (replicated) after this many OPTIONS pings in a row got no "
      "reply (0: never).", reloadable=True),
    S("usrloc", "ping_partitions", _power_of_two_at_least(4096, 65536), "4096",
      "Partitions the contacts are hashed into (by AOR) for NAT pinging; each partition "
      "is pinged by one node. Must be the same on every node: a link to a node with "
      "another value is refused."),
    # -- proxy
    S("proxy", "transactions", _int_range(16, 50_000_000), "200000",
      "Transactions the shared table can hold (one row per proxied request: its server "
      "transaction and its branches). At 64*T1 of linger after the final response, a "
      "node proxying R calls/s holds about 2 * R * 64 * T1 of them (640k at 10k "
      "calls/s with the default T1). A full table answers 503 and counts "
      "tm:refused_table_full. Each takes proxy.record_bytes + 344 bytes (README)."),
    S("proxy", "record_bytes", _int_range(512, 32768), "2048",
      "Bytes for the strings of one transaction together: its identity, the request as "
      "received, the targets, and the last response. A request that does not fit is "
      "refused with 513 (tm:refused_too_long); a response that does not fit is still "
      "forwarded, only not kept for retransmissions.", unit="bytes"),
    S("proxy", "invite_timeout_s", _int_range(1, 86400), "180",
      "Timer C (RFC 3261 §16.8): an INVITE branch without a final response for this long "
      "(restarted by each provisional response) is cancelled and answered 408.",
      unit="s", reloadable=True),
    S("proxy", "relay_foreign", _bool, "no",
      "Relay requests for domains not in sip.domains to their Request-URI host (RFC 3263: "
      "SRV, then A/AAAA); no: refuse them with 403."),
    S("proxy", "forking", _choice("parallel", "serial"), "parallel",
      "How the contacts of an AOR are tried: all at once, or in groups of equal q value, "
      "highest q first, the next group when every branch of a group failed.",
      reloadable=True),
    S("proxy", "t1_ms", _int_range(10, 10000), "500",
      "RFC 3261 T1 (round-trip estimate): retransmissions start at T1 and transactions "
      "linger 64*T1 after their final response.", unit="ms", reloadable=True),
    S("proxy", "t2_ms", _int_range(10, 60000), "4000",
      "RFC 3261 T2: longest retransmission interval of non-INVITE requests and of final "
      "responses.", unit="ms", reloadable=True),
    S("proxy", "t4_ms", _int_range(10, 60000), "5000",
      "RFC 3261 T4: how long a message may stay in the network (Timers I and K).",
      unit="ms", reloadable=True),
    # -- dialog
    S("dialog", "capacity", _int_range(16, 50_000_000), "100000",
      "Dialogs the shared table can hold: the live ones and those ended in the last "
      "dialog.tombstone_ttl_s (at least). Size it to concurrent calls + calls/s x "
      "dialog.tombstone_ttl_s with room to spare; a full table refuses new calls 503."),
    S("dialog", "record_bytes", _int_range(128, 16384), "512",
      "Bytes for the strings of one dialog together.", unit="bytes"),
    S("dialog", "replication_cluster", _cluster_or_auto, "auto",
      "Cluster that replicates dialogs (capability dialog-dlg-repl); auto: the first of "
      "clusterer.cluster_id; 0: none."),
    S("dialog", "tombstone_ttl_s", _int_range(1, 86400), "32",
      "Least time an ended dialog is kept as a tombstone, and until every member holds "
      "it (see usrloc.tombstone_ttl_s): 32 s outlasts an INVITE retransmitted after its "
      "call ended (64 x T1). Each call/s costs this many slots of dialog.capacity.",
      unit="s"),
    S("dialog", "track", _choice("all", "none"), "all",
      "Which initial INVITEs the proxy creates a dialog for: all (or those dialog."
      "track_domains names), or none (no dialog tracking: no profiles, limits, "
      "lifetimes, and in-dialog requests cannot be taken over from a dead node).",
      reloadable=True),
    S("dialog", "track_domains", _domain_list, "",
      "With track = all, only INVITEs whose Request-URI domain is one of these get a "
      "dialog (empty: every INVITE).", reloadable=True),
    S("dialog", "default_timeout_s", _int_range(10, 30 * 86400), "43200",
      "Lifetime of a confirmed dialog: when it ends, the node running the dialog's "
      "timers (its sharing tag's active node) sends a BYE to each leg.", unit="s",
      reloadable=True),
    S("dialog", "ping_interval_s", _int_range(0, 86400), "0",
      "In-dialog OPTIONS pings to both legs of every confirmed dialog, from the node "
      "running its timers, this often; a leg that does not answer by the next ping, or "
      "answers 481, ends the dialog (BYEs to both legs). 0: no pings.", unit="s",
      reloadable=True),
    S("dialog", "sharing_tag", _text, "",
      "Sharing tag every dialog created here carries (one of clusterer.sharing_tags of "
      "the dialog replication cluster): only the node where it is active runs the "
      "dialog's timers and counts it in profiles. Empty: the first of "
      "clusterer.sharing_tags in that cluster; with no tags, dialogs carry none and the "
      "node that created each one runs its timers."),
    S("dialog", "profiles", _profile_rules, "",
      "Profiles every tracked dialog is put in: NAME (no value) or NAME=FIELD (the "
      "value taken from the INVITE), e.g. `calls, calls_per_user=from_user`. Counts are "
      "cluster-wide (capability dialog-prof-repl)."),
    S("dialog", "profile_limits", _profile_limits, "",
      "Most dialogs a profile may hold cluster-wide (per value, for a profile with "
      "values), e.g. `calls_per_user=2`: an INVITE that would go beyond is answered 403 "
      "Too Many Calls (dialog:profile_refused).", reloadable=True),
    S("dialog", "profile_values", _int_range(16, 10_000_000), "65536",
      "Distinct profile values (per sharing tag) the shared counters hold; values "
      "nobody is in any more are reclaimed at the next recount. A value beyond is not "
      "counted (dialog:profile_values_refused, logged): in a profile with a limit the "
      "INVITE is refused 503 (fail closed), in one without it is admitted uncounted."),
    S("dialog", "profile_expiry_s", _float_range(0.5, 3600), "10",
      "Counts another node reported are dropped when it has not refreshed them for this "
      "long (it went away); a sharing tag's counts are taken only from the tag's active "
      "node.", unit="s", reloadable=True),
    # -- persistence
    S("persistence", "url", _text, "",
      "Where the contacts and dialogs are kept across restarts (write-behind, never on "
      "the SIP path): empty = SQLite in core.data_dir (tables.sqlite); sqlite:///PATH; "
      "postgresql://USER:PASSWORD@HOST:PORT/DB (psycopg 3); off = nowhere (a whole-"
      "cluster restart then loses everything)."),
    S("persistence", "flush_interval_ms", _int_range(10, 60_000), "200",
      "Most time between two flushes of changed rows: what a power cut (or a kill -9 "
      "of the master after which the shared memory is gone too) loses at most.",
      unit="ms"),
    # -- script
    S("script", "module", _text, "",
      "Path of the user's Python script (empty: none). It runs in its own process; see "
      "docs/scripting.md for its hooks and API."),
    S("script", "hook_timeout_s", _float_range(0.01, 3600), "2",
      "A script hook still running after this long is abandoned: the events after it "
      "go to a fresh hook thread (the stuck one is logged and counted).", unit="s",
      reloadable=True),
    S("script", "mi_timeout_s", _float_range(0.01, 3600), "5",
      "How long an MI command defined by the script may take before the MI answers "
      "with a timeout error.", unit="s", reloadable=True),
    S("script", "max_message_bytes", _int_range(16, 16 << 20), "65536",
      "Largest cluster message a script may send (msgpack-encoded size); larger ones "
      "are refused with MessageTooLarge.", unit="bytes"),
    S("script", "queue_bytes", _int_range(1 << 16, 1 << 30), "16777216",
      "Messages for the script that may wait, in the cluster process, while the script "
      "is busy or restarting; beyond it new ones are dropped and counted "
      "(script:dropped_msgs), so a slow script never holds up the cluster.",
      unit="bytes"),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS))
