"""Log lines: one line per event, with node id, process name and pid.

    text (default):
    2026-11-24 10:00:00.123 node=1 sip-3[4242] INFO registrar: ...
    json ([core] log_format = json), one object per line, for log shippers:
    {"ts": "2026-11-24T10:00:00.123Z", "level": "INFO", "node": 1, "proc": "sip-3",
     "pid": 4242, "logger": "registrar", "msg": "...", "exc": "Traceback ..."}

They go to stderr (under systemd: the journal) or to syslog ([core] log_target =
syslog: a unix datagram socket such as /dev/log, or UDP HOST:PORT, RFC 3164 framing by
the standard library's SysLogHandler, ident "fastcluster"). Every process calls
`setup()` once at start (the master) or inherits it across fork and calls `rename()`
(children). The level can change at run time (SIGHUP reload); format and target need a
restart. Neighbours: all.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import socket
import sys
import time

_state = {"node": 0, "proc": "main"}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
TEXT_FORMAT = ("%(asctime)s.%(msecs)03d node=%(node)s %(proc)s[%(process)d] "
               "%(levelname)s %(name)s: %(message)s")
SYSLOG_IDENT = "fastcluster"
# syslog carries its own timestamp and host: the line starts at the node id
SYSLOG_TEXT_FORMAT = "node=%(node)s %(proc)s[%(process)d] %(levelname)s %(name)s: %(message)s"


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.node = _state["node"]
        record.proc = _state["proc"]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines inside messages and tracebacks escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = {"ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname,
               "node": getattr(record, "node", _state["node"]),
               "proc": getattr(record, "proc", _state["proc"]), "pid": record.process,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _syslog_handler(address: str, facility: str) -> logging.Handler:
    if address.startswith("/"):
        target: str | tuple[str, int] = address
        kind = socket.SOCK_DGRAM
        # SysLogHandler ignores a socket it cannot reach (and fails on every line):
        # a node whose log would go nowhere must not start.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
    else:
        host, _, port = address.rpartition(":")
        target, kind = (host.strip("[]"), int(port)), socket.SOCK_DGRAM
    handler = logging.handlers.SysLogHandler(
        target, logging.handlers.SysLogHandler.facility_names[facility], kind)
    handler.ident = SYSLOG_IDENT + ": "
    return handler


def setup(node_id: int, proc: str, level: str, fmt: str = "text", target: str = "stderr",
          syslog_address: str = "/dev/log", syslog_facility: str = "daemon") -> None:
    """Install the one handler (stderr or syslog) on the root logger.

    Raises OSError when the syslog socket cannot be opened (the master reports it as a
    start failure)."""
    _state["node"], _state["proc"] = node_id, proc
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_fastcluster", False)]:
        root.removeHandler(old)
        old.close()
    if target == "syslog":
        handler = _syslog_handler(syslog_address, syslog_facility)
        text = SYSLOG_TEXT_FORMAT
    else:
        handler = logging.StreamHandler(sys.stderr)
        text = TEXT_FORMAT
    handler._fastcluster = True  # type: ignore[attr-defined]
    handler.addFilter(_Context())
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter(text, "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    set_level(level)


def setup_from(cfg: object, proc: str) -> None:
    """setup() with a Config's [core] log settings."""
    get = cfg.__getitem__  # type: ignore[attr-defined]
    setup(get("clusterer.node_id"), proc, get("core.log_level"), get("core.log_format"),
          get("core.log_target"), get("core.syslog_address"), get("core.syslog_facility"))


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS[level])


def rename(proc: str) -> None:
    """Called in a child right after fork: same handler, new process name."""
    _state["proc"] = proc
