"""``repa-train`` (also ``python -m train``) and ``repa-sample``.

Bad input ends in one line on stderr (``error: what is wrong: the fix``) and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from train.run.config import PRESETS, DataConfig, ModelConfig, TrainConfig, override, preset
from train.errors import UserError
from train.errors import fail as _fail
from train.run.rules import Parser, config_problems, option


def train_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="repa-train", description="Train SiT with REPA or as a vanilla baseline.")
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny", help="starting configuration (default: tiny)")
    ap.add_argument("--config", type=option("config_file"), help="a JSON TrainConfig (e.g. a run's config.json) instead of a preset")
    ap.add_argument("--out", type=option("out"), help="run directory (resumes if it holds a run)")
    ap.add_argument("--steps", type=option("steps"))
    ap.add_argument("--ckpt-every", type=option("ckpt_every"))
    ap.add_argument("--batch-size", type=option("batch_size"))
    ap.add_argument("--grad-accum", type=option("grad_accum"))
    ap.add_argument("--lr", type=option("lr"))
    ap.add_argument("--proj-coeff", type=option("proj_coeff"), help="REPA lambda; 0 trains the vanilla baseline (as --vanilla)")
    ap.add_argument("--encoders", nargs="+", help="target encoders, e.g. dinov2-vit-b mae-vit-l")
    ap.add_argument("--encoder-weights", nargs="+", type=option("encoder_weights", str), help="one local weights path per encoder ('' for the default)")
    ap.add_argument("--seed", type=option("seed"))
    ap.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    ap.add_argument("--threads", type=option("threads"))
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
                    help="override any field, e.g. model.depth=4 data.n_train=2000 (may be repeated)")
    ap.add_argument("--vanilla", action="store_true", help="train the vanilla baseline (lambda 0, no projector)")
    ap.add_argument("--side-by-side", action="store_true", help="train REPA (OUT/repa) and vanilla (OUT/vanilla) with the same seed, data order and sample noise")
    ap.add_argument("--jobs", type=option("jobs"), default=1, help="with --side-by-side: 2 trains both at once, one thread each")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    ap.add_argument("--no-progress", action="store_true")
    return ap


FLAG_FIELDS = {"steps": "steps", "ckpt_every": "ckpt_every", "batch_size": "batch_size", "grad_accum": "grad_accum",
               "lr": "lr", "proj_coeff": "proj_coeff", "seed": "seed", "mixed_precision": "mixed_precision",
               "threads": "threads", "device": "device"}


def resolve(args: argparse.Namespace) -> TrainConfig:
    if args.config:
        cfg = read_config_file(args.config)
    else:
        cfg = preset(args.preset)
    sets = list(args.set)
    for flag, field in FLAG_FIELDS.items():
        v = getattr(args, flag)
        if v is not None:
            sets.append(f"{field}={json.dumps(v)}")
    if args.encoders:
        sets.append(f"encoders={json.dumps(args.encoders)}")
    if args.encoder_weights:
        sets.append(f"encoder_weights={json.dumps(args.encoder_weights)}")
    try:
        cfg = override(cfg, sets, strict=True)  # each value checked by its field's rule as it is applied
    except (TypeError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else repr(e)
        raise UserError(msg if not msg.startswith("unknown config field") else f"{msg}: see repa-train --dry-run for the fields") from None
    chosen = getattr(cfg, "chosen", [])
    set_here = args.proj_coeff is not None or any(s.partition("=")[0] == "proj_coeff" for s in args.set)
    if args.vanilla or (set_here and cfg.proj_coeff == 0 and not cfg.attn_coeff > 0):
        cfg = as_vanilla(cfg)  # --proj-coeff 0 (or --set proj_coeff=0) trains the vanilla baseline, as --help says
    elif set_here and cfg.proj_coeff == 0:  # HASTE without REPA keeps its encoder: only REPA's projectors go
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, z_dims=()))
    cfg.chosen = [c for c in chosen if cfg.model.reg_dim or not c.startswith("model.reg_dim")]
    errs = cfg.check()
    if errs:
        raise UserError(errs[0])
    return cfg


def unknown_fields(d: dict, cls=TrainConfig, prefix: str = "") -> list[tuple[str, list[str]]]:
    """``(field, close matches)`` for every key of ``d`` (and of its ``model`` / ``data`` sections)
    that ``cls`` does not have."""
    import difflib

    from train.run.config import DataConfig, ModelConfig

    known = {f.name: f for f in dataclasses.fields(cls)}
    sections = {"model": ModelConfig, "data": DataConfig} if cls is TrainConfig else {}
    bad = []
    for k, v in d.items():
        if k not in known:
            bad.append((prefix + k, difflib.get_close_matches(k, list(known), n=1)))
        elif k in sections and isinstance(v, dict):
            bad += unknown_fields(v, sections[k], f"{prefix}{k}.")
    return bad


def read_config_file(path: Path) -> TrainConfig:
    """A JSON TrainConfig (or a run's config.json, which holds it under ``config``); malformed JSON,
    unknown fields (typos) and impossible values are one-line :class:`UserError` s."""
    if not path.is_file():
        raise UserError(f"config file {path} does not exist: pass a JSON config such as a run's config.json")
    try:
        d = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not text: pass a JSON config such as a run's config.json") from None
    except json.JSONDecodeError as e:
        raise UserError(f"config file {path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): fix it there") from None
    d = d.get("config", d) if isinstance(d, dict) else d
    if not isinstance(d, dict):
        raise UserError(f"config file {path} does not hold a JSON object of config fields: pass a config such as a run's config.json")
    bad = unknown_fields(d)
    if bad:
        name, close = bad[0]
        hint = f"did you mean {'.'.join(name.split('.')[:-1] + close)!r}?" if close else "see repa-train --dry-run for the fields"
        raise UserError(f"config file {path} has an unknown field {name!r}: rename or remove it ({hint})")
    problems = config_problems(d, TrainConfig, {"model": ModelConfig, "data": DataConfig})
    if problems:
        raise UserError(f"config file {path}: {problems[0]}: fix it there")
    try:
        return TrainConfig.from_dict(d)
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"config file {path} holds an impossible setting ({str(e).splitlines()[0][:200]}): fix it there") from None


def as_vanilla(cfg: TrainConfig) -> TrainConfig:
    """The same run without REPA: lambda 0, no projector, no encoder (and so no REG token), and the
    settings that only shape the targets or the projector at their defaults (``target_norm``, the
    projector's kind: inert without them), so that a vanilla run is one run whatever REPA variant it is
    the baseline of; live alignment, when on, still measures against the encoder the REPA run uses."""
    align_encoder = cfg.align_encoder or (cfg.encoders[0] if cfg.encoders else "")
    plain, plain_model = type(cfg)(), type(cfg.model)()
    model = dataclasses.replace(cfg.model, z_dims=(), reg_dim=0, projector=plain_model.projector,
                                projector_kernel=plain_model.projector_kernel)
    return dataclasses.replace(cfg, proj_coeff=0.0, reg_coeff=0.0, model=model, encoders=(), encoder_weights=(),
                               align_encoder=align_encoder, target_norm=plain.target_norm,
                               target_norm_gamma=plain.target_norm_gamma, target_norm_eps=plain.target_norm_eps)


def side_by_side(cfg: TrainConfig, out: Path, jobs: int = 1, progress: bool = True) -> dict[str, Path]:
    """Train REPA and vanilla with the same seed, data order and sample noise: OUT/repa, OUT/vanilla."""
    from train.run.loop import train

    from train.run.checkpoints import atomic_write
    from train.run.loop import check_resume_config
    from train.run.rundir import PARENT_ENV, lock_run_dir

    runs = {"repa": cfg, "vanilla": as_vanilla(cfg)}
    with lock_run_dir(out, "side-by-side training"):  # each run's own directory is locked by its train()
        for name, c in runs.items():  # both settings checks before either run starts
            check_resume_config(out / name, c)
        if jobs <= 1:
            return {name: train(c, out / name, progress=progress, evaluator=training_evaluator(c)) for name, c in runs.items()}
        procs = {}
        try:
            for name, c in runs.items():
                (out / name).mkdir(parents=True, exist_ok=True)
                cfg_file = out / name / "requested_config.json"
                atomic_write(cfg_file, lambda tmp, c=c: Path(tmp).write_text(json.dumps(dataclasses.replace(c, threads=1).to_dict())))
                cmd = [sys.executable, "-m", "train", "--config", str(cfg_file), "--out", str(out / name)]
                if not progress or name != "repa":
                    cmd.append("--no-progress")
                # the children end with this process (train.run.rundir.die_with_parent), kill -9 included
                procs[name] = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", PARENT_ENV: str(os.getpid())})
            codes = {name: p.wait() for name, p in procs.items()}
        finally:  # an exception or Ctrl-C here stops the children too
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
    bad = [n for n, c in codes.items() if c]
    if bad:
        raise UserError(f"the {', '.join(bad)} run failed (exit {codes[bad[0]]}): see its output above; rerun the same command to resume")
    return {name: out / name / "checkpoints" / "latest.pt" for name in runs}


def training_evaluator(cfg: TrainConfig):
    """The in-training evaluation (FD and class accuracy of fixed-noise samples), if asked for."""
    if not cfg.eval_every or int(os.environ.get("RANK", "0")) != 0:  # evaluated on the main process only
        return None
    built = []

    def evaluate(ema, step: int) -> dict:  # built at the first evaluation, not before training starts
        if not built:
            from train.evaluation.evaluate import build_training_evaluator

            built.append(build_training_evaluator(cfg))
        return built[0](ema, step)

    return evaluate


def main_train(argv: list[str] | None = None) -> int:
    from train.run.rundir import die_with_parent

    die_with_parent()  # a --side-by-side child: end with the parent (no-op otherwise)
    args = train_parser().parse_args(argv)
    try:
        cfg = resolve(args)
        if args.dry_run:
            from train.objectives.terms import describe

            print(json.dumps(cfg.to_dict(), indent=2))
            for term in describe(cfg):  # the objectives, on stderr: stdout stays a config file
                print("objective " + " ".join(f"{k}={json.dumps(v)}" for k, v in term.items()), file=sys.stderr)
            for line in getattr(cfg, "chosen", []):  # defaults an objective's coefficient switched on
                print(f"default {line}", file=sys.stderr)
            return 0
        if args.out is None:
            raise UserError("no run directory: pass --out DIR")
        if args.side_by_side:
            paths = side_by_side(cfg, args.out, args.jobs, not args.no_progress)
            for name, p in paths.items():
                print(f"{name}: {p}")
        else:
            from train.run.loop import train

            print(train(cfg, args.out, progress=not args.no_progress, evaluator=training_evaluator(cfg)))
    except UserError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted: run the same command again to resume from the last checkpoint")
    return 0


def main_sample(argv: list[str] | None = None) -> int:
    from train.evaluation.evaluate import sample_main

    try:
        return sample_main(argv)
    except UserError as e:
        return _fail(str(e))
