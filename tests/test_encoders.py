"""Target encoders: every registry architecture (random init, offline), targets, token grids,
local weight files, fast offline errors, and the built-in teacher (tiny config)."""

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from train.data.datasets import ShapesDataset
from train.targets.encoders import (
    ENCODERS,
    TEACHER,
    TEACHERS,
    EncoderSpec,
    TeacherConfig,
    linear_probe_accuracy,
    load_encoder,
    resample_tokens,
    teacher_path,
    train_builtin_teacher,
)
from train.errors import UserError
from conftest import offline_cache, random_uint8_images

SMALL = ["dinov2-vit-s", "dinov2-vit-s-reg", "dinov2-vit-b", "dinov2-vit-b-reg", "dinov1-vit-b",
         "mocov3-vit-b", "siglip-vit-b", "dinov3-vit-s"]
LARGE = sorted(set(ENCODERS) - set(SMALL) - set(TEACHERS))
TINY = TeacherConfig(width=32, depth=1, heads=2, steps=3, batch_size=16, n_train=300, warmup=1)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    offline_cache(monkeypatch, tmp_path / "repa-cache")


_images = random_uint8_images


def test_registry_token_grids():
    assert LARGE == ["clip-vit-l", "dinov2-vit-g", "dinov2-vit-g-reg", "dinov2-vit-l", "dinov2-vit-l-reg",
                     "dinov3-vit-b", "dinov3-vit-l", "ijepa-vit-h", "mae-vit-l", "mocov3-vit-l",
                     "sam2-hiera-b+", "sam2-hiera-l", "sam2-hiera-s", "sam2-hiera-t"]
    for name, spec in ENCODERS.items():
        if name in TEACHERS:  # sizes set in train.targets.teacher
            assert spec.grid == 8, name
            continue
        assert spec.grid == 16, name
        assert spec.resolution == {14: 224, 16: 256, 32: 512}[spec.patch]
    assert {n for n, s in ENCODERS.items() if s.target == "prenorm"} == {"mae-vit-l", "clip-vit-l"}


@pytest.mark.parametrize("name", SMALL)
def test_small_encoders(name):
    enc = load_encoder(name, random_init=True)
    tokens = enc(_images())
    assert tokens.shape == (2, 256, enc.dim) and tokens.dtype == torch.float32
    # class and register tokens dropped: exactly the final-norm patch tokens
    features = enc.model.forward_features(enc.preprocess(_images()))
    assert features.shape[1] == 256 + enc.model.num_prefix_tokens
    assert torch.allclose(tokens, features[:, enc.model.num_prefix_tokens:], atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.train().training
    assert enc.provenance["weights"] == "random-init" and enc.provenance["architecture"] == ENCODERS[name].arch


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE)
def test_large_encoders(name):
    enc = load_encoder(name, random_init=True)
    assert enc(_images(1)).shape == (1, 256, enc.dim)


def test_prenorm_target_is_last_block_without_norm(monkeypatch):
    monkeypatch.setitem(ENCODERS, "test-prenorm", EncoderSpec("vit_small_patch14_dinov2.lvd142m", 14, 224, "prenorm"))
    torch.manual_seed(0)
    pre = load_encoder("test-prenorm", random_init=True)
    post = load_encoder("dinov2-vit-s", random_init=True)
    post.model.load_state_dict(pre.model.state_dict())
    raw, normed = pre(_images()), post(_images())
    assert raw.shape == normed.shape == (2, 256, 384) and not torch.allclose(raw, normed)
    assert torch.allclose(pre.model.norm(raw), normed, atol=1e-5)  # LayerNorm is token-wise


def test_token_grid_resampling():
    tokens = torch.randn(2, 256, 8)
    pooled = resample_tokens(tokens, 8)
    manual = tokens.reshape(2, 8, 2, 8, 2, 8).mean((2, 4)).reshape(2, 64, 8)
    assert torch.allclose(pooled, manual, atol=1e-6)
    assert resample_tokens(tokens, 12).shape == (2, 144, 8) and resample_tokens(tokens, 16) is tokens
    enc = load_encoder("dinov2-vit-s", grid=8, random_init=True)
    assert enc(_images()).shape == (2, 64, 384)
    assert enc.provenance["grid"] == 8 and enc.provenance["resample"] == "area"


def test_local_weights_roundtrip(tmp_path):
    src = load_encoder("dinov2-vit-s", random_init=True)
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    (tmp_path / "hf").mkdir()
    shutil.copy(tmp_path / "w.safetensors", tmp_path / "hf" / "model.safetensors")
    expected = src(_images())
    for weights in (tmp_path / "w.safetensors", tmp_path / "w.pth", tmp_path / "hf"):
        enc = load_encoder("dinov2-vit-s", weights=weights)
        assert enc.provenance["weights"].startswith("file:")
        assert torch.allclose(enc(_images()), expected, atol=1e-5)


