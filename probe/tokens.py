"""Token-level measurements: token-level CKNNA and the spatial metrics, from a few kept tokens.

The paper's metrics read one mean-pooled vector per image.  Token-level CKNNA takes patch tokens
as the samples instead, and the spatial metrics (iREPA's LDS, CDS, RMSC; ``probe.metrics``) read
every token of an image.  Keeping all tokens of every layer x t is what ImageNet-scale probing
cannot hold (SiT-XL/2: 29 layers x 3 t x 1,000 images x 256 tokens x 1,152 floats is about
100 GB), so a :class:`TokenPlan` says what to keep, and each batch of tokens is reduced to that as
soon as it is produced (by ``probe.extract.extract`` for the model, :func:`encoder_tokens` for an
encoder):

* ``pairs``: M (image position in the evaluation set, token index) pairs drawn once without
  replacement by a generator seeded with the probe seed (:func:`token_pairs`); the same pairs are
  read from the model's and from the encoder's tokens, the encoder's resampled to the model's grid
  (``train.targets.encoders.resample_tokens``): two ``(M, D)`` matrices for ``cknna`` (after ``prepare``);
* ``spatial``: each image's value (N,) of every requested spatial metric, averaged over images by
  the analyses.  An encoder's spatial metrics are measured on its tokens at the model's grid too
  (what REPA aligns the model to), so that they sit beside the model's rows on the same footing.

Table rows (:func:`token_rows`, :func:`reference_rows`) carry ``pooling = "tokens"``; token CKNNA
names its encoder as ``target``, a spatial metric of the model has ``target = "none"`` and is
``preprocessing = "l2"`` (it normalises tokens itself and clips nothing); the encoder's own spatial
metrics are reference rows (``is_reference``, ``layer = -1``, ``target`` = the encoder).  M, r_near
and r_far are in the table's JSON sidecar (``config``) and, with the pairs' digest, in the feature
store's provenance.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from probe.config import TOKEN_METRICS  # noqa: F401 (public here too)
from probe.metrics import SPATIAL, cknna, default_r_far, prepare, spatial_metrics
from train.evaluation.probe_set import token_pairs  # noqa: F401 - public here too
from train.run.checkpoints import atomic_write
from train.targets.encoders import resample_tokens
from train.errors import UserError

if TYPE_CHECKING:
    from probe.config import ProbeConfig
    from probe.extract import Features



@dataclass
class TokenPlan:
    """What to keep of the tokens of an image set on a ``grid x grid`` layout (module docstring)."""

    grid: int
    pairs: Tensor                       # (M, 2): image position, token index; sorted
    spatial: tuple[str, ...] = ()
    r_near: int = 1
    r_far: int | None = None

    @property
    def provenance(self) -> dict:
        from probe.extract import digest

        return {"grid": self.grid, "n_pairs": len(self.pairs), "pairs": digest(self.pairs.numpy().tobytes()),
                "spatial": list(self.spatial), "r_near": self.r_near, "r_far": self.r_far}

    def reduce(self, tokens: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Tokens ``(B, T, D)`` of the images at positions ``start .. start + B`` -> their sampled
        tokens ``(m, D)`` float32 and their spatial metrics ``(len(spatial), B)`` float64, on the CPU."""
        if tokens.shape[1] != self.grid**2:
            raise UserError(f"{tokens.shape[1]} tokens per image where the token plan expects {self.grid}x{self.grid}: "
                            "probe checkpoints on one token grid together")
        lo, hi = torch.searchsorted(self.pairs[:, 0].contiguous(), torch.tensor([start, start + len(tokens)])).tolist()
        pick = self.pairs[lo:hi].to(tokens.device)
        sample = tokens[pick[:, 0] - start, pick[:, 1]].float().cpu()
        values = spatial_metrics(tokens, self.spatial, self.r_near, self.r_far) if self.spatial else {}
        per_image = torch.stack([values[m].cpu() for m in self.spatial]) if self.spatial else torch.zeros(0, len(tokens), dtype=torch.float64)
        return sample, per_image


