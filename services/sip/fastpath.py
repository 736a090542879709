"""The compiled relays of a SIP worker's proxy: a plain response to one of our branches
(shm.sipscan.fast_reply) and an in-dialog ACK or BYE routed by our Record-Route
(shm.sipreq.fast_request), each parsed, matched and relayed in one numba call. Anything
unusual answers "not taken" before doing anything, and the Python way
(services.sip.proxy) handles it; both ways send the same bytes
(tests/unit/test_sipreq.py). With dialog tracking, the dialog hook is called between
the kernel and the send, as the Python way calls it: for an ACK or BYE with the
identity fast_request found in its head (the dialog change is one more kernel call,
shm.dialogs.dlg_in_dialog), for a response to an INVITE from its bytes too
(shm.dlg_invite.dlg_invite_reply), parsed only when that kernel leaves it to Python.
Neighbours: services.sip.proxy, shm.sipscan, shm.sipreq.
"""
from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np

from fastcluster.core.sip import parse_message
from fastcluster.core.stats import INDEX
from fastcluster.services.sip.messages import dialog_identity
from fastcluster.shm import sipreq as RQ
from fastcluster.shm import sipscan as SC
from fastcluster.shm import transactions as X
from fastcluster.shm.sipreq import fast_request
from fastcluster.shm.sipscan import fast_reply
from fastcluster.shm.txwork import raw_address

_monotonic, _time, _frombuffer = time.monotonic, time.time, np.frombuffer
_I = INDEX
I_ACK, I_BYE = _I["core:rcv_requests_ack"], _I["core:rcv_requests_bye"]
I_RPL_CLASS = [_I.get(f"core:rcv_replies_{c}xx", -1) for c in range(7)]
I_FWD_REQ = _I["core:fwd_requests"]
I_UAS, I_UAC, I_RCV_TX = _I["tm:UAS_transactions"], _I["tm:UAC_transactions"], \
    _I["tm:received_replies"]
I_ABSORBED, I_RELAYED = _I["tm:absorbed_retransmissions"], _I["tm:relayed_replies"]
STRINGS_NEEDED = X.A_SEND_STORED | X.NEEDS_REQUEST  # actions using out_strings
_NO_STRINGS = (b"", b"", b"")


