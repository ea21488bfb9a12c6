"""The objectives beyond REPA (train.objectives.terms): HASTE's attention distillation and stop, SRA's
self-alignment, the dispersive loss -- against hand computations, finite differences, and in tiny
real runs (CLI, exact resume, loading and sampling the checkpoints)."""

import json
import math
import os

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from train.run.cli import main_train
from train.run.config import override
from train.errors import UserError
from train.run.loop import train
from train.objectives.losses import attention_distillation_loss, dispersive_loss, sra_loss, sra_teacher_time
from train.models.loading import DiffusionTransformer, load
from train.objectives.terms import SelfAlignmentTerm, StepContext, build_terms

from test_train import kill_9_and_resume, micro, weights

SRA = ["sra_coeff=2.0", "model.sra_projector_dim=64", "proj_coeff=0", "model.z_dims=[]", "encoders=[]"]
HASTE = ["attn_coeff=0.5", "attn_model_layers=[1,2]", "attn_teacher_layers=[1,2]", 'model.name="SiT-T/2"',
         'encoders="builtin-ssl"']


def cfg_with(*sets, **kw):
    return override(micro(**kw), list(sets))


# ----------------------------------------------------------------------------------------------
# dispersive loss
# ----------------------------------------------------------------------------------------------

def naive_dispersive(z: torch.Tensor, tau: float) -> torch.Tensor:
    z = z.reshape(z.shape[0], -1)
    b, dim = z.shape
    total = 0.0
    for i in range(b):
        for j in range(b):
            total = total + torch.exp(-((z[i] - z[j]) ** 2).sum() / (dim * tau))
    return torch.log(total / b**2)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_dispersive_loss_is_the_formula_and_its_gradient_is_finite_differences(tau):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(dispersive_loss(z, tau).double(), naive_dispersive(z, tau), rtol=1e-6, atol=1e-6)
    # float64 end to end for the gradient check (the function computes in float32 by default)
    z64 = z.clone().requires_grad_(True)

    def f(v):
        v = v.reshape(v.shape[0], -1)
        d = F.pdist(v).pow(2) / v.shape[1]
        return torch.cat([-d / tau, -d / tau, v.new_zeros(v.shape[0])]).logsumexp(0) - 2 * math.log(v.shape[0])

    torch.testing.assert_close(f(z64), naive_dispersive(z, tau))  # the same expression as dispersive_loss
    assert torch.autograd.gradcheck(f, (z64,))
    # and dispersive_loss's own gradient agrees with the float64 one
    zf = z.float().requires_grad_(True)
    dispersive_loss(zf, tau).backward()
    (g64,) = torch.autograd.grad(f(z64), z64)
    torch.testing.assert_close(zf.grad.double(), g64, rtol=1e-4, atol=1e-6)
    assert dispersive_loss(torch.zeros(4, 6), tau).item() == 0.0  # all samples equal: log 1


# ----------------------------------------------------------------------------------------------
# HASTE: attention cross-entropy
# ----------------------------------------------------------------------------------------------

def test_attention_ce_against_a_hand_computation():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 4, 4, generator=g)  # model: 3 heads
    t = torch.randn(2, 2, 4, 4, generator=g)  # teacher: 2 heads
    # "first" (HASTE): model head h vs teacher head h, CE over keys, mean over batch, heads, rows
    hand = 0.0
    for b in range(2):
        for h in range(2):
            for q in range(4):
                p = torch.exp(t[b, h, q]) / torch.exp(t[b, h, q]).sum()
                m = torch.exp(a[b, h, q]) / torch.exp(a[b, h, q]).sum()
                hand += -(p * torch.log(m)).sum()
    hand /= 2 * 2 * 4
    torch.testing.assert_close(attention_distillation_loss([a], [t], "first"), hand)
    # two layer pairs average; "mean": head-averaged probability maps
    torch.testing.assert_close(attention_distillation_loss([a, a], [t, t]), hand)
    pm, pt = a.softmax(-1).mean(1), t.softmax(-1).mean(1)
    torch.testing.assert_close(attention_distillation_loss([a], [t], "mean"), -(pt * pm.log()).sum(-1).mean())
    with pytest.raises(ValueError, match="heads='mean'"):
        attention_distillation_loss([t], [a], "first")


