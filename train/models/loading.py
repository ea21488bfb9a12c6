"""The SiT/DiT model family: the network (:mod:`train.models.architecture`, re-exported here), the registry,
loading what users have (checkpoints of every published layout and this toolkit's), and the
flavour-independent noise-level API (REPA time).

``from train.models.loading import DiffusionTransformer, build, load, infer_config, predict`` is the public
import; the network's classes live in :mod:`train.models.architecture` and are the same objects.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path as FsPath
from typing import Sequence

import torch
import torch.nn as nn

from train.objectives import interpolants as itp
from train.models.architecture import (  # noqa: F401 (re-exported: the public names of the network)
    Attention, Block, ConvProjector, DiffusionTransformer, FinalLayer, LabelEmbedder, Mlp, ModelOutput, PatchEmbed,
    TimestepEmbedder, build_projector, modulate, sincos_1d, sincos_2d, timestep_embedding,
)
from train.models.config import SIZES, ModelConfig, parse_name
from train.errors import UserError

Tensor = torch.Tensor

# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

def build(name: str = "SiT-XL/2", **overrides) -> DiffusionTransformer:
    """Build a model by its published name, e.g. ``build("SiT-B/2", z_dims=(768,))``."""
    return DiffusionTransformer(ModelConfig(name=name, **overrides))


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network a config describes: :class:`train.models.mmdit.MMDiT` for ``MMDiT-d{depth}/{p}`` names,
    else :class:`DiffusionTransformer`."""
    if cfg.is_mmdit:
        from train.models.mmdit import MMDiT
        return MMDiT(cfg)
    return DiffusionTransformer(cfg)


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
    return official_reg_layout(sd), meta


REG_KEYS = ("cls_projectors2.weight", "cls_projectors2.bias", "wg_norm.weight", "wg_norm.bias",
            "final_layer.linear_cls.weight", "final_layer.linear_cls.bias")


def official_reg_layout(sd: dict) -> dict:
    """A REG state dict (Martinser/REG ``models/sit.py``) in this toolkit's layout; others unchanged.

    The parameter names are the official ones (``cls_projectors2``, ``wg_norm``,
    ``final_layer.linear_cls``), so the one difference is the position table: the official
    ``pos_embed`` is (1, 1 + T, D) with a zero first row for the global token, this model's is the
    (1, T, D) patch table and gives the token no position; the zero row is dropped.  What cannot be
    mapped is one :class:`UserError` line: a REG checkpoint missing one of its tensors, a nonzero
    global-token position row (a learned one), or a final layer narrower than the blocks (the
    official ``decoder_hidden_size`` differing from ``hidden_size``; the published sizes have them
    equal).  Idempotent: this toolkit's own REG checkpoints pass unchanged.
    """
    if not any(k in sd for k in REG_KEYS):
        return sd
    if missing := [k for k in REG_KEYS if k not in sd]:
        raise UserError(f"REG checkpoint lacks the tensor {missing[0]!r}: it is incomplete; export or download it again")
    pos, width = sd.get("pos_embed"), sd["cls_projectors2.weight"].shape[0]
    if sd["final_layer.linear_cls.weight"].shape[1] != width or sd.get("final_layer.linear.weight", pos).shape[-1] != width:
        raise UserError(f"REG checkpoint's final layer is not {width} wide like its blocks (decoder_hidden_size != hidden_size): "
                        "this model's final layer has the blocks' width; such a checkpoint cannot load here")
    if sd["final_layer.linear_cls.weight"].shape[0] != sd["cls_projectors2.weight"].shape[1]:
        raise UserError("REG checkpoint's global-token input and output widths differ: it is not a REG model this toolkit knows")
    if pos is not None and pos.ndim == 3 and math.isqrt(pos.shape[1] - 1) ** 2 == pos.shape[1] - 1 and pos.shape[1] > 1:
        if pos[:, 0].abs().max() > 0:
            raise UserError("REG checkpoint's global-token position row is not zero (a learned position): this model gives the token "
                            "no position and cannot represent it")
        sd = {**sd, "pos_embed": pos[:, 1:]}  # (1, 1 + T, D) -> (1, T, D)
    return sd


