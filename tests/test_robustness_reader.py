"""The robustness reader written out: which field of a file becomes which text, each example's class, index and
line, every refusal's exact message, where the folder comes from, the files' digests and the tokenized set.
Expected values are typed here by hand from the files the tests write."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import pytest

from data_utils.glue import DataError
from data_utils.robustness import load_sets, read_set, robustness_dir, set_digests, tokenize_set
from data_utils.task_def import ConfigError, load_task_defs, parse_task_block


@pytest.fixture(scope="module")
def tasks():
    return load_task_defs()


def _write(path, payload) -> str:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def test_each_field_becomes_the_text_the_task_says_with_its_class_index_and_line(tmp_path, tasks):
    rte, sst, qnli = tasks["rte"], tasks["sst"], tasks["qnli"]
    assert rte.labels == ("entailment", "not_entailment") and sst.labels == ("0", "1")
    f = tmp_path / "dev.json"
    _write(f, {"rte": [{"idx": 7, "sentence1": "The cat sat.", "sentence2": "A cat exists.", "label": 1},
                       {"sentence2": "Dogs sleep.", "label": 0, "sentence1": "Dogs run."}],  # no idx: its row
               "sst2": [{"idx": 3, "sentence": "A fine film.", "label": 1}, {"sentence": "Dull.", "label": 0}],
               "qnli": [{"idx": 0, "question": "Who ran?", "sentence": "The dog ran.", "label": 0}]})
    got = read_set(f, rte, rte.robustness["advglue"], "dev")
    assert [(e.text_a, e.text_b, e.label, e.index, e.line) for e in got] == [
        ("The cat sat.", "A cat exists.", 1, "7", 1), ("Dogs run.", "Dogs sleep.", 0, "1", 2)]
    got = read_set(f, sst, sst.robustness["advglue"], "dev")
    assert [(e.text_a, e.text_b, e.label, e.index, e.line) for e in got] == [
        ("A fine film.", None, 1, "3", 1), ("Dull.", None, 0, "1", 2)]
    got = read_set(f, qnli, qnli.robustness["advglue"], "dev")  # GLUE's QNLI order: question first
    assert [(e.text_a, e.text_b, e.label) for e in got] == [("Who ran?", "The dog ran.", 0)]
    _write(f, {"rte": [{**RTE_ROW, "idx": "adv-12"}, {**RTE_ROW, "idx": 2.0}]})  # ids as the file writes them
    assert [e.index for e in read_set(f, rte, rte.robustness["advglue"], "dev")] == ["adv-12", "2.0"]


RTE_ROW = {"idx": 0, "sentence1": "a b", "sentence2": "c d", "label": 0}


@pytest.mark.parametrize("payload, message", [
    ('{"rte": [{"idx": NaN, "sentence1": "a", "sentence2": "b", "label": 0}]}', "not valid JSON (NaN is not JSON)"),
    ({"sst2": [], "qqp": []}, "key 'rte': missing (the file has sst2, qqp)"),
    ([RTE_ROW], "key 'rte': missing (the file has no keys)"),
    ({"rte": []}, "key 'rte': expected a non-empty list of examples"),
    ({"rte": {"0": RTE_ROW}}, "key 'rte': expected a non-empty list of examples"),
    ({"rte": "rows"}, "key 'rte': expected a non-empty list of examples"),
    ({"rte": [RTE_ROW, 3]}, "rte[1]: expected an object"),
    ({"rte": [RTE_ROW, {**RTE_ROW, "sentence2": " "}]}, "rte[1]: field 'sentence2' is missing or empty"),
    ({"rte": [{k: v for k, v in RTE_ROW.items() if k != "sentence1"}]}, "rte[0]: field 'sentence1' is missing or empty"),
    ({"rte": [{**RTE_ROW, "label": 2}]}, "rte[0]: label 2 is not one of the ids [0, 1]"),
    ({"rte": [{**RTE_ROW, "label": "0"}]}, "rte[0]: label '0' is not one of the ids [0, 1]"),
    ({"rte": [{**RTE_ROW, "label": False}]}, "rte[0]: label False is not one of the ids [0, 1]"),
    ({"rte": [{k: v for k, v in RTE_ROW.items() if k != "label"}]}, "rte[0]: label None is not one of the ids [0, 1]"),
    ('{"rte": [{"idx": 1e999, "sentence1": "a", "sentence2": "b", "label": 0}]}',
     "rte[0]: idx inf is not a finite number"),
    ('{"rte": [{"idx": 0, "sentence1": "a", "sentence2": "b \\ud800 c", "label": 0}]}',
     "rte[0]: field 'sentence2' holds a lone surrogate ('\\ud800' at character 2)"),
])
def test_every_malformed_file_is_one_exact_line(tmp_path, tasks, payload, message):
    rte = tasks["rte"]
    path = _write(tmp_path / "dev.json", payload)
    with pytest.raises(DataError) as err:
        read_set(tmp_path / "dev.json", rte, rte.robustness["advglue"], "dev")
    assert str(err.value) == f"{path}: {message}"


def test_a_file_that_is_not_json_says_what_json_said(tmp_path, tasks):
    rte = tasks["rte"]
    path = _write(tmp_path / "dev.json", "{rte")
    with pytest.raises(DataError) as err:
        read_set(tmp_path / "dev.json", rte, rte.robustness["advglue"], "dev")
    assert str(err.value) == (f"{path}: not valid JSON (Expecting property name enclosed in double quotes: line 1 "
                              "column 2 (char 1))")


def test_a_missing_set_is_skipped_with_its_warning_and_the_next_set_still_read(tmp_path, tasks, caplog):
    rte = tasks["rte"]
    present = rte.robustness["advglue"]
    two = dataclasses.replace(rte, robustness={"gone": dataclasses.replace(present, file="gone.json"),
                                               "here": present})
    _write(tmp_path / "dev.json", {"rte": [RTE_ROW]})
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="data_utils.robustness"):
        [found] = load_sets(two, tmp_path, warned)
        assert load_sets(two, tmp_path, warned) != []  # the second call warns no more
    assert (found.set_name, found.dev_split, found.path) == ("here", "dev", tmp_path / "dev.json")
    assert [(e.text_a, e.label) for e in found.examples] == [("a b", 0)]
    assert [r.getMessage() for r in caplog.records] == [
        f"robustness set gone: {tmp_path / 'gone.json'} not found; its scores are skipped"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_utils.robustness"):
        assert load_sets(rte, None) == []
    assert [r.getMessage() for r in caplog.records] == [
        "robustness set advglue: dev.json (no --robustness_dir, $ROBUSTNESS_DIR or advglue folder) not found; its "
        "scores are skipped"]


def test_the_folder_is_the_flag_else_the_variable_else_advglue_beside_the_glue_folder(tmp_path, monkeypatch):
    (tmp_path / "glue").mkdir()
    assert robustness_dir(None, tmp_path / "glue") is None  # nothing beside it
    (tmp_path / "advglue").mkdir()
    assert robustness_dir(None, tmp_path / "glue") == (tmp_path / "advglue").resolve()
    monkeypatch.setenv("ROBUSTNESS_DIR", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    (tmp_path / "flag").mkdir()
    assert robustness_dir(None, tmp_path / "glue") == tmp_path / "env"
    assert robustness_dir(str(tmp_path / "flag"), tmp_path / "glue") == tmp_path / "flag"
    monkeypatch.setenv("ROBUSTNESS_DIR", "")  # set but empty: as if unset
    assert robustness_dir(None, None) is None


def test_a_folder_given_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    """A typo in --robustness_dir (or $ROBUSTNESS_DIR) would drop every robustness score of a run in silence."""
    with pytest.raises(ConfigError) as err:
        robustness_dir(str(tmp_path / "advglu"), None)
    assert str(err.value) == f"--robustness_dir {tmp_path / 'advglu'}: no such folder"
    monkeypatch.setenv("ROBUSTNESS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as err:
        robustness_dir(None, None)
    assert str(err.value) == f"$ROBUSTNESS_DIR {tmp_path / 'nowhere'}: no such folder"


def test_train_refuses_a_missing_robustness_dir_before_writing_anything(tmp_path, glue_dir, tiny_model_dir, capsys):
    from mt_dnn.cli_utils import run_cli
    from mt_dnn.train import main

    out = tmp_path / "run"
    assert run_cli(main, ["--tasks", "rte", "--glue_dir", str(glue_dir), "--model", str(tiny_model_dir),
                          "--output_dir", str(out), "--max_steps", "1", "--robustness_dir",
                          str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --robustness_dir {tmp_path / 'nowhere'}: no such folder")
    assert not out.exists()


def test_digests_are_the_files_sha256_prefixes(tmp_path, tasks):
    data = json.dumps({"rte": [RTE_ROW]}).encode()
    (tmp_path / "dev.json").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()[:16]
    assert set_digests([tasks["rte"], tasks["cola"]], tmp_path) == {"rte/advglue": expected}
    assert set_digests([tasks["rte"]], tmp_path / "nowhere") == {} and set_digests([tasks["rte"]], None) == {}
    assert len(expected) == 16


def test_the_tokenized_set_is_truncated_to_max_len_and_named_by_set_and_split(tmp_path, tasks, tok_dir):
    from transformers import AutoTokenizer

    rte = tasks["rte"]
    long = " ".join(["cat"] * 40)
    _write(tmp_path / "dev.json", {"rte": [{**RTE_ROW, "sentence1": long}, {**RTE_ROW, "label": 1}]})
    [rs] = load_sets(rte, tmp_path)
    feats = tokenize_set(AutoTokenizer.from_pretrained(tok_dir), rte, rs, 16)
    assert feats.split == "advglue:dev" and feats.task == "rte"
    assert feats.labels == [0, 1] and feats.indices == ["0", "0"]
    lengths = [len(feats.input_ids[i]) for i in range(2)]
    # [CLS] a b [SEP] c d [SEP] for the short pair; the long one cut to 16 tokens, its own sentence shortened
    assert lengths == [16, 7]


@pytest.mark.parametrize("change, message", [
    ({"advglue": "x"}, "robustness set 'advglue': expected a mapping"),
    ({"bad name": {}}, "robustness set 'bad name': a set name is letters, digits, _ and - only"),
    ({"advglue": {"file": "f"}}, "robustness set 'advglue': missing key(s) splits, text_a, text_b, label, "
                                 "label_ids"),
    ({"advglue": {"colour": 1, "file": "f", "splits": {}, "text_a": "a", "text_b": "b", "label": "l"}},
     "robustness set 'advglue': unknown key(s) colour; missing key(s) label_ids"),
    ({"advglue": {"file": "f", "splits": {}, "text_a": "a", "text_b": "b", "label": "l", "label_ids": {0: "x"}}},
     "robustness set 'advglue': splits maps dev split names to keys of the file"),
    ({"advglue": {"file": "f", "splits": {"train": "rte", "test": "x"}, "text_a": "a", "text_b": "b",
                  "label": "l", "label_ids": {0: "entailment"}}},
     "robustness set 'advglue': test, train is not a dev split of the task (dev)"),
    ({"advglue": {"file": "f", "splits": {"dev": "rte"}, "text_a": "a", "text_b": "b", "label": "l",
                  "label_ids": {}}},
     "robustness set 'advglue': label_ids maps the file's integer label ids to label names"),
    ({"advglue": {"file": "f", "splits": {"dev": "rte"}, "text_a": "a", "text_b": "b", "label": "l",
                  "label_ids": {0: "entailment", 1: "neutral"}}},
     "robustness set 'advglue': label_ids must map to distinct labels of the task (entailment, not_entailment); "
     "got entailment, neutral"),
    ({"advglue": {"file": "f", "splits": {"dev": "rte"}, "text_a": "a", "text_b": None, "label": "l",
                  "label_ids": {0: "entailment"}}},
     "robustness set 'advglue': text_b is needed for a pair task"),
])
def test_every_bad_block_is_one_exact_message(tasks, change, message):
    block = tasks["rte"].to_dict()
    block["robustness"] = change
    with pytest.raises(ConfigError) as err:
        parse_task_block("rte", block, "t.yml")
    assert str(err.value).endswith(message) and str(err.value).startswith("t.yml")


def test_unknown_keys_alone_and_a_task_with_two_dev_splits(tasks):
    block = tasks["rte"].to_dict()
    block["robustness"]["advglue"].update(colour=1, size=2)
    with pytest.raises(ConfigError) as err:
        parse_task_block("rte", block, "t.yml")
    assert str(err.value).endswith("robustness set 'advglue': unknown key(s) colour, size")
    mnli = tasks["mnli"].to_dict()
    mnli["robustness"]["advglue"]["splits"] = {"dev": "mnli"}
    with pytest.raises(ConfigError) as err:
        parse_task_block("mnli", mnli, "t.yml")
    assert str(err.value).endswith("robustness set 'advglue': dev is not a dev split of the task (dev_matched, "
                                   "dev_mismatched)")


def test_block_level_refusals_and_a_single_sentence_task(tasks):
    block = tasks["rte"].to_dict()
    block["robustness"] = {}
    with pytest.raises(ConfigError) as err:
        parse_task_block("rte", block, "t.yml")
    assert str(err.value).endswith("robustness must be a mapping of set names to sets")
    sst = tasks["sst"].to_dict()
    sst["robustness"]["advglue"]["text_b"] = "sentence2"
    with pytest.raises(ConfigError) as err:
        parse_task_block("sst", sst, "t.yml")
    assert str(err.value).endswith("robustness set 'advglue': text_b is null for a single task")
    stsb = tasks["stsb"].to_dict()
    stsb["robustness"] = {"adv": tasks["rte"].to_dict()["robustness"]["advglue"]}
    with pytest.raises(ConfigError) as err:
        parse_task_block("stsb", stsb, "t.yml")
    assert str(err.value).endswith("robustness set 'adv': robustness sets are for classification tasks")


def test_set_names_may_use_capitals_digits_dashes_and_underscores(tasks):
    block = tasks["rte"].to_dict()
    block["robustness"] = {"AdvGLUE_v1-2": block["robustness"]["advglue"]}
    assert list(parse_task_block("rte", block, "t.yml").robustness) == ["AdvGLUE_v1-2"]
