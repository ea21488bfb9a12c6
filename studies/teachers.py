"""The built-in teachers' token statistics (RESULTS.md, "Teachers"):

    python -m studies.teachers [--out studies/results/teachers.csv]

For every built-in teacher (``builtin-*``: trained here on first use and cached; the shipped
``fashion-*`` teachers' measures are in their cards, ``train/weights/<name>.json``) on its dataset's
val split: the held-out linear-probe accuracy of the mean-pooled tokens (its sidecar), LDS / CDS /
RMSC of its tokens (``probe.metrics``, per image and averaged over images, default radii), and the
share of the token variance the class label explains:
R^2 = 1 - sum |y - mu_{c, p}|^2 / sum |y - mu_p|^2 over val images, positions p and channels, with the
per-class and overall mean tokens mu at each position fitted on the train split.  Trains a teacher
that is not cached (about 3 minutes of one core each).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from probe.metrics import cds, lds, rmsc
from train.targets.encoders import load_encoder
from train.targets.make_teachers import class_r2
from train.targets.teacher import TEACHERS, _dataset, teacher_path
from studies.tables import show_and_save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--n", type=int, default=2000, help="val images (and train images for the class means)")
    args = ap.parse_args()
    rows = []
    for name, cfg in TEACHERS.items():
        if not name.startswith("builtin-"):
            continue
        enc = load_encoder(name)
        sidecar = json.loads(teacher_path(cfg).with_suffix(".json").read_text())
        train, val = _dataset(cfg, "train"), _dataset(cfg, "val")
        with torch.no_grad():
            tr = torch.cat([enc(train.images[i:i + 500]) for i in range(0, args.n, 500)])
            va = torch.cat([enc(val.images[i:i + 500]) for i in range(0, min(args.n, len(val)), 500)])
        rows.append({"teacher": name, "kind": cfg.kind, "dataset": cfg.dataset, "key": cfg.key(),
                     "linear_probe": sidecar["linear_probe_accuracy"], "lds": lds(va), "cds": cds(va), "rmsc": rmsc(va),
                     "class_r2": class_r2(tr, train.labels[:args.n], va, val.labels[:len(va)]),
                     "train_cpu_seconds": sidecar["train_cpu_seconds"], "n_val": len(va)})
    show_and_save(rows, args.out, digits=4)


if __name__ == "__main__":
    main()
