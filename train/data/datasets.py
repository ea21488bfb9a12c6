"""Image datasets: every dataset yields ``(image, label)`` with ``image`` a ``(3, H, W)`` uint8 tensor.

* the real ``fashion-mnist`` (the default, :mod:`train.data.fashion_mnist`: Debian's package, ``data.root``
  or ``$REPA_DATA``) and the built-in ``scenes``, ``shapes`` and ``digits`` (:mod:`train.data.synthetic`),
  re-exported here;
* :class:`ImageFolderDataset` -- ImageNet-style ``root/<class>/<image>`` folders with the ADM/DiT
  centre crop (:mod:`train.data.folders`, re-exported here);
* :class:`LatentCacheDataset` -- a stored SD-VAE latent cache (:mod:`train.data.latent_cache`).

:func:`build_dataset` picks one by name from :data:`DATASETS`; :func:`validate_dataset` checks that a
dataset fits a model (image size, label range) before training starts.

:func:`build_latent_cache` (``python -m train.data encode``) stores the SD-VAE posterior of an image
folder (and of its mirror images with ``--hflip``) for :class:`LatentCacheDataset`;
:func:`build_target_cache` (``python -m train.data targets``) stores a frozen encoder's patch tokens
of every image and its mirror image beside it, which the trainer reads instead of encoding
(:mod:`train.targets.stored`).  Both caches are re-exported here and built by :func:`encode_main`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from train.data.captions import CAPTIONED
from train.errors import UserError
from train.data.builtin import BUILTIN
from train.data.fashion_mnist import FashionMNISTDataset  # noqa: F401 (re-exported)
from train.data.synthetic import (GENERATED, SCENE_CLASSES, SHAPE_CLASSES, DigitsDataset,  # noqa: F401 (re-exported)
                             ScenesDataset, ShapesDataset, render_scenes, render_shapes)
from train.data.folders import IMAGE_EXTENSIONS, ImageFolderDataset, center_crop_arr  # noqa: F401 (re-exported)
from train.data.latent_cache import MANIFEST, LatentCacheDataset, build_latent_cache  # noqa: F401 (re-exported)
from train.targets.stored import (TARGETS_FORMAT, TARGETS_INFO, StoredTargets, build_target_cache,  # noqa: F401 (re-exported)
                                encoder_key, open_target_cache, target_dir)


def _folder(split: str, root: str | Path, **kw) -> ImageFolderDataset:
    """``root/<split>`` when that folder exists (ImageNet layout), else ``root`` itself."""
    root = Path(root)
    return ImageFolderDataset(root / split if (root / split).is_dir() else root, **kw)


def _latents(split: str, root: str | Path, **kw) -> LatentCacheDataset:
    return LatentCacheDataset(root, **{k: v for k, v in kw.items() if k == "size"})


def _load_encoders(names: Sequence[str], weights: Sequence[str] | None, grid: int | None, device: str,
                   random_init: bool, seed: int) -> list:
    """The encoders as the trainer builds them (random-init ones seeded the same way)."""
    from train.targets.encoders import load_encoder

    if weights and len(weights) != len(names):
        raise UserError(f"{len(weights)} encoder weight paths for {len(names)} encoders: give one per encoder ('' for the default)")
    torch.manual_seed(seed)
    return [load_encoder(n, weights=w or None, grid=grid, device=device, random_init=random_init)
            for n, w in zip(names, weights or ("",) * len(names))]


def encode_main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.data encode --root IMAGES --out CACHE [--hflip] [--encoders NAME ...]``: the
    SD-VAE latent cache (and the encoder targets); ``python -m train.data targets --cache CACHE
    --encoders NAME ...``: encoder targets for an existing latent cache."""
    import sys

    from train.run.rules import Parser, option

    ap = Parser(prog="python -m train.data")
    sub = ap.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="the SD-VAE latent cache of an image folder", description=build_latent_cache.__doc__)
    enc.add_argument("--root", required=True, type=option("image_root", str), help="image folder with one subfolder per class")
    enc.add_argument("--out", required=True, type=option("out", str), help="cache directory")
    enc.add_argument("--size", type=option("image_px"), default=256)
    enc.add_argument("--shard-size", type=option("shard_size"), default=1024)
    enc.add_argument("--batch-size", type=option("batch_size"), default=32)
    enc.add_argument("--vae", default="stabilityai/sd-vae-ft-mse", help="hub name or local diffusers directory")
    enc.add_argument("--random-init-vae", action="store_true", help="random VAE weights (tests only)")
    enc.add_argument("--hflip", action="store_true", help="also store the latents of mirrored images (for data.hflip)")
    tgt = sub.add_parser("targets", help="encoder targets of every image and its mirror image, beside a latent cache",
                         description=build_target_cache.__doc__)
    tgt.add_argument("--cache", required=True, type=option("latent_cache", str), help="latent cache directory (made by encode)")
    tgt.add_argument("--batch-size", type=option("batch_size"), default=64)
    for p, required in ((enc, False), (tgt, True)):
        p.add_argument("--encoders", nargs="+", required=required, default=[], help="target encoders, e.g. dinov2-vit-b")
        p.add_argument("--encoder-weights", nargs="+", type=option("encoder_weights", str), help="one local weights path per encoder ('' for the default)")
        p.add_argument("--grid", type=option("grid"), help="tokens per side the model needs (latent side / patch; default: the encoder's)")
        p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored token precision")
        p.add_argument("--random-init-encoders", action="store_true", help="random encoder weights (tests only)")
        p.add_argument("--seed", type=option("seed"), default=0, help="with --random-init-encoders: the training run's seed")
        p.add_argument("--device", type=option("device"), default="cpu")
    tgt.add_argument("--rebuild", action="store_true", help="replace targets made by another encoder, grid or dtype")
    args = ap.parse_args(argv)
    try:
        if args.command == "encode":
            from train.data.latents import SDVAECodec

            codec = SDVAECodec(args.vae, args.vae, random_init=args.random_init_vae)
            print(build_latent_cache(args.root, args.out, args.size, args.shard_size, args.batch_size, codec, args.device,
                                     hflip=args.hflip))
            cache, batch = args.out, 64
        else:
            cache, batch = args.cache, args.batch_size
        if args.encoders:
            encoders = _load_encoders(args.encoders, args.encoder_weights, args.grid, args.device,
                                      args.random_init_encoders, args.seed)
            for where in build_target_cache(cache, encoders, batch, args.device, getattr(torch, args.dtype),
                                            rebuild=getattr(args, "rebuild", False)):
                print(where)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


