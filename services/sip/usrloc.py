"""User location: AOR canonical form, contact records as operators see them, and the ul_*
MI commands (shapes follow OpenSIPS 3.x usrloc MI output).

Neighbours: shm.tables / shm.contacts (storage and kernels), services.registrar (writes
contacts from REGISTER), services.mi (registry).
"""
from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

from fastcluster.services.mi.registry import MIError, MINode, Streamed, command
from fastcluster.shm.contacts import FLAG_NAT, Q_NONE

DOMAIN = "location"  # OpenSIPS's usrloc table name, kept for tools that expect it
FLAG_NAMES = ((FLAG_NAT, "NAT"),)


def normalize_aor(text: str) -> str:
    """Canonical AOR `user@host`: no scheme, port, parameters or headers; host in lower
    case; the user part kept as is (it is case-sensitive, RFC 3261 §19.1.4)."""
    if text[:4] == "sip:":  # the common plain form, sip:user@host
        user, at, host = text[4:].partition("@")
        if user and host and not any(ch in text[4:] for ch in ";?:@[<> \t"[:-2]) and \
                "@" not in host and " " not in text and "\t" not in text:
            return f"{user}@{host.lower()}"
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    scheme, sep, rest = value.partition(":")
    if sep and scheme.lower() in ("sip", "sips"):
        value = rest
    value = value.split(";", 1)[0].split("?", 1)[0]
    user, at, host = value.rpartition("@")
    if not at:
        user, host = "", value
    if host.startswith("["):
        host = host[:host.find("]") + 1] if "]" in host else host
    else:
        host = host.split(":", 1)[0]
    host = host.lower()
    return f"{user}@{host}" if user else host


def received_text(rec: dict[str, Any]) -> str:
    fam = rec["recv_family"]
    if fam not in (4, 6):
        return ""
    raw = bytes(rec["recv_addr"])
    if fam == 4:
        return f"sip:{ipaddress.IPv4Address(raw[:4])}:{rec['recv_port']}"
    return f"sip:[{ipaddress.IPv6Address(raw[:16])}]:{rec['recv_port']}"


def q_text(q: int) -> str:
    if q == Q_NONE:
        return ""
    return "1" if q >= 1000 else f"0.{q:03d}".rstrip("0") if q else "0"


def contact_view(rec: dict[str, Any], now: float, sockets: list[str]) -> dict[str, Any]:
    """One contact as `ul_dump` / `ul_show_contact` show it."""
    left = rec["expires"] - int(now)
    view: dict[str, Any] = {
        "Contact": rec["uri"],
        "ContactID": str(rec["key"]),
        "Expires": left if left > 0 else "expired",
        "Q": q_text(rec["q"]),
        "Callid": rec["callid"],
        "Cseq": rec["cseq"],
    }
    for key, value in (("User-agent", rec["user_agent"]), ("Received", received_text(rec)),
                       ("Path", rec["path"])):
        if value:
            view[key] = value
    view["State"] = "CS_SYNC"
    view["Flags"] = rec["flags"]
    view["Cflags"] = " ".join(name for bit, name in FLAG_NAMES if rec["flags"] & bit)
    if rec["sock"] < len(sockets):
        view["Socket"] = sockets[rec["sock"]]
    view["Methods"] = rec["methods"]
    if rec["instance"]:
        view["SIP_instance"] = rec["instance"]
        view["Reg-Id"] = rec["reg_id"]
    view["Last-Modified"] = rec["last_modified"]
    view["Origin"] = rec["origin"]
    view["Version"] = rec["version"]
    return view


def _sockets(node: MINode) -> list[str]:
    return node.sip_sockets


@command("ul_dump", heavy=True)
def mi_ul_dump(node: MINode, brief: int = 0) -> Streamed:
    """Every AOR with its contacts (brief=1: AORs only); streamed, a batch of table slots
    at a time, so a dump of a million contacts never sits whole in memory."""
    now = time.time()
    sockets = _sockets(node)
    table = node.mem.contacts

    def aors() -> Iterator[dict[str, Any]]:
        for batch in table.batches(live_only=True):  # a group's rows are in one batch
            groups: dict[str, list[dict[str, Any]]] = {}
            for rec in batch:
                groups.setdefault(rec["aor"], []).append(rec)
            for aor, recs in groups.items():
                item: dict[str, Any] = {"AOR": aor}
                if not brief:
                    item["Contacts"] = [contact_view(r, now, sockets) for r in recs]
                yield item

    head = json.dumps({"name": DOMAIN, "hash_size": table.nslots})[:-1]
    return Streamed('{"Domains": [' + head + ', "AORs": [', aors(), "]}]}")


@command("ul_show_contact")
def mi_ul_show_contact(node: Any, aor: str, table_name: str = DOMAIN) -> dict[str, Any]:
    """The contacts of one AOR."""
    _check_table(table_name)
    canonical = normalize_aor(aor)
    recs = node.mem.contacts.group(canonical.encode())
    if not recs:
        raise MIError(404, "AOR not found")
    now = time.time()
    sockets = _sockets(node)
    return {"AOR": canonical, "Contacts": [contact_view(r, now, sockets) for r in recs]}


@command("ul_rm")
def mi_ul_rm(node: Any, aor: str, table_name: str = DOMAIN) -> str:
    """Remove every contact of an AOR (replicated as tombstones)."""
    _check_table(table_name)
    removed = node.mem.contacts.remove(normalize_aor(aor).encode(), b"",
                                       node.rings["contacts"], node.me, node.slot)
    if removed == 0:
        raise MIError(404, "AOR not found")
    if removed < 0:
        raise MIError(500, f"Failed to delete AOR (error {removed})")
    return "OK"


@command("ul_rm_contact")
def mi_ul_rm_contact(node: Any, aor: str, contact: str, table_name: str = DOMAIN) -> str:
    """Remove one contact (exact contact URI) of an AOR."""
    _check_table(table_name)
    removed = node.mem.contacts.remove(normalize_aor(aor).encode(), contact.encode(),
                                       node.rings["contacts"], node.me, node.slot)
    if removed == 0:
        raise MIError(404, "Contact not found")
    if removed < 0:
        raise MIError(500, f"Failed to delete contact (error {removed})")
    return "OK"


@command("ul_digest", heavy=True)
def mi_ul_digest(node: Any) -> dict[str, Any]:
    """{"contacts": N, "digest": HEX}: equal on nodes holding the same live contacts."""
    n, digest = node.mem.contacts.digest(live_only=True)
    return {"contacts": n, "digest": digest}


def _check_table(name: str) -> None:
    if name != DOMAIN:
        raise MIError(404, "Table not found")
