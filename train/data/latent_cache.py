"""The SD-VAE latent cache of an image folder, driven by a manifest.

:func:`build_latent_cache` (``python -m train.data encode``) stores the posterior of every image of
a folder (and of its mirror image with ``hflip``) in safetensors shards listed by ``manifest.csv``;
:class:`LatentCacheDataset` reads them back (``train.data.datasets`` builds it by name, ``latents``, and
re-exports both).  The encoder-target cache beside it is :mod:`train.targets.stored`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from train.errors import UserError
from train.data.folders import ImageFolderDataset


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
    refused.  ``codec`` defaults to the SD-VAE (``train.data.latents.SDVAECodec``).
    """
    import csv
    import sys

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from train.run.checkpoints import atomic_write

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
        from train.data.latents import SDVAECodec

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
