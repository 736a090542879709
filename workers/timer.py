"""The timer process: transaction timers (every TM_TICK_S), expiry of contacts and
dialogs (locally, by their absolute expiry time: expiry is never replicated), the purge
of tombstones every member has (the horizons the cluster process publishes in
shm.control), NAT pinging of this node's partitions, and the timers of the dialogs this
node runs with the recount of its profile counts (services.sip.dialog_timer; every
TICK_S).

Each slow tick handles a slice of the lock regions, so no lock is held long and a pass
over a large table is spread over `EXPIRY_PASS_S`. Neighbours: shm.tables (expire
kernel), services.natping, services.sip.tm_timer (transaction timers).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np

from fastcluster.core.stats import INDEX
from fastcluster.shm import control as CT
from fastcluster.shm import table as T
from fastcluster.shm.tables import TABLES, Table
from fastcluster.workers.child import Child

log = logging.getLogger("timer")

TICK_S = 0.1
TM_TICK_S = 0.01  # transaction timers: T1 is 500 ms, retransmissions want ~10 ms accuracy
EXPIRY_PASS_S = 1.0  # a whole table is swept once per second
LOCAL_HORIZONS = np.full(T.NODE_IDS, np.iinfo(np.int64).max, dtype=np.int64)


class TimerProcess(Child):
    role = CT.ROLE_TIMER
    title = "timer"

    def boot(self) -> None:
        from fastcluster.services.sip.dialog_timer import DialogTimer
        from fastcluster.services.sip.natping import NatPinger
        from fastcluster.services.sip.tm_timer import TmTimer

        self.ctx.close_sockets(keep=("sip",))
        self.cursors = {name: 0 for name, *_ in self._expiring()}
        self.pinger = NatPinger(self, TICK_S)
        self.tm = TmTimer(self)
        socks = self.tm.socks
        self.dialogs = DialogTimer(self, lambda i: socks.get(i) or socks[0],
                                   [(x.host, x.port) for x in self.tm.listeners], TICK_S)
        self.tm.on_invite_failed = self.dialogs.invite_failed  # the 408s it sends
        self.dialogs.cancel_invite = self.tm.cancel_invite  # dlg_end_dlg, early dialogs

    def apply_reload(self) -> None:
        self.pinger.apply_config(self.cfg)
        self.tm.apply_config(self.cfg)
        self.dialogs.apply_config(self.cfg)

    def run(self) -> None:
        ticks_per_pass = max(1, int(EXPIRY_PASS_S / TICK_S))
        slow_due = 0.0
        while not self.stopping:
            started = time.monotonic()
            more = self.tm.tick()
            if started < slow_due:
                if not more:
                    time.sleep(max(0.0, TM_TICK_S - (time.monotonic() - started)))
                continue
            slow_due = started + TICK_S
            self.tm.publish()
            self.beat()
            self.check_reload()
            now = int(time.time())
            for name, table, ttl, horizons in self._expiring():
                budget = -(-table.nregions // ticks_per_pass)
                nxt, (expired, purged, _) = table.expire(
                    now, ttl, self.cfg["clusterer.tombstone_max_s"], horizons, self.me,
                    budget, self.cursors[name])
                self.cursors[name] = nxt
                if name == "contacts":
                    self.stats[INDEX["usrloc:expired_contacts"]] += expired
                    self.stats[INDEX["usrloc:purged_tombstones"]] += purged
                elif name == "transactions":  # rows whose timers all went missing
                    self.stats[INDEX["tm:expired_rows"]] += expired
            self.pinger.tick(time.monotonic())
            self.dialogs.tick(time.monotonic())
            time.sleep(max(0.0, TM_TICK_S - (time.monotonic() - started)))

    def _expiring(self) -> Iterator[tuple[str, Table, int, np.ndarray]]:
        """(name, table, tombstone ttl, horizons by origin) of each table to expire."""
        for index, spec in enumerate(TABLES):
            yield (spec.name, self.mem.tables[spec.name],
                   spec.setting(self.cfg, "tombstone_ttl_s"), self.mem.control.horizons[index])
        # the proxy's transactions: local, a tombstone there waits for no other node
        yield "transactions", self.mem.transactions, 0, LOCAL_HORIZONS
