"""A test script: records what its hooks see, answers requests, and misbehaves on
demand (raises, hangs) so tests can check the node keeps going.

Requests: {"echo": x} -> reply {"echo": x, "node": me}; {"raise": text} -> the hook
raises; {"hang": seconds} -> the hook sleeps that long, then records it finished;
{"ask": node} -> the hook itself sends {"echo": "asked"} to node, waits for the reply
and answers with it.
MI: probe_events, probe_send, probe_broadcast, probe_request, probe_check, probe_big,
probe_snapshot, probe_burst, probe_fail, probe_sleep.
"""
import threading
import time

from fastcluster.services.script import (
    ScriptMIError,
    cluster_broadcast_req,
    cluster_check_addr,
    cluster_send_req,
    cluster_send_rpl,
    mi_command,
    node_id,
    request,
)

EVENTS = []
LOCK = threading.Lock()


def record(kind, *args):
    with LOCK:
        EVENTS.append([kind, *args])


def on_request(cluster_id, src_id, msg, tag):
    record("request", cluster_id, src_id, msg, tag)
    if isinstance(msg, dict) and "raise" in msg:
        raise RuntimeError(msg["raise"])
    if isinstance(msg, dict) and "hang" in msg:
        time.sleep(msg["hang"])
        record("hang-finished", msg["hang"])
        return
    if isinstance(msg, dict) and "seq" in msg:
        return
    if isinstance(msg, dict) and "ask" in msg:  # a hook that waits for another node
        got = request(cluster_id, {"echo": "asked"}, dst_node=msg["ask"], timeout=2.0)
        cluster_send_rpl(cluster_id, src_id, {"asked": {str(k): v for k, v in got.items()}},
                         tag)
        return
    if isinstance(msg, dict) and "echo" in msg:
        cluster_send_rpl(cluster_id, src_id, {"echo": msg["echo"], "node": node_id()}, tag)


def on_reply(cluster_id, src_id, msg, tag):
    record("reply", cluster_id, src_id, msg, tag)


def on_node_state(cluster_id, node_id, up):
    record("node", cluster_id, node_id, up)


@mi_command("probe_events")
def probe_events(kind=None, clear=0):
    """What the hooks saw (optionally one kind), oldest first."""
    with LOCK:
        out = [e for e in EVENTS if kind is None or e[0] == kind]
        if int(clear):
            EVENTS.clear()
    return out


def _result(r):
    return r if isinstance(r, str) else {"result": r.name, "code": int(r)}


@mi_command("probe_send")
def probe_send(cluster, node, msg):
    """cluster_send_req."""
    return _result(cluster_send_req(int(cluster), int(node), msg))


@mi_command("probe_broadcast")
def probe_broadcast(cluster, msg, include_self=0):
    """cluster_broadcast_req."""
    return _result(cluster_broadcast_req(int(cluster), msg, bool(int(include_self))))


@mi_command("probe_request")
def probe_request(cluster, msg, node=None, timeout=2.0):
    """request(): send and wait for the replies."""
    replies = request(int(cluster), msg, None if node is None else int(node),
                      float(timeout))
    return {"replies": {str(k): v for k, v in replies.items()}, "missing": replies.missing}


@mi_command("probe_check")
def probe_check(cluster, ip, addr_type="sip"):
    """cluster_check_addr."""
    return cluster_check_addr(int(cluster), ip, addr_type)


@mi_command("probe_big")
def probe_big(cluster, node, size):
    """Try to send a message of `size` bytes: the error text if it is refused."""
    try:
        return _result(cluster_send_req(int(cluster), int(node), "x" * int(size)))
    except ValueError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}


@mi_command("probe_snapshot")
def probe_snapshot():
    """The cluster view the API answers from."""
    from fastcluster.services import script
    return {str(c): {"enabled": v["enabled"], "nodes": {str(n): d for n, d in v["nodes"].items()}}
            for c, v in script._rt().snapshot.items()}


@mi_command("probe_burst")
def probe_burst(cluster, node, count):
    """cluster_send_req of {"seq": 0..count-1} to one node, as fast as possible."""
    results = [cluster_send_req(int(cluster), int(node), {"seq": i}) for i in range(int(count))]
    return sum(isinstance(r, str) for r in results)


@mi_command("probe_fail")
def probe_fail(code=0):
    """Raise ScriptMIError(code) when code is given, else a plain exception."""
    if int(code):
        raise ScriptMIError(int(code), "refused on purpose")
    raise KeyError("no such thing")


@mi_command("probe_sleep")
def probe_sleep(seconds):
    """Sleep, then answer: for the MI timeout."""
    time.sleep(float(seconds))
    return "slept"
