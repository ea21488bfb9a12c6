"""diffusers' DiT (``DiTTransformer2DModel``) folders in the published DiT layout.

:func:`train.models.loading.load` comes here for a folder whose ``config.json`` names
``DiTTransformer2DModel`` (or the older ``Transformer2DModel`` with ``norm_type="ada_norm_zero"``,
as in ``facebook/DiT-XL-2-256``), or a pipeline folder holding such a ``transformer/``.  The weights
map one to one onto the published names:

=====================================================  ==========================================
diffusers                                              published DiT
=====================================================  ==========================================
``pos_embed.proj``                                     ``x_embedder.proj``
``transformer_blocks.0.norm1.emb.timestep_embedder``   ``t_embedder.mlp.{0,2}`` (``linear_1/2``)
``transformer_blocks.0.norm1.emb.class_embedder``      ``y_embedder.embedding_table``
``transformer_blocks.N.norm1.linear``                  ``blocks.N.adaLN_modulation.1``
``transformer_blocks.N.attn1.to_{q,k,v}``              ``blocks.N.attn.qkv`` (concatenated q, k, v)
``transformer_blocks.N.attn1.to_out.0``                ``blocks.N.attn.proj``
``transformer_blocks.N.ff.net.{0.proj,2}``             ``blocks.N.mlp.fc{1,2}``
``proj_out_1`` / ``proj_out_2``                        ``final_layer.adaLN_modulation.1`` / ``final_layer.linear``
=====================================================  ==========================================

``pos_embed`` is not stored by diffusers: it is the same 2-D sin-cos table, rebuilt.  Every block of
a diffusers DiT holds its own copy of the timestep and label embedders (the final layer uses block
0's); the published model has one, so a folder whose copies differ is refused.  Two conventions do
not fold into the weights and are recorded on the config instead
(:class:`~train.run.config.ModelConfig`): diffusers' timestep frequencies ``exp(-ln(1e4) i / (half - 1))``
(``Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)``; the original uses ``i / half``) as
``timestep_freq_shift=1``, and its ``norm_eps`` (1e-5 by default) on the LayerNorm before the MLP as
``mlp_norm_eps`` (the others are 1e-6 in both).  With them the loaded model reproduces diffusers' own
forward (eps and learned sigma, 8 channels) to float32 precision.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from train.models.config import SIZES, ModelConfig
from train.errors import UserError

_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}): re-save the diffusers folder") from None
    return data if isinstance(data, dict) else {}


def diffusers_dit_dir(path: str | os.PathLike) -> Path | None:
    """The diffusers DiT transformer folder at ``path`` (itself, or its pipeline's ``transformer/``);
    None when ``path`` is not a folder; a one-line error for a diffusers folder of another model."""
    p = Path(path)
    if not p.is_dir():
        return None
    for folder in (p, p / "transformer"):
        if (folder / "config.json").is_file():
            data = _read_json(folder / "config.json")
            if data.get("_class_name") in _CLASSES:
                return folder
            if "_class_name" in data or folder == p:
                what = data.get("_class_name") or data.get("model_type") or "unknown"
                raise UserError(f"{folder} holds a {what} model, not a DiT: pass a DiTTransformer2DModel folder "
                                "(or its pipeline folder), or a DiT/SiT/REPA checkpoint file")
    raise UserError(f"{p} is a folder without a diffusers DiT config.json: pass a checkpoint file or a DiTTransformer2DModel folder")


def _state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    from train.run.checkpoints import read_checkpoint

    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(read_checkpoint(folder / f))
        return sd, index
    for name in _WEIGHTS:
        if (folder / name).is_file():
            return read_checkpoint(folder / name), folder / name
    raise UserError(f"no weights ({', '.join(_WEIGHTS)}) in {folder}: pass the complete diffusers folder")


def convert(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """diffusers DiT tensors -> published DiT names (``pos_embed`` excepted); refuses per-block
    embedder copies that differ from block 0's."""
    sd = dict(sd)
    emb0 = "transformer_blocks.0.norm1.emb."
    shared = {k[len(emb0):]: v for k, v in sd.items() if k.startswith(emb0)}
    if not shared:
        raise UserError("diffusers DiT without transformer_blocks.0.norm1.emb (timestep/label embedders): not a class-conditional DiT")
    for i in range(1, depth):
        own = f"transformer_blocks.{i}.norm1.emb."
        for k, v in shared.items():
            other = sd.pop(own + k, None)
            if other is None or not torch.equal(other, v):
                raise UserError(f"block {i}'s {'missing' if other is None else 'different'} {k.split('.')[0]} "
                                f"differs from block 0's: the published DiT shares one timestep/label embedder, "
                                f"so this diffusers model cannot be expressed in its layout")
    out = {
        "t_embedder.mlp.0.weight": shared.pop("timestep_embedder.linear_1.weight"),
        "t_embedder.mlp.0.bias": shared.pop("timestep_embedder.linear_1.bias"),
        "t_embedder.mlp.2.weight": shared.pop("timestep_embedder.linear_2.weight"),
        "t_embedder.mlp.2.bias": shared.pop("timestep_embedder.linear_2.bias"),
        "y_embedder.embedding_table.weight": shared.pop("class_embedder.embedding_table.weight"),
    }
    if shared:
        raise UserError(f"diffusers DiT embedder has unexpected tensors {sorted(shared)[:3]}")
    for k in [k for k in sd if k.startswith(emb0)]:
        del sd[k]
    take = sd.pop
    out["x_embedder.proj.weight"], out["x_embedder.proj.bias"] = take("pos_embed.proj.weight"), take("pos_embed.proj.bias")
    for i in range(depth):
        d, b = f"transformer_blocks.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{b}adaLN_modulation.1.{kind}"] = take(f"{d}norm1.linear.{kind}")
            out[f"{b}attn.qkv.{kind}"] = torch.cat([take(f"{d}attn1.to_{x}.{kind}") for x in "qkv"])
            out[f"{b}attn.proj.{kind}"] = take(f"{d}attn1.to_out.0.{kind}")
            out[f"{b}mlp.fc1.{kind}"] = take(f"{d}ff.net.0.proj.{kind}")
            out[f"{b}mlp.fc2.{kind}"] = take(f"{d}ff.net.2.{kind}")
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = take(f"proj_out_1.{kind}")
        out[f"final_layer.linear.{kind}"] = take(f"proj_out_2.{kind}")
    if sd:
        raise UserError(f"diffusers DiT has tensors this layout does not know: {sorted(sd)[:3]}")
    return out


