#!/bin/bash
# Twenty-second session (2026-11-28): Vaccine (alignment rho = 2 + SFT attack) at p = 0.2 on seeds
# 42-44, and Antibody (both stages) at p = 0 on seed 42, on this grid's --out. Same code as the
# nineteenth to twenty-first sessions' cells: the worktree /work/s19-wt at 9fb6683 with its own
# virtualenv (judge v5; re-judged with v6 on a weights-free copy afterwards);
# configs/calibrated-small.toml unchanged; bf16 (precision = auto on this AVX-512 BF16 CPU).
# One torch thread per process.
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
(
  # Vaccine's alignment (one process), then its attacks on seeds 42 and 43 in two workers
  phase vac-s42-43 --out $OUT --workers 2 --set 'grid.methods=["vaccine/sft"]' --set 'grid.seed=[42,43]' --set 'grid.harmful_ratio=[0.2]'
) &
(
  # on the other core while Vaccine aligns: Antibody (both stages) at p = 0, seed 42
  phase ab-p0-s42 --out $OUT --set 'grid.methods=["antibody/antibody"]' --set 'grid.seed=[42]' --set 'grid.harmful_ratio=[0.0]'
  # then Vaccine seed 44 once its alignment is done (beside seeds 42 and 43)
  while ! grep -qs '"completed"' $OUT/aligned/vaccine-s42/manifest.json; do sleep 20; done
  phase vac-s44 --out $OUT --set 'grid.methods=["vaccine/sft"]' --set 'grid.seed=[44]' --set 'grid.harmful_ratio=[0.2]'
) &
wait
