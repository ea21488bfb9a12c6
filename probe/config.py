"""What decides the numbers of an analysis: :class:`ProbeConfig` (recorded in every table's JSON
sidecar) and the metric names it accepts (:data:`METRICS`: the alignment metrics of :data:`ALIGNMENT`,
the linear probe, and the opt-in token-level :data:`TOKEN_METRICS` of :mod:`probe.tokens`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from probe.extract import DEFAULT_TS, LABELS, POOLINGS, check_ts
from probe.linear import METHODS
from probe.metrics import SPATIAL, cka, cknna, mutual_knn
from train.errors import UserError

TOKEN_METRICS = ("cknna_token", *SPATIAL)


@dataclass
class ProbeConfig:
    """Everything that decides the numbers of an analysis (recorded in the JSON sidecar).

    ``image_size=None`` takes the first model's input size times the codec's downsampling;
    ``n_train=0`` or no ``"linear_probe"`` in ``metrics`` skips the probes; ``q=None`` disables
    clipping; ``cknna_mode`` is the score mode of CKNNA and CKA (``probe.metrics``); ``store``
    keeps extracted features (``<store>/features``) and encoder features (``<store>/encoders``;
    without a store they are cached under ``$REPA_CACHE/encoder-features``).  Token-level metrics
    (``probe.tokens``): ``token_samples`` (image, token) pairs for ``cknna_token``; ``r_near`` and
    ``r_far`` for ``lds`` (``r_far=None``: scaled to the grid, ``probe.metrics.default_r_far``).
    """

    dataset: str | None = None  # None: the checkpoint's own (probe.run_defaults)
    data_root: str | None = None
    image_size: int | None = None
    split: str = "val"
    n_images: int = 1000
    train_split: str = "train"
    n_train: int = 2000
    ts: tuple[float, ...] = DEFAULT_TS
    layers: str | tuple[int, ...] = "all"
    metrics: tuple[str, ...] = ("cknna", "cka", "mutual_knn", "linear_probe")
    k: int = 10
    cknna_mode: str = "reference"
    q: float | None = 0.95
    normalize: bool = True
    pooling: str = "mean"
    token_samples: int = 2000
    r_near: int = 1
    r_far: int | None = None
    label: str = "null"
    seed: int = 0
    codec: str | None = None  # None: the checkpoint's own, else by its channels (probe.run_defaults)
    weights: str = "ema"
    encoder_weights: tuple[str, ...] = ()
    random_init_encoder: bool = False
    probe_method: str = "torch"
    probe_epochs: int = 90
    probe_batch_size: int = 16384
    probe_lr: float = 1e-3
    batch_size: int = 64
    device: str = "cpu"
    store: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.ts = check_ts(self.ts)
        if not isinstance(self.layers, str):
            self.layers = tuple(int(layer) for layer in self.layers)
        self.metrics, self.encoder_weights = tuple(self.metrics), tuple(self.encoder_weights)
        choices = {"metric": (self.metrics, METRICS), "pooling": ((self.pooling,), POOLINGS),
                   "label mode": ((self.label,), LABELS), "cknna mode": ((self.cknna_mode,), ("reference", "exact")),
                   "linear-probe method": ((self.probe_method,), METHODS), "weights": ((self.weights,), ("ema", "model"))}
        for what, (values, allowed) in choices.items():
            for value in values:
                if value not in allowed:
                    raise UserError(f"unknown {what} {value!r}: use one of {', '.join(allowed)}")
        if self.k < 2:
            raise UserError(f"k={self.k} is too small: pass k >= 2 (the paper uses 10)")
        if self.n_images is not None and any(m in ("cknna", "cka") for m in self.metrics) and self.n_images < 4:
            raise UserError(f"n_images={self.n_images}: CKNNA and CKA (unbiased HSIC) need at least 4 evaluation images: pass --n-images 4 or more")
        if self.n_images is not None and any(m in ALIGNMENT for m in self.metrics) and self.n_images <= self.k:
            raise UserError(f"n_images={self.n_images} evaluation images for k={self.k} nearest neighbours: pass more than {self.k} images or a smaller k")
        if "cknna_token" in self.metrics and not self.token_samples > self.k:
            raise UserError(f"token_samples={self.token_samples} token pairs for k={self.k} nearest neighbours: pass more than {self.k} (e.g. 2000)")
        if not (self.r_near >= 1 and (self.r_far is None or self.r_far > self.r_near)):
            raise UserError(f"lds radii r_near={self.r_near}, r_far={self.r_far}: pass 1 <= r_near < r_far (or r_far=None, scaled to the grid)")
        if self.n_train is not None and self.n_train == 1:
            raise UserError("n_train=1: a linear probe needs at least 2 training images (0 skips the probes)")

    @property
    def preprocessing(self) -> str:
        """``"clip0.95+l2"``-style description of what :func:`probe.metrics.prepare` did."""
        parts = ([f"clip{self.q:g}"] if self.q not in (None, 1) else []) + (["l2"] if self.normalize else [])
        return "+".join(parts) or "none"

    @property
    def probing(self) -> bool:
        return "linear_probe" in self.metrics and self.n_train > 0


ALIGNMENT: dict[str, Callable[[Tensor, Tensor, ProbeConfig], float]] = {
    "cknna": lambda a, b, c: cknna(a, b, k=c.k, mode=c.cknna_mode),
    "cka": lambda a, b, c: cka(a, b, mode=c.cknna_mode),
    "mutual_knn": lambda a, b, c: mutual_knn(a, b, k=c.k),
}
METRICS = (*ALIGNMENT, "linear_probe", *TOKEN_METRICS)  # the token-level ones are opt-in (not in the defaults)
