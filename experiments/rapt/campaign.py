"""A grid of ``mt_dnn.train`` runs that resumes where it stopped, and Table 2 of the paper from its results.

    python -m experiments.rapt.campaign --grid experiments/rapt/grids/pilot.yml --root runs/pilot [--jobs 2]
    python -m experiments.rapt.campaign --grid GRID.yml --root DIR --gpus 0,1,2,3      # one run per GPU
    python -m experiments.rapt.campaign --grid GRID.yml --root DIR --cluster slurm --partition gpu
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
      rapt_shared: {method: rapt, rapt_share_lower_layers: true, tasks: [rte], seeds: [1, 2, 3, 4]}
    best_of: {rapt_best_eta: [rapt_eta1.5, rapt_eta2]}   # optional derived report rows
    model: null                              # optional; --model wins
    glue_dir: null                           # optional; --glue_dir wins

A method's own ``tasks:`` (a subset of the grid's) and ``seeds:`` (any) replace the grid's for that method.

Each run lives in ``ROOT/<task>/<method name>/s<seed>-<hash>``: the hash covers every flag that can change the
result (normalised through mt_dnn.train's own parser), so a changed hyperparameter never reuses a folder; the
folder's ``flags.json`` says what it is. A rerun skips finished runs (metrics.jsonl ends with a ``"split":
"train"`` record) and continues unfinished ones: every run gets ``--resume``, which starts fresh when there is no
checkpoint and makes the trainer write one at each epoch end. Runs go seed by seed (all tasks and methods of seed
1 first), so a campaign cut short still has complete, paired seeds. ``ROOT/progress.log`` gets one line per event:
``timestamp<TAB>run<TAB>status<TAB>seconds``.

On this machine ``--jobs N`` runs N at a time (a ``concurrent.futures`` pool); on GPUs (``--gpus 0,1,2,3``, or
every GPU torch sees) each run gets its own (``CUDA_VISIBLE_DEVICES``), and ``--jobs`` defaults to one per GPU; on
CPU runs side by side get one thread each. A training dies with its campaign: killed outright (``kill -9``), the
campaign leaves no training behind (each writes its checkpoint and exits; the next start resumes it).
``--cluster slurm --partition P [--gpus_per_job 1 --cpus_per_job 8 --mem_gb 64 --time_min 240 --account A --qos
Q]`` submits the runs as one Slurm job array through submitit instead (``--jobs``: at most that many at once) and
returns; once the array has ended, the same command skips finished runs and submits the rest. A task stopped at
its time limit or preempted writes its checkpoint on Slurm's warning signal and is requeued. ``--print_commands``
prints the unfinished runs' ``mt_dnn.train`` commands, one a line, for any other scheduler (GNU parallel, an sbatch
array script): run them from this folder.

Several campaign processes may share one ROOT (two terminals, a ``--max_runs 1`` loop per worker, or a cluster
and a workstation): a run being trained holds the trainer's own ``<run folder>/.lock`` (its pid, host and start
time), and the others pass it by (``busy`` in ``--dry_run``); a lock whose process is gone is taken over.
``--tasks``, ``--methods`` and ``--seeds`` pick a slice of the grid.

This module is the command line; the work lives beside it: ``grid`` (grid files and run planning), ``launch``
(this machine's pool, Slurm job arrays, commands), ``jobs`` (one run as a job: the training subprocess, progress
log), ``costs`` (step costs and the dry run), ``adopt`` (runs made elsewhere), ``results`` (run folders as
results), ``report`` (Table 2), ``stats`` (paired statistics) and ``paper`` (the paper's rows and columns).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data_utils.task_def import ConfigError
from experiments.rapt.adopt import adopt_runs
from experiments.rapt.archive import load_archives, with_archive
from experiments.rapt.costs import dry_run
from experiments.rapt.grid import load_grid, plan_grids
from experiments.rapt.launch import LaunchOptions, SlurmOptions, commands, run_campaign
from experiments.rapt.report import write_report
from experiments.rapt.results import load_result, scan_results
from mt_dnn.cli_utils import run_cli, setup_logging
from mt_dnn.run_folder import is_finished


def _csv(value: str | None) -> list[str] | None:
    return [x for x in value.split(",") if x] if value else None


SLURM_FLAGS = ("partition", "gpus_per_job", "cpus_per_job", "mem_gb", "time_min", "account", "qos")


def parse_gpus(value: str | None) -> list[int] | None:
    """``--gpus``: ``0,1,3`` -> [0, 1, 3]; ``none`` -> [] (CPU); None -> None (detect)."""
    if value is None:
        return None
    if value.strip().lower() in ("none", "cpu", ""):
        return []
    ids = [x.strip() for x in value.split(",") if x.strip()]
    if not all(x.isdigit() for x in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus {value}: expected distinct comma-separated GPU numbers (0,1,...) or none")
    return [int(x) for x in ids]


def detect_gpus() -> list[int]:
    """This machine's GPUs for the runs: the numbers in CUDA_VISIBLE_DEVICES when it is set, else every GPU torch
    sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        if not all(x.isdigit() for x in ids):
            raise ConfigError(f"CUDA_VISIBLE_DEVICES={visible}: the campaign gives each run a GPU by number; "
                              "pass --gpus 0,1,... (or --gpus none)")
        return [int(x) for x in ids]
    import torch

    return list(range(torch.cuda.device_count()))


