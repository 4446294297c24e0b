"""Data at MNLI/QQP scale: wall time and peak memory of a first run, a cached run, and prediction.

    GLUE_DIR=/path/to/glue_data python -m benchmarks.scale --work runs/scale [--code DIR] [--out report.json]

It builds, under ``--work`` (a temporary folder by default; never inside the repository), MNLI files in the
official layout and at the official row counts (train 392,702; dev_matched 9,815; dev_mismatched 9,832;
test_matched 9,796; test_mismatched 9,847) and a QQP-layout test file of 390,965 rows, from sentences of the
GLUE files under ``GLUE_DIR`` (CoLA, SST-2, MRPC, STS-B, RTE, WNLI: whatever of them is there), sampled with a
fixed seed. MNLI's parse columns are filled with bracketings of the same words, so the files have about the
official size. Then each step runs in its own subprocess (the code under ``--code``, default this checkout;
one thread: OMP/MKL/tokenizers) and its wall time and peak RSS (``os.wait4``) are recorded:

- ``first_run``: ``python -m mt_dnn.train --tasks mnli --max_steps 1 --no_eval`` with an empty feature cache;
- ``cached_run``: the same again (new output folder, same cache);
- ``cached_load``: only ``load_features`` of MNLI train from that cache (its seconds measured inside);
- ``predict_mnli_m``: ``python -m mt_dnn.predict`` (the GLUE path, the first run's model) on MNLI-m test;
- ``predict_qqp_<n>``: ``python -m mt_dnn.predict --input`` (the :mod:`mt_dnn.api` path, MNLI head) on the
  first n rows of the QQP-layout test file, for each n of ``--qqp_rows`` (prediction of all 390,965 rows on a
  CPU takes hours: give ``--qqp_rows 390965`` to run it);
- ``tokenize_qqp_full``: ``load_features`` of the whole QQP-layout test file, without a cache (the memory that
  prediction of the full file needs before the model runs).

The JSON report (``--out``, default ``WORK/report.json``) has one object per step: command, exit code,
wall seconds, peak RSS in MB, rows and rows per second where they apply.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNLI_ROWS = {"train": 392_702, "dev_matched": 9_815, "dev_mismatched": 9_832, "test_matched": 9_796,
             "test_mismatched": 9_847}
QQP_TEST_ROWS = 390_965
MNLI_LABELS = ("contradiction", "entailment", "neutral")
GENRES = ("fiction", "government", "slate", "telephone", "travel")
SOURCES = ("cola", "sst", "mrpc", "stsb", "rte", "wnli")  # task names in data_utils/glue_tasks.yml
SEED = 20240518
STEPS = ("first_run", "cached_run", "cached_load", "predict_mnli_m", "predict_qqp", "tokenize_qqp_full")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_RS_NUM_CPUS": "1", "RAYON_NUM_THREADS": "1",
              "TOKENIZERS_PARALLELISM": "false", "MT_DNN_NO_TQDM": "1", "HF_HUB_OFFLINE": "1",
              "TRANSFORMERS_OFFLINE": "1"}

CACHED_LOAD = r"""
import json, sys, time
from transformers import AutoTokenizer
from data_utils.features import load_features
from data_utils.task_def import load_task_defs
from mt_dnn.model import resolve_model
glue, cache, task_name, split_name = sys.argv[1:5]
tok = AutoTokenizer.from_pretrained(resolve_model(None), use_fast=True)
task = load_task_defs()[task_name]
t0 = time.perf_counter()
feats = load_features(glue, task, task.splits[split_name], tok, 128, cache_dir=None if cache == "-" else cache)
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(feats)}))
"""


# ---- the data -----------------------------------------------------------------------------------------------

def sentence_pool(glue_dir: Path) -> list[str]:
    """Every distinct text of the GLUE files present under ``glue_dir`` (both sentences of pair tasks)."""
    sys.path.insert(0, str(REPO))
    from data_utils.glue import read_split
    from data_utils.task_def import load_task_defs

    tasks = load_task_defs()
    seen: dict[str, None] = {}
    for name in SOURCES:
        task = tasks[name]
        for split in task.splits.values():
            if not (glue_dir / task.data_dir / split.file).is_file():
                continue
            for e in read_split(glue_dir, task, split):
                for text in (e.text_a, e.text_b):
                    text = " ".join((text or "").split())  # no tabs or newlines inside a field
                    if text:
                        seen.setdefault(text, None)
    if not seen:
        raise SystemExit(f"error: no GLUE files of {', '.join(SOURCES)} under {glue_dir} (set GLUE_DIR)")
    return list(seen)


def _binary_parse(words: list[str]) -> str:
    """A right-branching bracketing: ``( a ( b c ) )``."""
    out = words[-1]
    for w in reversed(words[:-1]):
        out = f"( {w} {out} )"
    return out


def _parse(words: list[str]) -> str:
    return "(ROOT (S " + " ".join(f"(NN {w})" for w in words) + "))"


def _mnli_row(rng: random.Random, pool: list[str], k: int, kind: str) -> str:
    a, b = rng.choice(pool), rng.choice(pool)
    wa, wb = re.findall(r"\w+|[^\w\s]", a) or [a], re.findall(r"\w+|[^\w\s]", b) or [b]
    fields = [str(k), str(100000 + k // 3), f"{100000 + k // 3}{'nce'[k % 3]}", GENRES[k % len(GENRES)],
              _binary_parse(wa), _binary_parse(wb), _parse(wa), _parse(wb), a, b]
    if kind == "train":
        label = rng.choice(MNLI_LABELS)
        fields += [label, label]
    elif kind == "dev":
        label = rng.choice(MNLI_LABELS)
        fields += [label] * 5 + [label]
    return "\t".join(fields)


MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]


def build_data(work: Path, glue_dir: Path, qqp_sizes: list[int]) -> dict:
    """Write the MNLI files, the QQP-layout test file and its first-n-rows copies; return what was written."""
    pool = sentence_pool(glue_dir)
    rng = random.Random(SEED)
    mnli = work / "glue" / "MNLI"
    mnli.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in MNLI_ROWS.items():
        kind = split.split("_")[0]
        header = MNLI_HEADER + {"train": ["label1", "gold_label"],
                                "dev": ["label1", "label2", "label3", "label4", "label5", "gold_label"],
                                "test": []}[kind]
        path = mnli / f"{split}.tsv"
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(header) + "\n")
            for k in range(n):
                f.write(_mnli_row(rng, pool, k, kind) + "\n")
        written[str(path)] = {"rows": n, "bytes": path.stat().st_size}
    pred = work / "glue_pred" / "MNLI"  # MNLI-m test alone: the prediction step predicts nothing else
    pred.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mnli / "test_matched.tsv", pred / "test_matched.tsv")
    qqp = work / "glue_qqp" / "QQP"
    qqp.mkdir(parents=True, exist_ok=True)
    full = qqp / "test.tsv"
    lines = []
    with open(full, "w", encoding="utf-8", newline="\n") as f:
        f.write("id\tquestion1\tquestion2\n")
        for k in range(QQP_TEST_ROWS):
            line = f"{k}\t{rng.choice(pool)}\t{rng.choice(pool)}\n"
            f.write(line)
            if k < max(qqp_sizes, default=0):
                lines.append(line)
    written[str(full)] = {"rows": QQP_TEST_ROWS, "bytes": full.stat().st_size}
    for n in qqp_sizes:
        path = work / "qqp" / f"test_{n}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        if n >= QQP_TEST_ROWS:
            shutil.copyfile(full, path)
        else:
            path.write_text("id\tquestion1\tquestion2\n" + "".join(lines[:n]), encoding="utf-8")
        written[str(path)] = {"rows": min(n, QQP_TEST_ROWS), "bytes": path.stat().st_size}
    return {"sentences_in_pool": len(pool), "files": written}


# ---- the steps ----------------------------------------------------------------------------------------------

def run_step(name: str, cmd: list[str], code: Path, work: Path, rows: int | None = None) -> dict:
    """Run ``cmd`` in a subprocess with the code under ``code``; its wall time and peak RSS (this child only)."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(code)}
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=str(work), env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    peak_mb = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    result = {"command": " ".join(cmd), "rc": proc.returncode, "wall_s": round(wall, 2),
              "peak_rss_mb": round(peak_mb, 1), "log": str(log)}
    if rows is not None:
        result["rows"] = rows
        result["rows_per_s"] = round(rows / wall, 2)
    tail = log.read_text(errors="replace").strip().splitlines()
    if tail and tail[-1].startswith("{"):
        try:
            result["inside"] = json.loads(tail[-1])  # a snippet's own timing of its call
            result["inside"]["rows_per_s"] = round(result["inside"]["rows"] / result["inside"]["seconds"], 1)
        except (json.JSONDecodeError, KeyError, ZeroDivisionError):
            pass
    print(f"    rc {result['rc']}  {result['wall_s']} s  peak {result['peak_rss_mb']} MB"
          + (f"  {result['rows_per_s']} rows/s" if rows else ""), flush=True)
    return result


