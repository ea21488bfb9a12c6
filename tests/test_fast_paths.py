"""The CPU fast paths of sampling: GELU(tanh) as x sigmoid(2z) (train.models.architecture.inference_gelu)
and glibc's freed memory kept in the process (train.run.allocator).  Their speed is measured by
benchmarks/bench_sampling.py, not here; these tests pin what they compute and where they apply."""

import sys

import pytest
import torch
import torch.nn.functional as F

from train.evaluation.sampling import sample
from train.models import architecture
from train.models.architecture import Mlp, gelu_tanh_inference, inference_gelu
from train.models.loading import build_model
from train.run.allocator import keep_freed_memory
from train.run.config import preset


def test_inference_gelu_is_the_tanh_gelu():
    h = torch.cat([torch.linspace(-30, 30, 20001), torch.randn(100_000) * 3, torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    before = h.clone()
    fast, aten = gelu_tanh_inference(h), F.gelu(h, approximate="tanh")
    assert torch.equal(h, before)  # the input is left as it was
    # the same function, rounded differently: within a few float32 ulps of ATen's value
    assert ((fast - aten).abs() <= 1e-6 + 4 * torch.finfo(torch.float32).eps * aten.abs()).all()
    assert (fast - aten).abs().max() > 0  # and computed another way (else the benchmark measures nothing)
    # against float64's exact tanh form it is as close as ATen's own kernel
    exact = (0.5 * h.double() * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h.double() + 0.044715 * h.double() ** 3))))
    assert (fast.double() - exact).abs().max() <= 2 * (aten.double() - exact).abs().max() + 1e-7


def test_mlp_takes_the_fast_path_only_inside_inference_gelu_without_autograd():
    torch.manual_seed(0)
    mlp, x = Mlp(16, 64), torch.randn(4, 9, 16)
    aten = lambda: mlp.fc2(F.gelu(mlp.fc1(x), approximate="tanh"))  # noqa: E731
    fast = lambda: mlp.fc2(gelu_tanh_inference(mlp.fc1(x)))  # noqa: E731
    with torch.no_grad():
        ref_aten, ref_fast = aten(), fast()
        assert not torch.equal(ref_aten, ref_fast)
        assert torch.equal(mlp(x), ref_aten)  # outside the context: ATen's kernel
        with inference_gelu():
            assert torch.equal(mlp(x), ref_fast)
            with inference_gelu(False):
                assert torch.equal(mlp(x), ref_aten)
            assert torch.equal(mlp(x), ref_fast)  # restored on leaving the inner context
    with inference_gelu():  # autograd on (training, a target under grad): ATen's kernel, bit for bit
        assert torch.equal(mlp(x).detach(), ref_aten)
    with torch.no_grad():
        assert torch.equal(mlp(x), ref_aten)  # and off again after the context


def test_sampling_runs_the_inference_gelu_and_leaves_it_off(monkeypatch):
    torch.manual_seed(0)
    model = build_model(preset("tiny").model).eval()
    calls = []
    real = architecture.gelu_tanh_inference
    monkeypatch.setattr(architecture, "gelu_tanh_inference", lambda h: calls.append(h.shape) or real(h))
    noise = torch.randn(2, model.cfg.in_channels, model.cfg.input_size, model.cfg.input_size)
    sample(model, noise, torch.zeros(2, dtype=torch.long), steps=2)
    assert len(calls) == 2 * model.cfg.depth  # every block's MLP at each of the two Euler steps
    with torch.no_grad():
        model(noise, torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert len(calls) == 2 * model.cfg.depth  # a forward outside sampling: ATen's kernel


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_takes_effect_on_linux():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
    x = torch.randn(1024, 1024)
    assert torch.equal((x * 2) / 2, x)  # tensors still allocate and compute after the change
