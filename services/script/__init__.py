"""The API a user script calls, and the runtime behind it (in the script process).

A script is a Python module named by `[script] module` (docs/scripting.md has a full
guide). It may define hooks, each optional, called with OpenSIPS's event parameters:

    def on_request(cluster_id, src_id, msg, tag)    # E_CLUSTERER_REQ_RECEIVED
    def on_reply(cluster_id, src_id, msg, tag)      # E_CLUSTERER_RPL_RECEIVED
    def on_node_state(cluster_id, node_id, up)      # E_CLUSTERER_NODE_STATE_CHANGED
    def on_shtag_change(tag, cluster_id, active, reason)  # a sharing tag changed here

and MI commands (`@mi_command("name")`, called as handler(**params)). It calls:

    cluster_send_req(cluster_id, dst_node, msg)       -> tag (str) or a SendResult
    cluster_broadcast_req(cluster_id, msg, include_self=False) -> tag or a SendResult
    cluster_send_rpl(cluster_id, dst_node, msg, tag)  -> SendResult
    cluster_check_addr(cluster_id, ip, addr_type="sip") -> bool
    request(cluster_id, msg, dst_node=None, timeout=1.0, include_self=False) -> Replies
    node_id(), cluster_nodes(cluster_id), statistics(names)

A message is any msgpack-able value (str, bytes, int, float, bool, None, lists, dicts) of
at most script.max_message_bytes once encoded; anything else raises MessageTooLarge or
TypeError and nothing is sent. Result codes are OpenSIPS's (services.clusterer.SendResult):
SUCCESS sent; CURR_DISABLED this node is disabled in the cluster; DEST_DOWN the
destination (for a broadcast: every node) is unreachable; SEND_ERR unknown cluster or
node, or the cluster process is not there. The answer comes from the cluster view the
cluster process last sent; a message that finds no route after all is dropped there and
counted (clusterer:unroutable_msgs), like OpenSIPS.

Runtime: one connection to the cluster process (a unix stream, core.wire frames). A lone
message is written at once; a burst (messages less than BURST_GAP_S apart) is left to a
flusher thread that writes all that is queued together, one frame per destination
carrying many messages. One reader thread reads the connection and calls the hooks in
arrival order (so in order per source), without a hand-over to another thread (each
costs tens of microseconds of round trip). A hook that raises is logged with its
traceback; one that runs past script.hook_timeout_s is abandoned to its thread and a
new reader takes over the connection. Replies someone waits for (request()) go to the
waiter, not to on_reply; a hook that waits reads the connection itself meanwhile. MI
calls run in a small thread pool. Neighbours: workers.script (the process),
services.script.bridge (the cluster side), examples/cluster_stats.py.

The package: this module is the user's API; runtime.py runs in the script process;
bridge.py runs in the cluster process. They may import core, services.mi and
services.cluster.api, never another module of services.cluster.
"""
from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastcluster.core.wire import Msg
from fastcluster.services.cluster.api import SendResult

if TYPE_CHECKING:
    from fastcluster.services.script.runtime import Runtime

HOOKS = ("on_request", "on_reply", "on_node_state", "on_shtag_change")

__all__ = ["MessageTooLarge", "Replies", "ScriptMIError", "SendResult",
           "cluster_broadcast_req", "cluster_check_addr", "cluster_nodes", "cluster_send_req",
           "cluster_send_rpl", "mi_command", "node_id", "request", "statistics"]


class MessageTooLarge(ValueError):
    """A message longer than script.max_message_bytes once encoded: not sent."""


class Replies(dict):
    """{node_id: reply} from request(); `asked` the nodes the request went to."""

    def __init__(self, asked: list[int]) -> None:
        super().__init__()
        self.asked = asked

    @property
    def missing(self) -> list[int]:
        return [n for n in self.asked if n not in self]


# ---------------------------------------------------------------- MI commands

MI_COMMANDS: dict[str, Callable[..., Any]] = {}


def mi_command(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an MI command run by the script: handler(**params) -> JSON-able result.
    Raise MIError-like errors with `raise ScriptMIError(code, message)`."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        MI_COMMANDS[name] = fn
        return fn

    return wrap


class ScriptMIError(Exception):
    """Raised by a script MI handler: the MI answers {"code": code, "message": ...}."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def describe_commands() -> list[dict[str, Any]]:
    """What the cluster process needs to offer the script's MI commands."""
    out = []
    for name, fn in MI_COMMANDS.items():
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        out.append({"name": name, "doc": (fn.__doc__ or "").strip().split("\n")[0],
                    "params": [p.name for p in params],
                    "required": [p.name for p in params if p.default is p.empty]})
    return out


# ---------------------------------------------------------------- the API

_runtime: Runtime | None = None


def set_runtime(runtime: Runtime | None) -> None:
    """Install the script process's runtime (workers.script, at boot)."""
    global _runtime
    _runtime = runtime


def _rt() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the cluster script API works only in the script process of a "
                           "node ([script] module)")
    return _runtime


