"""Prediction output you can trust: strict JSON, never an input overwritten, devices, pipes and symlinks written
through, a folder or an unwritable place refused before any work, and the own-text path (``--input``,
``load_run``) as strict as the GLUE path (run config, ``--max_seq_len``, lone surrogates, ``--device``)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

import mt_dnn.api as api
import mt_dnn.predict as predict_mod
from data_utils.glue import DataError
from data_utils.task_def import ConfigError, load_task_defs
from mt_dnn.cli_utils import run_cli
from mt_dnn.predict import main as predict_main
from mt_dnn.runtime import pick_device
from tests.conftest import REPO
from tests.glue_fixtures import write_glue

ROWS = [("the cat sees a dog .", "a dog is seen ."), ("the boy eats food .", "a girl runs ."),
        ("a red car is fast .", "the car is red .")]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tiny_model_dir):
    """A run folder with ``best/`` (an untrained tiny BERT, 128 positions, with an rte head) and config.json."""
    from transformers import AutoModel, AutoTokenizer

    from mt_dnn.model import MultiTaskModel, save_model

    run = tmp_path_factory.mktemp("run")
    rte = load_task_defs()["rte"]
    torch.manual_seed(0)
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), [rte], "cls")
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), [rte], run / "best")
    (run / "config.json").write_text(json.dumps({"max_seq_len": 64}))
    return run


@pytest.fixture
def tsv(tmp_path):
    path = tmp_path / "in.tsv"
    path.write_text("id\tsentence1\tsentence2\n" + "".join(f"r{i}\t{a}\t{b}\n" for i, (a, b) in enumerate(ROWS)))
    return path


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if a model is loaded: the error must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")
    monkeypatch.setattr(api, "load_model", refuse)


def _own(capsys, run, inp, out, *extra):
    code = run_cli(predict_main, ["--checkpoint", str(run), "--task", "rte", "--input", str(inp), "--output",
                                  str(out), "--device", "cpu", *extra])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith(("error:", "Traceback"))]
    return code, captured.out, errors


def _strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


def _unwritable(tmp_path: Path) -> Path:
    """A folder that refuses new files: a read-only one, or, for root (who may write anywhere), /sys."""
    for folder in (tmp_path / "read-only", Path("/sys")):
        if folder.parent == tmp_path:
            folder.mkdir()
            folder.chmod(0o555)
        try:
            fd, name = tempfile.mkstemp(dir=folder)
        except OSError:
            return folder
        os.close(fd)
        os.unlink(name)
    pytest.skip("no folder here refuses new files")


# ---- strict JSON out --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_an_id_json_has_no_number_for_is_refused_naming_file_and_line(saved_run, tmp_path, capsys, literal):
    path = tmp_path / "in.jsonl"
    path.write_text(f'{{"id": 1, "sentence1": "{ROWS[0][0]}", "sentence2": "{ROWS[0][1]}"}}\n'
                    f'{{"id": {literal}, "sentence1": "{ROWS[1][0]}", "sentence2": "{ROWS[1][1]}"}}\n')
    out = tmp_path / "preds.jsonl"
    code, _, errors = _own(capsys, saved_run, path, out)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: {path}:2: the id 'id' is ") and "not a finite number" in errors[0]
    assert not out.exists()


def test_output_lines_are_strict_json(saved_run, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "sentence1": a, "sentence2": b}) + "\n"
                            for i, (a, b) in zip([7, 2.5, True], ROWS)))
    out = tmp_path / "preds.jsonl"
    code, _, errors = _own(capsys, saved_run, path, out)
    assert code == 0 and errors == []
    assert [_strict_json(line)["id"] for line in out.read_text().splitlines()] == [7, 2.5, True]


def test_non_finite_model_output_is_an_error_not_a_nan_in_the_file(saved_run, tsv, tmp_path, capsys, monkeypatch):
    def nan_logits(model, features, *args, **kwargs):
        logits = torch.zeros(len(features), 2).numpy()
        logits[1, 0] = float("nan")
        return logits
    monkeypatch.setattr(api, "predict_logits", nan_logits)
    out = tmp_path / "preds.jsonl"
    code, _, errors = _own(capsys, saved_run, tsv, out)
    assert code == 2 and len(errors) == 1, errors
    assert "not a finite number for 1 row(s) (first: id 'r1')" in errors[0] and not out.exists()


# ---- an output that is a file the run reads ---------------------------------------------------------------------

@pytest.mark.parametrize("which", ["input", "symlink to the input", "hard link to the input", "run config",
                                   "model.json", "encoder config", "task definitions"])
def test_output_that_is_a_file_the_run_reads_is_refused_before_anything(saved_run, tsv, tmp_path, capsys,
                                                                        no_loading, which):
    run = shutil.copytree(saved_run, tmp_path / "run")
    reads = {"input": tsv, "run config": run / "config.json", "model.json": run / "best" / "model.json",
             "encoder config": run / "best" / "encoder" / "config.json",
             "task definitions": REPO / "data_utils" / "glue_tasks.yml"}
    out = reads.get(which)
    if which == "symlink to the input":
        out = tmp_path / "link.tsv"
        out.symlink_to(tsv)
    elif which == "hard link to the input":
        out = tmp_path / "hard.tsv"
        os.link(tsv, out)
    target = tsv if out not in reads.values() else out
    before = target.read_bytes()
    code, _, errors = _own(capsys, run, tsv, out)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: --output {out}: is ") and "the run reads" in errors[0], errors[0]
    assert target.read_bytes() == before


# ---- devices, pipes, symlinks, folders, umask --------------------------------------------------------------------

def test_an_existing_folder_is_refused_before_anything(saved_run, tsv, tmp_path, capsys, no_loading):
    folder = tmp_path / "preds"
    folder.mkdir()
    code, _, errors = _own(capsys, saved_run, tsv, folder)
    assert code == 2 and errors == [f"error: --output {folder}: is a folder; give a file name"]
    assert list(folder.iterdir()) == []


def test_a_symlink_is_written_through_and_stays_a_link(saved_run, tsv, tmp_path, capsys):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    code, _, errors = _own(capsys, saved_run, tsv, link)
    assert code == 0 and errors == []
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert [_strict_json(line)["id"] for line in real.read_text().splitlines()] == ["r0", "r1", "r2"]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_output_files_get_the_users_umask(saved_run, tsv, tmp_path, capsys, mask):
    out = tmp_path / "preds.jsonl"
    old = os.umask(mask)
    try:
        code, _, _ = _own(capsys, saved_run, tsv, out)
    finally:
        os.umask(old)
    assert code == 0 and stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


def _read_in_thread(open_reader):
    got: list[bytes] = []

    def read():
        with open_reader() as f:
            got.append(f.read())
    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, got


@pytest.mark.parametrize("kind", ["fifo", "pipe through /dev/fd"])
def test_a_pipe_is_written_into_not_replaced(saved_run, tsv, tmp_path, capsys, kind):
    if kind == "fifo":
        out = tmp_path / "fifo"
        os.mkfifo(out)
        t, got = _read_in_thread(lambda: open(out, "rb"))
    else:
        r, w = os.pipe()
        out = Path(f"/dev/fd/{w}")
        t, got = _read_in_thread(lambda: os.fdopen(r, "rb"))
    try:
        code, printed, errors = _own(capsys, saved_run, tsv, out)
    finally:
        if kind != "fifo":
            os.close(w)
    t.join(timeout=30)
    assert code == 0 and errors == [], errors
    assert got and [_strict_json(line)["id"] for line in got[0].decode().splitlines()] == ["r0", "r1", "r2"]
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(out).st_mode)


def test_a_pipe_whose_reader_quit_is_an_error_not_a_quiet_success(saved_run, tsv, capsys):
    """``--output >(gzip > p.gz)`` whose gzip died: the predictions did not arrive, so the exit is not 0 (only
    stdout piped into ``head`` ends quietly)."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    out = Path(f"/dev/fd/{w}")
    try:
        code, printed, errors = _own(capsys, saved_run, tsv, out)
    finally:
        os.close(w)
    assert code == 2 and "wrote" not in printed
    assert errors == [f"error: {out}: the program reading it closed it before the end (broken pipe); the output "
                      "is incomplete"]


