"""Cluster-wide statistics from any node, with one MI command.

    [script]
    module = /path/to/examples/cluster_stats.py

    $ fastcluster mi cluster_stats statistics='["core:rcv_requests", "usrloc:"]'
    {"nodes": {"1": {...}, "2": {...}}, "total": {...}, "missing": []}

The node asked sends one request to every node of the cluster it can reach, each node's
script answers with its own statistics (the names and groups get_statistics accepts),
and the command answers them per node, summed, and which nodes did not answer within the
timeout. Gauges such as usrloc:registered_contacts are summed too: on a cluster that
replicates contacts every node holds all of them, so read those per node.
"""
from fastcluster.services.mi.registry import MIError
from fastcluster.services.script import (
    ScriptMIError,
    cluster_send_rpl,
    mi_command,
    node_id,
    request,
)
from fastcluster.services.script import statistics as node_statistics


def on_request(cluster_id, src_id, msg, tag):
    if isinstance(msg, dict) and "stats" in msg:
        try:
            answer = {"stats": node_statistics(msg["stats"])}
        except MIError as exc:
            answer = {"error": exc.message}
        cluster_send_rpl(cluster_id, src_id, answer, tag)


@mi_command("cluster_stats")
def cluster_stats(statistics="all", cluster_id=1, timeout=1.0):
    """Statistics of every reachable node of a cluster, per node and summed."""
    names = [statistics] if isinstance(statistics, str) else list(statistics)
    try:
        nodes = {str(node_id()): node_statistics(names)}
    except MIError as exc:
        raise ScriptMIError(exc.code, exc.message) from None
    replies = request(int(cluster_id), {"stats": names}, timeout=float(timeout))
    errors = {}
    for node, answer in replies.items():
        if "stats" in answer:
            nodes[str(node)] = answer["stats"]
        else:
            errors[str(node)] = answer.get("error")
    total = {}
    for values in nodes.values():
        for name, value in values.items():
            total[name] = total.get(name, 0) + value
    out = {"nodes": dict(sorted(nodes.items(), key=lambda kv: int(kv[0]))), "total": total,
           "missing": replies.missing}
    if errors:
        out["errors"] = errors
    return out
