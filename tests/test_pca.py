"""probe.pca: token PCA maps against a direct SVD, their shape and range, the figure and ``repa-probe pca``."""

import numpy as np
import pandas as pd
import pytest
import torch

from probe import plots
from probe.cli import main
from probe.extract import extract, image_set
from probe.pca import TokenPCA, pca_rgb, token_pca
from train.errors import UserError
from conftest import SMALL_DEPTH, SMALL_SIZE, small_sit

SIZE, DEPTH = SMALL_SIZE, SMALL_DEPTH
tiny = small_sit
pytestmark = pytest.mark.usefixtures("own_cache")  # and the images fixture of conftest


def direct(fit, tokens):
    """PCA by numpy's SVD, projected and min-max scaled per component over all images."""
    fit, tokens = fit.double().numpy(), tokens.double().numpy()
    mu = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mu, full_matrices=False)
    proj = (tokens - mu) @ vt[:3].T                                   # (N, T, 3)
    lo, hi = proj.min((0, 1)), proj.max((0, 1))
    return (proj - lo) / (hi - lo), vt[:3]


def test_projection_equals_a_direct_svd():
    g = torch.Generator().manual_seed(0)
    fit = torch.randn(200, 12, generator=g) * torch.linspace(3, 0.1, 12)
    tokens = torch.randn(5, 16, 12, generator=g)
    rgb, explained, comps, mean = pca_rgb(fit, tokens)
    want, vt = direct(fit, tokens)
    assert rgb.shape == (5, 3, 4, 4) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    for c in range(3):  # SVD signs are arbitrary: compare up to a flip of each component
        got = rgb[:, c].reshape(5, 16).double().numpy()
        ok = np.allclose(got, want[..., c], atol=1e-5) or np.allclose(got, 1 - want[..., c], atol=1e-5)
        assert ok and abs(abs(float(comps[c].double() @ torch.from_numpy(vt[c]))) - 1) < 1e-5
    s = np.linalg.svd(fit.double().numpy() - fit.double().numpy().mean(0), compute_uv=False)
    assert explained.numpy() == pytest.approx(s[:3] ** 2 / (s**2).sum(), rel=1e-5)
    assert torch.allclose(mean, fit.mean(0), atol=1e-6)
    # token (row, col) of the square layout lands at pixel (row, col)
    assert float(rgb[2, 0, 1, 3]) == pytest.approx(float(rgb[2, 0].flatten()[4 * 1 + 3]))
    with pytest.raises(UserError, match="square"):
        pca_rgb(fit, tokens[:, :15])


def test_token_pca_maps_of_a_model_and_an_encoder(images):
    model = tiny()
    shown = image_set(images, 4, 0)
    res = token_pca(model, shown, layers=[1, 3], ts=(0.0, 0.5), encoder="builtin-ssl", n_fit=6, fit_images=images,
                    random_init_encoder=True)
    assert isinstance(res, TokenPCA) and res.layers == [1, 3] and res.ts == [0.0, 0.5]
    assert res.maps.shape == (2, 2, 4, 3, SIZE // 2, SIZE // 2) and res.images.shape == (4, 3, SIZE, SIZE)
    assert res.maps.min() >= 0 and res.maps.max() <= 1 and res.maps.max() == pytest.approx(1.0)
    assert res.encoder_maps["builtin-ssl"].shape == (4, 3, SIZE // 2, SIZE // 2)
    assert res.provenance["n_fit"] == 6 and res.provenance["n_images"] == 4
    # the model's maps are the PCA of its extracted tokens
    feats = extract(model, shown, ts=(0.0, 0.5), layers=[1, 3], pooling="tokens", progress=False)
    fit = extract(model, images, ts=(0.5,), layers=[3], pooling="tokens", progress=False).get(3, 0.5)
    pos = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:6].sort().values
    rgb, _, _, _ = pca_rgb(fit[pos].flatten(0, 1), feats.get(3, 0.5))
    assert np.allclose(res.maps[1, 1], rgb.numpy(), atol=1e-5)
    table = res.table()
    assert len(table) == (2 * 2 + 1) * 3 and table["explained_variance"].between(0, 1).all()


def test_plot_and_cli_write_a_png(tmp_path, images):
    res = token_pca(tiny(), image_set(images, 3, 0), layers=[0, 2], ts=(0.0,))
    paths = plots.token_pca(res, tmp_path / "fig")
    assert paths[0].suffix == ".png" and paths[0].is_file()
    model = tiny()
    sd = model.state_dict()
    ckpt = tmp_path / "m.pt"
    torch.save({"model_config": model.cfg.to_dict(), "model": sd, "ema": sd, "step": 3}, ckpt)
    out = tmp_path / "cli"
    args = ["pca", "--checkpoint", str(ckpt), "--out", str(out), "--dataset", "shapes", "--n-images", "3", "--n-fit", "5",
            "--layers", "1", "3", "--t", "0", "0.25", "--encoders", "builtin-ssl", "--random-init-encoder", "--no-progress"]
    assert main(args) == 0
    assert (out / "figures" / "token_pca.png").is_file() and (out / "token_pca.json").is_file()
    saved = np.load(out / "token_pca.npz")
    assert saved["maps"].shape == (2, 2, 3, 3, SIZE // 2, SIZE // 2) and "encoder_maps/builtin-ssl" in saved.files
    assert set(pd.read_csv(out / "token_pca.csv")["source"]) == {"model", "builtin-ssl"}
    from conftest import exit_code

    assert exit_code(main, ["pca", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
