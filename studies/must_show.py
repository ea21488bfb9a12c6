"""The built-in-default issue's checks, per seed, from the extended study's committed tables:

    python -m studies.must_show [figures/extended/tables] [--arms studies/results/extended/evals.csv]

1. steps REPA needs to reach vanilla's final FD, over vanilla's steps (target: <= 0.5);
2. null-label CKNNA at the aligned layer (mean-pooled, t = 0, last checkpoint), REPA over vanilla
   (target: >= 2);
3. class accuracy of REPA's conditional samples at the end (target: >= 0.5);
4. vanilla's CKNNA (max over layers, t = 0) at the first and the last checkpoint (it should rise);
5. with ``--arms``: final FD and class accuracy of every arm (control, iREPA) beside REPA and vanilla.
Prints markdown tables; computes nothing that the tables do not hold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from studies.summarize import first_step_below


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tables", nargs="?", default="figures/extended/tables", type=Path)
    ap.add_argument("--arms", type=Path, help="evals.csv of studies/summarize.py for the other arms")
    ap.add_argument("--align", type=int, default=2)
    args = ap.parse_args()
    m = pd.read_csv(args.tables / "training_metrics.csv")
    ev = m[m["fd"].notna()]
    probe = pd.read_csv(args.tables / "probe.csv", keep_default_na=False, na_values=[""])
    probe = probe[~probe["is_reference"].astype(bool)]
    rows = []
    for seed, g in ev.groupby("seed"):
        rep, van = (g[g.run == r].sort_values("step") for r in ("repa", "vanilla"))
        target = van.fd.iloc[-1]
        reach = first_step_below(rep.step.to_numpy(), rep.fd.to_numpy(), target)
        p = probe[(probe.seed_run == seed) & (probe.metric == "cknna") & (probe.t == 0) & (probe.pooling == "mean")
                  & (probe.label == "null")]
        last = p.step.max()
        at = {r: p[(p.run == r) & (p.step == last) & (p.layer == args.align)]["value"].mean() for r in ("repa", "vanilla")}
        v = p[p.run == "vanilla"].groupby("step")["value"].max()
        rows.append({"seed": seed, "vanilla final FD": round(target, 2), "REPA final FD": round(rep.fd.iloc[-1], 2),
                     "REPA steps to it": reach, "ratio (<= 0.5)": round(reach / van.step.max(), 3) if reach == reach else "never",
                     f"CKNNA L{args.align} REPA": round(at["repa"], 4), f"CKNNA L{args.align} vanilla": round(at["vanilla"], 4),
                     "CKNNA ratio (>= 2)": round(at["repa"] / at["vanilla"], 2),
                     "REPA class acc (>= 0.5)": round(rep.class_acc.iloc[-1], 3),
                     "vanilla class acc": round(van.class_acc.iloc[-1], 3),
                     "vanilla CKNNA max, first -> last ckpt": f"{v.iloc[0]:.4f} -> {v.iloc[-1]:.4f}"})
    print(pd.DataFrame(rows).to_string(index=False))
    if args.arms:
        arms = pd.read_csv(args.arms)
        last = arms.sort_values("step").groupby(["variant", "seed"]).tail(1)
        both = pd.concat([last[["variant", "seed", "step", "fd", "class_acc"]],
                          ev.sort_values("step").groupby(["run", "seed"]).tail(1)
                          .rename(columns={"run": "variant"})[["variant", "seed", "step", "fd", "class_acc"]]])
        print()
        print(both.pivot_table(index="variant", columns="seed", values=["fd", "class_acc"]).round(3).to_string())


if __name__ == "__main__":
    main()
