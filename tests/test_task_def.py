"""Tests of data_utils.task_def: the packaged GLUE definitions, strict validation, extra files, round trips."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from data_utils.task_def import (ConfigError, builtin_task_file, dump_task_defs, load_task_defs,
                                 parse_task_block, select_tasks)

GLUE_TASKS = ("cola", "sst", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax")


def good_block() -> dict:
    """A valid pair-classification block (RTE-like) that each validation test breaks in one place."""
    return {
        "data_dir": "NEW", "type": "classification", "input": "pair", "labels": ["yes", "no"],
        "metrics": ["acc", "f1"], "loss": "cross_entropy", "reg_loss": "sym_kl", "dropout": 0.1,
        "text_a": "s1", "text_b": "s2", "label": "label", "index": "index", "baseline_label": "yes",
        "splits": {"train": {"file": "train.tsv"}, "dev": {"file": "dev.tsv", "rows": 3},
                   "test": {"file": "test.tsv", "submission": "NEW.tsv"}},
    }


def regression_block() -> dict:
    return {
        "data_dir": "REG", "type": "regression", "input": "single", "metrics": ["pearson", "spearman"],
        "loss": "mse", "reg_loss": "mse", "dropout": 0.0, "text_a": "sentence", "text_b": None,
        "label": "score", "index": "index", "baseline_label": 2.5, "score_range": [0, 5],
        "splits": {"train": {"file": "train.tsv", "header": False, "columns": ["sentence", "score"]},
                   "dev": {"file": "dev.tsv"}},
    }


# ---- the packaged definitions -------------------------------------------------------------------------------

def test_packaged_tasks_load(tasks):
    assert set(GLUE_TASKS) <= set(tasks)
    assert Path(builtin_task_file()).name == "glue_tasks.yml"
    for name in GLUE_TASKS:
        assert tasks[name].name == name


def test_packaged_task_details(tasks):
    mnli = tasks["mnli"]
    assert set(mnli.splits) == {"train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"}
    assert [s.name for s in mnli.splits_of("dev")] == ["dev_matched", "dev_mismatched"]
    assert [s.name for s in mnli.splits_of("test")] == ["test_matched", "test_mismatched"]
    assert mnli.num_outputs == 3
    assert tasks["ax"].head == "mnli" and tasks["ax"].head_name == "mnli"
    assert tasks["ax"].labels == mnli.labels
    assert list(tasks["ax"].splits) == ["test"]
    assert tasks["rte"].head_name == "rte"

    cola = tasks["cola"]
    assert cola.primary_metric == "mcc" and cola.input == "single" and cola.text_b is None
    assert not cola.splits["train"].header and not cola.splits["dev"].header and cola.splits["test"].header
    assert cola.splits["train"].columns == ("source", "label", "original_label", "sentence")

    stsb = tasks["stsb"]
    assert stsb.type == "regression" and stsb.labels is None and stsb.num_outputs == 1
    assert stsb.score_range == (0.0, 5.0)
    assert tasks["mrpc"].metrics == ("acc", "f1")
    assert tasks["mrpc"].label == "Quality"


def test_eleven_submission_files(tasks):
    files = [s.submission for t in tasks.values() for s in t.splits.values() if s.submission]
    assert len(files) == 11
    assert sorted(files) == sorted(["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
                                    "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"])
    for t in tasks.values():
        for s in t.splits.values():
            assert (s.submission is not None) == (s.kind == "test")


def test_good_blocks_parse():
    t = parse_task_block("new", good_block())
    assert t.labels == ("yes", "no") and t.num_outputs == 2 and t.primary_metric == "acc"
    assert t.splits["dev"].rows == 3 and t.splits["test"].kind == "test"
    r = parse_task_block("reg", regression_block())
    assert r.num_outputs == 1 and r.baseline_label == "2.5" and r.score_range == (0.0, 5.0)
    assert r.splits["train"].columns == ("sentence", "score")


# ---- validation ---------------------------------------------------------------------------------------------

def _set(path: str, value):
    """A mutation of good_block(): set a (dotted) key, or delete it when value is DELETE."""
    def mutate(block: dict) -> dict:
        keys = path.split(".")
        d = block
        for k in keys[:-1]:
            d = d[k]
        if value is DELETE:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
        return block
    return mutate


DELETE = object()

BAD_BLOCKS = {
    "unknown key": (_set("lables", ["a", "b"]), "lables"),
    "missing key": (_set("text_a", DELETE), "text_a"),
    "missing splits": (_set("splits", DELETE), "splits"),
    "bad type choice": (_set("type", "ranking"), "ranking"),
    "bad input choice": (_set("input", "triple"), "triple"),
    "bad metric choice": (_set("metrics", ["acc", "auc"]), "auc"),
    "bad loss choice": (_set("loss", "hinge"), "hinge"),
    "bad reg_loss choice": (_set("reg_loss", "kl"), "kl"),
    "empty metrics": (_set("metrics", []), "metrics"),
    "dropout of wrong type": (_set("dropout", "high"), "dropout"),
    "dropout out of range": (_set("dropout", 1.5), "dropout"),
    "classification without labels": (_set("labels", DELETE), "labels"),
    "one label": (_set("labels", ["yes"]), "labels"),
    "repeated labels": (_set("labels", ["yes", "yes"]), "repeat"),
    "baseline_label not a label": (_set("baseline_label", "maybe"), "maybe"),
    "classification with mse": (_set("loss", "mse"), "cross_entropy"),
    "pair task without text_b": (_set("text_b", None), "text_b"),
    "single task with text_b": (_set("input", "single"), "text_b"),
    "split name": (_set("splits.valid", {"file": "valid.tsv"}), "valid"),
    "split unknown key": (_set("splits.dev.path", "x"), "path"),
    "split missing file": (_set("splits.dev", {"rows": 3}), "file"),
    "headerless split without columns": (_set("splits.train.header", False), "columns"),
    "columns with a header": (_set("splits.train.columns", ["a", "b"]), "columns"),
    "header not a bool": (_set("splits.train.header", "no"), "header"),
    "negative rows": (_set("splits.dev.rows", -1), "rows"),
    "submission on a dev split": (_set("splits.dev.submission", "X.tsv"), "submission"),
    "two train splits": (_set("splits.train_extra", {"file": "t2.tsv"}), "train"),
    "split not a mapping": (_set("splits.dev", "dev.tsv"), "dev"),
    "empty splits": (_set("splits", {}), "splits"),
    "score_range on classification": (_set("score_range", [0, 1]), "score_range"),
}


@pytest.mark.parametrize("case", sorted(BAD_BLOCKS))
def test_each_validation_error_names_the_task(case):
    mutate, fragment = BAD_BLOCKS[case]
    block = mutate(good_block())
    with pytest.raises(ConfigError) as err:
        parse_task_block("mytask", block, "extra.yml")
    msg = str(err.value)
    assert "'mytask'" in msg and "extra.yml" in msg, msg
    assert fragment in msg, msg
    assert "\n" not in msg


REGRESSION_BAD = {
    "regression with labels": (lambda b: {**b, "labels": ["0", "1"]}, "labels"),
    "regression baseline not a number": (lambda b: {**b, "baseline_label": "high"}, "baseline_label"),
    "regression with cross_entropy": (lambda b: {**b, "loss": "cross_entropy"}, "mse"),
    "score_range of three": (lambda b: {**b, "score_range": [0, 1, 2]}, "score_range"),
}


@pytest.mark.parametrize("case", sorted(REGRESSION_BAD))
def test_regression_validation_errors(case):
    mutate, fragment = REGRESSION_BAD[case]
    with pytest.raises(ConfigError) as err:
        parse_task_block("myreg", mutate(regression_block()))
    assert "'myreg'" in str(err.value) and fragment in str(err.value)


def test_block_not_a_mapping():
    with pytest.raises(ConfigError, match="'oops'"):
        parse_task_block("oops", ["not", "a", "mapping"])


def test_choice_error_lists_choices():
    with pytest.raises(ConfigError) as err:
        parse_task_block("mytask", _set("type", "ranking")(good_block()))
    assert "classification" in str(err.value) and "regression" in str(err.value)


# ---- extra task files ---------------------------------------------------------------------------------------

def test_extra_file_adds_and_overrides(tmp_path, tasks):
    override = copy.deepcopy(tasks["rte"].to_dict())
    override["dropout"] = 0.3
    override["data_dir"] = "RTE_v2"
    extra = tmp_path / "extra.yml"
    extra.write_text(yaml.safe_dump({"newtask": good_block(), "rte": override}), encoding="utf-8")
    loaded = load_task_defs([extra])
    assert "newtask" in loaded and loaded["newtask"].labels == ("yes", "no")
    assert loaded["rte"].dropout == 0.3 and loaded["rte"].data_dir == "RTE_v2"
    assert loaded["mrpc"] == tasks["mrpc"]  # the others are untouched
    assert set(loaded) == set(tasks) | {"newtask"}


def test_identical_redefinition_is_debug_a_changed_one_is_info(tmp_path, tasks, caplog):
    """A saved model's tasks.yml repeats the packaged definition: that is not news on every load."""
    import logging

    same, changed = tmp_path / "same.yml", tmp_path / "changed.yml"
    same.write_text(yaml.safe_dump({"rte": tasks["rte"].to_dict()}), encoding="utf-8")
    block = copy.deepcopy(tasks["rte"].to_dict())
    block["dropout"] = 0.3
    changed.write_text(yaml.safe_dump({"rte": block}), encoding="utf-8")
    with caplog.at_level(logging.DEBUG, logger="data_utils.task_def"):
        load_task_defs([same])
        load_task_defs([changed])
    by_file = {str(path): [r.levelno for r in caplog.records if "redefined" in r.getMessage() and str(path) in
                           r.getMessage()] for path in (same, changed)}
    assert by_file == {str(same): [logging.DEBUG], str(changed): [logging.INFO]}


