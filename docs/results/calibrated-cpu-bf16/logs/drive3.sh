#!/bin/bash
# Twentieth session (2026-11-28): Antibody (both stages) at p = 0.2 on seeds 42-44 and Antibody's
# alignment stage alone (seed 42) on this grid's --out, beside Lisa rho = 0.1 on seeds 43 and 44
# (its own --out, as in drive2.sh) and Lisa rho = 1 at p = 0 (this grid's --out). Same code as the
# nineteenth session's cells: the worktree /work/s19-wt at 9fb6683 with its own virtualenv;
# configs/calibrated-small.toml unchanged; bf16 (precision = auto on this AVX-512 BF16 CPU).
# One torch thread per process; two processes at a time (two cores).
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
P='grid.harmful_ratio=[0.2]'
(
  # Antibody's alignment (one process), then its attacks on seeds 42 and 43 in two workers
  phase ab-s42-43 --out $OUT --workers 2 --set 'grid.methods=["antibody/antibody"]' --set 'grid.seed=[42,43]' --set "$P"
  phase ab-s44 --out $OUT --set 'grid.methods=["antibody/antibody"]' --set 'grid.seed=[44]' --set "$P"
) &
(
  # on the other core while Antibody aligns
  phase rho0.1-s43-44 --out $R --set 'grid.methods=["sft/lisa"]' --set 'grid.seed=[43,44]' --set "$P" \
    --set grid.finetune_options.lisa.rho=0.1 --set evaluate_base=false
  phase lisa-p0 --out $OUT --set 'grid.methods=["sft/lisa"]' --set 'grid.seed=[42]' --set 'grid.harmful_ratio=[0.0]'
  # wait for the two Antibody attacks to finish (ab-s44 then runs beside this)
  while ! grep -q "end ab-s42-43" $L/times; do sleep 20; done
  phase abs-s42 --out $OUT --set 'grid.methods=["antibody/sft"]' --set 'grid.seed=[42]' --set "$P"
) &
wait
