"""experiments.rapt.logstats: per-step values of a train.log, with the later line of a re-run step winning."""
from __future__ import annotations

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
    assert out[2] == "| rte/smart/s1-abcd1234 | smart_grad_share | 3 (50-150) | 0.01 | 0.08 | 0.04 | 0.01 | 0.08 |"
    assert out[3] == "| rte/smart/s1-abcd1234 | reg | 3 (50-150) | 0.01 | 0.04 | 0.02333 | 0.01 | 0.04 |"
    assert len(out) == 4  # the standard run is filtered out by --methods


def test_a_folder_without_train_log_is_a_one_line_error(tmp_path, capsys):
    assert run_cli(logstats.main, [str(tmp_path)]) == 2
    assert "train.log: no such file" in capsys.readouterr().err
    assert run_cli(logstats.main, ["--root", str(tmp_path)]) == 2
