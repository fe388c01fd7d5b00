#!/bin/bash
# Twenty-third session (2026-11-28), after drive9.sh: Vaccine at p = 0.1 on seeds 42 and 43 (two
# workers), the first of its p = 0.1 column (#14's rule asks for p = 0.1 and 0.2). Same code and
# settings as drive6-9.sh. Started while a fresh-clone CI run used the cores.
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
phase p01-vac-s42-43 --out $OUT --workers 2 --set 'grid.methods=["vaccine/sft"]' \
  --set 'grid.seed=[42,43]' --set 'grid.harmful_ratio=[0.1]'
