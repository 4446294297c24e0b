"""The recipe check: each cell of an lr x epochs grid against the default recipe, measured by the default's seed
noise, with p-values recomputed here from Student's t in closed form and Holm's correction by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.rapt import recipe
from experiments.rapt.stats import detectable_by_t, detectable_difference
from mt_dnn.cli_utils import run_cli

GRID = """tasks: [rte, cola]
seeds: [1]
flags: {epochs: 3}
methods:
  lr5e-5: {method: standard, lr: 5.0e-5}
  lr1e-4: {method: standard, lr: 1.0e-4}
  lr1e-4_ep6: {method: standard, lr: 1.0e-4, epochs: 6}
"""


def _entry(task, method, seed, score, epoch=2, advglue=None):
    # CoLA's runs log accuracy too; its score is MCC alone (Table 2's column)
    metrics = {"mcc": score, "acc": 0.7} if task == "cola" else {"acc": score}
    entry = {"task": task, "method": method, "seed": seed, "epoch": epoch, "metrics": metrics}
    if advglue is not None:
        entry["robustness"] = {"advglue": {"acc": advglue}}
    return entry


def _write(path, runs):
    path.write_text(json.dumps({"source": "test", "runs": runs}))
    return str(path)


def _files(tmp_path, cells, noise):
    grid = tmp_path / "recipe.yml"
    grid.write_text(GRID)
    arch = _write(tmp_path / "recipe.json", cells)
    noise_path = _write(tmp_path / "noise.json", noise)
    return str(grid), arch, noise_path


def _t2_p(t):
    """Two-sided p of Student's t with 2 degrees of freedom, in closed form: 1 - |t| / sqrt(t^2 + 2)."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


def _noise():
    # standard at the default recipe: RTE 0.50 / 0.52 / 0.54 (sd 2 points), CoLA 0.28 / 0.29 / 0.30 (sd 1 point)
    return ([_entry("rte", "standard", s, 0.48 + 0.02 * s) for s in (1, 2, 3)]
            + [_entry("cola", "standard", s, 0.27 + 0.01 * s) for s in (1, 2, 3)]
            + [_entry("rte", "smart", 1, 0.9)])


