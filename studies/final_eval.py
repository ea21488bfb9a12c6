"""A larger evaluation of checkpoints, and the noise of the FD estimate:

    python studies/final_eval.py CKPT [CKPT ...] --dataset scenes [--n 1000] [--cfg-scale 1 2 4] [--out studies/results/final_eval.csv]

For each checkpoint: ``n`` EMA samples (Euler, 25 steps, labels cycling through the classes, noise
fixed by ``--seed``) scored with the built-in evaluator of ``--dataset`` against 10,000 real training
images (FD, class accuracy), and the FD of the two halves of the samples against each other and
against the reference -- the difference between two disjoint sample sets of one model, i.e. how far
apart two FD estimates of that size fall by chance.  ``--cfg-scale``: classifier-free guidance
scales to sample with (1: none; guidance on the whole time interval), one row per checkpoint x scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from train.evaluation.evaluate import (SampleSpec, default_codec, evaluate_samples, extract, feature_statistics, frechet_distance,
                            generate_spec, load_feature_net, reference)
from train.models.loading import load
from studies.tables import show_and_save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--dataset", default="scenes")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg-scale", type=float, nargs="+", default=[1.0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    net = load_feature_net(dataset=args.dataset, progress=False)
    rows = []
    for ckpt, scale in ((c, s) for c in args.checkpoints for s in args.cfg_scale):
        model = load(ckpt)
        spec = SampleSpec(args.n, "euler", 25, cfg_scale=scale, seed=args.seed + 1000, labels=tuple(range(model.cfg.num_classes)))
        images, labels = generate_spec(model, spec, default_codec(model))
        ref = reference(net, args.dataset, "train", 10_000, images.shape[-1], progress=False)
        res = evaluate_samples(images, labels, net, ref)
        half = args.n // 2
        feats = extract(net, images)["features"]  # the halves' FDs from the same features, computed once
        fa, fb = (feature_statistics(feats[sl]) for sl in (slice(0, half), slice(half, 2 * half)))
        rows.append({"checkpoint": str(ckpt), "cfg_scale": scale, "n": args.n, "fd": res["fd"], "class_acc": res["class_acc"],
                     "fd_half_a": frechet_distance(*fa, *ref.stats["features"]),
                     "fd_half_b": frechet_distance(*fb, *ref.stats["features"]),
                     "fd_between_halves": frechet_distance(*fa, *fb)})
        print(rows[-1], flush=True)
    show_and_save(rows, args.out)


if __name__ == "__main__":
    main()
