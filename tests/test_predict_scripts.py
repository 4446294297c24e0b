"""Prediction and submission end to end, and the shell scripts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from data_utils.submission import check_submission
from data_utils.task_def import load_task_defs
from mt_dnn.predict import main as predict_main
from mt_dnn.train import main as train_main
from tests.conftest import REPO, real_glue_dir

SCRIPTS = sorted((REPO / "run_scripts").glob("*.sh"))


def _train(tmp_path, glue, model_dir, tasks, name="run"):
    out = tmp_path / name
    assert train_main(["--tasks", tasks, "--glue_dir", str(glue), "--model", str(model_dir), "--output_dir", str(out),
                       "--cache_dir", str(tmp_path / "cache"), "--max_steps", "2", "--batch_size", "8"]) == 0
    return out


def _official_size_tests(glue, tasks):
    """Grow the fixture test files to the official row counts (cycling rows, renumbering the index)."""
    defs = load_task_defs()
    for name in tasks:
        split = defs[name].splits["test"]
        path = glue / defs[name].data_dir / split.file
        header, *rows = path.read_text().splitlines()
        out = [header] + [f"{i}\t" + rows[i % len(rows)].split("\t", 1)[1] for i in range(split.rows)]
        path.write_text("\n".join(out) + "\n")


def test_predict_two_runs_make_a_valid_submission(tmp_path, tiny_model_dir, capsys):
    from tests.glue_fixtures import write_glue

    glue_dir = write_glue(tmp_path / "glue", tasks=("rte", "stsb", "mrpc"))
    _official_size_tests(glue_dir, ("rte", "stsb", "mrpc"))
    a = _train(tmp_path, glue_dir, tiny_model_dir, "rte,stsb", "a")
    b = _train(tmp_path, glue_dir, tiny_model_dir, "mrpc", "b")
    sub = tmp_path / "sub"
    assert predict_main(["--checkpoint", str(a), "--checkpoint", str(b), "--glue_dir", str(glue_dir),
                         "--submission_dir", str(sub)]) == 0
    text = capsys.readouterr().out
    assert "BASELINE-FILLED" in text and "QQP.tsv" in text and "RTE.tsv" not in text.split("BASELINE-FILLED")[1]
    zpath = sub / "submission.zip"
    with zipfile.ZipFile(zpath) as z:
        assert len(z.namelist()) == 11 and all("/" not in n for n in z.namelist())
        rte = z.read("RTE.tsv").decode().splitlines()
        stsb = z.read("STS-B.tsv").decode().splitlines()
    assert rte[0] == "index\tprediction" and len(rte) == 1 + 3000
    assert all(line.split("\t")[1] in ("entailment", "not_entailment") for line in rte[1:])
    assert all(0.0 <= float(x.split("\t")[1]) <= 5.0 and len(x.split("\t")[1].split(".")[1]) == 3 for x in stsb[1:])
    scores = json.loads((sub / "dev_scores.json").read_text())
    assert set(scores) == {"rte/dev", "stsb/dev", "mrpc/dev"}
    assert check_submission(zpath, load_task_defs(), glue_dir) == []


@pytest.mark.skipif(real_glue_dir() is None, reason="real GLUE files not found (set GLUE_DIR)")
def test_predict_on_real_test_files(tmp_path, glue_dir, tiny_model_dir):
    run = _train(tmp_path, glue_dir, tiny_model_dir, "rte,wnli,cola")
    sub = tmp_path / "sub"
    real = real_glue_dir()
    assert predict_main(["--checkpoint", str(run), "--glue_dir", str(real), "--submission_dir", str(sub),
                         "--eval_batch_size", "256"]) == 0
    assert check_submission(sub / "submission.zip", load_task_defs(), real) == []
    lines = (sub / "RTE.tsv").read_text().splitlines()
    assert len(lines) == 3001 and [x.split("\t")[0] for x in lines[1:4]] == ["0", "1", "2"]


def test_predict_missing_checkpoint_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mt_dnn.predict", "--checkpoint", str(tmp_path / "nope"),
                        "--glue_dir", str(tmp_path), "--submission_dir", str(tmp_path / "s")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no trained model" in r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_parse_and_are_strict(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "set -euo pipefail" in text and "usage" in text


def test_expected_scripts_exist():
    names = {s.name for s in SCRIPTS}
    for t in ("cola", "sst", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"):
        assert f"run_{t}.sh" in names
    assert {"run_mtdnn.sh", "make_submission.sh"} <= names


def test_script_without_method_prints_usage():
    r = subprocess.run(["bash", str(REPO / "run_scripts" / "run_rte.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: run_rte.sh" in r.stderr


def test_run_script_and_submission_script_end_to_end(tmp_path, glue_dir, tiny_model_dir):
    env = {**os.environ, "GLUE_DIR": str(glue_dir), "MODEL": str(tiny_model_dir), "OUT": str(tmp_path / "runs"),
           "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(REPO / "run_scripts" / "run_rte.sh"), "rapt", "--max_steps", "2",
                        "--rapt_max_layer", "2", "--cache_dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "rte-rapt-s1"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == 1e-4 and cfg["epochs"] == 6 and cfg["method_options"]["eta"] == 2.0
    env["OUT"] = str(tmp_path / "sub")
    r = subprocess.run(["bash", str(REPO / "run_scripts" / "make_submission.sh"), str(run)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    # the fixture's test files are not the official size, so validation fails loudly, after writing the zip
    assert (tmp_path / "sub" / "submission.zip").is_file()
    assert r.returncode == 1 and "failed validation" in r.stderr


def test_mtdnn_script_trains_jointly_then_fine_tunes_each_task_from_it(tmp_path, glue_dir, tiny_model_dir):
    env = {**os.environ, "GLUE_DIR": str(glue_dir), "MODEL": str(tiny_model_dir), "OUT": str(tmp_path / "runs"),
           "PYTHON": sys.executable, "TASKS": "rte,mrpc"}
    r = subprocess.run(["bash", str(REPO / "run_scripts" / "run_mtdnn.sh"), "rapt", "--max_steps", "2",
                        "--rapt_max_layer", "2", "--cache_dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = tmp_path / "runs"
    joint = json.loads((runs / "mtdnn-rapt-s1" / "config.json").read_text())
    assert joint["tasks"] == "rte,mrpc" and joint["method"] == "rapt"
    assert (runs / "mtdnn-rapt-s1" / "best").is_dir()
    for task in ("rte", "mrpc"):
        ft = runs / f"mtdnn-rapt-s1-ft-{task}"
        cfg = json.loads((ft / "config.json").read_text())
        assert cfg["tasks"] == task and cfg["init_checkpoint"] == str(runs / "mtdnn-rapt-s1")
        log = (ft / "train.log").read_text()
        assert f"head {task} initialised from" in log and "(--init_checkpoint)" in log
        assert (ft / "best").is_dir()
    assert "stage 2: fine-tune mrpc" in r.stdout
