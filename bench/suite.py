"""The benchmark suite: tasks x seeds x methods, one run at a time, one JSON line per run.

Full suite (the protocol, ../shared/BENCHMARKS.md; ~9 hours of exclusive CPU on 2 cores)::

    python -m bench.suite --tasks all --seeds 0,1,2 --methods all --budget 180 --out bench/out/suite.jsonl
    python -m bench.summarize bench/out/suite.jsonl

Every run is its own subprocess, started after the previous one ended, so that no run inherits another's imports,
threads or memory (fastai patches torch's tensor class on import):

* ``thaw_*`` rows run the CLI as a user types it: ``thaw fit TRAIN --val VAL --test TEST --strategy S
  --time-budget 180s --img-size PX --seed N --out DIR``. Fixed strategies add ``--epochs 1000`` (and ``--k``), so that
  the time budget, not the default ``--epochs 10``, ends them: the protocol gives fixed strategies "enough epochs
  to use the budget", and thaw shortens its cosine to what the budget fits. ``auto`` rows get nothing more.
  Accuracy, epochs, steps and wall seconds come from the run's ``summary.json`` (thaw's own clock, which starts
  with ``fit``: loading, decoding, evaluation, export and report included).
* ``tutorial``, ``fastai_fine_tune``, ``linear_probe``, ``scratch`` (and ``plain_finetune``, the older loop kept
  for documented figures) run the recipes of bench/baselines.py in ``python -m bench.suite one ...``.
* The ``oracle`` is not run: bench/summarize.py picks, per task, the fixed strategy with the best mean.

A method the installed thaw does not accept (``thaw_auto_refit`` before ``--refit`` exists) is not run: its line
says ``"status": "skipped"`` and why. A run that fails is recorded with ``"status": "failed"`` and its stderr tail.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Method:
    """One row of the suite.

    Attributes:
        name: The ``method`` field of its result lines.
        thaw_args: For thaw rows, the CLI options after the data and before the common ones; None for baselines.
        fixed: A fixed thaw strategy (candidate for the oracle).
        needs_flag: A CLI flag this row needs; the row is skipped when ``thaw fit --help`` does not list it.
    """

    name: str
    thaw_args: tuple[str, ...] | None = None
    fixed: bool = False
    needs_flag: str | None = None


FIXED_EPOCHS = ("--epochs", "1000")
#: Issue 13: the row of auto on each built-in backbone (``thaw_auto`` is Lite0, the default model) ...
BACKBONE_ROWS = {
    "thaw_auto": "efficientnet_lite0",
    "thaw_auto_lite1": "efficientnet_lite1",
    "thaw_auto_lite2": "efficientnet_lite2",
}
BACKBONES = tuple(BACKBONE_ROWS.values())
#: ... and the row of auto choosing among them (``--models``) at the same budget.
CHOOSER = "thaw_auto_models"
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("thaw_auto", ("--strategy", "auto")),
        # auto with the batch size thaw used before it was chosen from the data (docs/benchmarks.md, "Batch size
        # from the data"); not in --methods all
        Method("thaw_auto_bs64", ("--strategy", "auto", "--batch-size", "64")),
        Method("thaw_auto_refit", ("--strategy", "auto", "--refit"), needs_flag="--refit"),
        # issue 13's backbone rows (thaw_auto is Lite0, the default model): auto on each other built-in backbone,
        # and auto choosing among the three at the same budget; not in --methods all, named by --methods backbones
        *(Method(m, ("--strategy", "auto", "--model", b)) for m, b in BACKBONE_ROWS.items() if m != "thaw_auto"),
        Method(CHOOSER, ("--strategy", "auto", "--models", ",".join(BACKBONES))),
        Method("thaw_linear", ("--strategy", "linear", *FIXED_EPOCHS), fixed=True),
        Method("thaw_last-k1", ("--strategy", "last-k", "--k", "1", *FIXED_EPOCHS), fixed=True),
        Method("thaw_last-k2", ("--strategy", "last-k", "--k", "2", *FIXED_EPOCHS), fixed=True),
        Method("thaw_lp-ft", ("--strategy", "lp-ft", *FIXED_EPOCHS), fixed=True),
        Method("thaw_full", ("--strategy", "full", *FIXED_EPOCHS), fixed=True),
        Method("tutorial"),
        Method("fastai_fine_tune"),
        Method("linear_probe"),
        Method("scratch"),
        Method("plain_finetune"),
    )
}
#: ``--methods backbones``: issue 13's rows (auto on each built-in backbone, and auto choosing among them).
BACKBONE_METHODS: tuple[str, ...] = (*BACKBONE_ROWS, CHOOSER)
_ONLY_WHEN_NAMED = ("plain_finetune", "thaw_auto_bs64", *(m for m in BACKBONE_METHODS if m != "thaw_auto"))
#: ``--methods all``: every row of the protocol (the older loop, thaw_auto_bs64 and the backbone rows only when
#: named).
ALL_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in _ONLY_WHEN_NAMED)
FIXED_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.fixed)
#: summary.json keys not copied into the result line (bulky and the same for every run).
_DROP_SUMMARY_KEYS = ("groups", "classes")


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[suite {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def thaw_command() -> list[str]:
    """``thaw`` as installed on PATH (what a user types), else ``python -m thaw``."""
    exe = shutil.which("thaw")
    return [exe] if exe else [sys.executable, "-m", "thaw"]


def thaw_fit_help() -> str:
    """The text of ``thaw fit --help`` (to see which options this thaw accepts)."""
    proc = subprocess.run([*thaw_command(), "fit", "--help"], capture_output=True, text=True, timeout=120)
    return proc.stdout + proc.stderr


def _budget_arg(budget: float) -> str:
    return f"{budget:g}s"


def thaw_argv(method: Method, task_dir: Path, budget: float, size: int, seed: int, out: Path) -> list[str]:
    """The ``thaw fit`` command line of one thaw row."""
    assert method.thaw_args is not None
    return [
        *thaw_command(),
        "fit",
        str(task_dir / "train"),
        "--val",
        str(task_dir / "val"),
        "--test",
        str(task_dir / "test"),
        *method.thaw_args,
        "--time-budget",
        _budget_arg(budget),
        "--img-size",
        str(size),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]


def baseline_argv(
    method: Method, task_dir: Path, budget: float, size: int, seed: int, flip: bool, result: Path
) -> list[str]:
    """The subprocess command line of one baseline row."""
    return [
        sys.executable,
        "-m",
        "bench.suite",
        "one",
        method.name,
        "--task-dir",
        str(task_dir),
        "--budget",
        f"{budget:g}",
        "--size",
        str(size),
        "--seed",
        str(seed),
        "--flip" if flip else "--no-flip",
        "--result",
        str(result),
    ]


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _compact_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json without the bulky constant parts; phases without their per-group signals."""
    out = {k: v for k, v in summary.items() if k not in _DROP_SUMMARY_KEYS}
    phases = []
    for p in summary.get("phases") or []:
        phases.append({k: v for k, v in p.items() if k not in ("signals", "lr_scales")} if isinstance(p, dict) else p)
    out["phases"] = phases
    return out


