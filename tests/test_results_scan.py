"""Reading a campaign's run folders: which of several folders of one cell wins, what is skipped, a task the
project does not define, records without split names, and the device a run trained on. Expected values by hand."""
from __future__ import annotations

import json
import logging
import os

import pytest

from data_utils.task_def import ConfigError
from experiments.rapt.results import load_result, run_device, scan_results


def _folder(root, rel: str, task: str, evals: list[dict], finished: bool = True, split_name: bool = True):
    """A run folder ``root/rel`` with one dev record per entry of ``evals`` (its metrics; "adv": a robustness
    score) and, when ``finished``, the final train record."""
    folder = root / rel
    folder.mkdir(parents=True)
    recs = []
    for i, metrics in enumerate(evals):
        rec = {"epoch": i, "step": 10 * (i + 1), "task": task, "split": "dev", "train_seconds": 5.0 * (i + 1),
               "metrics": {k: v for k, v in metrics.items() if k != "adv"}}
        if split_name:
            rec["split_name"] = "dev"
        if "adv" in metrics:
            rec["robustness"] = {"advglue": {"acc": metrics["adv"]}}
        recs.append(rec)
    if finished:
        recs.append({"epoch": len(evals) - 1, "step": 10 * len(evals), "task": task, "split": "train",
                     "train_seconds": 5.0 * len(evals), "steps": 10 * len(evals), "loss": 0.5})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


@pytest.mark.parametrize("newer", ["s1-aaaa", "s1-bbbb"])
def test_of_several_folders_of_one_cell_the_newest_wins_and_the_log_says_which(tmp_path, caplog, newer):
    a = _folder(tmp_path, "rte/standard/s1-aaaa", "rte", [{"acc": 0.5}])
    b = _folder(tmp_path, "rte/standard/s1-bbbb", "rte", [{"acc": 0.6}])
    old = b if newer == "s1-aaaa" else a
    os.utime(old / "metrics.jsonl", (1_000_000, 1_000_000))
    with caplog.at_level(logging.WARNING, logger="experiments.rapt.results"):
        [result] = scan_results(tmp_path)
    assert result.folder.name == newer and result.best.primary == (0.5 if newer == "s1-aaaa" else 0.6)
    assert [r.getMessage() for r in caplog.records] == [
        f"rte/standard seed 1: several run folders (s1-aaaa, s1-bbbb); using {newer}"]


def test_equal_times_keep_the_later_folder_in_name_order(tmp_path):
    a = _folder(tmp_path, "rte/standard/s1-aaaa", "rte", [{"acc": 0.5}])
    b = _folder(tmp_path, "rte/standard/s1-bbbb", "rte", [{"acc": 0.6}])
    for f in (a, b):
        os.utime(f / "metrics.jsonl", (2_000_000, 2_000_000))
    assert [r.folder.name for r in scan_results(tmp_path)] == ["s1-bbbb"]


def test_hidden_folders_and_empty_runs_are_skipped_and_the_rest_still_read(tmp_path):
    _folder(tmp_path, ".cache/features/s1", "rte", [{"acc": 0.9}])  # not a task folder
    (tmp_path / "rte" / "rapt" / "s1").mkdir(parents=True)
    (tmp_path / "rte" / "rapt" / "s1" / "metrics.jsonl").write_text("")  # started, nothing written yet
    _folder(tmp_path, "rte/standard/s1", "rte", [{"acc": 0.55}])
    _folder(tmp_path, "sst/standard/s2", "sst", [{"acc": 0.85}], finished=False)
    got = {(r.task, r.name, r.seed, r.finished) for r in scan_results(tmp_path)}
    assert got == {("rte", "standard", 1, True), ("sst", "standard", 2, False)}


def test_a_task_the_project_does_not_define_is_scored_by_its_first_metric(tmp_path):
    folder = _folder(tmp_path, "mytask/standard/s3", "mytask", [{"f1": 0.4, "acc": 0.9}, {"f1": 0.6, "acc": 0.7}])
    result = load_result(folder)
    assert (result.metric, result.best.primary, result.best.epoch) == ("f1", 0.6, 1)
    empty = _folder(tmp_path, "mytask/rapt/s1", "mytask", [{}])
    with pytest.raises(ConfigError) as err:
        load_result(empty)
    assert str(err.value) == (f"{empty / 'metrics.jsonl'}:1: a dev record without the task's primary metric "
                              "'score' (it has none)")


