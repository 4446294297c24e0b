"""Adopting finished runs made outside a campaign into its grid's folders, when their configuration matches."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from data_utils.task_def import ConfigError
from experiments.rapt.grid import NOT_IDENTITY, Run
from experiments.rapt.results import is_finished

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
