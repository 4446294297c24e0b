"""The peer's baseline row: plain transformers.Trainer written as a campaign run folder, with its AdvGLUE scores
from the Trainer's own eval_dataset dict."""
from __future__ import annotations

import json

from experiments.rapt.peer import main
from experiments.rapt.results import load_result


def test_peer_run_is_a_campaign_row_with_robustness_scores(tmp_path, tiny_model_dir, capsys):
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    adv = tmp_path / "adv"
    adv.mkdir()
    rows = [{"idx": i, "sentence1": "the cat sat", "sentence2": "a dog ran", "label": i % 2} for i in range(5)]
    (adv / "dev.json").write_text(json.dumps({"rte": rows}))
    root = tmp_path / "camp"
    assert main(["--task", "rte", "--seed", "2", "--root", str(root), "--glue_dir", str(glue), "--robustness_dir",
                 str(adv), "--model", str(tiny_model_dir), "--epochs", "2", "--batch_size", "8"]) == 0
    folder = root / "rte" / "standard_hf" / "s2-peer"
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in records if r["split"] == "dev"]
    assert [r["epoch"] for r in dev] == [0, 1] and records[-1]["split"] == "train"
    assert records[-1]["steps"] == 2 * 3  # 24 fixture rows, batch 8, 2 epochs
    for r in dev:  # 5 AdvGLUE rows: accuracy is a multiple of 1/5
        acc = r["robustness"]["advglue"]["acc"]
        assert abs(acc * 5 - round(acc * 5)) < 1e-9
    result = load_result(folder)
    assert result.finished and result.seed == 2 and result.name == "standard_hf" and len(result.evaluations) == 2

    # a second run in the same folder is refused, finished or cut off, unless --overwrite
    from mt_dnn.cli_utils import run_cli

    again = ["--task", "rte", "--seed", "2", "--root", str(root), "--glue_dir", str(glue), "--robustness_dir",
             str(adv), "--model", str(tiny_model_dir), "--epochs", "1", "--batch_size", "8"]
    capsys.readouterr()
    assert run_cli(main, again) == 2
    assert capsys.readouterr().err.strip() == f"error: {folder}: holds a finished run; --overwrite trains it again"
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:1]))  # cut off
    assert run_cli(main, again) == 2
    assert capsys.readouterr().err.strip() == (f"error: {folder}: holds an unfinished run (cut off before its "
                                               "end); --overwrite trains it again")
    assert main(again + ["--overwrite"]) == 0
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "dev"] == [0] and records[-1]["steps"] == 3
