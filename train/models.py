"""The SiT/DiT model family, read top-down: helpers, embedders, block, final layer, model, registry,
loading, and the flavour-independent noise-level API.

One architecture serves the three published flavours (DiT, SiT, REPA; see ``train.config``): the
parameter names and shapes are exactly the published ones, so their state dicts load with
``load_state_dict(strict=True)``.  Differences from the reference code, none of which changes a number:

* attention runs through ``scaled_dot_product_attention`` (``attn_impl="math"`` spells it out);
* the S sizes work (REPA's reference builds SiT-S's final layer for width 768 and crashes);
* hidden states come out of ``forward(..., return_hidden=[...])`` instead of hooks; the projectors run
  only when asked (``project=True``), never while sampling;
* the 2-D sin-cos position table follows the published code exactly: its first half of channels
  encodes the *column* (w) index and the second half the row, because the MAE helper meshes
  ``(grid_w, grid_h)`` while naming the halves h and w.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from train import interpolants as itp
from train.config import SIZES, ModelConfig, parse_name
from train.errors import UserError

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` with per-sample (N, D) shift/scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """(M,) positions -> (M, dim): ``[sin(pos * w_k), cos(pos * w_k)]``, ``w_k = 10000^(-2k/dim)``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.reshape(-1, 1).double() * omega  # (M, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: int) -> Tensor:
    """(grid*grid, dim) MAE-style table; token n = row * grid + col; first half encodes col."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0, freq_shift: int = 0) -> Tensor:
    """(N,) possibly fractional times -> (N, dim): ``[cos(t f_k), sin(t f_k)]``, ``f_k = P^(-k/(half - s))``
    with ``s = freq_shift``: 0 in the published models, 1 in diffusers' DiT (``downscale_freq_shift``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift))
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


# ----------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (N, T, D), row-major over the patch grid."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, T, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal frequency embedding (256-d) followed by a 2-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, freq_shift: int = 0):
        super().__init__()
        self.frequency_size, self.freq_shift = frequency_size, freq_shift
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        freq = timestep_embedding(t, self.frequency_size, freq_shift=self.freq_shift).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)  # (N, D)


class LabelEmbedder(nn.Module):
    """Class embedding table; row ``num_classes`` is the null class used by classifier-free guidance.

    In training mode labels are replaced by the null class with probability ``dropout_prob``, or
    exactly where ``drop_mask`` is True when the caller draws the mask itself (reproducible runs).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float, null_class: bool):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(null_class), hidden_size)

    def forward(self, labels: Tensor, drop_mask: Tensor | None = None) -> Tensor:
        if drop_mask is None and self.training and self.dropout_prob > 0:
            drop_mask = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        if drop_mask is not None:
            labels = torch.where(drop_mask, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


# ----------------------------------------------------------------------------------------------
# Transformer block and final layer
# ----------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention with the published parameter names (``qkv``, ``proj``, qk-norm)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, impl: str = "sdpa"):
        super().__init__()
        self.num_heads, self.head_dim, self.impl = num_heads, dim // num_heads, impl
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, return_logits: bool = False):
        """(N, T, D) -> (N, T, D); with ``return_logits`` also the attention logits
        ``q k^T / sqrt(head_dim)`` (N, H, T, T) before the softmax (HASTE's distillation), the
        output then computed from their explicit softmax (equal to sdpa up to float rounding)."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, N, H, T, hd)
        q, k, v = qkv.unbind(0)                                       # (N, H, T, hd) each
        q, k = self.q_norm(q), self.k_norm(k)                         # (N, H, T, hd)
        if self.impl == "sdpa" and not return_logits:
            x = F.scaled_dot_product_attention(q, k, v)               # (N, H, T, hd)
        else:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)    # (N, H, T, T)
            x = attn.softmax(dim=-1) @ v                              # (N, H, T, hd)
        out = self.proj(x.transpose(1, 2).reshape(n, t, d))           # (N, T, D)
        return (out, attn) if return_logits else out


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2, the published MLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """DiT/SiT block with adaLN-Zero conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool, attn_impl: str,
                 mlp_norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm, attn_impl)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, return_attn: bool = False):
        """(N, T, D) -> (N, T, D); with ``return_attn`` also the attention logits (N, H, T, T)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        a = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), return_logits=return_attn)
        a, logits = a if return_attn else (a, None)
        x = x + gate_msa.unsqueeze(1) * a                                                         # (N, T, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, T, D)
        return (x, logits) if return_attn else x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map to p*p*C_out values per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C_out)


