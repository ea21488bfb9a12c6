"""Image datasets: every dataset yields ``(image, label)`` with ``image`` a ``(3, H, W)`` uint8 tensor.

* the built-in ``scenes``, ``shapes`` and ``digits`` (:mod:`train.synthetic`, re-exported here);
* :class:`ImageFolderDataset` -- ImageNet-style ``root/<class>/<image>`` folders with the ADM/DiT
  centre crop.

:func:`build_dataset` picks one by name from :data:`DATASETS`; :func:`validate_dataset` checks that a
dataset fits a model (image size, label range) before training starts.

:func:`build_latent_cache` (``python -m train.data encode``) stores the SD-VAE posterior of an image
folder (and of its mirror images with ``--hflip``) for :class:`LatentCacheDataset`;
:func:`build_target_cache` (``python -m train.data targets``) stores a frozen encoder's patch tokens
of every image and its mirror image beside it, which the trainer reads instead of encoding.
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
from train.synthetic import (GENERATED, SCENE_CLASSES, SHAPE_CLASSES, DigitsDataset,  # noqa: F401 (re-exported)
                             ScenesDataset, ShapesDataset, render_scenes, render_shapes)

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
                       batch_size: int = 32, codec=None, device: str = "cpu", progress: bool = True,
                       hflip: bool = False) -> Path:
    """Encode an image folder once into ``out``: the posterior mean and std of every image (unscaled,
    as REPA's preprocessing stores them; the one scaling point stays ``Codec.from_moments``) and the
    ``size`` px image the target encoder needs, in safetensors shards.  ``hflip=True`` also stores
    the posterior of every image's mirror image (``mean_flip``, ``std_flip``), which training with
    ``data.hflip`` needs; run again with it to add them to an existing cache.

    ``out/manifest.csv`` (file, label, shard, row) is written first and drives everything: shards
    already on disk are skipped, so an interrupted run resumes; a manifest from another folder is
    refused.  ``codec`` defaults to the SD-VAE (``train.latents.SDVAECodec``).
    """
    import csv
    import sys

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from train.checkpoints import atomic_write

    ds = ImageFolderDataset(root, size=size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [(str(Path(f).relative_to(ds.root)), label, i // shard_size, i % shard_size) for i, (f, label) in enumerate(ds.samples)]
    manifest = out / MANIFEST
    old = _read_manifest(manifest) if manifest.exists() else None
    if old is not None and old != rows:
        old_shards = max(r[2] for r in old) + 1 if old else 0
        if old and all(_shard_rows(out / f"shard_{k:05d}.safetensors") == len(_rows_of(old, k)) for k in range(old_shards)):
            raise UserError(f"{out} holds a finished latent cache of another folder or shard size: pass a new --out directory")
        # an unfinished cache whose folder changed (e.g. a bad image removed after a failed encode):
        # keep the shards whose images are unchanged, encode the others anew
        for k in range(max(old_shards, math.ceil(len(rows) / shard_size))):
            if _rows_of(old, k) != _rows_of(rows, k):
                (out / f"shard_{k:05d}.safetensors").unlink(missing_ok=True)
    if old != rows:
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

    def moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = zip(*(codec.moments(images[s:s + batch_size]) for s in range(0, len(images), batch_size)))
        return torch.cat(mean).float().cpu().contiguous(), torch.cat(std).float().cpu().contiguous()

    n_shards = math.ceil(len(rows) / shard_size)
    for k in tqdm(range(n_shards), desc="latent cache", disable=not progress):
        path = out / f"shard_{k:05d}.safetensors"
        if path.exists() and _shard_rows(path) != len(_rows_of(rows, k)):  # truncated or damaged: encode it again
            print(f"warning: {path} is unreadable or incomplete: encoding it again", file=sys.stderr)
            path.unlink()
        if path.exists():
            if not hflip:
                continue
            with safe_open(str(path), "pt") as f:
                if "mean_flip" in f.keys():
                    continue
                meta = f.metadata() or {}
            tensors = load_file(str(path))  # a shard made without hflip: add the mirrored posterior
        else:
            idx = range(k * shard_size, min((k + 1) * shard_size, len(rows)))
            images = torch.stack([ds[i][0] for i in idx]).contiguous()
            mean, std = moments(images)
            tensors = {"mean": mean, "std": std, "images": images, "labels": torch.tensor([rows[i][1] for i in idx])}
            meta = {"codec": codec.name, "size": str(size)}
        if hflip:
            tensors["mean_flip"], tensors["std_flip"] = moments(tensors["images"].flip(-1))
            meta = {**meta, "hflip": "1"}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return manifest


def _read_manifest(path: Path) -> list[tuple[str, int, int, int]] | None:
    """The rows of a manifest, or None when it is unreadable (then it is rewritten)."""
    import csv

    try:
        with open(path, newline="") as f:
            return [(r["file"], int(r["label"]), int(r["shard"]), int(r["row"])) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError, csv.Error):
        return None


def _rows_of(rows: list | None, k: int) -> list:
    return [r for r in rows or [] if r[2] == k]


def _shard_rows(path: Path, name: str = "labels", keys: Sequence[str] = ("mean", "std", "images", "labels")) -> int | None:
    """Rows of a safetensors shard, or None when it is missing, truncated or lacks ``keys``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            if not set(keys) <= set(f.keys()):
                return None
            return f.get_slice(name).get_shape()[0]
    except Exception:  # noqa: BLE001 - SafetensorError, OSError: a damaged file
        return None


class LatentCacheDataset(Dataset):
    """A cache written by :func:`build_latent_cache`, held in memory: ``images`` (uint8, for the
    target encoder), ``labels`` and :meth:`moments` (the stored posterior, of the mirror images
    where asked and stored) for the trainer.  ``root`` is the cache directory; stored encoder
    targets beside it are read by :func:`open_target_cache`."""

    def __init__(self, root: str | Path, size: int = 256) -> None:
        from safetensors.torch import load_file

        root = Path(root)
        if not (root / MANIFEST).is_file():
            raise UserError(f"no {MANIFEST} in {root}: build the cache first with python -m train.data encode --root IMAGES --out {root}")
        shards = sorted(root.glob("shard_*.safetensors"))
        with open(root / MANIFEST) as f:
            n_rows = sum(1 for _ in f) - 1
        parts = []
        for p in shards:
            try:
                parts.append(load_file(str(p)))
            except Exception as e:  # noqa: BLE001 - SafetensorError of a truncated or junk shard
                raise UserError(f"latent shard {p} is truncated or unreadable ({str(e).splitlines()[0][:100]}): rerun the "
                                f"same python -m train.data encode command (it encodes that shard again)") from None
            if not {"mean", "std", "images", "labels"} <= set(parts[-1]):
                raise UserError(f"latent shard {p} lacks tensors of a latent cache: rerun the same python -m train.data "
                                "encode command (it encodes that shard again)")
        self.root = root
        self.images = torch.cat([p["images"] for p in parts]) if parts else torch.empty(0, 3, size, size, dtype=torch.uint8)
        if len(self.images) != n_rows:
            raise UserError(f"the latent cache in {root} is incomplete ({len(self.images)} of {n_rows} images): rerun the same encode command to finish it")
        self.labels = torch.cat([p["labels"] for p in parts])
        self.mean = torch.cat([p["mean"] for p in parts])
        self.std = torch.cat([p["std"] for p in parts])
        flips = bool(parts) and all("mean_flip" in p for p in parts)
        self.mean_flip = torch.cat([p["mean_flip"] for p in parts]) if flips else None
        self.std_flip = torch.cat([p["std_flip"] for p in parts]) if flips else None

    @property
    def has_flips(self) -> bool:
        """Whether the posterior of every image's mirror image is stored (``encode --hflip``)."""
        return self.mean_flip is not None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def moments(self, idx: torch.Tensor, flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored posterior ``(mean, std)`` of images ``idx``; where the bool ``flip`` is set, that of
        the horizontally mirrored image."""
        if flip is None:
            return self.mean[idx], self.std[idx]
        if not self.has_flips:
            raise UserError(f"the latent cache in {self.root} has no mirrored latents for data.hflip: "
                            "rerun its python -m train.data encode command with --hflip (it adds them)")
        f = flip.cpu()[:, None, None, None]
        return (torch.where(f, self.mean_flip[idx], self.mean[idx]),
                torch.where(f, self.std_flip[idx], self.std[idx]))


def _latents(split: str, root: str | Path, **kw) -> LatentCacheDataset:
    return LatentCacheDataset(root, **{k: v for k, v in kw.items() if k == "size"})


# ----------------------------------------------------------------------------------------------
# Encoder-target cache: the frozen encoder's patch tokens of every image and its mirror image
# ----------------------------------------------------------------------------------------------

TARGETS_FORMAT = "repa-targets/1"
TARGETS_INFO = "encoder.json"


def target_dir(root: str | Path, name: str) -> Path:
    """Where the stored targets of encoder ``name`` live: ``<latent cache>/targets_<name>/``."""
    return Path(root) / f"targets_{name}"


def encoder_key(encoder) -> str:
    """Identity of a target encoder for stored targets: ``<name>-g<grid>-<digest>``, the digest over
    its provenance (architecture, preprocessing, target, output grid) without the path its weights
    came from, and over the weights themselves: the same weights read from another place match,
    other weights (another checkpoint, another random init) do not."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in encoder.provenance.items() if k != "weights"}, sort_keys=True).encode())
    for k, v in sorted(encoder.model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{encoder.name}-g{encoder.grid}-{h.hexdigest()[:16]}"


def _manifest_digest(root: Path) -> str:
    import hashlib

    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()[:16]


def _targets_fix(root: Path, encoder) -> str:
    return (f"rebuild it with python -m train.data targets --cache {root} --encoders {encoder.name} --grid {encoder.grid} "
            f"--rebuild (and this run's --encoder-weights), or delete {target_dir(root, encoder.name)} to encode online")


def _check_target_info(info: dict, root: Path, encoder, key: str) -> None:
    where = target_dir(root, encoder.name)
    if info.get("format") != TARGETS_FORMAT:
        raise UserError(f"{where} is not a target cache of this toolkit ({TARGETS_FORMAT}): {_targets_fix(root, encoder)}")
    if info.get("manifest") != _manifest_digest(root):
        raise UserError(f"{where} was made for another latent cache (its manifest differs): {_targets_fix(root, encoder)}")
    if info.get("grid") != encoder.grid:
        raise UserError(f"{where} holds {info.get('grid')}x{info.get('grid')} tokens but this run needs "
                        f"{encoder.grid}x{encoder.grid}: {_targets_fix(root, encoder)}")
    if info.get("key") != key:
        raise UserError(f"{where} was made by another {encoder.name} encoder ({info.get('key')}, this run's is {key}: "
                        f"other weights or preprocessing): {_targets_fix(root, encoder)}")


def build_target_cache(root: str | Path, encoders: Sequence, batch_size: int = 64, device: str = "cpu",
                       dtype: torch.dtype = torch.float16, progress: bool = True, rebuild: bool = False) -> list[Path]:
    """Store the patch tokens of every image of the latent cache ``root`` and of its mirror image
    (``image.flip(-1)``, what ``data.hflip`` feeds the encoder) for each of ``encoders`` (built with
    :func:`train.encoders.load_encoder` at the grid the model needs): ``root/targets_<name>/``
    holds ``encoder.json`` (the encoder's key and provenance, the grid, the dtype, the manifest's
    digest; written first) and one ``shard_XXXXX.safetensors`` (``tokens``, ``tokens_flip``:
    ``(n, grid*grid, dim)``) per latent shard.  Shards on disk are skipped, so an interrupted run
    resumes; targets of another encoder (other weights, grid or preprocessing) or another dtype
    are refused.  float32 stores the encoder's output as is (bitwise the online tokens when the
    kernels see the same batch shape; other batch shapes or mixed-precision autocast can change
    the last bits); float16 (the default) halves the disk and equals the in-memory cache the
    trainer would otherwise compute.  ``rebuild=True`` (``--rebuild``) replaces targets made by
    another encoder, grid, dtype or latent cache instead of refusing them.  A damaged (truncated)
    shard is encoded again.
    """
    import json

    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from train.checkpoints import atomic_write

    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise UserError(f"no {MANIFEST} in {root}: build the latent cache first with python -m train.data encode --root IMAGES --out {root}")
    with open(root / MANIFEST) as f:
        n_rows = sum(1 for _ in f) - 1
    shards = sorted(root.glob("shard_*.safetensors"))
    counts = [_shard_rows(p) for p in shards]
    if None in counts:
        raise UserError(f"latent shard {shards[counts.index(None)]} is truncated or unreadable: rerun its python -m train.data "
                        "encode command (it encodes that shard again) first")
    have = sum(counts)
    if have != n_rows:
        raise UserError(f"the latent cache in {root} is incomplete ({have} of {n_rows} images): rerun its encode command to finish it first")
    dtype_name = str(dtype).removeprefix("torch.")
    written = []
    for enc in encoders:
        enc = enc.to(device)
        key, where = encoder_key(enc), target_dir(root, enc.name)
        info = {"format": TARGETS_FORMAT, "key": key, "encoder": enc.name, "grid": enc.grid, "dim": enc.dim,
                "dtype": dtype_name, "manifest": _manifest_digest(root), "rows": n_rows, "provenance": enc.provenance}
        old = _read_target_info(where)
        if old is not None and rebuild:
            try:
                _check_target_info(old, root, enc, key)
                same = old.get("dtype") == dtype_name
            except UserError:
                same = False
            if not same:  # start over: the old targets were made by another encoder, grid or dtype
                for p in where.glob("shard_*.safetensors"):
                    p.unlink()
                (where / TARGETS_INFO).unlink()
                old = None
        if old is not None:
            _check_target_info(old, root, enc, key)
            if old.get("dtype") != dtype_name:
                raise UserError(f"{where} is being built as {old.get('dtype')}: rerun with --dtype {old.get('dtype')}, "
                                f"or with --rebuild to start over as {dtype_name}")
        else:
            atomic_write(where / TARGETS_INFO, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))

        def tokens(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([enc(images[s:s + batch_size].to(device)).to("cpu", dtype)
                              for s in range(0, len(images), batch_size)]).contiguous()

        for shard in tqdm(shards, desc=f"targets {enc.name}", disable=not progress):
            path = where / shard.name
            if path.exists() and _shard_rows(path, "tokens", ("tokens", "tokens_flip")) == _rows_in(shard):
                continue
            images = load_file(str(shard))["images"]
            tensors = {"tokens": tokens(images), "tokens_flip": tokens(images.flip(-1))}
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": TARGETS_FORMAT, "key": key}))
        written.append(where)
    return written


def _read_target_info(where: Path) -> dict | None:
    """``encoder.json`` of a target cache; a damaged one reads as a cache of another encoder."""
    import json

    if not (where / TARGETS_INFO).is_file():
        return None
    try:
        info = json.loads((where / TARGETS_INFO).read_text())
    except (OSError, ValueError):
        return {"format": "unreadable"}
    return info if isinstance(info, dict) else {"format": "unreadable"}


def _rows_in(path: Path, name: str = "labels") -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_slice(name).get_shape()[0]


class StoredTargets:
    """Stored targets of one encoder (:func:`open_target_cache`), read row by row from the shard
    files when asked (memory-mapped: the cache need not fit in memory)."""

    def __init__(self, where: Path, shard_files: list[Path], sizes: list[int]) -> None:
        self.where, self.files = where, shard_files
        self.starts = torch.tensor([0, *np.cumsum(sizes).tolist()])
        self._open: dict[int, object] = {}  # shard -> safe_open handle, opened on first use
        self._slices: dict[tuple[int, str], object] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _slice(self, k: int, name: str):
        from safetensors import safe_open

        if (k, name) not in self._slices:
            if k not in self._open:
                self._open[k] = safe_open(str(self.files[k]), "pt")
            self._slices[k, name] = self._open[k].get_slice(name)
        return self._slices[k, name]

    def gather(self, idx: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """float32 tokens ``(len(idx), T, D)`` of images ``idx``; of the mirror image where ``flip``."""
        idx = torch.as_tensor(idx).cpu()
        shard = torch.searchsorted(self.starts, idx, right=True) - 1
        row = idx - self.starts[shard]
        flips = flip.cpu().tolist() if flip is not None else [False] * len(idx)
        rows = [self._slice(k, "tokens_flip" if f else "tokens")[r:r + 1]
                for k, r, f in zip(shard.tolist(), row.tolist(), flips)]
        return torch.cat(rows).float()


def open_target_cache(root: str | Path, encoder) -> StoredTargets | None:
    """The stored targets of ``encoder`` beside the latent cache ``root``; None when there are none.
    Targets made by another encoder (weights, grid, preprocessing), for another latent cache, or
    not finished raise a one-line :class:`UserError` naming the fix."""
    import json

    root = Path(root)
    where = target_dir(root, encoder.name)
    if not where.is_dir():
        return None
    if not (where / TARGETS_INFO).is_file():
        raise UserError(f"{where} has no {TARGETS_INFO} (an unfinished target cache): {_targets_fix(root, encoder)}")
    _check_target_info(_read_target_info(where), root, encoder, encoder_key(encoder))
    latent = sorted(root.glob("shard_*.safetensors"))
    files = [where / p.name for p in latent]
    missing = sum(not f.is_file() for f in files)
    if missing:
        raise UserError(f"the target cache {where} is incomplete ({missing} of {len(files)} shards missing): rerun the same "
                        f"python -m train.data targets command to finish it, or delete {where} to encode online")
    sizes = [_shard_rows(f, "tokens", ("tokens", "tokens_flip")) for f in files]
    damaged = [f.name for f, n in zip(files, sizes) if n is None]
    if damaged:
        raise UserError(f"target shard {where / damaged[0]} is truncated or unreadable: rerun the same python -m train.data "
                        f"targets command (it encodes that shard again), or delete {where} to encode online")
    if sizes != [_rows_in(p) for p in latent]:
        raise UserError(f"the target cache {where} does not match the latent shards of {root}: {_targets_fix(root, encoder)}")
    return StoredTargets(where, files, sizes)


def _load_encoders(names: Sequence[str], weights: Sequence[str] | None, grid: int | None, device: str,
                   random_init: bool, seed: int) -> list:
    """The encoders as the trainer builds them (random-init ones seeded the same way)."""
    from train.encoders import load_encoder

    if weights and len(weights) != len(names):
        raise UserError(f"{len(weights)} encoder weight paths for {len(names)} encoders: give one per encoder ('' for the default)")
    torch.manual_seed(seed)
    return [load_encoder(n, weights=w or None, grid=grid, device=device, random_init=random_init)
            for n, w in zip(names, weights or ("",) * len(names))]


def encode_main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.data encode --root IMAGES --out CACHE [--hflip] [--encoders NAME ...]``: the
    SD-VAE latent cache (and the encoder targets); ``python -m train.data targets --cache CACHE
    --encoders NAME ...``: encoder targets for an existing latent cache."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m train.data")
    sub = ap.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="the SD-VAE latent cache of an image folder", description=build_latent_cache.__doc__)
    enc.add_argument("--root", required=True, help="image folder with one subfolder per class")
    enc.add_argument("--out", required=True, help="cache directory")
    enc.add_argument("--size", type=int, default=256)
    enc.add_argument("--shard-size", type=int, default=1024)
    enc.add_argument("--batch-size", type=int, default=32)
    enc.add_argument("--vae", default="stabilityai/sd-vae-ft-mse", help="hub name or local diffusers directory")
    enc.add_argument("--random-init-vae", action="store_true", help="random VAE weights (tests only)")
    enc.add_argument("--hflip", action="store_true", help="also store the latents of mirrored images (for data.hflip)")
    tgt = sub.add_parser("targets", help="encoder targets of every image and its mirror image, beside a latent cache",
                         description=build_target_cache.__doc__)
    tgt.add_argument("--cache", required=True, help="latent cache directory (made by encode)")
    tgt.add_argument("--batch-size", type=int, default=64)
    for p, required in ((enc, False), (tgt, True)):
        p.add_argument("--encoders", nargs="+", required=required, default=[], help="target encoders, e.g. dinov2-vit-b")
        p.add_argument("--encoder-weights", nargs="+", help="one local weights path per encoder ('' for the default)")
        p.add_argument("--grid", type=int, help="tokens per side the model needs (latent side / patch; default: the encoder's)")
        p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored token precision")
        p.add_argument("--random-init-encoders", action="store_true", help="random encoder weights (tests only)")
        p.add_argument("--seed", type=int, default=0, help="with --random-init-encoders: the training run's seed")
        p.add_argument("--device", default="cpu")
    tgt.add_argument("--rebuild", action="store_true", help="replace targets made by another encoder, grid or dtype")
    args = ap.parse_args(argv)
    try:
        if args.command == "encode":
            from train.latents import SDVAECodec

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
    **GENERATED,
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
