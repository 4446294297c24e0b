"""Hand-written run folders for report tests: the metrics.jsonl a finished training writes (dev records, then the
train record), in a campaign's ``<task>/<method>/s<seed>`` layout."""
from __future__ import annotations

import json
from pathlib import Path


def write_run(root: Path, task: str, name: str, seed: int, evals: list[tuple[float, float | None]]) -> Path:
    """One dev record per epoch with (dev acc, AdvGLUE acc; None: the run scored no robustness set), then the
    train record; the run's folder."""
    folder = root / task / name / f"s{seed}"
    folder.mkdir(parents=True)
    recs = []
    for i, (dev, adv) in enumerate(evals):
        rec = {"epoch": i, "step": i + 1, "task": task, "split": "dev", "split_name": "dev", "method": name,
               "seed": seed, "train_seconds": 10.0 * (i + 1), "metrics": {"acc": dev}}
        if adv is not None:
            rec["robustness"] = {"advglue": {"acc": adv}}
        recs.append(rec)
    recs.append({"epoch": len(evals) - 1, "step": len(evals), "task": task, "split": "train", "method": name,
                 "seed": seed, "train_seconds": 10.0 * len(evals), "steps": len(evals), "loss": 0.5, "reg_loss": 0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder
