"""A run folder is one run: no accidental overwrite, --resume only of the same recipe and its own checkpoint and
records, one training at a time, damaged or unwritable checkpoints as one-line errors; fp16 skips; exact flags."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from data_utils.task_def import ConfigError, load_task_defs
from mt_dnn import run_folder
from mt_dnn.cli_utils import run_cli
from mt_dnn.train import main


def _argv(glue, model, out, cache, *extra):
    return ["--glue_dir", str(glue), "--model", str(model), "--output_dir", str(out), "--cache_dir", str(cache),
            "--tasks", "rte", "--lr", "1e-3", "--log_every", "1", "--batch_size", "4", *extra]


def _snapshot(folder):
    """Every file under ``folder`` with its content hash and mtime: equal snapshots = nothing touched."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def _unfinish(out):
    """Drop the final train record, as if the run had been killed after its last checkpoint."""
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["split"] == "train"
    (out / "metrics.jsonl").write_text("".join(lines[:-1]))


def test_a_run_folder_is_never_overwritten_by_accident(tmp_path, glue_dir, tiny_model_dir, capsys):
    out = tmp_path / "run"
    args = _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "2", "--no_eval")
    assert main([*args, "--save_every_steps", "1"]) == 0
    before = _snapshot(out)
    assert run_cli(main, args) == 2
    msg = _error(capsys)
    assert msg == (f"error: {out} holds another run (config.json, metrics.jsonl, best/, checkpoint/, train.log): "
                   "pass --resume to continue it, or --overwrite to replace it")
    assert run_cli(main, [*args, "--resume"]) == 2  # finished: nothing to resume
    assert _error(capsys) == (f"error: --resume: {out} holds a finished run (metrics.jsonl ends with its train "
                              "record); nothing to resume (--overwrite trains it again)")
    assert run_cli(main, [*args, "--resume", "--overwrite"]) == 2
    assert "--resume and --overwrite" in _error(capsys)
    assert _snapshot(out) == before
    # --overwrite removes the previous run first, its checkpoint included
    assert run_cli(main, [*args, "--overwrite"]) == 0
    assert not (out / "checkpoint").exists() and not (out / ".lock").exists()
    assert len([x for x in (out / "metrics.jsonl").read_text().splitlines()]) == 1
    assert (out / "train.log").read_text().count("command:") == 1


def test_resume_refuses_a_changed_recipe_and_accepts_other_changes(tmp_path, glue_dir, tiny_model_dir, capsys):
    out = tmp_path / "run"
    args = _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "3", "--no_eval",
                 "--save_every_steps", "1")
    assert main(args) == 0
    _unfinish(out)
    before = _snapshot(out)
    assert run_cli(main, [*args, "--resume", "--lr", "2e-3", "--seed", "2"]) == 2
    assert _error(capsys) == ("error: --resume: this run was made with lr=0.001, now lr=0.002; seed=1, now seed=2 "
                              "(use another --output_dir, or --overwrite to start over)")
    rte = load_task_defs()["rte"].to_dict()
    rte["dropout"] = 0.3
    (tmp_path / "t.yml").write_text(yaml.safe_dump({"rte": rte}))
    assert run_cli(main, [*args, "--resume", "--task_def", str(tmp_path / "t.yml")]) == 2
    assert "task_defs.rte.dropout=0.1, now task_defs.rte.dropout=0.3" in _error(capsys)
    assert _snapshot(out) == before
    # logging, evaluation batch size, checkpoint frequency and paths do not change results: accepted
    assert run_cli(main, [*args, "--resume", "--log_every", "2", "--eval_batch_size", "3",
                          "--save_every_steps", "2", "--cache_dir", str(tmp_path / "c2")]) == 0
    assert "resumed from" in (out / "train.log").read_text()
    train = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert train["steps"] == 3


def _unfinished_run_with_records(tmp_path, glue_dir, tiny_model_dir, name="run"):
    """6 steps, an evaluation after step 3, a checkpoint at step 4 holding that one dev record; final record gone."""
    out = tmp_path / name
    args = _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--epochs", "2", "--batch_size", "8",
                 "--save_every_steps", "4")
    assert main(args) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(x)["step"] for x in lines] == [3, 6, 6]
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 4 and state["metrics_bytes"] == len(lines[0].encode())
    (out / "metrics.jsonl").write_text("".join(lines[:2]))  # killed after the epoch-1 evaluation
    return out, args


