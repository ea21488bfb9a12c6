"""The training loop: REPA and vanilla SiT, :func:`train` read top to bottom as named phases.

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
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from train.errors import UserError
from train.run.allocator import keep_freed_memory
from train.models.loading import DiffusionTransformer, build_model
from train.objectives import interpolants as itp
from train.objectives.losses import denoising_loss, spatial_normalize
from train.objectives.terms import LossTerm, StepContext, build_terms, forward_inputs, forward_needs
from train.run.checkpoints import (atomic_save, atomic_write, keep_in_series, newest_intact_checkpoint,  # noqa: F401
                                   nonfinite_tensors, read_checkpoint)
from train.run.config import TrainConfig
from train.run.draws import batch_indices, epoch_order, step_generator  # noqa: F401 (re-exported)
from train.run.live_align import LiveAlignment
from train.run.records import (check_resume_config, git_revision, made_at, save_grid, truncate_metrics,  # noqa: F401
                               write_run_config)
from train.run.rundir import lock_run_dir, remove_stale_temporaries
from train.targets.source import TargetSource, class_partners, image_partners  # noqa: F401 (re-exported)

Tensor = torch.Tensor
CKPT_FORMAT = "repa-toolkit/1"


# ----------------------------------------------------------------------------------------------
# Small pieces the loop uses
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def ema_update(ema: list[Tensor], params: list[Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * param`` for all tensors at once (foreach kernels)."""
    torch._foreach_lerp_(ema, params, 1.0 - decay)


def training_targets(raw: list[Tensor], cfg: TrainConfig) -> list[Tensor]:
    """The encoder tokens (B, T, D) the projection loss compares against, from the raw ones.

    ``target_norm="none"``: the raw tokens; ``"spatial"``: iREPA's per-image spatial normalisation
    (:func:`train.objectives.losses.spatial_normalize`, float32).  Applied after the :class:`TargetSource`
    read, so stored and in-memory target caches hold raw tokens and serve runs of either setting.
    """
    if cfg.target_norm == "none":
        return raw
    return [spatial_normalize(y, cfg.target_norm_gamma, cfg.target_norm_eps) for y in raw]  # (B, T, D) each



# ----------------------------------------------------------------------------------------------
# The loop: set up, resume, start, (one step, then log / evaluate / checkpoint) until done, finish
# ----------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, out: str | os.PathLike, progress: bool = True,
          evaluator: Callable[[DiffusionTransformer, int], dict] | None = None,
          stop_after: int | None = None) -> Path:
    """Train (or resume) the run ``cfg`` in directory ``out``; returns the path of ``latest.pt``.

    ``evaluator(ema_model, step) -> dict`` is called every ``cfg.eval_every`` steps and its numbers
    are logged to metrics.jsonl.  ``stop_after`` ends the process early (tests of resume).
    """
    run = set_up(cfg, Path(out), progress)  # checks and lock, data, codec, encoders, model, EMA, optimizer, targets
    resume(run)                             # the newest intact checkpoint: weights, optimizer, step, RNG
    start(run, evaluator)                   # config.json, fixed sample noise, live alignment, the step-0 checkpoint
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    while run.step < end:
        training_step(run)                  # one optimizer step on the global batch
        after_step(run, end)                # log, checkpoint, sample grid, evaluate, live alignment
    return finish(run, end)


@dataclass
class Run:
    """What the phases of :func:`train` share: the config and run directory, the distributed setup,
    data, codec, encoders, model, EMA, optimizer, loss terms and target source, the step, and the
    running sums of what is logged."""

    cfg: TrainConfig
    out: Path
    progress: bool
    acc: Any
    lock: Any
    micro: int
    dataset: Any
    in_memory: bool
    codec: Any
    latent_shape: tuple
    encoders: list
    model: DiffusionTransformer
    ema: DiffusionTransformer
    params: list
    opt: torch.optim.Optimizer
    terms: list[LossTerm]
    targets: TargetSource | None = None
    step: int = 0
    train_model: Any = None  # the model as the accelerator wraps it (and torch.compile, if asked)
    ema_params: list = field(default_factory=list)
    model_params: list = field(default_factory=list)
    evaluator: Callable | None = None
    live: LiveAlignment | None = None
    tb: Any = None
    bar: Any = None
    show: dict = field(default_factory=dict)  # fixed noise, labels (and REG tokens) of the sample grids
    sums: Tensor | None = None  # loss, denoise, grad norm, then each term's value and weighted value
    n_sums: int = 0
    t_log: float = 0.0
    last_good: int = 0  # the newest checkpoint known to hold finite weights
    at_ckpt: bool = True

    @property
    def device(self) -> torch.device:
        return self.acc.device

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.ckpt_dir / "latest.pt"


