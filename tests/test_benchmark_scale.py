"""benchmarks.scale builds MNLI/QQP-layout files that the GLUE readers accept, with the row counts asked for."""
from __future__ import annotations

import pytest

import benchmarks.scale as scale
from data_utils.glue import read_split
from data_utils.task_def import load_task_defs
from tests.glue_fixtures import write_glue


def test_built_files_have_the_official_layout_and_the_row_counts(tmp_path, monkeypatch):
    glue = write_glue(tmp_path / "src")
    rows = {"train": 50, "dev_matched": 7, "dev_mismatched": 8, "test_matched": 9, "test_mismatched": 10}
    monkeypatch.setattr(scale, "MNLI_ROWS", rows)
    monkeypatch.setattr(scale, "QQP_TEST_ROWS", 30)
    report = scale.build_data(tmp_path / "work", glue, [5, 12])
    tasks = load_task_defs()
    mnli = tasks["mnli"]
    for split, n in rows.items():
        examples = read_split(tmp_path / "work" / "glue", mnli, mnli.splits[split])
        assert len(examples) == n and all(e.text_a and e.text_b for e in examples)
        if not split.startswith("test"):
            assert {e.label for e in examples} <= {0, 1, 2}
    assert len(read_split(tmp_path / "work" / "glue_pred", mnli, mnli.splits["test_matched"])) == 9
    qqp = tasks["qqp"]
    full = read_split(tmp_path / "work" / "glue_qqp", qqp, qqp.splits["test"])
    assert [e.index for e in full] == [str(i) for i in range(30)]
    assert (tmp_path / "work" / "qqp" / "test_5.tsv").read_text().count("\n") == 6
    assert report["sentences_in_pool"] > 50


@pytest.mark.parametrize("inside", ["scale_work", "."])
def test_work_folder_inside_the_repository_is_refused(inside, monkeypatch, capsys):
    built = []
    monkeypatch.setattr(scale, "build_data", lambda *a, **k: built.append(a) or {})
    with pytest.raises(SystemExit) as exit_info:
        scale.main(["--work", str(scale.REPO / inside), "--steps", "none"])
    assert exit_info.value.code == 2  # argparse's usage error
    assert "--work must be outside the repository" in capsys.readouterr().err
    assert built == [] and not (scale.REPO / "scale_work").exists()


def test_predict_speed_runs_both_paths_and_reports_rows_per_second(tmp_path, monkeypatch, tiny_model_dir):
    import json

    import benchmarks.predict_speed as ps

    glue = write_glue(tmp_path / "src", n_test=30)
    monkeypatch.setattr(ps, "QQP_TEST_ROWS", 50)
    out = tmp_path / "report.json"
    assert ps.main(["--glue_dir", str(glue), "--model", str(tiny_model_dir), "--rows", "20", "--budget_s", "0.001",
                    "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["data"]["task"] in ("rte", "mrpc", "sst", "stsb", "cola", "wnli")
    summary = report["summary"]
    assert summary["submission"]["now"]["rows"] == 20 and summary["own_text"]["now"]["rows"] == 20
    assert 0 < summary["own_text_full"]["now"]["rows"] <= 50  # stopped by the budget, or done
    assert all(by["now"]["rows_per_s"] > 0 and by["now"]["peak_rss_mb"] > 0 for by in summary.values())
    assert len((tmp_path / "work" / "out.jsonl").read_text().splitlines()) == 20
