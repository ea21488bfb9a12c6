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
import re
from dataclasses import dataclass

from train.config_checks import check_live_alignment, check_numbers, check_objectives, finite
from train.objective_defaults import fill_objective_defaults

FLAVOURS = ("repa", "sit", "dit")
# TrainConfig fields of live alignment (train.live_align): measuring, not training (a run resumes with others)
LIVE_ALIGN_FIELDS = ("align_every", "align_layers", "align_ts", "align_encoder", "align_images", "align_train_images",
                     "align_token_samples", "align_seed")
PROJECTORS = ("mlp", "conv")
TARGET_NORMS = ("none", "spatial")

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
# REPA's text-to-image MMDiT (train.mmdit) is named by its depth d: width 32 d and d heads of width 32,
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
    width as in the official code), and predicts its velocity beside the latents' (``train.reg``).
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
    # SRA's projector (train.objectives.SelfAlignmentTerm): Linear(D, P) - SiLU - Linear(P, D) on the
    # student block's tokens; P = sra_projector_dim, 0 = none.  SRA's SimpleHead uses P = 2 D.
    sra_projector_dim: int = 0
    # MMDiT only (train.mmdit, names MMDiT-d{depth}/{patch}): the caption features' width (768: CLIP
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




# ------------------------------------------------------------------------------------------------
# Training configuration and presets
# ------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """What the model trains on: a built-in dataset (``shapes``, ``digits``), an image ``folder``, or
    a ``latents`` cache made by ``python -m train.data encode`` (``root`` = the cache directory)."""

    dataset: str = "shapes"
    root: str | None = None
    image_size: int = 32
    n_train: int | None = None  # built-in datasets: number of training images (None: its default)
    hflip: bool = False
    codec: str = "identity"  # "identity" (pixels) or "sd-vae"
    vae: str = "stabilityai/sd-vae-ft-mse"  # sd-vae codec: hub name or local diffusers directory
    random_init_vae: bool = False  # tests only: an SD-VAE with random weights
    num_workers: int = 0


@dataclass
class TrainConfig:
    """One training run.  ``proj_coeff = 0`` is the vanilla baseline (no projector, no encoder).

    Defaults are REPA's ImageNet settings (REPA-NOTES section 2); presets below size them.
    iREPA's two changes are options: ``target_norm="spatial"`` (with ``target_norm_gamma``,
    ``target_norm_eps``) normalises each image's target tokens over space before the projection
    loss, and ``model.projector="conv"`` (``model.projector_kernel``) swaps the MLP projector for a
    convolution on the token grid.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    encoders: tuple[str, ...] = ("dinov2-vit-b",)
    encoder_weights: tuple[str, ...] = ()  # one local path per encoder ("" = hub / built-in)
    random_init_encoders: bool = False  # tests and offline demos only: random encoder weights
    cache_targets: bool = True  # encoder tokens from the stored target cache, or computed once per image (and mirror); false: encoder every step
    proj_coeff: float = 0.5
    proj_loss: str = "cosine"  # "cosine" or "nt-xent"
    nt_xent_temperature: float = 0.1
    # iREPA spatial normalisation of each image's target tokens before the projection loss
    # (train.losses.spatial_normalize): "none" or "spatial"; gamma: 0.6 latent SiT, 0.8 pixel JiT
    target_norm: str = "none"
    target_norm_gamma: float = 0.6
    target_norm_eps: float = 1e-6  # added to the (unbiased) std, as the official code
    target_shuffle: str = "none"  # the controls: "class" -- each image's targets from another image of its class; "image" -- from a random other image
    # REG (arXiv 2507.01467): the velocity loss of the jointly denoised global token (train.reg),
    # weighted by reg_coeff (0 = off; the official code's --cls default is 0.03) and needing
    # model.reg_dim = the first encoder's width; reg_token: "auto" = the encoder's class token where
    # it has one (DINOv2's x_norm_clstoken in the official code), else its mean patch token; "mean" always
    reg_coeff: float = 0.0
    reg_token: str = "auto"
    # --- further objectives (train.objectives; README "Objectives"); each coefficient 0 = off ---
    # HASTE (arXiv 2505.16792): the alignment terms (proj_loss, attn_loss) weigh 0 from this step
    # on; 0 = never.  HASTE stops at 250K (SiT-XL/2, its --early-stop-point).
    align_stop_step: int = 0
    # HASTE attention distillation: cross-entropy of the model's attention (log-softmax of its
    # logits) against the first encoder's softmaxed attention over its patch tokens, per head,
    # averaged over rows, heads and layer pairs; HASTE: attn_coeff 0.5, DINOv2-B blocks 9-12 ->
    # SiT-XL blocks 5-8 (1-based here; its code's 0-based 8-11 -> 4-7)
    attn_coeff: float = 0.0
    attn_teacher_layers: tuple[int, ...] = ()  # 1-based encoder blocks, one per model block
    attn_model_layers: tuple[int, ...] = ()  # 1-based model blocks
    attn_heads: str = "first"  # "first": model head h <-> teacher head h (HASTE: the first H_teacher heads); "mean": head-averaged maps
    # SRA (arXiv 2505.02831): the model's block sra_student_block at t, projected
    # (model.sra_projector_dim), against the EMA model's block sra_teacher_block at
    # t' = clamp(t - sra_t_max * u, 0, 1), u ~ U(0, 1) (lower noise), no gradient.  SRA SiT-XL/2:
    # blocks 8 -> 20, t_max 0.2, smooth-L1 (beta 0.05) weighted 2.0, or cosine weighted 0.5
    sra_coeff: float = 0.0
    sra_student_block: int = 0  # 0: round(depth * 8 / 28), SRA's SiT-XL ratio
    sra_teacher_block: int = 0  # 0: round(depth * 20 / 28)
    sra_t_max: float = 0.2
    sra_distance: str = "smooth_l1"  # "smooth_l1" (SRA's paper, beta 0.05) or "cosine" (its README: better late)
    # Dispersive loss (arXiv 2506.09027): log mean_ij exp(-|z_i - z_j|^2 / (dim tau)) over the batch
    # on one block's flattened hidden states; paper SiT-B/2: 0.5 with tau 0.5 at block depth/4, or
    # 0.25 with tau 1 at the last block
    dispersive_coeff: float = 0.0
    dispersive_tau: float = 0.5
    dispersive_block: int = 0  # 0: max(1, depth // 4)
    path: str = "linear"
    time_sampling: str = "uniform"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 256  # global, over processes and accumulation steps
    grad_accum: int = 1
    steps: int = 400_000
    ema_decay: float = 0.9999
    mixed_precision: str = "no"  # "no", "bf16", "fp16"
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 10_000
    ckpt_series: str = "log"  # keep "all" periodic checkpoints, or "log": steps ckpt_every * 2^k
    sample_every: int = 0  # 0: never; else a grid of EMA samples every N steps (and at the end)
    sample_steps: int = 50
    eval_every: int = 0  # 0: never; else evaluate the EMA model every N steps (see train.evaluate)
    eval_samples: int = 256
    eval_ref_split: str = "train"  # the real images evaluation compares with: "train" or "val" (Fashion-MNIST: its 10,000 test images)
    # live alignment (train.live_align): every align_every steps (0: off) and at step 0, the EMA model's
    # CKNNA (pooled and token-level), LDS and linear probe at align_layers (empty: the aligned block
    # model.encoder_depth) x align_ts against align_encoder (empty: the first of encoders), on
    # align_images val images (align_train_images train images fit the probe; 0: no probe)
    align_every: int = 0
    align_layers: tuple[int, ...] = ()
    align_ts: tuple[float, ...] = (0.0, 0.5)
    align_encoder: str = ""
    align_images: int = 256
    align_train_images: int = 128
    align_token_samples: int = 2000
    align_seed: int = 0
    threads: int = 0  # 0: torch default
    compile: bool = False
    tensorboard: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        # one bare string (``--set encoders=NAME``) is one encoder, not a sequence of characters
        self.encoders = (self.encoders,) if isinstance(self.encoders, str) else tuple(self.encoders)
        self.encoder_weights = (self.encoder_weights,) if isinstance(self.encoder_weights, str) else tuple(self.encoder_weights)
        self.betas = tuple(self.betas)
        self.attn_teacher_layers = tuple(self.attn_teacher_layers)
        self.attn_model_layers = tuple(self.attn_model_layers)
        self.align_layers = (self.align_layers,) if isinstance(self.align_layers, int) else tuple(self.align_layers)
        self.align_ts = (self.align_ts,) if isinstance(self.align_ts, (int, float)) else tuple(self.align_ts)
        # one field turns an objective on: what it needs besides is chosen here (train.objective_defaults)
        self.chosen = fill_objective_defaults(self)

    @property
    def vanilla(self) -> bool:
        """No REPA projection term (no projector); other objectives may still be on."""
        return self.proj_coeff == 0

    @property
    def needs_encoders(self) -> bool:
        """A term reads the target encoders: REPA's projection or HASTE's attention distillation."""
        return self.proj_coeff > 0 or self.attn_coeff > 0

    def check(self) -> list[str]:
        """Contradictory or impossible options, each as one line saying the fix."""
        errs = check_numbers(self)
        if errs:  # the checks below compute with these numbers
            return errs
        if self.batch_size % self.grad_accum:
            errs.append(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}: pick values that divide")
        if not self.vanilla and not self.encoders:
            errs.append("proj_coeff > 0 needs at least one target encoder: pass --encoders NAME or set --proj-coeff 0")
        errs += check_objectives(self)
        if self.encoder_weights and len(self.encoder_weights) != len(self.encoders):
            errs.append(f"{len(self.encoder_weights)} encoder weight paths for {len(self.encoders)} encoders: give one per encoder ('' for the default)")
        if self.vanilla and self.model.z_dims:
            errs.append("a vanilla run (proj_coeff 0) must not have projectors: drop model.z_dims")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            errs.append(f"mixed_precision {self.mixed_precision!r} is unknown: use no, bf16 or fp16")
        if self.proj_loss not in ("cosine", "nt-xent"):
            errs.append(f"proj_loss {self.proj_loss!r} is unknown: use cosine or nt-xent")
        if self.target_shuffle not in ("none", "class", "image"):
            errs.append(f"target_shuffle {self.target_shuffle!r} is unknown: use none, class or image (the shuffled-target controls)")
        if self.target_shuffle != "none" and not self.cache_targets:
            errs.append(f"target_shuffle={self.target_shuffle} reads another image's cached targets: set cache_targets=true")
        if self.target_norm not in TARGET_NORMS:
            errs.append(f"target_norm {self.target_norm!r} is unknown: use none or spatial (iREPA)")
        if not finite(self.target_norm_gamma):
            errs.append(f"target_norm_gamma {self.target_norm_gamma!r} is not a finite number: use 0.6 (latent SiT) or 0.8 (pixel JiT)")
        if not (finite(self.target_norm_eps) and self.target_norm_eps > 0):
            errs.append(f"target_norm_eps {self.target_norm_eps!r} is not a positive finite number (a constant channel divides by it): use 1e-6")
        if self.reg_token not in ("auto", "mean"):
            errs.append(f"reg_token {self.reg_token!r} is unknown: use auto (class token where there is one) or mean (mean patch token)")
        if self.reg_coeff > 0 and not self.model.reg_dim:
            errs.append("reg_coeff > 0 needs the extra token in the model: set model.reg_dim to the first encoder's width")
        if self.model.reg_dim and self.reg_coeff == 0:
            errs.append(f"model.reg_dim {self.model.reg_dim} adds REG's token but reg_coeff is 0: set reg_coeff (0.03 in the paper) or model.reg_dim=0")
        if self.model.reg_dim and self.vanilla:
            errs.append("REG builds on REPA and takes its token from the target encoder: set proj_coeff > 0 with an encoder")
        if self.model.reg_dim and (self.sra_coeff > 0 or self.attn_coeff > 0):
            errs.append("REG's extra token is not combined with SRA or HASTE's attention distillation (their targets have no token): set sra_coeff=0 and attn_coeff=0, or model.reg_dim=0")
        if self.model.reg_dim and self.model.z_dims and self.model.reg_dim != self.model.z_dims[0]:
            errs.append(f"model.reg_dim {self.model.reg_dim} differs from the first encoder's width {self.model.z_dims[0]}: set them equal")
        if self.ckpt_series not in ("all", "log"):
            errs.append(f"ckpt_series {self.ckpt_series!r} is unknown: use all or log")
        pixel_channels = {"identity": 3, "grey": 1}  # pixel-space codecs (train.latents.CODEC_CHANNELS)
        if self.data.codec in pixel_channels and self.model.in_channels != pixel_channels[self.data.codec]:
            c = pixel_channels[self.data.codec]
            errs.append(f"the {self.data.codec} codec gives {c} channel{'s' * (c > 1)} but model.in_channels is {self.model.in_channels}: set it to {c}")
        if self.data.codec in pixel_channels and self.model.input_size != self.data.image_size:
            errs.append(f"model.input_size {self.model.input_size} differs from data.image_size {self.data.image_size} with the {self.data.codec} codec: make them equal")
        errs += check_live_alignment(self)
        p = self.model.class_dropout_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            errs.append(f"model.class_dropout_prob {p!r} is not a probability: use a number in [0, 1]")
        return errs

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _imagenet(name: str, depth: int) -> TrainConfig:
    return TrainConfig(
        model=published_config(name, "repa", input_size=32, in_channels=4, num_classes=1000, encoder_depth=depth, z_dims=(768,)),
        data=DataConfig(dataset="folder", image_size=256, codec="sd-vae"),
        encoders=("dinov2-vit-b",), proj_coeff=0.5, lr=1e-4, batch_size=256, steps=400_000,
        mixed_precision="fp16", ckpt_every=50_000, sample_every=10_000, log_every=100,
    )