def test_stdout_that_is_a_regular_file_gets_every_line(saved_run, tsv, tmp_path):
    """``> file`` and ``--output /dev/fd/1``: the predictions land in the file, the summary goes to stderr."""
    target = tmp_path / "captured.jsonl"
    with open(target, "wb") as f:
        r = subprocess.run([sys.executable, "-m", "mt_dnn.predict", "--checkpoint", str(saved_run), "--task", "rte",
                            "--input", str(tsv), "--output", "/dev/fd/1", "--device", "cpu"], stdout=f,
                           stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [_strict_json(line)["id"] for line in target.read_text().splitlines()] == ["r0", "r1", "r2"]
    assert "wrote 3 predictions to /dev/fd/1" in r.stderr


# ---- the own-text path has the GLUE path's checks ----------------------------------------------------------------

@pytest.mark.parametrize("content,words", [('{"max_seq_len": ', "not a readable run config"),
                                           ('{"seed": 1}', "no integer max_seq_len"),
                                           ('{"max_seq_len": "64"}', "no integer max_seq_len")])
def test_a_damaged_run_config_is_one_line(saved_run, tsv, tmp_path, capsys, content, words):
    run = shutil.copytree(saved_run, tmp_path / "run")
    (run / "config.json").write_text(content)
    code, _, errors = _own(capsys, run, tsv, tmp_path / "preds.jsonl")
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {run / 'config.json'}: " + words)
    with pytest.raises(ConfigError, match=words):
        api.load_run(run, device="cpu")


def test_max_seq_len_past_the_position_table_is_one_line(saved_run, tsv, tmp_path, capsys):
    long_tsv = tmp_path / "long.tsv"
    long_tsv.write_text("sentence1\tsentence2\n" + " ".join(["the cat"] * 200) + "\ta dog .\n")
    out = tmp_path / "preds.jsonl"
    code, _, errors = _own(capsys, saved_run, long_tsv, out, "--max_seq_len", "512")
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("error: --max_seq_len 512 is more than encoder") and "128 tokens" in errors[0]
    assert not out.exists()
    with pytest.raises(ConfigError, match="max_seq_len 512 is more than encoder"):
        api.load_run(saved_run, device="cpu", max_seq_len=512)


@pytest.mark.parametrize("record,col", [('{"id": "a\\ud800", "sentence1": "the cat", "sentence2": "a dog"}', "id"),
                                        ('{"id": 1, "sentence1": "the \\udc80cat", "sentence2": "a dog"}',
                                         "sentence1")])
def test_a_lone_surrogate_is_one_line_naming_file_and_line(saved_run, tmp_path, capsys, record, col):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 0, "sentence1": "the cat", "sentence2": "a dog"}\n' + record + "\n")
    out = tmp_path / "preds.jsonl"
    code, _, errors = _own(capsys, saved_run, path, out)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: {path}:2: {col!r} holds a lone surrogate"), errors[0]
    assert not out.exists()


