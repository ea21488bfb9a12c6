"""The main job (``make demo``): REPA vs vanilla on the built-in default, end to end.

1. the teacher (shipped and sha256-checked, or built-in: trained once, cached) and the evaluator with its
   reference statistics;
2. REPA and vanilla SiT (and with ``--control`` the shuffled-target control) trained on the
   built-in default's data for every seed (the runs of a seed share the initialisation, data order
   and noise), evaluated every ``eval_every`` steps (FD, KID and class accuracy of fixed-noise
   samples in the feature space of an evaluator network independent of the teacher; the control
   every second one of those: :func:`control_config`);
3. every layer x noise level (t = 0, 0.25, 0.5) of every checkpoint of every run against the teacher
   (CKNNA, CKA, mutual k-NN, linear probes): the layer sweep, the training-progress curve and the
   REPA-vs-vanilla comparison are slices of that one table; and REPA's own objective on its final
   checkpoint with the real and the null label (``projection_alignment``); on the first seed's final
   checkpoints, token PCA maps and per-patch alignment maps of both runs (``task_maps``);
4. tables (parquet + CSV + JSON sidecars), a seed-aggregated results summary and figures in ``--out``,
   with the tables and figures copied to ``--figures``.

These are the tasks of one graph, which ``--jobs`` worker processes (one thread each) take in order
as their inputs become ready::

    evaluator --+--> train vanilla, seed s --> probe vanilla, seed s --+--> tables --> figures
                |                                                      |
    teacher ----+--> train REPA, seed s -----> probe REPA, seed s; ----+
                                               projection alignment, seed s

so vanilla training runs while the teacher is still learning, the longest training runs start
first (REPA, vanilla, then the control) so that the workers finish together, and the figures are
drawn two at a time.  Where the runs cache the teacher's tokens (``make extended``), a ``targets``
task between the teacher and the REPA runs encodes them once for all.  A second run reuses everything already computed: finished training runs, the teacher, the
evaluator and each run's probe table (kept under ``<out>/parts`` and keyed by its checkpoints and
settings; recomputed when a checkpoint file has changed, e.g. a run retrained in place).  An
interrupted run resumes: training from its last checkpoint, probing from the
feature store.

    python -m probe.demo                       # seed 0, 300 steps: about 6 minutes on 2 CPU cores
    python -m probe.demo --seeds 0 1 2         # three seeds
    python -m probe.demo --figures-only        # redraw figures from the saved tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from probe.summary import live_rows, results_markdown
from probe.task_graph import Task, run_graph
from train.run.config import TrainConfig, override, preset
from train.errors import UserError
from train.run.rules import Parser, option

ROOT = Path(__file__).resolve().parent.parent
RUNS = ("repa", "vanilla")
# the paper's pooled metrics, token-level CKNNA and iREPA's local-vs-distant spatial structure
# (CKA and mutual k-NN on request: --metrics; make extended probes all six)
DEMO_METRICS = ("cknna", "linear_probe", "cknna_token", "lds")


LIVE_EVERY = 100  # live alignment of every run (train.run.live_align); its overhead at this interval: BENCHMARKS.md
# What the main job changes of the tiny preset to fit its 10-minute budget on 2 cores (RESULTS.md section 3):
# 300 steps instead of 600, checkpointed and evaluated at steps 150 and 300 on 250 fixed-noise samples
# instead of 2,000 (REPA's and vanilla's samples share their noise), and the teacher run on each batch
# instead of encoding all 60,000 training images first (300 steps x 32 images see a sixth of them).
# ``--steps`` and ``--set`` override these (``make extended``).
DEMO_SETTINGS = ("steps=300", "eval_every=150", "ckpt_every=150", "sample_every=150", "eval_samples=250", "cache_targets=false")


def demo_config(seed: int, steps: int | None, sets: list[str] | None = None, control: bool = False) -> TrainConfig:
    """The tiny preset with :data:`DEMO_SETTINGS`, ``seed``, ``steps`` and ``FIELD=VALUE`` overrides (as
    ``repa-train --set``), on one thread (each task of the graph gets one core), with live alignment
    every :data:`LIVE_EVERY` steps.  With ``control`` (the shuffled-target arm reads other images'
    cached tokens) every arm keeps the preset's target cache."""
    cfg = dataclasses.replace(preset("tiny"), seed=seed, threads=1, align_every=LIVE_EVERY)
    settings = [s for s in DEMO_SETTINGS if not (control and s.startswith("cache_targets="))]
    try:
        cfg = override(cfg, settings + ([f"steps={steps}"] if steps is not None else []) + list(sets or []),
                       strict=True)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"bad --set override: {e}") from None
    if errs := cfg.check():
        raise UserError(errs[0])
    return cfg