def test_mocov3_checkpoint_prefix_and_pos_embed(tmp_path):
    import timm

    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)  # 14x14 pos-embed
    state = {f"module.base_encoder.{k}": v for k, v in vit.state_dict().items()}
    state["module.base_encoder.head.0.weight"] = torch.zeros(4096, 768)  # MoCo projection head
    state["module.momentum_encoder.cls_token"] = torch.zeros(1, 1, 768)
    torch.save({"epoch": 300, "state_dict": state}, tmp_path / "mocov3.pth.tar")
    enc = load_encoder("mocov3-vit-b", weights=tmp_path / "mocov3.pth.tar")
    assert torch.equal(enc.model.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    assert enc.model.pos_embed.shape == (1, 257, 768)  # resampled to 16x16 for 256 px
    assert enc(_images(1)).shape == (1, 256, 768)


def test_missing_weights_fail_fast_one_line(tmp_path):
    import timm  # noqa: F401  (its import time is not what is measured)

    start = time.time()
    for name, weights, match in [("dinov2-vit-b", None, "--encoder-weights PATH.*HF_HUB_OFFLINE=1"),
                                 ("ijepa-vit-h", None, "--encoder-weights"),
                                 ("mocov3-vit-l", None, "--encoder-weights"),
                                 ("dinov2-vit-s", tmp_path / "nope.pth", "not found"),
                                 ("dinov2-vit-s", tmp_path, "no weights file")]:
        with pytest.raises(UserError, match=match) as err:
            load_encoder(name, weights=weights)
        assert "\n" not in str(err.value)
    assert time.time() - start < 5
    with pytest.raises(UserError, match="choose one of"):
        load_encoder("resnet-50")


def test_wrong_weights_file(tmp_path):
    save_file({"foo": torch.zeros(3)}, tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="cannot load"):
        load_encoder("dinov2-vit-s", weights=tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="not a built-in teacher"):
        load_encoder(TEACHER, weights=tmp_path / "bad.safetensors")


def test_encoder_rejects_float_images():
    enc = load_encoder(TEACHER, random_init=True)
    with pytest.raises(TypeError, match="uint8"):
        enc(torch.zeros(1, 3, 32, 32))


def test_builtin_teacher_tiny(tmp_path):
    path = train_builtin_teacher(TINY, tmp_path / "a", progress=False)
    assert path == teacher_path(TINY, tmp_path / "a") and path.parent.name == "teacher"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["config"]["steps"] == 3 and sidecar["seed"] == 0
    assert 0 <= sidecar["val_accuracy"] <= 1 and 0 <= sidecar["linear_probe_accuracy"] <= 1
    assert not list(path.parent.glob("*.tmp"))
    mtime = path.stat().st_mtime_ns
    assert train_builtin_teacher(TINY, tmp_path / "a") == path and path.stat().st_mtime_ns == mtime  # cached

    again = load_file(train_builtin_teacher(TINY, tmp_path / "b", progress=False))  # deterministic by seed
    assert all(torch.equal(v, again[k]) for k, v in load_file(path).items())

    enc = load_encoder(TEACHER, weights=path, grid=4)
    assert enc(_images(3)).shape == (3, 16, 32) and enc.provenance["teacher_config"]["width"] == 32

    default = teacher_path(TeacherConfig())  # under $REPA_CACHE: load_encoder uses the cached file
    default.parent.mkdir(parents=True)
    shutil.copy(path, default)
    assert load_encoder(TEACHER).provenance["weights"] == f"builtin:{default.resolve()}"


def test_linear_probe_helper():
    enc = load_encoder(TEACHER, random_init=True)
    acc = linear_probe_accuracy(enc, ShapesDataset("train", n=200), ShapesDataset("val", n=100), 200, 100)
    assert 0.0 <= acc <= 1.0


def test_linear_probe_on_pooled_features_is_the_encoder_probe():
    """make_teachers scores the probe on features it already pooled for the k-NN: the same number as the
    encoder-driven probe, which pools the same tokens itself."""
    from train.targets.teacher import linear_probe_on_features

    enc = load_encoder(TEACHER, random_init=True)
    tr, va = ShapesDataset("train", n=200), ShapesDataset("val", n=100)
    with torch.no_grad():
        x_tr, x_va = enc(tr.images[:200]).mean(1), enc(va.images[:100]).mean(1)
    direct = linear_probe_on_features(x_tr.numpy(), tr.labels[:200].numpy(), x_va.numpy(), va.labels[:100].numpy())
    assert direct == linear_probe_accuracy(enc, tr, va, 200, 100)
