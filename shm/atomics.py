"""Low-level numba intrinsics: atomics on array elements, `unmanaged`, `prefetch`.

Numba has no atomics for CPU arrays, and shared-memory locks, rings and counters need
them: a plain store may be reordered by LLVM and a plain read-modify-write loses updates
between processes. These intrinsics emit LLVM `cmpxchg`, `atomicrmw`, atomic load/store
and `pause` (the LLVM x86 intrinsic: numba's JIT has no inline-asm parser), and a call
of sched_yield(2), so they
compile into the calling kernel (cacheable, no call overhead). Arrays must be 1-d,
C-contiguous, of an integer dtype; the element must be naturally aligned (every shm
layout here guarantees it). `unmanaged` drops an array's refcounting for the span of a
kernel; `prefetch` hints a cache line. Neighbours: shm.ring, shm.table, shm.contacts.
"""
from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = platform.machine() in ("x86_64", "AMD64", "i686")


def _element_ptr(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [idx], wraparound=False)


def _check(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(arr.dtype,
                                                                         types.Integer)


@intrinsic
def atomic_cas(typingctx, arr, idx, expected, new):
    """arr[idx] = new if arr[idx] == expected; returns the previous value (seq_cst)."""
    if not _check(arr):
        return None
    dt = arr.dtype
    sig = dt(arr, types.intp, dt, dt)

    def codegen(context, builder, sig, args):
        arr_v, idx_v, exp_v, new_v = args
        ptr = _element_ptr(context, builder, sig.args[0], arr_v, idx_v)
        res = builder.cmpxchg(ptr, exp_v, new_v, "seq_cst", "seq_cst")
        return builder.extract_value(res, 0)

    return sig, codegen


@intrinsic
def atomic_add(typingctx, arr, idx, value):
    """arr[idx] += value atomically; returns the previous value (seq_cst)."""
    if not _check(arr):
        return None
    dt = arr.dtype
    sig = dt(arr, types.intp, dt)

    def codegen(context, builder, sig, args):
        arr_v, idx_v, val_v = args
        ptr = _element_ptr(context, builder, sig.args[0], arr_v, idx_v)
        return builder.atomic_rmw("add", ptr, val_v, "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, idx):
    """Read arr[idx] with acquire ordering (later reads are not hoisted above it)."""
    if not _check(arr):
        return None
    dt = arr.dtype
    sig = dt(arr, types.intp)

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        width = context.get_abi_sizeof(context.get_value_type(sig.args[0].dtype))
        return builder.load_atomic(ptr, "acquire", width)

    return sig, codegen


@intrinsic
def atomic_store(typingctx, arr, idx, value):
    """Write arr[idx] with release ordering (earlier writes are visible before it)."""
    if not _check(arr):
        return None
    dt = arr.dtype
    sig = types.void(arr, types.intp, dt)

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        width = context.get_abi_sizeof(context.get_value_type(sig.args[0].dtype))
        builder.store_atomic(args[2], ptr, "release", width)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fence(typingctx):
    """Full memory barrier (orders stores before later loads, which release/acquire don't)."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fence_release(typingctx):
    """Earlier loads and stores stay before later stores (seqlock writer: seq odd, then
    the row). A compiler barrier on x86, whose stores are not reordered."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        builder.fence("release")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fence_acquire(typingctx):
    """Earlier loads stay before later loads and stores (seqlock reader: the row, then
    seq again). A compiler barrier on x86."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        builder.fence("acquire")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sched_yield(typingctx):
    """Give the CPU up (sched_yield(2)): a spin-wait whose other side is a process waiting
    for a CPU (more workers than cores) lets it run instead of spinning against it."""
    sig = types.int32()

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "sched_yield")
        return builder.call(fn, [])

    return sig, codegen


@intrinsic
def cpu_relax(typingctx):
    """Spin-wait hint (x86 `pause`) plus a compiler barrier, so the loop re-reads memory."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        if _X86:
            fnty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
            builder.call(fn, [])
        builder.fence("acquire", "singlethread")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def unmanaged(typingctx, arr):
    """The same array without its NRT meminfo (and parent object).

    Every slice or view taken from an array carries the array's meminfo, and numba
    increments and decrements it (a call and an atomic each time) wherever the view is
    passed on: a table insert made ~300 such calls. Kernels only ever see buffers the
    caller keeps alive for the whole call (shm mappings, worker buffers), so they work
    on an unmanaged alias and those refcount calls become no-ops.
    """
    if not isinstance(arr, types.Array):
        return None
    sig = arr(arr)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        out = context.make_array(sig.return_type)(context, builder)
        out.meminfo = context.get_constant_null(types.MemInfoPointer(types.voidptr))
        out.parent = context.get_constant_null(types.pyobject)
        out.nitems = ary.nitems
        out.itemsize = ary.itemsize
        out.data = ary.data
        out.shape = ary.shape
        out.strides = ary.strides
        return out._getvalue()

    return sig, codegen


def _prefetcher(write: int):
    @intrinsic
    def prefetch(typingctx, arr, idx):
        if not isinstance(arr, types.Array):
            return None
        sig = types.void(arr, types.intp)

        def codegen(context, builder, sig, args):
            ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
            i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
            fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(),
                                                   ir.IntType(32), ir.IntType(32),
                                                   ir.IntType(32)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            i32 = ir.IntType(32)
            builder.call(fn, [i8p, i32(write), i32(3), i32(1)])
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


# Hints to fetch arr[idx]'s cache line: batch kernels issue them for the item they will
# touch a few iterations later, so the misses overlap. `prefetch` asks for the line in
# a writable state (the kernel will store into it), `prefetch_read` for reading only.
prefetch = _prefetcher(1)
prefetch_read = _prefetcher(0)
