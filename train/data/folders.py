"""ImageNet-style image folders: ``root/<class>/<image>`` with the ADM/DiT centre crop.

:class:`ImageFolderDataset` yields ``(uint8 (3, H, W), label)`` like every dataset of ``train.data.datasets``
(which re-exports it and builds it by name, ``folder``); :func:`center_crop_arr` is the crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from train.errors import UserError


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
