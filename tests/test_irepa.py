"""iREPA's two options of the REPA objective: spatial normalisation of the target tokens
(``target_norm="spatial"``) and the convolutional projector (``model.projector="conv"``).

The functions against independent recomputations, the token order of the conv projector, its
initialisation and loading, and real runs: the CLI, the target cache, exact resume and the
projection-alignment probe."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from train.run.cli import main_train
from train.run.config import DataConfig, ModelConfig, TrainConfig, override
from train.targets.encoders import TeacherConfig
from train.errors import UserError
from train.objectives.losses import spatial_normalize
from train.models.loading import ConvProjector, DiffusionTransformer, build, infer_config, load

TEACHER_DIM = TeacherConfig().width


# ----------------------------------------------------------------------------------------------
# spatial_normalize
# ----------------------------------------------------------------------------------------------

def loop_reference(y: np.ndarray, gamma: float, eps: float) -> np.ndarray:
    """Per image, per channel, in float64: (y - gamma mean) / (unbiased std + eps)."""
    out = np.empty_like(y, dtype=np.float64)
    for b in range(y.shape[0]):
        for d in range(y.shape[2]):
            col = y[b, :, d].astype(np.float64)
            out[b, :, d] = (col - gamma * col.mean()) / (col.std(ddof=1) + eps)
    return out


@pytest.mark.parametrize("gamma", [0.0, 0.6, 0.8, 1.0])
def test_spatial_normalize_matches_a_sum_formula_and_a_loop(gamma):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 16, 5, generator=g) * 2.5 + torch.randn(3, 1, 5, generator=g) * 4  # per-image offsets
    eps = 1e-6
    z = spatial_normalize(y, gamma, eps)
    assert z.shape == y.shape and z.dtype == torch.float32
    # loop-free, from sums (not torch's mean/std)
    t = y.shape[1]
    mean = y.sum(1, keepdim=True) / t
    std = (((y - mean) ** 2).sum(1, keepdim=True) / (t - 1)).sqrt()
    torch.testing.assert_close(z, (y - gamma * mean) / (std + eps), rtol=1e-5, atol=1e-5)
    # an independent per-image, per-channel loop in numpy (float64)
    np.testing.assert_allclose(z.numpy(), loop_reference(y.numpy(), gamma, eps), rtol=1e-5, atol=1e-5)
    # gamma = 1: a z-score over space (mean 0, unbiased std 1 up to eps); gamma = 0: only rescaled
    if gamma == 1.0:
        torch.testing.assert_close(z.mean(1), torch.zeros(3, 5), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.std(1), torch.ones(3, 5), atol=1e-5, rtol=0)
    if gamma == 0.0:
        torch.testing.assert_close(z * (std + eps), y, rtol=1e-5, atol=1e-5)


def test_spatial_normalize_constant_channel_stays_finite_and_is_per_image():
    y = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(2))
    y[:, :, 1] = 3.0  # zero variance over the tokens
    for gamma in (0.0, 0.6, 1.0):
        z = spatial_normalize(y, gamma, 1e-6)
        assert torch.isfinite(z).all()
        torch.testing.assert_close(z[:, :, 1], torch.full((2, 9), (1 - gamma) * 3.0 / 1e-6), rtol=1e-5, atol=1e-5)
    # each image on its own: normalising a batch equals normalising its images one by one
    z = spatial_normalize(y, 0.6)
    assert torch.equal(z[1:], spatial_normalize(y[1:], 0.6))
    # half precision in, float32 out (under autocast too)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zb = spatial_normalize(y.bfloat16(), 0.6)
    assert zb.dtype == torch.float32
    with pytest.raises(ValueError, match="T >= 2"):
        spatial_normalize(y[:, :1], 0.6)


# ----------------------------------------------------------------------------------------------
# The conv projector
# ----------------------------------------------------------------------------------------------

def test_conv_projector_equals_an_explicit_convolution_over_token_indices():
    torch.manual_seed(0)
    n, h, d, z, k = 2, 5, 6, 4, 3
    proj = ConvProjector(d, z, k)
    x = torch.randn(n, h * h, d)
    out = proj(x)
    assert out.shape == (n, h * h, z)
    w, b = proj.projection_layer.weight, proj.projection_layer.bias            # (z, d, k, k), (z,)
    # by hand: token r * W + c gathers the tokens (r + i - 1) * W + (c + j - 1) inside the grid
    want = torch.zeros(n, h * h, z)
    for r in range(h):
        for c in range(h):
            acc = b.expand(n, z).clone()
            for i in range(k):
                for j in range(k):
                    rr, cc = r + i - k // 2, c + j - k // 2
                    if 0 <= rr < h and 0 <= cc < h:
                        acc += x[:, rr * h + cc] @ w[:, :, i, j].T
            want[:, r * h + c] = acc
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    # the same with unfold on the reshaped grid
    grid = x.reshape(n, h, h, d).permute(0, 3, 1, 2)
    cols = F.unfold(grid, k, padding=k // 2)                                  # (n, d * k * k, T)
    torch.testing.assert_close(out, (w.reshape(z, -1) @ cols + b[:, None]).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_conv_projector_token_order_is_row_major():
    """A kernel that copies the left neighbour moves a one-hot token one column right (token + 1);
    one that copies the neighbour above moves it one row down (token + W)."""
    h = 4
    proj = ConvProjector(1, 1, 3)
    x = torch.zeros(1, h * h, 1)
    x[0, 1 * h + 2, 0] = 1.0  # row 1, column 2: token 6
    with torch.no_grad():
        proj.projection_layer.bias.zero_()
        proj.projection_layer.weight.zero_()
        proj.projection_layer.weight[0, 0, 1, 0] = 1.0  # out(r, c) = in(r, c - 1)
        right = proj(x)[0, :, 0]
        proj.projection_layer.weight.zero_()
        proj.projection_layer.weight[0, 0, 0, 1] = 1.0  # out(r, c) = in(r - 1, c)
        down = proj(x)[0, :, 0]
    assert right.nonzero().flatten().tolist() == [7]
    assert down.nonzero().flatten().tolist() == [6 + h]
    # the model's patchify uses the same order: a patch at row 1, column 2 is token 6
    m = build("SiT-T/4", input_size=16, in_channels=3, num_classes=10, depth=1, hidden_size=32, num_heads=2)
    img = torch.zeros(1, 3, 16, 16)
    img[:, :, 4:8, 8:12] = 1.0
    with torch.no_grad():
        tokens = m.x_embedder(img) - m.x_embedder(torch.zeros_like(img))
    assert tokens.abs().sum(-1)[0].nonzero().flatten().tolist() == [6]


def tiny_model_config(**kw) -> ModelConfig:
    return ModelConfig(name="SiT-T/4", input_size=16, in_channels=3, num_classes=10, depth=2, hidden_size=32,
                       num_heads=2, encoder_depth=1, **kw)


def seeded(cfg: ModelConfig, seed: int = 0) -> dict:
    """The initial weights the training loop draws: the seed, then initialize_weights."""
    m = DiffusionTransformer(cfg)
    torch.manual_seed(seed)
    m.initialize_weights()
    return m.state_dict()


def test_conv_projector_init_is_seeded_and_leaves_the_backbone_of_the_vanilla_twin():
    conv = seeded(tiny_model_config(z_dims=(TEACHER_DIM,), projector="conv", projector_kernel=3))
    again = seeded(tiny_model_config(z_dims=(TEACHER_DIM,), projector="conv", projector_kernel=3))
    vanilla = seeded(tiny_model_config())
    mlp = seeded(tiny_model_config(z_dims=(TEACHER_DIM,)))
    assert conv.keys() == again.keys() and all(torch.equal(conv[k], again[k]) for k in conv)
    for k in vanilla:  # the backbone is drawn first, the same for all three
        assert torch.equal(conv[k], vanilla[k]) and torch.equal(mlp[k], vanilla[k]), k
    w = conv["projectors.0.projection_layer.weight"]
    assert w.shape == (TEACHER_DIM, 32, 3, 3)
    bound = 1 / math.sqrt(32 * 9)  # PyTorch's default Conv2d init (kaiming-uniform a = sqrt(5)): U(+-1/sqrt(fan_in))
    assert 0 < w.abs().max() <= bound and 0 < conv["projectors.0.projection_layer.bias"].abs().max() <= bound
    assert not torch.equal(seeded(tiny_model_config(z_dims=(TEACHER_DIM,), projector="conv"), seed=1)[
        "projectors.0.projection_layer.weight"], w)


def test_a_flat_conv_checkpoint_loads_with_its_kernel(tmp_path):
    """No model_config: infer_config reads the conv projector (4-D weight) and its kernel size."""
    torch.manual_seed(0)
    m = DiffusionTransformer(tiny_model_config(z_dims=(TEACHER_DIM, 8), projector="conv", projector_kernel=5)).eval()
    assert infer_config(m.state_dict(), name="SiT-T/4", num_heads=2).projector == "conv"
    torch.save(m.state_dict(), tmp_path / "flat.pt")
    got = load(tmp_path / "flat.pt", name="SiT-T/4", num_heads=2, encoder_depth=1)
    assert got.cfg.projector == "conv" and got.cfg.projector_kernel == 5 and got.cfg.z_dims == (TEACHER_DIM, 8)
    assert got.train_config is None
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 2])
    with torch.no_grad():
        a, b = m(x, t, y, return_hidden=()), got(x, t, y, return_hidden=())
    assert all(torch.equal(p, q) for p, q in zip(a.zs, b.zs)) and a.zs[0].shape == (2, 16, TEACHER_DIM)
    # an MLP checkpoint is still read as one
    mlp = DiffusionTransformer(tiny_model_config(z_dims=(TEACHER_DIM,), projector_dim=64))
    cfg = infer_config(mlp.state_dict(), name="SiT-T/4", num_heads=2)
    assert cfg.projector == "mlp" and cfg.projector_dim == 64


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("assignment,msg", [
    ("target_norm=\"zscore\"", "target_norm 'zscore' is unknown"),
    ("target_norm_gamma=NaN", "target_norm_gamma nan is not a finite number"),
    ("target_norm_gamma=Infinity", "target_norm_gamma inf is not a finite number"),
    ("target_norm_gamma=\"x\"", "target_norm_gamma 'x' is not a finite number"),
    ("target_norm_eps=0", "target_norm_eps 0 is not a finite number > 0"),
    ("target_norm_eps=-1e-6", "target_norm_eps -1e-06 is not a finite number > 0"),
])
def test_check_rejects_bad_target_norm_settings_in_one_line(assignment, msg):
    from train.run.config import preset

    assert preset("tiny").check() == []
    errs = override(preset("tiny"), [assignment]).check()
    assert len(errs) == 1 and msg in errs[0] and "\n" not in errs[0] and ": use" in errs[0], errs


@pytest.mark.parametrize("assignment,msg", [
    ("model.projector=cnn", "unknown projector 'cnn'"),
    ("model.projector_kernel=2", "projector_kernel 2 is not an odd positive integer"),
    ("model.projector_kernel=0", "model.projector_kernel 0 is not an integer >= 1"),
    ("model.projector_kernel=true", "model.projector_kernel True is not an integer"),
    ("target_norm=zscore", "target_norm 'zscore' is unknown"),
])
def test_bad_irepa_options_fail_in_one_line_from_the_cli(tmp_path, capsys, assignment, msg):
    code = main_train(["--preset", "tiny", "--steps", "1", "--no-progress", "--out", str(tmp_path / "x"), "--set", assignment])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and msg in err, err
    assert not (tmp_path / "x").exists()


def test_dry_run_lists_the_options_with_their_defaults(capsys):
    """REPA's own targets are the defaults (the ImageNet presets); the tiny preset carries iREPA's (plan
    stages 9 and 11, with lambda 2.0), and either is one --set away from the other."""
    assert main_train(["--preset", "SiT-B/2", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["target_norm"], cfg["target_norm_gamma"], cfg["target_norm_eps"]) == ("none", 0.6, 1e-6)
    assert (cfg["model"]["projector"], cfg["model"]["projector_kernel"]) == ("mlp", 3)
    assert main_train(["--preset", "tiny", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["target_norm"], cfg["target_norm_gamma"], cfg["model"]["projector"], cfg["proj_coeff"]) == ("spatial", 0.6, "conv", 2.0)
    assert main_train(["--preset", "tiny", "--dry-run", "--set", "target_norm=none", "model.projector=mlp"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["target_norm"], cfg["model"]["projector"]) == ("none", "mlp")
    assert main_train(["--preset", "tiny", "--dry-run", "--set", "target_norm=spatial", "target_norm_gamma=0.8",
                       "model.projector=conv", "model.projector_kernel=1"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["target_norm"], cfg["target_norm_gamma"], cfg["model"]["projector"], cfg["model"]["projector_kernel"]) == (
        "spatial", 0.8, "conv", 1)


# ----------------------------------------------------------------------------------------------
# Real runs
# ----------------------------------------------------------------------------------------------

CLI_SMALL = ["--preset", "tiny-shapes", "--steps", "2", "--no-progress", "--threads", "1",
             "--set", "target_norm=spatial", "model.projector=conv", "random_init_encoders=true", "model.depth=2",
             "model.hidden_size=32", "model.num_heads=2", "model.encoder_depth=1", "data.n_train=32",
             "batch_size=8", "log_every=1", "ckpt_every=2", "sample_every=0", "eval_every=0"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """2 steps of the tiny preset (made small) with both iREPA options, from the command line."""
    out = tmp_path_factory.mktemp("irepa") / "run"
    assert main_train(CLI_SMALL + ["--out", str(out)]) == 0
    return out


def test_two_step_cli_run_with_both_options(cli_run):
    meta = json.loads((cli_run / "config.json").read_text())
    assert meta["config"]["target_norm"] == "spatial" and meta["config"]["model"]["projector"] == "conv"
    m = pd.read_json(cli_run / "metrics.jsonl", lines=True)
    assert list(m["step"]) == [1, 2] and np.isfinite(m["proj_loss"]).all() and (m["proj_loss"] != 0).all()
    state = torch.load(cli_run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["model"]["projectors.0.projection_layer.weight"].shape == (TEACHER_DIM, 32, 3, 3)
    # the toolkit's checkpoint carries model_config: load rebuilds the conv projector from it, and
    # keeps the run's TrainConfig for the probes
    model = load(cli_run / "checkpoints" / "latest.pt")
    assert model.cfg.projector == "conv" and model.cfg.projector_kernel == 3
    assert model.train_config["target_norm"] == "spatial"
    # the same tensors without model_config are inferred to the same model
    inferred = infer_config(state["ema"], name="SiT-T/4", num_heads=2, encoder_depth=1)
    assert (inferred.projector, inferred.projector_kernel, inferred.z_dims) == ("conv", 3, (TEACHER_DIM,))


def test_the_target_cache_holds_raw_tokens(cli_run):
    """Normalisation comes after the cache read: the cache holds the encoder's raw tokens (the same
    file a run without normalisation writes)."""
    from train.data.datasets import build_dataset
    from train.targets.encoders import load_encoder

    cache = torch.load(cli_run / "target_cache.pt", weights_only=True)["tokens"][0]   # (N, T, D) float16
    torch.manual_seed(0)  # the trainer seeds random-init encoders with the run's seed
    enc = load_encoder("builtin-teacher", grid=8, random_init=True)
    images = build_dataset("shapes", "train", size=32, n=32).images
    with torch.no_grad():
        raw = torch.cat([enc(images[s:s + 256]) for s in range(0, len(images), 256)])
    assert cache.dtype == torch.float16 and cache.shape == raw.shape
    torch.testing.assert_close(cache.float(), raw.half().float(), rtol=0, atol=0)


def micro(**kw) -> TrainConfig:
    """A real configuration small enough for a test, with both iREPA options."""
    cfg = TrainConfig(
        model=ModelConfig(name="SiT-T/4", input_size=16, in_channels=3, num_classes=10, depth=2, hidden_size=32,
                          num_heads=2, encoder_depth=1, z_dims=(TEACHER_DIM,), projector="conv", projector_kernel=3),
        data=DataConfig(dataset="shapes", image_size=16, n_train=64),
        encoders=("builtin-teacher",), random_init_encoders=True, proj_coeff=0.5, lr=1e-3, batch_size=8,
        steps=4, ema_decay=0.9, log_every=1, ckpt_every=2, ckpt_series="all", device="cpu", threads=1,
        target_norm="spatial", target_norm_gamma=0.6,
    )
    return override(cfg, [f"{k}={json.dumps(v)}" for k, v in kw.items()]) if kw else cfg


def test_resume_with_both_options_is_bitwise_exact(tmp_path, monkeypatch):
    import train.run.loop as loop

    shapes = []
    real = loop.spatial_normalize

    def recorded(y, *a, **k):
        shapes.append(tuple(y.shape))
        return real(y, *a, **k)

    monkeypatch.setattr(loop, "spatial_normalize", recorded)
    cfg = micro(steps=5)
    loop.train(cfg, tmp_path / "straight", progress=False)
    assert shapes == [(8, 16, TEACHER_DIM)] * 5  # the loop normalises each step's targets
    loop.train(cfg, tmp_path / "interrupted", progress=False, stop_after=3)  # stops after step 3 (last ckpt: 2)
    ckpts = tmp_path / "interrupted" / "checkpoints"
    (ckpts / "latest.pt").unlink()
    os.replace(ckpts / "step_0000002.pt", ckpts / "latest.pt")
    loop.train(cfg, tmp_path / "interrupted", progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(ckpts / "latest.pt", weights_only=True)
    assert "projectors.0.projection_layer.weight" in a["model"]
    for part in ("model", "ema", "opt"):
        if part == "opt":
            pa, pb = a["opt"]["state"], b["opt"]["state"]
            assert all(torch.equal(pa[i][s], pb[i][s]) for i in pa for s in pa[i])
            continue
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    m = pd.read_json(tmp_path / "interrupted" / "metrics.jsonl", lines=True)
    assert list(m["step"]) == [1, 2, 3, 4, 5]
    # a run without normalisation writes the same target cache, and trains differently
    loop.train(micro(steps=1, target_norm="none"), tmp_path / "raw", progress=False)
    c_raw = torch.load(tmp_path / "raw" / "target_cache.pt", weights_only=True)["tokens"][0]
    c_sp = torch.load(tmp_path / "straight" / "target_cache.pt", weights_only=True)["tokens"][0]
    assert torch.equal(c_raw, c_sp)
    first = [pd.read_json(tmp_path / r / "metrics.jsonl", lines=True)["proj_loss"][0] for r in ("raw", "straight")]
    assert first[0] != first[1]


def test_a_run_from_before_the_options_resumes(tmp_path):
    """config.json written before the fields existed: they count as their defaults."""
    from train.run.loop import train

    cfg = micro(steps=1, target_norm="none", model={**micro().model.to_dict(), "projector": "mlp", "projector_dim": 32})
    train(cfg, tmp_path / "old", progress=False)
    f = tmp_path / "old" / "config.json"
    meta = json.loads(f.read_text())
    for key in ("target_norm", "target_norm_gamma", "target_norm_eps"):
        del meta["config"][key]
    for key in ("projector", "projector_kernel"):
        del meta["config"]["model"][key]
    f.write_text(json.dumps(meta))
    train(override(cfg, ["steps=2"]), tmp_path / "old", progress=False)
    assert list(pd.read_json(tmp_path / "old" / "metrics.jsonl", lines=True)["step"]) == [1, 2]
    with pytest.raises(UserError, match=r"different settings \(target_norm\)"):
        train(override(cfg, ["steps=3", "target_norm=spatial"]), tmp_path / "old", progress=False)


def test_projection_alignment_uses_the_run_projector_and_its_normalised_targets(cli_run):
    from probe.analyses import projection_alignment
    from probe.extract import image_noise, image_set
    from train.data.datasets import build_dataset
    from train.targets.encoders import load_encoder
    from train.objectives.interpolants import interpolate
    from train.data.latents import build_codec
    from train.models.loading import predict

    ckpt = cli_run / "checkpoints" / "latest.pt"
    opts = dict(n_images=6, batch_size=4, ts=(0.5,), random_init_encoder=True, progress=False, weights=("ema",))
    pa = projection_alignment(ckpt, "shapes", baseline_images=8, **opts)
    assert set(pa["target_norm"]) == {"spatial"} and set(pa["target_norm_gamma"]) == {0.6}
    model = load(ckpt, weights="ema")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        enc = load_encoder("builtin-teacher", grid=8, random_init=True)
    imgs = image_set(build_dataset("shapes", "val", size=32), 6, 0)
    idx, x, y = next(imgs.batches(6))
    with torch.no_grad():
        latents = build_codec("identity").encode(x, sample=False)
        z = predict(model, interpolate(latents, image_noise(idx, (3, 32, 32), 0), 0.5), 0.5, y, head=False, project=True).zs[0]
        raw = enc(x)
    cos = F.cosine_similarity
    want = cos(z, spatial_normalize(raw, 0.6, 1e-6), dim=-1).mean().item()
    got = pa[(pa.weights == "ema") & (pa.label == "real")]["value"].item()
    assert got == pytest.approx(want, abs=1e-5) and got != pytest.approx(cos(z, raw, dim=-1).mean().item(), abs=1e-4)
    # the image-blind baseline predicts the normalised tokens too
    tr = image_set(build_dataset("shapes", "train", size=32), 8, 0)
    with torch.no_grad():
        mean_tok = torch.cat([spatial_normalize(enc(xb), 0.6) for _, xb, _ in tr.batches(8)]).mean(0)
    blind_null = cos(spatial_normalize(raw, 0.6), mean_tok.expand_as(raw), dim=-1).mean().item()
    assert pa[(pa.weights == "baseline") & (pa.label == "null")]["value"].item() == pytest.approx(blind_null, abs=1e-5)
    # a model without a run config (built or loaded from a flat file) is compared with the raw tokens
    model.train_config = None
    raw_rows = projection_alignment(model, "shapes", baseline_images=0, **opts)
    assert set(raw_rows["target_norm"]) == {"none"} and raw_rows["target_norm_gamma"].isna().all()
    assert raw_rows[raw_rows.label == "real"]["value"].item() == pytest.approx(cos(z, raw, dim=-1).mean().item(), abs=1e-5)
