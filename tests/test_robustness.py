"""Robustness sets (AdvGLUE): read with an explicit label-id mapping, scored at every evaluation beside dev, in
``mt_dnn.predict``, and never used to choose anything. Expected values are worked out by hand from the files the
tests write."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from data_utils.glue import DataError
from data_utils.robustness import load_sets, read_set
from data_utils.task_def import ConfigError, load_task_defs, parse_task_block
from tests.conftest import real_glue_dir

WORDS = "the a cat dog sat ran on mat big small red".split()


def _nli(n: int, labels: list[int], a: str = "sentence1", b: str = "sentence2") -> list[dict]:
    return [{"idx": i, a: f"{WORDS[i % 11]} {WORDS[(i + 3) % 11]} sat", b: f"{WORDS[(i + 5) % 11]} ran",
             "label": lab} for i, lab in zip(range(n), labels)]


def test_mnli_label_ids_map_by_name_not_position(tmp_path):
    # AdvGLUE numbers MNLI 0 entailment, 1 neutral, 2 contradiction; our labels are listed
    # [contradiction, entailment, neutral], so the class ids must be 1, 2, 0 (by hand), not 0, 1, 2
    mnli = load_task_defs()["mnli"]
    f = tmp_path / "dev.json"
    f.write_text(json.dumps({"mnli": _nli(3, [0, 1, 2], "premise", "hypothesis"),
                             "mnli-mm": _nli(2, [2, 2], "premise", "hypothesis")}))
    assert [e.label for e in read_set(f, mnli, mnli.robustness["advglue"], "dev_matched")] == [1, 2, 0]
    assert [e.label for e in read_set(f, mnli, mnli.robustness["advglue"], "dev_mismatched")] == [0, 0]
    assert mnli.labels[1] == "entailment" and mnli.labels[2] == "neutral" and mnli.labels[0] == "contradiction"


@pytest.mark.parametrize("payload, fragment", [
    ("{not json", "not valid JSON"),
    (json.dumps({"sst2": []}), "key 'rte'"),
    (json.dumps({"rte": [{"idx": 0, "sentence1": "a", "label": 0}]}), "rte[0]: field 'sentence2'"),
    (json.dumps({"rte": [{"idx": 0, "sentence1": "a", "sentence2": "b", "label": 2}]}), "label 2 is not one"),
    (json.dumps({"rte": [{"idx": 0, "sentence1": "a", "sentence2": "b", "label": True}]}), "label True"),
    ('{"rte": [{"idx": NaN, "sentence1": "a", "sentence2": "b", "label": 0}]}', "NaN is not JSON"),
])
def test_a_malformed_file_is_a_one_line_error_naming_it(tmp_path, payload, fragment):
    rte = load_task_defs()["rte"]
    f = tmp_path / "dev.json"
    f.write_text(payload)
    with pytest.raises(DataError) as err:
        load_sets(rte, tmp_path)
    assert str(f) in str(err.value) and fragment in str(err.value) and "\n" not in str(err.value)


def test_an_unreadable_file_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    """No permission to read it (simulated: the tests may run as root, who reads anything)."""
    import pathlib

    import data_utils.robustness as robustness

    rte = load_task_defs()["rte"]
    f = tmp_path / "dev.json"
    f.write_text(json.dumps({"rte": _nli(2, [0, 1])}))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(robustness, "open", denied, raising=False)
    with pytest.raises(DataError) as err:
        load_sets(rte, tmp_path)
    assert str(err.value) == f"{f}: cannot read it (Permission denied)"
    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    with pytest.raises(DataError) as err:
        robustness.set_digests([rte], tmp_path)
    assert str(err.value) == f"{f}: cannot read it (Permission denied)"


def test_a_missing_file_is_skipped_with_one_warning(tmp_path, caplog):
    tasks = load_task_defs()
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING):
        assert load_sets(tasks["rte"], tmp_path, warned) == []
        assert load_sets(tasks["qnli"], tmp_path, warned) == []  # the same file: no second warning
    assert sum("not found" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("change, fragment", [
    ({"label_ids": {0: "entailment", 1: "neutral"}}, "distinct labels of the task"),
    ({"label_ids": {0: "entailment", 1: "entailment"}}, "distinct labels"),
    ({"label_ids": {"0": "entailment"}}, "integer label ids"),
    ({"splits": {"dev_matched": "rte"}}, "not a dev split"),
    ({"text_b": None}, "text_b is needed"),
    ({"colour": "red"}, "unknown key(s) colour"),
])
def test_bad_robustness_blocks_are_refused_when_read(change, fragment):
    block = load_task_defs()["rte"].to_dict()
    block["robustness"]["advglue"] = {**block["robustness"]["advglue"], **change}
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_task_block("rte", block, "t.yml")


def test_every_advglue_task_has_its_mapping_written_out():
    tasks = load_task_defs()
    # AdvGLUE's own numbering (its PROVENANCE: the Hugging Face glue ids), written here by hand
    expected = {"sst": {0: "0", 1: "1"}, "qqp": {0: "0", 1: "1"}, "qnli": {0: "entailment", 1: "not_entailment"},
                "rte": {0: "entailment", 1: "not_entailment"},
                "mnli": {0: "entailment", 1: "neutral", 2: "contradiction"}}
    assert {n: t.robustness["advglue"].label_ids for n, t in tasks.items() if t.robustness} == expected
    assert tasks["mnli"].robustness["advglue"].splits == {"dev_matched": "mnli", "dev_mismatched": "mnli-mm"}


def _constant_model_dir(tmp_path, tiny_model_dir, task: str, winner: str):
    """A saved model whose ``task`` head predicts the label ``winner`` for every input (zero weights, one bias)."""
    from transformers import AutoModel, AutoTokenizer

    from mt_dnn.model import MultiTaskModel, save_model

    t = load_task_defs()[task]
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), [t], "cls")
    head = model.heads[task].out
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[t.labels.index(winner)] = 5.0
    out = tmp_path / "model"
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), [t], out, {"epoch": 0})
    return out


def _mnli_glue_and_adv(tmp_path):
    """MNLI dev files (the columns the reader needs, as the official header names them) and an AdvGLUE file."""
    glue = tmp_path / "glue"
    (glue / "MNLI").mkdir(parents=True)
    for split in ("dev_matched", "dev_mismatched"):
        rows = [f"{i}\t{WORDS[i]} sat\t{WORDS[i + 1]} ran\t{lab}" for i, lab in enumerate(["neutral", "entailment"])]
        (glue / "MNLI" / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tgold_label\n" + "\n".join(rows) + "\n")
    adv = tmp_path / "adv"
    adv.mkdir()
    (adv / "dev.json").write_text(json.dumps({"mnli": _nli(4, [0, 0, 1, 2], "premise", "hypothesis"),
                                              "mnli-mm": _nli(3, [0, 1, 1], "premise", "hypothesis")}))
    return glue, adv


@pytest.mark.parametrize("saved_before_sets", [False, True], ids=["current", "saved-before-sets"])
def test_predict_scores_a_saved_model_on_a_hand_made_advglue_file(tmp_path, tiny_model_dir, capsys,
                                                                   saved_before_sets):
    """A run saved before task definitions listed robustness sets (no robustness block in its tasks.yml) is
    scored on the packaged ones, with the same numbers."""
    import yaml

    from mt_dnn.predict import main
    # matched: ids 0, 0, 1, 2 -> a model that always says "entailment" gets 2 of 4 right (a mapping by
    # position would turn id 1 into "entailment": 1 of 4); mismatched: 0, 1, 1 -> 1 of 3
    glue, adv = _mnli_glue_and_adv(tmp_path)
    model = _constant_model_dir(tmp_path, tiny_model_dir, "mnli", "entailment")
    if saved_before_sets:
        defs = yaml.safe_load((model / "tasks.yml").read_text())
        del defs["mnli"]["robustness"]  # as a run saved before the sets existed wrote it
        (model / "tasks.yml").write_text(yaml.safe_dump(defs))
    sub = tmp_path / "sub"
    assert main(["--checkpoint", str(model), "--glue_dir", str(glue), "--submission_dir", str(sub),
                 "--robustness_dir", str(adv), "--device", "cpu"]) in (0, 1)
    scores = json.loads((sub / "dev_scores.json").read_text())
    assert scores["mnli/dev_matched"]["robustness"]["advglue"]["acc"] == pytest.approx(2 / 4)
    assert scores["mnli/dev_mismatched"]["robustness"]["advglue"]["acc"] == pytest.approx(1 / 3)
    said = "lists no robustness sets; scoring the packaged ones (advglue)" in capsys.readouterr().err
    assert said == saved_before_sets


def _train(tmp_path, glue, model_dir, name, *extra):
    from mt_dnn.train import main

    out = tmp_path / name
    assert main(["--tasks", "rte", "--glue_dir", str(glue), "--model", str(model_dir), "--output_dir", str(out),
                 "--cache_dir", str(tmp_path / "cache"), "--batch_size", "8", "--lr", "1e-3", "--epochs", "2",
                 "--device", "cpu", "--method", "rapt", "--rapt_max_layer", "2", *extra]) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_evaluation_scores_the_set_and_nothing_else_changes(tmp_path, tiny_model_dir, monkeypatch):
    from tests.glue_fixtures import write_glue

    monkeypatch.delenv("ROBUSTNESS_DIR", raising=False)
    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    adv = tmp_path / "adv"
    adv.mkdir()
    labels = [0, 1, 1, 1, 0, 1]
    (adv / "dev.json").write_text(json.dumps({"rte": _nli(6, labels)}))
    with_set = _train(tmp_path, glue, tiny_model_dir, "with", "--robustness_dir", str(adv))
    (tmp_path / "empty").mkdir()  # a folder without the set's file: its scores are skipped
    without = _train(tmp_path, glue, tiny_model_dir, "without", "--robustness_dir", str(tmp_path / "empty"))
    dev = [r for r in with_set if r["split"] == "dev"]
    assert len(dev) == 2 and all(set(r["robustness"]) == {"advglue"} for r in dev)
    for r in dev:  # accuracy on 6 rows: a multiple of 1/6
        acc = r["robustness"]["advglue"]["acc"]
        assert 0 <= acc <= 1 and abs(acc * 6 - round(acc * 6)) < 1e-9
    assert all("robustness" not in r for r in without)
    # evaluation only: the training and the dev scores are the same with and without the set
    clocks = ("train_seconds", "train_cpu_seconds")
    strip = [{k: v for k, v in r.items() if k not in ("robustness", *clocks)} for r in with_set]
    assert strip == [{k: v for k, v in r.items() if k not in clocks} for r in without]


def test_the_saved_tasks_carry_the_sets(tmp_path, tiny_model_dir):
    from mt_dnn.model import load_model

    rte = load_task_defs()["rte"]
    d = _constant_model_dir(tmp_path, tiny_model_dir, "rte", "entailment")
    model, _, _ = load_model(d)
    assert model.task_defs["rte"].robustness == rte.robustness
    assert dataclasses.replace(rte, robustness={}).to_dict().get("robustness") is None


@pytest.mark.skipif(real_glue_dir() is None, reason="the real GLUE files are not here (GLUE_DIR)")
def test_the_real_advglue_file_reads_with_its_published_sizes():
    from data_utils.robustness import robustness_dir

    folder = robustness_dir(None, real_glue_dir())
    if folder is None or not (folder / "dev.json").is_file():
        pytest.skip("the AdvGLUE dev file is not beside GLUE_DIR")
    tasks = load_task_defs()
    sizes = {(n, rs.dev_split): len(rs.examples) for n in ("sst", "qqp", "mnli", "qnli", "rte")
             for rs in load_sets(tasks[n], folder)}
    # the sizes its PROVENANCE.md lists
    assert sizes == {("sst", "dev"): 148, ("qqp", "dev"): 78, ("mnli", "dev_matched"): 121,
                     ("mnli", "dev_mismatched"): 162, ("qnli", "dev"): 148, ("rte", "dev"): 81}


def test_resume_refuses_a_changed_robustness_file(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import os
    import signal

    from mt_dnn.cli_utils import run_cli
    from mt_dnn.train import main
    from mt_dnn.trainer import Trainer
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    adv = tmp_path / "adv"
    adv.mkdir()
    (adv / "dev.json").write_text(json.dumps({"rte": _nli(4, [0, 1, 1, 0])}))
    argv = ["--tasks", "rte", "--glue_dir", str(glue), "--model", str(tiny_model_dir), "--output_dir",
            str(tmp_path / "run"), "--batch_size", "8", "--lr", "1e-3", "--epochs", "2", "--device", "cpu",
            "--robustness_dir", str(adv)]
    count = Trainer._count_step

    def stop_at_step_4(self) -> None:  # as a SIGUSR2 would: the step ends, checkpoint/ is written, exit 75
        count(self)
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGUSR2)
    monkeypatch.setattr(Trainer, "_count_step", stop_at_step_4)
    assert run_cli(main, argv) == 75
    monkeypatch.setattr(Trainer, "_count_step", count)
    (adv / "dev.json").write_text(json.dumps({"rte": _nli(4, [1, 1, 1, 1])}))  # other labels: other scores
    capsys.readouterr()
    assert run_cli(main, [*argv, "--resume"]) == 2
    assert "rte/advglue" in capsys.readouterr().err
    (adv / "dev.json").write_text(json.dumps({"rte": _nli(4, [0, 1, 1, 0])}))  # the file it started with
    assert run_cli(main, [*argv, "--resume"]) == 0


def test_predict_checks_the_robustness_files_before_predicting(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import mt_dnn.predict as predict_mod
    from mt_dnn.cli_utils import run_cli

    calls = []
    real = predict_mod.predict
    monkeypatch.setattr(predict_mod, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    glue, adv = _mnli_glue_and_adv(tmp_path)
    model = _constant_model_dir(tmp_path, tiny_model_dir, "mnli", "entailment")
    sub = tmp_path / "sub"
    args = ["--checkpoint", str(model), "--glue_dir", str(glue), "--submission_dir", str(sub), "--device", "cpu"]
    # a misspelled folder is an error, not a warning and a run without the scores
    assert run_cli(predict_mod.main, args + ["--robustness_dir", str(tmp_path / "advglu")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: --robustness_dir {tmp_path / 'advglu'}: no such folder"
    # a file without the mismatched key: found before the matched dev split is predicted
    (adv / "dev.json").write_text(json.dumps({"mnli": _nli(4, [0, 0, 1, 2], "premise", "hypothesis")}))
    assert run_cli(predict_mod.main, args + ["--robustness_dir", str(adv)]) == 2
    assert "key 'mnli-mm': missing" in capsys.readouterr().err
    assert calls == [] and not sub.exists()
