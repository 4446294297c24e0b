"""Grid files of a campaign: reading and checking them, and planning their runs (one folder per cell)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_utils import atomic
from data_utils.task_def import ConfigError, load_task_defs, safe_load_unique, select_tasks
from mt_dnn.run_folder import NOT_RESULT
from mt_dnn.flags import check_mapping

GRID_KEYS = {"tasks", "seeds", "flags", "task_flags", "methods", "best_of", "model", "glue_dir"}
# set by the campaign itself, never by a grid
RESERVED = {"tasks", "seed", "output_dir", "resume", "config"}
# flags that cannot change a run's result (mt_dnn.run_folder.ROLES): left out of the folder hash
NOT_IDENTITY = NOT_RESULT
# a method name is a folder of the campaign: never "." or ".." (no leading dot); dots inside are fine (rapt_eta1.5)
NAME_RE = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]*$")


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
    method_seeds: dict[str, list[int]] = field(default_factory=dict)  # a method with its own seeds

    def applies(self, name: str, task: str) -> bool:
        return task in self.method_tasks.get(name, [task])

    def seeds_of(self, name: str) -> list[int]:
        return self.method_seeds.get(name, self.seeds)

    @property
    def all_seeds(self) -> list[int]:
        """The grid's seeds, then any other seed a method asks for (ascending), each once."""
        extra = sorted({s for v in self.method_seeds.values() for s in v} - set(self.seeds))
        return list(dict.fromkeys(self.seeds)) + extra


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

    def recipe(self, data: bool = True) -> dict[str, Any]:
        """The recipe its training will record (mt_dnn.run_folder.recipe with the encoder files' digest, and with
        ``data`` the digests of the data files it reads, which reads them): what --resume and adoption compare."""
        from mt_dnn.config import resolve_lr
        from mt_dnn.model import resolve_model
        from mt_dnn.perturbation import build_regularizer
        from mt_dnn.run_folder import recipe, recipe_data, recipe_model_files

        cfg = dataclasses.replace(self.config, lr=resolve_lr(self.config)[0])
        options = dataclasses.asdict(build_regularizer(cfg.method, cfg.method_options).options)
        tasks = select_tasks(load_task_defs(cfg.task_def), cfg.tasks)
        out = {**recipe(cfg, tasks, options, resolve_model(cfg.model)), "model_files": recipe_model_files(cfg)}
        return {**out, "data": recipe_data(cfg, tasks)} if data else out

    def write_flags(self, folder: Path | None = None, **extra: Any) -> None:
        """``flags.json`` in its folder (or ``folder``): what the run is (task, method name, seed, the hash and
        the flags it covers, the grid's flags) and ``extra`` (``adopted_from``)."""
        folder = folder or self.folder
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_json(folder / "flags.json", {
            "task": self.task, "method_name": self.name, "seed": self.seed, "hash": self.folder.name.split("-")[-1],
            "identity": self.identity, "flags": self.flags, **extra}, default=str)