def test_load_run_predict_refuses_a_lone_surrogate(saved_run):
    model = api.load_run(saved_run, device="cpu")
    with pytest.raises(DataError, match="row 1: a lone surrogate"):
        model.predict("rte", [ROWS[0], ("the \udc80 cat", "a dog")])


# ---- nothing is done before an unwritable output place is refused ------------------------------------------------

def test_an_unwritable_output_is_refused_before_anything(saved_run, tsv, tmp_path, capsys, no_loading):
    folder = _unwritable(tmp_path)
    for out in (folder / "preds.jsonl", folder / "new" / "preds.jsonl"):
        code, _, errors = _own(capsys, saved_run, tsv, out)
        assert code == 2 and len(errors) == 1, errors
        assert errors[0].startswith(f"error: --output {out}: cannot write in {folder} ("), errors[0]


def test_an_unwritable_submission_dir_is_refused_before_predicting(saved_run, tmp_path, capsys, monkeypatch):
    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    calls = []
    monkeypatch.setattr(predict_mod, "predict", lambda *a, **k: calls.append(1))
    out = _unwritable(tmp_path) / "sub"
    code = run_cli(predict_main, ["--checkpoint", str(saved_run), "--glue_dir", str(glue), "--submission_dir",
                                  str(out), "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {out}: cannot write in"), errors
    assert calls == []


def test_an_unwritable_output_dir_is_refused_before_the_model_loads(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import mt_dnn.trainer as trainer_mod
    from mt_dnn.train import main as train_main

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")
    monkeypatch.setattr(trainer_mod, "load_encoder", refuse)
    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    out = _unwritable(tmp_path) / "run"
    code = run_cli(train_main, ["--tasks", "rte", "--glue_dir", str(glue), "--model", str(tiny_model_dir),
                                "--output_dir", str(out), "--max_steps", "1", "--no_eval", "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: --output_dir {out}: cannot write in")


# ---- --device ----------------------------------------------------------------------------------------------------

@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("name,words", [("cuda", "no CUDA"), ("cuda:0", "no CUDA"), ("gpu", "not a device"),
                                        ("meta", "not a device"), ("", "not a device")])
def test_a_device_this_machine_lacks_is_one_line(no_cuda, name, words):
    with pytest.raises(ConfigError, match=f"^device {name!r}: .*{words}"):
        pick_device(name)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")


def test_a_cuda_index_past_the_gpus_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="device 'cuda:2': this machine has 2 CUDA GPU"):
        pick_device("cuda:2")


@pytest.mark.parametrize("name", ["cuda", "gpu"])
def test_device_errors_come_first_in_predict_and_load_run(saved_run, tsv, tmp_path, capsys, no_cuda, no_loading,
                                                          name):
    code = run_cli(predict_main, ["--checkpoint", str(saved_run), "--task", "rte", "--input", str(tsv),
                                  "--output", str(tmp_path / "p.jsonl"), "--device", name])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: device {name!r}: "), errors
    with pytest.raises(ConfigError, match=f"device {name!r}"):
        api.load_run(saved_run, device=name)
