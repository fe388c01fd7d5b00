#!/bin/bash
# Regenerate this folder from the grid's two --out directories (fifteenth session): the report
# (md/csv/tex/json), its plots, runs.tar.gz (every stage measured for #18, without weights or
# checkpoints; the SFT stages copied from #14's CPU run are in ../calibrated-cpu-lisa/) and the
# verdicts of #14's rule. Run from the repository root of a checkout with `make install` done:
#
#   bash docs/results/calibrated-field-cpu/logs/finish.sh [RUN_DIR [SEED43_DIR]]
#
# It reads the run directories only; it writes this folder's files (each replaced whole).
set -euo pipefail
RUN=${1:-/work/field13/run}
S43=${2:-/work/field13/seed43}
ROOT=$(pwd)
HERE=${FINISH_INTO:-"$ROOT/docs/results/calibrated-field-cpu"}  # FINISH_INTO: elsewhere, to try it
[ -x "$ROOT/.venv/bin/hftguard" ] || { echo "run from the repository root after make install" >&2; exit 2; }
for d in "$RUN" "$S43"; do
  [ -f "$d/manifest.json" ] || { echo "$d is not a grid --out (no manifest.json)" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$work"
"$ROOT/.venv/bin/hftguard" report "$RUN" "$S43" --out report --plot-format png --json > report.json
cp report/report.md report/report.csv report/report.tex report.json "$HERE/"
cp report/*.png "$HERE/"

# the stages this grid measured: everything but #14's copied SFT stages, weights, checkpoints
copied=(
  "run/aligned/sft-s42" "run/evals/base" "run/evals/aligned-sft-s42"
  "run/cells/sft__sft__p0.2__n320__sentiment__s42/attacked"
  "run/cells/sft__sft__p0.2__n320__sentiment__s42/eval"
  "run/cells/sft__sft__p0__n320__sentiment__s42"
  "seed43/aligned" "seed43/evals"
)
excludes=(--exclude='*.safetensors' --exclude='checkpoints' --exclude='.lock*' --exclude='.*.replaced-*')
for c in "${copied[@]}"; do excludes+=(--exclude="$c"); done
ln -s "$RUN" run
ln -s "$S43" seed43
tar czhf "$HERE/runs.tar.gz" "${excludes[@]}" run seed43
tar tzf "$HERE/runs.tar.gz" | grep -c . | sed 's/^/runs.tar.gz entries: /'

cd "$ROOT"
.venv/bin/python docs/results/calibrated/verdict.py "$HERE/report.json"
