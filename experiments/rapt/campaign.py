"""A grid of ``mt_dnn.train`` runs that spans sessions, and Table 2 of the paper from its results.

    python -m experiments.rapt.campaign --grid experiments/rapt/grids/pilot.yml --root runs/pilot [--jobs 2]
    python -m experiments.rapt.campaign --grid GRID.yml --root DIR --dry_run [--step_costs costs.json]
    python -m experiments.rapt.campaign --root DIR --report            # or with --grid: only the grid's runs
    python -m experiments.rapt.campaign --grid core.yml extra.yml eta.yml --root DIR   # one root, one report

The grid (YAML)::

    tasks: [rte, mrpc]
    seeds: [1, 2, 3]
    flags: {epochs: 3, lr: 3.0e-5}          # shared mt_dnn.train flags
    task_flags: {stsb: {batch_size: 16}}     # optional, per task (method flags still win)
    methods:                                 # name -> mt_dnn.train flags; each needs `method`
      standard: {method: standard}
      rapt_shared: {method: rapt, rapt_share_lower_layers: true}
    best_of: {rapt_best_eta: [rapt_eta1.5, rapt_eta2]}   # optional derived report rows
    model: null                              # optional; --model wins
    glue_dir: null                           # optional; --glue_dir wins

Each run lives in ``ROOT/<task>/<method name>/s<seed>-<hash>``: the hash covers every flag that can change the
result (normalised through mt_dnn.train's own parser), so a changed hyperparameter never reuses a folder; the
folder's ``flags.json`` says what it is. A rerun skips finished runs (metrics.jsonl ends with a ``"split":
"train"`` record) and continues unfinished ones: every run gets ``--resume``, which starts fresh when there is no
checkpoint and makes the trainer write one at each epoch end. Runs go seed by seed (all tasks and methods of seed
1 first), so a campaign cut short still has complete, paired seeds. ``ROOT/progress.log`` gets one line per event:
``timestamp<TAB>run<TAB>status<TAB>seconds``.

Several campaign processes may share one ROOT (two terminals, or a loop of ``--max_runs 1`` calls per worker):
a run being trained holds ``<run folder>/RUNNING`` (``host:pid``), and the others pass it by (``busy`` in
``--dry_run``). ``--tasks``, ``--methods`` and ``--seeds`` pick a slice of the grid.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from data_utils.task_def import ConfigError, load_task_defs
from mt_dnn.cli_utils import run_cli, setup_logging

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
GRID_KEYS = {"tasks", "seeds", "flags", "task_flags", "methods", "best_of", "model", "glue_dir"}
# set by the campaign itself, never by a grid
RESERVED = {"tasks", "seed", "output_dir", "resume", "config"}
# flags that cannot change a run's result: left out of the folder hash
NOT_IDENTITY = {"glue_dir", "cache_dir", "save_every_steps", "log_every", "device", "eval_batch_size"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.=+-]+$")

# ---- the paper (Table 2, BERT-base, dev rows; mean of 5 seeds) --------------------------------------------------

TASK_ORDER = ["mnli", "qqp", "rte", "qnli", "mrpc", "cola", "sst", "stsb"]
TASK_LABEL = {"mnli": "MNLI-m/mm", "qqp": "QQP", "rte": "RTE", "qnli": "QNLI", "mrpc": "MRPC", "cola": "CoLA",
              "sst": "SST", "stsb": "STS-B", "wnli": "WNLI"}
# the metrics the paper reports per task (our cola also computes acc; the paper shows only MCC)
PAPER_METRICS = {"mnli": ["acc"], "qqp": ["acc", "f1"], "rte": ["acc"], "qnli": ["acc"], "mrpc": ["acc", "f1"],
                 "cola": ["mcc"], "sst": ["acc"], "stsb": ["pearson", "spearman"], "wnli": ["acc"]}
METRIC_LABEL = {"acc": "Acc", "f1": "F1", "mcc": "MCC", "pearson": "P", "spearman": "S"}
# values per task in the column's order (mnli: matched, mismatched); "average" = the paper's Average column,
# which is the mean of all 12 numbers of the row (checked in the tests)
PAPER_DEV: dict[str, dict[str, Any]] = {
    "Standard": {"mnli": [84.1, 84.3], "qqp": [90.5, 87.3], "rte": [69.3], "qnli": [90.9], "mrpc": [86.9, 90.7],
                 "cola": [58.3], "sst": [92.4], "stsb": [89.9, 89.4], "average": 84.5},
    "SMART": {"mnli": [84.7, 85.2], "qqp": [90.9, 87.9], "rte": [70.8], "qnli": [91.4], "mrpc": [86.4, 90.5],
              "cola": [58.6], "sst": [92.8], "stsb": [90.2, 89.7], "average": 84.9},
    "RAPT (Embedding)": {"mnli": [85.2, 85.5], "qqp": [91.2, 88.3], "rte": [69.5], "qnli": [91.7],
                         "mrpc": [86.1, 90.1], "cola": [58.3], "sst": [92.9], "stsb": [90.1, 89.8], "average": 84.9},
    "RAPT (η=2)": {"mnli": [85.2, 85.5], "qqp": [91.2, 88.2], "rte": [70.6], "qnli": [91.8], "mrpc": [86.9, 90.8],
                   "cola": [58.7], "sst": [92.8], "stsb": [89.9, 89.6], "average": 85.1},
    "RAPT (BEST η)": {"mnli": [85.3, 85.6], "qqp": [91.2, 88.2], "rte": [70.6], "qnli": [91.8],
                      "mrpc": [86.9, 90.8], "cola": [58.7], "sst": [92.8], "stsb": [90.1, 89.7], "average": 85.1},
}


# ---- the grid ---------------------------------------------------------------------------------------------------

@dataclass
class Grid:
    """A parsed, checked grid file."""

    tasks: list[str]
    seeds: list[int]
    methods: dict[str, dict[str, Any]]
    flags: dict[str, Any] = field(default_factory=dict)
    task_flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    best_of: dict[str, list[str]] = field(default_factory=dict)
    model: str | None = None
    glue_dir: str | None = None
    method_tasks: dict[str, list[str]] = field(default_factory=dict)  # a method limited to some tasks

    def applies(self, name: str, task: str) -> bool:
        return task in self.method_tasks.get(name, [task])


@dataclass
class Run:
    """One (task, method name, seed, flags) cell of the grid, with its folder and resolved train config."""

    task: str
    name: str
    seed: int
    flags: dict[str, Any]  # mt_dnn.train flags without tasks/seed/output_dir/resume
    identity: dict[str, Any]  # the normalised flags the folder hash covers
    folder: Path
    argv: list[str] = field(default_factory=list)  # mt_dnn.train flags, as typed
    config: Any = None  # the resolved mt_dnn.trainer.TrainConfig

    @property
    def label(self) -> str:
        return f"{self.task}/{self.name}/{self.folder.name}"

    @property
    def method(self) -> str:
        return str(self.identity.get("method", "standard"))


def _mapping(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: expected a mapping, got {type(value).__name__}")
    return value


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (unknown keys, task names, method names, reserved flags)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read grid ({str(exc).splitlines()[0]})") from None
    data = _mapping(data, str(path))
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; "
                          f"known: {', '.join(sorted(GRID_KEYS))}")
    for key in ("tasks", "seeds", "methods"):
        if not data.get(key):
            raise ConfigError(f"{path}: `{key}` is missing or empty")
    tasks = [str(t) for t in (data["tasks"].split(",") if isinstance(data["tasks"], str) else data["tasks"])]
    flags = _mapping(data.get("flags"), f"{path}: flags")
    known = load_task_defs(flags.get("task_def") or [])
    bad = [t for t in tasks if t not in known]
    if bad:
        raise ConfigError(f"{path}: unknown task(s) {', '.join(bad)}; valid tasks: {', '.join(known)}")
    try:
        seeds = [int(s) for s in data["seeds"]]
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: seeds must be a list of integers") from None
    methods, method_tasks = {}, {}
    for name, mflags in _mapping(data["methods"], f"{path}: methods").items():
        name = str(name)
        if not NAME_RE.match(name):
            raise ConfigError(f"{path}: method name {name!r} must use only letters, digits and _.=+-")
        mflags = dict(_mapping(mflags, f"{path}: method {name}"))
        only = mflags.pop("tasks", None)
        if only is not None:
            only = [str(t) for t in (only.split(",") if isinstance(only, str) else only)]
            stray = [t for t in only if t not in tasks]
            if not only or stray:
                raise ConfigError(f"{path}: method {name}: tasks must be a non-empty subset of the grid's tasks "
                                  f"({', '.join(tasks)}); got {', '.join(stray) or '(none)'}")
            method_tasks[name] = only
        if "method" not in mflags:
            raise ConfigError(f"{path}: method {name} needs a `method:` flag (standard, smart, rapt, ...)")
        methods[name] = mflags
    task_flags = {str(t): _mapping(v, f"{path}: task_flags.{t}")
                  for t, v in _mapping(data.get("task_flags"), f"{path}: task_flags").items()}
    for where, fl in [("flags", flags), *[(f"task_flags.{t}", v) for t, v in task_flags.items()],
                      *[(f"methods.{n}", v) for n, v in methods.items()]]:
        taken = sorted(RESERVED & set(fl))
        if taken:
            raise ConfigError(f"{path}: {where} sets {', '.join(taken)}, which the campaign sets itself")
    best_of = {}
    for name, members in _mapping(data.get("best_of"), f"{path}: best_of").items():
        missing = [m for m in members or [] if m not in methods]
        if not members or missing:
            raise ConfigError(f"{path}: best_of.{name} lists unknown method(s) "
                              f"{', '.join(map(str, missing)) or '(none)'}")
        if name in methods:
            raise ConfigError(f"{path}: best_of.{name} has the name of a method")
        best_of[str(name)] = [str(m) for m in members]
    return Grid(tasks=tasks, seeds=seeds, methods=methods, flags=flags, task_flags=task_flags, best_of=best_of,
                model=data.get("model"), glue_dir=data.get("glue_dir"), method_tasks=method_tasks)


def flag_argv(flags: dict[str, Any], parser: argparse.ArgumentParser | None = None) -> list[str]:
    """``{"lr": 3e-5, "rapt_share_lower_layers": True}`` -> ``["--lr", "3e-05", "--rapt_share_lower_layers"]``.

    ``None`` and ``False`` are left out (every boolean flag of mt_dnn.train is off by default), except that a
    ``--no-<flag>`` the parser knows is written for ``False``; a list repeats the flag (``task_def``).
    """
    known = {s for a in parser._actions for s in a.option_strings} if parser is not None else set()
    out: list[str] = []
    for key, value in flags.items():
        if value is None:
            continue
        if value is False:
            if f"--no-{key}" in known:
                out.append(f"--no-{key}")
        elif value is True:
            out.append(f"--{key}")
        elif isinstance(value, (list, tuple)):
            for item in value:
                out += [f"--{key}", str(item)]
        else:
            out += [f"--{key}", str(value)]
    return out


def _parse_train_flags(parser: argparse.ArgumentParser, argv: list[str], where: str):
    """mt_dnn.train's own parsing and checks; an argparse error becomes a one-line ConfigError."""
    from mt_dnn.train import config_from_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        msg = lines[-1].split("error: ", 1)[-1] if lines else "bad flags"
        raise ConfigError(f"{where}: {msg}") from None
    try:
        cfg = config_from_args(args, parser)
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def identity_of(cfg, given: dict[str, Any]) -> dict[str, Any]:
    """The flags the grid gave, as mt_dnn.train resolved them (``3e-5`` and ``3.0e-05`` are one value)."""
    train_fields = {f.name for f in dataclasses.fields(cfg)}
    ident: dict[str, Any] = {"method": cfg.method}
    for key in given:
        if key in train_fields and key not in NOT_IDENTITY and key != "method":
            ident[key] = getattr(cfg, key)
    for opt, value in cfg.method_options.items():
        ident[f"{cfg.method}_{opt.rstrip('_')}"] = value
    return dict(sorted(ident.items()))


