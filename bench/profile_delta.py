"""Cost of one profile publication tick of the cluster process (services.sip.
profile_repl), before and after the compiled delta (issue 16b, defect 6).

    .venv/bin/python -m bench.profile_delta [--values 10000] [--changed 10] [--ticks 200]

VALUES profile values of this node in shm.profiles, CHANGED of them change between two
ticks (PUBLISH_S = 100 ms apart). "before" is the Python walk profile_repl did until
issue 16b: every value decoded from the counters (ProfileCounters.entries), then
compared with what was sent; "after" is LocalCounts.update (one prof_local_delta pass,
Python work for the changed values only) plus the payload. JIT compile excluded.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from fastcluster.services.sip.profile_repl import Counts, LocalCounts
from fastcluster.shm import profiles as PF


def before_tick(profiles: PF.ProfileCounters, sent: Counts) -> tuple[Counts, Counts]:
    """profile_repl.publish's delta until issue 16b (local_counts + dict compare)."""
    active = {b""}
    counts: Counts = {}
    for (scope, profile), (local, recent, _) in profiles.entries().items():
        if scope in active and local + recent:
            counts.setdefault(scope.decode(), {})[profile.decode()] = local + recent
    payload: Counts = {}
    for scope in set(counts) | set(sent):
        now, old = counts.get(scope, {}), sent.get(scope, {})
        delta = {p: n for p, n in now.items() if old.get(p) != n}
        delta.update({p: 0 for p in old if p not in now})
        if delta:
            payload[scope] = delta
    return counts, payload


def after_tick(mine: LocalCounts) -> Counts:
    payload: Counts = {}
    for (scope, profile), n in mine.update().items():
        if scope == "":
            payload.setdefault(scope, {})[profile] = n
    return payload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--values", type=int, default=10_000)
    ap.add_argument("--changed", type=int, default=10)
    ap.add_argument("--ticks", type=int, default=200)
    a = ap.parse_args()
    seg = np.zeros(PF.segment_size(a.values), dtype=np.uint8)
    PF.init_segment(seg, a.values)
    profiles = PF.ProfileCounters(seg)
    names = [PF.name_of(b"", f"calls_per_user/user{i}".encode()) for i in range(a.values)]
    assert profiles.add(names, 1) == a.values
    rng = np.random.default_rng(1)

    def churn() -> None:
        picked = rng.choice(a.values, a.changed, replace=False)
        profiles.add([names[i] for i in picked], 1)

    sent, _ = before_tick(profiles, {})
    mine = LocalCounts(profiles)
    after_tick(mine)  # compile / load, and the first (full) pass
    figures = {}
    for label in ("before", "after"):
        if label == "after":
            after_tick(mine)  # what changed during "before"
        spent = 0.0
        for _ in range(a.ticks):
            churn()
            t0 = time.perf_counter()
            if label == "before":
                sent, payload = before_tick(profiles, sent)
            else:
                payload = after_tick(mine)
            spent += time.perf_counter() - t0
            assert 0 < sum(len(v) for v in payload.values()) <= a.changed
        figures[label] = spent / a.ticks * 1e6
    print(f"profile publication tick, {a.values} values, {a.changed} changed per tick "
          f"({PF.slots_for(a.values)} slots):")
    for label, us in figures.items():
        print(f"  {label:6s} {us:10.1f} us per tick")
    print(f"  ratio  {figures['before'] / figures['after']:10.1f}x")


if __name__ == "__main__":
    main()
