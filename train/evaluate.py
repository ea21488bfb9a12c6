"""Generation evaluation: sampling to disk, feature networks, Frechet distance and friends.

Read top-down:

1. **Sampling** (:func:`generate`, :func:`sample_to_dir`, the ``repa-sample`` CLI).  Sample ``i`` starts
   from noise drawn by a generator seeded by ``(seed, i)``; its label (when not given) likewise.
   Samples are made in fixed *chunks* of ``chunk`` consecutive indices; the SDE sampler's noise comes
   from one generator per chunk, seeded by ``(seed, first index)``.  A chunk is the unit of work, of
   sharding (rank ``r`` of ``w`` takes chunks ``r, r + w, ...``) and of resume (a chunk whose PNGs all
   exist is skipped), so sharded, resumed and single-process runs give the same samples.
2. **Metrics**: :func:`feature_statistics`, :func:`frechet_distance`, :func:`precision_recall`,
   :func:`inception_score` -- pure functions on feature arrays.
3. **Feature networks**: one interface (:class:`FeatureNet`: uint8 images -> dict of ``(B, D)``
   arrays, ``"features"`` always) over (a) the FID Inception (pytorch-fid's weights, only from a local
   file), (b) any :mod:`train.encoders` encoder (mean-pooled patch tokens, "FD-DINOv2 style") and
   (c) the **built-in evaluator**, a small ResNet classifier trained on the shapes set, independent of
   the REPA teacher (a CNN, not a ViT; its own training run and seed).
4. **Reference statistics** of real data, computed once and cached under ``$REPA_CACHE/reference``.
5. **Evaluation**: :func:`evaluate_samples`, :func:`evaluate_checkpoint`, and
   :func:`build_training_evaluator` for the training loop.
6. **CLI**: ``repa-sample`` (:func:`sample_main`) and ``python -m train.evaluate {sample,fid}``.

Every result records the feature network (with its provenance), the sample count, the sampler and
its steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.config import TrainConfig
from train.checkpoints import atomic_write
from train.checkpoints import repa_cache_dir
from train.teacher import fit_classifier
from train.errors import UserError
from train.latents import Codec, build_codec, to_float

Tensor = torch.Tensor

# ----------------------------------------------------------------------------------------------
# 1. Sampling
# ----------------------------------------------------------------------------------------------


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
def sample_chunk(model: nn.Module, spec: SampleSpec, codec: Codec, k: int) -> tuple[Tensor, Tensor]:
    """Chunk ``k`` of ``spec``: ``(uint8 images (B, 3, H, W), labels (B,))`` on the CPU.

    Depends only on ``(spec, k)`` and the model: never on which process or run computes it.
    """
    from train.sampling import sample

    cfg, device = model.cfg, next(model.parameters()).device
    idx = spec.chunk_range(k)
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    noise = torch.stack([torch.randn(shape, generator=seeded_generator(spec.seed, "noise", i)) for i in idx])
    labels = sample_labels(spec, idx, cfg.num_classes)
    gen = seeded_generator(spec.seed, "sde", idx.start, device) if spec.sampler == "sde" else None
    x = sample(model, noise.to(device), labels.to(device), spec.sampler, spec.steps, spec.cfg_scale,
               spec.guidance_interval, gen, spec.path)
    return codec.decode(x, uint8=True).cpu(), labels


def default_codec(model: nn.Module) -> Codec:
    """Pixel space (identity) for 3-channel models, else the SD-VAE (local weights needed)."""
    return build_codec("identity" if model.cfg.in_channels == 3 else "sd-vae").to(next(model.parameters()).device)


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
                  progress: bool = True) -> dict[str, Any]:
    """Write the chunks of ``spec`` that belong to ``rank`` of ``world`` as ``out/images/000000.png``...

    Chunks whose PNGs all exist are skipped (resume).  ``out/sample_config.json`` records ``spec``,
    the codec and ``meta`` (checkpoint, git revision); an existing one that differs is an error.
    Whichever process sees all PNGs present at its end assembles ``out/samples_NxHxWx3.npz``
    (``arr_0``: uint8 NHWC; labels as ``labels`` and, like ADM, ``arr_1``) and ``out/grid.png`` (the
    first 64).  Returns
    ``{"sampled": [chunk ids], "skipped": [...], "npz": path or None}``.
    """
    from tqdm.auto import tqdm

    from train.loop import git_revision, save_grid

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
            images, _ = sample_chunk(model, spec, codec, k)
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


# ----------------------------------------------------------------------------------------------
# 2. Metrics
# ----------------------------------------------------------------------------------------------


def feature_statistics(feats: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ``N - 1``) covariance of ``(N, D)`` features, in float64."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues from round-off -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017,
    eq. 6; Dowson & Landau 1982)::

        d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

    in float64.  The trace of the matrix square root is taken in the symmetric form
    ``Tr((sigma1 sigma2)^(1/2)) = Tr((S sigma2 S)^(1/2))`` with ``S = sigma1^(1/2)``: ``S sigma2 S`` is
    symmetric PSD, so its root's trace is the sum of the roots of its (clipped) eigenvalues -- no
    complex parts and no ill-conditioned ``sqrtm`` of a non-symmetric product.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    root = _psd_sqrt(s1)
    m = root @ s2 @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _kth_nn_radius(x: Tensor, k: int, batch: int) -> Tensor:
    """Distance of every row of ``x`` to its ``k``-th nearest other row."""
    return torch.cat([torch.cdist(x[s:s + batch], x).kthvalue(k + 1, dim=1).values for s in range(0, len(x), batch)])


def _in_manifold(query: Tensor, ref: Tensor, radii: Tensor, batch: int) -> Tensor:
    """For each query row: does it lie in at least one ball ``B(ref_j, radii_j)``?"""
    return torch.cat([(torch.cdist(query[s:s + batch], ref) <= radii[None]).any(1) for s in range(0, len(query), batch)])


def precision_recall(real: np.ndarray | Tensor, fake: np.ndarray | Tensor, k: int = 3,
                     batch: int = 1024) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-3).

    The manifold of a set is the union of balls around its points, each with the radius to that
    point's ``k``-th nearest neighbour in the set.  Precision = fraction of ``fake`` inside the real
    manifold; recall = fraction of ``real`` inside the fake manifold.  Both sets should have the same
    size (the paper: 50k each, k = 3).
    """
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall need more than k={k} samples in each set, got {len(r)} and {len(f)}")
    precision = _in_manifold(f, r, _kth_nn_radius(r, k, batch), batch).float().mean().item()
    recall = _in_manifold(r, f, _kth_nn_radius(f, k, batch), batch).float().mean().item()
    return {"precision": precision, "recall": recall}