def test_tests_against_default_with_seed_noise_and_holm(tmp_path):
    cells = [_entry("rte", "lr1e-4", 1, 0.55, advglue=0.40), _entry("rte", "lr5e-5", 1, 0.56, epoch=1),
             _entry("rte", "lr1e-4_ep6", 1, 0.65, epoch=5),
             _entry("cola", "lr1e-4", 1, 0.29), _entry("cola", "lr5e-5", 1, 0.27),
             _entry("cola", "lr1e-4_ep6", 1, 0.35)]
    grid, arch, noise = _files(tmp_path, cells, _noise())
    out = tmp_path / "recipe.md"
    assert run_cli(recipe.main, ["--grid", grid, "--archive", arch, "--noise", noise, "--default", "lr1e-4",
                                 "--out", str(out)]) == 0
    text = out.read_text()
    # independent: t = d / (sqrt(2) s), p in closed form for df 2, Holm by hand over the four tests
    cases = {("RTE", "lr5e-5"): (1.0, 2.0), ("RTE", "lr1e-4_ep6"): (10.0, 2.0),
             ("CoLA", "lr5e-5"): (-2.0, 1.0), ("CoLA", "lr1e-4_ep6"): (6.0, 1.0)}
    ps = {k: _t2_p(d / (math.sqrt(2) * s)) for k, (d, s) in cases.items()}
    order = sorted(ps, key=ps.get)
    holm, running = {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, ps[k] * (len(order) - i)))
        holm[k] = running
    rows = {(line.split(" | ")[0][2:], line.split(" | ")[1]): line.split(" | ")
            for line in text.splitlines() if line.startswith("| RTE |") or line.startswith("| CoLA |")}
    assert set(rows) == set(cases)
    for k, (d, s) in cases.items():
        cols = rows[k]
        assert float(cols[6]) == pytest.approx(d, abs=0.05)
        assert float(cols[7]) == pytest.approx(d / (math.sqrt(2) * s), abs=0.005)
        assert float(cols[8]) == pytest.approx(ps[k], abs=0.0005)
        assert float(cols[9]) == pytest.approx(holm[k], abs=0.0005)
    # RTE lr1e-4_ep6: t = 3.54, p 0.071 -> within; CoLA lr1e-4_ep6: t = 4.24, p 0.051 -> within after Holm too
    assert all("within seed noise" in rows[k][10] for k in cases)
    assert "| 1e-4 | 55.0 (ep 3); advglue 40.0 | 65.0 (ep 6) |" in text
    assert "| 5e-5 | 56.0 (ep 2) | - |" in text
    assert "5 seeds" not in text and "3 seeds in" in text and "s = 2.00" in text and "s = 1.00" in text
    assert "No recipe is better than `lr1e-4` beyond seed noise on every task." in text
    assert text.startswith("# Recipe check\n") and "## RTE (seed 1)" in text and "## CoLA (seed 1)" in text
    assert "| lr | 3 epochs | 6 epochs |" in text and "default recipe `lr1e-4` (lr 1e-4, 3 epochs)" in text
    assert "| 1e-4 | 29.0 (ep 3) | 35.0 (ep 3) |" in text  # CoLA: MCC, not the mean with accuracy
    # the detectable d: the true difference at which the test (df 2, statistic d / (sqrt(2) s)) has 80 % power
    from scipy.stats import nct, t as student
    for s_, line in ((2.0, "s = 2.00 (so two seeds differ by about 2.83)"),
                     (1.0, "s = 1.00 (so two seeds differ by about 1.41)")):
        found = text[text.index(line):].split("detectable d = ")[1].split(".\n")[0]
        se, crit = math.sqrt(2) * s_, student.ppf(0.975, 2)
        power = lambda d: nct.sf(crit, 2, d / se) + nct.sf(crit, 2, -d / se)
        assert power(float(found) - 0.05) < 0.8 < power(float(found) + 0.05)


def test_a_recipe_better_on_every_task_is_named(tmp_path):
    # noise with 20 seeds: sd small enough that a 10-point gain is beyond noise after Holm
    noise = ([_entry("rte", "standard", s, 0.55 + (0.01 if s % 2 else -0.01)) for s in range(1, 21)]
             + [_entry("cola", "standard", s, 0.29 + (0.01 if s % 2 else -0.01)) for s in range(1, 21)])
    cells = [_entry("rte", "lr1e-4", 1, 0.55), _entry("rte", "lr1e-4_ep6", 1, 0.65),
             _entry("rte", "lr5e-5", 1, 0.60), _entry("cola", "lr1e-4", 1, 0.29),
             _entry("cola", "lr1e-4_ep6", 1, 0.39), _entry("cola", "lr5e-5", 1, 0.29)]
    grid, arch, noise_path = _files(tmp_path, cells, noise)
    lines = recipe.build(grid, [arch], [noise_path], "lr1e-4", "standard")
    text = "\n".join(lines)
    assert "Recipes better than `lr1e-4` beyond seed noise on every task: lr1e-4_ep6." in text
    assert "Better on some tasks only: lr5e-5 (RTE)." in text
    cola_worse = recipe.compare({"a": 20.0, "b": 29.0}, "b", 20, 1.0)["a"]
    assert cola_worse["d"] == -9.0 and recipe.verdict({**cola_worse, "p_holm": cola_worse["p_value"]}) == \
        "worse beyond seed noise"


