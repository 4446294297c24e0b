"""predict refuses, before predicting anything, what it cannot do; damaged model folders are one-line errors."""
from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

import mt_dnn.predict as predict_mod
from data_utils.task_def import ConfigError, load_task_defs
from mt_dnn.cli_utils import run_cli
from mt_dnn.model import find_model_dir, load_model
from mt_dnn.predict import main as predict_main
from mt_dnn.train import main as train_main
from tests.glue_fixtures import write_glue


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    """RTE files, the test file at its official 3000 rows so that a submission validates."""
    root = write_glue(tmp_path_factory.mktemp("glue") / "glue", tasks=("rte",))
    path = root / "RTE" / "test.tsv"
    header, *rows = path.read_text().splitlines()
    path.write_text("\n".join([header] + [f"{i}\t" + rows[i % len(rows)].split("\t", 1)[1]
                                          for i in range(3000)]) + "\n")
    return root


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tiny_model_dir):
    """A run folder with ``best/`` (an untrained tiny BERT with an rte head) and the run's config.json."""
    from transformers import AutoModel, AutoTokenizer

    from mt_dnn.model import MultiTaskModel, save_model

    run = tmp_path_factory.mktemp("run")
    rte = load_task_defs()["rte"]
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), [rte], "cls")
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), [rte], run / "best")
    (run / "config.json").write_text(json.dumps({"max_seq_len": 64}))
    return run


@pytest.fixture
def run_copy(saved_run, tmp_path):
    return shutil.copytree(saved_run, tmp_path / "run")


@pytest.fixture
def predictions(monkeypatch):
    """Counts the batches of rows predicted."""
    calls = []
    real = predict_mod.predict

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(predict_mod, "predict", counting)
    return calls


