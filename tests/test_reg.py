"""REG (arXiv 2507.01467, Martinser/REG): the jointly denoised global token -- its noising and loss
against the formulas, the model with the option off and on, a CLI run, its checkpoint, joint
sampling, exact resume, and checkpoints in the official layout."""

import argparse
import json

import pytest
import torch

from train.objectives import interpolants as itp
from train.objectives import reg
from train.run.cli import main_train
from train.run.config import DataConfig, ModelConfig, TrainConfig
from train.errors import UserError
from train.run.loop import step_generator, train
from train.models.loading import build, load, predict
from train.objectives.terms import RegTerm, StepContext, build_terms
from train.evaluation.sampling import sample

TINY = ["--preset", "tiny-scenes", "--ckpt-every", "2", "--no-progress", "--threads", "1",
        "--set", "random_init_encoders=true", "model.depth=2", "model.hidden_size=32", "model.num_heads=2",
        "model.encoder_depth=1", "model.projector_dim=64", "data.n_train=64", "batch_size=8", "log_every=1",
        "sample_every=0", "eval_every=0", "reg_coeff=0.03", "model.reg_dim=64"]
KW = dict(input_size=8, in_channels=3, num_classes=4, depth=2, hidden_size=32, num_heads=2, encoder_depth=1,
          z_dims=(16,), projector_dim=32)


def reg_model(seed=0, **kw):
    torch.manual_seed(seed)
    return build("SiT-T/2", **{**KW, "reg_dim": 16, **kw}).eval()