def test_records_without_a_split_name_are_the_dev_split(tmp_path):
    folder = _folder(tmp_path, "rte/standard/s1", "rte", [{"acc": 0.5, "adv": 0.4}, {"acc": 0.6, "adv": 0.3}],
                     split_name=False)
    result = load_result(folder)
    assert [(e.epoch, e.step, e.train_seconds) for e in result.evaluations] == [(0, 10, 5.0), (1, 20, 10.0)]
    assert result.best.metrics == {"dev": {"acc": 0.6}}
    assert result.best.robustness == {"dev": {"advglue": {"acc": 0.3}}}
    assert (result.train_seconds, result.steps) == (10.0, 20)


@pytest.mark.parametrize("config, device", [
    ({"resolved_device": "cuda (NVIDIA H200)", "device": "auto"}, "cuda (NVIDIA H200)"),
    ({"device": "cuda:1"}, "cuda"),
    ({"device": "auto", "torch": "2.13.0+cpu"}, "cpu"),
    ({"torch": "2.13.0+cpu"}, "cpu"),
    ({"device": "auto", "torch": "2.13.0"}, "?"),
    ({}, "?"),
])
def test_the_device_a_run_trained_on(config, device):
    assert run_device(config) == device


@pytest.mark.parametrize("metrics, message", [
    ([0.5], "a dev record whose epoch, step, train_seconds or metrics are not numbers: not as mt_dnn.train writes it"),
    ({"acc": True}, "a dev record whose epoch, step, train_seconds or metrics are not numbers: not as mt_dnn.train "
                    "writes it"),
    ({"f1": 0.5, "mcc": 0.1}, "a dev record without the task's primary metric 'acc' (it has f1, mcc)"),
])
def test_a_dev_record_unlike_the_trainers_is_one_line_naming_file_and_line(tmp_path, metrics, message):
    folder = _folder(tmp_path, "rte/standard/s1", "rte", [{"acc": 0.5}])
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    bad = json.loads(lines[0]) | {"metrics": metrics, "epoch": 1, "step": 20}
    (folder / "metrics.jsonl").write_text("\n".join([lines[0], json.dumps(bad), lines[1]]) + "\n")
    with pytest.raises(ConfigError) as err:
        load_result(folder)
    assert str(err.value) == f"{folder / 'metrics.jsonl'}:2: {message}"


def test_steps_done_by_a_started_run(tmp_path):
    from experiments.rapt.results import done_steps

    assert done_steps(tmp_path) == 0  # no records yet
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "dev", "epoch": 0}) + "\n")
    assert done_steps(tmp_path) == 0  # a record without a step
    folder = _folder(tmp_path, "rte/standard/s1", "rte", [{"acc": 0.5}, {"acc": 0.6}], finished=False)
    assert done_steps(folder) == 20


def test_split_names_key_the_metrics_and_the_robustness_scores(tmp_path):
    folder = tmp_path / "mnli" / "standard" / "s1"
    folder.mkdir(parents=True)
    recs = [{"epoch": 0, "step": 5, "task": "mnli", "split": "dev", "split_name": split, "train_seconds": 2.0,
             "metrics": {"acc": acc}, "robustness": {"advglue": {"acc": adv}}}
            for split, acc, adv in (("dev_matched", 0.8, 0.3), ("dev_mismatched", 0.7, 0.4))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    best = load_result(folder).best
    assert best.metrics == {"dev_matched": {"acc": 0.8}, "dev_mismatched": {"acc": 0.7}}
    assert best.primary == pytest.approx(0.75)
    assert best.robustness == {"dev_matched": {"advglue": {"acc": 0.3}}, "dev_mismatched": {"advglue": {"acc": 0.4}}}


def test_flags_json_names_the_cell_wherever_the_folder_is(tmp_path):
    folder = _folder(tmp_path, "rte/renamed/s9-x", "rte", [{"acc": 0.5}])
    (folder / "flags.json").write_text(json.dumps({"task": "rte", "method_name": "smart", "seed": 4}))
    result = load_result(folder)
    assert (result.task, result.name, result.seed) == ("rte", "smart", 4)
    (folder / "flags.json").unlink()
    assert (load_result(folder).name, load_result(folder).seed) == ("renamed", 9)
