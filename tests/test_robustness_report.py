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
from experiments.rapt.stats import detectable_difference
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
    assert detectable_difference(n, 0.0) is None and detectable_difference(1, sd) is None


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
    sd_adv = float((rapt_adv - std_adv).std(ddof=1))
    assert on_set["detectable"] == pytest.approx(detectable_difference(3, sd_adv))
    # the family is the two tests (dev and AdvGLUE): Holm's first step asks p < 0.05 / 2
    assert on_set["detectable_holm"] == pytest.approx(detectable_difference(3, sd_adv, alpha=0.025))
    assert _power_by_integration(on_set["detectable_holm"], 3, sd_adv, 0.025) == pytest.approx(0.8, abs=1e-6)
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


def _power_by_integration(delta: float, n: int, sd: float, alpha: float = 0.05) -> float:
    """P(|T| > t_crit) (two-sided at ``alpha``) for T = (Z + delta sqrt(n) / sd) / sqrt(V / df), Z normal and V
    chi-square (df = n - 1): the normal tails integrated over V's density, without scipy's noncentral t."""
    from scipy.integrate import quad
    from scipy.stats import chi2, norm
    from scipy.stats import t as t_dist

    df, nc = n - 1, delta * np.sqrt(n) / sd
    crit = t_dist.ppf(1 - alpha / 2, df)

    def tails(v: float) -> float:
        s = np.sqrt(v / df)
        return (norm.sf(crit * s - nc) + norm.cdf(-crit * s - nc)) * chi2.pdf(v, df)

    return quad(tails, 0, np.inf, epsabs=1e-12, epsrel=1e-10, limit=200)[0]


@pytest.mark.parametrize("n, sd, alpha", [(2, 1.0, 0.05), (3, 0.01, 0.05), (5, 2.2, 0.05), (10, 7.0, 0.05),
                                          (3, 1.0, 0.05 / 28), (5, 2.2, 0.05 / 28), (10, 0.7, 0.05 / 50)])
def test_detectable_difference_solves_the_power_equation_to_six_decimals(n, sd, alpha):
    delta = detectable_difference(n, sd, alpha=alpha)
    assert delta is not None and delta > 0
    assert _power_by_integration(delta, n, sd, alpha) == pytest.approx(0.8, abs=1e-6)
    if alpha < 0.05:  # a stricter level needs a larger effect for the same power
        assert delta > detectable_difference(n, sd)


def _adv_runs(root, rows: dict[str, dict[int, tuple[float, float | None]]]):
    for name, seeds in rows.items():
        for seed, (dev, adv) in seeds.items():
            write_run(root, "rte", name, seed, [(dev, adv)])
    return scan_results(root)


def test_seeds_without_scores_are_skipped_and_every_baseline_above_is_compared(tmp_path):
    results = _adv_runs(tmp_path, {
        "standard": {1: (0.60, 0.40), 2: (0.62, 0.45), 3: (0.64, 0.41)},
        "peer": {1: (0.61, 0.38), 2: (0.63, 0.39), 3: (0.60, 0.42)},  # a row above that is no baseline
        "smart": {1: (0.65, 0.50), 2: (0.63, 0.44), 3: (0.66, 0.47)},
        "rapt": {1: (0.59, None), 2: (0.61, 0.43), 3: (0.65, 0.46)}})  # seed 1 scored no robustness set
    report = build_report(results, ["standard", "peer", "smart", "rapt"], None, ["standard", "smart"])
    cell = report["robustness"]["rte"]["advglue"]
    assert cell["summary"]["rapt"]["seeds"] == [2, 3]
    assert cell["rows"]["rapt"] == {"2": [61.0, 43.0], "3": [65.0, 46.0]}
    assert cell["rows"]["standard"] == {"1": [60.0, 40.0], "2": [62.0, 45.0], "3": [64.0, 41.0]}
    pairs = [(c["task"], c["on"], c["a"], c["b"], c["n"]) for c in cell["paired"]]
    assert pairs == [("rte", on, a, b, n) for a, b, n in (("peer", "standard", 3), ("smart", "standard", 3),
                                                           ("rapt", "standard", 2), ("rapt", "smart", 2))
                     for on in ("dev", "advglue")]
    rapt_smart = cell["paired"][-1]
    assert rapt_smart["mean_diff"] == pytest.approx(np.mean([43.0 - 44.0, 46.0 - 47.0]))
    # equal differences: no t-test, nothing to size
    assert rapt_smart["sd_diff"] == pytest.approx(0.0, abs=1e-9) and rapt_smart["detectable"] is None
    assert rapt_smart["detectable_holm"] is None


