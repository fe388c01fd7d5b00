#!/bin/bash
# Twelfth session, phase 2: SFT at p = 0, seed 42, on phase 1's SFT-aligned model (copied), one
# process with two torch threads; same snapshot (/work/cal12-wt, c069f93).
while kill -0 4167 2>/dev/null || kill -0 4174 2>/dev/null; do sleep 10; done
echo "== phase 2 start $(date -u +%FT%TZ)"
cd /work/cal12-wt && source .venv/bin/activate
O=/work/cal12/run-p0
mkdir -p $O/aligned $O/evals
cp -a /work/cal12/run/aligned/sft-s42 $O/aligned/
cp -a /work/cal12/run/evals/aligned-sft-s42 $O/evals/
cp /work/cal12/run/manifest.json $O/manifest.json  # an hftguard root (c069f93 refuses a tree without one)
OMP_NUM_THREADS=2 hftguard run configs/calibrated-small.toml --out $O \
  --set 'grid.methods=["sft/sft"]' --set 'grid.seed=[42]' --set 'grid.harmful_ratio=[0.0]' \
  --set evaluate_base=false > /work/cal12/p0.log 2>&1
echo "== phase 2 end rc=$? $(date -u +%FT%TZ)"
