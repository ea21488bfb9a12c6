#!/usr/bin/env bash
# The extended study's other arms (RESULTS.md), on the tiny preset at 2000 steps, seeds 0 1 2, two
# runs at a time on one thread each, resumable (the same command continues):
#   control: REPA whose targets are another same-class image's teacher tokens (target_shuffle=class)
#   irepa:   REPA with iREPA's spatially normalised targets (gamma 0.8, pixel space) and conv projector
# then their tables (studies/results/extended) and the issue's checks beside REPA and vanilla
# (python -m studies.must_show figures/extended/tables --arms studies/results/extended/evals.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
common="eval_every=250"
{
  for seed in 0 1 2; do
    echo "extended/control $seed 2000 --set $common target_shuffle=class"
    echo "extended/irepa $seed 2000 --set $common target_norm=spatial target_norm_gamma=0.8 model.projector=conv"
  done
} | xargs -P 2 -L 1 studies/run_variant.sh
mkdir -p studies/results/extended
.venv/bin/python studies/summarize.py runs/study/extended --out studies/results/extended > studies/results/extended/summary.txt
.venv/bin/python -m studies.must_show figures/extended/tables --arms studies/results/extended/evals.csv | tee studies/results/extended/must_show.txt
