"""Hidden states of a diffusion transformer for every layer x noise level, and of target encoders.

:func:`extract` noises each image to every requested REPA time ``t`` (t = 0 clean, t = 1 noise) with
``train.objectives.interpolants.interpolate`` and runs ONE forward per batch and t through
``train.models.loading.predict(..., return_hidden=layers, head=False)``, which converts t to the checkpoint's
own clock (SiT ``1 - t``, DiT the DDPM step of nearest log-SNR; recorded as ``model_t``).  Choices
that change the numbers (REPA-NOTES section 5) are explicit parameters recorded with every result:

* noise: one eps per image drawn from ``torch.Generator().manual_seed(noise_seed(seed, index))``
  where ``index`` is the image's position in its dataset, so an image gets the same eps for every
  checkpoint, layer AND t (curves over t differ by noise level only, never by the draw);
* latents: the codec's posterior mean (deterministic; SD-VAE's posterior std is tiny);
* label: the null class (the paper's choice, no label leak) or the real label; for a text-to-image
  MMDiT (``train.models.mmdit``) the null (empty-caption) context or the image's own caption features
  (``real``, captioned datasets only: ``ImageSet.contexts``);
* pooling: mean over patch tokens (the paper's) or all tokens kept;
* ``tokens`` (a ``probe.tokens.TokenPlan``): besides the pooled features, a seeded sample of
  (image, token) pairs and each image's spatial metrics, reduced batch by batch (never all tokens).

The optional store is a directory with one safetensors shard per (checkpoint config, t, image chunk)
under ``<store>/<key>/``; ``key`` hashes the provenance (which includes the checkpoint file's size
and modification time, so a run retrained in place is extracted again), which each shard also
carries in its metadata.  Writes are atomic, finished shards are skipped (resume) and ``<store>/index.parquet``
lists every shard with its provenance (:func:`read_index`).  Target-encoder features are cached the
same way by :func:`encoder_features`, keyed by the encoder's provenance and the image set.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from train.run.checkpoints import atomic_write
from train.errors import UserError
from train.objectives.interpolants import interpolate
from train.data.latents import Codec, build_codec
from train.run.loop import git_revision
from train.models.loading import DiffusionTransformer, model_time, predict
from train.evaluation.probe_set import image_noise, noise_seed, subset_indices  # noqa: F401 - noise_seed: public here too


DEFAULT_TS = (0.0, 0.25, 0.5)
POOLINGS = ("mean", "tokens")
LABELS = ("null", "real")


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def digest(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj``'s canonical JSON (or of raw bytes)."""
    blob = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def pool(tokens: Tensor, pooling: str) -> Tensor:
    """(B, T, D) -> (B, D) for ``"mean"``; kept as is for ``"tokens"``."""
    return tokens.mean(1) if pooling == "mean" else tokens


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}: use one of {', '.join(choices)}")


def check_ts(ts: Sequence[float]) -> tuple[float, ...]:
    """Noise levels as floats in [0, 1] (REPA time), else a UserError."""
    ts = tuple(float(t) for t in ts)
    if not ts or any(not 0.0 <= t <= 1.0 for t in ts):
        raise UserError(f"noise levels {list(ts)} must lie in [0, 1] (REPA time: 0 = clean, 1 = noise): pass e.g. --t 0 0.25 0.5")
    return ts


# ----------------------------------------------------------------------------------------------
# The images to probe
# ----------------------------------------------------------------------------------------------

def _fingerprint(data: Any) -> str:
    """What identifies a dataset: its image bytes when in memory, else its file list, else its type."""
    images = data[0] if isinstance(data, tuple) else getattr(data, "images", None)
    if isinstance(images, Tensor):
        return digest(images.contiguous().numpy().tobytes())
    samples = getattr(data, "samples", None)
    if samples is not None:
        return digest([[str(p), int(y)] for p, y in samples] + [getattr(data, "size", None)])
    return digest([type(data).__name__, len(data)])


