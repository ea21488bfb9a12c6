"""What a run directory records besides its checkpoints: ``config.json`` (the resolved config, the git
revision, the versions; a resumed run must match it), ``metrics.jsonl`` (cut back to the step a resume
starts from) and the sample grids ``samples/step_*.png``."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path

import torch

from train.errors import UserError
from train.run.checkpoints import atomic_write
from train.run.config import LIVE_ALIGN_FIELDS, TrainConfig

Tensor = torch.Tensor


def git_revision() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_config(out: Path, cfg: TrainConfig, extra: dict | None = None) -> None:
    meta = {"config": cfg.to_dict(), "git_revision": git_revision(), "torch": torch.__version__,
            "python": platform.python_version(), **(extra or {})}
    atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))


def check_resume_config(out: Path, cfg: TrainConfig) -> None:
    """A run directory belongs to one configuration.  The step count may grow, and what a failed run
    is resumed with to get past the failure may change (``lr``, ``max_grad_norm``,
    ``mixed_precision``: the optimizer takes them from the new config).  Fields added to the
    config after the run started count as their defaults (a run from before they existed resumes)."""
    f = out / "config.json"
    if not f.exists():
        return
    try:
        old = json.loads(json.dumps(TrainConfig.from_dict(json.loads(f.read_text())["config"]).to_dict()))
    except (TypeError, ValueError) as e:
        raise UserError(f"{out} holds a run whose config.json this version cannot read ({e}): use a new --out directory") from None
    new = json.loads(json.dumps(cfg.to_dict()))
    ignore = {"steps", "log_every", "ckpt_every", "sample_every", "eval_every", "eval_samples", "eval_ref_split", "threads",
              "device", "tensorboard",
              "lr", "max_grad_norm", "mixed_precision", *LIVE_ALIGN_FIELDS}  # measuring changes no weight
    diff = sorted(k for k in new if k not in ignore and old.get(k) != new[k])
    if diff:
        raise UserError(f"{out} holds a run with different settings ({', '.join(diff)}): use a new --out directory or the same options")


def made_at(out: Path, step: int) -> frozenset[str]:
    """What the run directory holds of :func:`train.run.loop.measure` at ``step``: ``"samples"`` (the grid's file),
    ``"evaluation"`` (a logged ``fd``), ``"live"`` (logged ``align/`` values)."""
    made = {"samples"} if (out / "samples" / f"step_{step:07d}.png").is_file() else set()
    log_file = out / "metrics.jsonl"
    for line in (log_file.read_text().splitlines() if log_file.is_file() else []):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step") == step:
            made |= {"evaluation"} if "fd" in rec else set()
            made |= {"live"} if any(k.startswith("align/") for k in rec) else set()
    return frozenset(made)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        try:
            if json.loads(ln).get("step", 0) <= step:
                keep.append(ln)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    path.write_text("".join(k + "\n" for k in keep))


def save_grid(images: Tensor, path: Path, nrow: int) -> None:
    """uint8 (N, 3, H, W) -> one PNG grid."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + 2) + 2, nrow * (w + 2) + 2), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = images[i]
    atomic_write(path, lambda tmp: Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG"))
