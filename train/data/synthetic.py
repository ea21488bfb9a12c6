"""Built-in datasets, generated offline or shipped with a package; every one yields ``(image, label)``
with ``image`` a ``(3, H, W)`` uint8 tensor and holds all of its images in memory.

* :class:`ShapesDataset` (``shapes``) -- one of 10 shapes or textures per image over a textured
  background, the class its type; image ``i`` is a pure function of ``(seed, split, i)``.
* :class:`ScenesDataset` (``scenes``, the built-in default) -- 1-3 shapes of 8 types with
  occlusion over a textured background, the class the type of the largest shape, and per-pixel
  ground truth (type, depth order, boundaries) that only the built-in teachers train on.
* :class:`DigitsDataset` (``digits``) -- scikit-learn's bundled 8x8 digits, upsampled to RGB.

This module imports nothing else of the toolkit but its error type, so the teachers, the evaluator
and the dataset registry (:mod:`train.data.datasets`) can all build on it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from train.errors import UserError

# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------

SHAPE_CLASSES = (
    "circle", "square", "triangle", "cross", "ring",
    "horizontal-stripes", "vertical-stripes", "checker", "diamond", "star",
)
_SPLIT_IDS = {"train": 0, "val": 1}
_MASK64 = (1 << 64) - 1
_NOISE_RES = 4  # background texture: bilinear upsampling of a 4x4 RGB noise image
_N_DRAWS = 14 + 3 * _NOISE_RES * _NOISE_RES


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic): a counter-based hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(key: int, index: np.ndarray, n: int) -> torch.Tensor:
    """``(len(index), n)`` uniforms in [0, 1) that depend only on ``(key, index, column)``."""
    counter = index.astype(np.uint64)[:, None] * np.uint64(n) + np.arange(n, dtype=np.uint64)
    bits = _splitmix64(_splitmix64(counter) ^ np.uint64(key))
    return torch.from_numpy((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53).float()


def _shape_sdf(label: int, u: torch.Tensor, v: torch.Tensor, freq: torch.Tensor,
               phase: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance (negative inside) of class ``label`` in shape-local units.

    ``u, v``: local coordinates ``(n, H, W)`` with the shape of radius ~1 centred at 0;
    ``freq, phase``: ``(n, 1, 1)`` pattern parameters of the texture classes.
    """
    rho = torch.sqrt(u * u + v * v)
    au, av = u.abs(), v.abs()
    name = SHAPE_CLASSES[label]
    if name == "circle":
        return rho - 0.85
    if name == "square":
        return torch.maximum(au, av) - 0.75
    if name == "diamond":  # the square turned by 45 degrees, same area
        return (au + av) / math.sqrt(2.0) - 0.75
    if name == "triangle":  # equilateral, pointing up (image rows grow downwards), inradius 0.5
        edges = torch.stack([-v, 0.866 * u + 0.5 * v, -0.866 * u + 0.5 * v])
        return edges.amax(0) - 0.5
    if name == "cross":
        return torch.minimum(torch.maximum(au - 0.9, av - 0.3), torch.maximum(au - 0.3, av - 0.9))
    if name == "ring":
        return (rho - 0.72).abs() - 0.22
    if name == "star":  # five pointed lobes
        radius = 0.35 + 0.65 * torch.cos(2.5 * torch.atan2(v, u)).abs() ** 3
        return rho - radius
    # textures inside a disc: stripes across v (horizontal), across u (vertical), or a checker
    if name == "horizontal-stripes":
        pattern = -torch.sin(freq * v + phase) / freq
    elif name == "vertical-stripes":
        pattern = -torch.sin(freq * u + phase) / freq
    else:
        pattern = -torch.sin(freq * u + phase) * torch.sin(freq * v + phase) / freq
    return torch.maximum(rho - 0.9, pattern)