def test_resume_checks_that_records_and_checkpoint_belong_together(tmp_path, glue_dir, tiny_model_dir, capsys):
    out, args = _unfinished_run_with_records(tmp_path, glue_dir, tiny_model_dir)
    good = (out / "metrics.jsonl").read_text()
    first = good.splitlines(keepends=True)[0]
    metrics = out / "metrics.jsonl"
    for text, why in [(first[:-5], "is shorter than"), (first.replace("\"epoch\": 0", "\"epoch\": 7"), "differ"),
                      ("", "is shorter than")]:
        metrics.write_text(text)
        before = _snapshot(out)
        assert run_cli(main, [*args, "--resume"]) == 2
        msg = _error(capsys)
        assert msg.startswith(f"error: --resume: {metrics}") and why in msg, msg
        assert _snapshot(out) == before
    metrics.write_text(good)
    # a checkpoint copied in from another run (same recipe) is not this run's
    other, _ = _unfinished_run_with_records(tmp_path, glue_dir, tiny_model_dir, "other")
    shutil.rmtree(out / "checkpoint")
    shutil.copytree(other / "checkpoint", out / "checkpoint")
    assert run_cli(main, [*args, "--resume"]) == 2
    assert "belongs to another run" in _error(capsys)
    # its own checkpoint: the records after it are cut at the record boundary it saved, and the run ends as before
    shutil.rmtree(out / "checkpoint")
    shutil.copytree(other / "checkpoint", out / "checkpoint")
    shutil.copy(other / "metrics.jsonl", out / "metrics.jsonl")
    shutil.copy(other / "config.json", out / "config.json")
    assert run_cli(main, [*args, "--resume"]) == 0
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [3, 6, 6]


def test_one_training_per_folder(tmp_path, glue_dir, tiny_model_dir, capsys):
    out = tmp_path / "run"
    args = _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "2", "--no_eval")
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        assert run_cli(main, args) == 2
        assert _error(capsys) == (f"error: {out} is in use by another training (pid {holder.pid} on "
                                  f"{socket.gethostname()}); wait for it to end, or use another --output_dir")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over, with a warning; leftovers of dead writers in a run
    # folder of ours go
    run_folder.mark(out)
    for junk in ("checkpoint.tmp-999999", "best.tmp-999999", "best.tmp"):
        (out / junk).mkdir()
        (out / junk / "model.safetensors").write_text("half")
    assert run_cli(main, args) == 0
    assert f"stale lock of pid {holder.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [run_folder.MARKER, "best", "config.json", "metrics.jsonl",
                                                     "train.log"]


def test_best_model_temp_folder_is_per_process_and_a_full_disk_is_a_user_error(tmp_path, glue_dir, tiny_model_dir,
                                                                                capsys, monkeypatch):
    import safetensors.torch

    out = tmp_path / "run"
    real, paths = safetensors.torch.save_file, []

    def full(tensors, path, *a, **k):
        paths.append(path)
        if "best" in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert run_cli(main, _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "2", "--no_eval")) == 2
    assert _error(capsys) == f"error: {out / 'best'}: cannot save (No space left on device)"
    assert any(f"best.tmp-{os.getpid()}" in p for p in paths)
    assert not list(out.glob("*.tmp*")) and not (out / ".lock").exists()


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, glue_dir, tiny_model_dir, capsys,
                                                                     monkeypatch):
    out = tmp_path / "run"
    real, calls = torch.save, []

    def full_on_second(obj, f, *a, **k):
        if "checkpoint" in str(f):
            calls.append(str(f))
        if len(calls) == 2 and "checkpoint" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_on_second)
    args = _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "4", "--no_eval",
                 "--save_every_steps", "1")
    assert run_cli(main, args) == 2
    assert _error(capsys) == (f"error: {out / 'checkpoint'}: cannot save (No space left on device); "
                              "the previous checkpoint is kept")
    monkeypatch.undo()
    assert torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True)["step"] == 1
    assert not list(out.glob("checkpoint.tmp*")) and not (out / ".lock").exists()
    assert run_cli(main, [*args, "--resume"]) == 0  # and the run goes on from it


