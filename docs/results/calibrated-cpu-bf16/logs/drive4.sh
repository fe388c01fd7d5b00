#!/bin/bash
# Twentieth session: Antibody seed 44 beside seeds 42 and 43 (drive3.sh), started early: it waits
# for the Antibody alignment that drive3.sh's first phase holds, then runs its attack, so that the
# three Antibody attacks share the two cores instead of the third running after the first two.
cd /work/s19-wt
L=/work/lisa19/logs
export OMP_NUM_THREADS=1
date -u +"%FT%TZ start ab-s44-early" >> $L/times
/usr/bin/time -v .venv/bin/hftguard run configs/calibrated-small.toml --out /work/lisa19/run \
  --set 'grid.methods=["antibody/antibody"]' --set 'grid.seed=[44]' --set 'grid.harmful_ratio=[0.2]' \
  > $L/ab-s44-early.out 2> $L/ab-s44-early.err
echo "rc=$?" >> $L/ab-s44-early.err
date -u +"%FT%TZ end ab-s44-early" >> $L/times
