"""The text-to-image MMDiT (train.models.mmdit) against REPA's official T2I code.

``fixtures/mmdit_reference.pt`` holds outputs of the official ``models/mmdit.py``, ``loss.py`` and
``samplers_t2i.py`` on small random models (fixtures/README.md); the weights are redrawn here by the
generator's recipe and checked against its checksums, saved as official training checkpoints
(``{model, ema, opt, args, steps}``) and loaded through ``train.models.loading.load``.
"""

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from train.objectives import interpolants as itp
from train.run.config import ModelConfig
from train.errors import UserError
from train.objectives.losses import denoising_loss, projection_loss
from train.models.mmdit import MMDiT
from train.models.loading import build_model, load, predict, sincos_2d
from train.evaluation.sampling import sample

FIX = torch.load(Path(__file__).parent / "fixtures" / "mmdit_reference.pt", weights_only=True)
N, L, CTX = 2, 5, 768


def _checksum(t):
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def _inputs():  # the generator's inputs(), same draws
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, 32, 32, generator=g)
    context = torch.randn(N, L, CTX, generator=g)
    null = torch.randn(L, CTX, generator=g)
    target = torch.randn(N, 256, 16, generator=g)
    return x, torch.tensor([0.3, 0.85]), context, null, target


X, T, CONTEXT, NULL, TARGET = _inputs()


def _random_state(layout, seed):  # the generator's random_state()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(layout):
        shape = tuple(layout[name])
        if name == "pos_embed":
            continue
        w = torch.randn(shape, generator=g)
        out[name] = w * (0.2 if len(shape) == 1 else int(np.prod(shape[1:])) ** -0.5)
    return out


def official_checkpoint(tmp_path, key, null_in_file=False):
    """The fixture's random weights as an official train_t2i.py checkpoint; returns its path."""
    entry = FIX["models"][key]
    seed = list(FIX["models"]).index(key)
    sd = _random_state(entry["layout"], seed)
    assert {k: _checksum(v) for k, v in sd.items()} == entry["checksums"]
    width, tokens = entry["layout"]["pos_embed"][-1], entry["layout"]["pos_embed"][1]
    sd["pos_embed"] = sincos_2d(width, int(tokens ** 0.5)).unsqueeze(0)
    assert _checksum(sd["pos_embed"]) == entry["pos_embed"]  # the official table, bit for bit
    args = argparse.Namespace(encoder_depth=entry["kwargs"]["encoder_depth"], enc_type="dinov2-vit-b", proj_coeff=0.5)
    path = tmp_path / f"{key}.pt"
    torch.save({"model": sd, "ema": sd, "opt": {}, "args": args, "steps": 100}, path)
    return path


def _load(tmp_path, key, **kw):
    extra = {"rmsnorm": True} if FIX["models"][key]["kwargs"].get("rmsnorm") else {}
    return load(official_checkpoint(tmp_path, key), null_context=NULL, **extra, **kw)


def test_inputs_are_the_generators():
    assert {k: _checksum(v) for k, v in zip(("x", "t", "context", "null", "target"), _inputs())} == FIX["inputs"]


@pytest.mark.parametrize("key", list(FIX["models"]))
def test_forward_equals_official(tmp_path, key):
    """Official checkpoints load strictly (every tensor, nothing left over) and give the official outputs."""
    model = _load(tmp_path, key)
    entry = FIX["models"][key]
    assert isinstance(model, MMDiT) and model.cfg.name == f"MMDiT-d{entry['kwargs']['depth']}/2"
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    sd = model.state_dict()
    assert set(sd) - {"null_context"} == set(entry["layout"]) and all(tuple(sd[k].shape) == s for k, s in entry["layout"].items())
    with torch.no_grad():
        out, zs = model(X, T, CONTEXT)
        res = model(X, T, CONTEXT, return_hidden=range(model.cfg.depth + 1), return_context=True)
    torch.testing.assert_close(out, entry["out"], rtol=1e-5, atol=1e-5)
    assert len(zs) == len(entry["zs0"])
    for a, b in zip(zs, entry["zs0"]):
        torch.testing.assert_close(a[:1], b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.out, out)
    if "hidden" in entry:  # every block's image tokens and the caption tokens of the blocks that keep them
        assert set(res.hidden) == {0, *entry["hidden"]} and set(res.context) == {0, *entry["context_hidden"]}
        for j, h in entry["hidden"].items():
            torch.testing.assert_close(res.hidden[j][:1], h, rtol=1e-5, atol=1e-5)
        for j, h in entry["context_hidden"].items():
            torch.testing.assert_close(res.context[j], h, rtol=1e-5, atol=1e-5)
        head_free = model(X, T, CONTEXT, return_hidden=[1], head=False, project=False)
        assert head_free.out is None and torch.equal(head_free.hidden[1], res.hidden[1])


