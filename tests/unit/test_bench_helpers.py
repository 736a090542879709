"""The bench scripts' pure helpers: latency summaries, sipp's record of the messages a
caller went on past, and the dialog lag probe's reading of a row."""
from __future__ import annotations

import pathlib

import numpy as np

from bench.latency import percentile, summary
from fastcluster.shm import table as T
from tests.support.sipp import SippResult

ERRORS = """The following events occurred:
2026-11-30\t12:17:23.1\t1.1: Continuing call on unexpected message for Call-Id 'c5-17797': \
while pausing (index 5), received 'SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 127.0.0.1:32064;branch=z9hG4bK-17797-5-0
Call-ID: c5-17797

'2026-11-30\t12:17:23.2\t1.2: Continuing call on unexpected message for Call-Id 'c6-17797': \
while expecting '200' (index 7), received 'SIP/2.0 180 Ringing
Call-ID: c6-17797

'2026-11-30\t12:17:23.3\t1.3: Continuing call on unexpected message for Call-Id 'c7-17797': \
while expecting '100' (index 1), received 'SIP/2.0 500 No error (2/SL)
Call-ID: c7-17797

'2026-11-30\t12:17:23.4\t1.4: Continuing call on unexpected message for Call-Id 'c8-17797': \
while expecting '200' (index 7), received 'BYE sip:caller@127.0.0.1:5060 SIP/2.0
Call-ID: c8-17797

'2026-11-30\t12:17:23.5\t1.5: Aborting call on unexpected message for Call-Id 'c9-17797': \
while pausing (index 5), received 'SIP/2.0 180 Ringing
"""


def test_unexpected_counts_what_the_calls_went_past(tmp_path: pathlib.Path) -> None:
    stats = tmp_path / "uac-123456.csv"
    (tmp_path / "uac_17797_errors.log").write_text(ERRORS)
    r = SippResult(0, 4, 0, 1.0, 4.0, "", stats, pid=17797)
    assert r.unexpected() == {"180": 2, "500": 1, "BYE": 1}  # not the aborted call
    assert SippResult(0, 4, 0, 1.0, 4.0, "", stats, pid=1).unexpected() == {}


def test_percentile_and_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 51.0
    assert percentile(values, 99) == 100.0
    assert np.isnan(percentile([], 50))
    assert summary([0.001, 0.002, 0.003]) == (
        "3 samples: p50 2.00 ms, p90 3.00 ms, p99 3.00 ms, max 3.00 ms, mean 2.00 ms")
    assert summary([]) == "0 samples"


def test_milestone_of_a_dialog_row() -> None:
    from bench.dialogs import milestone

    out = np.zeros(128, dtype=np.uint8)
    out[T.R_STATE] = T.ST_LIVE
    for dlg_state, expected in ((1, 0), (2, 0), (3, 1), (4, 1)):
        out[T.R_AUX] = dlg_state
        assert milestone(out) == expected
    out[T.R_STATE] = T.ST_TOMB
    assert milestone(out) == 2
