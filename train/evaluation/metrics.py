"""Representation-alignment metrics: CKNNA, linear CKA and mutual k-NN, without N x N matrices;
and the spatial-structure metrics of iREPA (LDS, CDS, RMSC) of patch tokens on a grid.

Definitions follow the reference implementation of Huh et al. 2024, "The Platonic Representation
Hypothesis" (github.com/minyoungg/platonic-rep, ``metrics.py`` and ``measure_alignment.py``,
commit 07ef02a); the tests compare against outputs of that code (``tests/fixtures/README.md``).

The reference materialises N x N Gram matrices and, inside its unbiased HSIC, an N x N x N matrix
product. Here a Gram matrix is only ever formed one panel of rows at a time (upper triangle only,
each panel serving its rows and, transposed, its columns) to extract per-row top-k neighbours
(memory O(N k) plus one panel); every HSIC term is then summed over the O(N k) kept entries, and
linear CKA uses feature-space products (O(N D^2) time, O(D^2) memory).

Conventions shared by all public metrics:

* Inputs are ``(N, D)`` feature matrices with the same N (rows are paired samples); they are used
  as given: call :func:`prepare` first to reproduce the reference preprocessing.
* Gram panels and top-k run on the inputs' device in ``dtype`` (default: the promoted input
  dtype; pass ``torch.float64`` to compute in double); the O(N k) / O(N) reductions that assemble
  HSIC values always accumulate in float64.
* Every metric returns a Python ``float``.
* ``mode="reference"`` reproduces the reference score ``HSIC_kl / (sqrt(HSIC_kk HSIC_ll) + 1e-6)``;
  the 1e-6 is not negligible next to unbiased HSIC values of unit-norm rows (about 1e-4 .. 1e-5),
  so that score depends on the feature scale. ``mode="exact"`` drops the 1e-6: scale-free.
* Ties in top-k: neighbour sets come from ``torch.topk`` on the same row values as the reference,
  so they agree on data without tied similarities; with exact ties, which tied column is kept is
  implementation-defined (in the reference too) and results may differ.

The spatial metrics (:func:`lds`, :func:`cds`, :func:`rmsc`, :func:`spatial_metrics`) take the
tokens ``(N, T, D)`` of N images on a square grid instead; see :func:`spatial_metrics`.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from train.evaluation.checks import MetricInputError, features, integer, k_neighbours, paired

Mode = Literal["reference", "exact"]

_REFERENCE_EPS = 1e-6  # added to the denominator by the reference cka / cknna
_DEFAULT_BLOCK = 1024  # Gram rows per panel: 1024 x N entries (200 MiB in float32 at N = 50,000)


def prepare(x: Tensor, q: float | None = 0.95, normalize: bool = True, exact: bool = False) -> Tensor:
    """Clip outliers at a quantile of ``|x|``, then L2-normalise the last dimension.

    Reproduces the reference preprocessing: ``measure_alignment.prepare_features`` calls
    ``metrics.remove_outliers(feats.float(), q, exact)`` and ``compute_score`` then applies
    ``F.normalize(x, p=2, dim=-1)``. The clipping threshold is

    * ``exact=False`` (the reference default): the q-quantile (linear interpolation,
      ``torch.quantile``) of ``|x|`` within each sample (dim 0; all other dims flattened, so an
      ``(N, layers, D)`` stack shares one threshold as in the reference), averaged over samples;
    * ``exact=True``: element ``int(q * numel)`` of all ``|x|`` sorted ascending.

    ``x`` is clamped to ``[-threshold, threshold]``. ``q=1`` or ``None`` disables clipping.
    Integer and half-precision inputs are converted to float32 (the reference calls ``.float()``);
    float32 / float64 are kept.
    """
    x = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    features("prepare", x, "x", ndim=(2, 8), what="(N, ..., D) features with the samples first")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if q is not None and q != 1:
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1], or None to disable clipping; got {q}")
        if exact:
            flat = x.abs().flatten()
            threshold = flat.kthvalue(int(q * flat.numel()) + 1).values
        else:
            threshold = torch.quantile(x.abs().flatten(start_dim=1), q, dim=1).mean()
        x = x.clamp(-threshold, threshold)
    return F.normalize(x, p=2, dim=-1) if normalize else x


def cknna(
    a: Tensor,
    b: Tensor,
    k: int = 10,
    mode: Mode = "reference",
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> float:
    """Centered kernel nearest-neighbour alignment (Huh et al. 2024, reference ``cknna``).

    With linear kernels ``K = a a^T`` and ``L = b b^T``, let ``M_K`` mark, in each row, the k
    largest off-diagonal entries of K (diagonal excluded by setting it to -inf before top-k), and
    ``M_L`` likewise for L. Then::

        HSIC_kl = HSIC_u(M_K M_L K, M_K M_L L)    (elementwise masks)
        HSIC_kk = HSIC_u(M_K K, M_K K),  HSIC_ll = HSIC_u(M_L L, M_L L)

    where ``HSIC_u`` is the unbiased estimator of Song et al. 2012 (JMLR 13, eq. 5), as in the
    reference ``hsic_unbiased``: with Kt, Lt the matrices with zeroed diagonals and m = N,
    ``[sum(Kt * Lt^T) + sum(Kt) sum(Lt) / ((m-1)(m-2)) - 2 sum(Kt Lt) / (m-2)] / (m (m-3))``.
    Score: ``HSIC_kl / (sqrt(HSIC_kk HSIC_ll) + 1e-6)`` (``mode="reference"``) or
    ``HSIC_kl / sqrt(HSIC_kk HSIC_ll)`` (``mode="exact"``; NaN if the masked self-HSIC terms
    have opposite signs, which only degenerate inputs produce — as in the reference).

    Each HSIC term is computed from the O(N k) kept entries: ``sum(Kt * Lt^T)`` pairs entry (i, j)
    with entry (j, i), found by binary search on sorted keys ``i N + j``, and
    ``sum(Kt Lt) = (column sums of Kt) . (row sums of Lt)``.
    ``block_size`` is the number of Gram rows formed at once (default 1024; memory
    ``block_size x N``; any value works, it need not divide N).
    With ``k = N - 1`` every off-diagonal entry is kept and the score equals ``cka(a, b,
    unbiased=True, mode=mode)``. Requires an int ``2 <= k < N`` and N >= 4.
    """
    a, b = _as_pair(a, b, dtype, "cknna", 4, " for the unbiased HSIC")
    n = a.shape[0]
    _check_mode(mode)
    _check_k(k, n, minimum=2, name="cknna")
    rows = _block_rows(block_size)
    keys_k, vals_k = _sorted_support(*_gram_topk(a, k, rows, float("-inf")))
    keys_l, vals_l = _sorted_support(*_gram_topk(b, k, rows, float("-inf")))
    pos = torch.searchsorted(keys_l, keys_k).clamp_(max=keys_l.numel() - 1)
    both = keys_l[pos] == keys_k
    hsic_kl = _hsic_unbiased_sparse(keys_k[both], vals_k[both], vals_l[pos[both]], n)
    hsic_kk = _hsic_unbiased_sparse(keys_k, vals_k, vals_k, n)
    hsic_ll = _hsic_unbiased_sparse(keys_l, vals_l, vals_l, n)
    return _score(hsic_kl, hsic_kk, hsic_ll, mode)


def cka(
    a: Tensor,
    b: Tensor,
    unbiased: bool = False,
    mode: Mode = "reference",
    dtype: torch.dtype | None = None,
) -> float:
    """Linear centered kernel alignment (Kornblith et al. 2019), as the reference ``cka`` /
    ``unbiased_cka`` with ``kernel_metric='ip'``.

    ``K = a a^T``, ``L = b b^T``. Biased (``unbiased=False``): ``HSIC(K, L) = tr(K H L H)`` with
    ``H = I - 1/N``, computed as ``||a_c^T b_c||_F^2`` for column-centred ``a_c, b_c``. Unbiased:
    the Song et al. 2012 estimator (see :func:`cknna`), computed without N x N matrices from
    ``sum(K * L) = ||a^T b||_F^2``, ``diag K = |a_i|^2`` and ``Kt 1 = a (a^T 1) - diag K``::

        sum(Kt * Lt^T) = ||a^T b||_F^2 - diag(K) . diag(L)
        sum(Kt) = 1 . (Kt 1),   sum(Kt Lt) = (Kt 1) . (Lt 1)

    The squared Frobenius norms are taken in feature space (D x D products, O(N D^2)) or, when
    N < D, from the N x N Gram matrices. Score as in :func:`cknna` (``mode``). Requires N >= 4 when
    unbiased.
    """
    a, b = _as_pair(a, b, dtype, "cka", 4 if unbiased else 2, " (unbiased HSIC: 4)" if unbiased else " (centring one row leaves nothing)")
    _check_mode(mode)
    if not unbiased:
        hsic_kk, hsic_ll, hsic_kl = _frobenius_products(a - a.mean(0), b - b.mean(0))
    else:
        hsic_kk, hsic_ll, hsic_kl = _hsic_unbiased_linear(a, b)
    return _score(hsic_kl, hsic_kk, hsic_ll, mode)


def mutual_knn(
    a: Tensor,
    b: Tensor,
    k: int = 10,
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024, reference ``mutual_knn``).

    ``mean_i |kNN_a(i) ∩ kNN_b(i)| / k``, where ``kNN_x(i)`` are the k columns with the largest
    inner products ``x_i . x_j`` (the reference ``compute_nearest_neighbors``, which sets the
    diagonal to -1e8 and sorts each row), found one panel of Gram rows at a time as in :func:`cknna`.
    Requires an int ``1 <= k < N``.
    """
    a, b = _as_pair(a, b, dtype, "mutual_knn", 2, " (k >= 1 neighbours among the other rows)")
    n = a.shape[0]
    _check_k(k, n, minimum=1, name="mutual_knn")
    rows = _block_rows(block_size)
    keys_a = _keys(_gram_topk(a, k, rows, -1e8)[1])
    keys_b = _keys(_gram_topk(b, k, rows, -1e8)[1])
    return torch.isin(keys_a, keys_b).sum().item() / (n * k)


