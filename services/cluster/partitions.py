"""The partition map: which node NAT-pings which contacts.

The owners are the nodes that share the contact capability's work (api.synced_nodes:
reachable, synced and enabled, this node included when it qualifies); a node alone, or
with contact replication off, owns everything. The cluster process recomputes the map
with the rendezvous kernel (shm.partitions) after every membership or capability change
and publishes it in shared memory with an epoch. Neighbours: shm.partitions (kernels),
services.cluster.api, services.sip.natping (the timer side).
"""
from __future__ import annotations

import logging

import numpy as np

from fastcluster.services.cluster.api import ClusterAPI
from fastcluster.shm import partitions as P
from fastcluster.shm.control import Control

log = logging.getLogger("partitions")


class PartitionMap:
    def __init__(self, control: Control, api: ClusterAPI, capability: str,
                 partitions: int) -> None:
        self.control = control
        self.api = api
        self.capability = capability
        self.count = partitions
        self.owners = np.zeros(partitions, dtype=np.uint16)
        self.nodes: list[int] | None = None

    def update(self) -> None:
        nodes = self.api.synced_nodes(self.capability)
        if nodes == self.nodes:
            return
        arr = np.array(nodes or [0], dtype=np.int64)
        P.compute_owners(arr, len(nodes), self.owners)
        epoch = self.control.publish_partitions(self.owners)
        mine = int(np.count_nonzero(self.owners == self.api.me))
        log.info("partition map %d: %d partitions over nodes %s, %d here", epoch,
                 self.count, nodes, mine)
        self.nodes = nodes
