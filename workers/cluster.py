"""The cluster process: one asyncio loop that links this node to the others and serves
the MI.

It hosts the cluster layers -- topology (services.clusterer), capabilities, realtime
replication and full sync -- and the MI server. Everything here must keep the loop
responsive: heartbeats to other nodes are sent from this loop, so heavy work (big MI
dumps, sync chunks) runs in threads (the kernels release the GIL) and user scripts run
in their own process (services.script_bridge carries their messages). The live node set and capability states of every cluster are
published to shared memory (shm.control views) so workers and the timer read them
without asking. Neighbours: services.* (the layers), workers.child.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from fastcluster.services.mi import clusterer_cmds, core_cmds  # noqa: F401  (MI commands)
from fastcluster.services.sip import dialog, usrloc  # noqa: F401  (MI commands)
from fastcluster.services.cluster.capabilities import Capabilities
from fastcluster.services.cluster.node import Clusterer
from fastcluster.services.mi.registry import MIServer, dispatch
from fastcluster.services.cluster.partitions import PartitionMap
from fastcluster.services.cluster.replication import Applier, Replication
from fastcluster.services.script.bridge import ScriptBridge
from fastcluster.services.cluster.sync import SyncManager
from fastcluster.shm import control as CT
from fastcluster.workers.child import Child

log = logging.getLogger("cluster")

BEAT_S = 0.1


class ClusterProcess(Child):
    role = CT.ROLE_CLUSTER
    title = "cluster"

    def boot(self) -> None:
        self.ctx.close_sockets(keep=("mi", "bin", "script"))
        self.clusterer = Clusterer(self.cfg, self.stats)
        self.clusterer.mi_runner = self.run_mi
        self.clusterer.on_recompute = self.publish_views
        self.caps = Capabilities(self.cfg, self.clusterer, self.publish_views)
        self.clusterer.on_forget.append(self.caps.forget)
        applier = Applier(self, self.caps)
        self.replication = Replication(self, self.clusterer, self.caps, applier)
        self.sync = SyncManager(self, self.clusterer, self.caps, applier)
        self.partitions = PartitionMap(self, self.caps)
        self.script = ScriptBridge(self, self.clusterer)

    def run(self) -> None:
        asyncio.run(self.main())

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        self.mi = MIServer(self, self.ctx.mi_sock)
        await self.mi.start()
        await self.script.start()
        await self.clusterer.start(self.ctx.bin_sock)
        self.publish_views()
        self.sync.start()
        tasks = [asyncio.create_task(t) for t in (self._beat(), self.replication.run(),
                                                   self.sync.run())]
        await self.stop_event.wait()
        for task in tasks:
            task.cancel()
        self.replication.drain()  # the last changes still go out
        await self.clusterer.stop()
        await self.script.close()
        await self.mi.close()

    async def _beat(self) -> None:
        while True:
            self.beat()
            self.check_reload()
            await asyncio.sleep(BEAT_S)

    async def run_mi(self, cmd: str, params: Any) -> dict[str, Any]:
        """Run an MI command here, for another node (result or error object)."""
        reply = await dispatch(self, {"jsonrpc": "2.0", "method": cmd,
                                      "params": params if params is not None else {}, "id": 0})
        assert reply is not None
        return {k: v for k, v in reply.items() if k in ("result", "error")}

    def publish_views(self) -> None:
        """Live nodes and capability states per cluster, the ping partition map, and the
        script's cluster snapshot."""
        self.partitions.update()
        self.script.push_snapshot()
        cl = self.clusterer
        ctl = self.mem.control
        for index, cid in enumerate(cl.clusters[:CT.MAX_VIEWS]):
            entries = [(cl.me, CT.VIEW_ME | (CT.VIEW_UP | CT.VIEW_ENABLED
                                             if cl.enabled(cid) else 0),
                        self.caps.view_bits(cl.me))]
            sip = [cl.sip[0] if cl.sip else None]  # first SIP listener of each node
            for peer in sorted(cl.peers.values(), key=lambda p: p.node_id):
                if cid in peer.clusters:
                    flags = (CT.VIEW_UP if cl.is_up(cid, peer.node_id) else 0) | (
                        0 if cid in cl.disabled.get(peer.node_id, ()) else CT.VIEW_ENABLED)
                    entries.append((peer.node_id, flags, self.caps.view_bits(peer.node_id)))
                    sip.append(peer.sip[0] if peer.sip else None)
            ctl.publish_view(index, cid, cl.me, entries[:CT.MAX_VIEW_NODES],
                             sip[:CT.MAX_VIEW_NODES])
