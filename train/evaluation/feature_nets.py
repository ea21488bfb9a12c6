"""Feature networks and reference statistics of real data (re-exported by ``train.evaluation.evaluate``).

One interface (:class:`FeatureNet`: uint8 images -> dict of ``(B, D)`` arrays, ``"features"`` always)
over (a) the FID Inception (pytorch-fid's weights, only from a local file), (b) any
:mod:`train.targets.encoders` encoder (mean-pooled patch tokens, "FD-DINOv2 style") and (c) the **built-in
evaluator**, a small ResNet classifier trained on the shapes set, independent of the REPA teacher (a
CNN, not a ViT; its own training run and seed); :func:`load_feature_net` builds one by name.
:func:`reference` computes real-data statistics once and caches them under ``$REPA_CACHE/reference``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.run.checkpoints import atomic_write
from train.run.checkpoints import repa_cache_dir
from train.errors import UserError
from train.evaluation.generation_metrics import feature_statistics
from train.data.latents import to_float
from train.evaluation.samples import _save_npz
from train.targets.teacher import fit_classifier

Tensor = torch.Tensor


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
    stem_stride: int = 2  # 1 keeps the full resolution in the first stage (small images)

    def key(self) -> str:
        fields = asdict(self)
        if self.dataset == "shapes":  # the key of the evaluator from before the field existed
            fields.pop("dataset")
        if self.stem_stride == 2:  # nor this one
            fields.pop("stem_stride")
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
    """A small ResNet: a 3x3 conv stem (stride ``stem_stride``), one :class:`ResBlock` per width (stride 2 from the
    second on), global average pooling -> penultimate features ``(B, widths[-1])``, linear head.
    Input: images in ``[-1, 1]`` at ``image_size``."""

    def __init__(self, cfg: EvaluatorConfig) -> None:
        super().__init__()
        w = cfg.widths
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, cfg.stem_stride, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        self.stages = nn.Sequential(*[ResBlock(w[max(i - 1, 0)], w[i], 1 if i == 0 else 2) for i in range(len(w))])
        self.head = nn.Linear(w[-1], cfg.num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x)).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


EVALUATORS: dict[str, EvaluatorConfig] = {
    # shipped (train/weights/fashion-evaluator.*, make teachers): all 60,000 training images
    "fashion-mnist": EvaluatorConfig(dataset="fashion-mnist", image_size=16, widths=(32, 64, 128), n_train=60_000,
                                     steps=3000, batch_size=128, lr=3e-3, warmup=150, shift=1, stem_stride=1),
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


def _fit_evaluator(cfg: EvaluatorConfig, progress: bool, state_path: Path | None = None) -> tuple[EvaluatorCNN, dict[str, Any]]:
    """Train an :class:`EvaluatorCNN` on its dataset's train split (resumable from ``state_path``);
    score it on the val split."""
    from train.data.datasets import build_dataset

    start, cpu_start = time.time(), time.process_time()
    data = build_dataset(cfg.dataset, "train", n=cfg.n_train, size=cfg.image_size, seed=cfg.data_seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = EvaluatorCNN(cfg)
    fit_classifier(model, data, cfg, gen, "built-in evaluator", progress, state_path=state_path)
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
    from train.run.checkpoints import atomic_save

    from train.run.rundir import build_lock

    path = evaluator_path(cfg, cache_dir)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(path):  # a second process needing this evaluator waits and reads it
        if path.exists():
            return path
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model, sidecar = _fit_evaluator(cfg, progress)
        finally:
            torch.set_num_threads(threads)
        atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2)))
        atomic_save({"format": _EVALUATOR_FORMAT, "config": asdict(cfg), "model": model.state_dict()}, path)
    return path


SHIPPED_EVALUATORS = {"fashion-mnist": "fashion-evaluator"}  # dataset -> shipped weights (train.targets.shipped)


def _accuracy(sidecar: dict[str, Any]) -> float | None:
    """Held-out accuracy from a cache sidecar (``val_accuracy``) or a shipped card (``measures.test_accuracy``)."""
    return sidecar.get("val_accuracy", sidecar.get("measures", {}).get("test_accuracy"))


def save_evaluator(model: EvaluatorCNN, cfg: EvaluatorConfig, path: Path) -> None:
    """The evaluator as safetensors (config and format in the metadata), written atomically."""
    from safetensors.torch import save_file

    meta = {"format": _EVALUATOR_FORMAT, "config": json.dumps(asdict(cfg))}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def read_evaluator(path: Path) -> dict[str, Any]:
    """``{"format", "config", "model"}`` from a file written by :func:`save_evaluator`."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return {"format": meta.get("format"), "config": json.loads(meta.get("config", "{}")), "model": load_file(str(path))}
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"{path} is not a built-in evaluator file ({e}): pass one written by save_evaluator") from e


class BuiltinEvaluator(FeatureNet):
    """The built-in evaluator as a feature network: penultimate features and shapes-class logits.
    Images of another size are resized to the evaluator's (bilinear)."""

    name, classes_of = EVALUATOR, "shapes"

    def __init__(self, cfg: EvaluatorConfig = EvaluatorConfig(), weights: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> None:
        from train.run.checkpoints import read_checkpoint

        super().__init__()
        from train.targets.shipped import verified_path

        if weights:
            path = Path(weights)
        elif cfg.dataset in SHIPPED_EVALUATORS:  # committed with the project, sha256-checked
            path = verified_path(SHIPPED_EVALUATORS[cfg.dataset])
        else:
            path = train_builtin_evaluator(cfg, cache_dir, progress)
        state = read_evaluator(path) if path.suffix == ".safetensors" else read_checkpoint(path)
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
                           **({"val_accuracy": _accuracy(json.loads(sidecar.read_text()))} if sidecar.exists() else {})}
        self.cache_id = f"{EVALUATOR}:{self.cfg.key()}"
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        device = next(self.net.parameters()).device
        feats = self.net.features(_evaluator_input(images.to(device), self.cfg.image_size))
        return {"features": feats.float(), "class_logits": self.net.head(feats).float()}


# --- (b) target encoders ------------------------------------------------------------------------


class EncoderFeatures(FeatureNet):
    """Any :mod:`train.targets.encoders` encoder: the mean of its patch tokens (FD-DINOv2 style)."""

    def __init__(self, name: str, weights: str | os.PathLike | None = None) -> None:
        from train.targets.encoders import load_encoder

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
        from train.run.checkpoints import read_checkpoint

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
    (local weights only) or any :data:`train.targets.encoders.ENCODERS` name; ``weights`` is a local file for
    any of them."""
    from train.targets.encoders import ENCODERS

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
# Reference statistics of real data
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
    ``n`` of a generated dataset (shapes, scenes), all of digits, a fixed random subset (seed 0) of a folder."""
    from train.data.datasets import build_dataset
    from train.data.synthetic import GENERATED

    kw: dict[str, Any] = {"size": size}
    if dataset in GENERATED:
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
