"""TableData.newest_ms (services.cluster.replication): the newest row's time, read from
the table at most every NEWEST_MAX_AGE_S (a whole-table scan that a node waiting for a
donor would otherwise run at every sync tick, beside the SIP workers)."""
from __future__ import annotations

import time
import types

import pytest

from fastcluster.services.cluster import replication
from fastcluster.services.cluster.replication import NEWEST_MAX_AGE_S, TableData
from fastcluster.shm.tables import TABLES
from tests.support.registrar import Harness, register


def test_newest_ms_is_read_again_only_after_its_age(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(replication, "time", types.SimpleNamespace(
        monotonic=lambda: clock.now, time=time.time))
    h = Harness()
    data = TableData(types.SimpleNamespace(mem=types.SimpleNamespace(
        tables={"contacts": h.table})), TABLES[0])
    assert data.newest_ms() == 0  # empty: read at once, not taken from before
    assert h.send(register("a@example.com")).startswith("SIP/2.0 200")
    clock.now += NEWEST_MAX_AGE_S / 2
    assert data.newest_ms() == 0  # the value read half an age ago
    clock.now += NEWEST_MAX_AGE_S / 2
    first = data.newest_ms()
    assert first > 0
    assert h.send(register("b@example.com", callid="cid-b")).startswith("SIP/2.0 200")
    assert data.newest_ms() == first
    clock.now += NEWEST_MAX_AGE_S
    assert data.newest_ms() >= first
    newest = max(int(r["version"]) for r in h.table.rows(live_only=False))
    assert data.newest_ms() == replication.T.version_ms(newest)
