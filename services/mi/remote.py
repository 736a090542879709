"""MI commands run on another node (cluster_send_mi, cluster_broadcast_mi), over the
narrow cluster API: MI_REQ carries the command, MI_RPL its result or error.

The receiving node runs the command as a CONCURRENT handler, so a command that takes
seconds never holds up the link it came on (heartbeats keep flowing). Replies go back
along any route, even to a node disabled in the cluster. Neighbours:
services.cluster.api, services.mi.clusterer_cmds (the commands), workers.cluster (run_mi).
"""
from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from fastcluster.core.messages import MiError, MiReq, MiRpl, Msg
from fastcluster.services.cluster.api import ClusterAPI, Delivery, Mode, SendResult

_pending: dict[int, asyncio.Future] = {}
_tags = itertools.count(1)
SEND_ERRORS = {SendResult.DEST_DOWN: "Destination down",
               SendResult.CURR_DISABLED: "Local node disabled"}


def attach(api: ClusterAPI, run_mi: Callable[[str, Any], Awaitable[dict[str, Any]]]) -> None:
    """Serve other nodes' MI requests with run_mi(cmd, params) -> {result | error}."""

    async def handle_req(d: Delivery) -> None:
        req: MiReq = d.payload
        answer = await run_mi(req.cmd, req.params)
        error = answer.get("error")
        reply = MiRpl(req.tag, api.me, answer.get("result"),
                      MiError(int(error.get("code", 500)), str(error.get("message")))
                      if error else None)
        api.send_control(d.header.cluster, d.source, Msg.MI_RPL, reply)

    def handle_rpl(d: Delivery) -> None:
        fut = _pending.pop(d.payload.tag, None)
        if fut is not None and not fut.done():
            fut.set_result(d.payload)

    api.handle(Msg.MI_REQ, handle_req, Mode.CONCURRENT)
    api.handle(Msg.MI_RPL, handle_rpl, Mode.INLINE)


async def run(api: ClusterAPI, cluster: int, dest: int, cmd: str, params: Any,
              timeout: float) -> dict[str, Any]:
    """{"node": dest, "result": ...} or {"node": dest, "error": {code, message}}."""
    tag = next(_tags)
    fut: asyncio.Future = asyncio.get_running_loop().create_future()
    _pending[tag] = fut
    result = api.send(cluster, dest, Msg.MI_REQ, MiReq(tag, cmd, params))
    if result != SendResult.SUCCESS:
        _pending.pop(tag, None)
        return {"node": dest, "error": {"code": 400,
                                        "message": SEND_ERRORS.get(result, "Send error")}}
    try:
        reply: MiRpl = await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        _pending.pop(tag, None)
        return {"node": dest, "error": {"code": 408, "message": "No reply in time"}}
    if reply.error is not None:
        return {"node": reply.node, "error": {"code": reply.error.code,
                                              "message": reply.error.message}}
    return {"node": reply.node, "result": reply.result}
