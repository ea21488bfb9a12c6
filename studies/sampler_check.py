"""How much of the samples' FD is the sampler's, and how much guidance moves it: one checkpoint,
256 EMA samples each with Euler 25, Heun 50, SDE 250 and Euler 25 at guidance scale 4 (labels
uniform from seed 0), scored by the built-in evaluator of ``--dataset``.

    python -m studies.sampler_check runs/extended/seed0/vanilla/checkpoints/step_0002000.pt --out studies/results/pilot2/sampler_check.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from train.evaluation.evaluate import evaluate_checkpoint
from studies.tables import show_and_save

SETTINGS = (("euler", 25, 1.0), ("heun", 50, 1.0), ("sde", 250, 1.0), ("euler", 25, 4.0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--dataset", default="scenes")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for sampler, steps, scale in SETTINGS:
        start = time.time()
        r = evaluate_checkpoint(args.checkpoint, n=args.n, sampler=sampler, steps=steps, dataset=args.dataset, cfg_scale=scale,
                                progress=False)
        rows.append({"checkpoint": str(args.checkpoint), "sampler": sampler, "steps": steps, "cfg_scale": scale, "n": args.n,
                     "fd": r["fd"], "class_acc": r.get("class_acc"), "precision": r["precision"], "recall": r["recall"],
                     "seconds": round(time.time() - start, 1)})
        print(rows[-1], flush=True)
    show_and_save(rows, args.out)


if __name__ == "__main__":
    main()
