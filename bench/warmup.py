"""How many warmup steps does fine-tuning from a probed head need? The measurement behind ``MIN_WARMUP_STEPS``.

``PYTHONPATH=src:. python -m bench.warmup --task digits --seeds 0,1 --size 64``

For each task seed: ``thaw.fit(strategy="linear")`` trains the probe (the head auto starts fine-tuning from), then
every group fine-tunes from it with thaw's defaults (AdamW, lr 1e-3 on the head and half on the backbone, frozen
BatchNorm statistics, label smoothing 0.1, batch 32, pad-and-crop) for ``--steps`` optimizer steps, with a linear
warmup of W steps and a cosine to zero after it. It prints the validation accuracy of the probe, after the first
step, and at the end, per W. The loop is written out here (not ``thaw.fit``) so that nothing but W changes; it is
a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.tasks import TASKS, materialize


def _batches(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen)[:size]


def measure(task_dir: Path, warmups: list[int], steps: int, size: int, seed: int, out: Path) -> list[dict[str, Any]]:
    from thaw.api import fit
    from thaw.data.cache import decode_all
    from thaw.data.sources import scan
    from thaw.data.transforms import normalize
    from thaw.inference import load_for_inference

    probe_dir = out / f"{task_dir.parent.name}-{task_dir.name}-probe"
    fit(task_dir / "train", val=str(task_dir / "val"), strategy="linear", img_size=size, seed=seed,
        out=str(probe_dir), overwrite=True, progress=lambda _m: None)  # fmt: skip
    model, labels, pre = load_for_inference(probe_dir)
    probe = {k: v.clone() for k, v in model.state_dict().items()}
    data = {s: decode_all(scan(str(task_dir / s), labels).samples, pre) for s in ("train", "val")}
    x = {s: normalize(d.images, pre.mean, pre.std) for s, d in data.items()}
    y = {s: d.labels for s, d in data.items()}

    def val_accuracy() -> float:
        model.eval()
        with torch.inference_mode():
            return float((model(x["val"]).argmax(1) == y["val"]).float().mean())

    def frozen_bn_train_mode() -> None:
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()  # thaw's default --bn eval-all

    val_probe = val_accuracy()
    rows = []
    for w in warmups:
        model.load_state_dict(probe)
        head = [p for n, p in model.named_parameters() if n.startswith(model.default_cfg["classifier"])]
        ids = {id(p) for p in head}
        rest = [p for p in model.parameters() if id(p) not in ids]
        opt = torch.optim.AdamW([{"params": head, "lr": 1e-3}, {"params": rest, "lr": 5e-4}], weight_decay=0.01)
        # thaw's WarmupCosine formula, written out: WarmupCosine caps the warmup at half the phase, and the
        # 40-of-40 row measures a warmup with no cosine after it
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s, w=w: (s + 1) / (w + 1) if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / max(1, steps - w))),
        )
        gen = torch.Generator().manual_seed(seed)
        start, curve = time.perf_counter(), []
        for step in range(steps):
            frozen_bn_train_mode()
            idx = _batches(len(y["train"]), 32, gen)
            batch = torch.nn.functional.pad(x["train"][idx], (4, 4, 4, 4), mode="reflect")
            i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
            batch = batch[:, :, i : i + size, j : j + size].contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(batch), y["train"][idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step == 0 or step == steps - 1:
                curve.append(val_accuracy())
        rows.append({"task": task_dir.parent.name, "seed": seed, "warmup": w, "steps": steps,
                     "val_probe": val_probe, "val_after_first_step": curve[0], "val_end": curve[-1],
                     "seconds": time.perf_counter() - start})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits", choices=sorted(TASKS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--warmups", default="0,5,10,20,40")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--root", type=Path, default=Path("bench/data"))
    ap.add_argument("--out", type=Path, default=Path("bench/out/warmup"))
    args = ap.parse_args()
    torch.manual_seed(0)
    for seed in (int(s) for s in args.seeds.split(",")):
        task_dir = materialize(args.task, seed, args.root)
        for row in measure(task_dir, [int(w) for w in args.warmups.split(",")], args.steps, args.size, seed, args.out):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
