"""The partition map: which node NAT-pings which contacts.

The owners are the reachable nodes of the usrloc-contact-repl cluster whose capability
is synced and enabled (this node included when it qualifies); a node alone, or with
contact replication off, owns everything. The cluster process recomputes the map with
the rendezvous kernel (shm.partitions) after every membership or capability change and
publishes it in shared memory with an epoch. Neighbours: shm.partitions (kernels),
services.capabilities, services.natping (the timer side), services.mi.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fastcluster.services.cluster.capabilities import CapState
from fastcluster.services.mi.registry import command
from fastcluster.shm import partitions as P
from fastcluster.shm.contacts import FLAG_NAT

log = logging.getLogger("partitions")

CAP = "usrloc-contact-repl"


def eligible_nodes(caps: Any) -> list[int]:
    """Nodes that share the NAT pinging: reachable, contacts synced and enabled; if no
    node is synced yet (a cluster starting), those with contacts enabled -- someone
    pinging beats nobody pinging."""
    cl = caps.cl
    if CAP not in caps.local:
        return [cl.me]  # contacts are not replicated: this node pings its own
    cluster = caps.cluster_of(CAP)
    infos = [(node, caps.info(node, CAP)) for node in [cl.me] + cl.up_nodes(cluster)]
    enabled = [(node, info) for node, info in infos if info is not None and info.enabled]
    synced = [node for node, info in enabled if info.state == CapState.SYNCED]
    return sorted(synced or [node for node, _ in enabled])


class PartitionMap:
    def __init__(self, proc: Any, caps: Any) -> None:
        self.control = proc.mem.control
        self.caps = caps
        self.count = proc.cfg["usrloc.ping_partitions"]
        self.owners = np.zeros(self.count, dtype=np.uint16)
        self.nodes: list[int] | None = None

    def update(self) -> None:
        nodes = eligible_nodes(self.caps)
        if nodes == self.nodes:
            return
        arr = np.array(nodes or [0], dtype=np.int64)
        P.compute_owners(arr, len(nodes), self.owners)
        epoch = self.control.publish_partitions(self.owners)
        mine = int(np.count_nonzero(self.owners == self.caps.cl.me))
        log.info("partition map %d: %d partitions over nodes %s, %d here", epoch,
                 self.count, nodes, mine)
        self.nodes = nodes


@command("ul_ping_partitions", heavy=True)
def mi_ul_ping_partitions(node: Any) -> dict[str, Any]:
    """This node's ping partitions, the contacts in them, and the last ping cycle."""
    from fastcluster.services.sip.natping import cycle_status

    epoch, owners = node.mem.control.read_partitions()
    me = node.clusterer.me
    mine = np.flatnonzero(owners == me)
    nat_only = node.cfg["usrloc.natping_targets"] == "nat"
    contacts = int(P.count_owned(node.mem.contacts.buf, owners, me, nat_only, FLAG_NAT))
    return {"node_id": me, "epoch": epoch, "partitions": int(owners.shape[0]),
            "owned": int(mine.shape[0]), "owned_partitions": _ranges(mine),
            "owners": {str(n): int(c) for n, c in zip(*np.unique(owners, return_counts=True))},
            "contacts": contacts, "targets": node.cfg["usrloc.natping_targets"],
            "interval_s": node.cfg["usrloc.natping_interval_s"],
            "last_cycle": cycle_status(node.mem.control)}


def _ranges(values: np.ndarray) -> list[str]:
    """[0,1,2,5,7,8] -> ["0-2", "5", "7-8"] (compact for 4096 partitions)."""
    out: list[str] = []
    start = prev = None
    for v in values.tolist():
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return out
