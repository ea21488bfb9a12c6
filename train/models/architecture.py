"""The SiT/DiT network, read top-down: helpers, embedders, block, final layer, projectors, model.

:mod:`train.models.loading` is the public face: it re-exports everything here and adds the registry, loading
of checkpoints (``infer_config``, ``load``) and the flavour-independent noise-level API (``predict``).

One architecture serves the three published flavours (DiT, SiT, REPA; see ``train.run.config``): the
parameter names and shapes are exactly the published ones, so their state dicts load with
``load_state_dict(strict=True)``.  Differences from the reference code, none of which changes a number:

* attention runs through ``scaled_dot_product_attention`` (``attn_impl="math"`` spells it out);
* the S sizes work (REPA's reference builds SiT-S's final layer for width 768 and crashes);
* hidden states come out of ``forward(..., return_hidden=[...])`` instead of hooks; the projectors run
  only when asked (``project=True``), never while sampling;
* the 2-D sin-cos position table follows the published code exactly: its first half of channels
  encodes the *column* (w) index and the second half the row, because the MAE helper meshes
  ``(grid_w, grid_h)`` while naming the halves h and w.

REG (``ModelConfig.reg_dim > 0``; arXiv 2507.01467, official code Martinser/REG ``models/sit.py``)
adds one token, as the official code does: the noisy global token (N, reg_dim) goes through
``cls_projectors2`` (Linear reg_dim -> D) and ``wg_norm`` (LayerNorm with affine weights, eps 1e-6)
and is put *in front* of the patch tokens (index 0) after their position embedding; the official
table has a zero row for it (``get_2d_sincos_pos_embed(..., cls_token=1, extra_tokens=1)``), so the
token gets no position and this model keeps the (1, T, D) patch table (loading maps the official
(1, T + 1, D) table, see :func:`train.models.loading.infer_config`).  The token attends with the patches in
every block; the final layer's shared adaLN-modulated norm is followed by ``linear_cls`` (D ->
reg_dim, zero-initialised) on token 0 and by ``linear`` on the patches.  Hidden states, the
projectors and the output grid address the T patch tokens only (the official code also projects
token 0 and aligns it with the encoder's class token; here REPA's loss sees patches only).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.models.config import ModelConfig

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
        if self.dropout_prob >= 1.0:  # trained with every label dropped (unconditional): only the null class was learnt
            drop_mask = torch.ones_like(labels, dtype=torch.bool)
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


# GELU(tanh) = x/2 (1 + tanh(z)) = x sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3): the same function
_GELU_2Z = 2 * math.sqrt(2 / math.pi)
_FAST_GELU = [False]  # set by inference_gelu(): sampling (train.evaluation.sampling) turns it on


def gelu_tanh_inference(h: Tensor) -> Tensor:
    """GELU(tanh) of ``h`` as ``h * sigmoid(2z)`` in one extra buffer, without autograd.

    The same function as ``F.gelu(h, approximate="tanh")``; it rounds differently (at most 5e-7 apart on
    float32: tests/test_fast_paths.py) and takes about a third of ATen's kernel on this project's CPUs, whose
    vectorised tanh is slow (``python benchmarks/bench_sampling.py``).  ``h`` is left unchanged.
    """
    u = h * h                                                                  # x^2
    u.mul_(_GELU_2Z * 0.044715).add_(_GELU_2Z).mul_(h)                          # 2z
    return u.sigmoid_().mul_(h)                                                # x sigmoid(2z)


@contextmanager
def inference_gelu(enabled: bool = True) -> Iterator[None]:
    """Within it, MLPs run :func:`gelu_tanh_inference` on autograd-free CPU float32 forwards.

    Sampling uses it (most of a training run's evaluation time is sampling's model calls); training, its
    targets (SRA's EMA teacher) and the probes keep ATen's kernel, so their bits do not depend on it.
    """
    before, _FAST_GELU[0] = _FAST_GELU[0], enabled
    try:
        yield
    finally:
        _FAST_GELU[0] = before


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2, the published MLP (GELU by :func:`gelu_tanh_inference` inside
    :func:`inference_gelu` when autograd is off on the CPU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)                                                        # (..., hidden)
        fast = _FAST_GELU[0] and not torch.is_grad_enabled() and h.device.type == "cpu" and h.dtype == torch.float32
        return self.fc2(gelu_tanh_inference(h) if fast else self.act(h))       # (..., D)


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
    """adaLN-modulated LayerNorm and a linear map to p*p*C_out values per token.

    With ``reg_dim > 0`` (REG) also ``linear_cls`` (D -> reg_dim), the official name, for the
    velocity of the global token at index 0: see :meth:`forward_reg`.
    """

    def __init__(self, dim: int, patch_size: int, out_channels: int, reg_dim: int = 0):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        if reg_dim:
            self.linear_cls = nn.Linear(dim, reg_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C_out)

    def forward_reg(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """REG: tokens (N, 1 + T, D), global token first -> (patch outputs, global-token velocity)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        x = modulate(self.norm_final(x), shift, scale)             # (N, 1 + T, D)
        return self.linear(x[:, 1:]), self.linear_cls(x[:, 0])     # (N, T, p*p*C_out), (N, reg_dim)


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
    ``sra``: the SRA projector's output (N, T, D) on block ``sra_block``'s tokens, when asked;
    ``cls``: REG models only, the global token's velocity (N, reg_dim) (None without REG or head).
    With REG, ``hidden`` and ``zs`` still hold the T patch tokens only (the global token, index 0
    of the sequence, is dropped from them); the patch tokens have attended to it in every block.
    """

    out: Tensor | None
    hidden: dict[int, Tensor] = field(default_factory=dict)
    zs: list[Tensor] = field(default_factory=list)
    attn: dict[int, Tensor] = field(default_factory=dict)
    sra: Tensor | None = None
    cls: Tensor | None = None


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
        self.final_layer = FinalLayer(d, p, cfg.out_channels, cfg.reg_dim)
        if cfg.sra_projector_dim:  # SRA's head (SimpleHead): Linear(D, P) - SiLU - Linear(P, D)
            self.sra_projector = nn.Sequential(nn.Linear(d, cfg.sra_projector_dim), nn.SiLU(),
                                               nn.Linear(cfg.sra_projector_dim, d))
        if cfg.reg_dim:  # REG's input embedding of the noisy global token (official names)
            self.cls_projectors2 = nn.Linear(cfg.reg_dim, d)
            self.wg_norm = nn.LayerNorm(d, elementwise_affine=True, eps=1e-6)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The published initialisation: xavier linears, sin-cos positions, adaLN-Zero, zero output.

        The projectors are initialised last, so that after the same seed a REPA model (either
        projector) and its vanilla twin draw identical backbone weights.  MLP projectors get xavier
        weights and zero biases; a conv projector keeps PyTorch's default Conv2d initialisation
        (kaiming-uniform, a = sqrt(5), and a uniform bias), redrawn here, as in the official iREPA code,
        whose initialisation touches only linear layers.

        REG's layers come after everything else (so a REG model and its REPA twin share backbone and
        projectors): ``cls_projectors2`` xavier with zero bias, ``wg_norm`` ones and zeros,
        ``final_layer.linear_cls`` zero, as the official code initialises them.
        """
        heads = [self.projectors] + ([self.sra_projector] if hasattr(self, "sra_projector") else [])
        late = {id(m) for h in heads for m in h.modules()}
        reg = [self.cls_projectors2, self.final_layer.linear_cls] if self.cfg.reg_dim else []
        late |= {id(m) for m in reg}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in late:
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
        if self.cfg.reg_dim:
            nn.init.xavier_uniform_(self.cls_projectors2.weight)
            nn.init.zeros_(self.cls_projectors2.bias)
            self.wg_norm.reset_parameters()
            nn.init.zeros_(self.final_layer.linear_cls.weight)
            nn.init.zeros_(self.final_layer.linear_cls.bias)

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
        cls_token: Tensor | None = None,
    ):
        """Run the network in its own flavour's time (see :func:`predict` for REPA time).

        Without ``return_hidden`` it returns what the published model of its flavour returns: DiT the
        full output, SiT the first ``in_channels`` (velocity), REPA ``(output, [projected tokens])``.
        With ``return_hidden=[...]`` it returns a :class:`ModelOutput`; ``head=False`` stops after the
        deepest block needed (no final layer), ``project=False`` skips the projectors.
        ``return_attn=[blocks]`` (1-based) adds those blocks' attention logits (``ModelOutput.attn``)
        and ``sra_block=s`` the SRA projector's output on block s (``ModelOutput.sra``); both off by
        default, and then nothing is computed differently.  With REG the logits cover the 1 + T tokens.

        REG models need ``cls_token``, the noisy global token (N, reg_dim) at the same t as ``x``;
        their legacy return is ``(output, [projected tokens], global-token velocity)`` as the official
        REG code's.
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

        reg = self.cfg.reg_dim > 0
        if reg and cls_token is None:
            raise ValueError("this REG model denoises a global token beside the latents: pass cls_token (N, reg_dim)")
        x = self.x_embedder(x) + self.pos_embed                  # (N, T, D)
        n, tokens, d = x.shape
        if reg:  # the global token in front, without a position (the official table's zero row)
            g = self.wg_norm(self.cls_projectors2(cls_token.to(x.dtype)))  # (N, reg_dim) -> (N, D)
            x = torch.cat([g.unsqueeze(1), x], dim=1)                  # (N, 1 + T, D)
        patches = (lambda h: h[:, 1:]) if reg else (lambda h: h)        # (N, 1 + T, D) -> (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, drop_mask)    # (N, D)
        hidden = {0: patches(x)} if 0 in wanted else {}
        zs: list[Tensor] = []
        attn: dict[int, Tensor] = {}
        sra = None
        for i, block in enumerate(self.blocks[:last], start=1):
            if i in attn_wanted:
                x, attn[i] = block(x, c, return_attn=True)        # (N, [1 +] T, D), (N, H, [1 +] T, [1 +] T)
            else:
                x = block(x, c)                                   # (N, [1 +] T, D)
            if i in wanted:
                hidden[i] = patches(x)                            # (N, T, D)
            if project and i == self.cfg.encoder_depth:
                zs = [proj(patches(x)) for proj in self.projectors]  # [(N, T, z_dim)]
            if i == sra_block:
                sra = self.sra_projector(patches(x))              # (N, T, D)
        out = cls = None
        if head and reg:
            out, cls = self.final_layer.forward_reg(x, c)         # (N, T, p*p*C_out), (N, reg_dim)
            out = self.unpatchify(out)                            # (N, C_out, H, W)
        elif head:
            out = self.unpatchify(self.final_layer(x, c))         # (N, C_out, H, W)
        if not legacy:
            return ModelOutput(out, hidden, zs, attn, sra, cls)
        if reg:
            return out, zs, cls
        if self.flavour == "repa":
            return out, zs
        if self.flavour == "sit" and self.cfg.learn_sigma:
            return out[:, : self.cfg.in_channels]
        return out
