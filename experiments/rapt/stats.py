"""Paired statistics of a campaign: per-seed differences between methods, paired t-tests, per-seed averages, the
Holm correction of a family of tests and the smallest differences they could detect."""
from __future__ import annotations

import math

import numpy as np

from experiments.rapt.paper import cell_keys
from experiments.rapt.results import RunResult


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def task_score(result: RunResult, task: str) -> float:
    """A run's task score (x100): the mean of the task's metrics at its best evaluation, as in the Average column."""
    best = result.best
    return float(np.mean([best.metrics[split][metric] * 100 for split, metric in cell_keys(task, best)]))


def seed_averages(runs: dict[str, dict[int, RunResult]], tasks: list[str], seeds: list[int]) -> list[float]:
    """Each seed's Average: the mean over ``tasks`` of that seed's task score (``runs``: task -> seed -> run)."""
    return [float(np.mean([task_score(runs[t][s], t) for t in tasks])) for s in seeds]


ALPHA = 0.05  # a paired test's level, after the correction for the number of tests in its family
POWER = 0.8  # the chance a test must have of finding a true difference for its size to count as detectable
TIE = 0.05  # x100 points: differences this small are ties (archived results keep one decimal of the x100 score)


def paired(task: str, a: str, b: str, seeds: list[int], xa: np.ndarray, xb: np.ndarray) -> dict:
    """Mean difference, wins (a difference within ``TIE`` is a tie), sd of the differences and the paired t-test
    p-value (>= 2 seeds, unequal diffs). ``xa``, ``xb``: (n_seeds,) scores x100."""
    from scipy.stats import ttest_rel

    diff = xa - xb
    p = sd = None
    if len(seeds) >= 2:
        sd = float(diff.std(ddof=1))
        if float(np.ptp(diff)) > 1e-12:  # equal differences: t is undefined
            p = float(ttest_rel(xa, xb).pvalue)
    return {"task": task, "a": a, "b": b, "seeds": seeds, "n": len(seeds), "mean_diff": float(diff.mean()),
            "sd_diff": sd, "a_wins": int((diff > TIE).sum()), "b_wins": int((diff < -TIE).sum()), "p_value": p}


def paired_comparisons(by: dict, names: list[str], tasks: list[str], best_of: dict[str, list[str]],
                       baselines: list[str] | None = None) -> list[dict]:
    """For each task and each pair (A after B in the row order: B is the baseline; with ``baselines``, only
    those rows serve as B) with common seeds: the mean
    difference of the best primary metric (x100), how many seeds A beats B, the sd of the per-seed differences and
    the paired t-test p-value (>= 2 seeds). Then, per pair, the same on the average (task ``"average"``): each
    seed's mean over all tasks of the task score (mean of the task's metrics, as the Average column), for seeds
    where both methods have every task (``"over"`` lists the tasks averaged). While a campaign is part-way, the
    tasks with the most common seeds may have more seeds than all tasks together: then a second average row covers
    only those tasks."""
    out, averages = [], []
    for i, a in enumerate(names):
        for b in names[:i]:
            if baselines is not None and b not in baselines:
                continue
            if a in best_of.get(b, ()) or b in best_of.get(a, ()):
                continue  # a best-of row is one of its members
            common = {t: set(by[a].get(t, {})) & set(by[b].get(t, {})) for t in tasks}
            for task in tasks:
                seeds = sorted(common[task])
                if seeds:
                    out.append(paired(task, a, b, seeds, *(
                        np.array([by[m][task][s].best.primary * 100 for s in seeds]) for m in (a, b))))
            most = max((len(c) for c in common.values()), default=0)
            top = [t for t in tasks if len(common[t]) == most]
            for over in ([tasks, top] if most >= 2 and top != tasks else [tasks]):
                seeds = sorted(set.intersection(*(common[t] for t in over))) if over else []
                if seeds and (over == tasks or len(seeds) >= 2):  # a partial average only where it can be tested
                    averages.append(paired("average", a, b, seeds, *(
                        np.array(seed_averages(by[m], over, seeds)) for m in (a, b))) | {"over": over})
    order = {t: i for i, t in enumerate(tasks)}
    return sorted(out, key=lambda c: order[c["task"]]) + averages


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of a family of tests (None, a test that could not be run, stays None
    and does not count). With the m defined p-values in increasing order p(1) <= ... <= p(m), the adjusted
    p(i) is max over j <= i of min(1, (m - j + 1) * p(j)); rejecting where it is below alpha keeps the chance of
    any false rejection in the family below alpha, whatever the dependence between the tests."""
    defined = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(defined)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for j, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


def adjust(tests: list[dict]) -> None:
    """Add to each test of one family (dicts with ``p_value``) ``p_holm`` (its Holm-adjusted p, None where
    ``p_value`` is) and ``family`` (how many of them have a p-value)."""
    adjusted = holm([c["p_value"] for c in tests])
    family = sum(p is not None for p in adjusted)
    for c, p in zip(tests, adjusted):
        c["p_holm"], c["family"] = p, family


def verdict(c: dict) -> str:
    """A paired test's verdict: 'beyond seed noise' where its Holm-adjusted p is below ``ALPHA``; 'lead (not
    after Holm)' where only its own p is; '-' where no t-test could be run."""
    if c["p_value"] is None:
        return "-"
    if c["p_holm"] < ALPHA:
        return "beyond seed noise"
    return "lead (not after Holm)" if c["p_value"] < ALPHA else "within seed noise"


