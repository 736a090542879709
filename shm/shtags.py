"""Sharing tag states in shared memory: which tags are active on this node, as the
cluster process decided (services.cluster.shtags), for the processes that act on them
-- the SIP workers (the tag a new dialog carries, whether to count it) and the timer
(only a tag's active node runs its dialogs' timers).

Single writer (the cluster process), many readers, a seqlock on the generation word:
readers cache what they read until the generation moves. Neighbours:
services.cluster.shtags (writer), services.sip.dialogs, services.sip.dialog_timer.

Segment layout (little-endian, W = 8-byte word):

    offset  size            field
    0       8               magic b"FCSHTAG1"
    W1      8               layout version (SHTAGS_LAYOUT_VERSION)
    W2      8               generation: odd while the writer is inside, +2 per publish
    W3      8               tags: entries in use
    64      64 * MAX_TAGS   entries, each: W0 cluster (bits 0-15) | active (bit 16) |
                            holder node id (bits 32-47); W1 epoch; W2 when its state last
                            changed here (unix ms); W3 name length; W4..W7 name (32 bytes)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

SHTAGS_MAGIC = int.from_bytes(b"FCSHTAG1", "little")
SHTAGS_LAYOUT_VERSION = 1
MAX_TAGS = 64
MAX_TAG_NAME = 32
HEADER = 64
ENTRY_WORDS = 8
W_MAGIC, W_VERSION, W_GEN, W_COUNT = range(4)


@dataclass(frozen=True)
class TagState:
    name: str
    cluster: int
    active: bool  # active on this node
    holder: int  # the node the newest activation names (0: none known)
    epoch: int
    changed_ms: int


def segment_size() -> int:
    return HEADER + 8 * ENTRY_WORDS * MAX_TAGS


def init_segment(buf: np.ndarray) -> None:
    w = buf[:HEADER].view(np.int64)
    w[W_VERSION] = SHTAGS_LAYOUT_VERSION
    w[W_MAGIC] = SHTAGS_MAGIC


class ShtagStates:
    """Views over a tag segment."""

    def __init__(self, buf: np.ndarray) -> None:
        self.words = buf[:HEADER].view(np.int64)
        if int(self.words[W_MAGIC]) != SHTAGS_MAGIC:
            raise ValueError("not a sharing tag segment (bad magic)")
        if int(self.words[W_VERSION]) != SHTAGS_LAYOUT_VERSION:
            raise ValueError("sharing tag segment layout version mismatch")
        self.entries = buf[HEADER:HEADER + 8 * ENTRY_WORDS * MAX_TAGS].view(
            np.int64).reshape(MAX_TAGS, ENTRY_WORDS)
        self._seen = -1
        self._cache: dict[tuple[str, int], TagState] = {}

    def publish(self, tags: list[TagState]) -> None:
        """Write every tag (single writer)."""
        if len(tags) > MAX_TAGS:
            raise ValueError(f"more than {MAX_TAGS} sharing tags")
        w = self.words
        w[W_GEN] += 1  # odd: readers retry
        for i, tag in enumerate(tags):
            name = tag.name.encode()
            if len(name) > MAX_TAG_NAME:
                raise ValueError(f"sharing tag name longer than {MAX_TAG_NAME} bytes")
            e = self.entries[i]
            e[0] = tag.cluster | (int(tag.active) << 16) | (tag.holder << 32)
            e[1], e[2], e[3] = tag.epoch, tag.changed_ms, len(name)
            e[4:8] = np.frombuffer(name.ljust(MAX_TAG_NAME, b"\0"), dtype=np.int64)
        w[W_COUNT] = len(tags)
        w[W_GEN] += 1

    @property
    def generation(self) -> int:
        return int(self.words[W_GEN])

    def read(self) -> dict[tuple[str, int], TagState]:
        """(name, cluster) -> state, as one consistent snapshot (cached per generation)."""
        w = self.words
        while True:
            gen = int(w[W_GEN])
            if gen == self._seen:
                return self._cache
            if gen & 1:
                time.sleep(0)
                continue
            raw = self.entries[:int(w[W_COUNT])].copy()
            if int(w[W_GEN]) != gen:
                continue
            out = {}
            for e in raw.tolist():
                name = np.array(e[4:8], dtype=np.int64).tobytes()[:e[3]].decode()
                out[(name, e[0] & 0xFFFF)] = TagState(name, e[0] & 0xFFFF,
                                                      bool(e[0] >> 16 & 1),
                                                      e[0] >> 32 & 0xFFFF, e[1], e[2])
            self._cache, self._seen = out, gen
            return out

    def active(self, cluster: int) -> frozenset[str]:
        """Names of the tags of a cluster that are active here."""
        return frozenset(name for (name, c), t in self.read().items() if c == cluster and
                         t.active)
