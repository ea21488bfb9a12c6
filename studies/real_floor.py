"""The floor of every generation metric on real images, in the built-in evaluator's space: disjoint
random draws of real images scored against a reference set exactly as a model's samples are
(``train.evaluation.evaluate.evaluate_samples``: FD, KID, precision/recall, class accuracy, the
evaluator's mean confidence and class histogram), two draws per size.

    python -m studies.real_floor --dataset scenes --size 16 --out studies/results/pilot2/real_floor.csv
    python -m studies.real_floor --dataset fashion-mnist --size 16 --ref-split val --draw-split train \\
        --n 2000 --out studies/results/fashion/real_floor.csv     # the tiny preset's evaluation, on real images
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from train.data.datasets import build_dataset
from train.evaluation.evaluate import evaluate_samples
from train.evaluation.feature_nets import load_feature_net, reference
from studies.tables import show_and_save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="scenes")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--ref-split", default="train", help="the reference set (10,000 images of it), as eval_ref_split")
    ap.add_argument("--draw-split", default="val", help="where the real draws come from (disjoint from the reference)")
    ap.add_argument("--n", type=int, nargs="+", default=[256, 1000], help="images per draw")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.ref_split == args.draw_split:
        raise SystemExit(f"--ref-split and --draw-split are both {args.ref_split}: draw from the other split")
    torch.set_num_threads(1)
    net = load_feature_net("builtin-evaluator", dataset=args.dataset, progress=False)
    ref = reference(net, args.dataset, args.ref_split, 10_000, args.size, progress=False)
    real = build_dataset(args.dataset, args.draw_split, size=args.size)
    rows = []
    for n in args.n:
        for draw in (0, 1):
            idx = torch.randperm(len(real.images), generator=torch.Generator().manual_seed(draw))[:n]
            r = evaluate_samples(real.images[idx], real.labels[idx], net, ref)
            rows.append({"dataset": args.dataset, "reference": f"{args.ref_split} ({ref.meta.get('n')})",
                         "draws_from": args.draw_split, "n": n, "draw": draw,
                         **{k: r.get(k) for k in ("fd", "kid", "kid_std", "precision", "recall", "class_acc",
                                                  "class_confidence")},
                         "class_histogram": " ".join(map(str, r.get("class_histogram", [])))})
    show_and_save(rows, args.out)


if __name__ == "__main__":
    main()