def test_noise_comes_from_the_archive_with_most_seeds(tmp_path):
    few = _write(tmp_path / "few.json", [_entry("rte", "standard", s, 0.5 + 0.05 * s) for s in (1, 2)])
    many = _write(tmp_path / "many.json", [_entry("rte", "standard", s, 0.5 + 0.01 * s) for s in (1, 2, 3, 4)])
    path, n, sd = recipe.pick_noise(recipe.load_noise([few, many]), "rte", "standard")
    assert (path, n) == (many, 4)
    assert sd == pytest.approx(math.sqrt(sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3))
    assert recipe.pick_noise(recipe.load_noise([few]), "cola", "standard") is None


def test_missing_default_or_noise_says_so(tmp_path):
    grid, arch, noise = _files(tmp_path, [_entry("rte", "lr5e-5", 1, 0.5), _entry("cola", "lr1e-4", 1, 0.3)],
                               [_entry("rte", "standard", 1, 0.5)])
    text = "\n".join(recipe.build(grid, [arch], [noise], "lr1e-4", "standard"))
    assert text.startswith("# Recipe check") and "| 5e-5 | 50.0 (ep 3) | - |" in text
    assert "The default recipe `lr1e-4` has no finished run on RTE: nothing to test." in text
    assert "No noise archive has two or more `standard` runs on CoLA: nothing to test." in text
    assert "Against the default recipe" not in text
    # the other way round: RTE without seed noise, CoLA without its default run
    noise = _write(tmp_path / "noise2.json", [_entry("cola", "standard", s, 0.3) for s in (1, 2)])
    arch = _write(tmp_path / "recipe2.json", [_entry("rte", "lr1e-4", 1, 0.5), _entry("cola", "lr5e-5", 1, 0.3)])
    text = "\n".join(recipe.build(grid, [arch], [noise], "lr1e-4", "standard"))
    assert "No noise archive has two or more `standard` runs on RTE: nothing to test." in text
    assert "The default recipe `lr1e-4` has no finished run on CoLA: nothing to test." in text


def test_an_untested_task_and_several_sets_are_named(tmp_path):
    (tmp_path / "recipe.yml").write_text(GRID)
    noise = _write(tmp_path / "noise.json", [_entry("rte", "standard", s, 0.50 + 0.001 * s) for s in (1, 2, 3)])
    cells = [_entry("rte", "lr1e-4", 1, 0.50), _entry("rte", "lr5e-5", 1, 0.60), _entry("rte", "lr1e-4_ep6", 1, 0.61),
             _entry("cola", "lr1e-4", 1, 0.3)]
    cells[0]["robustness"] = {"advglue": {"acc": 0.4, "f1": 0.3}, "other": {"acc": 0.25}}
    arch = _write(tmp_path / "recipe.json", cells)
    text = "\n".join(recipe.build(str(tmp_path / "recipe.yml"), [arch], [noise], "lr1e-4", "standard"))
    assert "| 1e-4 | 50.0 (ep 3); advglue 40.0, other 25.0 | 61.0 (ep 3) |" in text
    assert ("No recipe is better than `lr1e-4` beyond seed noise on every task. Better on some tasks only: "
            "lr5e-5 (RTE); lr1e-4_ep6 (RTE). Not tested (no default run or no seed noise): CoLA.") in text


@pytest.mark.parametrize("d, p, p_holm, expected", [
    (0.5, 0.001, 0.01, "better beyond seed noise"), (-0.5, 0.001, 0.01, "worse beyond seed noise"),
    (0.5, 0.01, 0.2, "lead (not after Holm)"), (-0.5, 0.01, 0.2, "behind (not after Holm)"),
    (3.0, 0.05, 0.05, "within seed noise"), (-3.0, 0.2, 0.5, "within seed noise")])
def test_verdicts(d, p, p_holm, expected):
    assert recipe.verdict({"d": d, "p_value": p, "p_holm": p_holm}) == expected