def _cpu_run(name: str, size: int, classes: int, dataset: str, encoder: str, eval_samples: int, codec: str = "identity",
             z_dim: int = 64, **overrides) -> TrainConfig:
    """A 6-block, width-64 SiT on a built-in dataset in pixel space (64 tokens), REPA at block 2
    with a 128-wide projector, batch 32, lr 2e-3, EMA 0.99: sized for a 2-core CPU."""
    channels = {"identity": 3, "grey": 1}[codec]
    return TrainConfig(**{**dict(
        model=ModelConfig(name=name, flavour="repa", input_size=size, in_channels=channels, num_classes=classes,
                          depth=6, hidden_size=64, num_heads=2, encoder_depth=2, z_dims=(z_dim,), projector_dim=128),
        data=DataConfig(dataset=dataset, image_size=size, codec=codec),
        encoders=(encoder,), proj_coeff=0.5, lr=2e-3, batch_size=32, steps=300, ema_decay=0.99,
        log_every=10, ckpt_every=100, ckpt_series="log", sample_every=200, sample_steps=25, eval_every=100,
        eval_samples=eval_samples, device="cpu"), **overrides})


def _tiny() -> TrainConfig:
    """The built-in default: Fashion-MNIST at 16 px in one grey channel (patch 2: 8 x 8 tokens), the
    shipped self-supervised teacher ``fashion-ssl`` (SimMIM, width 128), REPA at block 2 with lambda 0.5;
    evaluated on 2,000 samples against the 10,000 test images.  RESULTS.md says how it was chosen."""
    return _cpu_run("SiT-T/2", 16, 10, "fashion-mnist", "fashion-ssl", eval_samples=2000, codec="grey", z_dim=128,
                    steps=600, eval_every=200, ckpt_every=200, eval_ref_split="val")


