#!/usr/bin/env bash
# Fine-tune on GLUE MNLI with the paper's defaults. usage: run_mnli.sh {standard|smart|rapt|r3f} [flags...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_task mnli "$@"
