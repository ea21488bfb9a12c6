"""Weights shipped with the project, as DINOv2's are shipped by its authors: verified before use.

The Fashion-MNIST teachers (``fashion-ssl``, ``fashion-supervised``, ``fashion-contrastive``,
``fashion-contrastive-2x``) and evaluator
(``fashion-evaluator``) are trained once by the recipe in :mod:`train.targets.make_teachers`
(``make teachers``) and committed under ``train/weights/``: ``<name>.safetensors`` (the weights,
their config in the metadata) and ``<name>.json`` (the card: recipe, code revision, data, training
time and compute, the measures).  ``train/weights/SHA256SUMS`` (``sha256sum`` format) holds each
file's digest; :func:`verified_path` checks it on every load, so a truncated or replaced file is
refused in one line instead of giving other targets or other scores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from train.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SUMS = "SHA256SUMS"
SHIPPED = ("fashion-ssl", "fashion-supervised", "fashion-contrastive", "fashion-contrastive-2x", "fashion-evaluator")
REBUILD = "make teachers (python -m train.targets.make_teachers) rebuilds it"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sums(folder: Path = WEIGHTS_DIR) -> dict[str, str]:
    """``{file name: sha256}`` from ``folder/SHA256SUMS`` (empty when there is none)."""
    path = folder / SUMS
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, _, name = line.strip().partition("  ")
            sums[name.lstrip("*")] = digest
    return sums


def write_sum(name: str, digest: str, folder: Path = WEIGHTS_DIR) -> None:
    """Record ``digest`` for the file ``name`` in ``folder/SHA256SUMS`` (atomically, sorted)."""
    from train.run.checkpoints import atomic_write
    from train.run.rundir import build_lock

    with build_lock(folder / SUMS):  # two builds may finish at once
        sums = {**read_sums(folder), name: digest}
        text = "".join(f"{d}  {n}\n" for n, d in sorted(sums.items()))
        atomic_write(folder / SUMS, lambda tmp: Path(tmp).write_text(text))


def weights_file(name: str, folder: Path = WEIGHTS_DIR) -> Path:
    return folder / f"{name}.safetensors"


def verified_path(name: str, folder: Path = WEIGHTS_DIR) -> Path:
    """The shipped weights of ``name``, after checking their sha256 against ``SHA256SUMS``."""
    if name not in SHIPPED:
        raise UserError(f"{name!r} is not a shipped network: use one of {', '.join(SHIPPED)}")
    path = weights_file(name, folder)
    if not path.is_file():
        raise UserError(f"the shipped weights {path} are missing — restore them with git checkout, or {REBUILD}")
    expected = read_sums(folder).get(path.name)
    if expected is None:
        raise UserError(f"{folder / SUMS} has no digest for {path.name} — restore it with git checkout, or {REBUILD}")
    if (got := sha256(path)) != expected:
        raise UserError(f"{path} has sha256 {got[:12]}..., not the recorded {expected[:12]}... — the file is damaged or "
                        f"replaced: restore it with git checkout, or {REBUILD}")
    return path