def inception_score(logits: np.ndarray | Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` on each of ``splits``
    equal parts, ``p(y)`` the part's mean prediction; returns the mean and std over the parts."""
    logp = torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1)
    scores = []
    for part in torch.tensor_split(logp, min(splits, len(logp))):
        log_py = torch.logsumexp(part, 0) - math.log(len(part))
        scores.append(math.exp((part.exp() * (part - log_py)).sum(1).mean().item()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------
# 3. Feature networks
# ----------------------------------------------------------------------------------------------


class FeatureNet(nn.Module):
    """uint8 images ``(B, 3, H, W)`` -> ``{"features": (B, D), ...}`` float32 (eval mode, frozen).

    Optional outputs: ``"spatial"`` (sFID), ``"is_logits"`` (Inception score), ``"class_logits"``
    (classes of ``classes_of``, for the class accuracy of conditional samples).  ``provenance`` is a
    JSON-able description; ``cache_id`` identifies the network in reference-statistics caches.
    """

    name: str
    provenance: dict[str, Any]
    cache_id: str
    classes_of: str | None = None  # the dataset whose labels "class_logits" predict

    def freeze(self) -> FeatureNet:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FeatureNet:
        return super().train(False)


# --- (c) the built-in evaluator -----------------------------------------------------------------

EVALUATOR = "builtin-evaluator"
_EVALUATOR_FORMAT = "repa-builtin-evaluator/1"


@dataclass(frozen=True)
class EvaluatorConfig:
    """Architecture, data and optimisation of the built-in evaluator (hashed into its cache name).

    ``seed`` differs from the teacher's (0), so even the data order and augmentation differ."""

    dataset: str = "shapes"  # the built-in dataset it classifies: "shapes" or "scenes"
    image_size: int = 32
    widths: tuple[int, ...] = (16, 32, 64)
    num_classes: int = 10
    n_train: int = 10_000
    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup: int = 30
    shift: int = 3  # max random translation in pixels
    seed: int = 1
    data_seed: int = 0

    def key(self) -> str:
        fields = asdict(self)
        if self.dataset == "shapes":  # the key of the evaluator from before the field existed
            fields.pop("dataset")
        blob = json.dumps({"format": _EVALUATOR_FORMAT, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual (1x1 conv-BN where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class EvaluatorCNN(nn.Module):
    """A small ResNet: stride-2 3x3 conv stem, one :class:`ResBlock` per width (stride 2 from the
    second on), global average pooling -> penultimate features ``(B, widths[-1])``, linear head.
    Input: images in ``[-1, 1]`` at ``image_size``."""

    def __init__(self, cfg: EvaluatorConfig) -> None:
        super().__init__()
        w = cfg.widths
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 2, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        self.stages = nn.Sequential(*[ResBlock(w[max(i - 1, 0)], w[i], 1 if i == 0 else 2) for i in range(len(w))])
        self.head = nn.Linear(w[-1], cfg.num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x)).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


EVALUATORS: dict[str, EvaluatorConfig] = {
    "shapes": EvaluatorConfig(),
    "scenes": EvaluatorConfig(dataset="scenes", image_size=16, num_classes=8, steps=600, warmup=60, shift=2),
    "scenes-plain": EvaluatorConfig(dataset="scenes-plain", image_size=16, num_classes=8, steps=600, warmup=60, shift=2),
}


def evaluator_config(dataset: str) -> EvaluatorConfig:
    """The built-in evaluator of a built-in dataset (:data:`EVALUATORS`)."""
    if dataset not in EVALUATORS:
        raise UserError(f"the built-in evaluator classifies {' or '.join(EVALUATORS)} images, not {dataset!r}: "
                        "pass --feature inception or an encoder name for other data")
    return EVALUATORS[dataset]


def evaluator_path(cfg: EvaluatorConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the evaluator of ``cfg`` is cached: ``<cache_dir>/evaluator/<hash>.pt``."""
    return Path(cache_dir or repa_cache_dir()) / "evaluator" / f"{cfg.key()}.pt"


def _evaluator_input(images: Tensor, size: int) -> Tensor:
    """uint8 images -> ``[-1, 1]`` floats at ``size`` (bilinear, antialiased when shrinking)."""
    x = to_float(images)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return x


def _fit_evaluator(cfg: EvaluatorConfig, progress: bool) -> tuple[EvaluatorCNN, dict[str, Any]]:
    """Train an :class:`EvaluatorCNN` on its dataset's train split; score it on the val split."""
    from train.data import build_dataset

    start, cpu_start = time.time(), time.process_time()
    data = build_dataset(cfg.dataset, "train", n=cfg.n_train, size=cfg.image_size, seed=cfg.data_seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = EvaluatorCNN(cfg)
    fit_classifier(model, data, cfg, gen, "built-in evaluator", progress)
    val = build_dataset(cfg.dataset, "val", size=cfg.image_size, seed=cfg.data_seed)
    with torch.no_grad():
        pred = torch.cat([model(to_float(val.images[i:i + 500])).argmax(1) for i in range(0, len(val), 500)])
    return model, {
        "config": asdict(cfg), "seed": cfg.seed, "train_seconds": round(time.time() - start, 1),
        "train_cpu_seconds": round(time.process_time() - cpu_start, 1), "threads": 1, "torch": torch.__version__,
        "val_accuracy": (pred == val.labels).float().mean().item(), "n_val": len(val),
    }


def train_builtin_evaluator(cfg: EvaluatorConfig = EvaluatorConfig(), cache_dir: str | os.PathLike | None = None,
                            progress: bool = True) -> Path:
    """Train the built-in evaluator on the shapes train split unless it is cached; return its path.

    Runs on one thread (the caller's thread count is restored): convolutions this small are fastest
    there, and the weights then depend on ``cfg`` alone.  Writes ``<hash>.json`` (config, seed, wall
    and CPU seconds including data generation and validation, accuracy on the shapes val split) and
    then ``<hash>.pt`` (plain data: format, config, state dict), each atomically.
    """
    from train.checkpoints import atomic_save

    path = evaluator_path(cfg, cache_dir)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, sidecar = _fit_evaluator(cfg, progress)
    finally:
        torch.set_num_threads(threads)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2)))
    atomic_save({"format": _EVALUATOR_FORMAT, "config": asdict(cfg), "model": model.state_dict()}, path)
    return path


class BuiltinEvaluator(FeatureNet):
    """The built-in evaluator as a feature network: penultimate features and shapes-class logits.
    Images of another size are resized to the evaluator's (bilinear)."""

    name, classes_of = EVALUATOR, "shapes"

    def __init__(self, cfg: EvaluatorConfig = EvaluatorConfig(), weights: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> None:
        from train.checkpoints import read_checkpoint

        super().__init__()
        path = Path(weights) if weights else train_builtin_evaluator(cfg, cache_dir, progress)
        state = read_checkpoint(path)
        if not isinstance(state, dict) or state.get("format") != _EVALUATOR_FORMAT:
            raise UserError(f"{path} is not a built-in evaluator file: pass one written by train_builtin_evaluator, "
                            "or no weights to use the cached one")
        self.cfg = EvaluatorConfig(**{**state["config"], "widths": tuple(state["config"]["widths"])})
        self.classes_of = self.cfg.dataset
        self.net = EvaluatorCNN(self.cfg)
        self.net.load_state_dict(state["model"])
        sidecar = path.with_suffix(".json")
        self.provenance = {"name": EVALUATOR, "architecture": "EvaluatorCNN (ResNet)", "key": self.cfg.key(),
                           "weights": str(path.resolve()), "config": asdict(self.cfg),
                           **({"val_accuracy": json.loads(sidecar.read_text())["val_accuracy"]} if sidecar.exists() else {})}
        self.cache_id = f"{EVALUATOR}:{self.cfg.key()}"
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        device = next(self.net.parameters()).device
        feats = self.net.features(_evaluator_input(images.to(device), self.cfg.image_size))
        return {"features": feats.float(), "class_logits": self.net.head(feats).float()}


# --- (b) target encoders ------------------------------------------------------------------------


class EncoderFeatures(FeatureNet):
    """Any :mod:`train.encoders` encoder: the mean of its patch tokens (FD-DINOv2 style)."""

    def __init__(self, name: str, weights: str | os.PathLike | None = None) -> None:
        from train.encoders import load_encoder

        super().__init__()
        self.encoder = load_encoder(name, weights=weights)
        self.name, self.provenance = name, {**self.encoder.provenance, "pooling": "mean over patch tokens"}
        self.cache_id = f"{name}:{self.provenance['weights']}:{self.provenance['resolution']}"
        self.freeze()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"features": self.encoder(images.to(self.encoder.mean.device)).mean(1)}


# --- (a) the FID Inception ----------------------------------------------------------------------

INCEPTION = "inception"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def _tf_pool_block(base: type, max_pool: bool = False) -> type:
    """An Inception block whose pool branch pools like the TF graph of the FID weights: average
    pooling without the padded zeros (``count_include_pad=False``), or max pooling (last block)."""

    class Block(base):
        def _forward(self, x: Tensor) -> list[Tensor]:
            out = super()._forward(x)  # torchvision pools with count_include_pad=True: redo that branch
            pooled = (F.max_pool2d(x, 3, 1, 1) if max_pool
                      else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
            out[-1] = self.branch_pool(pooled)
            return out

    Block.__name__ = f"FID{base.__name__}{'Max' if max_pool else ''}"
    return Block


def fid_inception() -> nn.Module:
    """torchvision's Inception-v3 with the FID graph's differences (pytorch-fid's layout, whose
    ``pt_inception-2015-12-05`` state dict loads into it strictly): 1008 classes, no aux head, and
    TF-style pooling in the Mixed_5b-d, 6b-e, 7b (average) and 7c (max) pool branches."""
    from torchvision.models import inception as tv

    blocks = [tv.BasicConv2d, _tf_pool_block(tv.InceptionA), tv.InceptionB, _tf_pool_block(tv.InceptionC),
              tv.InceptionD, _tf_pool_block(tv.InceptionE), tv.InceptionAux]
    net = tv.Inception3(num_classes=1008, aux_logits=False, inception_blocks=blocks, init_weights=False)
    net.Mixed_7c = _tf_pool_block(tv.InceptionE, max_pool=True)(2048)
    return net


def inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """The local FID Inception weights: ``weights``, else ``$TORCH_HOME/hub/checkpoints/`` (never downloaded)."""
    path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        raise UserError(f"FID Inception weights not found at {path}: pass --inception-weights PATH to "
                        f"pytorch-fid's {INCEPTION_FILE} (or copy it there), or use --feature {EVALUATOR}")
    return path


class InceptionFeatures(FeatureNet):
    """The FID Inception (pytorch-fid's port of the TF 2015-12-05 graph): ``features`` = pool3 (2048),
    ``spatial`` = the first 7 channels of Mixed_6d's 1x1 branch (``mixed_6/conv``, 7 x 17 x 17 = 2023;
    ADM's sFID), ``is_logits`` = the 1008-way logits (Inception score).  Input: bilinear resize to
    299 px, scaled to ``[-1, 1]`` as pytorch-fid does (TF's resize differs slightly, so numbers are
    close to, not identical with, the ADM suite's)."""

    name = INCEPTION

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        from train.checkpoints import read_checkpoint

        super().__init__()
        path = inception_weights(weights)
        self.net = fid_inception()
        try:
            self.net.load_state_dict(read_checkpoint(path))
        except RuntimeError as e:
            raise UserError(f"{path} does not fit the FID Inception ({str(e).splitlines()[0][:200]}): "
                            f"pass pytorch-fid's {INCEPTION_FILE}") from None
        stat = path.stat()
        self.provenance = {"name": INCEPTION, "architecture": "FID Inception-v3 (pytorch-fid layout)",
                           "weights": str(path.resolve()), "bytes": stat.st_size, "resize": "bilinear 299"}
        self.cache_id = f"{INCEPTION}:{path.resolve()}:{stat.st_size}"
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        n = self.net
        x = images.to(n.fc.weight.device).float() / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        x = n.maxpool1(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))))
        x = n.maxpool2(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)))
        x = n.Mixed_6c(n.Mixed_6b(n.Mixed_6a(n.Mixed_5d(n.Mixed_5c(n.Mixed_5b(x))))))
        spatial = n.Mixed_6d.branch1x1(x)[:, :7].flatten(1)
        x = n.Mixed_7c(n.Mixed_7b(n.Mixed_7a(n.Mixed_6e(n.Mixed_6d(x)))))
        pool = x.mean((2, 3))
        return {"features": pool, "spatial": spatial, "is_logits": n.fc(pool)}


def load_feature_net(name: str = EVALUATOR, weights: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", progress: bool = True, dataset: str = "shapes") -> FeatureNet:
    """``builtin-evaluator`` (the one of ``dataset``, trained and cached on first use), ``inception``
    (local weights only) or any :data:`train.encoders.ENCODERS` name; ``weights`` is a local file for
    any of them."""
    from train.encoders import ENCODERS

    if name == EVALUATOR:
        cfg = evaluator_config(dataset) if weights is None else EvaluatorConfig()
        net: FeatureNet = BuiltinEvaluator(cfg, weights=weights, progress=progress)
    elif name == INCEPTION:
        net = InceptionFeatures(weights)
    elif name in ENCODERS:
        net = EncoderFeatures(name, weights)
    else:
        raise UserError(f"unknown feature network {name!r}: use {EVALUATOR}, {INCEPTION} or an encoder "
                        f"({', '.join(ENCODERS)})")
    return net.to(device)


def extract(net: FeatureNet, images: Tensor | Iterator[Tensor], batch: int = 256) -> dict[str, np.ndarray]:
    """Run ``net`` over uint8 images (a tensor, or an iterator of batches); float32 arrays per output."""
    batches = (images[s:s + batch] for s in range(0, len(images), batch)) if isinstance(images, Tensor) else images
    parts: dict[str, list[np.ndarray]] = {}
    for b in batches:
        for key, value in net(b).items():
            parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


# ----------------------------------------------------------------------------------------------
# 4. Reference statistics of real data
# ----------------------------------------------------------------------------------------------

PR_MAX = 10_000  # precision/recall use at most this many images of each set (features kept in the cache)


@dataclass
class Reference:
    """Real-data statistics per feature output (``mu``/``sigma``), up to :data:`PR_MAX` real
    ``features`` for precision/recall, and ``meta`` (dataset, split, n, size, feature network)."""

    stats: dict[str, tuple[np.ndarray, np.ndarray]]
    features: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def real_images(dataset: str, split: str, n: int, size: int, root: str | None = None,
                batch: int = 256) -> tuple[int, Iterator[Tensor]]:
    """``(count, iterator of uint8 batches)`` of up to ``n`` real images at ``size`` px: the first
    ``n`` of an in-memory dataset (shapes, digits), a fixed random subset (seed 0) of a folder."""
    from train.data import build_dataset

    kw: dict[str, Any] = {"size": size}
    if dataset in ("shapes", "scenes", "scenes-plain"):
        kw["n"] = n
    if dataset == "folder":
        kw["root"] = root
    ds = build_dataset(dataset, split, **kw)
    images = getattr(ds, "images", None)
    if isinstance(images, Tensor):
        count = min(n, len(images))
        return count, (images[s:min(s + batch, count)] for s in range(0, count, batch))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist()
    batches = (torch.stack([ds[i][0] for i in order[s:s + batch]]) for s in range(0, len(order), batch))
    return len(order), batches


def reference(net: FeatureNet, dataset: str = "shapes", split: str = "train", n: int = 10_000, size: int = 32,
              root: str | None = None, cache_dir: str | os.PathLike | None = None,
              progress: bool = True) -> Reference:
    """Reference statistics of ``n`` real images in ``net``'s space, cached under
    ``<cache_dir>/reference/<hash>.npz`` (key: feature network, dataset, root, split, n, size) with a
    JSON sidecar."""
    from tqdm.auto import tqdm

    meta = {"feature": net.cache_id, "dataset": dataset, "root": str(Path(root).resolve()) if root else None,
            "split": split, "n_requested": n, "size": size}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or repa_cache_dir()) / "reference" / f"{key}.npz"
    if path.exists():
        with np.load(path) as data:
            stats = {k[:-3]: (data[k], data[k[:-3] + ".sigma"]) for k in data.files if k.endswith(".mu")}
            feats = data["features"]
        return Reference(stats, feats, json.loads(path.with_suffix(".json").read_text()))
    count, batches = real_images(dataset, split, n, size, root)
    feats = extract(net, tqdm(batches, desc=f"reference {dataset}/{split}", total=math.ceil(count / 256),
                              disable=not progress))
    stats = {k: feature_statistics(v) for k, v in feats.items() if k in ("features", "spatial")}
    meta = {**meta, "n": count, "feature_provenance": net.provenance}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    arrays = {f"{k}.{s}": a for k, (mu, sigma) in stats.items() for s, a in (("mu", mu), ("sigma", sigma))}
    _save_npz(path, features=feats["features"][:PR_MAX], **arrays)
    return Reference(stats, feats["features"][:PR_MAX], meta)


# ----------------------------------------------------------------------------------------------
# 5. Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_samples(images: Tensor, labels: Tensor | None, net: FeatureNet, ref: Reference, k: int = 3,
                     batch: int = 256) -> dict[str, Any]:
    """Score uint8 samples against ``ref``: ``fd`` (Frechet distance in ``net``'s features), ``precision``
    and ``recall`` (k-NN manifolds, up to :data:`PR_MAX` of each set, equal sizes), and where ``net``
    offers them ``sfid``, ``inception_score`` (+ std), and ``class_acc`` (the fraction of samples
    classified as their label; needs labels and a network trained on the reference dataset)."""
    feats = extract(net, images, batch)
    mu, sigma = feature_statistics(feats["features"])
    res: dict[str, Any] = {"fd": frechet_distance(mu, sigma, *ref.stats["features"])}
    m = min(len(ref.features), len(feats["features"]), PR_MAX)
    res.update(precision_recall(ref.features[:m], feats["features"][:m], k=k))
    if "spatial" in feats and "spatial" in ref.stats:
        res["sfid"] = frechet_distance(*feature_statistics(feats["spatial"]), *ref.stats["spatial"])
    if "is_logits" in feats:
        res["inception_score"], res["inception_score_std"] = inception_score(feats["is_logits"])
    if "class_logits" in feats and labels is not None and ref.meta.get("dataset") == net.classes_of:
        pred = torch.from_numpy(feats["class_logits"]).argmax(1)
        res["class_acc"] = (pred == labels.cpu()).float().mean().item()
    res.update(n=len(images), pr_n=m, k=k, feature=net.provenance,
               reference={key: ref.meta[key] for key in ("dataset", "root", "split", "n", "size")})
    return res


def evaluate_model(model: nn.Module, spec: SampleSpec, codec: Codec, feature: str = EVALUATOR,
                   dataset: str = "shapes", feature_weights: str | None = None, ref_split: str = "train",
                   ref_n: int = 10_000, root: str | None = None, k: int = 3, progress: bool = True) -> dict[str, Any]:
    """Sample ``spec`` from ``model`` and score it with :func:`evaluate_samples` against ``ref_n`` real
    images of ``dataset``/``ref_split`` at the samples' size; the result also records the checkpoint
    (``model.source``) and every sampling setting."""
    images, labels = generate_spec(model, spec, codec, progress)
    device = next(model.parameters()).device
    net = load_feature_net(feature, feature_weights, device, progress, dataset)
    ref = reference(net, dataset, ref_split, ref_n, images.shape[-1], root, progress=progress)
    return {**evaluate_samples(images, labels, net, ref, k), **asdict(spec), "codec": codec.name,
            "checkpoint": getattr(model, "source", None)}


def evaluate_checkpoint(ckpt: str | os.PathLike, n: int = 1000, sampler: str = "euler", steps: int = 50,
                        feature: str = EVALUATOR, dataset: str = "shapes", cfg_scale: float = 1.0,
                        guidance_interval: tuple[float, float] = (0.0, 1.0), seed: int = 0, chunk: int = 64,
                        weights: str = "ema", path: str = "linear", feature_weights: str | None = None,
                        ref_split: str = "train", ref_n: int = 10_000, root: str | None = None, k: int = 3,
                        device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """Load a checkpoint and :func:`evaluate_model` ``n`` samples (labels uniform from ``seed``):
    ``fd``, ``precision``, ``recall``, ``class_acc`` (built-in evaluator on shapes), ``sfid`` and
    ``inception_score`` (Inception), with the feature network's provenance and the sampling settings."""
    from train.models import load

    model = load(ckpt, weights=weights, device=device)
    spec = SampleSpec(n, sampler, steps, cfg_scale, tuple(guidance_interval), seed, (), chunk, path)
    return evaluate_model(model, spec, default_codec(model), feature, dataset, feature_weights, ref_split,
                          ref_n, root, k, progress)


def build_training_evaluator(cfg: TrainConfig, feature: str = EVALUATOR, feature_weights: str | None = None,
                             ref_n: int = 10_000, steps: int | None = None,
                             progress: bool = False) -> Callable[[nn.Module, int], dict[str, Any]]:
    """``evaluator(ema_model, step) -> dict`` for :func:`train.loop.train`.

    Samples ``cfg.eval_samples`` images with Euler and ``steps`` (default ``cfg.sample_steps``) steps
    from noise fixed by ``cfg.seed`` (REPA and vanilla runs of one seed share it), labels cycling
    through the classes, and scores them with ``feature`` against ``ref_n`` real training images:
    ``fd``, ``precision``, ``recall``, ``class_acc`` (shapes only) and
    ``eval_n``/``eval_sampler``/``eval_steps``/``eval_feature``.  The feature network and the
    reference statistics are loaded (trained, computed and cached on first use) here, once.
    Cost: sampling dominates -- 256 samples x 25 Euler steps of the ``tiny`` preset are as much model
    compute as ~35 of its training steps (measured: 23 CPU-seconds on one thread of a busy 2-core
    machine, 35 s wall); scoring 256 images takes well under a second.
    """
    spec = SampleSpec(cfg.eval_samples, "euler", steps or cfg.sample_steps, seed=cfg.seed,
                      labels=tuple(range(cfg.model.num_classes)), path=cfg.path)
    codec = build_codec(cfg.data.codec)
    net = load_feature_net(feature, feature_weights, progress=progress, dataset=cfg.data.dataset)
    ref = reference(net, cfg.data.dataset, "train", ref_n, cfg.data.image_size, cfg.data.root, progress=progress)

    def evaluate(ema: nn.Module, step: int) -> dict[str, Any]:
        device = next(ema.parameters()).device
        images, labels = generate_spec(ema, spec, codec.to(device))
        res = evaluate_samples(images, labels, net.to(device), ref)
        return {"fd": res["fd"], "precision": res["precision"], "recall": res["recall"],
                **({"class_acc": res["class_acc"]} if "class_acc" in res else {}),
                "eval_n": spec.n, "eval_sampler": spec.sampler, "eval_steps": spec.steps, "eval_feature": net.cache_id}

    return evaluate


# ----------------------------------------------------------------------------------------------
# 6. Command line
# ----------------------------------------------------------------------------------------------


def _sampling_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--name", help="model name, e.g. SiT-XL/2 (default: inferred)")
    ap.add_argument("--flavour", choices=["auto", "repa", "sit", "dit"], default="auto")
    ap.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights of a training checkpoint")
    ap.add_argument("--sampler", choices=["euler", "heun", "sde"], default="euler")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--guidance-low", type=float, default=0.0, help="guidance interval start (REPA time)")
    ap.add_argument("--guidance-high", type=float, default=1.0, help="guidance interval end (REPA time)")
    ap.add_argument("--path", choices=["linear", "cosine"], default="linear", help="the interpolant the model was trained with")
    ap.add_argument("--num-samples", "--n", dest="n", type=int, default=64,
                    help="number of samples (spell it --num-samples under torchrun, which takes --n as its own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64, help="samples per chunk (the unit of SDE noise, sharding and resume)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--labels", type=int, nargs="+", help="class ids, cycled over the samples (default: uniform from the seed)")
    group.add_argument("--class-id", type=int, help="one class for all samples")
    ap.add_argument("--codec", choices=["identity", "sd-vae"], help="default: identity for 3-channel models, else sd-vae")
    ap.add_argument("--vae", default="stabilityai/sd-vae-ft-ema", help="sd-vae decoder: a local diffusers directory or cached hub name")
    ap.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda:1, ...")
    ap.add_argument("--no-progress", action="store_true")


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")


def _model_spec_codec(args: argparse.Namespace) -> tuple[nn.Module, SampleSpec, Codec]:
    """The model, what to sample and the codec, from the options of :func:`_sampling_args`."""
    from train.models import load

    if args.n < 1 or args.steps < 1 or args.batch_size < 1:
        raise UserError("--num-samples, --steps and --batch-size must be positive: pass values >= 1")
    device = _device(args.device)
    model = load(args.ckpt, name=args.name, flavour=args.flavour, weights=args.weights, device=device)
    num_classes = model.cfg.num_classes
    labels = tuple(args.labels or ()) + (() if args.class_id is None else (args.class_id,))
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise UserError(f"class {bad[0]} is outside [0, {num_classes}): pass class ids the model knows")
    spec = SampleSpec(args.n, args.sampler, args.steps, args.cfg_scale, (args.guidance_low, args.guidance_high),
                      args.seed, labels, args.batch_size, args.path)
    codec_name = args.codec or ("identity" if model.cfg.in_channels == 3 else "sd-vae")
    if codec_name == "identity" and model.cfg.in_channels != 3:
        raise UserError(f"the identity codec gives 3 channels but the model has {model.cfg.in_channels}: use --codec sd-vae")
    kw = {"encoder": args.vae, "decoder": args.vae} if codec_name == "sd-vae" else {}
    return model, spec, build_codec(codec_name, **kw).to(device)


def sample_main(argv: list[str] | None = None) -> int:
    """``repa-sample``: N samples as PNGs + ADM ``.npz`` + grid + ``sample_config.json``; resumable and
    shardable (under torchrun/accelerate each process takes every WORLD_SIZE-th chunk)."""
    ap = argparse.ArgumentParser(prog="repa-sample", description=sample_main.__doc__)
    ap.add_argument("--ckpt", type=Path, required=True, help="any DiT/SiT/REPA/repa-toolkit checkpoint")
    ap.add_argument("--out", type=Path, required=True, help="output directory (resumes if it holds samples)")
    _sampling_args(ap)
    args = ap.parse_args(argv)
    model, spec, codec = _model_spec_codec(args)
    rank, world = shard()
    meta = {"checkpoint": model.source, **({"vae": args.vae} if codec.name == "sd-vae" else {})}
    res = sample_to_dir(model, spec, codec, args.out, rank, world, meta, progress=not args.no_progress)
    if res["npz"] is not None:
        print(res["npz"])
    return 0


def fid_main(argv: list[str] | None = None) -> int:
    """``python -m train.evaluate fid``: FD, precision/recall and class accuracy (sFID and IS with the
    Inception) of a checkpoint's samples or of existing samples; prints one JSON object."""
    ap = argparse.ArgumentParser(prog="python -m train.evaluate fid", description=fid_main.__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="sample from this checkpoint")
    src.add_argument("--samples", type=Path, help="score an .npz (arr_0 uint8 NHWC) or a repa-sample directory")
    ap.add_argument("--feature", default=EVALUATOR, help=f"{EVALUATOR} (default), {INCEPTION} or an encoder name")
    ap.add_argument("--feature-weights", help="local weights of the feature network")
    ap.add_argument("--inception-weights", help=f"local {INCEPTION_FILE} (implies --feature {INCEPTION})")
    ap.add_argument("--dataset", choices=["scenes", "shapes", "digits", "folder"], default="shapes", help="reference data")
    ap.add_argument("--root", help="reference image folder (with --dataset folder)")
    ap.add_argument("--ref-split", default="train")
    ap.add_argument("--ref-n", type=int, default=10_000, help="number of reference images")
    ap.add_argument("--k", type=int, default=3, help="k of precision/recall")
    _sampling_args(ap)
    args = ap.parse_args(argv)
    feature, weights = (INCEPTION, args.inception_weights) if args.inception_weights else (args.feature, args.feature_weights)
    progress = not args.no_progress
    ref_kw = dict(ref_split=args.ref_split, ref_n=args.ref_n, root=args.root, k=args.k, progress=progress)
    if args.ckpt is not None:
        model, spec, codec = _model_spec_codec(args)
        res = evaluate_model(model, spec, codec, feature, args.dataset, weights, **ref_kw)
    else:
        images, labels = load_samples(args.samples)
        net = load_feature_net(feature, weights, _device(args.device), progress, args.dataset)
        ref = reference(net, args.dataset, args.ref_split, args.ref_n, images.shape[-1], args.root, progress=progress)
        res = evaluate_samples(images, labels, net, ref, args.k)
        cfg_file = (args.samples if args.samples.is_dir() else args.samples.parent) / "sample_config.json"
        sampling = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        res.update({"samples": str(args.samples.resolve()), **{k: v for k, v in sampling.items() if k not in res}})
    print(json.dumps(res, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m train.evaluate {sample,fid} ...``; user errors end in one line and exit status 2."""
    from train.errors import fail as _fail

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"sample": sample_main, "fid": fid_main}
    if not argv or argv[0] not in commands:
        return _fail(f"usage: python -m train.evaluate {{{','.join(commands)}}} ...: pick a command (--help after it)")
    try:
        return commands[argv[0]](argv[1:])
    except UserError as e:
        return _fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
