"""Training objectives beyond denoising, as loss terms the loop adds up.

The loop computes ``loss = denoise + sum_k term_k.weight(step) * term_k(ctx)`` and logs every
term's value under ``term.name`` (and its weighted contribution under ``<name>_weighted``) in
metrics.jsonl.  A term is built from the :class:`~train.run.config.TrainConfig` by :func:`build_terms`
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
``reg_loss``       ``reg_coeff``       REG (:mod:`train.objectives.reg`): velocity MSE of the encoder's
                                       global token, noised at the latents' t and fed to the
                                       model as one extra input token
``attn_loss``      ``attn_coeff``      HASTE: the model's attention of ``attn_model_layers``
                                       vs the first encoder's of ``attn_teacher_layers``
``sra_loss``       ``sra_coeff``       SRA: projected student block at t vs the EMA model's
                                       block at a lower noise level t' (no encoder)
``dispersive_loss`` ``dispersive_coeff`` dispersive loss on one block's hidden states
=================  ==================  ==================================================

Both alignment terms (REPA's, HASTE's) weigh 0 from ``align_stop_step`` on (HASTE's stop).

A term may also feed the model: ``inputs(ctx)`` runs before the forward pass (``ctx.res`` is still
None) and returns keyword arguments of the forward (REG: the noisy global token ``cls_token``); what
it prepares for its loss it keeps in ``ctx.scratch``.  :func:`forward_inputs` merges them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from train.objectives import interpolants as itp
from train.objectives import reg
from train.run.config import TrainConfig
from train.errors import UserError
from train.objectives.losses import PROJECTION_LOSSES, attention_distillation_loss, dispersive_loss, sra_loss, sra_teacher_time

Tensor = torch.Tensor


@dataclass
class StepContext:
    """What a loss term may read at one (micro-)step.

    ``x`` clean latents (B, C, H, W), ``x_t`` their noised version at REPA time ``t`` (B,) with
    ``noise``; ``labels`` (B,) and the label-drop mask ``drop`` (B,) the model was fed; ``images``
    uint8 (B, 3, H, W) as the loop passes them (flipped where ``flip``), their dataset indices
    ``idx``; ``res`` the model's :class:`~train.models.loading.ModelOutput`; ``ema`` the EMA model (eval
    mode, no grads); ``targets()`` the batch's REPA training targets [(B, T, z_dim)] (read on the
    first call only); ``generator(stream)`` the step's random stream ``stream`` for terms that draw
    (:func:`train.run.loop.step_generator`: the same draws after a resume; streams 0 and 1 are the
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
    encoders: tuple = ()  # the run's target encoders (train.targets.encoders.Encoder)
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
    the targets are the encoder tokens after ``target_norm`` (:func:`train.run.loop.training_targets`)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__("proj_loss", cfg.proj_coeff, cfg.align_stop_step, alignment=True, project=True)
        self.fn = PROJECTION_LOSSES[cfg.proj_loss]

    def __call__(self, ctx: StepContext) -> Tensor:
        return self.fn(ctx.res.zs, ctx.targets())


class AttentionTerm(LossTerm):
    """HASTE's attention distillation (:func:`train.objectives.losses.attention_distillation_loss`): the model's
    attention logits of ``attn_model_layers`` against the first encoder's of
    ``attn_teacher_layers`` on the batch's images (online, no grad: the target caches hold tokens,
    not attention).  The teacher's patch grid must be the model's token grid."""

    def __init__(self, cfg: TrainConfig, encoder):
        super().__init__("attn_loss", cfg.attn_coeff, cfg.align_stop_step, alignment=True,
                         attn_blocks=tuple(cfg.attn_model_layers))
        grid = math.isqrt(cfg.model.num_tokens)
        if encoder.native_grid != grid:
            raise UserError(f"encoder {encoder.name} attends over {encoder.native_grid} x {encoder.native_grid} patches but the model "
                            f"has {grid} x {grid} tokens: attention distillation needs one grid (change model.input_size/patch or the encoder)")
        self.encoder, self.teacher_layers, self.heads = encoder, tuple(cfg.attn_teacher_layers), cfg.attn_heads

    def __call__(self, ctx: StepContext) -> Tensor:
        teacher = self.encoder.attention(ctx.images, self.teacher_layers)            # [(B, Ht, T, T)]
        return attention_distillation_loss([ctx.res.attn[b] for b in self.attn_blocks], teacher, self.heads)


class SelfAlignmentTerm(LossTerm):
    """SRA: ``distance(res.sra, h_b(EMA; x_t', t'))`` with ``t' = clamp(t - t_max u, 0, 1)``, the same
    data, noise, labels and label-drop mask, the EMA model under no_grad; ``u`` from the step's
    stream 2 (:meth:`StepContext.uniform`)."""

    STREAM = 2

    def __init__(self, cfg: TrainConfig):
        s, b = sra_blocks(cfg)
        super().__init__("sra_loss", cfg.sra_coeff, sra_block=s)
        self.teacher_block, self.t_max, self.distance = b, cfg.sra_t_max, cfg.sra_distance

    def target(self, ctx: StepContext) -> Tensor:
        """The EMA model's block-b tokens (B, T, D) at the teacher time: no gradient."""
        t2 = sra_teacher_time(ctx.t, ctx.uniform(self.STREAM), self.t_max)
        x2 = itp.interpolate(ctx.x, ctx.noise, t2, ctx.path)
        with torch.no_grad():
            res = ctx.ema(x2, t2, ctx.labels, return_hidden=(self.teacher_block,), head=False, project=False,
                          drop_mask=ctx.drop)
        return res.hidden[self.teacher_block].detach()

    def __call__(self, ctx: StepContext) -> Tensor:
        return sra_loss(ctx.res.sra, self.target(ctx), self.distance)


class DispersiveTerm(LossTerm):
    """The dispersive loss (:func:`train.objectives.losses.dispersive_loss`) on block ``dispersive_block``."""

    def __init__(self, cfg: TrainConfig):
        block = cfg.dispersive_block or max(1, cfg.model.depth // 4)
        super().__init__("dispersive_loss", cfg.dispersive_coeff, hidden_blocks=(block,))
        self.tau = cfg.dispersive_tau

    def __call__(self, ctx: StepContext) -> Tensor:
        return dispersive_loss(ctx.res.hidden[self.hidden_blocks[0]], self.tau)


def sra_blocks(cfg: TrainConfig) -> tuple[int, int]:
    """(student, teacher) blocks of SRA: the configured ones, or SRA's SiT-XL 8 / 20 of 28 scaled to the depth."""
    d = cfg.model.depth
    return (cfg.sra_student_block or max(1, round(d * 8 / 28)), cfg.sra_teacher_block or max(1, round(d * 20 / 28)))




class RegTerm(LossTerm):
    """REG (arXiv 2507.01467): the first encoder's global token (:func:`train.objectives.reg.global_token`),
    noised with its own N(0, I) draw from the step's stream :data:`train.objectives.reg.REG_STREAM` at the
    latents' t and interpolant, goes in as ``cls_token``; the loss is its velocity MSE
    (:func:`train.objectives.reg.reg_loss`), weighted by ``reg_coeff`` (never stopped: not an alignment term)."""

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


def build_terms(cfg: TrainConfig, encoders: list | None = None) -> list[LossTerm]:
    """The auxiliary terms of run ``cfg``, in a fixed order (their log order); a term whose
    coefficient is 0 is left out.  ``encoders``: the loaded target encoders (HASTE's term reads
    the first)."""
    terms: list[LossTerm] = []
    if cfg.proj_coeff > 0:
        terms.append(ProjectionTerm(cfg))
    if cfg.reg_coeff > 0:
        terms.append(RegTerm(cfg))
    if cfg.attn_coeff > 0:
        if not encoders:
            raise UserError("attn_coeff > 0 distils a target encoder's attention: pass --encoders NAME or set attn_coeff=0")
        terms.append(AttentionTerm(cfg, encoders[0]))
    if cfg.sra_coeff > 0:
        terms.append(SelfAlignmentTerm(cfg))
    if cfg.dispersive_coeff > 0:
        terms.append(DispersiveTerm(cfg))
    return terms


def describe(cfg: TrainConfig) -> list[dict]:
    """The objectives of ``cfg`` as the dry run lists them: name, weight and settings of each term."""
    out = [{"name": "denoise_loss", "coeff": 1.0}]
    if cfg.proj_coeff > 0:
        out.append({"name": "proj_loss", "coeff": cfg.proj_coeff, "loss": cfg.proj_loss, "target_norm": cfg.target_norm,
                    "block": cfg.model.encoder_depth, "encoders": list(cfg.encoders), "stop_step": cfg.align_stop_step})
    if cfg.reg_coeff > 0:
        out.append({"name": "reg_loss", "coeff": cfg.reg_coeff, "token": cfg.reg_token, "dim": cfg.model.reg_dim,
                    "encoder": cfg.encoders[0] if cfg.encoders else None})
    if cfg.attn_coeff > 0:
        out.append({"name": "attn_loss", "coeff": cfg.attn_coeff, "model_layers": list(cfg.attn_model_layers),
                    "teacher_layers": list(cfg.attn_teacher_layers), "encoder": cfg.encoders[0] if cfg.encoders else None,
                    "heads": cfg.attn_heads, "stop_step": cfg.align_stop_step})
    if cfg.sra_coeff > 0:
        s, b = sra_blocks(cfg)
        out.append({"name": "sra_loss", "coeff": cfg.sra_coeff, "student_block": s, "teacher_block": b,
                    "t_max": cfg.sra_t_max, "distance": cfg.sra_distance, "projector_dim": cfg.model.sra_projector_dim})
    if cfg.dispersive_coeff > 0:
        out.append({"name": "dispersive_loss", "coeff": cfg.dispersive_coeff, "tau": cfg.dispersive_tau,
                    "block": cfg.dispersive_block or max(1, cfg.model.depth // 4)})
    return out


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
