"""The cluster process: one asyncio loop that links this node to the others and serves
the MI. All the wiring of the cluster layers and their consumers happens here.

It builds the cluster node (services.cluster.node: links, membership, heartbeats,
routing), the capability and sync layers, and the narrow API (services.cluster.api) that
every consumer binds to: table replication, the NAT ping partition map, the script
bridge, remote MI and the MI commands. Everything here must keep the loop responsive:
heartbeats to other nodes are sent from this loop, so heavy work (big MI dumps, sync
chunks) runs in threads (the kernels release the GIL), handlers never block a link
(services.cluster.dispatch) and user scripts run in their own process. The live node set
and capability states of every cluster are published to shared memory (shm.control
views) so workers and the timer read them without asking. Neighbours: services.cluster,
services.mi, services.script.bridge, workers.child.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from fastcluster.core.messages import fingerprint
from fastcluster.services.cluster.ae import AntiEntropy
from fastcluster.services.cluster.capabilities import Capabilities
from fastcluster.services.cluster.node import ClusterNode
from fastcluster.services.cluster.partitions import PartitionMap
from fastcluster.services.cluster.persistence import Persistence
from fastcluster.services.cluster.persistence import enabled as persistence_enabled
from fastcluster.services.cluster.replication import Replication
from fastcluster.services.cluster.shtags import SharingTags
from fastcluster.services.cluster.sync import SyncManager
from fastcluster.services.mi import clusterer_cmds, core_cmds, remote  # noqa: F401 (commands)
from fastcluster.services.mi.metrics import OBSERVER, ObservedAPI
from fastcluster.services.mi.server import MIContext, MIThread
from fastcluster.services.script.bridge import ScriptBridge
from fastcluster.services.sip import dialog, natping, usrloc  # noqa: F401  (MI commands)
from fastcluster.services.sip.profile_repl import ProfileReplication
from fastcluster.shm import control as CT
from fastcluster.shm import table as T
from fastcluster.shm.control import W_LAST_CONTACT
from fastcluster.shm.tables import SPEC_BY_NAME, TABLES
from fastcluster.workers.child import Child

log = logging.getLogger("cluster")

BEAT_S = 0.1
STOP_FLUSH_S = 1.0  # at a graceful stop, wait this long at most for the last acks


def build_fingerprint() -> str:
    """Row layouts and message schemas: nodes of different builds never link."""
    return fingerprint(*(spec.layout_text for spec in TABLES))


class ClusterProcess(Child):
    role = CT.ROLE_CLUSTER
    title = "cluster"
    writer_slots = (CT.SLOT_CLUSTER_SYNC, CT.SLOT_MI)

    def boot(self) -> None:
        self.ctx.close_sockets(keep=("mi", "bin", "script"))
        self.sip_sockets = [s.label for s in self.ctx.sip]
        # sync chunks are applied by one worker thread, as a process slot of its own
        self.aux_slot = CT.SLOT_CLUSTER_SYNC
        self.aux_me = T.lock_word(self.pid, self.aux_slot)
        self.aux_pool = ThreadPoolExecutor(1, thread_name_prefix="sync-apply")
        self.node = ClusterNode(self.cfg, self.stats, build_fingerprint())
        caps = Capabilities(self.node, self.publish_views)
        self.sync = SyncManager(self.node, caps, int(self.mem.control.words[W_LAST_CONTACT]))
        self.shtags = SharingTags(self.node, self.mem.shtags)
        # the consumers' API, with the capabilities' data paths observed for the metrics
        self.cluster = ObservedAPI(self.node, caps, self.sync, self.shtags)
        self.replication = Replication(self, self.cluster)
        self.antientropy = AntiEntropy(self, self.cluster, self.replication)
        self.partitions = PartitionMap(self.mem.control, self.cluster,
                                       SPEC_BY_NAME["contacts"].capability,
                                       self.cfg["usrloc.ping_partitions"])
        self.script = ScriptBridge(self, self.cluster)
        self.profile_repl = ProfileReplication(self, self.cluster)
        self.cluster.on_topology_change(self.publish_views)
        # write-behind to the database: a thread, with the sync applier's statistics row
        # (that thread counts nothing itself)
        self.persistence = Persistence(self.cfg, self.mem,
                                       self.mem.control.stats[CT.SLOT_CLUSTER_SYNC]) \
            if persistence_enabled(self.cfg) else None

    def count(self, name: str, n: int = 1) -> None:
        self.node.count(name, n)

    def apply_reload(self) -> None:
        self.node.apply_config(self.cfg)
        self.profile_repl.apply_config(self.cfg)
        if self.mi.context is not None:
            self.mi.context.cfg = self.cfg

    def run(self) -> None:
        asyncio.run(self.main())

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        self.mi = MIThread(loop, self.ctx.mi_sock)
        mi_rings = {name: self.mem.ring(CT.SLOT_MI, name) for name in self.mem.tables}
        context = MIContext(self.cfg, self.mem, self.cluster, mi_rings,
                            T.lock_word(self.pid, CT.SLOT_MI), CT.SLOT_MI, self.sip_sockets,
                            self.mi, self.mem.control.stats[CT.SLOT_MI], self.persistence)
        remote.attach(self.cluster, context.run_mi)
        self.mi.start(context)
        if self.persistence is not None:
            self.persistence.start()
        await self.script.start()
        await self.node.start(self.ctx.bin_sock)
        self.publish_views()
        self.sync.start()
        tasks = [asyncio.create_task(t) for t in (self._beat(), self.replication.run(),
                                                   self.sync.run(), self.antientropy.run(),
                                                   self.shtags.run(),
                                                   self.profile_repl.run())]
        await self.stop_event.wait()
        for task in tasks:
            task.cancel()
        await self.replication.flush(STOP_FLUSH_S)  # the last changes still go out
        if self.persistence is not None:
            self.persistence.stop()  # and into the database
        await self.node.stop()
        await self.script.close()
        self.mi.stop()
        self.aux_pool.shutdown(wait=True)

    async def _beat(self) -> None:
        while True:
            self.beat()
            self.check_reload()
            await asyncio.sleep(BEAT_S)

    def publish_views(self) -> None:
        """Live nodes and capability states per cluster, the ping partition map, and the
        script's cluster snapshot."""
        self.partitions.update()
        self.script.push_snapshot()
        api = self.cluster
        OBSERVER.capability_states({c.name: c.state.text for c in api.capabilities()})
        ctl = self.mem.control
        replicated = {r.spec.name for r in self.replication.tables.values()}
        ctl.words[CT.W_SYNCED] = sum(
            1 << i for i, spec in enumerate(TABLES)
            if spec.name not in replicated or api.capability_synced(spec.capability))
        for index, cid in enumerate(api.clusters[:CT.MAX_VIEWS]):
            entries = [(api.me, CT.VIEW_ME | (CT.VIEW_UP | CT.VIEW_ENABLED
                                              if api.enabled(cid) else 0),
                        api.capability_bits(api.me))]
            sip = [api.sip[0] if api.sip else None]  # first SIP listener of each node
            for view in api.nodes(cid):
                flags = (CT.VIEW_UP if view.reachable else 0) | (
                    CT.VIEW_ENABLED if view.enabled else 0)
                entries.append((view.node_id, flags, api.capability_bits(view.node_id)))
                sip.append(view.sip[0] if view.sip else None)
            ctl.publish_view(index, cid, api.me, entries[:CT.MAX_VIEW_NODES],
                             sip[:CT.MAX_VIEW_NODES])
