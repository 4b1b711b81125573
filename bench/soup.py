"""Do repeated thaw runs average well? Single runs vs their uniform weight soup vs their prediction ensemble.

``PYTHONPATH=src:. python -m bench.soup --task fashion10 --seed 0 --runs 0,1,2,3 --strategy full --budget 180``

Materialises the task (as bench.baselines does), runs ``thaw.fit`` once per run seed (same data, new data order,
augmentation and dropout; the new head starts at zero, so every run starts from the same weights), then scores on
validation and test: each run, the uniform average of the runs' weights (one model) and the average of their
predicted probabilities (an ensemble of N models, for reference). This is the measurement behind the uniform soup
of ``Runner.weight_soup``; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.baselines import log, thaw_fit
from bench.fashion import materialize
from bench.make_sample_data import IDX_DIR


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def measure(task_dir: Path, runs: list[int], strategy: str, budget: float, size: int, out: Path) -> dict[str, Any]:
    from thaw.data.cache import decode_all
    from thaw.data.sources import scan
    from thaw.inference import infer_probs, load_for_inference
    from thaw.train.selection import average_states

    dirs = []
    for run in runs:
        run_dir = out / f"{task_dir.parent.name}-{task_dir.name}-{strategy}-run{run}"
        start = time.perf_counter()
        res = thaw_fit(task_dir, strategy, budget, size, run, run_dir, progress=lambda _m: None)
        seconds = time.perf_counter() - start
        log(f"run {run}: test {res.test_accuracy:.4f} val {res.best_val_accuracy:.4f} {seconds:.0f}s")
        dirs.append(run_dir)
    loaded = [load_for_inference(d) for d in dirs]
    labels, pre = loaded[0][1], loaded[0][2]
    splits = {s: decode_all(scan(str(task_dir / s), labels).samples, pre) for s in ("val", "test")}
    ys = {s: d.labels.numpy() for s, d in splits.items()}
    probs = {s: [infer_probs(m, d, pre) for m, _, _ in loaded] for s, d in splits.items()}
    soup = loaded[0][0]
    # the same average that Runner.weight_soup adopts
    soup.load_state_dict(average_states([m.state_dict() for m, _, _ in loaded]))
    result: dict[str, Any] = {"task": task_dir.parent.name, "seed": task_dir.name, "strategy": strategy, "runs": runs}
    for s in ("val", "test"):
        result[f"single_{s}"] = [_accuracy(p, ys[s]) for p in probs[s]]
        result[f"soup_{s}"] = _accuracy(infer_probs(soup, splits[s], pre), ys[s])
        result[f"ensemble_{s}"] = _accuracy(np.mean(probs[s], axis=0), ys[s])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="fashion10")
    ap.add_argument("--seed", type=int, default=0, help="task (data) seed")
    ap.add_argument("--runs", default="0,1,2,3", help="thaw run seeds, comma-separated")
    ap.add_argument("--strategy", default="full")
    ap.add_argument("--budget", type=float, default=180.0)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--root", type=Path, default=Path("bench/data"))
    ap.add_argument("--out", type=Path, default=Path("bench/out/soup"))
    ap.add_argument("--idx-dir", type=Path, default=IDX_DIR)
    args = ap.parse_args()
    task_dir = materialize(args.task, args.seed, args.root, args.idx_dir)
    result = measure(task_dir, [int(r) for r in args.runs.split(",")], args.strategy, args.budget, args.size, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.task}-seed{args.seed}-{args.strategy}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