def _predict(capsys, run, glue, out, *extra):
    code = run_cli(predict_main, ["--checkpoint", str(run), "--glue_dir", str(glue), "--submission_dir", str(out),
                                  *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()[-1] if captured.err.strip() else ""


def test_without_tasks_predicts_what_it_has_and_fills_the_rest(saved_run, glue, tmp_path, capsys, predictions):
    code, out, _ = _predict(capsys, saved_run, glue, tmp_path / "sub")
    assert code == 0 and "OK:" in out and "BASELINE-FILLED" in out and "10 of 11 files" in out
    assert "predicted by a model: RTE.tsv" in out and len(predictions) == 2  # dev and test


@pytest.mark.parametrize("tasks,message", [
    ("qqp", "error: --tasks qqp: no checkpoint has a head for it (the checkpoints' heads: rte)"),
    ("rte,ax", "error: --tasks ax: no checkpoint has a head for it"),
    ("rtee", "error: unknown task(s) rtee; valid tasks: ax, cola, mnli"),
    ("rte,rte", "error: a task is named twice in rte,rte"),
])
def test_tasks_it_cannot_predict_are_errors(saved_run, glue, tmp_path, capsys, predictions, tasks, message):
    code, out, last = _predict(capsys, saved_run, glue, tmp_path / "sub", "--tasks", tasks)
    assert code == 2 and last.startswith(message) and "OK" not in out
    assert predictions == [] and not (tmp_path / "sub").exists()


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_submission_dir_that_is_a_file_is_refused_first(saved_run, glue, tmp_path, capsys, predictions, where):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    out = blocker if where == "itself" else blocker / "sub"
    code, _, last = _predict(capsys, saved_run, glue, out)
    assert code == 2 and str(blocker) in last and "not a folder" in last
    assert predictions == [] and blocker.read_text() == "x"


def test_max_seq_len_beyond_the_encoder_is_refused_first(saved_run, glue, tmp_path, capsys, predictions):
    code, _, last = _predict(capsys, saved_run, glue, tmp_path / "sub", "--max_seq_len", "200")
    assert code == 2 and last.startswith(f"error: --max_seq_len 200 is more than encoder {saved_run / 'best'} "
                                         "can take: 128 tokens")
    assert predictions == [] and not (tmp_path / "sub").exists()


# ---- damaged model folders ------------------------------------------------------------------------------------

def _damage(best, kind):
    if kind == "truncated weights":
        w = best / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        return w, "not a readable safetensors file"
    if kind == "garbage weights":
        (best / "model.safetensors").write_bytes(b"\x00" * 64)
        return best / "model.safetensors", "not a readable safetensors file"
    if kind == "missing weights":
        (best / "model.safetensors").unlink()
        return best / "model.safetensors", "missing"
    if kind == "missing model.json":
        (best / "model.json").unlink()
        return best / "model.json", "missing"
    if kind == "corrupt model.json":
        (best / "model.json").write_text('{"pooling": "cls", ')
        return best / "model.json", "not a readable model description"
    if kind == "model.json not a description":
        (best / "model.json").write_text("[1, 2]")
        return best / "model.json", "not a model description"
    if kind == "corrupt tasks.yml":
        (best / "tasks.yml").write_text("rte: [unclosed\n")
        return best / "tasks.yml", "not valid YAML"
    (best / "encoder" / "config.json").write_text("{ nope")
    return best / "encoder" / "config.json", "cannot read the encoder config"


KINDS = ["truncated weights", "garbage weights", "missing weights", "missing model.json", "corrupt model.json",
         "model.json not a description", "corrupt tasks.yml", "corrupt encoder config"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_model_folder_is_one_line_naming_the_file(run_copy, glue, tmp_path, capsys, predictions, kind):
    path, words = _damage(run_copy / "best", kind)
    code, _, last = _predict(capsys, run_copy, glue, tmp_path / "sub")
    assert code == 2 and last.startswith(f"error: {path}") and words in last, last
    assert predictions == [] and not (tmp_path / "sub").exists()
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.")):
        load_model(run_copy / "best")


def test_best_old_is_used_when_best_is_missing(run_copy):
    os.replace(run_copy / "best", run_copy / "best.old")  # a kill between swap_in's two renames
    assert find_model_dir(run_copy) == run_copy / "best.old"
    assert [t.name for t in load_model(find_model_dir(run_copy))[2]] == ["rte"]


def test_best_old_is_used_when_best_is_incomplete(run_copy, caplog):
    shutil.copytree(run_copy / "best", run_copy / "best.old")
    (run_copy / "best" / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING):
        assert find_model_dir(run_copy) == run_copy / "best.old"
    assert any("using" in r.getMessage() and "best.old" in r.getMessage() for r in caplog.records)
    model, _, tasks = load_model(find_model_dir(run_copy))
    assert [t.name for t in tasks] == ["rte"]
    assert find_model_dir(run_copy / "best") == run_copy / "best.old"  # the folder named directly, too


def test_a_complete_best_wins_over_best_old(run_copy):
    shutil.copytree(run_copy / "best", run_copy / "best.old")
    assert find_model_dir(run_copy) == run_copy / "best"


# ---- --bad_rows through predict and train ------------------------------------------------------------------

def _bad_dev_row(root):
    path = root / "RTE" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\tmaybe"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_predict_bad_rows(saved_run, glue, tmp_path, capsys):
    g = shutil.copytree(glue, tmp_path / "glue")
    path = _bad_dev_row(g)
    code, _, last = _predict(capsys, saved_run, g, tmp_path / "s1")
    assert code == 2 and last.startswith(f"error: {path}:3: unknown label 'maybe'")
    code, out, _ = _predict(capsys, saved_run, g, tmp_path / "s2", "--bad_rows", "skip", "--tasks", "rte")
    assert code == 0 and "OK:" in out and "predicted by a model: RTE.tsv" in out
    scores = json.loads((tmp_path / "s2" / "dev_scores.json").read_text())
    assert set(scores) == {"rte/dev"}


def test_train_bad_rows(tmp_path, glue_dir, tiny_model_dir, capsys):
    path = glue_dir / "RTE" / "train.tsv"
    with open(path, "a") as f:
        f.write("99\tshort row\n\n")  # a malformed row, then a final empty line (not a row)
    argv = ["--tasks", "rte", "--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--max_steps", "1",
            "--batch_size", "8", "--cache_dir", str(tmp_path / "cache"), "--no_eval"]
    assert run_cli(train_main, argv + ["--output_dir", str(tmp_path / "a")]) == 2
    assert f"{path}:26: short row" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert run_cli(train_main, argv + ["--output_dir", str(tmp_path / "b"), "--bad_rows", "skip"]) == 0
    err = capsys.readouterr().err
    assert f"skipped 1 malformed row(s) (--bad_rows skip): {path}:26 (short row)" in err
    assert json.loads((tmp_path / "b" / "config.json").read_text())["bad_rows"] == "skip"
    with pytest.raises(SystemExit) as exc:  # argparse's choices
        train_main(argv + ["--output_dir", str(tmp_path / "c"), "--bad_rows", "drop"])
    assert exc.value.code == 2 and "invalid choice: 'drop'" in capsys.readouterr().err


def test_a_checkpoint_left_out_by_tasks_is_not_checked_or_loaded(saved_run, tmp_path, tiny_model_dir):
    """Two checkpoints; --tasks picks the second's task: the first's limits do not matter."""
    from transformers import AutoModel, AutoTokenizer

    from mt_dnn.model import MultiTaskModel, save_model
    from mt_dnn.predict import plan_checkpoints
    from mt_dnn.saved_model import read_model_dir

    sst = load_task_defs()["sst"]
    other = tmp_path / "sst_run"
    save_model(MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), [sst], "cls"),
               AutoTokenizer.from_pretrained(tiny_model_dir), [sst], other / "best")
    saved = [read_model_dir(find_model_dir(saved_run)), read_model_dir(find_model_dir(other))]
    plans = plan_checkpoints(saved, load_task_defs(), "sst", None)
    assert [list(p.tasks) for p in plans] == [[], ["sst"]] and plans[1].max_len == 128
    with pytest.raises(ConfigError, match="--max_seq_len 200 is more than encoder"):
        plan_checkpoints(saved, load_task_defs(), "sst", 200)
    plan_checkpoints(saved, load_task_defs(), "rte", 100)


def test_a_model_whose_output_is_not_finite_scores_and_submits_nothing(run_copy, glue, tmp_path, capsys):
    """argmax of NaN logits is class 0: a broken model would otherwise give a plausible dev accuracy and a
    submission that validates. Both paths refuse it, as own-text prediction does, and write no zip."""
    import torch
    from safetensors.torch import load_file, save_file

    weights_file = run_copy / "best" / "model.safetensors"
    weights = load_file(str(weights_file))
    bias = [k for k in weights if k.startswith("heads.rte") and k.endswith("bias")]
    assert bias
    for k in bias:
        weights[k] = torch.full_like(weights[k], float("nan"))
    save_file(weights, str(weights_file))
    code, out, last = _predict(capsys, run_copy, glue, tmp_path / "sub", "--tasks", "rte")
    assert code == 2 and "OK" not in out and "dev rte" not in out
    assert last.startswith("error: rte dev: the model's output is not a finite number for ") and \
        "(first: row 0)" in last
    left = sorted(p.name for p in (tmp_path / "sub").rglob("*")) if (tmp_path / "sub").exists() else []
    assert left == [], left


def test_a_model_folder_moved_out_of_its_run_keeps_the_length_it_was_trained_with(tmp_path, glue_dir,
                                                                                   tiny_model_dir, monkeypatch):
    """best/ records the run's max_seq_len in model.json, so a copy outside the run folder (no config.json
    beside it) tokenizes as the run did; a folder that records it nowhere gets 128 with a warning saying so."""
    import mt_dnn.saved_model as saved_model
    from mt_dnn.saved_model import DEFAULT_MAX_LEN, run_max_len

    run = tmp_path / "run"
    assert train_main(["--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--output_dir", str(run),
                       "--tasks", "rte", "--max_steps", "2", "--batch_size", "4", "--max_seq_len", "16",
                       "--cache_dir", str(tmp_path / "c")]) == 0
    assert json.loads((run / "best" / "model.json").read_text())["max_seq_len"] == 16
    copy = shutil.copytree(run / "best", tmp_path / "elsewhere" / "model")
    warned: list[str] = []
    monkeypatch.setattr(saved_model.logger, "warning", lambda msg, *a: warned.append(msg % a))
    assert run_max_len(run / "best") == run_max_len(copy) == 16 and not warned
    assert run_max_len(copy, 32) == 32  # the flag wins
    meta = json.loads((copy / "model.json").read_text())
    del meta["max_seq_len"]  # as saved before model.json recorded it
    (copy / "model.json").write_text(json.dumps(meta))
    assert run_max_len(copy) == DEFAULT_MAX_LEN
    assert warned == [
        f"{copy}: the max_seq_len it was trained with is recorded neither in its model.json nor in a run "
        f"config.json beside it; using {DEFAULT_MAX_LEN}: pass --max_seq_len if it was trained with another"]


def test_a_missing_dev_file_is_named_not_skipped_in_silence(saved_run, glue, tmp_path, capsys):
    no_dev = shutil.copytree(glue, tmp_path / "glue")
    (no_dev / "RTE" / "dev.tsv").unlink()
    code = run_cli(predict_main, ["--checkpoint", str(saved_run), "--glue_dir", str(no_dev), "--submission_dir",
                                  str(tmp_path / "sub"), "--tasks", "rte"])
    err = capsys.readouterr().err
    assert code == 0 and f"rte: no dev file {no_dev / 'RTE' / 'dev.tsv'}: not scored" in err
    assert "rte/dev" not in json.loads((tmp_path / "sub" / "dev_scores.json").read_text())


@pytest.mark.parametrize("tasks_yml", ["{}\n", "swapped"])
def test_task_definitions_whose_labels_differ_from_the_heads_are_refused(run_copy, tasks_yml):
    """model.json records each head's label vocabulary; a tasks.yml that lost its definitions (the packaged ones
    fill in) or lists the labels in another order would map every class id to the wrong label."""
    import yaml

    from mt_dnn.saved_model import read_model_dir

    best = run_copy / "best"
    meta = json.loads((best / "model.json").read_text())
    if tasks_yml == "swapped":
        defs = yaml.safe_load((best / "tasks.yml").read_text())
        defs["rte"]["labels"] = list(reversed(defs["rte"]["labels"]))
        (best / "tasks.yml").write_text(yaml.safe_dump(defs))
        want = (f"{best / 'tasks.yml'}: task rte's labels ['not_entailment', 'entailment'] are not the "
                f"['entailment', 'not_entailment'] its head was trained with ({best / 'model.json'})")
    else:  # the packaged rte has the trained order: accepted; a head trained with another order is not
        (best / "tasks.yml").write_text(tasks_yml)
        meta["labels"]["rte"] = ["not_entailment", "entailment"]
        (best / "model.json").write_text(json.dumps(meta))
        want = (f"{best / 'tasks.yml'}: task rte's labels ['entailment', 'not_entailment'] are not the "
                f"['not_entailment', 'entailment'] its head was trained with ({best / 'model.json'})")
    with pytest.raises(ConfigError) as err:
        read_model_dir(best)
    assert str(err.value) == want


def test_a_glue_dir_without_the_tasks_files_is_refused_first(saved_run, tmp_path, capsys, predictions):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, last = _predict(capsys, saved_run, empty, tmp_path / "sub")
    assert code == 2 and last == (f"error: --glue_dir {empty}: no dev or test file of any task the checkpoints "
                                  f"predict (e.g. {empty / 'RTE' / 'dev.tsv'}); nothing would be predicted")
    code, _, last = _predict(capsys, saved_run, empty, tmp_path / "sub", "--tasks", "rte")
    assert code == 2 and last == (f"error: --tasks rte: no dev or test file under --glue_dir {empty} (e.g. "
                                  f"{empty / 'RTE' / 'dev.tsv'}); nothing would be predicted for it")
    assert predictions == [] and not (tmp_path / "sub").exists()


def test_dev_files_without_test_files_say_the_submission_is_baseline_only(saved_run, glue, tmp_path, capsys):
    g = shutil.copytree(glue, tmp_path / "glue")
    (g / "RTE" / "test.tsv").unlink()
    code, out, _ = _predict(capsys, saved_run, g, tmp_path / "sub")
    assert code == 0 and "predicted by a model: none" in out and "11 of 11 files" in out
    assert "holds baseline labels only: no test file was predicted by a model" in out
    assert "is a valid GLUE submission" not in out
    assert "rte/dev" in json.loads((tmp_path / "sub" / "dev_scores.json").read_text())


def test_a_failed_prediction_writes_no_cache_file(saved_run, glue, tmp_path, capsys):
    g = shutil.copytree(glue, tmp_path / "glue")
    path = g / "RTE" / "test.tsv"
    path.write_text(path.read_text() + "3000\tonly one column\n")  # a short last row, found after dev is scored
    cache = tmp_path / "cache"
    code, _, last = _predict(capsys, saved_run, g, tmp_path / "sub", "--cache_dir", str(cache))
    assert code == 2 and last.startswith(f"error: {path}:3002:")
    assert not cache.exists() or not any(cache.rglob("*.pt"))
    # the same files without the bad row: the dev and test features are cached once it succeeds
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    code, _, _ = _predict(capsys, saved_run, g, tmp_path / "sub", "--cache_dir", str(cache))
    assert code == 0 and len(list(cache.rglob("*.pt"))) == 2


def test_ax_through_a_head_trained_with_another_label_order_gets_the_right_names(tmp_path, tiny_model_dir, capsys):
    """A run trained with MNLI's labels in its own order saves only mnli; the packaged AX is read by that head, so
    its class ids are the head's: a head that always answers 'neutral' writes 'neutral' in AX.tsv."""
    import torch
    import yaml
    from transformers import AutoModel, AutoTokenizer

    from mt_dnn.model import MultiTaskModel, save_model

    mnli = load_task_defs()["mnli"].to_dict()
    mnli["labels"] = ["neutral", "contradiction", "entailment"]  # the packaged order puts neutral last
    extra = tmp_path / "mnli.yml"
    extra.write_text(yaml.safe_dump({"mnli": mnli}))
    task = load_task_defs([extra])["mnli"]
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), [task], "cls")
    with torch.no_grad():
        model.heads["mnli"].out.weight.zero_()
        model.heads["mnli"].out.bias.zero_()
        model.heads["mnli"].out.bias[0] = 5.0  # id 0: neutral in the run's order
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), [task], tmp_path / "best")
    glue = write_glue(tmp_path / "glue", tasks=("mnli", "ax"))
    code = run_cli(predict_main, ["--checkpoint", str(tmp_path / "best"), "--glue_dir", str(glue),
                                  "--submission_dir", str(tmp_path / "sub")])
    assert code in (0, 1)  # the fixture's test files are not the official sizes
    for name in ("AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"):
        rows = (tmp_path / "sub" / name).read_text().splitlines()[1:]
        assert rows and {r.split("\t")[1] for r in rows} == {"neutral"}, name


