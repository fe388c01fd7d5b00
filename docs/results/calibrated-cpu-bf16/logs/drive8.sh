#!/bin/bash
# Twenty-third session (2026-11-28), after drive7.sh: p = 0.1 on seeds 43 and 44 for SFT, Antibody
# (both stages) and Lisa at rho = 0.1, so that #14's verdict rule (p = 0.1 and 0.2, three seeds)
# can be applied to the two defenses reproduced at p = 0.2. Same code and settings as drive6.sh and
# drive7.sh (worktree /work/s19-wt at 9fb6683, judge v5 recorded, bf16 auto, one torch thread per
# process); Lisa rho = 0.1 in its own --out, as drive3.sh and drive7.sh ran it.
cd /work/s19-wt
H=.venv/bin/hftguard
OUT=/work/lisa19/run
R=/work/lisa19/lisa-rho-0.1
L=/work/lisa19/logs
export OMP_NUM_THREADS=1
phase() {  # name, then arguments
  local name=$1; shift
  date -u +"%FT%TZ start $name" >> $L/times
  /usr/bin/time -v $H run configs/calibrated-small.toml "$@" > $L/$name.out 2> $L/$name.err
  echo "rc=$?" >> $L/$name.err
  date -u +"%FT%TZ end $name" >> $L/times
}
P='grid.harmful_ratio=[0.1]'
phase p01-s43-44 --out $OUT --workers 2 --set 'grid.methods=["antibody/antibody","sft/sft"]' --set 'grid.seed=[43,44]' --set "$P" &
phase p01-lisa0.1-s43-44 --out $R --set 'grid.methods=["sft/lisa"]' --set 'grid.seed=[43,44]' --set "$P" \
  --set grid.finetune_options.lisa.rho=0.1 --set evaluate_base=false &
wait
