#!/usr/bin/env bash
# Packs, into .gpu/ (git-ignored), what launch/gpu_check.sh and launch/gpu_train.sh need on a GPU machine that
# reaches no network and has CUDA torch, triton and transformers but not the rest of the runtime:
#
#   .gpu/whl/               wheels (CPython 3.12, manylinux x86-64) of the other runtime dependencies, at the
#                           versions of launch/requirements.lock (xgrammar at launch/requirements-nodeps.txt's)
#   .gpu/model1 .. modelN   the default model's GGUF in parts of at most PART_MIB MiB (default 24)
#   .gpu/model.sha256       its checksum, which gpu_check.sh verifies after joining the parts
#
# A machine lent through the device tool receives the working tree plus the carried paths, at most 64 MiB in all
# (about 29 MiB is the tree), and keeps carried paths of earlier calls while it stays warm. So the parts travel
# one call each, and the last call runs the check:
#   call 1:    carry [".gpu/whl", ".gpu/model1", ".gpu/model.sha256"]   command: true
#   call k:    carry [".gpu/modelk"]                                     command: true
#   last call: carry [".gpu/modelN"]                                     command: bash launch/gpu_check.sh
#
#   bash launch/gpu_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MIB="${PART_MIB:-24}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p .gpu/whl

pin() {  # the version launch/requirements.lock (or requirements-nodeps.txt) pins for a package
  grep -ih "^$1==" launch/requirements.lock launch/requirements-nodeps.txt | head -1
}
PACKAGES=(gguf fastapi starlette uvicorn pyzmq pydantic pydantic-core annotated-types typing-inspection
  apache-tvm-ffi xgrammar jsonschema jsonschema-specifications referencing rpds-py)
PINNED=()
for p in "${PACKAGES[@]}"; do PINNED+=("$(pin "$p")"); done
PLATFORMS=()
for n in 17 24 26 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" --platform manylinux2014_x86_64 -d .gpu/whl "${PINNED[@]}"

GGUF="$("$PY" -c 'from sglang_dspark.models.model_source import default_model_gguf; print(default_model_gguf())')"
rm -rf .gpu/model[0-9]*
split -b "${PART_MIB}M" -d -a 2 "$GGUF" .gpu/part-
i=0
for part in .gpu/part-*; do
  i=$((i + 1))
  mkdir -p ".gpu/model$i"
  mv "$part" ".gpu/model$i/$(basename "$GGUF").${part##*-}"  # NAME.gguf.00, .01, ...
done
(cd "$(dirname "$GGUF")" && sha256sum "$(basename "$GGUF")") > .gpu/model.sha256
echo "packed $(du -sh .gpu/whl | cut -f1) of wheels and $i model parts of $(basename "$GGUF") into .gpu/"
du -sh .gpu/whl .gpu/model*
