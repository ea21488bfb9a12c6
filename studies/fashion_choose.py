"""The pre-registered rule of the Fashion-MNIST selection (studies/results/fashion/PLAN.md), applied:

    python -m studies.fashion_choose runs/study/fashion [--out studies/results/fashion/choice.csv]
    python -m studies.fashion_choose studies/results/fashion/evals.csv ...   # the committed tables
    python -m studies.fashion_choose runs/study/fashion --order V --held-out 3 4   # + the held-out check of V


Per REPA variant (every ``<setting>/<variant>`` but ``vanilla``) and seed, with L the run's planned
length (its vanilla's ``steps``: 2,000, or 4,000 in stage 8): the speed-up L / t*, t* the first step at
which its FD reaches its vanilla's step-L FD (linear between evaluations; not reached: 1.0, said so);
the proviso: FD below its vanilla's at every evaluation from step 1,000 to L (1,000, 1,500 and 2,000
for the plan's 2,000-step runs).  A
variant's score is its smallest speed-up over the seeds; it is eligible when it has all three seeds
finished and the proviso holds on each.  Prints one row per variant with the noise beside it (the FD of
the two halves of the samples, and the seed spread), and the winner by the rule (ties within 0.05 go
to the variant listed first in the plan; that order is the caller's ``--order``).  ``--held-out SEEDS``
adds the same measures on seeds the rule never reads (the held-out check of stages 10 and 12): reported,
nothing chosen on them."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from studies.summarize import baseline_of, first_step_below, read_evals
from studies.tables import show_and_save

SEEDS, STEPS, FIRST_CHECKED = (0, 1, 2), 2000, 1000  # STEPS: the plan's run length but in stage 8


def per_seed(evals: pd.DataFrame, variant: str, seed: int) -> dict | None:
    g = evals[(evals.variant == variant) & (evals.seed == seed)].sort_values("step")
    b = evals[(evals.variant == baseline_of(variant)) & (evals.seed == seed)].sort_values("step")
    if g.empty or b.empty:
        return None
    planned = b.planned_steps.dropna() if "planned_steps" in b else b.step.iloc[:0]
    length = int(planned.iloc[0]) if len(planned) else STEPS
    if g.step.max() < length or b.step.max() < length:
        return None
    fd, base = g.set_index("step").fd, b.set_index("step").fd
    checked = [s for s in base.index if FIRST_CHECKED <= s <= length]
    t_star = first_step_below(g.step.to_numpy(), g.fd.to_numpy(), base[length])
    half_gap = float(np.nanmax(np.abs(g.fd_half_a - g.fd_half_b)))  # the noise of one FD estimate, at its largest
    return {"variant": variant, "seed": seed, "steps": length, "vanilla_fd_final": base[length], "fd_final": fd[length],
            "t_star": t_star, "speed_up": length / t_star if np.isfinite(t_star) else 1.0, "reached": bool(np.isfinite(t_star)),
            "below_from_1000": all(s in fd.index and fd[s] < base[s] for s in checked),
            "gaps": " / ".join(f"{base[s] - fd[s]:.2f}" if s in fd.index else "missing" for s in checked),
            "largest_half_gap": half_gap}


def choose(evals: pd.DataFrame, order: list[str]) -> tuple[pd.DataFrame, str | None]:
    rows = [r for v in order for s in SEEDS if (r := per_seed(evals, v, s)) is not None]
    seeds = pd.DataFrame(rows)
    best, best_score = None, -np.inf
    for v in order:
        g = seeds[seeds.variant == v] if len(seeds) else seeds
        if len(g) == len(SEEDS) and g.below_from_1000.all() and g.speed_up.min() > best_score + 0.05:
            best, best_score = v, g.speed_up.min()
    return seeds, best


def held_out(evals: pd.DataFrame, order: list[str], seeds: list[int]) -> pd.DataFrame:
    """The per-seed measures of ``order``'s variants on ``seeds`` (finished runs only); nothing is chosen."""
    return pd.DataFrame([r for v in order for s in seeds if (r := per_seed(evals, v, s)) is not None])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="the study's runs, or the evals.csv studies.summarize wrote of them")
    ap.add_argument("--order", nargs="+", help="the variants in the plan's order (default: all found, sorted)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--held-out", nargs="+", type=int, default=[], metavar="SEED",
                    help="also report these seeds (never read by the rule), e.g. 3 4")
    args = ap.parse_args(argv)
    evals = pd.read_csv(args.root) if args.root.suffix == ".csv" else read_evals(args.root)
    order = args.order or sorted(v for v in evals.variant.unique() if Path(v).name != "vanilla")
    seeds, best = choose(evals, order)
    if seeds.empty:
        print(f"no variant has a seed finished to its planned length (e.g. step {STEPS}) with its vanilla under {args.root}")
        if not args.held_out:
            return 1
    else:
        report_rule(seeds, best, order, args.out)
    if args.held_out:
        rows = held_out(evals, order, args.held_out)
        print(f"held-out seeds {' '.join(map(str, args.held_out))} (reported; nothing is chosen on them):")
        if rows.empty:
            print("  none finished to its planned length with its vanilla")
            return 1
        held_out_csv = args.out.with_name(args.out.stem + "_held_out.csv") if args.out else None
        show_and_save(rows.to_dict("records"), held_out_csv)
        for v in order:
            g = rows[rows.variant == v]
            if len(g):
                ahead = [int(r.seed) for r in g.itertuples() if r.below_from_1000]
                print(f"  {v}: below vanilla at every evaluation from step {FIRST_CHECKED} on seeds {ahead or 'none'} "
                      f"of {sorted(g.seed.tolist())}; speed-ups {' / '.join(f'{x:.3f}' for x in g.speed_up)}")
    return 0


def report_rule(seeds: pd.DataFrame, best: str | None, order: list[str], out: Path | None) -> None:
    """Print and save the rule's rows (seeds 0, 1, 2) and its choice."""
    show_and_save(seeds.to_dict("records"), out)
    for v in order:
        g = seeds[seeds.variant == v]
        print(f"{v}: seeds {sorted(g.seed.tolist())}, score (smallest speed-up) {g.speed_up.min():.3f}, "
              f"proviso {'holds' if len(g) and g.below_from_1000.all() else 'fails or incomplete'}")
    missing = [v for v in order if len(seeds[seeds.variant == v]) < len(SEEDS)]
    if best is None and missing:
        print(f"chosen by the rule: none yet (seeds {', '.join(map(str, SEEDS))} not all finished for {', '.join(missing)})")
    else:
        print(f"chosen by the rule: {best or 'none (no variant is eligible): the plan keeps the first variant and reports the miss'}")


if __name__ == "__main__":
    raise SystemExit(main())
