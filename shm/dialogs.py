"""The dialog table: row layout and a Python writer.

Dialogs use the generic engine (shm.table) as they are: key = hash of (Call-ID,
from-tag), group = hash of the Call-ID, so all dialogs of a Call-ID share a probe run.
The proxy that creates dialogs comes later; until then `pack_dialog` + `table_put` is
how tests and the MI write them. Neighbours: shm.table, services.dialog.

Dialog row (fixed part; the blob follows):

    offset  size  field
    0       8     key: record identity hash (>= 2)
    8       8     group: group hash: picks the home slot
    16      8     version: hybrid logical clock: ms << 16 | counter
    24      4     expires: absolute unix seconds (TOMB: deletion time)
    28      1     state: 1 LIVE, 2 TOMB
    29      1     aux: table-specific byte
    30      2     origin: node id that made this version
    32      4     start: unix seconds the dialog was created
    36      4     caller_cseq: last CSeq from the caller
    40      4     callee_cseq: last CSeq from the callee
    44      4     flags: dialog flags
    48      24    lens: u16 lengths of: callid, from_tag, to_tag, from_uri, to_uri, caller_contact, callee_contact, caller_route, callee_route, caller_sock, callee_sock, profiles
    72      ...   string blob (usrloc/dialog record_bytes)
"""
from __future__ import annotations

import numpy as np

from fastcluster.shm.hashing import SEED_GROUP, group_hash_of, key_hash_of
from fastcluster.shm.rows import RowLayout
from fastcluster.shm.table import ST_LIVE, ST_TOMB

KIND_DIALOGS = 2

DIALOG = RowLayout(
    name="dialog",
    kind=KIND_DIALOGS,
    fields=(
        ("start", "<u4", "unix seconds the dialog was created"),
        ("caller_cseq", "<u4", "last CSeq from the caller"),
        ("callee_cseq", "<u4", "last CSeq from the callee"),
        ("flags", "<u4", "dialog flags"),
    ),
    strings=("callid", "from_tag", "to_tag", "from_uri", "to_uri", "caller_contact",
             "callee_contact", "caller_route", "callee_route", "caller_sock",
             "callee_sock", "profiles"),
    aux_name="dlg_state",
)

# OpenSIPS dialog states
DLG_UNCONFIRMED, DLG_EARLY, DLG_CONFIRMED_NA, DLG_CONFIRMED, DLG_DELETED = 1, 2, 3, 4, 5


def dialog_ids(callid: bytes, from_tag: bytes) -> tuple[int, int]:
    """(key, group) of a dialog."""
    group = group_hash_of(callid)
    return key_hash_of(from_tag, group ^ int(SEED_GROUP)), group


def pack_dialog(row: np.ndarray, row_size: int, *, strings: dict[str, bytes],
                timeout: int, start: int, dlg_state: int, caller_cseq: int = 0,
                callee_cseq: int = 0, flags: int = 0, deleted: bool = False) -> None:
    """Fill row (uint8[row_size]) with a dialog ready for table_put. Raises ValueError
    when the strings do not fit (nothing is truncated)."""
    unknown = set(strings) - set(DIALOG.strings)
    if unknown:
        raise ValueError(f"unknown dialog strings: {sorted(unknown)}")
    values = [strings.get(name, b"") for name in DIALOG.strings]
    room = row_size - DIALOG.fixed_size
    if sum(map(len, values)) > room:
        raise ValueError(f"dialog strings need {sum(map(len, values))} bytes, "
                         f"dialog.record_bytes allows {room}")
    key, group = dialog_ids(values[0], values[1])
    row[:] = 0
    rec = row[:DIALOG.fixed_size].view(DIALOG.dtype)
    rec["key"], rec["group"] = key, group
    rec["expires"], rec["state"] = timeout, ST_TOMB if deleted else ST_LIVE
    rec["aux"], rec["start"], rec["flags"] = dlg_state, start, flags
    rec["caller_cseq"], rec["callee_cseq"] = caller_cseq, callee_cseq
    rec["lens"] = [len(v) for v in values]
    pos = DIALOG.fixed_size
    for v in values:
        row[pos:pos + len(v)] = np.frombuffer(v, np.uint8)
        pos += len(v)
