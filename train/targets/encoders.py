"""Frozen target encoders for REPA behind one interface, and a small built-in teacher.

An :class:`Encoder` maps uint8 images ``(B, 3, H, W)`` to float32 patch tokens ``(B, T, D)`` with
``T = grid * grid``. Preprocessing is part of it, as in REPA: ``x / 255``, bicubic resize to the
encoder's resolution (224 px for patch-14 models, 256 px for patch-16 ones, so both give 16 x 16
tokens; no antialiasing, as the reference), then the model's own mean/std (CLIP's for CLIP).
Targets are

* ``"norm"``: the final-norm patch tokens with class and register tokens dropped (DINOv2's
  ``x_norm_patchtokens``); DINOv2, DINO v1, MoCo v3, SigLIP, I-JEPA and the built-in teacher;
* ``"prenorm"``: the last block's patch tokens without the final norm; MAE and CLIP (REPA);
* ``"features"``: a hierarchical trunk's last-stage map, flattened row-major (SAM2's Hiera image
  encoder: stride 32, so 16 x 16 tokens at 512 px; the trunk has no final norm).

DINOv3 (``dinov3-vit-{s,b,l}``, timm ``vit_*_patch16_dinov3.lvd1689m``, RoPE, 4 registers) is a
``"norm"`` encoder at 256 px: its final-norm patch tokens without the class and register tokens.

If ``grid`` differs from the native token grid, the tokens are resampled on their 2-D layout:
area pooling (mean over blocks) for an integer shrink factor, bilinear interpolation otherwise.

The published architectures are built with timm. Weights: ``weights=None`` uses timm's published weights --
from the local HF / torch-hub cache when present, downloaded only when ``HF_HUB_OFFLINE`` is unset
and the server answers; otherwise one :class:`~train.errors.UserError` line comes at once.
``weights=PATH`` loads a local checkpoint (original or timm format; position embeddings are
resampled to the encoder's resolution by timm), or a transformers ``save_pretrained`` directory
(:mod:`train.targets.hf_encoders`; told from a timm directory by its ``config.json``). ``random_init=True`` gives random weights of the
same architecture (tests, notebooks). Each encoder carries a ``provenance`` dict for results.

Built-in teachers (:data:`train.targets.teacher.TEACHERS`: ``builtin-dense``, ``builtin-ssl``,
``builtin-contrastive``, ``builtin-supervised``, ``builtin-teacher``): small ViTs with 8 x 8 tokens of width
64 that this project trains on its built-in data on first use and caches (:mod:`train.targets.teacher`); the
shipped ones (``fashion-ssl``, ``fashion-supervised``, ``fashion-contrastive``, ``fashion-contrastive-2x``: width 128, committed and
sha256-checked, :mod:`train.targets.shipped`); their target is the final-norm patch tokens.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from train.run.checkpoints import repa_cache_dir  # noqa: F401 (re-exported)
from train.errors import UserError
from train.data.latents import HF_ENDPOINT, download_possible, hf_cached_file
from train.targets.spec import EncoderSpec  # noqa: F401 (re-exported)
from train.targets.teacher import (TEACHER_MEAN, TEACHER_STD, TEACHERS, TeacherConfig, TeacherViT,  # noqa: F401 (re-exported)
                           fit_classifier, linear_probe_accuracy, load_teacher, teacher_path, train_builtin_teacher)

# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def _dinov2(size: str, reg: bool) -> EncoderSpec:
    return EncoderSpec(f"vit_{size}_patch14_{'reg4_' if reg else ''}dinov2.lvd142m", 14, 224,
                       hf=("dinov2_with_registers",) if reg else ("dinov2",))


_CLIP, _SIGLIP = ("clip_vision_model", "clip"), ("siglip_vision_model", "siglip")


TEACHER = "builtin-teacher"  # the first built-in teacher (supervised, on shapes); the others in TEACHERS
ENCODERS: dict[str, EncoderSpec] = {
    **{f"dinov2-vit-{s[0]}{'-reg' if reg else ''}": _dinov2(s, reg)
       for reg in (False, True) for s in ("small", "base", "large", "giant")},
    "dinov1-vit-b": EncoderSpec("vit_base_patch16_224.dino", 16, 256, hf=("vit",)),
    "mae-vit-l": EncoderSpec("vit_large_patch16_224.mae", 16, 256, target="prenorm", hf=("vit_mae",)),
    # MoCo v3 weights are not in timm: load the original checkpoint (prefix module.base_encoder.)
    "mocov3-vit-b": EncoderSpec("vit_base_patch16_224", 16, 256, hub=False, strip_prefix="base_encoder."),
    "mocov3-vit-l": EncoderSpec("vit_large_patch16_224", 16, 256, hub=False, strip_prefix="base_encoder."),
    "clip-vit-l": EncoderSpec("vit_large_patch14_clip_quickgelu_224.openai", 14, 224, target="prenorm", hf=_CLIP),
    "siglip-vit-b": EncoderSpec("vit_base_patch16_siglip_256.webli", 16, 256, hf=_SIGLIP),
    "ijepa-vit-h": EncoderSpec("vit_huge_patch14_gap_224.in1k_ijepa", 14, 224, hf=("ijepa",)),
    **{f"dinov3-vit-{s[0]}": EncoderSpec(f"vit_{s}_patch16_dinov3.lvd1689m", 16, 256, hf=("dinov3_vit",))
       for s in ("small", "base", "large")},
    # SAM2's image encoder trunk (Hiera): stride 32, so 512 px gives 16 x 16 tokens
    **{f"sam2-hiera-{s[0] if s != 'base_plus' else 'b+'}": EncoderSpec(f"sam2_hiera_{s}.fb_r896", 32, 512,
                                                                       target="features")
       for s in ("tiny", "small", "base_plus")},
    "sam2-hiera-l": EncoderSpec("sam2_hiera_large.fb_r1024", 32, 512, target="features"),
    **{name: EncoderSpec(f"repa-{name}", cfg.patch, cfg.image_size, hub=False) for name, cfg in TEACHERS.items()},
}

# ----------------------------------------------------------------------------------------------
# The encoder module
# ----------------------------------------------------------------------------------------------


def resample_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, g*g, D)`` -> ``(B, grid*grid, D)`` on the square token layout: area pooling when
    ``g`` is a multiple of ``grid``, bilinear interpolation (antialiased when shrinking) otherwise."""
    b, t, d = tokens.shape
    g = math.isqrt(t)
    if g * g != t:
        raise ValueError(f"{t} tokens do not form a square grid")
    if g == grid:
        return tokens
    x = tokens.transpose(1, 2).reshape(b, d, g, g)
    if g % grid == 0:
        x = F.avg_pool2d(x, g // grid)
    else:
        x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False, antialias=grid < g)
    return x.flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    """A frozen vision encoder: uint8 images ``(B, 3, H, W)`` -> float32 tokens ``(B, grid**2, dim)``.

    Attributes: ``name``, ``dim``, ``grid`` (output tokens per side), ``native_grid``,
    ``resolution``, ``provenance`` (a JSON-able dict recorded with results). Always in eval mode,
    parameters frozen, forward under ``torch.no_grad()``.
    """

    def __init__(self, name: str, spec: EncoderSpec, model: nn.Module, mean: tuple[float, ...],
                 std: tuple[float, ...], weights: str, grid: int | None = None) -> None:
        super().__init__()
        self.name, self.spec, self.model = name, spec, model
        self.dim: int = int(getattr(model, "num_features", None) or model.embed_dim)
        self.resolution, self.native_grid = spec.resolution, spec.grid
        self.grid: int = grid or spec.grid
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        resample = "none" if self.grid == spec.grid else ("area" if spec.grid % self.grid == 0 else "bilinear")
        self.provenance: dict[str, Any] = {
            "name": name, "architecture": spec.arch, "weights": weights, "resolution": spec.resolution,
            "patch": spec.patch, "native_grid": spec.grid, "grid": self.grid, "resample": resample,
            "target": spec.target, "dim": self.dim, "mean": list(mean), "std": list(std),
        }

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> normalised float ``(B, 3, resolution, resolution)``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise TypeError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.mean.device).float() / 255.0
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if hasattr(self.model, "target_tokens"):  # a transformers model (train.targets.hf_encoders)
            tokens = self.model.target_tokens(x, self.spec.target)
        elif self.spec.target == "features":  # hierarchical trunk: (B, H, W, C) -> (B, H*W, C)
            tokens = self.model.forward_features(x).flatten(1, 2)
        elif self.spec.target == "prenorm":
            tokens = self.model.forward_intermediates(x, indices=1, norm=False, output_fmt="NLC",
                                                      intermediates_only=True)[-1]
        else:
            tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        return resample_tokens(tokens, self.grid).float()


    @torch.no_grad()
    def attention(self, images: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """Attention logits (B, heads, T, T) of the 1-based blocks ``layers``, over the patch tokens
        only: the class and register rows and columns are dropped before any softmax (HASTE), so a
        softmax over the last axis is renormalised over patches.  On the native token grid (the
        caller checks it matches the model's).  The built-in teachers and timm ViTs (the DINOv2,
        DINO, MAE, MoCo v3, CLIP, SigLIP, I-JEPA encoders) have them; others refuse in one line."""
        x = self.preprocess(images)
        model, layers = self.model, tuple(int(i) for i in layers)
        depth = len(getattr(model, "blocks", ()))
        if not layers or min(layers) < 1 or max(layers) > depth:
            raise UserError(f"attention layers {list(layers)} are not blocks of encoder {self.name} (1..{depth}): "
                            "set attn_teacher_layers to 1-based blocks that exist")
        if isinstance(model, TeacherViT):
            maps = model.attention_logits(x, layers)
            return [maps[i].float() for i in layers]
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer) or getattr(model, "rope", None) is not None:
            raise UserError(f"encoder {self.name} does not give attention maps here (only the built-in teachers and timm "
                            "ViTs do): pick another encoder or set attn_coeff=0")
        z = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))  # (B, P + T, D)
        p, out = model.num_prefix_tokens, {}
        for i, blk in enumerate(model.blocks, start=1):
            if i in layers:
                a, h = blk.attn, blk.norm1(z)
                b, n, c = h.shape
                q, k, _ = a.qkv(h).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
                q, k = a.q_norm(q), a.k_norm(k)
                out[i] = ((q * a.scale) @ k.transpose(-2, -1))[:, :, p:, p:].float()    # (B, H, T, T) patches only
            if i >= max(layers):
                break
            z = blk(z)
        return [out[i] for i in layers]