def token_plan(cfg: ProbeConfig, n_images: int, n_tokens: int) -> TokenPlan | None:
    """The plan for ``cfg.metrics`` on ``n_images`` images of ``n_tokens`` tokens (None when no
    token-level metric is asked for); bad settings fail here, before any extraction."""
    spatial = tuple(m for m in SPATIAL if m in cfg.metrics)
    if "cknna_token" not in cfg.metrics and not spatial:
        return None
    grid = math.isqrt(n_tokens)
    if grid * grid != n_tokens:
        raise UserError(f"token-level metrics need tokens on a square grid, got {n_tokens} per image: probe a model with a square token grid")
    m = cfg.token_samples if "cknna_token" in cfg.metrics else 0
    if "cknna_token" in cfg.metrics and min(m, n_images * n_tokens) <= cfg.k:
        raise UserError(f"only {min(m, n_images * n_tokens)} tokens for token-level CKNNA with k={cfg.k}: pass more token samples or images, or a smaller k")
    if spatial:  # the same checks as the real measurement, on a one-image dummy
        spatial_metrics(torch.ones(1, n_tokens, 1), spatial, cfg.r_near, cfg.r_far)
    r_far = cfg.r_far if cfg.r_far is not None else default_r_far(grid, cfg.r_near)
    return TokenPlan(grid, token_pairs(n_images, n_tokens, m, cfg.seed), spatial, cfg.r_near, r_far)


@dataclass
class TokenValues:
    """What a plan kept of an image set: sampled tokens ``(M, D)`` and spatial metrics ``{name: (N,)}``
    (for a model: ``(layers, ts, M, D)`` and ``{name: (layers, ts, N)}``)."""

    tokens: Tensor
    spatial: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def encoder_tokens(encoder: torch.nn.Module, images: Any, plan: TokenPlan, batch_size: int = 64,
                   cache_dir: str | os.PathLike | None = None, progress: bool = True) -> TokenValues:
    """An encoder's tokens on ``images``, resampled to ``plan.grid`` and reduced by ``plan``; cached
    as ``probe.extract.encoder_features`` caches (keyed by the plan too)."""
    from probe.extract import _shard_meta, digest, image_set

    images = image_set(images)
    prov = encoder.provenance
    cacheable = prov.get("weights") != "random-init" or "init_seed" in prov
    key = digest([prov, images.identity, plan.provenance])
    path = Path(cache_dir) / f"{encoder.name}-tokens-{key}.safetensors" if cache_dir and cacheable else None
    if path is not None and _shard_meta(path) is not None:
        stored = load_file(str(path))
        return TokenValues(stored["tokens"], dict(zip(plan.spatial, stored["spatial"])))
    device, samples, values, start = encoder.mean.device, [], [], 0
    for _, imgs, _ in tqdm(images.batches(batch_size), total=-(-len(images) // batch_size), desc=f"tokens {encoder.name}",
                           disable=not progress):
        sample, per_image = plan.reduce(resample_tokens(encoder(imgs.to(device)).float(), plan.grid), start)
        samples.append(sample)
        values.append(per_image)
        start += len(imgs)
    tokens, spatial = torch.cat(samples), torch.cat(values, 1)
    if path is not None:
        meta = {"encoder": json.dumps(prov, default=str), "data_identity": images.identity, "plan": json.dumps(plan.provenance)}
        atomic_write(path, lambda tmp: save_file({"tokens": tokens.contiguous(), "spatial": spatial.contiguous()}, tmp, metadata=meta))
    return TokenValues(tokens, dict(zip(plan.spatial, spatial)))


def token_rows(feats: Features, cells: list[dict], targets: dict[str, TokenValues], cfg: ProbeConfig) -> list[dict]:
    """Rows of one model's token-level metrics: token CKNNA per cell x encoder, spatial metrics per cell."""
    rows, cells_at = [], [(cell, feats.layers.index(cell["layer"]), feats.ts.index(cell["t"])) for cell in cells]
    tokens = {"pooling": "tokens"}
    if "cknna_token" in cfg.metrics:
        for name, target in targets.items():
            b = prepare(target.tokens.to(cfg.device), cfg.q, cfg.normalize)
            for cell, li, ti in cells_at:
                a = prepare(feats.tokens[li, ti].to(cfg.device), cfg.q, cfg.normalize)
                rows.append({**cell, **tokens, "metric": "cknna_token", "target": name, "value": cknna(a, b, k=cfg.k, mode=cfg.cknna_mode)})
    for metric, values in feats.spatial.items():
        rows += [{**cell, **tokens, "metric": metric, "target": "none", "preprocessing": "l2", "value": values[li, ti].mean().item()}
                 for cell, li, ti in cells_at]
    return rows


def reference_rows(name: str, target: TokenValues) -> list[dict]:
    """An encoder's own spatial metrics (reference rows beside the model's)."""
    return [{"layer": -1, "metric": metric, "target": name, "value": values.mean().item(), "is_reference": True,
             "pooling": "tokens", "preprocessing": "l2"} for metric, values in target.spatial.items()]
