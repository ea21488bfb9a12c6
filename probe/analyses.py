"""The REPA paper's alignment analyses as tidy pandas tables.

* :func:`layer_sweep` -- one checkpoint, every layer x noise level (Fig. 2a linear probe, 2b CKNNA);
* :func:`training_progress` -- a checkpoint series (Fig. 2c; plots take the max over layers);
* :func:`compare` -- named checkpoints, e.g. REPA vs vanilla (Fig. 3), several encoders at once.

Every table has one row per run x checkpoint x layer x t x metric x target with the provenance
columns of :data:`COLUMNS`.  Alignment metrics (``probe.metrics``) compare the model's features of
the evaluation images with the target encoder's, both passed through ``probe.metrics.prepare``
(clip at the ``q`` quantile, L2-normalise; recorded as ``preprocessing``).  The linear probe
(``target = "labels"``) is fitted on ``n_train`` images of the training split and scored on the
evaluation images; each encoder's own probe accuracy is a reference row (``is_reference``,
``layer = -1``).  With ``pooling="tokens"`` the metrics compare whole token maps (each image's
tokens concatenated, the encoder's resampled to the model's grid) and probes read the token mean.
The opt-in token-level metrics (``probe.tokens``: ``cknna_token``, and iREPA's spatial ``lds``,
``cds``, ``rmsc`` of the model's tokens and, as reference rows, of each encoder's) come from the
same extraction, reduced batch by batch; their rows have ``pooling = "tokens"``.
:func:`save_table` writes parquet, CSV and a JSON sidecar with the full configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from probe.extract import (DEFAULT_TS, LABELS, POOLINGS, ImageSet, _check_choice, _model_t, check_ts, conditioning,
                           encoder_features, extract, image_noise, image_set, labelled, model_provenance, resolve_layers)
from probe.config import ALIGNMENT, METRICS, ProbeConfig  # noqa: F401 (re-exported)
from probe.linear import probe_accuracy
from probe.metrics import cka, cknna, mutual_knn, prepare
from probe.tokens import TokenPlan, encoder_tokens, reference_rows, token_plan, token_rows
from probe.run_defaults import projector_of, resolve as resolve_defaults
from train.data.datasets import build_dataset
from train.targets.encoders import ENCODERS, Encoder, load_encoder, repa_cache_dir, resample_tokens
from train.run.checkpoints import atomic_write
from train.errors import UserError
from train.data.latents import Codec, build_codec
from train.run.config import TrainConfig
from train.run.loop import git_revision, training_targets
from train.objectives.interpolants import interpolate
from train.models.loading import DiffusionTransformer, load, predict

Checkpoint = str | os.PathLike | torch.nn.Module  # a path, or a loaded DiffusionTransformer / MMDiT


COLUMNS = ["run", "checkpoint", "step", "flavour", "model", "weights", "layer", "t", "model_t", "metric", "target",
           "value", "is_reference", "pooling", "preprocessing", "k", "cknna_mode", "seed", "n_images", "n_train",
           "label", "dataset", "codec", "probe_method", "code_version"]
WRITES_TABLES = ("write one with repa-probe sweep --checkpoint CKPT --out DIR (DIR/layer_sweep.parquet), "
                 "repa-probe progress --run RUN --out DIR or repa-probe compare --run RUN --out DIR")


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint series of a training run: ``<run>/checkpoints/step_*.pt`` in step order."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "checkpoints").glob("step_*.pt")) or sorted(run_dir.glob("step_*.pt"))
    if not found:
        raise UserError(f"no step_*.pt checkpoints in {run_dir}/checkpoints: pass a run directory written by repa-train or a list of checkpoints")
    return found


def _run_name(checkpoint: Checkpoint) -> str:
    """A run label: the run directory of ``<run>/checkpoints/<file>``, else the file's stem."""
    if isinstance(checkpoint, torch.nn.Module):
        return "model"
    path = Path(checkpoint)
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def _load_model(checkpoint: Checkpoint, cfg: ProbeConfig) -> DiffusionTransformer:
    if isinstance(checkpoint, torch.nn.Module):
        model = checkpoint.to(cfg.device).eval()
    else:
        model = load(checkpoint, weights=cfg.weights, device=cfg.device)
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # its features would be NaN, or worse, plausible numbers
        what = "the model" if isinstance(checkpoint, torch.nn.Module) else f"checkpoint {checkpoint} ({cfg.weights} weights)"
        raise UserError(f"{what} holds NaN/inf values ({bad[0]}): probe an earlier checkpoint of the run (the last good one)")
    return model