def flags_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def check_slice(grids: list[Grid], tasks: list[str] | None, methods: list[str] | None, seeds: list[int] | None,
                where: str) -> None:
    """Each task, method and seed asked for must be in at least one of the grids (a one-line error if not)."""
    for wanted, have, what in ((tasks, [t for g in grids for t in g.tasks], "task"),
                               (methods, [m for g in grids for m in g.methods], "method"),
                               (seeds, [x for g in grids for x in g.seeds], "seed")):
        have = list(dict.fromkeys(have))  # grid order, each once
        bad = [str(x) for x in wanted or [] if x not in have]
        if bad:
            raise ConfigError(f"{what}(s) {', '.join(bad)} not in {where} ({', '.join(map(str, have))})")


def plan_runs(grid: Grid, root: Path, model: str | None = None, glue_dir: str | None = None,
              tasks: list[str] | None = None, methods: list[str] | None = None,
              seeds: list[int] | None = None) -> list[Run]:
    """Every run of the grid (seed-major order), with its folder; all flags are checked by mt_dnn.train's parser.

    ``tasks``, ``methods`` and ``seeds`` keep only those cells of the grid (each must be in it).
    """
    from mt_dnn.train import build_parser

    parser = build_parser()
    model = model if model is not None else grid.model
    glue_dir = glue_dir if glue_dir is not None else grid.glue_dir
    check_slice([grid], tasks, methods, seeds, "the grid")
    runs: list[Run] = []
    checked: dict[str, Any] = {}
    for seed in grid.seeds:
        if seeds and seed not in seeds:
            continue
        for task in grid.tasks:
            if tasks and task not in tasks:
                continue
            for name, mflags in grid.methods.items():
                if (methods and name not in methods) or not grid.applies(name, task):
                    continue
                flags: dict[str, Any] = {}
                if model is not None:
                    flags["model"] = str(model)
                if glue_dir is not None:
                    flags["glue_dir"] = str(glue_dir)
                flags.setdefault("cache_dir", str(root / ".cache" / "features"))
                flags.update(grid.flags)
                flags.update(grid.task_flags.get(task, {}))
                flags.update(mflags)
                argv = flag_argv(flags, parser) + ["--tasks", task, "--seed", str(seed)]
                key = json.dumps(argv)
                if key not in checked:
                    checked[key] = _parse_train_flags(parser, argv, f"method {name} on {task}")
                cfg = dataclasses.replace(checked[key])
                ident = identity_of(cfg, flags)
                if "model" not in ident:
                    ident["model"] = cfg.model  # None = the packaged default encoder
                folder = root / task / name / f"s{seed}-{flags_hash(ident)}"
                cfg.output_dir = str(folder)
                runs.append(Run(task, name, seed, flags, ident, folder, argv, cfg))
    return runs


