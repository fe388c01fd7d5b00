#!/bin/bash
# Session 17: the machine was new (the grid's weights and checkpoints were gone). The run
# directories were rebuilt from the committed archives; RepNoise's alignment restarts from step 0,
# then its two attacks and evaluations. Both cores, one process. This CPU has native bf16, so
# "auto" would be bf16 here: fp32 is set, as the rest of the grid ran (on an AVX2 CPU, auto = fp32).
cd /work/cal12-wt
date -u +%FT%TZ > /work/field13/logs/start17
/usr/bin/time -v .venv/bin/hftguard run configs/calibrated-field.toml --out /work/field13/run \
  --set 'grid.methods=["repnoise/sft"]' \
  --set 'align.train.precision="fp32"' --set 'finetune.train.precision="fp32"' --set 'eval.precision="fp32"' \
  > /work/field13/logs/run17.out 2> /work/field13/logs/run17.err
echo rc=$? >> /work/field13/logs/run17.err
date -u +%FT%TZ > /work/field13/logs/end17
