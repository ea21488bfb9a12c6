"""probe.similarity: model-vs-model layer x layer similarity against brute force, self-similarity, the heatmap."""

import pandas as pd
import pytest
import torch

from probe import plots
from probe.extract import extract, image_set
from probe.metrics import _cka_dense
from probe.similarity import COLUMNS, model_similarity
from train.errors import UserError
from conftest import SMALL_DEPTH, SMALL_SIZE, save_ckpt, small_sit

SIZE, DEPTH = SMALL_SIZE, SMALL_DEPTH
tiny = small_sit
pytestmark = pytest.mark.usefixtures("own_cache")  # and the images fixture of conftest


def brute_cka(a, b):
    """Linear CKA from N x N Gram matrices: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    H = torch.eye(n, dtype=torch.float64) - 1 / n
    K, L = H @ a @ a.T @ H, H @ b @ b.T @ H
    return ((K * L).sum() / torch.sqrt((K * K).sum() * (L * L).sum())).item()


def test_equals_brute_force_cka_on_the_same_images_and_noise(tmp_path, images):
    a, b = tiny(0), tiny(1)
    ckpt = save_ckpt(b, tmp_path / "b.pt", 7)  # one loaded model, one checkpoint path
    df = model_similarity(a, ckpt, layers_a=[1, 3], layers_b=[0, 2], ts=(0.0, 0.5), metrics=("cka", "cknna"),
                          dataset=images, n_images=16, seed=3, q=None, normalize=False, cknna_mode="exact", k=4)
    assert list(df.columns) == COLUMNS and len(df) == 2 * 2 * 2 * 2
    assert set(df["step_b"]) == {7} and set(df["n_images"]) == {16} and set(df["preprocessing"]) == {"none"}
    assert set(df["pooling"]) == {"mean"} and set(df["seed"]) == {3} and df["code_version"].notna().all()
    shown = image_set(images, 16, 3)
    fa = extract(a, shown, ts=(0.0, 0.5), layers=[1, 3], seed=3, progress=False)
    fb = extract(b, shown, ts=(0.0, 0.5), layers=[0, 2], seed=3, progress=False)
    for row in df[df["metric"] == "cka"].itertuples():
        x, y = fa.get(row.layer_a, row.t), fb.get(row.layer_b, row.t)
        assert row.value == pytest.approx(brute_cka(x, y), abs=1e-5)
        assert row.value == pytest.approx(_cka_dense(x.double(), y.double(), mode="exact"), abs=1e-5)


def test_a_model_against_itself_is_one_on_the_diagonal(tmp_path, images):
    ckpt = save_ckpt(tiny(0), tmp_path / "a.pt", 5)
    df = model_similarity(ckpt, ckpt, ts=(0.0, 0.25), dataset=images, n_images=16, cknna_mode="exact", k=4)
    assert len(df) == (DEPTH + 1) ** 2 * 2 * 2
    diagonal = df[df["layer_a"] == df["layer_b"]]
    assert diagonal["value"].to_numpy() == pytest.approx(1.0, abs=1e-6)  # CKA and CKNNA, exact mode
    off = df[(df["layer_a"] != df["layer_b"]) & (df["metric"] == "cka")]
    assert (off["value"] < 1 - 1e-4).any()
    sym = df[df["metric"] == "cka"].pivot_table(index=["t", "layer_a"], columns="layer_b", values="value")
    for t in (0.0, 0.25):
        m = sym.loc[t].to_numpy()
        assert m == pytest.approx(m.T, abs=1e-6)
    # the reference mode adds 1e-6 to the denominator: one only up to that eps
    ref = model_similarity(ckpt, ckpt, layers_a=[2], layers_b=[2], metrics=("cka",), dataset=images, n_images=16, k=4)
    assert ref["value"].item() == pytest.approx(1.0, abs=1e-4) and ref["value"].item() <= 1.0


def test_heatmap_and_saved_table(tmp_path, images):
    df = model_similarity(tiny(0), tiny(1), ts=(0.0, 0.5), dataset=images, n_images=16, k=4, out=tmp_path)
    saved = pd.read_parquet(tmp_path / "similarity.parquet")
    assert len(saved) == len(df) and (tmp_path / "similarity.json").is_file()
    paths = plots.similarity_heatmap(saved, tmp_path / "figures")
    assert all(p.is_file() for p in paths) and paths[0].suffix == ".png"


def test_bad_input(tmp_path, images):
    with pytest.raises(UserError, match="does not exist"):
        model_similarity(tmp_path / "missing.pt", tiny(0), dataset=images, n_images=16, k=4)
    with pytest.raises(UserError, match="unknown similarity metric"):
        model_similarity(tiny(0), tiny(1), metrics=("linear_probe",), dataset=images, n_images=16, k=4)
    with pytest.raises(UserError, match="must lie in 0..3"):
        model_similarity(tiny(0), tiny(1), layers_b=[9], dataset=images, n_images=16, k=4)
    with pytest.raises(UserError, match="layer_a x layer_b"):
        plots.similarity_heatmap(pd.DataFrame({"metric": ["cka"], "value": [1.0]}), tmp_path)
