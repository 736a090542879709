"""Core MI commands: ps, get_statistics, list_statistics, reset_statistics, which, uptime,
version.

Statistics are the per-process counters of the control segment (core.stats) summed,
plus gauges computed from the tables at call time; OpenSIPS's names for the same figures
(core.stats.ALIASES) are answered too. Neighbours: services.mi (registry),
shm.control.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version as dist_version
from typing import Any

import numpy as np

from fastcluster.core.stats import ALIASES, COUNTERS
from fastcluster.core.stats import GAUGES as DECLARED_GAUGES
from fastcluster.services.mi.registry import REGISTRY, MIError, command
from fastcluster.shm import control as CT
from fastcluster.shm import dialogs as D
from fastcluster.shm import transactions as X


def _dialogs_in(state: int) -> Callable[[Any], int]:
    def count(node: Any) -> int:
        out = np.zeros(D.NSTATES, dtype=np.int64)
        D.dlg_count_states(node.mem.dialogs.buf, out)
        return int(out[state])
    return count


# How each gauge declared in core.stats is computed (on demand, never stored).
GAUGES: dict[str, Callable[[Any], int]] = {
    "usrloc:registered_contacts": lambda node: node.mem.contacts.counters()["live"],
    "usrloc:registered_aors": lambda node: node.mem.contacts.count_groups(),
    "usrloc:tombstones": lambda node: node.mem.contacts.counters()["tomb"],
    "usrloc:capacity": lambda node: node.mem.contacts.capacity,
    "dialog:active_dialogs": lambda node: node.mem.dialogs.counters()["live"],
    "dialog:early_dialogs": _dialogs_in(D.DLG_EARLY),
    "dialog:confirmed_dialogs": _dialogs_in(D.DLG_CONFIRMED),
    "dialog:tombstones": lambda node: node.mem.dialogs.counters()["tomb"],
    "dialog:capacity": lambda node: node.mem.dialogs.capacity,
    # counted in the table, not from the header counter: that one can drift when a
    # worker is killed in the middle of a transaction (a lost or raced counter update)
    "tm:inuse_transactions": lambda node: int(X.tx_count(node.mem.transactions.buf)[0]),
    "tm:capacity": lambda node: node.mem.transactions.capacity,
}
if set(GAUGES) != {f"{g}:{n}" for g, n, _ in DECLARED_GAUGES}:  # one declaration per fact
    raise RuntimeError("core.stats.GAUGES and the gauges computed here differ")


def _selected(names: list[str], candidates: list[str]) -> list[str]:
    """The statistics named (OpenSIPS rules: "all", "group:", "group:name" or a bare
    name; names compare without case), in the order asked."""
    if not names or "all" in names:
        return candidates
    out = []
    for want in (n.lower() for n in names):
        if want.endswith(":"):
            out += [c for c in candidates if c.lower().startswith(want)]
        else:
            out += [c for c in candidates
                    if c.lower() == want or c.split(":", 1)[1].lower() == want]
    return list(dict.fromkeys(out))


@command("ps")
def mi_ps(node: Any) -> dict[str, Any]:
    """Every process of this node: id, pid, type, role, heartbeat age."""
    procs = []
    for p in node.mem.control.processes():
        kind = p["role"] if p["role"] != "sip" else f"sip worker {p['number']}"
        procs.append({"ID": p["slot"], "PID": p["pid"], "Type": kind, "Role": p["role"],
                      "Heartbeat_age_ms": p["heartbeat_age_ms"] if p["role"] != "master"
                      else 0, "Uptime_s": round(p["uptime_ms"] / 1000, 1),
                      "Restarts": p["restarts"]})
    return {"Processes": procs}


@command("get_statistics", heavy=True)
def mi_get_statistics(node: Any, statistics: list[str] | str | None = None) -> dict[str, int]:
    """Flat {"group:name": number}; statistics: names, "group:" or "all" (default)."""
    names = [statistics] if isinstance(statistics, str) else list(statistics or [])
    totals = node.mem.control.totals()
    counters = {f"{g}:{n}": int(totals[i]) for i, (g, n, _) in enumerate(COUNTERS)}
    chosen = _selected(names, list(counters) + list(GAUGES) + list(ALIASES))
    if not chosen:
        raise MIError(404, "Statistics Not Found")
    out = {}
    for name in chosen:
        real = ALIASES.get(name, name)
        out[name] = counters[real] if real in counters else GAUGES[real](node)
    return out


@command("list_statistics")
def mi_list_statistics(node: Any, statistics: list[str] | str | None = None
                       ) -> dict[str, str]:
    """{"group:name": "incremental" | "non-incremental"}: counters only grow (until
    reset_statistics), gauges are computed from the tables; aliases included."""
    names = [statistics] if isinstance(statistics, str) else list(statistics or [])
    kinds = {f"{g}:{n}": "incremental" for g, n, _ in COUNTERS}
    kinds.update((name, "non-incremental") for name in GAUGES)
    kinds.update((alias, kinds[real]) for alias, real in ALIASES.items())
    chosen = _selected(names, list(kinds))
    if not chosen:
        raise MIError(404, "Statistics Not Found")
    return {name: kinds[name] for name in chosen}


@command("reset_statistics")
def mi_reset_statistics(node: Any, statistics: list[str] | str | None = None) -> str:
    """Zero counters (gauges are left alone)."""
    names = [statistics] if isinstance(statistics, str) else list(statistics or [])
    all_names = [f"{g}:{n}" for g, n, _ in COUNTERS]
    chosen = [ALIASES.get(n, n) for n in _selected(names, all_names + list(ALIASES))]
    chosen = [n for n in chosen if n in all_names]
    if not chosen:
        raise MIError(404, "Statistics Not Found")
    for name in chosen:
        node.mem.control.stats[:, all_names.index(name)] = 0
    return "OK"


@command("which")
def mi_which(node: Any, command: str | None = None) -> list[Any]:
    """All command names, or the parameter names of one command."""
    if command is None:
        return sorted(REGISTRY)
    cmd = REGISTRY.get(command)
    if cmd is None:
        raise MIError(404, "unknown MI command")
    return [cmd.params]


@command("uptime")
def mi_uptime(node: Any) -> dict[str, Any]:
    """When the node started."""
    start_ms = int(node.mem.control.words[CT.W_START])
    now = time.time()
    return {"Now": time.ctime(now), "Up since": time.ctime(start_ms / 1000),
            "Up time": f"{int(now - start_ms / 1000)} [sec]"}


@command("version")
def mi_version(node: Any) -> dict[str, str]:
    """Software version."""
    try:
        v = dist_version("fastcluster-sip")
    except PackageNotFoundError:
        v = "unknown"
    return {"Server": f"fastcluster {v}"}


@command("persistence_status")
def mi_persistence_status(node: Any) -> dict[str, Any]:
    """The database the tables are written to: backend, last flush (unix ms, rows,
    seconds), rows waiting for the next flush, rows and size in the database."""
    if node.persistence is None:
        return {"backend": "off"}
    return node.persistence.status()
from fastcluster.services.sip import proxy_mi  # noqa: E402,F401  (t_list, t_stats)
