"""The code blocks the documentation marks as tested, run exactly as written (so the pages cannot rot)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

MARK = "<!-- the test suite runs this block as written"


def marked_blocks(page: Path) -> list[str]:
    """Every fenced python block that directly follows a line starting with MARK."""
    pattern = re.compile(re.escape(MARK) + r"[^\n]*\n```python\n(.*?)\n```", re.S)
    return pattern.findall(page.read_text(encoding="utf-8"))


def test_the_trainer_example_runs_as_written(tmp_path):
    [code] = marked_blocks(REPO / "docs" / "trainer.md")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join([str(REPO)] + sys.path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    model = tmp_path / "runs" / "hf-example" / "model"
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    printed = done.stdout.strip().splitlines()[-1]
    assert re.search(r"'label': '(entailment|not_entailment)'", printed), printed
