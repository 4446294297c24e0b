"""One declaration per flag: the parsers, --config files, grid flags, the regularizers' options and the Markdown
reference all come from it; every number has a valid range, checked before any work."""
from __future__ import annotations

import re

import pytest
import torch
import yaml

from data_utils.task_def import ConfigError
from mt_dnn import runtime
from mt_dnn.cli_utils import run_cli


def _usage_flags(help_text: str) -> set[str]:
    """The flags of the usage block at the top of --help (every optional argument is listed there)."""
    usage = help_text.split("\n\n", 1)[0]
    return set(re.findall(r"--[A-Za-z0-9_-]+", usage))


def test_reference_lists_exactly_the_flags_help_shows():
    from mt_dnn.train import build_parser, markdown_reference, train_flags

    shown = _usage_flags(build_parser().format_help())
    reference = markdown_reference()
    listed = {flag for row in reference.splitlines() if row.startswith("| `")
              for flag in re.findall(r"`(--[A-Za-z0-9_-]+)", row.split(" | ")[0])}
    assert listed == shown
    assert {f.option for f in train_flags()} | {"--config", "--no-rapt_share_lower_layers"} == shown
    assert "`--r3f_lambda` `LAMBDA`" in reference and "(default: 1.0; >= 0)" in reference


def test_hf_trainer_shows_the_same_flag_names_as_train():
    from experiments.hf_trainer import build_parser as hf_parser
    from mt_dnn.train import build_parser

    hf_help, train_help = hf_parser().format_help(), build_parser().format_help()
    assert "OPT__" not in hf_help
    options = {f for f in _usage_flags(train_help) if re.match(r"--(no-)?(rapt|smart|r3f)_", f)}
    assert options and options <= _usage_flags(hf_help)
    for shown in ("--r3f_lambda LAMBDA", "--rapt_eta ETA", "--eval_batch_size EVAL_BATCH_SIZE", "--threads THREADS"):
        assert shown in hf_help and shown in train_help


# ---- bad numbers: one line naming the flag and its range, before any work ----------------------------------------

BAD = [
    ("--eval_batch_size", "-3", "--eval_batch_size must be >= 1 (got -3)"),
    ("--eval_batch_size", "0", "--eval_batch_size must be >= 1 (got 0)"),
    ("--clip", "-1", "--clip must be > 0 (got -1.0)"),
    ("--clip", "0", "--clip must be > 0"),
    ("--rapt_alpha", "-1", "--rapt_alpha must be >= 0 (got -1.0)"),
    ("--rapt_eta", "-0.5", "--rapt_eta must be >= 0"),
    ("--rapt_max_layer", "-1", "--rapt_max_layer must be >= 0"),
    ("--weight_decay", "-1", "--weight_decay must be >= 0 (got -1.0)"),
    ("--r3f_eps", "-1", "--r3f_eps must be >= 0 (got -1.0)"),
    ("--r3f_lambda", "-2", "--r3f_lambda must be >= 0"),
    ("--smart_k", "0", "--smart_k must be >= 1"),
    ("--smart_epsilon", "0", "--smart_epsilon must be > 0"),
    ("--smart_radius", "-1", "--smart_radius must be >= 0"),
    ("--sampling_temperature", "1e-9", "--sampling_temperature must be >= 0.1 (got 1e-09)"),
    ("--warmup", "1", "--warmup must be >= 0 and < 1 (got 1.0)"),
    ("--warmup", "-0.1", "--warmup must be >= 0 and < 1"),
    ("--lr", "0", "--lr must be > 0"),
    ("--lr", "-1e-4", "--lr must be > 0"),
    ("--batch_size", "0", "--batch_size must be >= 1"),
    ("--grad_accumulation_steps", "0", "--grad_accumulation_steps must be >= 1"),
    ("--max_seq_len", "4", "--max_seq_len must be >= 8"),
    ("--max_train_samples", "0", "--max_train_samples must be >= 1"),
    ("--max_steps", "0", "--max_steps must be >= 1"),
    ("--epochs", "-1", "--epochs must be >= 0"),
    ("--seed", "-1", "--seed must be >= 0"),
    ("--seed", "4294967296", "--seed must be >= 0 and <= 4294967295 (got 4294967296)"),  # numpy's seed range
    ("--lr", "inf", "--lr must be a finite number (got inf)"),  # passes a lower bound: refused by itself
    ("--weight_decay", "inf", "--weight_decay must be a finite number (got inf)"),
    ("--rapt_alpha", "inf", "--rapt_alpha must be a finite number (got inf)"),
    ("--clip", "nan", "--clip must be a finite number (got nan)"),
    ("--log_every", "0", "--log_every must be >= 1"),
    ("--save_every_steps", "0", "--save_every_steps must be >= 1"),
    ("--max_bad_steps", "0", "--max_bad_steps must be >= 1"),
    ("--threads", "0", "--threads must be >= 1"),
]


def _method_of(flag: str) -> list[str]:
    m = re.match(r"--(rapt|smart|r3f)_", flag)
    return ["--method", m.group(1)] if m else []


