"""The script bench.script runs on both nodes: echoes ["p", ...] requests, counts
["o", ...] ones, and has MI commands that drive the measurements from inside the
script process (so the figures are the script API's, not the MI's)."""
import threading
import time

from fastcluster.services.script import cluster_send_req, cluster_send_rpl, mi_command, request

RECEIVED = {"count": 0, "first": 0.0, "last": 0.0}
LOCK = threading.Lock()


def on_request(cluster_id, src_id, msg, tag):
    if msg[0] == "p":
        cluster_send_rpl(cluster_id, src_id, msg, tag)
        return
    now = time.monotonic()
    with LOCK:
        if not RECEIVED["count"]:
            RECEIVED["first"] = now
        RECEIVED["count"] += 1
        RECEIVED["last"] = now


@mi_command("bench_rtt")
def bench_rtt(node, count=2000, size=16):
    """count request()/reply round trips to node, one at a time: latencies in us."""
    msg = ["p", "x" * int(size)]
    lat, lost = [], 0
    for _ in range(int(count)):
        t0 = time.perf_counter()
        replies = request(1, msg, dst_node=int(node), timeout=1.0)
        lat.append((time.perf_counter() - t0) * 1e6)
        lost += int(node) not in replies
    return {"latencies_us": lat, "lost": lost}


@mi_command("bench_send")
def bench_send(node, count=100000, size=16):
    """count one-way requests to node, as fast as the API takes them."""
    msg = ["o", "x" * int(size)]
    t0 = time.monotonic()
    sent = sum(isinstance(cluster_send_req(1, int(node), msg), str) for _ in range(int(count)))
    return {"sent": sent, "t0": t0, "t1": time.monotonic()}


@mi_command("bench_received")
def bench_received(reset=0):
    """What on_request counted (and zero it with reset=1)."""
    with LOCK:
        out = dict(RECEIVED)
        if int(reset):
            RECEIVED.update(count=0, first=0.0, last=0.0)
    return out
