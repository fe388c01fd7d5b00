#!/bin/bash
# Twenty-third session (2026-11-28), after drive8.sh: the p = 0 cells of Booster and Vaccine
# (alignment + SFT attack, seed 42), named as a gap since the twentieth session: their attack
# effect (p = 0.2 - p = 0) beside SFT's and Antibody's. Same code and settings as drive6-8.sh.
cd /work/s19-wt
H=.venv/bin/hftguard
OUT=/work/lisa19/run
L=/work/lisa19/logs
export OMP_NUM_THREADS=1
phase() {  # name, then arguments
  local name=$1; shift
  date -u +"%FT%TZ start $name" >> $L/times
  /usr/bin/time -v $H run configs/calibrated-small.toml "$@" > $L/$name.out 2> $L/$name.err
  echo "rc=$?" >> $L/$name.err
  date -u +"%FT%TZ end $name" >> $L/times
}
# as soon as drive8's SFT and Antibody process ends (Lisa's second cell may still run beside it)
while ! grep -qs "end p01-s43-44" $L/times; do sleep 20; done
phase p0-bst-vac-s42 --out $OUT --workers 2 --set 'grid.methods=["booster/sft","vaccine/sft"]' \
  --set 'grid.seed=[42]' --set 'grid.harmful_ratio=[0.0]'
