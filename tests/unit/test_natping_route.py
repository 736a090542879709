"""Where NAT pings go (services.natping.uri_destination / path_route): the Path of a
contact registered through an edge proxy wins over its received address (RFC 3327)."""
from __future__ import annotations

import pytest

from fastcluster.services.sip.natping import path_route, uri_destination


@pytest.mark.parametrize("uri, dest", [
    ("sip:alice@192.0.2.10:5070", ("192.0.2.10", 5070)),
    ("sip:alice@192.0.2.10", ("192.0.2.10", 5060)),
    ("sip:alice@[2001:db8::10]:5070", ("2001:db8::10", 5070, 0, 0)),
    ("sip:alice@192.0.2.10;transport=udp", ("192.0.2.10", 5060)),
    ("sip:alice@host.example.com;maddr=192.0.2.9", ("192.0.2.9", 5060)),
    ("sip:alice@host.example.com", None),  # names are not resolved
    ("sip:alice@192.0.2.10;transport=tcp", None),
    ("sip:alice@[2001:db8:::1]", None),
    ("tel:+1555", None),
    ("garbage", None),
])
def test_uri_destination(uri: str, dest) -> None:
    assert uri_destination(uri) == dest


@pytest.mark.parametrize("path, dest, route", [
    ("<sip:192.0.2.1:5080;lr>", ("192.0.2.1", 5080), "Route: <sip:192.0.2.1:5080;lr>\r\n"),
    ("<sip:192.0.2.1;lr;received=sip:10.0.0.2:5060>, <sip:192.0.2.7;lr>",
     ("192.0.2.1", 5060),
     "Route: <sip:192.0.2.1;lr;received=sip:10.0.0.2:5060>, <sip:192.0.2.7;lr>\r\n"),
    ('"Edge" <sip:[2001:db8::1]:5070;lr;ob>', ("2001:db8::1", 5070, 0, 0),
     'Route: "Edge" <sip:[2001:db8::1]:5070;lr;ob>\r\n'),
])
def test_path_route(path: str, dest, route: str) -> None:
    assert path_route(path) == (dest, route)


@pytest.mark.parametrize("path", ["", "<sip:edge.example.com;lr>", "<garbage",
                                  "<sip:192.0.2.1;transport=tcp;lr>"])
def test_path_route_unreachable(path: str) -> None:
    assert path_route(path) is None