def _image_sets(dataset: str | tuple[Any, Any], cfg: ProbeConfig, model: DiffusionTransformer,
                codec: Codec) -> tuple[ImageSet, ImageSet | None]:
    """Evaluation images and (when probing) linear-probe training images."""
    if isinstance(dataset, str):
        kw: dict[str, Any] = {"size": cfg.image_size or model.cfg.input_size * codec.downsample}
        if cfg.data_root:
            kw["root"] = cfg.data_root
        eval_data = build_dataset(dataset, cfg.split, **kw)
        train_data = build_dataset(dataset, cfg.train_split, **kw) if cfg.probing else None
        names = (f"{dataset}/{cfg.split}", f"{dataset}/{cfg.train_split}")
    else:
        train_data, eval_data = dataset
        names = (None, None)
    eval_set = image_set(eval_data, cfg.n_images, cfg.seed, names[0])
    if any(m in ALIGNMENT for m in cfg.metrics) and len(eval_set) <= cfg.k:
        raise UserError(f"only {len(eval_set)} evaluation images for k={cfg.k}: pass more images or a smaller k")
    train_set = labelled(image_set(train_data, cfg.n_train, cfg.seed, names[1])) if cfg.probing else None
    return eval_set, train_set


def _load_encoders(encoders: Sequence[str | Encoder], cfg: ProbeConfig) -> list[Encoder]:
    """Encoders by name (``cfg.encoder_weights[i]`` for the i-th; ``""`` = default weights).
    Random-init encoders are drawn from ``cfg.seed``, so they are reproducible and cacheable."""
    if len(cfg.encoder_weights) > len(encoders):
        raise UserError(f"{len(cfg.encoder_weights)} encoder weights for {len(encoders)} encoders: pass one path per encoder ('' for the default)")
    loaded = []
    for i, enc in enumerate(encoders):
        if isinstance(enc, str):
            weights = cfg.encoder_weights[i] if i < len(cfg.encoder_weights) else ""
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed)
                enc = load_encoder(enc, weights or None, device=cfg.device, random_init=cfg.random_init_encoder)
            if cfg.random_init_encoder:
                enc.provenance["init_seed"] = cfg.seed
        loaded.append(enc)
    return loaded


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------

def _probe_input(values: Tensor) -> Tensor:
    """(L, T, N, D) or (L, T, N, tokens, D) -> (L * T, N, D) probe features (token mean)."""
    return (values.mean(-2) if values.ndim == 5 else values).flatten(0, 1)


def _targets(encoders: list[Encoder], eval_set: ImageSet, train_set: ImageSet | None, cfg: ProbeConfig,
             plan: TokenPlan | None) -> tuple[dict, list[dict]]:
    """Encoder features {name: (eval, train or None, token values or None)} and their reference rows
    (linear probe; spatial metrics)."""
    cache = Path(cfg.store) / "encoders" if cfg.store else repa_cache_dir() / "encoder-features"
    kw = dict(pooling=cfg.pooling, batch_size=cfg.batch_size, cache_dir=cache, progress=cfg.progress)
    targets, rows = {}, []
    for enc in encoders:
        feats = encoder_features(enc, eval_set, **kw)
        train = encoder_features(enc, train_set, **kw) if train_set is not None else None
        tokens = encoder_tokens(enc, eval_set, plan, cfg.batch_size, cache, cfg.progress) if plan is not None else None
        targets[enc.name] = (feats, train, tokens)
        rows += reference_rows(enc.name, tokens) if tokens is not None else []
        if train is not None:
            acc = _probe(_probe_input(train[None, None]), train_set.labels(), _probe_input(feats[None, None]), eval_set.labels(), cfg)
            rows.append({"layer": -1, "metric": "linear_probe", "target": enc.name, "value": acc[0].item(), "is_reference": True})
    return targets, rows


