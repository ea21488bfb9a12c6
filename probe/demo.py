"""The main job (``make demo``): REPA vs vanilla on the built-in default, end to end.

1. the built-in teacher (trained once, cached) and its held-out linear-probe accuracy;
2. REPA and vanilla SiT trained side by side on the shapes set (same seed, data order, noise),
   evaluated every ``eval_every`` steps (Fréchet distance and class accuracy of fixed-noise samples
   in the feature space of an evaluator network independent of the teacher);
3. every layer x noise level (t = 0, 0.25, 0.5) of every checkpoint of both runs against the teacher
   (CKNNA, CKA, mutual k-NN, linear probes): the layer sweep, the training-progress curve and the
   REPA-vs-vanilla comparison are slices of that one table;
4. tables (parquet + CSV + JSON sidecars) and figures in ``--out``, a results summary, and the
   figures copied to ``--figures``.

A second run reuses everything already computed (trained runs, teacher, evaluator, feature store).

    python -m probe.demo                       # ~10 minutes on 2 CPU cores the first time
    python -m probe.demo --seeds 0 1 2         # the 3-seed reproduction behind RESULTS.md
    python -m probe.demo --figures-only        # redraw figures from the saved tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from probe.summary import results_markdown
from train.config import TrainConfig, override, preset
from train.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def demo_config(seed: int, steps: int | None, sets: list[str] | None = None) -> TrainConfig:
    """The tiny preset with ``seed``, ``steps`` and ``FIELD=VALUE`` overrides (as ``repa-train --set``)."""
    cfg = dataclasses.replace(preset("tiny"), seed=seed)
    try:
        cfg = override(cfg, ([f"steps={steps}"] if steps else []) + list(sets or []))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"bad --set override: {e}") from None
    if errs := cfg.check():
        raise UserError("; ".join(errs))
    return cfg


def teacher_report() -> dict:
    """Train (or load) the built-in teacher; return its sidecar (config, time, held-out accuracy)."""
    from train.encoders import TeacherConfig, train_builtin_teacher

    path = train_builtin_teacher(TeacherConfig(), progress=True)
    return json.loads(Path(path).with_suffix(".json").read_text())


def train_pair(cfg: TrainConfig, out: Path, jobs: int) -> None:
    from train.cli import side_by_side

    side_by_side(cfg, out, jobs=jobs, progress=True)


def read_metrics(run_dirs: dict[str, Path]) -> pd.DataFrame:
    frames = []
    for (seed, run), d in run_dirs.items():
        m = pd.read_json(d / "metrics.jsonl", lines=True)
        frames.append(m.assign(run=run, seed=seed))
    return pd.concat(frames, ignore_index=True)


def draw(probe: pd.DataFrame, metrics: pd.DataFrame, samples: dict[str, Path], out: Path, align_depth: int) -> list[Path]:
    from probe import plots

    figs = plots.plot_all(probe, out, layers=(align_depth,))  # all seeds: mean and sd band
    figs += plots.training_curves(metrics, out)
    figs += plots.sample_grids(samples, out)
    return figs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m probe.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--figures", type=Path, default=ROOT / "figures")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, help="training steps per run (default: the tiny preset's)")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="override training fields, e.g. model.class_dropout_prob=1.0 (as repa-train --set)")
    ap.add_argument("--jobs", type=int, default=2, help="train REPA and vanilla at once (one thread each)")
    ap.add_argument("--n-images", type=int, default=500, help="images probed per checkpoint")
    ap.add_argument("--figures-only", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        tables = args.out / "tables"
        cfg0 = demo_config(args.seeds[0], args.steps, args.set)
        align = cfg0.model.encoder_depth
        if not args.figures_only:
            print("== 1/4 built-in teacher", flush=True)
            teacher = teacher_report()
            (args.out).mkdir(parents=True, exist_ok=True)
            (args.out / "teacher.json").write_text(json.dumps(teacher, indent=2))
            run_dirs = {}
            for seed in args.seeds:
                print(f"== 2/4 training REPA and vanilla, seed {seed}", flush=True)
                out = args.out / f"seed{seed}"
                train_pair(demo_config(seed, args.steps, args.set), out, args.jobs)
                run_dirs.update({(seed, "repa"): out / "repa", (seed, "vanilla"): out / "vanilla"})
            print("== 3/4 probing every layer x noise level of every checkpoint", flush=True)
            from probe.analyses import projection_alignment, save_table, training_progress

            frames = []
            for seed in args.seeds:
                ckpts = [c for run in ("repa", "vanilla") for c in sorted((args.out / f"seed{seed}" / run / "checkpoints").glob("step_*.pt"))]
                df = training_progress(ckpts, "shapes", encoders=("builtin-teacher",), n_images=args.n_images, n_train=1000,
                                       probe_batch_size=64, seed=seed, store=str(args.out / "store"))
                frames.append(df.assign(seed_run=seed))
            probe = pd.concat(frames, ignore_index=True)
            probe.attrs = frames[0].attrs
            save_table(probe, tables, "probe")
            print("== 3/4 REPA's projected tokens vs the teacher's, real and null label", flush=True)
            proj = pd.concat([projection_alignment(max((args.out / f"seed{seed}" / "repa" / "checkpoints").glob("step_*.pt")),
                                                   "shapes", n_images=args.n_images, seed=seed).assign(seed_run=seed)
                              for seed in args.seeds], ignore_index=True)
            save_table(proj, tables, "projection_alignment")
            metrics = read_metrics(run_dirs)
            metrics.to_csv(tables / "training_metrics.csv", index=False)
            (tables / "results.md").write_text(results_markdown(probe, metrics, teacher, align, proj) + "\n")
        if not (tables / "probe.csv").is_file():  # --figures-only on a fresh clone: the committed tables
            tables = args.figures / "tables"
        if not (tables / "probe.csv").is_file():
            raise UserError(f"no probe tables in {tables}: run python -m probe.demo without --figures-only first")
        probe = pd.read_csv(tables / "probe.csv", keep_default_na=False, na_values=[""])  # "null" is a label mode, not NaN
        metrics = pd.read_csv(tables / "training_metrics.csv")
        print("== 4/4 figures", flush=True)
        seed = args.seeds[0]
        samples = {run: max((args.out / f"seed{seed}" / run / "samples").glob("step_*.png")) for run in ("repa", "vanilla")
                   if (args.out / f"seed{seed}" / run / "samples").is_dir()}
        figs = draw(probe, metrics, samples, args.out / "figures", align)
        (args.figures / "tables").mkdir(parents=True, exist_ok=True)
        for name in ("probe.csv", "probe.json", "projection_alignment.csv", "projection_alignment.json", "training_metrics.csv", "results.md"):
            if (tables / name).is_file() and (tables / name).resolve() != (args.figures / "tables" / name).resolve():
                shutil.copy(tables / name, args.figures / "tables" / name)
        for f in figs:
            if f.suffix == ".png":
                shutil.copy(f, args.figures / f.name)
        print((tables / "results.md").read_text())
        print(f"done in {time.time() - t0:.0f} s: tables in {tables}, figures in {args.figures}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