def _one_line_error(capsys, main, argv: list[str]) -> str:
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("sampling", ["proportional", "uniform"])
def test_a_sampling_temperature_without_temperature_sampling_is_refused(tmp_path, capsys, sampling):
    """A temperature that nothing reads would still enter the run's recipe (and --resume would compare it)."""
    from mt_dnn.train import main

    argv = ["--tasks", "rte,mrpc", "--glue_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o"),
            "--task_sampling", sampling, "--sampling_temperature", "5"]
    assert _one_line_error(capsys, main, argv) == ("error: --sampling_temperature only applies with --task_sampling "
                                                   f"temperature (this run has --task_sampling {sampling})")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, message", [
    (["--sampling_temperature", "2"], "--sampling_temperature only applies with --task_sampling temperature"),
    (["--lora_alpha", "16"], "--lora_alpha only applies with --lora_rank >= 1"),
    (["--lora_dropout", "0.1"], "--lora_dropout only applies with --lora_rank >= 1"),
])
def test_a_flag_for_another_setting_is_refused_even_at_its_default_value(tmp_path, capsys, extra, message):
    """2, 16 and 0.1 are these flags' defaults: given, they still say the user expects them to act."""
    from mt_dnn.config import TrainConfig
    from mt_dnn.train import main

    assert (TrainConfig.sampling_temperature, TrainConfig.lora_alpha, TrainConfig.lora_dropout) == (2.0, 16.0, 0.1)
    argv = ["--tasks", "rte", "--glue_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o"), *extra]
    assert message in _one_line_error(capsys, main, argv)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,value,message", BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
def test_train_refuses_a_number_out_of_range(tmp_path, capsys, flag, value, message):
    from mt_dnn.train import main

    argv = ["--tasks", "rte", "--glue_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o"),
            *_method_of(flag), f"{flag}={value}"]
    assert message in _one_line_error(capsys, main, argv)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--eval_batch_size", "-3", "--eval_batch_size must be >= 1 (got -3)"),
    ("--eval_batch_size", "0", "--eval_batch_size must be >= 1 (got 0)"),
    ("--max_seq_len", "2", "--max_seq_len must be >= 8 (got 2)"),
    ("--threads", "0", "--threads must be >= 1"),
])
def test_predict_refuses_a_number_out_of_range(tmp_path, capsys, flag, value, message):
    from mt_dnn.predict import main

    rows = tmp_path / "in.tsv"
    rows.write_text("sentence1\tsentence2\na\tb\n")
    out = tmp_path / "out.jsonl"
    argv = ["--checkpoint", str(tmp_path / "no_run"), "--task", "rte", "--input", str(rows), "--output", str(out),
            flag, value]
    assert message in _one_line_error(capsys, main, argv)
    assert not out.exists()


def test_hf_trainer_refuses_a_number_out_of_range(tmp_path, capsys):
    from experiments.hf_trainer import main

    argv = ["--output_dir", str(tmp_path / "o"), "--method", "r3f", "--r3f_eps", "-1"]
    assert "--r3f_eps must be >= 0 (got -1.0)" in _one_line_error(capsys, main, argv)


def test_regularizer_options_are_checked_against_their_declarations(tmp_path, monkeypatch):
    from mt_dnn.hf import RegularizedTrainer
    from mt_dnn.perturbation import build_regularizer

    monkeypatch.chdir(tmp_path)  # a RegularizedTrainer without args would make ./tmp_trainer if it got that far
    with pytest.raises(ConfigError, match=r"--rapt_eta must be >= 0 \(got -1.0\)"):
        build_regularizer("rapt", {"eta": -1})
    with pytest.raises(ConfigError, match=r"--rapt_max_layer must be an integer \(got 1.5\)"):
        build_regularizer("rapt", {"max_layer": 1.5})
    with pytest.raises(ConfigError, match="--r3f_lambda must be >= 0"):
        RegularizedTrainer(method="r3f", method_options={"lambda": -1.0})
    # an option by its flag name or by its field name; an int where a number is declared is that number
    assert build_regularizer("r3f", {"lambda": 2}).options.lambda_ == 2.0
    assert build_regularizer("r3f", {"lambda_": 3.0}).alpha == 3.0


# ---- --config files: a value of the wrong type names the file and the key -----------------------------------------