@pytest.mark.parametrize("extra, message", [
    (["--task", "rte"], "--task: only with --input (for GLUE tasks, --tasks)"),
    (["--output", "p.jsonl", "--text_a", "s"], "--output, --text_a: only with --input"),
])
def test_flags_of_own_input_are_refused_with_glue_files(saved_run, glue, tmp_path, capsys, predictions, extra,
                                                          message):
    with pytest.raises(SystemExit) as exit_:
        _predict(capsys, saved_run, glue, tmp_path / "sub", *extra)
    assert exit_.value.code == 2 and capsys.readouterr().err.strip().endswith(f"error: {message}")
    assert predictions == [] and not (tmp_path / "sub").exists()


def test_glue_flags_are_refused_with_own_input(saved_run, tmp_path, capsys):
    rows = tmp_path / "in.tsv"
    rows.write_text("sentence1\tsentence2\na b\tc d\n")
    with pytest.raises(SystemExit) as exit_:
        run_cli(predict_main, ["--checkpoint", str(saved_run), "--input", str(rows), "--task", "rte", "--output",
                               str(tmp_path / "p.jsonl"), "--tasks", "rte", "--cache_dir", str(tmp_path / "c")])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip().endswith(
        "error: --tasks, --cache_dir: only with --glue_dir (GLUE files)")
    assert not (tmp_path / "p.jsonl").exists()