def control_config(cfg: TrainConfig) -> TrainConfig:
    """The shuffled-target control of the REPA run ``cfg``: REPA on a random other image's teacher tokens
    (``target_shuffle="image"``), evaluated at every second evaluation step of the other arms (steps
    1,000 and 2,000 of ``make extended``): what the study asks of it is its final FD beside REPA's
    gain, and the two evaluations it skips per seed are about 8 % of the study's time (BENCHMARKS.md)."""
    return dataclasses.replace(cfg, target_shuffle="image", eval_every=2 * cfg.eval_every)


# ----------------------------------------------------------------------------------------------
# The tasks (module-level functions: they run in worker processes)
# ----------------------------------------------------------------------------------------------

def task_teacher(name: str) -> dict:
    """Train (or load) the built-in teacher ``name``; its sidecar (config, time, held-out accuracy),
    or for a shipped teacher its card (sha256-checked weights; nothing is trained)."""
    from train.targets.shipped import SHIPPED, verified_path
    from train.targets.teacher import TEACHERS, train_builtin_teacher

    if name in SHIPPED:
        card = json.loads(verified_path(name).with_suffix(".json").read_text())
        return {"name": name, "config": card["recipe"]["config"], **card}
    if name not in TEACHERS:
        return {"name": name}  # a published encoder: nothing to train
    path = train_builtin_teacher(TEACHERS[name], progress=False)
    return {"name": name, **json.loads(Path(path).with_suffix(".json").read_text())}


def task_targets(cfg: dict) -> str:
    """The teacher's tokens of every training image, encoded once into the shared target cache
    (``train.targets.source.shared_target_file``) before the REPA and control runs start: runs started
    side by side would each encode them (2-3 minutes apiece for Fashion-MNIST's 60,000 images)."""
    import torch

    from train.run.loop import data_codec_encoders
    from train.targets.source import TargetSource, shared_target_file

    cfg = TrainConfig.from_dict(cfg)
    dataset, in_memory, _, encoders = data_codec_encoders(cfg, torch.device("cpu"))
    if not (in_memory and encoders):
        return "nothing to cache"  # each run reads its data's tokens as it goes
    path = shared_target_file(encoders, dataset.images, cfg.data.hflip)
    TargetSource(encoders, dataset.images, True, torch.device("cpu"), cache_file=path, progress=False, hflip=cfg.data.hflip)
    return str(path)


def task_evaluator(cfg: dict) -> str:
    """Train (or load) the built-in evaluator and its reference statistics for ``cfg``'s data."""
    from train.evaluation.evaluate import build_training_evaluator

    build_training_evaluator(TrainConfig.from_dict(cfg))
    return "ready"


def task_train(cfg: dict, out: str) -> str:
    """One training run (resumed when ``out`` holds one), evaluated as it goes."""
    from train.run.cli import training_evaluator
    from train.run.loop import train

    cfg = TrainConfig.from_dict(cfg)
    return str(train(cfg, out, progress=False, evaluator=training_evaluator(cfg)))


