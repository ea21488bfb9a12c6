"""Check 27 (PLAN.md): REPA against vanilla at longer horizons, from a study folder's ``evals.csv``:

    python -m studies.horizon studies/results/fashion-4k [--horizons 2000 2500 3000 3500 4000] [--from-step 2500] \
        [--out studies/results/fashion-4k/horizon.csv]

For every REPA variant and seed of the folder, against its setting's vanilla of the same seed
(``studies.summarize.baseline_of``):

1. **speed at horizon H**: the step at which REPA's FD, its curve up to H, reaches vanilla's FD at step H
   (linear between evaluations, ``studies.summarize.first_step_below``), over H; NaN where it never does.
   At H = a run's last step this is the ``ratio`` of ``summary.csv`` and the must-show's speed;
2. **ahead**: at every evaluation from ``--from-step`` to the last, vanilla's FD minus REPA's (and KID's)
   against the noise of one estimate, the larger of the two runs' half-to-half gaps
   (``studies.must_show.ahead``, as the extended study reads it);
3. **flat**: each arm's FD drop over the last 1,000 steps against the noise of its last evaluation
   (``|half a - half b|``): a curve is flat there when it dropped by less than that.

Horizons either curve did not evaluate are left out. Computes from the table only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from studies.must_show import ahead
from studies.summarize import baseline_of, first_step_below

HORIZONS = (2000, 2500, 3000, 3500, 4000)
FLAT_OVER = 1000


def speed_at(repa: pd.DataFrame, vanilla: pd.DataFrame, horizon: int) -> float:
    """REPA's steps to vanilla's FD at ``horizon`` (its curve up to ``horizon``) over ``horizon``; NaN if never."""
    target = vanilla.loc[horizon, "fd"]
    upto = repa[repa.index <= horizon]
    return first_step_below(upto.index.to_numpy(), upto["fd"].to_numpy(), target) / horizon


def drop(run: pd.DataFrame, over: int = FLAT_OVER) -> tuple[float, float]:
    """A run's FD drop over its last ``over`` steps and the noise of its last evaluation (NaN if not evaluated then)."""
    last = run.index.max()
    if last - over not in run.index:
        return float("nan"), float("nan")
    end = run.loc[last]
    return float(run.loc[last - over, "fd"] - end["fd"]), float(abs(end["fd_half_a"] - end["fd_half_b"]))


def horizon_rows(evals: pd.DataFrame, horizons=HORIZONS, from_step: int = 2500) -> pd.DataFrame:
    """One row per REPA variant x seed: ``speed_<H>`` per horizon, the ahead checks, both arms' last drops."""
    rows = []
    for (variant, seed), g in evals.groupby(["variant", "seed"]):
        if Path(variant).name == "vanilla":
            continue
        base = evals[(evals.variant == baseline_of(variant)) & (evals.seed == seed)]
        if base.empty:
            continue
        rep, van = (x.sort_values("step").set_index("step") for x in (g, base))
        row = {"variant": variant, "seed": int(seed), "last_step": int(rep.index.max())}
        for h in horizons:
            if h in rep.index and h in van.index:
                row[f"speed_{h}"] = round(speed_at(rep, van, h), 4)
        for metric in ("fd", "kid"):
            ok, margin, nz = ahead(rep, van, from_step, metric)
            row.update({f"{metric}_ahead_from_{from_step}": ok, f"{metric}_smallest_margin": margin, f"{metric}_its_noise": nz})
        for arm, run in (("repa", rep), ("vanilla", van)):
            d, nz = drop(run)
            row.update({f"{arm}_fd_drop_last_{FLAT_OVER}": d, f"{arm}_fd_noise_last": nz,
                        f"{arm}_flat": bool(d < nz) if d == d else np.nan})
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    first = ["variant", "seed", "last_step", *(f"speed_{h}" for h in horizons if f"speed_{h}" in table)]
    return table[first + [c for c in table if c not in first]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a study folder holding evals.csv (python -m studies.summarize ... --out FOLDER)")
    ap.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    ap.add_argument("--from-step", type=int, default=2500, help="the ahead checks read evaluations from this step on")
    ap.add_argument("--out", type=Path, help="write the table here as CSV")
    args = ap.parse_args(argv)
    if not (args.folder / "evals.csv").is_file():
        ap.error(f"{args.folder} has no evals.csv: run python -m studies.summarize on its runs first")
    table = horizon_rows(pd.read_csv(args.folder / "evals.csv"), args.horizons, args.from_step)
    if table.empty:
        ap.error(f"{args.folder}/evals.csv has no REPA run beside a vanilla run of the same seed")
    print(table.set_index(["variant", "seed"]).T.to_string())
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
