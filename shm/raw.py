"""Little-endian loads and stores at byte offsets of uint8 arrays, for kernels.

Each is one unaligned machine load or store (LLVM `load i64, align 1`): rows keep their
fields at any byte offset. `arr[a:b].view(np.uint64)[0]` costs a call to numba's
dtype-change helper and an array object per access, and assembling the value from eight
byte loads is not folded back into one load by LLVM (it was 3x slower in the hash, see
shm.hashing). Arrays must be contiguous uint8 (every table, ring and buffer is); the
host must be little-endian, like every node of a cluster (rows cross the wire as-is).
Neighbours: shm.table, shm.ring, shm.contacts, shm.hashing.
"""
from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

if sys.byteorder != "little":
    raise ImportError("fastcluster's shared-memory layout needs a little-endian host")


def _check(arr: types.Type) -> bool:
    return (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8
            and arr.layout == "C")


def _pointer(context, builder, arrty, arr, off, bits):
    ary = context.make_array(arrty)(context, builder, arr)
    ptr = builder.gep(ary.data, [off])
    return builder.bitcast(ptr, ir.IntType(bits).as_pointer())


def _loader(bits: int, result: types.Integer):
    @intrinsic
    def load(typingctx, arr, off):
        if not _check(arr) or not isinstance(off, types.Integer):
            return None
        sig = result(arr, types.intp)

        def codegen(context, builder, sig, args):
            value = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1],
                                          bits), align=1)
            return value if bits == 64 else builder.zext(value, ir.IntType(64))

        return sig, codegen

    return load


def _storer(bits: int):
    @intrinsic
    def store(typingctx, arr, off, value):
        if not _check(arr) or not isinstance(off, types.Integer) or \
                not isinstance(value, types.Integer):
            return None
        sig = types.void(arr, types.intp, value)

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[2], sig.args[2], types.uint64)
            if bits < 64:
                v = builder.trunc(v, ir.IntType(bits))
            builder.store(v, _pointer(context, builder, sig.args[0], args[0], args[1], bits),
                          align=1)
            return context.get_dummy_value()

        return sig, codegen

    return store


_ld16, _ld32, _ldu64 = _loader(16, types.int64), _loader(32, types.int64), \
    _loader(64, types.uint64)
_st16, _st32, _st64 = _storer(16), _storer(32), _storer(64)


@njit(cache=True, inline="always")
def ld16(b, o):
    """The uint16 at b[o:o+2], as int64."""
    return _ld16(b, o)


@njit(cache=True, inline="always")
def ld32(b, o):
    """The uint32 at b[o:o+4], as int64."""
    return _ld32(b, o)


@njit(cache=True, inline="always")
def ldu64(b, o):
    return _ldu64(b, o)


@njit(cache=True, inline="always")
def ld64(b, o):
    return np.int64(_ldu64(b, o))


@njit(cache=True, inline="always")
def st16(b, o, v):
    """b[o:o+2] = the low 16 bits of v."""
    _st16(b, o, v)


@njit(cache=True, inline="always")
def st32(b, o, v):
    _st32(b, o, v)


@njit(cache=True, inline="always")
def stu64(b, o, v):
    _st64(b, o, v)


@njit(cache=True, inline="always")
def st64(b, o, v):
    _st64(b, o, v)


@njit(cache=True, inline="always")
def copy(dst, doff, src, soff, n):
    """dst[doff:doff+n] = src[soff:soff+n] for non-overlapping ranges."""
    for i in range(n):
        dst[doff + i] = src[soff + i]
