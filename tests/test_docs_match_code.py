"""What the docs state about the code, checked against it: the flag reference (docs/reference/cli.md, rendered by
docs/hooks/flags.py through mt_dnn.flags.markdown) lists every flag of every command with the parser's defaults,
and the run-folder page names the settings --resume does not compare."""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

import pytest

from mt_dnn.flags import markdown

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["mt_dnn.train", "experiments.hf_trainer", "mt_dnn.predict", "data_utils.submission",
            "data_utils.download_glue", "experiments.rapt.campaign"]


def _hook():
    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        return importlib.import_module("flags")
    finally:
        sys.path.pop(0)


def _rows(text: str) -> dict[str, str]:
    """First flag of each table row -> its description."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\| `(--[\w-]+)`[^|]* \| (.*) \|$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_reference_page_renders_every_command():
    page = (REPO / "docs" / "reference" / "cli.md").read_text()
    assert re.findall(r"<!-- flags: ([\w.]+) -->", page) == COMMANDS


@pytest.mark.parametrize("module", COMMANDS)
def test_every_flag_of_a_command_is_in_its_table(module):
    parser = importlib.import_module(module).build_parser()
    rows = _rows(_hook().render(module))
    flags = [a.option_strings[0] for a in parser._actions
             if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert flags and sorted(rows) == sorted(flags)


def test_predict_table_shows_the_parsers_defaults():
    rows = _rows(_hook().render("mt_dnn.predict"))
    assert rows["--eval_batch_size"].endswith("(default: 128)")
    assert rows["--zip_name"].endswith("(default: submission.zip)")
    assert "(default: auto)" in rows["--input_format"]
    # a help text that says its default already is not given a second one
    assert rows["--cache_dir"] == "feature cache (default: none)"


def test_markdown_escapes_cells_and_adds_defaults_argparse_would_show():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/<task>", help="where | what")
    p.add_argument("--n", type=int, default=3, help="count")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--many", action="append", default=[], help="repeatable")
    p.add_argument("--given", default="x", help="already says (default: x)")
    grp = p.add_argument_group("more")
    grp.add_argument("--mode", choices=["a", "b"], default="a", help="pick")
    text = markdown(p)
    rows = _rows(text)
    assert rows["--out"] == "where &#124; what (default: runs/&lt;task>)"
    assert rows["--n"] == "count (default: 3)"
    assert rows["--flag"] == "a switch" and rows["--many"] == "repeatable"
    assert rows["--given"] == "already says (default: x)"
    assert rows["--mode"] == "pick (default: a)" and "| `--mode` `{a,b}` |" in text
    assert text.index("### more") > text.index("`--given`")


def test_run_folder_page_names_exactly_the_settings_resume_does_not_compare():
    """docs/run-folder.md lists the TrainConfig fields outside the recipe: the same set as the code's roles."""
    from mt_dnn.run_folder import NOT_RESULT

    page = (REPO / "docs" / "run-folder.md").read_text()
    sentence = re.search(r"The recipe is every `TrainConfig` field except (.*?):", page, flags=re.S).group(1)
    assert set(re.findall(r"`(\w+)`", sentence)) == set(NOT_RESULT)