def git_commit(code: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def chosen_steps(p: argparse.ArgumentParser, text: str, allowed: tuple[str, ...]) -> list[str]:
    """The step names of a comma-separated ``--steps``, in order; a name not in ``allowed``, or none at all, is the
    parser's one-line error (exit 2)."""
    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in allowed]
    if unknown or not steps:
        p.error(f"--steps {text}: {'unknown: ' + ', '.join(unknown) if unknown else 'no step'}; choose from "
                f"{', '.join(allowed)}")
    return steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--work", help="folder for the generated files, runs and logs (default: a new temporary one)")
    p.add_argument("--code", default=str(REPO), help="checkout whose code the steps run (PYTHONPATH)")
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "glue_data")),
                   help="real GLUE files whose sentences are sampled (default: $GLUE_DIR)")
    p.add_argument("--qqp_rows", default="2000,8000",
                   help="comma-separated row counts of the QQP-layout prediction steps")
    p.add_argument("--steps", default=",".join(STEPS), help="which steps to run (comma-separated)")
    p.add_argument("--reuse_data", action="store_true", help="keep the files of an earlier call in --work")
    p.add_argument("--out", help="the JSON report (default: WORK/report.json)")
    args = p.parse_args(argv)
    work = Path(args.work).resolve() if args.work else None
    if work is not None and (REPO in work.parents or work == REPO):
        p.error("--work must be outside the repository (the generated files are never committed)")
    code = Path(args.code).resolve()
    try:
        sizes = [int(x) for x in args.qqp_rows.split(",") if x.strip()]
    except ValueError:
        p.error(f"--qqp_rows {args.qqp_rows}: not comma-separated row counts")
    if any(n < 1 for n in sizes):
        p.error(f"--qqp_rows {args.qqp_rows}: a row count must be at least 1")
    steps = set(chosen_steps(p, args.steps, STEPS))
    work = work or Path(tempfile.mkdtemp(prefix="mtdnn-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"code": str(code), "commit": git_commit(code), "python": sys.version.split()[0],
                    "machine": platform.platform(), "threads": 1, "work": str(work),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    if not (args.reuse_data and (work / "glue_qqp" / "QQP" / "test.tsv").is_file()):
        t0 = time.perf_counter()
        report["data"] = build_data(work, Path(args.glue_dir), sizes)
        report["data"]["build_s"] = round(time.perf_counter() - t0, 1)
        print(f"data built in {report['data']['build_s']} s under {work}", flush=True)
    py = sys.executable
    cache = work / "cache"
    glue = work / "glue"
    out = Path(args.out) if args.out else work / "report.json"

    def record(name: str, result: dict) -> None:
        report["steps"][name] = result
        out.write_text(json.dumps(report, indent=2))

    train = [py, "-m", "mt_dnn.train", "--tasks", "mnli", "--max_steps", "1", "--no_eval", "--glue_dir", str(glue),
             "--cache_dir", str(cache)]
    if "first_run" in steps:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / "runs", ignore_errors=True)
        record("first_run", run_step("first_run", train + ["--output_dir", str(work / "runs" / "first")], code, work))
    if "cached_run" in steps:
        shutil.rmtree(work / "runs" / "cached", ignore_errors=True)
        record("cached_run", run_step("cached_run", train + ["--output_dir", str(work / "runs" / "cached")], code,
                                      work))
    if "cached_load" in steps:
        record("cached_load", run_step("cached_load", [py, "-c", CACHED_LOAD, str(glue), str(cache), "mnli", "train"],
                                       code, work))
    model = work / "runs" / "first"
    if "predict_mnli_m" in steps:
        shutil.rmtree(work / "sub_mnli", ignore_errors=True)
        record("predict_mnli_m", run_step(
            "predict_mnli_m", [py, "-m", "mt_dnn.predict", "--checkpoint", str(model), "--glue_dir",
                               str(work / "glue_pred"), "--submission_dir", str(work / "sub_mnli"), "--tasks", "mnli"],
            code, work, rows=MNLI_ROWS["test_matched"]))
    if "predict_qqp" in steps:
        for n in sizes:
            rows = min(n, QQP_TEST_ROWS)
            record(f"predict_qqp_{rows}", run_step(
                f"predict_qqp_{rows}", [py, "-m", "mt_dnn.predict", "--checkpoint", str(model), "--task", "mnli",
                                        "--input", str(work / "qqp" / f"test_{n}.tsv"), "--text_a", "question1",
                                        "--text_b", "question2", "--output", str(work / f"pred_qqp_{rows}.jsonl")],
                code, work, rows=rows))
    if "tokenize_qqp_full" in steps:
        record("tokenize_qqp_full", run_step(
            "tokenize_qqp_full", [py, "-c", CACHED_LOAD, str(work / "glue_qqp"), "-", "qqp", "test"], code, work))
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")
    return 0 if all(s["rc"] == 0 for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
