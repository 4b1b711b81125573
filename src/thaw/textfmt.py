"""Plain-text tables and number formatting for the console and the report (one look everywhere).

A value that is not a finite number (None, NaN, a missing key read as None) prints as ``missing`` ("n/a" in the
console; the HTML report passes an em dash) instead of raising or printing "nan".

Example:
    >>> print(table(["model", "acc"], [["resnet18", fixed(0.91234)], ["vit", fixed(None)]]))
    model       acc
    --------  -----
    resnet18  0.912
    vit         n/a
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["as_number", "count", "duration", "fixed", "pct", "sig", "table"]

MISSING = "n/a"


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (bool excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def fixed(value: Any, digits: int = 3, *, missing: str = MISSING) -> str:
    """``0.912`` for ``fixed(0.91234)``: a fixed number of decimals."""
    v = as_number(value)
    return missing if v is None else f"{v:.{digits}f}"


def sig(value: Any, digits: int = 3, *, missing: str = MISSING) -> str:
    """``0.000312`` for ``sig(3.1234e-4)``: significant digits (learning rates, small quantities)."""
    v = as_number(value)
    return missing if v is None else f"{v:.{digits}g}"


def pct(value: Any, digits: int = 1, *, missing: str = MISSING) -> str:
    """``91.2%`` for ``pct(0.9123)``: a fraction shown as a percentage."""
    v = as_number(value)
    return missing if v is None else f"{100 * v:.{digits}f}%"


def count(value: Any, *, missing: str = MISSING) -> str:
    """``1,234,567``: an integer count with thousands separators."""
    v = as_number(value)
    return missing if v is None else f"{round(v):,}"


def duration(seconds: Any, *, missing: str = MISSING) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``1 h 02 min``: a wall-clock duration for people."""
    v = as_number(seconds)
    if v is None:
        return missing
    if v < 60:
        return f"{v:.1f} s"
    minutes, secs = divmod(int(round(v)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    align: str | None = None,
    indent: str = "",
    gap: int = 2,
) -> str:
    """An aligned plain-text table: a header, a rule of dashes, one line per row.

    Args:
        headers: Column titles.
        rows: Cells (converted with ``str``); a short row is padded with empty cells.
        align: One character per column, ``l`` (left) or ``r`` (right); default: the first column left, the rest
            right (a name, then numbers).
        indent: Text put before every line.
        gap: Spaces between columns.

    Returns:
        The lines joined with newlines, trailing spaces stripped.

    Raises:
        ValueError: ``align`` does not have one ``l``/``r`` per column, or a row has more cells than headers.
    """
    n = len(headers)
    align = align if align is not None else "l" + "r" * (n - 1)
    if len(align) != n or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} needs one 'l' or 'r' per column ({n} columns)")
    body: list[list[str]] = []
    for row in rows:
        if len(row) > n:
            raise ValueError(f"a row has {len(row)} cells for {n} columns: {list(row)!r}")
        body.append([str(c) for c in row] + [""] * (n - len(row)))
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    sep = " " * gap

    def line(cells: Sequence[str]) -> str:
        text = sep.join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=True))
        return (indent + text).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in body)])
