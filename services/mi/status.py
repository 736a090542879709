"""One snapshot of a node and of its view of the cluster: the `status` MI command, which
the status page (`GET /`) polls and `GET /metrics` turns into metrics.

It runs in the cluster loop (it reads the cluster API) and costs a few hundred
microseconds: views of the links, the capabilities and syncs, the ping partition map
(the full owner list only when its epoch changed since the caller's copy), the counters
summed over the processes, the table counters that need no scan, the replication rings
and the processes. Neighbours: services.cluster.api (views), services.mi.metrics
(exposition and the sync observations), services.mi.pages (the page).
"""
from __future__ import annotations

import base64
import time
from importlib.metadata import PackageNotFoundError, version as dist_version
from typing import Any

import numpy as np

from fastcluster.core.stats import COUNTERS
from fastcluster.services.mi.clusterer_cmds import link_state
from fastcluster.services.mi.metrics import OBSERVER
from fastcluster.services.mi.registry import MINode, command
from fastcluster.shm import control as CT
from fastcluster.shm import ring as R
from fastcluster.shm.tables import TABLES

try:
    VERSION = dist_version("fastcluster-sip")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "unknown"


def _host_port(hp: tuple[str, int]) -> str:
    host, port = hp
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def process_name(p: dict[str, Any]) -> str:
    """sip-3, cluster, timer, master, script (as in the log lines)."""
    return f"sip-{p['number']}" if p["role"] == "sip" else p["role"]


def clusters(node: MINode) -> list[dict[str, Any]]:
    api = node.cluster
    out = []
    for cid in api.clusters:
        me = {"node_id": api.me, "me": True, "url": _host_port(api.url) if api.url
              else None, "link_state": "Up", "direct_link": "Up", "reachable": True,
              "next_hop": api.me, "rtt_ms": 0, "clock_skew_ms": 0,
              "enabled": api.enabled(cid), "left": False, "backlog_bytes": None}
        nodes = [me]
        for view in api.nodes(cid):
            nodes.append({"node_id": view.node_id, "me": False,
                          "url": _host_port(view.url) if view.url else None,
                          "sip": [_host_port(s) for s in view.sip],
                          "link_state": link_state(view), "direct_link": view.direct_link,
                          "reachable": view.reachable, "next_hop": view.next_hop,
                          "rtt_ms": view.rtt_ms, "clock_skew_ms": view.clock_skew_ms,
                          "enabled": view.enabled, "left": view.left,
                          "backlog_bytes": api.backlog(cid, view.node_id)})
        topology = {str(n["node_id"]): api.neighbours(cid, n["node_id"]) for n in nodes}
        out.append({"cluster_id": cid, "enabled": api.enabled(cid), "nodes": nodes,
                    "topology": topology})
    return out


def capabilities(node: MINode) -> list[dict[str, Any]]:
    out = []
    for cap in node.cluster.capabilities():
        out.append({"name": cap.name, "cluster": cap.cluster, "state": cap.state.text,
                    "enabled": cap.enabled, "sync": cap.sync,
                    "last_sync": OBSERVER.last_sync.get(cap.name),
                    "nodes": [{"node_id": n, "state": info.state.text if info else "unknown",
                               "enabled": bool(info.enabled) if info else False,
                               "reachable": reachable} for n, info, reachable in cap.nodes]})
    return out


def partitions(node: MINode, known_epoch: int) -> dict[str, Any]:
    epoch, owners = node.mem.control.read_partitions()
    me = node.cfg["clusterer.node_id"]
    ids, counts = np.unique(owners, return_counts=True)
    out: dict[str, Any] = {"epoch": epoch, "total": int(owners.shape[0]),
                           "owned": int((owners == me).sum()),
                           "owners": {str(int(n)): int(c) for n, c in zip(ids, counts)}}
    if epoch != known_epoch:  # the page keeps the map until the epoch changes
        out["map"] = base64.b64encode(owners.astype("<u2").tobytes()).decode()
    return out


def rings(node: MINode) -> list[dict[str, Any]]:
    out = []
    nprocs = node.mem.control.nprocs
    for spec in TABLES:
        figures = [R.stats(node.mem.ring(slot, spec.name)) for slot in range(nprocs)]
        figures = [f for f in figures if f["capacity"]]
        out.append({"table": spec.name,
                    "fill_ratio": max((f["pending_bytes"] / f["capacity"] for f in figures),
                                      default=0.0),
                    "pending_bytes": sum(f["pending_bytes"] for f in figures),
                    "pushed": sum(f["pushed"] for f in figures),
                    "not_pushed": sum(f["gaps"] for f in figures)})
    return out


@command("status", cluster=True)
def mi_status(node: MINode, partitions_epoch: Any = -1) -> dict[str, Any]:
    """This node and its view of the cluster in one object (the status page polls it):
    links, topology, capabilities and syncs, ping partitions, counters, rings."""
    mem = node.mem
    totals = mem.control.totals()
    procs = mem.control.processes()
    contacts, dialogs = mem.contacts.counters(), mem.dialogs.counters()
    return {
        "node_id": node.cluster.me, "version": VERSION, "now_ms": int(time.time() * 1000),
        "uptime_s": round(time.time() - int(mem.control.words[CT.W_START]) / 1000, 1),
        "instance": node.cfg.instance, "sip": node.sip_sockets,
        "mi": _host_port(node.cfg["mi.listen"]),
        "clusters": clusters(node), "capabilities": capabilities(node),
        "partitions": partitions(node, int(partitions_epoch)),
        "counters": {f"{g}:{n}": int(totals[i]) for i, (g, n, _) in enumerate(COUNTERS)},
        "gauges": {"usrloc:registered_contacts": contacts["live"],
                   "usrloc:tombstones": contacts["tomb"],
                   "usrloc:capacity": mem.contacts.capacity,
                   "dialog:active_dialogs": dialogs["live"],
                   "dialog:capacity": mem.dialogs.capacity},
        "rings": rings(node),
        "processes": [{"name": process_name(p), "pid": p["pid"],
                       "heartbeat_age_ms": p["heartbeat_age_ms"] if p["role"] != "master"
                       else 0, "restarts": p["restarts"]} for p in procs],
    }
