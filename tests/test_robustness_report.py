"""The report's robustness section and the power calculation, against numbers worked out independently here
(numpy/scipy on the hand-written values, and a Monte Carlo simulation of the paired t-test)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import ttest_rel

from experiments.rapt.archive import archive_entry, load_archive
from experiments.rapt.report import build_report, report_markdown
from experiments.rapt.results import scan_results
from experiments.rapt.robustness_report import detectable_difference
from tests.metrics_records import write_run


@pytest.mark.parametrize("n, sd", [(3, 1.0), (5, 2.2), (10, 0.7)])
def test_detectable_difference_has_the_stated_power(n, sd):
    delta = detectable_difference(n, sd)
    rng = np.random.default_rng(0)
    sims = 40_000
    diffs = rng.normal(delta, sd, size=(sims, n))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / np.sqrt(n))
    from scipy.stats import t as t_dist

    crit = t_dist.ppf(0.975, n - 1)
    power = float((np.abs(t) > crit).mean())
    assert power == pytest.approx(0.8, abs=0.01)
    # more seeds detect smaller effects; a zero sd detects any
    assert detectable_difference(n + 5, sd) < delta
    assert detectable_difference(n, 0.0) == 0.0 and detectable_difference(1, sd) is None


def test_robustness_section_takes_the_set_score_at_the_dev_chosen_epoch(tmp_path):
    # each run's best dev epoch is picked on dev; its AdvGLUE score comes with it (not the best AdvGLUE)
    write_run(tmp_path, "rte", "standard", 1, [(0.60, 0.50), (0.65, 0.40)])  # best dev: epoch 1 -> adv 40
    write_run(tmp_path, "rte", "standard", 2, [(0.70, 0.45), (0.68, 0.60)])  # epoch 0 -> adv 45
    write_run(tmp_path, "rte", "standard", 3, [(0.66, 0.42)])
    write_run(tmp_path, "rte", "rapt", 1, [(0.64, 0.44)])
    write_run(tmp_path, "rte", "rapt", 2, [(0.69, 0.50)])
    write_run(tmp_path, "rte", "rapt", 3, [(0.67, 0.47)])
    report = build_report(scan_results(tmp_path))
    cell = report["robustness"]["rte"]["advglue"]
    std_dev, std_adv = np.array([65.0, 70.0, 66.0]), np.array([40.0, 45.0, 42.0])
    rapt_dev, rapt_adv = np.array([64.0, 69.0, 67.0]), np.array([44.0, 50.0, 47.0])
    s = cell["summary"]["standard"]
    assert s["set"][0] == pytest.approx(std_adv.mean()) and s["set"][1] == pytest.approx(std_adv.std(ddof=1))
    assert s["gap"][0] == pytest.approx((std_dev - std_adv).mean())
    assert cell["summary"]["rapt"]["gap"][0] == pytest.approx((rapt_dev - rapt_adv).mean())
    on_set = next(c for c in cell["paired"] if c["on"] == "advglue")
    assert on_set["a"] == "rapt" and on_set["b"] == "standard"
    assert on_set["mean_diff"] == pytest.approx((rapt_adv - std_adv).mean())
    assert on_set["p_value"] == pytest.approx(ttest_rel(rapt_adv, std_adv).pvalue)
    assert on_set["detectable"] == pytest.approx(detectable_difference(3, float((rapt_adv - std_adv).std(ddof=1))))
    on_dev = next(c for c in cell["paired"] if c["on"] == "dev")
    assert on_dev["p_value"] == pytest.approx(ttest_rel(rapt_dev, std_dev).pvalue)
    text = report_markdown(report, "t")
    assert "## Robustness" in text and "| rapt | 3 | 66.7 ± 2.5 | 47.0 ± 3.0 | 19.7 ± 0.6 | 10.00 | 1.00 |" in text


def test_a_report_without_robustness_scores_has_no_section(tmp_path):
    write_run(tmp_path, "rte", "standard", 1, [(0.5, None)])
    report = build_report(scan_results(tmp_path))
    assert "robustness" not in report and "## Robustness" not in report_markdown(report, "t")


def test_archive_keeps_the_robustness_scores_of_the_best_evaluation(tmp_path):
    write_run(tmp_path, "rte", "standard", 1, [(0.60, 0.50), (0.65, 0.40)])
    (tmp_path / "rte" / "standard" / "s1" / "config.json").write_text(json.dumps({"method": "standard"}))
    result = scan_results(tmp_path)[0]
    entry = archive_entry(result)
    assert entry["robustness"] == {"advglue": {"acc": 0.4}} and entry["metrics"] == {"acc": 0.65}
    path = tmp_path / "archive.json"
    path.write_text(json.dumps({"source": "test", "runs": [entry]}))
    back = load_archive(path)[0]
    assert back.best.robustness == {"dev": {"advglue": {"acc": 0.4}}}
