"""Generation metrics on feature arrays: :func:`feature_statistics`, :func:`frechet_distance`,
:func:`precision_recall`, :func:`inception_score`, :func:`kid` (pure functions; re-exported by ``train.evaluation.evaluate``).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from train.evaluation.checks import MetricInputError, features, integer, same_width

Tensor = torch.Tensor


def feature_statistics(feats: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ``N - 1``) covariance of ``(N, D)`` features, in float64."""
    features("feature_statistics", feats, "feats", min_rows=2, why=" (a covariance needs 2)")
    x = np.asarray(feats, dtype=np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues from round-off -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017,
    eq. 6; Dowson & Landau 1982)::

        d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

    in float64.  The trace of the matrix square root is taken in the symmetric form
    ``Tr((sigma1 sigma2)^(1/2)) = Tr((S sigma2 S)^(1/2))`` with ``S = sigma1^(1/2)``: ``S sigma2 S`` is
    symmetric PSD, so its root's trace is the sum of the roots of its (clipped) eigenvalues -- no
    complex parts and no ill-conditioned ``sqrtm`` of a non-symmetric product.
    """
    for name, x, rank in (("mu1", mu1, 1), ("sigma1", sigma1, 2), ("mu2", mu2, 1), ("sigma2", sigma2, 2)):
        features("frechet_distance", np.atleast_1d(x) if rank == 1 else np.atleast_2d(x), name, rank,
                 what="mean" if rank == 1 else "covariance")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise MetricInputError(f"frechet_distance: shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}: "
                               "pass the statistics of two feature sets of one network (feature_statistics)")
    root = _psd_sqrt(s1)
    m = root @ s2 @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _kth_nn_radius(x: Tensor, k: int, batch: int) -> Tensor:
    """Distance of every row of ``x`` to its ``k``-th nearest other row."""
    return torch.cat([torch.cdist(x[s:s + batch], x).kthvalue(k + 1, dim=1).values for s in range(0, len(x), batch)])


def _in_manifold(query: Tensor, ref: Tensor, radii: Tensor, batch: int) -> Tensor:
    """For each query row: does it lie in at least one ball ``B(ref_j, radii_j)``?"""
    return torch.cat([(torch.cdist(query[s:s + batch], ref) <= radii[None]).any(1) for s in range(0, len(query), batch)])


def precision_recall(real: np.ndarray | Tensor, fake: np.ndarray | Tensor, k: int = 3,
                     batch: int = 1024) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-3).

    The manifold of a set is the union of balls around its points, each with the radius to that
    point's ``k``-th nearest neighbour in the set.  Precision = fraction of ``fake`` inside the real
    manifold; recall = fraction of ``real`` inside the fake manifold.  Both sets should have the same
    size (the paper: 50k each, k = 3).
    """
    k = integer("precision_recall", "k", k, 1, "the paper's k = 3")
    batch = integer("precision_recall", "batch", batch, 1, "e.g. 1024")
    for name, x in (("real", real), ("fake", fake)):
        features("precision_recall", x, name, min_rows=k + 1, why=f" (k = {k} neighbours among the others)")
    same_width("precision_recall", real, fake)
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    precision = _in_manifold(f, r, _kth_nn_radius(r, k, batch), batch).float().mean().item()
    recall = _in_manifold(r, f, _kth_nn_radius(f, k, batch), batch).float().mean().item()
    return {"precision": precision, "recall": recall}


