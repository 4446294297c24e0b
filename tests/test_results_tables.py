"""The committed result tables recomputed from their archives with numpy/scipy alone, beside the snapshot tests.

tests/test_archive.py checks that the campaign code regenerates ``experiments/rapt/results/table2.md`` and
``layers.md`` byte for byte (snapshot tests: they compare the code with its own earlier output). Here every number
of those tables that is not a best-of choice is recomputed from ``archive_table2.json`` / ``archive_layers.json``
by formulas written out in this file (means, sample sds with ddof=1, paired differences, scipy's paired t-test),
without the project's report code, and compared with the committed text.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "rapt" / "results"
# the table's columns: task -> the metrics shown (the paper's), in order
COLUMNS = {"rte": ["acc"], "mrpc": ["acc", "f1"], "cola": ["mcc"], "sst": ["acc"], "stsb": ["pearson", "spearman"]}
LABEL = {"rte": "RTE", "mrpc": "MRPC", "cola": "CoLA", "sst": "SST", "stsb": "STS-B"}
HEADER = {"rte": "RTE Acc", "mrpc": "MRPC Acc/F1", "cola": "CoLA MCC", "sst": "SST Acc", "stsb": "STS-B P/S"}
BEST_OF = {"rapt_best_eta", "smart_best_step"}  # rows that pick a member per task: not recomputed here


def _runs(name: str) -> dict[tuple[str, str, int], dict[str, float]]:
    """(task, method, seed) -> metrics x100 of that run's archived best evaluation."""
    data = json.loads((RESULTS / name).read_text())
    out = {}
    for r in data["runs"]:
        key = (r["task"], r["method"], int(r["seed"]))
        assert key not in out, f"{name} holds {key} twice"
        out[key] = {m: 100.0 * v for m, v in r["metrics"].items()}
    return out


RUNS = _runs("archive_table2.json")


def _seeds(task: str, method: str) -> list[int]:
    return sorted(s for t, m, s in RUNS if (t, m) == (task, method))


def _score(task: str, method: str, seed: int) -> float:
    """A task's score for one run: the mean of its shown metrics."""
    return float(np.mean([RUNS[(task, method, seed)][m] for m in COLUMNS[task]]))


