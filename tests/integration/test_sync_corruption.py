"""A sync whose data is corrupted on the way is detected and never declared synced.

The donor here is a fake node run in the test process from the real cluster layers
(node, capabilities) with its own sync server that damages what it sends; the receiver
is a real node.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import zlib

import numpy as np
import pytest

from fastcluster.core.config import load
from fastcluster.core.stats import COUNTERS
from fastcluster.core.messages import Msg, SyncEnd
from fastcluster.core.wire import Header, encode, encode_parts
from fastcluster.services.cluster.api import Capability
from fastcluster.services.cluster.capabilities import Capabilities, CapState
from fastcluster.services.cluster.node import ClusterNode
from fastcluster.services.cluster.sync import chunk_payload
from fastcluster.shm import ring as R
from fastcluster.shm import table as T
from fastcluster.shm.contacts import CONTACT
from fastcluster.shm.tables import TABLES, Table
from fastcluster.workers.cluster import build_fingerprint
from tests.support.nodes import Node, cap_state, free_port, wait_until


def entries(rows: int) -> tuple[bytes, int, int]:
    """Wire entries of `rows` contacts, with their count and checksum."""
    buf = np.zeros(Table.size_for(CONTACT, rows * 2, 64, 2), dtype=np.uint8)
    Table.create(buf, CONTACT, rows * 2, 64, 2, node_id=9)
    rs = CONTACT.row_size(64)
    for i in range(rows):
        row = np.zeros(rs, dtype=np.uint8)
        rec = row[:CONTACT.fixed_size].view(CONTACT.dtype)
        rec["key"], rec["group"], rec["state"] = 1000 + i, (i + 1) << 40, T.ST_LIVE
        rec["expires"], rec["lens"] = 2_000_000_000, [4, 0, 0, 0, 0, 0]
        row[CONTACT.fixed_size:CONTACT.fixed_size + 4] = np.frombuffer(b"user", np.uint8)
        T.table_put(buf, R.no_ring(), row, 1_700_000_000_000, T.lock_word(1, 1), 1)
    out = np.zeros(1 << 20, dtype=np.uint8)
    counts = np.zeros(T.GATHER_COUNTS, dtype=np.int64)
    _, nbytes, _ = T.table_gather(buf, 0, out, out.shape[0], counts)
    return out[:nbytes].tobytes(), int(counts[T.GC_ENTRIES]), int(counts[T.GC_CHECKSUM])


class FakeDonor:
    def __init__(self, damage: str) -> None:
        self.damage = damage
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.cfg = load(cli={"clusterer.node_id": "9", "clusterer.bin_listen": self.addr,
                             "clusterer.secret": "test-secret"}, environ={})
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.requests = 0
        self.sync_conns: list = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        cl = ClusterNode(self.cfg, np.zeros(len(COUNTERS), dtype=np.int64),
                         build_fingerprint())
        caps = Capabilities(cl, lambda: None)
        for spec in TABLES:  # a donor with data, as far as anyone knows
            caps.register(Capability(spec.capability, spec.kind, 1, None, None, None))
            caps.local[spec.capability].state = CapState.SYNCED
        cl.on_sync_connection = self._serve
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        await cl.start(sock)
        self.ready.set()
        await self.stop_event.wait()
        await cl.stop()
        for conn in self.sync_conns:
            conn.close()
        await asyncio.sleep(0.2)  # let the transports finish closing

    async def _serve(self, conn) -> None:
        self.requests += 1
        self.sync_conns.append(conn)
        req = await conn.recv(5)
        assert req.header.type == Msg.SYNC_REQ
        data, rows, checksum = entries(20)
        meta = {"seq": 0, "rows": rows, "crc": zlib.crc32(data), "covered": 1 << 31}
        if self.damage == "byte":
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        conn.send_parts(encode_parts(Header(Msg.SYNC_CHUNK, 0, 9, conn.peer_id),
                                     chunk_payload(meta, memoryview(data))))
        end_rows = rows + 1 if self.damage == "end" else rows
        conn.send(encode(Header(Msg.SYNC_END, 0, 9, conn.peer_id),
                         SyncEnd(end_rows, checksum, 1)))
        await asyncio.sleep(2)
        conn.close()

    def __enter__(self) -> FakeDonor:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


@pytest.mark.parametrize("damage, symptom", [
    ("byte", "fails its checksum"),
    ("end", "end marker: donor sent 21 rows"),
])
def test_corrupt_sync_is_detected_and_never_synced(tmp_path, damage: str, symptom: str) -> None:
    with FakeDonor(damage) as donor:
        receiver = Node(tmp_path, node_id=2, workers=1,
                        settings={"clusterer": {"seeds": donor.addr}}).start()
        try:
            wait_until(lambda: symptom in receiver.log(), timeout=20, what="detection")
            assert cap_state(receiver) != "synced"
            assert "synced from node 9" not in receiver.log()
            stats = receiver.mi("get_statistics", statistics=["clusterer:"])
            assert stats["clusterer:sync_failed"] >= 1
            if damage == "byte":
                assert stats["clusterer:sync_corrupt_chunks"] >= 1
                assert receiver.mi("ul_digest")["contacts"] == 0  # nothing of it applied
        finally:
            receiver.stop()
