"""The `fastcluster` command: run a node, a demo cluster, check a config, call the MI,
print references.

Options are derived from core.settings. Exit codes: 0 ok, 1 runtime failure, 2 bad
configuration or usage (nothing started), 3 a child failed at boot. Heavy imports (numba)
happen only after the configuration is valid, with NUMBA_CACHE_DIR already set
(core.config.kernel_cache_dir: one cache rule for every way of starting).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from fastcluster.core.config import ConfigError, Config, kernel_cache_dir, load, \
    render_ini_sample, render_reference
from fastcluster.core.stats import render_statistics_doc
from fastcluster.core.errors import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from fastcluster.core.settings import SECTIONS, SETTINGS

# Subcommands and what `fastcluster --help` says of them, first.
COMMANDS: dict[str, str] = {
    "run": "run a node in the foreground (the default: `fastcluster [options]`)",
    "demo": "start a local demo cluster of N nodes (`demo -n 3`), or send it REGISTERs "
            "(`demo register`)",
    "check-config": "validate the configuration, print each value and its origin, exit",
    "mi": "call an MI command of a running node and print its JSON result",
    "user": "add, change, delete or list subscribers (digest authentication)",
    "db": "export or import this node's persisted tables (a portable dump)",
    "warm": "compile the numba kernels into the cache and exit",
    "settings-doc": "print docs/settings.md (generated from the settings)",
    "statistics-doc": "print docs/statistics.md (generated from the statistics)",
    "ini-sample": "print fastcluster.ini.sample (every setting at its default)",
}


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "unknown"

    return (f"fastcluster {v('fastcluster-sip')} (Python {sys.version.split()[0]}, "
            f"numba {v('numba')}, numpy {v('numpy')})")


def _commands_text() -> str:
    width = max(map(len, COMMANDS))
    lines = ["commands:"] + [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "`fastcluster COMMAND --help` tells more; `fastcluster --version` prints the "
                  "version.", "", "Options of `fastcluster [run]` (every setting of a node):"]
    return "\n".join(lines)


def _settings_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every option can also be set in the INI file ([section] key) or the "
               "environment (FASTCLUSTER_SECTION_KEY). See docs/settings.md.")
    parser.add_argument("-c", "--config", metavar="FILE.ini", help="INI file to read")
    for section in SECTIONS:
        group = parser.add_argument_group(f"[{section}]")
        for s in SETTINGS:
            if s.section != section:
                continue
            flags = [s.flag] + ([s.short] if s.short else [])
            unit = f" Unit: {s.unit}." if s.unit else ""
            reload = " Reloaded on SIGHUP." if s.reloadable else ""
            default = s.default if s.default else "(empty)"
            group.add_argument(*flags, dest=s.name, metavar=s.key.upper(), default=None,
                               help=f"{s.doc}{unit}{reload} Type: {s.type_doc}. "
                                    f"Default: {default}.".replace("%", "%%"))
    return parser


def _load_from_args(ns: argparse.Namespace) -> Config:
    cli = {s.name: getattr(ns, s.name) for s in SETTINGS if getattr(ns, s.name) is not None}
    return load(ns.config, cli=cli)


def _cmd_check_config(argv: Sequence[str]) -> int:
    parser = _settings_parser("fastcluster check-config",
                              "Validate the configuration, print each value as written and "
                              "where it comes from, exit.")
    ns = parser.parse_args(argv)
    cfg = _load_from_args(ns)
    width = max(len(s.name) for s in SETTINGS)
    for s in SETTINGS:
        text = cfg.text(s.name)
        print(f"{s.name:<{width}}  {text if text else '(empty)':<30}  "
              f"({cfg.sources[s.name]})")
    print(f"configuration OK (instance {cfg.instance}, data in {cfg.data_dir})")
    return EXIT_OK


def _cmd_run(argv: Sequence[str]) -> int:
    parser = _settings_parser("fastcluster", _commands_text())
    parser.usage = "fastcluster [COMMAND] [-c FILE.ini] [-w N] [--SECTION-KEY VALUE ...]"
    ns = parser.parse_args(argv)
    cfg = _load_from_args(ns)
    os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(cfg.numba_cache_dir)
    from fastcluster.workers.master import run_master  # after NUMBA_CACHE_DIR is set

    return run_master(cfg)


def _cmd_demo(argv: Sequence[str]) -> int:
    # the demo's nodes are `fastcluster` processes: they find the same kernel cache
    os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(load(check=False).numba_cache_dir)
    from fastcluster.workers.demo import main as demo_main

    return demo_main(argv)


def _cmd_warm(argv: Sequence[str]) -> int:
    parser = _settings_parser("fastcluster warm",
                              "Compile the numba kernels into the cache and exit.")
    ns = parser.parse_args(argv)
    cfg = _load_from_args(ns)
    os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(cfg.numba_cache_dir)
    from fastcluster.shm.warm import warm_kernels
    from fastcluster.workers.master import warm_with_progress

    seconds = warm_with_progress(warm_kernels, say=lambda text: print(text, flush=True))
    print(f"kernels ready in {seconds:.2f} s (cache: {os.environ['NUMBA_CACHE_DIR']})")
    return EXIT_OK


_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _mi_params(parser: argparse.ArgumentParser, items: list[str]) -> dict | list:
    """name=value pairs (values parsed as JSON when they are), or positional values
    (strings, except JSON arrays and objects), as OpenSIPS's tools send them."""
    named = [bool(_PARAM_NAME.match(item)) for item in items]
    if all(named):
        params: dict[str, object] = {}
        for item in items:
            name, _, text = item.partition("=")
            try:
                params[name] = json.loads(text)
            except ValueError:
                params[name] = text
        return params
    if any(named):
        parser.error("give parameters either all as name=value or all as values")
    values: list[object] = []
    for item in items:
        if item[:1] in "[{":
            try:
                values.append(json.loads(item))
                continue
            except ValueError:
                pass
        values.append(item)
    return values