def _table(text: str, header_start: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first markdown table whose header line starts with header_start."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell)]


TABLE2 = (RESULTS / "table2.md").read_text()
MAIN = {row[0]: row for row in _table(TABLE2, "| Method | RTE Acc")}


def test_every_archived_method_has_a_row_and_the_table_has_no_row_without_runs():
    archived = {m for _, m, _ in RUNS}
    assert archived == set(MAIN) - BEST_OF


@pytest.mark.parametrize("method", sorted({m for _, m, _ in RUNS}))
def test_table2_cells_are_the_mean_and_sample_sd_over_seeds(method):
    row = MAIN[method]
    for i, task in enumerate(COLUMNS, start=1):
        seeds = _seeds(task, method)
        if not seeds:
            assert row[i] == "-", (method, task)
            continue
        expected = []
        for metric in COLUMNS[task]:
            values = np.array([RUNS[(task, method, s)][metric] for s in seeds])
            expected.append(values.mean())
            if len(seeds) > 1:
                expected.append(values.std(ddof=1))
        got = _numbers(row[i])
        assert len(got) == len(expected), (method, task, row[i])
        assert np.allclose(got, expected, atol=0.05 + 1e-9), (method, task, row[i], expected)
    counts = sorted({len(_seeds(t, method)) for t in COLUMNS if _seeds(t, method)})
    assert row[-1] == (f"{counts[0]}/{counts[-1]}" if len(counts) > 1 else str(counts[0]))


@pytest.mark.parametrize("method", sorted({m for _, m, _ in RUNS}))
def test_table2_average_is_the_mean_over_tasks_of_each_task_score(method):
    row = MAIN[method]
    if any(not _seeds(t, method) for t in COLUMNS):
        assert row[-2] == "-"
        return
    per_task = [np.mean([_score(t, method, s) for s in _seeds(t, method)]) for t in COLUMNS]
    got = _numbers(row[-2])
    assert abs(got[0] - float(np.mean(per_task))) <= 0.05 + 1e-9, (method, row[-2], per_task)
    same_seeds = len({tuple(_seeds(t, method)) for t in COLUMNS}) == 1
    if same_seeds and len(_seeds("rte", method)) > 1:  # the ± is the sd over seeds of each seed's Average
        by_seed = [np.mean([_score(t, method, s) for t in COLUMNS]) for s in _seeds("rte", method)]
        assert abs(got[1] - float(np.std(by_seed, ddof=1))) <= 0.05 + 1e-9
    else:
        assert len(got) == 1


def _paired(a: list[float], b: list[float]) -> tuple[float, float | None, int, int, float | None]:
    """mean(A-B), sample sd, A wins, B wins (differences beyond 0.05), scipy's paired t-test p (>= 2 seeds whose
    differences are not all equal)."""
    d = np.array(a) - np.array(b)
    sd = float(d.std(ddof=1)) if len(d) > 1 else None
    p = float(stats.ttest_rel(a, b).pvalue) if len(d) > 1 and np.ptp(d) > 1e-9 else None
    return float(d.mean()), sd, int((d > 0.05).sum()), int((d < -0.05).sum()), p


def _check_paired_row(row: list[str], a: list[float], b: list[float]) -> float | None:
    """A paired row's seeds, mean, sd, wins and p (columns 3-8) against ``a`` and ``b``; returns the p."""
    mean, sd, a_wins, b_wins, p = _paired(a, b)
    assert int(row[3]) == len(a), row
    assert abs(float(row[4]) - mean) <= 0.005 + 1e-9, (row, mean)
    assert (row[5] == "-") if sd is None else abs(float(row[5]) - sd) <= 0.005 + 1e-9, (row, sd)
    assert (int(row[6]), int(row[7])) == (a_wins, b_wins), row
    assert (row[8] == "-") if p is None else abs(float(row[8]) - p) <= 0.0005 + 1e-9, (row, p)
    return p


def _holm(ps: list[float | None]) -> list[float | None]:
    """Holm's adjusted p-values, written out here: the defined p's in increasing order, the k-th (from 0) times
    m - k, the running maximum of those, capped at 1; None stays None and does not count in m."""
    idx = [i for i, p in enumerate(ps) if p is not None]
    values = np.array([ps[i] for i in idx], dtype=float)
    order = np.argsort(values, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate((len(values) - np.arange(len(values))) * values[order]))
    out: list[float | None] = [None] * len(ps)
    for k, j in enumerate(order):
        out[idx[j]] = float(scaled[k])
    return out


def _check_holm_and_verdicts(rows: list[list[str]], ps: list[float | None], holm_col: int, text: str,
                             stated: str, counted: bool = True) -> None:
    """One family's rows: each p (Holm) recomputed over all of them, each verdict from it and the row's own p,
    the family's size as the text states it (``stated`` with ``{n}`` for it) and, with ``counted``, the sentence
    that counts its tests below 0.05 before and after the correction."""
    assert stated.format(n=sum(p is not None for p in ps)) in text
    m, below = sum(p is not None for p in ps), sum(p is not None and p < 0.05 for p in ps)
    after = sum(h is not None and h < 0.05 for h in _holm(ps))
    if counted:
        assert (f"Of these {m} tests, {below} {'is' if below == 1 else 'are'} below 0.05, where about {m * 0.05:.1f} "
                f"would be by chance alone if no method differed; {after} {'stays' if after == 1 else 'stay'} below "
                "it after the Holm correction.") in text
    for row, p, h in zip(rows, ps, _holm(ps), strict=True):
        if p is None:
            assert row[holm_col] == "-" and row[-1] == "-", row
            continue
        assert abs(float(row[holm_col]) - h) <= 0.0005 + 1e-9, (row, h)
        want = "beyond seed noise" if h < 0.05 else "lead (not after Holm)" if p < 0.05 else "within seed noise"
        assert row[-1] == want, (row, p, h)


PER_TASK = _table(TABLE2[TABLE2.index("### Per task"):], "| Task | A | B | Seeds")
ON_AVERAGE = _table(TABLE2[TABLE2.index("### On the Average"):], "| Task | A | B | Seeds")
# a best-of row's runs per task: the member the table says it took ("rte: smart_step1e-1, mrpc: smart, ...")
PICKS = {g: dict(x.split(": ") for x in re.search(rf"^`{g}` takes, per task.*?: (.+)\.$", TABLE2, re.M)
                 .group(1).split(", ")) for g in BEST_OF}


def _row_values(row: list[str]) -> tuple[list[float], list[float]]:
    """The per-seed values (x100) a paired row of table2 compares: per task the primary metric, on an Average
    row each seed's mean task score over the tasks it names (all five without a name); a best-of row takes each
    task's picked member."""
    task_of = {v: k for k, v in LABEL.items()}
    named = re.match(r"Average(?: \((.+)\))?$", row[0])
    tasks = ([task_of[x.strip()] for x in named.group(1).split(",")] if named.group(1) else list(COLUMNS)) \
        if named else [task_of[row[0]]]
    member = {m: {t: PICKS[m][t] if m in PICKS else m for t in tasks} for m in row[1:3]}
    seeds = sorted(set.intersection(*(set(_seeds(t, member[m][t])) for t in tasks for m in row[1:3])))
    if named:
        return tuple([float(np.mean([_score(t, member[m][t], s) for t in tasks])) for s in seeds]
                     for m in row[1:3])
    primary = COLUMNS[tasks[0]][0]
    return tuple([RUNS[(tasks[0], member[m][tasks[0]], s)][primary] for s in seeds] for m in row[1:3])


def test_paired_section_is_one_holm_family():
    """Every paired row of table2 (best-of rows from the members it names) recomputed, then Holm over all of
    them: each row's p (Holm) and verdict."""
    rows = ON_AVERAGE + PER_TASK
    ps = [_check_paired_row(row, *_row_values(row)) for row in rows]
    _check_holm_and_verdicts(rows, ps, 9, TABLE2, "over the {n} tests of this section's tables")
    _check_sizes(rows, ps)
    assert sum(p is not None for p in ps) >= 50


def test_paired_per_task_rows_recomputed_with_scipy():
    """Every per-task comparison of two archived methods: primary metric per shared seed, x100."""
    checked = 0
    task_of = {v: k for k, v in LABEL.items()}
    for row in PER_TASK:
        task, a, b = task_of[row[0]], row[1], row[2]
        if a in BEST_OF or b in BEST_OF:
            continue
        seeds = sorted(set(_seeds(task, a)) & set(_seeds(task, b)))
        primary = COLUMNS[task][0]
        _check_paired_row(row, [RUNS[(task, a, s)][primary] for s in seeds], [RUNS[(task, b, s)][primary] for s in seeds])
        checked += 1
    assert checked >= 60  # most of the section; the rest are best-of rows


def test_paired_rows_on_the_average_recomputed_with_scipy():
    """'Average': seeds where both methods have every task; 'Average (tasks)': the named tasks only."""
    task_of = {v: k for k, v in LABEL.items()}
    checked = 0
    for row in ON_AVERAGE:
        a, b = row[1], row[2]
        if a in BEST_OF or b in BEST_OF:
            continue
        named = re.match(r"Average \((.+)\)", row[0])
        tasks = [task_of[x.strip()] for x in named.group(1).split(",")] if named else list(COLUMNS)
        seeds = sorted(set.intersection(*(set(_seeds(t, m)) for t in tasks for m in (a, b))))
        _check_paired_row(row, [float(np.mean([_score(t, a, s) for t in tasks])) for s in seeds],
                          [float(np.mean([_score(t, b, s) for t in tasks])) for s in seeds])
        checked += 1
    assert checked >= 10


def test_per_seed_tables_hold_each_runs_archived_metrics():
    for task, header in HEADER.items():
        section = TABLE2[TABLE2.index(f"\n{header}:\n"):]
        for row in _table(section, "| Method | seed 1"):
            for seed, cell in enumerate(row[1:], start=1):
                if cell == "-":
                    assert (task, row[0], seed) not in RUNS
                    continue
                got = [float(x) for x in re.match(r"([\d./]+) \(ep \d+\)", cell).group(1).split("/")]
                want = [RUNS[(task, row[0], seed)][m] for m in COLUMNS[task]]
                assert np.allclose(got, want, atol=0.05 + 1e-9), (task, row[0], seed, cell, want)


def test_layers_md_recomputed_from_the_layer_archive_and_the_standard_baseline():
    """layers.md: each max_layer cell is the mean over seeds of the archived best dev acc, x100 (``[n]`` seeds);
    the baseline lines are standard's acc from the Table 2 archive on the same seed(s) and over seeds 1-3."""
    layers = _runs("archive_layers.json")
    text = (RESULTS / "layers.md").read_text()
    for task, label in (("mrpc", "MRPC"), ("rte", "RTE")):
        section = text[text.index(f"**{label}**"):]
        header, _, row = section.splitlines()[2:5]
        names = [c.strip() for c in header.strip("|").split("|")][1:]
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        for name, cell in zip(names, cells):
            method = "embed" if name == "embed" else f"max{name}"
            seeds = sorted(s for t, m, s in layers if (t, m) == (task, method))
            value, count = re.match(r"([\d.]+) \[(\d+)\]", cell).groups()
            assert int(count) == len(seeds)
            assert abs(float(value) - np.mean([layers[(task, method, s)]["acc"] for s in seeds])) <= 0.05 + 1e-9
        std = [RUNS[(task, "standard", s)]["acc"] for s in (1, 2, 3)]
        line = f"standard on the same seed(s) 1: {std[0]:.1f}; over seeds 1, 2, 3: {np.mean(std):.1f} ± {np.std(std, ddof=1):.1f}"
        assert line in section, (line, section[:600])


def _robust_runs() -> dict[tuple[str, str, int], tuple[float, float]]:
    """(task, method, seed) -> (dev acc, AdvGLUE acc) x100 of each archived best evaluation of the study that
    scored AdvGLUE (the peer's MRPC, STS-B and CoLA rows have no robustness set)."""
    data = json.loads((RESULTS / "archive_robustness.json").read_text())
    out = {}
    for r in data["runs"]:
        key = (r["task"], r["method"], int(r["seed"]))
        assert key not in out, f"archive_robustness.json holds {key} twice"
        if r["task"] in ("rte", "sst"):
            out[key] = (100.0 * r["metrics"]["acc"], 100.0 * r["robustness"]["advglue"]["acc"])
        else:
            assert "robustness" not in r, key
    return out


def test_robustness_report_recomputed_from_its_archive():
    """results/robustness_report.md: per task, each method's dev, AdvGLUE and gap (mean, and sample sd with 2+
    seeds), its seconds per step and their ratio to standard's, and every paired row on dev and on AdvGLUE, from
    the archive by the formulas of this file."""
    runs = _robust_runs()
    archived = json.loads((RESULTS / "archive_robustness.json").read_text())["runs"]

    def step_cost(task: str, method: str) -> float:
        return float(np.mean([r["train_seconds"] / r["steps"] for r in archived
                              if (r["task"], r["method"]) == (task, method)]))

    text = (RESULTS / "robustness_report.md").read_text()
    checked = 0
    family: list[list[str]] = []
    ps: list[float | None] = []
    for task in sorted({t for t, _, _ in runs}):
        start = text.index(f"### {LABEL[task]}: dev and advglue")
        section = text[start:text.find("\n#", start + 1)]  # up to the next heading
        rows = _table(section, "| Method | Seeds | dev | advglue")
        assert {r[0] for r in rows} == {m for t, m, _ in runs if t == task}
        seeds_of = {m: sorted(s for t, mm, s in runs if (t, mm) == (task, m)) for m in (r[0] for r in rows)}
        for row in rows:
            seeds = seeds_of[row[0]]
            assert int(row[1]) == len(seeds)
            dev = np.array([runs[(task, row[0], s)][0] for s in seeds])
            adv = np.array([runs[(task, row[0], s)][1] for s in seeds])
            for cell, values in zip(row[2:5], (dev, adv, dev - adv)):
                want = [values.mean()] + ([values.std(ddof=1)] if len(values) > 1 else [])
                assert np.allclose(_numbers(cell), want, atol=0.05 + 1e-9), (task, row, cell, want)
                checked += 1
            # cost per step: mean over seeds of training seconds / steps, and its ratio to standard's
            # (a clock that timed evaluations too is marked and divided by nothing)
            cost = step_cost(task, row[0])
            other_clock = any(r.get("clock") == "steps+eval" for r in archived if (r["task"], r["method"]) ==
                              (task, row[0]))
            value, mark = re.fullmatch(r"([\d.]+)( \(with evaluations\))?", row[5]).groups()
            assert abs(float(value) - cost) <= 0.005 + 1e-9 and bool(mark) == other_clock, (task, row, cost)
            if other_clock:
                assert row[6] == "-", (task, row)
            elif any(r[0] == "standard" for r in rows):
                assert abs(float(row[6]) - cost / step_cost(task, "standard")) <= 0.005 + 1e-9, (task, row)
        for row in (_table(section, "| On | A | B | Seeds") if "| On | A | B | Seeds" in section else []):
            a, b, k = row[1], row[2], 0 if row[0] == "dev" else 1
            seeds = sorted(set(seeds_of[a]) & set(seeds_of[b]))
            # the columns are those of the per-task paired rows, then p (Holm), 'detectable' and the verdict
            ps.append(_check_paired_row(row, [runs[(task, a, s)][k] for s in seeds],
                                        [runs[(task, b, s)][k] for s in seeds]))
            family.append(row)
            assert row[1] != row[2] and row[2] in ("standard", "smart"), row  # only against the baselines
            checked += 1
        if task == "rte":
            if ("rte", "standard_hf", 1) in runs:  # the peer's row is in the table beside ours
                assert any(r[0] == "standard_hf" for r in rows)
    # the dev-chosen tests of every task are one family
    _check_holm_and_verdicts(family, ps, 9, text, "over the {n} tests of this section's dev-chosen tables")
    _check_sizes(family, ps)
    assert checked >= 8


def _check_sizes(rows: list[list[str]], ps: list[float | None]) -> None:
    """One family's 'detectable' and 'detectable (Holm)' cells (columns 10 and 11), from each row's seeds and sd:
    the effect found with 80% power at p < 0.05, and at 0.05 / m (Holm's first step), m the tests with a p."""
    m = sum(p is not None for p in ps)
    for row, p in zip(rows, ps, strict=True):
        if p is None:
            assert row[10:12] == ["-", "-"], row
            continue
        n, sd = int(row[3]), float(row[5])
        for cell, alpha in ((row[10], 0.05), (row[11], 0.05 / m)):
            want = _detectable(n, sd, alpha)
            # the effect is proportional to the sd, which the table rounds to +-0.005
            assert abs(float(cell) - want) <= 0.005 + want / sd * 0.0051, (row, alpha, want)


def _detectable(n: int, sd: float, alpha: float) -> float:
    """The effect a two-sided paired t-test at ``alpha`` over ``n`` seeds finds with 80% power at this sd of the
    differences, by bisection on the noncentral t's two tails."""
    crit = stats.t.ppf(1 - alpha / 2, n - 1)

    def power(delta: float) -> float:
        nc = delta * np.sqrt(n) / sd
        # the lower tail P(T < -crit) as P(T' > crit), T' ~ nct(-nc): scipy's nct.cdf is NaN far in that tail
        return stats.nct.sf(crit, n - 1, nc) + stats.nct.sf(crit, n - 1, -nc)

    lo, hi = 0.0, 1000.0 * sd
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power(mid) < 0.8 else (lo, mid)
    return (lo + hi) / 2


def test_robustness_by_epoch_tables_recomputed_from_the_archived_evaluations():
    """results/robustness_report.md's by-epoch tables: per method and epoch, dev and AdvGLUE (mean, sample sd)
    over the archived runs that keep every evaluation, and the paired rows at each run's last epoch."""
    archived = json.loads((RESULTS / "archive_robustness.json").read_text())["runs"]
    history = {}  # (task, method, seed) -> [(dev, adv) x100 per epoch]
    for r in archived:
        if r["task"] in ("rte", "sst") and "evaluations" in r:
            evs = sorted(r["evaluations"], key=lambda e: e["epoch"])
            assert [e["epoch"] for e in evs] == list(range(len(evs)))  # one evaluation per epoch here
            history[(r["task"], r["method"], int(r["seed"]))] = [
                (100.0 * e["metrics"]["acc"], 100.0 * e["robustness"]["advglue"]["acc"]) for e in evs]
            # the entry's best is its best-scoring evaluation (the earliest of ties), with the same AdvGLUE score
            best = max(evs, key=lambda e: e["metrics"]["acc"])
            assert best["epoch"] == r["epoch"] and best["robustness"] == r["robustness"]
    text = (RESULTS / "robustness_report.md").read_text()
    checked = 0
    family: list[list[str]] = []
    ps: list[float | None] = []
    for task in sorted({t for t, _, _ in history}):
        start = text.index(f"#### {LABEL[task]}: dev and advglue by epoch")
        section = text[start:text.find("\n#", start + 1) if text.find("\n#", start + 1) > 0 else None]
        rows = _table(section, "| Method | Seeds | dev ep 1")
        seeds_of = {m: sorted(s for t, mm, s in history if (t, mm) == (task, m)) for m in (r[0] for r in rows)}
        assert {r[0] for r in rows} == {m for t, m, _ in history if t == task}
        for row in rows:
            seeds = seeds_of[row[0]]
            assert int(row[1]) == len(seeds)
            values = np.array([history[(task, row[0], s)] for s in seeds])  # (seeds, epochs, dev/adv)
            cells = row[2:]
            epochs = values.shape[1]
            for k in (0, 1):
                for e in range(epochs):
                    col = values[:, e, k]
                    want = [col.mean()] + ([col.std(ddof=1)] if len(col) > 1 else [])
                    assert np.allclose(_numbers(cells[k * epochs + e]), want, atol=0.05 + 1e-9), (task, row, e)
                    checked += 1
        for row in _table(section, "| On | A | B | Seeds"):
            a, b, k = row[1], row[2], 0 if row[0] == "dev" else 1
            seeds = sorted(set(seeds_of[a]) & set(seeds_of[b]))
            ps.append(_check_paired_row(row, [history[(task, a, s)][-1][k] for s in seeds],
                                        [history[(task, b, s)][-1][k] for s in seeds]))
            family.append(row)
            checked += 1
    # the last-epoch tests of every task are a family of their own
    _check_holm_and_verdicts(family, ps, 9, text, "over the {n} tests at the last epoch", counted=False)
    assert checked >= 40
