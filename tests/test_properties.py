"""Property-based tests (hypothesis) of the invariants that every run's numbers rest on: which rows a training
epoch, a resumed epoch and an evaluation see, how a batch is padded, the divergences' algebra, and the
statistics the reports draw their verdicts from.

Each property is checked on many generated cases (task sizes, batch sizes, process counts, lengths, logits), not
on a few hand-picked ones; the examples are derandomized (see conftest), so a failure reproduces.
"""
from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from data_utils.batching import (GROUP_BATCHES, MultiTaskSampler, collate, eval_batches, seeded_subset,
                                 task_probabilities)
from data_utils.flat_rows import Features
from mt_dnn import losses

SAMPLINGS = ("proportional", "uniform", "temperature")

sizes_st = st.dictionaries(st.sampled_from(["rte", "mrpc", "cola", "sst"]), st.integers(1, 120),
                           min_size=1, max_size=3)


def _lengths(sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t: rng.integers(1, 40, n) for t, n in sizes.items()}


def _sampler(sizes, batch_size, seed, sampling, rank=0, world_size=1, lengths=None) -> MultiTaskSampler:
    return MultiTaskSampler(sizes, batch_size, seed, sampling=sampling, temperature=2.0, rank=rank,
                            world_size=world_size, lengths=lengths)


@given(sizes=sizes_st, batch_size=st.integers(1, 9), world_size=st.integers(1, 4), seed=st.integers(0, 2**31),
       sampling=st.sampled_from(SAMPLINGS), grouped=st.booleans(), epoch=st.integers(0, 3))
