"""REPA's text-to-image MMDiT (sihyun-yu/REPA ``models/mmdit.py``, the SD3 joint-attention DiT).

Image tokens ``x`` (N, T, D) and caption tokens ``c`` (N, L, D) keep separate weights (a
``context_block`` and an ``x_block`` per :class:`JointBlock`) and attend *jointly*: each block
computes q, k, v of both streams, concatenates them along the tokens (caption first) and splits the
attention output back (eq. 6 of SD3, arXiv 2403.03206)::

    [o_c, o_x] = softmax([q_c; q_x] [k_c; k_x]^T / sqrt(d_h)) [v_c; v_x]

with adaLN modulation of both streams by the time embedding (no pooled text vector: REPA's model
has ``adm_in_channels=None``).  The last block's caption stream is ``pre_only``: it contributes
k, v and is then dropped.  The parameter names are the official ones, so an official T2I checkpoint
(``{model, ema, opt, args, steps}``) loads strictly through :func:`train.models.loading.load`.

Facts of the official code kept here (none changes a number):

* width ``32 d`` and ``d`` heads of width 32 for depth ``d`` (its comment says 64; the code says 32);
* the initialisation is PyTorch's default (the official class has no ``initialize_weights``); an
  RMSNorm's scale starts at 1 (the official ``torch.empty`` leaves it unset);
* the sin-cos position table is a *buffer* (it is in the state dict and not in ``parameters()``),
  MAE-style like SiT's; the official crop of a 16 x 16 table to the input's grid generalises to a
  table of the configured grid, centre-cropped for smaller inputs;
* ``context_embedder`` is ``Linear(context_dim, D)`` (official: 768, CLIP ViT-L/14 text features);
* REPA's projectors read the image tokens after block ``encoder_depth`` (1-based).

This toolkit adds (outside the official layout): ``null_context``, the (context_len, context_dim)
empty-caption features the model is conditioned on for classifier-free guidance and the probes'
"no label" mode (a buffer; an official checkpoint does not hold it: :func:`train.models.loading.load` takes
``null_context=`` or leaves it unset), and ``return_hidden`` / ``return_context`` for the probes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.models.architecture import FinalLayer, Mlp, ModelOutput, PatchEmbed, TimestepEmbedder, build_projector, sincos_2d
from train.models.config import ModelConfig
from train.errors import UserError

Tensor = torch.Tensor


def modulate(x: Tensor, shift: Tensor | None, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` per sample; ``shift=None`` (scale-only modulation) adds nothing."""
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps)`` over the last dimension, times ``weight`` when affine."""

    def __init__(self, dim: int, elementwise_affine: bool = False, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x if self.weight is None else x * self.weight.to(x.dtype)


def _norm(dim: int, rms: bool) -> nn.Module:
    return RMSNorm(dim, eps=1e-6) if rms else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class SelfAttention(nn.Module):
    """q, k, v (and output ``proj`` unless ``pre_only``) of one stream; qk-norm per head (``ln_q``/``ln_k``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, pre_only: bool, qk_norm: str):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        norm = {"rms": lambda: RMSNorm(self.head_dim, True, 1e-6),
                "ln": lambda: nn.LayerNorm(self.head_dim, eps=1e-6), "": nn.Identity}[qk_norm]
        self.ln_q, self.ln_k = norm(), norm()

    def qkv_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, L, D) -> q, k, v (N, L, D) each, q and k normalised per head."""
        n, length, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).unbind(2)  # (N, L, H, hd) each
        return self.ln_q(q).reshape(n, length, -1), self.ln_k(k).reshape(n, length, -1), v.reshape(n, length, -1)


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Multi-head softmax attention of (N, L, D) tokens (no mask)."""
    n, length, d = q.shape
    q, k, v = (a.reshape(n, -1, heads, d // heads).transpose(1, 2) for a in (q, k, v))  # (N, H, L, hd)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, d)  # (N, L, D)


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)``, hidden width ``2/3 * hidden`` rounded up to a multiple of 256."""

    def __init__(self, dim: int, hidden: int, multiple_of: int = 256):
        super().__init__()
        hidden = multiple_of * ((int(2 * hidden / 3) + multiple_of - 1) // multiple_of)
        self.w1, self.w2, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(hidden, dim, bias=False), nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DismantledBlock(nn.Module):
    """One stream of a joint block: adaLN-modulated norm -> q, k, v; then gated attention output and MLP.

    ``pre_only`` (the last caption stream): norm1, q k v and 2 modulations (1 with ``scale_mod_only``)
    only.  Otherwise 6 modulations (4 without shifts).
    """

    def __init__(self, cfg: ModelConfig, pre_only: bool):
        super().__init__()
        d = cfg.hidden_size
        self.pre_only, self.scale_mod_only = pre_only, cfg.scale_mod_only
        self.norm1 = _norm(d, cfg.rmsnorm)
        self.attn = SelfAttention(d, cfg.num_heads, True, pre_only, cfg.mmdit_qk_norm)
        if not pre_only:
            self.norm2 = _norm(d, cfg.rmsnorm)
            hidden = int(d * cfg.mlp_ratio)
            self.mlp = SwiGLU(d, hidden) if cfg.swiglu else Mlp(d, hidden)
        n_mods = (1 if pre_only else 4) if cfg.scale_mod_only else (2 if pre_only else 6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, n_mods * d))

    def pre_attention(self, x: Tensor, c: Tensor):
        """(N, L, D), (N, D) -> (q, k, v), and what :meth:`post_attention` needs (None if pre_only)."""
        mods = self.adaLN_modulation(c).chunk(self.adaLN_modulation[1].out_features // c.shape[-1], dim=1)
        if self.scale_mod_only:  # no shifts: (scale, gate, scale, gate) or (scale,)
            mods = sum(((None, m) if i % 2 == 0 else (m,) for i, m in enumerate(mods)), ())
        qkv = self.attn.qkv_tokens(modulate(self.norm1(x), mods[0], mods[1]))
        return qkv, (None if self.pre_only else (x, *mods[2:]))

    def post_attention(self, a: Tensor, x: Tensor, gate_msa: Tensor, shift_mlp, scale_mlp: Tensor, gate_mlp: Tensor) -> Tensor:
        x = x + gate_msa.unsqueeze(1) * self.attn.proj(a)                                          # (N, L, D)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, L, D)


class JointBlock(nn.Module):
    """Caption and image streams attending jointly (caption tokens first in the joint sequence)."""

    def __init__(self, cfg: ModelConfig, last: bool):
        super().__init__()
        self.context_block = DismantledBlock(cfg, pre_only=last)
        self.x_block = DismantledBlock(cfg, pre_only=False)

    def forward(self, context: Tensor, x: Tensor, c: Tensor) -> tuple[Tensor | None, Tensor]:
        """(N, L, D), (N, T, D), (N, D) -> (N, L, D) or None after the last block, (N, T, D)."""
        qkv_c, rest_c = self.context_block.pre_attention(context, c)
        qkv_x, rest_x = self.x_block.pre_attention(x, c)
        q, k, v = (torch.cat([a, b], dim=1) for a, b in zip(qkv_c, qkv_x))    # (N, L + T, D)
        a = attention(q, k, v, self.x_block.attn.num_heads)                    # (N, L + T, D)
        length = context.shape[1]
        context = None if rest_c is None else self.context_block.post_attention(a[:, :length], *rest_c)
        return context, self.x_block.post_attention(a[:, length:], *rest_x)


@dataclass
class JointOutput(ModelOutput):
    """:class:`ModelOutput` plus ``context``: {layer: caption tokens (N, L, D)} when asked (layer 0 =
    the embedded captions, with registers in front; the last block has no caption output)."""

    context: dict[int, Tensor] = field(default_factory=dict)


class MMDiT(nn.Module):
    """REPA's MMDiT, optionally with REPA projectors on the image tokens of block ``encoder_depth``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.is_mmdit:
            raise ValueError(f"{cfg.name} is not an MMDiT name (MMDiT-d{{depth}}/{{patch}})")
        self.cfg, self.flavour, self.num_classes = cfg, cfg.flavour, 0
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.context_embedder = nn.Linear(cfg.context_dim, d)
        if cfg.register_length:
            self.register = nn.Parameter(torch.randn(1, cfg.register_length, d))
        self.register_buffer("pos_embed", sincos_2d(d, cfg.input_size // cfg.patch_size).unsqueeze(0))  # (1, T, D)
        self.joint_blocks = nn.ModuleList([JointBlock(cfg, last=i == cfg.depth - 1) for i in range(cfg.depth)])
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.out_channels)
        self.projectors = nn.ModuleList([build_projector(d, cfg.projector_dim, z, cfg.projector, cfg.projector_kernel)
                                         for z in cfg.z_dims])
        self.register_buffer("null_context", torch.zeros(cfg.context_len, cfg.context_dim))  # toolkit's, see module doc

    def initialize_weights(self) -> None:
        """Redraw every weight as the official model is built (PyTorch defaults; RMSNorm scales 1;
        registers N(0, 1)), in module order with the projectors last, so a REPA model and its
        vanilla twin share the backbone after the same seed."""
        proj = set(self.projectors.modules())
        for m in [m for m in self.modules() if m not in proj] + list(self.projectors.modules()):
            if isinstance(m, (nn.Linear, nn.Conv2d)) or (isinstance(m, nn.LayerNorm) and m.elementwise_affine):
                m.reset_parameters()
            elif isinstance(m, RMSNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
        if self.cfg.register_length:
            nn.init.normal_(self.register)

    @property
    def time_convention(self) -> str:
        return "t in [0,1], 0 = data"

    def null_contexts(self, n: int, device=None) -> Tensor:
        """The null (empty-caption) context repeated n times: (n, L, C)."""
        if self.null_context.shape[0] == 0:
            raise UserError(f"this {self.cfg.name} has no null (empty-caption) context: load it with null_context=PATH "
                            "(the feature folder's empty_context.npy) or pass captions")
        return self.null_context.to(device).unsqueeze(0).expand(n, -1, -1)

    def pos_table(self, grid: tuple[int, int]) -> Tensor:
        """The position table centre-cropped to an h x w token grid (official ``cropped_pos_embed``)."""
        g = self.cfg.input_size // self.cfg.patch_size
        h, w = grid
        if h > g or w > g:
            raise ValueError(f"input grid {h}x{w} exceeds the model's {g}x{g} position table")
        top, left = (g - h) // 2, (g - w) // 2
        return self.pos_embed.reshape(1, g, g, -1)[:, top:top + h, left:left + w].reshape(1, h * w, -1)  # (1, h w, D)

    def unpatchify(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """(N, T, p*p*C) -> (N, C, H, W), token order row-major, channels last within a patch."""
        c, p = self.cfg.out_channels, self.cfg.patch_size
        h, w = hw[0] // p, hw[1] // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, return_hidden: Iterable[int] | None = None, project: bool = True,
                head: bool = True, drop_mask: Tensor | None = None, return_context: bool = False, **unsupported):
        """Velocity (REPA time) of latents ``x`` (N, C, H, W) at ``t`` (N,) given captions ``y`` (N, L, C_ctx).

        ``drop_mask`` (N,) bool puts the null context in place of those captions (classifier-free
        guidance dropout; in training mode without a mask, with probability ``class_dropout_prob``).
        Without ``return_hidden`` it returns ``(output, [projected tokens])`` as the official model;
        with ``return_hidden=[...]`` a :class:`JointOutput` (layer L = image tokens after block L,
        0 = patch + position embedding; ``return_context`` adds the caption tokens), ``head=False``
        stopping after the deepest block needed and ``project=False`` skipping the projectors.
        """
        if unsupported := {k: v for k, v in unsupported.items() if v not in (None, (), [])}:
            raise ValueError(f"the MMDiT does not support {sorted(unsupported)} (attention maps, SRA and REG are SiT-only)")
        legacy = return_hidden is None
        wanted = set() if legacy else {int(i) for i in return_hidden}
        depth = len(self.joint_blocks)
        if any(not 0 <= i <= depth for i in wanted):
            raise ValueError(f"return_hidden layers must lie in 0..{depth}, got {sorted(wanted)}")
        if y.ndim != 3 or y.shape[-1] != self.cfg.context_dim:
            raise ValueError(f"captions must be (N, L, {self.cfg.context_dim}) features, got {tuple(y.shape)}")
        project = project and len(self.projectors) > 0
        last = depth if head else max(wanted | ({self.cfg.encoder_depth} if project else {0}))
        if drop_mask is None and self.training and self.cfg.class_dropout_prob > 0:
            drop_mask = torch.rand(y.shape[0], device=y.device) < self.cfg.class_dropout_prob
        if drop_mask is not None:
            y = torch.where(drop_mask.reshape(-1, 1, 1), self.null_contexts(y.shape[0], y.device).to(y.dtype), y)

        hw = tuple(x.shape[-2:])
        p = self.cfg.patch_size
        x = self.x_embedder(x) + self.pos_table((hw[0] // p, hw[1] // p))  # (N, T, D)
        c = self.t_embedder(t)                                             # (N, D)
        context = self.context_embedder(y.to(x.dtype))                     # (N, L, D)
        if self.cfg.register_length:
            context = torch.cat([self.register.expand(x.shape[0], -1, -1), context], dim=1)  # (N, R + L, D)
        hidden = {0: x} if 0 in wanted else {}
        ctx_hidden = {0: context} if return_context and 0 in wanted else {}
        zs: list[Tensor] = []
        for i, block in enumerate(self.joint_blocks[:last], start=1):
            context, x = block(context, x, c)                              # (N, L, D) or None, (N, T, D)
            if i in wanted:
                hidden[i] = x
                if return_context and context is not None:
                    ctx_hidden[i] = context
            if project and i == self.cfg.encoder_depth:
                zs = [proj(x) for proj in self.projectors]                 # [(N, T, z_dim)]
        out = self.unpatchify(self.final_layer(x, c), hw) if head else None  # (N, C_out, H, W)
        if legacy:
            return out, zs
        return JointOutput(out, hidden, zs, context=ctx_hidden)


def read_null_context(value) -> Tensor:
    """A null context given as a tensor, an array or an ``.npy`` path -> float32 (L, C)."""
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        import numpy as np
        try:
            value = np.load(value)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the null context {value}: {e}; pass the feature folder's empty_context.npy") from None
    value = torch.as_tensor(value, dtype=torch.float32)
    if value.ndim == 3 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 2:
        raise UserError(f"the null context has shape {tuple(value.shape)}, not (tokens, width): pass the empty-caption features")
    return value


MMDIT_MARKER = "joint_blocks.0.x_block.attn.qkv.weight"


def is_mmdit_state(sd: dict) -> bool:
    """Whether a state dict is an MMDiT's (official layout or this toolkit's)."""
    return MMDIT_MARKER in sd


def infer_mmdit_config(sd: dict, name: str | None = None, meta: dict | None = None, null_context: Tensor | None = None,
                       **overrides) -> ModelConfig:
    """An MMDiT's config from its tensors (official layout or this toolkit's).

    Depth from ``joint_blocks``, width from ``pos_embed``, heads = width / 32 (the official rule),
    qk-norm from ``ln_q`` (``weight`` only: RMS; with ``bias``: LayerNorm), SwiGLU from ``mlp.w1``,
    scale-only modulation from the adaLN width, registers, projectors.  Block norms without weights
    cannot tell RMSNorm from LayerNorm: the official default (LayerNorm) unless ``rmsnorm=True`` is
    passed.  The alignment depth comes from ``args.encoder_depth`` (official default 8), else depth / 3.
    """
    args = (meta or {}).get("args", {})
    need = ("pos_embed", "x_embedder.proj.weight", "context_embedder.weight", "final_layer.linear.weight")
    if missing := [k for k in need if k not in sd]:
        raise UserError(f"MMDiT checkpoint lacks the tensor {missing[0]!r}: it is incomplete; export or download it again")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"joint_blocks\.(\d+)\.", k)))
    width = sd["pos_embed"].shape[-1]
    grid = round(sd["pos_embed"].shape[1] ** 0.5)
    proj_w = sd["x_embedder.proj.weight"]
    patch, in_ch = proj_w.shape[-1], proj_w.shape[1]
    out_ch = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    ln_q = "joint_blocks.0.x_block.attn.ln_q."
    qk = ("ln" if ln_q + "bias" in sd else "rms") if ln_q + "weight" in sd else ""
    n_proj = len({k.split(".")[1] for k in sd if k.startswith("projectors.")})
    z_dims = tuple(sd[f"projectors.{i}.4.weight"].shape[0] for i in range(n_proj))
    nc = sd.get("null_context", null_context)
    kw = dict(
        name=name or f"MMDiT-d{depth}/{patch}", flavour="repa", input_size=grid * patch, in_channels=in_ch,
        learn_sigma=out_ch == 2 * in_ch, num_classes=0, null_class=True, z_dims=z_dims,
        projector_dim=sd["projectors.0.0.weight"].shape[0] if n_proj else 2048, depth=depth, hidden_size=width,
        num_heads=max(1, width // 32), context_dim=sd["context_embedder.weight"].shape[1],
        context_len=0 if nc is None else int(nc.shape[0]), mmdit_qk_norm=qk,
        swiglu="joint_blocks.0.x_block.mlp.w1.weight" in sd,
        scale_mod_only=sd["joint_blocks.0.x_block.adaLN_modulation.1.weight"].shape[0] == 4 * width,
        register_length=sd["register"].shape[1] if "register" in sd else 0,
        encoder_depth=int(args.get("encoder_depth", max(1, depth // 3))),
    )
    kw.update(overrides)
    if kw["context_len"] and nc is not None and nc.shape[-1] != kw["context_dim"]:
        raise UserError(f"null context is {tuple(nc.shape)} but the model reads {kw['context_dim']}-wide captions: pass the empty_context.npy of its feature folder")
    return ModelConfig(**kw)
