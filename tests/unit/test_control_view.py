"""Cluster views in the control segment: node entries and their SIP addresses."""
from __future__ import annotations

import numpy as np

from fastcluster.shm import control as CT


def make() -> CT.Control:
    buf = np.zeros(CT.segment_size(CT.nprocs_for(2), 2), dtype=np.uint8)
    return CT.Control.init(buf, CT.nprocs_for(2), 1, 1234, 2)


def test_view_carries_each_nodes_sip_address() -> None:
    ctl = make()
    entries = [(1, CT.VIEW_ME | CT.VIEW_UP, 0), (2, CT.VIEW_UP, 5), (3, 0, 0), (4, 0, 0)]
    ctl.publish_view(0, 7, 1, entries, [("127.0.0.1", 5060), ("10.1.2.3", 5070),
                                        ("::1", 5080), None])
    assert ctl.read_view(0) == (7, 1, entries)
    assert ctl.read_view_sip(0) == {1: ("127.0.0.1", 5060), 2: ("10.1.2.3", 5070),
                                    3: ("::1", 5080)}
    # a smaller view later: the old entries beyond it are not read back
    ctl.publish_view(0, 7, 1, entries[:1])
    assert ctl.read_view_sip(0) == {}
    assert ctl.read_view(1) == (0, 0, [])
