#!/usr/bin/env bash
# The comparison of objectives (`make compare`; its scenes-default results: RESULTS-scenes.md section 7): on the tiny
# preset at 2000 steps, seeds 0 1 2, two runs at a time on one thread each, resumable (the same command continues),
# evaluated as `make extended` evaluates (every 500 steps on 2,000 samples):
#   vanilla, repa (the default), irepa (spatial norm gamma 0.8 + 3x3 conv projector), haste (REPA +
#   attention distillation, both stopped at step 400), sra (self-alignment, no encoder), dispersive
#   (no encoder), reg (REPA + the teacher's global token, weight 0.03); settings: the papers'
#   defaults scaled to the 6-block model, fixed before any run (RESULTS.md).
# The arms that `make extended` already trained are linked, not retrained:
# training is deterministic, so they are the same runs (their config is checked on resume).
# Then the table and figure (python -m studies.compare).
set -euo pipefail
cd "$(dirname "$0")/.."
common="eval_every=500 eval_samples=2000 ckpt_every=500 sample_every=500"  # make extended's (its arms are linked)
for seed in 0 1 2; do
  for pair in "vanilla:runs/extended/seed$seed/vanilla" "repa:runs/extended/seed$seed/repa"; do
    arm=${pair%%:*} src=${pair#*:}
    dst=runs/study/compare/$arm/seed$seed
    if [ -f "$src/checkpoints/step_0002000.pt" ] && [ ! -e "$dst" ]; then mkdir -p "$(dirname "$dst")"; ln -s "$(realpath "$src")" "$dst"; fi
  done
done
{
  for seed in 0 1 2; do
    echo "compare/vanilla $seed 2000 --vanilla --set $common"
    echo "compare/repa $seed 2000 --set $common"
    echo "compare/irepa $seed 2000 --set $common target_norm=spatial target_norm_gamma=0.8 model.projector=conv"
    echo "compare/haste $seed 2000 --set $common attn_coeff=0.5 attn_model_layers=[1,2] attn_teacher_layers=[1,2] align_stop_step=400"
    echo "compare/sra $seed 2000 --vanilla --set $common sra_coeff=2.0 model.sra_projector_dim=128"
    echo "compare/dispersive $seed 2000 --vanilla --set $common dispersive_coeff=0.5 dispersive_tau=0.5"
    echo "compare/reg $seed 2000 --set $common reg_coeff=0.03 model.reg_dim=64"
  done
} | while read -r name seed rest; do  # finished runs are not started again (a resume would rewrite their config.json)
  [ -f "runs/study/$name/seed$seed/checkpoints/step_0002000.pt" ] || echo "$name $seed $rest"
done | xargs -P "${JOBS:-2}" -L 1 studies/run_variant.sh
.venv/bin/python -m studies.compare runs/study/compare --out studies/results/compare --figures figures/compare