def test_model_attention_logits_leave_outputs_unchanged():
    cfg = micro(**{"model": {**micro().model.to_dict(), "name": "SiT-T/2"}}).model
    torch.manual_seed(0)
    m = DiffusionTransformer(cfg).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 2])
    plain = m(x, t, y, return_hidden=[2])
    with_attn = m(x, t, y, return_hidden=[2], return_attn=[1, 2])
    assert plain.attn == {} and set(with_attn.attn) == {1, 2}
    assert with_attn.attn[1].shape == (2, 2, 64, 64)
    torch.testing.assert_close(with_attn.out, plain.out, rtol=1e-5, atol=1e-6)
    # the logits are the block's own: softmax(logits) @ v reproduces its attention output
    blk = m.blocks[0]
    h = m.x_embedder(x) + m.pos_embed
    c = m.t_embedder(t) + m.y_embedder(y)
    shift, scale = blk.adaLN_modulation(c).chunk(6, dim=-1)[:2]
    _, logits = blk.attn(blk.norm1(h) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1), return_logits=True)
    torch.testing.assert_close(logits, with_attn.attn[1])


def test_encoder_attention_drops_nothing_on_the_builtin_teacher_and_refuses_other_grids():
    from train.targets.encoders import load_encoder

    torch.manual_seed(0)
    enc = load_encoder("builtin-ssl", random_init=True)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    maps = enc.attention(images, (1, 2))
    assert [tuple(a.shape) for a in maps] == [(2, 2, 64, 64)] * 2
    # the first block's logits reproduce its MultiheadAttention weights
    x = enc.preprocess(images)
    tokens = enc.model.stem(x).flatten(2).transpose(1, 2) + enc.model.pos_embed
    blk = enc.model.blocks[0]
    h = blk.norm1(tokens)
    _, w = blk.self_attn(h, h, h, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(maps[0].softmax(-1), w, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="attn_teacher_layers"):
        enc.attention(images, (3,))
    with pytest.raises(UserError, match="one grid"):  # micro's SiT-T/4 has 4 x 4 tokens, the teacher 8 x 8
        build_terms(cfg_with(*HASTE[:3], 'encoders="builtin-ssl"'), [enc])


def test_haste_stop_zeroes_the_alignment_terms(tmp_path):
    cfg = cfg_with(*HASTE, "align_stop_step=2", "model.z_dims=[64]")
    train(cfg, tmp_path / "haste", progress=False)
    m = pd.read_json(tmp_path / "haste" / "metrics.jsonl", lines=True).set_index("step")
    # update s (0-based) is aligned while s < align_stop_step: logged steps 1, 2 aligned, 3, 4 not
    for name in ("proj_loss", "attn_loss"):
        assert (m.loc[[1, 2], f"{name}_weighted"] != 0).all(), name
        assert (m.loc[[3, 4], f"{name}_weighted"] == 0).all() and (m.loc[[3, 4], name] == 0).all(), name
    torch.testing.assert_close(torch.tensor(m.loc[[3, 4], "loss"].values), torch.tensor(m.loc[[3, 4], "denoise_loss"].values))
    assert (m["attn_loss"].loc[[1, 2]] > 0).all()
    # from the stop on, the alignment terms are not computed: the projector gets no gradient (AdamW
    # leaves it as it was) while the backbone keeps training on the denoising loss
    s2, s4 = (weights(tmp_path / "haste" / "checkpoints" / f"step_000000{s}.pt")["model"] for s in (2, 4))
    assert all(torch.equal(s2[k], s4[k]) for k in s2 if k.startswith("projectors."))
    assert not torch.equal(s2["blocks.0.attn.qkv.weight"], s4["blocks.0.attn.qkv.weight"])


# ----------------------------------------------------------------------------------------------
# SRA
# ----------------------------------------------------------------------------------------------

def test_sra_teacher_time_is_earlier_and_clamped():
    t, u = torch.tensor([0.05, 0.5, 1.0, 0.1]), torch.tensor([1.0, 0.5, 0.0, 0.25])
    torch.testing.assert_close(sra_teacher_time(t, u, 0.2), torch.tensor([0.0, 0.4, 1.0, 0.05]))
    assert (sra_teacher_time(torch.rand(100), torch.rand(100), 0.2) >= 0).all()


def sra_context(cfg, model, ema, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = cfg.batch_size
    x, noise = torch.randn(b, 3, 16, 16, generator=g).double(), torch.randn(b, 3, 16, 16, generator=g).double()
    t, labels, drop = torch.rand(b, generator=g).double(), torch.randint(0, 10, (b,), generator=g), torch.rand(b, generator=g) < 0.3
    term = build_terms(cfg)[0]
    assert isinstance(term, SelfAlignmentTerm)
    from train.objectives.interpolants import interpolate
    from train.run.loop import step_generator

    x_t = interpolate(x, noise, t)

    def ctx_for(m):
        res = m(x_t, t, labels, drop_mask=drop, return_hidden=(), sra_block=term.sra_block)
        return StepContext(0, x, x_t, t, noise, labels, drop, None, None, None, res, ema, lambda: [],
                           lambda s: step_generator(cfg.seed, 0, stream=s), slice(0, b), b)
    return term, ctx_for


def test_sra_target_carries_no_gradient_and_the_loss_matches_finite_differences():
    cfg = cfg_with(*SRA)
    torch.manual_seed(0)
    model = DiffusionTransformer(cfg.model).double()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    ema = DiffusionTransformer(cfg.model).double().eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.data.add_(0.01)
    ema.requires_grad_(True)  # would collect gradients if the target were not under no_grad
    term, ctx_for = sra_context(cfg, model, ema)
    ctx = ctx_for(model)
    target = term.target(ctx)
    assert not target.requires_grad and target.grad_fn is None
    term(ctx).backward()
    assert all(p.grad is None for p in ema.parameters())
    assert model.sra_projector[0].weight.grad is not None and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # finite differences w.r.t. a student parameter with the EMA target fixed (float64 loss)
    w = model.sra_projector[0].weight
    analytic = w.grad[0, 0].item()

    def loss_at(delta):
        with torch.no_grad():
            w[0, 0] += delta
            s = model(ctx.x_t, ctx.t, ctx.labels, drop_mask=ctx.drop, sra_block=term.sra_block, return_hidden=()).sra
            w[0, 0] -= delta
        return F.smooth_l1_loss(s, target, beta=0.05).item()

    eps = 1e-6
    assert analytic == pytest.approx((loss_at(eps) - loss_at(-eps)) / (2 * eps), rel=1e-4, abs=1e-9)
    torch.testing.assert_close(sra_loss(ctx.res.sra, target).double(), F.smooth_l1_loss(ctx.res.sra, target, beta=0.05),
                               rtol=1e-5, atol=1e-6)
    # the target is block b of the EMA model at t' from the step's stream 2, same noise, label and drop mask
    t2 = sra_teacher_time(ctx.t, ctx.uniform(2), cfg.sra_t_max)
    assert (t2 <= ctx.t).all()
    from train.objectives.interpolants import interpolate

    ref = ema(interpolate(ctx.x, ctx.noise, t2), t2, ctx.labels, return_hidden=[term.teacher_block], head=False,
              drop_mask=ctx.drop).hidden[term.teacher_block]
    torch.testing.assert_close(target, ref)


def test_sra_run_resumes_bitwise_and_its_checkpoint_loads_and_samples(tmp_path):
    from train.evaluation.sampling import sample

    cfg = cfg_with(*SRA, steps=4)
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "interrupted", progress=False, stop_after=3)  # stops after step 3 (last ckpt: 2)
    ck = tmp_path / "interrupted" / "checkpoints"
    (ck / "latest.pt").unlink()
    os.replace(ck / "step_0000002.pt", ck / "latest.pt")
    train(cfg, tmp_path / "interrupted", progress=False)
    a, b = weights(tmp_path / "straight" / "checkpoints" / "latest.pt"), weights(ck / "latest.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    m = pd.read_json(tmp_path / "straight" / "metrics.jsonl", lines=True)
    assert (m["sra_loss"] > 0).all() and (m["proj_loss"] == 0).all()
    model = load(tmp_path / "straight" / "checkpoints" / "latest.pt")
    assert model.cfg.sra_projector_dim == 64 and model.cfg.z_dims == ()
    x = sample(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), "euler", 2)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


# ----------------------------------------------------------------------------------------------
# every objective from the CLI; their checks
# ----------------------------------------------------------------------------------------------

TINY = ["--preset", "tiny-scenes", "--steps", "2", "--no-progress", "--threads", "1", "--set", "random_init_encoders=true",
        "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.encoder_depth=1", "model.projector_dim=64",
        "data.n_train=32", "batch_size=8", "log_every=1", "sample_every=0", "eval_every=0"]


@pytest.mark.parametrize("name,sets", [
    ("sra", ["sra_coeff=0.5", "model.sra_projector_dim=64", "sra_distance=\"cosine\"", "proj_coeff=0", "model.z_dims=[]", "encoders=[]"]),
    ("haste", ["attn_coeff=0.5", "attn_model_layers=[1]", "attn_teacher_layers=[2]", "align_stop_step=1"]),
    ("dispersive", ["dispersive_coeff=0.5", "dispersive_tau=0.5", "proj_coeff=0", "model.z_dims=[]", "encoders=[]"]),
])
def test_each_objective_runs_from_the_cli_and_its_checkpoint_samples(tmp_path, name, sets):
    from train.evaluation.sampling import sample

    assert main_train(TINY + sets + ["--out", str(tmp_path / name)]) == 0
    m = pd.read_json(tmp_path / name / "metrics.jsonl", lines=True)
    key = {"sra": "sra_loss", "haste": "attn_loss", "dispersive": "dispersive_loss"}[name]
    assert list(m["step"]) == [1, 2] and m[key].iloc[0] != 0
    model = load(tmp_path / name / "checkpoints" / "latest.pt")
    x = sample(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), "euler", 2)
    assert torch.isfinite(x).all()