def plan_grids(grids: list[Grid], root: Path, model: str | None = None, glue_dir: str | None = None,
               tasks: list[str] | None = None, methods: list[str] | None = None,
               seeds: list[int] | None = None) -> list[Run]:
    """The runs of several grids on one root, in grid order; a folder planned twice (the same task, seed and
    flags in two grids) is kept once. Each filter must name something in at least one of the grids."""
    check_slice(grids, tasks, methods, seeds, "the grid(s)")
    runs: dict[Path, Run] = {}
    for grid in grids:
        picks = [None if wanted is None else [x for x in wanted if x in have]
                 for wanted, have in ((tasks, grid.tasks), (methods, grid.methods), (seeds, grid.seeds))]
        if any(pick == [] for pick in picks):
            continue  # the filters leave nothing of this grid
        for run in plan_runs(grid, root, model, glue_dir, *picks):
            runs.setdefault(run.folder, run)
    return list(runs.values())


# ---- run state --------------------------------------------------------------------------------------------------

def read_records(path: Path) -> list[dict]:
    """The JSON lines of a metrics file; a torn last line (a kill mid-write) is ignored."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s: skipping an unreadable line", path)
    return out


def is_finished(folder: Path) -> bool:
    records = read_records(folder / "metrics.jsonl")
    return bool(records) and records[-1].get("split") == "train"


LOCK_NAME = "RUNNING"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def lock_holder(folder: Path) -> str | None:
    """Who is running this run now (``host:pid``), or None. A lock left by a dead process on this host is stale.

    A lock from another host cannot be checked and counts as held; delete ``<folder>/RUNNING`` by hand if that
    machine is gone.
    """
    try:
        holder = (folder / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    host, _, pid = holder.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return None
    return holder or "?"


def try_lock(folder: Path) -> bool:
    """Claim a run for this process (``<folder>/RUNNING`` = ``host:pid``, created atomically); False = taken.

    Lets several campaign processes share one ROOT (e.g. one per terminal, or ``--max_runs 1`` loops) without
    two of them training the same run. A stale lock (dead process, this host) is taken over.
    """
    folder.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(folder / LOCK_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if lock_holder(folder) is not None:
                return False
            logger.warning("%s: taking over a stale lock", folder)
            (folder / LOCK_NAME).unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        return True
    return False


def unlock(folder: Path) -> None:
    (folder / LOCK_NAME).unlink(missing_ok=True)


def run_status(folder: Path) -> str:
    """``done`` (finished), ``busy`` (another live process holds its lock), ``resume`` (started: something was
    written) or ``run`` (nothing yet)."""
    if is_finished(folder):
        return "done"
    if lock_holder(folder) is not None:
        return "busy"
    started = any((folder / n).exists() for n in ("checkpoint", "checkpoint.old", "metrics.jsonl", "config.json"))
    return "resume" if started else "run"


class Progress:
    """Appends ``timestamp<TAB>run<TAB>status<TAB>seconds`` lines to ROOT/progress.log (thread-safe)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, run: str, status: str, seconds: float = 0.0) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{run}\t{status}\t{seconds:.1f}\n"
        with self.lock, open(self.path, "a") as f:
            f.write(line)


def train_command(run: Run) -> list[str]:
    """``--resume`` always: no checkpoint = a fresh start, and it makes the trainer checkpoint at each epoch end."""
    return [sys.executable, "-m", "mt_dnn.train", *run.argv, "--output_dir", str(run.folder), "--resume"]


def run_env(jobs: int) -> dict[str, str]:
    """The subprocess environment: the repository importable, no progress bars, one thread each when jobs > 1."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["MT_DNN_NO_TQDM"] = "1"
    if jobs > 1:  # N runs side by side: one thread each, or they fight over the cores
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = "1"
    return env


def execute(run: Run, status: str, env: dict[str, str], progress: Progress, keep_checkpoints: bool) -> bool:
    """Run (or resume) one training in a subprocess; output goes to ``<folder>/campaign.out``. True = finished."""
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "flags.json").write_text(json.dumps(
        {"task": run.task, "method_name": run.name, "seed": run.seed, "hash": run.folder.name.split("-")[-1],
         "identity": run.identity, "flags": run.flags}, indent=2, default=str))
    cmd = train_command(run)
    progress.log(run.label, "resume" if status == "resume" else "start")
    logger.info("%s %s", "resuming" if status == "resume" else "starting", run.label)
    t0 = time.time()
    with open(run.folder / "campaign.out", "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.time() - t0
    if rc == 0 and is_finished(run.folder):
        progress.log(run.label, "done", seconds)
        logger.info("done %s (%.0f s)", run.label, seconds)
        if not keep_checkpoints:  # a finished run never resumes; its checkpoint is only disk
            for name in ("checkpoint", "checkpoint.old"):
                shutil.rmtree(run.folder / name, ignore_errors=True)
        return True
    tail = [ln for ln in (run.folder / "campaign.out").read_text().splitlines() if ln.strip()][-1:]
    progress.log(run.label, f"failed rc={rc}", seconds)
    logger.error("%s failed (rc %d): %s  [see %s]", run.label, rc, tail[0] if tail else "",
                 run.folder / "campaign.out")
    return False


# ---- estimates --------------------------------------------------------------------------------------------------

def total_steps(cfg, rows: int | None) -> int | None:
    """Optimizer steps of a single-task run, as the trainer counts them (None when the train size is unknown)."""
    if cfg.max_steps:
        return int(cfg.max_steps)
    if rows is None:
        return None
    if cfg.max_train_samples:
        rows = min(rows, cfg.max_train_samples)
    micro = math.ceil(rows / cfg.batch_size)
    return cfg.epochs * math.ceil(micro / cfg.grad_accumulation_steps)


class CostKey(NamedTuple):
    """What makes steps cost alike: task, method, RAPT's shared-lower-layers path, SMART's K, batch, length, model."""

    task: str
    method: str | None
    shared: bool
    smart_k: Any
    batch_size: Any
    max_seq_len: Any
    model: Any

    def as_standard(self) -> "CostKey":
        """The standard-fine-tuning key with this one's task, batch, length and model."""
        return self._replace(method="standard", shared=False, smart_k=None)


