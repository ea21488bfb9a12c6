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

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from train.objectives import interpolants as itp

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


# ----------------------------------------------------------------------------------------------
# Further objectives (train.objectives.terms): HASTE, SRA, dispersive loss
# ----------------------------------------------------------------------------------------------

def attention_distillation_loss(model_logits: Sequence[Tensor], teacher_logits: Sequence[Tensor],
                                heads: str = "first") -> Tensor:
    """HASTE's attention distillation (arXiv 2505.16792; NUS-HPC-AI-Lab/HASTE ``loss.py``), float32.

    For each layer pair, model attention logits (B, Hm, T, T) and teacher logits (B, Ht, T, T) over
    the same T patch tokens (class/register rows and columns dropped *before* the softmax, so the
    teacher's map is renormalised over patches, as HASTE's DINOv2 does): the teacher side is
    softmaxed (the target distribution), the model side log-softmaxed, and the cross-entropy
    ``-sum_k p_teacher[k] log q_model[k]`` over keys is averaged over batch, heads and query rows,
    then over the layer pairs.  ``heads="first"`` (HASTE: SiT-XL's first 12 of 16 heads against
    DINOv2-B's 12): model head h is paired with teacher head h (needs Hm >= Ht);
    ``heads="mean"``: both sides' probability maps are averaged over their heads first.
    """
    if len(model_logits) != len(teacher_logits) or not model_logits:
        raise ValueError(f"{len(model_logits)} model attention maps for {len(teacher_logits)} teacher maps")
    terms = []
    with torch.autocast(device_type=model_logits[0].device.type, enabled=False):
        for a, g in zip(model_logits, teacher_logits):
            a, g = a.float(), g.float().to(a.device)
            if a.shape[-2:] != g.shape[-2:] or a.shape[0] != g.shape[0]:
                raise ValueError(f"attention maps of shapes {tuple(a.shape)} and {tuple(g.shape)} are not on one token grid")
            if heads == "first":
                if a.shape[1] < g.shape[1]:
                    raise ValueError(f"heads='first' needs at least the teacher's {g.shape[1]} heads, the model has {a.shape[1]}: use heads='mean'")
                logq, p = a[:, :g.shape[1]].log_softmax(-1), g.softmax(-1)          # (B, Ht, T, T)
            elif heads == "mean":
                logq = a.log_softmax(-1).logsumexp(1) - math.log(a.shape[1])       # (B, T, T): log of the head-mean
                p = g.softmax(-1).mean(1)                                          # (B, T, T)
            else:
                raise ValueError(f"unknown heads {heads!r}: use 'first' or 'mean'")
            terms.append(-(p * logq).sum(-1).mean())
    return torch.stack(terms).mean()


def sra_teacher_time(t: Tensor, u: Tensor, t_max: float) -> Tensor:
    """SRA's teacher time ``clamp(t - t_max * u, 0, 1)`` (vvvvvjdy/SRA ``SiT-SRA/loss.py``).

    SRA's SiT code uses REPA's clock (linear ``alpha = 1 - t``, ``sigma = t``: t = 0 data, t = 1
    noise), this toolkit's clock too, so no mapping is needed: the teacher sees the same data and
    noise at a *lower* noise level."""
    return (t - t_max * u).clamp(0, 1)


def sra_loss(student: Tensor, target: Tensor, distance: str = "smooth_l1") -> Tensor:
    """SRA's distance between the projected student tokens and the EMA teacher's raw block tokens
    (B, T, D), float32; the target is not normalised (as the official code).
    ``"smooth_l1"``: ``F.smooth_l1_loss(beta=0.05)`` averaged over all elements (the paper);
    ``"cosine"``: ``1 - cos`` per token, averaged (the README's later default)."""
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, y = student.float(), target.float()
        if distance == "smooth_l1":
            return F.smooth_l1_loss(s, y, beta=0.05)
        if distance == "cosine":
            return (1 - F.cosine_similarity(s, y, dim=-1)).mean()
    raise ValueError(f"unknown SRA distance {distance!r}: use 'smooth_l1' or 'cosine'")


def dispersive_loss(z: Tensor, tau: float = 0.5) -> Tensor:
    """Dispersive loss (Wang & He, arXiv 2506.09027, the InfoNCE-L2 variant), float32 scalar.

    ``log( (1/B^2) sum_{i,j} exp(-|z_i - z_j|^2 / (dim * tau)) )`` over all ordered pairs of the
    batch, i = j included (those B terms are exp(0) = 1), with ``z`` (B, ...) flattened per sample
    and ``dim`` its flattened size -- the paper's Algorithm 1 (``pdist(z)^2 / dim``, the pairs
    counted both ways plus B zeros, ``log(mean(exp(-d / tau)))``).  Computed with ``pdist``
    (exact differences, no Gram-matrix cancellation) and a logsumexp.  At most 0; lower when the
    samples are spread apart.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float().reshape(z.shape[0], -1)                                      # (B, dim)
        b, dim = z.shape
        d = F.pdist(z).pow(2) / dim                                                # (B (B - 1) / 2,)
        e = torch.cat([-d / tau, -d / tau, z.new_zeros(b)])                        # all B^2 ordered pairs
        return e.logsumexp(0) - 2 * math.log(b)