def test_dry_run_lists_the_objectives(capsys):
    assert main_train(["--preset", "tiny", "--dry-run", "--set", "dispersive_coeff=0.5", "sra_coeff=2",
                       "model.sra_projector_dim=128"]) == 0
    out = capsys.readouterr()
    cfg = json.loads(out.out)
    assert cfg["dispersive_coeff"] == 0.5 and cfg["align_stop_step"] == 0
    names = [ln.split()[1] for ln in out.err.splitlines() if ln.startswith("objective")]
    assert names == ['name="denoise_loss"', 'name="proj_loss"', 'name="sra_loss"', 'name="dispersive_loss"']


@pytest.mark.parametrize("sets,msg", [
    (["model.sra_projector_dim=64"], "sra_coeff is 0"),
    (["attn_coeff=0.5", "attn_model_layers=[1]"], "equal-length"),
    (["attn_coeff=0.5", "attn_model_layers=[9]", "attn_teacher_layers=[1]"], "model blocks in 1..6"),
    (["sra_distance=\"l2\""], "sra_distance"),
    (["dispersive_tau=0"], "dispersive_tau"),
    (["sra_t_max=2"], "sra_t_max"),
    (["align_stop_step=-1"], "align_stop_step"),
    (["dispersive_block=7"], "dispersive_block"),
    (["attn_coeff=0.5", "attn_model_layers=[1]", "attn_teacher_layers=[1]", "proj_coeff=0", "model.z_dims=[]", "encoders=[]"], "attn_coeff > 0"),
])
def test_bad_objective_settings_are_one_line(tmp_path, capsys, sets, msg):
    code = main_train(["--preset", "tiny", "--steps", "1", "--no-progress", "--out", str(tmp_path / "x"), "--set", *sets])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and msg in err, err


def test_kill_9_an_sra_run_then_the_same_command_gives_identical_weights(tmp_path):
    """A real kill (SIGKILL mid-run) of a run with SRA (its own random stream and an EMA teacher), then
    the same command: bitwise the weights of an uninterrupted run."""
    args = ["--preset", "tiny", "--steps", "40", "--ckpt-every", "5", "--no-progress", "--threads", "1", "--set",
            "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.encoder_depth=1", "data.n_train=128",
            "batch_size=8", "log_every=1", "sample_every=0", "eval_every=0", 'ckpt_series="all"',
            "sra_coeff=2.0", "model.sra_projector_dim=64", "sra_student_block=1", "sra_teacher_block=2", "--vanilla"]
    ref, run = kill_9_and_resume(tmp_path, args)
    a, b = weights(ref / "checkpoints" / "latest.pt"), weights(run / "checkpoints" / "latest.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert pd.read_json(run / "metrics.jsonl", lines=True)["sra_loss"].ne(0).all()