def test_later_extra_file_wins(tmp_path):
    a, b = tmp_path / "a.yml", tmp_path / "b.yml"
    a.write_text(yaml.safe_dump({"newtask": good_block()}), encoding="utf-8")
    second = good_block()
    second["data_dir"] = "SECOND"
    b.write_text(yaml.safe_dump({"newtask": second}), encoding="utf-8")
    assert load_task_defs([a, b])["newtask"].data_dir == "SECOND"
    assert load_task_defs([b, a])["newtask"].data_dir == "NEW"


def test_extra_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yml"
    block = good_block()
    block["metrics"] = ["accuracy"]
    bad.write_text(yaml.safe_dump({"newtask": block}), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_task_defs([bad])
    assert str(bad) in str(err.value) and "'newtask'" in str(err.value)

    with pytest.raises(ConfigError, match="not found"):
        load_task_defs([tmp_path / "missing.yml"])
    with pytest.raises(ConfigError) as err:  # a folder given by mistake
        load_task_defs([tmp_path])
    assert str(err.value) == f"{tmp_path}: cannot read the task definition file (Is a directory)"
    broken = tmp_path / "broken.yml"
    broken.write_text("newtask: {type: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_task_defs([broken])
    scalar = tmp_path / "scalar.yml"
    scalar.write_text("just a string\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_task_defs([scalar])


def test_overriding_a_head_task_with_other_labels_is_refused(tmp_path, tasks):
    mnli = tasks["mnli"].to_dict()
    mnli["labels"] = ["a", "b"]
    mnli["baseline_label"] = "a"
    mnli.pop("robustness")  # its label ids name MNLI's labels
    extra = tmp_path / "mnli.yml"
    extra.write_text(yaml.safe_dump({"mnli": mnli}), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_task_defs([extra])
    assert str(err.value) == f"task 'ax': head 'mnli' (defined in {extra}) must be a task with the same labels"


def test_a_packaged_task_follows_its_heads_label_order(tmp_path, tasks, tiny_model_dir):
    """A run trained on MNLI with its labels in another order saves only mnli in tasks.yml: the packaged AX, read
    by that head, takes the head's order (its label names are the same), so the run loads and AX maps ids right."""
    from transformers import AutoModel, AutoTokenizer

    from mt_dnn.model import MultiTaskModel, save_model
    from mt_dnn.saved_model import read_model_dir

    mnli = tasks["mnli"].to_dict()
    mnli["labels"] = ["entailment", "neutral", "contradiction"]
    extra = tmp_path / "mnli.yml"
    extra.write_text(yaml.safe_dump({"mnli": mnli}), encoding="utf-8")
    loaded = load_task_defs([extra])
    assert loaded["ax"].labels == ("entailment", "neutral", "contradiction") == loaded["mnli"].labels
    assert tasks["ax"].labels == ("contradiction", "entailment", "neutral")  # the packaged order, untouched
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), [loaded["mnli"]], "cls")
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), [loaded["mnli"]], tmp_path / "best")
    saved = read_model_dir(tmp_path / "best")
    assert [t.labels for t in saved.tasks] == [("entailment", "neutral", "contradiction")]
    # a task defined in the same file as its head must agree with it itself: named with the file
    ax = tasks["ax"].to_dict()
    extra.write_text(yaml.safe_dump({"mnli": mnli, "ax": ax}), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_task_defs([extra])
    assert str(err.value) == f"{extra}: task 'ax': head 'mnli' must be a task with the same labels"


# ---- selection ----------------------------------------------------------------------------------------------

def test_select_tasks(tasks):
    assert [t.name for t in select_tasks(tasks, "rte, mrpc,stsb")] == ["rte", "mrpc", "stsb"]
    assert [t.name for t in select_tasks(tasks, ["cola"])] == ["cola"]


def test_select_unknown_lists_valid_ones(tasks):
    with pytest.raises(ConfigError) as err:
        select_tasks(tasks, "rte,mnlii")
    msg = str(err.value)
    assert "mnlii" in msg
    for name in GLUE_TASKS:
        assert name in msg


def test_select_empty_and_duplicate(tasks):
    with pytest.raises(ConfigError, match="valid tasks"):
        select_tasks(tasks, " , ")
    with pytest.raises(ConfigError, match="twice"):
        select_tasks(tasks, "rte,rte")


# ---- round trips --------------------------------------------------------------------------------------------

def test_to_dict_round_trips_through_parse(tasks):
    for name, t in tasks.items():
        again = parse_task_block(name, t.to_dict())
        assert again == t, name
    for block in (good_block(), regression_block()):
        t = parse_task_block("x", block)
        assert parse_task_block("x", t.to_dict()) == t


def test_to_dict_is_plain_yaml(tasks):
    d = tasks["cola"].to_dict()
    assert "name" not in d and d["text_b"] is None
    assert d["splits"]["train"] == {"file": "train.tsv", "header": False,
                                     "columns": ["source", "label", "original_label", "sentence"], "rows": 8551}
    assert d["splits"]["test"] == {"file": "test.tsv", "rows": 1063, "submission": "CoLA.tsv"}
    yaml.safe_dump(d)  # only plain types


def test_dump_task_defs_round_trip(tmp_path, tasks):
    out = tmp_path / "tasks.yml"
    dump_task_defs(tasks.values(), out)
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert list(data) == list(tasks)
    for name, block in data.items():
        assert parse_task_block(name, block) == tasks[name]
    # the dumped file is itself a valid --task_def file
    assert load_task_defs([out]) == tasks