def infer_config(sd: dict, name: str | None = None, flavour: str = "auto", meta: dict | None = None,
                 filename: str = "", **overrides) -> ModelConfig:
    """Size, patch, channels, classes, projectors and flavour from the tensors themselves.

    REG checkpoints (``cls_projectors2.weight`` present) give ``reg_dim``, in the official layout or
    this toolkit's (:func:`official_reg_layout`).

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
    sd = official_reg_layout(sd)
    reg_dim = int(sd["cls_projectors2.weight"].shape[1]) if "cls_projectors2.weight" in sd else 0
    pos = sd["pos_embed"]
    tokens = pos.shape[1]
    sra_dim = sd["sra_projector.0.weight"].shape[0] if "sra_projector.0.weight" in sd else 0
    size = _WIDTH_TO_SIZE.get(width)
    if size is None and name is None:
        raise UserError(f"no published size has width {width}: pass name= (e.g. 'SiT-B/2') with depth/hidden_size/num_heads overrides")
    num_classes = int(args.get("num_classes", rows - 1))
    null_class = rows == num_classes + 1

    if flavour == "auto":
        hint = str(args.get("model", "")) or (name or "") or os.path.basename(filename)
        if n_proj or out_ch == in_ch or reg_dim:
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
        depth=depth, hidden_size=width, reg_dim=reg_dim, sra_projector_dim=sra_dim,
    )
    if "encoder_depth" in args:
        kw["encoder_depth"] = int(args["encoder_depth"])
    kw.update(overrides)
    return ModelConfig(**kw)


def load(path: str | os.PathLike, name: str | None = None, flavour: str = "auto", weights: str = "ema",
         device: str | torch.device = "cpu", null_context=None, **overrides) -> DiffusionTransformer:
    """Load any DiT / SiT / REPA / repa-toolkit checkpoint, or a diffusers ``DiTTransformer2DModel``
    folder (or the pipeline folder holding ``transformer/``; :mod:`train.models.diffusers_dit`), into a model
    in eval mode.

    ``weights`` picks ``"ema"`` (default) or ``"model"`` from training checkpoints; flat state dicts
    (the released ``DiT-XL-2-256x256.pt``, ``SiT-XL-2-256x256.pt``, REPA's ``last.pt``) are used as
    they are.  Legacy checkpoints that pickle an ``argparse.Namespace`` load with
    ``weights_only=True`` and that one class allow-listed: no code from the file runs.  The model
    carries ``flavour`` and ``time_convention``; :func:`predict` converts REPA time for it, and
    ``train_config``: the run's TrainConfig as a dict for this toolkit's checkpoints, else None (the
    probes read the target normalisation the run trained with from it).

    Text-to-image MMDiTs (:mod:`train.models.mmdit`; REPA's official ``train_t2i.py`` checkpoints and this
    toolkit's) are told by their ``joint_blocks``; every official tensor must fit (strict), and
    ``null_context`` (a tensor or an ``.npy`` path: the feature folder's ``empty_context.npy``) gives
    the empty-caption features that official files do not hold (needed for guidance and null probes).
    """
    from train.run.checkpoints import read_checkpoint
    from train.models.diffusers_dit import diffusers_dit_dir, read_diffusers_dit

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
    from train.models.mmdit import is_mmdit_state, read_null_context
    mmdit = is_mmdit_state(sd)
    if null_context is not None:
        if not mmdit:
            raise UserError(f"null_context= is for text-to-image MMDiT checkpoints; {path} holds a class-conditional model: drop it")
        null_context = read_null_context(null_context)
        if "null_context" not in sd or sd["null_context"].shape[0] == 0:
            sd = {**sd, "null_context": null_context}
            if "model_config" in meta:
                meta["model_config"] = {**meta["model_config"], "context_len": int(null_context.shape[0])}
    if mmdit and "null_context" not in sd:  # the official layout: everything but the toolkit's null context
        sd = {**sd, "null_context": torch.zeros(0, sd["context_embedder.weight"].shape[1])}
    if mmdit and "model_config" not in meta:
        from train.models.mmdit import infer_mmdit_config
        cfg = infer_mmdit_config(sd, name, meta, **overrides)
    elif "model_config" in meta:
        cfg = ModelConfig.from_dict({**meta["model_config"], **overrides})
        if name and name != cfg.name:
            raise UserError(f"checkpoint holds a {cfg.name} model but name={name!r}: pass name={cfg.name!r} or omit it")
    else:
        cfg = infer_config(sd, name, flavour, meta, filename=str(path), **overrides)
    if flavour not in ("auto", cfg.flavour):
        cfg.flavour = flavour
    model = build_model(cfg)
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
    """The null-class labels (id ``num_classes``) the paper's analysis feeds; an MMDiT's null
    (empty-caption) context (n, L, C)."""
    if hasattr(model, "null_contexts"):
        return model.null_contexts(n, device)
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
    cls_token: Tensor | None = None,
) -> ModelOutput:
    """Velocity (REPA time) and hidden states of any flavour for ``x_t`` noised to REPA time ``t``.

    ``x_t = alpha_t x + sigma_t eps`` (``train.objectives.interpolants.interpolate``).  SiT is fed ``1 - t`` and its
    velocity negated; DiT is fed the DDPM step of nearest log-SNR and ``x_t / sqrt(alpha^2 + sigma^2)``,
    and its eps prediction is turned into a velocity with ``x_hat = (x_t - sigma eps) / alpha``
    (alpha clamped at 1e-4 near t = 1, where DDPM's last step has abar = 4e-5 anyway).
    ``y=None`` feeds the null class.  ``out`` of the result is the REPA-time velocity.

    REG models (flavour ``repa``) take ``cls_token``, the global token noised to the same ``t``
    (N, reg_dim); ``cls`` of the result is its velocity.  Without one they are fed the zero token
    (the mean of pure noise), so the probes' hidden states of a REG model are those of a zero token.
    """
    n = x_t.shape[0]
    t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(n) if torch.as_tensor(t).ndim == 0 else t.to(x_t)
    y = null_labels(model, n, x_t.device) if y is None else y
    t_in, scale = model_time(model, t, path)
    reg = {}
    if model.cfg.reg_dim:
        reg["cls_token"] = cls_token if cls_token is not None else x_t.new_zeros(n, model.cfg.reg_dim)
    res = model(x_t * scale.reshape(-1, 1, 1, 1), t_in, y, return_hidden=return_hidden, head=head, project=project, **reg)
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
    return ModelOutput(v, res.hidden, res.zs, res.attn, res.sra, res.cls)