def cost_key(task: str, identity: dict[str, Any]) -> CostKey:
    return CostKey(task, identity.get("method"), bool(identity.get("rapt_share_lower_layers", False)),
                   identity.get("smart_k"), identity.get("batch_size"), identity.get("max_seq_len"),
                   identity.get("model"))


def measured_step_costs(*roots: Path) -> tuple[dict[tuple, list[float]], dict[tuple, list[float]]]:
    """Seconds per step of every finished run under the ROOTs: by (task, method name) and by :func:`cost_key`."""
    by_name: dict[tuple, list[float]] = {}
    by_key: dict[tuple, list[float]] = {}
    seen: set[str] = set()
    for flags_file in sorted(f for root in roots for f in root.glob("*/*/*/flags.json")):
        folder = flags_file.parent
        records = read_records(folder / "metrics.jsonl")
        if not records or records[-1].get("split") != "train" or not records[-1].get("steps"):
            continue
        info = json.loads(flags_file.read_text())
        origin = info.get("adopted_from") or str(folder.resolve())  # an adopted copy is the same run
        if origin in seen:
            continue
        seen.add(origin)
        cost = float(records[-1]["train_seconds"]) / float(records[-1]["steps"])
        by_name.setdefault((info["task"], info["method_name"]), []).append(cost)
        by_key.setdefault(cost_key(info["task"], info["identity"]), []).append(cost)
    return by_name, by_key


def step_cost(run: Run, by_name: dict, by_key: dict, table: dict) -> tuple[float | None, str]:
    """(seconds per step, where it came from) for one run."""
    if (run.task, run.name) in by_name:
        v = by_name[(run.task, run.name)]
        return float(np.mean(v)), f"measured ({len(v)} run{'s' * (len(v) > 1)})"
    k = cost_key(run.task, run.identity)
    if k in by_key:
        v = by_key[k]
        return float(np.mean(v)), f"measured {run.method} ({len(v)})"
    for task_key in (run.task, "*"):
        costs = table.get(task_key, {})
        for m in (run.name, run.method):
            if m in costs:
                return float(costs[m]), f"--step_costs {task_key}.{m}"
    return scaled_cost(run.task, k, by_key, table)


def scaled_cost(task: str, key: CostKey, by_key: dict, table: dict) -> tuple[float | None, str]:
    """A method never measured on this task: this task's standard step cost (measured, else --step_costs) times
    the method's cost ratio to standard measured on the other tasks (same batch, length and model)."""
    if key.method == "standard":
        return None, "unknown"
    base = by_key.get(key.as_standard())
    base_cost = float(np.mean(base)) if base else table.get(task, {}).get("standard")
    ratios = {k.task: float(np.mean(v)) / float(np.mean(by_key[k.as_standard()]))
              for k, v in by_key.items()
              if k.task != task and k._replace(task=task) == key and k.as_standard() in by_key}
    if base_cost is None or not ratios:
        return None, "unknown"
    ratio = float(np.mean(list(ratios.values())))
    return float(base_cost) * ratio, f"standard x {ratio:.2f} ({', '.join(sorted(ratios))})"


