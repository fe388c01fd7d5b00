#!/bin/bash
# Session 14: finish EWC at p = 0.2 (resumes from its step-350 checkpoint) while the workers hold RepNoise/T-Vaccine.
cd /work/cal12-wt
OMP_NUM_THREADS=1 .venv/bin/hftguard run configs/calibrated-field.toml --out /work/field13/run \
  --set 'grid.methods=["sft/ewc"]' --set 'grid.harmful_ratio=[0.2]' \
  > /work/field13/logs/ewc.out 2> /work/field13/logs/ewc.err
echo rc=$? >> /work/field13/logs/ewc.err
