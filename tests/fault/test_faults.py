"""The fault suite (short form, in CI): every case of tests.support.faults on three real
nodes in network namespaces under REGISTER load. Nothing a client was told is lost or
resurrected, and every node converges. `python -m bench.faults` runs them longer."""
from __future__ import annotations

import pytest

from tests.support import netns
from tests.support.faults import CASES, CI, run_case

pytestmark = [pytest.mark.netns, pytest.mark.fault]


@pytest.fixture(autouse=True)
def need_namespaces() -> None:
    why = netns.available()
    if why:
        pytest.skip(f"network namespaces: {why}")


@pytest.mark.parametrize("case", list(CASES))
def test_nothing_acknowledged_is_lost(tmp_path, case: str) -> None:
    outcome = run_case(tmp_path, case, CI)
    print(outcome.line())
    assert outcome.report.registered + outcome.report.removed > 100, outcome.line()
    assert outcome.report.ok, outcome.line() + "\n" + "\n".join(outcome.report.examples)