def _item_label(y: Any) -> int:
    """An item's class id; caption features (a captioned dataset's second element) have none: -1."""
    y = torch.as_tensor(y)
    return int(y) if y.ndim == 0 else -1


@dataclass
class ImageSet:
    """Images to probe: ``data`` (a dataset of ``(uint8 (3, H, W), label)`` or an ``(images, labels)``
    tensor pair), the ``indices`` used, a ``name`` for tables and an ``identity`` hash (data + indices).

    A captioned dataset (``train.data.captions``: items ``(image, caption features (L, C))``) gives its
    class ``labels`` where it has them (the built-in captioned sets) and -1 otherwise (MS-COCO
    features); :meth:`contexts` gives the captions."""

    data: Any
    indices: Tensor
    name: str
    identity: str

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(dataset indices (B,), uint8 images (B, 3, H, W), labels (B,))`` for positions start..stop."""
        stop = len(self) if stop is None else stop
        for s in range(start, stop, batch_size):
            idx = self.indices[s:min(s + batch_size, stop)]
            if isinstance(self.data, tuple):
                yield idx, self.data[0][idx], self.data[1][idx]
            else:
                items = [self.data[int(i)] for i in idx]
                labels = self.data.labels[idx] if isinstance(getattr(self.data, "labels", None), Tensor) else \
                    torch.tensor([_item_label(y) for _, y in items], dtype=torch.long)
                yield idx, torch.stack([im for im, _ in items]), labels

    def labels(self) -> Tensor:
        """Labels (N,) of the chosen images, read without decoding images where the dataset allows."""
        data, idx = self.data, self.indices
        if isinstance(data, tuple):
            return data[1][idx]
        if isinstance(getattr(data, "labels", None), Tensor):
            return data.labels[idx]
        if getattr(data, "samples", None) is not None:
            return torch.tensor([int(data.samples[i][1]) for i in idx])
        if getattr(data, "pairs", None) is not None:  # the MS-COCO feature folder: captions, no classes
            return torch.full((len(idx),), -1, dtype=torch.long)
        return torch.tensor([_item_label(data[int(i)][1]) for i in idx], dtype=torch.long)

    def contexts(self, idx: Tensor) -> Tensor:
        """Caption features (B, L, C) of dataset items ``idx`` (a captioned dataset), else one line."""
        data = self.data
        if isinstance(getattr(data, "contexts", None), Tensor):
            return data.contexts[idx]
        if not isinstance(data, tuple) and getattr(data, "null_context", None) is not None:
            return torch.stack([torch.as_tensor(data[int(i)][1]) for i in idx])
        raise UserError(f"{self.name} has no captions to condition a text-to-image model on: probe a captioned dataset "
                        "(captioned-scenes, captioned-shapes, coco-features) or use label='null'")


def image_set(data: Any, n: int | None = None, seed: int = 0, name: str | None = None) -> ImageSet:
    """An :class:`ImageSet` of ``n`` images of ``data`` (all when None or larger), drawn at random by
    ``seed`` and sorted.  ``data``: a dataset, uint8 images ``(N, 3, H, W)``, an ``(images, labels)``
    pair, or an ImageSet (returned as is)."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, Tensor):
        data = (data, torch.full((len(data),), -1, dtype=torch.long))
    total = len(data[0]) if isinstance(data, tuple) else len(data)
    if total == 0:
        raise UserError("the image set is empty: pass a dataset or split that holds images")
    pairs = getattr(data, "pairs", None)  # the MS-COCO feature folder: one item per (image, caption); probe each image once
    if pairs is not None:
        firsts = torch.tensor([j for j, (_, k) in enumerate(pairs) if k == 0], dtype=torch.long)
        indices = firsts[subset_indices(len(firsts), n, seed)]
    else:
        indices = subset_indices(total, n, seed)
    if name is None:
        split = getattr(data, "split", None)
        name = "tensor" if isinstance(data, tuple) else type(data).__name__ + (f"/{split}" if split else "")
    return ImageSet(data, indices, name, digest([_fingerprint(data), indices.tolist()]))


