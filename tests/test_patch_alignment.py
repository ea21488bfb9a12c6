"""probe.patch_alignment: ridge against sklearn's closed form, the projector maps' mean against
projection_alignment, shapes and provenance, the figure and ``repa-probe patch-align`` / ``similarity``."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from probe import plots
from probe.analyses import projection_alignment
from probe.cli import main
from probe.extract import extract, image_set
from probe.patch_alignment import PatchAlignment, patch_alignment, patch_cosine, ridge_alpha, ridge_fit
from train.data.datasets import build_dataset
from train.errors import UserError
from train.models.loading import build
from conftest import random_sit

SIZE, DEPTH, ALIGN, TEACHER = 8, 3, 1, "builtin-ssl"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))


def repa_model(seed=0):
    """A tiny REPA SiT with a projector to the (random-init) teacher's 64-wide tokens at block 1."""
    torch.manual_seed(seed)
    m = build("SiT-T/2", flavour="repa", input_size=SIZE, in_channels=3, depth=DEPTH, hidden_size=32, num_heads=2,
              num_classes=10, z_dims=(64,), projector_dim=32, encoder_depth=ALIGN)
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    return m.eval()


def save_ckpt(model, path, step, encoders=(TEACHER,)):
    sd = model.state_dict()
    torch.save({"model_config": model.cfg.to_dict(), "model": sd, "ema": sd, "step": step,
                "train_config": {"encoders": list(encoders), "target_norm": "none"}}, path)
    return path


def test_ridge_equals_sklearn_and_the_normal_equations():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 7, generator=g) * torch.linspace(2, 0.2, 7) + 3
    y = x @ torch.randn(7, 4, generator=g) + 0.3 * torch.randn(60, 4, generator=g) - 1
    for alpha in (0.0, 0.5, 20.0):
        w, b = ridge_fit(x, y, alpha)
        ref = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(x.double().numpy(), y.double().numpy())
        assert np.allclose(w.numpy(), ref.coef_.T, atol=1e-8) and np.allclose(b.numpy(), ref.intercept_, atol=1e-8)
        xn, yn = x.double().numpy(), y.double().numpy()  # the augmented normal equations, intercept unpenalised
        a = np.c_[xn, np.ones(len(xn))]
        pen = alpha * np.diag([1.0] * 7 + [0.0])
        wb = np.linalg.solve(a.T @ a + pen, a.T @ yn)
        assert np.allclose(np.r_[w.numpy(), b.numpy()[None]], wb, atol=1e-8)
    xc = x.double() - x.double().mean(0)
    assert ridge_alpha(x, 0.1) == pytest.approx(0.1 * float(torch.trace(xc.T @ xc)) / 7)
    with pytest.raises(UserError, match="ridge"):
        ridge_fit(x, y[:10], 1.0)


def test_patch_cosine_is_the_cosine_per_patch():
    a, b = torch.randn(3, 5, 6), torch.randn(3, 5, 6)
    cos = patch_cosine(a, b)
    assert cos.shape == (3, 5)
    assert float(cos[1, 2]) == pytest.approx(float(a[1, 2] @ b[1, 2] / (a[1, 2].norm() * b[1, 2].norm())), abs=1e-6)


