"""Adopting finished runs made outside a campaign into its grid's folders, when their configuration matches."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_utils.task_def import ConfigError
from experiments.rapt.grid import Run
from mt_dnn.run_folder import is_finished, recipe_of


def _origin(folder: Path) -> str:
    """The folder a run was first made in (a copy of a copy points at the original)."""
    info = folder / "flags.json"
    if info.is_file():
        origin = json.loads(info.read_text()).get("adopted_from")
        if origin:
            return str(origin)
    return str(folder.resolve())


def plan_adoption(runs: list[Run], sources: list[str]) -> list[tuple[Path, Run]]:
    """Each source (a finished run made outside the campaign, e.g. by ``run_scripts/run_<task>.sh``) with the
    grid cell it is: the recipe in its ``config.json`` (what ``--resume`` compares: every setting that can change
    the result) must equal the cell's. Anything else is an error naming the source and the first setting that
    differs; every source is checked before any is copied, and nothing is written here."""
    plan: list[tuple[Path, Run]] = []
    for src in map(Path, sources):
        cfg_file = src / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"{src}: no config.json (not an mt_dnn.train run folder)")
        if not is_finished(src):
            raise ConfigError(f"{src}: not a finished run (metrics.jsonl has no final train record)")
        have_config = json.loads(cfg_file.read_text())
        have = recipe_of(have_config)
        best: tuple[list[str], Run, dict] | None = None
        for run in runs:
            if str(have_config.get("tasks")) != run.task or have_config.get("seed") != run.seed:
                continue
            want = run.recipe(data="data" in have)  # the data's digests, where the run recorded them
            diff = [k for k in want if k in have and want[k] != have[k]]
            if best is None or len(diff) < len(best[0]):
                best = (diff, run, want)
        if best is None:
            raise ConfigError(f"{src}: no grid cell has task {have_config.get('tasks')!r} and seed "
                              f"{have_config.get('seed')!r}")
        diff, run, want = best
        if diff:
            k = diff[0]
            if k == "data":
                files = sorted(f for f in {**have[k], **want[k]} if have[k].get(f) != want[k].get(f))
                raise ConfigError(f"{src}: closest grid cell {run.label} reads other data: {', '.join(files)} differ "
                                  f"from the grid's GLUE folder")
            raise ConfigError(f"{src}: closest grid cell {run.label} differs in {k}: {have[k]!r} (grid: {want[k]!r})")
        if not is_finished(run.folder) and run.folder.exists():
            raise ConfigError(f"{run.folder}: an unfinished run is there; remove it to adopt {src}")
        plan.append((src, run))
    return plan


def adopt_runs(runs: list[Run], sources: list[str], dry: bool = False) -> tuple[list[str], set[str]]:
    """Copy the finished runs ``sources`` into the grid's folders (:func:`plan_adoption` checks them first), so
    the campaign skips them; with ``dry``, only say what would be copied. Returns one line per source and the
    labels of the cells that are (or, with ``dry``, would be) adopted."""
    lines, adopted = [], set()
    for src, run in plan_adoption(runs, sources):
        if is_finished(run.folder):
            lines.append(f"{src}: {run.label} is already finished; left as is")
            continue
        adopted.add(run.label)
        if dry:
            lines.append(f"{src}: would adopt as {run.label} (a dry run copies nothing)")
            continue
        tmp = run.folder.with_name(run.folder.name + ".adopting")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
        run.write_flags(tmp, adopted_from=_origin(src))
        tmp.rename(run.folder)
        lines.append(f"{src}: adopted as {run.label}")
    return lines, adopted
