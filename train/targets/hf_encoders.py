"""Target encoders from transformers ``save_pretrained`` directories (offline).

``load_encoder(name, weights=DIR)`` comes here when ``DIR/config.json`` is a transformers config (it
has ``model_type`` / ``architectures``; timm's own ``config.json`` has ``architecture`` instead).
The directory is read with ``from_pretrained(DIR, local_files_only=True)`` in float32 and must hold
the model the name stands for:

==========================  ==========================================  ==========================================
names                       transformers class (``model_type``)         target tokens
==========================  ==========================================  ==========================================
``dinov2-vit-*``            ``Dinov2Model`` (``dinov2``)                 ``last_hidden_state[:, 1:]`` (final norm)
``dinov2-vit-*-reg``        ``Dinov2WithRegistersModel``                 ``last_hidden_state[:, 1 + registers:]``
``dinov1-vit-b``            ``ViTModel`` (``vit``)                       ``last_hidden_state[:, 1:]``
``mae-vit-l``               ``ViTMAEModel`` (``vit_mae``)                ``hidden_states[-1][:, 1:]`` (no final norm),
                                                                         ``mask_ratio=0``, ``noise=arange``: no
                                                                         masking, no shuffle
``clip-vit-l``              ``CLIPVisionModel`` (or a ``CLIPModel`` dir)  ``hidden_states[-1][:, 1:]`` (no final norm)
``siglip-vit-b``            ``SiglipVisionModel`` (or ``SiglipModel``)    ``last_hidden_state`` (post-layernorm)
``ijepa-vit-h``             ``IJepaModel`` (``ijepa``)                   ``last_hidden_state`` (final norm)
``dinov3-vit-*``            ``DINOv3ViTModel`` (``dinov3_vit``)          ``last_hidden_state[:, 1 + registers:]``
==========================  ==========================================  ==========================================

These are the same tokens as the timm path (the tests pin the two to 1e-5 on shared random weights).
Width, depth, patch and register count are checked against the name's timm architecture; a
directory of another model type or size is one :class:`~train.errors.UserError` line.  Image
normalisation: the directory's ``preprocessor_config.json`` (``image_mean``/``image_std``) when
present, else the timm architecture's (the same numbers for the published models).  Resolution: the
name's (224 px for patch 14, 256 px for patch 16, as REPA); a learned position table made for
another size is resampled once at load with timm's ``resample_abs_pos_embed`` (bicubic,
antialiased), exactly as the timm path resamples a checkpoint, so both paths stay equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from train.errors import UserError

if TYPE_CHECKING:
    from train.targets.spec import EncoderSpec

# model_type -> transformers class
HF_CLASSES = {
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "vit": "ViTModel",
    "vit_mae": "ViTMAEModel",
    "clip_vision_model": "CLIPVisionModel",
    "clip": "CLIPVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "siglip": "SiglipVisionModel",
    "ijepa": "IJepaModel",
    "dinov3_vit": "DINOv3ViTModel",
}
_NO_CLASS_TOKEN = {"siglip_vision_model", "siglip", "ijepa"}
# where each family keeps its learned position table: (key suffix, prefix tokens in it, stored as 2-D)
_POS_TABLE = {
    "dinov2": ("embeddings.position_embeddings", 1, False),
    "dinov2_with_registers": ("embeddings.position_embeddings", 1, False),
    "vit": ("embeddings.position_embeddings", 1, False),
    "vit_mae": ("embeddings.position_embeddings", 1, False),
    "clip_vision_model": ("embeddings.position_embedding.weight", 1, True),
    "siglip_vision_model": ("embeddings.position_embedding.weight", 0, True),
    "ijepa": ("embeddings.position_embeddings", 0, False),
}
_POS_TABLE["clip"], _POS_TABLE["siglip"] = _POS_TABLE["clip_vision_model"], _POS_TABLE["siglip_vision_model"]
_CLASS_TO_TYPE = {"Dinov2Model": "dinov2", "Dinov2WithRegistersModel": "dinov2_with_registers", "ViTModel": "vit",
                  "ViTMAEModel": "vit_mae", "ViTMAEForPreTraining": "vit_mae", "CLIPVisionModel": "clip_vision_model",
                  "CLIPModel": "clip", "SiglipVisionModel": "siglip_vision_model", "SiglipModel": "siglip",
                  "IJepaModel": "ijepa", "DINOv3ViTModel": "dinov3_vit"}


def transformers_config(path: Path) -> dict | None:
    """The parsed ``config.json`` of a transformers directory, or None (a file, a timm directory,
    a directory without config)."""
    cfg = path / "config.json"
    if not path.is_dir() or not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {cfg} ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(data, dict) or "architecture" in data or not ("model_type" in data or "architectures" in data):
        return None
    return data


def model_type_of(data: dict) -> str:
    if data.get("model_type"):
        return str(data["model_type"])
    archs = data.get("architectures") or ["?"]
    return _CLASS_TO_TYPE.get(archs[0], archs[0])


def _expected(spec: EncoderSpec) -> tuple[int, int, int]:
    """(width, depth, registers) of the name's timm architecture, built on the meta device (no memory)."""
    import timm

    with torch.device("meta"):
        m = timm.create_model(spec.arch, pretrained=False, num_classes=0, img_size=spec.resolution, **dict(spec.timm_kwargs))
    regs = m.num_prefix_tokens - (0 if getattr(m, "cls_token", None) is None else 1)
    return int(m.embed_dim), len(m.blocks), int(regs)


