"""What a probe reads, fixed: which images, the noise of each image, which tokens.

The offline probes (``probe.extract``, ``probe.tokens``) and the trainer's live alignment
(``train.run.live_align``) choose their images, noise and token pairs with these functions, so a live
measurement and an offline probe of the same weights on the same settings read the same inputs.

* :func:`subset_indices`: ``n`` of ``total`` images, drawn by ``torch.randperm`` seeded with
  ``seed``, sorted (all of them when ``n`` is None or at least ``total``).
* :func:`image_noise`: one standard-normal draw per image, seeded by :func:`noise_seed` from the
  probe seed and the image's dataset index -- the same noise for an image at every checkpoint,
  layer and t, whatever batch it falls in.
* :func:`token_pairs`: the (image position, token index) pairs token-level CKNNA reads.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def subset_indices(total: int, n: int | None, seed: int) -> Tensor:
    """Sorted dataset indices of ``n`` of ``total`` images drawn by ``seed`` (all when n is None or >= total)."""
    if n is None or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def noise_seed(seed: int, index: int) -> int:
    """``(seed * 0x9E3779B1 + index) mod 2**32``: distinct for every image of one seed (torch's CPU
    generator keeps only the low 32 bits of a seed, so wider mixes would collide)."""
    return (seed * 0x9E3779B1 + index) % 2**32


def image_noise(indices: Tensor, shape: Sequence[int], seed: int) -> Tensor:
    """(B, *shape) standard normal noise; image ``i`` always gets the draw seeded by :func:`noise_seed`."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(noise_seed(seed, int(i))))
                        for i in indices])


def token_pairs(n_images: int, n_tokens: int, m: int, seed: int) -> Tensor:
    """``(min(m, N T), 2)`` long (image position, token index) pairs, drawn without replacement from
    the ``N x T`` tokens by ``torch.Generator().manual_seed(seed)``, sorted (image-major)."""
    total = n_images * n_tokens
    flat = torch.arange(total) if m >= total else torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:m].sort().values
    return torch.stack([flat // n_tokens, flat % n_tokens], 1)