def set_up(cfg: TrainConfig, out: Path, progress: bool) -> Run:
    """Check the config, take the run directory's lock, and build everything a step needs."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    errs = cfg.check()
    if errs:
        raise UserError(errs[0])
    # one writer per run directory, and its settings checked before anything slow: the first
    # process (RANK 0 under torchrun) holds the lock until train() returns or the process ends
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
    keep_freed_memory()  # activations reuse the heap instead of fresh pages (train.run.allocator): same values, faster
    use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    # HASTE's stop leaves the projectors without gradients from align_stop_step on: DDP must allow that
    ddp = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.align_stop_step else []
    acc = Accelerator(cpu=use_cpu, mixed_precision=cfg.mixed_precision if not use_cpu else "no", kwargs_handlers=ddp)
    world = acc.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by {world} processes x {cfg.grad_accum} accumulation steps: change --batch-size")
    dataset, in_memory, codec, encoders = data_codec_encoders(cfg, acc.device)
    model, ema, params, opt = _model_ema_optimizer(cfg, dataset, acc.device)
    run = Run(cfg, out, progress, acc, lock, cfg.batch_size // (world * cfg.grad_accum), dataset, in_memory, codec,
              codec.latent_shape(cfg.data.image_size), encoders, model, ema, params, opt,
              build_terms(cfg, encoders))  # the auxiliary loss terms (train.objectives): REPA, HASTE, SRA, dispersive
    acc.wait_for_everyone()
    run.targets = _target_source(run)
    return run


def data_codec_encoders(cfg: TrainConfig, device: torch.device) -> tuple[Any, bool, Any, list]:
    """The run's training data (and whether its images are in memory), codec and target encoders."""
    from train.data.datasets import build_dataset, validate_dataset
    from train.data.latents import build_codec
    from train.targets.encoders import load_encoder

    data_kw = {"size": cfg.data.image_size}
    if cfg.data.dataset in ("folder", "latents", "coco-features"):
        data_kw["root"] = cfg.data.root  # data.hflip: the loop flips (below), not the dataset
    elif cfg.data.n_train is not None:
        data_kw["n"] = cfg.data.n_train
    dataset = build_dataset(cfg.data.dataset, "train", **data_kw)
    if cfg.model.is_mmdit or hasattr(dataset, "null_context"):  # text-to-image: captions stand in for labels
        from train.data.captions import check_captioned
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
    encoders = []
    if cfg.needs_encoders:  # REPA's projection or HASTE's attention distillation
        weights = cfg.encoder_weights or ("",) * len(cfg.encoders)
        grid = int(cfg.model.num_tokens**0.5)
        torch.manual_seed(cfg.seed)  # random-init encoders (tests, offline demos) are seeded too
        encoders = [load_encoder(n, weights=w or None, grid=grid, device=device, random_init=cfg.random_init_encoders)
                    for n, w in zip(cfg.encoders, weights)]
        if not cfg.vanilla and tuple(e.dim for e in encoders) != cfg.model.z_dims:
            raise UserError(f"projector widths {cfg.model.z_dims} do not match encoder widths {tuple(e.dim for e in encoders)}: set model.z_dims to the encoders' widths")
    return dataset, in_memory, codec, encoders


def _model_ema_optimizer(cfg: TrainConfig, dataset, device: torch.device) -> tuple:
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
    return model, ema, params, opt


def _target_source(run: Run) -> TargetSource:
    """Where each batch's encoder tokens come from (:class:`TargetSource`), with the shuffled controls."""
    cfg, acc = run.cfg, run.acc
    targets = TargetSource(run.encoders if not cfg.vanilla else [], run.dataset.images if run.in_memory else None,
                           cfg.cache_targets, run.device,
                           cache_file=(run.out / "target_cache.pt") if acc.is_main_process and acc.num_processes == 1 else None,
                           progress=run.progress and acc.is_main_process, hflip=cfg.data.hflip,
                           stored_root=Path(cfg.data.root) if cfg.data.dataset == "latents" else None)
    if cfg.target_shuffle == "class":  # the control: every image gets another same-class image's targets
        if not isinstance(getattr(run.dataset, "labels", None), Tensor):
            raise UserError("target_shuffle=class needs a dataset with its labels in memory (a built-in dataset): set target_shuffle=none")
        targets.partners = class_partners(run.dataset.labels, cfg.seed)
    elif cfg.target_shuffle == "image":  # the control: every image gets a random other image's targets
        if not run.in_memory:
            raise UserError("target_shuffle=image needs a dataset held in memory (a built-in dataset): set target_shuffle=none")
        targets.partners = image_partners(len(run.dataset), cfg.seed)
    return targets


