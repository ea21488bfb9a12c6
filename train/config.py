"""Typed configuration: model sizes and presets. No torch import, so `--dry-run` is instant.

The model family is named as the papers name it: ``{SiT,DiT}-{S,B,L,XL}/{2,4,8}``. ``SIZES`` holds the
published (depth, width, heads); ``MODEL_NAMES`` is the registry that also feeds the CLI choices.
Three checkpoint flavours share one parameter layout and differ in what the network predicts and how
it reads time (``../shared/REPA-NOTES.md`` section 3):

=========  ===============================  ==============================================
flavour    prediction                       time input
=========  ===============================  ==============================================
``repa``   velocity, ``in_channels`` ch     t in [0, 1], t = 0 data, t = 1 noise (REPA time)
``sit``    velocity (+ unused sigma half)   t in [0, 1], t = 1 data, t = 0 noise
``dit``    eps and learned sigma            integer DDPM step 0..999 (linear betas)
=========  ===============================  ==============================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FLAVOURS = ("repa", "sit", "dit")

# size -> (depth, hidden size, heads); mlp ratio 4 for all.  "T" is this toolkit's tiny CPU size.
SIZES: dict[str, tuple[int, int, int]] = {
    "T": (6, 192, 3),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCHES = (2, 4, 8)
# REPA's alignment depth per size (paper: 4 for B, 8 for L and XL; S and T: a third of the depth).
DEFAULT_ALIGN_DEPTH = {"T": 2, "S": 4, "B": 4, "L": 8, "XL": 8}
MODEL_NAMES = tuple(f"{fam}-{size}/{p}" for fam in ("SiT", "DiT") for size in SIZES for p in PATCHES)


def parse_name(name: str) -> tuple[str, str, int]:
    """``"SiT-XL/2"`` -> ``("SiT", "XL", 2)``; raises ValueError naming the valid choices."""
    try:
        fam, rest = name.split("-", 1)
        size, patch = rest.split("/")
        if fam in ("SiT", "DiT") and size in SIZES and int(patch) in PATCHES:
            return fam, size, int(patch)
    except ValueError:
        pass
    raise ValueError(f"unknown model name {name!r}: use one of {', '.join(MODEL_NAMES)}")


@dataclass
class ModelConfig:
    """Everything needed to build a model; shapes follow the published DiT/SiT/REPA code.

    ``depth``, ``hidden_size`` and ``num_heads`` default to the size in ``name`` and may be overridden
    (the tiny preset does).  ``learn_sigma`` doubles the output channels (published DiT and SiT).
    ``z_dims`` holds one projector per target encoder width; empty means vanilla (no projector).
    ``null_class`` adds the extra label row that classifier-free guidance uses (id ``num_classes``).
    """

    name: str = "SiT-XL/2"
    flavour: str = "repa"
    input_size: int = 32
    in_channels: int = 4
    learn_sigma: bool = False
    num_classes: int = 1000
    null_class: bool = True
    class_dropout_prob: float = 0.1
    encoder_depth: int | None = None
    z_dims: tuple[int, ...] = ()
    projector_dim: int = 2048
    qk_norm: bool = False
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel) or "math" (explicit softmax; same numbers)

    def __post_init__(self) -> None:
        fam, size, patch = parse_name(self.name)
        depth, width, heads = SIZES[size]
        self.depth = self.depth or depth
        self.hidden_size = self.hidden_size or width
        self.num_heads = self.num_heads or heads
        self.encoder_depth = self.encoder_depth or min(DEFAULT_ALIGN_DEPTH[size], self.depth)
        self.z_dims = tuple(int(z) for z in self.z_dims)
        if self.flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}: use one of {FLAVOURS}")
        if self.attn_impl not in ("sdpa", "math"):
            raise ValueError(f"unknown attn_impl {self.attn_impl!r}: use 'sdpa' or 'math'")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.input_size % patch:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch size {patch}")
        if self.z_dims and not 1 <= self.encoder_depth <= self.depth:
            raise ValueError(f"encoder_depth {self.encoder_depth} must lie in 1..{self.depth}")

    @property
    def patch_size(self) -> int:
        return parse_name(self.name)[2]

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["z_dims"] = list(self.z_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "z_dims" else v) for k, v in d.items() if k in known})


def published_config(name: str, flavour: str | None = None, **overrides) -> ModelConfig:
    """The configuration of a published model: DiT/SiT (learn-sigma, 8 output channels) or REPA.

    ``published_config("DiT-XL/2")`` is facebookresearch/DiT, ``published_config("SiT-XL/2", "sit")``
    willisma/SiT, and ``published_config("SiT-XL/2", z_dims=(768,))`` sihyun-yu/REPA.
    """
    fam = parse_name(name)[0]
    flavour = flavour or ("dit" if fam == "DiT" else "repa")
    kw = dict(name=name, flavour=flavour, learn_sigma=flavour in ("dit", "sit"))
    kw.update(overrides)
    return ModelConfig(**kw)


__all__ = ["ModelConfig", "published_config", "parse_name", "SIZES", "PATCHES", "MODEL_NAMES", "FLAVOURS"]
