"""What the model is trained on: the interpolant and its time convention
(:mod:`~train.objectives.interpolants`), the losses as pure functions (:mod:`~train.objectives.losses`,
REG's in :mod:`~train.objectives.reg`), the loss terms the loop adds (:mod:`~train.objectives.terms`:
REPA, HASTE, SRA, dispersive, REG), and the defaults one flag turns on
(:mod:`~train.objectives.defaults`); the terms are re-exported here."""

from train.moved import lazy_exports

__all__ = [
    "PROJECTION_LOSSES", "AttentionTerm", "DispersiveTerm", "LossTerm", "ProjectionTerm", "RegTerm",
    "SelfAlignmentTerm", "StepContext", "attention_distillation_loss", "build_terms", "describe",
    "dispersive_loss", "forward_inputs", "forward_needs", "sra_blocks", "sra_loss", "sra_teacher_time",
]
__getattr__ = lazy_exports(__name__, "train.objectives.terms", __all__)
