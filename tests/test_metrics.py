"""probe.metrics: equality with the reference implementation (fixture), with dense brute-force
forms, and the identities / invariances the metrics must satisfy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from probe.metrics import _cka_dense, _cknna_dense, _mutual_knn_dense, cka, cknna, mutual_knn, prepare

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