def resume(run: Run) -> None:
    """Continue from ``latest.pt`` (or the newest intact ``step_*.pt`` when it is damaged): weights,
    EMA, optimizer (with this config's hyperparameters), step and RNG state."""
    found = newest_intact_checkpoint(run.ckpt_dir)
    if found is None:
        return
    path, state, passed_over = found
    for problem in passed_over:
        print(f"warning: {problem}: resuming from {path}", file=sys.stderr)
    try:
        run.model.load_state_dict(state["model"])
        run.ema.load_state_dict(state["ema"])
        run.opt.load_state_dict(state["opt"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint {path} does not fit this run's model ({str(e).strip().splitlines()[0][:150]}): "
                        f"move it out of {run.ckpt_dir}, or pass another --out directory") from None
    cfg = run.cfg
    for group in run.opt.param_groups:  # the optimizer follows the config, not the checkpoint
        group.update(lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    run.step = run.last_good = int(state["step"])
    torch.set_rng_state(state["rng"]["torch"])


def start(run: Run, evaluator: Callable | None) -> None:
    """Record the run (config.json, metrics cut back to the resumed step), prepare the model for
    the accelerator, fix the sample grids' noise, and write the step-0 checkpoint of a new run."""
    cfg, acc = run.cfg, run.acc
    if acc.is_main_process:
        write_run_config(run.out, cfg, {"world_size": acc.num_processes, "resumed_from": run.step,
                                        "target_sources": run.targets.kinds})
        truncate_metrics(run.out / "metrics.jsonl", run.step)
    run.ema_params, run.model_params = list(run.ema.parameters()), list(run.model.parameters())
    run.train_model, run.opt = acc.prepare(torch.compile(run.model) if cfg.compile else run.model, run.opt)
    if cfg.tensorboard and acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter
        run.tb = SummaryWriter(run.out / "tensorboard")
    # fixed evaluation noise and labels for sample grids (same for REPA and vanilla runs)
    n_show = 4 * min(cfg.model.num_classes, 10)  # a column per class (Fashion-MNIST's ten)
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    run.show = {"noise": torch.randn(n_show, cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size, generator=gen),
                "labels": torch.arange(n_show) % min(cfg.model.num_classes, 10), "extra": {}}
    if cfg.model.is_mmdit:  # the first captions' features (N, L, C)
        run.show["labels"] = torch.stack([torch.as_tensor(run.dataset[j][1]) for j in range(n_show)])
    if cfg.model.reg_dim:  # REG's token
        run.show["extra"] = {"cls_noise": torch.randn(n_show, cfg.model.reg_dim, generator=gen)}
    run.evaluator = evaluator
    # live alignment (align_every): the EMA model against the target encoder on a fixed probe set
    run.live = LiveAlignment(cfg, run.codec, run.device) if cfg.align_every and acc.is_main_process else None
    if run.step == 0:
        save(run, 0)  # the series starts at initialisation
        if run.live is not None:
            log(run, {"step": 0, **run.live(run.ema, 0)})
    elif acc.is_main_process:  # a run stopped between its checkpoint and what follows it (an evaluation ...) catches up
        measure(run, run.step, made_at(run.out, run.step))
    run.bar = tqdm(total=cfg.steps, initial=run.step, disable=not (run.progress and acc.is_main_process), dynamic_ncols=True,
                   desc=f"train {'+'.join(tm.name.removesuffix('_loss') for tm in run.terms) or 'vanilla'}")
    run.sums = torch.zeros(3 + 2 * len(run.terms), device=run.device)
    run.n_sums, run.t_log = 0, time.perf_counter()


def training_step(run: Run) -> None:
    """One optimizer step: the denoising loss plus each loss term, over the global batch (split over
    processes and accumulation steps), gradient clipping, AdamW, the EMA update."""
    cfg, acc, step, device = run.cfg, run.acc, run.step, run.device
    world, rank, micro = acc.num_processes, acc.process_index, run.micro
    run.model.train()
    # every random draw of the step is made for the whole global batch, then sliced: the
    # result does not depend on how the batch is split over processes and accumulation steps
    idx_all = batch_indices(len(run.dataset), cfg.batch_size, cfg.seed, step)
    g = step_generator(cfg.seed, step)
    t_all = itp.sample_time(cfg.batch_size, cfg.time_sampling, cfg.path, generator=g)
    noise_all = torch.randn(cfg.batch_size, *run.latent_shape, generator=g)
    post_all = torch.randn(cfg.batch_size, *run.latent_shape, generator=g)
    drop_all = torch.rand(cfg.batch_size, generator=g) < cfg.model.class_dropout_prob
    # data.hflip: mirror each sample with probability 1/2, drawn from its own stream so runs
    # without flips keep their draws; latents and targets follow the same per-sample choice
    flip_all = (torch.rand(cfg.batch_size, generator=step_generator(cfg.seed, step, stream=1)) < 0.5
                if cfg.data.hflip else None)
    for k in range(cfg.grad_accum):
        sl = slice((k * world + rank) * micro, (k * world + rank + 1) * micro)
        idx = idx_all[sl]
        images, labels = _batch(run, idx)
        flip = flip_all[sl] if flip_all is not None else None
        if flip is not None:
            images = torch.where(flip.to(device)[:, None, None, None], images.flip(-1), images)
        t, noise, drop = t_all[sl].to(device), noise_all[sl].to(device), drop_all[sl].to(device)   # (B,), (B, C, H, W), (B,)
        if hasattr(run.dataset, "moments"):  # a latent cache: the stored posterior (of the mirror image where flipped)
            mean, std = (m.to(device) for m in run.dataset.moments(idx, flip))
        else:
            mean, std = run.codec.moments(images)
        x = run.codec.from_moments(mean + std * post_all[sl].to(device), std, sample=False)          # (B, C, H, W)
        x_t = itp.interpolate(x, noise, t, cfg.path)                                                  # (B, C, H, W)
        sync = nullcontext() if k == cfg.grad_accum - 1 else acc.no_sync(run.train_model)
        with sync, acc.autocast():
            # raw targets [(B, T, z_dim)] -> training targets (spatially normalised if asked), read once
            raw_targets = functools.cache(lambda: run.targets(idx, images, flip))
            batch_targets = functools.cache(lambda: training_targets(raw_targets(), cfg))
            ctx = StepContext(step, x, x_t, t, noise, labels, drop, images, idx, flip, None, run.ema, batch_targets,
                              lambda stream: step_generator(cfg.seed, step, stream=stream), sl, cfg.batch_size, cfg.path,
                              raw_targets=raw_targets, encoders=tuple(run.encoders))
            # the terms' extra inputs (REG's noisy global token), then the forward they need
            res = ctx.res = run.train_model(x_t, t, labels, drop_mask=drop, **forward_needs(run.terms, step),
                                            **forward_inputs(run.terms, ctx))
            den = denoising_loss(res.out, x, noise, t, cfg.path).mean()
            loss, logged = den, []  # den + sum_k w_k(step) * term_k; a term of weight 0 is not computed
            for term in run.terms:
                w = term.weight(step)
                value = term(ctx) if w else torch.zeros((), device=device)
                loss = loss + w * value
                logged += [value.detach().float(), (w * value).detach().float()]
            acc.backward(loss / cfg.grad_accum)
        run.sums[:2] += torch.stack([loss.detach(), den.detach()]) / cfg.grad_accum
        if run.terms:
            run.sums[3:] += torch.stack(logged) / cfg.grad_accum
    grad_norm = acc.clip_grad_norm_(run.params, cfg.max_grad_norm)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    ema_update(run.ema_params, run.model_params, cfg.ema_decay)
    run.step += 1
    run.sums[2] += grad_norm.detach().float()
    run.n_sums += 1
    run.bar.update(1)


def _batch(run: Run, idx: Tensor) -> tuple[Tensor, Tensor]:
    """The images and labels (or caption features) of dataset indices ``idx``, on the device."""
    if run.in_memory:  # caption features stand in for the labels of a text-to-image run
        images, labels = run.dataset.images[idx], getattr(run.dataset, "contexts", run.dataset.labels)[idx]
    else:
        items = [run.dataset[int(i)] for i in idx]
        images, labels = torch.stack([a for a, _ in items]), torch.stack([torch.as_tensor(b) for _, b in items])
    return images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)


def after_step(run: Run, end: int) -> None:
    """What follows a step when its turn comes: the logged means, a checkpoint, a sample grid, an
    evaluation, live alignment."""
    cfg, step = run.cfg, run.step
    run.at_ckpt = step % cfg.ckpt_every == 0 or step == cfg.steps
    if step % cfg.log_every == 0 or run.at_ckpt or step == end:
        log_means(run)
    if run.at_ckpt:
        save(run, step)
        run.last_good = step
    measure(run, step)


def measure(run: Run, step: int, done: frozenset[str] = frozenset()) -> None:
    """What the EMA model gets at ``step`` when due: a sample grid, an evaluation, live alignment
    (those named in ``done`` were already made: a resumed run catches up the rest)."""
    cfg = run.cfg
    due = lambda every: every and (step % every == 0 or step == cfg.steps)  # noqa: E731
    if due(cfg.sample_every) and "samples" not in done:
        sample_grid(run, step)
    if run.evaluator is not None and due(cfg.eval_every) and run.acc.is_main_process and "evaluation" not in done:
        log(run, {"step": step, **run.evaluator(run.ema, step)})
    if run.live is not None and due(cfg.align_every) and "live" not in done:
        log(run, {"step": step, **run.live(run.ema, step)})



def finish(run: Run, end: int) -> Path:
    """A checkpoint of the last step if it was not one, then close and release the run directory."""
    run.bar.close()
    if run.step == end and not run.at_ckpt:
        save(run, run.step)
    if run.tb is not None:
        run.tb.close()
    run.acc.wait_for_everyone()
    if run.lock is not None:
        run.lock.release()
    return run.latest


# ----------------------------------------------------------------------------------------------
# Logging, checkpoints, sample grids
# ----------------------------------------------------------------------------------------------

def log_means(run: Run) -> None:
    """Log the means since the last log (one host sync), refusing NaN/inf."""
    step, terms = run.step, run.terms
    vals = (run.acc.reduce(run.sums, "mean") / run.n_sums).tolist()
    if not all(math.isfinite(v) for v in vals):
        raise UserError(f"loss became NaN/inf between steps {step - run.n_sums + 1} and {step}; the last good checkpoint is step {run.last_good} in {run.latest}: lower --lr or use fp32/bf16, then resume")
    dt = time.perf_counter() - run.t_log
    rec = {"step": step, "loss": vals[0], "denoise_loss": vals[1], "proj_loss": 0.0, "grad_norm": vals[2]}
    for k, term in enumerate(terms):  # REPA's term logs as proj_loss (0 in runs without it)
        rec[term.name], rec[f"{term.name}_weighted"] = vals[3 + 2 * k], vals[4 + 2 * k]
    rec.update({"lr": run.opt.param_groups[0]["lr"], "images_per_s": run.n_sums * run.cfg.batch_size / dt, "time": time.time()})
    log(run, rec)
    run.bar.set_postfix(loss=f"{vals[1]:.4f}", **{tm.name.removesuffix("_loss"): f"{rec[tm.name]:.3f}" for tm in terms})
    run.sums.zero_()
    run.n_sums, run.t_log = 0, time.perf_counter()


def log(run: Run, record: dict) -> None:
    if run.acc.is_main_process:
        with open(run.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if run.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    run.tb.add_scalar(k, v, record["step"])


def save(run: Run, step: int) -> None:
    """The checkpoint of ``step`` (plain data, written atomically): the series file, then ``latest.pt``."""
    acc, cfg = run.acc, run.cfg
    if not acc.is_main_process:
        return
    model = acc.unwrap_model(run.model)
    bad = nonfinite_tensors({"model": model.state_dict(), "ema": run.ema.state_dict()})
    if bad:  # never write (or call good) a checkpoint that is not
        raise UserError(f"the weights became NaN/inf by step {step} ({bad[0]}); the last good checkpoint is step {run.last_good} "
                        f"in {run.latest}: lower --lr or --set max_grad_norm, or use fp32/bf16, then resume")
    state = {
        "format": CKPT_FORMAT, "step": step, "model_config": cfg.model.to_dict(), "train_config": cfg.to_dict(),
        "model": model.state_dict(), "ema": run.ema.state_dict(), "opt": run.opt.state_dict(),
        "rng": {"torch": torch.get_rng_state()}, "data": {"images_seen": step * cfg.batch_size},
        "git_revision": git_revision(),
    }
    # the series file first: a run killed between the two writes resumes from the previous
    # latest.pt and writes this step's file again, rather than never writing it
    if keep_in_series(step, cfg.ckpt_every, cfg.ckpt_series) or step == cfg.steps:
        atomic_save(state, run.ckpt_dir / f"step_{step:07d}.pt")
    atomic_save(state, run.latest)


def sample_grid(run: Run, step: int) -> None:
    from train.evaluation.sampling import sample

    if not run.acc.is_main_process:
        return
    device, show = run.device, run.show
    x = sample(run.ema, show["noise"].to(device), show["labels"].to(device), "euler", run.cfg.sample_steps,
               **{k: v.to(device) for k, v in show["extra"].items()})
    save_grid(run.codec.decode(x, uint8=True).cpu(), run.out / "samples" / f"step_{step:07d}.png",
              nrow=min(run.cfg.model.num_classes, 10))
