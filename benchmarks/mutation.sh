#!/usr/bin/env bash
# Mutation testing of the modules that decide a number, each against the tests that cover it (mutmut 3).
#
#   pip install -e ".[mutation]"
#   bash benchmarks/mutation.sh [MODULE ...]      # default: every module below; e.g. mt_dnn/losses.py
#
# Slow (minutes to an hour per module on two cores): not part of CI. Each module is mutated in its own copy of
# this checkout (its tracked and untracked, not ignored, files) under $MUTATION_DIR (default
# /tmp/mtdnn-mutation/<module>), never in the checkout itself, so the source files here are never rewritten.
# mutmut's settings go into that copy's setup.cfg; it runs each mutant against the listed tests that execute
# the mutated function only. The summary (killed, survived, timeouts, score) of each module is printed and
# written to $MUTATION_DIR/<module>/summary.txt; `cd` there and run `mutmut results` / `mutmut show NAME` to see
# the survivors.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="$(pwd)"
BASE="${MUTATION_DIR:-/tmp/mtdnn-mutation}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MT_DNN_NO_TQDM=1
export GLUE_DIR="${GLUE_DIR:-$SRC/../shared/glue_data}"

# the tests that cover each module
tests_for() {
  case "$1" in
    mt_dnn/losses.py) echo "tests/test_losses.py tests/test_perturbation.py tests/test_methods_independent.py
                            tests/test_properties.py" ;;
    mt_dnn/perturbation.py) echo "tests/test_perturbation.py tests/test_methods_independent.py tests/test_losses.py" ;;
    mt_dnn/model.py) echo "tests/test_losses.py tests/test_model_forward.py tests/test_perturbation.py
                           tests/test_methods_independent.py tests/test_run_folder.py tests/test_model_parts.py" ;;
    mt_dnn/step.py) echo "tests/test_losses.py tests/test_model_forward.py tests/test_predict_batches.py
                          tests/test_perturbation.py tests/test_methods_independent.py" ;;
    data_utils/batching.py) echo "tests/test_batching.py tests/test_group_by_length.py tests/test_predict_batches.py
                                  tests/test_data_ddp.py tests/test_features.py tests/test_flat_features.py
                                  tests/test_properties.py" ;;
    data_utils/features.py) echo "tests/test_features.py tests/test_flat_features.py tests/test_feature_cache.py
                                  tests/test_features_keys.py" ;;
    data_utils/metrics.py) echo "tests/test_metrics.py" ;;
    data_utils/submission.py) echo "tests/test_submission.py tests/test_submission_messages.py" ;;
    data_utils/robustness.py) echo "tests/test_robustness.py tests/test_robustness_reader.py tests/test_task_def.py" ;;
    experiments/rapt/robustness_report.py) echo "tests/test_robustness_report.py tests/test_results_tables.py
                                                 tests/test_campaign_report.py tests/test_properties.py" ;;
    experiments/rapt/stats.py) echo "tests/test_stats.py tests/test_campaign_report.py tests/test_results_tables.py
                                     tests/test_robustness_report.py tests/test_properties.py" ;;
    experiments/rapt/results.py) echo "tests/test_results_scan.py tests/test_campaign_report.py tests/test_archive.py tests/test_robustness_report.py
                                       tests/test_robustness_figure.py tests/test_peer.py tests/test_trust_data.py
                                       tests/test_campaign.py tests/test_task_def.py" ;;
    experiments/rapt/recipe.py) echo "tests/test_recipe.py" ;;
    data_utils/glue.py) echo "tests/test_glue_readers.py tests/test_flat_features.py tests/test_trust_data.py
                              tests/test_predict_input.py tests/test_glue_large_tasks.py tests/test_properties.py" ;;
    data_utils/task_def.py) echo "tests/test_task_def.py tests/test_robustness_reader.py tests/test_glue_readers.py
                                  tests/test_trust_data.py" ;;
    *) echo "no test list for $1" >&2; return 1 ;;
  esac
}

MODULES=("$@")
if [ ${#MODULES[@]} -eq 0 ]; then
  MODULES=(mt_dnn/losses.py data_utils/metrics.py mt_dnn/perturbation.py mt_dnn/step.py mt_dnn/model.py
           data_utils/batching.py data_utils/features.py data_utils/submission.py data_utils/robustness.py
           experiments/rapt/robustness_report.py experiments/rapt/stats.py experiments/rapt/results.py
           experiments/rapt/recipe.py data_utils/glue.py data_utils/task_def.py)
fi
python -c "import mutmut" 2>/dev/null || { echo "error: mutmut is not installed (pip install -e '.[mutation]')" >&2; exit 1; }

for module in "${MODULES[@]}"; do
  tests=""
  for t in $(tests_for "$module"); do [ -f "$t" ] && tests="$tests $t"; done
  work="$BASE/$(echo "$module" | tr '/.' '__')"
  rm -rf "$work" && mkdir -p "$work/mutants"  # mutants/ must exist before mutmut starts (it is on PYTHONPATH)
  git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - --ignore-failed-read | tar -xf - -C "$work"
  {
    echo
    echo "[mutmut]"
    echo "source_paths ="
    echo "    mt_dnn/"
    echo "    data_utils/"
    case "$module" in experiments/*) echo "    experiments/" ;; esac
    echo "only_mutate = $module"
    echo "also_copy ="  # what the tests read besides the source: scripts, grids, results, docs
    for extra in run_scripts/ experiments/ benchmarks/ docs/ README.md setup.py setup.cfg; do echo "    $extra"; done
    echo "pytest_add_cli_args_test_selection ="
    for t in $tests; do echo "    $t"; done
    echo "pytest_add_cli_args ="
    echo "    -p"
    echo "    no:cacheprovider"
    echo "timeout_multiplier = 5.0"
  } >> "$work/setup.cfg"
  echo "== $module: mutants against $(echo $tests)"
  start=$(date +%s)
  # the copy's code must win over an editable install of this checkout, in subprocesses too
  (cd "$work" && PYTHONPATH="$work/mutants:$work" mutmut run --max-children "${MUTATION_JOBS:-1}" > mutmut.log 2>&1) \
    || echo "   mutmut exited $? (see $work/mutmut.log)"
  (cd "$work" && mutmut results --all true > results.txt 2>&1) || true
  python - "$work" "$module" "$(( $(date +%s) - start ))" <<'PY'
import collections, re, sys
from pathlib import Path
work, module, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
counts, survivors = collections.Counter(), []
for line in (work / "results.txt").read_text().splitlines():
    m = re.match(r"\s*(\S+): (.+)$", line)
    if m and "__mutmut_" in m.group(1):
        counts[m.group(2).strip()] += 1
        if m.group(2).strip() in ("survived", "no tests"):
            survivors.append(m.group(1))
total = sum(counts.values())
caught = counts["killed"] + counts["timeout"] + counts["caught by type check"]
lines = [f"{module}: {total} mutants, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
         + (f"; score {100 * caught / total:.1f}% killed" if total else "") + f" ({seconds} s)"]
lines += [f"  survived: {name}" for name in survivors]
(work / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
done
