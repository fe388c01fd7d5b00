#!/bin/bash
# Twelfth session, CPU: SFT alignment + {SFT, Lisa rho=1} at p=0.2 then p=0, seed 42,
# configs/calibrated-small.toml unchanged otherwise; code = worktree /work/cal12-wt (c069f93).
cd /work/cal12-wt && source .venv/bin/activate
C=configs/calibrated-small.toml; O=/work/cal12/run
M='grid.methods=["sft/sft","sft/lisa"]'
for P in '[0.2]' '[0.2, 0.0]'; do
  echo "== phase p=$P start $(date -u +%FT%TZ)"
  OMP_NUM_THREADS=1 hftguard run $C --out $O --set "$M" --set 'grid.seed=[42]' --set "grid.harmful_ratio=$P" > /work/cal12/w1-$P.log 2>&1 &
  sleep 20
  OMP_NUM_THREADS=1 hftguard run $C --out $O --set "$M" --set 'grid.seed=[42]' --set "grid.harmful_ratio=$P" > /work/cal12/w2-$P.log 2>&1 &
  wait
  echo "== phase p=$P end $(date -u +%FT%TZ)"
done