def test_seed_noise_needs_two_runs_and_a_tie_takes_the_first_archive(tmp_path):
    two = _write(tmp_path / "two.json", [_entry("rte", "standard", s, 0.5 + 0.02 * s) for s in (1, 2)])
    other = _write(tmp_path / "other.json", [_entry("rte", "standard", s, 0.5) for s in (3, 4)])
    found = recipe.pick_noise(recipe.load_noise([two, other]), "rte", "standard")
    assert found == (two, 2, pytest.approx(math.sqrt(2)))
    assert recipe.pick_noise(recipe.load_noise([other, two]), "rte", "standard")[0] == other
    one = _write(tmp_path / "one.json", [_entry("rte", "standard", 1, 0.5)])
    assert recipe.pick_noise(recipe.load_noise([one]), "rte", "standard") is None


def test_a_missing_file_is_a_one_line_error(tmp_path, capsys):
    grid, arch, noise = _files(tmp_path, [_entry("rte", "lr1e-4", 1, 0.5)], _noise())
    argv = ["--grid", grid, "--archive", arch, "--noise", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r.md")]
    assert run_cli(recipe.main, argv) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.json'}: no such file\n"
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("change, message", [
    (lambda g: g.replace("flags: {epochs: 3}\n", ""), "recipe.yml: method lr5e-5 sets no epochs (nor do the grid's"),
    (lambda g: g, "--default nope: not a method of"),
])
def test_bad_grid_or_default_is_a_one_line_error(tmp_path, capsys, change, message):
    grid, arch, noise = _files(tmp_path, [_entry("rte", "lr1e-4", 1, 0.5)], _noise())
    (tmp_path / "recipe.yml").write_text(change(GRID))
    argv = ["--grid", grid, "--archive", arch, "--noise", noise, "--out", str(tmp_path / "r.md")]
    argv += ["--default", "nope"] if "default" in message else ["--default", "lr1e-4"]
    assert run_cli(recipe.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.md").exists()


def test_two_seeds_of_a_recipe_are_refused(tmp_path):
    grid, arch, noise = _files(tmp_path, [_entry("rte", "lr1e-4", 1, 0.5), _entry("rte", "lr1e-4", 2, 0.5)], _noise())
    with pytest.raises(recipe.ConfigError, match="rte: the recipe runs have seeds \\[1, 2\\]"):
        recipe.build(grid, [arch], [noise], "lr1e-4", "standard")


def test_detectable_by_t_matches_the_normal_limit_and_the_paired_form():
    # many degrees of freedom: (z_0.975 + z_0.8) * se, within the neglected far tail
    assert detectable_by_t(100000, 1.0) == pytest.approx(1.959964 + 0.841621, abs=2e-3)
    # the paired test over n seeds is the same test with se = sd / sqrt(n), df n - 1
    assert detectable_difference(5, 3.0) == pytest.approx(detectable_by_t(4, 3.0 / math.sqrt(5)), rel=1e-5)


def test_the_shipped_grid_with_the_default_flags(tmp_path, monkeypatch, capsys):
    shipped = str(Path(recipe.__file__).parent / "grids" / "recipe.yml")
    arch = _write(tmp_path / "recipe.json", [_entry("rte", "lr1e-4_ep3", 1, 0.55), _entry("rte", "lr2e-4_ep6", 1, 0.57),
                                             _entry("cola", "lr1e-4_ep3", 1, 0.29)])
    noise = _write(tmp_path / "noise.json", _noise())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "rapt" / "results").mkdir(parents=True)
    assert run_cli(recipe.main, ["--grid", shipped, "--archive", arch, "--noise", noise]) == 0
    assert capsys.readouterr().out == "wrote experiments/rapt/results/recipe.md\n"
    text = (tmp_path / "experiments" / "rapt" / "results" / "recipe.md").read_text()
    assert "default recipe `lr1e-4_ep3` (lr 1e-4, 3 epochs)" in text and text.endswith(" on every task.\n")
    assert "Not tested" not in text  # CoLA has its default run and seed noise, and no other cell yet
    assert "| 2e-4 | - | 57.0 (ep 3) |" in text and "| RTE | lr2e-4_ep6 | 2e-4 | 6 | 57.0 | 55.0 | +2.0 |" in text
