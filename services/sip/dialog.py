"""Dialog MI commands (shapes of OpenSIPS 3.x where it has the command): dlg_list,
dlg_list_ctx, dlg_end_dlg, profile_get_size, profile_list_dlgs, and dlg_digest (compare
nodes).

Every node holds every dialog (dialog-dlg-repl), so dlg_list answers the same
everywhere. A dialog's ID is "<Call-ID hash>.<dialog key>" in hex (OpenSIPS's
"h_entry.h_id" shape). dlg_end_dlg marks the dialog (flag F_END, replicated); the node
that runs its timers -- its sharing tag's active node -- sends the BYEs at its next
scan (services.sip.dialog_timer), whichever node was asked. Profile sizes are
cluster-wide: this node's counts plus the others' (shm.profiles, services.sip.
profile_repl). Neighbours: shm.dialogs (layout), shm.tables, services.mi.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from fastcluster.services.mi.registry import INVALID_PARAMS, MIError, Streamed, command
from fastcluster.shm import dialogs as D
from fastcluster.shm.profiles import REMOTE_SCOPE
from fastcluster.shm.tables import retry_busy


def dialog_id(row: dict) -> str:
    return f"{row['group']:x}.{row['key']:x}"


def describe(row: dict, ctx: bool = False) -> dict[str, Any]:
    """One dialog as dlg_list shows it (OpenSIPS's field names)."""
    out = {"ID": dialog_id(row), "state": row["dlg_state"], "user_flags": row["flags"],
           "timestart": row["start"], "timeout": row["timeout"], "callid": row["callid"],
           "from_uri": row["from_uri"], "to_uri": row["to_uri"],
           "caller_tag": row["from_tag"], "caller_contact": row["caller_contact"],
           "caller_cseq": str(row["caller_cseq"]), "caller_route_set": row["caller_route"],
           "caller_bind_addr": row["caller_sock"].partition(" ")[0],
           "callee_tag": row["to_tag"],
           "callee_contact": row["callee_contact"], "callee_cseq": str(row["callee_cseq"]),
           "callee_route_set": row["callee_route"],
           "callee_bind_addr": row["callee_sock"].partition(" ")[0],
           "sharing_tag": row["shtag"]}
    if ctx:
        out["context"] = {"profiles": [p for p in row["profiles"].split("\n") if p],
                          "creator": row["creator"], "origin": row["origin"],
                          "version": row["version"]}
    return out


def _rows(node: Any, callid: str | None, from_tag: str | None) -> Iterator[dict]:
    table = node.mem.dialogs
    if callid:
        for r in table.group(callid.encode()):
            if from_tag is None or r["from_tag"] == from_tag:
                yield r
    else:
        if from_tag is not None:
            raise MIError(INVALID_PARAMS, "from_tag needs callid")
        yield from table.rows(live_only=True)


def _listing(node: Any, ctx: bool, callid: str | None, from_tag: str | None,
             index: Any, counter: Any) -> Streamed:
    try:
        first = int(index) if index is not None else 0
        count = int(counter) if counter is not None else -1
    except (TypeError, ValueError):
        raise MIError(INVALID_PARAMS, "index and counter must be integers") from None

    def items() -> Iterator[dict]:
        for i, r in enumerate(_rows(node, callid, from_tag)):
            if i < first:
                continue
            if 0 <= count <= i - first:
                break
            yield describe(r, ctx)

    return Streamed('{"Dialogs": [', items(), "]}")


@command("dlg_list", heavy=True)
def mi_dlg_list(node: Any, callid: str | None = None, from_tag: str | None = None,
                index: Any = None, counter: Any = None) -> Streamed:
    """Live dialogs: all, those of a Call-ID (and From tag), or `counter` of them from
    position `index`."""
    return _listing(node, False, callid, from_tag, index, counter)


@command("dlg_list_ctx", heavy=True)
def mi_dlg_list_ctx(node: Any, callid: str | None = None, from_tag: str | None = None,
                    index: Any = None, counter: Any = None) -> Streamed:
    """dlg_list with each dialog's context: profiles, creator, origin and version."""
    return _listing(node, True, callid, from_tag, index, counter)


@command("dlg_digest", heavy=True)
def mi_dlg_digest(node: Any) -> dict[str, Any]:
    """{"dialogs": N, "digest": HEX}: equal on nodes holding the same live dialogs."""
    n, digest = node.mem.dialogs.digest(live_only=True)
    return {"dialogs": n, "digest": digest}


def _find(node: Any, dialog_id_or_callid: str) -> dict | None:
    table = node.mem.dialogs
    out = np.zeros(table.row_size, dtype=np.uint8)
    group_text, dot, key_text = dialog_id_or_callid.partition(".")
    try:
        group, key = int(group_text, 16), int(key_text, 16)
        ok = bool(dot) and group < 1 << 64 and key < 1 << 64
    except ValueError:
        ok = False
    if ok and retry_busy(lambda: D.dlg_get(table.buf, np.uint64(key), np.uint64(group),
                                           out)) >= 0:
        row = D.DIALOG.decode(out, 1, table.row_size)[0]
        return row if row["state"] == 1 else None
    live = [r for r in table.group(dialog_id_or_callid.encode())]
    return live[0] if live else None


@command("dlg_end_dlg")
def mi_dlg_end_dlg(node: Any, dialog_id: str, extra_hdrs: str | None = None) -> str:
    """End a dialog (its ID from dlg_list, or its Call-ID): the node running its timers
    sends a BYE to each leg of a confirmed dialog within a second; an early one gets
    no BYE (no leg has a dialog yet): its INVITE is CANCELled by the node that routed
    it, as OpenSIPS does (services.sip.dialog_timer)."""
    if extra_hdrs:
        raise MIError(400, "extra_hdrs is not supported")
    row = _find(node, str(dialog_id))
    if row is None:
        raise MIError(404, "Dialog not found")
    patch = np.zeros(node.mem.dialogs.row_size, dtype=np.uint8)
    out = np.zeros_like(patch)
    D.pack_dialog(patch, node.mem.dialogs.row_size,
                  strings={"callid": row["callid"].encode(),
                           "from_tag": row["from_tag"].encode()},
                  timeout=0, start=0, dlg_state=0, flags=D.F_END)
    while True:
        r = D.dlg_apply(node.mem.dialogs.buf, node.rings["dialogs"], patch, D.OP_UPDATE,
                        int(time.time() * 1000), node.me, node.slot, out)
        if r != D.E_BUSY:
            break
        time.sleep(0.001)
    if r < 0:
        raise MIError(404, "Dialog not found")
    return "OK"


def profile_counts(node: Any, cluster: int) -> dict[str, int]:
    """profile entry -> dialogs cluster-wide, as the workers' limits see them: this
    node's counts (its active tags, its untagged dialogs) and the others' ("*")."""
    active = {t.encode() for t in node.mem.shtags.active(cluster)} | {b""}
    out: dict[str, int] = {}
    for (scope, profile), (local, recent, remote) in node.mem.profiles.entries().items():
        n = remote if scope == REMOTE_SCOPE else local + recent if scope in active else 0
        if n:
            key = profile.decode("utf-8", "replace")
            out[key] = out.get(key, 0) + n
    return out


def _dialog_cluster(node: Any) -> int:
    return node.cfg.replication_cluster("dialog.replication_cluster") or \
        node.cfg["clusterer.cluster_id"][0]


@command("profile_get_size")
def mi_profile_get_size(node: Any, profile: str, value: str | None = None) -> dict[str, Any]:
    """Dialogs in a profile (with a value: in that value) across the cluster."""
    known = {name for name, _ in node.cfg["dialog.profiles"]}
    if profile not in known:
        raise MIError(404, "Profile not found")
    counts = profile_counts(node, _dialog_cluster(node))
    if value is not None:
        n = counts.get(f"{profile}/{value}", 0)
    else:
        n = sum(c for p, c in counts.items() if p == profile or p.startswith(profile + "/"))
    return {"Profile": {"name": profile, "value": value or "", "count": n}}


@command("profile_list_dlgs", heavy=True)
def mi_profile_list_dlgs(node: Any, profile: str, value: str | None = None) -> Streamed:
    """The live dialogs of a profile (and value), every node's (dlg_list shape)."""
    known = {name for name, _ in node.cfg["dialog.profiles"]}
    if profile not in known:
        raise MIError(404, "Profile not found")
    want = f"{profile}/{value}" if value is not None else None

    def items() -> Iterator[dict]:
        for r in node.mem.dialogs.rows(live_only=True):
            entries = r["profiles"].split("\n")
            if (want in entries) if want is not None else any(
                    e == profile or e.startswith(profile + "/") for e in entries):
                yield describe(r)

    return Streamed('{"Dialogs": [', items(), "]}")