def node_id() -> int:
    """This node's id."""
    return _rt().me


def cluster_nodes(cluster_id: int) -> list[int]:
    """The other nodes of the cluster that are reachable now."""
    return _rt().up_nodes(cluster_id)


def cluster_send_req(cluster_id: int, dst_node: int, msg: Any) -> str | SendResult:
    """Send a request to one node: its tag (str), or the SendResult that stopped it."""
    rt = _rt()
    result = rt.route(cluster_id, dst_node)
    if result != SendResult.SUCCESS:
        return result
    tag = rt.new_tag(cluster_id)
    rt.queue_items(Msg.SCRIPT_REQ, cluster_id, [dst_node], rt.pack(tag, msg))
    return tag


def cluster_broadcast_req(cluster_id: int, msg: Any,
                          include_self: bool = False) -> str | SendResult:
    """Send a request to every reachable node of the cluster (and to this node's own
    on_request with include_self): one tag for all, or the SendResult that stopped it."""
    rt = _rt()
    result = rt.route(cluster_id, None)
    if result == SendResult.DEST_DOWN and include_self:
        result = SendResult.SUCCESS
    if result != SendResult.SUCCESS:
        return result
    tag = rt.new_tag(cluster_id)
    dsts = rt.up_nodes(cluster_id) + ([rt.me] if include_self else [])
    rt.queue_items(Msg.SCRIPT_REQ, cluster_id, dsts, rt.pack(tag, msg))
    return tag


def cluster_send_rpl(cluster_id: int, dst_node: int, msg: Any, tag: str) -> SendResult:
    """Answer a request: send msg to dst_node with the request's tag."""
    if not tag:
        raise ValueError("cluster_send_rpl needs the tag of the request it answers")
    rt = _rt()
    result = rt.route(cluster_id, dst_node)
    if result == SendResult.SUCCESS:
        rt.queue_items(Msg.SCRIPT_RPL, cluster_id, [dst_node], rt.pack(tag, msg))
    return result


def cluster_check_addr(cluster_id: int, ip: str, addr_type: str = "sip") -> bool:
    """Whether ip is an address of a node of the cluster (this node included): one of
    its SIP listeners (addr_type "sip", the default) or its bin_listen ("bin")."""
    if addr_type not in ("sip", "bin"):
        raise ValueError('addr_type must be "sip" or "bin"')
    try:
        wanted = ipaddress.ip_address(ip)
    except ValueError:
        return False
    view = _rt().snapshot.get(cluster_id)
    if view is None:
        return False
    for node in view["nodes"].values():
        for host in node[addr_type]:
            try:
                if ipaddress.ip_address(host) == wanted:
                    return True
            except ValueError:
                continue
    return False


def request(cluster_id: int, msg: Any, dst_node: int | None = None, timeout: float = 1.0,
            include_self: bool = False) -> Replies:
    """Send a request (to dst_node, or to every reachable node) and wait up to timeout
    seconds for the replies: {node: reply}, with .asked and .missing. Their replies go
    here, not to on_reply. For MI handlers and hooks that need an answer."""
    rt = _rt()
    if dst_node is None:
        dsts = rt.up_nodes(cluster_id) + ([rt.me] if include_self else [])
    else:
        dsts = [dst_node] if rt.route(cluster_id, dst_node) == SendResult.SUCCESS else []
    replies = Replies(dsts)
    if not dsts or (dst_node is None and rt.route(cluster_id, None) ==
                    SendResult.CURR_DISABLED):
        return replies
    tag = rt.new_tag(cluster_id)
    from fastcluster.services.script.runtime import Waiter

    waiter = Waiter(set(dsts))
    rt.waiters[tag] = waiter
    try:
        rt.queue_items(Msg.SCRIPT_REQ, cluster_id, dsts, rt.pack(tag, msg))
        rt.pump(waiter.done, timeout)
    finally:
        rt.waiters.pop(tag, None)
    replies.update(waiter.replies)
    return replies


def statistics(names: list[str] | str | None = None) -> dict[str, int]:
    """This node's statistics, as the MI get_statistics gives them."""
    from fastcluster.services.mi.core_cmds import mi_get_statistics

    return mi_get_statistics(_rt().proc, names)
