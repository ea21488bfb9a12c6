"""Frozen target encoders for REPA behind one interface, and a small built-in teacher.

An :class:`Encoder` maps uint8 images ``(B, 3, H, W)`` to float32 patch tokens ``(B, T, D)`` with
``T = grid * grid``. Preprocessing is part of it, as in REPA: ``x / 255``, bicubic resize to the
encoder's resolution (224 px for patch-14 models, 256 px for patch-16 ones, so both give 16 x 16
tokens; no antialiasing, as the reference), then the model's own mean/std (CLIP's for CLIP).
Targets are

* ``"norm"``: the final-norm patch tokens with class and register tokens dropped (DINOv2's
  ``x_norm_patchtokens``); DINOv2, DINO v1, MoCo v3, SigLIP, I-JEPA and the built-in teacher;
* ``"prenorm"``: the last block's patch tokens without the final norm; MAE and CLIP (REPA).

If ``grid`` differs from the native token grid, the tokens are resampled on their 2-D layout:
area pooling (mean over blocks) for an integer shrink factor, bilinear interpolation otherwise.

The published architectures are built with timm. Weights: ``weights=None`` uses timm's published weights --
from the local HF / torch-hub cache when present, downloaded only when ``HF_HUB_OFFLINE`` is unset
and the server answers; otherwise one :class:`~train.errors.UserError` line comes at once.
``weights=PATH`` loads a local checkpoint (original or timm format; position embeddings are
resampled to the encoder's resolution by timm). ``random_init=True`` gives random weights of the
same architecture (tests, notebooks). Each encoder carries a ``provenance`` dict for results.

Built-in teacher (``builtin-teacher``, :class:`TeacherViT`): a small ViT with a convolutional stem
(two stride-2 convs: patch 4 on 32 px -> 8 x 8 tokens), width 64, depth 2, 2 heads (124k
parameters), sized so that training takes about two and a half minutes of one CPU core (a third
block costs 30 % more time for the same accuracy, measured); this project trains
it on :class:`~train.data.ShapesDataset` (held-out linear-probe accuracy about 95 %). It is trained
*supervised*: the linear head reads the mean of the final-norm patch tokens (no class token), so
the patch tokens themselves must carry the class; random translations and horizontal flips
(all ten classes are flip-invariant) augment the data. Supervised training is the simplest way
to get a reliable, fast-to-train target whose tokens are linearly decodable; the cost is that the
tokens carry little besides class and position. It is trained on first use and cached as
``$REPA_CACHE/teacher/<config-hash>.safetensors`` (default ``~/.cache/repa-toolkit``) with a
JSON sidecar (config, seed, training time, held-out accuracies).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from train.checkpoints import atomic_write
from train.errors import UserError
from train.latents import HF_ENDPOINT, download_possible, hf_cached_file

# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder.

    ``arch``: timm model name (with its pretrained tag when timm publishes the weights);
    ``patch``/``resolution``: patch size and input side in pixels; ``target``: ``"norm"`` or
    ``"prenorm"`` (see the module docstring); ``hub``: timm can fetch the weights (else a local
    file is required); ``strip_prefix``: key prefix removed from local checkpoints.
    """

    arch: str
    patch: int
    resolution: int
    target: str = "norm"
    hub: bool = True
    strip_prefix: str = ""

    @property
    def grid(self) -> int:
        return self.resolution // self.patch


def _dinov2(size: str, reg: bool) -> EncoderSpec:
    return EncoderSpec(f"vit_{size}_patch14_{'reg4_' if reg else ''}dinov2.lvd142m", 14, 224)


TEACHER = "builtin-teacher"
ENCODERS: dict[str, EncoderSpec] = {
    **{f"dinov2-vit-{s[0]}{'-reg' if reg else ''}": _dinov2(s, reg)
       for reg in (False, True) for s in ("small", "base", "large", "giant")},
    "dinov1-vit-b": EncoderSpec("vit_base_patch16_224.dino", 16, 256),
    "mae-vit-l": EncoderSpec("vit_large_patch16_224.mae", 16, 256, target="prenorm"),
    # MoCo v3 weights are not in timm: load the original checkpoint (prefix module.base_encoder.)
    "mocov3-vit-b": EncoderSpec("vit_base_patch16_224", 16, 256, hub=False, strip_prefix="base_encoder."),
    "mocov3-vit-l": EncoderSpec("vit_large_patch16_224", 16, 256, hub=False, strip_prefix="base_encoder."),
    "clip-vit-l": EncoderSpec("vit_large_patch14_clip_quickgelu_224.openai", 14, 224, target="prenorm"),
    "siglip-vit-b": EncoderSpec("vit_base_patch16_siglip_256.webli", 16, 256),
    "ijepa-vit-h": EncoderSpec("vit_huge_patch14_gap_224.in1k_ijepa", 14, 224),
    TEACHER: EncoderSpec("repa-builtin-teacher", 4, 32, hub=False),
}

