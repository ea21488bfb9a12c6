#!/usr/bin/env bash
# Choosing the Fashion-MNIST default (issue 21; plan: studies/results/fashion/PLAN.md):
#   bash studies/fashion_select.sh STAGE      # STAGE: 1 (teacher a vs b), ... 8 (4,000 steps), 9 (stages 3 and 5 together), 10 (9 on held-out seeds 3, 4), 11 (lambda 2.0 with iREPA's targets), 12 (11 on seeds 3, 4), 13 (lambda 4.0), 14 (the supervised teacher on the default), 15 (both teachers), 16 (15 on seeds 3, 4), 17 (both teachers at lambda 4.0), 18 (both teachers at block 1), 19 (the contrastive teacher, with the supervised one and alone), 20 (lambda 1.0 and 3.0 for stage 19's pair), 21 (iREPA's gamma 0.8 and 1.0 for stage 19's pair), 22 (stage 19's pair with the contrastive teacher trained twice as long), 23 (stage 22 with REG's global token), 24 (23 with the token's loss at weight 1.0), 25 (22 on seeds 3, 4), 26 (the default and vanilla evaluated every 250 steps: a check of the grid), 27 (the default and vanilla continued to 4,000 steps, seeds 0-4: a check of the horizon)
#   TEACHER=fashion-ssl COND=cond CHOSEN="proj_coeff=1.0" bash studies/fashion_select.sh 4   # later stages: what was chosen
# then python -m studies.fashion_choose runs/study/fashion applies the plan's rule.
# Each stage's runs, two at a time on one thread each (JOBS=2), resumable (the same command continues;
# finished runs are skipped), then the summary tables in studies/results/fashion.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-1}
common="eval_every=500 eval_samples=2000 ckpt_every=500 sample_every=500 align_every=0"
# What the stages before chose, by the rule (python -m studies.fashion_choose; the plan is greedy):
#   TEACHER (stage 1), COND=cond|uncond (stage 2: uncond, now the tiny preset's default), CHOSEN: the --set fields stages 3-6 chose (may be empty).
TEACHER=${TEACHER:-fashion-ssl} COND=${COND:-cond} CHOSEN=${CHOSEN:-}
# ROOT: the runs' folder under runs/study (fashion; fashion-rerun for stage 11, on another machine than stages 1-10)
ROOT=${ROOT:-fashion}
t=${TEACHER#fashion-}
case $COND in cond) base="model.class_dropout_prob=0.1" ;; uncond) base="model.class_dropout_prob=1.0" ;; *) echo "COND is cond or uncond" >&2; exit 2 ;; esac
repa="encoders=$TEACHER $base $CHOSEN"
irepa="target_norm=spatial target_norm_gamma=0.6 model.projector=conv"  # iREPA's targets (stages 5, 9-12)
# both shipped teachers at once (stages 15-18): one projector each, the default's conditioning and iREPA's targets
both="--encoders fashion-ssl fashion-supervised --set $common $base $CHOSEN $irepa model.z_dims=[128,128]"
continue_run() {  # continue_run SRC VARIANT SEED: check 27 continues a finished run of runs/study/SRC in a copy under ROOT
  local src=runs/study/$1/$COND/$2/seed$3 dst=runs/study/$ROOT/$COND/$2/seed$3
  [ -d "$dst" ] && return 0
  [ -f "$src/checkpoints/step_0002000.pt" ] || { echo "check 27 continues $src, which is not here: run its stage first" >&2; exit 2; }
  rm -rf "$dst.part" && mkdir -p "$(dirname "$dst")"  # studies.link_arms.link_run: large files hard-linked, what a resume rewrites copied
  .venv/bin/python -c 'import sys; from pathlib import Path; from studies.link_arms import link_run; link_run(*map(Path, sys.argv[1:]))' \
    "$src" "$dst.part" && mv "$dst.part" "$dst"
}
if [ "$stage" = 27 ]; then
  for s in 0 1 2; do continue_run fashion-s14 vanilla $s; continue_run fashion-s14 repa-both-lambda2-irepa $s; done
  for s in 3 4; do continue_run fashion-held vanilla $s; continue_run fashion-held repa-both-lambda2-irepa $s; done