def _probe(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, cfg: ProbeConfig) -> Tensor:
    dev = cfg.device
    steps = cfg.probe_epochs * math.ceil(x_train.shape[-2] / cfg.probe_batch_size)
    if cfg.probe_method == "torch" and steps < 500:
        warnings.warn(f"linear probes get only {steps} optimiser steps ({cfg.probe_epochs} epochs of {x_train.shape[-2]} images at "
                      f"batch {cfg.probe_batch_size}) and may not converge: pass a smaller probe_batch_size (--probe-batch-size) "
                      "or probe_method='sklearn'", stacklevel=3)
    return probe_accuracy(x_train.to(dev), y_train, x_test.to(dev), y_test, method=cfg.probe_method,
                          epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size, lr=cfg.probe_lr, seed=cfg.seed)


def _measure(model: DiffusionTransformer, eval_set: ImageSet, train_set: ImageSet | None, targets: dict,
             codec: Codec, cfg: ProbeConfig, plan: TokenPlan | None) -> list[dict]:
    """Rows of one model: alignment metrics per layer x t x target, linear probes per layer x t, and
    the token-level metrics of ``plan``."""
    store = str(Path(cfg.store) / "features") if cfg.store and hasattr(model, "source") else None
    kw = dict(ts=cfg.ts, layers=cfg.layers, codec=codec, pooling=cfg.pooling, label=cfg.label, seed=cfg.seed,
              batch_size=cfg.batch_size, store=store, progress=cfg.progress)
    if plan is not None and model.cfg.num_tokens != plan.grid**2:
        raise UserError(f"{model.cfg.name} has {model.cfg.num_tokens} tokens where the first checkpoint has {plan.grid**2}: "
                        "token-level metrics need every checkpoint of an analysis on one token grid (probe them separately)")
    feats = extract(model, eval_set, **kw, tokens=plan)
    prov = feats.provenance
    grid = math.isqrt(model.cfg.num_tokens)
    base = {key: prov[key] for key in ("checkpoint", "step", "flavour", "model", "weights")}
    cells = [{**base, "layer": layer, "t": t, "model_t": prov["model_ts"][ti], "is_reference": False}
             for layer in feats.layers for ti, t in enumerate(feats.ts)]
    rows = []
    wanted = [m for m in cfg.metrics if m in ALIGNMENT]
    for name, (target, _, _) in (targets.items() if wanted else ()):
        b = target if cfg.pooling == "mean" else resample_tokens(target, grid)
        b = prepare(b.flatten(1).to(cfg.device), cfg.q, cfg.normalize)  # token maps: (N, T * D)
        for cell in cells:
            a = prepare(feats.get(cell["layer"], cell["t"]).flatten(1).to(cfg.device), cfg.q, cfg.normalize)
            rows += [{**cell, "metric": m, "target": name, "value": ALIGNMENT[m](a, b, cfg)} for m in wanted]
    if plan is not None:
        rows += token_rows(feats, cells, {name: tokens for name, (_, _, tokens) in targets.items()}, cfg)
    if train_set is not None:
        train = extract(model, train_set, **kw)
        acc = _probe(_probe_input(train.values), train.labels, _probe_input(feats.values), feats.labels, cfg)
        rows += [{**cell, "metric": "linear_probe", "target": "labels", "value": a.item()} for cell, a in zip(cells, acc)]
    return rows


def _analyse(runs: Sequence[tuple[str, Checkpoint]], dataset: str | tuple[Any, Any], encoders: Sequence[str | Encoder],
             config: ProbeConfig | None, options: dict) -> pd.DataFrame:
    """Run every checkpoint of ``runs`` against shared images and encoder features."""
    cfg = dataclasses.replace(config or ProbeConfig(), **options)
    for _, ckpt in runs:
        if not isinstance(ckpt, torch.nn.Module) and not Path(ckpt).is_file():
            raise UserError(f"checkpoint {ckpt} does not exist: check the path")
    model = _load_model(runs[0][1], cfg)
    cfg, dataset, encoders = resolve_defaults(cfg, model, dataset or cfg.dataset, encoders)
    for enc in encoders:
        if isinstance(enc, str) and enc not in ENCODERS:
            raise UserError(f"unknown encoder {enc!r}: choose one of {', '.join(ENCODERS)}")
    codec = build_codec(cfg.codec).to(cfg.device)
    resolve_layers(model, cfg.layers)  # fail before any encoding
    eval_set, train_set = _image_sets(dataset, cfg, model, codec)
    plan = token_plan(cfg, len(eval_set), model.cfg.num_tokens)  # None unless a token-level metric is asked for
    loaded = _load_encoders(encoders, cfg)
    targets, rows = _targets(loaded, eval_set, train_set, cfg, plan)
    for i, (run, ckpt) in enumerate(runs):
        model = _load_model(ckpt, cfg) if i else model
        rows += [{"run": run, **row} for row in _measure(model, eval_set, train_set, targets, codec, cfg, plan)]
    common = {"pooling": cfg.pooling, "preprocessing": cfg.preprocessing, "k": cfg.k, "cknna_mode": cfg.cknna_mode,
              "seed": cfg.seed, "n_images": len(eval_set), "n_train": len(train_set) if train_set else 0,
              "label": cfg.label, "dataset": eval_set.name, "codec": codec.name, "probe_method": cfg.probe_method,
              "code_version": git_revision()}
    df = pd.DataFrame([{**common, **row} for row in rows], columns=COLUMNS)
    df.attrs["probe"] = {
        "config": dataclasses.asdict(cfg),
        "runs": {run: model_provenance(c)["checkpoint"] if isinstance(c, torch.nn.Module) else str(c) for run, c in runs},
        "encoders": [enc.provenance for enc in loaded], "train_dataset": train_set.name if train_set else None,
        "code_version": common["code_version"], "torch": torch.__version__,
    }
    return df