def test_an_epoch_plan_has_the_documented_steps_and_batches(sizes, batch_size, world_size, seed, sampling, grouped,
                                                            epoch):
    s = _sampler(sizes, batch_size, seed, sampling, world_size=world_size,
                 lengths=_lengths(sizes, seed) if grouped else None)
    plan = s.epoch_plan(epoch)
    global_batch = batch_size * world_size
    assert len(plan) == sum(-(-n // global_batch) for n in sizes.values()) == s.steps_per_epoch()
    for task, rows in plan:
        assert 1 <= len(rows) <= global_batch
        assert len(set(rows.tolist())) == len(rows) and rows.min() >= 0 and rows.max() < sizes[task]
    if sampling == "proportional":  # every row of every task exactly once, in full batches but the last one
        for task, n in sizes.items():
            batches = [rows for t, rows in plan if t == task]
            assert sorted(np.concatenate(batches).tolist()) == list(range(n))
            assert sum(len(b) < global_batch for b in batches) <= 1
    assert s.epoch_plan(epoch)[0][1].tolist() == plan[0][1].tolist()  # a function of (seed, epoch) alone


@given(sizes=sizes_st, batch_size=st.integers(1, 6), world_size=st.integers(1, 4), seed=st.integers(0, 2**31),
       sampling=st.sampled_from(SAMPLINGS))
def test_ranks_split_each_global_batch_of_one_task(sizes, batch_size, world_size, seed, sampling):
    """Step by step, all ranks train the same task on disjoint parts of the same global batch, none above the
    per-process batch size; a global batch smaller than the process count repeats one of its rows."""
    plan = _sampler(sizes, batch_size, seed, sampling, world_size=world_size).epoch_plan(0)
    per_rank = [list(_sampler(sizes, batch_size, seed, sampling, rank=r, world_size=world_size))
                for r in range(world_size)]
    for step, (task, rows) in enumerate(plan):
        got = [per_rank[r][step] for r in range(world_size)]
        assert all(t == task for t, _ in got)
        assert all(1 <= len(mine) <= batch_size for _, mine in got)
        if len(rows) >= world_size:
            together = [i for _, mine in got for i in mine]
            assert sorted(together) == sorted(rows.tolist())  # disjoint, and all of the batch
        else:
            assert all(set(mine) <= set(rows.tolist()) for _, mine in got)


@given(sizes=sizes_st, batch_size=st.integers(1, 8), seed=st.integers(0, 2**31),
       sampling=st.sampled_from(SAMPLINGS), stop=st.integers(0, 80))
def test_a_resumed_sampler_continues_exactly(sizes, batch_size, seed, sampling, stop):
    """Stopped after any number of steps (across epoch ends) and rebuilt from its state dict, the sampler yields
    the batches the uninterrupted one would have."""
    def stream(sampler, epochs):
        return [(t, rows) for _ in range(epochs) for t, rows in sampler]

    whole = stream(_sampler(sizes, batch_size, seed, sampling), 3)
    assume(stop < len(whole))
    first = _sampler(sizes, batch_size, seed, sampling)
    taken, it = [], iter(first)
    while len(taken) < stop:
        try:
            taken.append(next(it))
        except StopIteration:  # epoch end: the sampler moved on to the next epoch's state
            it = iter(first)
    resumed = _sampler(sizes, batch_size, seed, sampling)
    resumed.load_state_dict(first.state_dict())
    rest = []
    while len(taken) + len(rest) < len(whole):
        rest += list(resumed)
    assert taken + rest[: len(whole) - len(taken)] == whole


@given(n=st.integers(1, 400), batch_size=st.integers(1, 8), world_size=st.integers(1, 3),
       seed=st.integers(0, 2**31), sampling=st.sampled_from(SAMPLINGS))
def test_grouping_by_length_only_reorders_within_groups(n, batch_size, world_size, seed, sampling):
    """--group_by_length keeps the plan's task sequence and, per task, which rows form each group of
    GROUP_BATCHES batches; inside a group the rows run from longest to shortest."""
    sizes = {"rte": n}
    lengths = _lengths(sizes, seed)
    plain = _sampler(sizes, batch_size, seed, sampling, world_size=world_size)
    grouped = _sampler(sizes, batch_size, seed, sampling, world_size=world_size, lengths=lengths)
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    a, b = plain._task_batches(rng_a, n, "rte"), grouped._task_batches(rng_b, n, "rte")
    assert [len(x) for x in a] == [len(x) for x in b]
    for g in range(0, len(a), GROUP_BATCHES):
        rows_a, rows_b = np.concatenate(a[g: g + GROUP_BATCHES]), np.concatenate(b[g: g + GROUP_BATCHES])
        assert sorted(rows_a.tolist()) == sorted(rows_b.tolist())
        assert np.all(np.diff(lengths["rte"][rows_b]) <= 0)
    assert [t for t, _ in plain.epoch_plan(1)] == [t for t, _ in grouped.epoch_plan(1)]


def _features(lengths: list[int], seed: int, with_types: bool = True) -> Features:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(5, 100, k).tolist() for k in lengths]
    types = [rng.integers(0, 2, k).tolist() for k in lengths] if with_types else None
    return Features("rte", "dev", ids, types, [int(x) for x in rng.integers(0, 2, len(lengths))],
                    list(range(len(lengths))))


@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=120), batch_size=st.integers(1, 16),
       world_size=st.integers(1, 4), chunk_rows=st.integers(1, 50),
       max_tokens=st.one_of(st.none(), st.integers(1, 200)))
@example(lengths=[5, 5, 5, 5, 6], batch_size=8, world_size=1, chunk_rows=50, max_tokens=20)  # 4 x 5 fills it
def test_evaluation_batches_cover_each_row_once(lengths, batch_size, world_size, chunk_rows, max_tokens):
    """Over all ranks every row is evaluated exactly once, each rank its own rows (rank::world_size); a batch
    holds at most batch_size rows, sorted by length, and within max_tokens padded tokens unless it is one row;
    and no batch stops short of those limits inside a chunk."""
    f = _features(lengths, 0)
    seen = Counter()
    for rank in range(world_size):
        batches = list(eval_batches(f, batch_size, rank, world_size, max_tokens=max_tokens, chunk_rows=chunk_rows))
        for rows in batches:
            lens = [lengths[i] for i in rows]
            assert 1 <= len(rows) <= batch_size and all(i % world_size == rank for i in rows)
            assert lens == sorted(lens)
            if max_tokens is not None and len(rows) > 1:
                assert len(rows) * max(lens) <= max_tokens
            seen.update(rows)
        # and as full as allowed: a batch followed by one of the same chunk could not take that batch's first row
        chunk = [(rows[0] - rank) // (world_size * chunk_rows) for rows in batches]
        for k in range(len(batches) - 1):
            if chunk[k] == chunk[k + 1]:
                grown = len(batches[k]) + 1
                assert grown > batch_size or (max_tokens is not None
                                              and grown * lengths[batches[k + 1][0]] > max_tokens)
    assert seen == Counter(range(len(lengths)))


@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=40), seed=st.integers(0, 1000),
       pick=st.lists(st.integers(0, 10**6), min_size=1, max_size=12), with_types=st.booleans())
