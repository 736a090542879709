"""A SIP worker's receive step: up to shm.mmsg.BATCH datagrams per system call, the plain
REGISTERs among them answered by one compiled call and sent by one sendmmsg, batch
after batch without coming back to Python (services.sip.plainreg.receive over
shm.plainreg.serve), every other datagram handed to SipApp.handle as if
socket.recvfrom had returned it.

bench/sip_profile.py showed the worker spending as much per REGISTER around the
registrar kernel (recvfrom, sendto, the Python between them and two kernel calls) as
Kamailio spends in all; here those costs are paid once per batch. One at a time (each
REGISTER wakes the worker alone) the Python between the wake-up and the answer was
still as long as the registrar's work, and ran cold: the compiled loop leaves none.
Neighbours: workers.sip_worker (the loop), shm.mmsg (the batch arrays, the system
calls), services.sip.registrar (SipApp).
"""
from __future__ import annotations

import errno
from typing import Any

from fastcluster.shm import mmsg as M


class BatchReader:
    """One per SIP worker; its arrays serve each of the worker's listeners in turn."""

    def __init__(self, app: Any, size: int = M.BATCH) -> None:
        self.app = app
        self.batch = M.Batch(app.plain.out.shape[0], size)

    def serve(self, listener: Any, wait: bool, until_ns: int = 0, batches: int = 1,
              epfd: int = -1) -> int:
        """Receive and answer what `listener` has, up to `batches` batches: with `wait`,
        each blocks for its first datagram (up to the socket's SO_RCVTIMEO), else only
        what is queued is taken; with an epoll fd (`listener` added with EPOLLEXCLUSIVE:
        a socket the workers share), each waits in epoll_wait up to until_ns instead.
        The compiled way stops early once CLOCK_MONOTONIC passes until_ns (0: after one
        batch). Returns how many datagrams were read (0: none came)."""
        batch = self.batch
        n, answered, total = self.app.plain.receive(
            batch, listener, M.MSG_WAITFORONE if wait else M.MSG_DONTWAIT, until_ns, batches,
            epfd)
        if n < 0:
            if -n in (errno.EAGAIN, errno.EINTR):
                return total
            raise OSError(-n, f"recvmmsg: {errno.errorcode.get(-n, -n)}")
        if answered < n:
            handle = self.app.handle
            status = batch.status
            for i in range(n):
                if not status[i]:  # declined by the compiled way: not tried again
                    handle(batch.data(i), batch.address(i), listener, False)
        return total