def _cmd_mi(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastcluster mi", allow_abbrev=False,
                                     description="Call an MI command and print its JSON result.")
    parser.add_argument("-c", "--config", metavar="FILE.ini",
                        help="take the MI address and token from this node's configuration")
    parser.add_argument("--mi-url", default=None,
                        help="MI endpoint, http://HOST:PORT/mi or HOST:PORT (default: "
                             "[mi] listen as the node reads it: -c FILE, then "
                             "$FASTCLUSTER_MI_LISTEN, else 127.0.0.1:8888)")
    parser.add_argument("--mi-token", default=None,
                        help="access token (default: [mi] token as the node reads it: "
                             "-c FILE, then $FASTCLUSTER_MI_TOKEN)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (30)")
    parser.add_argument("command", help="MI command, e.g. ps, get_statistics, ul_dump")
    parser.add_argument("params", nargs="*", metavar="name=value | value",
                        help="named parameters (a value that parses as JSON is sent as "
                             "JSON), or positional values in the command's order")
    ns = parser.parse_args(argv)
    params = _mi_params(parser, ns.params)
    cfg = load(ns.config, check=False)  # defaults, -c FILE, environment: as the node
    host, port = cfg["mi.listen"]
    url = _mi_url(ns.mi_url) if ns.mi_url else \
        f"http://{f'[{host}]' if ':' in host else host}:{port}/mi"
    token = ns.mi_token or cfg["mi.token"] or None
    from fastcluster.services.mi.client import MIError, call

    try:
        result = call(url, ns.command, params, timeout=ns.timeout, token=token)
    except MIError as exc:
        print(json.dumps({"error": exc.error}, indent=2), file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:
        print(f"fastcluster mi: cannot reach {url}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(json.dumps(result, indent=2))
    return EXIT_OK


def _mi_url(text: str) -> str:
    """--mi-url as given, or HOST:PORT made into http://HOST:PORT/mi."""
    if "://" in text:
        return text
    return f"http://{text}/mi"


def _cmd_user(argv: Sequence[str]) -> int:
    parser = _settings_parser(
        "fastcluster user", "Manage the subscribers of the SQLite database "
        "(auth.db_path, else <core.data_dir>/subscriber.sqlite): add and passwd store the "
        "HA1 of every digest algorithm for the realm (auth.realm, else the domain), never "
        "the password. A running node sees changes within 0.2 s.")
    parser.add_argument("action", choices=("add", "passwd", "del", "list"))
    parser.add_argument("user", nargs="?", metavar="USER@DOMAIN",
                        help="the subscriber (list: an optional domain)")
    parser.add_argument("--password", help="the password (default: asked on the terminal)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin")
    ns = parser.parse_args(argv)
    cfg = _load_from_args(ns)
    from fastcluster.services.sip import subscribers

    path = cfg.auth_db_path
    try:
        if ns.action == "list":
            for user in subscribers.list_users(path, ns.user or ""):
                print(user)
            return EXIT_OK
        if not ns.user:
            parser.error(f"{ns.action} needs USER@DOMAIN")
        if ns.action == "del":
            subscribers.delete_user(path, ns.user)
            print(f"{ns.user} deleted from {path}")
            return EXIT_OK
        password = _password(ns)
        subscribers.set_user(path, ns.user, cfg["auth.realm"], password,
                             create=ns.action == "add")
    except (ValueError, subscribers.StoreError, OSError) as exc:
        print(f"fastcluster user: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"{ns.user} {'added to' if ns.action == 'add' else 'updated in'} {path}")
    return EXIT_OK


def _cmd_db(argv: Sequence[str]) -> int:
    parser = _settings_parser(
        "fastcluster db", "Export the node's persisted tables ([persistence] url) to a "
        "portable dump (JSON lines), or import a dump into them: an import keeps the "
        "newer version of each record. Stop the node first.")
    parser.add_argument("action", choices=("export", "import"))
    parser.add_argument("file", nargs="?", default="-",
                        help="the dump (default: stdout / stdin)")
    ns = parser.parse_args(argv)
    cfg = _load_from_args(ns)
    from fastcluster.services.cluster import persistence, store
    from fastcluster.shm.tables import TABLES

    layouts = {spec.name: spec.layout_text for spec in TABLES}
    try:
        db = persistence.open_for(cfg)
    except store.StoreError as exc:
        print(f"fastcluster db: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        if ns.action == "export":
            out = sys.stdout if ns.file == "-" else open(ns.file, "w", encoding="utf-8")
            try:
                n = store.export_dump(db, out, cfg["clusterer.node_id"], layouts)
            finally:
                if out is not sys.stdout:
                    out.close()
            print(f"exported {n} rows from {store.describe(db)}", file=sys.stderr)
        else:
            src = sys.stdin if ns.file == "-" else open(ns.file, encoding="utf-8")
            try:
                n = store.import_dump(db, src, layouts)
            finally:
                if src is not sys.stdin:
                    src.close()
            print(f"imported {n} rows into {store.describe(db)}", file=sys.stderr)
    except (store.StoreError, OSError, ValueError, KeyError) as exc:
        print(f"fastcluster db: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        db.close()
    return EXIT_OK


def _password(ns: argparse.Namespace) -> str:
    if ns.password is not None:
        password = ns.password
    elif ns.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the passwords differ")
    if not password:
        raise ValueError("an empty password is refused")
    return password


def _print(text: str) -> int:
    sys.stdout.write(text)
    return EXIT_OK


HANDLERS = {
    "run": _cmd_run,
    "demo": _cmd_demo,
    "check-config": _cmd_check_config,
    "mi": _cmd_mi,
    "user": _cmd_user,
    "db": _cmd_db,
    "warm": _cmd_warm,
    "settings-doc": lambda argv: _print(render_reference()),
    "statistics-doc": lambda argv: _print(render_statistics_doc()),
    "ini-sample": lambda argv: _print(render_ini_sample()),
}
assert set(HANDLERS) == set(COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("--version", "-V"):
        print(version_text())
        return EXIT_OK
    command = args[0] if args and args[0] in COMMANDS else "run"
    rest = args[1:] if args and args[0] in COMMANDS else args
    try:
        return HANDLERS[command](rest)
    except ConfigError as exc:
        print(f"fastcluster: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
