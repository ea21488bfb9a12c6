"""Samplers in REPA time (t = 1 noise -> t = 0 data) for any loaded model, any flavour.

* ODE: Euler or Heun on the uniform grid ``linspace(1, 0, steps + 1)``; Heun's last step is Euler
  (its corrector would evaluate the model at t = 0).
* SDE: Euler-Maruyama on ``linspace(1, 0.04, steps)`` followed by one deterministic mean step to
  t = 0, as REPA's code (``steps - 1`` stochastic steps).  Drift ``v - w(t)/2 * score`` with the score
  from the velocity (``train.objectives.interpolants.score_from_velocity``) and noise ``sqrt(w(t) |dt|) N(0, I)``.
  The diffusion coefficient ``w(t)`` defaults to REPA's code, ``w(t) = 2t``; the paper writes
  ``sigma_t`` instead (REPA-NOTES section 4 marks it unclear), available as ``diffusion="sigma"``.
* Classifier-free guidance lives in :func:`guided_velocity` alone: with scale > 1 and the current
  time inside the guidance interval ``[low, high]`` (REPA time, inclusive), the conditional and
  null-class velocities are computed in one batch and combined ``v_u + s (v_c - v_u)``.  The null
  class is the model's own (id ``num_classes``), not a hard-coded 1000.  Since the SDE drift is
  affine in v, guiding v equals REPA's guiding of the drift.  Heun's corrector reuses the guidance
  decision of the step's start time, as REPA's code does.

The state is carried in float64 and cast to the model's dtype per call, like the reference.  The
projectors never run while sampling.  The MLPs compute GELU(tanh) as ``x sigmoid(2z)``
(:func:`train.models.architecture.inference_gelu`): the same function, rounded differently; it saves
about a sixth of sampling's time on the CPU (``benchmarks/bench_sampling.py``).

REG models (``cfg.reg_dim > 0``, :mod:`train.objectives.reg`) generate their global token jointly: it starts
from N(0, I) at t = 1 (``cls_noise``, else drawn from ``generator`` or torch's global generator, as
the official ``generate.py``'s ``torch.randn(n, cls)``) and moves with the latents under the same
sampler, times and steps.  Both are carried as one flat state (N, C*H*W + reg_dim), so every
sampler and its SDE noise cover the token unchanged.  Guidance: the latents with ``cfg_scale``, the
token with ``cls_cfg_scale`` (default: ``cfg_scale``; 1 = the conditional velocity, which the
official sampler's ``cls_cfg_scale = 0`` means; its ``generate.py`` default is 1.5), in the same
interval.  Models without the token sample exactly as before (the state stays (N, C, H, W)).
"""

from __future__ import annotations

from typing import Callable

import torch

from train.objectives import interpolants as itp
from train.models.architecture import inference_gelu
from train.models.loading import DiffusionTransformer, null_labels, predict

Tensor = torch.Tensor
DIFFUSIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "2t": lambda t: 2 * t,
    "sigma": lambda t: t,  # sigma_t of the linear path
}


def in_interval(t: float, interval: tuple[float, float]) -> bool:
    return interval[0] <= t <= interval[1]


