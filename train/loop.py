"""The training loop: REPA and vanilla SiT, one function read top to bottom.

A run directory holds::

    config.json        the resolved TrainConfig + git revision + versions
    metrics.jsonl      one JSON object per logged step (pandas.read_json(..., lines=True))
    checkpoints/       step_0000050.pt ... (the series probes consume) and latest.pt
    samples/           step_0000200.png: EMA samples, fixed noise and labels
    tensorboard/       optional

Checkpoints are plain data (``torch.load(weights_only=True)``), written atomically, and hold the
model, EMA, optimizer, step, data position and RNG state.  Every random draw of a step (data order,
time, noise, label dropout) comes from generators seeded by ``(seed, step, rank)``, so a run stopped at
any point (kill -9 included) and started again with the same command resumes from ``latest.pt`` and
ends with bitwise the same weights as an uninterrupted run (CPU).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from train import interpolants as itp
from train.checkpoints import atomic_save, atomic_write, newest_intact_checkpoint, nonfinite_tensors, read_checkpoint
from train.config import LIVE_ALIGN_FIELDS, TrainConfig
from train.errors import UserError
from train.live_align import LiveAlignment
from train.losses import denoising_loss, spatial_normalize
from train.models import DiffusionTransformer, build_model
from train.objectives import StepContext, build_terms, forward_inputs, forward_needs
from train.rundir import lock_run_dir, remove_stale_temporaries
from train.targets import TargetSource, class_partners, image_partners  # noqa: F401 (re-exported)

Tensor = torch.Tensor
CKPT_FORMAT = "repa-toolkit/1"


# ----------------------------------------------------------------------------------------------
# Small pieces the loop uses
# ----------------------------------------------------------------------------------------------

def git_revision() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0, device="cpu") -> torch.Generator:
    """A generator that depends only on (seed, step, rank, stream): the key to exact resume.

    torch's CPU generator keeps only the low 32 bits of a seed, so the tuple is hashed to 32 bits
    with NumPy's SeedSequence (well mixed; two steps of a 400K-step run share draws with
    probability ~n^2 / 2^33, which is harmless).
    """
    key = int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])
    return torch.Generator(device).manual_seed(key)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of an epoch: a permutation fixed by (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))


def batch_indices(n: int, batch: int, seed: int, step: int) -> Tensor:
    """Dataset indices of global batch ``step`` (0-based): consecutive slices of per-epoch orders."""
    start, have, parts = step * batch, 0, []
    while have < batch:
        epoch, pos = divmod(start + have, n)
        take = min(batch - have, n - pos)
        parts.append(epoch_order(n, seed, epoch)[pos:pos + take])
        have += take
    return torch.cat(parts)


@torch.no_grad()
def ema_update(ema: list[Tensor], params: list[Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * param`` for all tensors at once (foreach kernels)."""
    torch._foreach_lerp_(ema, params, 1.0 - decay)


def keep_in_series(step: int, every: int, mode: str) -> bool:
    """Periodic checkpoints kept for probing: all multiples of ``every``, or ``every * 2^k``."""
    if step % every:
        return False
    k = step // every
    return mode == "all" or (k & (k - 1)) == 0


def training_targets(raw: list[Tensor], cfg: TrainConfig) -> list[Tensor]:
    """The encoder tokens (B, T, D) the projection loss compares against, from the raw ones.

    ``target_norm="none"``: the raw tokens; ``"spatial"``: iREPA's per-image spatial normalisation
    (:func:`train.losses.spatial_normalize`, float32).  Applied after the :class:`TargetSource`
    read, so stored and in-memory target caches hold raw tokens and serve runs of either setting.
    """
    if cfg.target_norm == "none":
        return raw
    return [spatial_normalize(y, cfg.target_norm_gamma, cfg.target_norm_eps) for y in raw]  # (B, T, D) each


