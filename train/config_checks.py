"""The checks of a TrainConfig that are tables or long lists: every numeric option's type, range and
finiteness (:data:`NUMBERS`), the follow-up objectives' settings and live alignment's, each
problem as one line that names the fix.  ``TrainConfig.check`` calls them before anything runs."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.config import TrainConfig


def finite(value) -> bool:
    """A real number (not a bool, not a string), finite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


# every numeric option is checked for type, range and finiteness before anything runs:
# (field, integer?, lowest, lowest allowed?, highest, what to use)
NUMBERS = (
    ("lr", False, 0, False, 1, "a learning rate such as 1e-4"),
    ("max_grad_norm", False, 0, False, math.inf, "1.0"),
    ("adam_eps", False, 0, False, 1, "1e-8"),
    ("weight_decay", False, 0, True, math.inf, "0"),
    ("proj_coeff", False, 0, True, math.inf, "0 (vanilla) or a positive lambda such as 0.5"),
    ("reg_coeff", False, 0, True, math.inf, "0 (no REG) or a positive weight such as 0.03 (the paper's)"),
    ("nt_xent_temperature", False, 0, False, math.inf, "0.1"),
    ("align_stop_step", True, 0, True, math.inf, "0 (never) or the step HASTE stops alignment at, e.g. 250000"),
    ("attn_coeff", False, 0, True, math.inf, "0 (off) or HASTE's 0.5"),
    ("sra_coeff", False, 0, True, math.inf, "0 (off) or SRA's 2.0 (smooth_l1) / 0.5 (cosine)"),
    ("sra_student_block", True, 0, True, math.inf, "0 (the paper's ratio) or a 1-based block"),
    ("sra_teacher_block", True, 0, True, math.inf, "0 (the paper's ratio) or a 1-based block"),
    ("sra_t_max", False, 0, True, 1, "SRA's 0.2"),
    ("dispersive_coeff", False, 0, True, math.inf, "0 (off) or the paper's 0.5"),
    ("dispersive_tau", False, 0, False, math.inf, "the paper's 0.5 (or 1 at the last block)"),
    ("dispersive_block", True, 0, True, math.inf, "0 (depth // 4) or a 1-based block"),
    ("ema_decay", False, 0, True, 1, "a number in [0, 1] such as 0.9999"),
    ("batch_size", True, 1, True, math.inf, "a positive integer"),
    ("grad_accum", True, 1, True, math.inf, "a positive integer"),
    ("steps", True, 1, True, math.inf, "a positive integer"),
    ("log_every", True, 1, True, math.inf, "a positive integer"),
    ("ckpt_every", True, 1, True, math.inf, "a positive integer"),
    ("sample_every", True, 0, True, math.inf, "0 (never) or a positive integer"),
    ("sample_steps", True, 1, True, math.inf, "a positive integer such as 50"),
    ("eval_every", True, 0, True, math.inf, "0 (never) or a positive integer"),
    ("eval_samples", True, 1, True, math.inf, "a positive integer"),
    ("align_every", True, 0, True, math.inf, "0 (off) or a positive integer such as 100"),
    ("align_images", True, 11, True, math.inf, "an integer above 10 (k = 10 neighbours) such as 256"),
    ("align_train_images", True, 0, True, math.inf, "0 (no linear probe) or at least 2, such as 256"),
    ("align_token_samples", True, 11, True, math.inf, "an integer above 10 such as 2000"),
    ("align_seed", True, 0, True, 2**63 - 1, "a non-negative integer"),
    ("seed", True, 0, True, 2**63 - 1, "a non-negative integer"),
    ("threads", True, 0, True, 4096, "0 (the torch default) or a positive integer"),
)


