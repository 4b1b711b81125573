"""How much a batch shape not seen before adds to a timed fine-tuning pass (Runner.measure's warm-up).

Lite0 (built-in weights) at 96 px, 40 images at batch 32 (batches of 32 and 8), channels_last; in a fresh process
per variant: warm up on the 32 batch only ("one size"), or on one batch of each size ("each size"), then time one
pass over both batches. Prints seconds per pass.

    python -m bench.cold_batch one && python -m bench.cold_batch each     # repeat for a spread
"""

from __future__ import annotations

import sys
import time

import torch

from thaw.models.groups import layer_groups
from thaw.models.load import load_model
from thaw.strategy.signals import relative_grad_norms


def main() -> None:
    torch.manual_seed(0)
    model = load_model("efficientnet_lite0", 5, img_size=96).model.to(memory_format=torch.channels_last)
    groups = layer_groups(model)
    x = torch.randn(40, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (40,))
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    warm = batches if sys.argv[1] == "each" else batches[:1]
    relative_grad_norms(model, groups, warm)
    start = time.perf_counter()
    relative_grad_norms(model, groups, batches)
    print(f"{sys.argv[1]}: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
