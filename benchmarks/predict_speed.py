"""Prediction speed on the CPU: rows/s and peak memory of the submission path and the own-text path, two code
versions side by side.

    GLUE_DIR=/path/to/glue_data python -m benchmarks.predict_speed --before_commit HEAD~1 --rows 1000 \
        --budget_s 60 --reps 2          # -> experiments/rapt/results/predict_speed.json

One encoder (default: the packaged MiniLM; heads untrained: speed does not depend on the weights) is saved once
as a model folder with heads for the test file's task and QQP; then, for each code version (``--before_commit``
or ``--before`` against this checkout) and each repetition, in alternation, one subprocess per step (one
thread: OMP/MKL/tokenizers, as :mod:`benchmarks.scale`) records its wall time and peak RSS (``os.wait4``), and
times its own call:

- ``submission``: the GLUE path (``mt_dnn.step.predict`` on the features of a test split, as
  ``python -m mt_dnn.predict`` runs it) on the first ``--rows`` rows of MNLI-m test when ``$GLUE_DIR/MNLI`` has
  it, else of the largest test file there;
- ``own_text``: the own-text path (``mt_dnn.api.predict_file``: read, tokenize, predict, write JSON lines) on a
  QQP-layout file of ``--rows`` rows (question pairs drawn from the GLUE sentences, as :mod:`benchmarks.scale`);
- ``own_text_full``: the same path on a QQP-sized file (390,965 rows), stopped after ``--budget_s`` seconds of
  prediction: the peak memory of a file that size, and rows/s over what it predicted (the path sorts rows by
  length, so a version that sorts the whole file first predicts its shortest rows first: compare rows/s on the
  steps above).

Inside times exclude the interpreter's start and the model's loading. The report has, per version and step,
the median rows/s and peak RSS over the repetitions, every run, the load average and the commits. Rows per CPU
second (one thread: the work itself) are given beside rows per wall second, which on a machine shared with
other jobs also counts the time they held the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.scale import QQP_TEST_ROWS, REPO, SEED, chosen_steps, git_commit, run_step, sentence_pool
from data_utils import atomic

SUBMISSION = r"""
import json, sys, time, torch
from data_utils.features import load_features
from data_utils.task_def import SplitDef, load_task_defs
from mt_dnn.model import load_model
from mt_dnn.step import predict
model_dir, glue, task_name, split_name = sys.argv[1:5]
model, tok, _ = load_model(model_dir)
task = load_task_defs()[task_name]
feats = load_features(glue, task, task.splits[split_name], tok, 128)
t0, c0 = time.perf_counter(), time.process_time()
preds = predict(model, feats, 128, torch.device("cpu"), tok.pad_token_id)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "rows": len(preds),
                  "tokens": int(feats.offsets[-1])}))
"""

STEPS = ("submission", "own_text", "own_text_full")

OWN_TEXT = r"""
import json, sys, time
import mt_dnn.api as api
model_dir, path, out, budget = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
predictor = api.load_run(model_dir, "cpu")
done = {"rows": 0, "start": None, "cpu_start": None}
inner = api.batch_logits

class Budget(Exception):
    pass

def counted(*a, **k):  # the path's own batches, counted; stopped once the budget is spent
    done["start"], done["cpu_start"] = time.perf_counter(), time.process_time()
    for rows, logits in inner(*a, **k):
        done["rows"] += len(rows)
        yield rows, logits
        if budget and time.perf_counter() - done["start"] > budget:
            raise Budget

api.batch_logits = counted
t0, c0 = time.perf_counter(), time.process_time()
try:
    n = api.predict_file(predictor, "qqp", path, out)
    stopped = False
except Budget:
    stopped = True
t1, c1 = time.perf_counter(), time.process_time()
seconds, cpu = (t1 - done["start"], c1 - done["cpu_start"]) if stopped else (t1 - t0, c1 - c0)
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rows": done["rows"], "stopped": stopped,
                  "tokenize_seconds": done["start"] - t0}))
