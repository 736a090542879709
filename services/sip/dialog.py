"""Dialog MI commands: dlg_digest (compare nodes), dlg_list (the dialogs, OpenSIPS-like).

Dialogs are created by the proxy (a later issue); until then they come from replication,
sync, or a test writer. Neighbours: shm.dialogs (layout), shm.tables, services.mi.
"""
from __future__ import annotations

from typing import Any

from fastcluster.services.mi.registry import command


@command("dlg_digest", heavy=True)
def mi_dlg_digest(node: Any) -> dict[str, Any]:
    """{"dialogs": N, "digest": HEX}: equal on nodes holding the same live dialogs."""
    n, digest = node.mem.dialogs.digest(live_only=True)
    return {"dialogs": n, "digest": digest}


@command("dlg_list", heavy=True)
def mi_dlg_list(node: Any, callid: str | None = None) -> dict[str, Any]:
    """Live dialogs (all, or those of one Call-ID)."""
    table = node.mem.dialogs
    rows = table.group(callid.encode()) if callid else table.rows(live_only=True)
    out = []
    for r in rows:
        out.append({"ID": str(r["key"]), "state": r["dlg_state"], "timestart": r["start"],
                    "timeout": r["expires"], "callid": r["callid"],
                    "from_uri": r["from_uri"], "to_uri": r["to_uri"],
                    "caller_tag": r["from_tag"], "callee_tag": r["to_tag"],
                    "caller_contact": r["caller_contact"],
                    "callee_contact": r["callee_contact"], "origin": r["origin"]})
    return {"Dialogs": out}
