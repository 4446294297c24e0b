"""End-to-end runs of ``python -m mt_dnn.train`` on a tiny random BERT and fixture GLUE files."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mt_dnn import runtime
from mt_dnn.train import main
from tests.conftest import REPO


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(tmp_path, glue_dir, model_dir, *extra):
    out = tmp_path / "run"
    argv = ["--glue_dir", str(glue_dir), "--model", str(model_dir), "--output_dir", str(out),
            "--cache_dir", str(tmp_path / "cache"), "--batch_size", "8", "--lr", "1e-3", "--log_every", "1", *extra]
    assert main(argv) == 0
    return out


def test_single_task_run_writes_the_contract(tmp_path, glue_dir, tiny_model_dir):
    out = _train(tmp_path, glue_dir, tiny_model_dir, "--tasks", "rte", "--epochs", "2")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 1 and cfg["method"] == "standard" and cfg["resolved_pooling"] == "cls"
    # what the report's clocks are grouped by: "cpu" here, "cuda (<GPU name>)" on a GPU machine
    assert cfg["resolved_device"] == runtime.device_label(runtime.pick_device("auto"))
    recs = _records(out)
    dev = [r for r in recs if r["split"] == "dev"]
    assert [r["epoch"] for r in dev] == [0, 1]
    for r in dev:
        assert set(r) >= {"epoch", "step", "task", "split", "method", "seed", "train_seconds", "metrics"}
        assert set(r["metrics"]) == {"acc"}
    train = recs[-1]
    assert train["split"] == "train" and train["steps"] == 6 and train["reg_loss"] == 0.0 and train["loss"] > 0
    assert (out / "best" / "model.safetensors").is_file() and (out / "best" / "tasks.yml").is_file()
    assert "epoch 1" in (out / "train.log").read_text()


def test_multi_task_run_evaluates_every_task(tmp_path, glue_dir, tiny_model_dir):
    out = _train(tmp_path, glue_dir, tiny_model_dir, "--tasks", "rte,mrpc,stsb,cola", "--max_steps", "5",
                 "--method", "rapt", "--rapt_max_layer", "2")
    recs = _records(out)
    dev = {r["task"]: r["metrics"] for r in recs if r["split"] == "dev"}
    assert set(dev) == {"rte", "mrpc", "stsb", "cola"}
    assert set(dev["mrpc"]) == {"acc", "f1"} and set(dev["stsb"]) == {"pearson", "spearman"}
    assert set(dev["cola"]) == {"mcc", "acc"}
    assert recs[-1]["split"] == "train" and recs[-1]["steps"] == 5 and recs[-1]["reg_loss"] > 0


@pytest.mark.parametrize("method,flags", [("smart", []), ("r3f", []), ("rapt", ["--rapt_share_lower_layers", "--rapt_max_layer", "2"])])
def test_methods_report_positive_reg_loss(tmp_path, glue_dir, tiny_model_dir, method, flags, capsys):
    out = _train(tmp_path, glue_dir, tiny_model_dir, "--tasks", "mrpc", "--max_steps", "3", "--method", method,
                 "--no_eval", *flags)
    rec = _records(out)[-1]
    assert rec["split"] == "train" and rec["reg_loss"] > 0
    assert (out / "best" / "model.safetensors").is_file()
    assert capsys.readouterr().out.splitlines()[-1] == f"no evaluation (--no_eval); final model in {out / 'best'}"


def test_learns_the_fixture_task(tmp_path, tiny_model_dir):
    """The cue-word SST fixture is learnable: a few epochs of a tiny model beat chance clearly."""
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "g", tasks=("sst",), n_train=160, n_dev=40)
    out = _train(tmp_path, glue, tiny_model_dir, "--tasks", "sst", "--epochs", "8", "--lr", "2e-3")
    best = max(r["metrics"]["acc"] for r in _records(out) if r["split"] == "dev")
    assert best >= 0.75


def test_init_checkpoint_loads_encoder_and_heads(tmp_path, glue_dir, tiny_model_dir):
    first = _train(tmp_path, glue_dir, tiny_model_dir, "--tasks", "rte,stsb", "--max_steps", "2")
    second = tmp_path / "second"
    assert main(["--glue_dir", str(glue_dir), "--init_checkpoint", str(first), "--output_dir", str(second),
                 "--cache_dir", str(tmp_path / "cache"), "--tasks", "rte,stsb", "--max_steps", "1",
                 "--lr", "1e-12"]) == 0
    import torch
    from safetensors.torch import load_file

    a, b = load_file(str(first / "best" / "model.safetensors")), load_file(str(second / "best" / "model.safetensors"))
    for head in ("rte", "stsb"):  # a classification and a regression head
        assert torch.allclose(a[f"heads.{head}.out.weight"], b[f"heads.{head}.out.weight"], atol=1e-6)


def test_init_checkpoint_matches_head_rows_to_labels_by_name(tmp_path, glue_dir, tiny_model_dir):
    """A run whose task definition lists RTE's labels in the other order: the new run's head gets the rows
    swapped, so each output still means the same label (copied as is, every prediction would flip)."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from data_utils.task_def import load_task_defs

    rte = load_task_defs()["rte"].to_dict()
    rte["labels"] = list(reversed(rte["labels"]))
    (tmp_path / "swapped.yml").write_text(yaml.safe_dump({"rte": rte}))
    first = _train(tmp_path, glue_dir, tiny_model_dir, "--tasks", "rte", "--max_steps", "2", "--task_def",
                   str(tmp_path / "swapped.yml"))
    second = tmp_path / "second"
    assert main(["--glue_dir", str(glue_dir), "--init_checkpoint", str(first), "--output_dir", str(second),
                 "--cache_dir", str(tmp_path / "cache"), "--tasks", "rte", "--max_steps", "1", "--lr", "1e-12"]) == 0
    a, b = load_file(str(first / "best" / "model.safetensors")), load_file(str(second / "best" / "model.safetensors"))
    for k in ("heads.rte.out.weight", "heads.rte.out.bias"):
        assert torch.allclose(b[k], a[k].flip(0), atol=1e-6) and not torch.allclose(b[k], a[k], atol=1e-3)
    assert "its label rows reordered to ['entailment', 'not_entailment']" in (second / "train.log").read_text()


