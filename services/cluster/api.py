"""The narrow clusterer API (placeholder while the package is reorganised)."""
from __future__ import annotations

from enum import IntEnum


class SendResult(IntEnum):
    """Outcome of a send, with OpenSIPS's clusterer API values."""
    SUCCESS = 0
    CURR_DISABLED = 1  # this node is disabled in that cluster
    DEST_DOWN = -1  # destination (or every node) unreachable
    SEND_ERR = -2