# ----------------------------------------------------------------------------------------------
# Diffusion-transformer features
# ----------------------------------------------------------------------------------------------

@dataclass
class Features:
    """Hidden states ``values``: (layers, ts, N, D) float32 (``(layers, ts, N, T, D)`` for tokens),
    with the ``layers``, REPA times ``ts``, dataset ``indices`` and ``labels`` (N,) and provenance;
    with a token plan also the sampled ``tokens`` (layers, ts, M, D) and the per-image ``spatial``
    metrics ``{name: (layers, ts, N)}``."""

    values: Tensor
    layers: list[int]
    ts: list[float]
    indices: Tensor
    labels: Tensor
    provenance: dict
    tokens: Tensor | None = None
    spatial: dict[str, Tensor] = field(default_factory=dict)

    def get(self, layer: int, t: float) -> Tensor:
        """Features of one layer at one noise level: (N, D) or (N, T, D)."""
        return self.values[self.layers.index(layer), self.ts.index(float(t))]


def resolve_layers(model: DiffusionTransformer, layers: str | Sequence[int]) -> list[int]:
    """``"all"`` -> [0, 1, ..., depth] (0 = patch + position embedding); a list is checked."""
    depth = model.cfg.depth
    if isinstance(layers, str):
        if layers != "all":
            raise UserError(f"layers={layers!r} is not valid: pass 'all' or a list of ints in 0..{depth}")
        return list(range(depth + 1))
    chosen = sorted({int(layer) for layer in layers})
    if not chosen or not all(0 <= layer <= depth for layer in chosen):
        raise UserError(f"layers {list(layers)} must lie in 0..{depth} for {model.cfg.name} (depth {depth}): pass e.g. 'all'")
    return chosen


def model_provenance(model: DiffusionTransformer) -> dict:
    """Checkpoint path and file identity (size and modification time), weights, step, flavour and
    model name (``"in-memory"`` for a built model).  The file identity keeps the feature store from
    serving a run retrained at the same path."""
    src = getattr(model, "source", {})
    return {"checkpoint": src.get("path", "in-memory"), "checkpoint_file": src.get("file"), "weights": src.get("weights"), "step": src.get("step"),
            "flavour": model.flavour, "model": model.cfg.name}


