"""Wall time of the smoke run and of 30 steps of the main job at the default thread count, 1 and 2 threads.

    GLUE_DIR=/path/to/glue_data python -m benchmarks.threads   # -> experiments/rapt/results/threads_<state>.json
    python -m benchmarks.threads --jobs smoke --threads default,1 --repeats 3 --label idle

Each (job, thread setting) is one ``python -m mt_dnn.train`` process, the settings in alternation within each
repetition. ``default`` passes no ``--threads`` and removes ``$OMP_NUM_THREADS`` from the process's environment,
so it measures what the CLI picks by itself (the cores this process may use, ``os.sched_getaffinity``); a number
is passed as ``--threads N``. The jobs:

- ``smoke``: the documented smoke run (RAPT on RTE: 2 steps of 8 rows, one evaluation on the first 32 dev rows);
- ``main``: 30 steps of training on all of RTE as the main job runs them (batch 32, the packaged encoder, the
  default length), standard training, no evaluation (``--max_steps 30 --no_eval``).

All runs read one feature cache, which one untimed warm-up process (the smoke job, whose training and dev
features cover both jobs') fills before the first timed run: no timed run tokenizes RTE, whichever comes first
(the report's ``cache_warmup`` says so and gives that process's own timings). Every run records its wall time,
its CPU time (user + system, from ``os.wait4``), the thread count its log reports, its training seconds (steps
only, from ``metrics.jsonl``), and the 1-minute load average before and after it. ``--label`` names the
machine's state (default: ``busy`` when the load average before the first run is above half the usable cores,
else ``idle``); the report goes to ``experiments/rapt/results/threads_<label>.json``
with, per job and setting, the median wall time. Run it on an idle machine for the idle figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.scale import REPO, git_commit
from data_utils import atomic
from experiments.rapt.versus_hf import cpu_model

SMOKE = ["--tasks", "rte", "--method", "rapt", "--batch_size", "8", "--max_steps", "2", "--max_eval_samples", "32"]
MAIN = ["--tasks", "rte", "--method", "standard", "--batch_size", "32", "--max_steps", "30", "--no_eval"]
JOBS = {"smoke": SMOKE, "main": MAIN}
RESULTS = REPO / "experiments" / "rapt" / "results"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


WARMUP_JOB = "smoke"  # tokenizes (and caches) RTE's training and dev files: every feature a job reads


def run_once(job: str, threads: str, work: Path, glue_dir: str, index: int | str) -> dict:
    """One training process of ``job`` with ``threads`` (``default`` or a count); its timings."""
    out = work / f"{job}-{threads}-{index}"
    cmd = [sys.executable, "-m", "mt_dnn.train", *JOBS[job], "--glue_dir", glue_dir, "--output_dir", str(out),
           "--cache_dir", str(work / "cache"), "--overwrite"]
    env = {**os.environ, "MT_DNN_NO_TQDM": "1"}
    if threads == "default":
        env.pop("OMP_NUM_THREADS", None)
    else:
        cmd += ["--threads", threads]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    log = work / f"{out.name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    used = re.search(r"(\d+) CPU threads", text)
    train = {}
    if (out / "metrics.jsonl").is_file():
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        train = next((r for r in reversed(records) if r.get("split") == "train"), {})
    result = {"job": job, "threads": threads, "threads_used": int(used.group(1)) if used else None, "rc": rc,
              "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
              "train_s": train.get("train_seconds"), "steps": train.get("steps"),
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    if rc != 0:
        result["log_tail"] = text.strip().splitlines()[-3:]
    print(json.dumps(result), flush=True)
    return result


def summary(runs: list[dict]) -> dict:
    """Per job and thread setting: the median wall, CPU and training seconds of the successful runs."""
    out: dict = {}
    for r in runs:
        if r["rc"] == 0:
            out.setdefault(r["job"], {}).setdefault(r["threads"], []).append(r)
    return {job: {t: {"runs": len(rs), "threads_used": rs[0]["threads_used"],
                      "wall_s": round(statistics.median(r["wall_s"] for r in rs), 2),
                      "cpu_s": round(statistics.median(r["cpu_s"] for r in rs), 2),
                      "train_s": round(statistics.median(r["train_s"] or 0 for r in rs), 2)}
                  for t, rs in by.items()} for job, by in out.items()}


def table(summ: dict, label: str, load: str) -> str:
    lines = [f"| job | threads | wall s ({label}, load {load}) | CPU s | training s |", "|---|---|---|---|---|"]
    for job, by in summ.items():
        for t, s in by.items():
            name = f"default ({s['threads_used']})" if t == "default" else t
            lines.append(f"| {job} | {name} | {s['wall_s']} | {s['cpu_s']} | {s['train_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", default="smoke,main", help="comma-separated: smoke, main")
    p.add_argument("--threads", default="default,1,2", help="comma-separated: default and/or counts")
    p.add_argument("--repeats", type=int, default=1, help="repetitions of every (job, setting)")
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "glue_data")))
    p.add_argument("--label", choices=("idle", "busy"), help="the machine's state (default: from the load average)")
    p.add_argument("--out", help="the JSON report (default: experiments/rapt/results/threads_<label>.json)")
    args = p.parse_args(argv)
    jobs = [j for j in args.jobs.split(",") if j]
    settings = [t for t in args.threads.split(",") if t]
    bad = [j for j in jobs if j not in JOBS] + [t for t in settings if t != "default" and not t.isdigit()]
    if bad or not jobs or not settings or args.repeats < 1:
        p.error(f"bad --jobs/--threads/--repeats: {', '.join(bad) or 'empty'}")
    if not (Path(args.glue_dir) / "RTE" / "train.tsv").is_file():
        p.error(f"--glue_dir {args.glue_dir}: no RTE/train.tsv")
    cores = usable_cores()
    load0 = os.getloadavg()[0]
    label = args.label or ("busy" if load0 > cores / 2 else "idle")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mtdnn-threads-") as tmp:
        work = Path(tmp)
        warmup = run_once(WARMUP_JOB, "default", work, args.glue_dir, "warmup")  # fills the cache, untimed
        if warmup["rc"] != 0:
            print(f"error: the warm-up run (the {WARMUP_JOB} job, filling the feature cache) failed: "
                  f"{' | '.join(warmup.get('log_tail', []))}", file=sys.stderr)
            return 1
        for rep in range(args.repeats):
            for job in jobs:
                order = settings[rep % len(settings):] + settings[:rep % len(settings)]  # rotate: spread drift
                for t in order:
                    runs.append(run_once(job, t, work, args.glue_dir, rep))
    loads = [r["load_before"] for r in runs] + [r["load_after"] for r in runs]
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    summ = summary(runs)
    report = {"label": label, "load_average_1min": load, "usable_cores": cores, "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
              "python": platform.python_version(),
              "commit": git_commit(REPO), "jobs": {j: JOBS[j] for j in jobs},
              "cache_warmup": {"note": f"one untimed {WARMUP_JOB} run filled the feature cache before the timed "
                                       "runs, so none of them tokenizes", **warmup},
              "summary": summ, "runs": runs,
              "table": table(summ, label, load)}
    import torch

    report["torch"] = torch.__version__
    out = Path(args.out) if args.out else RESULTS / f"threads_{label}.json"
    atomic.write_json(out, report)
    print(report["table"])
    print(f"wrote {out}")
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
