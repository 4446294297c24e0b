"""The dev-against-AdvGLUE figure: its points, means, table and majority line against values worked out here from
hand-written runs and a hand-made AdvGLUE-format file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.rapt import robustness_figure
from experiments.rapt.results import scan_results
from tests.metrics_records import write_run

# (task, method, seed): [(dev acc, advglue acc) per epoch]; the figure takes each run's best dev epoch
RUNS = {("rte", "standard", 1): [(0.60, 0.50), (0.65, 0.40)], ("rte", "standard", 2): [(0.70, 0.45)],
        ("rte", "standard", 3): [(0.66, 0.42), (0.61, 0.55)],
        ("rte", "rapt", 1): [(0.64, 0.44)], ("rte", "rapt", 2): [(0.69, 0.50)], ("rte", "rapt", 3): [(0.67, 0.47)],
        ("sst", "rapt", 1): [(0.85, 0.38)]}
BEST = {k: max(v, key=lambda e: e[0]) for k, v in RUNS.items()}


def _write_runs(root: Path) -> None:
    for (task, name, seed), evals in RUNS.items():
        write_run(root, task, name, seed, evals)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    a = np.array(values)
    return float(a.mean()), float(a.std(ddof=1))


def test_points_are_each_runs_dev_chosen_evaluation(tmp_path):
    _write_runs(tmp_path)
    found = robustness_figure.points(scan_results(tmp_path))
    rte = found["rte"]["advglue"]
    assert list(rte["rows"]) == ["standard", "rapt"]  # the study's order, not the order found
    for (task, name, seed), (dev, adv) in BEST.items():
        got = found[task]["advglue"]["rows"][name][str(seed)]
        assert got == pytest.approx([dev * 100, adv * 100])
    # seed 3 of standard: the best dev epoch (66) brings AdvGLUE 42, not the better 55 of the later epoch
    assert rte["rows"]["standard"]["3"][1] == pytest.approx(42.0)


def test_panel_draws_every_run_and_each_methods_mean(tmp_path):
    _write_runs(tmp_path)
    cell = robustness_figure.points(scan_results(tmp_path))["rte"]["advglue"]
    plt = robustness_figure.headless_pyplot()
    fig, ax = plt.subplots()
    style = robustness_figure.styles(["rapt", "standard"])
    assert style == {"standard": ("C0", "o"), "rapt": ("C1", "s")}  # the study's order, one shape each
    robustness_figure.draw(ax, "rte", "advglue", cell, 56.8, style)
    from matplotlib.collections import PathCollection

    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]  # not the error bars' lines
    assert len(scatters) == 2
    for scattered, name in zip(scatters, ["standard", "rapt"]):
        want = np.array([[BEST["rte", name, s][0] * 100, BEST["rte", name, s][1] * 100] for s in (1, 2, 3)])
        assert np.allclose(np.asarray(scattered.get_offsets()), want)
    means = [line for line in ax.lines if line.get_marker() in ("o", "s")]
    assert [m.get_marker() for m in means] == ["o", "s"] and all(m.get_markerfacecolor() == "none" for m in means)
    got = np.array([(m.get_xdata()[0], m.get_ydata()[0]) for m in means], dtype=float)
    want = [(np.mean([BEST["rte", n, s][0] * 100 for s in (1, 2, 3)]),
             np.mean([BEST["rte", n, s][1] * 100 for s in (1, 2, 3)])) for n in ("standard", "rapt")]
    assert np.allclose(got, want)
    assert any(line.get_linestyle() == ":" and line.get_ydata()[0] == 56.8 for line in ax.lines)
    plt.close(fig)


def test_cli_writes_the_figure_and_table_with_the_majority_line(tmp_path, capsys):
    _write_runs(tmp_path / "runs")
    adv = tmp_path / "advglue"
    adv.mkdir()
    rows = [{"idx": i, "sentence1": f"p {i}", "sentence2": f"h {i}", "label": lab}
            for i, lab in enumerate([1, 1, 1, 0])]
    sst = [{"idx": i, "sentence": f"s {i}", "label": lab} for i, lab in enumerate([0, 1, 0, 0, 0])]
    (adv / "dev.json").write_text(json.dumps({"rte": rows, "sst2": sst}))
    out = tmp_path / "fig" / "rob.png"
    assert robustness_figure.main(["--root", str(tmp_path / "runs"), "--robustness_dir", str(adv),
                                   "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = out.with_suffix(".md").read_text()
    dev_m, dev_s = _mean_sd([BEST["rte", "rapt", s][0] * 100 for s in (1, 2, 3)])
    adv_m, adv_s = _mean_sd([BEST["rte", "rapt", s][1] * 100 for s in (1, 2, 3)])
    gap_m, gap_s = _mean_sd([(BEST["rte", "rapt", s][0] - BEST["rte", "rapt", s][1]) * 100 for s in (1, 2, 3)])
    assert (f"| rapt | 1, 2, 3 | {dev_m:.1f} ± {dev_s:.1f} | {adv_m:.1f} ± {adv_s:.1f} | "
            f"{gap_m:.1f} ± {gap_s:.1f} |") in table
    assert "Majority class of advglue (RTE): 75.0." in table  # 3 of 4 rows are label 1
    assert "Majority class of advglue (SST): 80.0." in table  # 4 of 5 rows are label 0
    assert "| rapt | 1 | 85.0 | 38.0 | 47.0 |" in table  # one seed: no sd


def test_no_robustness_scores_is_a_one_line_error(tmp_path):
    write_run(tmp_path, "rte", "standard", 1, [(0.5, None)])
    from data_utils.task_def import ConfigError

    with pytest.raises(ConfigError, match="no finished run logged a robustness set"):
        robustness_figure.main(["--root", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    from mt_dnn.cli_utils import run_cli

    assert run_cli(robustness_figure.main, ["--root", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --root {tmp_path / 'none'}: no such folder"
    _write_runs(tmp_path / "runs")
    assert run_cli(robustness_figure.main, ["--root", str(tmp_path / "runs"), "--methods", "rapt,smrt",
                                            "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --methods smrt: no runs of that method (methods: standard, rapt)"
    assert not (tmp_path / "x.png").exists()


def test_methods_pick_and_order_the_rows(tmp_path):
    _write_runs(tmp_path)
    found = robustness_figure.points(scan_results(tmp_path), ["rapt", "standard"])
    assert list(found["rte"]["advglue"]["rows"]) == ["rapt", "standard"]
    only = robustness_figure.points(scan_results(tmp_path), ["rapt"])
    assert list(only["rte"]["advglue"]["rows"]) == ["rapt"] and list(only["sst"]["advglue"]["rows"]) == ["rapt"]


def test_by_epoch_panel_and_table(tmp_path, capsys):
    _write_runs(tmp_path / "runs")
    out = tmp_path / "rob.png"
    assert robustness_figure.main(["--root", str(tmp_path / "runs"), "--out", str(out)]) == 0
    table = out.with_suffix(".md").read_text()
    # RTE standard: AdvGLUE at the end of epoch 1 for seeds 1-3 (50, 45, 42), of epoch 2 for seeds 1 and 3 (40, 55)
    e1, e2 = _mean_sd([50.0, 45.0, 42.0]), _mean_sd([40.0, 55.0])
    assert "**RTE**: advglue at the end of each epoch (x100, mean ± sd over seeds)" in table
    assert f"| standard | 1, 2, 3 | {e1[0]:.1f} ± {e1[1]:.1f} | {e2[0]:.1f} ± {e2[1]:.1f} |" in table
    assert f"| rapt | 1, 2, 3 | {np.mean([44, 50, 47]):.1f} ± {np.std([44, 50, 47], ddof=1):.1f} | - |" in table
    assert "**SST**: advglue at the end" not in table  # SST's one run has one epoch: no by-epoch view
    cell = robustness_figure.points(scan_results(tmp_path / "runs"))["rte"]["advglue"]
    plt = robustness_figure.headless_pyplot()
    fig, ax = plt.subplots()
    robustness_figure.draw_epochs(ax, "rte", "advglue", cell["by_epoch"], None,
                                  robustness_figure.styles(["standard", "rapt"]))
    bars = {c.get_label().split(" (")[0]: c.lines[0] for c in ax.containers}  # each method's data line
    assert list(bars) == ["standard", "rapt"]
    standard = bars["standard"]
    assert np.allclose(standard.get_ydata(), [e1[0], e2[0]])
    assert np.all(np.diff(standard.get_xdata()) == 1.0)  # epochs 1 and 2, at one offset
    plt.close(fig)
