"""Every variant of the selection study against issue 21's two sizes, per seed, from the committed tables:

    python -m studies.sizes studies/results/fashion studies/results/fashion-rerun studies/results/fashion-s13 \
        studies/results/fashion-s14 --seeds 0 1 2 --out studies/results/sizes_by_variant.csv

1. **speed**: the steps at which REPA's FD reaches its vanilla's final FD over vanilla's steps (linear between
   evaluations), the ``ratio`` column of each folder's ``summary.csv`` (``python -m studies.summarize``);
   met at <= 2/3 (the issue; aim 1/2); a curve that never gets there counts as 1.0;
2. **alignment**: null-label CKNNA at the aligned block (mean-pooled, t = 0, the run's last checkpoint)
   over vanilla's (same seed, teacher, block, step), from the folder's ``cknna*.csv`` tables
   (``repa-probe compare``); the aligned block is the smallest block a table measured for that run (the
   tables measure the aligned block, and block 2 beside block 1 for the block-1 variant); met at >= 1.5
   against **every** teacher measured (PLAN.md, session 9); blank where no table measured the variant.

A folder's variants are named by their run folder (``uncond/repa-...``) and matched to the CKNNA rows by the two
folders above ``seed<N>`` in the checkpoint path (``.../uncond/repa-.../seed<N>/checkpoints/step_<S>.pt``).
Computes from the tables only.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

SPEED, ALIGN = 2 / 3, 1.5
_CKPT = re.compile(r"/(?P<variant>[^/]+/[^/]+)/seed(?P<seed>\d+)/checkpoints/step_(?P<step>\d+)\.pt$")


def speed_rows(folder: Path) -> pd.DataFrame:
    """(variant, seed, steps_ratio) of every REPA run in ``folder/summary.csv``; not reached -> 1.0."""
    s = pd.read_csv(folder / "summary.csv")
    s = s[~s.variant.str.endswith("/vanilla")]
    return pd.DataFrame({"variant": s.variant, "seed": s.seed.astype(int), "steps_ratio": s.ratio.fillna(1.0)})


def cknna_rows(folder: Path) -> pd.DataFrame:
    """(variant, seed, target, layer, cknna, vanilla_cknna) at each run's last step, from ``folder/cknna*.csv``."""
    parts = []
    for f in sorted(folder.glob("cknna*.csv")):
        t = pd.read_csv(f, dtype={"label": str}, keep_default_na=False)  # "null" is a label here, not NA
        # null label: "null", or blank in tables written before the label was recorded (the only other mode is "real")
        t = t[(t.metric == "cknna") & t.label.isin(["null", ""]) & (t.t == 0) & (t.pooling == "mean")]
        m = t.checkpoint.str.extract(_CKPT)
        parts.append(t.assign(variant=m.variant, seed=m.seed.astype(float), ckpt_step=m.step.astype(float))
                     [["variant", "seed", "ckpt_step", "target", "layer", "value"]].dropna())
    if not parts:
        return pd.DataFrame(columns=["variant", "seed", "target", "layer", "cknna", "vanilla_cknna"])
    t = pd.concat(parts).drop_duplicates(["variant", "seed", "ckpt_step", "target", "layer"])
    van = t[t.variant.str.endswith("/vanilla")].rename(columns={"value": "vanilla_cknna"}).drop(columns="variant")
    rep = t[~t.variant.str.endswith("/vanilla")]
    rep = rep[rep.ckpt_step == rep.groupby(["variant", "seed"]).ckpt_step.transform("max")]     # last checkpoint
    rep = rep[rep.layer == rep.groupby(["variant", "seed"]).layer.transform("min")]             # aligned block
    out = rep.merge(van, on=["seed", "ckpt_step", "target", "layer"], how="inner")
    out["seed"] = out.seed.astype(int)
    return out.rename(columns={"value": "cknna"})[["variant", "seed", "target", "layer", "cknna", "vanilla_cknna"]]


def sizes(folders: list[Path], seeds: list[int]) -> pd.DataFrame:
    """One row per (folder, variant, seed): steps ratio, CKNNA ratio against each teacher and their minimum,
    and whether each size (and both) is met."""
    rows = []
    for folder in folders:
        sp = speed_rows(folder)
        ck = cknna_rows(folder)
        ck["ratio"] = ck.cknna / ck.vanilla_cknna
        for r in sp[sp.seed.isin(seeds)].itertuples():
            c = ck[(ck.variant == r.variant) & (ck.seed == r.seed)].sort_values("target")
            ratios = dict(zip(c.target, c.ratio))
            low = min(ratios.values()) if ratios else float("nan")
            rows.append({"folder": folder.name, "variant": r.variant, "seed": r.seed, "steps_ratio": r.steps_ratio,
                         "cknna_ratio_min": low, "block": int(c.layer.min()) if len(c) else pd.NA,
                         "cknna_ratios": " / ".join(f"{k} {v:.2f}" for k, v in ratios.items()),
                         "speed_met": r.steps_ratio <= SPEED, "cknna_met": bool(ratios) and low >= ALIGN})
    out = pd.DataFrame(rows)
    out["both_met"] = out.speed_met & out.cknna_met
    return out


def by_variant(table: pd.DataFrame) -> pd.DataFrame:
    """Per (folder, variant): steps ratio and smallest CKNNA ratio per seed, and the seeds meeting both sizes; a
    variant whose runs were linked into several folders (the same steps ratios) once, from a folder that measured its
    CKNNA where one did."""
    fmt = lambda xs: " / ".join("-" if pd.isna(x) else f"{x:.2f}" for x in xs)  # noqa: E731
    g = table.sort_values("seed").groupby(["folder", "variant"], sort=False)
    out = pd.DataFrame({"steps_ratio": g.steps_ratio.agg(fmt), "cknna_ratio_min": g.cknna_ratio_min.agg(fmt),
                        "seeds_both_met": g.apply(lambda d: " ".join(map(str, d.seed[d.both_met])) or "none",
                                                  include_groups=False)}).reset_index()
    # the same runs linked into several folders (equal curves) are listed once, where their CKNNA was measured
    measured = out.cknna_ratio_min.str.contains(r"\d")
    keep = out.assign(m=measured).sort_values("m", ascending=False, kind="stable").drop_duplicates(["variant", "steps_ratio"])
    return out.loc[sorted(keep.index)].reset_index(drop=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="study result folders, each with summary.csv (and cknna*.csv)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the seeds the default is chosen on")
    ap.add_argument("--out", type=Path, help="write the per-seed table here (csv)")
    args = ap.parse_args(argv)
    for f in args.folders:
        if not (f / "summary.csv").exists():
            ap.error(f"{f} has no summary.csv: run python -m studies.summarize on its runs first")
    table = sizes(args.folders, args.seeds)
    if args.out:
        table.to_csv(args.out, index=False)
    print(by_variant(table).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