def _shard_meta(path: Path) -> dict | None:
    """The metadata of a finished shard, or None when it is missing or unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata()
    except Exception:  # noqa: BLE001 - a damaged shard is simply recomputed
        return None


def conditioning(model: DiffusionTransformer, images: ImageSet, idx: Tensor, labels: Tensor, label: str,
                 device: Any = None) -> Tensor | None:
    """What the model is conditioned on for ``label`` (on ``device``): None (the null class / the
    empty caption) or the real class ids (B,), for a text-to-image MMDiT the images' own caption
    features (B, L, C)."""
    if label != "real":
        return None
    cfg = model.cfg
    if cfg.is_mmdit:
        ctx = images.contexts(idx)  # (B, L, C)
        if ctx.shape[-1] != cfg.context_dim:
            raise UserError(f"{images.name}'s captions are {ctx.shape[-1]} wide but {cfg.name} reads {cfg.context_dim}-wide "
                            "caption features: probe it on the captioned dataset it was trained on, or use label='null'")
        return ctx.to(device)
    if not (0 <= labels.min() and labels.max() < cfg.num_classes):
        raise UserError(f"label mode 'real' needs labels in 0..{cfg.num_classes - 1}, got {labels.min().item()}..{labels.max().item()}: pass labelled images or label='null'")
    return labels.to(device)


def labelled(images: ImageSet) -> ImageSet:
    """``images`` when they have class labels (a linear probe's targets), else one line (e.g. MS-COCO: captions only)."""
    if bool((images.labels() < 0).all()):
        raise UserError(f"{images.name} has no class labels for the linear probe: drop linear_probe from the metrics "
                        "(or pass n_train=0 / --n-train 0)")
    return images


def _model_t(model: DiffusionTransformer, t: float) -> float | int:
    """The time input the model's flavour receives for REPA time t (a DDPM step for DiT)."""
    value = model_time(model, torch.tensor([t]))[0].item()
    return int(value) if model.flavour == "dit" else float(value)


@torch.no_grad()
def extract(
    model: DiffusionTransformer,
    images: Any,
    ts: Sequence[float] = DEFAULT_TS,
    layers: str | Sequence[int] = "all",
    codec: str | Codec = "identity",
    pooling: str = "mean",
    label: str = "null",
    seed: int = 0,
    batch_size: int = 64,
    store: str | os.PathLike | None = None,
    shard_size: int = 4096,
    progress: bool = True,
    tokens: Any = None,  # a probe.tokens.TokenPlan
) -> Features:
    """Hidden states of ``model`` for every layer x t on ``images`` (see the module docstring).

    ``images``: anything :func:`image_set` takes.  With ``store``, chunks of ``shard_size`` images
    are written per t as they finish and shards already there (same provenance) are read instead of
    recomputed; the result is the same either way.  ``tokens``: a ``probe.tokens.TokenPlan`` whose
    pairs index positions in ``images`` (kept in the shards too; part of the store key).
    """
    ts, layers = check_ts(ts), resolve_layers(model, layers)
    _check_choice(pooling, POOLINGS, "pooling")
    _check_choice(label, LABELS, "label mode")
    images = image_set(images)
    codec = build_codec(codec) if isinstance(codec, str) else codec
    device = next(model.parameters()).device
    cfg = model.cfg
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    prov = {**model_provenance(model), "layers": layers, "pooling": pooling, "label": label, "seed": seed,
            "n_images": len(images), "codec": codec.name, "dataset": images.name, "data_identity": images.identity,
            "path": "linear"}
    if tokens is not None:
        prov["tokens"] = tokens.provenance
    if store is not None and prov["checkpoint"] == "in-memory":
        raise UserError("a feature store needs a model loaded from a checkpoint (train.models.loading.load): save the model or pass store=None")
    key, prov_json = digest(prov), json.dumps(prov, sort_keys=True)
    model_ts = {t: _model_t(model, t) for t in ts}
    version = git_revision()
    chunks = [(s, min(s + shard_size, len(images))) for s in range(0, len(images), shard_size)]

    def shard(t: float, start: int, stop: int) -> Path:
        return Path(store) / key / f"t{t:.4f}_{start:07d}-{stop:07d}.safetensors"

    bar = tqdm(total=len(images) * len(ts), unit="img", desc=f"extract {cfg.name}", disable=not progress)
    parts: dict[float, list[dict[str, Tensor]]] = {t: [] for t in ts}
    for start, stop in chunks:
        done = {t for t in ts if store is not None and (_shard_meta(shard(t, start, stop)) or {}).get("provenance") == prov_json}
        todo = [t for t in ts if t not in done]
        bar.update((stop - start) * len(done))
        got: dict[float, list[Tensor]] = {t: [] for t in todo}
        kept: dict[float, list[list[tuple[Tensor, Tensor]]]] = {t: [] for t in todo}
        pos = start
        for idx, imgs, labs in (images.batches(batch_size, start, stop) if todo else ()):
            y = conditioning(model, images, idx, labs, label, device)
            x = codec.encode(imgs, sample=False).to(device)
            if tuple(x.shape[1:]) != shape:
                raise UserError(f"{codec.name} latents of these images are {tuple(x.shape[1:])} but {cfg.name} takes {shape}: pick the codec and image size the model was trained with")
            noise = image_noise(idx, shape, seed).to(device)
            for t in todo:
                out = predict(model, interpolate(x, noise, t), t, y, return_hidden=layers, head=False)
                got[t].append(torch.stack([pool(out.hidden[layer], pooling).float().cpu() for layer in layers]))
                if tokens is not None:
                    kept[t].append([tokens.reduce(out.hidden[layer], pos) for layer in layers])
                bar.update(len(idx))
            pos += len(idx)
        for t in ts:
            if t in done:
                tensors = load_file(str(shard(t, start, stop)))
            else:
                tensors = {"features": torch.cat(got[t], dim=1), "indices": images.indices[start:stop].clone()}
                if tokens is not None:  # (L, m, D) sampled tokens, (L, S, n) per-image spatial metrics
                    tensors["tokens"] = torch.cat([torch.stack([s for s, _ in b]) for b in kept[t]], dim=1)
                    tensors["spatial"] = torch.cat([torch.stack([v for _, v in b]) for b in kept[t]], dim=2)
                if store is not None:
                    meta = {"provenance": prov_json, "t": str(t), "model_t": str(model_ts[t]), "start": str(start),
                            "stop": str(stop), "code_version": version}
                    atomic_write(shard(t, start, stop), lambda tmp: save_file(tensors, tmp, metadata=meta))
            parts[t].append(tensors)
    bar.close()
    if store is not None:
        atomic_write(Path(store) / "index.parquet", read_index(store).to_parquet)
    joined = lambda name, dim: torch.stack([torch.cat([p[name] for p in parts[t]], dim) for t in ts], dim=1)  # noqa: E731
    values = joined("features", 1)  # (L, T, N, D)
    sampled, per_image = (joined("tokens", 1), joined("spatial", 2)) if tokens is not None else (None, None)  # (L, T, M, D), (L, T, S, N)
    spatial = {m: per_image[:, :, i] for i, m in enumerate(tokens.spatial)} if tokens is not None else {}
    prov.update(ts=list(ts), model_ts=[model_ts[t] for t in ts], code_version=version)
    return Features(values, layers, list(ts), images.indices, images.labels(), prov, sampled, spatial)


def read_index(store: str | os.PathLike) -> pd.DataFrame:
    """One row per shard in ``store``: file, t, model_t, image range, code version and provenance."""
    rows = []
    for path in sorted(Path(store).glob("*/*.safetensors")):
        meta = _shard_meta(path)
        if meta and "provenance" in meta:
            prov = json.loads(meta["provenance"])
            prov["layers"] = json.dumps(prov["layers"])
            if "tokens" in prov:
                prov["tokens"] = json.dumps(prov["tokens"])
            rows.append({"file": str(path.relative_to(store)), "t": float(meta["t"]), "model_t": float(meta["model_t"]),
                         "start": int(meta["start"]), "stop": int(meta["stop"]), "code_version": meta["code_version"], **prov})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Target-encoder features
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, images: Any, pooling: str = "mean", batch_size: int = 64,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Tensor:
    """Patch tokens of a ``train.targets.encoders.Encoder`` on ``images``, mean-pooled (N, D) or kept (N, T, D).

    With ``cache_dir`` the result is stored once per (encoder provenance, image set, pooling) in
    ``<cache_dir>/<name>-<hash>.safetensors``.  Random-init encoders are cached only when their
    provenance records ``init_seed`` (otherwise two of them would share a key).
    """
    _check_choice(pooling, POOLINGS, "pooling")
    images = image_set(images)
    prov = encoder.provenance
    cacheable = prov.get("weights") != "random-init" or "init_seed" in prov
    path = Path(cache_dir) / f"{encoder.name}-{digest([prov, images.identity, pooling])}.safetensors" if cache_dir and cacheable else None
    if path is not None and _shard_meta(path) is not None:
        return load_file(str(path))["features"]
    device = encoder.mean.device
    feats = torch.cat([pool(encoder(imgs.to(device)), pooling).cpu()
                       for _, imgs, _ in tqdm(images.batches(batch_size), total=-(-len(images) // batch_size),
                                              desc=f"encode {encoder.name}", disable=not progress)])
    if path is not None:
        meta = {"encoder": json.dumps(prov, default=str), "dataset": images.name, "data_identity": images.identity, "pooling": pooling}
        atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp, metadata=meta))
    return feats
