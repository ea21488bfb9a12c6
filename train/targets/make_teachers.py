"""The recipe of the shipped networks (``make teachers``): train, measure, write weights and card.

    python -m train.targets.make_teachers [NAME ...] [--out train/weights]

For each name of :data:`train.targets.shipped.SHIPPED` (all by default) whose weights are not yet in
``--out``: train it on all 60,000 Fashion-MNIST training images on its config's ``threads`` (one;
two for ``fashion-contrastive-2x``; deterministic for that count), resumable (the training state is written every 500
steps to ``$REPA_CACHE/shipped-build/<name>.state.pt``: a killed build run again continues and ends
with the same weights), then measure it on the 10,000 test images and write

* ``<name>.safetensors``: the weights, config and format in the metadata;
* ``<name>.json``: the card -- recipe (config, command), code revision, data, training wall/CPU
  seconds, compute (image-passes x parameters, and its ratio to one demo student), the measures and
  the sha256 of the weights;
* the digest in ``SHA256SUMS``, which :func:`train.targets.shipped.verified_path` checks on every load.

Measures of a teacher (its final-norm patch tokens, the REPA target): k-NN accuracy (k = 20, cosine,
mean-pooled tokens of the first 10,000 training images as the memory) and linear-probe accuracy
(logistic regression on standardised mean-pooled tokens of 10,000 training images) on the test
set; LDS / CDS / RMSC (:mod:`train.evaluation.metrics`) and the class R^2 of the tokens (:func:`class_r2`) on
2,000 test images.  Of the evaluator: its test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from train.errors import UserError
from train.targets.shipped import SHIPPED, WEIGHTS_DIR, sha256, write_sum

# One demo student, the unit of the teachers' compute: the default preset's REPA SiT-T/2 (630,148
# parameters with two conv projectors, one per teacher, since plan stage 15; 556,292 with one conv
# projector from stage 9; 523,780 with the MLP projector before) for 600 steps of batch 32
# (REPA-NOTES section 11; make demo).
DEMO_STUDENT = {"parameters": 630_148, "steps": 600, "batch_size": 32}
KNN_K = 20
N_MEMORY = 10_000  # training images of the k-NN memory, the linear probe and the class means


def class_r2(train_tokens: torch.Tensor, train_labels: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the token variance the class explains: R^2 = 1 - sum |y - mu_{c,p}|^2 / sum |y - mu_p|^2
    over images, positions p and channels, with the per-class and overall mean tokens at each
    position (``mu_{c,p}``, ``mu_p``) fitted on ``train_tokens`` ``(N, T, D)``."""
    overall = train_tokens.mean(0)                                                  # (T, D)
    per_class = torch.stack([train_tokens[train_labels == c].mean(0) for c in range(int(train_labels.max()) + 1)])
    total = (tokens - overall).pow(2).sum()
    within = (tokens - per_class[labels]).pow(2).sum()
    return float(1 - within / total)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
                 k: int = KNN_K, chunk: int = 1000) -> float:
    """Majority vote of the ``k`` nearest training features by cosine similarity (ties: lowest class)."""
    a = torch.nn.functional.normalize(train_feats, dim=1)
    b = torch.nn.functional.normalize(feats, dim=1)
    n_classes = int(train_labels.max()) + 1
    correct = 0
    for s in range(0, len(b), chunk):
        idx = (b[s:s + chunk] @ a.T).topk(k, dim=1).indices                          # (chunk, k)
        votes = torch.nn.functional.one_hot(train_labels[idx], n_classes).sum(1)      # (chunk, classes)
        correct += int((votes.argmax(1) == labels[s:s + chunk]).sum())
    return correct / len(b)


def teacher_measures(name: str, path: Path) -> dict[str, Any]:
    from train.targets.encoders import load_encoder
    from train.evaluation.metrics import cds, lds, rmsc
    from train.targets.teacher import linear_probe_on_features
    from train.data.fashion_mnist import FashionMNISTDataset

    enc = load_encoder(name, weights=path)
    train, test = FashionMNISTDataset("train"), FashionMNISTDataset("val")
    with torch.no_grad():
        tr = torch.cat([enc(train.images[i:i + 1000]) for i in range(0, N_MEMORY, 1000)])     # (10000, T, D)
        te = torch.cat([enc(test.images[i:i + 1000]) for i in range(0, len(test), 1000)])     # (10000, T, D)
    n = 2000
    return {
        "knn_accuracy": knn_accuracy(tr.mean(1), train.labels[:N_MEMORY], te.mean(1), test.labels),
        "knn_k": KNN_K,
        # the same pooled features as the k-NN (each image encoded once)
        "linear_probe_accuracy": linear_probe_on_features(tr.mean(1).numpy(), train.labels[:N_MEMORY].numpy(),
                                                          te.mean(1).numpy(), test.labels.numpy()),
        "lds": lds(te[:n]), "cds": cds(te[:n]), "rmsc": rmsc(te[:n]),
        "class_r2": class_r2(tr, train.labels[:N_MEMORY], te[:n], test.labels[:n]),
        "token_to_image_mean_cosine": float(torch.nn.functional.cosine_similarity(te[:n], te[:n].mean(1, keepdim=True), dim=-1).mean()),
        "measured_on": f"fashion-mnist test ({len(test)} images; spatial metrics and class R^2 on the first {n})",
    }


