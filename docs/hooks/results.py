"""MkDocs hook: the reproduction's write-up (experiments/rapt/RESULTS.md) and its result files are pages of the
site at their repository paths, so the docs link to them as ``experiments/rapt/RESULTS.md`` and RESULTS.md's own
links (``results/table2.md``, ``results/figure1.png``, ...) resolve as they do on the repository."""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
SHARED = ["experiments/rapt/RESULTS.md", "experiments/rapt/results"]


def on_files(files: Files, config) -> Files:
    for entry in SHARED:
        path = REPO / entry
        for f in sorted(path.rglob("*") if path.is_dir() else [path]):
            if f.is_file():
                files.append(File(str(f.relative_to(REPO)), str(REPO), config["site_dir"],
                                  config["use_directory_urls"]))
    return files
