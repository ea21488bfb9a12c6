"""Training losses: the velocity (denoising) loss and the REPA projection loss.

Every function takes explicit ``t`` and ``noise`` so a result is reproducible and testable.

* Denoising loss (SiT / REPA Eq. 2): ``|| v_theta(x_t, t) - (alpha'_t x + sigma'_t eps) ||^2``,
  averaged over all non-batch dimensions (per sample).
* Projection loss (REPA Eq. 8 with cosine similarity): for each target encoder, the negative cosine
  similarity between the projected hidden token ``h_phi(h_t^[n])`` and the encoder's patch token
  ``y_*^[n]``, averaged over tokens, then batch, then encoders.  Computed in float32 even under
  autocast (fp16 NaNs otherwise) and vectorised over the batch.
* NT-Xent alternative (REPA ablation; temperature not published): for every token position, an
  InfoNCE over the batch: the prediction for image i must pick image i's target among all images'
  targets at that position, logits = cosine / temperature.
* Spatial normalisation of the targets (iREPA, arXiv 2512.10794): each image's encoder tokens are
  standardised per channel over the token positions before either loss sees them
  (:func:`spatial_normalize`; ``TrainConfig.target_norm = "spatial"``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from train import interpolants as itp

Tensor = torch.Tensor


def denoising_loss(v_pred: Tensor, x: Tensor, noise: Tensor, t: Tensor, path: str = "linear") -> Tensor:
    """Per-sample mean squared error to the velocity target, shape (N,)."""
    target = itp.velocity_target(x, noise, t, path)
    return (v_pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, x.ndim)))


def projection_loss(zs_pred: Sequence[Tensor], zs_target: Sequence[Tensor]) -> Tensor:
    """Mean over encoders, batch and tokens of ``-cos(z_pred, z_target)``; a scalar (float32)."""
    if len(zs_pred) != len(zs_target):
        raise ValueError(f"{len(zs_pred)} projector outputs for {len(zs_target)} targets")
    with torch.autocast(device_type=zs_pred[0].device.type, enabled=False):
        terms = [
            -(F.normalize(p.float(), dim=-1) * F.normalize(q.float(), dim=-1)).sum(-1).mean()  # (N, T) -> ()
            for p, q in zip(zs_pred, zs_target)
        ]
    return torch.stack(terms).mean()


def nt_xent_loss(zs_pred: Sequence[Tensor], zs_target: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """Token-position-wise InfoNCE over the batch, mean over positions and encoders (float32)."""
    terms = []
    with torch.autocast(device_type=zs_pred[0].device.type, enabled=False):
        for p, q in zip(zs_pred, zs_target):
            p = F.normalize(p.float(), dim=-1).transpose(0, 1)  # (T, N, D)
            q = F.normalize(q.float(), dim=-1).transpose(0, 1)  # (T, N, D)
            logits = p @ q.transpose(1, 2) / temperature        # (T, N, N)
            labels = torch.arange(p.shape[1], device=p.device).expand(p.shape[0], -1)
            terms.append(F.cross_entropy(logits.flatten(0, 1), labels.flatten()))
    return torch.stack(terms).mean()


def spatial_normalize(y: Tensor, gamma: float = 0.6, eps: float = 1e-6) -> Tensor:
    """iREPA's spatial normalisation of target tokens (arXiv 2512.10794), per image and channel.

    ``z = (y - gamma * mean_t y) / (std_t y + eps)``: for each image b and channel d, the mean and
    standard deviation run over the T token positions of ``y`` (B, T, D).  ``gamma = 1`` is a plain
    z-score over space; ``gamma < 1`` keeps part of the per-image mean token (the component that all
    positions share and that spatial normalisation is meant to damp); ``gamma = 0`` only rescales.
    iREPA uses 0.6 for latent SiT and 0.8 for pixel JiT.

    As the official code (End2End-Diffusion/iREPA, ``ldm/utils.py`` and ``jit/spnorm.py``,
    ``spatial_zscore``): ``std`` is torch's default, the unbiased estimate (divides by T - 1), and
    ``eps = 1e-6`` is added to the std, not to the variance; a constant channel becomes
    ``(1 - gamma) * y / eps`` there, finite.  Computed in float32 (autocast off); returns float32
    (B, T, D).  A pure function of ``y``.
    """
    if y.ndim != 3 or y.shape[1] < 2:
        raise ValueError(f"spatial_normalize expects (B, T, D) tokens with T >= 2, got shape {tuple(y.shape)}")
    with torch.autocast(device_type=y.device.type, enabled=False):
        y = y.float()
        mean = y.mean(dim=1, keepdim=True)            # (B, 1, D)
        std = y.std(dim=1, keepdim=True)              # (B, 1, D), unbiased (T - 1)
        return (y - gamma * mean) / (std + eps)       # (B, T, D)


PROJECTION_LOSSES = {"cosine": projection_loss, "nt-xent": nt_xent_loss}