def build(name: str, out: Path, progress: bool = True) -> Path:
    """Train, measure and write the shipped network ``name`` into ``out`` (see the module docstring)."""
    from train.run.checkpoints import repa_cache_dir
    from train.run.loop import git_revision

    path = out / f"{name}.safetensors"
    state_path = Path(repa_cache_dir()) / "shipped-build" / f"{name}.state.pt"
    state_path.parent.mkdir(parents=True, exist_ok=True)
    revision = git_revision()
    start = time.time()
    if name == "fashion-evaluator":
        from train.evaluation.feature_nets import EVALUATORS, EvaluatorCNN, _fit_evaluator, save_evaluator

        cfg = EVALUATORS["fashion-mnist"]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model, sidecar = _fit_evaluator(cfg, progress, state_path)
        finally:
            torch.set_num_threads(threads)
        save_evaluator(model, cfg, path)
        params = sum(p.numel() for p in EvaluatorCNN(cfg).parameters())
        measures = {"test_accuracy": sidecar["val_accuracy"], "n_test": sidecar["n_val"]}
        passes, build_threads = cfg.steps * cfg.batch_size, 1
    else:
        from train.targets.teacher import TEACHERS, TeacherViT, _train_teacher

        cfg = TEACHERS[name]
        sidecar = _train_teacher(cfg, path, progress, state_path)
        path.with_suffix(".json").unlink(missing_ok=True)  # the card below replaces the cache sidecar
        params = sum(p.numel() for p in TeacherViT(cfg).parameters())
        measures = {**({"head_test_accuracy": sidecar["val_accuracy"]} if "val_accuracy" in sidecar else {}),
                    **teacher_measures(name, path)}
        passes = cfg.steps * cfg.batch_size * cfg.views  # the contrastive teacher passes two views of each image
        build_threads = cfg.threads
    student = DEMO_STUDENT["parameters"] * DEMO_STUDENT["steps"] * DEMO_STUDENT["batch_size"]
    digest = sha256(path)
    card = {
        "name": name, "file": path.name, "sha256": digest, "format": "safetensors",
        "recipe": {"command": f"python -m train.targets.make_teachers {name}", "config": asdict(cfg),
                   "threads": build_threads},
        "code_revision": revision, "torch": torch.__version__,
        "data": "Fashion-MNIST train (60,000 images), 16 px bilinear antialiased, grey in 3 channels; "
                "measured on the 10,000 test images",
        "train_seconds_last_segment": sidecar["train_seconds"], "train_cpu_seconds_last_segment": sidecar["train_cpu_seconds"],
        "build_seconds_with_measures": round(time.time() - start, 1),
        "compute": {"parameters": params, "image_passes": passes, "image_passes_x_parameters": passes * params,
                    "demo_student": {**DEMO_STUDENT, "image_passes_x_parameters": student},
                    "ratio_to_demo_student": round(passes * params / student, 2)},
        "measures": measures,
    }
    from train.run.checkpoints import atomic_write

    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n"))
    write_sum(path.name, digest, out)
    state_path.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.targets.make_teachers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(SHIPPED)} (default: all)")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder of the weights, cards and SHA256SUMS")
    ap.add_argument("--rebuild", action="store_true", help="train again even where the weights exist")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        if unknown := [n for n in args.names if n not in SHIPPED]:
            raise UserError(f"unknown shipped network {', '.join(unknown)}: use any of {', '.join(SHIPPED)}")
        args.out.mkdir(parents=True, exist_ok=True)
        for name in args.names or SHIPPED:
            if (args.out / f"{name}.json").exists() and not args.rebuild:
                print(f"{name}: already built ({args.out / name}.safetensors); --rebuild trains it again")
                continue
            print(build(name, args.out, progress=not args.no_progress))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
