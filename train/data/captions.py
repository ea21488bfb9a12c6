"""Captioned data for the text-to-image MMDiT (:mod:`train.models.mmdit`): the caption features it is
conditioned on, and the empty-caption features (the null context of classifier-free guidance).

Every captioned dataset holds, besides what a class-conditional one holds, ``contexts`` (or per-item
caption features) (N, L, C), ``null_context`` (L, C) and ``context_dim``; one *item* is one
(image, caption) pair, so the trainer's seeded epoch order covers every caption and resumes exactly.

* ``captioned-scenes`` / ``captioned-shapes`` (built in, no download): the built-in images with one
  caption composed from what each image holds, e.g. ``"a large star with a ring and a cross"`` (the
  largest shape's type first, then the other visible types by size; ``shapes``: ``"a star"``).  A
  caption is encoded by :class:`WordEncoder`: ``<bos>``, its words, ``<eos>``, padded with ``<pad>``
  to ``CAPTION_LEN`` tokens, each token ``E[word] + P[position]`` with ``E`` and ``P`` fixed N(0, 1/C)
  random tables (seeded; not trained; no text model), C = ``CONTEXT_DIM``.  The null context is the
  empty caption ``<bos> <eos> <pad>...`` (as CLIP's empty caption is in the official data).
* ``coco-features`` (:class:`CocoFeatures`): the U-ViT/REPA MS-COCO feature folder, read as the
  official ``dataset.py`` reads it (see its docstring for the layout).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from train.errors import UserError

CAPTION_LEN = 12
CONTEXT_DIM = 32
SPECIALS = ("<pad>", "<bos>", "<eos>")


class WordEncoder:
    """Fixed random word + position embeddings (seeded): a caption -> (CAPTION_LEN, dim) features."""

    def __init__(self, vocab: tuple[str, ...], dim: int = CONTEXT_DIM, length: int = CAPTION_LEN, seed: int = 0x7E47):
        self.vocab = SPECIALS + tuple(w for w in vocab if w not in SPECIALS)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.length, self.dim = length, dim
        g = torch.Generator().manual_seed(seed)
        self.words = torch.randn(len(self.vocab), dim, generator=g) / dim ** 0.5   # E: (V, C)
        self.positions = torch.randn(length, dim, generator=g) / dim ** 0.5        # P: (L, C)

    def ids(self, caption: str) -> list[int]:
        words = caption.lower().split()
        if unknown := [w for w in words if w not in self.index]:
            raise UserError(f"caption {caption!r} has the word {unknown[0]!r}, which the built-in encoder does not know: "
                            f"use words of {' '.join(self.vocab[len(SPECIALS):])}")
        if len(words) > self.length - 2:
            raise UserError(f"caption {caption!r} has {len(words)} words; the built-in encoder takes at most {self.length - 2}")
        ids = [1] + [self.index[w] for w in words] + [2]
        return ids + [0] * (self.length - len(ids))

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """captions -> (N, L, C) features ``E[id] + P``."""
        ids = torch.tensor([self.ids(c) for c in captions], dtype=torch.long).reshape(-1, self.length)
        return self.words[ids] + self.positions  # (N, L, C)


def scene_captions(type_map: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> list[str]:
    """One caption per image: the labelled (largest) shape, then the other visible types by area."""
    out = []
    for tm, lab in zip(type_map, labels):
        ids, counts = torch.unique(tm[tm > 0].long() - 1, return_counts=True)
        others = [classes[int(i)] for i, _ in sorted(zip(ids.tolist(), counts.tolist()), key=lambda p: -p[1]) if i != int(lab)]
        words = ["a", "large", classes[int(lab)]]
        for k, name in enumerate(others[:2]):
            words += ["with" if k == 0 else "and", "a", name]
        out.append(" ".join(words))
    return out


def builtin_encoder(classes: tuple[str, ...]) -> WordEncoder:
    return WordEncoder(("a", "large", "with", "and") + tuple(classes))


class CaptionedBuiltin(Dataset):
    """A built-in dataset (``scenes`` or ``shapes``) with composed captions and their features."""

    def __init__(self, base: str, split: str = "train", **kw):
        from train.data.synthetic import GENERATED
        self.base = GENERATED[base](split, **kw)
        self.images, self.labels = self.base.images, self.base.labels
        classes = self.base.classes
        if hasattr(self.base, "type_map"):
            self.captions = scene_captions(self.base.type_map, self.labels, classes)
        else:
            self.captions = [f"a {classes[int(i)]}" for i in self.labels]
        self.encoder = builtin_encoder(classes)
        self.contexts = self.encoder(self.captions)              # (N, L, C)
        self.null_context = self.encoder([""])[0]                # (L, C)
        self.context_dim, self.num_classes, self.classes = self.encoder.dim, self.base.num_classes, classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.contexts[i]


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape in an .npy header, without reading the data."""
    try:
        return tuple(np.load(path, mmap_mode="r").shape)  # memory-mapped: the header only
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npy file ({e}): make the feature folder again") from None


