#!/usr/bin/env bash
# Step times on one GPU, ours against plain transformers.Trainer (benchmarks/gpu_speed.py says what is measured).
#
#   bash benchmarks/gpu_speed.sh prepare     # on this machine (project installed): runs/gpu_assets (config,
#                                            # tokenizer, train file; a few MB, travels with carry)
#   bash benchmarks/gpu_speed.sh run         # on the GPU machine, in one call under 10 minutes:
#                                            # OUT/gpu_speed.json (every configuration) and OUT/gpu_speed.log
#   bash benchmarks/gpu_speed.sh cpu_smoke   # on this machine: every configuration, tiny, on the CPU
#
# Extra arguments go to `python -m benchmarks.gpu_speed run` (--only, --steps, --budget_s, --peak_tflops).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-run}"
shift || true
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
case "$what" in
  prepare) "$PY" -m benchmarks.gpu_speed prepare "$@" ;;
  run) mkdir -p "${OUT:-runs/gpu_speed}"
       "$PY" -m benchmarks.gpu_speed run --out "${OUT:-runs/gpu_speed}" --work /tmp/gpu_speed_work "$@" 2>&1 \
           | tee "${OUT:-runs/gpu_speed}/gpu_speed.log" ;;
  cpu_smoke) "$PY" -m benchmarks.gpu_speed run --cpu_smoke --out runs/gpu_speed_smoke \
               --work runs/gpu_speed_smoke_work "$@" ;;
  *) echo "usage: bash benchmarks/gpu_speed.sh prepare|run|cpu_smoke [options]" >&2; exit 2 ;;
esac
