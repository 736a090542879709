"""Log lines: one line per event, with node id, process name and pid.

    2026-11-24 10:00:00.123 node=1 sip-3[4242] INFO registrar: ...

Every process calls `setup()` once at start (the master) or after fork (children, with
their own name). The level can change at run time (SIGHUP reload). Neighbours: all.
"""
from __future__ import annotations

import logging
import sys

_state = {"node": 0, "proc": "main"}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.node = _state["node"]
        record.proc = _state["proc"]
        return True


def setup(node_id: int, proc: str, level: str) -> None:
    _state["node"], _state["proc"] = node_id, proc
    root = logging.getLogger()
    if not any(getattr(h, "_fastcluster", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._fastcluster = True  # type: ignore[attr-defined]
        handler.addFilter(_Context())
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d node=%(node)s %(proc)s[%(process)d] %(levelname)s "
            "%(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
        root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS[level])


def rename(proc: str) -> None:
    """Called in a child right after fork: same handler, new process name."""
    _state["proc"] = proc
