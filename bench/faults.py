"""The fault suite at full length: every case of tests.support.faults, longer faults,
more load, repeated, with a line per run (what the clients were told against what every
node holds, and how long after the fault every node held the same contacts).

    sudo .venv/bin/python -m bench.faults                 # every case, 3 times
    sudo .venv/bin/python -m bench.faults --runs 1 --case "master killed"

Needs root (network namespaces). Exit code 1 if any run lost or resurrected anything.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

from tests.support import netns
from tests.support.faults import CASES, NIGHTLY, Scale, run_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help="only these cases (default: all)")
    parser.add_argument("--fault-s", type=float, default=NIGHTLY.fault_s)
    parser.add_argument("--rate", type=float, default=NIGHTLY.rate)
    parser.add_argument("--users", type=int, default=NIGHTLY.users)
    ns = parser.parse_args()
    why = netns.available()
    if why:
        print(f"bench.faults: network namespaces: {why}", file=sys.stderr)
        return 2
    scale = Scale(ns.fault_s, ns.rate, ns.users)
    failed = 0
    worst = 0.0
    for name in ns.case or list(CASES):
        for run in range(ns.runs):
            with tempfile.TemporaryDirectory(prefix="fc-faults-") as tmp:
                outcome = run_case(pathlib.Path(tmp), name, scale)
            print(f"run {run + 1}: {outcome.line()}", flush=True)
            failed += not outcome.report.ok
            worst = max(worst, outcome.converged_s)
    print(f"{failed} run(s) lost or resurrected something; slowest convergence after a "
          f"fault: {worst:.2f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
