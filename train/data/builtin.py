"""The built-in in-memory datasets by name, the ones the built-in teachers and evaluator train on.

Each takes ``(split, n=None, size=..., seed=0)`` and holds ``images`` ``(N, 3, H, W)`` uint8 and
``labels`` ``(N,)`` in memory: the generated ``shapes``, ``scenes`` and ``scenes-plain``
(:mod:`train.data.synthetic`) and the real ``fashion-mnist`` (:mod:`train.data.fashion_mnist`, the default).
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from train.data.fashion_mnist import FashionMNISTDataset
from train.data.synthetic import GENERATED

BUILTIN: dict[str, Callable[..., Dataset]] = {**GENERATED, "fashion-mnist": FashionMNISTDataset}
