"""shm.segment: a process that populates a segment it inherited takes no page fault
when it then touches the pages (a SIP worker populates the tables at boot so that a
request never pays for a page's first touch)."""
from __future__ import annotations

import os
import resource

import numpy as np

from fastcluster.shm.segment import Segment

PAGES = 2048


def faults_touching_every_page(segment: Segment, populate: bool, piece: int = 0) -> int:
    """In a forked child (which inherits the mapping without its page table entries):
    the minor faults it takes writing one byte of every page (populated first, in
    pieces of `piece` bytes)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            if populate:
                assert segment.populate(piece)
            pages = segment.buf[::4096]
            private = np.zeros(4096 * 64, dtype=np.uint8)[::4096]
            private += np.uint8(1)  # the same code path first: its own faults not counted
            usage = resource.getrusage(resource.RUSAGE_SELF)
            before = usage.ru_minflt
            pages += np.uint8(1)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            os.write(w, str(after - before).encode())
        except BaseException:  # noqa: BLE001 - reported as the exit code
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        got = os.read(r, 64)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return int(got)


def test_a_populated_segment_takes_no_fault_on_first_touch() -> None:
    segment = Segment.create(f"/fastcluster.test-segment.{os.getpid()}", PAGES * 4096)
    try:
        segment.prefault()  # committed, as the master does
        # without: a fault per page, or per 16 with the kernel's fault-around (64 KiB)
        assert faults_touching_every_page(segment, populate=False) >= PAGES // 32
        assert faults_touching_every_page(segment, populate=True) < PAGES // 64
        # in pieces (as a SIP worker's populating thread): the last page too, whole or not
        assert faults_touching_every_page(segment, populate=True,
                                          piece=7 * 4096 + 100) < PAGES // 64
        assert np.all(segment.buf[::4096] == 3)  # the children wrote the shared pages
    finally:
        segment.close()
        segment.unlink()
