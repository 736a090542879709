"""Client side of the MI: one JSON-RPC call over HTTP (used by `fastcluster mi`, tests
and benchmarks). Neighbours: services.mi (the server).
"""
from __future__ import annotations

import http.client
import itertools
import json
from typing import Any
from urllib.parse import urlsplit

_ids = itertools.count(1)


class MIError(Exception):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error


def call(url: str, method: str, params: dict[str, Any] | list[Any] | None = None,
         timeout: float = 30.0, token: str | None = None) -> Any:
    """One JSON-RPC call; token: the node's [mi] token, sent as a bearer header."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {},
                       "id": next(_ids)}).encode()
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", parts.path or "/mi", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise OSError(f"HTTP {resp.status}: {data[:200]!r}")
    reply = json.loads(data)
    if "error" in reply:
        raise MIError(reply["error"])
    return reply["result"]