# ----------------------------------------------------------------------------------------------
# The encoder module
# ----------------------------------------------------------------------------------------------


def resample_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, g*g, D)`` -> ``(B, grid*grid, D)`` on the square token layout: area pooling when
    ``g`` is a multiple of ``grid``, bilinear interpolation (antialiased when shrinking) otherwise."""
    b, t, d = tokens.shape
    g = math.isqrt(t)
    if g * g != t:
        raise ValueError(f"{t} tokens do not form a square grid")
    if g == grid:
        return tokens
    x = tokens.transpose(1, 2).reshape(b, d, g, g)
    if g % grid == 0:
        x = F.avg_pool2d(x, g // grid)
    else:
        x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False, antialias=grid < g)
    return x.flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    """A frozen vision encoder: uint8 images ``(B, 3, H, W)`` -> float32 tokens ``(B, grid**2, dim)``.

    Attributes: ``name``, ``dim``, ``grid`` (output tokens per side), ``native_grid``,
    ``resolution``, ``provenance`` (a JSON-able dict recorded with results). Always in eval mode,
    parameters frozen, forward under ``torch.no_grad()``.
    """

    def __init__(self, name: str, spec: EncoderSpec, model: nn.Module, mean: tuple[float, ...],
                 std: tuple[float, ...], weights: str, grid: int | None = None) -> None:
        super().__init__()
        self.name, self.spec, self.model = name, spec, model
        self.dim: int = model.embed_dim
        self.resolution, self.native_grid = spec.resolution, spec.grid
        self.grid: int = grid or spec.grid
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        resample = "none" if self.grid == spec.grid else ("area" if spec.grid % self.grid == 0 else "bilinear")
        self.provenance: dict[str, Any] = {
            "name": name, "architecture": spec.arch, "weights": weights, "resolution": spec.resolution,
            "patch": spec.patch, "native_grid": spec.grid, "grid": self.grid, "resample": resample,
            "target": spec.target, "dim": self.dim, "mean": list(mean), "std": list(std),
        }

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> normalised float ``(B, 3, resolution, resolution)``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise TypeError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.mean.device).float() / 255.0
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if self.spec.target == "prenorm":
            tokens = self.model.forward_intermediates(x, indices=1, norm=False, output_fmt="NLC",
                                                      intermediates_only=True)[-1]
        else:
            tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        return resample_tokens(tokens, self.grid).float()


# ----------------------------------------------------------------------------------------------
# Loading timm encoders
# ----------------------------------------------------------------------------------------------

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                 "open_clip_pytorch_model.bin")


def _needs_weights(name: str, spec: EncoderSpec) -> str:
    where = " or put it in the HF cache with HF_HUB_OFFLINE=1" if spec.hub else ""
    return (f"encoder {name} needs weights: pass --encoder-weights PATH (a .pth/.safetensors file "
            f"or HF directory){where}")


def _weights_file(name: str, spec: EncoderSpec, weights: str | os.PathLike) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir():
        found = [path / f for f in _WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise UserError(f"no weights file ({', '.join(_WEIGHT_FILES)}) in {path} — {_needs_weights(name, spec)}")
        return found[0]
    if not path.is_file():
        raise UserError(f"encoder weights {path} not found — {_needs_weights(name, spec)}")
    return path


def _cached_weights(arch: str) -> str | None:
    """Local copy of timm's published weights for ``arch`` (HF cache or torch-hub cache)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        hit = hf_cached_file(cfg.hf_hub_id, names)
        if hit:
            return hit
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return str(path)
    return None


def _download_url(arch: str) -> str | None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    return (HF_ENDPOINT if cfg.hf_hub_id else cfg.url) or None


