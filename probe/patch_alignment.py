"""Per-patch alignment maps: where in an image a model's tokens agree with the teacher's.

For each shown image and patch ``p``, the cosine between the teacher's token ``y*_p`` (the target
encoder's patch tokens of the clean image at the model's grid, as the run trained on them:
spatially normalised when the run's ``TrainConfig.target_norm = "spatial"``) and a prediction of it
from the model's tokens at noise level t:

* ``method="projector"`` (REPA checkpoints): the run's own projector output at the aligned block,
  ``h_phi(h_t)_p`` (``train.models.loading.predict(..., project=True).zs[i]``, ``i`` the projector trained
  against the teacher, ``probe.run_defaults.projector_of``).  The mean of a map over its patches and images
  is exactly ``probe.analyses.projection_alignment``'s ``projection_cosine`` (REPA eq. 8 with cosine
  similarity) for the same images, seed, weights and label mode;
* ``method="ridge"`` (any checkpoint, vanilla too): a linear map from the layer's tokens to the
  teacher's, fitted by closed-form ridge regression (:func:`ridge_fit`) on the tokens of
  ``fit_images`` (every patch of every fit image is one sample) and evaluated on the shown images,
  which the fit never saw.  The penalty is ``alpha = ridge * tr(Xc^T Xc) / D`` (``ridge`` times the
  mean eigenvalue of the centred token covariance, so one ``ridge`` means the same for any width;
  the default 1e-2 shrinks the directions below 1 % of the mean variance); both are recorded.

Maps are ``(N, g, g)`` with patch ``row * g + col`` at ``(row, col)``.  :func:`patch_alignment`
returns a :class:`PatchAlignment` (numpy arrays, a tidy table with provenance); ``probe.plots.
patch_alignment`` draws it and ``repa-probe patch-align`` writes ``patch_alignment.{npz,csv,json}``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from probe.analyses import Checkpoint, ProbeConfig, _load_model, _run_name
from probe.extract import (LABELS, ImageSet, _check_choice, _model_t, check_ts, conditioning, image_noise, image_set,
                           model_provenance, resolve_layers)
from probe.run_defaults import projector_of, resolve as resolve_defaults
from train.run.checkpoints import atomic_write
from train.run.config import TrainConfig
from train.data.datasets import build_dataset
from train.targets.encoders import ENCODERS, load_encoder
from train.errors import UserError
from train.objectives.interpolants import interpolate
from train.data.latents import build_codec
from train.run.loop import git_revision, training_targets
from train.models.loading import DiffusionTransformer, predict

METHODS = ("projector", "ridge")


# ----------------------------------------------------------------------------------------------
# Pure tensor functions
# ----------------------------------------------------------------------------------------------

def patch_cosine(pred: Tensor, target: Tensor) -> Tensor:
    """``cos(pred_p, target_p)`` per image and patch: (N, T, D) x (N, T, D) -> (N, T).

    The summand of REPA's projection loss (Yu et al. 2025, eq. 8, ``sim`` = cosine); its mean over
    patches and images is the objective ``probe.analyses.projection_alignment`` reports."""
    if pred.shape != target.shape:
        raise UserError(f"predicted tokens {tuple(pred.shape)} and teacher tokens {tuple(target.shape)} differ: "
                        "compare tokens on the same grid and width")
    return torch.nn.functional.cosine_similarity(pred.float(), target.float(), dim=-1)


def ridge_fit(x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Ridge regression with an unpenalised intercept, in closed form (float64).

    ``argmin_{W, b} ||Y - X W - 1 b^T||_F^2 + alpha ||W||_F^2`` for ``x`` (M, Dx), ``y`` (M, Dy):
    ``W = (Xc^T Xc + alpha I)^-1 Xc^T Yc``, ``b = mean(Y) - mean(X) W`` with ``Xc``, ``Yc`` the
    centred data (Hoerl & Kennard 1970; Hastie et al., ESL 2nd ed., eq. 3.44 with centred inputs).
    Returns ``(W (Dx, Dy), b (Dy,))`` as float64."""
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise UserError(f"ridge regression needs (M, Dx) and (M, Dy) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not alpha >= 0:
        raise UserError(f"ridge penalty {alpha} must be >= 0: pass e.g. ridge=1e-2")
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    w = torch.linalg.solve(gram, xc.T @ yc)
    return w, my - mx @ w


def ridge_alpha(x: Tensor, ridge: float) -> float:
    """The absolute penalty ``ridge * tr(Xc^T Xc) / D`` for samples ``x`` (M, D) (module docstring)."""
    xc = x.double() - x.double().mean(0)
    return float(ridge * (xc * xc).sum() / x.shape[1])


# ----------------------------------------------------------------------------------------------
# The analysis
# ----------------------------------------------------------------------------------------------

@dataclass
class PatchAlignment:
    """Per-patch cosine maps.  ``images``: the shown images (N, 3, H, W) float32 in [0, 1];
    ``maps``: (P, N, g, g), one per panel; ``panels``: P dicts (``method``, ``layer``, ``t``,
    ``model_t``, ``value`` = the map's mean, ``ridge_alpha``); ``indices``: the shown images'
    dataset indices; ``provenance``: checkpoint, step, run, target, label, seed, images, code version."""

    images: np.ndarray
    maps: np.ndarray
    panels: list[dict]
    indices: np.ndarray
    provenance: dict

    def map(self, method: str, layer: int, t: float) -> np.ndarray:
        """The (N, g, g) map of one panel."""
        for i, p in enumerate(self.panels):
            if p["method"] == method and p["layer"] == layer and p["t"] == float(t):
                return self.maps[i]
        raise UserError(f"no {method} map at layer {layer}, t={t}: pick one of "
                        + ", ".join(f"{p['method']}/{p['layer']}/{p['t']:g}" for p in self.panels))

    def table(self) -> pd.DataFrame:
        """One row per panel: its mean per-patch cosine (``value``) with the provenance columns."""
        keep = ("run", "checkpoint", "step", "flavour", "model", "weights", "target", "target_norm", "label", "seed",
                "n_images", "n_fit", "ridge", "dataset", "fit_dataset", "codec", "code_version")
        common = {k: self.provenance.get(k) for k in keep}
        return pd.DataFrame([{**common, **p, "metric": "patch_cosine"} for p in self.panels])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the arrays and the panel keys to ``path`` (.npz)."""
        arrays = {"images": self.images, "maps": self.maps, "indices": self.indices,
                  "methods": np.array([p["method"] for p in self.panels]), "layers": np.array([p["layer"] for p in self.panels]),
                  "ts": np.array([p["t"] for p in self.panels]), "values": np.array([p["value"] for p in self.panels])}

        def write(tmp: str | os.PathLike) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        return atomic_write(Path(path), write)


def _images(data: Any, split: str, n: int | None, seed: int, size: int, cfg: ProbeConfig) -> ImageSet:
    if isinstance(data, str):
        kw: dict[str, Any] = {"size": size, **({"root": cfg.data_root} if cfg.data_root else {})}
        return image_set(build_dataset(data, split, **kw), n, seed, f"{data}/{split}")
    return image_set(data, n, seed)


def _tokens(model: DiffusionTransformer, images: ImageSet, layers: list[int], ts: Sequence[float], project: int | None,
            trained_on, codec, cfg: ProbeConfig) -> tuple[Tensor, dict, dict]:
    """Teacher targets (N, T, z), hidden tokens {(layer, t): (N, T, D)} and the outputs of projector
    ``project`` (None: none) {t: (N, T, z)} of ``images``, the noise of image i drawn as in every other analysis."""
    shape = (model.cfg.in_channels, model.cfg.input_size, model.cfg.input_size)
    targets, hidden, projected = [], {(l, t): [] for l in layers for t in ts}, {t: [] for t in ts}
    with torch.no_grad():
        for idx, imgs, labs in images.batches(cfg.batch_size):
            targets.append(trained_on(imgs.to(cfg.device)).cpu())
            x = codec.encode(imgs, sample=False).to(cfg.device)
            noise = image_noise(idx, shape, cfg.seed).to(cfg.device)
            y = conditioning(model, images, idx, labs, cfg.label, cfg.device)
            for t in ts:
                out = predict(model, interpolate(x, noise, t), t, y, return_hidden=layers, head=False, project=project is not None)
                for layer in layers:
                    hidden[(layer, t)].append(out.hidden[layer].float().cpu())
                if project is not None:
                    projected[t].append(out.zs[project].float().cpu())
    cat = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
    return torch.cat(targets), {k: cat(v) for k, v in hidden.items()}, {k: cat(v) for k, v in projected.items()}


def patch_alignment(checkpoint: Checkpoint, images: Any = None, methods: Sequence[str] = METHODS,
                    layers: Sequence[int] | str | None = None, ts: Sequence[float] = (0.0,), encoder: str | None = None,
                    n_images: int | None = 8, fit_images: Any = None, n_fit: int | None = 64, ridge: float = 1e-2,
                    label: str = "null", seed: int = 0, config: ProbeConfig | None = None, **options: Any) -> PatchAlignment:
    """Per-patch alignment maps of ``checkpoint`` (a path or a loaded model; module docstring).

    ``images``: a dataset name (``n_images`` of its ``options["split"]`` split, default ``val``,
    drawn by ``seed``) or anything ``probe.extract.image_set`` takes; ``fit_images``: the ridge
    fit's images (default for a name: ``n_fit`` images of its ``train_split``; required otherwise).
    ``methods``: ``projector`` (skipped with a note in ``provenance["skipped"]`` for a checkpoint
    without projectors, an error when it is the only method) and/or ``ridge``.  ``layers``: the
    ridge layers (default: the aligned depth); ``encoder``: the teacher (default: the run's first,
    from the checkpoint's training config).  ``options`` override ``ProbeConfig`` fields
    (``weights``, ``codec``, ``batch_size``, ``device``, ``encoder_weights``, ``random_init_encoder``,
    ``split``, ``train_split``, ``data_root``).
    """
    methods = tuple(methods)
    for m in methods:
        _check_choice(m, METHODS, "patch-alignment method")
    _check_choice(label, LABELS, "label mode")
    if not methods:
        raise UserError(f"no patch-alignment method: pass one or more of {', '.join(METHODS)}")
    cfg = dataclasses.replace(config or ProbeConfig(), **{"progress": False, **options}, ts=check_ts(ts), label=label, seed=seed,
                              metrics=("linear_probe",), n_train=0, pooling="tokens")
    if not isinstance(checkpoint, DiffusionTransformer) and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist: check the path")
    model = _load_model(checkpoint, cfg)
    run_cfg = TrainConfig.from_dict(getattr(model, "train_config", None) or {"target_norm": "none"})
    if encoder is None:  # the run's own teacher
        encoder = ((getattr(model, "train_config", None) or {}).get("encoders") or [None])[0]
    if encoder is None:
        raise UserError(f"{_run_name(checkpoint)} records no target encoder: pass encoder=NAME (--encoder), e.g. builtin-ssl")
    if encoder not in ENCODERS:
        raise UserError(f"unknown encoder {encoder!r}: choose one of {', '.join(ENCODERS)}")
    skipped = []
    if "projector" in methods and not model.projectors:
        if methods == ("projector",):
            raise UserError(f"{_run_name(checkpoint)} has no projector (a vanilla or published checkpoint): pass a REPA checkpoint or --methods ridge")
        methods, skipped = tuple(m for m in methods if m != "projector"), ["projector"]
    chosen = resolve_layers(model, [model.cfg.encoder_depth] if layers is None else layers)
    cfg, images, _ = resolve_defaults(cfg, model, images)
    codec = build_codec(cfg.codec).to(cfg.device)
    size = cfg.image_size or model.cfg.input_size * codec.downsample
    shown = _images(images, cfg.split, n_images, seed, size, cfg)
    fit_set = None
    if "ridge" in methods:
        if fit_images is None and not isinstance(images, str):
            raise UserError("the ridge maps are fitted on held-out images: pass fit_images (e.g. the training split)")
        fit_set = _images(images if fit_images is None else fit_images, cfg.train_split, n_fit, seed + 1, size, cfg)
    grid = math.isqrt(model.cfg.num_tokens)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        enc = load_encoder(encoder, (cfg.encoder_weights or ("",))[0] or None, grid=grid, device=cfg.device,
                           random_init=cfg.random_init_encoder)

    def trained_on(x: Tensor) -> Tensor:  # the targets the run trained on: (B, 3, H, W) -> (B, T, z_dim)
        return training_targets([enc(x).float()], run_cfg)[0]

    ridge_layers = chosen if "ridge" in methods else []
    head = projector_of(model, encoder) if "projector" in methods else None  # the projector trained against this teacher
    target, hidden, projected = _tokens(model, shown, ridge_layers, cfg.ts, head, trained_on, codec, cfg)
    panels, maps = [], []
    if "projector" in methods:
        for t in cfg.ts:
            maps.append(patch_cosine(projected[t], target))
            panels.append({"method": "projector", "layer": model.cfg.encoder_depth, "t": t, "ridge_alpha": float("nan")})
    if fit_set is not None:
        fit_target, fit_hidden, _ = _tokens(model, fit_set, ridge_layers, cfg.ts, None, trained_on, codec, cfg)
        y_fit = fit_target.flatten(0, 1)
        for layer in ridge_layers:
            for t in cfg.ts:
                x_fit = fit_hidden[(layer, t)].flatten(0, 1)
                alpha = ridge_alpha(x_fit, ridge)
                w, b = ridge_fit(x_fit, y_fit, alpha)
                pred = hidden[(layer, t)].double() @ w + b
                maps.append(patch_cosine(pred, target))
                panels.append({"method": "ridge", "layer": layer, "t": t, "ridge_alpha": alpha})
    for p, m in zip(panels, maps):
        p.update(model_t=_model_t(model, p["t"]), value=float(m.double().mean()))
    prov = {**model_provenance(model), "run": _run_name(checkpoint), "target": enc.name, "encoder": enc.provenance,
            "target_norm": run_cfg.target_norm, "label": label, "seed": seed, "n_images": len(shown),
            "n_fit": len(fit_set) if fit_set is not None else 0, "ridge": ridge if fit_set is not None else float("nan"),
            "dataset": shown.name, "fit_dataset": fit_set.name if fit_set is not None else None, "codec": codec.name,
            "weights": cfg.weights, "skipped": skipped, "code_version": git_revision()}
    return PatchAlignment(
        images=np.stack([im.float().numpy() / 255 for _, ims, _ in shown.batches(cfg.batch_size) for im in ims]),
        maps=torch.stack(maps).reshape(len(maps), len(shown), grid, grid).numpy(), panels=panels,
        indices=shown.indices.numpy(), provenance=prov)