@pytest.mark.parametrize("text,message", [
    ("lr: 1e-4\n", "lr must be a number (got '1e-4'; YAML reads 1e-4 as text"),
    ("batch_size: 16.0\n", "batch_size must be an integer (got 16.0)"),
    ("seed: 1.5\n", "seed must be an integer (got 1.5)"),
    ("tasks: [rte]\n", "tasks must be a string (got ['rte'])"),
    ("no_eval: \"false\"\n", "no_eval must be true or false (got 'false')"),
    ("tf32: 0\n", "tf32 must be true or false (got 0)"),
    ("task_def: extra.yml\n", "task_def must be a list of strings (got 'extra.yml')"),
    ("method: rapt\nrapt_eta: [1.5, 2.5]\n", "rapt_eta must be a number (got [1.5, 2.5])"),
    ("clip: -1\n", "clip must be > 0 (got -1.0)"),
    ("lr: .inf\n", "lr must be a finite number (got inf)"),
    ("precision: fp64\n", "precision 'fp64'; choose one of fp32, bf16, fp16"),
    ("method: vat\n", "method 'vat'; choose one of standard"),
    ("learning_rate: 1.0e-4\n", "unknown key(s) learning_rate"),
])
def test_config_file_values_are_checked_like_flags(tmp_path, capsys, text, message):
    from mt_dnn.train import main

    path = tmp_path / "c.yml"
    path.write_text("tasks: rte\n" * ("tasks:" not in text) + text)
    line = _one_line_error(capsys, main, ["--config", str(path), "--glue_dir", str(tmp_path), "--output_dir",
                                          str(tmp_path / "o")])
    assert f"{path}: " in line and message in line


def test_config_file_values_and_typed_flags(tmp_path):
    from mt_dnn.train import build_parser, config_from_args, settings_from_args

    path = tmp_path / "c.yml"
    path.write_text("tasks: mrpc\nmethod: r3f\nr3f_lambda: 2\ntf32: false\nno_eval: true\nthreads: 1\n"
                    "task_def: [a.yml]\nlr: 1.0e-4\n")
    parse = build_parser().parse_args
    cfg = config_from_args(parse(["--config", str(path), "--lr=3e-5", "--task_def", "b.yml"]))
    assert (cfg.tasks, cfg.method, cfg.tf32, cfg.no_eval, cfg.lr) == ("mrpc", "r3f", False, True, 3e-5)
    assert cfg.method_options == {"lambda_": 2.0} and cfg.task_def == ["b.yml"]
    assert settings_from_args(parse(["--config", str(path)]))["threads"] == 1
    assert not hasattr(cfg, "threads")  # a setting of the process, not of the run (config.json, --resume)
    with pytest.raises(ConfigError, match="--r3f_lambda is an option of --method r3f, but --method is standard"):
        config_from_args(parse(["--config", str(path), "--method", "standard", "--tasks", "rte"]))
    cfg = config_from_args(parse(["--tasks", "rte"]))  # nothing typed, no file: the declared defaults
    assert (cfg.batch_size, cfg.tf32, cfg.method_options, cfg.output_dir) == (32, True, {}, "runs/rte-standard-s1")


# ---- grid flags ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where,flags,message", [
    ("flags", {"clip": -1}, "flags: clip must be > 0 (got -1.0)"),
    ("flags", {"batch_size": 16.5}, "flags: batch_size must be an integer (got 16.5)"),
    ("flags", {"no_eval": "false"}, "flags: no_eval must be true or false (got 'false')"),
    ("flags", {"lr": "1e-4"}, "flags: lr must be a number (got '1e-4'"),
    ("flags", {"learning_rate": 1.0e-4}, "flags: unknown key(s) learning_rate"),
    ("methods", {"method": "rapt", "rapt_alpha": -1}, "methods.m: rapt_alpha must be >= 0 (got -1.0)"),
    ("methods", {"method": "smart", "smart_norm": "l3"}, "methods.m: smart_norm 'l3'; choose one of inf, l2, l1"),
    ("task_flags", {"sampling_temperature": 1e-9}, "task_flags.rte: sampling_temperature must be >= 0.1"),
])
def test_grid_flag_values_are_checked_like_flags(tmp_path, where, flags, message):
    from experiments.rapt.grid import load_grid

    grid = {"tasks": ["rte"], "seeds": [1], "methods": {"m": {"method": "standard"}}}
    if where == "methods":
        grid["methods"]["m"] = flags
    elif where == "task_flags":
        grid["task_flags"] = {"rte": flags}
    else:
        grid["flags"] = flags
    path = tmp_path / "grid.yml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


# ---- --threads -------------------------------------------------------------------------------------------------

def test_default_threads_share_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert runtime.default_threads() == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this machine share the cores
    assert runtime.default_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert runtime.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own choice wins
    assert runtime.default_threads() == 3
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(2) == 2 and torch.get_num_threads() == 2
        assert runtime.set_threads(None) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_predict_help_shows_each_default_once_and_none_for_flags_without_one():
    """--help appends a flag's default only where it has one and its text does not already say it, as the
    Markdown reference does: no '(default: None)', no default named twice."""
    import argparse

    from mt_dnn.flags import markdown
    from mt_dnn.predict import build_parser

    parser = build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert "(default: None)" not in text and text.count("default") <= 1, (action.dest, text)
    assert parser._get_formatter()._expand_help(next(a for a in parser._actions if a.dest == "eval_batch_size")) \
        .endswith("(default: 128)")
    assert "(default: 128)" in markdown(parser) and "(default: None)" not in markdown(parser)
    assert "(default: None)" not in parser.format_help().replace("\n", " ")