def test_methods_compare_on_the_seeds_they_share_only(tmp_path):
    results = _adv_runs(tmp_path, {
        "standard": {3: (0.60, 0.40), 4: (0.62, 0.45)},
        "smart": {1: (0.65, 0.50), 2: (0.63, 0.44), 3: (0.66, 0.47)},
        "rapt": {1: (0.59, 0.41), 2: (0.61, 0.43)}})  # nothing shared with standard, seeds 1-2 with SMART
    cell = build_report(results, ["standard", "smart", "rapt"], None, ["standard", "smart"])["robustness"]["rte"]
    pairs = [(c["a"], c["b"], c["n"], c["on"]) for c in cell["advglue"]["paired"]]
    assert pairs == [("smart", "standard", 1, "dev"), ("smart", "standard", 1, "advglue"),
                     ("rapt", "smart", 2, "dev"), ("rapt", "smart", 2, "advglue")]
    rapt = next(c for c in cell["advglue"]["paired"] if c["a"] == "rapt" and c["on"] == "advglue")
    assert rapt["mean_diff"] == pytest.approx(np.mean([41.0 - 50.0, 43.0 - 44.0]))
    assert rapt["sd_diff"] == pytest.approx(np.std([-9.0, -1.0], ddof=1))
    smart = cell["advglue"]["summary"]["smart"]
    assert smart["set"] == pytest.approx([np.mean([50.0, 44.0, 47.0]), np.std([50.0, 44.0, 47.0], ddof=1)])
    assert cell["advglue"]["summary"]["rapt"]["dev"] == pytest.approx([60.0, np.std([59.0, 61.0], ddof=1)])


def test_the_section_as_written(tmp_path):
    results = _adv_runs(tmp_path, {"standard": {1: (0.60, 0.40), 2: (0.64, 0.46)},
                                   "rapt": {1: (0.62, 0.45), 2: (0.63, 0.47)}, "peer": {1: (0.70, 0.30)}})
    report = build_report(results, ["standard", "rapt", "peer"], None, ["standard"])
    report["times"]["rte"].pop("peer")  # a run whose clock the records do not give
    section = report_markdown(report, "t").split("## Robustness (dev and robustness sets)\n")[1]
    lines = section.split("\n\n## Runs not in the table")[0].splitlines()
    assert lines[1] == (
        "At each run's best dev evaluation (chosen on dev only): the dev primary metric and the robustness set's "
        "(AdvGLUE dev: adversarial, human-checked GLUE dev examples), x100, mean ± sd over seeds; gap = dev - set "
        "(how much accuracy a method loses under attack). Paired tests as above, on the same seeds. s/step: the "
        "runs' own clocks, mean over seeds (training steps only), and its ratio to standard's on the same device "
        "(see Training time). p (Holm) = p adjusted by Holm's step-down method over the 2 tests of this section's "
        "dev-chosen tables that have a p (the smallest p times 2, the next times 1, and so on, never below the one "
        "before and at most 1), so that the chance of any false 'beyond seed noise' among them stays below 0.05. "
        "Verdict: 'beyond seed noise' when p (Holm) < 0.05; 'lead (not after Holm)' when only p is below 0.05, a "
        "result to test with more seeds rather than a finding; else 'within seed noise'. Of these 2 tests, 0 are "
        "below 0.05, where about 0.1 would be by chance alone if no method differed; 0 stay below it after the Holm "
        "correction. detectable = the smallest true mean difference a paired t-test over these seeds would find "
        "with 80% power at p < 0.05 given the observed sd of the differences (the size a lead needs); detectable "
        "(Holm) = the same at p < 0.05/m, m the family's tests (the level Holm's first step asks of the smallest p): "
        "the size the corrected verdict needs were it the family's only real difference, so a true effect up to "
        "about this size can hide within 'within seed noise'. The tests at the last epoch (by-epoch tables) are a "
        "family of their own.")
    # rapt - standard on AdvGLUE: +5, +1 (mean 3, sd 2.83); on dev: +2, -1 (mean 0.5, sd 2.12)
    p_dev, p_adv = ttest_rel([62.0, 63.0], [60.0, 64.0]).pvalue, ttest_rel([45.0, 47.0], [40.0, 46.0]).pvalue
    sd_dev, sd_adv = np.std([2.0, -1.0], ddof=1), np.std([5.0, 1.0], ddof=1)
    det_dev, det_adv = detectable_difference(2, sd_dev), detectable_difference(2, sd_adv)
    # at the Holm level of a family of two: p < 0.025
    hdet_dev, hdet_adv = detectable_difference(2, sd_dev, alpha=0.025), detectable_difference(2, sd_adv, alpha=0.025)
    # Holm over the two tests with a p: the smaller times 2, the larger times 1 but never below the smaller's
    low, high = sorted([p_dev, p_adv])
    holm = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}
    h_dev, h_adv = holm[p_dev], holm[p_adv]
    assert lines[2:] == [
        "", "### RTE: dev and advglue", "",
        "| Method | Seeds | dev | advglue | gap (dev - advglue) | s/step | / standard |",
        "|---|---|---|---|---|---|---|",
        "| standard | 2 | 62.0 ± 2.8 | 43.0 ± 4.2 | 19.0 ± 1.4 | 10.00 | 1.00 |",
        "| rapt | 2 | 62.5 ± 0.7 | 46.0 ± 1.4 | 16.5 ± 0.7 | 10.00 | 1.00 |",
        "| peer | 1 | 70.0 | 30.0 | 40.0 | - | - |",
        "",
        "| On | A | B | Seeds | mean(A-B) | sd | A wins | B wins | p | p (Holm) | detectable | detectable (Holm) | "
        "verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| dev | rapt | standard | 2 | +0.50 | 2.12 | 1 | 1 | {p_dev:.3f} | {h_dev:.3f} | {det_dev:.2f} | "
        f"{hdet_dev:.2f} | within seed noise |",
        f"| advglue | rapt | standard | 2 | +3.00 | 2.83 | 2 | 0 | {p_adv:.3f} | {h_adv:.3f} | {det_adv:.2f} | "
        f"{hdet_adv:.2f} | within seed noise |",
        "| dev | peer | standard | 1 | +10.00 | - | 1 | 0 | - | - | - | - | - |",
        "| advglue | peer | standard | 1 | -10.00 | - | 0 | 1 | - | - | - | - | - |"]


