"""Image datasets: every dataset yields ``(image, label)`` with ``image`` a ``(3, H, W)`` uint8 tensor.

* :class:`ShapesDataset` -- procedural 10-class shapes and textures, generated offline in about a
  second per 10,000 images; image ``i`` is a pure function of ``(seed, split, i)``.
* :class:`DigitsDataset` -- scikit-learn's bundled 8x8 digits, upsampled and replicated to RGB.
* :class:`ImageFolderDataset` -- ImageNet-style ``root/<class>/<image>`` folders with the ADM/DiT
  centre crop.

:func:`build_dataset` picks one by name from :data:`DATASETS`; :func:`validate_dataset` checks that a
dataset fits a model (image size, label range) before training starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
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
# Image folders
# ----------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM/DiT centre crop: halve with BOX filtering while the short side is >= ``2 * size``,
    resize bicubic so the short side equals ``size``, then cut the central ``size x size``."""
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    ratio = size / min(image.size)
    image = image.resize((round(image.width * ratio), round(image.height * ratio)), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` folders; labels follow the sorted class-folder names.

    Images are converted to RGB, centre-cropped with :func:`center_crop_arr` and, with
    ``hflip=True``, flipped horizontally with probability 1/2 (torch's global RNG).
    """

    def __init__(self, root: str | Path, size: int = 256, hflip: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"image folder {root} does not exist — pass the directory that holds one "
                            "subfolder per class")
        self.classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
        self.samples: list[tuple[Path, int]] = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        ]
        if not self.samples:
            raise UserError(f"no images found under {root}/<class>/ ({', '.join(IMAGE_EXTENSIONS)}) — "
                            "put each class's images in its own subfolder of the root")
        self.num_classes = len(self.classes)
        self.root, self.size, self.hflip = root, size, hflip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as image:
                arr = center_crop_arr(image.convert("RGB"), self.size)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise UserError(f"cannot read image {path} ({e}) — remove or re-encode this file") from e
        tensor = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        if self.hflip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
        return tensor.contiguous(), label


# ----------------------------------------------------------------------------------------------
# Registry and checks
# ----------------------------------------------------------------------------------------------


def _folder(split: str, root: str | Path, **kw) -> ImageFolderDataset:
    """``root/<split>`` when that folder exists (ImageNet layout), else ``root`` itself."""
    root = Path(root)
    return ImageFolderDataset(root / split if (root / split).is_dir() else root, **kw)


# ----------------------------------------------------------------------------------------------
# Latent cache (SD-VAE), driven by a manifest
# ----------------------------------------------------------------------------------------------

MANIFEST = "manifest.csv"


def build_latent_cache(root: str | Path, out: str | Path, size: int = 256, shard_size: int = 1024,
                       batch_size: int = 32, codec=None, device: str = "cpu", progress: bool = True) -> Path:
    """Encode an image folder once into ``out``: the posterior mean and std of every image (unscaled,
    as REPA's preprocessing stores them; the one scaling point stays ``Codec.from_moments``) and the
    ``size`` px image the target encoder needs, in safetensors shards.

    ``out/manifest.csv`` (file, label, shard, row) is written first and drives everything: shards
    already on disk are skipped, so an interrupted run resumes; a manifest from another folder is
    refused.  ``codec`` defaults to the SD-VAE (``train.latents.SDVAECodec``).
    """
    import csv

    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from train.checkpoints import atomic_write

    ds = ImageFolderDataset(root, size=size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [(str(Path(f).relative_to(ds.root)), label, i // shard_size, i % shard_size) for i, (f, label) in enumerate(ds.samples)]
    manifest = out / MANIFEST
    if manifest.exists():
        with open(manifest, newline="") as f:
            old = [(r["file"], int(r["label"]), int(r["shard"]), int(r["row"])) for r in csv.DictReader(f)]
        if old != rows:
            raise UserError(f"{out} holds a latent cache of another folder or shard size: pass a new --out directory")
    else:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", "label", "shard", "row"])
                w.writerows(rows)
        atomic_write(manifest, write)
    if codec is None:
        from train.latents import SDVAECodec

        codec = SDVAECodec()
    codec = codec.to(device)
    n_shards = math.ceil(len(rows) / shard_size)
    for k in tqdm(range(n_shards), desc="latent cache", disable=not progress):
        path = out / f"shard_{k:05d}.safetensors"
        if path.exists():
            continue
        idx = range(k * shard_size, min((k + 1) * shard_size, len(rows)))
        images = torch.stack([ds[i][0] for i in idx])
        mean, std = zip(*(codec.moments(images[s:s + batch_size]) for s in range(0, len(images), batch_size)))
        tensors = {"mean": torch.cat(mean).float().cpu().contiguous(), "std": torch.cat(std).float().cpu().contiguous(),
                   "images": images.contiguous(), "labels": torch.tensor([rows[i][1] for i in idx])}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"codec": codec.name, "size": str(size)}))
    return manifest


class LatentCacheDataset(Dataset):
    """A cache written by :func:`build_latent_cache`, held in memory: ``images`` (uint8, for the
    target encoder), ``labels`` and :meth:`moments` (the stored posterior) for the trainer."""

    def __init__(self, root: str | Path, size: int = 256) -> None:
        from safetensors.torch import load_file

        root = Path(root)
        if not (root / MANIFEST).is_file():
            raise UserError(f"no {MANIFEST} in {root}: build the cache first with python -m train.data encode --root IMAGES --out {root}")
        shards = sorted(root.glob("shard_*.safetensors"))
        with open(root / MANIFEST) as f:
            n_rows = sum(1 for _ in f) - 1
        parts = [load_file(str(p)) for p in shards]
        self.images = torch.cat([p["images"] for p in parts]) if parts else torch.empty(0, 3, size, size, dtype=torch.uint8)
        if len(self.images) != n_rows:
            raise UserError(f"the latent cache in {root} is incomplete ({len(self.images)} of {n_rows} images): rerun the same encode command to finish it")
        self.labels = torch.cat([p["labels"] for p in parts])
        self.mean = torch.cat([p["mean"] for p in parts])
        self.std = torch.cat([p["std"] for p in parts])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def moments(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean[idx], self.std[idx]


def _latents(split: str, root: str | Path, **kw) -> LatentCacheDataset:
    return LatentCacheDataset(root, **{k: v for k, v in kw.items() if k == "size"})


def encode_main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.data encode --root IMAGES --out CACHE``: the SD-VAE latent cache."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m train.data encode", description=build_latent_cache.__doc__)
    ap.add_argument("command", choices=["encode"])
    ap.add_argument("--root", required=True, help="image folder with one subfolder per class")
    ap.add_argument("--out", required=True, help="cache directory")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vae", default="stabilityai/sd-vae-ft-mse", help="hub name or local diffusers directory")
    ap.add_argument("--random-init-vae", action="store_true", help="random VAE weights (tests only)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    try:
        from train.latents import SDVAECodec

        codec = SDVAECodec(args.vae, args.vae, random_init=args.random_init_vae)
        print(build_latent_cache(args.root, args.out, args.size, args.shard_size, args.batch_size, codec, args.device))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


DATASETS: dict[str, Callable[..., Dataset]] = {
    "shapes": lambda split, **kw: ShapesDataset(split, **kw),
    "digits": lambda split, **kw: DigitsDataset(split, **kw),
    "folder": _folder,
    "latents": _latents,
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
