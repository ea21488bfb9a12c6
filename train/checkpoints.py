"""Reading checkpoints safely and writing them atomically.

Checkpoints are plain data (tensors, numbers, strings, lists, dicts) that load with
``torch.load(weights_only=True)``: no code from a checkpoint file ever runs.  Legacy DiT/SiT/REPA
training checkpoints pickle an ``argparse.Namespace`` under ``args``; that single class is
allow-listed (it holds data only).  Writes go to a temporary file in the same directory, are
flushed and fsync'ed, then renamed over the target, so a crash mid-write leaves the previous file
intact.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from train.errors import UserError


def repa_cache_dir() -> Path:
    """Where the toolkit caches what it trains or computes once (built-in teachers and evaluator,
    reference statistics, encoder features): ``$REPA_CACHE``, default ``~/.cache/repa-toolkit``."""
    return Path(os.environ.get("REPA_CACHE", "~/.cache/repa-toolkit")).expanduser()


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a ``.pt``/``.pth``/``.bin`` (torch) or ``.safetensors`` file without executing code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise UserError(f"checkpoint {path} is not a readable safetensors file ({type(e).__name__}): re-download or re-save it") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise UserError(f"checkpoint {path} holds objects other than plain data ({first}): re-save its state dict with torch.save(model.state_dict())") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"checkpoint {path} is truncated or not a torch file ({type(e).__name__}: {str(e)[:120]}): use the previous checkpoint or re-download it") from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``:
    readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (the old file survives a crash mid-write)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
