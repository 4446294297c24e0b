"""experiments.rapt.logstats: per-step values of a train.log, with the later line of a re-run step winning, and the
logging intervals' means recovered from the running means the trainer logs as loss and reg."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.rapt import logstats
from mt_dnn.cli_utils import run_cli

LOG = """\
2026-12-01 10:00:00,000 INFO __main__: command: mt_dnn/train.py --method smart
2026-12-01 10:00:01,000 INFO mt_dnn.trainer: step 50/150 loss 0.7000 reg 0.0100 lr 9.00e-05 smart_grad_share 0.01 smart_skipped 0
2026-12-01 10:00:02,000 INFO mt_dnn.trainer: step 100/150 loss 0.6000 reg 0.0300 lr 6.00e-05 smart_grad_share 0.5 smart_skipped 0
2026-12-01 10:00:03,000 INFO mt_dnn.trainer: resumed from checkpoint at step 50 (epoch 1, batch 0)
2026-12-01 10:00:04,000 INFO mt_dnn.trainer: step 100/150 loss 0.6000 reg 0.0200 lr 6.00e-05 smart_grad_share 0.03 smart_skipped 0
2026-12-01 10:00:05,000 INFO mt_dnn.trainer: step 150/150 loss 0.5000 reg 0.0400 lr 0.00e+00 smart_grad_share 0.08 note n/a
"""


def _run(root, task, method, seed, text):
    folder = root / task / method / f"s{seed}-abcd1234"
    folder.mkdir(parents=True)
    (folder / "train.log").write_text(text)
    return folder


def test_first_last_mean_with_the_rerun_step_replaced(tmp_path, capsys):
    folder = _run(tmp_path, "rte", "smart", 1, LOG)
    steps = logstats.read_steps(folder / "train.log")
    assert sorted(steps) == [50, 100, 150] and steps[100]["smart_grad_share"] == 0.03  # the re-run's line
    assert "note" not in steps[150]  # a word that is not a number is not a value
    s = logstats.summarise(steps, "smart_grad_share")
    assert (s["first"], s["last"], s["min"], s["max"]) == (0.01, 0.08, 0.01, 0.08)
    assert abs(s["mean"] - (0.01 + 0.03 + 0.08) / 3) < 1e-12
    assert logstats.summarise(steps, "rapt_noise_ratio") is None

    _run(tmp_path, "rte", "standard", 1, LOG.replace(" smart_grad_share", " other"))
    assert logstats.main(["--root", str(tmp_path), "--methods", "smart", "--keys", "smart_grad_share,reg"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == ("| rte/smart/s1-abcd1234 | smart_grad_share | 3 (50-150) | 0.01 | 0.08 | 0.04 | 0.01 | 0.08 | "
                      "value at the logged step |")
    # reg is a running mean: 0.01 over steps 1-50, 0.02 over 1-100, 0.04 over 1-150, so the intervals' means are
    # 0.01, (0.02 * 100 - 0.01 * 50) / 50 = 0.03 and (0.04 * 150 - 0.02 * 100) / 50 = 0.08; over the steps, 0.04
    assert out[3] == ("| rte/smart/s1-abcd1234 | reg | 3 (50-150) | 0.01 | 0.08 | 0.04 | 0.01 | 0.08 | "
                      "mean of each logging interval, +-0.0003 |")
    assert len(out) == 4  # the standard run is filtered out by --methods


def test_a_folder_without_train_log_is_a_one_line_error(tmp_path, capsys):
    assert run_cli(logstats.main, [str(tmp_path)]) == 2
    assert "train.log: no such file" in capsys.readouterr().err
    assert run_cli(logstats.main, ["--root", str(tmp_path)]) == 2


def _trainer_log(losses: list[float], regs: list[float], every: int, first: int = 1) -> str:
    """A process's train.log lines for a run whose steps 1.. have the per-step ``losses`` and ``regs``: its command
    line, then the step lines it writes from step ``first`` on (running means over steps 1..N, 4 decimals)."""
    lines = ["2026-12-01 10:00:00,000 INFO __main__: command: mt_dnn/train.py --method smart"]
    for n in range(first, len(losses) + 1):
        if n % every == 0:
            lines.append(f"2026-12-01 10:00:01,000 INFO mt_dnn.trainer: step {n}/{len(losses)} loss "
                         f"{np.mean(losses[:n]):.4f} reg {np.mean(regs[:n]):.4f} lr 1.00e-04 "
                         f"smart_grad_share {losses[n - 1]:.4g}")
    return "\n".join(lines) + "\n"


def test_loss_and_reg_are_the_means_of_each_logging_interval(tmp_path):
    rng = np.random.default_rng(0)
    losses = list(0.7 - 0.004 * np.arange(120) + rng.uniform(-0.2, 0.2, 120))  # falling, noisy
    regs = list(rng.uniform(0.0, 0.05, 120))
    log = tmp_path / "train.log"
    log.write_text(_trainer_log(losses, regs, every=10))
    steps = logstats.read_steps(log)
    for key, per_step in (("loss", losses), ("reg", regs)):
        truth = [float(np.mean(per_step[k:k + 10])) for k in range(0, 120, 10)]
        s = logstats.summarise(steps, key)
        bound = 0.5e-4 * (120 + 110) / 10  # 4 decimals of two running means, over 10 steps
        assert s["values"] == "interval means" and s["rounding"] == pytest.approx(bound)
        assert s["first"] == pytest.approx(truth[0], abs=bound) and s["last"] == pytest.approx(truth[-1], abs=bound)
        assert s["max"] == pytest.approx(max(truth), abs=bound) and s["min"] == pytest.approx(min(truth), abs=bound)
        assert s["mean"] == pytest.approx(np.mean(per_step), abs=0.5e-4)
        intervals = logstats.interval_means([(n, v[key]) for n, v in sorted(steps.items())])
        assert [w for _, w, _, _ in intervals] == [10] * 12
        assert all(abs(mean - t) <= b for (_, _, mean, b), t in zip(intervals, truth))
    # a falling loss: the last intervals are well below the running means (what the table gave before)
    s = logstats.summarise(steps, "loss")
    assert s["min"] < min(v["loss"] for v in steps.values()) - 0.1 and s["last"] < steps[120]["loss"] - 0.1


def test_a_resume_or_a_restart_drops_the_lines_the_run_did_not_keep(tmp_path):
    rng = np.random.default_rng(1)
    kept = list(rng.uniform(0.3, 0.9, 60))
    first_try = kept[:30] + list(rng.uniform(1.0, 2.0, 30))  # steps 31-60 of a try that was not kept
    log = tmp_path / "train.log"
    resumed = ("2026-12-01 11:00:00,000 INFO mt_dnn.trainer: resumed from runs/x/checkpoint at step 30 "
               "(epoch 1, batch 4)\n")
    # the first process got to step 60, checkpointed at 30; the resumed one re-ran 31-50 and is still running
    log.write_text(_trainer_log(first_try, [0.0] * 60, every=10)
                   + _trainer_log(kept[:50], [0.0] * 50, every=10, first=31).replace(
                       "--method smart\n", "--method smart --resume\n" + resumed, 1))
    assert "resumed from" in log.read_text()
    steps = logstats.read_steps(log)
    assert sorted(steps) == [10, 20, 30, 40, 50]  # step 60 was the discarded try's
    for n in (40, 50):  # re-run steps: the resumed process's running means (its sums were restored at 30)
        assert steps[n]["loss"] == pytest.approx(np.mean(kept[:n]), abs=0.5e-4)
    s = logstats.summarise(steps, "loss")
    assert s["last"] == pytest.approx(np.mean(kept[40:50]), abs=s["rounding"])
    assert s["max"] < 1.0  # none of the discarded try's losses

    # a restart from scratch in the same folder appends to train.log and starts again at step 0
    log.write_text(_trainer_log(first_try, [0.0] * 60, every=10) + _trainer_log(kept[:20], [0.0] * 20, every=10))
    steps = logstats.read_steps(log)
    assert sorted(steps) == [10, 20] and steps[20]["loss"] == pytest.approx(np.mean(kept[:20]), abs=0.5e-4)


def test_the_recovery_holds_on_a_real_training_log_with_a_skipped_step(tmp_path, glue_dir, tiny_model_dir,
                                                                      monkeypatch):
    """A non-finite step is skipped (neither the step number nor the running sums count it): the intervals'
    means recovered from train.log are the means of the counted steps' losses, recorded here as they are added."""
    from mt_dnn.step import TrainStep
    from mt_dnn.train import main
    from mt_dnn.trainer import Trainer
    from tests.faults import nan_loss

    monkeypatch.setattr(TrainStep, "forward", nan_loss(TrainStep.forward, at={2}))
    counted = []  # each counted step's (task loss, reg loss), as the trainer adds it to its sums
    train_step = Trainer.train_step

    def recording(self, micro):
        before = self._sums.clone()
        ok = train_step(self, micro)
        if ok:
            counted.append((self._sums - before).tolist())
        return ok

    monkeypatch.setattr(Trainer, "train_step", recording)
    out = tmp_path / "run"
    assert main(["--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--output_dir", str(out),
                 "--cache_dir", str(tmp_path / "c"), "--tasks", "rte", "--method", "r3f", "--lr", "1e-3",
                 "--device", "cpu", "--threads", "1", "--batch_size", "4", "--max_steps", "6", "--log_every", "2",
                 "--no_eval"]) == 0
    text = (out / "train.log").read_text()
    assert "update skipped" in text and len(counted) == 6
    steps = logstats.read_steps(out / "train.log")
    assert sorted(steps) == [2, 4, 6]
    for key, column in (("loss", 0), ("reg", 1)):
        intervals = logstats.interval_means([(n, v[key]) for n, v in sorted(steps.items())])
        truth = [np.mean([c[column] for c in counted[k:k + 2]]) for k in (0, 2, 4)]
        assert all(abs(mean - t) <= b + 1e-9 for (_, _, mean, b), t in zip(intervals, truth)), (intervals, truth)
    assert max(c[1] for c in counted) > 0  # R3F's term is there to recover
