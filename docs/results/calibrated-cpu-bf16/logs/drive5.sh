#!/bin/bash
# Twenty-first session (2026-11-28): Booster (alignment + SFT attack) at p = 0.2 on seeds 42-44 and
# Antibody's alignment stage alone (antibody/sft, on the Antibody alignment drive3.sh trained) on
# seeds 42-44, on this grid's --out. Same code as the nineteenth and twentieth sessions' cells: the
# worktree /work/s19-wt at 9fb6683 with its own virtualenv; configs/calibrated-small.toml unchanged;
# bf16 (precision = auto on this AVX-512 BF16 CPU). One torch thread per process.
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
P='grid.harmful_ratio=[0.2]'
(
  # Booster's alignment (one process), then its attacks on seeds 42 and 43 in two workers
  phase bst-s42-43 --out $OUT --workers 2 --set 'grid.methods=["booster/sft"]' --set 'grid.seed=[42,43]' --set "$P"
) &
(
  # on the other core while Booster aligns: Antibody's alignment alone, three seeds in turn
  phase abs-s42-44 --out $OUT --set 'grid.methods=["antibody/sft"]' --set 'grid.seed=[42,43,44]' --set "$P"
  # then Booster seed 44 once its alignment is done (beside seeds 42 and 43)
  while ! grep -qs '"completed"' $OUT/aligned/booster-s42/manifest.json; do sleep 20; done
  phase bst-s44 --out $OUT --set 'grid.methods=["booster/sft"]' --set 'grid.seed=[44]' --set "$P"
) &
wait
