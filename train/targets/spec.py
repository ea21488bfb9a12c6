"""How to build a target encoder by name: :class:`EncoderSpec`, the one record the timm loader
(:mod:`train.targets.encoders`) and the transformers loader (:mod:`train.targets.hf_encoders`) share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder.

    ``arch``: timm model name (with its pretrained tag when timm publishes the weights);
    ``patch``/``resolution``: patch size and input side in pixels; ``target``: ``"norm"`` or
    ``"prenorm"`` (see the module docstring); ``hub``: timm can fetch the weights (else a local
    file is required); ``strip_prefix``: key prefix removed from local checkpoints; ``hf``: the
    transformers ``model_type`` values whose directories load for it; ``timm_kwargs``: extra
    ``timm.create_model`` arguments as ``((key, value), ...)`` (tests register tiny variants).
    """

    arch: str
    patch: int
    resolution: int
    target: str = "norm"
    hub: bool = True
    strip_prefix: str = ""
    hf: tuple[str, ...] = ()
    timm_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def grid(self) -> int:
        return self.resolution // self.patch
