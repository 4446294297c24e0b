"""Resume after SIGKILL, atomic checkpoints, torchrun DDP on CPU (gloo), accumulation, NaN skips, bf16."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from data_utils.task_def import load_task_defs
from mt_dnn import checkpoint
from mt_dnn.step import TrainStep
from mt_dnn.train import main
from tests.conftest import REPO
from tests.faults import nan_loss


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory, tiny_model_dir):
    """The tiny BERT with dropout 0, and a task file giving RTE's head dropout 0: updates are deterministic."""
    from transformers import AutoConfig

    d = tmp_path_factory.mktemp("tiny_nodrop")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, d / f.name)
    cfg = AutoConfig.from_pretrained(d)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    cfg.save_pretrained(d)
    rte = load_task_defs()["rte"].to_dict()
    rte["dropout"] = 0.0
    (d / "tasks.yml").write_text(yaml.safe_dump({"rte": rte}))
    return d


def _args(glue, model, out, cache, *extra):
    return ["--glue_dir", str(glue), "--model", str(model), "--output_dir", str(out), "--cache_dir", str(cache),
            "--tasks", "rte", "--lr", "1e-3", "--log_every", "1", "--device", "cpu", *extra]


def _dev(out):
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["step"], r["metrics"]) for r in recs if r["split"] == "dev"], recs[-1]


