#!/usr/bin/env bash
# Time-boxed DSpark drafter training on one GPU, from the shipped SmolLM2 drafter, as one prepared script.
#
#   bash launch/gpu_train.sh --dry-run     # list the steps, run nothing
#   bash launch/gpu_train.sh               # MINUTES of training (default 5); results in $OUT (default gpu_train_out/)
#
# Same set-up as launch/gpu_check.sh (the machine's CUDA Python, .gpu/ from launch/gpu_pack.sh). It regenerates
# training data with the target on the GPU (examples/train_smollm2.json's prompts), trains the shipped drafter
# further for MINUTES (the checkpoint is copied to start from; a fresh optimizer), exports it in files under
# 16 MiB (HF's sharded safetensors layout) and evaluates it against the shipped one on held-out greedy data.
# $OUT/drafter/ is a drafter directory to pass to --speculative-draft-model-path.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
PY="${PYTHON:-python3}"
OUT="${OUT:-gpu_train_out}"
MINUTES="${MINUTES:-5}"
RUN=/tmp/gpu_train
SHIPPED=sglang_dspark/speculative/dspark/checkpoints/smollm2-135m-instruct
TRAIN=(-m sglang_dspark.train --config examples/train_smollm2.json --device cuda --target-dtype bfloat16
  --num-threads 8 --output-dir "$RUN")

STEPS=(
  "install: launch/gpu_check.sh's install step (wheels and the default model from .gpu/)"
  "held-out greedy data: the eval split regenerated on the GPU (temperature 0)"
  "train: the shipped drafter ($SHIPPED) for $MINUTES minutes on data regenerated on the GPU; export in files under 16 MiB"
  "evaluate: the trained drafter against the shipped one (python -m sglang_dspark.eval), tau greedy and at T=1"
)

install() {
  bash launch/gpu_check.sh --install-only
}

eval_data() {
  "$PY" "${TRAIN[@]}" --split eval --regenerate-only --gen-temperature 0 --data-file "$RUN/eval_t0.jsonl"
}

train() {
  mkdir -p "$RUN/dspark/checkpoint"
  cp "$SHIPPED/config.json" "$SHIPPED/model.safetensors" "$RUN/dspark/checkpoint/"
  "$PY" "${TRAIN[@]}" --variants dspark --data-file "$RUN/train.jsonl" --per-source 150 --gen-batch-size 96 \
    --max-minutes "$MINUTES" --max-steps 3000 --save-every 100 --export-shard-mib 15
  mkdir -p "$OUT/drafter"
  cp "$RUN"/dspark/drafter/* "$OUT/drafter/"
  ls -l "$OUT/drafter"
}

evaluate() {
  "$PY" -m sglang_dspark.eval --drafters shipped="$SHIPPED" trained="$RUN/dspark/drafter" \
    --data "$RUN/eval_t0.jsonl" --per-source 10 --workers 8 --output-dir "$RUN/eval"
  cp "$RUN/eval/results.md" "$OUT/eval.md"
  cat "$OUT/eval.md"
}

FUNCS=(install eval_data train evaluate)

if (( DRY_RUN )); then
  echo "launch/gpu_train.sh would run, with $PY, writing $OUT/:"
  for i in "${!STEPS[@]}"; do echo "  $((i + 1)). ${STEPS[$i]}"; done
  exit 0
fi

mkdir -p "$OUT"
export PYTHONPATH="/tmp/gpu_site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for i in "${!STEPS[@]}"; do
  echo "== $((i + 1)). ${STEPS[$i]}"
  "${FUNCS[$i]}" 2>&1 | tee "$OUT/step.log"
done
