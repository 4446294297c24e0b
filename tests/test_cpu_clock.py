"""The CPU clock of a run: train_cpu_seconds in its records counts the process's own CPU time in the training
steps (not time spent waiting), survives a resume, and is left out when a resumed checkpoint did not keep it; the
report shows CPU seconds per step and their ratios beside the wall clock."""
from __future__ import annotations

import json
import time

import pytest
import torch

from experiments.rapt.report import build_report, report_markdown, training_times
from experiments.rapt.results import Evaluation, RunResult
from mt_dnn.train import main
from mt_dnn.trainer import Trainer
from tests.faults import Killed, die_after_checkpoint
from tests.test_reliability import _args

SLEEP = 0.2  # seconds each step waits (off the CPU) on top of its work


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _waiting_steps(monkeypatch):
    step = Trainer.train_step

    def waits(self, micro):
        ok = step(self, micro)
        time.sleep(SLEEP)  # inside the timed step: the wall clock counts it, the CPU clock must not
        return ok
    monkeypatch.setattr(Trainer, "train_step", waits)


def test_the_cpu_clock_leaves_out_waiting_and_is_in_every_record(tmp_path, glue_dir, tiny_model_dir, monkeypatch):
    _waiting_steps(monkeypatch)
    out = tmp_path / "run"
    assert main(_args(glue_dir, tiny_model_dir, out, tmp_path / "c", "--epochs", "2", "--batch_size", "4")) == 0
    recs = _records(out)
    train = recs[-1]
    assert train["split"] == "train" and train["steps"] == 12
    waited = 12 * SLEEP
    assert train["train_seconds"] >= waited
    assert 0 < train["train_cpu_seconds"] < train["train_seconds"] - 0.8 * waited
    dev = [r for r in recs if r["split"] == "dev"]
    assert [r["step"] for r in dev] == [6, 12]
    cpu = [r["train_cpu_seconds"] for r in dev]
    assert 0 < cpu[0] <= cpu[1] == train["train_cpu_seconds"]
    # read back for reports, and kept by the archive
    from experiments.rapt.archive import archive_entry, load_archive
    from experiments.rapt.results import load_result

    result = load_result(out, task="rte", name="standard")
    assert result.train_cpu_seconds == train["train_cpu_seconds"]
    entry = archive_entry(result)
    assert entry["train_cpu_seconds"] == round(train["train_cpu_seconds"], 1)
    (tmp_path / "archive.json").write_text(json.dumps({"source": "test", "runs": [entry]}))
    assert load_archive(tmp_path / "archive.json")[0].train_cpu_seconds == entry["train_cpu_seconds"]


def test_the_cpu_clock_survives_a_resume_and_is_dropped_when_the_checkpoint_lacks_it(tmp_path, glue_dir,
                                                                                      tiny_model_dir, monkeypatch):
    common = ("--epochs", "2", "--batch_size", "4", "--save_every_steps", "2")
    for name in ("kept", "older"):
        out = tmp_path / name
        with monkeypatch.context() as m:
            m.setattr(Trainer, "save_checkpoint", die_after_checkpoint(Trainer))
            with pytest.raises(Killed):
                main(_args(glue_dir, tiny_model_dir, out, tmp_path / "c", *common))
        state_file = out / "checkpoint" / "trainer_state.pt"
        state = torch.load(state_file, weights_only=True)
        assert state["step"] == 2 and state["train_cpu_seconds"] > 0
        if name == "older":  # a checkpoint written before runs kept their CPU time
            del state["train_cpu_seconds"]
            torch.save(state, state_file)
        assert main(_args(glue_dir, tiny_model_dir, out, tmp_path / "c", *common, "--resume")) == 0
        recs = _records(out)
        if name == "kept":  # the two sessions' CPU time added up, the first one's included
            assert recs[-1]["train_cpu_seconds"] > state["train_cpu_seconds"]
            assert all("train_cpu_seconds" in r for r in recs)
        else:  # only part of the run's CPU time is known: no record claims a total
            after = [r for r in recs if r["step"] > 2]
            assert after and all("train_cpu_seconds" not in r for r in after)


