#!/bin/bash
# Replaces drive.sh from seed 43 on (drive.sh was stopped at 07:45 while its seed-42 phase ran, which
# went on): the last phase runs SFT's p = 0 control beside a Lisa rho = 0.1 cell (the GPU's
# sweep pick) in its own --out, on a copy of this grid's SFT-aligned model, instead of Lisa at p = 0.
cd /work/s19-wt
H=.venv/bin/hftguard
OUT=/work/lisa19/run
L=/work/lisa19/logs
while kill -0 19323 2>/dev/null; do sleep 10; done
date -u +"%FT%TZ end s42 (seen by drive2.sh)" >> $L/times
phase() {  # name, then arguments
  local name=$1; shift
  date -u +"%FT%TZ start $name" >> $L/times
  /usr/bin/time -v $H run configs/calibrated-small.toml "$@" > $L/$name.out 2> $L/$name.err
  echo "rc=$?" >> $L/$name.err
  date -u +"%FT%TZ end $name" >> $L/times
}
M='grid.methods=["sft/sft","sft/lisa"]'
phase s43 --out $OUT --workers 2 --set "$M" --set 'grid.seed=[43]' --set 'grid.harmful_ratio=[0.2]'
phase s44 --out $OUT --workers 2 --set "$M" --set 'grid.seed=[44]' --set 'grid.harmful_ratio=[0.2]'
R=/work/lisa19/lisa-rho-0.1
mkdir -p $R/aligned $R/evals
cp -a $OUT/aligned/sft-s42 $R/aligned/
cp -a $OUT/evals/aligned-sft-s42 $R/evals/
( export OMP_NUM_THREADS=1; phase p0 --out $OUT --set 'grid.methods=["sft/sft"]' --set 'grid.seed=[42]' --set 'grid.harmful_ratio=[0.0]' ) &
( export OMP_NUM_THREADS=1; phase rho0.1 --out $R --set 'grid.methods=["sft/lisa"]' --set 'grid.seed=[42]' --set 'grid.harmful_ratio=[0.2]' \
  --set grid.finetune_options.lisa.rho=0.1 --set evaluate_base=false ) &
wait