# ----------------------------------------------------------------------------------------------
# Loading timm encoders
# ----------------------------------------------------------------------------------------------

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                 "open_clip_pytorch_model.bin")


def _needs_weights(name: str, spec: EncoderSpec) -> str:
    where = " or put it in the HF cache with HF_HUB_OFFLINE=1" if spec.hub else ""
    return (f"encoder {name} needs weights: pass --encoder-weights PATH (a .pth/.safetensors file "
            f"or HF directory){where}")


def _weights_file(name: str, spec: EncoderSpec, weights: str | os.PathLike) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir():
        found = [path / f for f in _WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise UserError(f"no weights file ({', '.join(_WEIGHT_FILES)}) in {path} — {_needs_weights(name, spec)}")
        return found[0]
    if not path.is_file():
        raise UserError(f"encoder weights {path} not found — {_needs_weights(name, spec)}")
    return path


def _cached_weights(arch: str) -> str | None:
    """Local copy of timm's published weights for ``arch`` (HF cache or torch-hub cache)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        hit = hf_cached_file(cfg.hf_hub_id, names)
        if hit:
            return hit
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return str(path)
    return None


def _download_url(arch: str) -> str | None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    return (HF_ENDPOINT if cfg.hf_hub_id else cfg.url) or None


# Some MoCo v3 ViT checkpoints (the released ViT-L) carry a naming bug inside blocks 13 and 14:
# blocks.13.norm13 / blocks.13.mlp.fc13 are timm's norm1 / mlp.fc1, blocks.14.norm14 /
# blocks.14.mlp.fc14 are norm2 / mlp.fc2 (the fix REPA's loader and others apply).
_MOCOV3_RENAMES = (("blocks.13.norm13.", "blocks.13.norm1."), ("blocks.13.mlp.fc13.", "blocks.13.mlp.fc1."),
                   ("blocks.14.norm14.", "blocks.14.norm2."), ("blocks.14.mlp.fc14.", "blocks.14.mlp.fc2."))


def _mocov3_key(key: str) -> str:
    for old, new in _MOCOV3_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _strip_prefix(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Keys of a (MoCo v3) checkpoint under ``prefix``, prefix removed, projection head dropped,
    the norm13/fc13/norm14/fc14 names mapped onto timm's; a checkpoint without the prefix keeps its
    keys (renames aside). timm already strips ``module.``."""
    from timm.models import load_state_dict

    state = load_state_dict(str(path))
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(prefix + "head.")}
    return {_mocov3_key(k): v for k, v in state.items()}


