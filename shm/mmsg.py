"""Datagrams in batches: recvmmsg(2) and sendmmsg(2) called from numba kernels, with
the message headers, addresses and buffers of a batch laid out once in numpy arrays.

A SIP worker reads up to BATCH datagrams per system call (blocking for the first one,
MSG_WAITFORONE, under the socket's SO_RCVTIMEO; or, on a socket all workers share,
waiting in epoll_wait, wait_batch), answers the plain REGISTERs among
them in one compiled call (shm.plainreg.answer_batch) and sends those answers with one
sendmmsg, batch after batch in a compiled loop (shm.plainreg.serve); Python sees only
the datagrams the compiled way declines (services.sip.batch). The libc calls (these
two, epoll_wait, and clock_gettime for a kernel that needs the time) are LLVM calls to
the symbols by name (not ctypes pointers), so the kernels that use them are cached like
the others.

Layout (x86-64 Linux): struct mmsghdr is 64 bytes, seen here as 8 uint64 words: msg_name,
msg_namelen (low half), msg_iov, msg_iovlen, msg_control, msg_controllen, msg_flags,
msg_len (low half). struct iovec is 2 words: base, length. An address slot holds a
struct sockaddr_in or sockaddr_in6 (ADDR_BYTES).
Neighbours: shm.plainreg (serve, answer_batch), services.sip.batch (the worker's side).
"""
from __future__ import annotations

import socket
import struct

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

BATCH = 32
MAX_DATAGRAM = 65535
ADDR_BYTES = 128
ADDRESSES_KEPT = 65536  # Batch.address's IPv4 sources
MSG_DONTWAIT = 0x40
MSG_WAITFORONE = 0x10000
EINTR = 4
EAGAIN = 11
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
AF_INET = int(socket.AF_INET)

# struct mmsghdr, as words
H_NAME, H_NAMELEN, H_IOV, H_IOVLEN, H_CONTROL, H_CONTROLLEN, H_FLAGS, H_LEN = range(8)
_LOW = np.uint64(0xFFFFFFFF)

_I32 = ir.IntType(32)
_PTR = ir.IntType(8).as_pointer()


@intrinsic
def _recvmmsg(typingctx, fd, vec, vlen, flags):
    sig = types.int32(types.int32, types.uint64, types.uint32, types.int32)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_I32, _PTR, _I32, _I32, _PTR])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "recvmmsg")
        fd_, vec_, vlen_, flags_ = args
        return builder.call(fn, [fd_, builder.inttoptr(vec_, _PTR), vlen_, flags_,
                                 ir.Constant(_PTR, None)])
    return sig, codegen


@intrinsic
def _sendmmsg(typingctx, fd, vec, vlen, flags):
    sig = types.int32(types.int32, types.uint64, types.uint32, types.int32)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_I32, _PTR, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "sendmmsg")
        fd_, vec_, vlen_, flags_ = args
        return builder.call(fn, [fd_, builder.inttoptr(vec_, _PTR), vlen_, flags_])
    return sig, codegen


@intrinsic
def _errno(typingctx):
    sig = types.int32()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32.as_pointer(), []), "__errno_location")
        return builder.load(builder.call(fn, []))
    return sig, codegen


@intrinsic
def _clock_gettime(typingctx, clock, ts):
    sig = types.int32(types.int32, types.uint64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_I32, _PTR])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        clock_, ts_ = args
        return builder.call(fn, [clock_, builder.inttoptr(ts_, _PTR)])
    return sig, codegen


@intrinsic
def _epoll_wait(typingctx, epfd, events, maxevents, timeout):
    sig = types.int32(types.int32, types.uint64, types.int32, types.int32)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_I32, _PTR, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "epoll_wait")
        epfd_, events_, maxevents_, timeout_ = args
        return builder.call(fn, [epfd_, builder.inttoptr(events_, _PTR), maxevents_,
                                 timeout_])
    return sig, codegen


@njit(cache=True)
def clock_ns(clock, ts):
    """A clock in nanoseconds (CLOCK_REALTIME: time.time's, CLOCK_MONOTONIC:
    time.monotonic's); ts: two int64 words the call fills (struct timespec)."""
    _clock_gettime(clock, ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1]


@njit(cache=True, nogil=True)
def recv_batch(fd, hdr, n, flags):
    """Receive up to n datagrams into the batch whose headers are `hdr` (without the
    GIL: it may block). Returns how many, or -errno (EAGAIN: the receive timeout
    passed, or nothing was waiting with MSG_DONTWAIT)."""
    for i in range(n):
        hdr[i, H_NAMELEN] = ADDR_BYTES
        hdr[i, H_LEN] = 0
        hdr[i, H_FLAGS] = 0
    r = _recvmmsg(fd, hdr.ctypes.data, n, flags)
    return r if r >= 0 else -_errno()


