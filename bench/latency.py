"""Latency figures shared by the bench scripts: percentiles and the one-line summary of
a set of lags (bench.replication's contact lag, bench.dialogs's dialog lag)."""
from __future__ import annotations

import statistics


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) of values, nearest rank from below; nan if empty."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def summary(seconds: list[float]) -> str:
    """'N samples: p50, p90, p99, max, mean' in ms of lags given in seconds."""
    ms = sorted(v * 1000 for v in seconds)
    if not ms:
        return "0 samples"
    return (f"{len(ms)} samples: p50 {percentile(ms, 50):.2f} ms, p90 "
            f"{percentile(ms, 90):.2f} ms, p99 {percentile(ms, 99):.2f} ms, max "
            f"{ms[-1]:.2f} ms, mean {statistics.mean(ms):.2f} ms")


def log_problems(nodes: list) -> list[str]:
    """WARNING and ERROR lines of the nodes' logs (tests.support.nodes.Node), prefixed
    with the node: a lag figure is read next to what the nodes complained of."""
    return [f"node {n.node_id}: {line[24:200]}" for n in nodes
            for line in n.log().splitlines() if " WARNING " in line or " ERROR " in line]