def config_from_diffusers(cfg: dict, sd: dict[str, torch.Tensor], **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of a diffusers DiT config.json (checked: adaLN-Zero, tanh GELU,
    attention bias, LayerNorms without affine)."""
    need = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
            "norm_elementwise_affine": False}
    bad = {k: cfg.get(k, v) for k, v in need.items() if cfg.get(k, v) != v}
    if bad or not cfg.get("patch_size") or cfg.get("num_embeds_ada_norm") is None:
        raise UserError(f"diffusers transformer with {bad or 'no patch_size/num_embeds_ada_norm'}: only DiT's "
                        "class-conditional adaLN-Zero layout loads into the published DiT")
    heads, head_dim = int(cfg.get("num_attention_heads", 16)), int(cfg.get("attention_head_dim", 72))
    width, depth, patch = heads * head_dim, int(cfg.get("num_layers", 28)), int(cfg["patch_size"])
    in_ch = int(cfg.get("in_channels", 4))
    out_ch = int(cfg.get("out_channels") or in_ch)
    if out_ch not in (in_ch, 2 * in_ch):
        raise UserError(f"diffusers DiT with {in_ch} input and {out_ch} output channels: the DiT layout needs equal or double")
    num_classes = int(cfg["num_embeds_ada_norm"])
    rows = sd["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"].shape[0]
    size = next((s for s, (d, w, h) in SIZES.items() if (d, w, h) == (depth, width, heads)), None)
    size = size or next((s for s, (_, w, _) in SIZES.items() if w == width), "T")
    kw = dict(name=f"DiT-{size}/{patch}", flavour="dit", input_size=int(cfg.get("sample_size", 32)), in_channels=in_ch,
              learn_sigma=out_ch == 2 * in_ch, num_classes=num_classes, null_class=rows == num_classes + 1,
              depth=depth, hidden_size=width, num_heads=heads, timestep_freq_shift=1,
              mlp_norm_eps=float(cfg.get("norm_eps", 1e-5)))
    kw.update(overrides)
    return ModelConfig(**kw)


def read_diffusers_dit(folder: Path, **overrides) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """A diffusers DiT folder as ``(config, state dict in the published layout without pos_embed,
    source)``; :func:`train.models.loading.load` builds the model from them."""
    cfg_json = _read_json(folder / "config.json")
    sd, weights = _state_dict(folder)
    cfg = config_from_diffusers(cfg_json, sd, **overrides)
    st = os.stat(weights)
    source = {"path": str(folder.resolve()), "file": f"{st.st_size}:{st.st_mtime_ns}", "weights": "diffusers",
              "step": None, "flavour": "dit", "name": cfg.name, "format": "diffusers"}
    return cfg, convert(sd, cfg.depth), source
