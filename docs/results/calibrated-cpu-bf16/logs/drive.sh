#!/bin/bash
# Nineteenth session (2026-11-28): SFT and Lisa (rho = 1, the protocol's) at p = 0.2 on three
# fine-tuning seeds, then SFT's p = 0 control, on this 2-core AMD EPYC with AVX-512 BF16, where
# `precision = "auto"` trains and evaluates in bf16. configs/calibrated-small.toml unchanged; code =
# the git worktree /work/s19-wt at 9fb6683 with its own virtualenv. One --out; each phase is one
# invocation with two workers (one torch thread each); the root manifest keeps earlier phases.
cd /work/s19-wt
H=.venv/bin/hftguard
OUT=/work/lisa19/run
phase() {  # name, then --set arguments
  local name=$1; shift
  date -u +"%FT%TZ start $name" >> /work/lisa19/logs/times
  /usr/bin/time -v $H run configs/calibrated-small.toml --out $OUT --workers 2 "$@" \
    > /work/lisa19/logs/$name.out 2> /work/lisa19/logs/$name.err
  echo "rc=$?" >> /work/lisa19/logs/$name.err
  date -u +"%FT%TZ end $name" >> /work/lisa19/logs/times
}
phase s42 --set 'grid.methods=["sft/sft","sft/lisa"]' --set 'grid.seed=[42]' --set 'grid.harmful_ratio=[0.2]'
phase s43 --set 'grid.methods=["sft/sft","sft/lisa"]' --set 'grid.seed=[43]' --set 'grid.harmful_ratio=[0.2]'
phase s44 --set 'grid.methods=["sft/sft","sft/lisa"]' --set 'grid.seed=[44]' --set 'grid.harmful_ratio=[0.2]'
phase p0 --set 'grid.methods=["sft/sft","sft/lisa"]' --set 'grid.seed=[42]' --set 'grid.harmful_ratio=[0.0]'
