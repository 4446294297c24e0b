#!/usr/bin/env bash
# Shared by the run_<task>.sh scripts. Environment overrides:
#   GLUE_DIR (default ../shared/glue_data or ./glue_data), MODEL (default: the packaged all-MiniLM-L6-v2),
#   OUT (default runs), LR (default 1e-4, measured for the packaged MiniLM; use 2e-5 for BERT-base), EPOCHS (default 6), BATCH (default 32), SEED (default 1), PYTHON.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [[ -z "${GLUE_DIR:-}" ]]; then
  if [[ -d "$ROOT/../shared/glue_data" ]]; then GLUE_DIR="$ROOT/../shared/glue_data"; else GLUE_DIR="glue_data"; fi
fi
MODEL="${MODEL:-}"
OUT="${OUT:-runs}"
LR="${LR:-1e-4}"
EPOCHS="${EPOCHS:-6}"
BATCH="${BATCH:-32}"
SEED="${SEED:-1}"
PYTHON="${PYTHON:-python}"
METHODS="standard|smart|rapt|r3f"

usage() {
  echo "usage: $(basename "$0") {$METHODS} [extra mt_dnn.train flags...]" >&2
  echo "  env: GLUE_DIR=$GLUE_DIR MODEL=${MODEL:-<packaged MiniLM>} OUT=$OUT LR=$LR EPOCHS=$EPOCHS BATCH=$BATCH SEED=$SEED" >&2
  exit 2
}

# run_task TASK METHOD [flags...]: paper defaults (Sec. 3.2): batch 32, up to 6 epochs with the best dev epoch
# kept, warm-up 0.1, clip 1.0; RAPT eta 2, max_layer 3; SMART step 1e-3, noise 1e-5.
run_task() {
  local task="$1"; shift
  [[ $# -ge 1 ]] || usage
  local method="$1"; shift
  [[ "$method" =~ ^($METHODS)$ ]] || usage
  local extra=()
  case "$method" in
    rapt) extra=(--rapt_eta 2.0 --rapt_max_layer 3 --rapt_alpha 1.0) ;;
    smart) extra=(--smart_step_size 1e-3 --smart_noise_var 1e-5 --smart_alpha 1.0) ;;
  esac
  local model_flag=()
  [[ -n "$MODEL" ]] && model_flag=(--model "$MODEL")
  "$PYTHON" -m mt_dnn.train --tasks "$task" --method "$method" --glue_dir "$GLUE_DIR" "${model_flag[@]}" \
    --output_dir "$OUT/$task-$method-s$SEED" --lr "$LR" --batch_size "$BATCH" --epochs "$EPOCHS" \
    --warmup 0.1 --clip 1.0 --seed "$SEED" "${extra[@]}" "$@"
}
