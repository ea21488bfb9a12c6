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
    except Exception as e:  # noqa: BLE001 - truncated or junk bytes fail in many ways (EOFError, struct.error, ...)
        raise UserError(f"checkpoint {path} is truncated or not a torch file ({type(e).__name__}: {str(e)[:120]}): use the previous checkpoint or re-download it") from None


class WriteError(UserError, OSError):
    """A file could not be written (disk full, read-only, no permission): one line naming the file,
    the disk and the fix.  An :class:`OSError` too, so callers that catch those still do."""


def _write_error(path: Path, e: BaseException) -> WriteError:
    import errno
    import shutil

    reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:120] or type(e).__name__
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path(path.anchor or "."))
        disk = f"{free.free / 2**30:.1f} GiB free on the disk of {path.parent}"
    except OSError:
        disk = f"the disk of {path.parent}"
    if getattr(e, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make it writable or pass another output directory"
    else:
        fix = "free space there or pass another output directory"
    return WriteError(f"cannot write {path} ({reason}; {disk}): {fix}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``:
    readers see the old file or the new one, never a partial one.  The temporary file is named
    ``.<name>.<random>.tmp`` (a kill -9 can leave one; :func:`train.run.rundir.remove_stale_temporaries`
    deletes them).  A write that fails for want of space or permission raises :class:`WriteError`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    except RuntimeError as e:  # torch.save's writer: "[enforce fail at inline_container.cc] ... file write failed"
        if "inline_container" in str(e) or "write" in str(e).lower():
            raise _write_error(path, e) from e
        raise
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (the old file survives a crash mid-write)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def nonfinite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors of a (nested) state dict that hold NaN or inf."""
    bad = []
    for k, v in state.items():
        if isinstance(v, dict):
            bad += nonfinite_tensors(v, f"{prefix}{k}.")
        elif isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(f"{prefix}{k}")
    return bad


def newest_intact_checkpoint(ckpt_dir: str | os.PathLike, latest: str = "latest.pt") -> tuple[Path, Any, list[str]] | None:
    """The checkpoint a run resumes from: ``latest.pt``, or when that is unreadable or holds NaN/inf
    weights, the newest intact ``step_*.pt``.  Returns ``(path, state, problems)`` with one line per
    file passed over, or None when the folder holds no checkpoint at all; raises a one-line
    :class:`UserError` when checkpoints exist but none is intact."""
    ckpt_dir = Path(ckpt_dir)
    candidates = [ckpt_dir / latest] if (ckpt_dir / latest).is_file() else []
    candidates += sorted(ckpt_dir.glob("step_*.pt"), reverse=True)
    problems = []
    for path in candidates:
        try:
            state = read_checkpoint(path)
        except UserError as e:
            problems.append(str(e).rsplit(": ", 1)[0])
            continue
        if not isinstance(state, dict) or not {"model", "ema", "opt", "step"} <= set(state):
            problems.append(f"{path} is not a training checkpoint of this toolkit")
            continue
        bad = nonfinite_tensors({"model": state["model"], "ema": state["ema"]})
        if bad:
            problems.append(f"{path} holds NaN/inf weights ({bad[0]})")
            continue
        return path, state, problems
    if problems:
        raise UserError(f"no intact checkpoint in {ckpt_dir} ({'; '.join(problems)[:300]}): "
                        "restore one, or delete the folder to start the run over")
    return None


def keep_in_series(step: int, every: int, mode: str) -> bool:
    """Periodic checkpoints kept for probing: all multiples of ``every``, or ``every * 2^k``."""
    if step % every:
        return False
    k = step // every
    return mode == "all" or (k & (k - 1)) == 0
