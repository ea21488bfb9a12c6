"""REG (arXiv 2507.01467, NeurIPS 2025; official code Martinser/REG): REPA's alignment plus one
extra token, the target encoder's global token, noised with the latents and denoised jointly.

What the official code does (``train.py``, ``loss.py``, ``samplers.py``, ``models/sit.py``), and
what this module follows:

* the clean token is DINOv2's ``x_norm_clstoken``: the class token after the encoder's final norm,
  taken with its patch tokens (``forward_features``).  Here :func:`global_token`: the class token
  after the final norm where the first encoder has one (timm ViTs with a class token and
  ``"norm"`` targets: DINOv2, DINO v1, MoCo v3, ...), else the mean of its target patch tokens
  (the built-in teachers, SigLIP and I-JEPA have no class token; SAM2, the ``"prenorm"`` targets
  of MAE and CLIP and transformers-format encoders use the mean too); ``TrainConfig.reg_token =
  "mean"`` picks the mean everywhere.  Where the
  targets come from a cache, the class token still needs the encoder on the batch's images (the
  caches hold patch tokens), a mean token does not;
* its noise is its own standard normal draw (``torch.randn_like(cls_token)``), with the *same* time
  and interpolant as the latents: ``c_t = alpha_t c + sigma_t eps_c`` (:func:`noisy_token`); here
  the draw is made for the whole global batch from the step's random stream :data:`REG_STREAM`
  (``train.run.loop.step_generator``), so runs without REG keep their draws and a resume is exact;
* the loss is the velocity MSE of the token, ``|v_c - (alpha'_t c + sigma'_t eps_c)|^2`` averaged
  over its channels (:func:`reg_loss`), added as ``reg_coeff * loss`` (the official ``--cls``,
  default 0.03) to the denoising loss and REPA's ``proj_coeff * proj``;
* sampling starts the token from N(0, I) beside the latent noise and integrates it with the same
  sampler (``train.evaluation.sampling``; the official SDE sampler guides it with its own ``cls_cfg_scale``,
  default 1.5 in ``generate.py``; here one ``cfg_scale`` guides both unless ``cls_cfg_scale`` is given).
"""

from __future__ import annotations

import torch

from train.objectives import interpolants as itp
from train.objectives.losses import denoising_loss

Tensor = torch.Tensor
REG_STREAM = 2  # step_generator stream of REG's token noise (0: the loop's draws, 1: data.hflip)


def has_class_token(encoder) -> bool:
    """Whether ``encoder`` (a :class:`train.targets.encoders.Encoder`) has a class token to take: a timm ViT
    with a class token whose targets are its final-norm patch tokens."""
    m = encoder.model
    return (encoder.spec.target == "norm" and not hasattr(m, "target_tokens")
            and getattr(m, "cls_token", None) is not None and getattr(m, "num_prefix_tokens", 0) > 0)


@torch.no_grad()
def global_token(encoder, images: Tensor, tokens: Tensor, kind: str = "auto") -> Tensor:
    """The clean global token (B, D) of uint8 ``images`` (B, 3, H, W) for REG.

    ``kind="auto"``: the class token after the final norm (index 0 of ``forward_features``, as
    DINOv2's ``x_norm_clstoken``) when :func:`has_class_token`, else the mean over positions of the
    raw target tokens ``tokens`` (B, T, D) the encoder gave (or the cache holds); ``"mean"``: that
    mean always.  Float32.
    """
    if kind not in ("auto", "mean"):
        raise ValueError(f"unknown reg_token {kind!r}: use auto or mean")
    if kind == "auto" and has_class_token(encoder):
        return encoder.model.forward_features(encoder.preprocess(images))[:, 0].float()  # (B, D)
    return tokens.float().mean(dim=1)  # (B, T, D) -> (B, D)


def token_noise(generator: torch.Generator, batch: int, dim: int) -> Tensor:
    """The global batch's token noise (batch, dim), N(0, I), from ``generator`` (the step's REG stream)."""
    return torch.randn(batch, dim, generator=generator)


def noisy_token(token: Tensor, noise: Tensor, t: Tensor, path: str = "linear") -> Tensor:
    """``alpha_t c + sigma_t eps`` (B, D): the latents' interpolant at the latents' times t (B,)."""
    return itp.interpolate(token, noise, t, path)


def reg_loss(v_pred: Tensor, token: Tensor, noise: Tensor, t: Tensor, path: str = "linear") -> Tensor:
    """Per-sample (B,) velocity MSE of the global token (float32), as the official ``denoising_loss_cls``."""
    return denoising_loss(v_pred, token, noise, t, path)