class CocoFeatures(Dataset):
    """The U-ViT/REPA MS-COCO feature folder (official ``dataset.py``, ``MSCOCO256Features``)::

        ROOT/empty_context.npy     the empty caption's CLIP ViT-L/14 text features (77, 768): the null context
        ROOT/{train,val}/{i}.png   image i (256 px RGB; REPA's encoders read it)
        ROOT/{train,val}/{i}.npy   SD-VAE posterior moments of image i (8, 32, 32) = (mean, logvar), unscaled
        ROOT/{train,val}/{i}_{k}.npy   caption k of image i: CLIP text features (77, 768)

    ``i = 0..n-1`` with every image holding at least caption 0.  The official loader draws one
    caption per image visit at random; here every (image, caption) pair is an item, so an epoch
    sees each caption once (images with more captions are seen more) and the seeded order resumes
    exactly.  ``moments(idx)`` gives the posterior (mean, std = exp(logvar / 2), logvar clamped to
    [-30, 20] as the official ``sample_posterior``).  Validation reads every .npy header (no data):
    a missing moments/caption/empty-context file or a width that differs from the others is one
    :class:`UserError` line naming the file.
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, size: int = 256, context_dim: int | None = None):
        if root is None:
            raise UserError("coco-features needs its feature folder: set data.root=PATH (holding empty_context.npy and train/)")
        self.root, self.dir = Path(root), Path(root) / split
        null = self.root / "empty_context.npy"
        if not null.is_file():
            raise UserError(f"{null} is missing: the feature folder needs the empty caption's features (U-ViT's empty_context.npy)")
        if not self.dir.is_dir():
            raise UserError(f"{self.dir} is missing: the feature folder needs a {split}/ folder of {{i}}.npy and {{i}}_{{k}}.npy files")
        names = os.listdir(self.dir)
        images = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"(\d+)\.npy", n)))
        caps: dict[int, list[int]] = {}
        for n in names:
            if m := re.fullmatch(r"(\d+)_(\d+)\.npy", n):
                caps.setdefault(int(m.group(1)), []).append(int(m.group(2)))
        if not images:
            raise UserError(f"{self.dir} holds no image moments ({{i}}.npy): point data.root at the U-ViT/REPA feature folder")
        if images != list(range(len(images))):
            gap = next(i for i, j in enumerate(images) if i != j)
            raise UserError(f"{self.dir / f'{gap}.npy'} is missing (images must be numbered 0..n-1): make the feature folder again")
        null_shape = _npy_shape(null)
        width = null_shape[-1]
        if context_dim is not None and width != context_dim:
            raise UserError(f"{null} is {width} wide but the model reads {context_dim}-wide captions: set model.context_dim={width}")
        self.pairs: list[tuple[int, int]] = []
        for i in images:
            ks = sorted(caps.get(i, []))
            if not ks or ks != list(range(len(ks))):
                missing = next((k for k in range(len(ks) + 1) if k not in ks), 0)
                raise UserError(f"{self.dir / f'{i}_{missing}.npy'} is missing (image {i}'s captions must be numbered from 0): "
                                "make the feature folder again")
            for k in ks:
                shape = _npy_shape(self.dir / f"{i}_{k}.npy")
                if shape[-1] != width or shape[-2:] != null_shape[-2:]:
                    raise UserError(f"{self.dir / f'{i}_{k}.npy'} holds {shape} caption features but empty_context.npy is "
                                    f"{null_shape}: all captions need one encoder's width; make the feature folder again")
                self.pairs.append((i, k))
        if not (self.dir / "0.png").is_file():
            raise UserError(f"{self.dir / '0.png'} is missing: the feature folder needs each image as {{i}}.png beside its moments")
        self.moment_shape = _npy_shape(self.dir / "0.npy")
        self.null_context = torch.from_numpy(np.load(null)).float().reshape(null_shape[-2:])  # (L, C)
        self.context_dim, self.size, self.num_classes = width, size, 0
        self.has_flips = False

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, j: int):
        """Item j: (image uint8 (3, H, W) or None without the .png, caption features (L, C))."""
        i, k = self.pairs[j]
        png = self.dir / f"{i}.png"
        image = None
        if png.exists():
            from PIL import Image
            image = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1).contiguous()
        return image, torch.from_numpy(np.load(self.dir / f"{i}_{k}.npy")).float().reshape(self.null_context.shape)

    def moments(self, idx: torch.Tensor, flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if flip is not None:
            raise UserError("the MS-COCO feature folder has no mirrored latents: set data.hflip=false")
        m = torch.stack([torch.from_numpy(np.load(self.dir / f"{self.pairs[int(j)][0]}.npy")).float().reshape(-1, *self.moment_shape[-2:])
                         for j in idx])                                   # (B, 8, h, w)
        mean, logvar = m.chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))


def check_captioned(dataset, cfg) -> None:
    """A text-to-image run's data and model fit each other, or one :class:`UserError` line."""
    m = cfg.model
    if not m.is_mmdit:
        raise UserError(f"{cfg.data.dataset} is a captioned dataset: train it with an MMDiT (model.name=MMDiT-d4/2, "
                        "model.context_dim, model.context_len), e.g. --preset tiny-t2i")
    null = getattr(dataset, "null_context", None)
    if null is None:
        raise UserError(f"{m.name} is conditioned on captions but {cfg.data.dataset} has none: use captioned-scenes, "
                        "captioned-shapes or coco-features")
    if tuple(null.shape) != (m.context_len, m.context_dim):
        raise UserError(f"{cfg.data.dataset}'s captions are {tuple(null.shape)} (tokens, width) but the model takes "
                        f"({m.context_len}, {m.context_dim}): set model.context_len={null.shape[0]} model.context_dim={null.shape[1]}")
    if len(dataset) == 0:
        raise UserError(f"{cfg.data.dataset} is empty: point it at a folder or split that holds images")
    unsupported = [f for f in ("attn_coeff", "sra_coeff", "reg_coeff") if getattr(cfg, f, 0)]
    if unsupported or getattr(cfg, "eval_every", 0) or getattr(cfg, "align_every", 0):
        what = unsupported[0] if unsupported else ("eval_every" if cfg.eval_every else "align_every")
        raise UserError(f"{what} is not available for the text-to-image MMDiT (REPA, vanilla and the dispersive "
                        f"loss are): set {what}=0")
    image = dataset[0][0]
    if image is None or tuple(image.shape) != (3, cfg.data.image_size, cfg.data.image_size):
        raise UserError(f"{cfg.data.dataset}'s images are {None if image is None else tuple(image.shape)}, not "
                        f"(3, {cfg.data.image_size}, {cfg.data.image_size}): set data.image_size to match the data")


CAPTIONED = {
    "captioned-scenes": lambda split, **kw: CaptionedBuiltin("scenes", split, **kw),
    "captioned-shapes": lambda split, **kw: CaptionedBuiltin("shapes", split, **kw),
    "coco-features": lambda split, **kw: CocoFeatures(split, **kw),
}