def _cached_table(part: Path, compute: Callable[[], pd.DataFrame], inputs: list[str]) -> str:
    """``part``'s table (``save_table`` files), computed unless it was computed from the same
    ``inputs`` files (size and modification time: a run retrained in place is recomputed); returns
    its parquet path.  The ``.inputs`` file is written last, so it marks a finished table."""
    from probe.analyses import save_table
    from train.run.checkpoints import atomic_write

    stamp = part.with_suffix(".inputs")
    files = lambda: _key([(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in inputs])  # noqa: E731
    if not (stamp.is_file() and part.with_suffix(".json").is_file() and stamp.read_text() == files()):
        save_table(compute(), part.parent, part.name)  # a missing input fails in here, with its own message
        atomic_write(stamp, lambda tmp: Path(tmp).write_text(files()))
    return str(part.with_suffix(".parquet"))


def task_probe(checkpoints: list[str], seed: int, options: dict, part: str, dataset: str, encoder: str) -> str:
    """Every layer x t of every checkpoint of one run (``training_progress``) against ``encoder``, kept in ``part``."""
    from probe.analyses import training_progress

    return _cached_table(Path(part), lambda: training_progress(checkpoints, dataset, encoders=(encoder,),
                                                               seed=seed, progress=False, **options).assign(seed_run=seed),
                         checkpoints)


def task_projection(checkpoint: str, seed: int, n_images: int, part: str, dataset: str, encoder: str) -> str:
    """REPA's projected tokens vs the teacher's on one final checkpoint, kept in ``part``."""
    from probe.analyses import projection_alignment

    return _cached_table(Path(part), lambda: projection_alignment(checkpoint, dataset, encoder=encoder, n_images=n_images,
                                                                  seed=seed, progress=False).assign(seed_run=seed), [checkpoint])


def task_teachers(checkpoint: str, seed: int, options: dict, part: str, dataset: str, encoders: tuple[str, ...],
                  layer: int) -> str:
    """With several teachers: CKNNA at the aligned block ``layer`` (t = 0; the probes' images, pooling and
    label mode) of one run's last checkpoint against every one of them, kept in ``part``.  The sweep
    (``task_probe``) measures against the first teacher only; against it the two tables agree."""
    from probe.analyses import training_progress

    opts = {**options, "metrics": ("cknna",), "n_train": 0, "layers": (layer,), "ts": (0.0,)}
    return _cached_table(Path(part), lambda: training_progress([checkpoint], dataset, encoders=encoders, seed=seed,
                                                               progress=False, **opts).assign(seed_run=seed), [checkpoint])


def task_tables(probe_parts: list[str], projection_parts: list[str], run_dirs: list[tuple[int, str, str]],
                align_depth: int, out: str, encoder: str, teacher_parts: list[str] | None = None,
                others: tuple[str, ...] = ()) -> str:
    """Stack the parts into ``<out>/tables``: probe and projection tables, with several teachers the
    aligned block's CKNNA against each (``teacher_alignment``), every run's training log, the
    seed-aggregated ``results.md``; and the (first) teacher's sidecar as ``<out>/teacher.json``, with
    several teachers every teacher's (``encoder``, then ``others``) as ``<out>/teachers.json``."""
    from probe.analyses import save_table

    out, teacher = Path(out), task_teacher(encoder)  # cached by now: reads the sidecar
    more = [task_teacher(name) for name in others]  # shipped teachers: their cards
    tables = out / "tables"
    (out / "teacher.json").write_text(json.dumps(teacher, indent=2))
    if more:
        (out / "teachers.json").write_text(json.dumps([teacher, *more], indent=2))
    probe, proj = combine(probe_parts), combine(projection_parts)
    save_table(probe, tables, "probe")
    save_table(proj, tables, "projection_alignment")
    against = combine(teacher_parts) if teacher_parts else None
    if against is not None:
        save_table(against, tables, "teacher_alignment")
    metrics = read_metrics({(seed, run): Path(d) for seed, run, d in run_dirs})
    metrics.to_csv(tables / "training_metrics.csv", index=False)
    live_rows(metrics).to_csv(tables / "live_alignment.csv", index=False)  # logged by the runs (align_every)
    (tables / "results.md").write_text(results_markdown(probe, metrics, teacher, align_depth, proj, against, more) + "\n")
    return str(tables)


def task_figures(tables: str, out: str, what: str, align_depth: int, samples: dict[str, list[str]],
                 conditional: bool = True) -> list[str]:
    """Figures from the saved tables into ``out``: one probe metric's (``what``), or ``"training"``:
    the training curves (no class-accuracy panel for unconditional runs) and the sample grids."""
    from probe import plots

    if what == "training":
        metrics = pd.read_csv(Path(tables) / "training_metrics.csv")
        paths = plots.training_curves(metrics, out, conditional) + plots.sample_grids(samples, out)
        live = Path(tables) / "live_alignment.csv"
        live = pd.read_csv(live) if live.is_file() else pd.DataFrame()
        if not live.empty:
            paths += plots.live_alignment(live, out)
    else:
        probe = pd.read_csv(Path(tables) / "probe.csv", keep_default_na=False, na_values=[""])  # "null" is a label mode
        paths = plots.metric_figures(probe, out, what, layers=(align_depth,))  # all seeds: mean and sd band
    return [str(p) for p in paths]


def task_maps(repa: str, vanilla: str, dataset: str, encoder: str, align: int, deeper: int, seed: int, out: str,
              tables: str, random_init_encoder: bool = False) -> list[str]:
    """What the final checkpoints of one seed see, into ``out``: token PCA maps of REPA and vanilla at
    the aligned and a deeper layer, t = 0 and 0.5, beside the teacher's (``token_pca.png``), and the
    per-patch alignment maps at the aligned layer (``patch_alignment.png``: REPA's projector and a
    held-out ridge map for both runs); their tables (``token_pca.csv``, ``patch_alignment.csv``) in
    ``tables``.  Six images, a fit on 64: a few seconds."""
    from probe import plots
    from probe.extract import image_set
    from probe.patch_alignment import patch_alignment
    from probe.pca import token_pca
    from train.run.checkpoints import atomic_write
    from train.data.datasets import build_dataset
    from train.models.loading import load

    runs = {"REPA": repa, "vanilla": vanilla}
    size = load(repa).cfg.input_size  # the demo's codecs (identity, grey) work on pixels: no downsampling
    shown = image_set(build_dataset(dataset, "val", size=size), 6, seed, f"{dataset}/val")
    fit = image_set(build_dataset(dataset, "train", size=size), 64, seed + 1, f"{dataset}/train")
    kw = dict(seed=seed, random_init_encoder=random_init_encoder, progress=False)
    pcas = {name: token_pca(ckpt, shown, layers=[align, deeper], ts=(0.0, 0.5), encoder=encoder if name == "REPA" else None,
                            fit_images=fit, **kw) for name, ckpt in runs.items()}
    maps = {name: patch_alignment(ckpt, dataset, layers=[align], ts=(0.0, 0.5), encoder=encoder, n_images=len(shown), n_fit=len(fit),
                                  **kw) for name, ckpt in runs.items()}
    for name, table in (("token_pca", pd.concat([r.table().assign(run=n) for n, r in pcas.items()])),
                        ("patch_alignment", pd.concat([r.table().assign(run=n) for n, r in maps.items()]))):
        atomic_write(Path(tables) / f"{name}.csv", lambda tmp, table=table: table.to_csv(tmp, index=False))
    paths = plots.token_pca_runs(pcas, out, "token_pca") + plots.patch_alignment(maps, out, "patch_alignment")
    return [str(p) for p in paths]


def _training_status(out: Path, steps: int) -> Callable[[], str]:
    def status() -> str:
        log = out / "metrics.jsonl"
        try:
            last = json.loads(log.read_text().strip().splitlines()[-1])["step"] if log.is_file() else 0
        except (IndexError, ValueError, KeyError):
            last = 0
        return f"{last}/{steps}"
    return status


def _key(obj: Any) -> str:
    from probe.extract import digest

    return digest(obj)


@dataclass
class Plan:
    """A demo run: its task graph, the run directories by (seed, run), the aligned depth, the
    sample grids of the first seed's runs at every sampled step (the samples figure), and whether the
    runs are conditional (the training curves' class-accuracy panel)."""

    tasks: list[Task]
    run_dirs: dict[tuple[int, str], Path]
    align_depth: int
    samples: dict[str, list[str]]
    conditional: bool = True


def plan(args: argparse.Namespace) -> Plan:
    """The task graph of a demo run (``args``: the command line's seeds, steps, set, out, n_images, n_train)."""
    from probe.analyses import ProbeConfig
    from train.run.cli import as_vanilla
    from train.run.loop import keep_in_series

    args = argparse.Namespace(**{**vars(args), "out": Path(args.out).resolve()})  # part keys: one spelling of each path
    cfgs = {seed: demo_config(seed, args.steps, args.set, getattr(args, "control", False)) for seed in args.seeds}
    cfg0 = cfgs[args.seeds[0]]
    # converged probes: the paper's Adam protocol is far from converged on a few hundred images
    # (README, "Probing"), a standardised logistic regression (lbfgs) is not, and is as fast here
    probe_opts = {"n_images": args.n_images, "n_train": args.n_train, "probe_method": "sklearn",
                  "store": str(args.out / "store")}
    if getattr(args, "metrics", None):  # only when asked: the default's part keys stay as they were
        probe_opts["metrics"] = tuple(args.metrics)
    metrics = ProbeConfig(**probe_opts).metrics  # bad probe settings fail here, not after the training runs
    encoder, dataset = cfg0.encoders[0], cfg0.data.dataset
    tasks = [Task("teacher", task_teacher, (encoder,)), Task("evaluator", task_evaluator, (cfg0.to_dict(),))]
    if cfg0.cache_targets:  # the REPA and control runs read the teacher's tokens from one shared cache
        tasks.append(Task("targets", task_targets, (cfg0.to_dict(),), ("teacher",)))
    run_dirs, probes, training = {}, [], []
    align = cfg0.model.encoder_depth
    for seed, cfg in cfgs.items():
        arms = [("repa", cfg), ("vanilla", as_vanilla(cfg))]
        if getattr(args, "control", False):  # REPA on a random other image's teacher tokens (train.targets.source.image_partners)
            arms.append(("control", control_config(cfg)))
        for run, c in arms:
            out = args.out / f"seed{seed}" / run
            run_dirs[(seed, run)] = out
            # REPA starts as soon as its teacher is loaded (and its tokens cached, when runs share them); its first
            # evaluation finds the reference statistics the evaluator task computed meanwhile (or computes them itself)
            deps = ("evaluator",) if run == "vanilla" else ("targets",) if c.cache_targets else ("teacher",)
            training.append(Task(f"train {run} seed {seed}", task_train, (c.to_dict(), str(out)), deps,
                                 _training_status(out, c.steps)))
            steps = [s for s in range(0, c.steps + 1) if keep_in_series(s, c.ckpt_every, c.ckpt_series) or s == c.steps]
            ckpts = [str(out / "checkpoints" / f"step_{s:07d}.pt") for s in steps]
            stamp = {"checkpoints": ckpts, "config": c.to_dict(), "probe": probe_opts, "seed": seed}
            part = args.out / "parts" / f"probe_seed{seed}_{run}_{_key(stamp)}"
            probes.append(Task(f"probe {run} seed {seed}", task_probe, (ckpts, seed, probe_opts, str(part), dataset, encoder),
                               (f"train {run} seed {seed}", "teacher")))
            if len(cfg0.encoders) > 1:  # the aligned block against every teacher, on the last checkpoint
                part = args.out / "parts" / f"teachers_seed{seed}_{run}_{_key({**stamp, 'checkpoints': ckpts[-1:]})}"
                probes.append(Task(f"teachers {run} seed {seed}", task_teachers,
                                   (ckpts[-1], seed, probe_opts, str(part), dataset, tuple(cfg0.encoders), align),
                                   (f"train {run} seed {seed}", "teacher")))
            if run == "repa":
                part = args.out / "parts" / f"projection_seed{seed}_{_key({**stamp, 'n': args.n_images})}"
                probes.append(Task(f"projection seed {seed}", task_projection,
                                   (ckpts[-1], seed, args.n_images, str(part), dataset, encoder),
                                   (f"train {run} seed {seed}", "teacher")))
    # the longest runs first, so that two workers finish together: REPA, then vanilla, then the control
    # (half the evaluations); seeds in order within each (vanilla starts while the target cache is built)
    tasks += sorted(training, key=lambda t: [f" {arm} " in t.name for arm in ("repa", "vanilla", "control")].index(True))
    parts = {kind: [t.args[3] + ".parquet" for t in probes if t.name.startswith(kind)] for kind in ("probe", "projection", "teachers")}
    tables = Task("tables", task_tables, (parts["probe"], parts["projection"],
                                          [(seed, run, str(d)) for (seed, run), d in run_dirs.items()], align, str(args.out),
                                          encoder, parts["teachers"], tuple(cfg0.encoders[1:])),
                  ("teacher", *(t.name for t in probes)))
    shown = sorted({*range(cfg0.sample_every, cfg0.steps, cfg0.sample_every or cfg0.steps), cfg0.steps})  # steps with grids, not 0
    samples = {run: [str(run_dirs[(args.seeds[0], run)] / "samples" / f"step_{s:07d}.png") for s in shown] for run in RUNS}
    conditional = cfg0.model.class_dropout_prob < 1.0  # every label dropped: the model ignores the label asked for
    figures = [Task(f"figures {what}", task_figures, (str(args.out / "tables"), str(args.out / "figures"), what, align,
                                                      samples, conditional), ("tables",))
               for what in ("training", *metrics)]
    # the short projection and teacher tasks last: they fill the gaps while the last probes finish
    probes.sort(key=lambda t: t.name.startswith(("projection ", "teachers ")))
    s0 = args.seeds[0]
    final = {run: str(run_dirs[(s0, run)] / "checkpoints" / f"step_{cfg0.steps:07d}.pt") for run in RUNS}
    maps = Task("maps", task_maps, (final["repa"], final["vanilla"], dataset, encoder, align,
                                    min(cfg0.model.depth, align + 2), s0, str(args.out / "figures"), str(args.out / "tables")),
                (f"train repa seed {s0}", f"train vanilla seed {s0}", "teacher"))
    return Plan(tasks + probes + [maps, tables] + figures, run_dirs, align, samples, conditional)


# ----------------------------------------------------------------------------------------------
# Tables and figures (main process)
# ----------------------------------------------------------------------------------------------

def read_metrics(run_dirs: dict[tuple[int, str], Path]) -> pd.DataFrame:
    frames = []
    for (seed, run), d in run_dirs.items():
        m = pd.read_json(d / "metrics.jsonl", lines=True)
        frames.append(m.assign(run=run, seed=seed))
    return pd.concat(frames, ignore_index=True)


def combine(paths: list[str]) -> pd.DataFrame:
    """Stack part tables; the JSON sidecar of the first part describes the probe configuration."""
    from probe.analyses import load_table

    frames = [load_table(p) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    df.attrs = frames[0].attrs
    return df


def draw(tables: Path, out: Path, align_depth: int, samples: dict[str, list[str]], conditional: bool = True) -> list[str]:
    """All figures from saved tables, in this process (``--figures-only``): every metric the probe table holds."""
    probe = pd.read_csv(tables / "probe.csv", usecols=["metric", "is_reference"])
    metrics = list(dict.fromkeys(probe.loc[~probe["is_reference"].astype(bool), "metric"]))
    return [p for what in ("training", *metrics)
            for p in task_figures(str(tables), str(out), what, align_depth, samples, conditional)]


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m probe.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=option("out"), default=ROOT / "runs" / "demo")
    ap.add_argument("--figures", type=option("out"), default=ROOT / "figures")
    ap.add_argument("--seeds", type=option("seed"), nargs="+", default=[0],
                    help="training seeds, each a REPA / vanilla pair (default: 0; make extended: 0 1 2)")
    ap.add_argument("--steps", type=option("steps"), help="training steps per run (default: 300, DEMO_SETTINGS)")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="override training fields, e.g. model.class_dropout_prob=1.0 (as repa-train --set)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ap.add_argument("--jobs", type=option("jobs"), default=min(cores, 8),
                    help="worker processes, one thread each (default: the CPU cores, at most 8)")
    ap.add_argument("--n-images", type=option("n_images"), default=256, help="evaluation images probed per checkpoint")
    ap.add_argument("--n-train", type=option("n_train"), default=256, help="images the linear probes are fitted on")
    ap.add_argument("--metrics", nargs="+", default=list(DEMO_METRICS),
                    help=f"probe metrics (default: {' '.join(DEMO_METRICS)}; also cka mutual_knn cds rmsc)")
    ap.add_argument("--control", action="store_true",
                    help="also train the shuffled-target control for every seed: REPA on a random other image's teacher tokens")
    ap.add_argument("--figures-only", action="store_true", help="redraw the figures from the saved (or committed) tables")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        if args.jobs < 1:
            raise UserError(f"--jobs {args.jobs} must be at least 1")
        job = plan(args)  # checks the configuration before anything runs
        tables, figures = args.out / "tables", args.out / "figures"
        if args.figures_only:
            if not (tables / "probe.csv").is_file():  # on a fresh clone: the committed tables
                tables = args.figures / "tables"
            if not (tables / "probe.csv").is_file():
                raise UserError(f"no probe tables in {tables}: run python -m probe.demo without --figures-only first")
            print("== figures", flush=True)
            paths = draw(tables, figures, job.align_depth, job.samples, job.conditional)
            maps = next(t for t in job.tasks if t.name == "maps")
            if all(Path(c).is_file() for c in maps.args[:2]):  # the maps need the final checkpoints
                paths += maps.fn(*maps.args)
        else:
            print(f"== {len(job.tasks)} tasks on {args.jobs} worker process(es): teacher, evaluator, {len(job.run_dirs)} training "
                  "runs, probes, tables, figures", flush=True)
            results = run_graph(job.tasks, args.jobs, say=lambda line: print(line, flush=True))
            paths = [p for t in job.tasks if t.name.startswith("figures ") or t.name == "maps" for p in results[t.name]]
        (args.figures / "tables").mkdir(parents=True, exist_ok=True)
        for name in ("probe.csv", "probe.json", "projection_alignment.csv", "projection_alignment.json", "training_metrics.csv", "results.md",
                     "token_pca.csv", "patch_alignment.csv", "live_alignment.csv", "teacher_alignment.csv", "teacher_alignment.json"):
            if (tables / name).is_file() and (tables / name).resolve() != (args.figures / "tables" / name).resolve():
                shutil.copy(tables / name, args.figures / "tables" / name)
        for p in map(Path, paths):
            if p.suffix == ".png":
                shutil.copy(p, args.figures / p.name)
        print((tables / "results.md").read_text())
        print(f"done in {time.time() - t0:.0f} s: tables in {tables}, figures in {args.figures}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted: run the same command again to resume (finished work is kept)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
