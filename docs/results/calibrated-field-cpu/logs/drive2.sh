#!/bin/bash
# Session 14: the whole field grid, RepNoise's and T-Vaccine's alignments first (the long poles).
cd /work/cal12-wt
date -u +%FT%TZ > /work/field13/logs/start2
/usr/bin/time -v .venv/bin/hftguard run configs/calibrated-field.toml --out /work/field13/run --workers 2 \
  --set 'grid.methods=["repnoise/sft","t-vaccine/sft","sft/sft","sft/ewc","sft/kl","sft/mixing","sft/mixing-joint","sft/sft/safelora","sft/sft/antidote"]' \
  > /work/field13/logs/run2.out 2> /work/field13/logs/run2.err
echo rc=$? >> /work/field13/logs/run2.err
date -u +%FT%TZ > /work/field13/logs/end2
