"""Linear probes: the REPA paper's protocol, every layer x noise level trained at once.

Protocol (REPA-NOTES section 5): a parameter-free BatchNorm (``affine=False``) followed by a linear
layer, Adam, learning rate 1e-3 with cosine decay to 0 over all steps, 90 epochs, batch 16,384,
fitted on a training split and scored on a held-out one.  P probes of the same width are stacked:
BatchNorm runs on the ``(B, P * D)`` concatenation (per-feature statistics, so it is P independent
BatchNorms), the linear maps are one ``(P, D, C)`` weight applied with ``einsum``, one Adam
optimises all of them and the loss is the SUM of the P cross-entropies, so every probe receives
exactly the gradient it would receive alone (Adam is elementwise).  Weights start at zero and all
probes see the same batches (one ``torch.Generator`` seeded by ``seed``), so a stacked probe equals
the probe trained on its own with the same seed.  ``method="sklearn"`` fits a standardised
scikit-learn ``LogisticRegression`` per probe instead (small sets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.errors import UserError

METHODS = ("torch", "sklearn")


class LinearProbes(nn.Module):
    """P stacked probes ``BatchNorm1d(D, affine=False) -> Linear(D, C)``: (P, B, D) -> logits (P, B, C)."""

    def __init__(self, num_probes: int, dim: int, num_classes: int):
        super().__init__()
        self.num_probes, self.dim = num_probes, dim
        self.norm = nn.BatchNorm1d(num_probes * dim, affine=False)
        self.weight = nn.Parameter(torch.zeros(num_probes, dim, num_classes))
        self.bias = nn.Parameter(torch.zeros(num_probes, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        p, b, d = x.shape
        x = self.norm(x.permute(1, 0, 2).reshape(b, p * d)).reshape(b, p, d).permute(1, 0, 2)  # (P, B, D)
        return torch.einsum("pbd,pdc->pbc", x, self.weight) + self.bias[:, None]


def fit_linear_probes(x: Tensor, y: Tensor, num_classes: int, epochs: int = 90, batch_size: int = 16384,
                      lr: float = 1e-3, seed: int = 0) -> LinearProbes:
    """Train P probes on features ``x`` (P, N, D) with labels ``y`` (N,); returns them in eval mode.

    Each epoch visits a fresh permutation split into ``ceil(N / batch_size)`` near-equal batches
    (no batch of one, which BatchNorm cannot use).  Runs on ``x``'s device.  Turns on flushing of
    denormal floats for the process (``torch.set_flush_denormal``), as the training loop does.
    """
    p, n, d = x.shape
    torch.set_flush_denormal(True)  # as the training loop: Adam's tiny updates as denormals slow CPU steps 2-3x
    if n < 2:
        raise UserError(f"a linear probe needs at least 2 training images, got {n}: pass more images")
    y = y.to(x.device)
    probes = LinearProbes(p, d, num_classes).to(x.device).train()
    n_batches = math.ceil(n / batch_size)
    opt = torch.optim.Adam(probes.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * n_batches)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=gen).tensor_split(n_batches):
                idx = idx.to(x.device)
                logits = probes(x[:, idx])  # (P, B, C)
                loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(p), reduction="sum") / len(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return probes.eval()


@torch.no_grad()
def probe_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, num_classes: int | None = None,
                   method: str = "torch", epochs: int = 90, batch_size: int = 16384, lr: float = 1e-3,
                   seed: int = 0) -> Tensor:
    """Held-out accuracy (P,) of P probes fitted on ``x_train`` (P, N, D) and scored on ``x_test`` (P, M, D).

    ``num_classes`` defaults to ``max label + 1``; ``method``: ``"torch"`` (the paper's protocol,
    batched) or ``"sklearn"`` (standardised LogisticRegression, lbfgs, per probe; ``epochs``,
    ``batch_size`` and ``lr`` unused).
    """
    if method not in METHODS:
        raise UserError(f"unknown linear-probe method {method!r}: use one of {', '.join(METHODS)}")
    if x_train.ndim != 3 or x_test.ndim != 3 or x_train.shape[::2] != x_test.shape[::2]:
        raise ValueError(f"expected (P, N, D) train and (P, M, D) test features, got {tuple(x_train.shape)} and {tuple(x_test.shape)}")
    y_test = y_test.to(x_test.device)
    if y_train.unique().numel() < 2:
        raise UserError("the linear probe's training images hold a single class: pass more training images (n_train)")
    if method == "sklearn":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return torch.tensor([
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
            .fit(a.cpu().numpy(), y_train.cpu().numpy()).score(b.cpu().numpy(), y_test.cpu().numpy())
            for a, b in zip(x_train, x_test)
        ])
    num_classes = num_classes or int(max(y_train.max(), y_test.max())) + 1
    probes = fit_linear_probes(x_train, y_train, num_classes, epochs, batch_size, lr, seed)
    return (probes(x_test).argmax(-1) == y_test).float().mean(1).cpu()