def test_detectable_difference_without_a_usable_sd_is_none():
    assert detectable_difference(5, None) is None and detectable_difference(5, float("nan")) is None


def test_verdicts_clocks_and_task_names_in_the_section():
    from experiments.rapt.robustness_report import markdown

    def pair(on, p, holm):
        return {"on": on, "a": "rapt", "b": "standard", "n": 3, "mean_diff": 2.0, "sd_diff": 0.1, "a_wins": 3,
                "b_wins": 0, "p_value": p, "p_holm": holm, "family": 3, "detectable": 0.25,
                "detectable_holm": 0.75}

    summary = {"seeds": [1, 2, 3], "dev": [60.0, 1.0], "set": [40.0, 2.0], "gap": [20.0, 1.5]}
    section = {"mytask": {"adv": {"summary": {"standard": summary, "rapt": summary},
                                  "paired": [pair("dev", 0.0149, 0.0447), pair("adv", 0.02, 0.06),
                                             pair("adv", 0.05, 0.06)]}}}
    lines = markdown(section, {"mytask": {"standard": {"s_per_step": 2.0, "/standard": 1.0},
                                          "rapt": {"s_per_step": 3.0, "/standard": None}}})
    assert lines[:3] == ["", "## Robustness (dev and robustness sets)", ""] and lines[4:7] == [
        "", "### mytask: dev and adv", ""]
    assert lines[9:11] == ["| standard | 3 | 60.0 ± 1.0 | 40.0 ± 2.0 | 20.0 ± 1.5 | 2.00 | 1.00 |",
                           "| rapt | 3 | 60.0 ± 1.0 | 40.0 ± 2.0 | 20.0 ± 1.5 | 3.00 | - |"]
    # beyond seed noise only where the Holm-adjusted p is below 0.05; a lead where only the test's own p is
    assert lines[-3:] == [
        "| dev | rapt | standard | 3 | +2.00 | 0.10 | 3 | 0 | 0.015 | 0.045 | 0.25 | 0.75 | beyond seed noise |",
        "| adv | rapt | standard | 3 | +2.00 | 0.10 | 3 | 0 | 0.020 | 0.060 | 0.25 | 0.75 | lead (not after Holm) |",
        "| adv | rapt | standard | 3 | +2.00 | 0.10 | 3 | 0 | 0.050 | 0.060 | 0.25 | 0.75 | within seed noise |"]
    assert "over the 3 tests of this section's dev-chosen tables" in lines[3]
    no_clock = markdown(section, None)  # no training times at all: the cost cells say so
    assert no_clock[9] == "| standard | 3 | 60.0 ± 1.0 | 40.0 ± 2.0 | 20.0 ± 1.5 | - | - |"
    assert markdown({}, None) == []


