#!/bin/bash
cd /work/cal12-wt
date -u +%FT%TZ > /work/field13/logs/start
/usr/bin/time -v .venv/bin/hftguard run configs/calibrated-field.toml --out /work/field13/run --workers 2 \
  --set 'grid.methods=["sft/sft","sft/sft/safelora","sft/sft/antidote","sft/kl","sft/mixing-joint","sft/ewc","sft/mixing"]' \
  --set 'grid.harmful_ratio=[0.2]' > /work/field13/logs/run.out 2> /work/field13/logs/run.err
echo rc=$? >> /work/field13/logs/run.err
date -u +%FT%TZ > /work/field13/logs/end
