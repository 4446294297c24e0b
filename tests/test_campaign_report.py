"""Table 2 reports (experiments.rapt.report, .stats), Figure 1 (.figure1) and the layer sweep (.layers).

Checked on hand-written metrics files whose expected numbers are worked out below.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.rapt import campaign, figure1, layers
from experiments.rapt.paper import PAPER_DEV, TASK_ORDER
from experiments.rapt.report import build_report, per_seed_markdown, report_markdown
from experiments.rapt.results import scan_results
from experiments.rapt.stats import detectable_difference
from mt_dnn.cli_utils import run_cli
from data_utils.task_def import ConfigError
from tests.metrics_records import write_run


def _write_run(root: Path, task: str, name: str, seed: int, evals: list[dict], finished: bool = True) -> None:
    """Dev records at 60 s x seed x (i + 1) of training, then (if finished) the train record."""
    folder = root / task / name / f"s{seed}"
    folder.mkdir(parents=True)
    recs = [{"epoch": i, "step": 10 * (i + 1), "task": task, "split": "dev", "split_name": "dev", "method": name,
             "seed": seed, "train_seconds": 60.0 * seed * (i + 1), "metrics": m} for i, m in enumerate(evals)]
    if finished:
        recs.append({"epoch": len(evals) - 1, "step": 10 * len(evals), "task": task, "split": "train",
                     "method": name, "seed": seed, "train_seconds": 60.0 * seed * len(evals),
                     "steps": 10 * len(evals), "loss": 0.5, "reg_loss": 0.1})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def _hand_written(root: Path) -> None:
    _write_run(root, "rte", "standard", 1, [{"acc": 0.60}, {"acc": 0.65}])
    _write_run(root, "rte", "standard", 2, [{"acc": 0.70}, {"acc": 0.68}])
    _write_run(root, "rte", "rapt", 1, [{"acc": 0.62}, {"acc": 0.71}])
    _write_run(root, "rte", "rapt", 2, [{"acc": 0.69}, {"acc": 0.72}])
    # MRPC: the best evaluation is chosen by acc, and its f1 comes with it (not the best f1)
    _write_run(root, "mrpc", "standard", 1, [{"acc": 0.80, "f1": 0.85}, {"acc": 0.78, "f1": 0.90}])
    _write_run(root, "mrpc", "standard", 2, [{"acc": 0.82, "f1": 0.88}])
    _write_run(root, "mrpc", "rapt", 1, [{"acc": 0.84, "f1": 0.89}])
    _write_run(root, "mrpc", "rapt", 2, [{"acc": 0.83, "f1": 0.87}])
    _write_run(root, "stsb", "standard", 1, [{"pearson": 0.50, "spearman": 0.40}])
    _write_run(root, "rte", "smart", 1, [{"acc": 0.99}], finished=False)  # unfinished: left out


def test_report_means_stds_and_paired_statistics(tmp_path, capsys):
    root = tmp_path / "camp"
    _hand_written(root)
    assert campaign.main(["--root", str(root), "--report"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((root / "report.json").read_text())
    md = (root / "report.md").read_text()
    assert printed == md
    assert report["tasks"] == ["rte", "mrpc", "stsb"] and report["methods"] == ["standard", "rapt"]  # baseline first
    rows = report["rows"]
    std = rows["standard"]["tasks"]
    # rte standard: best 65, 70 -> mean 67.5, sample std sqrt(2 * 2.5^2 / 1) = 3.536
    assert std["rte"]["cells"][0]["mean"] == pytest.approx(67.5)
    assert std["rte"]["cells"][0]["std"] == pytest.approx(math.sqrt(12.5))
    # mrpc standard: (80, 85) and (82, 88) -> acc 81.0 ± 1.414, f1 86.5 ± 2.121
    acc, f1 = std["mrpc"]["cells"]
    assert (acc["metric"], f1["metric"]) == ("acc", "f1")
    assert acc["mean"] == pytest.approx(81.0) and acc["std"] == pytest.approx(math.sqrt(2))
    assert f1["mean"] == pytest.approx(86.5) and f1["std"] == pytest.approx(math.sqrt(4.5))
    # average = mean of task scores: (67.5 + (81 + 86.5) / 2 + (50 + 40) / 2) / 3
    assert rows["standard"]["average"] == pytest.approx((67.5 + 83.75 + 45.0) / 3)
    assert rows["rapt"]["average"] is None  # no STS-B run
    assert rows["standard"]["average_std"] is None  # STS-B has seed 1 only: no per-seed Average for seed 2
    assert "| standard | 67.5 ± 3.5 | 81.0 ± 1.4 / 86.5 ± 2.1 | 50.0 / 40.0 | 65.4 |" in md
    assert "| rapt | 71.5 ± 0.7 | 83.5 ± 0.7 / 88.0 ± 1.4 | - | - |" in md
    assert "RTE Acc" in md and "MRPC Acc/F1" in md and "STS-B P/S" in md
    assert "| Standard | 69.3 | 86.9/90.7 | 89.9/89.4 |" in md
    assert len(report["unfinished"]) == 1 and "smart" in report["unfinished"][0]

    paired = {(c["task"], c["a"], c["b"]): c for c in report["paired"]}
    assert set(paired) == {("rte", "rapt", "standard"), ("mrpc", "rapt", "standard"), ("average", "rapt", "standard")}
    # rte: differences 71-65 = 6 and 72-70 = 2 -> mean 4, sd 2.828, t = 4 / (2.828 / sqrt 2) = 2, df 1;
    # a t distribution with 1 df is Cauchy: two-sided p = 1 - (2 / pi) atan(|t|)
    rte = paired[("rte", "rapt", "standard")]
    assert rte["n"] == 2 and rte["a_wins"] == 2 and rte["b_wins"] == 0
    assert rte["mean_diff"] == pytest.approx(4.0)
    assert rte["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0))
    # mrpc: 84-80 = 4 and 83-82 = 1 -> mean 2.5, sd 2.121, t = 2.5 / 1.5
    mrpc = paired[("mrpc", "rapt", "standard")]
    assert mrpc["mean_diff"] == pytest.approx(2.5) and mrpc["a_wins"] == 2
    assert mrpc["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(2.5 / 1.5))
    # Holm over the section's three tests (RTE 0.295, MRPC 0.344, the Average below 0.374): the smallest times 3,
    # and neither of the others times 2 or 1 is larger, so every row's p (Holm) is RTE's p times 3
    holm = 3 * (1 - 2 / math.pi * math.atan(2.0))
    assert [c["p_holm"] for c in report["paired"]] == pytest.approx([holm] * 3)
    assert all(c["family"] == 3 for c in report["paired"])
    # the sizes at p < 0.05 and at Holm's first step (0.05 / 3), from the power equation (checked on its own in
    # test_robustness_report against the noncentral t integrated by hand)
    det = _sizes(2, math.sqrt(8))
    assert rte["detectable"] == pytest.approx(detectable_difference(2, math.sqrt(8)))
    assert rte["detectable_holm"] == pytest.approx(detectable_difference(2, math.sqrt(8), alpha=0.05 / 3))
    assert (f"| RTE | rapt | standard | 2 | +4.00 | 2.83 | 2 | 0 | 0.295 | {holm:.3f} | {det} | "
            "within seed noise |") in md
    assert "over the 3 tests of this section's tables" in md
    # rapt has no STS-B run: no average over every task, only over the two tasks both have on seeds 1-2
    assert paired[("average", "rapt", "standard")]["over"] == ["rte", "mrpc"]
    # per seed: each run's best evaluation and its epoch (from 1); MRPC seed 1 of standard is epoch 1 (best acc)
    per_seed = md[md.index("## Per seed"):md.index("## Training time")]
    assert "| standard | 65.0 (ep 2) | 70.0 (ep 1) |" in per_seed
    assert "| standard | 80.0/85.0 (ep 1) | 82.0/88.0 (ep 1) |" in per_seed
    assert "STS-B P/S:\n\n| Method | seed 1 |\n|---|---|\n| standard | 50.0/40.0 (ep 1) |\n" in per_seed


def _sizes(n: int, sd: float, family: int = 3) -> str:
    """The two 'detectable' cells of a paired row: at p < 0.05 and at 0.05 / family."""
    return f"{detectable_difference(n, sd):.2f} | {detectable_difference(n, sd, alpha=0.05 / family):.2f}"


def test_paired_test_on_the_average_uses_each_seeds_mean_task_score(tmp_path):
    root = tmp_path / "camp"
    _hand_written(root)
    results = [r for r in scan_results(root) if r.task != "stsb"]
    report = build_report(results, ["standard", "rapt"], None)
    avg = [c for c in report["paired"] if c["task"] == "average"]
    # per seed, mean of (RTE acc, mean of MRPC acc and F1): standard 73.75, 77.5; rapt 78.75, 78.5
    # -> differences 5 and 1: mean 3, sd 2.828, t = 3 / 2 = 1.5 with 1 df
    assert len(avg) == 1 and (avg[0]["a"], avg[0]["b"], avg[0]["seeds"]) == ("rapt", "standard", [1, 2])
    assert avg[0]["mean_diff"] == pytest.approx(3.0) and avg[0]["sd_diff"] == pytest.approx(math.sqrt(8))
    assert avg[0]["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(1.5))
    assert report["paired"][-1] is avg[0]  # after the per-task rows
    # the Average column's ± is the std of those per-seed averages: standard 73.75, 77.5 -> sd 3.75 / sqrt 2
    assert report["rows"]["standard"]["average"] == pytest.approx(75.625)
    assert report["rows"]["standard"]["average_std"] == pytest.approx(3.75 / math.sqrt(2))
    assert report["rows"]["rapt"]["average_std"] == pytest.approx(0.25 / math.sqrt(2))
    md = report_markdown(report, "x")
    holm = 3 * (1 - 2 / math.pi * math.atan(2.0))  # RTE's p, the smallest of the three, times 3 (as above)
    assert (f"| Average | rapt | standard | 2 | +3.00 | 2.83 | 2 | 0 | 0.374 | {holm:.3f} | {_sizes(2, math.sqrt(8))} | "
            "within seed noise |") in md
    assert "| 75.6 ± 2.7 | 2 |" in md


def test_paired_average_over_the_tasks_with_most_seeds_while_others_lack_seeds(tmp_path):
    root = tmp_path / "camp"
    _hand_written(root)
    _write_run(root, "stsb", "rapt", 1, [{"pearson": 0.60, "spearman": 0.50}])  # STS-B: seed 1 only
    report = build_report(scan_results(root), ["standard", "rapt"], None)
    avg = [c for c in report["paired"] if c["task"] == "average"]
    # every task: seed 1 only (no test); RTE and MRPC have seeds 1-2: as in the test above, mean 3, p of t = 1.5
    assert [(c["over"], c["seeds"]) for c in avg] == [(["rte", "mrpc", "stsb"], [1]), (["rte", "mrpc"], [1, 2])]
    assert avg[0]["p_value"] is None and avg[0]["mean_diff"] == pytest.approx(((71 + 86.5 + 55) - (65 + 82.5 + 45)) / 3)
    assert avg[1]["mean_diff"] == pytest.approx(3.0)
    assert avg[1]["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(1.5))
    md = report_markdown(report, "x")
    assert "| Average | rapt | standard | 1 |" in md
    # the rows without a p (seed 1 only) are not in the family: still three tests, as above
    holm = 3 * (1 - 2 / math.pi * math.atan(2.0))
    assert (f"| Average (RTE, MRPC) | rapt | standard | 2 | +3.00 | 2.83 | 2 | 0 | 0.374 | {holm:.3f} | "
            f"{_sizes(2, math.sqrt(8))} | within seed noise |") in md
    assert "| Average | rapt | standard | 1 | +6.67 | - | 1 | 0 | - | - | - | - | - |" in md


def test_best_of_rows_pick_the_best_member_per_task(tmp_path):
    root = tmp_path / "camp"
    _hand_written(root)
    report = build_report(scan_results(root), ["standard", "rapt"], {"best": ["standard", "rapt"]})
    assert report["methods"] == ["standard", "rapt", "best"]
    assert report["best_of"]["best"] == {"rte": "rapt", "mrpc": "rapt", "stsb": "standard"}
    assert report["rows"]["best"]["tasks"]["rte"]["cells"] == report["rows"]["rapt"]["tasks"]["rte"]["cells"]
    assert report["rows"]["best"]["average"] == pytest.approx((71.5 + 85.75 + 45.0) / 3)
    assert all("best" not in (c["a"], c["b"]) for c in report["paired"])  # never compared with its members
    assert "| best |" not in per_seed_markdown(report)  # it would repeat its members' runs

    # the choice uses the seeds both members have: a lucky third standard seed does not win it
    _write_run(root, "rte", "standard", 3, [{"acc": 0.99}])
    report = build_report(scan_results(root), ["standard", "rapt"], {"best": ["standard", "rapt"]})
    assert report["best_of"]["best"]["rte"] == "rapt"
    assert report["rows"]["standard"]["tasks"]["rte"]["cells"][0]["mean"] == pytest.approx(78.0)


def test_baselines_limit_the_paired_tests_and_the_average_comes_first(tmp_path, capsys):
    root = tmp_path / "camp"
    _hand_written(root)
    for seed, rte, mrpc in ((1, 0.66, 0.81), (2, 0.75, 0.86)):
        _write_run(root, "rte", "smart_x", seed, [{"acc": rte}])
        _write_run(root, "mrpc", "smart_x", seed, [{"acc": mrpc, "f1": mrpc}])
    order = ["--order", "standard,smart_x,rapt"]
    assert campaign.main(["--root", str(root), "--report", *order]) == 0
    everything = {(c["task"], c["a"], c["b"]) for c in json.loads((root / "report.json").read_text())["paired"]}
    assert ("rte", "rapt", "smart_x") in everything and ("rte", "smart_x", "standard") in everything
    capsys.readouterr()

    assert campaign.main(["--root", str(root), "--report", *order, "--baselines", "smart_x"]) == 0
    report = json.loads((root / "report.json").read_text())
    pairs = {(c["task"], c["a"], c["b"]) for c in report["paired"]}
    assert pairs == {("rte", "rapt", "smart_x"), ("mrpc", "rapt", "smart_x"), ("average", "rapt", "smart_x")}
    # RTE: rapt 71, 72 against 66, 75 -> differences 5 and -3: mean 1, one win each
    rte = next(c for c in report["paired"] if c["task"] == "rte")
    assert rte["mean_diff"] == pytest.approx(1.0) and (rte["a_wins"], rte["b_wins"]) == (1, 1)
    # Average (RTE, MRPC) per seed: rapt (71 + 86.5) / 2 = 78.75 and (72 + 85) / 2 = 78.5; smart_x 73.5 and 80.5
    avg = next(c for c in report["paired"] if c["task"] == "average")
    assert avg["mean_diff"] == pytest.approx(((78.75 - 73.5) + (78.5 - 80.5)) / 2)
    md = capsys.readouterr().out
    assert "each row against `smart_x` where that row is above it" in md
    assert md.index("### On the Average") < md.index("| Average (RTE, MRPC) | rapt | smart_x | 2 | +1.62 |") \
        < md.index("### Per task") < md.index("| RTE | rapt | smart_x | 2 | +1.00 |")
    assert "| rapt | standard |" not in md

    assert run_cli(campaign.main, ["--root", str(root), "--report", "--baselines", "smrt"]) == 2
    assert "--baselines smrt: no such row" in capsys.readouterr().err
    # smart's only run is unfinished: a row under way may be named, and compares with nothing yet
    assert campaign.main(["--root", str(root), "--report", *order, "--baselines", "smart"]) == 0
    assert json.loads((root / "report.json").read_text())["paired"] == []


def test_a_baseline_may_be_a_grid_row_that_has_not_finished_yet(tmp_path):
    # a study under way: SMART's cells have not started, yet the report is asked to compare with it already
    write_run(tmp_path, "rte", "standard", 1, [(0.60, 0.40)])
    write_run(tmp_path, "rte", "rapt", 1, [(0.62, 0.45)])
    results = scan_results(tmp_path)
    report = build_report(results, ["standard", "smart", "rapt"], baselines=["standard", "smart"],
                          not_started=["rte/smart/s1"])
    assert {(c["a"], c["b"]) for c in report["paired"] if c["task"] == "rte"} == {("rapt", "standard")}
    with pytest.raises(ConfigError, match="--baselines smrt: no such row .*not finished yet: smart"):
        build_report(results, baselines=["standard", "smrt"], not_started=["rte/smart/s1"])


def test_differences_within_the_archives_rounding_are_ties():
    import numpy as np

    from experiments.rapt.stats import paired

    # 54.87 (a run folder) against 54.9 (an archived 0.549): a tie, not a loss; 1 point is a win, -0.2 a loss
    c = paired("rte", "a", "b", [1, 2, 3], np.array([54.87, 58.0, 55.0]), np.array([54.9, 57.0, 55.2]))
    assert (c["a_wins"], c["b_wins"]) == (1, 1)
    assert c["mean_diff"] == pytest.approx((-0.03 + 1.0 - 0.2) / 3)


def test_paper_rows_match_the_published_average():
    """The paper's Average column is the mean of the 12 numbers of its row."""
    for name, row in PAPER_DEV.items():
        numbers = [v for t in TASK_ORDER for v in row[t]]
        assert len(numbers) == 12
        assert sum(numbers) / 12 == pytest.approx(row["average"], abs=0.051), name


