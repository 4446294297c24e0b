#!/usr/bin/env bash
# Fine-tune on GLUE COLA with the paper's defaults. usage: run_cola.sh {standard|smart|rapt|r3f} [flags...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_task cola "$@"
