"""Issue 21's checks, per seed, from the extended study's tables (``make extended``):

    python -m studies.must_show [figures/extended/tables] [--align 2] > figures/extended/tables/must_show.txt

1. **ahead by more than the noise**: at every evaluation from step 1,000 on, vanilla's FD minus REPA's
   (and the same for KID) against the noise of one estimate, the larger of the two runs'
   ``|half a - half b|`` (two disjoint halves of the same model's fixed-noise samples);
2. **speed**: the step at which REPA's FD reaches vanilla's final FD (linear between evaluations),
   over vanilla's steps (target <= 2/3, aim 1/2);
3. **alignment**: null-label CKNNA at the aligned block (mean-pooled, t = 0, last checkpoint), REPA
   over vanilla (target >= 1.5, aim 2); with several teachers (``teacher_alignment.csv``) against each
   of them, met only if met against every one (PLAN.md, the last addendum of session 9);
4. **recognisable**: class accuracy of REPA's conditional samples at the end (target >= 0.75); for an
   unconditional default, the evaluator's mean confidence of both arms (the class histogram is in
   each run's ``metrics.jsonl``);
5. **Fig. 2c**: vanilla's CKNNA (the same slice, max over blocks) at the first and last checkpoint;
6. **control**: each arm's gain over vanilla in final FD (vanilla's FD minus the arm's) beside that
   FD's noise: the control should lose REPA's gain;
and the seed-to-seed spread (sd over seeds) of each arm's final FD, KID and class accuracy.
Computes from the tables only; prints markdown-ready tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from studies.summarize import first_step_below

FROM_STEP = 1000


def noise(a: pd.Series, b: pd.Series, metric: str) -> pd.Series:
    """The noise of one ``metric`` estimate at each row: the larger of runs a's and b's half-to-half gaps."""
    gap = lambda r: (r[f"{metric}_half_a"] - r[f"{metric}_half_b"]).abs()  # noqa: E731
    return np.maximum(gap(a), gap(b))


def ahead(repa: pd.DataFrame, vanilla: pd.DataFrame, from_step: int, metric: str) -> tuple[bool, float, float]:
    """Whether REPA's ``metric`` is below vanilla's by more than the noise at every evaluation both runs made
    from ``from_step`` on (frames indexed by step), and the smallest margin with its noise (NaN, NaN where none)."""
    steps = [s for s in repa.index.intersection(vanilla.index) if s >= from_step]
    if not steps:
        return False, float("nan"), float("nan")
    margin = vanilla.loc[steps, metric] - repa.loc[steps, metric]
    nz = noise(repa.loc[steps], vanilla.loc[steps], metric)
    return bool((margin > nz).all()), float(margin.min()), float(nz[margin.idxmin()])


def repa_over_vanilla(rows: pd.DataFrame) -> tuple[float, str]:
    """REPA's mean value over vanilla's in ``rows`` (one slice of a probe table): the ratio and its cell."""
    at = {r: rows[rows.run == r]["value"].mean() for r in ("repa", "vanilla")}
    ratio = at["repa"] / at["vanilla"]
    return ratio, f"{at['repa']:.4f} / {at['vanilla']:.4f} = {ratio:.2f}"


def teacher_checks(teachers: pd.DataFrame, seed: int, align: int) -> dict:
    """The alignment check against every teacher of ``teachers`` (the demo's ``teacher_alignment`` table:
    null-label, mean-pooled CKNNA at t = 0 of each run's last checkpoint): REPA / vanilla per teacher, and
    whether the ratio is at least 1.5 against all of them."""
    p = teachers[(teachers.seed_run == seed) & (teachers.metric == "cknna") & (teachers.t == 0)
                 & (teachers.pooling == "mean") & (teachers.label == "null") & (teachers.layer == align)]
    row, ratios = {}, []
    for target, g in p.groupby("target", sort=False):
        ratio, row[f"CKNNA block {align} vs {target} REPA / vanilla"] = repa_over_vanilla(g)
        ratios.append(ratio)
    if ratios:
        row[f"CKNNA >= 1.5x against every teacher ({len(ratios)})"] = bool(min(ratios) >= 1.5)
    return row


def seed_checks(ev: pd.DataFrame, probe: pd.DataFrame, seed: int, align: int, teachers: pd.DataFrame | None = None) -> dict:
    """The checks of one seed: ``ev`` its evaluation rows (run, step, fd, kid, halves, class_acc),
    ``probe`` its probe rows, ``teachers`` (with several teachers) the aligned block against each."""
    runs = {r: g.sort_values("step").set_index("step") for r, g in ev.groupby("run")}
    rep, van = runs["repa"], runs["vanilla"]
    row: dict = {"seed": seed}
    for metric in ("fd", "kid"):
        ok, margin, nz = ahead(rep, van, FROM_STEP, metric)
        row[f"{metric} ahead at every eval >= {FROM_STEP}"] = ok
        row[f"{metric} smallest margin / its noise"] = f"{margin:.3g} / {nz:.3g}" if margin == margin else "no eval"
    target = van["fd"].iloc[-1]
    reach = first_step_below(rep.index.to_numpy(), rep["fd"].to_numpy(), target)
    row["vanilla final FD"], row["REPA final FD"] = round(target, 2), round(rep["fd"].iloc[-1], 2)
    row["REPA steps to it / vanilla's (<= 2/3)"] = round(reach / van.index.max(), 3) if reach == reach else "never"
    p = probe[(probe.seed_run == seed) & (probe.metric == "cknna") & (probe.t == 0) & (probe.pooling == "mean")
              & (probe.label == "null")]
    last = p.step.max()
    _, row[f"CKNNA block {align} REPA / vanilla (>= 1.5)"] = repa_over_vanilla(p[(p.step == last) & (p.layer == align)])
    if teachers is not None:
        row.update(teacher_checks(teachers, seed, align))
    row["REPA class acc (>= 0.75)"] = round(rep["class_acc"].iloc[-1], 3)
    row["vanilla class acc"] = round(van["class_acc"].iloc[-1], 3)
    if "class_confidence" in rep:  # an unconditional default's recognisability (the class histogram: metrics.jsonl)
        row["REPA / vanilla evaluator confidence"] = f"{rep['class_confidence'].iloc[-1]:.3f} / {van['class_confidence'].iloc[-1]:.3f}"
    v = p[p.run == "vanilla"].groupby("step")["value"].max()
    row["vanilla CKNNA max, first -> last ckpt"] = f"{v.iloc[0]:.4f} -> {v.iloc[-1]:.4f}"
    for arm in [r for r in runs if r != "vanilla"]:
        a = runs[arm]
        nz = noise(a.iloc[[-1]], van.iloc[[-1]], "fd").iloc[0]
        row[f"{arm} FD gain over vanilla (noise)"] = f"{van['fd'].iloc[-1] - a['fd'].iloc[-1]:.2f} ({nz:.2f})"
    return row


def spread(ev: pd.DataFrame) -> pd.DataFrame:
    """Each arm's final FD, KID, class accuracy (and, where logged, the evaluator's mean confidence):
    mean and sd over seeds."""
    last = ev.sort_values("step").groupby(["run", "seed"]).tail(1)
    cols = ["fd", "kid", "class_acc"] + [c for c in ("class_confidence",) if c in last and last[c].notna().any()]
    return last.groupby("run")[cols].agg(["mean", "std"]).round(4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tables", nargs="?", default="figures/extended/tables", type=Path)
    ap.add_argument("--align", type=int, default=2)
    args = ap.parse_args()
    m = pd.read_csv(args.tables / "training_metrics.csv")
    ev = m[m["fd"].notna()]
    probe = pd.read_csv(args.tables / "probe.csv", keep_default_na=False, na_values=[""])
    probe = probe[~probe["is_reference"].astype(bool)]
    path = args.tables / "teacher_alignment.csv"  # with several teachers
    teachers = pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None
    if teachers is not None:
        teachers = teachers[~teachers["is_reference"].astype(bool)]
    rows = [seed_checks(g, probe, seed, args.align, teachers) for seed, g in ev.groupby("seed")]
    print(pd.DataFrame(rows).set_index("seed").T.to_string())
    print("\nfinal evaluation, mean and sd over seeds:\n")
    print(spread(ev).to_string())


if __name__ == "__main__":
    main()
