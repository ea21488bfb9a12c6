"""Tables of the study's runs: FD and class accuracy against step, and steps to vanilla's final FD.

    python studies/summarize.py [runs/study] [--out studies/results]

Reads every ``<root>/[<setting>/]<variant>/seed<k>/metrics.jsonl``; a variant is compared with the
``vanilla`` variant of its setting (``<setting>/vanilla``, or ``vanilla`` at the top level); writes ``evals.csv`` (one row per variant x
seed x evaluated step), ``training_metrics.csv`` (every logged line of every run) and ``summary.csv`` (per variant x seed: final FD and class accuracy, the
first step at which the run reaches its seed's vanilla final FD -- linear interpolation between
evaluations -- and that step over vanilla's steps), and prints both.

The tables outlive the runs: where ``--out`` already holds ``evals.csv`` and ``training_metrics.csv``,
the rows of runs that are not under the root now (a stage whose checkpoints were lost with the machine
they were on) are kept, and the runs found replace their own rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def read_logs(root: Path) -> pd.DataFrame:
    """Every logged line (losses, throughput, evaluations) of every run, with ``variant`` and ``seed``."""
    frames = [pd.read_json(f, lines=True).assign(variant=str(f.parent.parent.relative_to(root)), seed=int(f.parent.name[4:]))
              for f in sorted(root.glob("**/seed*/metrics.jsonl"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_evals(root: Path) -> pd.DataFrame:
    rows = []
    for f in sorted(root.glob("**/seed*/metrics.jsonl")):
        variant, seed = str(f.parent.parent.relative_to(root)), int(f.parent.name[4:])
        cfg_file = f.parent / "config.json"
        steps_cfg = json.loads(cfg_file.read_text())["config"]["steps"] if cfg_file.exists() else None
        for line in f.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "fd" in rec:
                rows.append({"variant": variant, "seed": seed, "step": rec["step"], "fd": rec["fd"],
                             "class_acc": rec.get("class_acc", np.nan), "eval_n": rec.get("eval_n"),
                             "planned_steps": steps_cfg,
                             **{k: rec.get(k, np.nan) for k in ("kid", "kid_std", "fd_half_a", "fd_half_b", "kid_half_a",
                                                                "kid_half_b", "precision", "recall", "class_confidence")}})
    return pd.DataFrame(rows)


def first_step_below(steps: np.ndarray, fds: np.ndarray, target: float) -> float:
    """The first step at which the FD curve reaches ``target`` (linear between evaluations); NaN if never."""
    for i, (s, v) in enumerate(zip(steps, fds)):
        if v <= target:
            if i == 0:
                return float(s)
            s0, v0 = steps[i - 1], fds[i - 1]
            return float(s0 + (s - s0) * (v0 - target) / (v0 - v))
    return float("nan")


def keep_absent_runs(found: pd.DataFrame, old_csv: Path) -> pd.DataFrame:
    """``found`` and the rows of ``old_csv`` whose (variant, seed) is not in ``found``: a table built up
    over stages whose runs are not all on this machine."""
    if not old_csv.exists():
        return found
    old = pd.read_csv(old_csv)
    here = set(zip(found.variant, found.seed)) if len(found) else set()
    kept = old[[(v, s) not in here for v, s in zip(old.variant, old.seed)]]
    if len(kept):
        runs = sorted(set(zip(kept.variant, kept.seed)))
        print(f"{old_csv}: kept the rows of {len(runs)} runs not under the root: "
              + ", ".join(f"{v} seed {s}" for v, s in runs))
    return pd.concat([kept, found], ignore_index=True).sort_values(["variant", "seed", "step"], kind="stable",
                                                                    ignore_index=True)


def baseline_of(variant: str) -> str:
    """``<setting>/vanilla`` for ``<setting>/<variant>``; ``vanilla`` at the top level."""
    return str(Path(variant).parent / "vanilla") if "/" in variant else "vanilla"


def summary(evals: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (variant, seed), g in evals.groupby(["variant", "seed"]):
        g = g.sort_values("step")
        base = evals[(evals.variant == baseline_of(variant)) & (evals.seed == seed)].sort_values("step")
        row = {"variant": variant, "seed": seed, "last_step": int(g.step.max()), "final_fd": g.fd.iloc[-1],
               "final_class_acc": g.class_acc.iloc[-1], "min_fd": g.fd.min()}
        if len(base) and base.step.max() >= g.step.max():
            common = base[base.step <= g.step.max()]
            target = common.fd.iloc[-1]
            reach = first_step_below(g.step.to_numpy(), g.fd.to_numpy(), target)
            row.update(vanilla_fd_at_last=target, steps_to_vanilla_fd=reach, ratio=reach / common.step.max())
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default="runs/study", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    evals = read_evals(args.root)
    if evals.empty:
        raise SystemExit(f"no evaluations under {args.root}")
    if args.out:
        evals = keep_absent_runs(evals, args.out / "evals.csv")
    table = summary(evals)
    pivot = evals.pivot_table(index=["variant", "seed"], columns="step", values="fd").round(1)
    acc = evals.pivot_table(index=["variant", "seed"], columns="step", values="class_acc").round(2)
    print("FD by step\n" + pivot.to_string() + "\n\nclass accuracy by step\n" + acc.to_string())
    print("\n" + table.round(3).to_string(index=False))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        evals.to_csv(args.out / "evals.csv", index=False)
        keep_absent_runs(read_logs(args.root), args.out / "training_metrics.csv").to_csv(
            args.out / "training_metrics.csv", index=False)
        table.to_csv(args.out / "summary.csv", index=False)


if __name__ == "__main__":
    main()
