"""A run folder holds only our files, and a run is what it says: no deletion of files that are not ours, --resume
refuses changed training data, a task without a dev split is refused while evaluating, and nothing is announced
that was not written."""
from __future__ import annotations

import json

import yaml

from data_utils.task_def import ConfigError, load_task_defs
from mt_dnn import run_folder
from mt_dnn.cli_utils import run_cli
from mt_dnn.train import main
from tests.test_run_folder import _error, _snapshot, _unfinish


def _argv(glue, model, out, cache, *extra):
    return ["--glue_dir", str(glue), "--model", str(model), "--output_dir", str(out), "--cache_dir", str(cache),
            "--tasks", "rte", "--lr", "1e-3", "--log_every", "1", "--batch_size", "4", "--device", "cpu", *extra]


def _someones_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"theirs": true}\n')
    (folder / "best").mkdir(exist_ok=True)
    (folder / "best" / "notes.txt").write_text("my notes\n")
    return _snapshot(folder)


# ---- only our own files are ever deleted ----------------------------------------------------------------------

def test_a_folder_that_is_not_a_run_folder_is_refused_and_left_alone(tmp_path, glue_dir, tiny_model_dir, capsys):
    theirs = tmp_path / "theirs"
    before = _someones_folder(theirs)
    for flag in ("--resume", "--overwrite"):
        assert run_cli(main, _argv(glue_dir, tiny_model_dir, theirs, tmp_path / "c", "--max_steps", "1",
                                   flag)) == 2
        msg = _error(capsys)
        assert msg.startswith(f"error: {theirs} holds files that are not a run of mt_dnn.train (best, config.json; "
                              f"no {run_folder.MARKER})"), msg
        assert _snapshot(theirs) == before and sorted(p.name for p in theirs.iterdir()) == ["best", "config.json"]


def test_an_empty_output_dir_is_an_error_and_the_current_folder_is_not_taken(tmp_path, glue_dir, tiny_model_dir,
                                                                            capsys, monkeypatch):
    here = tmp_path / "here"
    before = _someones_folder(here)
    monkeypatch.chdir(here)
    assert run_cli(main, _argv(glue_dir, tiny_model_dir, "", tmp_path / "c", "--max_steps", "1", "--overwrite")) == 2
    assert _error(capsys) == "error: --output_dir is empty: name the run's folder"
    assert run_cli(main, _argv(glue_dir, tiny_model_dir, ".", tmp_path / "c", "--max_steps", "1", "--overwrite")) == 2
    assert "holds files that are not a run of mt_dnn.train" in _error(capsys)
    assert _snapshot(here) == before


def test_a_run_folder_of_an_earlier_version_resumes_and_gets_the_marker(tmp_path, glue_dir, tiny_model_dir):
    out = tmp_path / "run"
    args = _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "3", "--no_eval",
                 "--save_every_steps", "1")
    assert main(args) == 0
    assert (out / run_folder.MARKER).is_file()
    _unfinish(out)
    (out / run_folder.MARKER).unlink()  # as an earlier version left it: config.json with a recipe, metrics.jsonl
    assert main([*args, "--resume"]) == 0
    assert (out / run_folder.MARKER).is_file()
    assert "resumed from" in (out / "train.log").read_text()


def test_a_restart_from_scratch_keeps_the_earlier_best_until_a_new_one_replaces_it(tmp_path, glue_dir,
                                                                                    tiny_model_dir, monkeypatch):
    from mt_dnn.trainer import Trainer

    out = tmp_path / "run"
    args = _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--epochs", "1")
    assert main(args) == 0
    _unfinish(out)  # killed after its evaluation, with no checkpoint: --resume starts it again from scratch
    best = _snapshot(out / "best")

    def dies(self, micro):
        raise ConfigError("killed before the first evaluation")

    monkeypatch.setattr(Trainer, "train_step", dies)
    assert run_cli(main, [*args, "--resume"]) == 2
    assert _snapshot(out / "best") == best
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0  # the restarted run's best replaces it
    assert json.loads((out / "best" / "model.json").read_text())["step"] == 6


# ---- --resume refuses changed training data ---------------------------------------------------------------------

def test_resume_refuses_changed_training_data(tmp_path, tiny_model_dir, capsys):
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "g", tasks=("rte",), n_train=200, n_dev=8)
    out = tmp_path / "run"
    args = _argv(glue, tiny_model_dir, out, tmp_path / "c", "--max_steps", "3", "--no_eval",
                 "--save_every_steps", "1")
    assert main(args) == 0
    _unfinish(out)
    train = glue / "RTE" / "train.tsv"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:61]))  # the header and 60 rows of the 200
    before = _snapshot(out)
    assert run_cli(main, [*args, "--resume"]) == 2
    msg = _error(capsys)
    assert msg.startswith("error: --resume: this run was made with data.rte/train=") and \
        msg.endswith("(use another --output_dir, or --overwrite to start over)"), msg
    assert _snapshot(out) == before
    train.write_text("".join(lines))  # the same bytes again: the run goes on
    assert main([*args, "--resume"]) == 0


# ---- a task without a dev split ---------------------------------------------------------------------------------

def _task_without_dev(tmp_path):
    rte = load_task_defs()["rte"].to_dict()
    rte["splits"] = {k: v for k, v in rte["splits"].items() if k != "dev"}
    rte.pop("robustness", None)  # scored on the dev split
    path = tmp_path / "nodev.yml"
    path.write_text(yaml.safe_dump({"nodev": {**rte, "data_dir": "RTE"}}))
    return path


def test_a_task_without_a_dev_split_is_refused_unless_no_eval(tmp_path, glue_dir, tiny_model_dir, capsys):
    task_def = _task_without_dev(tmp_path)
    out = tmp_path / "run"
    args = [*_argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "2", "--task_def", str(task_def)),
            "--tasks", "nodev"]
    assert run_cli(main, args) == 2
    assert _error(capsys) == ("error: task nodev has no dev split to evaluate on: pass --no_eval (the final "
                                   "model is then saved as best/)")
    assert not out.exists()
    assert run_cli(main, [*args, "--no_eval"]) == 0
    assert (out / "best" / "model.safetensors").is_file()


def test_a_task_predicted_by_the_head_of_an_unselected_task_is_refused(tmp_path, glue_dir, tiny_model_dir, capsys):
    """A trained task whose head belongs to another task: that task must be trained too (its head is built with
    it); alone, a one-line error and nothing written; together, the run trains."""
    rte = load_task_defs()["rte"].to_dict()
    path = tmp_path / "rte2.yml"
    path.write_text(yaml.safe_dump({"rte2": {**rte, "data_dir": "RTE", "head": "rte"}}))
    out = tmp_path / "run"
    args = [*_argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "2", "--task_def", str(path))]
    assert run_cli(main, [*args, "--tasks", "rte2,mrpc"]) == 2
    assert _error(capsys) == ("error: task rte2 is predicted by the rte head: add rte to --tasks (the head is "
                              "built and trained with its own task)")
    assert not out.exists()
    assert run_cli(main, [*args, "--tasks", "rte,rte2"]) == 0


def test_no_model_is_announced_when_no_best_was_written(tmp_path, glue_dir, tiny_model_dir, capsys, monkeypatch):
    from mt_dnn.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", lambda self, epoch: float("nan"))  # a score that is never a best
    out = tmp_path / "run"
    assert run_cli(main, _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "2")) == 0
    printed = capsys.readouterr().out
    assert "model in" not in printed and not (out / "best").exists()
    assert f"no best model: no dev evaluation gave a score (nothing written to {out / 'best'})" in printed
