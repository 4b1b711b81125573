"""One text-table and number-formatting helper for the console and the report."""

from __future__ import annotations

import math

import pytest

from thaw.textfmt import as_number, count, duration, fixed, pct, sig, table


def test_numbers_and_missing_values() -> None:
    assert fixed(0.91234) == "0.912" and fixed(0.91234, 4) == "0.9123"
    assert pct(0.9123) == "91.2%" and pct(1, 2) == "100.00%"
    assert sig(3.1234e-4) == "0.000312" and count(1234567) == "1,234,567"
    for missing in (None, math.nan, math.inf, "0.5", True):
        assert as_number(missing) is None
        assert fixed(missing) == pct(missing) == sig(missing) == count(missing) == duration(missing) == "n/a"
    assert fixed(None, missing="\u2014") == "\u2014"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0.0 s"), (59.94, "59.9 s"), (61, "1 min 01 s"), (3599.6, "1 h 00 min"), (3725, "1 h 02 min")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_table_aligns_names_left_and_numbers_right() -> None:
    text = table(["model", "acc", "note"], [["resnet18", "0.912", "ok"], ["vit", "n/a"]], align="lrl", indent="  ")
    assert text.splitlines() == [
        "  model       acc  note",
        "  --------  -----  ----",
        "  resnet18  0.912  ok",
        "  vit         n/a",
    ]
    assert table(["a", "b"], []).splitlines() == ["a  b", "-  -"]
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        table(["a", "b"], [], align="l")
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        table(["a", "b"], [[1, 2, 3]])