def test_a_collated_batch_unpads_to_its_rows(lengths, seed, pick, with_types):
    """Each row of a padded batch is the row's tokens, then pad ids under a zero mask, to the batch's longest."""
    f = _features(lengths, seed, with_types)
    rows = [p % len(lengths) for p in pick]
    batch = collate(f, rows, pad_id=0, regression=False)
    width = max(lengths[i] for i in rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(rows), width)
    assert ("token_type_ids" in batch) == with_types
    for k, i in enumerate(rows):
        n = lengths[i]
        assert batch["input_ids"][k, :n].tolist() == list(f.input_ids[i])
        assert batch["attention_mask"][k].tolist() == [1] * n + [0] * (width - n)
        assert batch["input_ids"][k, n:].tolist() == [0] * (width - n)
        if with_types:
            assert batch["token_type_ids"][k, :n].tolist() == list(f.token_type_ids[i])
    assert batch["labels"].tolist() == [f.labels[i] for i in rows]


@given(n=st.integers(0, 500), k=st.integers(0, 600), seed=st.integers(0, 2**31))
def test_a_seeded_subset_is_sorted_unique_and_reproducible(n, k, seed):
    rows = seeded_subset(n, k, seed)
    assert len(rows) == min(n, k) and rows == sorted(set(rows)) and all(0 <= r < n for r in rows)
    assert rows == seeded_subset(n, k, seed)


@given(sizes=sizes_st, temperature=st.floats(0.5, 10.0))
def test_task_probabilities_are_a_distribution(sizes, temperature):
    for sampling in SAMPLINGS:
        p = task_probabilities(sizes, sampling, temperature)
        assert set(p) == set(sizes) and sum(p.values()) == pytest.approx(1.0)
    prop = task_probabilities(sizes, "proportional", 1.0)
    assert task_probabilities(sizes, "temperature", 1.0) == pytest.approx(prop)
    # each pair of tasks in the ratio of their sizes to the power 1/T (so larger T: closer to uniform)
    flat = task_probabilities(sizes, "temperature", temperature)
    for a in sizes:
        for b in sizes:
            assert flat[a] / flat[b] == pytest.approx((sizes[a] / sizes[b]) ** (1.0 / temperature))
    assert task_probabilities(sizes, "uniform", temperature) == pytest.approx({t: 1 / len(sizes) for t in sizes})


logits_st = st.tuples(st.integers(1, 6), st.integers(2, 5), st.integers(0, 2**31), st.floats(0.1, 8.0))


def _logits(shape_seed) -> tuple[torch.Tensor, torch.Tensor]:
    rows, classes, seed, scale = shape_seed
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, classes, generator=g, dtype=torch.float64) * scale,
            torch.randn(rows, classes, generator=g, dtype=torch.float64) * scale)


