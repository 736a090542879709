"""The `fastcluster` command: run a node, check a config, call the MI, print references.

    fastcluster [-c FILE.ini] [-w N] [--SECTION-KEY VALUE ...]   run a node (foreground)
    fastcluster check-config [-c FILE.ini] [options]             validate, print, exit
    fastcluster mi [--mi-url URL] CMD [name=value ...]           call the MI, print JSON
    fastcluster warm [options]                                   compile/cache the kernels
    fastcluster settings-doc                                     print docs/settings.md

Options are derived from core.settings. Exit codes: 0 ok, 1 runtime failure, 2 bad
configuration or usage (nothing started), 3 a child failed at boot. Heavy imports (numba)
happen only after the configuration is valid, with NUMBA_CACHE_DIR already set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from fastcluster.core.config import ConfigError, Config, kernel_cache_dir, load, \
    render_reference
from fastcluster.core.errors import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from fastcluster.core.settings import SECTIONS, SETTINGS

COMMANDS = ("run", "check-config", "mi", "warm", "settings-doc")


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
                              "Validate the configuration, print the effective values, exit.")
    ns = parser.parse_args(argv)
    cfg = _load_from_args(ns)
    width = max(len(s.name) for s in SETTINGS)
    for name, value in cfg.public().items():
        print(f"{name:<{width}}  {_show(value):<30}  ({cfg.sources[name]})")
    print(f"configuration OK (instance {cfg.instance})")
    return EXIT_OK


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(":".join(str(p) for p in v) if isinstance(v, tuple) else str(v)
                        for v in value)
    return str(value)


def _cmd_run(argv: Sequence[str]) -> int:
    parser = _settings_parser("fastcluster", __doc__.split("\n\n")[0])
    ns = parser.parse_args(argv)
    cfg = _load_from_args(ns)
    os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(cfg.numba_cache_dir)
    from fastcluster.workers.master import run_master  # after NUMBA_CACHE_DIR is set

    return run_master(cfg)


def _cmd_warm(argv: Sequence[str]) -> int:
    parser = _settings_parser("fastcluster warm",
                              "Compile the numba kernels into the cache and exit.")
    ns = parser.parse_args(argv)
    cfg = _load_from_args(ns)
    os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(cfg.numba_cache_dir)
    from fastcluster.shm.warm import warm_kernels

    seconds = warm_kernels()
    print(f"kernels ready in {seconds:.2f} s (cache: {os.environ['NUMBA_CACHE_DIR']})")
    return EXIT_OK


def _cmd_mi(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastcluster mi", allow_abbrev=False,
                                     description="Call an MI command and print its JSON result.")
    parser.add_argument("--mi-url", default="http://127.0.0.1:8888/mi",
                        help="MI endpoint (default http://127.0.0.1:8888/mi)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (30)")
    parser.add_argument("command", help="MI command, e.g. ps, get_statistics, ul_dump")
    parser.add_argument("params", nargs="*", metavar="name=value",
                        help="named parameters; a value that parses as JSON is sent as JSON")
    ns = parser.parse_args(argv)
    params: dict[str, object] = {}
    for item in ns.params:
        name, sep, text = item.partition("=")
        if not sep or not name:
            parser.error(f"parameter {item!r} is not name=value")
        try:
            params[name] = json.loads(text)
        except ValueError:
            params[name] = text
    from fastcluster.services.mi.client import MIError, call

    try:
        result = call(ns.mi_url, ns.command, params, timeout=ns.timeout)
    except MIError as exc:
        print(json.dumps({"error": exc.error}, indent=2), file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:
        print(f"fastcluster mi: cannot reach {ns.mi_url}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(json.dumps(result, indent=2))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in COMMANDS else "run"
    rest = args[1:] if args and args[0] in COMMANDS else args
    try:
        if command == "check-config":
            return _cmd_check_config(rest)
        if command == "mi":
            return _cmd_mi(rest)
        if command == "warm":
            return _cmd_warm(rest)
        if command == "settings-doc":
            sys.stdout.write(render_reference())
            return EXIT_OK
        return _cmd_run(rest)
    except ConfigError as exc:
        print(f"fastcluster: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
