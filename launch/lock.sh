#!/usr/bin/env bash
# Refreshes launch/requirements.lock, the pinned versions of every transitive dependency that
# launch/install.sh (and so CI) installs. After refreshing: bash launch/install.sh test && .venv/bin/python -m pytest -q
# torch itself is pinned by install.sh (the CPU build); its dependencies are resolved from the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${TMPDIR:-/tmp}/sglang-dspark-uv
[ -x "$tools/bin/uv" ] || { python3 -m venv "$tools" && "$tools/bin/pip" install -q uv==0.13.9; }
if ls /opt/wheels/torch-2.13.0+cpu-* >/dev/null 2>&1; then torch_source=(--find-links /opt/wheels)
else torch_source=(--torch-backend cpu); fi
"$tools/bin/uv" pip compile pyproject.toml launch/lock-inputs.in --extra test --universal \
    --no-emit-package torch --custom-compile-command "bash launch/lock.sh" "${torch_source[@]}" -o launch/requirements.lock