def test_damaged_checkpoints_fall_back_or_are_one_line_errors(tmp_path, glue_dir, tiny_model_dir, capsys):
    out = tmp_path / "run"
    args = _argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "3", "--no_eval",
                 "--save_every_steps", "1")
    assert main(args) == 0
    _unfinish(out)
    ckpt = out / "checkpoint"
    shutil.copytree(ckpt, out / "keep")
    (ckpt / "trainer_state.pt").write_bytes(b"not a checkpoint")
    before = _snapshot(out)
    assert run_cli(main, [*args, "--resume"]) == 2
    msg = _error(capsys)
    assert msg.startswith(f"error: --resume: {ckpt / 'trainer_state.pt'} is damaged (") and \
        msg.endswith("); no complete checkpoint.old to fall back on (--overwrite starts over)")
    # a file that is not even a zip: torch's unpickling message speaks of its own defaults, not of this file
    (ckpt / "trainer_state.pt").write_bytes(b"garbage that is not a zip or a pickle")
    assert run_cli(main, [*args, "--resume"]) == 2
    assert _error(capsys) == (f"error: --resume: {ckpt / 'trainer_state.pt'} is damaged (not a trainer state torch "
                              "can read); no complete checkpoint.old to fall back on (--overwrite starts over)")
    (ckpt / "trainer_state.pt").unlink()
    assert run_cli(main, [*args, "--resume"]) == 2
    assert _error(capsys) == (f"error: --resume: {ckpt / 'trainer_state.pt'} is missing; no complete "
                              "checkpoint.old to fall back on (--overwrite starts over)")
    shutil.copytree(out / "keep", out / "checkpoint.old")
    shutil.copy(out / "keep" / "trainer_state.pt", ckpt / "trainer_state.pt")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert len(_snapshot(out)) == len(before) + 2
    assert run_cli(main, [*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{ckpt / 'model.safetensors'} is damaged" in err and "resuming from checkpoint.old" in err


def test_fp16_step_skipped_by_the_scaler_does_not_advance_the_schedule(tmp_path, glue_dir, tiny_model_dir):
    from mt_dnn.trainer import TrainConfig, Trainer

    cfg = TrainConfig(tasks="rte", glue_dir=str(glue_dir), model=str(tiny_model_dir), output_dir=str(tmp_path / "r"),
                      cache_dir=str(tmp_path / "c"), batch_size=4, max_steps=3, no_eval=True, precision="fp16",
                      warmup=0.0)
    trainer = Trainer(cfg)
    trainer.setup()
    param = trainer.model.heads["rte"].out.weight
    step, attempts = trainer.train_step, []

    def with_inf_grad_once(micro):
        attempts.append(trainer.step)
        handle = param.register_hook(lambda g: g * float("inf")) if len(attempts) == 2 else None
        try:
            return step(micro)
        finally:
            if handle is not None:
                handle.remove()

    trainer.train_step = with_inf_grad_once
    scale = trainer.scaler.get_scale()
    try:
        record = trainer.train()
    finally:
        trainer.close()
    assert attempts == [0, 1, 1, 2]  # step 1 was tried twice
    assert record["steps"] == 3 and record["skipped_steps"] == 1
    assert trainer.scheduler.last_epoch == 3 and trainer.scaler.get_scale() == scale / 2


def test_abbreviated_flags_are_errors(tmp_path, capsys):
    from mt_dnn.train import build_parser

    cfg = tmp_path / "c.yml"
    cfg.write_text("epochs: 5\n")
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--config", str(cfg), "--epoch", "2"])
    assert exc.value.code == 2 and "unrecognized arguments: --epoch 2" in capsys.readouterr().err


def test_contradicting_flags(tmp_path):
    from mt_dnn.trainer import TrainConfig

    with pytest.raises(ConfigError, match="--resume and --overwrite"):
        TrainConfig(resume=True, overwrite=True).validate()


def test_a_finished_run_closes_its_log_file(tmp_path, glue_dir, tiny_model_dir):
    """What the process logs after main returns (a caller's messages, a second run) stays out of train.log."""
    out = tmp_path / "run"
    assert main(_argv(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "1", "--no_eval")) == 0
    log = (out / "train.log").read_text()
    logging.getLogger("caller").warning("logged after the run")
    assert "command:" in log and (out / "train.log").read_text() == log
    assert not [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def test_resume_refuses_an_encoder_whose_files_changed(tmp_path, tiny_model_dir, glue_dir, capsys):
    """The same --model path with other contents (a config or tokenizer edited, weights replaced) is another
    recipe: the resumed run would not be the one its records describe."""
    encoder = shutil.copytree(tiny_model_dir, tmp_path / "enc")
    out = tmp_path / "run"
    args = _argv(glue_dir, encoder, out, tmp_path / "c", "--max_steps", "3", "--no_eval", "--save_every_steps", "1")
    assert main(args) == 0
    recorded = json.loads((out / "config.json").read_text())["recipe"]["model_files"]
    assert recorded == run_folder.model_digest(encoder) and len(recorded) == 16
    _unfinish(out)
    original = (encoder / "config.json").read_text()
    (encoder / "config.json").write_text(json.dumps({**json.loads(original), "hidden_dropout_prob": 0.6}))
    before = _snapshot(out)
    assert run_cli(main, [*args, "--resume"]) == 2
    assert _error(capsys) == (f"error: --resume: this run was made with model_files={recorded}, now model_files="
                              f"{run_folder.model_digest(encoder)} (use another --output_dir, or --overwrite to "
                              "start over)")
    assert _snapshot(out) == before
    (encoder / "config.json").write_text(original)  # the same bytes again: resumed
    assert main([*args, "--resume"]) == 0


def test_model_digest_reads_what_the_trainer_reads(tmp_path, tiny_model_dir):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "enc")
    first = run_folder.model_digest(folder)
    (folder / "README.md").write_text("notes")  # not read by the trainer
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"x")
    assert run_folder.model_digest(folder) == first
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')  # pooling: auto reads it
    assert run_folder.model_digest(folder) != first
    weights = next(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    second = run_folder.model_digest(folder)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert run_folder.model_digest(folder) != second
    assert run_folder.model_digest(tmp_path / "bert-base-uncased") is None  # a hub name: no local files
