"""Markdown summary of benchmark result lines (bench/suite.py, and bench/baselines.py's older lines).

``python -m bench.summarize bench/out/suite.jsonl [more.jsonl ...] [--out summary.md]``

Per task and method: test accuracy mean ± std over seeds (sample std, ddof=1; a single run says so), the
per-seed values, the last-epoch test accuracy where a method reports one, epochs, optimizer steps, wall seconds,
the share of the budget used and training images/second. Each task gets an **oracle** row: the fixed thaw strategy
(``bench.suite.FIXED_METHODS``) with the best mean test accuracy, chosen in hindsight on test. Then, for ``auto``
rows, what each run explored and the share of its wall time that exploration took, read from the run's
``summary.json`` as far as it says it; then the acceptance check of issue 11 (auto ≥ oracle − one standard error
of the oracle's mean, auto ≥ the tutorial loop; auto's budget share within [0.90, 1.05]); then, where the
backbone rows ran, issue 13's check (auto choosing among the backbones ≥ the best single backbone − one standard
error; how often the choice matched the best backbone of that seed, and the accuracy given up). Skipped and failed
runs are listed at the end, never averaged.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.suite import BACKBONE_METHODS, BACKBONE_ROWS, CHOOSER

#: Fixed thaw strategies (the oracle's candidates): the suite's, and the older baselines.py names.
FIXED = ("thaw_linear", "thaw_last-k1", "thaw_last-k2", "thaw_lp-ft", "thaw_full", "thaw_last-k", "thaw_gradual")
AUTO = ("thaw_auto", "thaw_auto_refit", *(m for m in BACKBONE_METHODS if m != "thaw_auto"))
#: Issue 13: auto on one backbone per row (thaw_auto: the default Lite0), and auto choosing among them.
SINGLE_BACKBONE = BACKBONE_ROWS
Row = dict[str, Any]


def load(paths: Iterable[Path]) -> list[Row]:
    """Every result line of the given JSONL files (the last line wins for a repeated (task, method, seed))."""
    rows: dict[tuple[str, str, int], Row] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(r["task"], r["method"], int(r["seed"]))] = r
    return list(rows.values())


def ok(row: Row) -> bool:
    """A finished run with a test accuracy (older lines have no status: they only recorded finished runs)."""
    return row.get("status", "ok") == "ok" and isinstance(row.get("test_acc_best_val"), int | float)


def _nums(rows: Sequence[Row], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]


def _pm(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 run)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _budget_share(r: Row) -> float | None:
    share = r.get("budget_share")
    if isinstance(share, int | float):
        return float(share)
    budget = r.get("budget_seconds")
    wall = r.get("wall_seconds")
    return float(wall) / float(budget) if isinstance(wall, int | float) and budget else None


def groups(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    """Finished runs by (task, method), each list sorted by seed."""
    out: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        if ok(r):
            out[(r["task"], r["method"])].append(r)
    return {k: sorted(v, key=lambda r: int(r["seed"])) for k, v in out.items()}


def oracle(grouped: dict[tuple[str, str], list[Row]], task: str) -> tuple[str, list[Row]] | None:
    """The fixed strategy with the best mean test accuracy on ``task`` (in hindsight), and its runs."""
    candidates = [(m, rs) for (t, m), rs in grouped.items() if t == task and m in FIXED]
    if not candidates:
        return None
    return max(candidates, key=lambda c: statistics.mean(_nums(c[1], "test_acc_best_val")))


def _row_cells(task: str, method: str, rs: Sequence[Row]) -> list[str]:
    acc = _nums(rs, "test_acc_best_val")
    shares = [s for s in (_budget_share(r) for r in rs) if s is not None]
    return [
        task,
        method,
        ",".join(str(r["seed"]) for r in rs),
        _pm(acc),
        ", ".join(f"{a:.4f}" for a in acc),
        _pm(_nums(rs, "test_acc_last")),
        _pm(_nums(rs, "epochs"), 0),
        _pm(_nums(rs, "steps"), 0),
        _pm(_nums(rs, "wall_seconds"), 0),
        _pm(shares, 2),
        _pm(_nums(rs, "train_images_per_second"), 0),
    ]


def table(rows: Sequence[Row]) -> str:
    """One Markdown row per (task, method), best mean test accuracy first within a task, plus the oracle row."""
    grouped = groups(rows)
    lines = [
        "| task | method | seeds | test acc (selected weights) | per seed | test acc (last epoch) | epochs | steps "
        "| wall s | budget share | train img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in sorted({t for t, _ in grouped}):
        entries = [(m, rs) for (t, m), rs in grouped.items() if t == task]
        best = oracle(grouped, task)
        if best is not None:
            entries.append((f"oracle ({best[0]})", best[1]))

        def mean_acc(entry: tuple[str, list[Row]]) -> float:
            return statistics.mean(_nums(entry[1], "test_acc_best_val"))

        for method, rs in sorted(entries, key=lambda e: (-mean_acc(e), e[0])):
            cells = _row_cells(task, method, rs)
            if method.startswith("oracle"):
                cells[1] = f"**{method}**"
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- auto
def exploration(summary: dict[str, Any]) -> tuple[str, float | None, str]:
    """(what was explored, exploration seconds or None, how that was measured) from a summary.json.

    Tolerant of the format changing: an explicit ``exploration_seconds`` (at the top, in a ``budget`` dict, or in
    the signals of a decision: auto's ``stop``) wins; otherwise the phases other than the selected one
    (``best_phase``) and other than refits on train+val count as exploration (wrong when the result is a weight
    soup of several phases, which is why auto records its own figure).
    """
    phases = [p for p in summary.get("phases") or [] if isinstance(p, dict)]
    parts = []
    for p in phases:
        sec = p.get("seconds")
        val = p.get("best_val_accuracy")
        parts.append(
            f"{p.get('name', '?')}"
            + (
                f"[{','.join(p['trainable_groups'])}]"
                if p.get("trainable_groups") and len(p["trainable_groups"]) < 4
                else ""
            )
            + f" {p.get('epochs', '?')}ep"
            + (f" {sec:.0f}s" if isinstance(sec, int | float) else "")
            + (f" val {val:.3f}" if isinstance(val, int | float) else "")
        )
    for a in summary.get("averages") or []:
        if isinstance(a, dict):
            parts.append(f"soup({a.get('kind', a.get('name', 'average'))})")
    explored = "; ".join(parts) or "—"
    for source in (summary, summary.get("budget") if isinstance(summary.get("budget"), dict) else {}):
        value = source.get("exploration_seconds")
        if isinstance(value, int | float):
            return explored, float(value), "summary.json exploration_seconds"
    for d in summary.get("decisions") or []:
        signals = d.get("signals") if isinstance(d, dict) else None
        if isinstance(signals, dict) and isinstance(signals.get("exploration_seconds"), int | float):
            return explored, float(signals["exploration_seconds"]), "the strategy's decisions (exploration_seconds)"
    best = summary.get("best_phase")
    if not phases or not isinstance(best, int):
        return explored, None, "not recorded"
    seconds = [
        float(p["seconds"])
        for p in phases
        if isinstance(p.get("seconds"), int | float) and p.get("index") != best and p.get("data") != "train+val"
    ]
    return explored, sum(seconds), "phases other than the selected one and refits"


def auto_table(rows: Sequence[Row]) -> str:
    """Per auto run: budget share, what it explored and the share of its wall time exploration took."""
    lines = [
        "| task | method | seed | test acc | budget share | exploration share | explored (phase epochs seconds val) "
        "| decisions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["task"], r["method"], int(r["seed"]))):
        if r["method"] not in AUTO or not ok(r):
            continue
        summary = r.get("summary") or {}
        explored, seconds, _ = exploration(summary)
        wall = r.get("wall_seconds")
        share = f"{seconds / wall:.2f}" if seconds is not None and isinstance(wall, int | float) and wall else "—"
        decisions = summary.get("decisions") or []
        said = "; ".join(str(d.get("decision", d))[:60] for d in decisions[:6] if isinstance(d, dict))
        budget_share = _budget_share(r)
        lines.append(
            f"| {r['task']} | {r['method']} | {r['seed']} | {r['test_acc_best_val']:.4f} | "
            f"{'—' if budget_share is None else f'{budget_share:.2f}'} | {share} | {explored} | "
            f"{len(decisions)}: {said} |"
        )
    return "\n".join(lines)


def acceptance(rows: Sequence[Row]) -> str:
    """Issue 11's bar per task: auto ≥ oracle − SE(oracle mean), auto ≥ tutorial; auto's budget share."""
    grouped = groups(rows)
    lines = [
        "| task | auto mean | oracle − 1 SE | auto ≥ oracle − SE | tutorial mean | auto ≥ tutorial "
        "| auto budget share min–max | within [0.90, 1.05] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in sorted({t for t, _ in grouped}):
        auto = grouped.get((task, "thaw_auto"))
        if not auto:
            continue
        a = statistics.mean(_nums(auto, "test_acc_best_val"))
        best = oracle(grouped, task)
        bar = "—"
        verdict = "—"
        if best is not None:
            acc = _nums(best[1], "test_acc_best_val")
            se = statistics.stdev(acc) / math.sqrt(len(acc)) if len(acc) > 1 else 0.0
            bar = f"{statistics.mean(acc) - se:.3f} ({best[0]})"
            verdict = "yes" if a >= statistics.mean(acc) - se else "**no**"
        tut = grouped.get((task, "tutorial"))
        t_mean = statistics.mean(_nums(tut, "test_acc_best_val")) if tut else None
        shares = [s for s in (_budget_share(r) for r in auto) if s is not None]
        lines.append(
            f"| {task} | {a:.3f} | {bar} | {verdict} | {'—' if t_mean is None else f'{t_mean:.3f}'} | "
            f"{'—' if t_mean is None else ('yes' if a >= t_mean else '**no**')} | "
            + (f"{min(shares):.2f}–{max(shares):.2f}" if shares else "—")
            + f" | {'—' if not shares else ('yes' if min(shares) >= 0.9 and max(shares) <= 1.05 else '**no**')} |"
        )
    return "\n".join(lines)


def backbones(rows: Sequence[Row]) -> str:
    """Issue 13's bar per task: auto choosing among the backbones (``thaw_auto_models``) against auto on each one.

    The best backbone in hindsight is the single-backbone row with the best mean test accuracy; the chooser passes
    when its mean is at least that mean minus one standard error of it. Per seed, the chosen backbone (summary.json
    ``model``) matches when it is the single-backbone row that scored best on that seed; "given up" is the mean over
    seeds of that seed's best single-backbone accuracy minus the chooser's (negative: the chooser scored higher).
    """
    grouped = groups(rows)
    names = list(SINGLE_BACKBONE)
    lines = [
        "| task | " + " | ".join(f"auto, {SINGLE_BACKBONE[m]}" for m in names) + " | auto choosing (--models) "
        "| best − 1 SE | within | chosen per seed | matched best of that seed | given up |",
        "|---|" + "---|" * len(names) + "---|---|---|---|---|---|",
    ]
    for task in sorted({t for t, _ in grouped}):
        chooser = grouped.get((task, CHOOSER))
        singles = {m: grouped[(task, m)] for m in names if (task, m) in grouped}
        if not chooser or not singles:
            continue
        means = {m: statistics.mean(_nums(rs, "test_acc_best_val")) for m, rs in singles.items()}
        best = max(means, key=lambda m: means[m])
        acc = _nums(singles[best], "test_acc_best_val")
        bar = means[best] - (statistics.stdev(acc) / math.sqrt(len(acc)) if len(acc) > 1 else 0.0)
        c_mean = statistics.mean(_nums(chooser, "test_acc_best_val"))
        chosen, matched, given = [], 0, []
        for r in chooser:
            seed = int(r["seed"])
            model = str((r.get("summary") or {}).get("model", "?"))
            chosen.append(f"{seed}: {model.removeprefix('efficientnet_')}")
            by_seed = {m: x for m, rs in singles.items() for x in rs if int(x["seed"]) == seed}
            if len(by_seed) == len(names):
                top = max(by_seed, key=lambda m: float(by_seed[m]["test_acc_best_val"]))
                matched += SINGLE_BACKBONE[top] == model
                given.append(float(by_seed[top]["test_acc_best_val"]) - float(r["test_acc_best_val"]))
        cells = [_pm(_nums(singles[m], "test_acc_best_val")) if m in singles else "—" for m in names]
        lines.append(
            f"| {task} | " + " | ".join(cells) + f" | {_pm(_nums(chooser, 'test_acc_best_val'))} | "
            f"{bar:.3f} ({SINGLE_BACKBONE[best]}) | {'yes' if c_mean >= bar else '**no**'} | {', '.join(chosen)} | "
            f"{matched}/{len(given)} | " + (f"{statistics.mean(given):+.3f}" if given else "—") + " |"
        )
    return "\n".join(lines)


def not_run(rows: Sequence[Row]) -> str:
    """Skipped and failed runs, and finished runs that trained nothing (0 epochs), one line each."""
    out = []
    for r in sorted(rows, key=lambda r: (r["task"], r["method"], int(r["seed"]))):
        if not ok(r):
            note = str(r.get("notes", "")).strip().splitlines()
            out.append(
                f"- {r['task']} {r['method']} seed {r['seed']}: {r.get('status', '?')}: {note[-1] if note else ''}"
            )
        elif r.get("epochs") == 0:
            out.append(
                f"- {r['task']} {r['method']} seed {r['seed']}: trained 0 epochs (test accuracy "
                f"{r['test_acc_best_val']:.4f} is the untrained head's; averaged above as a user would get it)"
            )
    return "\n".join(out)


def machines(rows: Sequence[Row]) -> str:
    """The distinct machines and commands the lines came from."""
    seen = []
    for r in rows:
        m = r.get("machine")
        if m and m not in seen:
            seen.append(m)
    commands = sorted({str(r.get("command")) for r in rows if r.get("command")})
    out = [
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')} "
        f"({m.get('torch_threads')} threads), Python {m.get('python')}"
        for m in seen
    ]
    out += [f"- command: `{c}`" for c in commands]
    return "\n".join(out)


def report(rows: Sequence[Row]) -> str:
    """The whole Markdown summary."""
    parts = [
        "Test accuracy: mean ± sample std over seeds (ddof=1); single runs are marked. The oracle row is the fixed "
        "thaw strategy with the best mean on that task, chosen in hindsight on test. Budget share = wall seconds / "
        "budget (thaw: its own clock from the start of `fit`, evaluation/export/report included; baselines: loading, "
        "decoding, training and validation, the final test pass excluded).",
        "",
        table(rows),
    ]
    auto = auto_table(rows)
    if auto.count("\n") > 1:
        parts += ["", "### What auto explored", "", auto]
    acc = acceptance(rows)
    if acc.count("\n") > 1:
        parts += ["", "### Acceptance (issue 11)", "", acc]
    chooser = backbones(rows)
    if chooser.count("\n") > 1:
        parts += ["", "### Backbone choice (issue 13)", "", chooser]
    missing = not_run(rows)
    if missing:
        parts += ["", "### Not run, failed, or nothing trained", "", missing]
    where = machines(rows)
    if where:
        parts += ["", where]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="Summarise benchmark JSONL results as Markdown.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    text = report(load(args.files))
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