# ----------------------------------------------------------------------------------------------
# Run directory helpers
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, out: str | os.PathLike, progress: bool = True,
          evaluator: Callable[[DiffusionTransformer, int], dict] | None = None,
          stop_after: int | None = None) -> Path:
    """Train (or resume) the run ``cfg`` in directory ``out``; returns the path of ``latest.pt``.

    ``evaluator(ema_model, step) -> dict`` is called every ``cfg.eval_every`` steps and its numbers
    are logged to metrics.jsonl.  ``stop_after`` ends the process early (tests of resume).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from train.data import build_dataset, validate_dataset
    from train.encoders import load_encoder
    from train.latents import build_codec

    errs = cfg.check()
    if errs:
        raise UserError(errs[0])
    # one writer per run directory, and its settings checked before anything slow: the first
    # process (RANK 0 under torchrun) holds the lock until train() returns or the process ends
    out = Path(out)
    first = int(os.environ.get("RANK", "0")) == 0
    lock = lock_run_dir(out) if first else None
    if first:
        remove_stale_temporaries(out, out / "checkpoints", out / "samples")  # of writes a kill cut short
    check_resume_config(out, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Adam's second moments of small gradients turn denormal and make CPU steps several times
    # slower; flushing them to zero changes values below 1e-38 only.
    torch.set_flush_denormal(True)
    use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    # HASTE's stop leaves the projectors without gradients from align_stop_step on: DDP must allow that
    ddp = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.align_stop_step else []
    acc = Accelerator(cpu=use_cpu, mixed_precision=cfg.mixed_precision if not use_cpu else "no", kwargs_handlers=ddp)
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by {world} processes x {cfg.grad_accum} accumulation steps: change --batch-size")
    micro = cfg.batch_size // (world * cfg.grad_accum)

    # --- data, codec, encoders ------------------------------------------------------------------
    data_kw = {"size": cfg.data.image_size}
    if cfg.data.dataset in ("folder", "latents", "coco-features"):
        data_kw["root"] = cfg.data.root  # data.hflip: the loop flips (below), not the dataset
    elif cfg.data.n_train is not None:
        data_kw["n"] = cfg.data.n_train
    dataset = build_dataset(cfg.data.dataset, "train", **data_kw)
    if cfg.model.is_mmdit or hasattr(dataset, "null_context"):  # text-to-image: captions stand in for labels
        from train.captions import check_captioned
        check_captioned(dataset, cfg)
    else:
        validate_dataset(dataset, cfg.data.image_size, cfg.model.num_classes)
    in_memory = isinstance(getattr(dataset, "images", None), Tensor)
    if cfg.data.hflip and hasattr(dataset, "moments") and not dataset.has_flips:
        raise UserError(f"data.hflip needs the latents of mirrored images, which the cache {cfg.data.root} lacks: "
                        "rerun its python -m train.data encode command with --hflip (it adds them)")
    codec_kw = {}
    if cfg.data.codec == "sd-vae":  # a local VAE directory both encodes and decodes; hub: ft-mse / ft-ema
        codec_kw = {"encoder": cfg.data.vae, "random_init": cfg.data.random_init_vae}
        if Path(cfg.data.vae).is_dir():
            codec_kw["decoder"] = cfg.data.vae
    codec = build_codec(cfg.data.codec, **codec_kw).to(device)
    latent_shape = codec.latent_shape(cfg.data.image_size)
    encoders = []
    if cfg.needs_encoders:  # REPA's projection or HASTE's attention distillation
        weights = cfg.encoder_weights or ("",) * len(cfg.encoders)
        grid = int(cfg.model.num_tokens**0.5)
        torch.manual_seed(cfg.seed)  # random-init encoders (tests, offline demos) are seeded too
        encoders = [load_encoder(n, weights=w or None, grid=grid, device=device, random_init=cfg.random_init_encoders)
                    for n, w in zip(cfg.encoders, weights)]
        if not cfg.vanilla and tuple(e.dim for e in encoders) != cfg.model.z_dims:
            raise UserError(f"projector widths {cfg.model.z_dims} do not match encoder widths {tuple(e.dim for e in encoders)}: set model.z_dims to the encoders' widths")

    # --- model, EMA, optimizer --------------------------------------------------------------------
    model = build_model(cfg.model)
    torch.manual_seed(cfg.seed)
    model.initialize_weights()  # after the seed: REPA and vanilla twins share the backbone init
    if cfg.model.is_mmdit:  # the dataset's empty-caption features: the null context of guidance
        model.null_context.copy_(dataset.null_context)
    model = model.to(device)
    ema = build_model(cfg.model).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay, foreach=device.type != "cuda" or None,
                            fused=device.type == "cuda" or None)
    terms = build_terms(cfg, encoders)  # the auxiliary loss terms (train.objectives): REPA, HASTE, SRA, dispersive

    # --- resume ------------------------------------------------------------------------------------
    ckpt_dir = out / "checkpoints"
    latest = ckpt_dir / "latest.pt"
    step = 0
    acc.wait_for_everyone()
    targets = TargetSource(encoders if not cfg.vanilla else [], dataset.images if in_memory else None, cfg.cache_targets, device,
                           cache_file=(out / "target_cache.pt") if acc.is_main_process and world == 1 else None,
                           progress=progress and acc.is_main_process, hflip=cfg.data.hflip,
                           stored_root=Path(cfg.data.root) if cfg.data.dataset == "latents" else None)
    if cfg.target_shuffle == "class":  # the control: every image gets another same-class image's targets
        if not isinstance(getattr(dataset, "labels", None), Tensor):
            raise UserError("target_shuffle=class needs a dataset with its labels in memory (a built-in dataset): set target_shuffle=none")
        targets.partners = class_partners(dataset.labels, cfg.seed)
    elif cfg.target_shuffle == "image":  # the control: every image gets a random other image's targets
        if not in_memory:
            raise UserError("target_shuffle=image needs a dataset held in memory (a built-in dataset): set target_shuffle=none")
        targets.partners = image_partners(len(dataset), cfg.seed)
    found = newest_intact_checkpoint(ckpt_dir)  # latest.pt, or the newest intact step_*.pt if it is damaged
    if found is not None:
        path, state, passed_over = found
        for problem in passed_over:
            print(f"warning: {problem}: resuming from {path}", file=sys.stderr)
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint {path} does not fit this run's model ({str(e).strip().splitlines()[0][:150]}): "
                            f"move it out of {ckpt_dir}, or pass another --out directory") from None
        for group in opt.param_groups:  # the optimizer follows the config, not the checkpoint
            group.update(lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
    if acc.is_main_process:
        write_run_config(out, cfg, {"world_size": world, "resumed_from": step, "target_sources": targets.kinds})
        truncate_metrics(out / "metrics.jsonl", step)
    ema_params = [p for p in ema.parameters()]
    model_params = [p for p in model.parameters()]
    train_model = torch.compile(model) if cfg.compile else model
    train_model, opt = acc.prepare(train_model, opt)

    tb = None
    if cfg.tensorboard and acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(out / "tensorboard")

    # fixed evaluation noise and labels for sample grids (same for REPA and vanilla runs)
    n_show = 4 * min(cfg.model.num_classes, 8)
    show_gen = torch.Generator().manual_seed(cfg.seed + 12345)
    show_noise = torch.randn(n_show, cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size, generator=show_gen)
    show_labels = torch.arange(n_show) % min(cfg.model.num_classes, 8)
    if cfg.model.is_mmdit:  # the first captions' features (N, L, C)
        show_labels = torch.stack([torch.as_tensor(dataset[j][1]) for j in range(n_show)])
    show_reg = {"cls_noise": torch.randn(n_show, cfg.model.reg_dim, generator=show_gen)} if cfg.model.reg_dim else {}  # REG's token

    last_good, at_ckpt = step, True  # the newest checkpoint known to hold finite weights

    def save(step: int) -> None:
        if not acc.is_main_process:
            return
        bad = nonfinite_tensors({"model": acc.unwrap_model(model).state_dict(), "ema": ema.state_dict()})
        if bad:  # never write (or call good) a checkpoint that is not
            raise UserError(f"the weights became NaN/inf by step {step} ({bad[0]}); the last good checkpoint is step {last_good} "
                            f"in {latest}: lower --lr or --set max_grad_norm, or use fp32/bf16, then resume")
        state = {
            "format": CKPT_FORMAT, "step": step, "model_config": cfg.model.to_dict(), "train_config": cfg.to_dict(),
            "model": acc.unwrap_model(model).state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "data": {"images_seen": step * cfg.batch_size},
            "git_revision": git_revision(),
        }
        # the series file first: a run killed between the two writes resumes from the previous
        # latest.pt and writes this step's file again, rather than never writing it
        if keep_in_series(step, cfg.ckpt_every, cfg.ckpt_series) or step == cfg.steps:
            atomic_save(state, ckpt_dir / f"step_{step:07d}.pt")
        atomic_save(state, latest)

    def log(record: dict) -> None:
        if acc.is_main_process:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "step":
                        tb.add_scalar(k, v, record["step"])

    def sample_grid(step: int) -> None:
        from train.sampling import sample

        if not acc.is_main_process:
            return
        x = sample(ema, show_noise.to(device), show_labels.to(device), "euler", cfg.sample_steps,
                   **{k: v.to(device) for k, v in show_reg.items()})
        save_grid(codec.decode(x, uint8=True).cpu(), out / "samples" / f"step_{step:07d}.png", nrow=min(cfg.model.num_classes, 8))

    # live alignment (align_every): the EMA model against the target encoder on a fixed probe set
    live = LiveAlignment(cfg, codec, device) if cfg.align_every and acc.is_main_process else None
    if step == 0:
        save(0)  # the series starts at initialisation
        if live is not None:
            log({"step": 0, **live(ema, 0)})

    # --- the loop ----------------------------------------------------------------------------------
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {'+'.join(tm.name.removesuffix('_loss') for tm in terms) or 'vanilla'}",
               disable=not (progress and acc.is_main_process), dynamic_ncols=True)
    # loss, denoise, grad-norm, then each term's value and weighted contribution, summed between logs
    sums = torch.zeros(3 + 2 * len(terms), device=device)
    n_sums, t_log = 0, time.perf_counter()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    while step < end:
        model.train()
        # every random draw of the step is made for the whole global batch, then sliced: the
        # result does not depend on how the batch is split over processes and accumulation steps
        idx_all = batch_indices(len(dataset), cfg.batch_size, cfg.seed, step)
        g = step_generator(cfg.seed, step)
        t_all = itp.sample_time(cfg.batch_size, cfg.time_sampling, cfg.path, generator=g)
        noise_all = torch.randn(cfg.batch_size, *latent_shape, generator=g)
        post_all = torch.randn(cfg.batch_size, *latent_shape, generator=g)
        drop_all = torch.rand(cfg.batch_size, generator=g) < cfg.model.class_dropout_prob
        # data.hflip: mirror each sample with probability 1/2, drawn from its own stream so runs
        # without flips keep their draws; latents and targets follow the same per-sample choice
        flip_all = (torch.rand(cfg.batch_size, generator=step_generator(cfg.seed, step, stream=1)) < 0.5
                    if cfg.data.hflip else None)
        for k in range(cfg.grad_accum):
            sl = slice((k * world + rank) * micro, (k * world + rank + 1) * micro)
            idx = idx_all[sl]
            if in_memory:  # caption features stand in for the labels of a text-to-image run
                images, labels = dataset.images[idx], getattr(dataset, "contexts", dataset.labels)[idx]
            else:
                items = [dataset[int(i)] for i in idx]
                images, labels = torch.stack([a for a, _ in items]), torch.stack([torch.as_tensor(b) for _, b in items])
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            flip = flip_all[sl] if flip_all is not None else None
            if flip is not None:
                images = torch.where(flip.to(device)[:, None, None, None], images.flip(-1), images)
            t, noise, drop = t_all[sl].to(device), noise_all[sl].to(device), drop_all[sl].to(device)   # (B,), (B, C, H, W), (B,)
            if hasattr(dataset, "moments"):  # a latent cache: the stored posterior (of the mirror image where flipped)
                mean, std = (m.to(device) for m in dataset.moments(idx, flip))
            else:
                mean, std = codec.moments(images)
            x = codec.from_moments(mean + std * post_all[sl].to(device), std, sample=False)          # (B, C, H, W)
            x_t = itp.interpolate(x, noise, t, cfg.path)
            sync = nullcontext() if k == cfg.grad_accum - 1 else acc.no_sync(train_model)
            with sync, acc.autocast():
                # raw targets [(B, T, z_dim)] -> training targets (spatially normalised if asked), read once
                raw_targets = functools.cache(lambda: targets(idx, images, flip))
                batch_targets = functools.cache(lambda: training_targets(raw_targets(), cfg))
                ctx = StepContext(step, x, x_t, t, noise, labels, drop, images, idx, flip, None, ema, batch_targets,
                                  lambda stream: step_generator(cfg.seed, step, stream=stream), sl, cfg.batch_size, cfg.path,
                                  raw_targets=raw_targets, encoders=tuple(encoders))
                # the terms' extra inputs (REG's noisy global token), then the forward they need
                res = ctx.res = train_model(x_t, t, labels, drop_mask=drop, **forward_needs(terms, step), **forward_inputs(terms, ctx))
                den = denoising_loss(res.out, x, noise, t, cfg.path).mean()
                loss, logged = den, []  # den + sum_k w_k(step) * term_k; a term of weight 0 is not computed
                for term in terms:
                    w = term.weight(step)
                    value = term(ctx) if w else torch.zeros((), device=device)
                    loss = loss + w * value
                    logged += [value.detach().float(), (w * value).detach().float()]
                acc.backward(loss / cfg.grad_accum)
            sums[:2] += torch.stack([loss.detach(), den.detach()]) / cfg.grad_accum
            if terms:
                sums[3:] += torch.stack(logged) / cfg.grad_accum
        grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema_params, model_params, cfg.ema_decay)
        step += 1
        sums[2] += grad_norm.detach().float()
        n_sums += 1
        bar.update(1)

        at_ckpt = step % cfg.ckpt_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or at_ckpt or step == end:
            vals = (acc.reduce(sums, "mean") / n_sums).tolist()  # one host sync per log
            if not all(math.isfinite(v) for v in vals):
                raise UserError(f"loss became NaN/inf between steps {step - n_sums + 1} and {step}; the last good checkpoint is step {last_good} in {latest}: lower --lr or use fp32/bf16, then resume")
            dt = time.perf_counter() - t_log
            rec = {"step": step, "loss": vals[0], "denoise_loss": vals[1], "proj_loss": 0.0, "grad_norm": vals[2]}
            for k, term in enumerate(terms):  # REPA's term logs as proj_loss (0 in runs without it)
                rec[term.name], rec[f"{term.name}_weighted"] = vals[3 + 2 * k], vals[4 + 2 * k]
            rec.update({"lr": opt.param_groups[0]["lr"], "images_per_s": n_sums * cfg.batch_size / dt, "time": time.time()})
            log(rec)
            bar.set_postfix(loss=f"{vals[1]:.4f}", **{tm.name.removesuffix("_loss"): f"{rec[tm.name]:.3f}" for tm in terms})
            sums.zero_()
            n_sums, t_log = 0, time.perf_counter()
        if at_ckpt:
            save(step)
            last_good = step
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
            sample_grid(step)
        if evaluator is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps) and acc.is_main_process:
            log({"step": step, **evaluator(ema, step)})
        if live is not None and (step % cfg.align_every == 0 or step == cfg.steps):
            log({"step": step, **live(ema, step)})
    bar.close()
    if step == end and not at_ckpt:
        save(step)
    if tb is not None:
        tb.close()
    acc.wait_for_everyone()
    if lock is not None:
        lock.release()
    return latest
