"""Exit codes and exception types shared by every layer.

Bugs, bad configuration and corrupt frames raise; expected network outcomes are result
enums (see core.wire and services.topology). Neighbours: everything.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1  # the node ran and failed, or the MI call failed
EXIT_CONFIG = 2  # bad configuration or usage: nothing was started
EXIT_BOOT = 3  # a child process failed while booting: the master stops, no respawn loop


class FastclusterError(Exception):
    """Base of the project's own exceptions."""


class StartupError(FastclusterError):
    """The node cannot start (port in use, instance already running, ...)."""


class TableFull(FastclusterError):
    """A shared table has no free slot; nothing was overwritten."""


class FieldTooLong(FastclusterError):
    """A value does not fit the fixed width reserved for it; nothing was truncated."""