def done_steps(folder: Path) -> int:
    """Steps a started run has already done (its last record's step: the trainer truncates to its checkpoint)."""
    records = read_records(folder / "metrics.jsonl")
    return int(records[-1].get("step", 0)) if records else 0


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run(runs: list[Run], root: Path, jobs: int, step_costs_file: str | None,
            costs_from: list[str] | None = None) -> int:
    """Print the plan (done / resume / run) with estimated CPU time per run and in total; runs nothing."""
    table: dict = {}
    if step_costs_file:
        try:
            table = json.loads(Path(step_costs_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{step_costs_file}: cannot read step costs ({exc})") from None
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ConfigError(f"{step_costs_file}: expected {{task: {{method: seconds per step}}}}")
    for other in costs_from or []:
        if not Path(other).is_dir():
            raise ConfigError(f"--costs_from {other}: no such campaign folder")
    by_name, by_key = measured_step_costs(root, *map(Path, costs_from or []))
    defs = _task_defs()
    total, unknown = 0.0, 0
    counts = {"done": 0, "busy": 0, "resume": 0, "run": 0}
    print(f"{'status':7s} {'run':40s} {'steps':>7s} {'s/step':>7s}  {'estimate':>9s}  source")
    for run in runs:
        status = run_status(run.folder)
        counts[status] += 1
        task = defs.get(run.task)
        rows = task.splits_of("train")[0].rows if task and task.splits_of("train") else None
        steps = total_steps(run.config, rows)
        if status == "done":
            print(f"{status:7s} {run.label:40s} {steps if steps is not None else '?':>7}")
            continue
        started = status in ("resume", "busy")
        left = None if steps is None else max(steps - (done_steps(run.folder) if started else 0), 0)
        cost, source = step_cost(run, by_name, by_key, table)
        est = None if cost is None or left is None else cost * left
        if est is None:
            unknown += 1
        else:
            total += est
        print(f"{status:7s} {run.label:40s} {left if left is not None else '?':>7} "
              f"{f'{cost:.3f}' if cost is not None else '?':>7}  {fmt_time(est):>9s}  {source}")
    todo = counts["busy"] + counts["resume"] + counts["run"]
    print(f"\n{len(runs)} runs: {counts['done']} done, "
          + (f"{counts['busy']} running now, " if counts["busy"] else "")
          + f"{counts['resume']} to resume, {counts['run']} to run")
    known = f"{fmt_time(total)}" if unknown < todo or not todo else "?"
    print(f"estimated CPU time of the {todo} left: {known}"
          + (f" (+ {unknown} run(s) with no step cost: give --step_costs)" if unknown else "")
          + (f"; about {fmt_time(total / jobs)} of wall time with --jobs {jobs}" if jobs > 1 and total else ""))
    return 0


# config.json fields that do not decide what a finished run is (paths, logging, resume plumbing, derived values)
ADOPT_IGNORED = NOT_IDENTITY | {"output_dir", "resume", "overwrite", "max_bad_steps"}


def _origin(folder: Path) -> str:
    """The folder a run was first made in (a copy of a copy points at the original)."""
    info = folder / "flags.json"
    if info.is_file():
        origin = json.loads(info.read_text()).get("adopted_from")
        if origin:
            return str(origin)
    return str(folder.resolve())


def adopt_runs(runs: list[Run], sources: list[str]) -> list[str]:
    """Copy finished runs made outside the campaign (e.g. by ``run_scripts/run_<task>.sh``) into the grid's
    folders, so the campaign skips them. A source must be finished and its ``config.json`` must equal the grid
    cell's resolved configuration in every field that can change the result (task, seed, lr, method options, ...);
    anything else is an error naming the source and the first field that differs. Returns one line per source."""
    from mt_dnn.perturbation import REGISTRY

    plan: list[tuple[Path, Run]] = []
    for src in map(Path, sources):  # check every source before copying any
        cfg_file = src / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"{src}: no config.json (not an mt_dnn.train run folder)")
        if not is_finished(src):
            raise ConfigError(f"{src}: not a finished run (metrics.jsonl has no final train record)")
        have = json.loads(cfg_file.read_text())
        best: tuple[list[str], Run] | None = None
        for run in runs:
            if str(have.get("tasks")) != run.task or have.get("seed") != run.seed:
                continue
            want = dataclasses.asdict(run.config)
            want["method_options"] = dataclasses.asdict(REGISTRY[run.config.method].Options(
                **run.config.method_options))
            diff = [k for k in want if k not in ADOPT_IGNORED and k in have and want[k] != have[k]]
            if best is None or len(diff) < len(best[0]):
                best = (diff, run)
        if best is None:
            raise ConfigError(f"{src}: no grid cell has task {have.get('tasks')!r} and seed {have.get('seed')!r}")
        diff, run = best
        if diff:
            k = diff[0]
            raise ConfigError(f"{src}: closest grid cell {run.label} differs in {k}: {have[k]!r} "
                              f"(grid: {getattr(run.config, k)!r})")
        if not is_finished(run.folder) and run.folder.exists():
            raise ConfigError(f"{run.folder}: an unfinished run is there; remove it to adopt {src}")
        plan.append((src, run))
    lines = []
    for src, run in plan:
        if is_finished(run.folder):
            lines.append(f"{src}: {run.label} is already finished; left as is")
            continue
        tmp = run.folder.with_name(run.folder.name + ".adopting")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
        (tmp / "flags.json").write_text(json.dumps(
            {"task": run.task, "method_name": run.name, "seed": run.seed,
             "hash": run.folder.name.split("-")[-1], "identity": run.identity, "flags": run.flags,
             "adopted_from": _origin(src)}, indent=2, default=str))
        tmp.rename(run.folder)
        lines.append(f"{src}: adopted as {run.label}")
    return lines


def run_campaign(runs: list[Run], root: Path, jobs: int, keep_checkpoints: bool, max_runs: int | None) -> int:
    """Skip finished runs, run or resume the rest (``jobs`` at a time); returns how many failed."""
    progress = Progress(root / "progress.log")
    todo: list[tuple[Run, str]] = []
    finished = busy = 0
    try:
        for run in runs:
            status = run_status(run.folder)
            if status == "done":
                progress.log(run.label, "skip")
                finished += 1
            elif max_runs is not None and len(todo) >= max_runs:
                continue
            elif status == "busy" or not try_lock(run.folder):  # another campaign process is running it
                logger.info("%s is running in another process (%s); skipped", run.label, lock_holder(run.folder))
                busy += 1
            else:
                todo.append((run, status))
        logger.info("%d runs: %d finished, %d running elsewhere, %d to run now (%d at a time)", len(runs),
                    finished, busy, len(todo), jobs)
        env = run_env(jobs)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda rs: execute(rs[0], rs[1], env, progress, keep_checkpoints), todo))
    finally:
        for run, _ in todo:
            unlock(run.folder)
    return sum(not ok for ok in results)


# ---- results ----------------------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    """One dev evaluation of a run (all its dev splits at one step)."""

    epoch: int
    step: int
    train_seconds: float
    metrics: dict[str, dict[str, float]]  # split name -> metric -> value
    primary: float  # mean over the splits of the task's primary metric


@dataclass
class RunResult:
    task: str
    name: str
    seed: int
    folder: Path
    finished: bool
    evaluations: list[Evaluation]
    train_seconds: float | None = None  # the final train record's (training steps only), when finished
    steps: int | None = None
    metric: str = "score"  # the task's primary metric: what Evaluation.primary is

    @property
    def best(self) -> Evaluation | None:
        """The evaluation with the highest primary metric (the earliest on ties)."""
        best = None
        for e in self.evaluations:
            if best is None or e.primary > best.primary:
                best = e
        return best


@functools.lru_cache(maxsize=1)
def _task_defs() -> dict:
    return load_task_defs()


def primary_metric(task: str, records: list[dict]) -> str:
    defs = _task_defs()
    if task in defs:
        return defs[task].primary_metric
    return next(iter(records[0]["metrics"]))


def evaluations_of(dev: list[dict], primary: str) -> list[Evaluation]:
    """A run's dev records (of one task) grouped by (epoch, step), in file order; scored by ``primary``."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in dev:
        groups.setdefault((int(r["epoch"]), int(r["step"])), []).append(r)
    out = []
    for (epoch, step), recs in groups.items():
        metrics = {str(r.get("split_name", "dev")): {k: float(v) for k, v in r["metrics"].items()} for r in recs}
        score = float(np.mean([m[primary] for m in metrics.values()]))
        out.append(Evaluation(epoch, step, max(float(r["train_seconds"]) for r in recs), metrics, score))
    return out


def load_result(folder: Path, task: str | None = None, name: str | None = None) -> RunResult | None:
    """A run folder's results (task, method name and seed from flags.json, else from the path and records)."""
    records = read_records(folder / "metrics.jsonl")
    if not records:
        return None
    info = {}
    if (folder / "flags.json").is_file():
        info = json.loads((folder / "flags.json").read_text())
    task = info.get("task") or task or folder.parent.parent.name
    name = info.get("method_name") or name or folder.parent.name
    seed = info.get("seed")
    if seed is None:
        m = re.match(r"s(\d+)", folder.name)
        seed = int(m.group(1)) if m else int(records[0].get("seed", 0))
    last = records[-1]
    done = last.get("split") == "train"
    dev = [r for r in records if r.get("split") == "dev" and r.get("task") == task]
    metric = primary_metric(task, dev) if dev else "score"
    return RunResult(task, name, int(seed), folder, done, evaluations_of(dev, metric),
                     float(last["train_seconds"]) if done and "train_seconds" in last else None,
                     int(last["steps"]) if done and "steps" in last else None, metric)