# ----------------------------------------------------------------------------------------------
# Public analyses
# ----------------------------------------------------------------------------------------------

def layer_sweep(checkpoint: Checkpoint, dataset: str | tuple[Any, Any] | None = None,
                encoders: Sequence[str | Encoder] | None = None, out: str | os.PathLike | None = None,
                config: ProbeConfig | None = None, **options: Any) -> pd.DataFrame:
    """Every layer x noise level of one checkpoint against ``encoders`` (REPA Fig. 2a/2b).

    ``dataset``: a dataset name (``train.data.datasets``; evaluation and probe-training splits from the
    config) or a ``(train_images, eval_images)`` pair of anything ``probe.extract.image_set`` takes;
    ``dataset``, ``encoders`` (and ``config.codec``) left ``None`` are the checkpoint's own
    (:mod:`probe.run_defaults`).
    ``options`` override :class:`ProbeConfig` fields (``ts=``, ``layers=``, ``k=``, ...); with
    ``out`` the table is saved there as ``layer_sweep.{parquet,csv,json}``.
    """
    df = _analyse([(_run_name(checkpoint), checkpoint)], dataset, encoders, config, options)
    return _maybe_save(df, out, "layer_sweep")


def training_progress(checkpoints: str | os.PathLike | Sequence[Checkpoint], dataset: str | tuple[Any, Any] | None = None,
                      encoders: Sequence[str | Encoder] | None = None, out: str | os.PathLike | None = None,
                      config: ProbeConfig | None = None, **options: Any) -> pd.DataFrame:
    """A checkpoint series (a run directory or a list) measured like :func:`layer_sweep` (Fig. 2c)."""
    series = run_checkpoints(checkpoints) if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    df = _analyse([(_run_name(c), c) for c in series], dataset, encoders, config, options)
    return _maybe_save(df, out, "training_progress")


def compare(checkpoints: Mapping[str, Checkpoint] | str | os.PathLike, dataset: str | tuple[Any, Any] | None = None,
            encoders: Sequence[str | Encoder] | None = None, out: str | os.PathLike | None = None,
            config: ProbeConfig | None = None, **options: Any) -> pd.DataFrame:
    """Named checkpoints side by side, e.g. ``{"REPA": ..., "vanilla": ...}`` (Fig. 3).

    A directory written by ``repa-train --side-by-side`` stands for ``{name: <dir>/<name>/checkpoints/latest.pt}``.
    """
    if isinstance(checkpoints, (str, os.PathLike)):
        root = Path(checkpoints)
        checkpoints = {d.name: d / "checkpoints" / "latest.pt" for d in sorted(root.glob("*")) if (d / "checkpoints" / "latest.pt").is_file()}
        if not checkpoints:
            raise UserError(f"no <name>/checkpoints/latest.pt under {root}: pass a side-by-side run directory or NAME=CHECKPOINT pairs")
    df = _analyse(list(checkpoints.items()), dataset, encoders, config, options)
    return _maybe_save(df, out, "compare")