def _assert_same_run(a, b, evaluations):
    """Two runs with the same dev records, mean losses and best weights (bit for bit)."""
    dev_a, train_a = _dev(a)
    dev_b, train_b = _dev(b)
    assert dev_a == dev_b and len(dev_a) == evaluations
    assert train_a["loss"] == train_b["loss"] and train_a["reg_loss"] == train_b["reg_loss"]
    wa, wb = load_file(str(a / "best" / "model.safetensors")), load_file(str(b / "best" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _slow_train(seconds):
    """The command of an mt_dnn.train whose steps each take ``seconds`` longer (tests/faults.py)."""
    return [sys.executable, str(REPO / "tests" / "faults.py"), "--step_delay", str(seconds), "--"]


def _env(**extra):
    # the subprocess computes with this process's thread count: another count sums in another order, and a
    # test earlier in the session may have changed it
    threads = str(torch.get_num_threads())
    return {**os.environ, "MT_DNN_NO_TQDM": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads, **extra}


def test_resume_after_sigkill_is_bit_identical(tmp_path, glue_dir, tiny_model_dir):
    common = ("--epochs", "3", "--batch_size", "4", "--method", "rapt", "--rapt_max_layer", "2",
              "--save_every_steps", "2")
    alone = tmp_path / "alone"
    assert main(_args(glue_dir, tiny_model_dir, alone, tmp_path / "c", *common)) == 0
    killed = tmp_path / "killed"
    cmd = [*_slow_train(0.4), *_args(glue_dir, tiny_model_dir, killed, tmp_path / "c", *common)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint" / "trainer_state.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.9)  # a couple of steps past the first checkpoint
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = checkpoint.find(killed)  # a kill between a save's two renames leaves checkpoint.old/ only
    assert found is not None and 0 < found.state["step"] < 18
    assert main(_args(glue_dir, tiny_model_dir, killed, tmp_path / "c", *common, "--resume")) == 0
    _assert_same_run(alone, killed, evaluations=3)


def test_a_checkpoint_at_an_epochs_shorter_last_accumulation_group_resumes_into_its_evaluation(
        tmp_path, glue_dir, tiny_model_dir, monkeypatch):
    """Three tasks of 24 rows in batches of 5 are 15 micro-batches an epoch: with 2 per step the epoch ends on a
    group of one (step 8). A checkpoint written at that step, the process then dying before the epoch's
    evaluation, must resume into that evaluation: the same dev records, losses and best weights as the run left
    alone. A checkpoint that an earlier version wrote there (already in the next epoch, epoch 0 not evaluated)
    resumes into epoch 0's evaluation too."""
    from mt_dnn.trainer import Trainer
    from tests.faults import Killed, die_after_checkpoint

    common = ("--tasks", "rte,mrpc,stsb", "--epochs", "2", "--batch_size", "5", "--grad_accumulation_steps", "2",
              "--save_every_steps", "8")
    alone = tmp_path / "alone"
    assert main(_args(glue_dir, tiny_model_dir, alone, tmp_path / "c", *common)) == 0
    assert [s for _, s, _ in _dev(alone)[0]] == [8, 8, 8, 16, 16, 16]  # an epoch is 8 steps
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        m.setattr(Trainer, "save_checkpoint", die_after_checkpoint(Trainer))
        with pytest.raises(Killed):
            main(_args(glue_dir, tiny_model_dir, killed, tmp_path / "c", *common))
    state = checkpoint.find(killed).state
    assert state["step"] == 8 and not (killed / "metrics.jsonl").exists()
    assert state["sampler"] == {"epoch": 0, "position": 15} and state["evaluated_epoch"] is None
    earlier = tmp_path / "earlier"  # the same checkpoint as an earlier version wrote it: already in epoch 1
    shutil.copytree(killed, earlier)
    state_file = earlier / "checkpoint" / "trainer_state.pt"
    torch.save({**state, "sampler": {"epoch": 1, "position": 0}}, state_file)
    for out in (killed, earlier):
        assert main(_args(glue_dir, tiny_model_dir, out, tmp_path / "c", *common, "--resume")) == 0
        _assert_same_run(alone, out, evaluations=6)


@pytest.mark.parametrize("sig", ["SIGUSR2", "SIGTERM"])
def test_a_scheduler_signal_checkpoints_the_step_and_resume_is_bit_identical(tmp_path, glue_dir, tiny_model_dir,
                                                                             sig):
    """SIGUSR2 (Slurm's warning before a time limit) or SIGTERM: the step ends, checkpoint/ is written at that
    step (no periodic checkpoints here), exit 75, and --resume ends where an uninterrupted run ends."""
    from mt_dnn.stop import EXIT_STOPPED

    common = ("--epochs", "2", "--batch_size", "4", "--method", "rapt", "--rapt_max_layer", "2")
    alone = tmp_path / "alone"
    assert main(_args(glue_dir, tiny_model_dir, alone, tmp_path / "c", *common)) == 0
    stopped = tmp_path / "stopped"
    cmd = [*_slow_train(0.3), *_args(glue_dir, tiny_model_dir, stopped, tmp_path / "c", *common)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and "step 2/" not in ((stopped / "train.log").read_text()
                                                       if (stopped / "train.log").exists() else ""):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err
    state = torch.load(stopped / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert 2 <= state["step"] < 12
    assert f"stopped by {sig} at step {state['step']}/12; checkpoint saved in" in err
    assert "Traceback" not in err and not (stopped / ".lock").exists()
    assert main(_args(glue_dir, tiny_model_dir, stopped, tmp_path / "c", *common, "--resume")) == 0
    _assert_same_run(alone, stopped, evaluations=2)


def test_the_stop_flag_is_agreed_by_every_rank_in_the_steps_all_reduce(monkeypatch):
    """One all_reduce (MIN) of [finite, not stopping]: a stop or a NaN on one rank reaches every rank."""
    from mt_dnn import runtime

    seen = []

    def fake_all_reduce(t, op):  # the other rank's values: finite, and it asks to stop
        seen.append(t.clone())
        t.copy_(torch.minimum(t, torch.tensor([1.0, 0.0])))

    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    ok, stop = runtime.step_verdict([torch.tensor(True)], False, torch.device("cpu"), world_size=2)
    assert (ok, stop) == (True, True) and seen[0].tolist() == [1.0, 1.0]
    ok, stop = runtime.step_verdict([torch.tensor(False)], False, torch.device("cpu"), world_size=1)
    assert (ok, stop) == (False, False)
    ok, stop = runtime.step_verdict([torch.tensor(True), torch.tensor(True)], True, torch.device("cpu"), 1)
    assert (ok, stop) == (True, True)


def test_kill_during_save_leaves_previous_checkpoint(tmp_path, glue_dir, tiny_model_dir, monkeypatch):
    from data_utils.task_def import ConfigError
    from mt_dnn import checkpoint
    from mt_dnn.train import build_parser, config_from_args
    from mt_dnn.trainer import Trainer

    out = tmp_path / "run"
    args = _args(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "4", "--batch_size", "4",
                 "--save_every_steps", "2", "--no_eval")
    assert main(args) == 0
    before = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True)["step"]
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:-1]))  # unfinished: resumable
    parser, argv = build_parser(), [*args, "--resume"]
    trainer = Trainer(config_from_args(parser.parse_args(argv)))
    trainer.setup()

    def boom(*a, **k):
        raise OSError("killed while saving")

    monkeypatch.setattr(torch, "save", boom)  # dies after the weights, before the trainer state
    with pytest.raises(ConfigError, match="cannot save .killed while saving.; the previous checkpoint is kept"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    trainer.close()
    assert checkpoint.find(out).path == out / "checkpoint" and not list(out.glob("checkpoint.tmp*"))
    assert torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True)["step"] == before
    # a kill between the two renames of the swap leaves only checkpoint.old: it is found and used
    os.replace(out / "checkpoint", out / "checkpoint.old")
    loaded = checkpoint.find(out)
    assert loaded.path == out / "checkpoint.old"
    trainer.load_checkpoint(loaded)
    assert trainer.step == before