def _kl_by_hand(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """KL(p || q) per row from the probabilities themselves, averaged over rows, in float64."""
    p, q = p_logits.softmax(-1).double(), q_logits.softmax(-1).double()
    return float((p * (p.log() - q.log())).sum(-1).mean())


@given(logits_st)
def test_the_divergences_match_their_formula_and_algebra(shape_seed):
    a, b = _logits(shape_seed)
    assert float(losses.kl(a, b)) == pytest.approx(_kl_by_hand(a, b), rel=1e-4, abs=1e-6)
    both = _kl_by_hand(a, b) + _kl_by_hand(b, a)
    assert float(losses.sym_kl(a, b)) == pytest.approx(both, rel=1e-4, abs=1e-6)
    assert float(losses.sym_kl_both(a, b)) == pytest.approx(both, rel=1e-4, abs=1e-6)
    assert float(losses.sym_kl(a, b)) == pytest.approx(float(losses.sym_kl(b, a)), rel=1e-6, abs=1e-7)
    assert float(losses.kl(a, b)) >= -1e-6 and float(losses.kl(a, a)) == pytest.approx(0.0, abs=1e-6)
    shift = torch.arange(a.shape[0], dtype=a.dtype)[:, None] * 3.0  # a per-row constant leaves softmax alone
    assert float(losses.sym_kl(a + shift, b - shift)) == pytest.approx(float(losses.sym_kl(a, b)), rel=1e-4,
                                                                       abs=1e-6)


@given(logits_st)
def test_smarts_inner_objective_vanishes_at_zero_perturbation_and_matches_its_formula(shape_seed):
    """MT-DNN's objective (a sum over rows of p_noisy (l(p_noisy) - l(p_clean)), x2) is zero when the
    perturbed output equals the clean one, and its value by hand from the stabilised log-odds, in fp32 as the
    project computes it (near p = 1 the log-odds cancel, so fp32 and fp64 differ in the fourth digit)."""
    a, b = _logits(shape_seed)
    assert float(losses.adversarial_objective("sym_kl", a, a)) == pytest.approx(0.0, abs=1e-6)
    p, q = b.float().softmax(-1), a.float().softmax(-1)
    eps = 1e-6

    def lo(x):
        return -torch.log(1.0 / (x + eps) - 1.0 + eps)

    want = float(2.0 * (p * (lo(p) - lo(q))).sum())
    assert float(losses.adversarial_objective("sym_kl", a, b)) == pytest.approx(want, rel=1e-4, abs=1e-5)


@given(n=st.integers(2, 30), sd=st.floats(0.01, 20.0), scale=st.floats(0.1, 10.0))
def test_the_detectable_difference_scales_with_sd_and_shrinks_with_seeds(n, sd, scale):
    """The power equation depends on delta / sd alone, so the smallest detectable difference is proportional to
    the sd of the differences; one seed more never makes it larger; and it is at least the sd's standard error
    times the two-sided critical value (a test at 80 % power needs more than a barely significant mean)."""
    from scipy.stats import t

    from experiments.rapt.stats import detectable_difference

    d = detectable_difference(n, sd)
    assert detectable_difference(n, sd * scale) == pytest.approx(d * scale, rel=1e-4)
    assert detectable_difference(n + 1, sd) <= d * (1 + 1e-6)
    assert d > t.ppf(0.975, n - 1) * sd / np.sqrt(n)


@given(xa=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=10), seed=st.integers(0, 1000))
def test_a_paired_comparison_is_the_t_test_by_hand(xa, seed):
    from scipy.stats import t

    from experiments.rapt.stats import TIE, paired

    xa = np.round(np.array(xa), 1)
    xb = np.round(xa + np.random.default_rng(seed).normal(0, 2, len(xa)), 1)
    got = paired("rte", "a", "b", list(range(1, len(xa) + 1)), xa, xb)
    diff = xa - xb
    assert got["mean_diff"] == pytest.approx(diff.mean()) and got["n"] == len(xa)
    assert got["a_wins"] == int(sum(d > TIE for d in diff)) and got["b_wins"] == int(sum(d < -TIE for d in diff))
    if len(xa) < 2:
        assert got["sd_diff"] is None and got["p_value"] is None
        return
    sd = float(np.sqrt(((diff - diff.mean()) ** 2).sum() / (len(diff) - 1)))
    assert got["sd_diff"] == pytest.approx(sd, abs=1e-9)
    if sd < 1e-9:
        assert got["p_value"] is None
    else:
        tstat = diff.mean() / (sd / np.sqrt(len(diff)))
        assert got["p_value"] == pytest.approx(2 * t.sf(abs(tstat), len(diff) - 1), rel=1e-6)


# ---- the GLUE readers: the whole-file parser and the streaming reader are two readings of one format ----------

_FIELD = st.text(alphabet=st.sampled_from(list("ab \"'\r\u2028\x85é") + ["\t"]), max_size=6)
_ENDING = st.sampled_from(["\n", "\r\n"])


