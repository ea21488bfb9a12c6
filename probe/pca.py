"""Token PCA maps: the first three principal components of patch tokens, shown as RGB images.

:func:`token_pca` extracts the patch tokens of a checkpoint at each layer x noise level
(``probe.extract.extract`` with ``pooling="tokens"``: the same per-image noise as every other
analysis) and, when asked, of target encoders (``probe.extract.encoder_features``, at the model's
token grid).  For each (layer, t) and each encoder, :func:`pca_rgb` fits a PCA on all tokens of
``n_fit`` images (the token mean is removed; components from the SVD of the centred token matrix,
each signed so that its largest-magnitude loading is positive), projects every shown image's
tokens on the first three components and min-max scales each component to [0, 1] over all shown
images jointly (so colours compare across images), giving RGB maps ``(N, 3, g, g)`` with token
``row * g + col`` at pixel ``(row, col)``.  Smooth, object-shaped maps mean spatially coherent
features (the pattern iREPA's spatial metrics quantify); noise-like maps mean little structure.

The result (:class:`TokenPCA`) holds numpy arrays and provenance; ``probe.plots.token_pca`` draws it
and ``repa-probe pca`` writes ``token_pca.npz``, a table of explained-variance ratios and the figure.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from probe.analyses import Checkpoint, ProbeConfig, _load_model, _run_name
from probe.extract import DEFAULT_TS, check_ts, encoder_features, extract, image_set, model_provenance
from probe.run_defaults import trained_on
from train.run.checkpoints import atomic_write
from train.targets.encoders import ENCODERS, Encoder, load_encoder
from train.errors import UserError
from train.data.latents import build_codec
from train.run.loop import git_revision
from train.models.loading import DiffusionTransformer


@dataclass
class TokenPCA:
    """RGB PCA maps. ``images``: the shown images (N, 3, H, W) float32 in [0, 1]; ``maps``: the model's
    (layers, ts, N, 3, g, g) in [0, 1]; ``explained``: (layers, ts, 3) explained-variance ratios;
    ``encoder_maps`` / ``encoder_explained``: {encoder name: (N, 3, g, g) / (3,)}; ``indices``: the
    shown images' dataset indices; ``provenance``: checkpoint, step, label, seed, images, code version."""

    images: np.ndarray
    layers: list[int]
    ts: list[float]
    maps: np.ndarray
    explained: np.ndarray
    indices: np.ndarray
    provenance: dict
    encoder_maps: dict[str, np.ndarray] = field(default_factory=dict)
    encoder_explained: dict[str, np.ndarray] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per source (model layer x t, or encoder) x component: its explained-variance ratio."""
        keep = ("run", "checkpoint", "step", "model", "weights", "label", "seed", "n_images", "n_fit", "dataset", "code_version")
        common = {k: self.provenance.get(k) for k in keep}
        rows = [{**common, "source": "model", "layer": layer, "t": t, "component": c + 1, "explained_variance": float(self.explained[li, ti, c])}
                for li, layer in enumerate(self.layers) for ti, t in enumerate(self.ts) for c in range(3)]
        rows += [{**common, "source": name, "layer": -1, "t": float("nan"), "component": c + 1, "explained_variance": float(ev[c])}
                 for name, ev in self.encoder_explained.items() for c in range(3)]
        return pd.DataFrame(rows)

    def save(self, path: str | os.PathLike) -> Path:
        """Write every array to ``path`` (.npz; encoder arrays as ``encoder_maps/<name>``)."""
        arrays = {"images": self.images, "maps": self.maps, "explained": self.explained, "indices": self.indices,
                  "layers": np.array(self.layers), "ts": np.array(self.ts)}
        arrays.update({f"encoder_maps/{k}": v for k, v in self.encoder_maps.items()})
        arrays.update({f"encoder_explained/{k}": v for k, v in self.encoder_explained.items()})

        def write(tmp: str | os.PathLike) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a temporary name
                np.savez_compressed(f, **arrays)

        return atomic_write(Path(path), write)


def pca_rgb(fit: Tensor, tokens: Tensor, n_components: int = 3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PCA of ``fit`` tokens (M, D), applied to ``tokens`` (N, g*g, D).

    Returns ``(rgb (N, n_components, g, g) in [0, 1], explained-variance ratios (n_components,),
    components (n_components, D), mean (D,))``; see the module docstring for the convention."""
    n, t, d = tokens.shape
    g = math.isqrt(t)
    if g * g != t:
        raise UserError(f"{t} tokens do not form a square grid: token PCA maps need a square token layout")
    fit = fit.double()
    if min(fit.shape) < n_components:
        raise UserError(f"{fit.shape[0]} tokens of dimension {fit.shape[1]}: a {n_components}-component PCA needs more (pass more fit images)")
    mean = fit.mean(0)
    _, s, vt = torch.linalg.svd(fit - mean, full_matrices=False)
    comps = vt[:n_components]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(signs == 0, 1.0, signs)
    var = s**2
    explained = var[:n_components] / var.sum().clamp_min(1e-300)
    proj = (tokens.double() - mean) @ comps.T                                   # (N, T, C)
    lo, hi = proj.amin((0, 1)), proj.amax((0, 1))
    scaled = ((proj - lo) / torch.where(hi > lo, hi - lo, 1.0)).clamp(0, 1)
    rgb = scaled.transpose(1, 2).reshape(n, n_components, g, g)
    return rgb.float(), explained.float(), comps.float(), mean.float()


