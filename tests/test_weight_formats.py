"""Weight formats: transformers encoder directories equal the timm path on shared random weights,
MoCo v3's block-name bug, DINOv3 and SAM2 by name, diffusers' DiT equals diffusers' own forward,
and the FID Inception equals pytorch-fid's.  Tiny random configs throughout; nothing downloads."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from train.encoders import ENCODERS, load_encoder
from train.errors import UserError

TINY = (("embed_dim", 32), ("depth", 2), ("num_heads", 2))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "repa-cache"))


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------------
# transformers directories vs timm files
# ----------------------------------------------------------------------------------------------

def _qkv(sd: dict, i: int) -> tuple:
    return (*sd[f"blocks.{i}.attn.qkv.weight"].chunk(3), *sd[f"blocks.{i}.attn.qkv.bias"].chunk(3))


def timm_to_transformers(sd: dict, family: str, depth: int) -> dict:
    """This test's own conversion of a timm ViT state dict to the transformers layout of ``family``."""
    out: dict = {}
    vit_like = family in ("vit", "vit_mae", "ijepa")
    clip_like = family in ("clip", "siglip")
    pe = "embeddings.patch_embedding" if clip_like else "embeddings.patch_embeddings.projection"
    out[f"{pe}.weight"] = sd["patch_embed.proj.weight"]
    if "patch_embed.proj.bias" in sd:
        out[f"{pe}.bias"] = sd["patch_embed.proj.bias"]
    if clip_like:
        out["embeddings.position_embedding.weight"] = sd["pos_embed"][0]
        if family == "clip":
            out["embeddings.class_embedding"] = sd["cls_token"].flatten()
            out["pre_layrnorm.weight"], out["pre_layrnorm.bias"] = sd["norm_pre.weight"], sd["norm_pre.bias"]
        out["post_layernorm.weight"], out["post_layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    else:
        pos = sd["pos_embed"]
        if "reg_token" in sd:  # timm's DINOv2-reg folds the class position into cls_token (no_embed_class)
            pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], 1)
            out["embeddings.register_tokens"] = sd["reg_token"]
        out["embeddings.position_embeddings"] = pos
        if "cls_token" in sd:
            out["embeddings.cls_token"] = sd["cls_token"]
        if family.startswith("dinov2"):
            out["embeddings.mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
        out["layernorm.weight"], out["layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    for i in range(depth):
        b = f"blocks.{i}."
        q, k, v, qb, kb, vb = _qkv(sd, i)
        if clip_like:
            h, att, o, n1, n2 = f"encoder.layers.{i}.", "self_attn", "out_proj", "layer_norm1", "layer_norm2"
        elif vit_like:
            h, att, o, n1, n2 = f"layers.{i}.", "attention", "o_proj", "layernorm_before", "layernorm_after"
        else:
            h, att, o, n1, n2 = f"encoder.layer.{i}.", "attention", "o_proj", "norm1", "norm2"
        for name, w, bias in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            out[f"{h}{att}.{name}.weight"], out[f"{h}{att}.{name}.bias"] = w, bias
        for src, dst in ((f"attn.proj", f"{att}.{o}"), ("norm1", n1), ("norm2", n2), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            out[f"{h}{dst}.weight"], out[f"{h}{dst}.bias"] = sd[f"{b}{src}.weight"], sd[f"{b}{src}.bias"]
        if f"{b}ls1.gamma" in sd:
            out[f"{h}layer_scale1.lambda1"], out[f"{h}layer_scale2.lambda1"] = sd[f"{b}ls1.gamma"], sd[f"{b}ls2.gamma"]
    return out


def _hf_config(family: str, patch: int, size: int):
    import transformers as T

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=size, patch_size=patch)
    mlp = dict(intermediate_size=128)
    return {
        "dinov2": lambda: T.Dinov2Config(**common, layer_norm_eps=1e-6),
        "dinov2_with_registers": lambda: T.Dinov2WithRegistersConfig(**common, layer_norm_eps=1e-6, num_register_tokens=4),
        "vit": lambda: T.ViTConfig(**common, **mlp, layer_norm_eps=1e-6),
        "vit_mae": lambda: T.ViTMAEConfig(**common, **mlp, layer_norm_eps=1e-6),
        "clip": lambda: T.CLIPVisionConfig(**common, **mlp, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
        # timm's vit_*_siglip_* (v1) use exact GELU; the published transformers configs say gelu_pytorch_tanh
        "siglip": lambda: T.SiglipVisionConfig(**common, **mlp, layer_norm_eps=1e-6, hidden_act="gelu"),
        "ijepa": lambda: T.IJepaConfig(**common, **mlp, layer_norm_eps=1e-6),
    }[family]()


_HF_MODEL = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel", "vit": "ViTModel",
             "vit_mae": "ViTMAEModel", "clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "ijepa": "IJepaModel"}
FAMILIES = [("dinov2-vit-s", "dinov2"), ("dinov2-vit-s-reg", "dinov2_with_registers"), ("dinov1-vit-b", "vit"),
            ("mae-vit-l", "vit_mae"), ("clip-vit-l", "clip"), ("siglip-vit-b", "siglip"), ("ijepa-vit-h", "ijepa")]


def _tiny_pair(tmp_path, monkeypatch, name: str, family: str, native_grid: int = 4, grid: int = 3):
    """Register a tiny variant of ``name`` (grid x grid tokens) and save one set of random weights made
    at ``native_grid`` twice: as a timm safetensors file and as a transformers directory."""
    import timm
    import transformers

    spec = ENCODERS[name]
    spec = replace(spec, resolution=grid * spec.patch, timm_kwargs=TINY)
    monkeypatch.setitem(ENCODERS, name, spec)
    torch.manual_seed(0)
    net = timm.create_model(spec.arch, pretrained=False, num_classes=0, img_size=native_grid * spec.patch, **dict(TINY))
    with torch.no_grad():
        for p in net.parameters():  # make norms, layer scales and biases non-trivial
            p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, tmp_path / "timm.safetensors")
    hf = getattr(transformers, _HF_MODEL[family])(_hf_config(family, spec.patch, native_grid * spec.patch))
    missing, unexpected = hf.load_state_dict(timm_to_transformers(sd, family, 2), strict=False)
    assert not unexpected and all(k.startswith(("head.", "pooler.")) for k in missing), (missing, unexpected)
    hf.save_pretrained(tmp_path / "hf")
    return tmp_path / "timm.safetensors", tmp_path / "hf"


@pytest.mark.parametrize("name,family", FAMILIES)
def test_transformers_dir_gives_the_timm_targets(tmp_path, monkeypatch, name, family):
    timm_file, hf_dir = _tiny_pair(tmp_path, monkeypatch, name, family)
    a, b = load_encoder(name, weights=timm_file), load_encoder(name, weights=hf_dir)
    ta, tb = a(_images()), b(_images())
    assert ta.shape == tb.shape == (2, 9, 32)
    assert torch.allclose(ta, tb, atol=1e-5), (ta - tb).abs().max()
    assert b.provenance["format"] == "transformers" and b.provenance["hf_image_size"] == 4 * ENCODERS[name].patch
    assert b.provenance["weights"].startswith("transformers:") and b.provenance["mean"] == a.provenance["mean"]
    assert not any(p.requires_grad for p in b.parameters())


def test_transformers_mae_does_not_mask_or_shuffle(tmp_path, monkeypatch):
    """MAE's tokens stay in place and all of them come back, whatever ViTMAE's default mask ratio."""
    _, hf_dir = _tiny_pair(tmp_path, monkeypatch, "mae-vit-l", "vit_mae", native_grid=3)
    enc = load_encoder("mae-vit-l", weights=hf_dir)
    x = enc.preprocess(_images())
    out = enc.model.hf(pixel_values=x, noise=torch.arange(9.0).expand(2, 9), output_hidden_states=True)
    assert torch.equal(out.ids_restore[0], torch.arange(9)) and out.mask.sum() == 0
    assert torch.allclose(enc(_images()), out.hidden_states[-1][:, 1:], atol=1e-6)


def test_transformers_preprocessor_normalisation(tmp_path, monkeypatch):
    import json

    _, hf_dir = _tiny_pair(tmp_path, monkeypatch, "siglip-vit-b", "siglip", native_grid=3)
    (hf_dir / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.4]}))
    enc = load_encoder("siglip-vit-b", weights=hf_dir)
    assert enc.provenance["mean"] == [0.1, 0.2, 0.3] and enc.provenance["normalisation"] == "preprocessor_config.json"