def scan_results(root: Path) -> list[RunResult]:
    """Every run under ``ROOT/<task>/<method name>/s<seed>*``; of several folders for one (task, method, seed),
    the newest wins (an older folder is a run with other hyperparameters)."""
    chosen: dict[tuple[str, str, int], RunResult] = {}
    for metrics in sorted(root.glob("*/*/s*/metrics.jsonl")):
        if metrics.parts[-4].startswith("."):
            continue
        res = load_result(metrics.parent)
        if res is None:
            continue
        key = (res.task, res.name, res.seed)
        if key in chosen:
            old = chosen[key]
            newer = res if metrics.stat().st_mtime >= (old.folder / "metrics.jsonl").stat().st_mtime else old
            logger.warning("%s/%s seed %d: several run folders (%s, %s); using %s", res.task, res.name, res.seed,
                           old.folder.name, res.folder.name, newer.folder.name)
            res = newer
        chosen[key] = res
    return list(chosen.values())


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def cell_keys(task: str, evaluation: Evaluation) -> list[tuple[str, str]]:
    """(split name, metric) pairs of a task's column, in the paper's order."""
    out = []
    for split, metrics in evaluation.metrics.items():
        wanted = PAPER_METRICS.get(task) or list(metrics)
        out += [(split, m) for m in wanted if m in metrics]
    return out


def task_order(tasks: set[str]) -> list[str]:
    return [t for t in TASK_ORDER if t in tasks] + sorted(tasks - set(TASK_ORDER))


def training_times(by: dict[str, dict[str, dict[int, RunResult]]], names: list[str], tasks: list[str]) -> dict:
    """Table 3 style, per task and method: mean training minutes and seconds per step over seeds, and the
    ratios to ``standard`` and ``smart`` where those ran. The runs' own clocks: compare runs made under the same
    conditions (the same --jobs, nothing else on the machine); experiments.rapt.speed is the controlled measure."""
    out: dict[str, dict] = {}
    for task in tasks:
        rows = {}
        for name in names:
            runs = [r for r in by.get(name, {}).get(task, {}).values() if r.train_seconds and r.steps]
            if runs:
                rows[name] = {"minutes": float(np.mean([r.train_seconds for r in runs])) / 60.0,
                              "s_per_step": float(np.mean([r.train_seconds / r.steps for r in runs])),
                              "runs": len(runs)}
        for name, row in rows.items():
            for base in ("standard", "smart"):
                if base in rows:
                    row[f"/{base}"] = row["s_per_step"] / rows[base]["s_per_step"]
        if rows:
            out[task] = rows
    return out


BASELINES = ("standard", "smart")  # first rows of a report without a grid; paired tests compare against them


def build_report(results: list[RunResult], method_order: list[str] | None = None,
                 best_of: dict[str, list[str]] | None = None) -> dict:
    """Table 2 from finished runs: cells (mean ± std over seeds of each run's best dev evaluation, x100),
    task scores, the Average, best-of rows, the paper's dev rows, and paired comparisons."""
    finished = [r for r in results if r.finished and r.best is not None]
    by: dict[str, dict[str, dict[int, RunResult]]] = {}
    for r in finished:
        by.setdefault(r.name, {}).setdefault(r.task, {})[r.seed] = r
    tasks = task_order({r.task for r in finished})
    rest = sorted(set(by) - set(method_order or []), key=lambda m: (BASELINES.index(m) if m in BASELINES else 2, m))
    names = [m for m in (method_order or []) if m in by] + rest  # without a grid: standard, smart, then the rest
    chosen: dict[str, dict[str, str]] = {}
    for group, members in (best_of or {}).items():
        picks = {}
        for task in tasks:
            have = [m for m in members if m in by and task in by[m]]
            common = set.intersection(*(set(by[m][task]) for m in have)) if have else set()
            # compared on the seeds every member has (a 3-seed mean against a single seed would not be fair)
            scores = {m: np.mean([r.best.primary for s, r in by[m][task].items() if not common or s in common])
                      for m in have}
            if scores:
                picks[task] = max(scores, key=lambda m: (scores[m], -members.index(m)))
        if picks:
            by[group] = {t: by[m][t] for t, m in picks.items()}
            chosen[group] = picks
            names.append(group)
    rows: dict[str, dict] = {}
    for name in names:
        row: dict[str, Any] = {"tasks": {}}
        for task in tasks:
            runs = by[name].get(task)
            if not runs:
                continue
            seeds = sorted(runs)
            keys = cell_keys(task, runs[seeds[0]].best)
            cells = []
            for split, metric in keys:
                values = [runs[s].best.metrics[split][metric] * 100 for s in seeds]
                mean, std = _mean_std(values)
                cells.append({"split": split, "metric": metric, "mean": mean, "std": std, "values": values})
            row["tasks"][task] = {"seeds": seeds, "cells": cells, "score": float(np.mean([c["mean"] for c in cells])),
                                  "best_epochs": {s: runs[s].best.epoch for s in seeds}}
            if name in chosen and task in chosen[name]:
                row["tasks"][task]["chosen"] = chosen[name][task]
        complete = all(t in row["tasks"] for t in tasks)
        row["average"] = float(np.mean([row["tasks"][t]["score"] for t in tasks])) if complete and tasks else None
        seed_lists = {tuple(row["tasks"][t]["seeds"]) for t in tasks} if complete else set()
        same = next(iter(seed_lists)) if len(seed_lists) == 1 else ()  # a best-of row may mix seed counts
        row["average_std"] = _mean_std(_seed_averages(by[name], tasks, list(same)))[1] if len(same) >= 2 else None
        rows[name] = row
    paper = {}
    for pname, prow in PAPER_DEV.items():
        have = [t for t in tasks if t in prow]
        paper[pname] = {"tasks": {t: prow[t] for t in have},
                        "average_these_tasks": float(np.mean([np.mean(prow[t]) for t in have])) if have else None,
                        "average_paper": prow["average"]}
    return {"tasks": tasks, "methods": names, "rows": rows, "best_of": chosen, "paper": paper,
            "times": training_times(by, [n for n in names if n not in chosen], tasks),
            "paired": paired_comparisons(by, names, tasks, best_of or {}),
            "unfinished": sorted(r.folder.as_posix() for r in results if not r.finished)}


def _task_score(result: RunResult, task: str) -> float:
    """A run's task score (x100): the mean of the task's metrics at its best evaluation, as in the Average column."""
    best = result.best
    return float(np.mean([best.metrics[split][metric] * 100 for split, metric in cell_keys(task, best)]))


def _seed_averages(runs: dict[str, dict[int, RunResult]], tasks: list[str], seeds: list[int]) -> list[float]:
    """Each seed's Average: the mean over ``tasks`` of that seed's task score (``runs``: task -> seed -> run)."""
    return [float(np.mean([_task_score(runs[t][s], t) for t in tasks])) for s in seeds]