def _positions(n_total: int, n: int | None, seed: int) -> Tensor:
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def token_pca(checkpoint: Checkpoint, images: Any, layers: str | Sequence[int] = "all", ts: Sequence[float] = DEFAULT_TS,
              encoder: str | Encoder | Sequence[str | Encoder] | None = None, n_fit: int | None = None,
              label: str = "null", seed: int = 0, fit_images: Any = None, config: ProbeConfig | None = None,
              **options: Any) -> TokenPCA:
    """Token PCA maps of ``checkpoint`` (a path or a loaded model) on ``images`` (anything
    ``probe.extract.image_set`` takes; all of them are shown) at each of ``layers`` x ``ts``, and of
    ``encoder`` (a name, an Encoder, or several) when given.

    The PCA is fitted on the tokens of ``fit_images`` (default: the shown images), ``n_fit`` of them
    drawn by ``seed`` (None: all).  ``options`` override ``ProbeConfig`` fields (``weights``,
    ``codec``, ``batch_size``, ``device``, ``encoder_weights``, ``random_init_encoder``, ``progress``).
    """
    cfg = dataclasses.replace(config or ProbeConfig(), **{"progress": False, **options}, ts=check_ts(ts), label=label, seed=seed,
                              metrics=("linear_probe",), n_train=0, n_images=None, pooling="tokens")
    if not isinstance(checkpoint, DiffusionTransformer) and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist: check the path")
    encoders = [] if encoder is None else [encoder] if isinstance(encoder, (str, Encoder)) else list(encoder)
    for enc in encoders:
        if isinstance(enc, str) and enc not in ENCODERS:
            raise UserError(f"unknown encoder {enc!r}: choose one of {', '.join(ENCODERS)}")
    model = _load_model(checkpoint, cfg)
    cfg = dataclasses.replace(cfg, codec=cfg.codec or trained_on(model)["codec"])
    codec = build_codec(cfg.codec).to(cfg.device)
    shown = image_set(images)
    fit_set = shown if fit_images is None else image_set(fit_images)
    fit_pos = _positions(len(fit_set), n_fit, seed)
    kw = dict(ts=cfg.ts, layers=layers, codec=codec, pooling="tokens", label=label, seed=seed, batch_size=cfg.batch_size,
              progress=cfg.progress)
    feats = extract(model, shown, **kw)                                           # (L, T, N, tokens, D)
    fit_values = feats.values if fit_set is shown else extract(model, fit_set, **kw).values
    maps, explained = [], []
    for li in range(len(feats.layers)):
        for ti in range(len(feats.ts)):
            fit = fit_values[li, ti][fit_pos].flatten(0, 1)
            rgb, ev, _, _ = pca_rgb(fit, feats.values[li, ti])
            maps.append(rgb)
            explained.append(ev)
    grid = math.isqrt(model.cfg.num_tokens)
    shape = (len(feats.layers), len(feats.ts))
    result = TokenPCA(
        images=np.stack([im.float().numpy() / 255 for _, ims, _ in shown.batches(cfg.batch_size) for im in ims]),
        layers=feats.layers, ts=feats.ts, maps=torch.stack(maps).reshape(*shape, len(shown), 3, grid, grid).numpy(),
        explained=torch.stack(explained).reshape(*shape, 3).numpy(), indices=shown.indices.numpy(),
        provenance={**model_provenance(model), "run": _run_name(checkpoint), "label": label, "seed": seed, "n_images": len(shown),
                    "n_fit": len(fit_pos), "dataset": shown.name, "fit_dataset": fit_set.name, "codec": codec.name,
                    "model_ts": feats.provenance["model_ts"], "code_version": git_revision(), "encoders": []})
    for i, enc in enumerate(encoders):
        if isinstance(enc, str):
            weights = cfg.encoder_weights[i] if i < len(cfg.encoder_weights) else ""
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                enc = load_encoder(enc, weights or None, grid=grid, device=cfg.device, random_init=cfg.random_init_encoder)
        tokens = encoder_features(enc, shown, pooling="tokens", batch_size=cfg.batch_size, progress=cfg.progress).float()
        fit_tokens = tokens if fit_set is shown else encoder_features(enc, fit_set, pooling="tokens", batch_size=cfg.batch_size,
                                                                      progress=cfg.progress).float()
        rgb, ev, _, _ = pca_rgb(fit_tokens[fit_pos].flatten(0, 1), tokens)
        result.encoder_maps[enc.name], result.encoder_explained[enc.name] = rgb.numpy(), ev.numpy()
        result.provenance["encoders"].append(enc.provenance)
    return result