def _phase_line(summary: dict[str, Any]) -> str:
    parts = []
    for p in summary.get("phases") or []:
        if isinstance(p, dict):
            seconds = p.get("seconds")
            sec = f" {seconds:.0f}s" if isinstance(seconds, int | float) else ""
            parts.append(f"{p.get('name', '?')} {p.get('epochs', '?')}ep{sec} ({p.get('stopped', '')})")
    return "; ".join(parts)


def run_thaw(
    method: Method, task: str, task_dir: Path, budget: float, size: int, seed: int, runs_dir: Path, timeout: float
) -> dict[str, Any]:
    """Run one thaw row as a user would and read its summary.json."""
    out = runs_dir / task / f"seed{seed}" / method.name
    if out.exists():
        shutil.rmtree(out)  # a fresh folder, so the row needs no --overwrite
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = thaw_argv(method, task_dir, budget, size, seed, out)
    shown = ["thaw", *argv[1:]] if Path(argv[0]).name == "thaw" else argv  # as the user typed it
    row: dict[str, Any] = {"method": method.name, "task": task, "seed": seed, "run_command": shlex.join(shown)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        row.update(status="failed", notes=f"killed after {timeout:.0f}s; stderr: {_tail(str(e.stderr or ''))}")
        return row
    row["process_seconds"] = time.perf_counter() - t0
    if out.is_dir():  # what the user would have seen on the terminal
        (out / "suite_stdout.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    summary_path = out / "summary.json"
    if proc.returncode != 0 or not summary_path.is_file():
        row.update(status="failed", returncode=proc.returncode, notes=_tail(proc.stderr or proc.stdout))
        if summary_path.is_file():  # the run wrote its results but the CLI failed afterwards: keep both
            row["summary"] = _compact_summary(json.loads(summary_path.read_text(encoding="utf-8")))
        return row
    s = json.loads(summary_path.read_text(encoding="utf-8"))
    wall = s.get("wall_seconds")
    row.update(
        status="ok",
        test_acc_best_val=s.get("test_accuracy"),
        test_acc_last=None,
        best_val_acc=s.get("best_val_accuracy"),
        epochs=s.get("epochs"),
        steps=s.get("steps"),
        wall_seconds=wall,
        budget_seconds=budget,
        budget_share=wall / budget if isinstance(wall, int | float) else None,
        train_images_per_second=s.get("train_images_per_second"),
        image_size=size,
        notes=f"{_phase_line(s)}; run dir {out}",
        summary=_compact_summary(s),
    )
    return row


def run_baseline(
    method: Method, task: str, task_dir: Path, budget: float, size: int, seed: int, flip: bool, timeout: float
) -> dict[str, Any]:
    """Run one baseline recipe in a fresh subprocess and read the dict it wrote."""
    result = Path(os.environ.get("TMPDIR", "/tmp")) / f"thaw-suite-{os.getpid()}-{method.name}.json"
    result.unlink(missing_ok=True)
    argv = baseline_argv(method, task_dir, budget, size, seed, flip, result)
    row: dict[str, Any] = {"method": method.name, "task": task, "seed": seed, "run_command": shlex.join(argv)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as e:
        row.update(status="failed", notes=f"killed after {timeout:.0f}s; stderr: {_tail(str(e.stderr or ''))}")
        return row
    if proc.returncode != 0 or not result.is_file():
        row.update(status="failed", returncode=proc.returncode, notes=_tail(proc.stderr))
        return row
    row.update(json.loads(result.read_text(encoding="utf-8")))
    result.unlink()
    row.update(status="ok", task=task, process_seconds=time.perf_counter() - t0)
    return row


def one_main(argv: list[str]) -> None:
    """``python -m bench.suite one METHOD --task-dir DIR ...``: one baseline run, its dict written to --result."""
    from bench import baselines

    parser = argparse.ArgumentParser(prog="python -m bench.suite one")
    parser.add_argument("method", choices=["tutorial", "fastai_fine_tune", "linear_probe", "scratch", "plain_finetune"])
    parser.add_argument("--task-dir", type=Path, required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    fn = getattr(baselines, args.method)
    res = fn(args.task_dir, args.budget, size=args.size, seed=args.seed, flip=args.flip)
    args.result.write_text(json.dumps(res), encoding="utf-8")


def parse_methods(spec: str) -> list[str]:
    """``all`` -> every protocol row; ``backbones`` -> issue 13's rows; else a comma-separated list of ``METHODS``
    names (``all`` and ``backbones`` may appear in the list)."""
    names: list[str] = []
    for m in (m.strip() for m in spec.split(",")):
        expanded = ALL_METHODS if m == "all" else BACKBONE_METHODS if m == "backbones" else (m,) if m else ()
        names += [n for n in expanded if n not in names]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    return names


def done_cells(out: Path, budget: float) -> set[tuple[str, int, str]]:
    """The (task, seed, method) cells of ``out`` that already have an ``ok`` row at ``budget`` seconds.

    A suite of six tasks takes longer than one sitting (about 90 minutes per task on 2 cores): ``--resume`` lets a
    second sitting append only what is missing. Failed and skipped rows are run again; a row at another budget does
    not count.
    """
    if not out.exists():
        return set()
    cells = set()
    for line in out.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("status") == "ok" and row.get("budget_seconds") == budget:
            cells.add((str(row["task"]), int(row["seed"]), str(row["method"])))
    return cells


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["one"]:
        one_main(argv[1:])
        return
    from bench.tasks import TASKS, materialize, parse_names

    parser = argparse.ArgumentParser(description="Run the benchmark suite (bench/tasks.py x seeds x methods).")
    parser.add_argument("--tasks", default="all", help=f"comma-separated from {', '.join(TASKS)}, or all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="all", help=f"comma-separated from {', '.join(METHODS)}, all or backbones")
    parser.add_argument("--budget", type=float, default=180.0, help="seconds per run (default 180)")
    parser.add_argument("--root", type=Path, default=Path("bench/data"), help="task folders")
    parser.add_argument("--runs", type=Path, default=Path("bench/out/suite_runs"), help="thaw run folders")
    parser.add_argument("--out", type=Path, default=Path("bench/out/suite.jsonl"), help="results, appended")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the (task, seed, method) cells that already have an ok row at this budget in --out",
    )
    args = parser.parse_args(argv)
    try:
        tasks = parse_names(args.tasks)
        methods = [METHODS[m] for m in parse_methods(args.methods)]
    except ValueError as e:
        parser.error(str(e))
    seeds = [int(s) for s in args.seeds.split(",")]
    command = "python -m bench.suite " + shlex.join(argv)
    help_text = thaw_fit_help() if any(m.needs_flag for m in methods) else ""
    machine: dict[str, Any] = {}
    if not args.dry_run:  # bench.baselines imports torch: not needed for a dry run
        from bench.baselines import machine_info

        machine = machine_info()
    timeout = 2 * args.budget + 300
    finished = done_cells(args.out, args.budget) if args.resume else set()
    total = len(tasks) * len(seeds) * len(methods)
    log(f"{total} runs: {len(tasks)} tasks x {len(seeds)} seeds x {len(methods)} methods, budget {args.budget:g}s")
    done = 0
    for task in tasks:
        spec = TASKS[task]
        for seed in seeds:
            task_dir = materialize(task, seed, args.root).resolve()
            for method in methods:
                done += 1
                if (task, seed, method.name) in finished:
                    log(f"[{done}/{total}] {method.name} on {task} seed {seed}: already in {args.out}, skipped")
                    continue
                log(f"[{done}/{total}] {method.name} on {task} seed {seed} ({spec.img_size}px)")
                if method.needs_flag and method.needs_flag not in help_text:
                    row: dict[str, Any] = {
                        "method": method.name,
                        "task": task,
                        "seed": seed,
                        "status": "skipped",
                        "notes": f"not run: this thaw's `thaw fit --help` does not list {method.needs_flag}",
                    }
                elif args.dry_run:
                    if method.thaw_args is not None:
                        argv_ = thaw_argv(method, task_dir, args.budget, spec.img_size, seed, args.runs / "DIR")
                    else:
                        argv_ = baseline_argv(method, task_dir, args.budget, spec.img_size, seed, spec.flip, Path("R"))
                    print(shlex.join(argv_))
                    continue
                elif method.thaw_args is not None:
                    row = run_thaw(method, task, task_dir, args.budget, spec.img_size, seed, args.runs, timeout)
                else:
                    row = run_baseline(method, task, task_dir, args.budget, spec.img_size, seed, spec.flip, timeout)
                row.update(
                    budget_seconds=args.budget,
                    flip=spec.flip,
                    machine=machine,
                    command=command,
                    time=time.strftime("%Y-%m-%dT%H:%M:%S"),
                )
                if args.dry_run:
                    print(json.dumps(row))
                    continue
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                acc = row.get("test_acc_best_val")
                share = row.get("budget_share")
                log(
                    f"{method.name} {task} seed {seed}: {row['status']}"
                    + (f" test={acc:.4f}" if isinstance(acc, float) else "")
                    + (f" budget share={share:.2f}" if isinstance(share, float) else "")
                    + ("" if row["status"] == "ok" else f" -- {row.get('notes', '')[-300:]}")
                )


if __name__ == "__main__":
    main()