"""


def pick_test_file(glue_dir: Path) -> tuple[str, str]:
    """(task, split): MNLI-m test when present, else the test split with the most rows under ``glue_dir``."""
    from data_utils.glue import split_path
    from data_utils.task_def import load_task_defs

    tasks = load_task_defs()
    if split_path(glue_dir, tasks["mnli"], tasks["mnli"].splits["test_matched"]).is_file():
        return "mnli", "test_matched"
    best = None
    for task in tasks.values():
        for split in task.splits_of("test"):
            path = split_path(glue_dir, task, split)
            if path.is_file():
                with open(path, "rb") as f:
                    n = sum(1 for _ in f)
                if best is None or n > best[0]:
                    best = (n, task.name, split.name)
    if best is None:
        raise SystemExit(f"error: no GLUE test file under {glue_dir} (set GLUE_DIR)")
    return best[1], best[2]


def build(work: Path, glue_dir: Path, task: str, split: str, rows: int, model: str | None = None) -> dict:
    """The model folder, the first ``rows`` rows of the test file, and the QQP-layout files."""
    import shutil

    from data_utils.glue import split_path
    from data_utils.task_def import load_task_defs
    from mt_dnn.model import MultiTaskModel, load_encoder, resolve_model, save_model

    tasks = load_task_defs()
    chosen = [tasks[task]] + ([tasks["qqp"]] if task != "qqp" else [])
    encoder, tokenizer = load_encoder(resolve_model(model))
    save_model(MultiTaskModel(encoder, chosen, "cls"), tokenizer, chosen, work / "model")
    src = split_path(glue_dir, tasks[task], tasks[task].splits[split])
    dst = split_path(work / "glue", tasks[task], tasks[task].splits[split])
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8", newline="\n") as out:
        for k, line in enumerate(f):
            if k > rows:  # the header and `rows` rows
                break
            out.write(line)
    pool = sentence_pool(glue_dir)
    rng = random.Random(SEED)
    lines = [f"{k}\t{rng.choice(pool)}\t{rng.choice(pool)}\n" for k in range(QQP_TEST_ROWS)]
    (work / "qqp_full.tsv").write_text("id\tquestion1\tquestion2\n" + "".join(lines), encoding="utf-8")
    (work / "qqp_rows.tsv").write_text("id\tquestion1\tquestion2\n" + "".join(lines[:rows]), encoding="utf-8")
    shutil.copyfile(dst, work / "test_rows.tsv")
    return {"test_file": str(src), "task": task, "split": split, "rows": rows, "qqp_full_rows": QQP_TEST_ROWS,
            "model": model or "packaged:all-MiniLM-L6-v2"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.predict_speed", description=__doc__.splitlines()[0])
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "glue_data")))
    p.add_argument("--before", help="a checkout of the code to compare against (its root folder)")
    p.add_argument("--before_commit", help="or a commit of this repository to compare against (git archive)")
    p.add_argument("--model", default=None, help="encoder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--rows", type=int, default=1000, help="rows of the submission and own-text steps")
    p.add_argument("--budget_s", type=float, default=60.0, help="seconds of prediction of the QQP-sized file "
                                                                 "(0: skip that step)")
    p.add_argument("--reps", type=int, default=1, help="repetitions, the versions alternating")
    p.add_argument("--steps", default="submission,own_text,own_text_full")
    p.add_argument("--work", help="folder for the model, files and logs (default: a new temporary one)")
    p.add_argument("--out", default="experiments/rapt/results/predict_speed.json")
    args = p.parse_args(argv)
    steps = chosen_steps(p, args.steps, STEPS)
    if args.rows < 1 or args.reps < 1 or args.budget_s < 0:
        p.error("--rows and --reps must be at least 1, --budget_s at least 0")
    work = Path(args.work or tempfile.mkdtemp(prefix="mtdnn-predict-")).resolve()
    if REPO in work.parents or work == REPO:
        p.error("--work must be outside the repository (the generated files are never committed)")
    work.mkdir(parents=True, exist_ok=True)
    versions = {"now": REPO}
    if args.before_commit:
        before = work / "before"
        before.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before_commit], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        versions = {"before": before, "now": REPO}
    elif args.before:
        versions = {"before": Path(args.before).resolve(), "now": REPO}
    task, split = pick_test_file(Path(args.glue_dir))
    data = build(work, Path(args.glue_dir), task, split, args.rows, args.model)
    py = sys.executable
    commands = {
        "submission": lambda: [py, "-c", SUBMISSION, str(work / "model"), str(work / "glue"), task, split],
        "own_text": lambda: [py, "-c", OWN_TEXT, str(work / "model"), str(work / "qqp_rows.tsv"),
                             str(work / "out.jsonl"), "0"],
        "own_text_full": lambda: [py, "-c", OWN_TEXT, str(work / "model"), str(work / "qqp_full.tsv"),
                                  str(work / "out_full.jsonl"), str(args.budget_s)],
    }
    report: dict = {"data": data, "python": sys.version.split()[0], "machine": platform.platform(), "threads": 1,
                    "versions": {v: {"code": str(c), "commit": args.before_commit if v == "before" and
                                     args.before_commit else git_commit(c)} for v, c in versions.items()},
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for rep in range(args.reps):
        order = list(versions) if rep % 2 == 0 else list(reversed(versions))
        for step in steps:
            if step == "own_text_full" and not args.budget_s:
                continue
            for v in order:
                load = [round(x, 2) for x in os.getloadavg()]
                r = run_step(f"{step}_{v}_{rep}", commands[step](), versions[v], work)
                r.update(step=step, version=v, rep=rep, load_average=load)
                report["runs"].append(r)
                atomic.write_json(out, report)
    summary: dict = {}
    for v in versions:
        for step in steps:
            runs = [r for r in report["runs"] if r["version"] == v and r["step"] == step and r["rc"] == 0
                    and "inside" in r]
            if runs:
                summary.setdefault(step, {})[v] = {
                    "rows_per_s": statistics.median(r["inside"]["rows_per_s"] for r in runs),
                    "rows_per_cpu_s": statistics.median(r["inside"]["rows"] / r["inside"]["cpu_seconds"] for r in runs),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                    "rows": runs[0]["inside"]["rows"]}
    for step, by in summary.items():
        if "before" in by and "now" in by and step != "own_text_full":  # its rows are not the same rows
            by["speedup"] = round(by["now"]["rows_per_s"] / by["before"]["rows_per_s"], 2)
            by["speedup_cpu"] = round(by["now"]["rows_per_cpu_s"] / by["before"]["rows_per_cpu_s"], 2)
    report["summary"] = summary
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic.write_json(out, report)
    print(json.dumps(summary, indent=2))
    print(f"report: {out}")
    return 0 if all(r["rc"] == 0 for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
