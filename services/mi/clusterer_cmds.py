"""Clusterer MI commands (shapes follow OpenSIPS 3.x): clusterer_list,
clusterer_list_topology, clusterer_set_status, clusterer_remove_node,
cluster_send_mi / cluster_broadcast_mi (also under the clusterer_ prefix).

`link_state` is Up when the node is reachable, directly or through a relay (then
`next_hop` names the relay); `direct_link` is the state of our own link to it.
Neighbours: services.clusterer, services.mi.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastcluster.services.mi.registry import INVALID_PARAMS, MIError, command
from fastcluster.services.cluster.topology import Link

REMOTE_MI_TIMEOUT_S = 10.0


def _cluster(node: Any, cluster_id: Any) -> int:
    try:
        cid = int(cluster_id)
    except (TypeError, ValueError):
        raise MIError(400, "Bad value for 'cluster_id'") from None
    if cid not in node.clusterer.clusters:
        raise MIError(404, "Cluster id not found")
    return cid


@command("clusterer_list")
def mi_clusterer_list(node: Any) -> dict[str, Any]:
    """Every known node of every cluster, with its link state and next hop."""
    cl = node.clusterer
    clusters = []
    for cid in cl.clusters:
        nodes = []
        for peer in sorted(cl.peers.values(), key=lambda p: p.node_id):
            if cid not in peer.clusters:
                continue
            hop = cl.reachable[cid].get(peer.node_id)
            if hop is not None:
                state = "Up"
            elif peer.link == Link.PROBE:
                state = "Probe"
            else:
                state = "Down"
            url = f"bin:{peer.url[0]}:{peer.url[1]}" if peer.url else "none"
            nodes.append({"node_id": peer.node_id, "db_id": peer.node_id, "url": url,
                          "link_state": state, "direct_link": peer.link.value,
                          "state": "disabled" if cid in cl.disabled.get(peer.node_id, ())
                          else "enabled",
                          "next_hop": str(hop) if hop is not None else "none",
                          "left": peer.left, "description": "none"})
        clusters.append({"cluster_id": cid, "Nodes": nodes})
    return {"Clusters": clusters}


@command("clusterer_list_topology")
def mi_clusterer_list_topology(node: Any) -> dict[str, Any]:
    """Each node's Up neighbours as this node knows them (itself first)."""
    cl = node.clusterer
    clusters = []
    for cid in cl.clusters:
        mine = sorted(p.node_id for p in cl.peers.values()
                      if p.link == Link.UP and cid in p.clusters)
        nodes = [{"node_id": cl.me, "Neighbours": mine}]
        for origin in sorted(cl.members(cid) - {cl.me}):
            seq_lsa = cl.adverts.get(origin)
            neighbours = sorted(seq_lsa[1].get(cid, set())) if seq_lsa else []
            nodes.append({"node_id": origin, "Neighbours": neighbours})
        clusters.append({"cluster_id": cid, "Nodes": nodes})
    return {"Clusters": clusters}


@command("clusterer_set_status")
def mi_clusterer_set_status(node: Any, cluster_id: Any, status: Any,
                            node_id: Any = None) -> str:
    """Enable (1) or disable (0) this node, or node_id, in a cluster."""
    cl = node.clusterer
    cid = _cluster(node, cluster_id)
    if str(status) not in ("0", "1"):
        raise MIError(400, "Bad value for 'status'")
    enabled = str(status) == "1"
    target = cl.me if node_id in (None, "") else int(node_id)
    if target == cl.me:
        cl.set_status(cid, enabled)
        return "OK"
    if target not in cl.peers:
        raise MIError(404, "Node id not found")
    from fastcluster.core.wire import Msg

    hop = cl._next_hop_any(cid, target)
    if hop is None:
        raise MIError(400, "Destination down")
    cl.send_direct_or_relay(cid, target, Msg.SET_STATUS, {"cluster": cid, "status": enabled})
    return "OK"


@command("clusterer_remove_node")
def mi_clusterer_remove_node(node: Any, cluster_id: Any, node_id: Any) -> str:
    """Forget a node on every node (a running node that is removed disables itself)."""
    cl = node.clusterer
    _cluster(node, cluster_id)
    target = int(node_id)
    if target == cl.me:
        raise MIError(400, "Cannot remove the local node")
    if target not in cl.peers:
        raise MIError(404, "Node id not found")
    cl.remove_node(target)
    return "OK"


def _params(cmd_params: Any) -> Any:
    if cmd_params is None or isinstance(cmd_params, (list, dict)):
        return cmd_params
    raise MIError(INVALID_PARAMS, "cmd_params must be an array or an object")


@command("cluster_send_mi", aliases=("clusterer_send_mi",))
async def mi_cluster_send_mi(node: Any, cluster_id: Any, destination: Any, cmd_name: str,
                             cmd_params: Any = None) -> Any:
    """Run an MI command on another node; returns that node's result."""
    cl = node.clusterer
    cid = _cluster(node, cluster_id)
    dest = int(destination)
    if dest == cl.me:
        raise MIError(400, "Local node specified as destination")
    answer = await cl.run_remote_mi(cid, dest, cmd_name, _params(cmd_params),
                                    REMOTE_MI_TIMEOUT_S)
    if "error" in answer:
        err = answer["error"]
        raise MIError(int(err.get("code", 500)), str(err.get("message")))
    return answer.get("result")


@command("cluster_broadcast_mi", aliases=("clusterer_broadcast_mi",))
async def mi_cluster_broadcast_mi(node: Any, cluster_id: Any, cmd_name: str,
                                  cmd_params: Any = None) -> dict[str, Any]:
    """Run an MI command on every reachable node of the cluster and here; returns each
    node's result or error."""
    cl = node.clusterer
    cid = _cluster(node, cluster_id)
    params = _params(cmd_params)
    remote = await asyncio.gather(*(cl.run_remote_mi(cid, n, cmd_name, params,
                                                     REMOTE_MI_TIMEOUT_S)
                                    for n in cl.up_nodes(cid)))
    local = await node.run_mi(cmd_name, params)
    out = [{"node": cl.me, **local}] + [{"node": a.get("node"), **{k: v for k, v in a.items()
                                                                  if k != "node"}}
                                        for a in remote]
    return {"Nodes": sorted(out, key=lambda item: item["node"])}
