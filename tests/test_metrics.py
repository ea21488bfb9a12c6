"""probe.metrics: equality with the reference implementation (fixture), with dense brute-force
forms, and the identities / invariances the metrics must satisfy; the spatial metrics against
double loops in numpy and on constructed token fields."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probe.metrics import (_cka_dense, _cknna_dense, _mutual_knn_dense, cds, cka, cknna, default_r_far, lds, mutual_knn,
                           prepare, rmsc, spatial_metrics)
from train.errors import UserError

REFERENCE = torch.load(Path(__file__).parent / "fixtures" / "metrics_reference.pt", weights_only=True)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOL = 1e-5  # acceptance criterion: equal to the reference definitions to 1e-5 on the same rows


def _features(n: int, d: int, seed: int, like: torch.Tensor | None = None, noise: float = 1.0) -> torch.Tensor:
    """Unit-norm rows; ``like`` + noise when given (a correlated pair), else independent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if like is not None:
        x = like[:, :d] + noise * x
    return F.normalize(x, dim=1)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    a = _features(200, 32, seed=1)
    return a, _features(200, 24, seed=2, like=a)


# --- the reference implementation (platonic-rep metrics.py), via the fixture ---------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(REFERENCE["cases"]))
def test_metrics_match_reference(case: str, dtype: str) -> None:
    c = REFERENCE["cases"][case]
    a, b, expected = c["a"].to(DTYPES[dtype]), c["b"].to(DTYPES[dtype]), c[dtype]
    for k, value in expected["cknna"].items():
        assert cknna(a, b, k) == pytest.approx(value, abs=TOL)
        assert cknna(a, b, k, block_size=17) == pytest.approx(value, abs=TOL)
    assert cka(a, b) == pytest.approx(expected["cka"], abs=TOL)
    assert cka(a, b, unbiased=True) == pytest.approx(expected["unbiased_cka"], abs=TOL)
    for k, value in expected["mutual_knn"].items():
        assert mutual_knn(a, b, k, block_size=17) == pytest.approx(value, abs=TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(REFERENCE["prepare"]))
def test_prepare_matches_reference(case: str, dtype: str) -> None:
    c = REFERENCE["prepare"][case]
    x = c["x"].to(DTYPES[dtype])
    for setting in c[dtype]:
        out = prepare(x, q=setting["q"], exact=setting["exact"], normalize=setting.get("normalize", True))
        assert out.dtype == x.dtype
        torch.testing.assert_close(out, setting["out"], rtol=0, atol=TOL)


def test_prepare_without_clipping() -> None:
    x = torch.randn(10, 6, dtype=torch.float64) * 5
    torch.testing.assert_close(prepare(x, q=None), F.normalize(x, dim=-1))
    torch.testing.assert_close(prepare(x, q=1, normalize=False), x)
    assert prepare(x.half()).dtype == torch.float32


# --- blocked implementations vs dense brute force -----------------------------------------------


@pytest.mark.parametrize("n", [37, 130])
@pytest.mark.parametrize("k", [2, 10])
@pytest.mark.parametrize("block_size", [7, 32, 1024])
def test_blocked_equals_dense(n: int, k: int, block_size: int) -> None:
    a = _features(n, 16, seed=n)
    b = _features(n, 12, seed=n + 1, like=a, noise=0.8)
    for mode in ("reference", "exact"):
        assert cknna(a, b, k, mode=mode, block_size=block_size) == pytest.approx(_cknna_dense(a, b, k, mode), abs=1e-12)
    assert mutual_knn(a, b, k, block_size=block_size) == pytest.approx(_mutual_knn_dense(a, b, k), abs=1e-12)


@pytest.mark.parametrize("shape", [(50, 8, 6), (20, 64, 48)])  # feature-space and Gram-space paths
@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_equals_dense(shape: tuple[int, int, int], unbiased: bool) -> None:
    n, da, db = shape
    a = _features(n, da, seed=3) * 2.5  # not unit norm
    b = _features(n, db, seed=4, like=a)
    for mode in ("reference", "exact"):
        assert cka(a, b, unbiased, mode) == pytest.approx(_cka_dense(a, b, unbiased, mode), abs=1e-12)


# --- identities and invariances -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reference", "exact"])
def test_cknna_with_all_neighbours_is_unbiased_cka(pair, mode: str) -> None:
    # k = n - 1 keeps every off-diagonal entry, and the unbiased HSIC ignores the diagonal, so all
    # three HSIC terms are those of unbiased CKA: the two scores agree to rounding.
    a, b = pair
    assert cknna(a, b, a.shape[0] - 1, mode=mode) == pytest.approx(cka(a, b, unbiased=True, mode=mode), abs=1e-12)


