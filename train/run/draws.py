"""Every random draw of a training step, from generators that depend only on ``(seed, step, rank,
stream)``: the data order (:func:`batch_indices`) and the step's time, noise and label dropout
(:func:`step_generator`).  This is what makes a run stopped anywhere (kill -9 included) resume to
bitwise the same weights, and a batch split over processes draw what one process would."""

from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0, device="cpu") -> torch.Generator:
    """A generator that depends only on (seed, step, rank, stream): the key to exact resume.

    torch's CPU generator keeps only the low 32 bits of a seed, so the tuple is hashed to 32 bits
    with NumPy's SeedSequence (well mixed; two steps of a 400K-step run share draws with
    probability ~n^2 / 2^33, which is harmless).
    """
    key = int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])
    return torch.Generator(device).manual_seed(key)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of an epoch: a permutation fixed by (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))


def batch_indices(n: int, batch: int, seed: int, step: int) -> Tensor:
    """Dataset indices of global batch ``step`` (0-based): consecutive slices of per-epoch orders."""
    start, have, parts = step * batch, 0, []
    while have < batch:
        epoch, pos = divmod(start + have, n)
        take = min(batch - have, n - pos)
        parts.append(epoch_order(n, seed, epoch)[pos:pos + take])
        have += take
    return torch.cat(parts)
