#!/usr/bin/env bash
# MT-DNN recipe: multi-task training on all tasks, then per-task fine-tuning from that model.
# usage: run_mtdnn.sh {standard|smart|rapt|r3f} [flags for both stages...]
#   env: TASKS (default: the GLUE tasks with data in GLUE_DIR), MT_EPOCHS (default 3), plus common.sh's.
set -euo pipefail
source "$(dirname "$0")/common.sh"
[[ $# -ge 1 ]] || usage
method="$1"; shift
[[ "$method" =~ ^($METHODS)$ ]] || usage
if [[ -z "${TASKS:-}" ]]; then
  declare -A dirs=([cola]=CoLA [sst]=SST-2 [mrpc]=MRPC [stsb]=STS-B [qqp]=QQP [mnli]=MNLI [qnli]=QNLI [rte]=RTE [wnli]=WNLI)
  found=()
  for t in cola sst mrpc stsb qqp mnli qnli rte wnli; do [[ -f "$GLUE_DIR/${dirs[$t]}/train.tsv" ]] && found+=("$t"); done
  TASKS=$(IFS=,; echo "${found[*]}")
fi
[[ -n "$TASKS" ]] || { echo "no GLUE task found in $GLUE_DIR" >&2; exit 2; }
model_flag=()
[[ -n "$MODEL" ]] && model_flag=(--model "$MODEL")
mt_dir="$OUT/mtdnn-$method-s$SEED"
echo "== stage 1: multi-task $TASKS -> $mt_dir"
"$PYTHON" -m mt_dnn.train --tasks "$TASKS" --method "$method" --glue_dir "$GLUE_DIR" "${model_flag[@]}" \
  --output_dir "$mt_dir" --lr "$LR" --batch_size "$BATCH" --epochs "${MT_EPOCHS:-3}" --seed "$SEED" "$@"
IFS=, read -r -a task_list <<< "$TASKS"
for t in "${task_list[@]}"; do
  echo "== stage 2: fine-tune $t from $mt_dir"
  "$PYTHON" -m mt_dnn.train --tasks "$t" --method "$method" --glue_dir "$GLUE_DIR" --init_checkpoint "$mt_dir" \
    --output_dir "$OUT/mtdnn-$method-s$SEED-ft-$t" --lr "$LR" --batch_size "$BATCH" --epochs "$EPOCHS" \
    --seed "$SEED" "$@"
done