@njit(cache=True, nogil=True)
def wait_batch(epfd, fd, hdr, events, until_ns, ts):
    """recv_batch for a socket shared by several workers: what is queued on fd is taken
    (MSG_DONTWAIT); when nothing is, the worker sleeps in epoll_wait on epfd (fd added
    with EPOLLEXCLUSIVE), until a datagram comes or CLOCK_MONOTONIC reaches until_ns.
    The kernel wakes the first idle worker in the order they joined the socket, so
    requests spaced out keep landing on the same warm one; a worker blocked in a read
    is woken in turn, the one that waited longest first (cold caches at each request).
    events: two uint64 words (a struct epoll_event); ts: two int64 words. Returns the
    datagrams taken, or -errno (EAGAIN: until_ns passed with nothing; EINTR: a signal)."""
    while True:
        n = recv_batch(fd, hdr, hdr.shape[0], MSG_DONTWAIT)
        if n != -EAGAIN:
            return n
        left = until_ns - clock_ns(CLOCK_MONOTONIC, ts)
        if left <= 0:
            return n
        r = _epoll_wait(epfd, events.ctypes.data, 1, (left + 999_999) // 1_000_000)
        if r < 0:
            return -_errno()


@njit(cache=True)
def send_batch(fd, hdr, n, words):
    """Send the n prepared messages of `hdr`, all of them: a message the kernel refuses
    (an unreachable address, say) is skipped and counted. words[0]: sent, words[1]:
    refused, words[2]: the last refusal's errno."""
    sent = 0
    refused = 0
    i = 0
    while i < n:
        r = _sendmmsg(fd, hdr[i:].ctypes.data, n - i, 0)
        if r > 0:
            sent += r
            i += r
            continue
        e = _errno()
        if e == EINTR:
            continue
        refused += 1
        words[2] = e
        i += 1  # sendmmsg reports the first message's error: skip that one
    words[0] = sent
    words[1] = refused
    return sent


@njit(cache=True)
def address_text(name, out):
    """The dotted text of a struct sockaddr_in's address into out; its length, or 0 for
    any other family."""
    if name[0] != AF_INET or name[1] != 0:
        return 0
    r = 0
    for k in range(4):
        v = name[4 + k]
        if v >= 100:
            out[r] = 48 + v // 100
            r += 1
        if v >= 10:
            out[r] = 48 + v // 10 % 10
            r += 1
        out[r] = 48 + v % 10
        r += 1
        if k < 3:
            out[r] = 46
            r += 1
    return r


class Batch:
    """The arrays of one batch of BATCH datagrams in, and BATCH answers out (each at
    most `out_bytes`), their header words pointing at each other once and for all."""

    def __init__(self, out_bytes: int, size: int = BATCH) -> None:
        self.size = size
        self.rx = np.zeros((size, 8), dtype=np.uint64)
        self.rx_iov = np.zeros((size, 2), dtype=np.uint64)
        self.names = np.zeros((size, ADDR_BYTES), dtype=np.uint8)
        self.bufs = np.zeros((size, MAX_DATAGRAM + 1), dtype=np.uint8)
        self.tx = np.zeros((size, 8), dtype=np.uint64)
        self.tx_iov = np.zeros((size, 2), dtype=np.uint64)
        self.outs = np.zeros((size, out_bytes), dtype=np.uint8)
        self.status = np.zeros(size, dtype=np.int64)
        self.events = np.zeros(2, dtype=np.uint64)  # wait_batch's struct epoll_event
        self._addresses: dict[bytes, tuple[str, int]] = {}
        for i in range(size):
            self.rx[i, H_NAME] = self.names[i].ctypes.data
            self.rx[i, H_IOV] = self.rx_iov[i].ctypes.data
            self.rx[i, H_IOVLEN] = 1
            self.rx_iov[i] = (self.bufs[i].ctypes.data, MAX_DATAGRAM + 1)
            self.tx[i, H_IOV] = self.tx_iov[i].ctypes.data
            self.tx[i, H_IOVLEN] = 1
            self.tx_iov[i, 0] = self.outs[i].ctypes.data

    def length(self, i: int) -> int:
        return int(self.rx[i, H_LEN] & _LOW)

    def data(self, i: int) -> bytes:
        return self.bufs[i, :self.length(i)].tobytes()

    def address(self, i: int) -> tuple:
        """The source of datagram i, as socket.recvfrom gives it (an IPv4 one from the
        ADDRESSES_KEPT last sources kept: a call's datagrams come from a few)."""
        name = self.names[i]
        key = name[:8].tobytes()  # Python ints from here: a numpy scalar compared with
        if key[0] == AF_INET and key[1] == 0:  # socket.AF_INET (an IntEnum) took 3 us
            got = self._addresses.get(key)
            if got is None:
                if len(self._addresses) >= ADDRESSES_KEPT:
                    self._addresses.clear()
                got = self._addresses[key] = (socket.inet_ntop(socket.AF_INET, key[4:]),
                                              key[2] << 8 | key[3])
            return got
        family = int(name[0]) | int(name[1]) << 8
        port = int(name[2]) << 8 | int(name[3])
        if family == socket.AF_INET6:
            flow, = struct.unpack("!I", name[4:8].tobytes())
            scope, = struct.unpack("=I", name[24:28].tobytes())
            return socket.inet_ntop(socket.AF_INET6, name[8:24].tobytes()), port, flow, scope
        raise OSError(f"datagram from an address of family {family}")
