"""What REG's token loss would be for a predictor that knows the tokens' distribution but nothing of the image:

    python -m studies.reg_floor runs/study/fashion-s14/uncond/repa-con2x-sup-lambda2-irepa-reg/seed0/target_cache.pt

REG (``train.objectives.reg``) noises a global token c along the latents' linear path, c_t = (1 - t) c + t eps, and
regresses its velocity v = eps - c, averaged over the token's channels.  If c ~ N(mu, S), the best predictor of v
from c_t alone (no image) is linear, and its mean squared error per channel at time t is the trace of the Gaussian
conditional covariance divided by the width D:

    (1 / D) tr( S_vv - S_vc S_cc^-1 S_cv ),  S_vv = I + S,  S_vc = t I - (1 - t) S,  S_cc = (1 - t)^2 S + t^2 I,

averaged here over t uniform in (0, 1), as training draws it (midpoints of ``--n-t`` bins).  With only each channel's
variance known (S diagonal) the same formula gives the larger, per-channel floor.  A token loss at or above these
numbers means the student has not learned to predict the token from the image (RESULTS.md, stage 23).  The tokens are
the first encoder's of a run's target cache, averaged over positions (REG's ``reg_token="mean"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def prior_floor(cov: torch.Tensor, n_t: int = 400) -> float:
    """The per-channel velocity MSE of the best image-blind linear predictor, averaged over t (formula above)."""
    s = cov.double()
    eye = torch.eye(len(s), dtype=torch.float64)
    total = 0.0
    for t in (torch.arange(n_t, dtype=torch.float64) + 0.5) / n_t:
        s_vc, s_cc = t * eye - (1 - t) * s, (1 - t) ** 2 * s + t ** 2 * eye
        total += (eye + s - s_vc @ torch.linalg.solve(s_cc, s_vc.T)).trace().item() / len(s)
    return total / n_t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", type=Path, help="a run's target_cache.pt (written by training with cache_targets)")
    ap.add_argument("--n-t", type=int, default=400, help="time bins averaged over")
    args = ap.parse_args(argv)
    if not args.cache.is_file():
        ap.error(f"{args.cache} is not a file: give a run's target_cache.pt")
    tokens = torch.load(args.cache, weights_only=True, mmap=True)["tokens"][0]    # (N, T, D), the first encoder's
    g = tokens.float().mean(dim=1)                                                # (N, D): REG's mean token
    cov = torch.cov(g.T.double())
    print(f"{len(g)} tokens of width {g.shape[1]}: per-channel variance {cov.diagonal().mean():.3f}; "
          f"image-blind floor of REG's token loss: {prior_floor(cov.diag().diag(), args.n_t):.3f} knowing each "
          f"channel's variance, {prior_floor(cov, args.n_t):.3f} knowing their covariance")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
