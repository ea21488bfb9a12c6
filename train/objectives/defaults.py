"""One field turns an objective on: the settings HASTE, SRA and REG need beside their coefficient,
defaulted from the papers and scaled to the model, wherever a ``TrainConfig`` is made.

* HASTE (arXiv 2505.16792) distils DINOv2-B blocks 9-12 (of 12) into SiT-XL blocks 5-8 (of 28).
  ``attn_coeff > 0`` with both layer lists empty pairs model block ``round(depth b / 28)`` with
  encoder block ``round(depth_enc b' / 12)`` for (b, b') = (5, 9) .. (8, 12), repeated pairs once
  -- the same depth ratio as SRA's blocks (``round(depth 8 / 28)``, ``train.objectives.terms.sra_blocks``).
* SRA (arXiv 2505.02831): ``sra_coeff > 0`` with ``model.sra_projector_dim = 0`` takes twice the
  model width (its SimpleHead).
* REG (arXiv 2507.01467): ``reg_coeff > 0`` with ``model.reg_dim = 0`` takes the first encoder's
  width (``model.z_dims[0]``), as the official code.

Explicit fields always win; a run's saved config holds explicit values, so resuming is unaffected.
What was chosen is returned as lines for ``repa-train --dry-run``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any  # the config: a train.run.config.TrainConfig, read here, never imported (it imports this module)

# blocks of the encoders by their size letter (DINOv2/v3, DINO, MAE, MoCo v3, CLIP, SigLIP, I-JEPA),
# (the built-in and shipped teachers: train.targets.teacher.TeacherConfig.depth)
VIT_DEPTHS = {"s": 12, "b": 12, "l": 24, "g": 40, "h": 32}
HASTE_PAIRS = ((5, 9), (6, 10), (7, 11), (8, 12))  # SiT-XL (28 blocks) <- DINOv2-B (12 blocks), 1-based


def encoder_depth(name: str) -> int | None:
    """The number of blocks of the encoder ``name``, or None where it is not known without loading it."""
    from train.targets.teacher import TEACHERS  # here, not at the top: the config module imports this one without torch

    if name in TEACHERS:  # the built-in and shipped teachers: their config says
        return TEACHERS[name].depth
    m = re.search(r"-vit-([sblgh])(-|$)", name)
    return VIT_DEPTHS[m.group(1)] if m else None


def encoder_heads(name: str) -> int | None:
    """The attention heads of a built-in or shipped teacher (its config), None for the others."""
    from train.targets.teacher import TEACHERS

    return TEACHERS[name].heads if name in TEACHERS else None


def haste_layers(depth: int, encoder_blocks: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """HASTE's layer pairs scaled to a model of ``depth`` blocks and an encoder of ``encoder_blocks``."""
    scale = lambda b, n, of: max(1, min(n, round(n * b / of)))  # noqa: E731
    pairs = list(dict.fromkeys((scale(m, depth, 28), scale(t, encoder_blocks, 12)) for m, t in HASTE_PAIRS))
    return tuple(m for m, _ in pairs), tuple(t for _, t in pairs)


def _on(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and x > 0


def fill_objective_defaults(cfg: Any) -> list[str]:
    """Set, in place, the settings an objective switched on by its coefficient alone needs; returns
    one line per value chosen (``field=value (why)``)."""
    chosen, model = [], cfg.model
    if _on(cfg.attn_coeff) and not cfg.attn_model_layers and not cfg.attn_teacher_layers and cfg.encoders:
        blocks = encoder_depth(cfg.encoders[0])
        if blocks and isinstance(model.depth, int) and model.depth > 0:
            cfg.attn_model_layers, cfg.attn_teacher_layers = haste_layers(model.depth, blocks)
            chosen += [f"attn_model_layers={list(cfg.attn_model_layers)} attn_teacher_layers={list(cfg.attn_teacher_layers)} "
                       f"(HASTE's SiT-XL 5-8 <- DINOv2-B 9-12, scaled to depth {model.depth} and {cfg.encoders[0]}'s {blocks} blocks)"]
            heads = encoder_heads(cfg.encoders[0])
            if cfg.attn_heads == "first" and heads and isinstance(model.num_heads, int) and model.num_heads < heads:
                cfg.attn_heads = "mean"  # HASTE pairs head h with the teacher's head h: too few model heads for that
                chosen.append(f"attn_heads=mean (the model's {model.num_heads} heads are fewer than {cfg.encoders[0]}'s {heads})")
    if _on(cfg.sra_coeff) and model.sra_projector_dim == 0 and isinstance(model.hidden_size, int):
        model = dataclasses.replace(model, sra_projector_dim=2 * model.hidden_size)
        chosen.append(f"model.sra_projector_dim={model.sra_projector_dim} (SRA: twice the width {model.hidden_size})")
    if _on(cfg.reg_coeff) and model.reg_dim == 0 and model.z_dims:
        model = dataclasses.replace(model, reg_dim=model.z_dims[0])
        chosen.append(f"model.reg_dim={model.reg_dim} (REG: the first encoder's width)")
    cfg.model = model
    return chosen