def test_a_head_that_predicts_something_else_starts_fresh_with_a_warning(caplog):
    """Same task name, other labels (or type): the old head's rows mean other things, so it is not copied."""
    import dataclasses
    import logging

    import torch

    from mt_dnn.trainer import _copy_head
    from tests.conftest import tiny_model

    old, new = tiny_model(("rte", "stsb"), seed=0), tiny_model(("rte", "stsb"), seed=1)
    new.task_defs["rte"] = dataclasses.replace(new.task_defs["rte"], labels=("yes", "no"))
    new.task_defs["stsb"] = dataclasses.replace(new.task_defs["stsb"], type="classification", labels=("a",))
    fresh = {n: h.out.weight.detach().clone() for n, h in new.heads.items()}
    with caplog.at_level(logging.WARNING, logger="mt_dnn.trainer"):
        for name in ("rte", "stsb"):
            _copy_head(name, old, new, "OLD")
    assert all(torch.equal(new.heads[n].out.weight, fresh[n]) for n in fresh)
    assert [r.getMessage() for r in caplog.records] == [
        "head rte: not initialised from OLD, whose rte head predicts classification ['entailment', "
        "'not_entailment'] (here: classification ['yes', 'no']); it starts fresh",
        "head stsb: not initialised from OLD, whose stsb head predicts regression [] (here: classification "
        "['a']); it starts fresh"]


