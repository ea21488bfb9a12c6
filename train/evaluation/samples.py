"""Sampling to disk: :class:`SampleSpec`, :func:`generate`, :func:`sample_to_dir`, :func:`load_samples`.

Sample ``i`` starts from noise drawn by a generator seeded by ``(seed, i)``; its label (when not given)
likewise.  Samples are made in fixed *chunks* of ``chunk`` consecutive indices; the SDE sampler's noise
comes from one generator per chunk, seeded by ``(seed, first index)``.  A chunk is the unit of work, of
sharding (rank ``r`` of ``w`` takes chunks ``r, r + w, ...``) and of resume (a chunk whose PNGs all
exist is skipped), so sharded, resumed and single-process runs give the same samples.  The
``repa-sample`` CLI is ``train.evaluation.evaluate.sample_main``; every name here is re-exported by ``train.evaluation.evaluate``.

Text-to-image models (:mod:`train.models.mmdit`) are conditioned on caption features ``contexts`` (P, L, C)
instead of class ids: ``spec.labels = range(P)`` cycles the captions over the samples, sample ``i``
takes ``contexts[i % P]`` and its "label" (in the ``.npz``) is that caption's index.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from train.run.checkpoints import atomic_write
from train.errors import UserError
from train.data.latents import Codec, build_codec

Tensor = torch.Tensor


@dataclass(frozen=True)
class SampleSpec:
    """What to sample.  ``labels``: class ids cycled over the samples (``()``: uniform draws from the
    seed); ``chunk``: samples per chunk (the unit of SDE noise, sharding and resume -- changing it
    changes SDE samples, nothing else); ``path``: the interpolant the model was trained with."""

    n: int
    sampler: str = "euler"
    steps: int = 50
    cfg_scale: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    labels: tuple[int, ...] = ()
    chunk: int = 64
    path: str = "linear"

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.chunk)

    def chunk_range(self, k: int) -> range:
        return range(k * self.chunk, min((k + 1) * self.chunk, self.n))


def seeded_generator(seed: int, stream: str, index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator that depends only on ``(seed, stream, index)`` (a 64-bit BLAKE2 hash of them)."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{index}".encode(), digest_size=8).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(digest, "little") >> 1)


def sample_labels(spec: SampleSpec, indices: Sequence[int], num_classes: int) -> Tensor:
    """Labels of samples ``indices``: ``spec.labels`` cycled, or uniform draws seeded by ``(seed, i)``."""
    if spec.labels:
        return torch.tensor([spec.labels[i % len(spec.labels)] for i in indices], dtype=torch.long)
    return torch.cat([torch.randint(num_classes, (1,), generator=seeded_generator(spec.seed, "label", i))
                      for i in indices]) if len(indices) else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def sample_chunk(model: nn.Module, spec: SampleSpec, codec: Codec, k: int,
                 contexts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunk ``k`` of ``spec``: ``(uint8 images (B, 3, H, W), labels (B,))`` on the CPU.

    Depends only on ``(spec, k)`` and the model: never on which process or run computes it.
    ``contexts`` (P, L, C): a text-to-image model's caption features, indexed by the labels.
    """
    from train.evaluation.sampling import sample

    cfg, device = model.cfg, next(model.parameters()).device
    idx = spec.chunk_range(k)
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    noise = torch.stack([torch.randn(shape, generator=seeded_generator(spec.seed, "noise", i)) for i in idx])
    labels = sample_labels(spec, idx, cfg.num_classes)
    gen = seeded_generator(spec.seed, "sde", idx.start, device) if spec.sampler == "sde" else None
    reg = {}
    if getattr(cfg, "reg_dim", 0):  # a REG model's global-token noise, per sample like the latents'
        reg["cls_noise"] = torch.stack([torch.randn(cfg.reg_dim, generator=seeded_generator(spec.seed, "reg", i))
                                        for i in idx]).to(device)
    y = labels if contexts is None else contexts[labels]  # class ids (B,) or caption features (B, L, C)
    x = sample(model, noise.to(device), y.to(device), spec.sampler, spec.steps, spec.cfg_scale,
               spec.guidance_interval, gen, spec.path, **reg)
    return codec.decode(x, uint8=True).cpu(), labels


def default_codec(model: nn.Module) -> Codec:
    """Pixel space for 3-channel (identity) and 1-channel (grey) models, else the SD-VAE (local weights needed)."""
    from train.data.latents import codec_for_channels

    return build_codec(codec_for_channels(model.cfg.in_channels)).to(next(model.parameters()).device)


def generate(model: nn.Module, n: int, sampler: str = "euler", steps: int = 50, cfg_scale: float = 1.0,
             guidance_interval: tuple[float, float] = (0.0, 1.0), labels: Sequence[int] = (), seed: int = 0,
             chunk: int = 64, codec: Codec | None = None, path: str = "linear",
             progress: bool = False) -> tuple[Tensor, Tensor]:
    """``n`` samples of ``model`` in memory: ``(uint8 images (n, 3, H, W), labels (n,))``.

    The same samples as :func:`sample_to_dir` with the same arguments (see :class:`SampleSpec`).
    """
    spec = SampleSpec(n, sampler, steps, cfg_scale, tuple(guidance_interval), seed, tuple(labels), chunk, path)
    return generate_spec(model, spec, codec or default_codec(model), progress)


def generate_spec(model: nn.Module, spec: SampleSpec, codec: Codec, progress: bool = False) -> tuple[Tensor, Tensor]:
    """All chunks of ``spec`` in memory: ``(uint8 images, labels)``."""
    from tqdm.auto import tqdm

    parts = [sample_chunk(model, spec, codec, k)
             for k in tqdm(range(spec.n_chunks), desc="sampling", unit="chunk", disable=not progress)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _png_path(out: Path, i: int) -> Path:
    return out / "images" / f"{i:06d}.png"


def _write_png(image: Tensor, path: Path) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG"))


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"sample {path} is not a readable PNG ({e}): delete it and rerun the same repa-sample command") from None