def _tiny_scenes() -> TrainConfig:
    """The second built-in default: scenes at 16 px (patch 2), the self-supervised built-in teacher
    (masked-token prediction), REPA's cosine loss on raw targets (RESULTS-scenes.md: no benefit)."""
    return _cpu_run("SiT-T/2", 16, 8, "scenes", "builtin-ssl", eval_samples=256)


def _tiny_shapes() -> TrainConfig:
    """The first built-in default: the shapes set at 32 px (patch 4), the supervised built-in
    teacher (on which REPA shows no benefit: RESULTS.md)."""
    return _cpu_run("SiT-T/4", 32, 10, "shapes", "builtin-teacher", eval_samples=128)


def _tiny_t2i() -> TrainConfig:
    """Text-to-image on the built-in captioned scenes (train.captions): a 4-block, width-64 MMDiT
    conditioned on 12 caption tokens of width 32, REPA at block 2 against the built-in SSL teacher."""
    cfg = _tiny_scenes()
    cfg.model = ModelConfig(name="MMDiT-d4/2", input_size=16, in_channels=3, num_classes=8, depth=4, hidden_size=64,
                            num_heads=2, encoder_depth=2, z_dims=(64,), projector_dim=128, context_dim=32, context_len=12)
    cfg.data.dataset, cfg.eval_every = "captioned-scenes", 0
    return cfg