DATASETS: dict[str, Callable[..., Dataset]] = {
    **BUILTIN,
    "digits": lambda split, **kw: DigitsDataset(split, **kw),
    "folder": _folder,
    "latents": _latents,
    **CAPTIONED,  # text-to-image (train.data.captions): captioned-scenes, captioned-shapes, coco-features
}


def build_dataset(name: str, split: str = "train", **kw) -> Dataset:
    """Build the dataset ``name`` (a key of :data:`DATASETS`) for ``split``; ``kw`` go to its
    constructor (``size`` for all, ``root`` required for ``folder``)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} — choose one of: {', '.join(DATASETS)}")
    if name == "latents" and "root" not in kw:
        raise UserError("the latents dataset needs its cache directory: pass root=PATH (made by python -m train.data encode)")
    if name == "folder" and "root" not in kw:
        raise UserError("the folder dataset needs a root directory — pass root=PATH (with one subfolder per class)")
    return DATASETS[name](split, **kw)


def _describe(ds: Dataset, i: int) -> str:
    samples: Sequence | None = getattr(ds, "samples", None)
    return f"index {i} ({samples[i][0]})" if samples is not None else f"index {i}"


def validate_dataset(ds: Dataset, image_size: int, num_classes: int, n_check: int = 8) -> None:
    """Raise :class:`UserError` unless ``ds`` is non-empty, its images are ``(3, image_size,
    image_size)`` uint8 and its labels lie in ``[0, num_classes)``.

    In-memory datasets (``images``/``labels`` tensors) are checked completely; for the others the
    first ``n_check`` items are decoded and, for folders, every label in ``samples`` is checked.
    """
    if len(ds) == 0:
        raise UserError("the dataset is empty — point it at a folder or split that holds images")
    images, labels = getattr(ds, "images", None), getattr(ds, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        checked = [(0, images[0])]
        label_list = labels.tolist()
    else:
        items = [ds[i] for i in range(min(n_check, len(ds)))]
        checked = [(i, image) for i, (image, _) in enumerate(items)]
        samples = getattr(ds, "samples", None)
        label_list = [s[1] for s in samples] if samples is not None else [label for _, label in items]
    for i, image in checked:
        if tuple(image.shape) != (3, image_size, image_size) or image.dtype != torch.uint8:
            raise UserError(f"image at {_describe(ds, i)} is {image.dtype} {tuple(image.shape)}, expected uint8 "
                            f"(3, {image_size}, {image_size}) — set the image size to match the data "
                            "or build the dataset with size=image_size")
    for i, label in enumerate(label_list):
        if label < 0:
            raise UserError(f"label {label} at {_describe(ds, i)} is negative — relabel the data with class ids 0..N-1")
        if label >= num_classes:
            raise UserError(f"label {label} at {_describe(ds, i)} is outside [0, {num_classes}) — "
                            f"set num_classes to at least {max(label_list) + 1}")


if __name__ == "__main__":
    import sys

    sys.exit(encode_main())
