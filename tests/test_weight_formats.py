"""Weight formats: transformers encoder directories equal the timm path on shared random weights,
MoCo v3's block-name bug, DINOv3 and SAM2 by name, diffusers' DiT equals diffusers' own forward,
and the FID Inception equals pytorch-fid's.  Tiny random configs throughout; nothing downloads."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from train.targets.encoders import ENCODERS, load_encoder
from train.errors import UserError
from conftest import offline_cache, random_uint8_images

TINY = (("embed_dim", 32), ("depth", 2), ("num_heads", 2))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    offline_cache(monkeypatch, tmp_path / "repa-cache")


_images = random_uint8_images


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


def dinov3_to_transformers(sd: dict, depth: int) -> dict:
    """timm's DINOv3 (Eva, RoPE, no qkv bias) -> transformers' DINOv3ViTModel."""
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.register_tokens": sd["reg_token"],
           "embeddings.mask_token": torch.zeros_like(sd["cls_token"]),
           "embeddings.patch_embeddings.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.bias": sd["patch_embed.proj.bias"],
           "norm.weight": sd["norm.weight"], "norm.bias": sd["norm.bias"]}
    for i in range(depth):
        b, h = f"blocks.{i}.", f"model.layer.{i}."
        for name, w in zip(("q_proj", "k_proj", "v_proj"), sd[f"{b}attn.qkv.weight"].chunk(3)):
            out[f"{h}attention.{name}.weight"] = w
        out[f"{h}layer_scale1.lambda1"], out[f"{h}layer_scale2.lambda1"] = sd[f"{b}gamma_1"], sd[f"{b}gamma_2"]
        for src, dst in (("attn.proj", "attention.o_proj"), ("norm1", "norm1"), ("norm2", "norm2"),
                         ("mlp.fc1", "mlp.up_proj"), ("mlp.fc2", "mlp.down_proj")):
            out[f"{h}{dst}.weight"], out[f"{h}{dst}.bias"] = sd[f"{b}{src}.weight"], sd[f"{b}{src}.bias"]
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
        "dinov3_vit": lambda: T.DINOv3ViTConfig(**common, **mlp, layer_norm_eps=1e-5, num_register_tokens=4,
                                                query_bias=False, key_bias=False, value_bias=False),
    }[family]()


_HF_MODEL = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel", "vit": "ViTModel",
             "vit_mae": "ViTMAEModel", "clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "ijepa": "IJepaModel",
             "dinov3_vit": "DINOv3ViTModel"}
FAMILIES = [("dinov2-vit-s", "dinov2"), ("dinov2-vit-s-reg", "dinov2_with_registers"), ("dinov1-vit-b", "vit"),
            ("mae-vit-l", "vit_mae"), ("clip-vit-l", "clip"), ("siglip-vit-b", "siglip"), ("ijepa-vit-h", "ijepa"),
            ("dinov3-vit-s", "dinov3_vit")]


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
    convert = dinov3_to_transformers if family == "dinov3_vit" else (lambda sd, d: timm_to_transformers(sd, family, d))
    missing, unexpected = hf.load_state_dict(convert(sd, 2), strict=False)
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


# ----------------------------------------------------------------------------------------------
# diffusers DiT
# ----------------------------------------------------------------------------------------------

def _diffusers_dit(share: bool = True, seed: int = 0, channels: int = 4):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    net = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=channels, out_channels=2 * channels,
                                num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if share:  # as the converted released weights: every block holds a copy of the shared embedders
            for block in net.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(net.transformer_blocks[0].norm1.emb.state_dict())
    return net.eval()


def test_diffusers_dit_equals_diffusers_forward(tmp_path):
    from train.models.loading import load

    net = _diffusers_dit()
    net.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "DiTPipeline"}')
    for path in (tmp_path / "pipe" / "transformer", tmp_path / "pipe"):
        model = load(path)
        assert model.flavour == "dit" and model.cfg.learn_sigma and model.cfg.depth == 2 and model.cfg.num_heads == 2
        assert model.cfg.timestep_freq_shift == 1 and model.cfg.mlp_norm_eps == 1e-5 and model.cfg.null_class
        assert model.source["format"] == "diffusers"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 17, 250, 500, 999])
    y = torch.tensor([0, 3, 9, 10, 5, 10])  # 10 = the null class
    with torch.no_grad():
        ref = net(x, timestep=t, class_labels=y).sample
        out = model(x, t, y)
    assert out.shape == ref.shape == (6, 8, 8, 8)
    scale = ref.abs().max()
    assert torch.allclose(out[:, :4], ref[:, :4], atol=1e-5 * scale, rtol=1e-5)  # eps
    assert torch.allclose(out[:, 4:], ref[:, 4:], atol=1e-5 * scale, rtol=1e-5)  # learned sigma
    # without the recorded conventions it would not match (the switches are needed)
    model.t_embedder.freq_shift = 0
    with torch.no_grad():
        assert not torch.allclose(model(x, t, y), ref, atol=1e-3 * scale)


def test_probes_run_on_a_diffusers_dit(tmp_path):
    from probe.extract import extract
    from train.models.loading import load

    _diffusers_dit(channels=3).save_pretrained(tmp_path / "dit")  # pixels through the identity codec
    model = load(tmp_path / "dit")
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feats = extract(model, images, ts=(0.25, 0.75), batch_size=2, progress=False, store=tmp_path / "store")
    assert feats.values.shape == (3, 2, 4, 32) and torch.isfinite(feats.values).all()
    assert feats.provenance["flavour"] == "dit" and feats.provenance["checkpoint"] == str((tmp_path / "dit").resolve())
    again = extract(model, images, ts=(0.25, 0.75), batch_size=4, progress=False, store=tmp_path / "store")  # from the store
    assert torch.equal(again.values, feats.values)


def test_diffusers_dit_with_per_block_embedders_is_refused(tmp_path):
    from train.models.loading import load

    _diffusers_dit(share=False).save_pretrained(tmp_path / "dit")
    with pytest.raises(UserError, match="block 1's .* differs from block 0's.*shares one") as err:
        load(tmp_path / "dit")
    assert "\n" not in str(err.value)


def test_diffusers_folder_of_another_model_is_one_line(tmp_path):
    from train.models.loading import load

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(UserError, match="AutoencoderKL model, not a DiT") as err:
        load(tmp_path / "vae")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------
# Encoder variants: MoCo v3's block names, DINOv3, SAM2
# ----------------------------------------------------------------------------------------------

def test_mocov3_norm13_fc13_norm14_fc14_names(tmp_path, monkeypatch):
    """Some MoCo v3 ViT checkpoints name blocks.13.norm1 / mlp.fc1 'norm13' / 'fc13' and blocks.14.norm2 /
    mlp.fc2 'norm14' / 'fc14'; they load onto timm's names."""
    import timm

    spec = replace(ENCODERS["mocov3-vit-l"], resolution=32, timm_kwargs=(("embed_dim", 32), ("depth", 15), ("num_heads", 2)))
    monkeypatch.setitem(ENCODERS, "mocov3-vit-l", spec)
    torch.manual_seed(0)
    vit = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, img_size=32, **dict(spec.timm_kwargs))
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    bug = {"blocks.13.norm1.": "blocks.13.norm13.", "blocks.13.mlp.fc1.": "blocks.13.mlp.fc13.",
           "blocks.14.norm2.": "blocks.14.norm14.", "blocks.14.mlp.fc2.": "blocks.14.mlp.fc14."}
    state = {}
    for k, v in vit.state_dict().items():
        for good, bad in bug.items():
            k = k.replace(good, bad)
        state[f"module.base_encoder.{k}"] = v
    assert "module.base_encoder.blocks.13.norm13.weight" in state and "module.base_encoder.blocks.14.mlp.fc14.bias" in state
    state["module.base_encoder.head.0.weight"] = torch.zeros(8, 32)
    torch.save({"state_dict": state}, tmp_path / "vit-l-300ep.pth.tar")
    enc = load_encoder("mocov3-vit-l", weights=tmp_path / "vit-l-300ep.pth.tar")
    assert torch.equal(enc.model.blocks[13].norm1.weight, vit.blocks[13].norm1.weight)
    assert torch.equal(enc.model.blocks[14].mlp.fc2.bias, vit.blocks[14].mlp.fc2.bias)
    with torch.no_grad():
        expected = vit.forward_features(enc.preprocess(_images()))[:, 1:]
    assert torch.allclose(enc(_images()), expected, atol=1e-5)