def render_shapes(key: int, index: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render the images ``index`` of the stream ``key``: ``(uint8 (n, 3, size, size), labels (n,))``.

    Labels are ``index % 10`` (balanced classes). Per image: a random foreground colour, a
    background colour that differs by 0.3-0.7 in every channel, a linear gradient and a smooth
    low-frequency noise texture on the background, a centre, a radius of 17-35 % of the image
    width, a rotation within +-15 degrees and, for textures, a pattern frequency and phase.
    Edges are anti-aliased from the signed distance.
    """
    n = len(index)
    labels = torch.from_numpy(index % len(SHAPE_CLASSES)).long()
    r = _uniforms(key, index, _N_DRAWS)
    radius = 0.35 + 0.35 * r[:, 2]
    margin = 1.0 - 0.8 * radius
    cx, cy = (2 * r[:, 0] - 1) * margin, (2 * r[:, 1] - 1) * margin
    angle = (2 * r[:, 3] - 1) * math.pi / 12
    freq = (math.pi * (2.0 + r[:, 4]))[:, None, None]  # 2-3 periods across the disc
    phase = (2 * math.pi * r[:, 5])[:, None, None]
    fg = r[:, 6:9]
    bg = torch.remainder(fg + 0.3 + 0.4 * r[:, 9:12], 1.0)
    grad_angle, grad_amp = 2 * math.pi * r[:, 12], 0.25 * r[:, 13]
    noise = r[:, 14:].reshape(n, 3, _NOISE_RES, _NOISE_RES) - 0.5

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = coords[None, :, None], coords[None, None, :]
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    scale = radius[:, None, None]
    u, v = (dx * cos + dy * sin) / scale, (-dx * sin + dy * cos) / scale

    sdf = torch.empty(n, size, size)
    for label in range(len(SHAPE_CLASSES)):
        sel = labels == label
        if sel.any():
            sdf[sel] = _shape_sdf(label, u[sel], v[sel], freq[sel], phase[sel])
    mask = (0.5 - sdf * scale * size / 2).clamp(0, 1)[:, None]  # distance in pixels -> coverage

    ramp = (x * torch.cos(grad_angle)[:, None, None] + y * torch.sin(grad_angle)[:, None, None]) / 2
    texture = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    background = bg[:, :, None, None] + grad_amp[:, None, None, None] * ramp[:, None] + 0.4 * texture
    image = background * (1 - mask) + fg[:, :, None, None] * mask
    return (image.clamp(0, 1) * 255).round().to(torch.uint8), labels


class ShapesDataset(Dataset):
    """Procedural, class-conditional 10-class images (:data:`SHAPE_CLASSES`), held in memory.

    Image ``i`` depends only on ``(seed, split, i)``; train and val use different hash streams,
    so they are disjoint and ``n`` only decides how many images are kept.
    """

    num_classes = len(SHAPE_CLASSES)
    classes = SHAPE_CLASSES

    def __init__(self, split: str = "train", n: int | None = None, size: int = 32, seed: int = 0,
                 chunk: int = 1024) -> None:
        if split not in _SPLIT_IDS:
            raise UserError(f"unknown split {split!r} for the shapes dataset — use 'train' or 'val'")
        if size < 8:
            raise UserError(f"shapes image size {size} is too small — use size >= 8")
        self.n = n if n is not None else (10_000 if split == "train" else 2_000)
        self.size, self.seed, self.split = size, seed, split
        key = int(_splitmix64(np.array([seed & _MASK64], dtype=np.uint64) ^ np.uint64(_SPLIT_IDS[split]))[0])
        parts = [render_shapes(key, np.arange(s, min(s + chunk, self.n)), size)
                 for s in range(0, self.n, chunk)]
        self.images = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, 3, size, size, dtype=torch.uint8)
        self.labels = torch.cat([p[1] for p in parts]) if parts else torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


# ----------------------------------------------------------------------------------------------
# Digits
# ----------------------------------------------------------------------------------------------


class DigitsDataset(Dataset):
    """scikit-learn's bundled digits (1,797 grey 8x8 images), bilinear-upsampled to ``size`` and
    replicated to RGB. A fixed permutation (``seed``) puts ``val_fraction`` of them in ``val``."""

    num_classes = 10
    classes = tuple(str(d) for d in range(10))

    def __init__(self, split: str = "train", size: int = 32, seed: int = 0, val_fraction: float = 0.2) -> None:
        from sklearn.datasets import load_digits

        if split not in _SPLIT_IDS:
            raise UserError(f"unknown split {split!r} for the digits dataset — use 'train' or 'val'")
        digits = load_digits()
        order = np.random.default_rng(seed).permutation(len(digits.target))
        n_val = round(val_fraction * len(order))
        keep = order[:n_val] if split == "val" else order[n_val:]
        grey = torch.from_numpy(digits.images[keep]).float()[:, None] / 16.0  # values 0..16
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
        self.images = (grey.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        self.labels = torch.from_numpy(digits.target[keep]).long()
        self.size, self.split = size, split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])



# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------

# Built-in scenes: 1-3 shapes over a textured background, with per-pixel ground truth.
#
# The ``scenes`` dataset is the built-in default on which representation matters
# (RESULTS.md): an image holds one to three shapes of the :data:`SCENE_CLASSES` types, each with its
# own position, scale, rotation and colour, painted back to front (larger first), so smaller shapes
# occlude larger ones, over a background with a colour gradient and a smooth noise texture.  The
# **class is the type of the largest shape**, a visible property of the image; the other shapes and
# every pose are image-specific.  Image ``i`` is a pure function of ``(seed, split, i)`` (counter-based
# hashing, as the ``shapes`` set), classes are balanced (``i % num_classes``).
#
# Per-pixel ground truth comes for free from the renderer and is kept beside the images for the
# *teacher's* training only (the diffusion model and the probes never see it):
#
# * ``type_map`` ``(n, H, W)`` uint8: 0 = background, ``1 + c`` = the visible shape is of type ``c``;
# * ``depth_map`` ``(n, H, W)`` uint8: 0 = background, ``k`` = the ``k``-th shape painted (1 = back);
# * ``boundary`` ``(n, H, W)`` bool: pixels on an edge between two regions (partial coverage or a
#   different neighbour to the right or below).

SCENE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "checker")
MAX_SHAPES = 3
_PER_SHAPE = 9  # draws per shape slot: x, y, radius, angle, type, r, g, b, pattern phase
_SCENE_DRAWS = 1 + MAX_SHAPES * _PER_SHAPE + 5 + 3 * _NOISE_RES * _NOISE_RES
_TYPE_IDS = [SHAPE_CLASSES.index(name) for name in SCENE_CLASSES]


def render_scenes(key: int, index: np.ndarray, size: int, texture: float = 0.35) -> dict[str, torch.Tensor]:
    """Render scenes ``index`` of the stream ``key``: a dict of ``images`` (n, 3, size, size) uint8,
    ``labels`` (n,), ``type_map``, ``depth_map`` (n, size, size) uint8 and ``boundary`` (n, size, size) bool.

    Per image: 1-3 shapes (uniform); the first (the largest, the label's type) has a radius of
    22-32 % of the image width, the others 9-16 %, each of a random type, centre (kept inside the
    image), rotation within +-20 degrees and colour; a background colour gradient and a 4x4
    bilinear noise texture.  Painting goes from the largest to the smallest shape.
    """
    n, k_cls = len(index), len(SCENE_CLASSES)
    labels = torch.from_numpy(index % k_cls).long()
    r = _uniforms(key, index, _SCENE_DRAWS)
    n_shapes = 1 + (r[:, 0] * MAX_SHAPES).long().clamp(max=MAX_SHAPES - 1)  # (n,)
    slots = r[:, 1:1 + MAX_SHAPES * _PER_SHAPE].reshape(n, MAX_SHAPES, _PER_SHAPE)
    rest = r[:, 1 + MAX_SHAPES * _PER_SHAPE:]
    bg = rest[:, 0:3]
    grad_angle, grad_amp = 2 * math.pi * rest[:, 3], 0.3 * rest[:, 4]
    noise = rest[:, 5:].reshape(n, 3, _NOISE_RES, _NOISE_RES) - 0.5

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = coords[None, :, None], coords[None, None, :]
    ramp = (x * torch.cos(grad_angle)[:, None, None] + y * torch.sin(grad_angle)[:, None, None]) / 2
    noise_map = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    image = bg[:, :, None, None] + grad_amp[:, None, None, None] * ramp[:, None] + texture * noise_map
    type_map = torch.zeros(n, size, size, dtype=torch.uint8)
    depth_map = torch.zeros(n, size, size, dtype=torch.uint8)
    edge = torch.zeros(n, size, size, dtype=torch.bool)
    for s in range(MAX_SHAPES):
        d = slots[:, s]
        present = n_shapes > s
        kind = labels if s == 0 else (d[:, 4] * k_cls).long().clamp(max=k_cls - 1)
        radius = (0.44 + 0.20 * d[:, 2]) if s == 0 else (0.18 + 0.14 * d[:, 2])  # in half-widths
        margin = 1.0 - 0.85 * radius
        cx, cy = (2 * d[:, 0] - 1) * margin, (2 * d[:, 1] - 1) * margin
        angle = (2 * d[:, 3] - 1) * math.pi / 9
        colour = d[:, 5:8]
        # keep every shape's colour away from the local background: push it by at least 0.3
        colour = torch.where((colour - bg).abs() < 0.3, torch.remainder(colour + 0.5, 1.0), colour)
        freq = torch.full((n, 1, 1), 2.5 * math.pi)
        phase = (2 * math.pi * d[:, 8])[:, None, None]
        dx, dy = x - cx[:, None, None], y - cy[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        scale = radius[:, None, None]
        u, v = (dx * cos + dy * sin) / scale, (-dx * sin + dy * cos) / scale
        sdf = torch.full((n, size, size), 1e3)
        for c in range(k_cls):
            sel = (kind == c) & present
            if sel.any():
                sdf[sel] = _shape_sdf(_TYPE_IDS[c], u[sel], v[sel], freq[sel], phase[sel])
        cover = (0.5 - sdf * scale * size / 2).clamp(0, 1)  # (n, H, W) coverage from the signed distance
        image = image * (1 - cover[:, None]) + colour[:, :, None, None] * cover[:, None]
        inside = cover > 0.5
        type_map = torch.where(inside, (kind + 1).to(torch.uint8)[:, None, None], type_map)
        depth_map = torch.where(inside, torch.tensor(s + 1, dtype=torch.uint8), depth_map)
        edge |= (cover > 0.1) & (cover < 0.9)
    change = torch.zeros_like(edge)
    change[:, :, :-1] |= depth_map[:, :, 1:] != depth_map[:, :, :-1]
    change[:, :-1, :] |= depth_map[:, 1:, :] != depth_map[:, :-1, :]
    images = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return {"images": images, "labels": labels, "type_map": type_map, "depth_map": depth_map,
            "boundary": edge | change}


class ScenesDataset(Dataset):
    """The built-in scenes (module docstring), held in memory with their per-pixel ground truth.

    Image ``i`` depends only on ``(seed, split, i)``; train and val use different hash streams."""

    num_classes = len(SCENE_CLASSES)
    classes = SCENE_CLASSES

    def __init__(self, split: str = "train", n: int | None = None, size: int = 32, seed: int = 0,
                 chunk: int = 1024, texture: float = 0.35) -> None:
        if split not in _SPLIT_IDS:
            raise UserError(f"unknown split {split!r} for the scenes dataset — use 'train' or 'val'")
        if size < 16:
            raise UserError(f"scenes image size {size} is too small — use size >= 16")
        self.n = n if n is not None else (10_000 if split == "train" else 2_000)
        self.size, self.seed, self.split = size, seed, split
        # another stream than the shapes set's, so the two datasets never share draws
        key = int(_splitmix64(np.array([(seed + 0x5CE7E5) & _MASK64], dtype=np.uint64) ^ np.uint64(_SPLIT_IDS[split]))[0])
        parts = [render_scenes(key, np.arange(s, min(s + chunk, self.n)), size, texture) for s in range(0, self.n, chunk)]
        for name in ("images", "labels", "type_map", "depth_map", "boundary"):
            setattr(self, name, torch.cat([p[name] for p in parts]))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


# datasets generated here, by name: each takes ``(split, n=None, size=..., seed=0)``
GENERATED: dict[str, Callable[..., Dataset]] = {
    "shapes": ShapesDataset,
    "scenes": ScenesDataset,
    "scenes-plain": functools.partial(ScenesDataset, texture=0.0),  # the same scenes without background texture
}
