"""Packaging metadata: the licence, the citation file, and setup.py's console scripts and dependencies."""
from __future__ import annotations

import re

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
