"""Use a selection study's finished runs as the REPA and vanilla arms of ``make extended``:

    python -m studies.link_arms runs/study/fashion/cond --repa repa-ssl --vanilla vanilla \\
        --out runs/extended --seeds 0 1 2 --steps 2000 --set eval_every=500 eval_samples=2000 ckpt_every=500 sample_every=500

then ``make extended`` trains only what is missing (the shuffled-target control) and probes all.
A study run resumes in ``make extended`` only if its training configuration is the extended study's
(``train.run.records.check_resume_config``: this refuses before linking when it is not). The study ran
without live alignment (speed), so each linked arm gets it at its checkpoints (``studies.fill_evals
--live``: 0, 500, 1,000, ... rather than every 100 steps), measured as the loop measures it, with the
extended study's live-alignment settings. Checkpoints, sample grids and target caches are hard links
(never rewritten in place); the logs and config are copies, so the study's own runs stay as they were.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from pathlib import Path


def link_run(src: Path, dst: Path) -> None:
    """``dst`` as a copy of the run ``src``: large files hard-linked, the files a resume rewrites in place copied."""
    if dst.exists():
        raise SystemExit(f"{dst} exists: remove it or leave it (a linked arm is linked once)")
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("*.lock", "lock"))
    for name in ("metrics.jsonl", "config.json", "stdout.log"):
        if (dst / name).exists():
            (dst / name).unlink()
            shutil.copy2(src / name, dst / name)


def main(argv: list[str] | None = None) -> int:
    from probe.demo import demo_config
    from studies.fill_evals import fill_live
    from train.run.cli import as_vanilla
    from train.errors import UserError
    from train.run.records import check_resume_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="the study's folder of variants, e.g. runs/study/fashion/cond")
    ap.add_argument("--repa", required=True, help="the REPA variant's folder name in it")
    ap.add_argument("--vanilla", required=True, help="the vanilla variant's folder name in it")
    ap.add_argument("--out", type=Path, required=True, help="make extended's --out")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--set", nargs="*", default=[], help="make extended's --set")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    for seed in args.seeds:
        cfg = demo_config(seed, args.steps, args.set, control=True)
        for arm, variant, c in (("repa", args.repa, cfg), ("vanilla", args.vanilla, as_vanilla(cfg))):
            src, dst = args.study / variant / f"seed{seed}", args.out / f"seed{seed}" / arm
            final = src / "checkpoints" / f"step_{args.steps:07d}.pt"
            if not final.is_file():
                raise SystemExit(f"{src} has no step-{args.steps} checkpoint: finish the study's run first")
            try:
                check_resume_config(src, c)  # the same training configuration, or a one-line refusal
            except UserError as e:
                raise SystemExit(f"{src} cannot be the {arm} arm of {args.out}: {e}") from None
            if not dst.exists():
                link_run(src, dst)
                print(f"linked {src} -> {dst}")
            fill_live(dst, dataclasses.replace(c, steps=args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
