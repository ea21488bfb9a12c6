"""Model family, loader, interpolants, losses and samplers: shapes, counts, identities, closed forms."""

import argparse
import math
from pathlib import Path

import pytest
import torch

from train.objectives import interpolants as itp
from train.run.config import MODEL_NAMES, ModelConfig, published_config
from train.errors import UserError
from train.objectives.losses import denoising_loss, nt_xent_loss, projection_loss
from train.models.loading import DiffusionTransformer, ModelOutput, build, load, num_params, predict
from train.evaluation.sampling import sample

FIX = torch.load(Path(__file__).parent / "fixtures" / "core_reference.pt", weights_only=True)

# notes section 3: published parameter counts
PUBLISHED = [
    ("SiT-S/2", "sit", (), 32_963_360), ("SiT-B/2", "sit", (), 130_512_416),
    ("SiT-L/2", "sit", (), 458_102_816), ("SiT-XL/2", "sit", (), 675_129_632),
    ("DiT-S/2", "dit", (), 32_963_360), ("DiT-XL/2", "dit", (), 675_129_632),
    ("SiT-XL/2", "repa", (), 675_111_184), ("SiT-XL/2", "repa", (768,), 683_242_512),
    ("SiT-B/2", "repa", (), 130_500_112), ("SiT-B/2", "repa", (768,), 130_500_112 + 7_344_896),
]


def meta_model(name, flavour, z_dims=(), **kw):
    with torch.device("meta"):
        return DiffusionTransformer(published_config(name, flavour, z_dims=z_dims, **kw))


@pytest.mark.parametrize("name,flavour,z_dims,count", PUBLISHED)
def test_published_parameter_counts(name, flavour, z_dims, count):
    assert num_params(meta_model(name, flavour, z_dims)) == count


