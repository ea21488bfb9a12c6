"""The checks of a TrainConfig that are tables or long lists: every numeric field's type, range and
finiteness (the rules of :data:`train.run.rules.RULES`), the follow-up objectives' settings and live alignment's, each
problem as one line that names the fix.  ``TrainConfig.check`` calls them before anything runs."""

from __future__ import annotations

from typing import Any  # the config: a train.run.config.TrainConfig, read here, never imported (it imports this module)

from train.run.rules import FIELD_RULES, NUMERIC, RULES, finite, number_problem  # noqa: F401 - finite re-exported


# every numeric field's type, range and finiteness: the rules of train.run.rules.RULES, one table for the
# config fields and the command-line options
NUMBERS = tuple(name for name, rule in FIELD_RULES.items() if rule.kind in NUMERIC)


def check_objectives(cfg: Any) -> list[str]:
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


def check_numbers(cfg: Any) -> list[str]:
    """Every numeric field (and every element of a numeric list field) against its rule, one line each."""
    errs = []
    for name in NUMBERS:
        *section, leaf = name.split(".")
        value = getattr(getattr(cfg, section[0]) if section else cfg, leaf)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            problem = None if v is None else number_problem(RULES[name], v)
            if problem:
                errs.append(f"{name} {value!r} {problem}")
                break
    if len(cfg.betas) != 2:
        errs.append(f"betas {list(cfg.betas)!r} are not two numbers in [0, 1): use [0.9, 0.999]")
    return errs


def check_live_alignment(cfg: Any) -> list[str]:
    """Live-alignment settings (``train.run.live_align``) that cannot work, one line each."""
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
