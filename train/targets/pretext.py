"""The built-in teachers' pretext tasks: what each kind of :class:`train.targets.teacher.TeacherViT`
is trained to do, as one loss per batch (:func:`pretext_loss`).  ``model`` is a ``TeacherViT`` and ``cfg``
its ``TeacherConfig`` (not imported here: ``teacher`` imports this module).

* ``dense``: per-pixel cross-entropies of the scene renderer's maps (:func:`dense_loss`);
* ``ssl``: SimMIM's masked-patch regression, MAE's normalised pixels (:func:`masked_loss`);
* ``contrastive``: SimCLR's NT-Xent (:func:`nt_xent`) on two augmented views (:func:`random_views`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


def dense_channels(cfg: Any) -> tuple[int, int, int]:
    """Per-pixel logits of the dense head: types (+ background), depth order (+ background), boundary."""
    from train.data.synthetic import MAX_SHAPES

    return cfg.num_classes + 1, MAX_SHAPES + 1, 2


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, T, p*p, C)``: the pixels of every patch, patches in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)                                     # (B, C, gh, p, gw, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p, c)  # (B, T, p*p, C)


def dense_loss(model: nn.Module, x: torch.Tensor, type_map: torch.Tensor, depth_map: torch.Tensor,
               boundary: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropies of the dense head: shape type + depth order + 0.5 x boundary."""
    cfg = model.cfg
    n_type, n_depth, n_edge = dense_channels(cfg)
    b, t, pp = x.shape[0], (cfg.image_size // cfg.patch) ** 2, cfg.patch**2
    logits = model(x).reshape(b, t, pp, n_type + n_depth + n_edge)                # (B, T, p*p, C)
    maps = [patchify(m[:, None].long(), cfg.patch)[..., 0] for m in (type_map, depth_map, boundary)]  # (B, T, p*p)
    lt, ld, le = logits.split([n_type, n_depth, n_edge], dim=-1)
    ce = lambda lg, y: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1))  # noqa: E731
    return ce(lt, maps[0]) + ce(ld, maps[1]) + 0.5 * ce(le, maps[2])


def masked_loss(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SimMIM: the masked patches are zeroed in the input and their tokens replaced; the MSE of the
    predicted pixels of the masked patches against each patch's pixels, normalised to zero mean and
    unit variance when ``cfg.norm_pix`` (MAE's norm_pix_loss), raw otherwise."""
    p = model.cfg.patch
    target = patchify(x, p).flatten(2)                                            # (B, T, p*p*3)
    if model.cfg.norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    g = int(math.isqrt(mask.shape[1]))
    pixel_mask = mask.reshape(-1, 1, g, 1, g, 1).expand(-1, 1, g, p, g, p).reshape(x.shape[0], 1, g * p, g * p)
    pred = model.head(model.forward_features(x.masked_fill(pixel_mask, 0.0), mask))  # (B, T, p*p*3)
    err = (pred - target).pow(2).mean(-1)                                         # (B, T)
    return (err * mask).sum() / mask.sum().clamp(min=1)


def random_views(x: torch.Tensor, crop_scale: float, gen: torch.Generator) -> torch.Tensor:
    """One augmented view of each image of ``x`` ``(B, C, H, W)`` in [-1, 1]: a random resized crop
    (area share in [``crop_scale``, 1], aspect ratio in [3/4, 4/3], bilinear, edge padding), a
    horizontal flip with probability 1/2, then contrast x (0.6..1.4) and brightness + (-0.4..0.4),
    clamped to [-1, 1] (SimCLR's augmentations for one grey channel)."""
    b = x.shape[0]
    u = torch.rand(b, 7, generator=gen)                                           # (B, 7)
    area = crop_scale + (1 - crop_scale) * u[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
    sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # crop side / image side
    tx, ty = (1 - sx) * (2 * u[:, 2] - 1), (1 - sy) * (2 * u[:, 3] - 1)           # crop centre, inside the image
    sx = torch.where(u[:, 4] < 0.5, -sx, sx)                                      # flip
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)               # (B, H, W, 2)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, C, H, W)
    contrast, bright = 0.6 + 0.8 * u[:, 5], -0.4 + 0.8 * u[:, 6]
    return (v * contrast.view(-1, 1, 1, 1) + bright.view(-1, 1, 1, 1)).clamp(-1, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1), averaged over all 2N views: for view i with
    positive j, ``-log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)``, ``s`` the cosine similarity."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)                                    # (2N, D)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature                                                 # (2N, 2N)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, positive)


def pretext_loss(model: nn.Module, data, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of one batch (indices into ``data``) for a self-supervised or dense teacher, its
    augmentations and masks drawn from ``gen`` (the supervised kind trains through ``fit_classifier``)."""
    cfg = model.cfg

    def flip(idx: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
        f = torch.rand(len(idx), generator=gen) < 0.5
        return [torch.where(f.view(-1, *[1] * (a.ndim - 1)), a.flip(-1), a) for a in tensors]

    if cfg.kind == "dense":
        def loss(idx: torch.Tensor) -> torch.Tensor:
            x, tm, dm, bd = flip(idx, data.images[idx].float() / 127.5 - 1.0, data.type_map[idx],
                                 data.depth_map[idx], data.boundary[idx])
            return dense_loss(model, x, tm, dm, bd)
    elif cfg.kind == "contrastive":
        def loss(idx: torch.Tensor) -> torch.Tensor:
            x = data.images[idx].float() / 127.5 - 1.0
            x1, x2 = random_views(x, cfg.crop_scale, gen), random_views(x, cfg.crop_scale, gen)
            z = model(torch.cat([x1, x2]))                                        # (2B, width)
            return nt_xent(z[:len(idx)], z[len(idx):], cfg.temperature)
    else:  # ssl
        g, m = cfg.image_size // cfg.patch, cfg.mask_block
        blocks = (g // m) ** 2  # masks on the coarse grid of m x m token blocks, then repeated per token
        n_mask = round(cfg.mask_ratio * blocks)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            (x,) = flip(idx, data.images[idx].float() / 127.5 - 1.0)
            order = torch.rand(len(idx), blocks, generator=gen).argsort(1)
            mask = torch.zeros(len(idx), blocks, dtype=torch.bool).scatter_(1, order[:, :n_mask], True)
            if m > 1:
                mask = mask.reshape(-1, g // m, 1, g // m, 1).expand(-1, -1, m, -1, m).reshape(len(idx), g * g)
            return masked_loss(model, x, mask)
    return loss