@st.composite
def _tsv_bytes(draw) -> bytes:
    """An RTE-style file (header index, sentence1, sentence2, label): rows well-formed or not, with quotes, stray
    carriage returns and tabs in fields, empty lines in the middle and at the end, a byte-order mark or none, and
    a last line with or without its ending."""
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for i in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["good", "good", "good", "label", "empty", "fields"]))
        if kind == "empty":
            lines.append("")
            continue
        label = draw(st.sampled_from(["entailment", "not_entailment"])) if kind != "label" else draw(_FIELD)
        row = [f"id{i}", draw(_FIELD), draw(_FIELD), label]
        lines.append("\t".join(row[:-1] if kind == "fields" else row))
    endings = [draw(_ENDING) for _ in lines]
    if draw(st.booleans()):  # no ending after the last line
        endings[-1] = ""
    text = "".join(line + end for line, end in zip(lines, endings)) + draw(st.sampled_from(["", "\n", "\r\n\n",
                                                                                            "\r"]))
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + text.encode("utf-8")


def _read_both(tmp_path, raw: bytes, bad_rows: str):
    """(examples, skipped) or the DataError message, from parse_split on the bytes and iter_split on the file."""
    from data_utils.glue import DataError, iter_split
    from tests.whole_file_reader import parse_split
    from data_utils.task_def import load_task_defs

    task = load_task_defs()["rte"]
    split = task.splits["train"]
    path = tmp_path / "train.tsv"
    path.write_bytes(raw)
    out = []
    for read in ("bytes", "stream"):
        skipped: list = []
        try:
            if read == "bytes":
                got = parse_split(path, raw, task, split, bad_rows)
                out.append((got.examples, got.skipped))
            else:
                out.append((list(iter_split(path, task, split, bad_rows, skipped)), skipped))
        except DataError as exc:
            out.append(str(exc))
    return task, split, path, out


@given(raw=_tsv_bytes(), bad_rows=st.sampled_from(["error", "skip"]))
def test_the_glue_readers_agree_on_any_file(tmp_path_factory, raw, bad_rows):
    """parse_split (whole file) and iter_split (line by line) read the same rows, skip the same lines and refuse
    with the same one-line message; file_digest's streamed line count and hash equal data_line_count's and
    sha256's of the bytes, and every line counted is a row read or skipped."""
    import hashlib

    from data_utils.glue import file_digest
    from tests.whole_file_reader import data_line_count

    task, split, path, (by_bytes, by_stream) = _read_both(tmp_path_factory.mktemp("tsv"), raw, bad_rows)
    assert by_bytes == by_stream
    digest, lines = file_digest(path, task, split)
    assert digest == hashlib.sha256(raw).digest() and lines == data_line_count(raw, split)
    if not isinstance(by_bytes, str):
        examples, skipped = by_bytes
        assert len(examples) + len(skipped) == lines
        assert all("\n" not in ex.text_a + (ex.text_b or "") for ex in examples)


@given(rows=st.lists(st.tuples(st.text(alphabet=st.characters(blacklist_characters="\t\n\r",
                                                              blacklist_categories=("Cs",)), max_size=12),
                               st.text(alphabet=st.characters(blacklist_characters="\t\n\r",
                                                              blacklist_categories=("Cs",)), max_size=12),
                               st.booleans()), min_size=1, max_size=10),
       crlf=st.booleans())
def test_well_formed_rows_read_back_exactly(tmp_path_factory, rows, crlf):
    """Any text without tab or line break (quotes, unicode, leading spaces) comes back as written: no quoting,
    no stripping; labels become the task's ids and the index column the row's id."""
    end = "\r\n" if crlf else "\n"
    body = "".join(f"id{i}\t{a}\t{b}\t{'entailment' if y else 'not_entailment'}{end}"
                   for i, (a, b, y) in enumerate(rows))
    raw = f"index\tsentence1\tsentence2\tlabel{end}{body}".encode("utf-8")
    task, _, _, (by_bytes, by_stream) = _read_both(tmp_path_factory.mktemp("tsv"), raw, "error")
    assert by_bytes == by_stream
    examples, skipped = by_bytes
    assert not skipped
    assert [(ex.text_a, ex.text_b, ex.label, ex.index, ex.line) for ex in examples] == [
        (a, b, task.labels.index("entailment" if y else "not_entailment"), f"id{i}", i + 2)
        for i, (a, b, y) in enumerate(rows)]


# ---- metrics and submission values ---------------------------------------------------------------------------