def _norm_stats(path: Path, spec: EncoderSpec) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(map(float, data["image_mean"])), tuple(map(float, data["image_std"])), "preprocessor_config.json"
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.arch)
    if cfg is None:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, "imagenet"
    return tuple(cfg.mean), tuple(cfg.std), f"timm:{spec.arch}"


class TransformersBackbone(nn.Module):
    """A transformers vision model behind the interface :class:`train.targets.encoders.Encoder` needs:
    ``embed_dim``, ``num_prefix_tokens`` and ``target_tokens(x, target)``."""

    def __init__(self, model: nn.Module, model_type: str) -> None:
        super().__init__()
        self.hf, self.model_type = model, model_type
        cfg = model.config
        self.embed_dim = self.num_features = int(cfg.hidden_size)
        regs = int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.num_prefix_tokens = regs + (0 if model_type in _NO_CLASS_TOKEN else 1)
        if model_type == "vit_mae":
            cfg.mask_ratio = 0.0  # keep every patch ...

    def target_tokens(self, x: torch.Tensor, target: str) -> torch.Tensor:
        kw: dict[str, Any] = {}
        if self.model_type == "vit_mae":  # ... in its own order: noise = arange makes the "shuffle" the identity
            n = (x.shape[-2] // self.hf.config.patch_size) * (x.shape[-1] // self.hf.config.patch_size)
            kw["noise"] = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        out = self.hf(pixel_values=x, output_hidden_states=target == "prenorm", **kw)
        tokens = out.hidden_states[-1] if target == "prenorm" else out.last_hidden_state
        return tokens[:, self.num_prefix_tokens:]


def _at_resolution(model: nn.Module, model_type: str, resolution: int) -> nn.Module:
    """The same model with its learned position table resampled to ``resolution`` (as timm does)."""
    cfg = model.config
    if model_type not in _POS_TABLE or int(cfg.image_size) == resolution:
        return model
    from timm.layers import resample_abs_pos_embed

    suffix, prefix, flat = _POS_TABLE[model_type]
    state = model.state_dict()
    key = next(k for k in state if k == suffix or k.endswith("." + suffix))
    grid = resolution // int(cfg.patch_size)
    table = state[key].unsqueeze(0) if flat else state[key]
    table = resample_abs_pos_embed(table.float(), new_size=[grid, grid], num_prefix_tokens=prefix,
                                   interpolation="bicubic", antialias=True, verbose=False)
    state[key] = table[0] if flat else table
    cfg.image_size = resolution
    rebuilt = type(model)(cfg)
    rebuilt.load_state_dict(state)
    return rebuilt


def load_transformers_encoder(name: str, spec: EncoderSpec, path: Path, data: dict
                              ) -> tuple[TransformersBackbone, str, tuple[float, ...], tuple[float, ...], dict]:
    """(backbone, weights source, mean, std, extra provenance) for the transformers directory ``path``."""
    model_type = model_type_of(data)
    if model_type not in spec.hf:
        wanted = " or ".join(sorted({HF_CLASSES[t] for t in spec.hf})) or "none (use a timm or original checkpoint)"
        raise UserError(f"{path} holds a transformers {model_type!r} model, not one for {name}: pass a "
                        f"save_pretrained directory of {wanted}")
    import transformers

    cls = getattr(transformers, HF_CLASSES[model_type])
    try:
        cfg = cls.config_class.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the config in {path} ({str(e).strip().splitlines()[0][:200]})") from None
    width, depth, regs = _expected(spec)
    got = (int(cfg.hidden_size), int(cfg.num_hidden_layers), int(cfg.patch_size),
           int(getattr(cfg, "num_register_tokens", 0) or 0))
    if got != (width, depth, spec.patch, regs):
        raise UserError(f"{path} holds a {model_type} model of width {got[0]}, depth {got[1]}, patch {got[2]}, "
                        f"{got[3]} registers but {name} is width {width}, depth {depth}, patch {spec.patch}, "
                        f"{regs} registers: pass that model's directory or the matching name")
    try:
        model = cls.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"cannot load {path} as {cls.__name__} ({str(e).strip().splitlines()[0][:200]})") from None
    native = int(cfg.image_size)
    model = _at_resolution(model, model_type, spec.resolution)
    mean, std, stats = _norm_stats(path, spec)
    extra = {"format": "transformers", "hf_class": cls.__name__, "hf_model_type": model_type,
             "hf_image_size": native, "normalisation": stats}
    return TransformersBackbone(model.eval(), model_type), f"transformers:{path.resolve()}", mean, std, extra
