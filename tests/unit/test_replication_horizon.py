"""The tombstone horizon an origin publishes (services.cluster.replication.horizon_of):
the timer purges a tombstone of that origin once its version is below it, so it must
never cover a row made after it was computed."""
from __future__ import annotations

import time

from fastcluster.services.cluster.replication import (HORIZON_MARGIN_MS, NO_FLOOR, PeerOut,
                                                      horizon_of)
from fastcluster.shm import table as T


def _version(ms: float) -> int:
    return int(T.hlc_version(int(ms)))


def test_nothing_pending_does_not_cover_rows_made_later() -> None:
    now_ms = time.time() * 1000
    members = [PeerOut(2), PeerOut(3)]  # every batch acknowledged: nothing pending
    assert all(m.watermark() == NO_FLOOR for m in members)
    horizon = horizon_of([m.watermark() for m in members], now_ms)
    # a tombstone made right after the horizon was published, and one made within the
    # margin before it (a worker's row the cluster process may not have drained yet)
    assert not _version(now_ms + 1) < horizon
    assert not _version(now_ms - HORIZON_MARGIN_MS + 1) < horizon
    assert _version(now_ms - HORIZON_MARGIN_MS - 1) < horizon


def test_lowest_watermark_wins() -> None:
    now_ms = time.time() * 1000
    behind = PeerOut(3, floor=_version(now_ms - 60_000))  # cut off a minute ago
    unacked = PeerOut(2)
    unacked.sent(7, _version(now_ms - 30_000), time.monotonic())
    assert horizon_of([unacked.watermark(), behind.watermark()], now_ms) == \
        _version(now_ms - 60_000)
    unacked.acked([7, 7])
    assert horizon_of([unacked.watermark()], now_ms) == \
        _version(now_ms - HORIZON_MARGIN_MS)


def test_no_members() -> None:
    now_ms = time.time() * 1000
    assert horizon_of([], now_ms) == _version(now_ms - HORIZON_MARGIN_MS)
