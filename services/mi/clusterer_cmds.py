"""Clusterer MI commands, written against the narrow cluster API (shapes follow OpenSIPS
3.x): clusterer_list, clusterer_list_topology, clusterer_set_status,
clusterer_remove_node, clusterer_list_cap, clusterer_set_cap_status, ul_cluster_sync,
dlg_cluster_sync, cluster_range_digests (what anti-entropy compares),
clusterer_list_shtags, clusterer_shtag_set_active, cluster_send_mi /
cluster_broadcast_mi (also under the clusterer_ prefix).

`link_state` is Up when the node is reachable, directly or through a relay (then
`next_hop` names the relay); `direct_link` is the state of our own link to it.
Neighbours: services.cluster.api, services.mi.remote (remote commands),
services.mi.registry.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from fastcluster.services.cluster.api import ClusterAPI, NodeView, SendResult
from fastcluster.services.mi import remote
from fastcluster.services.mi.registry import INVALID_PARAMS, MIError, MINode, command
from fastcluster.shm import table as T
from fastcluster.shm.tables import TABLES

REMOTE_MI_TIMEOUT_S = 10.0


def _cluster(api: ClusterAPI, cluster_id: Any) -> int:
    try:
        cid = int(cluster_id)
    except (TypeError, ValueError):
        raise MIError(400, "Bad value for 'cluster_id'") from None
    if cid not in api.clusters:
        raise MIError(404, "Cluster id not found")
    return cid


def _status(value: Any) -> bool:
    if str(value) not in ("0", "1"):
        raise MIError(400, "Bad value for 'status'")
    return str(value) == "1"


def link_state(view: NodeView) -> str:
    """clusterer_list's link_state: Up when reachable (directly or through a relay),
    else Probe while our own link probes it, else Down."""
    if view.reachable:
        return "Up"
    return "Probe" if view.direct_link == "Probe" else "Down"


@command("clusterer_list", cluster=True)
def mi_clusterer_list(node: MINode) -> dict[str, Any]:
    """Every known node of every cluster, with its link state and next hop."""
    clusters = []
    for cid in node.cluster.clusters:
        nodes = []
        for view in node.cluster.nodes(cid):
            state = link_state(view)
            url = f"bin:{view.url[0]}:{view.url[1]}" if view.url else "none"
            nodes.append({"node_id": view.node_id, "db_id": view.node_id, "url": url,
                          "link_state": state, "direct_link": view.direct_link,
                          "state": "enabled" if view.enabled else "disabled",
                          "next_hop": str(view.next_hop) if view.next_hop is not None
                          else "none", "left": view.left, "rtt_ms": view.rtt_ms,
                          "clock_skew_ms": view.clock_skew_ms, "description": "none"})
        clusters.append({"cluster_id": cid, "Nodes": nodes})
    return {"Clusters": clusters}


@command("clusterer_list_topology", cluster=True)
def mi_clusterer_list_topology(node: MINode) -> dict[str, Any]:
    """Each node's Up neighbours as this node knows them (itself first)."""
    api = node.cluster
    clusters = []
    for cid in api.clusters:
        nodes = [{"node_id": api.me, "Neighbours": api.neighbours(cid, api.me)}]
        for origin in sorted(api.members(cid) - {api.me}):
            nodes.append({"node_id": origin, "Neighbours": api.neighbours(cid, origin)})
        clusters.append({"cluster_id": cid, "Nodes": nodes})
    return {"Clusters": clusters}


@command("clusterer_set_status", cluster=True)
def mi_clusterer_set_status(node: MINode, cluster_id: Any, status: Any,
                            node_id: Any = None) -> str:
    """Enable (1) or disable (0) this node, or node_id, in a cluster."""
    api = node.cluster
    cid = _cluster(api, cluster_id)
    enabled = _status(status)
    target = api.me if node_id in (None, "") else int(node_id)
    if target == api.me:
        api.set_status(cid, enabled)
        return "OK"
    if not api.knows(target):
        raise MIError(404, "Node id not found")
    if api.set_remote_status(cid, target, enabled) != SendResult.SUCCESS:
        raise MIError(400, "Destination down")
    return "OK"


@command("clusterer_remove_node", cluster=True)
def mi_clusterer_remove_node(node: MINode, cluster_id: Any, node_id: Any) -> str:
    """Forget a node on every node (a running node that is removed disables itself)."""
    api = node.cluster
    _cluster(api, cluster_id)
    target = int(node_id)
    if target == api.me:
        raise MIError(400, "Cannot remove the local node")
    if not api.knows(target):
        raise MIError(404, "Node id not found")
    api.remove_node(target)
    return "OK"


@command("clusterer_list_cap", cluster=True)
def mi_clusterer_list_cap(node: MINode) -> dict[str, Any]:
    """Every capability of every cluster: this node's state, each node's state, and the
    progress of a sync under way (donor, records, percent, rate)."""
    clusters: dict[int, list[dict[str, Any]]] = {}
    for cap in node.cluster.capabilities():
        nodes = [{"node_id": n, "state": info.state.text if info else "unknown",
                  "enabled": ("yes" if info.enabled else "no") if info else "unknown",
                  "reachable": reachable} for n, info, reachable in cap.nodes]
        item: dict[str, Any] = {"name": cap.name, "state": cap.state.text,
                                "enabled": "yes" if cap.enabled else "no", "Nodes": nodes}
        if cap.sync is not None:
            item["sync"] = cap.sync
        clusters.setdefault(cap.cluster, []).append(item)
    return {"Clusters": [{"cluster_id": c, "Capabilities": items}
                         for c, items in sorted(clusters.items())]}