def inception_score(logits: np.ndarray | Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` on each of ``splits``
    equal parts, ``p(y)`` the part's mean prediction; returns the mean and std over the parts."""
    features("inception_score", logits, "logits", what="(N, classes) logits")
    splits = integer("inception_score", "splits", splits, 1, "the standard 10")
    logp = torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1)
    scores = []
    for part in torch.tensor_split(logp, min(splits, len(logp))):
        log_py = torch.logsumexp(part, 0) - math.log(len(part))
        scores.append(math.exp((part.exp() * (part - log_py)).sum(1).mean().item()))
    return float(np.mean(scores)), float(np.std(scores))


def _poly_kernel(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    """``(gamma a b^T + coef0)^degree``, an integer power by repeated products in place (five times
    faster than ``**`` on a 1000 x 1000 float64 matrix; equal to it within 1e-15 relative)."""
    k = a @ b.T
    k *= gamma
    k += coef0
    if not (isinstance(degree, (int, np.integer)) and 1 <= degree <= 8):
        return k ** degree
    out = k.copy()
    for _ in range(degree - 1):
        out *= k
    return out


def _self_kernel_sums(x: np.ndarray, degree: int, gamma: float, coef0: float) -> tuple[float, float]:
    """``(sum_{i, j} k(x_i, x_j), sum_i k(x_i, x_i))``: the within-set kernel of :func:`_mmd2_unbiased`."""
    k = _poly_kernel(x, x, degree, gamma, coef0)
    return k.sum(), np.trace(k)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float,
                   y_sums: tuple[float, float] | None = None) -> float:
    """Unbiased MMD^2 of two equal-size sets with the polynomial kernel k(a, b) = (gamma a.b + coef0)^degree:
    sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2
    (Binkowski et al. 2018, eq. 2 with the cross term over all pairs, as torch-fidelity's ``mmd2``).
    ``y_sums``: ``y``'s :func:`_self_kernel_sums` when already known (the same float64 numbers, so the
    same result to the bit)."""
    m = len(x)
    xx_sum, xx_trace = _self_kernel_sums(x, degree, gamma, coef0)
    yy_sum, yy_trace = _self_kernel_sums(y, degree, gamma, coef0) if y_sums is None else y_sums
    k_xy = _poly_kernel(x, y, degree, gamma, coef0)
    within = (xx_sum - xx_trace + yy_sum - yy_trace) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kid(fake: np.ndarray | Tensor, real: np.ndarray | Tensor, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0, seed: int = 0,
        memo: dict | None = None) -> dict[str, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity defines it: the unbiased
    MMD^2 (:func:`_mmd2_unbiased`) with the kernel ``(x.y / d + 1)^3`` (``gamma = 1 / d`` by default,
    ``d`` the feature width) on ``subsets`` random pairs of subsets of ``subset_size`` rows, drawn
    without replacement by ``numpy.random.RandomState(seed)`` -- first from ``fake``, then from
    ``real``, as torch-fidelity draws from its first and second input.  Returns ``kid`` (the mean over
    subsets) and ``kid_std`` (their standard deviation, torch-fidelity's ``kernel_inception_distance_std``),
    in float64.  Unbiased, so usable at a few thousand samples where FD's bias dominates; it can be
    slightly negative when the two sets come from one distribution.

    ``memo``: a dict the caller keeps between calls that score many fake sets against one ``real`` set
    (a training run's evaluations): the real subsets' within-set kernel sums, a third of the work, are
    kept there. The subsets drawn depend only on the seed and the sizes, so the sums are reused only for
    the same ``(len(fake), real, subsets, subset_size, seed, kernel)``; the result is the same to the bit
    with or without it. Entries are keyed by those and a hash of ``real``'s bytes, so one memo may serve
    several real sets (two sets differing anywhere get two entries)."""
    subsets = integer("kid", "subsets", subsets, 1, "e.g. 100 (torch-fidelity's default)")
    subset_size = integer("kid", "subset_size", subset_size, 2, "e.g. 1000, at most the rows of each set")
    why = f" for subsets of {subset_size} rows drawn without replacement"
    f = np.asarray(features("kid", fake, "fake", min_rows=subset_size, why=why), dtype=np.float64)
    r = np.asarray(features("kid", real, "real", min_rows=subset_size, why=why), dtype=np.float64)
    same_width("kid", r, f)
    g = 1.0 / f.shape[1] if gamma is None else gamma
    key = known = None
    if memo is not None:  # hashing the real set (~10 ms for 10,000 x 128) only when there is a memo to key
        fingerprint = hashlib.blake2b(np.ascontiguousarray(r).tobytes(), digest_size=16).hexdigest()
        key = (len(f), r.shape, fingerprint, subsets, subset_size, seed, degree, g, coef0)
        known = memo.get(key)
    sums = []
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f[rng.choice(len(f), subset_size, replace=False)]
        b = r[rng.choice(len(r), subset_size, replace=False)]
        sums.append(known[i] if known is not None else _self_kernel_sums(b, degree, g, coef0))
        mmds[i] = _mmd2_unbiased(a, b, degree, g, coef0, y_sums=sums[-1])
    if memo is not None:
        memo[key] = sums
    return {"kid": float(mmds.mean()), "kid_std": float(mmds.std())}