def _png_ok(path: Path) -> bool:
    """Whether a sample PNG of an earlier run is there and decodes (a junk or cut one is sampled again)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez does not append ".npz" to it
            np.savez(f, **arrays)

    atomic_write(path, write)


def npz_name(n: int, height: int, width: int) -> str:
    """ADM's file name for ``n`` samples: ``samples_{n}x{H}x{W}x3.npz``."""
    return f"samples_{n}x{height}x{width}x3.npz"


def shard() -> tuple[int, int]:
    """``(rank, world size)`` from ``RANK``/``WORLD_SIZE`` (torchrun and accelerate set them)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def sample_to_dir(model: nn.Module, spec: SampleSpec, codec: Codec, out: str | os.PathLike,
                  rank: int = 0, world: int = 1, meta: dict | None = None,
                  progress: bool = True, contexts: Tensor | None = None) -> dict[str, Any]:
    """Write the chunks of ``spec`` that belong to ``rank`` of ``world`` as ``out/images/000000.png``...

    Chunks whose PNGs all exist are skipped (resume).  ``out/sample_config.json`` records ``spec``,
    the codec and ``meta`` (checkpoint, git revision); an existing one that differs is an error.
    Whichever process sees all PNGs present at its end assembles ``out/samples_NxHxWx3.npz``
    (``arr_0``: uint8 NHWC; labels as ``labels`` and, like ADM, ``arr_1``) and ``out/grid.png`` (the
    first 64).  ``contexts``: caption features of a text-to-image model (:func:`sample_chunk`).  Returns
    ``{"sampled": [chunk ids], "skipped": [...], "npz": path or None}``.
    """
    from tqdm.auto import tqdm

    from train.run.loop import git_revision, save_grid

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    config = {**asdict(spec), "guidance_interval": list(spec.guidance_interval), "labels": list(spec.labels) or "uniform",
              "codec": codec.name, **(meta or {})}
    cfg_file = out / "sample_config.json"
    if cfg_file.exists():
        old = json.loads(cfg_file.read_text())
        diff = sorted(k for k in config if old.get(k) != config[k])
        if diff:
            raise UserError(f"{out} holds samples made with other settings ({', '.join(diff)}): "
                            "use a new --out directory or the same options")
    elif rank == 0:
        atomic_write(cfg_file, lambda tmp: Path(tmp).write_text(
            json.dumps({**config, "git_revision": git_revision()}, indent=2)))

    mine = range(rank, spec.n_chunks, world)
    sampled, skipped = [], []
    bar = tqdm(total=sum(len(spec.chunk_range(k)) for k in mine), desc=f"sampling (rank {rank}/{world})",
               unit="img", disable=not progress)
    for k in mine:
        idx = spec.chunk_range(k)
        if all(_png_ok(_png_path(out, i)) for i in idx):
            skipped.append(k)
        else:
            images, _ = sample_chunk(model, spec, codec, k, contexts)
            for i, image in zip(idx, images):
                _write_png(image, _png_path(out, i))
            sampled.append(k)
        bar.update(len(idx))
    bar.close()

    npz = None
    if all(_png_path(out, i).exists() for i in range(spec.n)):
        arr = np.stack([_read_png(_png_path(out, i)) for i in range(spec.n)])
        labels = sample_labels(spec, range(spec.n), model.cfg.num_classes).numpy()
        npz = out / npz_name(*arr.shape[:3])
        _save_npz(npz, arr_0=arr, arr_1=labels, labels=labels)  # arr_1: where ADM's sampler puts labels
        save_grid(torch.from_numpy(arr[:64]).permute(0, 3, 1, 2), out / "grid.png", nrow=8)
    return {"sampled": sampled, "skipped": skipped, "npz": npz}


def load_samples(path: str | os.PathLike) -> tuple[Tensor, Tensor | None]:
    """Samples written by :func:`sample_to_dir` (its directory or ``.npz``; any ADM-style npz):
    ``(uint8 images (N, 3, H, W), labels or None)``."""
    path = Path(path)
    def read(p: Path):
        try:
            with np.load(p) as data:
                arr = data["arr_0"]
                key = next((k for k in ("labels", "arr_1") if k in data), None)
                return arr, (torch.from_numpy(data[key]).long() if key else None)
        except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, a missing arr_0, pickle refusals: a junk file
            raise UserError(f"{p} is not a readable samples .npz ({type(e).__name__}): delete it and rerun repa-sample") from None

    if path.is_dir():
        found = sorted(path.glob("samples_*.npz"))
        if not found:
            raise UserError(f"no samples_*.npz in {path}: finish sampling first (rerun repa-sample with the same options)")
        readable = []
        for p in found:  # a junk .npz beside the real one is passed over
            try:
                readable.append((p, read(p)))
            except UserError:
                continue
        if not readable:
            raise UserError(f"no readable samples_*.npz in {path} ({', '.join(p.name for p in found)}): delete them and rerun repa-sample")
        if len(readable) > 1:
            raise UserError(f"{path} holds several samples .npz ({', '.join(p.name for p, _ in readable)}): pass one of them")
        path, (arr, labels) = readable[0]
    elif not path.is_file():
        raise UserError(f"samples {path} not found: pass an .npz (arr_0 uint8 NHWC) or a repa-sample --out directory")
    else:
        arr, labels = read(path)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserError(f"{path}: arr_0 is {arr.dtype} {arr.shape}, expected uint8 (N, H, W, 3): save samples as ADM does")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), labels