def randomise(m, seed=1):
    """N(0, 0.1) weights (the zero-initialised heads and gates would hide every path)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        if name != "pos_embed":
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


def test_noisy_token_uses_the_latents_interpolant_and_time():
    c, e, t = torch.randn(5, 7), torch.randn(5, 7), torch.rand(5)
    assert torch.allclose(reg.noisy_token(c, e, t, "linear"), (1 - t)[:, None] * c + t[:, None] * e)
    a, s = torch.cos(t * torch.pi / 2)[:, None], torch.sin(t * torch.pi / 2)[:, None]
    assert torch.allclose(reg.noisy_token(c, e, t, "cosine"), a * c + s * e, atol=1e-6)
    # the loss term feeds the token noised at ctx.t (the latents' t) with the step's REG stream
    cfg = TrainConfig(model=ModelConfig(name="SiT-T/2", **{**KW, "z_dims": (64,)}, reg_dim=64), reg_coeff=0.03,
                      encoders=("builtin-teacher",))
    term = [tm for tm in build_terms(cfg) if isinstance(tm, RegTerm)][0]
    tokens, t = torch.randn(4, 9, 64), torch.rand(4)
    enc = type("E", (), {"model": object(), "spec": type("S", (), {"target": "norm"})()})()  # no class token
    ctx = StepContext(3, None, None, t, None, None, None, torch.zeros(4, 3, 8, 8, dtype=torch.uint8), None, None,
                      None, None, None, lambda s: step_generator(0, 3, stream=s), slice(4, 8), 8,
                      raw_targets=lambda: [tokens], encoders=(enc,))
    fed = term.inputs(ctx)["cls_token"]
    noise = torch.randn(8, 64, generator=step_generator(0, 3, stream=2))[4:8]
    assert torch.equal(fed, (1 - t)[:, None] * tokens.mean(1) + t[:, None] * noise)


def test_reg_loss_against_a_hand_computation():
    v, c, e, t = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6), torch.tensor([0.1, 0.5, 0.9])
    want = ((v - (e - c)) ** 2).mean(dim=1)  # linear path: v* = d_alpha c + d_sigma e = -c + e
    assert torch.allclose(reg.reg_loss(v, c, e, t), want)
    assert reg.reg_loss(v, c, e, t).shape == (3,)


def test_off_keeps_the_model_and_on_shares_its_backbone():
    off, on = build("SiT-T/2", **KW).eval(), reg_model(0)
    for m in (off, on):  # as the loop: the seed, then the initialisation
        torch.manual_seed(0)
        m.initialize_weights()
    assert ModelConfig().reg_dim == 0 and not any("cls" in k or "wg_norm" in k for k in off.state_dict())
    extra = set(on.state_dict()) - set(off.state_dict())
    assert extra == {"cls_projectors2.weight", "cls_projectors2.bias", "wg_norm.weight", "wg_norm.bias",
                     "final_layer.linear_cls.weight", "final_layer.linear_cls.bias"}
    for k, v in off.state_dict().items():  # same seed: REG's layers are initialised after everything else
        assert torch.equal(v, on.state_dict()[k]), k
    assert on.pos_embed.shape == off.pos_embed.shape  # the (1, T, D) patch table; the token has no position
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 1])
    res = off(x, t, y, return_hidden=[1])
    assert res.cls is None and len(off(x, t, y)) == 2
    with pytest.raises(ValueError, match="cls_token"):
        on(x, t, y)


def test_forward_is_the_official_one_and_hidden_states_are_patches():
    m = randomise(reg_model())
    x, t, y, c = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 3]), torch.randn(2, 16)
    with torch.no_grad():
        res = m(x, t, y, return_hidden=[0, 1, 2], cls_token=c)
        out, zs, cls = m(x, t, y, cls_token=c)
        # Martinser/REG models/sit.py: cat((wg_norm(cls_projectors2(cls)), patches)) + pos (zero row first)
        pos = torch.cat([torch.zeros(1, 1, 32), m.pos_embed], dim=1)
        h = torch.cat([m.wg_norm(m.cls_projectors2(c)).unsqueeze(1), m.x_embedder(x)], dim=1) + pos
        cond = m.t_embedder(t) + m.y_embedder(y)
        h1 = m.blocks[0](h, cond)
        h2 = m.blocks[1](h1, cond)
        shift, scale = m.final_layer.adaLN_modulation(cond).chunk(2, dim=-1)
        f = m.final_layer.norm_final(h2) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    assert torch.allclose(cls, m.final_layer.linear_cls(f[:, 0]), atol=1e-6)
    assert torch.allclose(out, m.unpatchify(m.final_layer.linear(f[:, 1:])), atol=1e-6)
    assert torch.allclose(zs[0], m.projectors[0](h1[:, 1:]), atol=1e-6)  # REPA's projector: patches only
    assert all(v.shape == (2, 16, 32) for v in res.hidden.values())
    assert torch.allclose(res.hidden[2], h2[:, 1:], atol=1e-6) and torch.equal(res.cls, cls)


def test_joint_sampling_shapes_and_one_euler_step():
    m = randomise(reg_model())
    noise, y, c0 = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2]), torch.randn(3, 16)
    for sampler in ("euler", "heun", "sde"):
        x, tok = sample(m, noise, y, sampler, 3, cfg_scale=1.5, cls_noise=c0, return_token=True,
                        generator=torch.Generator().manual_seed(0))
        assert x.shape == noise.shape and tok.shape == (3, 16) and torch.isfinite(tok).all()
        assert sample(m, noise, y, sampler, 3, cfg_scale=1.5, cls_noise=c0, generator=torch.Generator().manual_seed(0)).shape == noise.shape
    x, tok = sample(m, noise, y, "euler", 1, cls_noise=c0, return_token=True)
    res = predict(m, noise, 1.0, y, cls_token=c0)
    assert torch.allclose(x, noise - res.out, atol=1e-5) and torch.allclose(tok, c0 - res.cls, atol=1e-5)
    # guidance: the token with cls_cfg_scale from the same two passes
    x, tok = sample(m, noise, y, "euler", 1, cfg_scale=3.0, cls_cfg_scale=2.0, cls_noise=c0, return_token=True)
    u = predict(m, noise, 1.0, None, cls_token=c0)
    assert torch.allclose(x, noise - (u.out + 3.0 * (res.out - u.out)), atol=1e-5)
    assert torch.allclose(tok, c0 - (u.cls + 2.0 * (res.cls - u.cls)), atol=1e-5)
    with pytest.raises(ValueError, match="REG"):
        sample(build("SiT-T/2", **KW).eval(), noise, y, "euler", 1, return_token=True)


def test_two_step_cli_run_its_checkpoint_loads_and_samples(tmp_path):
    out = tmp_path / "r"
    assert main_train([*TINY, "--steps", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["reg_loss"] > 0 and r["proj_loss"] != 0 for r in rows)
    assert all(abs(r["reg_loss_weighted"] - 0.03 * r["reg_loss"]) < 1e-6 for r in rows)
    m = load(out / "checkpoints" / "latest.pt")
    assert m.cfg.reg_dim == 64 and m.source["step"] == 2 and m.train_config["reg_coeff"] == 0.03
    noise, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    x, tok = sample(m, noise, y, "sde", 3, generator=torch.Generator().manual_seed(0), return_token=True)
    assert x.shape == noise.shape and tok.shape == (2, 64) and torch.isfinite(x).all()
    # without model_config (a flat state dict) infer_config recognises the extra-token weights
    torch.save(torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["ema"], tmp_path / "flat.pt")
    flat = load(tmp_path / "flat.pt", name="SiT-T/2", num_heads=2)
    assert flat.cfg.reg_dim == 64 and flat.cfg.z_dims == (64,)
    for k, v in m.state_dict().items():
        assert torch.equal(v, flat.state_dict()[k]), k


def test_resume_is_exact_with_reg(tmp_path):
    cfg = TrainConfig(
        model=ModelConfig(name="SiT-T/4", input_size=16, in_channels=3, num_classes=10, depth=2, hidden_size=32,
                          num_heads=2, encoder_depth=1, z_dims=(64,), projector_dim=64, reg_dim=64),
        data=DataConfig(dataset="shapes", image_size=16, n_train=64), encoders=("builtin-teacher",),
        random_init_encoders=True, proj_coeff=0.5, reg_coeff=0.03, lr=1e-3, batch_size=8, steps=3, ema_decay=0.9,
        log_every=1, ckpt_every=1, device="cpu", threads=1)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, stop_after=1)
    train(cfg, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def official_checkpoint(m, path, **changes):
    """``m``'s weights written as Martinser/REG's train.py saves them: {model, ema, opt, args, steps},
    its key names, and its (1, 1 + T, D) position table with a zero first row."""
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["pos_embed"] = torch.cat([torch.zeros(1, 1, sd["pos_embed"].shape[-1]), sd["pos_embed"]], dim=1)
    sd.update(changes)
    sd = {k: v for k, v in sd.items() if v is not None}
    args = argparse.Namespace(model="SiT-T/2", encoder_depth=1, num_classes=4, cls=0.03, proj_coeff=0.5)
    torch.save({"model": sd, "ema": sd, "opt": {},
                "args": args, "steps": 7}, path)


def test_official_layout_loads_and_gives_the_same_outputs(tmp_path):
    m = randomise(reg_model())
    official_checkpoint(m, tmp_path / "0000007.pt")
    got = load(tmp_path / "0000007.pt", name="SiT-T/2", num_heads=2)
    assert got.cfg.reg_dim == 16 and got.cfg.encoder_depth == 1 and got.source["step"] == 7
    assert got.pos_embed.shape == m.pos_embed.shape
    x, t, y, c = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 3]), torch.randn(2, 16)
    with torch.no_grad():
        for a, b in zip(m(x, t, y, cls_token=c), got(x, t, y, cls_token=c)):
            assert torch.equal(a[0] if isinstance(a, list) else a, b[0] if isinstance(b, list) else b)


@pytest.mark.parametrize("change, msg", [
    ({"final_layer.linear_cls.weight": None}, "lacks the tensor 'final_layer.linear_cls.weight'"),
    ({"pos_embed": torch.ones(1, 17, 32)}, "position row is not zero"),
    ({"final_layer.linear.weight": torch.zeros(12, 48), "final_layer.linear_cls.weight": torch.zeros(16, 48)},
     "decoder_hidden_size"),
])
def test_official_layout_that_cannot_load_is_one_line(tmp_path, change, msg):
    official_checkpoint(reg_model(), tmp_path / "c.pt", **change)
    with pytest.raises(UserError, match=msg) as e:
        load(tmp_path / "c.pt", name="SiT-T/2", num_heads=2)
    assert "\n" not in str(e.value)


def test_config_checks_name_the_fix():
    base = dict(model=ModelConfig(name="SiT-T/2", **{**KW, "z_dims": (64,)}), encoders=("builtin-teacher",))
    alone = TrainConfig(**base, reg_coeff=0.03)  # reg_coeff alone: the token takes the first encoder's width (issue 22)
    assert alone.model.reg_dim == 64 and not any("reg_dim" in e for e in alone.check()) and alone.chosen == ["model.reg_dim=64 (REG: the first encoder's width)"]
    m = ModelConfig(name="SiT-T/2", **{**KW, "z_dims": (64,)}, reg_dim=32)
    assert any("first encoder's width" in e for e in TrainConfig(model=m, encoders=("builtin-teacher",), reg_coeff=0.03).check())
    assert any("reg_coeff" in e for e in TrainConfig(**base, reg_coeff=-1.0).check())
    with pytest.raises(ValueError, match="flavour 'repa'"):
        ModelConfig(name="SiT-T/2", flavour="sit", reg_dim=8)
