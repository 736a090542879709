"""Row layouts declared once: a list of fields becomes a numpy dtype, the byte offsets the
kernels use, the layout table in the docs, and the Python decoder.

A layout is the common table prefix (shm.table) followed by table-specific numeric
fields, the u16 lengths of its strings and the string blob. Fields are placed in the
order given, each naturally aligned. Neighbours: shm.contacts, shm.dialogs, shm.table.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

PREFIX_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("key", "<u8", "record identity hash (>= 2)"),
    ("group", "<u8", "group hash: picks the home slot"),
    ("version", "<i8", "hybrid logical clock: ms << 16 | counter"),
    ("expires", "<u4", "absolute unix seconds (TOMB: deletion time)"),
    ("state", "u1", "1 LIVE, 2 TOMB"),
    ("aux", "u1", "table-specific byte"),
    ("origin", "<u2", "node id that made this version"),
)


def _place(fields: tuple[tuple[str, str, str], ...], off: int = 0) -> tuple[dict[str, int], int]:
    """Offsets of fields placed in order, each naturally aligned; returns (offsets, end)."""
    offsets = {}
    for name, fmt, _ in fields:
        dt = np.dtype(fmt)
        size = dt.itemsize
        align = dt.alignment
        off = (off + align - 1) // align * align
        offsets[name] = off
        off += size
    return offsets, off


PREFIX_OFFSETS, PREFIX_SIZE = _place(PREFIX_FIELDS)
ROW_HEAD = 16  # per-node bytes before the body of every slot: seqlock word, local data


@dataclass(frozen=True)
class RowLayout:
    name: str
    kind: int
    fields: tuple[tuple[str, str, str], ...]  # table-specific: (name, dtype, doc)
    strings: tuple[str, ...]  # blob segments, in order; strings[0] is the group identity
    aux_name: str = "aux"
    # (u32 field, string): two rows of one record whose strings `string` are equal are
    # ordered by `field` before (version, origin) -- a contact binding's CSeq within its
    # Call-ID (RFC 3261 §10.3), which orders two nodes' writes of the same ms
    order: tuple[str, str] | None = None

    @cached_property
    def dtype(self) -> np.dtype:  # computed once: the hot paths read it per row
        fields = PREFIX_FIELDS + self.fields
        placed, off = _place(fields)
        names = [name for name, _, _ in fields]
        formats = [fmt for _, fmt, _ in fields]
        offsets = [placed[name] for name in names]
        off = (off + 1) // 2 * 2
        names.append("lens")
        formats.append(("<u2", (len(self.strings),)))
        offsets.append(off)
        off += 2 * len(self.strings)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": (off + 7) // 8 * 8})

    @cached_property
    def fixed_size(self) -> int:
        return self.dtype.itemsize

    def offset(self, name: str) -> int:
        return self.dtype.fields[name][1]

    @property
    def lens_off(self) -> int:
        return self.offset("lens")

    @property
    def order_at(self) -> tuple[int, int]:
        """(offset of the order field, index of its scope string); (0, 0): none."""
        if self.order is None:
            return 0, 0
        return self.offset(self.order[0]), self.strings.index(self.order[1])

    def row_size(self, record_bytes: int) -> int:
        """Bytes per slot: the head and the body (fixed part + string blob)."""
        return ROW_HEAD + self.fixed_size + (record_bytes + 7) // 8 * 8

    def layout_table(self) -> str:
        """Byte table of the fixed part, as written in the module docstrings."""
        lines = ["    offset  size  field"]
        dt = self.dtype
        for name in dt.names:
            fdt, off = dt.fields[name][:2]
            doc = dict((n, d) for n, _, d in PREFIX_FIELDS + self.fields).get(name)
            if name == "lens":
                doc = "u16 lengths of: " + ", ".join(self.strings)
            lines.append(f"    {off:<6}  {fdt.itemsize:<4}  {name}: {doc}")
        lines.append(f"    {self.fixed_size:<6}  ...   string blob (usrloc/dialog record_bytes)")
        return "\n".join(lines)

    def decode(self, buf: np.ndarray, n: int, row_size: int) -> list[dict]:
        """Rows buf[i*row_size ...] -> dicts of fields plus decoded strings."""
        out = []
        fixed = self.fixed_size
        for i in range(n):
            base = i * row_size
            rec = buf[base:base + fixed].view(self.dtype)[0]
            item = {name: rec[name].item() for name in self.dtype.names if name != "lens"}
            item[self.aux_name] = item.pop("aux")
            off = base + fixed
            for sname, length in zip(self.strings, rec["lens"].tolist()):
                item[sname] = bytes(buf[off:off + length]).decode("utf-8", "replace")
                off += length
            out.append(item)
        return out