# three epochs per run: (dev, AdvGLUE) x100 at epochs 1, 2, 3
HISTORY = {"standard": {1: [(54, 46), (55, 41), (59, 33)], 2: [(55, 35), (52, 35), (58, 40)],
                        3: [(50, 44), (56, 40), (57, 38)]},
           "rapt": {1: [(50, 46), (53, 44), (57, 32)], 2: [(54, 33), (54, 38), (56, 41)],
                    3: [(52, 47), (55, 45), (54, 43)]}}


def _history_runs(root, history=HISTORY):
    for name, seeds in history.items():
        for seed, evals in seeds.items():
            write_run(root, "rte", name, seed, [(d / 100, a / 100) for d, a in evals])
    return scan_results(root)


def test_by_epoch_table_and_tests_at_the_last_epoch(tmp_path):
    report = build_report(_history_runs(tmp_path), ["standard", "rapt"], None, ["standard"])
    history = report["robustness"]["rte"]["advglue"]["by_epoch"]
    assert history["epochs"] == [0, 1, 2]
    for name, seeds in HISTORY.items():
        arr = np.array([seeds[s] for s in sorted(seeds)], dtype=float)  # (seeds, epochs, 2)
        row = history["rows"][name]
        for e in range(3):
            assert row["dev"][str(e)] == pytest.approx([arr[:, e, 0].mean(), arr[:, e, 0].std(ddof=1)])
            assert row["set"][str(e)] == pytest.approx([arr[:, e, 1].mean(), arr[:, e, 1].std(ddof=1)])
    # at the last epoch (not at the dev-chosen one): rapt - standard on AdvGLUE = 32-33, 41-40, 43-38
    last = {c["on"]: c for c in history["paired_last"]}
    std_adv, rapt_adv = np.array([33.0, 40.0, 38.0]), np.array([32.0, 41.0, 43.0])
    assert last["advglue"]["mean_diff"] == pytest.approx((rapt_adv - std_adv).mean())
    assert last["advglue"]["p_value"] == pytest.approx(ttest_rel(rapt_adv, std_adv).pvalue)
    assert last["dev"]["p_value"] == pytest.approx(ttest_rel([57.0, 56.0, 54.0], [59.0, 58.0, 57.0]).pvalue)
    # the dev-chosen view still takes each run's best dev epoch: standard 59/33, 58/40, 57/38 (seed 3 epoch 3)
    assert report["robustness"]["rte"]["advglue"]["rows"]["rapt"]["3"] == pytest.approx([55.0, 45.0])
    text = report_markdown(report, "t")
    assert "#### RTE: dev and advglue by epoch" in text
    assert ("| standard | 3 | 53.0 ± 2.6 | 54.3 ± 2.1 | 58.0 ± 1.0 | 41.7 ± 5.9 | 38.7 ± 3.2 | 37.0 ± 3.6 |"
            in text)


def test_by_epoch_takes_the_last_evaluation_of_an_epoch_and_counts_short_runs(tmp_path):
    write_run(tmp_path, "rte", "standard", 1, [(0.50, 0.40), (0.55, 0.42)])
    write_run(tmp_path, "rte", "standard", 2, [(0.52, 0.44)])  # one epoch only
    path = tmp_path / "rte" / "standard" / "s1" / "metrics.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[0]["epoch"] = recs[1]["epoch"] = 0  # two evaluations in epoch 0 (every-N-steps evaluation)
    recs.insert(2, dict(recs[1], epoch=1, step=3, metrics={"acc": 0.53}, robustness={"advglue": {"acc": 0.30}}))
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    history = build_report(scan_results(tmp_path))["robustness"]["rte"]["advglue"]["by_epoch"]
    row = history["rows"]["standard"]
    assert history["epochs"] == [0, 1] and row["n"] == {"0": 2, "1": 1}
    assert row["set"]["0"] == pytest.approx([np.mean([42.0, 44.0]), np.std([42.0, 44.0], ddof=1)])
    assert row["set"]["1"] == [pytest.approx(30.0), None]


