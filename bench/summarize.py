"""Mean ± std per (task, method) of ``bench.baselines`` result lines, as a Markdown table.

``python -m bench.summarize bench/out/final_fashion10.jsonl bench/out/final_fashion100.jsonl``

Standard deviations are over seeds (sample std, ddof=1); a method with one seed shows its single value and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def load(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every result line of the given JSONL files (the last line wins for a repeated (task, method, seed))."""
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(r["task"], r["method"], int(r["seed"]))] = r
    return list(rows.values())


def _pm(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 run)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per (task, method), best mean test accuracy first within a task."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["method"])].append(r)

    def mean_acc(key: tuple[str, str]) -> float:
        return statistics.mean(r["test_acc_best_val"] for r in groups[key])

    lines = [
        "| task | method | seeds | test acc (selected weights) | per seed | test acc (last epoch) | epochs | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda k: (k[0], -mean_acc(k))):
        rs = sorted(groups[key], key=lambda r: r["seed"])
        acc = [float(r["test_acc_best_val"]) for r in rs]
        last = [float(r["test_acc_last"]) for r in rs if r.get("test_acc_last") is not None]
        epochs = [float(r["epochs"]) for r in rs if r.get("epochs") is not None]
        wall = [float(r["wall_seconds"]) for r in rs]
        cells = [
            key[0],
            key[1],
            ",".join(str(r["seed"]) for r in rs),
            _pm(acc),
            ", ".join(f"{a:.4f}" for a in acc),
            _pm(last),
            _pm(epochs, 0),
            _pm(wall, 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarise bench.baselines JSONL results as a Markdown table.")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(table(load(args.files)))


if __name__ == "__main__":
    main()