@pytest.mark.parametrize("key", list(FIX["layouts"]))
def test_published_layouts_full_size(key):
    """Every key and shape of the published full-size models (built by their own code)."""
    name, _, flavour = key.partition("|")
    z = {"SiT-XL/2|repa": (768,), "SiT-L/2|repa": (768, 1024), "SiT-B/2|repa": (768,)}.get(key, ())
    ours = {k: list(v.shape) for k, v in meta_model(name, flavour or "dit", z).state_dict().items()}
    assert ours == FIX["layouts"][key]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_preset_shapes(name):
    """Every registry entry: output shape, hidden-state shapes (meta device for the big ones)."""
    small = "-T/" in name or "-S/" in name
    device = "cpu" if small else "meta"
    with torch.device(device):
        m = build(name, input_size=32, z_dims=(64,), projector_dim=128)
        x, t, y = torch.zeros(2, 4, 32, 32), torch.rand(2), torch.tensor([0, 1000])
    p = m.cfg.patch_size
    res = m(x, t, y, return_hidden=[0, 1, m.cfg.depth])
    assert res.out.shape == (2, 4, 32, 32)
    for layer in (0, 1, m.cfg.depth):
        assert res.hidden[layer].shape == (2, (32 // p) ** 2, m.cfg.hidden_size)
    assert res.zs[0].shape == (2, (32 // p) ** 2, 64)


def test_legacy_returns_and_head_free_hidden():
    torch.manual_seed(0)
    cfg = dict(input_size=8, depth=3, hidden_size=32, num_heads=2, num_classes=5)
    repa = build("SiT-S/2", z_dims=(8,), projector_dim=16, encoder_depth=2, **cfg).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 5])
    out, zs = repa(x, t, y)
    assert out.shape == (2, 4, 8, 8) and zs[0].shape == (2, 16, 8)
    full = repa(x, t, y, return_hidden=[1, 2])
    part = repa(x, t, y, return_hidden=[1, 2], head=False, project=False)
    assert part.out is None and part.zs == []
    torch.testing.assert_close(part.hidden[2], full.hidden[2])
    sit = build("SiT-S/2", flavour="sit", learn_sigma=True, **cfg).eval()
    assert sit(x, t, y).shape == (2, 4, 8, 8)
    dit = build("DiT-S/2", flavour="dit", learn_sigma=True, **cfg).eval()
    assert dit(x, torch.tensor([3, 999]), y).shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match="return_hidden"):
        repa(x, t, y, return_hidden=[4])


def _reference_forward(m: DiffusionTransformer, x, t, y):
    """An independent re-derivation of the DiT forward pass from the paper's equations."""
    cfg, p = m.cfg, m.cfg.patch_size
    n, c, hgt, wid = x.shape
    g = hgt // p
    patches = x.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * p * p)
    h = patches @ m.x_embedder.proj.weight.reshape(cfg.hidden_size, -1).T + m.x_embedder.proj.bias + m.pos_embed
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    temb = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1)
    lin = lambda layer, v: v @ layer.weight.T + layer.bias  # noqa: E731
    cond = lin(m.t_embedder.mlp[2], torch.nn.functional.silu(lin(m.t_embedder.mlp[0], temb))) + m.y_embedder.embedding_table.weight[y]
    ln = lambda v: (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-6)  # noqa: E731
    gelu = lambda v: 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))  # noqa: E731
    hd = cfg.hidden_size // cfg.num_heads
    for blk in m.blocks:
        mods = lin(blk.adaLN_modulation[1], torch.nn.functional.silu(cond)).split(cfg.hidden_size, dim=1)
        a = ln(h) * (1 + mods[1][:, None]) + mods[0][:, None]
        q, k, v = lin(blk.attn.qkv, a).split(cfg.hidden_size, dim=-1)
        heads = lambda z: z.reshape(n, -1, cfg.num_heads, hd).transpose(1, 2)  # noqa: E731
        att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(hd), -1) @ heads(v)
        h = h + mods[2][:, None] * lin(blk.attn.proj, att.transpose(1, 2).reshape(n, -1, cfg.hidden_size))
        a = ln(h) * (1 + mods[4][:, None]) + mods[3][:, None]
        h = h + mods[5][:, None] * lin(blk.mlp.fc2, gelu(lin(blk.mlp.fc1, a)))
    shift, scale = lin(m.final_layer.adaLN_modulation[1], torch.nn.functional.silu(cond)).chunk(2, 1)
    o = lin(m.final_layer.linear, ln(h) * (1 + scale[:, None]) + shift[:, None])
    co = cfg.out_channels
    return o.reshape(n, g, g, p, p, co).permute(0, 5, 1, 3, 2, 4).reshape(n, co, hgt, wid)