# ---------------------------------------------------------------------------------------------
# Spatial structure of patch tokens (iREPA)

SPATIAL = ("lds", "cds", "rmsc")
_SPATIAL_CHUNK = 1 << 24  # Gram entries (images x T x T) formed at once: 64 MiB in float32


def spatial_metrics(tokens: Tensor, metrics: Sequence[str] = SPATIAL, r_near: int = 1,
                    r_far: int | None = None) -> dict[str, Tensor]:
    """Per-image spatial-structure metrics of patch tokens: ``{name: (N,) float64}``.

    Singh et al. 2025, "What matters for representation alignment" (iREPA, arXiv 2512.10794;
    github.com/End2End-Diffusion/iREPA, ``metrics/spatial_metrics.py``, commit 99ad4ac).
    ``tokens``: ``(N, T, D)``, T = g * g tokens of each image in row-major order (token index
    ``row * g + col``). With ``x^_t = x_t / |x_t|`` (``F.normalize``, eps 1e-8, as the reference),
    ``K(t, t') = <x^_t, x^_t'>`` and ``d(t, t')`` the Manhattan distance of the grid positions:

    * ``lds`` (local vs distant similarity): ``mean K over pairs with 0 < d <= r_near`` minus
      ``mean K over pairs with d >= r_far``. The reference averages each set over all its pairs of
      an image pooled (not per distance): the near set is its 4-neighbour pairs, each unordered
      pair once (``r_near = 1`` fixed there), the far set is every ordered pair ``t != t'`` of the
      T x T Gram matrix; K is symmetric, so ordered and unordered means agree, and self-pairs never
      qualify. Its ``far_dist`` is 6 on 16 x 16 grids; ``r_far=None`` scales that to the grid:
      ``max(r_near + 1, 6 g / 16 rounded half up)`` (16 -> 6, 8 -> 3, 4 -> 2, 32 -> 12).
    * ``cds`` (correlation-decay slope): minus the least-squares slope of ``S(d) = mean K over
      pairs at distance d`` against d = 1 .. g // 2 (the reference's ``dmax`` is 8 on 16 x 16).
    * ``rmsc`` (RMS spatial contrast): ``sqrt(mean_t |x^_t - mean_s x^_s|^2)`` per image; as in the
      reference, the square root is taken per image and the images' values are then averaged.

    Each value is per image; the public :func:`lds`, :func:`cds`, :func:`rmsc` average them over
    images (equally weighted, as the reference's ``per_image.mean()``). Computed in float32 (float64
    for float64 input) from batched Gram matrices and a precomputed distance matrix.
    """
    names = tuple(metrics)
    if any(m not in SPATIAL for m in names):
        raise MetricInputError(f"unknown spatial metric in {list(names)}: use {', '.join(SPATIAL)}")
    g = _check_tokens(tokens)
    near, far = _lds_radii(g, r_near, r_far) if "lds" in names else (1, 2)
    if "cds" in names and g < 4:
        raise MetricInputError(f"cds fits a slope over distances 1..g//2 and needs a grid of at least 4 x 4 tokens, got {g} x {g}: drop cds or use more tokens")
    x = F.normalize(tokens.to(torch.float64 if tokens.dtype == torch.float64 else torch.float32), dim=-1, eps=1e-8)
    out: dict[str, Tensor] = {}
    if "rmsc" in names:
        out["rmsc"] = (x - x.mean(1, keepdim=True)).square().sum(-1).mean(1).sqrt().double()
    if "lds" in names or "cds" in names:
        weights, ds = _pair_weights(g, near, far, str(x.device))     # (T*T, 2 + g//2): columns average pairs
        per = max(1, _SPATIAL_CHUNK // g**4)
        means = torch.cat([(x[i:i + per] @ x[i:i + per].transpose(1, 2)).flatten(1) @ weights.to(x.dtype)
                           for i in range(0, x.shape[0], per)]).double()  # (N, 2 + g//2)
        if "lds" in names:
            out["lds"] = means[:, 0] - means[:, 1]
        if "cds" in names:
            s, d = means[:, 2:], ds.double() - ds.double().mean()
            out["cds"] = -((s - s.mean(1, keepdim=True)) @ d) / (d @ d)
    return {m: out[m] for m in names}


def lds(tokens: Tensor, r_near: int = 1, r_far: int | None = None) -> float:
    """Local-vs-distant similarity, averaged over images (see :func:`spatial_metrics`)."""
    return spatial_metrics(tokens, ("lds",), r_near, r_far)["lds"].mean().item()


def cds(tokens: Tensor) -> float:
    """Correlation-decay slope, averaged over images (see :func:`spatial_metrics`)."""
    return spatial_metrics(tokens, ("cds",))["cds"].mean().item()


def rmsc(tokens: Tensor) -> float:
    """RMS spatial contrast, averaged over images (see :func:`spatial_metrics`)."""
    return spatial_metrics(tokens, ("rmsc",))["rmsc"].mean().item()


def default_r_far(grid: int, r_near: int = 1) -> int:
    """The far radius of :func:`lds` when none is given: iREPA's 6 on 16 x 16, scaled to the grid."""
    integer("default_r_far", "grid", grid, 2, "the token grid's side, e.g. 16")
    integer("default_r_far", "r_near", r_near, 1, "1 (iREPA)")
    return max(r_near + 1, (6 * grid + 8) // 16)


def _check_tokens(tokens: Tensor) -> int:
    """The grid side of ``(N, T, D)`` tokens on a square grid, else a UserError."""
    if not isinstance(tokens, Tensor):
        raise MetricInputError(f"spatial metrics take a tensor of tokens (N, T, D), got {type(tokens).__name__}: pass torch.as_tensor(tokens)")
    features("spatial_metrics", tokens, "tokens", ndim=3, what="tokens (N, T, D) of N images")
    t = tokens.shape[1]
    g = math.isqrt(t)
    if t < 2 or g * g != t:
        raise MetricInputError(f"{t} tokens per image do not form a square grid of at least 2 x 2: pass T = g * g tokens in row-major order (patch tokens only, no class token)")
    return g


def _lds_radii(g: int, r_near: int, r_far: int | None) -> tuple[int, int]:
    far = default_r_far(g, r_near) if r_far is None and isinstance(r_near, int) else r_far
    ok = all(isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in (r_near, far))
    if not ok or not 1 <= r_near < far <= 2 * (g - 1):
        raise MetricInputError(f"lds radii r_near={r_near}, r_far={far} must be ints with 1 <= r_near < r_far <= {2 * (g - 1)} "
                        f"(the largest distance on a {g} x {g} grid): pass e.g. r_near=1, r_far=None (scaled to the grid)")
    return int(r_near), int(far)


@lru_cache(maxsize=16)
def _pair_weights(g: int, r_near: int, r_far: int, device: str) -> tuple[Tensor, Tensor]:
    """Columns that average a flattened T x T Gram matrix over pairs: LDS near, LDS far, then one per
    distance d = 1 .. max(g // 2, 1) (CDS); and those distances."""
    pos = torch.stack(torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij"), -1).reshape(-1, 2)
    dist = (pos[:, None] - pos[None]).abs().sum(-1).flatten()    # (T*T,) Manhattan
    ds = torch.arange(1, max(g // 2, 1) + 1)
    masks = [(dist > 0) & (dist <= r_near), dist >= r_far, *(dist == d for d in ds)]
    w = torch.stack([m.double() / m.sum() for m in masks], 1)
    return w.to(device), ds.to(device)


# ---------------------------------------------------------------------------------------------
# Blocked / sparse building blocks


def _as_pair(a: Tensor, b: Tensor, dtype: torch.dtype | None, fn: str = "metric", min_rows: int = 1,
             why: str = "") -> tuple[Tensor, Tensor]:
    """Two (N, D) tensors of paired rows (at least ``min_rows``, finite) in one float dtype."""
    a, b = (x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x)) for x in (a, b))
    paired(fn, a, b, min_rows, why)
    if a.device != b.device:
        raise ValueError(f"inputs are on different devices ({a.device}, {b.device}); move both to one device")
    dtype = dtype or torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return a.to(dtype), b.to(dtype)


def _check_mode(mode: str) -> None:
    if mode not in ("reference", "exact"):
        raise ValueError(f'mode must be "reference" or "exact", got {mode!r}')


def _check_k(k: object, n: int, minimum: int, name: str) -> None:
    k_neighbours(name, k, n, minimum)


def _block_rows(block_size: int | None) -> int:
    if block_size is None:
        return _DEFAULT_BLOCK
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise ValueError(f"block_size must be a positive int (Gram rows per panel), got {block_size!r}")
    return int(block_size)


def _gram_topk(x: Tensor, k: int, rows: int, diagonal: float) -> tuple[Tensor, Tensor]:
    """Per-row top-k (values, column indices) of ``x x^T`` with its diagonal set to ``diagonal``.

    The upper triangle of the Gram matrix is formed one panel of ``rows`` rows at a time:
    ``G[I, i0:] = x_I x[i0:]^T`` updates the running top-k of rows I and, transposed, of the
    rows right of the panel's diagonal block (about half the products of the full matrix)."""
    n = x.shape[0]
    best_v = x.new_full((n, k), float("-inf"))
    best_i = torch.zeros((n, k), dtype=torch.long, device=x.device)
    for i0 in range(0, n, rows):
        i1 = min(i0 + rows, n)
        panel = x[i0:i1] @ x[i0:].T
        panel[:, : i1 - i0].fill_diagonal_(diagonal)
        _merge_topk(best_v, best_i, i0, panel, i0)
        if i1 < n:
            _merge_topk(best_v, best_i, i1, panel[:, i1 - i0 :].T, i0)
    return best_v, best_i


def _merge_topk(best_v: Tensor, best_i: Tensor, row0: int, block: Tensor, col0: int) -> None:
    """Merge the per-row top-k of ``block`` (rows ``row0 + r``, columns ``col0 + c``) in place."""
    k = best_v.shape[1]
    rows = slice(row0, row0 + block.shape[0])
    v, i = block.topk(min(k, block.shape[1]), dim=1)
    v, sel = torch.cat([best_v[rows], v], 1).topk(k, dim=1)
    best_i[rows] = torch.cat([best_i[rows], i + col0], 1).gather(1, sel)
    best_v[rows] = v


def _keys(indices: Tensor) -> Tensor:
    """Linear keys ``i N + j`` of the entries (i, indices[i, :]) of an (N, k) index table."""
    n = indices.shape[0]
    return (torch.arange(n, device=indices.device).unsqueeze(1) * n + indices).flatten()


def _sorted_support(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Kept entries of a per-row top-k table as (ascending keys, their values)."""
    keys, order = _keys(indices).sort()
    return keys, values.flatten()[order]


def _hsic_unbiased_sparse(keys: Tensor, k_vals: Tensor, l_vals: Tensor, n: int) -> Tensor:
    """Unbiased HSIC (Song et al. 2012, eq. 5) of two N x N matrices that are zero except at the
    (off-diagonal) entries with sorted linear keys ``keys``, where they hold ``k_vals`` and
    ``l_vals``. O(len(keys) log len(keys)); float64 result."""
    if keys.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=keys.device)
    k_vals, l_vals = k_vals.double(), l_vals.double()
    rows, cols = keys // n, keys % n
    transposed = cols * n + rows
    pos = torch.searchsorted(keys, transposed).clamp_(max=keys.numel() - 1)
    hit = keys[pos] == transposed
    trace_term = (k_vals[hit] * l_vals[pos[hit]]).sum()  # sum_ij Kt_ij Lt_ji
    k_colsum = torch.zeros(n, dtype=torch.float64, device=keys.device).index_add_(0, cols, k_vals)
    l_rowsum = torch.zeros(n, dtype=torch.float64, device=keys.device).index_add_(0, rows, l_vals)
    return _hsic_unbiased_terms(trace_term, k_vals.sum(), l_vals.sum(), k_colsum @ l_rowsum, n)


def _hsic_unbiased_terms(trace_term: Tensor, k_sum: Tensor, l_sum: Tensor, kl_sum: Tensor, n: int) -> Tensor:
    """Song et al. 2012 eq. 5 from sum(Kt * Lt^T), sum(Kt), sum(Lt) and sum(Kt Lt)."""
    return (trace_term + k_sum * l_sum / ((n - 1) * (n - 2)) - 2 * kl_sum / (n - 2)) / (n * (n - 3))


def _frobenius_products(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum(K * K), sum(L * L), sum(K * L))`` for ``K = a a^T``, ``L = b b^T`` (float64), from
    ``||a^T a||_F^2`` etc. or, when N is below the widths, from the Gram matrices."""
    if max(a.shape[1], b.shape[1]) <= a.shape[0]:
        return tuple((x.T @ y).double().square().sum() for x, y in ((a, a), (b, b), (a, b)))
    K, L = (a @ a.T).double(), (b @ b.T).double()
    return (K * K).sum(), (L * L).sum(), (K * L).sum()


def _hsic_unbiased_linear(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unbiased HSIC of (K, K), (L, L), (K, L) for ``K = a a^T``, ``L = b b^T``, in O(N D^2)
    (see :func:`cka`)."""
    n = a.shape[0]
    diags = a.square().sum(1).double(), b.square().sum(1).double()
    rowsums = [(x @ x.sum(0)).double() - d for x, d in zip((a, b), diags)]  # Kt 1, Lt 1
    pairs = ((0, 0), (1, 1), (0, 1))
    return tuple(
        _hsic_unbiased_terms(cross - diags[i] @ diags[j], rowsums[i].sum(), rowsums[j].sum(), rowsums[i] @ rowsums[j], n)
        for cross, (i, j) in zip(_frobenius_products(a, b), pairs)
    )


def _score(hsic_kl: Tensor, hsic_kk: Tensor, hsic_ll: Tensor, mode: Mode) -> float:
    denominator = torch.sqrt(hsic_kk * hsic_ll)
    if mode == "reference":
        denominator = denominator + _REFERENCE_EPS
    return (hsic_kl / denominator).item()


# ---------------------------------------------------------------------------------------------
# Dense brute-force forms (N x N matrices, O(N^3) HSIC), for tests and benchmarks only


def _hsic_unbiased_dense(K: Tensor, L: Tensor) -> Tensor:
    n = K.shape[0]
    Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
    return _hsic_unbiased_terms((Kt * Lt.T).sum(), Kt.sum(), Lt.sum(), (Kt @ Lt).sum(), n)


def _topk_mask(G: Tensor, k: int, diagonal: float) -> Tensor:
    indices = G.clone().fill_diagonal_(diagonal).topk(k, dim=1).indices
    return torch.zeros_like(G).scatter_(1, indices, 1)


def _cknna_dense(a: Tensor, b: Tensor, k: int = 10, mode: Mode = "reference") -> float:
    K, L = a @ a.T, b @ b.T
    mask_k, mask_l = _topk_mask(K, k, float("-inf")), _topk_mask(L, k, float("-inf"))
    mask = mask_k * mask_l
    return _score(
        _hsic_unbiased_dense(mask * K, mask * L),
        _hsic_unbiased_dense(mask_k * K, mask_k * K),
        _hsic_unbiased_dense(mask_l * L, mask_l * L),
        mode,
    )


def _cka_dense(a: Tensor, b: Tensor, unbiased: bool = False, mode: Mode = "reference") -> float:
    K, L = a @ a.T, b @ b.T
    if unbiased:
        hsic = _hsic_unbiased_dense
    else:
        H = torch.eye(K.shape[0], dtype=K.dtype, device=K.device) - 1 / K.shape[0]
        hsic = lambda X, Y: torch.trace(X @ H @ Y @ H)  # noqa: E731
    return _score(hsic(K, L), hsic(K, K), hsic(L, L), mode)


def _mutual_knn_dense(a: Tensor, b: Tensor, k: int = 10) -> float:
    mask = _topk_mask(a @ a.T, k, -1e8) * _topk_mask(b @ b.T, k, -1e8)
    return (mask.sum() / (a.shape[0] * k)).item()