def _mapping(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: expected a mapping, got {type(value).__name__}")
    return value


def _names(value: Any, what: str) -> list[str]:
    """A list of names, or one comma-separated string of them."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of task names (or a comma-separated string), got {value!r}")
    return value


def _seeds(value: Any, what: str) -> list[int]:
    """A non-empty list of distinct integers (a string, a float or a boolean is not a seed)."""
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise ConfigError(f"{what} must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{what} repeat: {value}")
    return list(value)


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (unknown keys, task names, method names, reserved flags, each flag's value)."""
    from mt_dnn.train import train_flags

    path = Path(path)
    try:
        data = safe_load_unique(path.read_text())
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
    tasks = _names(data["tasks"], f"{path}: tasks")
    flags = _mapping(data.get("flags"), f"{path}: flags")
    known = load_task_defs(flags.get("task_def") or [])
    bad = [t for t in tasks if t not in known]
    if bad:
        raise ConfigError(f"{path}: unknown task(s) {', '.join(bad)}; valid tasks: {', '.join(known)}")
    seeds = _seeds(data["seeds"], f"{path}: seeds")
    methods, method_tasks, method_seeds = {}, {}, {}
    for name, mflags in _mapping(data["methods"], f"{path}: methods").items():
        name = str(name)
        if not NAME_RE.match(name):
            raise ConfigError(f"{path}: method name {name!r} must use only letters, digits and _.=+- "
                              f"and not start with a dot")
        mflags = dict(_mapping(mflags, f"{path}: method {name}"))
        only = mflags.pop("tasks", None)
        if only is not None:
            only = _names(only, f"{path}: method {name}: tasks")
            stray = [t for t in only if t not in tasks]
            if not only or stray:
                raise ConfigError(f"{path}: method {name}: tasks must be a non-empty subset of the grid's tasks "
                                  f"({', '.join(tasks)}); got {', '.join(stray) or '(none)'}")
            method_tasks[name] = only
        own_seeds = mflags.pop("seeds", None)
        if own_seeds is not None:
            method_seeds[name] = _seeds(own_seeds, f"{path}: method {name}: seeds")
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
        check_mapping(fl, train_flags(), f"{path}: {where}")  # each value's type, choices and range
    best_of = {}
    for name, members in _mapping(data.get("best_of"), f"{path}: best_of").items():
        if members is not None and not isinstance(members, list):
            raise ConfigError(f"{path}: best_of.{name} must be a list of method names, got {members!r}")
        missing = [m for m in members or [] if m not in methods]
        if not members or missing:
            raise ConfigError(f"{path}: best_of.{name} lists unknown method(s) "
                              f"{', '.join(map(str, missing)) or '(none)'}")
        if name in methods:
            raise ConfigError(f"{path}: best_of.{name} has the name of a method")
        best_of[str(name)] = [str(m) for m in members]
    return Grid(tasks=tasks, seeds=seeds, methods=methods, flags=flags, task_flags=task_flags, best_of=best_of,
                model=data.get("model"), glue_dir=data.get("glue_dir"), method_tasks=method_tasks,
                method_seeds=method_seeds)


def flag_argv(flags: dict[str, Any], parser: argparse.ArgumentParser | None = None) -> list[str]:
    """``{"lr": 3e-5, "rapt_share_lower_layers": True}`` -> ``["--lr", "3e-05", "--rapt_share_lower_layers"]``.

    ``None`` and ``False`` are left out (boolean flags of mt_dnn.train are off by default), except that a
    ``--no-<flag>`` or ``--no_<flag>`` the parser knows is written for ``False`` (``tf32: false`` ->
    ``--no_tf32``); a list repeats the flag (``task_def``).
    """
    known = {s for a in parser._actions for s in a.option_strings} if parser is not None else set()
    out: list[str] = []
    for key, value in flags.items():
        if value is None:
            continue
        if value is False:
            negative = [f for f in (f"--no-{key}", f"--no_{key}") if f in known]
            out += negative[:1]
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
        cfg = config_from_args(args)
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def identity_of(cfg, given: dict[str, Any]) -> dict[str, Any]:
    """The flags the grid gave, as mt_dnn.train resolved them (``3e-5`` and ``3.0e-05`` are one value); task
    definition files by what they define for the run's task (as --resume compares them), not by their paths, so
    an edited file makes a new folder."""
    from mt_dnn.perturbation import option_flags

    train_fields = {f.name for f in dataclasses.fields(cfg)}
    ident: dict[str, Any] = {"method": cfg.method}
    for key in given:
        if key in train_fields and key not in NOT_IDENTITY and key != "method":
            ident[key] = getattr(cfg, key)
    if "task_def" in ident:
        ident["task_def"] = {t.name: t.to_dict() for t in select_tasks(load_task_defs(cfg.task_def), cfg.tasks)}
    key_of = {f.field: f.key for f in option_flags(cfg.method)}
    for opt, value in cfg.method_options.items():
        ident[key_of[opt]] = value
    return dict(sorted(ident.items()))


def flags_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def check_slice(grids: list[Grid], tasks: list[str] | None, methods: list[str] | None, seeds: list[int] | None,
                where: str) -> None:
    """Each task, method and seed asked for must be in at least one of the grids (a one-line error if not)."""
    for wanted, have, what in ((tasks, [t for g in grids for t in g.tasks], "task"),
                               (methods, [m for g in grids for m in g.methods], "method"),
                               (seeds, [x for g in grids for x in g.all_seeds], "seed")):
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
    check_slice([grid], tasks, methods, seeds, "the grid")
    runs: list[Run] = []
    checked: dict[str, Any] = {}
    for seed in grid.all_seeds:
        if seeds and seed not in seeds:
            continue
        for task in grid.tasks:
            if tasks and task not in tasks:
                continue
            for name, mflags in grid.methods.items():
                if ((methods and name not in methods) or not grid.applies(name, task)
                        or seed not in grid.seeds_of(name)):
                    continue
                # the grid's model and GLUE folder, its flags (task and method flags win), then the caller's
                # model and GLUE folder, which win over everything the grid says
                flags: dict[str, Any] = {k: str(v) for k, v in (("model", grid.model), ("glue_dir", grid.glue_dir))
                                         if v is not None}
                flags["cache_dir"] = str(root / ".cache" / "features")
                flags.update(grid.flags)
                flags.update(grid.task_flags.get(task, {}))
                flags.update(mflags)
                flags.update({k: str(v) for k, v in (("model", model), ("glue_dir", glue_dir)) if v is not None})
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
    flags in two grids) is kept once. Each filter must name something in at least one of the grids. One method
    name with other flags in two grids is an error: the report keeps one row per name."""
    check_slice(grids, tasks, methods, seeds, "the grid(s)")
    runs: dict[Path, Run] = {}
    cells: dict[tuple[str, str, int], Run] = {}
    for grid in grids:
        picks = [None if wanted is None else [x for x in wanted if x in have]
                 for wanted, have in ((tasks, grid.tasks), (methods, grid.methods), (seeds, grid.all_seeds))]
        if any(pick == [] for pick in picks):
            continue  # the filters leave nothing of this grid
        for run in plan_runs(grid, root, model, glue_dir, *picks):
            other = cells.setdefault((run.task, run.name, run.seed), run)
            if other.folder != run.folder:
                differ = sorted(k for k in {**other.identity, **run.identity}
                                if other.identity.get(k) != run.identity.get(k))
                raise ConfigError(f"method {run.name} on {run.task}, seed {run.seed}: two grids give it other flags "
                                  f"({', '.join(differ)}); one report row per name: rename it in one grid")
            runs.setdefault(run.folder, run)
    return list(runs.values())