@given(pairs=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=60))
def test_classification_metrics_are_their_confusion_matrix_formulas(pairs):
    """Accuracy, F1 of class 1 and Matthews correlation from the four counts by hand (0 where a formula has no
    denominator: no positive predicted or gold, or a constant row or column)."""
    from data_utils.metrics import compute_metrics

    pred, gold = [p for p, _ in pairs], [g for _, g in pairs]
    tp = sum(p == g == 1 for p, g in pairs)
    tn = sum(p == g == 0 for p, g in pairs)
    fp = sum(p == 1 and g == 0 for p, g in pairs)
    fn = sum(p == 0 and g == 1 for p, g in pairs)
    denom = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dev sample of one class is not worth a warning in every run's log
        got = compute_metrics(["acc", "f1", "mcc"], pred, gold)
    assert got["acc"] == pytest.approx((tp + tn) / len(pairs))
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert got["mcc"] == pytest.approx((tp * tn - fp * fn) / denom if denom else 0.0, abs=1e-12)


@given(pairs=st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.floats(0, 5, allow_nan=False)),
                      min_size=2, max_size=40))
@example(pairs=[(1.0, 2.0), (3.0, 2.0), (4.0, 2.0)])  # constant gold scores
def test_regression_metrics_are_the_correlations_by_hand(pairs):
    """Pearson from the centred sums, Spearman as Pearson of the average ranks; 0 where either side is constant."""
    from data_utils.metrics import compute_metrics

    pred, gold = np.array([p for p, _ in pairs]), np.array([g for _, g in pairs])

    def pearson(x, y):
        x, y = x - x.mean(), y - y.mean()
        d = np.sqrt((x * x).sum() * (y * y).sum())
        return float((x * y).sum() / d) if d > 1e-12 else 0.0

    def ranks(v):  # average ranks of ties, 1-based
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(1, len(v) + 1)
        return np.array([r[v == x].mean() for x in v])

    if np.ptp(pred) == 0 or np.ptp(gold) == 0:  # a constant side: undefined, 0 by rule, and no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert compute_metrics(["pearson", "spearman"], pred, gold) == {"pearson": 0.0, "spearman": 0.0}
        return
    assume(np.ptp(pred) > 1e-6 and np.ptp(gold) > 1e-6)  # near-constant: scipy's own float error
    got = compute_metrics(["pearson", "spearman"], pred, gold)
    assert got["pearson"] == pytest.approx(pearson(pred, gold), abs=1e-6)
    assert got["spearman"] == pytest.approx(pearson(ranks(pred), ranks(gold)), abs=1e-6)


@given(value=st.floats(-1e6, 1e6, allow_nan=False))
def test_an_sts_b_prediction_is_clipped_and_written_with_three_decimals(value):
    from data_utils.submission import format_prediction
    from data_utils.task_def import load_task_defs

    task = load_task_defs()["stsb"]
    low, high = task.score_range
    text = format_prediction(task, value)
    assert text == f"{min(max(value, low), high):.3f}".replace("-0.000", "0.000")
    assert low <= float(text) <= high and not text.startswith("-0")


@given(ps=st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), max_size=40), seed=st.integers(0, 1000))
def test_holms_adjusted_p_keeps_the_order_bounds_and_does_not_depend_on_the_listing(ps, seed):
    """Holm's adjusted p of each test lies between its own p and m times it (capped at 1, m the tests with a p);
    a smaller p never gets a larger adjusted one; listing the tests in another order changes nothing; a test
    without a p stays without one."""
    from experiments.rapt.stats import holm

    adjusted = holm(ps)
    m = sum(p is not None for p in ps)
    for p, a in zip(ps, adjusted):
        assert (a is None) == (p is None)
        if p is not None:
            assert p - 1e-12 <= a <= min(1.0, m * p) + 1e-12
    pairs = [(p, a) for p, a in zip(ps, adjusted) if p is not None]
    for p1, a1 in pairs:
        for p2, a2 in pairs:
            if p1 < p2:
                assert a1 <= a2 + 1e-12
    order = np.random.default_rng(seed).permutation(len(ps))
    shuffled = holm([ps[i] for i in order])
    assert all((shuffled[k] is None and adjusted[i] is None) or shuffled[k] == pytest.approx(adjusted[i])
               for k, i in enumerate(order))
