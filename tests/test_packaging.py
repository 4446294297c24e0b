"""Packaging metadata: the licence, the citation file, and setup.py's console scripts and dependencies."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys

import yaml

import mt_dnn
from tests.conftest import REPO


def _setup_text() -> str:
    return (REPO / "setup.py").read_text()


def test_license_is_mit_and_citation_matches_the_package():
    lic = (REPO / "LICENSE").read_text()
    assert lic.startswith("MIT License") and "Copyright (c) 2026 the mt-dnn-rapt authors" in lic
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    version = re.search(r'version="([^"]+)"', _setup_text()).group(1)
    assert str(cff["version"]) == version == mt_dnn.__version__
    [paper] = cff["references"]
    assert paper["type"] == "conference-paper" and paper["title"].startswith("Multi-Layer Random Perturbation Training")
    assert [a["family-names"] for a in paper["authors"]] == ["Kanashiro Pereira", "Taya", "Kobayashi"]
    assert paper["doi"] == "10.18653/v1/2021.blackboxnlp-1.23" and paper["year"] == 2021


def _setup_kwargs() -> dict:
    """The literal keyword arguments of setup.py's setup() call, read without running it."""
    tree = ast.parse(_setup_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if not isinstance(kw.value, ast.Call)}


def test_every_console_script_points_at_a_callable():
    scripts = _setup_kwargs()["entry_points"]["console_scripts"]
    names = {}
    for line in scripts:
        name, target = (x.strip() for x in line.split("="))
        module, func = target.split(":")
        names[name] = getattr(importlib.import_module(module), func)
        assert callable(names[name]), line
    assert set(names) == {"mt-dnn-train", "mt-dnn-predict", "mt-dnn-check-submission", "mt-dnn-download-glue",
                          "mt-dnn-campaign"}


def test_dependencies_torch_floor_without_cap_and_plots_extra():
    kw = _setup_kwargs()
    torch_req = [r for r in kw["install_requires"] if r.startswith("torch")]
    assert torch_req == ["torch>=2.2"]
    assert kw["python_requires"] == ">=3.10"
    assert not any(r.startswith("matplotlib") for r in kw["install_requires"])
    assert "matplotlib" in kw["extras_require"]["plots"]
    assert {"pytest", "matplotlib"} <= set(kw["extras_require"]["dev"])


def test_training_and_prediction_do_not_import_matplotlib():
    """matplotlib is an extra: nothing on the train / predict / campaign path may import it at module level."""
    modules = ["mt_dnn", "mt_dnn.train", "mt_dnn.predict", "mt_dnn.api", "data_utils.submission",
               "data_utils.download_glue", "experiments.rapt.campaign", "experiments.rapt.figure1",
               "experiments.rapt.layers", "experiments.rapt.robustness_figure"]
    code = (f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_packaged_encoder_path_is_the_default_encoder_and_import_stays_light():
    code = ("import sys, pathlib, mt_dnn\npath = pathlib.Path(mt_dnn.packaged_encoder_path())\n"
            "print('torch' in sys.modules, (path / 'config.json').is_file(), (path / 'tokenizer.json').is_file()"
            " or (path / 'vocab.txt').is_file(), path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    torch_loaded, config, tokenizer, path = out.stdout.split()
    assert (torch_loaded, config, tokenizer) == ("False", "True", "True")
    from mt_dnn.model import resolve_model

    assert resolve_model(None) == path


def test_docs_extra_builds_the_site():
    extras = _setup_kwargs()["extras_require"]
    assert {"mkdocs", "mkdocs-material", "mkdocstrings-python"} <= {re.split(r"[<>=]", r)[0] for r in extras["docs"]}
    assert (REPO / "mkdocs.yml").is_file()
    ci = (REPO / ".ci" / "run").read_text()
    assert ".[dev,docs]" in ci or ".[docs]" in ci
    assert ci.index("python -m pytest -q") < ci.index("mkdocs build --strict")


def test_code_layout_page_names_every_module():
    """docs/reference/layout.md lists the code: every module of the packages, the experiments and the benchmarks
    is named there, and no name appears twice."""
    page = (REPO / "docs" / "reference" / "layout.md").read_text()
    names = re.findall(r"^\s+([\w.]+\.(?:py|sh))\b", page, flags=re.M)
    named = {n for line in re.findall(r"^\s+(\S+(?:, \S+)*)\s{2,}", page, flags=re.M)
             for n in line.split(", ")}
    code = [p for d in ("mt_dnn", "data_utils", "experiments/rapt", "benchmarks")
            for p in sorted((REPO / d).glob("*.py")) + sorted((REPO / d).glob("*.sh")) if p.name != "__init__.py"]
    missing = [str(p.relative_to(REPO)) for p in code if p.name not in named]
    assert not missing, f"not in docs/reference/layout.md: {missing}"
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)