def _paired(task: str, a: str, b: str, seeds: list[int], xa: np.ndarray, xb: np.ndarray) -> dict:
    """Mean difference, wins, sd of the differences and the paired t-test p-value (>= 2 seeds, unequal diffs)."""
    from scipy.stats import ttest_rel

    diff = xa - xb
    p = sd = None
    if len(seeds) >= 2:
        sd = float(diff.std(ddof=1))
        if float(np.ptp(diff)) > 1e-12:  # equal differences: t is undefined
            p = float(ttest_rel(xa, xb).pvalue)
    return {"task": task, "a": a, "b": b, "seeds": seeds, "n": len(seeds), "mean_diff": float(diff.mean()),
            "sd_diff": sd, "a_wins": int((diff > 0).sum()), "b_wins": int((diff < 0).sum()), "p_value": p}


def paired_comparisons(by: dict, names: list[str], tasks: list[str], best_of: dict[str, list[str]]) -> list[dict]:
    """For each task and each pair (A after B in the row order: B is the baseline) with common seeds: the mean
    difference of the best primary metric (x100), how many seeds A beats B, the sd of the per-seed differences and
    the paired t-test p-value (>= 2 seeds). Then, per pair, the same on the average (task ``"average"``): each
    seed's mean over all tasks of the task score (mean of the task's metrics, as the Average column), for seeds
    where both methods have every task (``"over"`` lists the tasks averaged). While a campaign is part-way, the
    tasks with the most common seeds may have more seeds than all tasks together: then a second average row covers
    only those tasks."""
    out, averages = [], []
    for i, a in enumerate(names):
        for b in names[:i]:
            if a in best_of.get(b, ()) or b in best_of.get(a, ()):
                continue  # a best-of row is one of its members
            common = {t: set(by[a].get(t, {})) & set(by[b].get(t, {})) for t in tasks}
            for task in tasks:
                seeds = sorted(common[task])
                if seeds:
                    out.append(_paired(task, a, b, seeds, *(
                        np.array([by[m][task][s].best.primary * 100 for s in seeds]) for m in (a, b))))
            most = max((len(c) for c in common.values()), default=0)
            top = [t for t in tasks if len(common[t]) == most]
            for over in ([tasks, top] if most >= 2 and top != tasks else [tasks]):
                seeds = sorted(set.intersection(*(common[t] for t in over))) if over else []
                if seeds and (over == tasks or len(seeds) >= 2):  # a partial average only where it can be tested
                    averages.append(_paired("average", a, b, seeds, *(
                        np.array(_seed_averages(by[m], over, seeds)) for m in (a, b))) | {"over": over})
    order = {t: i for i, t in enumerate(tasks)}
    return sorted(out, key=lambda c: order[c["task"]]) + averages


def _header(task: str, cells: list[dict] | None) -> str:
    metrics = PAPER_METRICS.get(task) or ([c["metric"] for c in cells] if cells else [])
    return f"{TASK_LABEL.get(task, task)} {'/'.join(METRIC_LABEL.get(m, m) for m in metrics)}"


def format_cell(cells: list[dict]) -> str:
    parts = []
    for c in cells:
        parts.append(f"{c['mean']:.1f}" + (f" ± {c['std']:.1f}" if c["std"] is not None else ""))
    return " / ".join(parts)