def test_orthogonal_invariance(pair) -> None:
    a, b = pair
    q, _ = torch.linalg.qr(torch.randn(a.shape[1], a.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    for metric in (lambda x: cknna(x, b, 10), lambda x: cka(x, b), lambda x: cka(x, b, unbiased=True), lambda x: mutual_knn(x, b, 10)):
        assert metric(a @ q) == pytest.approx(metric(a), abs=1e-10)


def test_exact_mode_is_scale_free_reference_mode_is_not() -> None:
    a = _features(1000, 64, seed=6)
    b = _features(1000, 48, seed=7, like=a)
    assert cknna(3 * a, b, mode="exact") == pytest.approx(cknna(a, b, mode="exact"), abs=1e-10)
    assert cka(3 * a, b, unbiased=True, mode="exact") == pytest.approx(cka(a, b, unbiased=True, mode="exact"), abs=1e-10)
    # Reference mode adds 1e-6 to sqrt(HSIC_kk HSIC_ll), which is ~1e-4 here (REPA-NOTES section 5).
    assert 0.95 < cknna(a, a) < 1
    assert cknna(0.1 * a, 0.1 * a) < 0.2
    assert cknna(10 * a, 10 * a) == pytest.approx(1, abs=1e-3)


def test_self_similarity_is_one(pair) -> None:
    a, _ = pair
    assert cknna(a, a, mode="exact") == pytest.approx(1, abs=1e-6)
    assert cknna(a.float(), a.float(), mode="exact") == pytest.approx(1, abs=1e-6)
    assert cka(a, a, mode="exact") == pytest.approx(1, abs=1e-6)
    assert cka(a, a, unbiased=True, mode="exact") == pytest.approx(1, abs=1e-6)
    assert mutual_knn(a, a, 10) == 1


def test_independent_features_score_near_zero() -> None:
    a, b = _features(2000, 64, seed=8).float(), _features(2000, 64, seed=9).float()
    assert abs(cknna(a, b, 10)) < 0.05
    assert abs(cknna(a, b, 10, mode="exact")) < 0.05
    assert abs(cka(a, b, unbiased=True)) < 0.05
    assert mutual_knn(a, b, 10) < 0.05


@pytest.mark.parametrize("k", [1, 0, 50, 51, 2.5, None, True])
def test_bad_k_raises(k) -> None:
    a = torch.randn(50, 4)
    with pytest.raises(ValueError, match="k must be an int"):
        cknna(a, a, k)


def test_bad_arguments_raise() -> None:
    a = torch.randn(50, 4)
    with pytest.raises(ValueError, match="k must be an int"):
        mutual_knn(a, a, 0)
    with pytest.raises(ValueError, match="mode"):
        cknna(a, a, 5, mode="fast")
    with pytest.raises(ValueError, match="same N"):
        cka(a, a[:10])
    with pytest.raises(ValueError, match="block_size"):
        cknna(a, a, 5, block_size=0)


def test_float64_on_request(pair) -> None:
    a, b = (x.float() for x in pair)
    assert cknna(a, b, dtype=torch.float64) == pytest.approx(cknna(a.double(), b.double()), abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(pair) -> None:
    a, b = pair
    ac, bc = a.cuda(), b.cuda()
    assert cknna(ac, bc, 10) == pytest.approx(cknna(a, b, 10), abs=1e-10)
    assert cka(ac, bc, unbiased=True) == pytest.approx(cka(a, b, unbiased=True), abs=1e-10)
    assert mutual_knn(ac, bc, 10) == pytest.approx(mutual_knn(a, b, 10), abs=1e-12)
    torch.testing.assert_close(prepare(ac.float()).cpu(), prepare(a.float()))
    tokens = torch.randn(5, 64, 16, dtype=torch.float64)
    for name, value in spatial_metrics(tokens.cuda()).items():
        torch.testing.assert_close(value.cpu(), spatial_metrics(tokens)[name])


# --- spatial metrics (iREPA) ---------------------------------------------------------------------


def _spatial_loops(tokens: np.ndarray, r_near: int, r_far: int) -> dict[str, float]:
    """LDS, CDS and RMSC by double loops over token pairs, per image, then averaged over images."""
    n, t, _ = tokens.shape
    g = math.isqrt(t)
    values = {"lds": [], "cds": [], "rmsc": []}
    for img in tokens:
        x = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-8)
        near, far, by_d = [], [], {d: [] for d in range(1, g // 2 + 1)}
        for i in range(t):
            for j in range(t):
                if i == j:
                    continue
                d = abs(i // g - j // g) + abs(i % g - j % g)
                k = float(x[i] @ x[j])
                if d <= r_near:
                    near.append(k)
                if d >= r_far:
                    far.append(k)
                if d in by_d:
                    by_d[d].append(k)
        values["lds"].append(np.mean(near) - np.mean(far))
        ds = np.array(list(by_d), dtype=float)
        s = np.array([np.mean(v) for v in by_d.values()])
        values["cds"].append(-np.polyfit(ds, s, 1)[0] if len(ds) > 1 else np.nan)
        center = x.mean(0)
        values["rmsc"].append(math.sqrt(np.mean([np.sum((x[i] - center) ** 2) for i in range(t)])))
    return {m: float(np.mean(v)) for m, v in values.items()}


@pytest.mark.parametrize("g, r_near, r_far", [(4, 1, None), (5, 2, 4), (6, 1, 7), (8, 1, None)])
def test_spatial_metrics_equal_double_loops(g: int, r_near: int, r_far: int | None) -> None:
    gen = torch.Generator().manual_seed(g)
    tokens = torch.randn(3, g * g, 5, generator=gen, dtype=torch.float64) + 0.5  # not unit norm, not centred
    expected = _spatial_loops(tokens.numpy(), r_near, r_far or default_r_far(g, r_near))
    assert lds(tokens, r_near, r_far) == pytest.approx(expected["lds"], abs=1e-10)
    assert cds(tokens) == pytest.approx(expected["cds"], abs=1e-10)
    assert rmsc(tokens) == pytest.approx(expected["rmsc"], abs=1e-10)
    assert lds(tokens.float(), r_near, r_far) == pytest.approx(expected["lds"], abs=1e-5)
    per_image = spatial_metrics(tokens, r_near=r_near, r_far=r_far)
    assert list(per_image) == ["lds", "cds", "rmsc"] and all(v.shape == (3,) for v in per_image.values())
    assert per_image["lds"][1].item() == pytest.approx(_spatial_loops(tokens[1:2].numpy(), r_near, r_far or default_r_far(g, r_near))["lds"], abs=1e-10)


def test_spatial_metrics_on_tiny_grids_and_in_chunks(monkeypatch) -> None:
    tokens = torch.randn(4, 4, 3, dtype=torch.float64)  # 2 x 2: distances 1 and 2 only
    expected = _spatial_loops(tokens.numpy(), 1, 2)
    assert lds(tokens) == pytest.approx(expected["lds"], abs=1e-10) and rmsc(tokens) == pytest.approx(expected["rmsc"], abs=1e-10)
    import train.evaluation.metrics as pm  # where the code lives (probe.metrics re-exports its public names)

    many = torch.randn(7, 16, 4, dtype=torch.float64)
    whole = spatial_metrics(many)
    monkeypatch.setattr(pm, "_SPATIAL_CHUNK", 2 * 16 * 16)  # two images per Gram batch
    for name, value in spatial_metrics(many).items():
        torch.testing.assert_close(value, whole[name])


def test_default_far_radius_scales_with_the_grid() -> None:
    assert [default_r_far(g) for g in (2, 4, 8, 12, 16, 32)] == [2, 2, 3, 5, 6, 12]
    assert default_r_far(16, r_near=6) == 7


def _smooth_field(n: int, g: int, seed: int) -> torch.Tensor:
    """Tokens that vary slowly over the grid: random low-frequency Fourier features of the position."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.stack(torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij"), -1).reshape(-1, 2).double()
    freq = torch.randn(n, 2, 16, generator=gen, dtype=torch.float64) * 1.5 / g
    phase = torch.rand(n, 1, 16, generator=gen, dtype=torch.float64) * 2 * math.pi
    angle = pos @ freq + phase                                  # (n, T, 16)
    return torch.cat([angle.cos(), angle.sin()], -1)


def test_spatial_metrics_on_constructed_fields() -> None:
    smooth = _smooth_field(6, 16, seed=0)
    assert lds(smooth) > 0.2 and cds(smooth) > 0.01 and rmsc(smooth) > 0.2
    shuffled = smooth[:, torch.randperm(256, generator=torch.Generator().manual_seed(2))]  # same tokens, no layout
    assert abs(lds(shuffled)) < 0.02 and abs(cds(shuffled)) < 0.005
    assert rmsc(shuffled) == pytest.approx(rmsc(smooth), abs=1e-12)  # RMSC ignores the layout
    iid = torch.randn(20, 64, 64, generator=torch.Generator().manual_seed(1))
    assert abs(lds(iid)) < 0.02 and abs(cds(iid)) < 0.005
    assert rmsc(iid) == pytest.approx(1, abs=0.02)  # nearly orthogonal unit tokens: |x^ - mean|^2 = 1 - 1/T
    same = torch.randn(3, 1, 8).expand(3, 36, 8) * (torch.rand(3, 36, 1) + 0.5)  # one direction per image, any norms (float32)
    assert rmsc(same) == pytest.approx(0, abs=1e-6)
    assert lds(same) == pytest.approx(0, abs=1e-5) and cds(same) == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("tokens, message", [
    (torch.randn(2, 15, 4), "square grid"),
    (torch.randn(2, 1, 4), "square grid"),
    (torch.randn(2, 16), "3-d"),
    (torch.full((2, 16, 4), float("nan")), "NaN"),
    (torch.tensor([[[float("inf")]] * 4] * 2), "NaN or infinite"),
])
def test_spatial_metrics_reject_bad_tokens(tokens: torch.Tensor, message: str) -> None:
    with pytest.raises(UserError, match=message):
        lds(tokens)


def test_spatial_metrics_reject_bad_radii_and_small_grids() -> None:
    x = torch.randn(2, 16, 4)
    for r_near, r_far in ((0, None), (2, 2), (1, 7), (1.5, None)):
        with pytest.raises(UserError, match="r_near"):
            lds(x, r_near, r_far)
    with pytest.raises(UserError, match="at least 4 x 4"):
        cds(torch.randn(2, 9, 4))
    with pytest.raises(UserError, match="unknown spatial metric"):
        spatial_metrics(x, ("lds", "srss"))
