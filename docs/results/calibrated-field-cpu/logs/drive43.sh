#!/bin/bash
# Session 14: a second fine-tuning seed (43) for the appended-mixing result: SFT and mixing at p = 0.2,
# on the same SFT-aligned model (copied from run/), one thread, beside the field grid.
cd /work/cal12-wt
date -u +%FT%TZ > /work/field13/logs/start43
OMP_NUM_THREADS=1 /usr/bin/time -v .venv/bin/hftguard run configs/calibrated-field.toml --out /work/field13/seed43 \
  --set 'grid.methods=["sft/sft","sft/mixing"]' --set 'grid.seed=[43]' --set 'grid.harmful_ratio=[0.2]' \
  > /work/field13/logs/s43.out 2> /work/field13/logs/s43.err
echo rc=$? >> /work/field13/logs/s43.err
date -u +%FT%TZ > /work/field13/logs/end43
