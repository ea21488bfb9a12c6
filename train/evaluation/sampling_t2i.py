"""Text-to-image sampling: captions -> caption features -> :func:`train.evaluation.sampling.sample` with text
classifier-free guidance (``v_null + s (v_caption - v_null)``, the null being the model's
empty-caption context), Euler / Heun ODE or Euler-Maruyama SDE exactly as REPA's ``samplers_t2i.py``
(tests/test_mmdit.py checks them against it).

Captions are encoded by the encoder the run trained with: the built-in :class:`train.data.captions.WordEncoder`
for runs on ``captioned-scenes`` / ``captioned-shapes``.  Models trained on CLIP features (MS-COCO)
take the features themselves (``features=``, e.g. the feature folder's ``{i}_{k}.npy``): no CLIP text
model ships with this toolkit.

From the command line (``repa-sample --prompts FILE`` or ``--context-features FILE.npy``,
:func:`train.evaluation.evaluate.sample_main`) the captions are cycled over the samples like class ids
(:mod:`train.evaluation.samples`): sample ``i`` takes caption ``i % P``, its noise is seeded by ``(seed, i)``
exactly as here, so the CLI's samples are :func:`generate_t2i`'s, decoded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from train.errors import UserError
from train.evaluation.samples import seeded_generator
from train.evaluation.sampling import sample

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
    from train.data.captions import builtin_encoder
    from train.data.synthetic import SCENE_CLASSES, SHAPE_CLASSES

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


def read_context_features(path: str | os.PathLike) -> Tensor:
    """Caption features from an ``.npy`` file: one caption (L, C) or several (N, L, C) -> (N, L, C) float32."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"caption features {p} do not exist: pass an .npy of (tokens, width) or (N, tokens, width) features")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"caption features {p} are not a readable .npy ({str(e).splitlines()[0][:120]}): save them with numpy.save") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"caption features {p} hold a {arr.dtype} array of shape {arr.shape}: pass (tokens, width) or "
                        "(N, tokens, width) numbers, e.g. a feature folder's {i}_{k}.npy")
    feats = torch.from_numpy(arr.astype(np.float32))
    if not torch.isfinite(feats).all():
        raise UserError(f"caption features {p} hold NaN or inf values: make them again with the text encoder")
    return feats


def read_text_input(prompts: str | os.PathLike | None = None,
                    features: str | os.PathLike | None = None) -> tuple[list[str] | Tensor, dict]:
    """A prompt file's prompts or an ``.npy``'s caption features, and what identifies them (for
    ``sample_config.json``: the prompts themselves, or the features file and its SHA-256)."""
    if (prompts is None) == (features is None):
        raise UserError("pass --prompts FILE or --context-features FILE.npy (one of them)")
    if prompts is not None:
        given = read_prompts(prompts)
        return given, {"prompts": given}
    feats = read_context_features(features)
    sha = hashlib.sha256()
    with open(features, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            sha.update(block)
    return feats, {"context_features": str(Path(features).resolve()), "context_features_sha256": sha.hexdigest()}


def check_contexts(model, features: Tensor, source: str = "caption features") -> Tensor:
    """(N, L, C) caption features that ``model`` reads (its width; its null context's token count), or one line."""
    features = torch.as_tensor(features, dtype=torch.float32)
    cfg = model.cfg
    if features.ndim != 3 or features.shape[-1] != cfg.context_dim:
        raise UserError(f"{source} are {tuple(features.shape)} but {cfg.name} reads (N, tokens, {cfg.context_dim}) features: "
                        "pass features of the text encoder it was trained with")
    tokens = model.null_context.shape[0]
    if tokens and features.shape[1] != tokens:
        raise UserError(f"{source} have {features.shape[1]} tokens but {cfg.name} was trained on {tokens}-token captions "
                        "(its empty caption): pad or truncate them as its text encoder does")
    return features


def text_conditions(model, given: list[str] | Tensor, cfg_scale: float = 1.0, source: str = "caption features") -> Tensor:
    """Caption features (P, L, C) of prompts (the run's built-in encoder) or of given features, checked
    against the model; guidance (``cfg_scale > 1``) also needs the model's null (empty-caption) context."""
    if not getattr(model.cfg, "is_mmdit", False):
        raise UserError(f"prompts and caption features are for text-to-image MMDiT checkpoints; this is a class-conditional "
                        f"{model.cfg.name}: drop --prompts/--context-features (use --labels)")
    if cfg_scale > 1.0 and model.null_context.shape[0] == 0:
        raise UserError(f"guidance (cfg scale {cfg_scale:g}) needs the empty caption's features, which this {model.cfg.name} "
                        "checkpoint lacks (official layout): pass --null-context empty_context.npy or --cfg-scale 1")
    if isinstance(given, list):
        return caption_encoder(model)(given)
    return check_contexts(model, given, source)


@torch.no_grad()
def generate_t2i(model, prompts: list[str] | None = None, features: Tensor | None = None, sampler: str = "euler",
                 steps: int = 50, cfg_scale: float = 4.0, guidance_interval=(0.0, 1.0), seed: int = 0) -> Tensor:
    """Latents (or pixels for pixel-space runs) at t = 0 for each prompt (or each caption feature
    (N, L, C)); sample i's noise is drawn from ``(seed, i)`` so a prompt's sample does not depend on
    the others (the seeding of :mod:`train.evaluation.samples`, so ``repa-sample --prompts`` writes these samples).
    The official T2I evaluation uses cfg 1.5-4 (``generate_t2i.py`` default 1.5)."""
    if (prompts is None) == (features is None):
        raise UserError("pass prompts or caption features (one of them)")
    if features is None:
        if not prompts:
            raise UserError("no prompt given: pass at least one caption")
        features = caption_encoder(model)(prompts)
    features = check_contexts(model, features)
    cfg = model.cfg
    device = next(model.parameters()).device
    noise = torch.stack([torch.randn(cfg.in_channels, cfg.input_size, cfg.input_size,
                                     generator=seeded_generator(seed, "noise", i)) for i in range(len(features))])
    gen = seeded_generator(seed, "sde", 0, device)  # the SDE noise of train.evaluation.samples' first chunk
    return sample(model, noise.to(device), features.to(device), sampler, steps, cfg_scale, tuple(guidance_interval), gen)