def test_paper_model_layout():
    """MMDiT-d24/2 (REPA's MS-COCO model) has the official names, shapes and parameter count."""
    with torch.device("meta"):
        model = build_model(ModelConfig(name="MMDiT-d24/2", context_dim=768, context_len=77, z_dims=(768,), num_classes=0))
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items() if k != "null_context"} == FIX["full_layout"]
    assert sum(p.numel() for p in model.parameters()) == FIX["full_num_params"]
    assert model.cfg.encoder_depth == 8 and model.cfg.num_heads == 24 and model.cfg.hidden_size == 768


@pytest.mark.parametrize("weighting", ["uniform", "lognormal"])
def test_loss_equals_official(tmp_path, weighting):
    model = _load(tmp_path, "default")
    ref = FIX["models"]["default"]["loss"][weighting]
    torch.manual_seed(ref["seed"])  # the official loss's draws: time, then noise
    t = itp.sample_time(N, weighting, "linear")
    noise = torch.randn_like(X)
    with torch.no_grad():
        res = model(itp.interpolate(X, noise, t), t, CONTEXT, return_hidden=())
    torch.testing.assert_close(denoising_loss(res.out, X, noise, t), ref["denoise"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(projection_loss(res.zs, [TARGET]), ref["proj"].reshape(()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["euler", "heun", "euler_interval", "sde"])
def test_samplers_equal_official(tmp_path, case):
    """Euler / Heun ODE and Euler-Maruyama SDE with text guidance (scale 4, null = empty caption)."""
    model = _load(tmp_path, "default")
    refs = FIX["models"]["default"]["samplers"]
    gen = torch.Generator().manual_seed(refs["sde_seed"])
    out = sample(model, X, CONTEXT, sampler="euler" if case == "euler_interval" else case,
                 steps=3 if case == "sde" else 2, cfg_scale=4.0,
                 guidance_interval=(0.0, 0.7) if case == "euler_interval" else (0.0, 1.0), generator=gen)
    torch.testing.assert_close(out[:1], refs[case], rtol=1e-4, atol=1e-4)


def test_predict_null_context_and_drop_mask(tmp_path):
    """y=None feeds the null context; drop_mask swaps exactly the masked captions for it."""
    model = _load(tmp_path, "default")
    with torch.no_grad():
        a = predict(model, X, 0.5, return_hidden=[1])
        b = model(X, torch.full((N,), 0.5), NULL.expand(N, -1, -1), return_hidden=[1])
        c = model(X, torch.full((N,), 0.5), CONTEXT, return_hidden=[1], drop_mask=torch.tensor([True, False]))
        d = model(X, torch.full((N,), 0.5), CONTEXT, return_hidden=[1])
    torch.testing.assert_close(a.out, b.out)
    torch.testing.assert_close(c.out[0], b.out[0])
    torch.testing.assert_close(c.out[1], d.out[1])


def test_toolkit_checkpoint_round_trip(tmp_path):
    """A toolkit checkpoint keeps the null context and config; the official file without one refuses guidance."""
    model = _load(tmp_path, "rms_swiglu_registers")
    path = tmp_path / "own.pt"
    sd = model.state_dict()
    torch.save({"model_config": model.cfg.to_dict(), "model": sd, "ema": sd, "step": 3}, path)
    again = load(path)
    assert again.cfg == model.cfg and all(torch.equal(v, again.state_dict()[k]) for k, v in sd.items())
    bare = load(official_checkpoint(tmp_path, "default"))
    assert bare.null_context.shape == (0, CTX)
    with pytest.raises(UserError, match="empty_context.npy"):
        sample(bare, X, CONTEXT, steps=1, cfg_scale=2.0)
    np.save(tmp_path / "empty_context.npy", NULL.numpy())
    from_npy = load(official_checkpoint(tmp_path, "default"), null_context=tmp_path / "empty_context.npy")
    assert torch.equal(from_npy.null_context, NULL)
    with pytest.raises(UserError, match="not \\(tokens, width\\)"):
        load(official_checkpoint(tmp_path, "default"), null_context=torch.zeros(3))
    with pytest.raises(UserError, match="768-wide"):
        load(official_checkpoint(tmp_path, "default"), null_context=torch.zeros(5, 12))