class ConvProjector(nn.Module):
    """iREPA's projector: one ``Conv2d(D, z_dim, k, padding=k // 2)`` on the token grid.

    As the official code (End2End-Diffusion/iREPA ``ldm/models/sit.py`` and ``jit/projectors.py``,
    ``ProjectionLayer`` with ``projection_layer_type="conv"``): a single convolution with bias, no
    activation and no MLP.  The tokens (N, T, D) are laid out on the H x W grid, H = W = sqrt(T), in
    row-major order (token n = row * W + col, the order of :class:`PatchEmbed`), convolved with zero
    "same" padding, and read back in that order.  The attribute is named ``projection_layer`` as in
    the official code, so a projector's weights are ``projectors.{i}.projection_layer.weight``
    (z_dim, D, k, k).
    """

    def __init__(self, dim: int, z_dim: int, kernel: int):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"conv projector kernel {kernel} is not odd: padding k // 2 keeps the grid only for odd k")
        self.projection_layer = nn.Conv2d(dim, z_dim, kernel_size=kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        h = w = math.isqrt(t)
        if h * w != t:
            raise ValueError(f"the conv projector needs a square token grid, got {t} tokens")
        grid = x.reshape(n, h, w, d).permute(0, 3, 1, 2)   # (N, T, D) -> (N, H, W, D) -> (N, D, H, W)
        z = self.projection_layer(grid)                    # (N, D, H, W) -> (N, z_dim, H, W)
        return z.flatten(2).transpose(1, 2)                # (N, z_dim, H, W) -> (N, T, z_dim), row-major


def build_projector(dim: int, projector_dim: int, z_dim: int, kind: str = "mlp", kernel: int = 3) -> nn.Module:
    """A projector from hidden tokens (N, T, D) to target tokens (N, T, z_dim).

    ``kind="mlp"``: REPA's Linear(D, P) - SiLU - Linear(P, P) - SiLU - Linear(P, z_dim), token-wise;
    ``kind="conv"``: iREPA's :class:`ConvProjector` (``projector_dim`` unused).
    """
    if kind == "conv":
        return ConvProjector(dim, z_dim, kernel)
    if kind != "mlp":
        raise ValueError(f"unknown projector {kind!r}: use 'mlp' or 'conv'")
    return nn.Sequential(
        nn.Linear(dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

@dataclass
class ModelOutput:
    """What ``forward(..., return_hidden=...)`` returns.

    ``out``: the raw network output (N, C_out, H, W), or None when ``head=False``;
    ``hidden``: {layer: (N, T, D)}, layer L = output of block L (1-based), 0 = patch + position
    embedding; ``zs``: projected tokens (N, T, z_dim), one per projector, when projected;
    ``attn``: {block: attention logits (N, H, T, T)} of the blocks in ``return_attn`` (1-based);
    ``sra``: the SRA projector's output (N, T, D) on block ``sra_block``'s tokens, when asked.
    """

    out: Tensor | None
    hidden: dict[int, Tensor] = field(default_factory=dict)
    zs: list[Tensor] = field(default_factory=list)
    attn: dict[int, Tensor] = field(default_factory=dict)
    sra: Tensor | None = None


class DiffusionTransformer(nn.Module):
    """SiT / DiT backbone (they are one architecture), optionally with REPA projectors."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        self.flavour = cfg.flavour
        self.num_classes = cfg.num_classes
        self.x_embedder = PatchEmbed(cfg.in_channels, d, p)
        self.t_embedder = TimestepEmbedder(d, freq_shift=cfg.timestep_freq_shift)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout_prob, cfg.null_class)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, d), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm, cfg.attn_impl, cfg.mlp_norm_eps) for _ in range(cfg.depth)]
        )
        self.projectors = nn.ModuleList([build_projector(d, cfg.projector_dim, z, cfg.projector, cfg.projector_kernel)
                                         for z in cfg.z_dims])
        self.final_layer = FinalLayer(d, p, cfg.out_channels)
        if cfg.sra_projector_dim:  # SRA's head (SimpleHead): Linear(D, P) - SiLU - Linear(P, D)
            self.sra_projector = nn.Sequential(nn.Linear(d, cfg.sra_projector_dim), nn.SiLU(),
                                               nn.Linear(cfg.sra_projector_dim, d))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The published initialisation: xavier linears, sin-cos positions, adaLN-Zero, zero output.

        The projectors are initialised last, so that after the same seed a REPA model (either
        projector) and its vanilla twin draw identical backbone weights.  MLP projectors get xavier
        weights and zero biases; a conv projector keeps PyTorch's default Conv2d initialisation
        (kaiming-uniform, a = sqrt(5), and a uniform bias), redrawn here, as in the official iREPA code,
        whose initialisation touches only linear layers.
        """
        heads = [self.projectors] + ([self.sra_projector] if hasattr(self, "sra_projector") else [])
        projector_linears = {id(m) for h in heads for m in h.modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in projector_linears:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        grid = int(self.cfg.num_tokens**0.5)
        self.pos_embed.data.copy_(sincos_2d(self.cfg.hidden_size, grid).unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for m in self.projectors.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                m.reset_parameters()
        if hasattr(self, "sra_projector"):  # last, after REPA's: the backbone and REPA draws stay as they were
            for m in self.sra_projector.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    @property
    def time_convention(self) -> str:
        return {"repa": "t in [0,1], 0 = data", "sit": "t in [0,1], 1 = data", "dit": "DDPM step 0..999"}[self.flavour]

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, T, p*p*C) -> (N, C, H, W), token order row-major, channels last within a patch."""
        c, p = self.cfg.out_channels, self.cfg.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        return_hidden: Iterable[int] | None = None,
        project: bool = True,
        head: bool = True,
        drop_mask: Tensor | None = None,
        return_attn: Iterable[int] = (),
        sra_block: int | None = None,
    ):
        """Run the network in its own flavour's time (see :func:`predict` for REPA time).

        Without ``return_hidden`` it returns what the published model of its flavour returns: DiT the
        full output, SiT the first ``in_channels`` (velocity), REPA ``(output, [projected tokens])``.
        With ``return_hidden=[...]`` it returns a :class:`ModelOutput`; ``head=False`` stops after the
        deepest block needed (no final layer), ``project=False`` skips the projectors.
        ``return_attn=[blocks]`` (1-based) adds those blocks' attention logits (``ModelOutput.attn``)
        and ``sra_block=s`` the SRA projector's output on block s (``ModelOutput.sra``); both off by
        default, and then nothing is computed differently.
        """
        legacy = return_hidden is None
        wanted = set() if legacy else {int(i) for i in return_hidden}
        if any(not 0 <= i <= len(self.blocks) for i in wanted):
            raise ValueError(f"return_hidden layers must lie in 0..{len(self.blocks)}, got {sorted(wanted)}")
        attn_wanted = {int(i) for i in return_attn}
        if any(not 1 <= i <= len(self.blocks) for i in attn_wanted | ({sra_block} if sra_block is not None else set())):
            raise ValueError(f"return_attn / sra_block blocks must lie in 1..{len(self.blocks)}, got {sorted(attn_wanted)} / {sra_block}")
        if sra_block is not None and not hasattr(self, "sra_projector"):
            raise ValueError("sra_block needs the SRA projector: build the model with sra_projector_dim > 0")
        project = project and len(self.projectors) > 0
        last = len(self.blocks) if head else max(wanted | attn_wanted | ({self.cfg.encoder_depth} if project else {0})
                                                 | ({sra_block} if sra_block is not None else set()))

        x = self.x_embedder(x) + self.pos_embed                  # (N, T, D)
        n, tokens, d = x.shape
        c = self.t_embedder(t) + self.y_embedder(y, drop_mask)    # (N, D)
        hidden = {0: x} if 0 in wanted else {}
        zs: list[Tensor] = []
        attn: dict[int, Tensor] = {}
        sra = None
        for i, block in enumerate(self.blocks[:last], start=1):
            if i in attn_wanted:
                x, attn[i] = block(x, c, return_attn=True)        # (N, T, D), (N, H, T, T)
            else:
                x = block(x, c)                                   # (N, T, D)
            if i in wanted:
                hidden[i] = x
            if project and i == self.cfg.encoder_depth:
                zs = [proj(x) for proj in self.projectors]        # [(N, T, z_dim)]
            if i == sra_block:
                sra = self.sra_projector(x)                       # (N, T, D)
        out = None
        if head:
            out = self.unpatchify(self.final_layer(x, c))         # (N, C_out, H, W)
        if not legacy:
            return ModelOutput(out, hidden, zs, attn, sra)
        if self.flavour == "repa":
            return out, zs
        if self.flavour == "sit" and self.cfg.learn_sigma:
            return out[:, : self.cfg.in_channels]
        return out


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

def build(name: str = "SiT-XL/2", **overrides) -> DiffusionTransformer:
    """Build a model by its published name, e.g. ``build("SiT-B/2", z_dims=(768,))``."""
    return DiffusionTransformer(ModelConfig(name=name, **overrides))


def num_params(model: nn.Module) -> int:
    """All parameters, the frozen position table included (as the published counts do)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Loading what users have
# ----------------------------------------------------------------------------------------------

_WIDTH_TO_SIZE = {width: size for size, (_, width, _) in SIZES.items()}


def _unwrap(obj, weights: str) -> tuple[dict, dict]:
    """A checkpoint object -> (state dict, metadata).  Accepts flat state dicts, DiT/SiT/REPA training
    checkpoints ``{model, ema, opt, args[, steps]}`` and this toolkit's own checkpoints."""
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint holds a {type(obj).__name__}, not a state dict or checkpoint dict: pass a DiT/SiT/REPA or repa-toolkit checkpoint")
    meta: dict = {}
    if "model_config" in obj:  # this toolkit's checkpoints
        meta["model_config"] = obj["model_config"]
        meta["train_config"] = obj.get("train_config")
        meta["step"] = obj.get("step")
    if "args" in obj:
        args = obj["args"]
        meta["args"] = vars(args) if hasattr(args, "__dict__") else dict(args) if isinstance(args, dict) else {}
        meta["step"] = obj.get("steps", obj.get("train_steps"))
    if "model" in obj or "ema" in obj:
        if weights not in ("ema", "model"):
            raise UserError(f"weights={weights!r} is not valid: use 'ema' or 'model'")
        key = weights if weights in obj else ("model" if "model" in obj else "ema")
        meta["weights"] = key
        sd = obj[key]
    else:
        sd = obj
        meta["weights"] = "flat"
    if not isinstance(sd, dict) or "pos_embed" not in {k.removeprefix("module.") for k in sd}:
        raise UserError("checkpoint has no 'pos_embed' tensor: it is not a DiT/SiT/REPA model (pass the model checkpoint, not an optimizer or encoder file)")
    sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}
    return sd, meta


def infer_config(sd: dict, name: str | None = None, flavour: str = "auto", meta: dict | None = None,
                 filename: str = "", **overrides) -> ModelConfig:
    """Size, patch, channels, classes, projectors and flavour from the tensors themselves.

    Projectors: REPA's MLP (``projectors.{i}.{0,2,4}.weight``) or iREPA's conv
    (``projectors.{i}.projection_layer.weight``, 4-D: its kernel size is read from the shape).

    What tensors cannot tell: the head count (taken from the published size of that width), the
    alignment depth (from the checkpoint's ``args.encoder_depth``, else the paper's default for the
    size) and DiT vs SiT for 8-channel outputs (``flavour=``, the ``args.model`` name, or a file name
    starting with ``DiT``/``SiT``; otherwise an error asks for ``flavour``).
    """
    meta = meta or {}
    args = meta.get("args", {})
    required = ("pos_embed", "x_embedder.proj.weight", "final_layer.linear.weight", "y_embedder.embedding_table.weight",
                "blocks.0.attn.qkv.weight")
    if missing := [k for k in required if k not in sd]:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"checkpoint lacks the tensor {missing[0]!r}{more}: it is incomplete or not a DiT/SiT/REPA "
                        "model; export or download it again")
    pos, proj_w = sd["pos_embed"], sd["x_embedder.proj.weight"]
    width, tokens = pos.shape[-1], pos.shape[1]
    patch, in_ch = proj_w.shape[-1], proj_w.shape[1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    out_ch = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    n_proj = len({k.split(".")[1] for k in sd if k.startswith("projectors.")})
    conv = [sd.get(f"projectors.{i}.projection_layer.weight") for i in range(n_proj)]  # iREPA: (z_dim, D, k, k)
    conv = [w if w is not None and w.ndim == 4 else None for w in conv]
    if any(w is None for w in conv) and any(w is not None for w in conv):
        raise UserError("checkpoint mixes conv and MLP projectors, which one ModelConfig cannot describe: pass a checkpoint with one projector kind")
    projector = "conv" if n_proj and conv[0] is not None else "mlp"
    if projector == "conv":
        if len({w.shape[-1] for w in conv}) > 1 or any(w.shape[-1] != w.shape[-2] for w in conv):
            raise UserError(f"checkpoint's conv projectors have kernels {[tuple(w.shape[-2:]) for w in conv]}: one square kernel size is supported")
        z_dims, proj_dim, kernel = tuple(w.shape[0] for w in conv), 2048, conv[0].shape[-1]
    else:
        z_dims = tuple(sd[f"projectors.{i}.4.weight"].shape[0] for i in range(n_proj))
        proj_dim, kernel = (sd["projectors.0.0.weight"].shape[0] if n_proj else 2048), 3
    qk_norm = any(".attn.q_norm." in k for k in sd)
    sra_dim = sd["sra_projector.0.weight"].shape[0] if "sra_projector.0.weight" in sd else 0
    size = _WIDTH_TO_SIZE.get(width)
    if size is None and name is None:
        raise UserError(f"no published size has width {width}: pass name= (e.g. 'SiT-B/2') with depth/hidden_size/num_heads overrides")
    num_classes = int(args.get("num_classes", rows - 1))
    null_class = rows == num_classes + 1

    if flavour == "auto":
        hint = str(args.get("model", "")) or (name or "") or os.path.basename(filename)
        if n_proj or out_ch == in_ch:
            flavour = "repa"
        elif hint.startswith("DiT"):
            flavour = "dit"
        elif hint.startswith("SiT"):
            flavour = "sit"
        else:
            raise UserError("cannot tell a DiT from a SiT checkpoint (both have learn-sigma outputs): pass flavour='dit' or flavour='sit'")
    fam = "DiT" if flavour == "dit" else "SiT"
    inferred = f"{fam}-{size}/{patch}" if size else None
    if name is not None:
        _, nsize, npatch = parse_name(name)
        if npatch != patch or (size and nsize != size):
            raise UserError(f"checkpoint holds {inferred or 'custom-size'} weights (depth {depth}, width {width}, patch {patch}) but name={name!r}: pass the matching name or omit it")
    grid = int(round(tokens**0.5))
    kw = dict(
        name=name or inferred, flavour=flavour, input_size=grid * patch, in_channels=in_ch,
        learn_sigma=out_ch == 2 * in_ch, num_classes=num_classes, null_class=null_class,
        z_dims=z_dims, projector_dim=proj_dim, projector=projector, projector_kernel=kernel, qk_norm=qk_norm,
        depth=depth, hidden_size=width, sra_projector_dim=sra_dim,
    )
    if "encoder_depth" in args:
        kw["encoder_depth"] = int(args["encoder_depth"])
    kw.update(overrides)
    return ModelConfig(**kw)


def load(path: str | os.PathLike, name: str | None = None, flavour: str = "auto", weights: str = "ema",
         device: str | torch.device = "cpu", **overrides) -> DiffusionTransformer:
    """Load any DiT / SiT / REPA / repa-toolkit checkpoint, or a diffusers ``DiTTransformer2DModel``
    folder (or the pipeline folder holding ``transformer/``; :mod:`train.diffusers_dit`), into a model
    in eval mode.

    ``weights`` picks ``"ema"`` (default) or ``"model"`` from training checkpoints; flat state dicts
    (the released ``DiT-XL-2-256x256.pt``, ``SiT-XL-2-256x256.pt``, REPA's ``last.pt``) are used as
    they are.  Legacy checkpoints that pickle an ``argparse.Namespace`` load with
    ``weights_only=True`` and that one class allow-listed: no code from the file runs.  The model
    carries ``flavour`` and ``time_convention``; :func:`predict` converts REPA time for it, and
    ``train_config``: the run's TrainConfig as a dict for this toolkit's checkpoints, else None (the
    probes read the target normalisation the run trained with from it).
    """
    from train.checkpoints import read_checkpoint
    from train.diffusers_dit import diffusers_dit_dir, read_diffusers_dit

    if (folder := diffusers_dit_dir(path)) is not None:  # diffusers' DiTTransformer2DModel (or its pipeline)
        if name is not None or flavour not in ("auto", "dit"):
            raise UserError(f"{path} is a diffusers DiT: it loads as flavour 'dit' with the size its config.json says (omit name/flavour)")
        cfg, state, source = read_diffusers_dit(folder, **overrides)
        state["pos_embed"] = sincos_2d(cfg.hidden_size, cfg.input_size // cfg.patch_size).unsqueeze(0)
        model = DiffusionTransformer(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"diffusers DiT does not fit {cfg.name}: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        model.source, model.train_config = source, None
        return model.to(device).eval()
    obj = read_checkpoint(path)
    sd, meta = _unwrap(obj, weights)
    if "model_config" in meta:
        cfg = ModelConfig.from_dict({**meta["model_config"], **overrides})
        if name and name != cfg.name:
            raise UserError(f"checkpoint holds a {cfg.name} model but name={name!r}: pass name={cfg.name!r} or omit it")
    else:
        cfg = infer_config(sd, name, flavour, meta, filename=str(path), **overrides)
    if flavour not in ("auto", cfg.flavour):
        cfg.flavour = flavour
    model = DiffusionTransformer(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint does not fit {cfg.name}: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}: pass the matching name/flavour or a checkpoint of this model")
    st = os.stat(path)  # "file": which file was at that path (a run retrained in place is another one)
    model.source = {"path": str(FsPath(path).resolve()), "file": f"{st.st_size}:{st.st_mtime_ns}", "weights": meta["weights"],
                    "step": meta.get("step"), "flavour": cfg.flavour, "name": cfg.name}
    model.train_config = meta.get("train_config")
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# Noise-level API (REPA time, any flavour)
# ----------------------------------------------------------------------------------------------

def null_labels(model: DiffusionTransformer, n: int, device=None) -> Tensor:
    """The null-class labels (id ``num_classes``) the paper's analysis feeds."""
    if not model.cfg.null_class:
        raise UserError(f"{model.cfg.name} has no null-class row (trained without label dropout): pass real labels")
    return torch.full((n,), model.num_classes, dtype=torch.long, device=device)


def model_time(model: DiffusionTransformer, t: Tensor, path: str = "linear") -> tuple[Tensor, Tensor]:
    """REPA time (N,) -> (the time input the model's flavour expects, the input scale factor)."""
    if model.flavour == "repa":
        return t, torch.ones_like(t)
    if model.flavour == "sit":
        return itp.to_sit_time(t), torch.ones_like(t)
    step, scale = itp.to_ddpm(t, path)
    return step.to(t.device), scale.to(t.device, t.dtype)


def predict(
    model: DiffusionTransformer,
    x_t: Tensor,
    t: Tensor | float,
    y: Tensor | None = None,
    return_hidden: Sequence[int] = (),
    head: bool = True,
    project: bool = False,
    path: str = "linear",
) -> ModelOutput:
    """Velocity (REPA time) and hidden states of any flavour for ``x_t`` noised to REPA time ``t``.

    ``x_t = alpha_t x + sigma_t eps`` (``train.interpolants.interpolate``).  SiT is fed ``1 - t`` and its
    velocity negated; DiT is fed the DDPM step of nearest log-SNR and ``x_t / sqrt(alpha^2 + sigma^2)``,
    and its eps prediction is turned into a velocity with ``x_hat = (x_t - sigma eps) / alpha``
    (alpha clamped at 1e-4 near t = 1, where DDPM's last step has abar = 4e-5 anyway).
    ``y=None`` feeds the null class.  ``out`` of the result is the REPA-time velocity.
    """
    n = x_t.shape[0]
    t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(n) if torch.as_tensor(t).ndim == 0 else t.to(x_t)
    y = null_labels(model, n, x_t.device) if y is None else y
    t_in, scale = model_time(model, t, path)
    res = model(x_t * scale.reshape(-1, 1, 1, 1), t_in, y, return_hidden=return_hidden, head=head, project=project)
    if res.out is None:
        return res
    c = model.cfg.in_channels
    raw = res.out[:, :c]
    if model.flavour == "repa":
        v = raw
    elif model.flavour == "sit":
        v = -raw
    else:
        p = itp.get_path(path)
        tb = t.reshape(-1, 1, 1, 1)
        a, s, da, ds = p.coefficients(tb)
        x_hat = (x_t - s * raw) / a.clamp_min(1e-4)
        v = da * x_hat + ds * raw
    return ModelOutput(v, res.hidden, res.zs)