@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
def test_forward_equals_independent_derivation(attn_impl):
    torch.manual_seed(0)
    m = build("SiT-S/4", input_size=16, depth=2, hidden_size=48, num_heads=3, num_classes=7, learn_sigma=True, flavour="sit", attn_impl=attn_impl).eval()
    with torch.no_grad():
        for prm in m.parameters():
            if prm is not m.pos_embed:
                prm.normal_(0, 0.2)
        x, t, y = torch.randn(3, 4, 16, 16), torch.rand(3), torch.tensor([0, 3, 7])
        torch.testing.assert_close(m(x, t, y, return_hidden=()).out, _reference_forward(m, x, t, y), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ loader

def _tiny_sd(flavour="repa", **kw):
    torch.manual_seed(0)
    base = dict(input_size=8, num_classes=10, depth=2)
    base.update(kw)
    return DiffusionTransformer(published_config("SiT-S/2" if flavour != "dit" else "DiT-S/2", flavour, **base)).state_dict()


def test_load_training_checkpoints_with_namespace_args(tmp_path):
    sd = _tiny_sd("repa", z_dims=(768,))
    other = {k: v + 1 for k, v in sd.items()}
    args = argparse.Namespace(model="SiT-S/2", encoder_depth=1, num_classes=10)
    torch.save({"model": other, "ema": sd, "opt": {}, "args": args, "steps": 1234}, tmp_path / "0001234.pt")
    m = load(tmp_path / "0001234.pt")
    assert m.cfg.encoder_depth == 1 and m.source["weights"] == "ema" and m.source["step"] == 1234
    assert torch.equal(m.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    m2 = load(tmp_path / "0001234.pt", weights="model")
    assert torch.equal(m2.state_dict()["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])
    assert not m.training and m.flavour == "repa" and m.cfg.z_dims == (768,)


def test_load_dit_vs_sit_needs_a_hint(tmp_path):
    sd = _tiny_sd("sit", learn_sigma=True)
    torch.save(sd, tmp_path / "weights.pt")
    with pytest.raises(UserError, match="flavour='dit' or flavour='sit'"):
        load(tmp_path / "weights.pt")
    assert load(tmp_path / "weights.pt", flavour="sit").flavour == "sit"
    torch.save(sd, tmp_path / "DiT-S-2-64x64.pt")
    assert load(tmp_path / "DiT-S-2-64x64.pt").flavour == "dit"
    torch.save({"model": sd, "ema": sd, "opt": {}, "args": argparse.Namespace(model="SiT-S/2")}, tmp_path / "ckpt.pt")
    assert load(tmp_path / "ckpt.pt").flavour == "sit"


def test_load_errors_are_one_line(tmp_path):
    sd = _tiny_sd("repa")
    torch.save(sd, tmp_path / "ok.pt")
    cases = {
        "missing": (tmp_path / "nope.pt", {}, "does not exist"),
        "wrong size": (tmp_path / "ok.pt", {"name": "SiT-XL/2"}, "holds SiT-S/2 weights"),
        "wrong patch": (tmp_path / "ok.pt", {"name": "SiT-S/4"}, "name='SiT-S/4'"),
    }
    raw = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (tmp_path / "trunc.pt", {}, "truncated")
    torch.save({"optimizer": {"lr": 1}}, tmp_path / "opt.pt")
    cases["not a model"] = (tmp_path / "opt.pt", {}, "pos_embed")
    torch.save({"model": sd, "args": Path("x")}, tmp_path / "evil.pt")
    cases["non-data pickle"] = (tmp_path / "evil.pt", {}, "plain data")
    for what, (path, kw, msg) in cases.items():
        with pytest.raises(UserError, match=msg) as e:
            load(path, **kw)
        assert "\n" not in str(e.value), what


# ------------------------------------------------------------------ interpolants & losses

@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_interpolant_derivatives_match_finite_differences(path):
    p = itp.get_path(path)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    for f, df in ((p.alpha, p.d_alpha), (p.sigma, p.d_sigma)):
        torch.testing.assert_close(df(t), (f(t + h) - f(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    x, eps = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    fd = (itp.interpolate(x, eps, t + h, p) - itp.interpolate(x, eps, t - h, p)) / (2 * h)
    torch.testing.assert_close(itp.velocity_target(x, eps, t, p), fd, rtol=1e-6, atol=1e-7)


def test_score_from_velocity_matches_gaussian_score():
    """For x ~ N(0, s^2 I), x_t ~ N(0, (alpha^2 s^2 + sigma^2) I), whose score is known."""
    s2 = 0.3
    for path in ("linear", "cosine"):
        p = itp.get_path(path)
        t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
        a, sg, da, ds = p.coefficients(t[:, None])
        var = a**2 * s2 + sg**2
        x_t = torch.randn(3, 4, dtype=torch.float64)
        # exact velocity E[alpha' x + sigma' eps | x_t]
        v = (da * a * s2 + ds * sg) / var * x_t
        torch.testing.assert_close(itp.score_from_velocity(v, x_t, t, p), -x_t / var)


def test_time_conventions():
    t = torch.tensor([0.0, 0.25, 0.5, 0.75])
    assert torch.equal(itp.to_sit_time(t), 1 - t)
    step, scale = itp.to_ddpm(t)
    assert step[0] == 0 and (step[1:] > step[:-1]).all()
    # the matched step's noise level is within one step of t's
    back = itp.ddpm_time(step)
    assert (back - t.double()).abs().max() < 0.01
    torch.testing.assert_close(scale, 1 / torch.sqrt((1 - t.double()) ** 2 + t.double() ** 2))


def test_lognormal_time_is_logit_normal():
    g = torch.Generator().manual_seed(0)
    t = itp.sample_time(200_000, "lognormal", generator=g)
    z = torch.log(t / (1 - t))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


def test_vectorised_losses_equal_naive_loops():
    torch.manual_seed(0)
    zp = [torch.randn(4, 9, 16), torch.randn(4, 9, 8)]
    zt = [torch.randn(4, 9, 16), torch.randn(4, 9, 8)]
    naive = 0.0
    for p, q in zip(zp, zt):
        for i in range(4):
            for j in range(9):
                naive += -torch.dot(p[i, j], q[i, j]) / (p[i, j].norm() * q[i, j].norm())
    naive /= 2 * 4 * 9
    torch.testing.assert_close(projection_loss(zp, zt), naive)
    x, eps, v = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    t = torch.rand(4)
    per = torch.stack([((v[i] - (eps[i] - x[i])) ** 2).mean() for i in range(4)])
    torch.testing.assert_close(denoising_loss(v, x, eps, t), per)
    # NT-Xent: a position-wise batch InfoNCE; perfect aligned predictions give a low loss
    aligned = nt_xent_loss([q * 5 for q in zt], zt, temperature=0.05)
    assert aligned < nt_xent_loss(zp, zt, temperature=0.05)
    loop = 0.0
    for p, q in zip(zp, zt):
        for j in range(9):
            logits = torch.nn.functional.normalize(p[:, j], dim=-1) @ torch.nn.functional.normalize(q[:, j], dim=-1).T / 0.1
            loop += torch.nn.functional.cross_entropy(logits, torch.arange(4))
    torch.testing.assert_close(nt_xent_loss(zp, zt, 0.1), loop / 18)


def test_projection_loss_fp32_under_autocast():
    zp = [torch.randn(2, 4, 8, dtype=torch.bfloat16) * 1e3]
    zt = [torch.randn(2, 4, 8, dtype=torch.bfloat16)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = projection_loss(zp, zt)
    assert out.dtype == torch.float32 and torch.isfinite(out)


# ------------------------------------------------------------------ samplers

class GaussianFlow(torch.nn.Module):
    """The exact REPA-time velocity of data x ~ N(mu, Sigma) (2-D, shaped (N, 2, 1, 1)).

    ``v(x_t, t) = E[eps - x | x_t] = (t I - (1 - t) Sigma) S^-1 (x_t - (1 - t) mu) - mu`` with
    ``S = (1 - t)^2 Sigma + t^2 I``.  Duck-types a repa-flavour model for the samplers.
    """

    flavour, num_classes = "repa", 3

    def __init__(self, mu, sigma, record=None):
        super().__init__()
        self.cfg = ModelConfig(name="SiT-T/2", in_channels=2, num_classes=3)
        self.mu, self.sigma, self.record = mu, sigma, record
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, y, return_hidden=None, head=True, project=False):
        if self.record is not None:
            self.record.append((float(t[0]), x.shape[0]))
        ti = t[0].double()  # the samplers call with one time per batch
        eye = torch.eye(2, dtype=torch.float64)
        s = (1 - ti) ** 2 * self.sigma + ti**2 * eye
        a = (ti * eye - (1 - ti) * self.sigma) @ torch.linalg.inv(s)
        v = (x.reshape(x.shape[0], 2).double() - (1 - ti) * self.mu) @ a.T - self.mu
        return ModelOutput(v.reshape(x.shape).to(x.dtype))


@pytest.mark.parametrize("sampler,steps,tol", [("euler", 200, 0.04), ("heun", 40, 0.03), ("sde", 250, 0.06)])
def test_sampler_lands_on_gaussian_data(sampler, steps, tol):
    mu = torch.tensor([1.5, -0.5], dtype=torch.float64)
    sigma = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    model = GaussianFlow(mu, sigma)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 2, 1, 1, generator=g, dtype=torch.float64)
    x = sample(model, noise, torch.zeros(4000, dtype=torch.long), sampler, steps, generator=g).reshape(-1, 2)
    assert (x.mean(0) - mu).abs().max() < tol
    assert (torch.cov(x.T) - sigma).abs().max() < tol


def test_guidance_interval_respected():
    rec = []
    model = GaussianFlow(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), rec)
    sample(model, torch.randn(3, 2, 1, 1, dtype=torch.float64), torch.tensor([0, 1, 2]), "euler", 10,
           cfg_scale=2.0, guidance_interval=(0.3, 0.6))
    for t, n in rec:
        assert n == (6 if 0.3 <= t <= 0.6 else 3), (t, n)
    assert {n for _, n in rec} == {3, 6}


def test_sampling_reproducible_by_seed():
    model = GaussianFlow(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    noise = torch.randn(5, 2, 1, 1, dtype=torch.float64)
    a = sample(model, noise, torch.zeros(5, dtype=torch.long), "sde", 20, generator=torch.Generator().manual_seed(3))
    b = sample(model, noise, torch.zeros(5, dtype=torch.long), "sde", 20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_noise_level_api_same_network_across_flavours():
    """A SiT-flavour copy of a REPA model, rewired to read SiT time, agrees through ``predict``.

    The sinusoidal embedding of ``1 - s`` is a fixed linear map R of the embedding of ``s``
    (per frequency f: cos f(1-s) = cos f cos fs + sin f sin fs, sin f(1-s) = sin f cos fs - cos f sin fs),
    so a SiT model with first time-MLP weight ``W R`` and negated output layer computes, at SiT time
    1 - t, exactly the REPA model at REPA time t with the velocity sign of SiT's clock.
    """
    torch.manual_seed(0)
    kw = dict(input_size=8, depth=2, hidden_size=32, num_heads=2, num_classes=5)
    repa = build("SiT-S/2", flavour="repa", **kw).eval()
    with torch.no_grad():
        for prm in repa.parameters():
            if prm is not repa.pos_embed:
                prm.normal_(0, 0.2)
    half = 128
    f = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    rot = torch.zeros(256, 256, dtype=torch.float64)
    idx = torch.arange(half)
    rot[idx, idx], rot[idx, idx + half] = torch.cos(f), torch.sin(f)
    rot[idx + half, idx], rot[idx + half, idx + half] = torch.sin(f), -torch.cos(f)
    sd = {k: v.clone() for k, v in repa.state_dict().items()}
    sd["t_embedder.mlp.0.weight"] = (sd["t_embedder.mlp.0.weight"].double() @ rot).float()
    sd["final_layer.linear.weight"] *= -1
    sd["final_layer.linear.bias"] *= -1
    sit = build("SiT-S/2", flavour="sit", **kw).eval()
    sit.load_state_dict(sd)
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for t in (0.0, 0.25, 0.5):
        tt = torch.full((3,), t)
        x_t = itp.interpolate(x0, eps, tt)
        with torch.no_grad():
            a = predict(repa, x_t, tt, return_hidden=[0, 1, 2])
            b = predict(sit, x_t, tt, return_hidden=[0, 1, 2])
        for layer in (0, 1, 2):
            torch.testing.assert_close(a.hidden[layer], b.hidden[layer], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.out, b.out, rtol=1e-4, atol=1e-4)