def _build_timm(name: str, spec: EncoderSpec, weights: str | os.PathLike | None,
                random_init: bool) -> tuple[nn.Module, str]:
    """The timm model of ``spec`` with its weights, and a description of their source."""
    import timm

    kwargs = dict(num_classes=0, **({} if spec.target == "features" else {"img_size": spec.resolution}),
                  **dict(spec.timm_kwargs))
    if random_init:
        return timm.create_model(spec.arch, pretrained=False, **kwargs), "random-init"
    if weights is not None:
        path = _weights_file(name, spec, weights)
        overlay = dict(state_dict=_strip_prefix(path, spec.strip_prefix)) if spec.strip_prefix else dict(file=str(path))
        source = f"file:{path.resolve()}"
    elif not spec.hub:
        raise UserError(_needs_weights(name, spec))
    elif cached := _cached_weights(spec.arch):
        overlay, source = dict(file=cached), f"cache:{cached}"
    elif (url := _download_url(spec.arch)) and download_possible(url):
        overlay, source = None, f"timm:{spec.arch}"
    else:
        raise UserError(_needs_weights(name, spec))
    try:
        model = timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, KeyError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"cannot load {source} into {spec.arch} ({first}) — pass a checkpoint of this "
                        "architecture (original or timm format)") from e
    return model, source


