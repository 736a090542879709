"""The timer process: expiry of contacts and dialogs (locally, by their absolute expiry
time: expiry is never replicated), the purge of tombstones every member has (the
horizons the cluster process publishes in shm.control), and NAT pinging of this node's
partitions.

Each tick handles a slice of the lock regions, so no lock is held long and a pass over
a large table is spread over `EXPIRY_PASS_S`. Neighbours: shm.tables (expire kernel),
services.natping.
"""
from __future__ import annotations

import logging
import time

from fastcluster.core.stats import INDEX
from fastcluster.shm import control as CT
from fastcluster.shm.tables import TABLES
from fastcluster.workers.child import Child

log = logging.getLogger("timer")

TICK_S = 0.1
EXPIRY_PASS_S = 1.0  # a whole table is swept once per second


class TimerProcess(Child):
    role = CT.ROLE_TIMER
    title = "timer"

    def boot(self) -> None:
        from fastcluster.services.sip.natping import NatPinger

        self.ctx.close_sockets(keep=("sip",))
        self.cursors = {spec.name: 0 for spec in TABLES}
        self.pinger = NatPinger(self, TICK_S)

    def apply_reload(self) -> None:
        self.pinger.apply_config(self.cfg)

    def run(self) -> None:
        ticks_per_pass = max(1, int(EXPIRY_PASS_S / TICK_S))
        while not self.stopping:
            started = time.monotonic()
            self.beat()
            self.check_reload()
            now = int(time.time())
            for index, spec in enumerate(TABLES):
                table = self.mem.tables[spec.name]
                budget = -(-table.nregions // ticks_per_pass)
                nxt, (expired, purged, _) = table.expire(
                    now, spec.setting(self.cfg, "tombstone_ttl_s"),
                    self.cfg["clusterer.tombstone_max_s"], self.mem.control.horizons[index],
                    self.me, budget, self.cursors[spec.name])
                self.cursors[spec.name] = nxt
                if spec.name == "contacts":
                    self.stats[INDEX["usrloc:expired_contacts"]] += expired
                    self.stats[INDEX["usrloc:purged_tombstones"]] += purged
            self.pinger.tick(time.monotonic())
            time.sleep(max(0.0, TICK_S - (time.monotonic() - started)))