@command("clusterer_set_cap_status", cluster=True)
def mi_clusterer_set_cap_status(node: MINode, cluster_id: Any, capability: str,
                                status: Any) -> str:
    """Enable (1) or disable (0) a capability on this node."""
    caps = {c.name: c for c in node.cluster.capabilities()}
    cap = caps.get(capability)
    if cap is None:
        raise MIError(404, "Capability not found")
    if cap.cluster != int(cluster_id):
        raise MIError(404, "Capability not in that cluster")
    node.cluster.set_capability_enabled(capability, _status(status))
    return "OK"


def _request_sync(node: MINode, table: str) -> str:
    name = next(spec.capability for spec in TABLES if spec.name == table)
    if name not in {c.name for c in node.cluster.capabilities()}:
        raise MIError(400, "Clustering not enabled for this table")
    if not node.cluster.capability_enabled(name):
        raise MIError(400, "Capability disabled")
    node.cluster.request_sync(name, "MI request")
    return "OK"


@command("ul_cluster_sync", cluster=True)
def mi_ul_cluster_sync(node: MINode) -> str:
    """Start a full sync of the contacts from a donor."""
    return _request_sync(node, "contacts")


@command("dlg_cluster_sync", cluster=True)
def mi_dlg_cluster_sync(node: MINode) -> str:
    """Start a full sync of the dialogs from a donor."""
    return _request_sync(node, "dialogs")


@command("clusterer_list_shtags", cluster=True)
def mi_clusterer_list_shtags(node: MINode) -> list[dict[str, Any]]:
    """Every sharing tag: Tag, Cluster, State here (active/backup), its newest
    activation (Epoch, Holder), the nodes declaring it, whether this node sees a
    majority of them, and why it is in that state."""
    return node.cluster.shtags()


@command("clusterer_shtag_set_active", cluster=True)
def mi_clusterer_shtag_set_active(node: MINode, tag: str) -> str:
    """Make a sharing tag (NAME or NAME/CLUSTER) active on this node; the node holding
    it steps down when it hears the higher epoch."""
    api = node.cluster
    name, slash, cluster_text = str(tag).partition("/")
    cluster = _cluster(api, cluster_text) if slash else api.clusters[0]
    refused = api.shtag_set_active(name, cluster)
    if refused is not None:
        raise MIError(404 if "not declared" in refused else 409, refused)
    return "OK"


def _int_param(value: Any, name: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise MIError(400, f"Bad value for '{name}'") from None
    if not low <= n <= high:
        raise MIError(400, f"'{name}' must be {low}..{high}")
    return n


@command("cluster_range_digests")
def mi_cluster_range_digests(node: MINode, table: str, first: Any = 0,
                             count: Any = T.NRANGES) -> dict[str, Any]:
    """The per-range digests anti-entropy compares, for `count` ranges from `first`:
    equal on nodes holding the same rows (live and tombstones) of those ranges."""
    if table not in node.mem.tables:
        raise MIError(404, f"Table not found (one of {', '.join(node.mem.tables)})")
    lo = _int_param(first, "first", 0, T.NRANGES - 1)
    n = _int_param(count, "count", 1, T.NRANGES - lo)
    digests = node.mem.tables[table].range_digests()[lo:lo + n].copy()
    return {"table": table, "ranges": T.NRANGES, "first": lo,
            "ranges_with_rows": int(np.count_nonzero(digests)),
            "digests": [f"{int(d) & 0xFFFFFFFFFFFFFFFF:016x}" for d in digests]}


def _params(cmd_params: Any) -> Any:
    if cmd_params is None or isinstance(cmd_params, (list, dict)):
        return cmd_params
    raise MIError(INVALID_PARAMS, "cmd_params must be an array or an object")


@command("cluster_send_mi", cluster=True, aliases=("clusterer_send_mi",))
async def mi_cluster_send_mi(node: MINode, cluster_id: Any, destination: Any, cmd_name: str,
                             cmd_params: Any = None) -> Any:
    """Run an MI command on another node; returns that node's result."""
    cid = _cluster(node.cluster, cluster_id)
    dest = int(destination)
    if dest == node.cluster.me:
        raise MIError(400, "Local node specified as destination")
    answer = await remote.run(node.cluster, cid, dest, cmd_name, _params(cmd_params),
                              REMOTE_MI_TIMEOUT_S)
    if "error" in answer:
        err = answer["error"]
        raise MIError(int(err.get("code", 500)), str(err.get("message")))
    return answer.get("result")


@command("cluster_broadcast_mi", cluster=True, aliases=("clusterer_broadcast_mi",))
async def mi_cluster_broadcast_mi(node: MINode, cluster_id: Any, cmd_name: str,
                                  cmd_params: Any = None) -> dict[str, Any]:
    """Run an MI command on every reachable node of the cluster and here; returns each
    node's result or error."""
    api = node.cluster
    cid = _cluster(api, cluster_id)
    params = _params(cmd_params)
    answers = await asyncio.gather(*(remote.run(api, cid, n, cmd_name, params,
                                                REMOTE_MI_TIMEOUT_S)
                                     for n in api.up_nodes(cid)))
    local = await node.run_mi(cmd_name, params)
    out = [{"node": api.me, **local}] + [{"node": a.get("node"), **{k: v for k, v in a.items()
                                                                  if k != "node"}}
                                         for a in answers]
    return {"Nodes": sorted(out, key=lambda item: item["node"])}