def _launch_options(args: argparse.Namespace) -> LaunchOptions:
    """Where and how the runs run; Slurm flags need --cluster slurm, --gpus is for this machine."""
    for name, low in (("jobs", 1), ("max_runs", 0), ("gpus_per_job", 0), ("cpus_per_job", 1), ("time_min", 1)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise ConfigError(f"--{name} must be >= {low}")
    if args.mem_gb is not None and args.mem_gb <= 0:
        raise ConfigError("--mem_gb must be > 0")
    given = {k: getattr(args, k) for k in SLURM_FLAGS if getattr(args, k) is not None}
    if args.cluster == "slurm":
        if args.gpus is not None:
            raise ConfigError("--gpus picks this machine's GPUs; with --cluster slurm use --gpus_per_job")
        return LaunchOptions(jobs=args.jobs, keep_checkpoints=args.keep_checkpoints, max_runs=args.max_runs,
                             cluster="slurm", slurm=SlurmOptions(**given))
    if given:
        raise ConfigError(f"--{next(iter(given))} is a Slurm setting: add --cluster slurm")
    return LaunchOptions(jobs=args.jobs, gpus=parse_gpus(args.gpus), keep_checkpoints=args.keep_checkpoints,
                         max_runs=args.max_runs)


def _in_slice(result, tasks: list[str] | None, methods: list[str] | None, seeds: list[int] | None) -> bool:
    """Whether an archived cell is in the ``--tasks/--methods/--seeds`` slice (the report covers the slice)."""
    return ((not tasks or result.task in tasks) and (not methods or result.name in methods)
            and (not seeds or result.seed in seeds))


def _finished_folder(root: Path, result) -> bool:
    """Whether ROOT holds a finished run folder of the archived cell's (task, method, seed), planned by these
    grids or not: the folder wins over the archive, so the archived number never stands in for it."""
    return any(is_finished(f) for f in (root / result.task / result.name).glob(f"s{result.seed}-*"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.campaign",
                                description="Run a grid of mt_dnn.train runs (a rerun resumes); report Table 2.")
    p.add_argument("--grid", nargs="+", metavar="GRID",
                   help="grid YAML (tasks, methods, seeds, flags); several grids on one root run in turn and share "
                        "one report (a run in two grids runs once); optional with --report")
    p.add_argument("--root", required=True, help="campaign folder: <task>/<method>/s<seed>-<hash>/, progress.log")
    p.add_argument("--dry_run", action="store_true", help="print the plan and time estimates; train and write "
                                                          "nothing (--adopt only checks its runs and says which "
                                                          "cells they would fill)")
    p.add_argument("--print_commands", action="store_true",
                   help="print the mt_dnn.train command of every run that is neither finished nor running, one a "
                        "line, for another scheduler (GNU parallel, an sbatch array); run them from this folder. "
                        "Writes each run's flags.json; runs nothing")
    p.add_argument("--jobs", type=int, help="runs at a time (default: one per GPU, 1 on CPU; on CPU each gets "
                                            "one thread when > 1); with --cluster slurm: at most this many jobs "
                                            "at once")
    p.add_argument("--gpus", help="this machine's GPUs for the runs, one per run at a time (e.g. 0,1,2,3; "
                                  "none = CPU; default: CUDA_VISIBLE_DEVICES, else every GPU torch sees)")
    p.add_argument("--cluster", choices=["local", "slurm"], default="local",
                   help="slurm: submit the runs as a Slurm job array (submitit) and return")
    slurm = p.add_argument_group("Slurm (with --cluster slurm)")
    slurm.add_argument("--partition", help="partition (default: the cluster's)")
    slurm.add_argument("--gpus_per_job", type=int, help="GPUs per run, as --gres=gpu:N (default 1; 0 = CPU "
                                                        "jobs; > 1 trains under torchrun)")
    slurm.add_argument("--cpus_per_job", type=int, help="CPUs per run (default 8; also its training's threads)")
    slurm.add_argument("--mem_gb", type=float, help="memory per run in GB (default 64)")
    slurm.add_argument("--time_min", type=int, help="time limit per job in minutes (default 240); a job that "
                                                    "reaches it is requeued and resumes from its checkpoint")
    slurm.add_argument("--account", help="account to charge")
    slurm.add_argument("--qos", help="quality of service")
    p.add_argument("--glue_dir", help="GLUE folder (wins over the grid's)")
    p.add_argument("--model", help="encoder for every run (wins over the grid's; default: the packaged MiniLM)")
    p.add_argument("--report", action="store_true",
                   help="only write ROOT/report.md and report.json (the grid's runs, or every run under ROOT)")
    p.add_argument("--step_costs", help="JSON {task: {method: seconds per step}} for --dry_run estimates (default: "
                                        "the shipped results/step_costs.json, CPU costs of the packaged MiniLM at "
                                        "batch 32 and length 128, for the runs with those settings)")
    p.add_argument("--costs_from", help="other campaign folders (comma-separated) whose finished runs give "
                                        "--dry_run its measured seconds per step")
    p.add_argument("--tasks", help="only these tasks of the grid (comma-separated)")
    p.add_argument("--methods", help="only these method names of the grid (comma-separated)")
    p.add_argument("--seeds", help="only these seeds of the grid (comma-separated)")
    p.add_argument("--max_runs", type=int, help="run at most this many unfinished runs now (runs that another "
                                                "campaign process is running are left to it)")
    p.add_argument("--keep_checkpoints", action="store_true", help="keep checkpoint/ of finished runs")
    p.add_argument("--order", help="the report's row order (comma-separated method or best-of names; the rest "
                                   "follow in grid order); a row's paired tests compare it with the rows above it")
    p.add_argument("--baselines", help="the report's paired tests compare each row with only these rows "
                                       "(comma-separated, e.g. standard,smart; default: every row above it); a row "
                                       "whose runs have not finished yet compares with nothing until they have")
    p.add_argument("--archive", metavar="FILE", nargs="+",
                   help="archived best dev results of runs whose folders are gone (JSON; see experiments.rapt.archive"
                        "; several files: their cells together, none in two): the report includes them where no run "
                        "folder covers the cell, and the campaign does not train those cells again (leave --archive "
                        "out to re-run them)")
    p.add_argument("--adopt", nargs="+", metavar="RUN_DIR",
                   help="copy these finished runs (same task, seed and flags as a grid cell, e.g. made by "
                        "run_scripts/run_<task>.sh) into the grid's folders, then continue (with --dry_run: "
                        "check them and print the plan with their cells as 'adopt', copying nothing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    root = Path(args.root)
    archived = load_archives(args.archive) if args.archive else []
    launch = _launch_options(args)
    if args.grid is None:
        if not args.report:
            raise ConfigError("--grid is required (except with --report)")
        print(write_report(root, with_archive(scan_results(root), archived), _csv(args.order), None,
                           _csv(args.baselines)), end="")
        return 0
    grids = [load_grid(g) for g in args.grid]
    try:
        seeds = [int(x) for x in _csv(args.seeds) or []] or None
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds}: expected comma-separated integers") from None
    tasks, methods = _csv(args.tasks), _csv(args.methods)
    runs = plan_grids(grids, root, args.model, args.glue_dir, tasks, methods, seeds)
    archived = [a for a in archived if _in_slice(a, tasks, methods, seeds) and not _finished_folder(root, a)]
    adopting: set[str] = set()
    if args.adopt:
        lines, adopting = adopt_runs(runs, args.adopt, dry=args.dry_run)
        for line in lines:
            print(line)
    # an archived cell with no run folder is done: its result is in the archive, so it is not trained again
    archived_keys = {(a.task, a.name, a.seed) for a in archived}
    is_archived = {run.label for run in runs
                   if (run.task, run.name, run.seed) in archived_keys and not run.folder.is_dir()}
    if args.dry_run:
        return dry_run(runs, root, args.jobs or 1, args.step_costs, _csv(args.costs_from), is_archived, adopting)
    if args.print_commands:
        for line in commands([run for run in runs if run.label not in is_archived], args.max_runs):
            print(line)
        return 0
    failed = 0
    if not args.report:
        if launch.cluster == "local" and launch.gpus is None:
            launch.gpus = detect_gpus()
        failed = run_campaign([run for run in runs if run.label not in is_archived], root, launch)
    results = [r for r in (load_result(run.folder, run.task, run.name) for run in runs) if r is not None]
    results = with_archive(results, archived)
    have = {(r.task, r.name, r.seed) for r in results}
    pending = [run for run in runs if (run.task, run.name, run.seed) not in have]  # no evaluation yet
    not_started = [f"{run.task}/{run.name}/s{run.seed}" for run in pending if not run.folder.is_dir()]
    no_evaluation = [run.folder.as_posix() for run in pending if run.folder.is_dir()]
    if any(r.finished for r in results):
        names = list(dict.fromkeys(_csv(args.order) or []))
        names += [n for n in dict.fromkeys([name for g in grids for name in g.methods] + [a.name for a in archived])
                  if n not in names]
        best_of = {k: v for g in grids for k, v in g.best_of.items()}
        title = ", ".join(Path(g).stem for g in args.grid)  # the grids it covers, wherever ROOT is
        print(write_report(root, results, names, best_of, _csv(args.baselines), not_started,
                           no_evaluation, title), end="")
    elif args.report:
        raise ConfigError(f"{root}: no finished runs of {' '.join(args.grid)} to report")
    if failed:
        print(f"error: {failed} run(s) failed; see {root / 'progress.log'} and each run's campaign.out",
              file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """Console-script entry point (``mt-dnn-campaign``)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
