"""CPU of one proxied call in one process, with and without dialog tracking (issue 16c).

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python -m bench.call_cost [--calls 3000]
        [--rounds 3]

A proxy on in-memory tables (tests.support.registrar's Harness, as tests/unit/test_proxy.py
builds it: bob registered, the compiled relays on) gets whole calls from a caller:
INVITE, 180, 200, ACK, BYE, the BYE's 200. Each message is timed around the proxy's
handle alone (the test messages are built outside the timing), so the figure is what
the proxy spends per call; per message kind too. The kernels are warmed first (no
compile in the timing); the best of --rounds runs is printed: `Proxy()`, then
`Proxy(dialogs=True)` with the compiled relays' dialog changes the Python way (as
before shm.dialogs.dlg_in_dialog and shm.dlg_invite), then as it is.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.getcwd(), ".numba_cache"))

from fastcluster.shm.warm import warm_kernels  # noqa: E402
from tests.support.registrar import LISTEN  # noqa: E402
from tests.unit.test_proxy import BOB1, CALLER, Proxy, invite, response_to  # noqa: E402

STEPS = ("INVITE", "180", "200", "ACK", "BYE", "BYE 200")
ROUTE = f"Route: <sip:{LISTEN[0]}:{LISTEN[1]};lr>\r\n"


MODES = {"no dialogs": False, "dialogs, changes in Python": True, "dialogs": True}


def run(calls: int, dialogs: bool, python_in_dialog: bool = False) -> dict[str, float]:
    """Seconds spent in the proxy per step, summed over `calls` calls. python_in_dialog:
    the dialog changes of the compiled relays the way they were before their kernels
    (shm.dialogs.dlg_in_dialog, shm.dlg_invite.dlg_invite_reply): parse_message +
    DialogTracker.on_invite_reply, messages.dialog_identity + DialogTracker.in_dialog;
    for a side by side figure."""
    p = Proxy(dialogs=dialogs, tx_capacity=4 * calls + 100) if dialogs else \
        Proxy(tx_capacity=4 * calls + 100)
    if python_in_dialog:
        p.tracker.in_dialog_compiled = lambda *a: False  # type: ignore[method-assign]
        p.tracker.on_invite_reply_compiled = lambda *a: False  # type: ignore[method-assign]
    spent = dict.fromkeys(STEPS, 0.0)
    clock = time.perf_counter

    def feed(step: str, data: bytes, src: tuple) -> list:
        t0 = clock()
        out = p.feed(data, src)
        spent[step] += clock() - t0
        return out

    for n in range(1, calls + 1):
        out = feed("INVITE", invite(n), CALLER)
        fwd = [d for d, a in out if a == BOB1][0]
        for code in (180, 200):
            feed(str(code), response_to(fwd, code, tag=f"b{n}"), BOB1)
        ack = invite(n, branch=f"z9hG4bK-ack{n}", extra=ROUTE, method="ACK",
                     ruri=f"sip:bob@{BOB1[0]}:{BOB1[1]}").replace(
            b"To: <sip:bob@example.com>", f"To: <sip:bob@example.com>;tag=b{n}".encode())
        bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(
            f"z9hG4bK-ack{n}".encode(), f"z9hG4bK-bye{n}".encode())
        feed("ACK", ack, CALLER)
        out = feed("BYE", bye, CALLER)
        fwd_bye = [d for d, a in out if a == BOB1][0]
        feed("BYE 200", response_to(fwd_bye, 200, tag=f"b{n}"), BOB1)
    if dialogs:
        rows = list(p.dialogs.rows(live_only=False))
        assert len(rows) == calls and all(r["dlg_state"] == 5 for r in rows), \
            "every call's dialog must be created, then deleted by its BYE"
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    warm_kernels()
    run(50, True)
    run(50, False)  # first calls: imports, caches
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):  # the modes interleaved: the box's load drifts
        for mode, dialogs in MODES.items():
            spent = run(args.calls, dialogs, mode.endswith("Python"))
            if mode not in best or sum(spent.values()) < sum(best[mode].values()):
                best[mode] = spent
    for mode, spent in best.items():
        per = {k: v / args.calls * 1e6 for k, v in spent.items()}
        steps = "  ".join(f"{k} {v:.1f}" for k, v in per.items())
        print(f"{mode:>34}: {sum(per.values()):6.1f} us per call  ({steps})", flush=True)


if __name__ == "__main__":
    main()
