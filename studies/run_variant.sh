#!/usr/bin/env bash
# One run of the pre-registered study (RESULTS.md, "Every variant tried"):
#   studies/run_variant.sh NAME SEED STEPS [--set FIELD=VALUE ...]
# trains the tiny preset on one thread into runs/study/NAME/seedSEED (resumable: the same command
# continues an interrupted run), evaluated every eval_every steps as the overrides say.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 seed=$2 steps=$3; shift 3
out=runs/study/$name/seed$seed
mkdir -p "$out"
OMP_NUM_THREADS=1 .venv/bin/python -m train --preset tiny --out "$out" --seed "$seed" --steps "$steps" --threads 1 \
  --no-progress "$@" > "$out/stdout.log" 2>&1 && echo "done $name seed $seed" || echo "FAILED $name seed $seed (see $out/stdout.log)"
