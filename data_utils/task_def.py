"""Task definitions: GLUE tasks as data (``glue_tasks.yml``), loaded into validated dataclasses.

A task block in YAML becomes one :class:`TaskDef`. Loading is strict: an unknown key, a missing key or
a value outside its choices raises :class:`ConfigError` naming the task (and the file), so a typo never
silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from data_utils import atomic

logger = logging.getLogger(__name__)

TASK_TYPES = ("classification", "regression")
INPUT_KINDS = ("single", "pair")
METRICS = ("acc", "f1", "mcc", "pearson", "spearman")
LOSSES = ("cross_entropy", "mse")
REG_LOSSES = ("sym_kl", "mse")
SPLIT_KINDS = ("train", "dev", "test")
METRICS_OF = {"classification": ("acc", "f1", "mcc"), "regression": ("pearson", "spearman")}
# task and split names become file names (the feature cache, run folders): letters, digits, _ and - only
SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")
# data_dir, a split's file and a submission file name: relative paths of such parts (dots inside, never first)
SAFE_PATH_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class ConfigError(ValueError):
    """A bad task definition, flag or configuration: reported to the user as one line."""


@dataclass(frozen=True)
class SplitDef:
    """One file of a task: ``kind`` is train, dev or test (from the split's name)."""

    name: str
    kind: str
    file: str
    header: bool = True
    columns: tuple[str, ...] | None = None  # column names when the file has no header line
    rows: int | None = None  # official number of data rows, when known
    submission: str | None = None  # GLUE server file name (test splits)


@dataclass(frozen=True)
class RobustnessSet:
    """An evaluation-only file scored beside dev splits (see :mod:`data_utils.robustness`)."""

    file: str  # in the robustness folder
    splits: dict[str, str]  # our dev split name -> the key of its examples in the file
    text_a: str
    text_b: str | None
    label: str
    label_ids: dict[int, str]  # the file's label id -> our label name


@dataclass(frozen=True)
class TaskDef:
    """One task as data. ``labels`` is None for regression."""

    name: str
    data_dir: str
    type: str
    input: str
    metrics: tuple[str, ...]
    loss: str
    reg_loss: str
    dropout: float
    text_a: str
    text_b: str | None
    label: str
    index: str
    baseline_label: str
    splits: dict[str, SplitDef]
    labels: tuple[str, ...] | None = None
    head: str | None = None  # predict with another task's head (AX uses mnli's)
    score_range: tuple[float, float] | None = None
    robustness: dict[str, RobustnessSet] = field(default_factory=dict)  # set name -> set; evaluation only

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "regression" else len(self.labels or ())

    @property
    def head_name(self) -> str:
        return self.head or self.name

    def splits_of(self, kind: str) -> list[SplitDef]:
        return [s for s in self.splits.values() if s.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        """The YAML block this task was loaded from (round-trips through :func:`parse_task_block`)."""
        out = dataclasses.asdict(self)
        out.pop("name")
        for key in ("labels", "metrics", "score_range"):
            if out[key] is not None:
                out[key] = list(out[key])
        out["splits"] = {}
        for sname, s in self.splits.items():
            d = {"file": s.file}
            if not s.header:
                d["header"] = False
                d["columns"] = list(s.columns or ())
            for key in ("rows", "submission"):
                if getattr(s, key) is not None:
                    d[key] = getattr(s, key)
            out["splits"][sname] = d
        if not out["robustness"]:
            out.pop("robustness")
        return {k: v for k, v in out.items() if v is not None or k == "text_b"}


_REQUIRED = ("data_dir", "type", "input", "metrics", "loss", "reg_loss", "dropout", "text_a", "text_b",
             "label", "index", "baseline_label", "splits")
_OPTIONAL = ("labels", "head", "score_range", "robustness")
_SPLIT_KEYS = ("file", "header", "columns", "rows", "submission")


def _check_choice(where: str, key: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{where}: {key} is {value!r}; choose one of {', '.join(choices)}")


def check_name(where: str, what: str, name: str) -> None:
    """A task or split name: only letters, digits, _ and - (it becomes part of file names)."""
    if not SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: the {what} must use only letters, digits, _ and - (it names files)")


def _check_relative_path(where: str, key: str, value: Any, parts: bool = True) -> str:
    """``value`` as a path inside its parent folder: relative, no ``..``, parts of letters, digits, ``_.-``
    (not starting with a dot); one part only when ``parts`` is False."""
    text = value if isinstance(value, str) else ""
    pieces = text.split("/") if parts else [text]
    if not all(SAFE_PATH_PART.fullmatch(p) for p in pieces):
        kind = "a relative path of" if parts else "a file name of"
        raise ConfigError(f"{where}: {key} must be {kind} letters, digits, _, . and - (not starting with a dot), "
                          f"got {value!r}")
    return text


def _check_metrics(where: str, task_type: str, metrics: list, labels: tuple[str, ...] | None) -> None:
    """Each metric must suit the task: acc/f1/mcc for classification (f1 only with 2 labels: the F1 of the
    second), pearson/spearman for regression."""
    fits = METRICS_OF[task_type]
    wrong = [m for m in metrics if m not in fits]
    if wrong:
        raise ConfigError(f"{where}: metric(s) {', '.join(wrong)} do not apply to a {task_type} task; "
                          f"choose from {', '.join(fits)}")
    if "f1" in metrics and len(labels or ()) != 2:
        raise ConfigError(f"{where}: metric f1 needs exactly 2 labels (it is the F1 of the second), the task has "
                          f"{len(labels or ())}; use acc or mcc")


def _check_score_range(where: str, value: Any) -> tuple[float, float]:
    """``[low, high]``: two finite numbers, low < high."""
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok or not value[0] < value[1]:
        raise ConfigError(f"{where}: score_range must be [low, high], two finite numbers with low < high, "
                          f"got {value!r}")
    return float(value[0]), float(value[1])


def _parse_split(where: str, name: str, block: Any) -> SplitDef:
    where = f"{where}, split {name!r}"
    check_name(where, "split name", name)
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: expected a mapping, got {block!r}")
    unknown = sorted(set(block) - set(_SPLIT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_SPLIT_KEYS)}")
    if "file" not in block:
        raise ConfigError(f"{where}: missing key 'file'")
    kind = next((k for k in SPLIT_KINDS if name.startswith(k)), None)
    if kind is None:
        raise ConfigError(f"{where}: a split's name must start with train, dev or test")
    header = block.get("header", True)
    columns = block.get("columns")
    if not isinstance(header, bool):
        raise ConfigError(f"{where}: header must be true or false, got {header!r}")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise ConfigError(f"{where}: columns must be a list of column names, got {columns!r}")
    if columns and len(set(columns)) != len(columns):
        raise ConfigError(f"{where}: columns name a column twice: {columns}")
    if not header and not columns:
        raise ConfigError(f"{where}: a file without a header needs 'columns'")
    if header and columns:
        raise ConfigError(f"{where}: 'columns' is only for files without a header")
    rows = block.get("rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
        raise ConfigError(f"{where}: rows must be a non-negative integer, got {rows!r}")
    submission = block.get("submission")
    if submission and kind != "test":
        raise ConfigError(f"{where}: only test splits have a submission file")
    if submission is not None:
        _check_relative_path(where, "submission", submission, parts=False)
    return SplitDef(name=name, kind=kind, file=_check_relative_path(where, "file", block["file"]), header=header,
                    columns=tuple(str(c) for c in columns) if columns else None, rows=rows,
                    submission=submission)


def parse_task_block(name: str, block: Any, source: str = "task definitions") -> TaskDef:
    """Validate one YAML block and build its :class:`TaskDef`."""
    where = f"{source}: task {name!r}"
    check_name(where, "task name", name)
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: expected a mapping, got {block!r}")
    unknown = sorted(set(block) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"valid keys: {', '.join(_REQUIRED + _OPTIONAL)}")
    missing = [k for k in _REQUIRED if k not in block]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    _check_choice(where, "type", block["type"], TASK_TYPES)
    _check_choice(where, "input", block["input"], INPUT_KINDS)
    _check_choice(where, "loss", block["loss"], LOSSES)
    _check_choice(where, "reg_loss", block["reg_loss"], REG_LOSSES)
    metrics = block["metrics"]
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError(f"{where}: metrics must be a non-empty list")
    for m in metrics:
        _check_choice(where, "metric", m, METRICS)
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"{where}: metrics repeat: {metrics}")
    labels = block.get("labels")
    if block["type"] == "classification":
        if not isinstance(labels, list) or len(labels) < 2:
            raise ConfigError(f"{where}: a classification task needs 'labels' (a list of at least 2)")
        labels = tuple(str(x) for x in labels)
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}: labels repeat: {list(labels)}")
        if str(block["baseline_label"]) not in labels:
            raise ConfigError(f"{where}: baseline_label {block['baseline_label']!r} is not one of {list(labels)}")
        if block["loss"] != "cross_entropy":
            raise ConfigError(f"{where}: a classification task uses loss cross_entropy")
    else:
        if labels is not None:
            raise ConfigError(f"{where}: a regression task has no 'labels'")
        try:
            float(block["baseline_label"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: baseline_label must be a number for regression") from None
        if block["loss"] != "mse" or block["reg_loss"] != "mse":
            raise ConfigError(f"{where}: a regression task uses loss mse and reg_loss mse")
    _check_metrics(where, block["type"], metrics, labels)
    for key in ("text_a", "label", "index"):
        if not isinstance(block[key], str) or not block[key]:
            raise ConfigError(f"{where}: {key} must be a column name, got {block[key]!r}")
    if block["text_b"] is not None and not isinstance(block["text_b"], str):
        raise ConfigError(f"{where}: text_b must be a column name or null, got {block['text_b']!r}")
    if block.get("head") is not None and not isinstance(block["head"], str):
        raise ConfigError(f"{where}: head must be a task name, got {block['head']!r}")
    if block["input"] == "pair" and not block["text_b"]:
        raise ConfigError(f"{where}: a pair task needs text_b")
    if block["input"] == "single" and block["text_b"]:
        raise ConfigError(f"{where}: a single-sentence task has text_b: null")
    dropout = block["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{where}: dropout must be a number in [0, 1), got {dropout!r}")
    splits_block = block["splits"]
    if not isinstance(splits_block, dict) or not splits_block:
        raise ConfigError(f"{where}: splits must be a non-empty mapping")
    splits = {str(k): _parse_split(where, str(k), v) for k, v in splits_block.items()}
    if sum(s.kind == "train" for s in splits.values()) > 1:
        raise ConfigError(f"{where}: at most one train split")
    score_range = block.get("score_range")
    if score_range is not None:
        if block["type"] != "regression":
            raise ConfigError(f"{where}: score_range is [low, high] for a regression task")
        score_range = _check_score_range(where, score_range)
    data_dir = _check_relative_path(where, "data_dir", block["data_dir"])
    robustness = {}
    if block.get("robustness") is not None:
        from data_utils.robustness import parse_robustness

        robustness = parse_robustness(where, block["robustness"], labels,
                                      {n for n, sp in splits.items() if sp.kind == "dev"}, block["input"])
    return TaskDef(
        name=name, data_dir=data_dir, type=block["type"], input=block["input"],
        metrics=tuple(metrics), loss=block["loss"], reg_loss=block["reg_loss"], dropout=float(dropout),
        text_a=str(block["text_a"]), text_b=str(block["text_b"]) if block["text_b"] else None,
        label=str(block["label"]), index=str(block["index"]), baseline_label=str(block["baseline_label"]),
        splits=splits, labels=labels, head=block.get("head"), score_range=score_range, robustness=robustness)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping naming one key twice (safe_load keeps the last value)."""


def _unique_mapping(loader: _UniqueKeyLoader, node, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            repeated = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1})", key_node.start_mark)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises ``yaml.YAMLError`` on a mapping naming a key twice."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _read_yaml(path: Path | str, text: str | None = None) -> dict[str, Any]:
    try:
        data = safe_load_unique(text if text is not None else Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: task definition file not found") from None
    except OSError as exc:  # a folder, a file it may not read
        raise ConfigError(f"{path}: cannot read the task definition file ({exc.strerror or exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of task name to task block")
    return data


def builtin_task_file() -> str:
    return str(resources.files("data_utils").joinpath("glue_tasks.yml"))


def load_task_defs(extra_files: Iterable[str | Path] = ()) -> dict[str, TaskDef]:
    """The packaged GLUE tasks, then each extra file in order (adding tasks or replacing them by name)."""
    builtin = resources.files("data_utils").joinpath("glue_tasks.yml").read_text(encoding="utf-8")
    tasks = {name: parse_task_block(name, block, "glue_tasks.yml")
             for name, block in _read_yaml("glue_tasks.yml", builtin).items()}
    source: dict[str, str] = {}  # task name -> the extra file that (re)defined it last
    for path in extra_files:
        for name, block in _read_yaml(path).items():
            task = parse_task_block(str(name), block, str(path))
            if name in tasks:  # a saved model's tasks.yml repeats the definition it was trained with: not news
                same = tasks[name] == task
                logger.log(logging.DEBUG if same else logging.INFO, "task %s redefined by %s%s", name, path,
                           " (identically)" if same else "")
            tasks[str(name)] = task
            source[str(name)] = str(path)
    for name, t in list(tasks.items()):
        head = tasks.get(t.head) if t.head else None
        if not t.head or (head is not None and head.labels == t.labels):
            continue
        if head is not None and name not in source and t.head in source and \
                sorted(head.labels or ()) == sorted(t.labels or ()):
            # a packaged task predicted by a head that a file redefined with its labels in another order (AX by a
            # run's own MNLI): it reads that head's ids in the head's order; its label names are the same
            logger.info("task %s follows the label order of its head %s (%s)", name, t.head, source[t.head])
            tasks[name] = dataclasses.replace(t, labels=head.labels)
            continue
        where = f"{source[name]}: " if name in source else ""
        what = f" (defined in {source[t.head]})" if t.head in source and name not in source else ""
        raise ConfigError(f"{where}task {name!r}: head {t.head!r}{what} must be a task with the same labels")
    return tasks


def select_tasks(all_tasks: dict[str, TaskDef], names: str | Iterable[str]) -> list[TaskDef]:
    """Tasks by name (a comma-separated string or a list); unknown names list the valid ones."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise ConfigError("no task given; valid tasks: " + ", ".join(sorted(all_tasks)))
    unknown = [n for n in names if n not in all_tasks]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; valid tasks: {', '.join(sorted(all_tasks))}")
    if len(set(names)) != len(names):
        raise ConfigError(f"a task is named twice in {','.join(names)}")
    return [all_tasks[n] for n in names]


def dump_task_defs(tasks: Iterable[TaskDef], path: Path | str) -> None:
    """Write tasks as YAML (used for ``best/tasks.yml``)."""
    data = {t.name: t.to_dict() for t in tasks}
    atomic.write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
