"""Interpolants, time sampling and time conventions: the one definition used by losses and samplers.

REPA time (this toolkit's time everywhere): ``x_t = alpha_t * x + sigma_t * eps`` with t = 0 clean data
and t = 1 pure noise (REPA-NOTES section 2).

* linear: ``alpha = 1 - t``, ``sigma = t``; velocity target ``d_alpha x + d_sigma eps = eps - x``.
* cosine: ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``.

Other flavours' clocks (REPA-NOTES section 3), converted here and nowhere else:

* SiT (willisma) runs the same linear path backwards: ``t_sit = 1 - t`` and ``v_sit = -v``.
* DiT (facebookresearch) is a DDPM with 1000 linear betas in 1e-4..0.02 predicting eps from
  ``sqrt(abar_s) x + sqrt(1 - abar_s) eps``.  REPA-time ``t`` maps to the step ``s`` whose log-SNR
  ``log(abar_s / (1 - abar_s))`` is nearest to ``log(alpha_t^2 / sigma_t^2)``, and the input is
  rescaled by ``1 / sqrt(alpha_t^2 + sigma_t^2)`` so its signal and noise coefficients have unit
  norm like DDPM's.  The step is discrete, so the noise level the network is told differs from t by
  at most half a step's log-SNR gap (record the step with every result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Path:
    """An interpolant ``x_t = alpha(t) x + sigma(t) eps`` with its time derivatives."""

    name: str
    alpha: Callable[[Tensor], Tensor]
    sigma: Callable[[Tensor], Tensor]
    d_alpha: Callable[[Tensor], Tensor]
    d_sigma: Callable[[Tensor], Tensor]

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)


LINEAR = Path(
    "linear",
    alpha=lambda t: 1 - t,
    sigma=lambda t: t,
    d_alpha=lambda t: -torch.ones_like(t),
    d_sigma=lambda t: torch.ones_like(t),
)
COSINE = Path(
    "cosine",
    alpha=lambda t: torch.cos(t * math.pi / 2),
    sigma=lambda t: torch.sin(t * math.pi / 2),
    d_alpha=lambda t: -math.pi / 2 * torch.sin(t * math.pi / 2),
    d_sigma=lambda t: math.pi / 2 * torch.cos(t * math.pi / 2),
)
PATHS = {"linear": LINEAR, "cosine": COSINE}


def get_path(path: str | Path) -> Path:
    if isinstance(path, Path):
        return path
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: use one of {sorted(PATHS)}")
    return PATHS[path]


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """(N,) or scalar time -> broadcastable against x (N, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def interpolate(x: Tensor, noise: Tensor, t: Tensor, path: str | Path = "linear") -> Tensor:
    """``x_t = alpha_t x + sigma_t eps`` (REPA Eq. 1 / SiT's stochastic interpolant)."""
    p, tb = get_path(path), _bcast(t, x)
    return p.alpha(tb) * x + p.sigma(tb) * noise


def velocity_target(x: Tensor, noise: Tensor, t: Tensor, path: str | Path = "linear") -> Tensor:
    """``v_t = d_alpha_t x + d_sigma_t eps`` = d x_t / dt (REPA Eq. 2)."""
    p, tb = get_path(path), _bcast(t, x)
    return p.d_alpha(tb) * x + p.d_sigma(tb) * noise


def score_from_velocity(v: Tensor, x_t: Tensor, t: Tensor, path: str | Path = "linear") -> Tensor:
    """Score ``grad log p_t(x_t)`` from the velocity, for any path.

    With ``x_t = alpha x + sigma eps`` and ``v = alpha' x + sigma' eps``, eliminate x:
    ``eps = (alpha v - alpha' x_t) / (alpha sigma' - alpha' sigma)`` and ``score = -eps / sigma``, i.e.
    ``score = ((alpha / alpha') v - x_t) / (sigma^2 - (alpha / alpha') sigma' sigma)``.
    Linear path: ``score = -(x_t + (1 - t) v) / t`` (REPA-NOTES section 4).
    """
    p, tb = get_path(path), _bcast(t, x_t)
    a, s, da, ds = p.coefficients(tb)
    ratio = a / da
    return (ratio * v - x_t) / (s**2 - ratio * ds * s)


def sample_time(
    n: int,
    kind: str = "uniform",
    path: str | Path = "linear",
    generator: torch.Generator | None = None,
    p_mean: float = 0.0,
    p_std: float = 1.0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training times in REPA time: ``uniform`` on [0, 1), or ``lognormal``.

    lognormal (EDM-style): ``sigma = exp(p_mean + p_std * N(0, 1))``, then ``t = sigma / (1 + sigma)``
    for the linear path and ``t = 2 / pi * atan(sigma)`` for the cosine path (the noise-to-signal ratio
    of both equals sigma).  REPA-NOTES gives N(0, 1), the defaults here; REPA's code refers to EDM's
    P_mean/P_std without defining them.
    """
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if kind == "lognormal":
        sigma = (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()
        return sigma / (1 + sigma) if get_path(path).name == "linear" else 2 / math.pi * torch.atan(sigma)
    raise ValueError(f"unknown time sampling {kind!r}: use 'uniform' or 'lognormal'")


# --- time conventions of the published flavours -------------------------------------------------

DDPM_STEPS = 1000


def ddpm_alphas_cumprod(num_steps: int = DDPM_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DiT's schedule: linear betas (float64) and their cumulative product ``abar``."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def to_sit_time(t: Tensor) -> Tensor:
    """REPA time -> SiT time (t = 1 data there)."""
    return 1 - t


def to_ddpm(t: Tensor, path: str | Path = "linear") -> tuple[Tensor, Tensor]:
    """REPA time -> (nearest DDPM step in log-SNR, input scale ``1/sqrt(alpha^2 + sigma^2)``)."""
    p = get_path(path)
    t64 = torch.as_tensor(t, dtype=torch.float64)
    a, s = p.alpha(t64), p.sigma(t64)
    abar = ddpm_alphas_cumprod().to(t64.device)
    log_snr_steps = torch.log(abar) - torch.log1p(-abar)  # (S,), decreasing in s
    log_snr = 2 * (torch.log(a.clamp_min(1e-30)) - torch.log(s.clamp_min(1e-30)))
    step = (log_snr.reshape(-1, 1) - log_snr_steps).abs().argmin(dim=1).reshape(t64.shape)
    return step, 1 / torch.sqrt(a**2 + s**2)


def ddpm_time(step: Tensor) -> Tensor:
    """The REPA time (linear path) whose SNR equals DDPM step ``step``'s: inverse of :func:`to_ddpm`."""
    abar = ddpm_alphas_cumprod().to(step.device)[step]
    a, s = abar.sqrt(), (1 - abar).sqrt()
    return s / (a + s)
