#!/bin/bash
# Twenty-second session (2026-11-28), after drive6.sh: p = 0.1 on seed 42 for SFT, Antibody (both
# stages) and Lisa at rho = 0.1, the two defenses reproduced at p = 0.2 (#14's verdict rule asks
# for p = 0.1 and 0.2). Same code and settings as drive6.sh; Lisa rho = 0.1 in its own --out, as
# drive3.sh ran it. (Replaced, before it started, a plan for the p = 0 cells of Booster, Vaccine
# and Antibody's alignment alone.)
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
while pgrep -f drive6.sh > /dev/null; do sleep 20; done
P='grid.harmful_ratio=[0.1]'
phase p01-s42 --out $OUT --workers 2 --set 'grid.methods=["antibody/antibody","sft/sft"]' --set 'grid.seed=[42]' --set "$P" &
phase p01-lisa0.1-s42 --out $R --set 'grid.methods=["sft/lisa"]' --set 'grid.seed=[42]' --set "$P" \
  --set grid.finetune_options.lisa.rho=0.1 --set evaluate_base=false &
wait