def test_wrong_transformers_dir_is_one_line(tmp_path, monkeypatch):
    _, hf_dir = _tiny_pair(tmp_path, monkeypatch, "mae-vit-l", "vit_mae", native_grid=3)
    cases = [("dinov2-vit-s", "'vit_mae' model, not one for dinov2-vit-s.*Dinov2Model"),
             ("mocov3-vit-b", "not one for mocov3-vit-b.*timm or original"),
             ("clip-vit-l", "CLIPVisionModel")]
    for name, match in cases:
        with pytest.raises(UserError, match=match) as err:
            load_encoder(name, weights=hf_dir)
        assert "\n" not in str(err.value)
    # right type, wrong size: the tiny MAE dir is not the registry's ViT-L
    monkeypatch.setitem(ENCODERS, "mae-vit-l", replace(ENCODERS["mae-vit-l"], timm_kwargs=()))
    with pytest.raises(UserError, match="width 32, depth 2, patch 16.*mae-vit-l is width 1024, depth 24") as err:
        load_encoder("mae-vit-l", weights=hf_dir)
    assert "\n" not in str(err.value)
    # another patch size
    import transformers

    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=16)
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path / "p16")
    monkeypatch.setitem(ENCODERS, "dinov2-vit-s", replace(ENCODERS["dinov2-vit-s"], resolution=28, timm_kwargs=TINY))
    with pytest.raises(UserError, match="patch 16.*patch 14") as err:
        load_encoder("dinov2-vit-s", weights=tmp_path / "p16")
    assert "\n" not in str(err.value)


def test_timm_directory_still_loads_as_timm(tmp_path, monkeypatch):
    """A timm directory (config.json with ``architecture``) goes the timm way."""
    import json

    timm_file, _ = _tiny_pair(tmp_path, monkeypatch, "dinov2-vit-s", "dinov2")
    d = tmp_path / "timm-dir"
    d.mkdir()
    (d / "model.safetensors").write_bytes(timm_file.read_bytes())
    (d / "config.json").write_text(json.dumps({"architecture": "vit_small_patch14_dinov2", "num_classes": 0}))
    enc = load_encoder("dinov2-vit-s", weights=d)
    assert enc.provenance["weights"].startswith("file:") and "format" not in enc.provenance