def load_encoder(name: str, weights: str | os.PathLike | None = None, grid: int | None = None,
                 device: str | torch.device = "cpu", random_init: bool = False) -> Encoder:
    """Build the frozen encoder ``name`` (a key of :data:`ENCODERS`).

    ``weights``: None (published weights, or the cached/trained built-in teacher), or a local file
    or directory; ``grid``: output tokens per side (default: native); ``random_init``: random
    weights of the same architecture.
    """
    if name not in ENCODERS:
        raise UserError(f"unknown encoder {name!r} — choose one of: {', '.join(ENCODERS)}")
    spec = ENCODERS[name]
    if grid is not None and grid < 1:
        raise UserError(f"encoder grid {grid} must be positive — pass the SiT token grid (image/latent side / patch)")
    if name in TEACHERS:
        model, source = load_teacher(TEACHERS[name], weights, random_init, name=name)
        cfg = model.cfg
        encoder = Encoder(name, EncoderSpec(spec.arch, cfg.patch, cfg.image_size, hub=False), model, TEACHER_MEAN,
                          TEACHER_STD, source, grid)
        encoder.provenance["teacher_config"] = asdict(cfg)
        return encoder.to(device)
    if weights is not None and not random_init:
        from train.targets.hf_encoders import load_transformers_encoder, transformers_config

        path = Path(weights).expanduser()
        if (data := transformers_config(path)) is not None:
            model, source, mean, std, extra = load_transformers_encoder(name, spec, path, data)
            encoder = Encoder(name, spec, model, mean, std, source, grid)
            encoder.provenance.update(extra)
            return encoder.to(device)
    from timm.data import resolve_data_config

    model, source = _build_timm(name, spec, weights, random_init)
    data_cfg = resolve_data_config({}, model=model)
    return Encoder(name, spec, model, tuple(data_cfg["mean"]), tuple(data_cfg["std"]), source, grid).to(device)