def test_nan_loss_step_is_skipped_and_counted(tmp_path, glue_dir, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(TrainStep, "forward", nan_loss(TrainStep.forward, at={1}))
    out = tmp_path / "run"
    assert main(_args(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "3", "--batch_size", "4")) == 0
    _, train = _dev(out)
    assert train["steps"] == 3 and train["skipped_steps"] == 1
    w = load_file(str(out / "best" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())


def test_skipped_steps_do_not_stretch_the_run_past_its_epochs(tmp_path, glue_dir, tiny_model_dir, monkeypatch):
    """A skipped step uses up its batch without counting: --epochs 2 still means two passes over the data, two
    evaluations, and a final record of epoch 1 (not a third, partial epoch made of the steps left over)."""
    monkeypatch.setattr(TrainStep, "forward", nan_loss(TrainStep.forward, at={1}))
    out = tmp_path / "run"
    assert main(_args(glue_dir, tiny_model_dir, out, tmp_path / "c", "--epochs", "2", "--batch_size", "8")) == 0
    dev, train = _dev(out)
    config = json.loads((out / "config.json").read_text())
    per_epoch = config["steps_per_epoch"]
    assert [e for e, _, _ in dev] == [0, 1] and train["epoch"] == 1
    assert [s for _, s, _ in dev] == [per_epoch - 1, 2 * per_epoch - 1]  # one batch of epoch 0 was skipped
    assert train["steps"] == 2 * per_epoch - 1 == config["total_steps"] - 1 and train["skipped_steps"] == 1


def test_consecutive_nan_steps_stop_the_run(tmp_path, glue_dir, tiny_model_dir, monkeypatch, capsys):
    from mt_dnn.cli_utils import run_cli

    monkeypatch.setattr(TrainStep, "forward", nan_loss(TrainStep.forward, from_step=2))
    assert run_cli(main, _args(glue_dir, tiny_model_dir, tmp_path / "o", tmp_path / "c", "--max_steps", "5",
                               "--batch_size", "4", "--max_bad_steps", "3")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 consecutive non-finite steps" in err.strip().splitlines()[-1]


def test_bf16_runs_on_cpu(tmp_path, glue_dir, tiny_model_dir):
    out = tmp_path / "run"
    assert main(_args(glue_dir, tiny_model_dir, out, tmp_path / "c", "--max_steps", "2", "--batch_size", "4",
                      "--precision", "bf16", "--method", "rapt", "--rapt_max_layer", "2")) == 0
    _, train = _dev(out)
    assert train["steps"] == 2 and train["reg_loss"] > 0


def _weights(out):
    return load_file(str(out / "best" / "model.safetensors"))


def test_accumulation_equals_the_big_batch(tmp_path, glue_dir, no_dropout_model):
    """8 training rows: one batch of 8, or two micro-batches of 4 accumulated: the same update."""
    td = ("--task_def", str(no_dropout_model / "tasks.yml"), "--no_eval", "--max_steps", "1", "--warmup", "0",
          "--max_train_samples", "8")
    big, acc = tmp_path / "big", tmp_path / "acc"
    assert main(_args(glue_dir, no_dropout_model, big, tmp_path / "c", "--batch_size", "8", *td)) == 0
    assert main(_args(glue_dir, no_dropout_model, acc, tmp_path / "c", "--batch_size", "4",
                      "--grad_accumulation_steps", "2", *td)) == 0
    first = load_file(str(no_dropout_model / "model.safetensors"))
    wa, wb = _weights(big), _weights(acc)
    moved = [k for k in wa if k.startswith("encoder.") and k[8:] in first and not torch.equal(wa[k], first[k[8:]])]
    assert moved, "the step changed nothing"
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=1e-5), k


def _torchrun(nproc, args, timeout=300):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "mt_dnn.train", *args],
                          env=_env(OMP_NUM_THREADS="1"), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path, glue_dir, no_dropout_model):
    td = ("--task_def", str(no_dropout_model / "tasks.yml"), "--no_eval", "--max_steps", "2", "--warmup", "0")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(glue_dir, no_dropout_model, one, tmp_path / "c", "--batch_size", "8", *td)) == 0
    r = _torchrun(2, _args(glue_dir, no_dropout_model, two, tmp_path / "c", "--batch_size", "4", *td))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    wa, wb = _weights(one), _weights(two)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k


def test_two_rank_gloo_run_with_rapt_and_eval(tmp_path, glue_dir, tiny_model_dir):
    out = tmp_path / "ddp"
    r = _torchrun(2, _args(glue_dir, tiny_model_dir, out, tmp_path / "c", "--tasks", "rte,mrpc", "--epochs", "1",
                           "--batch_size", "4", "--method", "rapt", "--rapt_max_layer", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    dev = [x for x in recs if x["split"] == "dev"]
    assert sorted(x["task"] for x in dev) == ["mrpc", "rte"]  # written once, by rank 0
    assert recs[-1]["split"] == "train" and recs[-1]["reg_loss"] > 0
    # gathered evaluation equals a single-process evaluation of the same saved model
    from mt_dnn.model import load_model
    from data_utils.features import load_features
    from data_utils.metrics import compute_metrics
    from mt_dnn.trainer import predict

    model, tok, tasks = load_model(out / "best")
    for t in tasks:
        feats = load_features(glue_dir, t, t.splits["dev"], tok, 128)
        m = compute_metrics(t.metrics, predict(model, feats, 3, torch.device("cpu"), tok.pad_token_id), feats.labels)
        best_epoch = [x for x in dev if x["task"] == t.name][-1]["metrics"]
        assert m == pytest.approx(best_epoch)
