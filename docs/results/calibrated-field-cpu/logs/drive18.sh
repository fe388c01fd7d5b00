#!/bin/bash
# Eighteenth session: a second fine-tuning seed (43) for RepNoise at p = 0.2, in the seed-43 --out
# (beside SFT's and appended mixing's seed-43 cells), on a copy of RepNoise's aligned model. fp32
# pinned, as RepNoise's other stages (this CPU has native bf16).
cd /work/cal12-wt
date -u +%FT%TZ > /work/field13/logs/start18
/usr/bin/time -v .venv/bin/hftguard run configs/calibrated-field.toml --out /work/field13/seed43 \
  --set 'grid.methods=["repnoise/sft"]' --set 'grid.seed=[43]' --set 'grid.harmful_ratio=[0.2]' --set evaluate_base=false \
  --set 'align.train.precision="fp32"' --set 'finetune.train.precision="fp32"' --set 'eval.precision="fp32"' \
  > /work/field13/logs/run18.out 2> /work/field13/logs/run18.err
echo rc=$? >> /work/field13/logs/run18.err
date -u +%FT%TZ > /work/field13/logs/end18