def test_archived_evaluations_keep_the_by_epoch_view_and_entries_without_them_stay_out(tmp_path):
    results = _history_runs(tmp_path / "runs")
    for r in results:
        (r.folder / "config.json").write_text(json.dumps({"method": r.name}))
    entries = [archive_entry(r) for r in results]
    by_key = {(e["method"], e["seed"]): e for e in entries}
    assert by_key["rapt", 3]["epoch"] == 1 and by_key["standard", 1]["epoch"] == 2
    assert by_key["standard", 1]["evaluations"] == [
        {"epoch": e, "step": e + 1, "metrics": {"acc": d / 100}, "robustness": {"advglue": {"acc": a / 100}}}
        for e, (d, a) in enumerate(HISTORY["standard"][1])]
    path = tmp_path / "archive.json"
    path.write_text(json.dumps({"source": "test", "runs": entries}))
    from_folders = build_report(results, ["standard", "rapt"], None, ["standard"])["robustness"]
    from_archive = build_report(load_archive(path), ["standard", "rapt"], None, ["standard"])["robustness"]
    assert from_archive["rte"]["advglue"]["by_epoch"] == from_folders["rte"]["advglue"]["by_epoch"]
    assert from_archive["rte"]["advglue"]["summary"] == from_folders["rte"]["advglue"]["summary"]
    # an entry without its evaluations holds its best only: it stays out of the by-epoch view
    for e in entries:
        if e["method"] == "rapt" and e["seed"] == 3:
            del e["evaluations"]
    path.write_text(json.dumps({"source": "test", "runs": entries}))
    archived = load_archive(path)
    assert sum(not r.history for r in archived) == 1
    rows = build_report(archived, ["standard", "rapt"], None, ["standard"])["robustness"]["rte"]["advglue"]
    assert rows["by_epoch"]["rows"]["rapt"]["seeds"] == [1, 2] and rows["summary"]["rapt"]["seeds"] == [1, 2, 3]


@pytest.mark.parametrize("change, message", [
    (lambda ev: ev.pop(2), "no one evaluation of epoch 2"),
    (lambda ev: ev[0]["metrics"].update(acc=0.99), "score above the entry's best"),
    (lambda ev: ev[2]["robustness"]["advglue"].update(acc=0.5), "no one evaluation of epoch 2"),
    (lambda ev: ev[1].pop("metrics"), r"evaluations\[1\] needs epoch, metrics"),
    (lambda ev: ev[1]["metrics"].update(acc="x"), r"evaluations\[1\]: metrics must be"),
])
def test_archived_evaluations_that_disagree_with_the_entry_are_one_line_errors(tmp_path, change, message):
    from data_utils.task_def import ConfigError

    write_run(tmp_path, "rte", "standard", 1, [(0.50, 0.40), (0.52, 0.41), (0.55, 0.33)])
    result = scan_results(tmp_path)[0]
    (result.folder / "config.json").write_text("{}")
    entry = archive_entry(result)
    change(entry["evaluations"])
    path = tmp_path / "archive.json"
    path.write_text(json.dumps({"source": "test", "runs": [entry]}))
    with pytest.raises(ConfigError, match=message) as info:
        load_archive(path)
    assert "\n" not in str(info.value) and "runs[0]" in str(info.value)


def test_an_archived_best_that_rounding_ties_with_an_earlier_epoch_stays_the_best(tmp_path):
    # unrounded, epoch 2 is best (0.86174 > 0.86171); to 4 decimals the two tie, and the entry still says epoch 2
    write_run(tmp_path, "rte", "standard", 1, [(0.86171, 0.40), (0.86174, 0.30)])
    result = scan_results(tmp_path)[0]
    (result.folder / "config.json").write_text("{}")
    entry = archive_entry(result)
    assert entry["epoch"] == 1 and [e["metrics"]["acc"] for e in entry["evaluations"]] == [0.8617, 0.8617]
    path = tmp_path / "archive.json"
    path.write_text(json.dumps({"source": "test", "runs": [entry]}))
    back = load_archive(path)[0]
    assert back.best.epoch == 1 and back.best.robustness == {"dev": {"advglue": {"acc": 0.3}}}


def test_cpu_clocks_are_named_where_the_clocks_are_described():
    from experiments.rapt.robustness_report import markdown

    summary = {"seeds": [1], "dev": [60.0, None], "set": [40.0, None], "gap": [20.0, None]}
    section = {"rte": {"advglue": {"summary": {"standard": summary}, "paired": []}}}
    times = {"rte": {"standard": {"s_per_step": 2.0, "/standard": 1.0, "cpu_s_per_step": 1.5, "cpu/standard": 1.0}}}
    lines = markdown(section, times)
    assert ("(see Training time). CPU s/step instead where a task's CPU runs recorded their process's CPU time (not "
            "moved by other programs on the machine or by pauses). p (Holm) = ") in lines[3]
    assert lines[7:10] == ["| Method | Seeds | dev | advglue | gap (dev - advglue) | CPU s/step | CPU / standard |",
                          "|---|---|---|---|---|---|---|", "| standard | 1 | 60.0 | 40.0 | 20.0 | 1.50 | 1.00 |"]
    assert "CPU s/step instead" not in markdown(section, {"rte": {"standard": {"s_per_step": 2.0}}})[3]