def test_an_encoder_saved_in_bf16_trains_and_saves_in_fp32(tmp_path, glue_dir, tiny_model_dir):
    """transformers loads a folder in the dtype its config names: the encoder is loaded in fp32 anyway (autocast
    gives the low-precision math), so fp32 training runs and the saved weights are fp32."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    half = tmp_path / "bf16"
    shutil.copytree(tiny_model_dir, half)
    AutoModel.from_pretrained(tiny_model_dir).to(torch.bfloat16).save_pretrained(half)
    assert next(AutoModel.from_pretrained(half).parameters()).dtype == torch.bfloat16
    out = _train(tmp_path, glue_dir, half, "--tasks", "rte", "--max_steps", "2")
    assert {t.dtype for t in load_file(str(out / "best" / "model.safetensors")).values()} == {torch.float32}


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "mt_dnn.train", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_lists_methods_and_options():
    r = _cli("--help")
    assert r.returncode == 0
    for text in ("standard", "smart", "rapt", "r3f", "--rapt_eta", "--smart_step_size", "--r3f_lambda",
                 "--rapt_share_lower_layers", "--task_sampling"):
        assert text in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--tasks", "nope"], "unknown task(s) nope; valid tasks:"),
    (["--tasks", "rte", "--method", "rapt", "--smart_k", "2"], "--smart_k is an option of --method smart"),
    (["--tasks", "rte", "--precision", "fp32", "--batch_size", "0"], "--batch_size must be >= 1"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, message):
    r = _cli("--glue_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert message in r.stderr.strip().splitlines()[-1]


def test_bad_data_is_a_one_line_error(tmp_path, glue_dir, tiny_model_dir):
    path = glue_dir / "RTE" / "dev.tsv"  # train.tsv is fine and read first: its cache must not be written either
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    path.write_text("\n".join(lines) + "\n")
    r = _cli("--glue_dir", str(glue_dir), "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "o"),
             "--cache_dir", str(tmp_path / "c"), "--tasks", "rte")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert f"{path}:4: unknown label 'maybe'" in last
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    assert not (tmp_path / "o").exists()


def test_config_file_gives_defaults_and_flags_win(tmp_path):
    from mt_dnn.train import build_parser, config_from_args

    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text("tasks: mrpc\nmethod: rapt\nrapt_eta: 1.5\nlr: 0.0001\nepochs: 5\n")
    argv = ["--config", str(cfg_file), "--epochs", "2", "--glue_dir", "g"]
    parser = build_parser()
    cfg = config_from_args(parser.parse_args(argv))
    assert (cfg.tasks, cfg.method, cfg.lr, cfg.epochs) == ("mrpc", "rapt", 1e-4, 2)
    assert cfg.method_options == {"eta": 1.5}
    bad = tmp_path / "bad.yml"
    bad.write_text("learning_rate: 1\n")
    argv = ["--config", str(bad)]
    with pytest.raises(Exception, match="unknown key"):
        config_from_args(parser.parse_args(argv))


def test_max_eval_samples_scores_the_first_rows_of_dev_and_of_each_robustness_set(tmp_path, glue_dir, tiny_model_dir,
                                                                                  monkeypatch):
    import numpy as np

    from data_utils.task_def import load_task_defs

    # a model that always predicts class 0: each slice's accuracy is the share of that label in its first rows
    monkeypatch.setattr("mt_dnn.trainer.predict", lambda model, feats, *a, **k: np.zeros(len(feats), dtype=np.int64))
    first_label = load_task_defs()["rte"].labels[0]
    gold = [line.split("\t")[-1] for line in (glue_dir / "RTE" / "dev.tsv").read_text().splitlines()[1:]]
    k = 3
    sliced, full = sum(g == first_label for g in gold[:k]) / k, sum(g == first_label for g in gold) / len(gold)
    assert sliced != full  # the fixture tells a slice from the whole split
    adv = tmp_path / "adv"
    adv.mkdir()
    rows = [{"idx": i, "sentence1": "the cat sat", "sentence2": "a dog ran", "label": lab}
            for i, lab in enumerate([0, 0, 0, 1, 1, 1])]  # the first 3 share one label: 1.0 or 0.0, never 0.5
    (adv / "dev.json").write_text(json.dumps({"rte": rows}))
    out = _train(tmp_path, glue_dir, tiny_model_dir, "--tasks", "rte", "--max_steps", "1", "--max_eval_samples",
                 str(k), "--robustness_dir", str(adv))
    dev = [r for r in _records(out) if r["split"] == "dev"]
    assert len(dev) == 1 and dev[0]["rows"] == k
    assert dev[0]["metrics"]["acc"] == pytest.approx(sliced)
    assert dev[0]["robustness"]["advglue"]["acc"] in (0.0, 1.0)
    assert json.loads((out / "config.json").read_text())["recipe"]["max_eval_samples"] == k


def test_init_checkpoint_names_its_encoder_and_refuses_a_model_beside_it(tmp_path, glue_dir, tiny_model_dir, capsys):
    from mt_dnn.cli_utils import run_cli

    first = tmp_path / "first"
    base = ["--glue_dir", str(glue_dir), "--tasks", "rte", "--max_steps", "1", "--no_eval", "--batch_size", "4"]
    assert main([*base, "--model", str(tiny_model_dir), "--output_dir", str(first)]) == 0
    second = tmp_path / "second"
    assert main([*base, "--init_checkpoint", str(first), "--output_dir", str(second)]) == 0
    config = json.loads((second / "config.json").read_text())
    assert config["resolved_model"] == str(first / "best" / "encoder")  # what was trained, not the packaged default
    assert config["recipe"]["model_files"] is not None
    assert run_cli(main, [*base, "--init_checkpoint", str(first), "--model", str(tiny_model_dir), "--output_dir",
                          str(tmp_path / "third")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --model and --init_checkpoint both name the encoder: --init_checkpoint trains the encoder of that "
        "run; give one of them")
    assert not (tmp_path / "third").exists()
