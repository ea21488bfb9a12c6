"""What the public metric functions refuse (``train.evaluation.metrics``, ``probe.metrics``,
``train.evaluation.generation_metrics``): input they cannot score raises :class:`MetricInputError` -- a
``ValueError`` for Python callers and a :class:`~train.errors.UserError` that the command lines
print as one line -- naming the function, the argument, the problem and the fix.  Never a number
from no data: non-finite values, fewer rows than the metric needs (k-NN with k >= N, a covariance
from one row, ...), row counts that do not pair up, and tensors of the wrong rank.

Each metric calls these at its top, e.g.::

    a, b = paired("cknna", a, b, min_rows=4, why="for the unbiased HSIC")
    k_neighbours("cknna", k, len(a), minimum=2)
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from train.errors import UserError


class MetricInputError(UserError, ValueError):
    """Input a metric cannot score; one line: function, argument, problem, fix."""


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else np.shape(x)


def _all_finite(x: Any) -> bool:
    import torch

    if isinstance(x, torch.Tensor):
        return not (x.is_floating_point() or x.is_complex()) or bool(torch.isfinite(x).all())
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufc":
        raise MetricInputError(f"the input holds {arr.dtype} values, not numbers: pass a numeric array or tensor")
    return arr.dtype.kind in "biu" or bool(np.isfinite(arr).all())


def features(fn: str, x: Any, arg: str = "x", ndim: int | tuple[int, int] = 2, min_rows: int = 1, why: str = "",
             what: str = "(N, D) features") -> Any:
    """``x`` (array, tensor or nested list) of rank ``ndim`` (or in the range ``(lo, hi)``), with at least
    ``min_rows`` rows and no NaN / inf; returned unchanged."""
    shape = _shape(x)
    lo, hi = (ndim, ndim) if isinstance(ndim, int) else ndim
    if not lo <= len(shape) <= hi:
        rank = f"{lo}-d" if lo == hi else f"{lo}-d to {hi}-d"
        raise MetricInputError(f"{fn}: {arg} must be {rank} {what}, got shape {shape}: reshape it (e.g. pool or flatten the tokens)")
    if shape[0] < min_rows or 0 in shape[1:]:
        raise MetricInputError(f"{fn}: {arg} has shape {shape}; it needs at least {min_rows} row(s) of non-empty features{why}: pass more samples")
    try:
        ok = _all_finite(x)
    except MetricInputError as e:
        raise MetricInputError(f"{fn}: {arg}: {e}") from None
    if not ok:
        raise MetricInputError(f"{fn}: {arg} holds NaN or infinite values: check the model or encoder that produced them "
                               "(a checkpoint with NaN weights: probe an earlier one)")
    return x


def paired(fn: str, a: Any, b: Any, min_rows: int = 1, why: str = "", names: tuple[str, str] = ("a", "b")) -> tuple[Any, Any]:
    """Two ``(N, D)`` inputs whose rows are paired samples: the same N, each as :func:`features` asks."""
    for arg, x in zip(names, (a, b)):
        shape = _shape(x)
        if len(shape) != 2:
            features(fn, x, arg)  # the rank message
    if _shape(a)[0] != _shape(b)[0]:
        raise MetricInputError(f"{fn}: {names[0]} and {names[1]} have {_shape(a)[0]} and {_shape(b)[0]} rows, but rows are paired "
                               "samples: pass the features of the same N inputs")
    return features(fn, a, names[0], 2, min_rows, why), features(fn, b, names[1], 2, min_rows, why)


def same_width(fn: str, a: Any, b: Any, names: tuple[str, str] = ("real", "fake")) -> None:
    """Two feature sets in one space: the same D."""
    if _shape(a)[-1] != _shape(b)[-1]:
        raise MetricInputError(f"{fn}: {names[0]} and {names[1]} have widths {_shape(a)[-1]} and {_shape(b)[-1]}: "
                               "pass features of the same network")


def integer(fn: str, name: str, value: Any, minimum: int, fix: str) -> int:
    """An int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise MetricInputError(f"{fn}: {name} must be an int >= {minimum}, got {value!r}: pass {fix}")
    return int(value)


def k_neighbours(fn: str, k: Any, n: int, minimum: int = 1) -> int:
    """k nearest neighbours among the other N - 1 rows: an int with ``minimum <= k < N``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not minimum <= k < n:
        raise MetricInputError(f"{fn}: k must be an int with {minimum} <= k < N = {n} (rows), got {k!r}; "
                               "pass e.g. k=10 with more than 10 rows")
    return int(k)