def projection_alignment(checkpoint: Checkpoint, dataset: str | tuple[Any, Any] | None = None, encoder: str | None = None,
                         out: str | os.PathLike | None = None, labels: Sequence[str] = ("real", "null"),
                         weights: Sequence[str] = ("ema", "model"), baseline_images: int = 2000,
                         config: ProbeConfig | None = None, **options: Any) -> pd.DataFrame:
    """How REPA's projected tokens match the encoder's, with the real class label and with the null one.

    The value is the training objective itself (REPA eq. 8 with cosine similarity): the mean over
    images and patch tokens of ``cos(h_phi(x_t at the aligned layer), y*)``, where ``y*`` are the
    encoder's patch tokens of the clean image at the model's grid, here for every noise level in
    ``ts`` (``options``), label mode and weight set of one REPA checkpoint.  A model that predicts
    the targets from the image scores about the same with both labels; one that predicts them
    from the class label it is conditioned on loses most of the cosine with the null label, which
    is what the null-label probes (``layer_sweep``) see.  Rows: ``weights, label, t, model_t,
    metric="projection_cosine", value`` plus the provenance columns.

    Two baselines put the values in scale (``weights="baseline"``, no t), both predictors that never
    look at the image, fitted on ``baseline_images`` images of the training split (0: none):
    ``label="null"``: the per-position mean token; ``label="real"``: the per-class, per-position
    mean token (what a model that reads only the class label can at best predict).

    The targets are those the run trained on: with the run's ``TrainConfig.target_norm = "spatial"``
    (from the checkpoint; a model passed in memory may carry it as ``model.train_config``) the
    encoder's tokens are spatially normalised (iREPA) before the cosine and the baselines, and the
    rows record ``target_norm`` and ``target_norm_gamma``.  The run's own projector (MLP or conv) is used.
    """
    cfg = dataclasses.replace(config or ProbeConfig(), **options, metrics=("linear_probe",), n_train=0)
    if not isinstance(checkpoint, torch.nn.Module) and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist: check the path")
    for label in labels:
        _check_choice(label, LABELS, "label mode")
    models = {w: _load_model(checkpoint, dataclasses.replace(cfg, weights=w)) for w in weights}
    model = next(iter(models.values()))
    cfg, dataset, (default_encoder, *_) = resolve_defaults(cfg, model, dataset or cfg.dataset)
    encoder = encoder or default_encoder
    codec = build_codec(cfg.codec).to(cfg.device)
    if not model.projectors:
        raise UserError(f"{_run_name(checkpoint)} has no projector (a vanilla or published SiT/DiT checkpoint): pass a REPA checkpoint")
    size = cfg.image_size or model.cfg.input_size * codec.downsample
    eval_set, _ = _image_sets(dataset, cfg, model, codec)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        enc = load_encoder(encoder, (cfg.encoder_weights or ("",))[0] or None, grid=math.isqrt(model.cfg.num_tokens),
                           device=cfg.device, random_init=cfg.random_init_encoder)
    run_cfg = TrainConfig.from_dict(getattr(model, "train_config", None) or {"target_norm": "none"})
    head = projector_of(model, encoder)  # the projector trained against this encoder (one per teacher)

    def trained_on(x: Tensor) -> Tensor:  # the targets the run trained on: (B, 3, H, W) -> (B, T, z_dim)
        return training_targets([enc(x).float()], run_cfg)[0]

    means = _mean_tokens(trained_on, dataset, cfg, baseline_images, size, model.cfg.num_classes) if baseline_images else None
    shape = (model.cfg.in_channels, model.cfg.input_size, model.cfg.input_size)
    sums = {(w, label, t): 0.0 for w in models for label in labels for t in cfg.ts}
    blind = {"null": 0.0, "real": 0.0}
    cos = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        for idx, imgs, labs in eval_set.batches(cfg.batch_size):                            # the encoder runs once per image
            target = trained_on(imgs.to(cfg.device))                                         # (B, T, z_dim)
            x = codec.encode(imgs, sample=False).to(cfg.device)                              # (B, C, H, W)
            noise = image_noise(idx, shape, cfg.seed).to(cfg.device)
            for (w, label, t) in sums:
                y = conditioning(models[w], eval_set, idx, labs, label, cfg.device)
                z = predict(models[w], interpolate(x, noise, t), t, y, head=False, project=True).zs[head]
                sums[(w, label, t)] += cos(z.float(), target, dim=-1).mean(1).sum().item()       # (B, T) -> ()
            if means is not None:
                overall, per_class = (m.to(cfg.device) for m in means)
                blind["null"] += cos(target, overall.expand_as(target), dim=-1).mean(1).sum().item()
                blind["real"] += cos(target, per_class[labs.to(cfg.device)], dim=-1).mean(1).sum().item()
    common = {"run": _run_name(checkpoint), **{k: model_provenance(model)[k] for k in ("checkpoint", "step", "flavour", "model")},
              "metric": "projection_cosine", "target": enc.name, "projector": head, "dataset": eval_set.name, "n_images": len(eval_set),
              "seed": cfg.seed, "codec": codec.name, "layer": model.cfg.encoder_depth, "code_version": git_revision(),
              "target_norm": run_cfg.target_norm,
              "target_norm_gamma": run_cfg.target_norm_gamma if run_cfg.target_norm != "none" else float("nan")}
    rows = [{**common, "weights": w, "label": label, "t": t, "model_t": _model_t(model, t), "value": total / len(eval_set)}
            for (w, label, t), total in sums.items()]
    if means is not None:
        rows += [{**common, "weights": "baseline", "label": label, "t": float("nan"), "value": total / len(eval_set),
                  "n_train": baseline_images} for label, total in blind.items()]
    df = pd.DataFrame(rows)
    df.attrs["probe"] = {"config": dataclasses.asdict(cfg), "encoder": enc.provenance, "checkpoint": str(checkpoint),
                         "code_version": git_revision(), "torch": torch.__version__}
    return _maybe_save(df, out, "projection_alignment")


