#!/bin/bash
# Rebuild the field grid's two --out directories from the committed archives, on a machine that
# does not have them (seventeenth session: the machine was new). The archives hold every stage's
# manifests, logs, probes and evaluations, but no weights or checkpoints, so:
#   - every finished evaluation is back, and `hftguard report` on the rebuilt directories gives
#     this folder's report again (finish.sh; checked in the seventeenth session: the same
#     numbers, in another row order when the grid was last invoked with other methods);
#   - stages whose weights a later stage needs are "done" without their weights. An unfinished
#     stage in the archive is moved aside so that it starts again (RepNoise's alignment was, in
#     the seventeenth session; it finished in the eighteenth), and so is an unfinished mixing
#     p = 0 attack. (Eighteenth session: rebuild + finish.sh give report.md again line for line.) The p = 0 cells of mixing, mixing-joint,
#     SafeLoRA and Antidote need the SFT-aligned model's weights (and the repairs SFT p = 0's
#     attacked weights): they cannot run on a rebuilt directory until those are retrained.
#
#   bash docs/results/calibrated-field-cpu/logs/rebuild.sh [DEST]    # default /work/field13
set -euo pipefail
ROOT=$(pwd)
DEST=${1:-/work/field13}
HERE="$ROOT/docs/results/calibrated-field-cpu"
[ -f "$HERE/runs.tar.gz" ] || { echo "run from the repository root" >&2; exit 2; }
for d in "$DEST/run" "$DEST/seed43"; do
  [ ! -e "$d" ] || { echo "$d exists: not overwriting it" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar xzf "$HERE/runs.tar.gz" -C "$work"
mkdir -p "$work/lisa" && tar xzf "$ROOT/docs/results/calibrated-cpu-lisa/runs.tar.gz" -C "$work/lisa"
R=$DEST/run S=$DEST/seed43 L=$work/lisa
mkdir -p "$R" "$S/aligned" "$S/evals" "$DEST/old" "$DEST/logs"
cp -a "$work/run/." "$R/" && cp -a "$work/seed43/." "$S/"
# #14's SFT stages, which this grid copied in (finish.sh leaves them out of runs.tar.gz)
cp -a "$L/run/aligned/sft-s42" "$R/aligned/"
cp -a "$L/run/evals/base" "$L/run/evals/aligned-sft-s42" "$R/evals/"
cp -a "$L/run/cells/sft__sft__p0.2__n320__sentiment__s42/." "$R/cells/sft__sft__p0.2__n320__sentiment__s42/"
cp -a "$L/run-p0/cells/sft__sft__p0__n320__sentiment__s42" "$R/cells/"
cp -a "$L/run/aligned/sft-s42" "$S/aligned/"
cp -a "$L/run/evals/base" "$L/run/evals/aligned-sft-s42" "$S/evals/"
# unfinished stages whose checkpoints are gone start again
for d in "$R/aligned/repnoise-s42" "$R/cells/sft__mixing__p0__n320__sentiment__s42"; do
  if [ -e "$d" ] && ! grep -q '"status": "completed"' "$d/manifest.json" "$d/attacked/manifest.json" 2>/dev/null; then
    mv "$d" "$DEST/old/$(basename "$d").$(date -u +%Y%m%dT%H%M%SZ)"
  fi
done
echo "rebuilt $R and $S; unfinished stages moved to $DEST/old"
