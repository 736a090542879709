"""MI commands of the proxy: t_list (the transactions in the shared table) and t_stats
(their counts and the timer wheel's figures); the tm: gauges of get_statistics live in
services.mi.core_cmds.GAUGES.

The table is scanned with the generic consistent reader (shm.table.table_scan, seqlock
per row); a transaction is shown with its method, Call-ID, state, branches and
timers. Neighbours: shm.transactions (layout), services.sip.tm_timer (wheel figures),
services.mi (registry).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from fastcluster.core.sip import SipParseError, parse_message
from fastcluster.services.mi.registry import command
from fastcluster.services.sip.routing import decode_targets
from fastcluster.services.sip.tm_timer import wheel_status
from fastcluster.shm import table as T
from fastcluster.shm import tmring as TR
from fastcluster.shm import transactions as X

_BATCH = 256


def _rows(table: Any, limit: int):
    """Decoded transaction rows (fixed fields + strings), at most `limit`."""
    row = table.row_size
    out = np.zeros(2 * _BATCH * row, dtype=np.uint8)  # a probe run may go past a batch
    slots = np.zeros(2 * _BATCH, dtype=np.int64)
    start = seen = 0
    while start < table.nslots and seen < limit:
        start, n = T.table_scan(table.buf, start, True, out, min(_BATCH, limit - seen),
                                2 * _BATCH, slots)
        for i in range(min(n, limit - seen)):
            at = i * row
            rec = out[at:at + X.TRANSACTION.fixed_size].view(X.TRANSACTION.dtype)[0]
            pos = at + X.TRANSACTION.fixed_size
            strings = []
            for ln in rec["lens"]:
                strings.append(bytes(out[pos:pos + int(ln)]))
                pos += int(ln)
            yield int(slots[i]), rec, strings
            seen += 1


def describe(slot: int, rec: Any, strings: list[bytes], now_ms: int) -> dict[str, Any]:
    try:
        req = parse_message(strings[X.S_REQUEST])
        method, callid, ruri = req.method, req.call_id, req.ruri
    except SipParseError:
        method = callid = ruri = "?"
    t0 = int(rec["t0_ms"])
    targets = decode_targets(strings[X.S_TARGETS]) if strings[X.S_TARGETS] else []
    branches = []
    for i in range(int(rec["nbranches"])):
        t = targets[i] if i < len(targets) else None
        branches.append({
            "branch": i, "state": X.BS_NAMES[int(rec["b_state"][i])],
            "status": int(rec["b_status"][i]), "uri": t.ruri if t else "",
            "destination": f"{t.host}:{t.port}" if t else "",
            "via_node": t.home if t else 0,
            "cancelled": bool(int(rec["b_flags"][i]) & X.BF_CANCEL_SENT)})
    flags = int(rec["flags"])
    due = int(rec["due_ms"])
    return {"slot": slot, "key": f"{int(rec['key']):016x}", "method": method,
            "call_id": callid, "ruri": ruri, "state": X.SS_NAMES[int(rec["aux"])],
            "status": int(rec["status"]), "best": int(rec["best"]),
            "age_ms": now_ms - t0, "next_timer_ms": (due - now_ms) if due else None,
            "final_sent": bool(flags & X.F_FINAL_SENT),
            "cancelled": bool(flags & X.F_CANCELED), "serial": bool(flags & X.F_SERIAL),
            "branches": branches}


@command("t_list", heavy=True)
def mi_t_list(node: Any, limit: int = 100, call_id: str | None = None) -> dict[str, Any]:
    """Transactions in the table (at most `limit`; all of one Call-ID if given)."""
    now = int(time.monotonic() * 1000)
    out = []
    scan = node.mem.transactions.capacity if call_id else int(limit)
    for slot, rec, strings in _rows(node.mem.transactions, scan):
        d = describe(slot, rec, strings, now)
        if call_id is None or d["call_id"] == call_id:
            out.append(d)
        if len(out) >= int(limit):
            break
    return {"Transactions": out}


@command("t_stats", heavy=True)
def mi_t_stats(node: Any) -> dict[str, Any]:
    """Transactions now (all, INVITE, waiting for a final response), table capacity,
    timer wheel and timer ring figures."""
    n, inv, pending = X.tx_count(node.mem.transactions.buf)
    return {"current": int(n), "invite": int(inv), "waiting_final": int(pending),
            "capacity": node.mem.transactions.capacity,
            "timer_ring_drops": TR.drops(node.mem.tmrings),
            **wheel_status(node.mem.control)}
