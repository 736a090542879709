"""What the MI server answers to GET: the status page (`/`) and the Prometheus metrics
(`/metrics`).

The page is one static file (status.html, no external resources: operators' networks
are often closed) whose script polls the `status` MI command every second over the
same JSON-RPC endpoint as every other client and draws what it returns. With `[mi]
token` set, GET requests may carry the token as `?token=...` (a browser cannot add a
bearer header to a navigation); the page then sends it as a bearer token on its own
requests. Neighbours: services.mi.server (routing), services.mi.status (the snapshot),
services.mi.metrics (the exposition).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

from fastcluster.services.mi import metrics, status  # noqa: F401  (the status command)
from fastcluster.services.mi.registry import REGISTRY

HTML = "text/html; charset=utf-8"
Page = Callable[[Any], Awaitable[tuple[int, str, bytes]]]


def _page_bytes() -> bytes:
    return files("fastcluster.services.mi").joinpath("status.html").read_bytes()


async def status_page(node: Any) -> tuple[int, str, bytes]:
    return 200, HTML, _page_bytes()


async def metrics_page(node: Any) -> tuple[int, str, bytes]:
    snapshot = await node.run_command(REGISTRY["status"], {})
    stats = await node.run_command(REGISTRY["get_statistics"], {})
    return 200, metrics.CONTENT_TYPE, metrics.render(stats, snapshot, metrics.OBSERVER)


ROUTES: dict[str, Page] = {"/": status_page, "/status": status_page,
                           "/metrics": metrics_page}


def query_authorization(query: str) -> str | None:
    """`?token=T` as the Authorization header it stands for (GET routes only)."""
    tokens = parse_qs(query).get("token")
    return f"Bearer {tokens[0]}" if tokens else None


__all__ = ["ROUTES", "query_authorization"]
