#!/usr/bin/env bash
# The checks a machine with one NVIDIA GPU can run today, as one prepared script (a few minutes).
#
#   bash launch/gpu_check.sh --dry-run     # list the steps, run nothing
#   bash launch/gpu_check.sh               # run them; results in $OUT (default gpu_check_out/)
#
# It uses the machine's own Python (PYTHON, default python3) with a CUDA build of torch, triton and pytest
# already there, and the repository as it is (PYTHONPATH): the CPU install in .venv is never touched.
# Today the GPU path is the Triton kernels (speculative verification, pool attention) against their torch
# references on real CUDA tensors, and the pool attention's speed against torch's SDPA over gathered keys;
# the runtime itself runs on the CPU only (`--device cpu`).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
PY="${PYTHON:-python3}"
OUT="${OUT:-gpu_check_out}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

STEPS=(
  "environment: the GPU, torch's CUDA build and triton"
  "Triton kernels against the torch references on the GPU (tests/kernels/test_spec_verify.py, test_pool_attention_triton.py)"
  "pool attention speed: the Triton kernel vs SDPA over gathered keys, decode batches 1/16/64 at 2048 keys"
)

environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" - <<'EOF'
import torch, triton
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")
if not torch.cuda.is_available():
    raise SystemExit("torch sees no CUDA device: install a CUDA build of torch for this Python")
print("device:", torch.cuda.get_device_name(0))
EOF
}

kernel_tests() {
  "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_spec_verify.py tests/kernels/test_pool_attention_triton.py
}

attention_speed() {
  "$PY" - <<'EOF'
import torch, torch.nn.functional as F
from sglang_dspark.kernels.pool_attention_triton import pool_attention_triton

def sdpa(q, k_buf, v_buf, slots, scale):  # decode: every query sees its row's whole context
    kk = k_buf[slots].transpose(1, 2)  # [B, Hkv, S, D]
    vv = v_buf[slots].transpose(1, 2)
    return F.scaled_dot_product_attention(q[:, :, None], kk, vv, scale=scale, enable_gqa=True)[:, :, 0]

def timed(fn, reps=50):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1000  # us

hq, hkv, d, s = 9, 3, 64, 2048  # SmolLM2-135M's heads
print("| batch | Triton pool attention (us) | SDPA over gathered keys (us) | max abs difference |")
print("|---:|---:|---:|---:|")
for b in (1, 16, 64):
    k_buf = torch.randn(b * s + 1, hkv, d, device="cuda", dtype=torch.bfloat16)
    v_buf = torch.randn_like(k_buf)
    slots = torch.randperm(b * s, device="cuda")[: b * s].view(b, s) + 1
    q = torch.randn(b, hq, d, device="cuda", dtype=torch.bfloat16)
    rows, lens = torch.arange(b, device="cuda"), torch.full((b,), s, device="cuda")
    ours = lambda: pool_attention_triton(q, k_buf, v_buf, slots, rows, lens, d**-0.5)
    ref = lambda: sdpa(q, k_buf, v_buf, slots, d**-0.5)
    diff = (ours().float() - ref().float()).abs().max().item()
    print(f"| {b} | {timed(ours):.1f} | {timed(ref):.1f} | {diff:.3g} |")
EOF
}

FUNCS=(environment kernel_tests attention_speed)

if (( DRY_RUN )); then
  echo "launch/gpu_check.sh would run, with $PY, writing $OUT/gpu_check.md:"
  for i in "${!STEPS[@]}"; do echo "  $((i + 1)). ${STEPS[$i]}"; done
  exit 0
fi

mkdir -p "$OUT"
REPORT="$OUT/gpu_check.md"
echo "# launch/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" > "$REPORT"
status=0
for i in "${!STEPS[@]}"; do
  echo "== $((i + 1)). ${STEPS[$i]}"
  { echo; echo "## $((i + 1)). ${STEPS[$i]}"; echo; echo '```'; } >> "$REPORT"
  if ! "${FUNCS[$i]}" 2>&1 | tee -a "$REPORT"; then
    status=1
    echo "FAILED" | tee -a "$REPORT"
  fi
  echo '```' >> "$REPORT"
done
echo "report: $REPORT"
exit $status
