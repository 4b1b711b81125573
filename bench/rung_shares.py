"""Where auto's race rungs reached their lowest validation loss, per task, from suite result rows (issue 11).

For every raced ``thaw_auto*`` row (``--refit`` rows excluded): the share of its epochs at which the earlier of the
two rungs (10 or more epochs) had its lowest validation loss, and whether the run then repeated the winner's rung or
continued it, with its test accuracy. This is what ``auto.EARLY_MIN_SHARE`` and ``fitted_early`` decide on
(docs/benchmarks.md, "Tiny data").

    python -m bench.rung_shares bench/results/2026-12-03/*.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def rows(paths: list[str]) -> list[tuple[str, float, str, float]]:
    """(task, earlier rung's share, "repeat" or "continue", test accuracy) per raced auto row, duplicates once."""
    out, seen = [], set()
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            if not r["method"].startswith("thaw_auto") or "refit" in r["method"] or r.get("status") != "ok":
                continue
            phases = r["summary"]["phases"]
            shares = [
                p["min_val_loss_epoch"] / p["epochs"]
                for p in phases
                if p["name"].startswith("race-") and p.get("min_val_loss_epoch") and p["epochs"] >= 10
            ]
            key = (r["task"], r["method"], r["seed"], r["run_command"], r["test_acc_best_val"])
            if not shares or key in seen:
                continue
            seen.add(key)
            path_taken = "repeat" if any("-repeat" in p["name"] for p in phases) else "continue"
            out.append((r["task"], min(shares), path_taken, r["test_acc_best_val"]))
    return out


def main() -> None:
    by_task: dict[str, list[tuple[str, float, str, float]]] = defaultdict(list)
    for row in rows(sys.argv[1:]):
        by_task[row[0]].append(row)
    for task, runs in sorted(by_task.items()):
        shares = sorted(s for _, s, _, _ in runs)
        print(f"{task}: {len(runs)} raced runs, earlier rung's lowest loss at {shares[0]:.2f}-{shares[-1]:.2f}")
        print("  shares: " + " ".join(f"{s:.2f}" for s in shares))
        for taken in ("repeat", "continue"):
            acc = [a for _, _, t, a in runs if t == taken]
            if len(acc) > 1:
                print(f"  {taken}: {len(acc)} runs, test {statistics.mean(acc):.3f} ± {statistics.stdev(acc):.3f}")


if __name__ == "__main__":
    main()
