"""A SIP worker's receive step: up to shm.mmsg.BATCH datagrams per system call, the plain
REGISTERs among them answered by one compiled call and sent by one sendmmsg
(services.sip.plainreg.answer_batch), every other datagram handed to SipApp.handle as
if socket.recvfrom had returned it.

bench/sip_profile.py showed the worker spending as much per REGISTER around the
registrar kernel (recvfrom, sendto, the Python between them and two kernel calls) as
Kamailio spends in all; here those costs are paid once per batch. One at a time the
system calls are the same two as before (recvmmsg, sendmmsg), with less Python between.
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

    def serve(self, listener: Any, wait: bool) -> int:
        """Receive and answer what `listener` has: with `wait`, block for the first
        datagram (up to the socket's SO_RCVTIMEO), else take only what is queued.
        Returns how many datagrams were read (0: none came)."""
        batch = self.batch
        n = M.recv_batch(listener.sock.fileno(), batch.rx, batch.size,
                         M.MSG_WAITFORONE if wait else M.MSG_DONTWAIT)
        if n < 0:
            if -n in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(-n, f"recvmmsg: {errno.errorcode.get(-n, -n)}")
        answered = self.app.plain.answer_batch(batch, n, listener)
        if answered < n:
            handle = self.app.handle
            status = batch.status
            for i in range(n):
                if not status[i]:  # declined by the compiled way: not tried again
                    handle(batch.data(i), batch.address(i), listener, False)
        return n
