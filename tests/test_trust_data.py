"""Input that is not what it claims is refused at once: tokenizer folders, file headers, task definitions, grid
files and metrics records, each with a one-line error naming the file (and line or key)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from data_utils.glue import DataError, read_split
from data_utils.task_def import ConfigError, load_task_defs, parse_task_block
from data_utils.user_input import Columns, read_user_rows
from mt_dnn.cli_utils import run_cli
from tests.glue_fixtures import write_glue
from tests.test_predict_checks import saved_run  # noqa: F401 (a fixture: a run folder with an untrained tiny BERT)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="module")
def defs():
    return load_task_defs()


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ---- an encoder folder without usable tokenizer files ------------------------------------------------------

def _without_tokenizer(src: Path, dst: Path) -> Path:
    """A copy of the encoder folder ``src`` with its tokenizer files left out."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    assert (dst / "config.json").is_file() and not (dst / "vocab.txt").exists()
    return dst


@pytest.fixture
def run_without_tokenizer(saved_run, tmp_path):
    run = shutil.copytree(saved_run, tmp_path / "run")
    for name in TOKENIZER_FILES:
        (run / "best" / "encoder" / name).unlink(missing_ok=True)
    return run


def test_train_refuses_an_encoder_folder_without_tokenizer_files(tmp_path, glue_dir, tiny_model_dir, capsys):
    from mt_dnn.train import main as train_main

    folder = _without_tokenizer(tiny_model_dir, tmp_path / "enc")
    argv = ["--glue_dir", str(glue_dir), "--model", str(folder), "--tasks", "rte", "--output_dir",
            str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--max_steps", "2", "--batch_size", "8"]
    assert run_cli(train_main, argv) == 2
    last = _last_error(capsys)
    assert str(folder) in last and "tokenizer" in last
    assert not (tmp_path / "out" / "best").exists()


def test_predict_refuses_a_run_whose_encoder_folder_lost_its_tokenizer(run_without_tokenizer, tmp_path, capsys):
    from mt_dnn.predict import main as predict_main

    rows = tmp_path / "in.tsv"
    rows.write_text("sentence1\tsentence2\nthe cat .\tthe dog .\n")
    code = run_cli(predict_main, ["--checkpoint", str(run_without_tokenizer), "--input", str(rows), "--task", "rte",
                                  "--output", str(tmp_path / "p.jsonl")])
    assert code == 2
    last = _last_error(capsys)
    assert str(run_without_tokenizer / "best" / "encoder") in last and "tokenizer" in last
    assert not (tmp_path / "p.jsonl").exists()


def test_load_run_refuses_a_run_whose_encoder_folder_lost_its_tokenizer(run_without_tokenizer):
    from mt_dnn import load_run

    with pytest.raises(ConfigError) as err:
        load_run(run_without_tokenizer, device="cpu")
    assert str(run_without_tokenizer / "best" / "encoder") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("vocab_size", [1000, 40])
def test_a_tokenizer_of_another_size_than_the_embedding_table_is_refused(tmp_path, tiny_model_dir, vocab_size):
    """The fixture tokenizer has 66 entries: an encoder with 1000 rows (another model's table) or 40 rows (ids 40
    and up would have no embedding) does not go with it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mt_dnn.model import load_encoder

    assert len(AutoTokenizer.from_pretrained(tiny_model_dir)) == 66
    folder = _without_tokenizer(tiny_model_dir, tmp_path / "enc")
    BertModel(BertConfig(vocab_size=vocab_size, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, folder / name)
    with pytest.raises(ConfigError) as err:
        load_encoder(str(folder))
    assert str(folder) in str(err.value) and "66" in str(err.value) and str(vocab_size) in str(err.value)


def test_the_fixture_encoder_folder_loads(tiny_model_dir):
    from mt_dnn.model import load_encoder

    encoder, tokenizer = load_encoder(str(tiny_model_dir))
    assert len(tokenizer) == encoder.config.vocab_size == 66


# ---- a header that names a column twice --------------------------------------------------------------------

def test_a_glue_header_with_a_repeated_column_is_a_header_error(tmp_path, defs):
    root = write_glue(tmp_path / "glue", tasks=("sst",))
    path = root / "SST-2" / "train.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["sentence\tlabel\tlabel"] + [ln + "\t0" for ln in lines[1:]]) + "\n")
    with pytest.raises(DataError) as err:
        read_split(root, defs["sst"], defs["sst"].splits["train"])
    assert str(err.value).startswith(f"{path}:1: ") and "'label'" in str(err.value) and "twice" in str(err.value)


@pytest.mark.parametrize("name,content,line,key", [
    ("in.tsv", "sentence\tid\tsentence\nthe cat .\t1\tthe dog .\n", 1, "sentence"),
    ("in.jsonl", '{"sentence": "the cat ."}\n{"sentence": "the cat .", "sentence": "the dog ."}\n', 2, "sentence"),
])
def test_own_input_naming_a_column_twice_is_an_error(tmp_path, name, content, line, key):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_user_rows(path, Columns("sentence", None))
    assert str(err.value).startswith(f"{path}:{line}: ") and f"{key!r}" in str(err.value)


# ---- task definitions: names that become paths, and complete validation when read -------------------------

def _rte_block() -> dict:
    return load_task_defs()["rte"].to_dict()


def _stsb_block() -> dict:
    return load_task_defs()["stsb"].to_dict()


def _mnli_block() -> dict:
    return load_task_defs()["mnli"].to_dict()


def _with(block: dict, path: str, value) -> dict:
    d = block
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
    return block


BAD_TASKS = {
    "absolute task name": ("/tmp/elsewhere", _rte_block, None, None, "task name"),
    "task name going up": ("../up", _rte_block, None, None, "task name"),
    "a dot in the task name": ("my.rte", _rte_block, None, None, "task name"),
    "split name with a slash": ("t", _rte_block, "splits", {"dev/../../x": {"file": "dev.tsv"}}, "split name"),
    "absolute data_dir": ("t", _rte_block, "data_dir", "/etc", "data_dir"),
    "data_dir going up": ("t", _rte_block, "data_dir", "../RTE", "data_dir"),
    "split file going up": ("t", _rte_block, "splits.dev.file", "../../secret.tsv", "file"),
    "submission going up": ("t", _rte_block, "splits.test.submission", "../RTE.tsv", "submission"),
    "acc on a regression task": ("t", _stsb_block, "metrics", ["acc"], "acc"),
    "pearson on a classification task": ("t", _rte_block, "metrics", ["acc", "pearson"], "pearson"),
    "f1 on three labels": ("t", _mnli_block, "metrics", ["acc", "f1"], "f1"),
    "score_range of strings": ("t", _stsb_block, "score_range", ["low", "high"], "score_range"),
    "score_range in the wrong order": ("t", _stsb_block, "score_range", [5, 0], "score_range"),
    "empty score_range": ("t", _stsb_block, "score_range", [1, 1], "score_range"),
    "score_range of booleans": ("t", _stsb_block, "score_range", [False, True], "score_range"),
    "repeated headerless columns": ("t", _rte_block, "splits.train", {"file": "train.tsv", "header": False,
                                    "columns": ["index", "sentence1", "sentence2", "label", "label"]}, "label"),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_a_bad_task_definition_is_refused_when_read(case):
    name, make, key, value, fragment = BAD_TASKS[case]
    block = make() if key is None else _with(make(), key, value)
    with pytest.raises(ConfigError) as err:
        parse_task_block(name, block, "t.yml")
    msg = str(err.value)
    assert msg.startswith("t.yml: task ") and fragment in msg and "\n" not in msg, msg


def test_mcc_on_three_labels_is_fine_and_computed_as_multiclass_mcc():
    """sklearn's Matthews correlation is defined for K classes; by hand for gold [0,1,2,0], pred [0,2,2,0]:
    c = 3 correct, s = 4 samples, t = (2,1,1) true counts, p = (2,0,2) predicted counts:
    (c*s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t)) = (12 - 6) / sqrt((16 - 8) (16 - 6)) = 6 / sqrt(80)."""
    from data_utils.metrics import compute_metrics

    t = parse_task_block("t", _with(_mnli_block(), "metrics", ["mcc", "acc"]), "t.yml")
    assert t.metrics == ("mcc", "acc")
    got = compute_metrics(t.metrics, [0, 2, 2, 0], [0, 1, 2, 0])
    assert got["mcc"] == pytest.approx(6 / 80 ** 0.5) and got["acc"] == pytest.approx(0.75)


def test_nested_data_dirs_and_files_are_fine():
    t = parse_task_block("my_task-2", _with(_with(_rte_block(), "data_dir", "mine/RTE"), "splits.dev.file",
                                            "sub/dev.tsv"), "t.yml")
    assert t.data_dir == "mine/RTE" and t.splits["dev"].file == "sub/dev.tsv"


def test_train_refuses_a_task_named_with_a_dot_before_anything_is_written(tmp_path, glue_dir, tiny_model_dir,
                                                                          capsys):
    from mt_dnn.train import main as train_main

    task_file = tmp_path / "t.yml"
    task_file.write_text(yaml.safe_dump({"my.rte": _rte_block()}))
    argv = ["--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--tasks", "my.rte", "--task_def",
            str(task_file), "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")]
    assert run_cli(train_main, argv) == 2
    last = _last_error(capsys)
    assert str(task_file) in last and "'my.rte'" in last
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_run_whose_tasks_yml_names_a_path_is_refused(saved_run, tmp_path):
    from mt_dnn import load_run

    run = shutil.copytree(saved_run, tmp_path / "run")
    best = run / "best"
    tasks = yaml.safe_load((best / "tasks.yml").read_text())
    (best / "tasks.yml").write_text(yaml.safe_dump({"../../evil": tasks["rte"]}))
    meta = json.loads((best / "model.json").read_text())
    meta["tasks"] = ["../../evil"]
    (best / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        load_run(run, device="cpu")
    assert str(best / "tasks.yml") in str(err.value) and "task name" in str(err.value)


# ---- grid files ----------------------------------------------------------------------------------------------

def _grid(path: Path, **overrides) -> Path:
    grid = {"tasks": ["rte"], "seeds": [1, 2], "flags": {"max_steps": 2},
            "methods": {"standard": {"method": "standard"}, "rapt": {"method": "rapt"}}}
    grid.update(overrides)
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.mark.parametrize("change,message", [
    ({"seeds": "10"}, "seeds must be a non-empty list of integers, got '10'"),
    ({"seeds": [1.5]}, "seeds must be a non-empty list of integers, got [1.5]"),
    ({"seeds": [True]}, "seeds must be a non-empty list of integers, got [True]"),
    ({"seeds": [1, 1]}, "seeds repeat"),
    ({"methods": {"x": {"method": "standard", "seeds": "10"}}},
     "method x: seeds must be a non-empty list of integers, got '10'"),
    ({"tasks": {"rte": 1}}, "tasks must be a list of task names (or a comma-separated string), got {'rte': 1}"),
    ({"methods": {"x": {"method": "standard", "tasks": {"rte": 1}}}}, "method x: tasks must be a list"),
    ({"flags": {"max_steps": 2, "rapt_eta": [1.5, 2.5]}}, "flags: rapt_eta must be a number (got [1.5, 2.5])"),
    ({"methods": {"x": {"method": "rapt", "rapt_eta": [1.5, 2.5]}}},
     "methods.x: rapt_eta must be a number (got [1.5, 2.5])"),
    ({"task_flags": {"rte": {"lr": [1e-5, 2e-5]}}}, "task_flags.rte: lr must be a number (got [1e-05, 2e-05])"),
    ({"flags": {"model": {"name": "x"}}}, "flags: model must be a string (got {'name': 'x'})"),
    ({"methods": {"..": {"method": "standard"}}}, "method name '..'"),
    ({"methods": {".x": {"method": "standard"}}}, "method name '.x'"),
    ({"best_of": {"b": "standard"}}, "best_of.b must be a list of method names, got 'standard'"),
    ({"best_of": {"b": ["standard", "nope"]}}, "best_of.b lists unknown method(s) nope"),
])
def test_bad_grid_types_are_one_line_errors_naming_the_key(tmp_path, capsys, change, message):
    from experiments.rapt import campaign

    grid = _grid(tmp_path / "grid.yml", **change)
    assert run_cli(campaign.main, ["--grid", str(grid), "--root", str(tmp_path / "r"), "--dry_run"]) == 2
    last = _last_error(capsys)
    assert last.startswith(f"error: {grid}: ") and message in last, last
    assert not (tmp_path / "r").exists()


def test_a_list_for_a_repeatable_flag_still_repeats_it(tmp_path):
    from experiments.rapt.grid import load_grid, plan_runs

    extra = tmp_path / "t.yml"
    extra.write_text(yaml.safe_dump({"rte2": _rte_block()}))
    grid = load_grid(_grid(tmp_path / "grid.yml", seeds=[3], flags={"max_steps": 2, "task_def": [str(extra)]}))
    (run, _) = plan_runs(grid, tmp_path / "r")
    assert run.argv.count("--task_def") == 1 and run.seed == 3


# ---- campaign records ------------------------------------------------------------------------------------------

def _write_run(root: Path, seed: int, drop: str | None = None, which: int = 0) -> Path:
    """An rte/standard run with two dev records and the train record; ``drop`` removes a key of record ``which``."""
    folder = root / "rte" / "standard" / f"s{seed}"
    folder.mkdir(parents=True)
    recs = [{"epoch": i, "step": 10 * (i + 1), "task": "rte", "split": "dev", "split_name": "dev",
             "train_seconds": 60.0 * (i + 1), "metrics": {"acc": 0.6 + 0.05 * i}} for i in range(2)]
    recs.append({"epoch": 1, "step": 20, "task": "rte", "split": "train", "train_seconds": 120.0, "steps": 20})
    if drop is not None:
        del recs[which][drop]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder / "metrics.jsonl"


@pytest.mark.parametrize("drop,which", [("train_seconds", 0), ("metrics", 1), ("step", 0)])
def test_report_on_a_record_lacking_a_key_is_a_one_line_error_naming_file_and_line(tmp_path, capsys, drop, which):
    from experiments.rapt import campaign

    root = tmp_path / "camp"
    _write_run(root, 1)
    bad = _write_run(root, 2, drop, which)
    assert run_cli(campaign.main, ["--root", str(root), "--report"]) == 2
    last = _last_error(capsys)
    assert last.startswith(f"error: {bad}:{which + 1}: ") and f"'{drop}'" in last, last
    assert not (root / "report.md").exists()


def test_report_on_a_record_lacking_the_primary_metric_is_a_one_line_error(tmp_path, capsys):
    from experiments.rapt import campaign

    root = tmp_path / "camp"
    bad = _write_run(root, 1)
    recs = [json.loads(ln) for ln in bad.read_text().splitlines()]
    recs[1]["metrics"] = {"f1": 0.5}
    bad.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert run_cli(campaign.main, ["--root", str(root), "--report"]) == 2
    last = _last_error(capsys)
    assert last.startswith(f"error: {bad}:2: ") and "'acc'" in last, last


def test_measured_costs_skip_a_finished_run_without_its_time(tmp_path):
    from experiments.rapt.costs import measured_step_costs

    root = tmp_path / "camp"
    timed = _write_run(root, 1)
    untimed = _write_run(root, 2, "train_seconds", 2)
    for path in (timed, untimed):
        (path.parent / "flags.json").write_text(json.dumps({"task": "rte", "method_name": "standard",
                                                            "identity": {"method": "standard"}}))
    by_name, _ = measured_step_costs(root)
    assert by_name[("rte", "standard")] == [pytest.approx(120.0 / 20)]


# ---- the feature cache says "cached" only when it was written ---------------------------------------------------

def test_an_unwritable_cache_is_never_reported_as_cached(tmp_path, tiny_model_dir, defs, caplog):
    from transformers import AutoTokenizer

    from data_utils.features import load_features, save_pending

    root = write_glue(tmp_path / "glue", tasks=("sst",))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    not_a_dir = tmp_path / "cache_file"
    not_a_dir.write_text("x")
    task = defs["sst"]
    pending: list = []
    with caplog.at_level(logging.INFO, logger="data_utils.features"):
        load_features(root, task, task.splits["dev"], tok, 64, not_a_dir)
        load_features(root, task, task.splits["train"], tok, 64, not_a_dir, pending=pending)
        save_pending(pending)
    messages = [r.getMessage() for r in caplog.records if r.name == "data_utils.features"]
    assert sum("cannot write cache file" in m for m in messages) == 2, messages
    assert not any("cached in" in m for m in messages), messages
    assert sum("not cached" in m for m in messages) == 2, messages