def test_figure1_draws_from_metrics_files(tmp_path, capsys):
    root = tmp_path / "camp"
    _hand_written(root)
    out = tmp_path / "fig" / "figure1.png"
    assert figure1.main(["--root", str(root), "--tasks", "rte,mrpc", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    # rte standard, first evaluation: x = (60 + 120) / 2 s = 1.50 min, y = (60 + 70) / 2 = 65.0
    assert "standard     2 seed(s), 2 points: 1.50 min 65.0, 3.00 min 66.5" in text
    assert "rapt" in text and "smart" in text and f"wrote {out} (5 line(s))" in text


def test_figure1_with_nothing_to_draw_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(figure1.main, ["--root", str(tmp_path / "empty"), "--out", str(tmp_path / "f.png")]) == 2
    assert "error: " in capsys.readouterr().err

def test_layer_sweep_plots_best_dev_against_max_layer(tmp_path, capsys):
    root = tmp_path / "camp"
    sweep = {0: [0.70, 0.74], 1: [0.72], 3: [0.80], 6: [0.76]}  # max_layer -> best acc per seed
    for k, seeds in sweep.items():
        for s, best in enumerate(seeds, start=1):
            _write_run(root, "mrpc", f"max{k}", s, [{"acc": best - 0.05, "f1": 0.8}, {"acc": best, "f1": 0.8}])
            (root / "mrpc" / f"max{k}" / f"s{s}" / "config.json").write_text(json.dumps(
                {"method": "rapt", "method_options": {"eta": 2.0, "max_layer": k}}))
    # not points: another eta, another method, an unfinished run
    _write_run(root, "mrpc", "eta1.5", 1, [{"acc": 0.99, "f1": 0.9}])
    (root / "mrpc" / "eta1.5" / "s1" / "config.json").write_text(json.dumps(
        {"method": "rapt", "method_options": {"eta": 1.5, "max_layer": 2}}))
    _write_run(root, "mrpc", "standard", 1, [{"acc": 0.99, "f1": 0.9}])
    (root / "mrpc" / "standard" / "s1" / "config.json").write_text(json.dumps({"method": "standard"}))
    _write_run(root, "mrpc", "max2", 1, [{"acc": 0.99, "f1": 0.9}], finished=False)
    (root / "mrpc" / "max2" / "s1" / "config.json").write_text(json.dumps(
        {"method": "rapt", "method_options": {"eta": 2.0, "max_layer": 2}}))
    out = tmp_path / "layers.png"
    assert layers.main(["--root", str(root), "--tasks", "mrpc", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mrpc: embed 72.0, 1 72.0, 3 80.0, 6 76.0; best max_layer 3\n" in capsys.readouterr().out
    table = out.with_suffix(".md").read_text()
    assert "| max_layer | embed | 1 | 3 | 6 |" in table and "| acc | 72.0 [2] | 72.0 [1] | 80.0 [1] | 76.0 [1] |" in table
    # a second task with a partial sweep: both tables span the union of max_layers, a missing point is a "-"
    _write_run(root, "rte", "max2", 1, [{"acc": 0.55}])
    (root / "rte" / "max2" / "s1" / "config.json").write_text(json.dumps(
        {"method": "rapt", "method_options": {"eta": 2.0, "max_layer": 2}}))
    assert layers.main(["--root", str(root), "--tasks", "mrpc,rte", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mrpc: embed 72.0, 1 72.0, 3 80.0, 6 76.0; best max_layer 3; not run: 2" in printed
    assert "rte: 2 55.0; best max_layer 2; not run: embed, 1, 3, 6" in printed
    table = out.with_suffix(".md").read_text()
    assert table.count("| max_layer | embed | 1 | 2 | 3 | 6 |") == 2
    assert "| acc | 72.0 [2] | 72.0 [1] | - | 80.0 [1] | 76.0 [1] |" in table and "| acc | - | - | 55.0 [1] | - | - |" in table
    # a baseline campaign: standard on the sweep's seeds (1, 2) and one more seed
    base = tmp_path / "core"
    for s, acc in ((1, 0.70), (2, 0.74), (3, 0.78)):
        _write_run(base, "mrpc", "standard", s, [{"acc": acc, "f1": 0.8}])
    assert layers.main(["--root", str(root), "--tasks", "mrpc", "--out", str(out), "--baseline", str(base)]) == 0
    assert ("standard on the same seed(s) 1, 2: 72.0; over seeds 1, 2, 3: 74.0 ± 4.0 (the seed noise)."
            in out.with_suffix(".md").read_text())
    assert run_cli(layers.main, ["--root", str(root), "--tasks", "cola", "--out", str(out)]) == 2
    assert "no finished RAPT runs (eta 2) of cola" in capsys.readouterr().err


def test_report_has_training_time_and_ratios(tmp_path):
    root = tmp_path / "camp"
    # _write_run makes seed s take 6 x s seconds per step
    _write_run(root, "rte", "standard", 1, [{"acc": 0.6}])
    _write_run(root, "rte", "smart", 3, [{"acc": 0.6}, {"acc": 0.7}])
    _write_run(root, "rte", "rapt", 2, [{"acc": 0.6}])
    _write_run(root, "rte", "rapt_shared", 1, [{"acc": 0.6}], finished=False)  # no time: not finished
    report = build_report(scan_results(root), ["standard", "smart", "rapt"])
    times = report["times"]["rte"]
    assert set(times) == {"standard", "smart", "rapt"}
    assert times["smart"]["minutes"] == pytest.approx(6.0) and times["smart"]["s_per_step"] == pytest.approx(18.0)
    assert times["rapt"]["/standard"] == pytest.approx(2.0) and times["rapt"]["/smart"] == pytest.approx(2 / 3)
    md = report_markdown(report, "t")
    assert "| RTE | rapt | ? | 1 | 2.0 | 12.00 | 2.00 | 0.67 |" in md


def test_verdict_summary_names_the_findings_and_leads_of_each_family():
    """The paragraph at the top of a report: per family, the number of tests with a p, those beyond seed noise
    after the Holm correction and the leads, each named with its difference and p, smallest p first; tests
    without a p are not counted."""
    from experiments.rapt.report import verdict_summary

    def test(task, a, b, mean, p, holm, **extra):
        return {"task": task, "a": a, "b": b, "mean_diff": mean, "p_value": p, "p_holm": holm, **extra}

    paired = [test("rte", "rapt", "standard", -1.2, 0.20, 1.0), test("cola", "smart", "standard", -7.47, 0.026, 0.3),
              test("average", "rapt", "smart", 2.5, 0.001, 0.004, over=["rte", "cola"]),
              test("mrpc", "rapt", "standard", 0.4, None, None),
              test("average", "smart", "standard", -0.5, 0.04, 0.3, over=["rte"])]
    robust = [test("sst", "smart", "standard", -3.83, 0.023, 0.66, on="advglue"),
              test("sst", "rapt", "standard", 0.0, 0.99, 1.0, on="dev")]
    report = {"tasks": ["rte", "cola"], "paired": paired,
              "robustness": {"sst": {"advglue": {"paired": robust}}}}
    assert verdict_summary(report) == (
        "**Verdicts** (the sections below give every test). Paired comparisons: 4 tests; beyond seed noise after "
        "the Holm correction: Average rapt - smart +2.50 (p 0.001); leads (p < 0.05 before the correction only): "
        "CoLA smart - standard -7.47 (p 0.026); Average (RTE) smart - standard -0.50 (p 0.040). Robustness, at the "
        "dev-chosen evaluation: 2 tests; beyond seed noise after the Holm correction: none; leads (p < 0.05 before "
        "the correction only): SST advglue smart - standard -3.83 (p 0.023).")
    # findings and no lead: nothing else below 0.05 (the findings are below it themselves)
    report["paired"], report["robustness"] = paired[2:3], {}
    assert verdict_summary(report) == (
        "**Verdicts** (the sections below give every test). Paired comparisons: 1 test; beyond seed noise after "
        "the Holm correction: Average rapt - smart +2.50 (p 0.001); no other test below p 0.05.")
    report["paired"] = paired[:1]
    assert verdict_summary(report) == (
        "**Verdicts** (the sections below give every test). Paired comparisons: 1 test; beyond seed noise after "
        "the Holm correction: none; no lead (none below p 0.05 before the correction).")
