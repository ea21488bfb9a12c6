#!/usr/bin/env bash
# Choosing the Fashion-MNIST default (issue 21; plan: studies/results/fashion/PLAN.md):
#   bash studies/fashion_select.sh STAGE      # STAGE: 1 (teacher a vs b), ... as the plan numbers them
# Each stage's runs, two at a time on one thread each (JOBS=2), resumable (the same command continues;
# finished runs are skipped), then the summary tables in studies/results/fashion.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-1}
common="eval_every=500 eval_samples=2000 ckpt_every=500 sample_every=500 align_every=0"
{
  for seed in 0 1 2; do
    case $stage in
      1) echo "fashion/cond/vanilla $seed 2000 --vanilla --set $common"
         echo "fashion/cond/repa-ssl $seed 2000 --set $common encoders=fashion-ssl"
         echo "fashion/cond/repa-sup $seed 2000 --set $common encoders=fashion-supervised" ;;
      *) echo "stage $stage is not planned yet" >&2; exit 2 ;;
    esac
  done
} | while read -r name seed rest; do
  [ -f "runs/study/$name/seed$seed/checkpoints/step_0002000.pt" ] || echo "$name $seed $rest"
done | xargs -P "${JOBS:-2}" -L 1 studies/run_variant.sh
.venv/bin/python -m studies.summarize runs/study/fashion --out studies/results/fashion
