"""Typed configuration of a run: :class:`DataConfig`, :class:`TrainConfig` (with the network's
:class:`~train.models.config.ModelConfig`, re-exported here), the presets (:data:`PRESETS`, ``tiny``
first: the built-in default) and ``--set`` overrides (:func:`override`).  No torch import, so
``--dry-run`` is instant."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from train.run.config_checks import check_live_alignment, check_numbers, check_objectives, finite
from train.objectives.defaults import fill_objective_defaults
from train.models.config import (DEFAULT_ALIGN_DEPTH, FLAVOURS, MMDIT_NAMES, MODEL_NAMES, PATCHES,  # noqa: F401 (re-exported)
                                 PROJECTORS, SIZES, ModelConfig, parse_name, published_config, size_of)

# TrainConfig fields of live alignment (train.run.live_align): measuring, not training (a run resumes with others)
LIVE_ALIGN_FIELDS = ("align_every", "align_layers", "align_ts", "align_encoder", "align_images", "align_train_images",
                     "align_token_samples", "align_seed")
TARGET_NORMS = ("none", "spatial")

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
    # (train.objectives.losses.spatial_normalize): "none" or "spatial"; gamma: 0.6 latent SiT, 0.8 pixel JiT
    target_norm: str = "none"
    target_norm_gamma: float = 0.6
    target_norm_eps: float = 1e-6  # added to the (unbiased) std, as the official code
    target_shuffle: str = "none"  # the controls: "class" -- each image's targets from another image of its class; "image" -- from a random other image
    # REG (arXiv 2507.01467): the velocity loss of the jointly denoised global token (train.objectives.reg),
    # weighted by reg_coeff (0 = off; the official code's --cls default is 0.03) and needing
    # model.reg_dim = the first encoder's width; reg_token: "auto" = the encoder's class token where
    # it has one (DINOv2's x_norm_clstoken in the official code), else its mean patch token; "mean" always
    reg_coeff: float = 0.0
    reg_token: str = "auto"
    # --- further objectives (train.objectives.terms; README "Objectives"); each coefficient 0 = off ---
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
    eval_every: int = 0  # 0: never; else evaluate the EMA model every N steps (see train.evaluation.evaluate)
    eval_samples: int = 256
    eval_ref_split: str = "train"  # the real images evaluation compares with: "train" or "val" (Fashion-MNIST: its 10,000 test images)
    # live alignment (train.run.live_align): every align_every steps (0: off) and at step 0, the EMA model's
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
        # one field turns an objective on: what it needs besides is chosen here (train.objectives.defaults)
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
        pixel_channels = {"identity": 3, "grey": 1}  # pixel-space codecs (train.data.latents.CODEC_CHANNELS)
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
    """The built-in default: Fashion-MNIST at 16 px in one grey channel (patch 2: 8 x 8 tokens),
    unconditional (every label dropped: the model is given the null class), aligned to both shipped
    teachers at once -- the self-supervised ``fashion-ssl`` (SimMIM) and the supervised
    ``fashion-supervised``, both width 128, one projector each, REPA's loss averaged over them -- at
    block 2 with lambda 2.0 on iREPA's targets (spatially normalised, gamma 0.6, through conv
    projectors); evaluated on 2,000 samples against the 10,000 test images.  Chosen by the
    pre-registered plan (studies/results/fashion/PLAN.md; RESULTS.md section 2): conditioning by stage 2,
    iREPA's targets by stage 9, lambda 2.0 by stage 11, both teachers by stage 15.  The probes, maps and
    live alignment measure against the first teacher (``fashion-ssl``)."""
    cfg = _cpu_run("SiT-T/2", 16, 10, "fashion-mnist", "fashion-ssl", eval_samples=2000, codec="grey", z_dim=128,
                   steps=600, eval_every=200, ckpt_every=200, eval_ref_split="val")
    cfg.encoders, cfg.model.z_dims = ("fashion-ssl", "fashion-supervised"), (128, 128)
    cfg.model.class_dropout_prob = 1.0
    cfg.proj_coeff, cfg.target_norm, cfg.target_norm_gamma, cfg.model.projector = 2.0, "spatial", 0.6, "conv"
    return cfg


def _tiny_scenes() -> TrainConfig:
    """The second built-in default: scenes at 16 px (patch 2), the self-supervised built-in teacher
    (masked-token prediction), REPA's cosine loss on raw targets (RESULTS-scenes.md: no benefit)."""
    return _cpu_run("SiT-T/2", 16, 8, "scenes", "builtin-ssl", eval_samples=256)


def _tiny_shapes() -> TrainConfig:
    """The first built-in default: the shapes set at 32 px (patch 4), the supervised built-in
    teacher (on which REPA shows no benefit: RESULTS.md)."""
    return _cpu_run("SiT-T/4", 32, 10, "shapes", "builtin-teacher", eval_samples=128)


def _tiny_t2i() -> TrainConfig:
    """Text-to-image on the built-in captioned scenes (train.data.captions): a 4-block, width-64 MMDiT
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
    (``train.run.rules.field_problem``) as it is applied, so a bad value refuses the command even if a
    later assignment of the same field would replace it."""
    import json

    from train.run.rules import field_problem

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
