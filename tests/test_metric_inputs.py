"""Issue 22: every public metric refuses what it cannot score, property-based (``hypothesis``):
random shapes with NaN/inf sprinkled in, N below what the metric needs, mismatched N and wrong
ranks always raise ``ValueError``, never return a number; on valid input the values equal the
brute-force references (dense N x N forms, scipy's sqrtm, double loops, numpy)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import train.evaluation.generation_metrics as gm
import train.evaluation.metrics as tm
from test_metrics import _spatial_loops

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = lambda x: torch.as_tensor(x)  # noqa: E731


def _pr_reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Improved precision/recall by full distance matrices."""
    def inside(query, ref):
        d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
        radii = np.sort(d_ref, axis=1)[:, k]  # column 0 is the point itself
        return (np.linalg.norm(query[:, None] - ref[None], axis=-1) <= radii[None]).any(1).mean()
    return {"precision": inside(fake, real), "recall": inside(real, fake)}


def _is_reference(logits: np.ndarray, splits: int) -> tuple[float, float]:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for part in np.array_split(p, min(splits, len(p))):
        py = part.mean(0, keepdims=True)
        scores.append(math.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    return float(np.mean(scores)), float(np.std(scores))


def _fd_reference(a: np.ndarray, b: np.ndarray) -> float:
    (m1, s1), (m2, s2) = ((x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))) for x in (a, b))
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def _prepare_reference(x: np.ndarray) -> np.ndarray:
    thr = np.quantile(np.abs(x).reshape(len(x), -1), 0.95, axis=1).mean()
    c = np.clip(x, -thr, thr)
    return c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)


def _tokens(n: int, d: int, rng) -> np.ndarray:
    return rng.standard_normal((n, 16, d))  # a 4 x 4 grid: every spatial metric defined


def _kid_reference(a, b, k):
    from torch_fidelity.metric_kid import kid_features_to_metric

    return kid_features_to_metric(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                                  kid_subsets=3, kid_subset_size=max(2, k), kid_kernel="poly", kid_kernel_poly_degree=3,
                                  kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=1,
                                  verbose=False)["kernel_inception_distance_mean"]


# name -> (make inputs from (rng, n, d, k), call, rows it needs for k, reference or None, paired rows?)
CASES = {
    "prepare": (lambda r, n, d, k: (r.standard_normal((n, d)),), lambda x: tm.prepare(T(x)).numpy(), lambda k: 1,
                _prepare_reference, False),
    "cknna": (lambda r, n, d, k: (r.standard_normal((n, d)), r.standard_normal((n, d)), k),
              lambda a, b, k: tm.cknna(T(a), T(b), k), lambda k: max(4, k + 1),
              lambda a, b, k: tm._cknna_dense(T(a), T(b), k), True),
    "cka": (lambda r, n, d, k: (r.standard_normal((n, d)), r.standard_normal((n, d))),
            lambda a, b: tm.cka(T(a), T(b), unbiased=True), lambda k: 4,
            lambda a, b: tm._cka_dense(T(a), T(b), unbiased=True), True),
    "mutual_knn": (lambda r, n, d, k: (r.standard_normal((n, d)), r.standard_normal((n, d)), k),
                   lambda a, b, k: tm.mutual_knn(T(a), T(b), k), lambda k: k + 1,
                   lambda a, b, k: tm._mutual_knn_dense(T(a), T(b), k), True),
    "spatial_metrics": (lambda r, n, d, k: (_tokens(n, d, r),), lambda x: {m: v.mean().item() for m, v in tm.spatial_metrics(T(x)).items()},
                        lambda k: 1, lambda x: _spatial_loops(x, 1, tm.default_r_far(4)), False),
    "lds": (lambda r, n, d, k: (_tokens(n, d, r),), lambda x: tm.lds(T(x)), lambda k: 1,
            lambda x: _spatial_loops(x, 1, tm.default_r_far(4))["lds"], False),
    "cds": (lambda r, n, d, k: (_tokens(n, d, r),), lambda x: tm.cds(T(x)), lambda k: 1, lambda x: _spatial_loops(x, 1, 2)["cds"], False),
    "rmsc": (lambda r, n, d, k: (_tokens(n, d, r),), lambda x: tm.rmsc(T(x)), lambda k: 1, lambda x: _spatial_loops(x, 1, 2)["rmsc"], False),
    "feature_statistics": (lambda r, n, d, k: (r.standard_normal((n, d)),), gm.feature_statistics, lambda k: 2,
                           lambda x: (x.mean(0), np.cov(x, rowvar=False)), False),
    "frechet_distance": (lambda r, n, d, k: (r.standard_normal((n, d)), 1 + r.standard_normal((n, d))),
                         lambda a, b: gm.frechet_distance(*gm.feature_statistics(a), *gm.feature_statistics(b)),
                         lambda k: 2, _fd_reference, False),
    "precision_recall": (lambda r, n, d, k: (r.standard_normal((n, d)), r.standard_normal((n, d)), k),
                         lambda a, b, k: gm.precision_recall(a, b, k), lambda k: k + 1, _pr_reference, False),
    "inception_score": (lambda r, n, d, k: (r.standard_normal((n, d)) * 3, k), lambda x, k: gm.inception_score(x, k),
                        lambda k: 1, _is_reference, False),
    "kid": (lambda r, n, d, k: (r.standard_normal((n, d)), 0.5 + r.standard_normal((n + 1, d)), k),
            lambda a, b, k: gm.kid(a, b, subsets=3, subset_size=max(2, k), seed=1)["kid"], lambda k: max(2, k),
            _kid_reference, False),
    "default_r_far": (lambda r, n, d, k: (n + 1, min(k, n)), tm.default_r_far, lambda k: 1,
                      lambda g, r: max(r + 1, math.floor(6 * g / 16 + 0.5)), False),
}
NAMES = sorted(CASES)
ARRAYS = [n for n in NAMES if n != "default_r_far"]