fi
held_out() {  # the held-out check of a stage's pick (PLAN.md), nothing chosen on it: vanilla and the pick on seeds 3, 4
  local variant=$1; shift
  for held in 3 4; do
    echo "$ROOT/$COND/vanilla $held 2000 --vanilla --set $common $base"
    echo "$ROOT/$COND/$variant $held 2000 $*"
  done
}
{
  for seed in 0 1 2; do
    case $stage in
      1) echo "$ROOT/cond/vanilla $seed 2000 --vanilla --set $common model.class_dropout_prob=0.1"
         echo "$ROOT/cond/repa-ssl $seed 2000 --set $common encoders=fashion-ssl model.class_dropout_prob=0.1"
         echo "$ROOT/cond/repa-sup $seed 2000 --set $common encoders=fashion-supervised model.class_dropout_prob=0.1" ;;
      2) echo "$ROOT/uncond/vanilla $seed 2000 --vanilla --set $common model.class_dropout_prob=1.0"
         echo "$ROOT/uncond/repa-$t $seed 2000 --set $common encoders=$TEACHER model.class_dropout_prob=1.0" ;;
      3) echo "$ROOT/$COND/repa-$t-lambda1 $seed 2000 --set $common $repa proj_coeff=1.0" ;;
      4) echo "$ROOT/$COND/repa-$t-block3 $seed 2000 --set $common $repa model.encoder_depth=3" ;;
      5) echo "$ROOT/$COND/repa-$t-irepa $seed 2000 --set $common $repa $irepa" ;;
      6) echo "$ROOT/$COND/repa-$t-stop1000 $seed 2000 --set $common $repa align_stop_step=1000" ;;
      7) echo "$ROOT/$COND-w96/vanilla $seed 2000 --vanilla --set $common $base model.hidden_size=96 model.num_heads=3"
         echo "$ROOT/$COND-w96/repa-$t $seed 2000 --set $common $repa model.hidden_size=96 model.num_heads=3" ;;
      8) echo "$ROOT/$COND-4k/vanilla $seed 4000 --vanilla --set $common $base"
         echo "$ROOT/$COND-4k/repa-$t $seed 4000 --set $common $repa" ;;
      9) echo "$ROOT/$COND/repa-$t-lambda1-irepa $seed 2000 --set $common $repa proj_coeff=1.0 $irepa" ;;
      10) if [ "$seed" = 0 ]; then held_out "repa-$t-lambda1-irepa" --set $common $repa proj_coeff=1.0 $irepa; fi ;;  # stage 9's pick
          # (an if, not [ ] &&: a false test on seeds 1 and 2 must not fail the pipeline: set -e, pipefail)
      11) echo "$ROOT/$COND/vanilla $seed 2000 --vanilla --set $common $base"  # stage 11 ran on a new machine: its vanilla and stage 9 again beside it
          echo "$ROOT/$COND/repa-$t-lambda1-irepa $seed 2000 --set $common $repa proj_coeff=1.0 $irepa"
          echo "$ROOT/$COND/repa-$t-lambda2-irepa $seed 2000 --set $common $repa proj_coeff=2.0 $irepa" ;;
      12) if [ "$seed" = 0 ]; then held_out "repa-$t-lambda2-irepa" --set $common $repa proj_coeff=2.0 $irepa; fi ;;  # stage 11's pick
      13) echo "$ROOT/$COND/repa-$t-lambda4-irepa $seed 2000 --set $common $repa proj_coeff=4.0 $irepa" ;;  # session 8 (PLAN.md)
      14) echo "$ROOT/$COND/repa-sup-lambda2-irepa $seed 2000 --set $common encoders=fashion-supervised $base $CHOSEN proj_coeff=2.0 $irepa" ;;  # session 9 (PLAN.md)
      15) echo "$ROOT/$COND/repa-both-lambda2-irepa $seed 2000 $both proj_coeff=2.0" ;;  # session 9 (PLAN.md)
      16) if [ "$seed" = 0 ]; then held_out repa-both-lambda2-irepa $both proj_coeff=2.0; fi ;;  # stage 15's pick
      17) echo "$ROOT/$COND/repa-both-lambda4-irepa $seed 2000 $both proj_coeff=4.0" ;;  # session 10 (PLAN.md)
      18) echo "$ROOT/$COND/repa-both-lambda2-irepa-block1 $seed 2000 $both proj_coeff=2.0 model.encoder_depth=1" ;;  # session 10 (PLAN.md)
      19) echo "$ROOT/$COND/repa-con-sup-lambda2-irepa $seed 2000 ${both/fashion-ssl/fashion-contrastive} proj_coeff=2.0"  # session 11 (PLAN.md)
          echo "$ROOT/$COND/repa-con-lambda2-irepa $seed 2000 --set $common encoders=fashion-contrastive $base $CHOSEN $irepa model.z_dims=128 proj_coeff=2.0" ;;
      20) for lam in 1 3; do echo "$ROOT/$COND/repa-con-sup-lambda$lam-irepa $seed 2000 ${both/fashion-ssl/fashion-contrastive} proj_coeff=$lam.0"; done ;;  # session 11 (PLAN.md)
      21) for g in 0.8 1.0; do echo "$ROOT/$COND/repa-con-sup-lambda2-irepa-gamma${g/./} $seed 2000 ${both/fashion-ssl/fashion-contrastive} proj_coeff=2.0 target_norm_gamma=$g"; done ;;  # session 12 (PLAN.md)
      22) echo "$ROOT/$COND/repa-con2x-sup-lambda2-irepa $seed 2000 ${both/fashion-ssl/fashion-contrastive-2x} proj_coeff=2.0" ;;  # session 12 (PLAN.md)
      23) echo "$ROOT/$COND/repa-con2x-sup-lambda2-irepa-reg $seed 2000 ${both/fashion-ssl/fashion-contrastive-2x} proj_coeff=2.0 model.reg_dim=128 reg_coeff=0.03" ;;  # session 13 (PLAN.md)
      24) echo "$ROOT/$COND/repa-con2x-sup-lambda2-irepa-reg1 $seed 2000 ${both/fashion-ssl/fashion-contrastive-2x} proj_coeff=2.0 model.reg_dim=128 reg_coeff=1.0" ;;  # session 13 (PLAN.md)
      25) if [ "$seed" = 0 ]; then held_out repa-con2x-sup-lambda2-irepa ${both/fashion-ssl/fashion-contrastive-2x} proj_coeff=2.0; fi ;;  # stage 22's variant, nothing chosen on it
      26) echo "$ROOT/$COND/vanilla $seed 2000 --vanilla --set ${common/eval_every=500/eval_every=250} $base"  # a check of the 500-step grid (PLAN.md)
          echo "$ROOT/$COND/repa-both-lambda2-irepa $seed 2000 ${both/eval_every=500/eval_every=250} proj_coeff=2.0" ;;
      27) for s in $seed $([ "$seed" = 2 ] && echo 3 4); do  # seeds 0, 1, 2, then 3, 4 (PLAN.md, check 27)
            echo "$ROOT/$COND/vanilla $s 4000 --vanilla --set $common $base"
            echo "$ROOT/$COND/repa-both-lambda2-irepa $s 4000 $both proj_coeff=2.0"
          done ;;
      *) echo "the plan has stages 1-27" >&2; exit 2 ;;
    esac
  done
} | while read -r name seed rest; do
  steps=${rest%% *}
  [ -f "runs/study/$name/seed$seed/checkpoints/$(printf 'step_%07d.pt' "$steps")" ] || echo "$name $seed $rest"
done | xargs -r -P "${JOBS:-2}" -L 1 studies/run_variant.sh  # -r: nothing left to run is not an error
.venv/bin/python -m studies.summarize "runs/study/$ROOT" --out "studies/results/$ROOT"