def guided_velocity(
    model: DiffusionTransformer, x: Tensor, t: float, y: Tensor, cfg_scale: float = 1.0,
    guide: bool = False, path: str = "linear", cls: Tensor | None = None, cls_cfg_scale: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """REPA-time velocity at (x, t); with ``guide`` and ``cfg_scale > 1``, classifier-free guided.

    With ``cls`` (a REG model's noisy global token (N, reg_dim)): ``(v, v_cls)``, the token's
    velocity guided with ``cls_cfg_scale`` (None: ``cfg_scale``) from the same two passes.
    """
    dtype = next(model.parameters()).dtype
    n = x.shape[0]
    cls_scale = cfg_scale if cls_cfg_scale is None else cls_cfg_scale
    if guide and (cfg_scale > 1.0 or (cls is not None and cls_scale != 1.0)):
        xx = torch.cat([x, x]).to(dtype)
        yy = torch.cat([y, null_labels(model, n, y.device)])
        tt = torch.full((2 * n,), float(t), dtype=dtype, device=x.device)
        res = predict(model, xx, tt, yy, path=path, cls_token=None if cls is None else torch.cat([cls, cls]).to(dtype))
        v_c, v_u = res.out.double().chunk(2)
        v = v_u + cfg_scale * (v_c - v_u)
        if cls is None:
            return v
        c_c, c_u = res.cls.double().chunk(2)
        return v, c_u + cls_scale * (c_c - c_u)
    tt = torch.full((n,), float(t), dtype=dtype, device=x.device)
    res = predict(model, x.to(dtype), tt, y, path=path, cls_token=None if cls is None else cls.to(dtype))
    return res.out.double() if cls is None else (res.out.double(), res.cls.double())


@torch.no_grad()
@inference_gelu()
def sample(
    model: DiffusionTransformer,
    noise: Tensor,
    y: Tensor,
    sampler: str = "euler",
    steps: int = 50,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    path: str = "linear",
    diffusion: str = "2t",
    cls_noise: Tensor | None = None,
    cls_cfg_scale: float | None = None,
    return_token: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Draw samples from ``noise`` (N, C, H, W) at t = 1; returns x at t = 0 in the noise's dtype.

    ``sampler`` is ``euler``, ``heun`` or ``sde`` (Euler-Maruyama; its noise comes from ``generator``).
    REG models also generate their global token from ``cls_noise`` (N, reg_dim) (see the module
    docstring); ``return_token=True`` returns ``(x, token)``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: use one of {sorted(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if cfg_scale > 1.0 and not model.cfg.null_class:
        raise ValueError(f"cfg_scale {cfg_scale} needs a null class, which {model.cfg.name} lacks: use cfg_scale 1")
    reg_dim = getattr(model.cfg, "reg_dim", 0)
    if not reg_dim:
        if cls_noise is not None or return_token:
            raise ValueError(f"{model.cfg.name} has no REG global token: drop cls_noise / return_token")
        vel = lambda x, t, guide: guided_velocity(model, x, t, y, cfg_scale, guide, path)  # noqa: E731
        x = SAMPLERS[sampler](vel, noise.double(), steps, guidance_interval, generator, path, diffusion)
        return x.to(noise.dtype)
    n, shape = noise.shape[0], noise.shape[1:]
    if cls_noise is None:
        cls_noise = torch.randn(n, reg_dim, generator=generator, dtype=noise.dtype,
                                device=generator.device if generator is not None else noise.device).to(noise.device)
    if tuple(cls_noise.shape) != (n, reg_dim):
        raise ValueError(f"cls_noise has shape {tuple(cls_noise.shape)}, the model's token needs ({n}, {reg_dim})")
    size = noise[0].numel()

    def vel(state: Tensor, t: float, guide: bool) -> Tensor:  # the flat joint state (N, C*H*W + reg_dim)
        v, v_cls = guided_velocity(model, state[:, :size].reshape(n, *shape), t, y, cfg_scale, guide, path,
                                   cls=state[:, size:], cls_cfg_scale=cls_cfg_scale)
        return torch.cat([v.reshape(n, size), v_cls], dim=1)

    state = torch.cat([noise.double().reshape(n, size), cls_noise.double()], dim=1)
    state = SAMPLERS[sampler](vel, state, steps, guidance_interval, generator, path, diffusion)
    x = state[:, :size].reshape(n, *shape).to(noise.dtype)
    return (x, state[:, size:].to(noise.dtype)) if return_token else x


def _ode(vel, x: Tensor, steps: int, interval, generator, path, diffusion, heun: bool = False) -> Tensor:
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
    for i, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        guide = in_interval(t_cur, interval)
        d_cur = vel(x, t_cur, guide)
        x_next = x + (t_next - t_cur) * d_cur
        if heun and i < steps - 1:
            d_prime = vel(x_next, t_next, guide)
            x_next = x + (t_next - t_cur) * 0.5 * (d_cur + d_prime)
        x = x_next
    return x


def _heun(vel, x, steps, interval, generator, path, diffusion) -> Tensor:
    return _ode(vel, x, steps, interval, generator, path, diffusion, heun=True)


def _euler_maruyama(vel, x: Tensor, steps: int, interval, generator, path, diffusion) -> Tensor:
    w = DIFFUSIONS[diffusion]
    ts = torch.cat([torch.linspace(1.0, 0.04, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    for i in range(steps):
        t_cur, t_next = ts[i], ts[i + 1]
        dt = t_next - t_cur
        v = vel(x, float(t_cur), in_interval(float(t_cur), interval))
        tt = torch.full((x.shape[0],), float(t_cur), dtype=x.dtype, device=x.device)
        drift = v - 0.5 * w(t_cur) * itp.score_from_velocity(v, x, tt, path)
        if i < steps - 1:
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + drift * dt + torch.sqrt(w(t_cur)) * eps * torch.sqrt(dt.abs())
        else:  # last step to t = 0: the mean, no noise
            x = x + drift * dt
    return x


SAMPLERS = {"euler": _ode, "heun": _heun, "sde": _euler_maruyama}