def _mean_tokens(enc: Encoder, dataset: str | tuple[Any, Any], cfg: ProbeConfig, n: int, size: int,
                 num_classes: int) -> tuple[Tensor, Tensor]:
    """The encoder's mean token per position (T, D) and per class and position (C, T, D) over ``n``
    images of the training split: the image-blind predictions of :func:`projection_alignment` (a class
    absent from those images gets the overall mean)."""
    if isinstance(dataset, str):
        kw: dict[str, Any] = {"size": size, **({"root": cfg.data_root} if cfg.data_root else {})}
        train = image_set(build_dataset(dataset, cfg.train_split, **kw), n, cfg.seed, f"{dataset}/{cfg.train_split}")
    else:
        train = image_set(dataset[0], n, cfg.seed)
    total, per_class, counts = None, {}, {}
    with torch.no_grad():
        for _, x, y in train.batches(cfg.batch_size):
            tokens = enc(x.to(cfg.device)).float().cpu()                                     # (B, T, D)
            total = tokens.sum(0) if total is None else total + tokens.sum(0)
            for c in y.unique().tolist():
                sel = tokens[y == c].sum(0)
                per_class[c] = per_class.get(c, 0) + sel
                counts[c] = counts.get(c, 0) + int((y == c).sum())
    overall = total / len(train)
    classes = range(max(num_classes, max(per_class) + 1))
    return overall, torch.stack([per_class[c] / counts[c] if c in per_class else overall for c in classes])


def save_table(df: pd.DataFrame, out: str | os.PathLike, name: str) -> list[Path]:
    """Write ``<out>/<name>.parquet``, ``.csv`` and ``.json`` (``df.attrs["probe"]``: the full config)."""
    out = Path(out)
    return [
        atomic_write(out / f"{name}.parquet", df.to_parquet),
        atomic_write(out / f"{name}.csv", lambda tmp: df.to_csv(tmp, index=False)),
        atomic_write(out / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(df.attrs.get("probe", {}), indent=2, default=str))),
    ]


def load_table(path: str | os.PathLike) -> pd.DataFrame:
    """A table written by :func:`save_table` (parquet or CSV), sidecar config in ``attrs["probe"]``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"table {path} does not exist: pass a .parquet or .csv written by repa-probe")
    if path.suffix not in (".parquet", ".csv"):
        raise UserError(f"table {path} is not .parquet or .csv: pass a table written by repa-probe")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False, na_values=[""])
    except Exception as e:  # noqa: BLE001 - whatever the reader says, the file is not a table: one line
        raise UserError(f"table {path} is not a readable {path.suffix[1:]} table ({type(e).__name__}): {WRITES_TABLES}") from None
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        df.attrs["probe"] = json.loads(sidecar.read_text())
    return df


def _maybe_save(df: pd.DataFrame, out: str | os.PathLike | None, name: str) -> pd.DataFrame:
    if out is not None:
        save_table(df, out, name)
    return df