class FastPath:
    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.tx, self.sender, self.counts = proxy.tx, proxy.sender, proxy.counts
        self.params = proxy.params
        listeners = proxy.listeners
        self.mine_bytes = np.frombuffer(b"".join(m.encode() + b"\0"
                                                 for m in sorted(proxy.mine)), dtype=np.uint8)
        self.scan = np.zeros(SC.S_WORDS, dtype=np.int64)
        # the compiled path for in-dialog ACK and BYE (IPv4 listeners only)
        self.fq = np.zeros(RQ.Q_WORDS, dtype=np.int64)
        self.fq_ident = self.fq[RQ.Q_IDENT:]  # the request's dialog identity (shm.dialogs)
        self.fq_listeners = self.fq_text = None
        if all(":" not in x.host for x in listeners):
            texts = b"".join(x.hostport.lower().encode() for x in listeners)
            rows, at = [], 0
            for x in listeners:
                t = x.hostport.lower().encode()
                rows.append((int.from_bytes(socket.inet_aton(x.host), "big"), x.port, at,
                             len(t)))
                at += len(t)
            self.fq_listeners = np.array(rows, dtype=np.int64).reshape(-1, RQ.L_WORDS)
            self.fq_text = np.frombuffer(texts, dtype=np.uint8)
        self._src_cache: dict[str, tuple[int, np.ndarray]] = {}
        self._ips: dict[int, str] = {}

    def request(self, data: bytes, addr: tuple, listener: Any) -> bool:
        """An in-dialog ACK or BYE routed by our Record-Route, relayed in one compiled
        call (shm.sipreq.fast_request). False: nothing was done, go the Python way."""
        if self.fq_listeners is None:
            return False
        src = self._src_cache.get(addr[0])
        if src is None:
            fam, raw = raw_address(addr[0])
            if len(self._src_cache) > 65536:
                self._src_cache.clear()
            # a writable copy: the array type must be the one warmed before fork (a
            # read-only view is another numba signature, compiled in the worker)
            src = self._src_cache[addr[0]] = (fam, np.frombuffer(raw, dtype=np.uint8).copy())
        tx = self.tx
        q = self.fq
        arr = _frombuffer(data, np.uint8)
        r = fast_request(tx.arena, arr, len(data), self.fq_listeners,
                         self.fq_text, listener.index, src[0], addr[1], src[1], tx.work,
                         tx.ring, self.params, tx.me, tx.proc, int(_monotonic() * 1000),
                         int(_time()), q)
        if r == SC.FALLBACK:
            return False
        counts = self.counts
        if q[RQ.Q_KIND] == RQ.KIND_ACK:
            if r == X.R_MATCH:
                counts[I_ACK] += 1
                return True  # the ACK of a non-2xx: absorbed
            if r != X.R_NOT_FOUND:
                return False
            counts[I_ACK] += 1
            counts[I_FWD_REQ] += 1
        elif r == X.R_NEW:
            counts[I_BYE] += 1
            counts[I_UAS] += 1
            counts[I_UAC] += 1
        elif r == X.R_MATCH:
            counts[I_BYE] += 1
            counts[I_ABSORBED] += 1
            o = tx.out()
            if o.actions:
                response, request, tgt = tx.out_strings(o)
                self.sender.run(o.actions, o, o.key, response, request, tgt)
            return True
        else:
            return False  # refused (full table ...): the Python way answers
        dialogs = self.proxy.dialogs
        if dialogs is not None and not dialogs.in_dialog_compiled(arr, self.fq_ident):
            # dialog hook, before the request goes on: the compiled change above, or
            # (a tag it does not read, quoted ...) the Python one from the identity
            ident = dialog_identity(data)
            if ident is not None:
                dialogs.in_dialog(*ident)
        n = int(q[RQ.Q_LEN])
        ip = int(q[RQ.Q_DST_IP])
        host = self._ips.get(ip)
        if host is None:
            host = self._ips[ip] = socket.inet_ntop(socket.AF_INET, ip.to_bytes(4, "big"))
        self.sender.send(bytes(tx.mv[X.OUT_DATA:X.OUT_DATA + n]), int(q[RQ.Q_SOCK]),
                         (host, int(q[RQ.Q_DST_PORT])))
        return True

    def reply(self, data: bytes, addr: tuple, listener: Any) -> bool:
        """A plain response to one of our branches, relayed in one compiled call
        (shm.sipscan.fast_reply): parse, match, strip, transaction update. False: not
        such a response (nothing was done), parse it and go the Python way."""
        tx = self.tx
        now = _monotonic()
        arr = _frombuffer(data, np.uint8)
        r = fast_reply(tx.arena, arr, len(data), self.mine_bytes,
                       tx.work, tx.ring, self.params, tx.me, tx.proc, int(now * 1000),
                       int(_time()), self.scan)
        if r < 0:  # FALLBACK, or a busy lock: the Python way retries
            return False
        scan = self.scan
        counts = self.counts
        status = int(scan[0])
        i = I_RPL_CLASS[status // 100]
        if i >= 0:
            counts[i] += 1
        a, b = int(scan[4]), int(scan[5])
        stripped = data[:a] + data[b:]
        if r != X.R_MATCH:
            self.proxy.stateless_reply(stripped, listener)
            return True
        counts[I_RCV_TX] += 1
        actions, sock, upstream = tx.forward_to()
        o = tx.out() if actions and actions != X.A_FORWARD else None
        dialogs = self.proxy.dialogs
        if dialogs is not None and scan[SC.S_MCLASS] == X.M_INVITE and status > 100:
            # dialog hook, before the reply goes on (as Proxy.handle_reply)
            final = o.status if o is not None and actions & X.A_FIRST_FINAL else 0
            if not dialogs.on_invite_reply_compiled(arr, status, final, listener.index,
                                                    addr):
                dialogs.on_invite_reply(parse_message(data), int(scan[SC.S_KEY]),
                                        int(scan[SC.S_BRANCH]), final, listener.index, addr)
        if o is None:
            if actions:
                self.sender.send(stripped, sock, upstream)
                counts[I_RELAYED] += 1
        else:
            # the stored strings only when an action sends them (a final response
            # relayed as it came needs none of them)
            response, request, targets = tx.out_strings(o) if actions & STRINGS_NEEDED \
                else _NO_STRINGS
            self.sender.run(actions, o, o.key, response, request, targets, arriving=stripped,
                            branch=int(scan[SC.S_BRANCH]))
        return True
