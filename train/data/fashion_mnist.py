"""Fashion-MNIST (Xiao et al. 2017): 70,000 real photographs of clothing, 28 x 28 grey, 10 classes.

The built-in default's data (REPA-NOTES section 11).  Read from the four IDX files
``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (LeCun's format: a big-endian magic number whose
last byte is the rank, one big-endian int32 per dimension, then unsigned bytes), looked up in order in

1. ``root`` (``data.root``) or, when it is not given, ``$REPA_DATA``;
2. Debian's package folder ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``);
3. ``$REPA_CACHE/data``, where torchvision's downloader puts them when the machine is online.

In each folder the files may sit directly or under ``FashionMNIST/raw/`` (torchvision's layout).
Images are resized to ``size`` px (bilinear, antialiased; 16 px by default, the pilot's) and
replicated to 3 channels so that every dataset of the toolkit yields ``(3, H, W)`` uint8 images;
the ``grey`` codec (:mod:`train.data.latents`) gives the model one channel.  Split ``val`` (also
``test``) is the 10,000 test images.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from train.errors import UserError

CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {split: (f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte") for split, stem in
         (("train", "train"), ("val", "t10k"))}
INSTALL_HELP = ("install it with `apt-get install dataset-fashion-mnist` (Debian, as root), or put the four IDX files "
                "(train/t10k images and labels, .gz or not) in a folder and pass data.root=FOLDER or set REPA_DATA")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped when its name ends in ``.gz``) as a uint8 array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read the IDX file {path} ({e}) — replace it with an intact copy; {INSTALL_HELP}") from e
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number) — replace it with an intact copy")
    rank = blob[3]
    dims = [int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    offset, count = 4 + 4 * rank, int(np.prod(dims)) if dims else 0
    if len(blob) != offset + count:
        raise UserError(f"{path} holds {len(blob) - offset} bytes of data, its header says {count} — the file is "
                        "truncated or corrupt: replace it with an intact copy")
    return np.frombuffer(blob, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for sub in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem + ".gz", stem):
            if (sub / name).is_file():
                return sub / name
    return None


def _candidates(root: str | os.PathLike | None) -> list[Path]:
    from train.run.checkpoints import repa_cache_dir

    first = root if root is not None else os.environ.get("REPA_DATA")
    return [*([Path(first).expanduser()] if first else []), DEBIAN_DIR, Path(repa_cache_dir()) / "data"]


def _try_download(folder: Path) -> bool:
    """torchvision's download into ``folder/FashionMNIST/raw`` when a mirror answers; False offline."""
    from train.data.latents import download_possible

    try:
        from torchvision.datasets import FashionMNIST
    except ImportError:
        return False
    if not download_possible(FashionMNIST.mirrors[0]):
        return False
    try:
        FashionMNIST(str(folder), train=True, download=True)
    except (OSError, RuntimeError):
        return False
    return True


def locate(split: str, root: str | os.PathLike | None = None, download: bool = True) -> tuple[Path, Path]:
    """The ``(images, labels)`` IDX files of ``split`` (``train`` or ``val``), searched as the module
    docstring says; downloads (when online and ``root`` is not given) or raises one line saying how
    to get them."""
    images_stem, labels_stem = FILES[split]
    folders = _candidates(root)
    for folder in folders:
        images, labels = _find(folder, images_stem), _find(folder, labels_stem)
        if images and labels:
            return images, labels
        if root is not None:  # an explicit folder is the only place to look
            raise UserError(f"no Fashion-MNIST {split} files ({images_stem}[.gz], {labels_stem}[.gz]) in {folder} — "
                            f"pass the folder that holds them, or {INSTALL_HELP}")
    if download and _try_download(folders[-1]):
        return locate(split, root, download=False)
    raise UserError(f"Fashion-MNIST not found in {', '.join(map(str, folders))} and it cannot be downloaded here — "
                    f"{INSTALL_HELP}")


def _load(split: str, size: int, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = locate(split, root)
    stamp = tuple(p.stat().st_mtime_ns for p in (images_path, labels_path))
    return _read(images_path, labels_path, size, stamp)


@functools.lru_cache(maxsize=8)
def _read(images_path: Path, labels_path: Path, size: int, stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded and resized once per process (``stamp``: the files' modification times)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{images_path} ({images.shape}) and {labels_path} ({labels.shape}) do not pair up as N images "
                        "and N labels — replace them with an intact copy")
    if labels.size and labels.max() >= len(CLASSES):
        raise UserError(f"{labels_path} holds label {labels.max()}, outside 0..9 — replace it with an intact copy")
    x = torch.from_numpy(images.copy()).float()[:, None]                                # (N, 1, 28, 28)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()   # (N, 3, size, size)
    return x, torch.from_numpy(labels.astype(np.int64))


class FashionMNISTDataset(Dataset):
    """Fashion-MNIST in memory: ``images`` ``(N, 3, size, size)`` uint8 (grey in all three channels),
    ``labels`` ``(N,)``; ``n`` keeps the first ``n`` images; ``seed`` is accepted for the built-in
    datasets' common signature and unused (the data are fixed)."""

    num_classes = len(CLASSES)
    classes = CLASSES

    def __init__(self, split: str = "train", n: int | None = None, size: int = 16, seed: int = 0,
                 root: str | os.PathLike | None = None) -> None:
        split = "val" if split == "test" else split
        if split not in FILES:
            raise UserError(f"unknown split {split!r} for fashion-mnist — use 'train' or 'val' (the test images)")
        if not 4 <= size <= 64:
            raise UserError(f"fashion-mnist image size {size} is outside 4..64 px — use 16 (the default) or 28 (native)")
        images, labels = _load(split, int(size), None if root is None else str(Path(root).expanduser().resolve()))
        if n is not None:
            if n < 1:
                raise UserError(f"n_train {n} must be positive — use up to {len(images)}")
            images, labels = images[:n], labels[:n]
        self.images, self.labels, self.split, self.size = images, labels, split, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``): tests make small
    Fashion-MNIST folders with it."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(blob)
    return path
