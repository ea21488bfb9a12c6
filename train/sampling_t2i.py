"""Text-to-image sampling: captions -> caption features -> :func:`train.sampling.sample` with text
classifier-free guidance (``v_null + s (v_caption - v_null)``, the null being the model's
empty-caption context), Euler / Heun ODE or Euler-Maruyama SDE exactly as REPA's ``samplers_t2i.py``
(tests/test_mmdit.py checks them against it).

Captions are encoded by the encoder the run trained with: the built-in :class:`train.captions.WordEncoder`
for runs on ``captioned-scenes`` / ``captioned-shapes``.  Models trained on CLIP features (MS-COCO)
take the features themselves (``features=``, e.g. the feature folder's ``{i}_{k}.npy``): no CLIP text
model ships with this toolkit.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from train.errors import UserError
from train.sampling import sample

Tensor = torch.Tensor


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per non-empty line of a text file; an empty file or a missing one is one error line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompt file {p} does not exist: pass a text file with one caption per line")
    prompts = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if not prompts:
        raise UserError(f"prompt file {p} holds no prompt: write one caption per line")
    return prompts


def caption_encoder(model):
    """The built-in encoder of the captions a toolkit run trained on, or a one-line error."""
    from train.captions import builtin_encoder
    from train.synthetic import SCENE_CLASSES, SHAPE_CLASSES

    data = ((getattr(model, "train_config", None) or {}).get("data") or {}).get("dataset", "")
    classes = {"captioned-scenes": SCENE_CLASSES, "captioned-shapes": SHAPE_CLASSES}.get(data)
    if classes is None:
        raise UserError(f"this model was trained on {data or 'unknown'} captions, which only their own text encoder "
                        "(e.g. CLIP for MS-COCO) turns into features: pass the caption features instead of prompts")
    enc = builtin_encoder(classes)
    if (enc.length, enc.dim) != (model.cfg.context_len, model.cfg.context_dim):
        raise UserError(f"the built-in caption encoder gives ({enc.length}, {enc.dim}) features but the model reads "
                        f"({model.cfg.context_len}, {model.cfg.context_dim}): it was not trained on built-in captions")
    return enc


@torch.no_grad()
def generate_t2i(model, prompts: list[str] | None = None, features: Tensor | None = None, sampler: str = "euler",
                 steps: int = 50, cfg_scale: float = 4.0, guidance_interval=(0.0, 1.0), seed: int = 0) -> Tensor:
    """Latents (or pixels for pixel-space runs) at t = 0 for each prompt (or each caption feature
    (N, L, C)); sample i's noise is drawn from ``(seed, i)`` so a prompt's sample does not depend on
    the others.  The official T2I evaluation uses cfg 1.5-4 (``generate_t2i.py`` default 1.5)."""
    if (prompts is None) == (features is None):
        raise UserError("pass prompts or caption features (one of them)")
    if features is None:
        if not prompts:
            raise UserError("no prompt given: pass at least one caption")
        features = caption_encoder(model)(prompts)
    features = torch.as_tensor(features, dtype=torch.float32)
    if features.ndim != 3 or features.shape[-1] != model.cfg.context_dim:
        raise UserError(f"caption features are {tuple(features.shape)}, the model reads (N, tokens, {model.cfg.context_dim})")
    cfg = model.cfg
    device = next(model.parameters()).device
    noise = torch.stack([torch.randn(cfg.in_channels, cfg.input_size, cfg.input_size,
                                     generator=torch.Generator().manual_seed(seed * 1_000_003 + i)) for i in range(len(features))])
    gen = torch.Generator(device).manual_seed(seed)
    return sample(model, noise.to(device), features.to(device), sampler, steps, cfg_scale, tuple(guidance_interval), gen)
