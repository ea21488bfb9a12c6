"""The one training loop of the built-in networks (teachers, evaluator), resumable and deterministic.

:func:`fit` runs ``cfg.steps`` AdamW steps (``lr``, ``weight_decay``) with a linear warm-up over
``warmup`` steps and cosine decay; each step draws ``cfg.batch_size`` indices in ``[0, n)`` with
replacement from one ``torch.Generator`` and minimises ``batch_loss(indices)`` (which may draw from
the same generator: masks, flips, shifts).  With ``state_path`` it writes its whole state (weights,
optimiser, schedule, generator, step) there atomically every ``save_every`` steps and continues
from it when started again: a killed build resumes where it stopped and ends with the same weights
as an uninterrupted one (same thread count).  :func:`fit_classifier` is the classifier's loss
(cross-entropy of shifted, flipped images).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

FIT_STATE_FORMAT = "repa-fit-state/1"


def augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (edge padding) and horizontal flips."""
    b, _, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * shift + 1, (2, b, 1), generator=gen))
    rows, cols = dy + torch.arange(h), dx + torch.arange(w)
    x = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _save_state(path: Path, step: int, model: nn.Module, opt, sched, gen: torch.Generator) -> None:
    from train.run.checkpoints import atomic_save

    atomic_save({"format": FIT_STATE_FORMAT, "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
                 "sched": sched.state_dict(), "gen": gen.get_state()}, path)


def fit(model: nn.Module, cfg, gen: torch.Generator, batch_loss: Callable[[torch.Tensor], torch.Tensor],
        n: int, desc: str, progress: bool = True, max_grad_norm: float | None = None,
        state_path: str | os.PathLike | None = None, save_every: int = 500) -> nn.Module:
    """Train ``model`` as the module docstring says; returns it in eval mode."""
    from tqdm.auto import tqdm

    from train.run.checkpoints import read_checkpoint

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup)
                                              * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    start = 0
    state_path = Path(state_path) if state_path is not None else None
    if state_path is not None and state_path.exists():  # resume: everything the next step depends on
        state = read_checkpoint(state_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        start = state["step"]
    model.train()
    for step in tqdm(range(start, cfg.steps), desc=desc, disable=not progress, initial=start, total=cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        loss = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        if state_path is not None and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            _save_state(state_path, step + 1, model, opt, sched, gen)
    return model.eval()


def fit_classifier(model: nn.Module, data, cfg, gen: torch.Generator, desc: str, progress: bool = True,
                   label_smoothing: float = 0.0, max_grad_norm: float | None = None,
                   state_path: str | os.PathLike | None = None) -> nn.Module:
    """Train a classifier (the supervised teacher, the built-in evaluator) with :func:`fit` on
    ``data.images``/``data.labels``, each batch shifted by up to ``cfg.shift`` pixels and flipped
    (:func:`augment`)."""
    def loss(idx: torch.Tensor) -> torch.Tensor:
        x = augment(data.images[idx].float() / 127.5 - 1.0, cfg.shift, gen)
        return F.cross_entropy(model(x), data.labels[idx], label_smoothing=label_smoothing)

    return fit(model, cfg, gen, loss, len(data), desc, progress, max_grad_norm, state_path)
