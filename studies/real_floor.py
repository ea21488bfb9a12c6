"""The FD floor of real images in the built-in evaluator's space: disjoint random subsets of the
val split (256 and 1,000 images, two draws each) against the reference statistics of 10,000
training images, with the evaluator's class accuracy on them.

    python -m studies.real_floor --dataset scenes --size 16 --out studies/results/pilot2/real_floor.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from train.data.datasets import build_dataset
from train.evaluation.feature_nets import extract, load_feature_net, reference
from train.evaluation.generation_metrics import feature_statistics, frechet_distance
from studies.tables import show_and_save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="scenes")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = load_feature_net("builtin-evaluator", dataset=args.dataset, progress=False)
    ref = reference(net, args.dataset, "train", 10_000, args.size, progress=False)
    val = build_dataset(args.dataset, "val", size=args.size)
    rows = []
    for n in (256, 1000):
        for draw in (0, 1):
            idx = torch.randperm(len(val.images), generator=torch.Generator().manual_seed(draw))[:n]
            f = extract(net, val.images[idx])
            acc = (torch.from_numpy(f["class_logits"]).argmax(1) == val.labels[idx]).float().mean().item()
            rows.append({"dataset": args.dataset, "split": "val", "n": n, "draw": draw,
                         "fd": frechet_distance(*feature_statistics(f["features"]), *ref.stats["features"]), "class_acc": acc})
    show_and_save(rows, args.out)


if __name__ == "__main__":
    main()