def check_objectives(cfg: "TrainConfig") -> list[str]:
    """HASTE, SRA and dispersive settings that cannot work, one line each."""
    errs, depth = [], cfg.model.depth
    blocks = lambda xs: all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= depth for b in xs)  # noqa: E731
    if cfg.attn_coeff > 0:
        if not cfg.encoders:
            errs.append("attn_coeff > 0 distils a target encoder's attention: pass --encoders NAME or set attn_coeff=0")
        if not cfg.attn_model_layers or len(cfg.attn_model_layers) != len(cfg.attn_teacher_layers):
            errs.append(f"attn_model_layers {list(cfg.attn_model_layers)} and attn_teacher_layers {list(cfg.attn_teacher_layers)} "
                        "must be equal-length, non-empty lists: e.g. --set attn_model_layers=[1,2] attn_teacher_layers=[1,2]")
        elif not blocks(cfg.attn_model_layers):
            errs.append(f"attn_model_layers {list(cfg.attn_model_layers)} must be model blocks in 1..{depth}: pick 1-based blocks")
        elif not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in cfg.attn_teacher_layers):
            errs.append(f"attn_teacher_layers {list(cfg.attn_teacher_layers)} must be positive 1-based encoder blocks: pick them so")
    if cfg.attn_heads not in ("first", "mean"):
        errs.append(f"attn_heads {cfg.attn_heads!r} is unknown: use first (HASTE) or mean")
    if cfg.sra_distance not in ("smooth_l1", "cosine"):
        errs.append(f"sra_distance {cfg.sra_distance!r} is unknown: use smooth_l1 or cosine")
    if cfg.sra_coeff > 0 and not cfg.model.sra_projector_dim:
        errs.append(f"sra_coeff > 0 needs the SRA projector: set model.sra_projector_dim (SRA: {2 * cfg.model.hidden_size}, twice the width)")
    if cfg.sra_coeff == 0 and cfg.model.sra_projector_dim:
        errs.append("model.sra_projector_dim is set but sra_coeff is 0: set sra_coeff > 0 or model.sra_projector_dim=0")
    for name in ("sra_student_block", "sra_teacher_block", "dispersive_block"):
        if getattr(cfg, name) and not blocks([getattr(cfg, name)]):
            errs.append(f"{name} {getattr(cfg, name)!r} is not a model block in 1..{depth}: pick one, or 0 for the paper's choice")
    return errs


def check_numbers(cfg: "TrainConfig") -> list[str]:
    errs = []
    for name, integer, lo, lo_ok, hi, fix in NUMBERS:
        v = getattr(cfg, name)
        typed = isinstance(v, int) and not isinstance(v, bool) if integer else finite(v)
        if not (typed and (lo <= v if lo_ok else lo < v) and v <= hi):
            span = f"{'>=' if lo_ok else '>'} {lo}" + ("" if hi == math.inf else f" and <= {hi}")
            errs.append(f"{name} {v!r} is not {'an integer' if integer else 'a finite number'} {span}: use {fix}")
    betas = cfg.betas
    if len(betas) != 2 or not all(finite(b) and 0 <= b < 1 for b in betas):
        errs.append(f"betas {list(betas)!r} are not two numbers in [0, 1): use [0.9, 0.999]")
    return errs


def check_live_alignment(cfg: "TrainConfig") -> list[str]:
    """Live-alignment settings (``train.live_align``) that cannot work, one line each."""
    errs = []
    if cfg.align_every:
        if not (cfg.align_encoder or cfg.encoders):
            errs.append("align_every needs an encoder to align with: set align_encoder=NAME (the encoder a REPA run would use)")
        bad = [x for x in cfg.align_layers if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= cfg.model.depth]
        if bad:
            errs.append(f"align_layers {list(cfg.align_layers)} must be block indices in 0..{cfg.model.depth}: e.g. [{cfg.model.encoder_depth}]")
        if cfg.align_train_images == 1:
            errs.append("align_train_images 1: a linear probe needs at least 2 training images: use 0 (no probe) or e.g. 256")
        if not cfg.align_ts or not all(finite(t) and 0 <= t <= 1 for t in cfg.align_ts):
            errs.append(f"align_ts {list(cfg.align_ts)} must be REPA times in [0, 1]: e.g. [0, 0.5]")
    return errs