def per_seed_markdown(report: dict) -> list[str]:
    """One table per task: each run's best dev metrics (x100) per seed, and the epoch they came from."""
    lines = ["", "## Per seed", "", "Each run's best dev evaluation (x100; the task's metrics as in Table 2) and the "
             "epoch it came from (counted from 1; metrics.jsonl counts from 0); best-of rows are left out (they "
             "repeat their members' runs)."]
    for task in report["tasks"]:
        rows = {name: row["tasks"][task] for name, row in report["rows"].items()
                if task in row["tasks"] and name not in report["best_of"]}
        seeds = sorted({s for t in rows.values() for s in t["seeds"]})
        lines += ["", f"{_header(task, None)}:", "", "| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---" * (len(seeds) + 1) + "|"]
        for name, t in rows.items():
            cells = []
            for s in seeds:
                if s in t["seeds"]:
                    i = t["seeds"].index(s)
                    values = "/".join(f"{c['values'][i]:.1f}" for c in t["cells"])
                    cells.append(f"{values} (ep {t['best_epochs'][s] + 1})")
                else:
                    cells.append("-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(report: dict, title: str) -> str:
    tasks, rows = report["tasks"], report["rows"]
    lines = [f"# Table 2 (dev): {title}", "",
             "Each cell: mean ± sample std (ddof=1) over seeds of each run's best dev evaluation (best by the task's "
             "primary metric; all the task's metrics from that same evaluation), x100. Average = mean over tasks of "
             "the task score (mean of its metrics); its ± is the std over seeds of each seed's Average, when every task "
             "has the same seeds; `-` when a method lacks a task.", ""]
    head = [_header(t, None) for t in tasks]
    lines += ["| Method | " + " | ".join(head) + " | Average | Seeds |", "|---" * (len(tasks) + 3) + "|"]
    for name, row in rows.items():
        cells = [format_cell(row["tasks"][t]["cells"]) if t in row["tasks"] else "-" for t in tasks]
        seeds = sorted({len(v["seeds"]) for v in row["tasks"].values()})
        avg = "-" if row["average"] is None else format_cell([{"mean": row["average"], "std": row["average_std"]}])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg} | {'/'.join(map(str, seeds))} |")
    for group, picks in report["best_of"].items():
        lines += ["", f"`{group}` takes, per task, the member with the best mean primary dev metric over the seeds "
                  "its members share (a choice made on dev, as the paper's BEST η): " + ", ".join(f"{t}: {m}" for t, m in picks.items()) + "."]
    lines += ["", "## The paper (BERT-base, dev, mean of 5 seeds)", "",
              "Same columns. 'Average (these tasks)' is computed as ours; 'Paper Average' is the published column "
              "(the mean of all 12 numbers of the row, over all 8 GLUE tasks).", "",
              "| Method | " + " | ".join(head) + " | Average (these tasks) | Paper Average |",
              "|---" * (len(tasks) + 3) + "|"]
    for pname, prow in report["paper"].items():
        cells = ["/".join(f"{v:.1f}" for v in prow["tasks"][t]) if t in prow["tasks"] else "-" for t in tasks]
        avg = f"{prow['average_these_tasks']:.1f}" if prow["average_these_tasks"] is not None else "-"
        lines.append(f"| {pname} | " + " | ".join(cells) + f" | {avg} | {prow['average_paper']:.1f} |")
    lines += per_seed_markdown(report)
    if report.get("times"):
        lines += ["", "## Training time (Table 3 style)", "",
                  "Mean over seeds of each finished run's training time (training steps only, evaluation excluded) "
                  "and seconds per step; ratios of seconds per step. These are the runs' own clocks: comparable "
                  "only between runs made under the same conditions.", "",
                  "| Task | Method | Runs | Minutes | s/step | / standard | / smart |", "|---|---|---|---|---|---|---|"]
        for task, rows_t in report["times"].items():
            for name, t in rows_t.items():
                ratios = [f"{t[k]:.2f}" if k in t else "-" for k in ("/standard", "/smart")]
                lines.append(f"| {TASK_LABEL.get(task, task)} | {name} | {t['runs']} | {t['minutes']:.1f} | "
                             f"{t['s_per_step']:.2f} | {ratios[0]} | {ratios[1]} |")
    lines += ["", "## Paired comparisons (runs with the same seed)", "",
              "Per task on the primary metric; 'Average' on each seed's mean of the task scores (as the Average "
              "column; seeds where both methods have every task; 'Average (tasks)' over only the tasks with the "
              "most common seeds, while other tasks lack seeds). mean(A-B) x100; sd = sample std of the per-seed "
              "differences; wins = seeds where A > B (ties count for neither); p = paired t-test "
              "(scipy.stats.ttest_rel), shown with >= 2 seeds whose differences are not all equal. Verdict: "
              "'beyond seed noise' when p < 0.05, else 'within seed noise'.", "",
              "| Task | A | B | Seeds | mean(A-B) | sd | A wins | B wins | p | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["paired"]:
        p = f"{c['p_value']:.3f}" if c["p_value"] is not None else "-"
        sd = f"{c['sd_diff']:.2f}" if c.get("sd_diff") is not None else "-"
        verdict = ("-" if c["p_value"] is None else "beyond seed noise" if c["p_value"] < 0.05
                   else "within seed noise")
        task = TASK_LABEL.get(c["task"], c["task"])
        if c["task"] == "average":
            over = c["over"]
            task = "Average" + ("" if over == report["tasks"] else
                                " (" + ", ".join(TASK_LABEL.get(t, t) for t in over) + ")")
        lines.append(f"| {task} | {c['a']} | {c['b']} | {c['n']} | {c['mean_diff']:+.2f} | {sd} | {c['a_wins']} | "
                     f"{c['b_wins']} | {p} | {verdict} |")
    if report["unfinished"]:
        lines += ["", f"Left out (not finished): {len(report['unfinished'])} run(s)."]
    return "\n".join(lines) + "\n"


def write_report(root: Path, results: list[RunResult], method_order: list[str] | None,
                 best_of: dict[str, list[str]] | None) -> str:
    """Write ROOT/table2.md and ROOT/table2.json; returns the markdown."""
    report = build_report(results, method_order, best_of)
    if not report["tasks"]:
        raise ConfigError(f"{root}: no finished runs to report")
    text = report_markdown(report, str(root))
    root.mkdir(parents=True, exist_ok=True)
    (root / "table2.md").write_text(text)
    (root / "table2.json").write_text(json.dumps(report, indent=2, default=str))
    return text


# ---- CLI --------------------------------------------------------------------------------------------------------

def _csv(value: str | None) -> list[str] | None:
    return [x for x in value.split(",") if x] if value else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.campaign",
                                description="Run a grid of mt_dnn.train runs across sessions; report Table 2.")
    p.add_argument("--grid", nargs="+", metavar="GRID",
                   help="grid YAML (tasks, methods, seeds, flags); several grids on one root run in turn and share "
                        "one report (a run in two grids runs once); optional with --report")
    p.add_argument("--root", required=True, help="campaign folder: <task>/<method>/s<seed>-<hash>/, progress.log")
    p.add_argument("--dry_run", action="store_true", help="print the plan and time estimates; run nothing")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (each with one thread when > 1)")
    p.add_argument("--glue_dir", help="GLUE folder (wins over the grid's)")
    p.add_argument("--model", help="encoder for every run (wins over the grid's; default: the packaged MiniLM)")
    p.add_argument("--report", action="store_true",
                   help="only write ROOT/table2.md and table2.json (the grid's runs, or every run under ROOT)")
    p.add_argument("--step_costs", help="JSON {task: {method: seconds per step}} for --dry_run estimates")
    p.add_argument("--costs_from", help="other campaign folders (comma-separated) whose finished runs give "
                                        "--dry_run its measured seconds per step")
    p.add_argument("--tasks", help="only these tasks of the grid (comma-separated)")
    p.add_argument("--methods", help="only these method names of the grid (comma-separated)")
    p.add_argument("--seeds", help="only these seeds of the grid (comma-separated)")
    p.add_argument("--max_runs", type=int, help="run at most this many unfinished runs now (runs that another "
                                                "campaign process is running are left to it)")
    p.add_argument("--keep_checkpoints", action="store_true", help="keep checkpoint/ of finished runs")
    p.add_argument("--adopt", nargs="+", metavar="RUN_DIR",
                   help="copy these finished runs (same task, seed and flags as a grid cell, e.g. made by "
                        "run_scripts/run_<task>.sh) into the grid's folders, then continue")
    args = p.parse_args(argv)
    setup_logging()
    root = Path(args.root)
    if args.jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    if args.max_runs is not None and args.max_runs < 0:
        raise ConfigError("--max_runs must be >= 0")
    if args.grid is None:
        if not args.report:
            raise ConfigError("--grid is required (except with --report)")
        print(write_report(root, scan_results(root), None, None), end="")
        return 0
    grids = [load_grid(g) for g in args.grid]
    try:
        seeds = [int(x) for x in _csv(args.seeds) or []] or None
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds}: expected comma-separated integers") from None
    runs = plan_grids(grids, root, args.model, args.glue_dir, _csv(args.tasks), _csv(args.methods), seeds)
    if args.adopt:
        for line in adopt_runs(runs, args.adopt):
            print(line)
    if args.dry_run:
        return dry_run(runs, root, args.jobs, args.step_costs, _csv(args.costs_from))
    failed = 0
    if not args.report:
        failed = run_campaign(runs, root, args.jobs, args.keep_checkpoints, args.max_runs)
    results = [r for r in (load_result(run.folder, run.task, run.name) for run in runs) if r is not None]
    if any(r.finished for r in results):
        names = list(dict.fromkeys(name for g in grids for name in g.methods))
        best_of = {k: v for g in grids for k, v in g.best_of.items()}
        print(write_report(root, results, names, best_of), end="")
    elif args.report:
        raise ConfigError(f"{root}: no finished runs of {' '.join(args.grid)} to report")
    if failed:
        print(f"error: {failed} run(s) failed; see {root / 'progress.log'} and each run's campaign.out",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