# the columns every paired-test table shares, after its first (the task, or what the test is on)
PAIRED_COLUMNS = ("A", "B", "Seeds", "mean(A-B)", "sd", "A wins", "B wins", "p", "p (Holm)", "detectable",
                  "detectable (Holm)", "verdict")


def paired_cells(c: dict) -> str:
    """A paired test's :data:`PAIRED_COLUMNS` cells as a markdown row's tail ('| smart | standard | 3 | ... |');
    '-' where a value is undefined (fewer than 2 seeds, or differences all equal)."""
    p, holm = (f"{c[k]:.3f}" if c[k] is not None else "-" for k in ("p_value", "p_holm"))
    sd, det, det_holm = (f"{c[k]:.2f}" if c[k] is not None else "-"
                         for k in ("sd_diff", "detectable", "detectable_holm"))
    return (f"| {c['a']} | {c['b']} | {c['n']} | {c['mean_diff']:+.2f} | {sd} | {c['a_wins']} | {c['b_wins']} | "
            f"{p} | {holm} | {det} | {det_holm} | {verdict(c)} |")


def paired_header(first: str) -> list[str]:
    """The header and rule lines of a paired-test table whose first column is ``first``."""
    return [f"| {first} | " + " | ".join(PAIRED_COLUMNS) + " |", "|---" * (len(PAIRED_COLUMNS) + 1) + "|"]


def family_text(tests: list[dict], whose: str) -> str:
    """What 'p (Holm)' and the verdicts mean for the family ``tests`` (the tests of ``whose`` tables), then
    :func:`family_line`."""
    m = sum(c["p_value"] is not None for c in tests)
    return (f"p (Holm) = p adjusted by Holm's step-down method over the {m} tests of {whose} tables that have a p "
            f"(the smallest p times {m}, the next times {max(m - 1, 0)}, and so on, never below the one before and "
            f"at most 1), so that the chance of any false 'beyond seed noise' among them stays below {ALPHA}. "
            f"Verdict: 'beyond seed noise' when p (Holm) < {ALPHA}; 'lead (not after Holm)' when only p is below "
            f"{ALPHA}, a result to test with more seeds rather than a finding; else 'within seed noise'. "
            + family_line(tests))


