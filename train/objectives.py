"""Training objectives beyond denoising, as loss terms the loop adds up.

The loop computes ``loss = denoise + sum_k term_k.weight(step) * term_k(ctx)`` and logs every
term's value under ``term.name`` (and its weighted contribution under ``<name>_weighted``) in
metrics.jsonl.  A term is built from the :class:`~train.config.TrainConfig` by :func:`build_terms`
and says what it needs from the model's forward pass:

* ``hidden_blocks``: blocks whose hidden states (N, T, D) it reads (``ctx.res.hidden``);
* ``attn_blocks``: blocks whose attention logits (N, H, T, T) it reads (``ctx.res.attn``);
* ``project``: it reads the REPA projector outputs ``ctx.res.zs``;
* ``sra_block``: the block whose SRA projection it reads (``ctx.res.sra``).

Parameters that need gradients (projectors) live in the model, so they are checkpointed, EMA'd
and optimised with it.  A term whose ``weight(step)`` is 0 is not computed at that step (HASTE's
stop: no encoder forward, nothing asked of the model) and logs 0.

Terms (see README, "Objectives"):

=================  ==================  ==================================================
name               config              what it does
=================  ==================  ==================================================
``proj_loss``      ``proj_coeff``      REPA: projected block-``encoder_depth`` tokens vs the
                                       encoder's patch tokens (cosine or NT-Xent)
``reg_loss``       ``reg_coeff``       REG (:mod:`train.reg`): velocity MSE of the encoder's
                                       global token, noised at the latents' t and fed to the
                                       model as one extra input token
=================  ==================  ==================================================

A term may also feed the model: ``inputs(ctx)`` runs before the forward pass (``ctx.res`` is still
None) and returns keyword arguments of the forward (REG: the noisy global token ``cls_token``); what
it prepares for its loss it keeps in ``ctx.scratch``.  :func:`forward_inputs` merges them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from train import reg
from train.config import TrainConfig
from train.losses import PROJECTION_LOSSES

Tensor = torch.Tensor


@dataclass
class StepContext:
    """What a loss term may read at one (micro-)step.

    ``x`` clean latents (B, C, H, W), ``x_t`` their noised version at REPA time ``t`` (B,) with
    ``noise``; ``labels`` (B,) and the label-drop mask ``drop`` (B,) the model was fed; ``images``
    uint8 (B, 3, H, W) as the loop passes them (flipped where ``flip``), their dataset indices
    ``idx``; ``res`` the model's :class:`~train.models.ModelOutput`; ``ema`` the EMA model (eval
    mode, no grads); ``targets()`` the batch's REPA training targets [(B, T, z_dim)] (read on the
    first call only); ``generator(stream)`` the step's random stream ``stream`` for terms that draw
    (:func:`train.loop.step_generator`: the same draws after a resume; streams 0 and 1 are the
    loop's), ``batch_slice`` this micro-batch's slice of the ``global_batch``; ``step`` the 0-based
    step.
    """

    step: int
    x: Tensor
    x_t: Tensor
    t: Tensor
    noise: Tensor
    labels: Tensor
    drop: Tensor
    images: Tensor
    idx: Tensor
    flip: Tensor | None
    res: object
    ema: torch.nn.Module
    targets: Callable[[], list[Tensor]]
    generator: Callable[[int], torch.Generator]
    batch_slice: slice
    global_batch: int
    path: str = "linear"
    raw_targets: Callable[[], list[Tensor]] | None = None  # the encoder tokens before target_norm (read once)
    encoders: tuple = ()  # the run's target encoders (train.encoders.Encoder)
    scratch: dict = field(default_factory=dict)  # what a term's inputs() prepared for its loss

    def uniform(self, stream: int) -> Tensor:
        """U(0, 1) draws (B,) for this micro-batch: drawn for the whole global batch from the step's
        stream ``stream`` and sliced, so they depend neither on the split nor on a resume."""
        u = torch.rand(self.global_batch, generator=self.generator(stream))
        return u[self.batch_slice].to(self.t.device)


@dataclass
class LossTerm:
    """One auxiliary loss term: a name (its metrics key), a coefficient, and what it needs.

    Subclasses implement ``__call__(ctx) -> scalar Tensor``.  ``alignment`` terms (REPA's
    projection, HASTE's attention distillation) weigh 0 from ``stop_step`` on (0: never stop).
    """

    name: str
    coeff: float
    stop_step: int = 0
    alignment: bool = False
    hidden_blocks: tuple[int, ...] = ()
    attn_blocks: tuple[int, ...] = ()
    project: bool = False
    sra_block: int | None = None
    encoder_attention: bool = field(default=False)

    def weight(self, step: int) -> float:
        """The coefficient at 0-based step ``step``: ``coeff``, or 0 from ``stop_step`` on for alignment terms."""
        if self.alignment and self.stop_step and step >= self.stop_step:
            return 0.0
        return self.coeff

    def inputs(self, ctx: StepContext) -> dict:
        """Keyword arguments this term adds to the model's forward (before it runs); none by default."""
        return {}

    def __call__(self, ctx: StepContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ProjectionTerm(LossTerm):
    """REPA (Eq. 8): ``proj_loss(res.zs, targets)`` with the configured loss (cosine or NT-Xent);
    the targets are the encoder tokens after ``target_norm`` (:func:`train.loop.training_targets`)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__("proj_loss", cfg.proj_coeff, getattr(cfg, "align_stop_step", 0), alignment=True, project=True)
        self.fn = PROJECTION_LOSSES[cfg.proj_loss]

    def __call__(self, ctx: StepContext) -> Tensor:
        return self.fn(ctx.res.zs, ctx.targets())


class RegTerm(LossTerm):
    """REG (arXiv 2507.01467): the first encoder's global token (:func:`train.reg.global_token`),
    noised with its own N(0, I) draw from the step's stream :data:`train.reg.REG_STREAM` at the
    latents' t and interpolant, goes in as ``cls_token``; the loss is its velocity MSE
    (:func:`train.reg.reg_loss`), weighted by ``reg_coeff`` (never stopped: not an alignment term)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__("reg_loss", cfg.reg_coeff)
        self.kind, self.dim = cfg.reg_token, cfg.model.reg_dim

    def inputs(self, ctx: StepContext) -> dict:
        raw = ctx.raw_targets()[0]                                                   # (B, T, D)
        token = reg.global_token(ctx.encoders[0], ctx.images, raw, self.kind)        # (B, D)
        noise = reg.token_noise(ctx.generator(reg.REG_STREAM), ctx.global_batch, self.dim)[ctx.batch_slice].to(token)
        ctx.scratch["reg"] = (token, noise)
        return {"cls_token": reg.noisy_token(token, noise, ctx.t, ctx.path)}         # (B, D)

    def __call__(self, ctx: StepContext) -> Tensor:
        token, noise = ctx.scratch["reg"]
        return reg.reg_loss(ctx.res.cls, token, noise, ctx.t, ctx.path).mean()


def forward_inputs(terms: list[LossTerm], ctx: StepContext) -> dict:
    """The model inputs the terms prepare (:meth:`LossTerm.inputs`), all terms, whatever their weight:
    a REG model needs its token at every step."""
    out: dict = {}
    for term in terms:
        out.update(term.inputs(ctx))
    return out


def build_terms(cfg: TrainConfig) -> list[LossTerm]:
    """The auxiliary terms of run ``cfg``, in a fixed order (their log order); a term whose
    coefficient is 0 is left out."""
    terms: list[LossTerm] = []
    if cfg.proj_coeff > 0:
        terms.append(ProjectionTerm(cfg))
    if cfg.reg_coeff > 0:
        terms.append(RegTerm(cfg))
    return terms


def forward_needs(terms: list[LossTerm], step: int) -> dict:
    """The keyword arguments of the model's forward that the terms active at ``step`` need."""
    active = [tm for tm in terms if tm.weight(step) != 0]
    needs: dict = {"return_hidden": tuple(sorted({b for tm in active for b in tm.hidden_blocks})),
                   "project": any(tm.project for tm in active)}
    attn = sorted({b for tm in active for b in tm.attn_blocks})
    if attn:
        needs["return_attn"] = tuple(attn)
    sra = [tm.sra_block for tm in active if tm.sra_block is not None]
    if sra:
        needs["sra_block"] = sra[0]
    return needs
