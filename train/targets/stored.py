"""The encoder-target cache: a frozen encoder's patch tokens of every image and its mirror image.

:func:`build_target_cache` (``python -m train.data targets``) stores them beside a latent cache
(:mod:`train.data.latent_cache`, whose manifest fixes the images and their order) in
``targets_<encoder>/``, keyed by :func:`encoder_key`; :func:`open_target_cache` returns the
:class:`StoredTargets` the trainer reads instead of encoding (``train.data.datasets`` re-exports them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from train.errors import UserError
from train.data.latent_cache import MANIFEST, _shard_rows


TARGETS_FORMAT = "repa-targets/1"
TARGETS_INFO = "encoder.json"


def target_dir(root: str | Path, name: str) -> Path:
    """Where the stored targets of encoder ``name`` live: ``<latent cache>/targets_<name>/``."""
    return Path(root) / f"targets_{name}"


def encoder_key(encoder) -> str:
    """Identity of a target encoder for stored targets: ``<name>-g<grid>-<digest>``, the digest over
    its provenance (architecture, preprocessing, target, output grid) without the path its weights
    came from, and over the weights themselves: the same weights read from another place match,
    other weights (another checkpoint, another random init) do not."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in encoder.provenance.items() if k != "weights"}, sort_keys=True).encode())
    for k, v in sorted(encoder.model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{encoder.name}-g{encoder.grid}-{h.hexdigest()[:16]}"


def _manifest_digest(root: Path) -> str:
    import hashlib

    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()[:16]


def _targets_fix(root: Path, encoder) -> str:
    return (f"rebuild it with python -m train.data targets --cache {root} --encoders {encoder.name} --grid {encoder.grid} "
            f"--rebuild (and this run's --encoder-weights), or delete {target_dir(root, encoder.name)} to encode online")


def _check_target_info(info: dict, root: Path, encoder, key: str) -> None:
    where = target_dir(root, encoder.name)
    if info.get("format") != TARGETS_FORMAT:
        raise UserError(f"{where} is not a target cache of this toolkit ({TARGETS_FORMAT}): {_targets_fix(root, encoder)}")
    if info.get("manifest") != _manifest_digest(root):
        raise UserError(f"{where} was made for another latent cache (its manifest differs): {_targets_fix(root, encoder)}")
    if info.get("grid") != encoder.grid:
        raise UserError(f"{where} holds {info.get('grid')}x{info.get('grid')} tokens but this run needs "
                        f"{encoder.grid}x{encoder.grid}: {_targets_fix(root, encoder)}")
    if info.get("key") != key:
        raise UserError(f"{where} was made by another {encoder.name} encoder ({info.get('key')}, this run's is {key}: "
                        f"other weights or preprocessing): {_targets_fix(root, encoder)}")


def build_target_cache(root: str | Path, encoders: Sequence, batch_size: int = 64, device: str = "cpu",
                       dtype: torch.dtype = torch.float16, progress: bool = True, rebuild: bool = False) -> list[Path]:
    """Store the patch tokens of every image of the latent cache ``root`` and of its mirror image
    (``image.flip(-1)``, what ``data.hflip`` feeds the encoder) for each of ``encoders`` (built with
    :func:`train.targets.encoders.load_encoder` at the grid the model needs): ``root/targets_<name>/``
    holds ``encoder.json`` (the encoder's key and provenance, the grid, the dtype, the manifest's
    digest; written first) and one ``shard_XXXXX.safetensors`` (``tokens``, ``tokens_flip``:
    ``(n, grid*grid, dim)``) per latent shard.  Shards on disk are skipped, so an interrupted run
    resumes; targets of another encoder (other weights, grid or preprocessing) or another dtype
    are refused.  float32 stores the encoder's output as is (bitwise the online tokens when the
    kernels see the same batch shape; other batch shapes or mixed-precision autocast can change
    the last bits); float16 (the default) halves the disk and equals the in-memory cache the
    trainer would otherwise compute.  ``rebuild=True`` (``--rebuild``) replaces targets made by
    another encoder, grid, dtype or latent cache instead of refusing them.  A damaged (truncated)
    shard is encoded again.
    """
    import json

    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from train.run.checkpoints import atomic_write

    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise UserError(f"no {MANIFEST} in {root}: build the latent cache first with python -m train.data encode --root IMAGES --out {root}")
    with open(root / MANIFEST) as f:
        n_rows = sum(1 for _ in f) - 1
    shards = sorted(root.glob("shard_*.safetensors"))
    counts = [_shard_rows(p) for p in shards]
    if None in counts:
        raise UserError(f"latent shard {shards[counts.index(None)]} is truncated or unreadable: rerun its python -m train.data "
                        "encode command (it encodes that shard again) first")
    have = sum(counts)
    if have != n_rows:
        raise UserError(f"the latent cache in {root} is incomplete ({have} of {n_rows} images): rerun its encode command to finish it first")
    dtype_name = str(dtype).removeprefix("torch.")
    written = []
    for enc in encoders:
        enc = enc.to(device)
        key, where = encoder_key(enc), target_dir(root, enc.name)
        info = {"format": TARGETS_FORMAT, "key": key, "encoder": enc.name, "grid": enc.grid, "dim": enc.dim,
                "dtype": dtype_name, "manifest": _manifest_digest(root), "rows": n_rows, "provenance": enc.provenance}
        old = _read_target_info(where)
        if old is not None and rebuild:
            try:
                _check_target_info(old, root, enc, key)
                same = old.get("dtype") == dtype_name
            except UserError:
                same = False
            if not same:  # start over: the old targets were made by another encoder, grid or dtype
                for p in where.glob("shard_*.safetensors"):
                    p.unlink()
                (where / TARGETS_INFO).unlink()
                old = None
        if old is not None:
            _check_target_info(old, root, enc, key)
            if old.get("dtype") != dtype_name:
                raise UserError(f"{where} is being built as {old.get('dtype')}: rerun with --dtype {old.get('dtype')}, "
                                f"or with --rebuild to start over as {dtype_name}")
        else:
            atomic_write(where / TARGETS_INFO, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))

        def tokens(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([enc(images[s:s + batch_size].to(device)).to("cpu", dtype)
                              for s in range(0, len(images), batch_size)]).contiguous()

        for shard in tqdm(shards, desc=f"targets {enc.name}", disable=not progress):
            path = where / shard.name
            if path.exists() and _shard_rows(path, "tokens", ("tokens", "tokens_flip")) == _rows_in(shard):
                continue
            images = load_file(str(shard))["images"]
            tensors = {"tokens": tokens(images), "tokens_flip": tokens(images.flip(-1))}
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": TARGETS_FORMAT, "key": key}))
        written.append(where)
    return written


def _read_target_info(where: Path) -> dict | None:
    """``encoder.json`` of a target cache; a damaged one reads as a cache of another encoder."""
    import json

    if not (where / TARGETS_INFO).is_file():
        return None
    try:
        info = json.loads((where / TARGETS_INFO).read_text())
    except (OSError, ValueError):
        return {"format": "unreadable"}
    return info if isinstance(info, dict) else {"format": "unreadable"}


def _rows_in(path: Path, name: str = "labels") -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_slice(name).get_shape()[0]


class StoredTargets:
    """Stored targets of one encoder (:func:`open_target_cache`), read row by row from the shard
    files when asked (memory-mapped: the cache need not fit in memory)."""

    def __init__(self, where: Path, shard_files: list[Path], sizes: list[int]) -> None:
        self.where, self.files = where, shard_files
        self.starts = torch.tensor([0, *np.cumsum(sizes).tolist()])
        self._open: dict[int, object] = {}  # shard -> safe_open handle, opened on first use
        self._slices: dict[tuple[int, str], object] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _slice(self, k: int, name: str):
        from safetensors import safe_open

        if (k, name) not in self._slices:
            if k not in self._open:
                self._open[k] = safe_open(str(self.files[k]), "pt")
            self._slices[k, name] = self._open[k].get_slice(name)
        return self._slices[k, name]

    def gather(self, idx: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """float32 tokens ``(len(idx), T, D)`` of images ``idx``; of the mirror image where ``flip``."""
        idx = torch.as_tensor(idx).cpu()
        shard = torch.searchsorted(self.starts, idx, right=True) - 1
        row = idx - self.starts[shard]
        flips = flip.cpu().tolist() if flip is not None else [False] * len(idx)
        rows = [self._slice(k, "tokens_flip" if f else "tokens")[r:r + 1]
                for k, r, f in zip(shard.tolist(), row.tolist(), flips)]
        return torch.cat(rows).float()


def open_target_cache(root: str | Path, encoder) -> StoredTargets | None:
    """The stored targets of ``encoder`` beside the latent cache ``root``; None when there are none.
    Targets made by another encoder (weights, grid, preprocessing), for another latent cache, or
    not finished raise a one-line :class:`UserError` naming the fix."""
    import json

    root = Path(root)
    where = target_dir(root, encoder.name)
    if not where.is_dir():
        return None
    if not (where / TARGETS_INFO).is_file():
        raise UserError(f"{where} has no {TARGETS_INFO} (an unfinished target cache): {_targets_fix(root, encoder)}")
    _check_target_info(_read_target_info(where), root, encoder, encoder_key(encoder))
    latent = sorted(root.glob("shard_*.safetensors"))
    files = [where / p.name for p in latent]
    missing = sum(not f.is_file() for f in files)
    if missing:
        raise UserError(f"the target cache {where} is incomplete ({missing} of {len(files)} shards missing): rerun the same "
                        f"python -m train.data targets command to finish it, or delete {where} to encode online")
    sizes = [_shard_rows(f, "tokens", ("tokens", "tokens_flip")) for f in files]
    damaged = [f.name for f, n in zip(files, sizes) if n is None]
    if damaged:
        raise UserError(f"target shard {where / damaged[0]} is truncated or unreadable: rerun the same python -m train.data "
                        f"targets command (it encodes that shard again), or delete {where} to encode online")
    if sizes != [_rows_in(p) for p in latent]:
        raise UserError(f"the target cache {where} does not match the latent shards of {root}: {_targets_fix(root, encoder)}")
    return StoredTargets(where, files, sizes)