def test_dinov3_by_name_random_init_and_timm_file(tmp_path, monkeypatch):
    """DINOv3: final-norm patch tokens without the class and 4 register tokens (timm Eva with RoPE)."""
    spec = replace(ENCODERS["dinov3-vit-s"], resolution=48, timm_kwargs=TINY)
    monkeypatch.setitem(ENCODERS, "dinov3-vit-s", spec)
    enc = load_encoder("dinov3-vit-s", random_init=True)
    assert enc.model.num_prefix_tokens == 5 and enc.provenance["target"] == "norm"
    feats = enc.model.forward_features(enc.preprocess(_images()))
    tokens = enc(_images())
    assert tokens.shape == (2, 9, 32) and torch.allclose(tokens, feats[:, 5:], atol=1e-6)
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, tmp_path / "d3.safetensors")
    assert torch.allclose(load_encoder("dinov3-vit-s", weights=tmp_path / "d3.safetensors")(_images()), tokens, atol=1e-6)


def test_sam2_by_name_is_the_last_hiera_stage(monkeypatch):
    """SAM2's image-encoder trunk: the last stage (stride 32) flattened, 16 x 16 tokens at 512 px."""
    spec = ENCODERS["sam2-hiera-t"]
    assert (spec.resolution, spec.grid, spec.target) == (512, 16, "features")
    tiny = (("embed_dim", 8), ("num_heads", 1), ("stages", (1, 1, 2, 1)), ("global_att_blocks", (3,)))
    monkeypatch.setitem(ENCODERS, "sam2-hiera-t", replace(spec, resolution=128, timm_kwargs=tiny))
    enc = load_encoder("sam2-hiera-t", random_init=True)
    assert enc.grid == 4 and enc.dim == 64
    tokens = enc(_images(2))
    fmap = enc.model.forward_features(enc.preprocess(_images(2)))  # (2, 4, 4, 64), no final norm
    assert fmap.shape == (2, 4, 4, 64) and torch.allclose(tokens, fmap.reshape(2, 16, 64), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The FID Inception equals pytorch-fid's InceptionV3
# ----------------------------------------------------------------------------------------------

def test_fid_inception_equals_pytorch_fid(monkeypatch, tmp_path):
    """Same (random) weights in both: pool3 features agree, so FID numbers agree with pytorch-fid's."""
    pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
    from train.evaluation import evaluate as ev

    torch.manual_seed(0)
    net = ev.fid_inception()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn_like(p) * (0.05 if p.ndim > 1 else 0.1) + (1.0 if name.endswith("bn.weight") else 0.0))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(1 + 0.1 * torch.rand_like(b))
    state = net.state_dict()
    torch.save(state, tmp_path / ev.INCEPTION_FILE)
    # pytorch-fid builds its own FID blocks and would download the weights: hand it ours instead
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    theirs = pytorch_fid_inception.InceptionV3([pytorch_fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ours = ev.load_feature_net("inception", tmp_path / ev.INCEPTION_FILE)
    images = _images(2, size=64)
    with torch.no_grad():
        ref = theirs(images.float() / 255.0)[0].flatten(1)  # pool3 (2, 2048)
    got = ours(images)["features"]
    assert got.shape == ref.shape == (2, 2048) and ref.std() > 1e-3
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (got - ref).abs().max()
