"""User location as operators see it: contact records and the ul_* MI commands (shapes
and positional parameters follow OpenSIPS 3.x usrloc). AOR keys come from
core.sip.aor_key, the one canonical form.

Neighbours: shm.tables / shm.contacts (storage and kernels), services.registrar (writes
contacts from REGISTER), services.mi (registry).
"""
from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from fastcluster.core.sip import SipParseError, aor_key
from fastcluster.core.stats import INDEX
from fastcluster.services.mi.registry import MIError, MINode, Streamed, command
from fastcluster.shm import contacts as C
from fastcluster.shm.contacts import FLAG_NAT, Q_NONE
from fastcluster.shm.tables import TABLE_INDEX, retry_busy

DOMAIN = "location"  # OpenSIPS's usrloc table name, kept for tools that expect it
FLAG_NAMES = ((FLAG_NAT, "NAT"),)


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


def _aor(text: str) -> str:
    """The AOR key of an MI argument (core.sip.aor_key); a bad one is an MI error."""
    try:
        return aor_key(str(text))
    except SipParseError as exc:
        raise MIError(400, f"Bad AOR: {exc.reason}") from None


def _contact_uri(text: str) -> str:
    """A contact URI in the form the registrar stores it (contact_parts)."""
    from fastcluster.services.sip.registrar import contact_parts

    uri = str(text).strip()
    if uri[:1] == "<" and uri[-1:] == ">":
        uri = uri[1:-1]
    try:
        return contact_parts(uri)[0]
    except SipParseError as exc:
        raise MIError(400, f"Bad contact: {exc.reason}") from None


# OpenSIPS 3.x tools send these positionally, the table name first.
@command("ul_show_contact", positional=("table_name", "aor"))
def mi_ul_show_contact(node: Any, aor: str, table_name: str = DOMAIN) -> dict[str, Any]:
    """The contacts of one AOR."""
    _check_table(table_name)
    canonical = _aor(aor)
    recs = node.mem.contacts.group(canonical.encode())
    if not recs:
        raise MIError(404, "AOR not found")
    now = time.time()
    sockets = _sockets(node)
    return {"AOR": canonical, "Contacts": [contact_view(r, now, sockets) for r in recs]}


@command("ul_rm", positional=("table_name", "aor"))
def mi_ul_rm(node: Any, aor: str, table_name: str = DOMAIN) -> str:
    """Remove every contact of an AOR (replicated as tombstones)."""
    _check_table(table_name)
    removed = node.mem.contacts.remove(_aor(aor).encode(), b"", node.rings["contacts"], node.me,
                                       node.slot)
    if removed == 0:
        raise MIError(404, "AOR not found")
    if removed < 0:
        raise MIError(500, f"Failed to delete AOR (error {removed})")
    return "OK"


@command("ul_rm_contact", positional=("table_name", "aor", "contact"))
def mi_ul_rm_contact(node: Any, aor: str, contact: str, table_name: str = DOMAIN) -> str:
    """Remove one contact (its URI, compared as the registrar stores it) of an AOR."""
    _check_table(table_name)
    removed = node.mem.contacts.remove(_aor(aor).encode(), _contact_uri(contact).encode(),
                                       node.rings["contacts"], node.me, node.slot)
    if removed == 0:
        raise MIError(404, "Contact not found")
    if removed < 0:
        raise MIError(500, f"Failed to delete contact (error {removed})")
    return "OK"


@command("ul_add", positional=("table_name", "aor", "contact", "expires", "q", "flags",
                               "cflags", "methods"))
def mi_ul_add(node: Any, aor: str, contact: str, expires: int | str,
              table_name: str = DOMAIN, q: float | str | None = None,
              flags: int | str = 0, cflags: str = "", methods: int | str = 0) -> str:
    """Add or replace a contact of an AOR for `expires` seconds (replicated like one a
    REGISTER made). q: 0..1; flags: FLAG bits; cflags: flag names (NAT); methods: the
    OpenSIPS method bitmask or names (INVITE,MESSAGE)."""
    from fastcluster.services.sip.registrar import KERNEL_ERRORS, methods_mask

    _check_table(table_name)
    key = _aor(aor).encode()
    uri = _contact_uri(contact).encode()
    try:
        seconds = int(expires)
        q_pm = -1 if q in (None, "") else round(float(q) * 1000)
        bits = int(flags)
        mask = int(methods) if str(methods).strip().lstrip("-").isdigit() else \
            methods_mask(str(methods))
    except (TypeError, ValueError):
        raise MIError(400, "Bad parameter: expires, flags and methods are integers, q a "
                           "number") from None
    if not 0 < seconds <= 0xFFFFFFFF or not -1 <= q_pm <= 1000:
        raise MIError(400, "expires must be > 0 and q within 0..1")
    names = {name.lower(): bit for bit, name in FLAG_NAMES}
    for name in str(cflags).replace(",", " ").split():
        if name.lower() not in names:
            raise MIError(400, f"Unknown cflag {name!r} (known: "
                               f"{', '.join(n for _, n in FLAG_NAMES)})")
        bits |= names[name.lower()]
    work = np.zeros(C.WORK_BYTES, dtype=np.uint8)
    req = work[C.WORK_REQ:C.WORK_OUT]
    now = time.time()
    callid = f"mi-ul_add-{node.cfg['clusterer.node_id']}-{int(now * 1e6):x}".encode()
    n = C.pack_register(req, memoryview(req), key, callid, 1, b"", b"", int(now),
                        int(now * 1000), 0, False, 0, 0, bytes(16), 0, 0, mask,
                        [(uri, b"", seconds, q_pm, 0, -1, bits)])
    if n < 0:
        raise MIError(500, "Contact too long for usrloc.record_bytes")
    status = retry_busy(lambda: C.ul_register(node.mem.contacts.buf, node.rings["contacts"],
                                              work, node.me, node.slot))
    if status != C.REG_OK:
        code, reason, _ = KERNEL_ERRORS.get(status, (500, f"error {status}", -1))
        raise MIError(code, reason)
    return "OK"


@command("ul_flush", heavy=True)
def mi_ul_flush(node: Any) -> str:
    """Run the expiry pass over the whole contact table now (what OpenSIPS's ul_flush
    does without a database: there is no write-back cache to flush)."""
    _, (expired, purged, _) = node.mem.contacts.expire(
        int(time.time()), node.cfg["usrloc.tombstone_ttl_s"],
        node.cfg["clusterer.tombstone_max_s"],
        node.mem.control.horizons[TABLE_INDEX["contacts"]], node.me)
    node.stats[INDEX["usrloc:expired_contacts"]] += expired
    node.stats[INDEX["usrloc:purged_tombstones"]] += purged
    return "OK"


@command("ul_digest", heavy=True)
def mi_ul_digest(node: Any) -> dict[str, Any]:
    """{"contacts": N, "digest": HEX}: equal on nodes holding the same live contacts."""
    n, digest = node.mem.contacts.digest(live_only=True)
    return {"contacts": n, "digest": digest}


def _check_table(name: str) -> None:
    if name != DOMAIN:
        raise MIError(404, "Table not found")