def test_projector_maps_average_to_the_projection_alignment_value(tmp_path):
    ckpt = save_ckpt(repa_model(), tmp_path / "repa.pt", 5)
    opts = dict(seed=3, random_init_encoder=True, batch_size=5)
    res = patch_alignment(ckpt, "shapes", methods=("projector",), ts=(0.0, 0.5), n_images=12, **opts)
    pa = projection_alignment(ckpt, "shapes", encoder=TEACHER, labels=("null",), weights=("ema",), baseline_images=0, n_images=12,
                              ts=(0.0, 0.5), **opts)
    assert isinstance(res, PatchAlignment) and res.maps.shape == (2, 12, SIZE // 2, SIZE // 2)
    for t in (0.0, 0.5):
        want = pa[(pa.t == t)]["value"].item()
        assert float(res.map("projector", ALIGN, t).astype(np.float64).mean()) == pytest.approx(want, abs=1e-6)
    table = res.table()
    assert len(table) == 2 and set(table["layer"]) == {ALIGN} and set(table["method"]) == {"projector"}
    assert table["value"].tolist() == pytest.approx([pa[pa.t == t]["value"].item() for t in (0.0, 0.5)], abs=1e-6)
    assert {"checkpoint", "step", "target", "label", "seed", "n_images", "dataset", "code_version", "model_t"} <= set(table.columns)
    assert set(table["step"]) == {5} and set(table["target"]) == {TEACHER} and set(table["n_images"]) == {12}


def test_ridge_maps_of_a_vanilla_model_are_fitted_on_held_out_images(tmp_path):
    model = random_sit(SIZE, DEPTH, 1)  # no projector: the projector method is skipped
    ckpt = save_ckpt(model, tmp_path / "vanilla.pt", 9, encoders=())
    with pytest.raises(UserError, match="encoder=NAME"):
        patch_alignment(ckpt, "shapes", n_images=6)
    with pytest.raises(UserError, match="no projector"):
        patch_alignment(ckpt, "shapes", methods=("projector",), encoder=TEACHER, n_images=6)
    res = patch_alignment(ckpt, "shapes", layers=[1, 3], ts=(0.0, 0.5), encoder=TEACHER, n_images=6, n_fit=10, ridge=0.05,
                          seed=2, random_init_encoder=True)
    assert res.maps.shape == (4, 6, SIZE // 2, SIZE // 2) and np.all(np.abs(res.maps) <= 1 + 1e-6)
    assert [(p["layer"], p["t"]) for p in res.panels] == [(1, 0.0), (1, 0.5), (3, 0.0), (3, 0.5)]
    assert res.provenance["skipped"] == ["projector"] and res.provenance["n_fit"] == 10
    assert res.provenance["dataset"] == "shapes/val" and res.provenance["fit_dataset"] == "shapes/train"
    # the map is the cosine of a ridge map fitted on the train split's tokens (extract: the same noise)
    from train.targets.encoders import load_encoder

    fit = image_set(build_dataset("shapes", "train", size=SIZE), 10, 3, "shapes/train")
    shown = image_set(build_dataset("shapes", "val", size=SIZE), 6, 2, "shapes/val")
    assert res.indices.tolist() == shown.indices.tolist()
    with torch.random.fork_rng():
        torch.manual_seed(2)
        enc = load_encoder(TEACHER, None, grid=SIZE // 2, random_init=True)
    y_fit = torch.cat([enc(im).float() for _, im, _ in fit.batches(64)]).flatten(0, 1)
    y = torch.cat([enc(im).float() for _, im, _ in shown.batches(64)])
    x_fit = extract(model, fit, ts=(0.5,), layers=[3], pooling="tokens", seed=2, progress=False).get(3, 0.5).flatten(0, 1)
    x = extract(model, shown, ts=(0.5,), layers=[3], pooling="tokens", seed=2, progress=False).get(3, 0.5)
    w, b = ridge_fit(x_fit, y_fit, ridge_alpha(x_fit, 0.05))
    want = patch_cosine(x.double() @ w + b, y).reshape(6, SIZE // 2, SIZE // 2)
    assert np.allclose(res.map("ridge", 3, 0.5), want.numpy(), atol=1e-5)
    assert res.panels[3]["value"] == pytest.approx(float(want.double().mean()), abs=1e-6)
    assert res.table()["ridge"].eq(0.05).all()
    paths = plots.patch_alignment({"vanilla": res}, tmp_path / "fig")
    assert paths[0].is_file()
    with pytest.raises(UserError, match="fit_images"):
        patch_alignment(ckpt, build_dataset("shapes", "val", size=SIZE), encoder=TEACHER, n_images=6)


def test_cli_patch_align_and_similarity(tmp_path, capsys):
    repa = save_ckpt(repa_model(), tmp_path / "repa.pt", 5)
    vanilla = save_ckpt(random_sit(SIZE, DEPTH, 1), tmp_path / "vanilla.pt", 5, encoders=())
    out = tmp_path / "pa"
    assert main(["patch-align", f"REPA={repa}", f"vanilla={vanilla}", "--encoder", TEACHER, "--dataset", "shapes", "--n-images", "4",
                 "--n-fit", "6", "--t", "0", "0.5", "--random-init-encoder", "--out", str(out)]) == 0
    table = pd.read_csv(out / "patch_alignment.csv")
    assert sorted(set(zip(table["run"], table["method"]))) == [("REPA", "projector"), ("REPA", "ridge"), ("vanilla", "ridge")]
    assert len(table) == 6 and (out / "figures" / "patch_alignment.png").is_file() and (out / "patch_alignment_REPA.npz").is_file()
    assert json.loads((out / "patch_alignment.json").read_text())["vanilla"]["skipped"] == ["projector"]
    sim = tmp_path / "sim"
    assert main(["similarity", str(repa), str(vanilla), "--dataset", "shapes", "--n-images", "12", "--k", "3", "--layers-a", "1", "2",
                 "--t", "0", "0.5", "--out", str(sim)]) == 0
    df = pd.read_csv(sim / "similarity.csv")
    assert len(df) == 2 * (DEPTH + 1) * 2 * 2 and set(df["layer_a"]) == {1, 2} and set(df["step_b"]) == {5}
    assert (sim / "figures" / "similarity.png").is_file() and (sim / "similarity.json").is_file()
    assert main(["similarity", str(repa), str(repa), "--dataset", "shapes", "--n-images", "12", "--k", "3", "--metrics", "cka",
                 "--out", str(tmp_path / "self"), "--no-plot"]) == 0
    self_sim = pd.read_csv(tmp_path / "self" / "similarity.csv")
    assert self_sim[self_sim.layer_a == self_sim.layer_b]["value"].to_numpy() == pytest.approx(1.0, abs=1e-5)
    capsys.readouterr()
    from conftest import exit_code

    assert exit_code(main, ["similarity", str(repa), str(tmp_path / "missing.pt"), "--out", str(sim)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["patch-align", str(vanilla), "--dataset", "shapes", "--out", str(out)]) == 2
    assert "encoder" in capsys.readouterr().err