PRESETS = {
    "tiny": _tiny,
    "tiny-scenes": _tiny_scenes,
    "tiny-shapes": _tiny_shapes,
    "tiny-t2i": _tiny_t2i,
    "SiT-B/2": lambda: _imagenet("SiT-B/2", 4),
    "SiT-L/2": lambda: _imagenet("SiT-L/2", 8),
    "SiT-XL/2": lambda: _imagenet("SiT-XL/2", 8),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def override(cfg: TrainConfig, assignments: list[str], strict: bool = False) -> TrainConfig:
    """Apply ``field=value`` / ``model.field=value`` / ``data.field=value`` overrides (JSON values,
    bare strings allowed); unknown fields raise ValueError naming the valid ones.  ``strict`` (the
    command lines): each value is checked against its field's type hint and rule
    (``train.rules.field_problem``) as it is applied, so a bad value refuses the command even if a
    later assignment of the same field would replace it."""
    import json

    from train.rules import field_problem

    d = cfg.to_dict()
    sections = {"model": ModelConfig, "data": DataConfig}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not FIELD=VALUE: see repa-train --dry-run for the fields")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node, cls = d, TrainConfig
        for p in parents:
            if p not in node or not isinstance(node[p], dict):
                raise ValueError(f"unknown config section {p!r} in {key!r}: use model.FIELD or data.FIELD")
            node, cls = node[p], sections[p]
        if leaf not in node:
            raise ValueError(f"unknown config field {key!r}: valid are {', '.join(sorted(node))}")
        if strict and not (cls is TrainConfig and leaf in sections):
            value, problem = field_problem(cls, leaf, value, "".join(p + "." for p in parents))
            if problem:
                raise ValueError(problem)
        node[leaf] = value
    return TrainConfig.from_dict(d)
