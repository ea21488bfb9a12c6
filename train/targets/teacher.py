"""The built-in teachers: small ViTs this project trains itself, standing in for DINOv2 offline.

No pretrained encoder can be downloaded on the project's machines, so REPA's target encoder is
trained here on the built-in data, on first use, and cached.  Four kinds share one architecture
(:class:`TeacherViT`: a convolutional stem -- ``log2(patch)`` stride-2 3x3 convs, patch 4 on 32 px
-> 8 x 8 tokens --, learned position embeddings, pre-norm transformer blocks, a final LayerNorm on
every token; the targets are those final-norm patch tokens) and differ in what they are trained
to do (the losses: :mod:`train.targets.pretext`):

* ``dense`` ("SAM-like"): per-pixel targets the scene renderer gives for free
  (:class:`train.data.synthetic.ScenesDataset`): a linear head on each token predicts, for every pixel of
  its patch, the type of the shape covering it (or background), its depth order and whether it lies
  on a boundary.  No image-level label is used: the tokens must say what is where in *this* image.
* ``ssl``: masked-token prediction (SimMIM-style): half of the patches are blanked in the input and
  their tokens replaced by a learned mask token; a linear head predicts each masked patch's pixels
  (normalised per patch, as MAE's ``norm_pix_loss``).  Self-supervised, no label of any kind.
* ``contrastive``: SimCLR's NT-Xent (Chen et al. 2020, eq. 1) on two augmented views of each image
  (a random resized crop, a flip, a brightness/contrast jitter): a 2-layer MLP head maps each view's
  mean patch token to an embedding whose cosine to the other view of the same image must beat the
  2N - 2 other views of the batch.  Self-supervised, no label; its features are what survives the
  augmentations (the shape, not its pixels), which a denoiser does not learn alone.
* ``supervised``: the class label, read by a linear head from the mean of the patch tokens, with
  random translations and flips (the project's first teacher; the tokens then carry mostly the
  class, which a class-conditional model already receives: RESULTS.md).  Kept as the control.

Encoder names (:data:`TEACHERS`): ``builtin-dense``, ``builtin-ssl``, ``builtin-contrastive`` and
``builtin-supervised`` are trained on ``scenes``; ``fashion-ssl``, ``fashion-supervised``,
``fashion-contrastive`` and ``fashion-contrastive-2x`` (twice the training) are shipped (:mod:`train.targets.shipped`); ``builtin-teacher`` is the first teacher exactly (supervised, on ``shapes``).
Each is cached as ``$REPA_CACHE/teacher/<key>.safetensors`` with a JSON sidecar (config, training
time, held-out accuracies); the key hashes every field of :class:`TeacherConfig`, the thread count
included (training runs on ``cfg.threads`` threads whatever the caller's count, so the weights
depend on the config alone).

:func:`fit_classifier` is also the training loop of the built-in evaluator (``train.evaluation.evaluate``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from train.run.checkpoints import atomic_write, repa_cache_dir
from train.errors import UserError
from train.targets.fit import augment, fit, fit_classifier  # noqa: F401 (re-exported: the evaluator trains with them)
from train.targets.pretext import dense_channels, pretext_loss

TEACHER_MEAN = TEACHER_STD = (0.5, 0.5, 0.5)
TEACHER_FORMAT = "repa-builtin-teacher/1"
KINDS = ("dense", "ssl", "contrastive", "supervised")


@dataclass(frozen=True)
class TeacherConfig:
    """Kind, data, architecture and optimisation of a built-in teacher (hashed into its cache name)."""

    kind: str = "supervised"
    dataset: str = "shapes"  # "scenes" or "shapes" (the dense teacher needs "scenes")
    image_size: int = 32
    patch: int = 4
    width: int = 64
    depth: int = 2
    heads: int = 2
    num_classes: int = 10
    n_train: int = 10_000
    steps: int = 1600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: int = 100
    shift: int = 3  # supervised: max random translation in pixels
    label_smoothing: float = 0.1  # supervised
    mask_ratio: float = 0.5  # ssl: share of patches masked
    seed: int = 0
    data_seed: int = 0
    threads: int = 1
    # ssl: masks drawn on a grid of mask_block x mask_block token blocks (SimMIM's mask patches;
    # 1 = per token); norm_pix: targets normalised per patch (MAE's norm_pix_loss) or raw pixels
    mask_block: int = 1
    norm_pix: bool = True
    # contrastive: NT-Xent temperature and the smallest area share of the random resized crop
    temperature: float = 0.2
    crop_scale: float = 0.4

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown teacher kind {self.kind!r}: use one of {', '.join(KINDS)}")
        from train.data.builtin import BUILTIN

        if self.dataset not in BUILTIN:
            raise UserError(f"unknown teacher dataset {self.dataset!r}: use one of {', '.join(BUILTIN)}")
        g = self.image_size // self.patch
        if self.mask_block < 1 or g % self.mask_block:
            raise UserError(f"mask_block {self.mask_block} does not divide the {g} x {g} token grid: use a divisor of {g}")
        if not self.temperature > 0:
            raise UserError(f"temperature {self.temperature} must be positive: use e.g. 0.2 (SimCLR's range is 0.1-0.5)")
        if not 0 < self.crop_scale <= 1:
            raise UserError(f"crop_scale {self.crop_scale} is the smallest area share of a crop: use a value in (0, 1], e.g. 0.4")
        if self.kind == "dense" and self.dataset != "scenes":
            raise UserError("the dense teacher trains on the per-pixel ground truth of the scenes dataset: set dataset='scenes'")

    @property
    def views(self) -> int:
        """Passes of each drawn image through the network per step (the contrastive kind's two views)."""
        return 2 if self.kind == "contrastive" else 1

    def key(self) -> str:
        fields = asdict(self)
        for name, default in (("mask_block", 1), ("norm_pix", True), ("temperature", 0.2),
                              ("crop_scale", 0.4)):  # keys from before these fields
            if fields[name] == default:
                fields.pop(name)
        blob = json.dumps({"format": TEACHER_FORMAT, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _scenes_teacher(kind: str, size: int = 16) -> TeacherConfig:
    return TeacherConfig(kind=kind, dataset="scenes", num_classes=8, image_size=size, patch=size // 8)


def _fashion_teacher(kind: str) -> TeacherConfig:
    """The shipped Fashion-MNIST teachers (:mod:`train.targets.shipped`; ``make teachers``): 16 px, patch 2
    (8 x 8 tokens, the student's grid), width 128, 4 blocks, on all 60,000 training images.  Their
    compute is recorded in their cards (``train/weights/<name>.json``)."""
    common = dict(kind=kind, dataset="fashion-mnist", image_size=16, patch=2, width=128, depth=4, heads=4,
                  num_classes=10, n_train=60_000, steps=2400, batch_size=128, lr=1e-3, warmup=200)
    if kind == "ssl":  # SimMIM: 60 % of 4 x 4 blocks of 2 x 2 tokens masked, raw pixels predicted
        return TeacherConfig(**common, mask_ratio=0.6, mask_block=2, norm_pix=False)
    if kind == "contrastive":  # SimCLR: two views per image, so half the steps for the same image-passes
        return TeacherConfig(**{**common, "steps": 1200}, temperature=0.2, crop_scale=0.4)
    return TeacherConfig(**common, shift=2)


TEACHERS: dict[str, TeacherConfig] = {
    "fashion-ssl": _fashion_teacher("ssl"),
    "fashion-supervised": _fashion_teacher("supervised"),
    "fashion-contrastive": _fashion_teacher("contrastive"),
    # the same recipe for twice the image-passes, on two threads so that it trains in 40 minutes (plan stage 22)
    "fashion-contrastive-2x": dataclasses.replace(_fashion_teacher("contrastive"), steps=2400, threads=2),
    "builtin-dense": _scenes_teacher("dense"),
    "builtin-ssl": _scenes_teacher("ssl"),
    "builtin-contrastive": _scenes_teacher("contrastive"),
    "builtin-supervised": _scenes_teacher("supervised"),
    "builtin-teacher": TeacherConfig(),  # the first built-in teacher: supervised, on shapes
}


def teacher_path(cfg: TeacherConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the teacher of ``cfg`` is cached: ``<cache_dir>/teacher/<key>.safetensors``."""
    return Path(cache_dir or repa_cache_dir()) / "teacher" / f"{cfg.key()}.safetensors"


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

class TeacherViT(nn.Module):
    """A ViT with a convolutional stem (which makes a small ViT learn much faster on little data),
    learned position embeddings, pre-norm blocks and a final LayerNorm; no class token.  The head
    depends on the kind: class logits from the mean token (supervised), per-pixel logits from every
    token (dense), or pixels of every token's patch (ssl, which also has a mask token)."""

    num_prefix_tokens = 0

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__()
        n_down = int(math.log2(cfg.patch))
        if 2**n_down != cfg.patch or cfg.image_size % cfg.patch:
            raise UserError(f"teacher patch {cfg.patch} must be a power of two dividing the image size "
                            f"{cfg.image_size} — change the TeacherConfig")
        self.cfg = cfg
        w = self.embed_dim = cfg.width
        chans = [3] + [max(w >> (n_down - 1 - i), 16) for i in range(n_down - 1)] + [w]
        stem: list[nn.Module] = []
        for i in range(n_down):
            stem.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1))
            if i < n_down - 1:
                stem.append(nn.GELU())
        self.stem = nn.Sequential(*stem)
        self.pos_embed = nn.Parameter(torch.randn(1, (cfg.image_size // cfg.patch) ** 2, w) * 0.02)
        self.blocks = nn.Sequential(*[
            nn.TransformerEncoderLayer(w, cfg.heads, 4 * w, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(w)
        pp = cfg.patch * cfg.patch
        if cfg.kind == "supervised":
            self.head = nn.Linear(w, cfg.num_classes)
        elif cfg.kind == "dense":
            self.head = nn.Linear(w, pp * sum(dense_channels(cfg)))
        elif cfg.kind == "contrastive":  # SimCLR's projection head g(.) on the mean token
            self.head = nn.Sequential(nn.Linear(w, 2 * w), nn.GELU(), nn.Linear(2 * w, w))
        else:
            self.head = nn.Linear(w, pp * 3)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, w))

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised patch tokens ``(B, T, width)`` of images ``x`` in [-1, 1]; ``mask`` ``(B, T)``
        (ssl training only) replaces the masked tokens by the mask token."""
        tokens = self.stem(x).flatten(2).transpose(1, 2)                          # (B, T, w)
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        return self.norm(self.blocks(tokens + self.pos_embed))                    # (B, T, w)

    def attention_logits(self, x: torch.Tensor, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """{block: attention logits ``q k^T / sqrt(head_dim)`` (B, heads, T, T)} of the 1-based
        ``layers`` for images ``x`` in [-1, 1] (no class token: all T tokens are patches)."""
        tokens = self.stem(x).flatten(2).transpose(1, 2) + self.pos_embed            # (B, T, w)
        out: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks, start=1):
            if i in layers:  # pre-norm: the attention reads norm1(x); q, k from the packed projection
                mha, h = blk.self_attn, blk.norm1(tokens)
                b, t, w = h.shape
                hd = w // mha.num_heads
                q, k, _ = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
                q, k = (z.reshape(b, t, mha.num_heads, hd).transpose(1, 2) for z in (q, k))  # (B, H, T, hd)
                out[i] = (q * hd**-0.5) @ k.transpose(-2, -1)                              # (B, H, T, T)
            if i >= max(layers):
                break
            tokens = blk(tokens)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (supervised), the embedding of the mean token (contrastive); the per-token head's
        output otherwise."""
        feats = self.forward_features(x)
        return self.head(feats.mean(1) if self.cfg.kind in ("supervised", "contrastive") else feats)


# ----------------------------------------------------------------------------------------------
# Training (each kind's loss: train.targets.pretext)
# ----------------------------------------------------------------------------------------------

def _dataset(cfg: TeacherConfig, split: str):
    from train.data.builtin import BUILTIN

    return BUILTIN[cfg.dataset](split, n=cfg.n_train if split == "train" else None, size=cfg.image_size,
                                  seed=cfg.data_seed)


def train_builtin_teacher(cfg: TeacherConfig = TeacherConfig(), cache_dir: str | os.PathLike | None = None,
                          progress: bool = True) -> Path:
    """Train the built-in teacher ``cfg`` on its dataset's train split unless it is cached; return its path.

    Deterministic given ``cfg`` (it runs on ``cfg.threads`` threads, the caller's count restored).
    Writes ``<key>.json`` (config, training seconds, the held-out linear-probe accuracy of the
    mean-pooled tokens and, for the supervised kind, the head's accuracy) and then
    ``<key>.safetensors`` (config in its metadata), each atomically.  Under a build lock
    (``train.run.rundir.build_lock``): a second process that needs the same teacher waits for it.
    """
    from train.run.rundir import build_lock

    path = teacher_path(cfg, cache_dir)
    if path.exists():
        return path
    with build_lock(path):  # a second process needing this teacher waits and reads it
        if not path.exists():
            _train_teacher(cfg, path, progress)
    return path


def _train_teacher(cfg: TeacherConfig, path: Path, progress: bool, state_path: Path | None = None) -> dict[str, Any]:
    """The training behind :func:`train_builtin_teacher`: fit (resumable from ``state_path``), measure,
    write sidecar then weights; returns the sidecar."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        start, cpu_start = time.time(), time.process_time()
        data = _dataset(cfg, "train")
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            model = TeacherViT(cfg)
        if cfg.kind == "supervised":
            fit_classifier(model, data, cfg, gen, "built-in teacher", progress, cfg.label_smoothing, max_grad_norm=1.0,
                           state_path=state_path)
        else:
            fit(model, cfg, gen, pretext_loss(model, data, gen), len(data), f"built-in teacher ({cfg.kind})",
                progress, max_grad_norm=1.0, state_path=state_path)
        seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
        val = _dataset(cfg, "val")
        tokens = lambda images: model.forward_features(images.float() / 127.5 - 1.0)  # noqa: E731
        sidecar: dict[str, Any] = {
            "config": asdict(cfg), "seed": cfg.seed, "train_seconds": round(seconds, 1),
            "train_cpu_seconds": round(cpu_seconds, 1), "threads": cfg.threads, "torch": torch.__version__,
        }
        with torch.no_grad():
            if cfg.kind == "supervised":
                logits = torch.cat([model(val.images[i:i + 500].float() / 127.5 - 1.0) for i in range(0, len(val), 500)])
                sidecar["val_accuracy"] = (logits.argmax(1) == val.labels).float().mean().item()
            sidecar["linear_probe_accuracy"] = linear_probe_accuracy(tokens, data, val, n_train=5000, n_val=len(val))
    finally:
        torch.set_num_threads(threads)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2)))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": TEACHER_FORMAT, "config": json.dumps(asdict(cfg))}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    return sidecar


def load_teacher(cfg: TeacherConfig, weights: str | os.PathLike | None = None,
                 random_init: bool = False, name: str | None = None) -> tuple[TeacherViT, str]:
    """The teacher and a description of its source: random weights of ``cfg``'s architecture, the
    file ``weights`` (its own config, which must be of ``cfg``'s kind), the shipped weights of
    ``name`` (sha256-verified, :mod:`train.targets.shipped`), or ``cfg`` cached/trained."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from train.targets.shipped import SHIPPED, verified_path

    if random_init:
        return TeacherViT(cfg).eval(), "random-init"
    if weights is not None:
        path = Path(weights).expanduser()
    elif name in SHIPPED:
        path = verified_path(name)
    else:
        path = train_builtin_teacher(cfg)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != TEACHER_FORMAT:
            raise ValueError("no built-in teacher metadata")
        saved = json.loads(meta["config"])
        file_cfg = TeacherConfig(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TeacherConfig)}})
        model = TeacherViT(file_cfg)
        model.load_state_dict(load_file(str(path)))
    except (OSError, ValueError, TypeError, SafetensorError, RuntimeError) as e:
        raise UserError(f"{path} is not a built-in teacher checkpoint ({e}) — pass a file written by "
                        "train_builtin_teacher, or no weights to use the cached one") from e
    if file_cfg.kind != cfg.kind:
        raise UserError(f"{path} holds a {file_cfg.kind} teacher, not a {cfg.kind} one — pass the encoder name of its kind "
                        f"(builtin-{file_cfg.kind})")
    source = f"shipped:{name}:{path.name}" if weights is None and name in SHIPPED else f"builtin:{path.resolve()}"
    return model.eval(), source


def linear_probe_accuracy(tokens: Callable[[torch.Tensor], torch.Tensor], train_ds, val_ds, n_train: int = 5000,
                          n_val: int = 2000, batch_size: int = 256) -> float:
    """Held-out accuracy of a logistic regression on mean-pooled tokens (``tokens(uint8 images) ->
    (B, T, D)``, e.g. an :class:`train.targets.encoders.Encoder`): fitted on the first ``n_train`` images of
    ``train_ds`` (standardised features), scored on the first ``n_val`` of ``val_ds``."""

    def features(ds, n: int) -> tuple[Any, Any]:
        n = min(n, len(ds))
        if hasattr(ds, "images"):
            images, labels = ds.images[:n], ds.labels[:n]
        else:
            items = [ds[i] for i in range(n)]
            images, labels = torch.stack([im for im, _ in items]), torch.tensor([lb for _, lb in items])
        with torch.no_grad():
            feats = torch.cat([tokens(images[i:i + batch_size]).mean(1).cpu() for i in range(0, n, batch_size)])
        return feats.numpy(), labels.numpy()

    return linear_probe_on_features(*features(train_ds, n_train), *features(val_ds, n_val))


def linear_probe_on_features(x_train, y_train, x_val, y_val) -> float:
    """Held-out accuracy of a logistic regression (standardised features, fitted on ``x_train``) on
    already-pooled features ``(N, D)``; :func:`linear_probe_accuracy` pools and calls it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, tol=1e-6))
    return float(clf.fit(x_train, y_train).score(x_val, y_val))