def family_line(tests: list[dict]) -> str:
    """One sentence on a family's tests as a whole: how many are below ``ALPHA`` before and after the Holm
    correction, against how many would be by chance alone if no method differed."""
    ps = [c for c in tests if c["p_value"] is not None]
    below = sum(c["p_value"] < ALPHA for c in ps)
    after = sum(c["p_holm"] < ALPHA for c in ps)
    return (f"Of these {len(ps)} tests, {below} {'is' if below == 1 else 'are'} below {ALPHA}, where about "
            f"{len(ps) * ALPHA:.1f} would be by chance alone if no method differed; {after} "
            f"{'stays' if after == 1 else 'stay'} below it after the Holm correction.")


def detectable_difference(n: int, sd: float | None, power: float = POWER, alpha: float = ALPHA) -> float | None:
    """The smallest true mean paired difference that a two-sided paired t-test at ``alpha`` over ``n`` seeds
    detects with probability ``power``, when the per-seed differences have standard deviation ``sd``: the
    effect size delta solving P(|T| > t_crit) = power, T ~ noncentral t (df n-1, noncentrality delta*sqrt(n)/sd).
    None with fewer than 2 seeds, no sd, or an sd of 0."""
    if n < 2 or sd is None or not math.isfinite(sd) or sd == 0:
        return None  # an sd of 0 (equal differences): the t-test is undefined, and a zero spread sizes nothing
    return detectable_by_t(n - 1, sd / math.sqrt(n), power, alpha, scale=sd)


def detectable_by_t(df: int, se: float, power: float = POWER, alpha: float = ALPHA,
                     scale: float | None = None) -> float:
    """The smallest true difference delta that a two-sided t-test at ``alpha`` with ``df`` degrees of freedom
    finds with probability ``power`` when its statistic is (difference) / ``se``: delta solving
    P(|T| > t_crit) = power, T ~ noncentral t (df, noncentrality delta / se). ``scale`` (default ``se``) is the
    root search's first upper bound and its tolerance unit (x 1e-6)."""
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    crit = t.ppf(1 - alpha / 2, df)

    def power_at(delta: float) -> float:
        nc = delta / se
        # P(T > crit) + P(T < -crit); the lower tail as P(T' > crit) with T' ~ nct(-nc), since scipy's nct.cdf
        # gives NaN far in that tail (df 1, large nc) where nct.sf does not
        return float(nct.sf(crit, df, nc) + nct.sf(crit, df, -nc)) - power

    scale = se if scale is None else scale
    hi = scale
    while power_at(hi) < 0:
        hi *= 2
    return float(brentq(power_at, 0.0, hi, xtol=1e-6 * scale))


def size_text() -> str:
    """What the 'detectable' and 'detectable (Holm)' columns of :func:`size` mean, in one sentence."""
    return (f"detectable = the smallest true mean difference a paired t-test over these seeds would find with "
            f"{POWER:.0%} power at p < {ALPHA} given the observed sd of the differences (the size a lead needs); "
            f"detectable (Holm) = the same at p < {ALPHA}/m, m the family's tests (the level Holm's first step asks of "
            "the smallest p): the size the corrected verdict needs were it the family's only real difference, so a "
            "true effect up to about this size can hide within 'within seed noise'.")


def size(tests: list[dict]) -> None:
    """Add to each test of one family (after :func:`adjust`) ``detectable``, the smallest true mean difference
    its paired t-test finds with ``POWER`` at p < ``ALPHA`` given the observed sd of the differences (the size a
    lead needs), and ``detectable_holm``, the same at p < ``ALPHA`` / m, m the family's tests with a p: the level
    Holm's first step asks of the smallest p, so the size the corrected verdict needs were it the family's only
    real difference (with more real ones, later steps ask less). Both None where the test has no p (fewer than 2
    seeds, or differences all equal)."""
    for c in tests:
        defined = c["p_value"] is not None
        c["detectable"] = detectable_difference(c["n"], c["sd_diff"]) if defined else None
        c["detectable_holm"] = (detectable_difference(c["n"], c["sd_diff"], alpha=ALPHA / c["family"])
                                if defined else None)