def test_every_public_metric_has_a_case():
    public = {name for mod in (tm, gm) for name, f in inspect.getmembers(mod, inspect.isfunction)
              if f.__module__ == mod.__name__ and not name.startswith("_")}
    assert public == set(CASES), public ^ set(CASES)


def _inputs(name, seed, n, d, k):
    return CASES[name][0](np.random.default_rng(seed), n, d, k)


def _same(x, y) -> bool:
    if isinstance(x, dict):
        return all(_same(x[key], y[key]) for key in x)
    if isinstance(x, (tuple, list)):
        return all(_same(a, b) for a, b in zip(x, y))
    return np.allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-4, atol=1e-5, equal_nan=False)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(12, 24), d=st.integers(1, 6), k=st.integers(2, 5))
def test_valid_input_equals_the_brute_force_reference(name, seed, n, d, k):
    make, call, need, reference, _ = CASES[name]
    args = _inputs(name, seed, n, d, k)
    assert _same(call(*args), reference(*args)), name


@pytest.mark.parametrize("name", ARRAYS)
@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(12, 20), d=st.integers(1, 5),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]), which=st.integers(0, 1), where=st.integers(0, 999))
def test_nonfinite_values_are_refused(name, seed, n, d, bad, which, where):
    args = list(_inputs(name, seed, n, d, 3))
    arrays = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    i = arrays[which % len(arrays)]
    x = args[i].copy()
    x.reshape(-1)[where * x.size // 1000] = bad
    args[i] = x
    with pytest.raises(ValueError, match="NaN or infinite"):
        CASES[name][1](*args)


@pytest.mark.parametrize("name", ARRAYS)
@SETTINGS
@given(seed=st.integers(0, 2**16), d=st.integers(1, 5), k=st.integers(2, 6), short=st.integers(1, 4))
def test_fewer_rows_than_needed_are_refused(name, seed, d, k, short):
    n = CASES[name][2](k) - short
    if n < 0:
        return
    args = _inputs(name, seed, max(n, 1), d, k)
    args = [a[:n] if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(ValueError):
        CASES[name][1](*args)


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n][4]])
@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(12, 20),
       d=st.integers(1, 5), drop=st.integers(1, 5))
def test_mismatched_rows_are_refused(name, seed, n, d, drop):
    a, b, *rest = _inputs(name, seed, n, d, 3)
    with pytest.raises(ValueError, match="rows"):
        CASES[name][1](a, b[:-drop], *rest)


@pytest.mark.parametrize("name", ARRAYS)
@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(12, 20), d=st.integers(1, 5),
       rank=st.sampled_from(["flat", "deeper"]))
def test_wrong_ranks_are_refused(name, seed, n, d, rank):
    args = list(_inputs(name, seed, n, d, 3))
    x = args[0]
    if rank == "flat":
        args[0] = x.reshape(-1)
    elif name != "prepare":  # prepare takes (N, ..., D) stacks
        args[0] = x[..., None, :]
    else:
        return
    with pytest.raises(ValueError):
        CASES[name][1](*args)


@pytest.mark.parametrize("call", [lambda: gm.precision_recall(np.ones((5, 3)), np.ones((5, 4))), lambda: gm.inception_score(np.ones((4, 3)), 0),
                                  lambda: tm.default_r_far(1), lambda: tm.default_r_far(8, 1.5),
                                  lambda: gm.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2)),
                                  lambda: gm.feature_statistics([["a", "b"], ["c", "d"]])])
def test_other_nonsense_is_a_value_error(call):
    with pytest.raises(ValueError):
        call()
