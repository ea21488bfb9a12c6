"""Evaluate the checkpoints of evaluation steps that a run's log lacks, as the run would have:

    python -m studies.fill_evals RUN_DIR [RUN_DIR ...] [--check STEP]

A run killed between the checkpoint of an evaluation step and that evaluation (minutes later), then
resumed, logged no evaluation at that step before the loop caught such steps up on resume
(``train.run.loop.start``).  This evaluates the EMA weights of each such checkpoint with the run's own
evaluator (``build_training_evaluator`` of its config.json: the same fixed noise, sampler and
reference) and inserts the record into ``metrics.jsonl`` in step order, marked ``"filled": true``.
``--check STEP`` instead re-evaluates a step the log has and prints both records (they should agree).

``--live`` fills live alignment (``train.run.live_align``) instead, at the series checkpoints whose step
is due under the run's ``align_every`` and lacks ``align/`` values: a run trained without live alignment
and resumed with it (a study's run linked into ``make extended``, whose runs measure it) gets the curve
at its checkpoints' resolution, measured as the loop measures it (the EMA weights, the same probe set).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def missing_steps(out: Path, cfg) -> list[int]:
    """Evaluation steps with a series checkpoint and no logged evaluation (``train.run.records.made_at``)."""
    from train.run.records import made_at

    steps = sorted(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.pt"))
    return [s for s in steps if s > 0 and (s % cfg.eval_every == 0 or s == cfg.steps) and "evaluation" not in made_at(out, s)]


def missing_live_steps(out: Path, cfg) -> list[int]:
    """Series checkpoints due for live alignment (``align_every``) whose step has no ``align/`` values."""
    from train.run.records import made_at

    if not cfg.align_every:
        return []
    steps = sorted(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.pt"))
    return [s for s in steps if (s % cfg.align_every == 0 or s == cfg.steps) and "live" not in made_at(out, s)]


def insert(out: Path, record: dict) -> None:
    """``record`` into ``metrics.jsonl`` after the last line of a step at or before its own."""
    from train.run.checkpoints import atomic_write

    lines = (out / "metrics.jsonl").read_text().splitlines()
    at = max((i + 1 for i, ln in enumerate(lines) if json.loads(ln)["step"] <= record["step"]), default=0)
    lines.insert(at, json.dumps(record))
    atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in lines)))


def main() -> None:
    from train.evaluation.evaluate import build_training_evaluator
    from train.models.loading import load
    from train.run.config import TrainConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--check", type=int, help="re-evaluate this logged step and print both records")
    ap.add_argument("--live", action="store_true", help="fill live alignment (align/ values) instead of evaluations")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the training loop
    for out in args.runs:
        cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
        if args.live:
            fill_live(out, cfg)
            continue
        evaluate = build_training_evaluator(cfg)
        for step in [args.check] if args.check is not None else missing_steps(out, cfg):
            ema = load(out / "checkpoints" / f"step_{step:07d}.pt", weights="ema")
            record = {"step": step, **evaluate(ema, step), "filled": True}
            if args.check is not None:
                logged = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                          if r["step"] == step and "fd" in r]
                print(json.dumps({"logged": logged, "re-evaluated": record}, indent=1))
            else:
                insert(out, record)
                print(f"{out}: step {step} fd {record['fd']:.4f}")


def fill_live(out: Path, cfg) -> None:
    """Live alignment of each checkpoint :func:`missing_live_steps` names, inserted in step order."""
    from train.data.latents import build_codec
    from train.models.loading import load
    from train.run.live_align import LiveAlignment

    steps = missing_live_steps(out, cfg)
    if not steps:
        return
    device = torch.device("cpu")
    live = LiveAlignment(cfg, build_codec(cfg.data.codec).to(device), device)
    for step in steps:
        ema = load(out / "checkpoints" / f"step_{step:07d}.pt", weights="ema")
        insert(out, {"step": step, **live(ema, step), "filled": True})
        print(f"{out}: step {step} live alignment filled")


if __name__ == "__main__":
    main()
