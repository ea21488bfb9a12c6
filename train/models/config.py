"""The network's configuration: sizes, names and :class:`ModelConfig` (every architectural choice;
:func:`published_config` gives the published ones).  No torch import.

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
import re
from dataclasses import dataclass

FLAVOURS = ("repa", "sit", "dit")
PROJECTORS = ("mlp", "conv")

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
# REPA's text-to-image MMDiT (train.models.mmdit) is named by its depth d: width 32 d and d heads of width 32,
# the official models/mmdit.py rule; "MMDiT-d24/2" is the MS-COCO model of the paper.
MMDIT_NAMES = tuple(f"MMDiT-d{d}/{p}" for d in (2, 4, 6, 12, 24) for p in PATCHES)


def size_of(fam: str, size: str) -> tuple[int, int, int]:
    """(depth, width, heads) of a parsed name: ``SIZES`` for SiT/DiT, ``(d, 32 d, d)`` for MMDiT-d{d}."""
    if fam == "MMDiT":
        d = int(size[1:])
        return d, 32 * d, d
    return SIZES[size]


def parse_name(name: str) -> tuple[str, str, int]:
    """``"SiT-XL/2"`` -> ``("SiT", "XL", 2)``; raises ValueError naming the valid choices."""
    try:
        fam, rest = name.split("-", 1)
        size, patch = rest.split("/")
        if fam in ("SiT", "DiT") and size in SIZES and int(patch) in PATCHES:
            return fam, size, int(patch)
        if fam == "MMDiT" and re.fullmatch(r"d[1-9][0-9]?", size) and int(patch) in PATCHES:
            return fam, size, int(patch)
    except ValueError:
        pass
    raise ValueError(f"unknown model name {name!r}: use one of {', '.join(MODEL_NAMES)} or MMDiT-d{{depth}}/{{patch}} (e.g. MMDiT-d24/2)")


@dataclass
class ModelConfig:
    """Everything needed to build a model; shapes follow the published DiT/SiT/REPA code.

    ``depth``, ``hidden_size`` and ``num_heads`` default to the size in ``name`` and may be overridden
    (the tiny preset does).  ``learn_sigma`` doubles the output channels (published DiT and SiT).
    ``z_dims`` holds one projector per target encoder width; empty means vanilla (no projector).
    ``null_class`` adds the extra label row that classifier-free guidance uses (id ``num_classes``).
    ``projector`` picks the projector form: ``"mlp"`` (REPA: a 3-layer token-wise MLP of width
    ``projector_dim``) or ``"conv"`` (iREPA: one ``projector_kernel`` x ``projector_kernel``
    convolution with same padding on the token grid; ``projector_dim`` is then unused).  iREPA's
    README uses kernel 3 (its LDM script's default is 1).
    ``timestep_freq_shift`` and ``mlp_norm_eps`` record diffusers' DiT conventions (its timestep
    frequencies ``exp(-ln(1e4) i / (half - 1))`` and its ``norm_eps`` before the MLP); the published
    models use 0 and 1e-6.
    ``reg_dim`` > 0 turns on REG (arXiv 2507.01467, Martinser/REG): the model takes one extra input
    token, the noisy global token of the target encoder (width ``reg_dim``, the first encoder's
    width as in the official code), and predicts its velocity beside the latents' (``train.objectives.reg``).
    REG models are REPA-time velocity models (flavour ``repa``).  0 (default): no extra token.
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
    projector: str = "mlp"  # "mlp" (REPA) or "conv" (iREPA)
    projector_kernel: int = 3  # conv projector: odd kernel size k (padding k // 2 keeps the grid)
    qk_norm: bool = False
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel) or "math" (explicit softmax; same numbers)
    timestep_freq_shift: int = 0  # 1 for diffusers' DiTTransformer2DModel (downscale_freq_shift=1)
    mlp_norm_eps: float = 1e-6  # LayerNorm eps before the MLP; diffusers' DiT uses its norm_eps (1e-5)
    reg_dim: int = 0  # REG: width of the encoder's global token the model denoises jointly; 0 = off
    # SRA's projector (train.objectives.terms.SelfAlignmentTerm): Linear(D, P) - SiLU - Linear(P, D) on the
    # student block's tokens; P = sra_projector_dim, 0 = none.  SRA's SimpleHead uses P = 2 D.
    sra_projector_dim: int = 0
    # MMDiT only (train.models.mmdit, names MMDiT-d{depth}/{patch}): the caption features' width (768: CLIP
    # ViT-L/14 text tokens) and token count (77) of the null (empty-caption) context the model keeps,
    # and the official architecture options (qk_norm is then "rms", "ln" or "" for none).
    context_dim: int = 0
    context_len: int = 0
    mmdit_qk_norm: str = ""
    rmsnorm: bool = False
    swiglu: bool = False
    scale_mod_only: bool = False
    register_length: int = 0

    def __post_init__(self) -> None:
        fam, size, patch = parse_name(self.name)
        depth, width, heads = size_of(fam, size)
        self.depth = self.depth or depth
        self.hidden_size = self.hidden_size or width
        self.num_heads = self.num_heads or heads
        align = DEFAULT_ALIGN_DEPTH.get(size, max(1, self.depth // 3))  # MMDiT: official 8 of 24
        self.encoder_depth = self.encoder_depth or min(align, self.depth)
        self.z_dims = tuple(int(z) for z in self.z_dims)
        if self.flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {self.flavour!r}: use one of {FLAVOURS}")
        if self.attn_impl not in ("sdpa", "math"):
            raise ValueError(f"unknown attn_impl {self.attn_impl!r}: use 'sdpa' or 'math'")
        if self.projector not in PROJECTORS:
            raise ValueError(f"unknown projector {self.projector!r}: use 'mlp' (REPA) or 'conv' (iREPA)")
        k = self.projector_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"projector_kernel {k!r} is not an odd positive integer: use 1, 3, 5 or 7")
        d = self.sra_projector_dim
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"sra_projector_dim {d!r} is not a non-negative integer: use 0 (no SRA) or 2 * hidden_size")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.input_size % patch:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch size {patch}")
        if self.z_dims and not 1 <= self.encoder_depth <= self.depth:
            raise ValueError(f"encoder_depth {self.encoder_depth} must lie in 1..{self.depth}")
        r = self.reg_dim
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"reg_dim {r!r} is not a non-negative integer: use 0 (no REG) or the target encoder's width")
        if r and self.flavour != "repa":
            raise ValueError(f"reg_dim {r} needs flavour 'repa' (REG predicts REPA-time velocities), not {self.flavour!r}")
        if fam == "MMDiT":
            if self.mmdit_qk_norm not in ("", "rms", "ln"):
                raise ValueError(f"mmdit_qk_norm {self.mmdit_qk_norm!r} is unknown: use '' (none), 'rms' or 'ln'")
            if self.context_dim < 1 or self.flavour != "repa" or r:
                raise ValueError(f"{self.name} needs context_dim >= 1 (the caption features' width), flavour 'repa' and reg_dim 0")

    @property
    def is_mmdit(self) -> bool:
        return self.name.startswith("MMDiT-")

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