def _strip_prefix(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Keys of a (MoCo v3) checkpoint under ``prefix``, prefix removed, projection head dropped;
    a checkpoint without the prefix is returned as is. timm already strips ``module.``."""
    from timm.models import load_state_dict

    state = load_state_dict(str(path))
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(prefix + "head.")}


def _build_timm(name: str, spec: EncoderSpec, weights: str | os.PathLike | None,
                random_init: bool) -> tuple[nn.Module, str]:
    """The timm model of ``spec`` with its weights, and a description of their source."""
    import timm

    kwargs = dict(num_classes=0, img_size=spec.resolution)
    if random_init:
        return timm.create_model(spec.arch, pretrained=False, **kwargs), "random-init"
    if weights is not None:
        path = _weights_file(name, spec, weights)
        overlay = dict(state_dict=_strip_prefix(path, spec.strip_prefix)) if spec.strip_prefix else dict(file=str(path))
        source = f"file:{path.resolve()}"
    elif not spec.hub:
        raise UserError(_needs_weights(name, spec))
    elif cached := _cached_weights(spec.arch):
        overlay, source = dict(file=cached), f"cache:{cached}"
    elif (url := _download_url(spec.arch)) and download_possible(url):
        overlay, source = None, f"timm:{spec.arch}"
    else:
        raise UserError(_needs_weights(name, spec))
    try:
        model = timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, KeyError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"cannot load {source} into {spec.arch} ({first}) — pass a checkpoint of this "
                        "architecture (original or timm format)") from e
    return model, source


def load_encoder(name: str, weights: str | os.PathLike | None = None, grid: int | None = None,
                 device: str | torch.device = "cpu", random_init: bool = False) -> Encoder:
    """Build the frozen encoder ``name`` (a key of :data:`ENCODERS`).

    ``weights``: None (published weights, or the cached/trained built-in teacher), or a local file
    or directory; ``grid``: output tokens per side (default: native); ``random_init``: random
    weights of the same architecture.
    """
    if name not in ENCODERS:
        raise UserError(f"unknown encoder {name!r} — choose one of: {', '.join(ENCODERS)}")
    spec = ENCODERS[name]
    if grid is not None and grid < 1:
        raise UserError(f"encoder grid {grid} must be positive — pass the SiT token grid (image/latent side / patch)")
    if name == TEACHER:
        model, source, cfg = _load_teacher(weights, random_init)
        encoder = Encoder(name, _teacher_spec(cfg), model, TEACHER_MEAN, TEACHER_STD, source, grid)
        encoder.provenance["teacher_config"] = asdict(cfg)
        return encoder.to(device)
    from timm.data import resolve_data_config

    model, source = _build_timm(name, spec, weights, random_init)
    data_cfg = resolve_data_config({}, model=model)
    return Encoder(name, spec, model, tuple(data_cfg["mean"]), tuple(data_cfg["std"]), source, grid).to(device)


# ----------------------------------------------------------------------------------------------
# Built-in teacher
# ----------------------------------------------------------------------------------------------

TEACHER_MEAN = TEACHER_STD = (0.5, 0.5, 0.5)
_TEACHER_FORMAT = "repa-builtin-teacher/1"


@dataclass(frozen=True)
class TeacherConfig:
    """Architecture, data and optimisation of the built-in teacher (hashed into its cache name)."""

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
    shift: int = 3  # max random translation in pixels
    label_smoothing: float = 0.1
    seed: int = 0
    data_seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"format": _TEACHER_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def repa_cache_dir() -> Path:
    """``$REPA_CACHE``, default ``~/.cache/repa-toolkit``."""
    return Path(os.environ.get("REPA_CACHE", "~/.cache/repa-toolkit")).expanduser()


def teacher_path(cfg: TeacherConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the teacher of ``cfg`` is cached: ``<cache_dir>/teacher/<hash>.safetensors``."""
    return Path(cache_dir or repa_cache_dir()) / "teacher" / f"{cfg.key()}.safetensors"


def _teacher_spec(cfg: TeacherConfig) -> EncoderSpec:
    return EncoderSpec(ENCODERS[TEACHER].arch, cfg.patch, cfg.image_size, hub=False)


class TeacherViT(nn.Module):
    """The built-in teacher: a ViT with a convolutional stem (``log2(patch)`` stride-2 3x3 convs
    instead of one linear patchify, which makes a small ViT learn much faster on little data),
    learned position embeddings, pre-norm transformer blocks and a final LayerNorm on every token.
    There is no class token: the head reads the mean of the normalised patch tokens."""

    num_prefix_tokens = 0

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__()
        n_down = int(math.log2(cfg.patch))
        if 2**n_down != cfg.patch or cfg.image_size % cfg.patch:
            raise UserError(f"teacher patch {cfg.patch} must be a power of two dividing the image size "
                            f"{cfg.image_size} — change the TeacherConfig")
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
        self.head = nn.Linear(w, cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised patch tokens ``(B, T, width)``."""
        tokens = self.stem(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.norm(self.blocks(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(1))


def augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (edge padding) and horizontal flips."""
    b, _, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * shift + 1, (2, b, 1), generator=gen))
    rows, cols = dy + torch.arange(h), dx + torch.arange(w)
    x = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def fit_classifier(model: nn.Module, data, cfg, gen: torch.Generator, desc: str, progress: bool = True,
                   label_smoothing: float = 0.0, max_grad_norm: float | None = None) -> nn.Module:
    """Train a built-in classifier (the teacher here, the evaluator in ``train.evaluate``) in place.

    ``data``: a :class:`train.data.ShapesDataset` (uint8 ``images``, ``labels``); ``cfg`` gives
    ``steps, batch_size, lr, weight_decay, warmup, shift``.  AdamW with linear warm-up then cosine
    decay; batches drawn with replacement and shifted (:func:`augment`) from ``gen``.  Returns the
    model in eval mode."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup)
                                              * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    model.train()
    for _ in tqdm(range(cfg.steps), desc=desc, disable=not progress):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x = augment(data.images[idx].float() / 127.5 - 1.0, cfg.shift, gen)
        loss = F.cross_entropy(model(x), data.labels[idx], label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        sched.step()
    return model.eval()


def train_builtin_teacher(cfg: TeacherConfig = TeacherConfig(), cache_dir: str | os.PathLike | None = None,
                          progress: bool = True) -> Path:
    """Train the built-in teacher on the shapes train split unless it is cached; return its path.

    Deterministic given ``cfg`` (and the thread count). Writes ``<hash>.json`` (config, seed,
    training seconds, head accuracy and linear-probe accuracy on the shapes val split) and then
    ``<hash>.safetensors`` (config in its metadata), each atomically.
    """
    from safetensors.torch import save_file

    from train.data import ShapesDataset

    path = teacher_path(cfg, cache_dir)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ShapesDataset("train", n=cfg.n_train, size=cfg.image_size, seed=cfg.data_seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = TeacherViT(cfg)
    start, cpu_start = time.time(), time.process_time()
    fit_classifier(model, data, cfg, gen, "built-in teacher", progress, cfg.label_smoothing, max_grad_norm=1.0)
    seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start

    val = ShapesDataset("val", size=cfg.image_size, seed=cfg.data_seed)
    encoder = Encoder(TEACHER, _teacher_spec(cfg), model, TEACHER_MEAN, TEACHER_STD, "training")
    with torch.no_grad():
        logits = torch.cat([model(encoder.preprocess(val.images[i:i + 500])) for i in range(0, len(val), 500)])
    sidecar = {
        "config": asdict(cfg), "seed": cfg.seed, "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "val_accuracy": (logits.argmax(1) == val.labels).float().mean().item(),
        "linear_probe_accuracy": linear_probe_accuracy(encoder, data, val, n_train=5000, n_val=len(val)),
    }
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2)))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": _TEACHER_FORMAT, "config": json.dumps(asdict(cfg))}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    return path


def _load_teacher(weights: str | os.PathLike | None, random_init: bool) -> tuple[nn.Module, str, TeacherConfig]:
    """Teacher model, source description and config: random, from a file, or cached/trained."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if random_init:
        cfg = TeacherConfig()
        return TeacherViT(cfg), "random-init", cfg
    path = Path(weights).expanduser() if weights is not None else train_builtin_teacher()
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != _TEACHER_FORMAT:
            raise ValueError("no built-in teacher metadata")
        cfg = TeacherConfig(**json.loads(meta["config"]))
        model = TeacherViT(cfg)
        model.load_state_dict(load_file(str(path)))
    except (OSError, ValueError, SafetensorError, RuntimeError) as e:
        raise UserError(f"{path} is not a built-in teacher checkpoint ({e}) — pass a file written by "
                        "train_builtin_teacher, or no weights to use the cached one") from e
    return model.eval(), f"builtin:{path.resolve()}", cfg


def linear_probe_accuracy(encoder: Encoder, train_ds, val_ds, n_train: int = 5000, n_val: int = 2000,
                          batch_size: int = 256) -> float:
    """Held-out accuracy of a logistic regression on mean-pooled tokens: fitted on the first
    ``n_train`` images of ``train_ds`` (standardised features), scored on the first ``n_val`` of
    ``val_ds``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(ds, n: int) -> tuple[Any, Any]:
        n = min(n, len(ds))
        if hasattr(ds, "images"):
            images, labels = ds.images[:n], ds.labels[:n]
        else:
            items = [ds[i] for i in range(n)]
            images, labels = torch.stack([im for im, _ in items]), torch.tensor([lb for _, lb in items])
        feats = torch.cat([encoder(images[i:i + batch_size]).mean(1).cpu() for i in range(0, n, batch_size)])
        return feats.numpy(), labels.numpy()

    x_train, y_train = features(train_ds, n_train)
    x_val, y_val = features(val_ds, n_val)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, tol=1e-6))
    return float(clf.fit(x_train, y_train).score(x_val, y_val))
