"""Model-vs-model representational similarity: every layer of one checkpoint against every layer of another.

:func:`model_similarity` extracts both models' hidden states (``probe.extract.extract``) on the SAME
images with the SAME seed, so each image gets the same noise in both (``probe.extract.image_noise``
draws it per image index), and scores every ``layer_a x layer_b x t`` pair with the alignment
metrics of ``probe.analyses`` (``cka``, ``cknna``, ``mutual_knn``) after ``probe.metrics.prepare``
(clip at the ``q`` quantile, L2-normalise; recorded as ``preprocessing``).  A model against itself
gives the classic layer x layer CKA map (Kornblith et al. 2019); REPA against vanilla shows which
layers the alignment moved.  With ``pooling="tokens"`` whole token maps are compared (each image's
tokens concatenated; model B's resampled to model A's grid when they differ).

The table has one row per ``layer_a x layer_b x t x metric`` with the provenance columns of
:data:`COLUMNS` (the conventions of ``probe.analyses``: checkpoint, step, pooling, preprocessing,
k, CKNNA mode, seed, images, label, dataset, codec, code version) and the full configuration in
``attrs["probe"]``; ``probe.analyses.save_table`` writes it, ``probe.plots.similarity_heatmap``
draws it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from probe.analyses import ALIGNMENT, Checkpoint, ProbeConfig, _image_sets, _load_model, _maybe_save, _run_name
from probe.extract import extract, model_provenance, resolve_layers
from probe.metrics import prepare
from probe.run_defaults import resolve as resolve_defaults
from train.targets.encoders import resample_tokens
from train.errors import UserError
from train.data.latents import build_codec
from train.run.loop import git_revision
from train.models.loading import DiffusionTransformer

COLUMNS = ["run_a", "checkpoint_a", "step_a", "model_a", "run_b", "checkpoint_b", "step_b", "model_b", "weights",
           "layer_a", "layer_b", "t", "model_t_a", "model_t_b", "metric", "value", "pooling", "preprocessing", "k",
           "cknna_mode", "seed", "n_images", "label", "dataset", "codec", "code_version"]


def model_similarity(ckpt_a: Checkpoint, ckpt_b: Checkpoint, layers_a: str | Sequence[int] = "all",
                     layers_b: str | Sequence[int] = "all", ts: Sequence[float] = (0.0,),
                     metrics: Sequence[str] = ("cka", "cknna"), pooling: str = "mean",
                     dataset: str | tuple[Any, Any] | Any = None, n_images: int = 500, seed: int = 0,
                     out: str | os.PathLike | None = None, config: ProbeConfig | None = None,
                     **options: Any) -> pd.DataFrame:
    """Every ``layers_a`` of ``ckpt_a`` against every ``layers_b`` of ``ckpt_b`` at each t (see the module docstring).

    ``ckpt_a`` / ``ckpt_b``: checkpoint paths or loaded models (the same one twice for a self-similarity
    map).  ``dataset``: a dataset name (``train.data.datasets``, split ``options["split"]``, default ``val``;
    images at model A's input size) or anything ``probe.extract.image_set`` takes (a dataset, uint8
    images, an ``(images, labels)`` pair, an ImageSet).  ``options`` override the other
    ``ProbeConfig`` fields (``k``, ``cknna_mode``, ``q``, ``normalize``, ``label``, ``weights``,
    ``codec``, ``batch_size``, ``device``, ``store``, ``progress``); with ``out`` the table is saved
    there as ``similarity.{parquet,csv,json}``.
    """
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in ALIGNMENT]
    if bad or not metrics:
        raise UserError(f"unknown similarity metric {bad[0] if bad else None!r}: use one or more of {', '.join(ALIGNMENT)}")
    cfg = dataclasses.replace(config or ProbeConfig(), **{"progress": False, **options}, ts=tuple(ts), metrics=metrics,
                              pooling=pooling, n_images=n_images, seed=seed, n_train=0, layers="all")
    for ckpt in (ckpt_a, ckpt_b):
        if not isinstance(ckpt, DiffusionTransformer) and not Path(ckpt).is_file():
            raise UserError(f"checkpoint {ckpt} does not exist: check the path")
    model_a = _load_model(ckpt_a, cfg)
    cfg, dataset, _ = resolve_defaults(cfg, model_a, dataset)
    codec = build_codec(cfg.codec).to(cfg.device)
    model_b = model_a if ckpt_b is ckpt_a else _load_model(ckpt_b, cfg)
    chosen = {"a": resolve_layers(model_a, layers_a), "b": resolve_layers(model_b, layers_b)}
    if model_b.cfg.input_size != model_a.cfg.input_size or model_b.cfg.in_channels != model_a.cfg.in_channels:
        raise UserError(f"{model_a.cfg.name} takes {model_a.cfg.in_channels}x{model_a.cfg.input_size}^2 inputs but {model_b.cfg.name} "
                        f"{model_b.cfg.in_channels}x{model_b.cfg.input_size}^2: compare models trained on the same images and codec")
    data = dataset if isinstance(dataset, str) else (None, dataset)
    eval_set, _ = _image_sets(data, cfg, model_a, codec)
    if len(eval_set) < 4:
        raise UserError(f"only {len(eval_set)} images: CKA and CKNNA need at least 4 (pass more images)")
    kw = dict(ts=cfg.ts, codec=codec, pooling=cfg.pooling, label=cfg.label, seed=cfg.seed, batch_size=cfg.batch_size,
              progress=cfg.progress)
    store = lambda m: str(Path(cfg.store) / "features") if cfg.store and hasattr(m, "source") else None  # noqa: E731
    feats_a = extract(model_a, eval_set, layers=chosen["a"], store=store(model_a), **kw)
    feats_b = extract(model_b, eval_set, layers=chosen["b"], store=store(model_b), **kw)
    grid = math.isqrt(model_a.cfg.num_tokens)

    def ready(values: torch.Tensor, resample: bool) -> torch.Tensor:  # (N, D) or (N, T, D) -> prepared (N, D')
        if resample and values.ndim == 3:
            values = resample_tokens(values, grid)
        return prepare(values.flatten(1).to(cfg.device), cfg.q, cfg.normalize)

    prov_a, prov_b = feats_a.provenance, feats_b.provenance
    rows = []
    for ti, t in enumerate(cfg.ts):
        a = {layer: ready(feats_a.get(layer, t), False) for layer in feats_a.layers}
        b = {layer: ready(feats_b.get(layer, t), True) for layer in feats_b.layers}
        for la in feats_a.layers:
            for lb in feats_b.layers:
                rows += [{"layer_a": la, "layer_b": lb, "t": t, "model_t_a": prov_a["model_ts"][ti], "model_t_b": prov_b["model_ts"][ti],
                          "metric": m, "value": ALIGNMENT[m](a[la], b[lb], cfg)} for m in metrics]
    common = {"run_a": _run_name(ckpt_a), "checkpoint_a": prov_a["checkpoint"], "step_a": prov_a["step"], "model_a": prov_a["model"],
              "run_b": _run_name(ckpt_b), "checkpoint_b": prov_b["checkpoint"], "step_b": prov_b["step"], "model_b": prov_b["model"],
              "weights": cfg.weights, "pooling": cfg.pooling, "preprocessing": cfg.preprocessing, "k": cfg.k,
              "cknna_mode": cfg.cknna_mode, "seed": cfg.seed, "n_images": len(eval_set), "label": cfg.label,
              "dataset": eval_set.name, "codec": codec.name, "code_version": git_revision()}
    df = pd.DataFrame([{**common, **row} for row in rows], columns=COLUMNS)
    df.attrs["probe"] = {"analysis": "model_similarity", "config": dataclasses.asdict(cfg),
                         "models": {"a": {**model_provenance(model_a), "layers": chosen["a"]},
                                    "b": {**model_provenance(model_b), "layers": chosen["b"]}},
                         "data_identity": eval_set.identity, "code_version": common["code_version"], "torch": torch.__version__}
    return _maybe_save(df, out, "similarity")