def _run(name, seed, wall, cpu, steps=100, device="cpu"):
    ev = Evaluation(0, steps, wall, {"dev": {"acc": 0.6}}, 0.6, {"dev": {"advglue": {"acc": 0.4}}})
    return RunResult("rte", name, seed, None, True, [ev], wall, steps, "acc", device=device, train_cpu_seconds=cpu)


def test_the_report_gives_cpu_seconds_per_step_and_their_ratios():
    runs = [_run("standard", 1, 300.0, 100.0), _run("standard", 2, 500.0, 120.0),
            _run("smart", 1, 600.0, 330.0), _run("smart", 2, 620.0, 330.0),
            _run("rapt", 1, 400.0, None), _run("rapt", 2, 410.0, 200.0)]  # one rapt run without a CPU clock
    times = training_times(_by(runs), ["standard", "smart", "rapt"], ["rte"])["rte"]
    standard_cpu = (100.0 / 100 + 120.0 / 100) / 2
    smart_cpu = 330.0 / 100
    assert times["standard"]["cpu_s_per_step"] == pytest.approx(standard_cpu)
    assert times["smart"]["cpu/standard"] == pytest.approx(smart_cpu / standard_cpu)
    assert times["smart"]["/standard"] == pytest.approx((6.0 + 6.2) / 2 / ((3.0 + 5.0) / 2))  # the wall clock
    assert "cpu_s_per_step" not in times["rapt"] and "cpu/standard" not in times["rapt"]
    md = report_markdown(build_report(runs, ["standard", "smart", "rapt"]), "t")
    wall = {"standard": 4.0, "smart": 6.1, "rapt": 4.05}  # mean seconds per step of each method's two runs
    assert (f"| RTE | smart | cpu | 2 | {1220 / 2 / 60:.1f} | 6.10 | {6.1 / 4.0:.2f} | 1.00 | "
            f"{smart_cpu:.2f} | {smart_cpu / standard_cpu:.2f} | 1.00 |") in md
    assert (f"| RTE | rapt | cpu | 2 | {810 / 2 / 60:.1f} | 4.05 | {wall['rapt'] / wall['standard']:.2f} | "
            f"{wall['rapt'] / wall['smart']:.2f} | - | - | - |") in md
    assert "ratios compare runs on the same device alone ('?': the records do not say). CPU s/step: the" in md
    robust = md.split("## Robustness (dev and robustness sets)")[1]
    assert "| Method | Seeds | dev | advglue | gap (dev - advglue) | CPU s/step | CPU / standard |" in robust
    assert f"| smart | 2 | 60.0 ± 0.0 | 40.0 ± 0.0 | 20.0 ± 0.0 | {smart_cpu:.2f} | {smart_cpu / standard_cpu:.2f} |" \
        in robust
    assert "| rapt | 2 | 60.0 ± 0.0 | 40.0 ± 0.0 | 20.0 ± 0.0 | - | - |" in robust


def test_gpu_runs_and_runs_without_a_cpu_clock_keep_the_wall_clock_table():
    runs = [_run("standard", 1, 300.0, 100.0, device="cuda (H200)"), _run("smart", 1, 600.0, 330.0,
                                                                           device="cuda (H200)")]
    md = report_markdown(build_report(runs, ["standard", "smart"]), "t")
    assert "| Task | Method | Device | Runs | Minutes | s/step | / standard | / smart |\n" in md
    assert "| Method | Seeds | dev | advglue | gap (dev - advglue) | s/step | / standard |" in md
    assert "CPU s/step" not in md


def _by(runs):
    by: dict = {}
    for r in runs:
        by.setdefault(r.name, {}).setdefault(r.task, {})[r.seed] = r
    return by
