#!/usr/bin/env bash
# Predict the GLUE test sets with one or more trained runs, write the 11 files + zip, validate.
# usage: make_submission.sh RUN_DIR [RUN_DIR ...]     env: GLUE_DIR, OUT (default submission), PYTHON
set -euo pipefail
SUB="${OUT:-submission}"   # read before common.sh gives OUT its training default
source "$(dirname "$0")/common.sh"
if [[ $# -lt 1 ]]; then
  echo "usage: $(basename "$0") RUN_DIR [RUN_DIR ...]   (env: GLUE_DIR=$GLUE_DIR OUT=submission)" >&2
  exit 2
fi
ckpts=()
for d in "$@"; do ckpts+=(--checkpoint "$d"); done
"$PYTHON" -m mt_dnn.predict "${ckpts[@]}" --glue_dir "$GLUE_DIR" --submission_dir "$SUB"
"$PYTHON" -m data_utils.submission --check "$SUB/submission.zip" --glue_dir "$GLUE_DIR"
