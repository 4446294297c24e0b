"""The peer's baseline row: plain transformers.Trainer written as a campaign run folder, with its AdvGLUE scores
from the Trainer's own eval_dataset dict."""
from __future__ import annotations

import json

import pytest

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
    assert records[-1]["steps_per_epoch"] == 3 and isinstance(records[-1]["steps_per_epoch"], int)
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


def _peer_args(root, glue, adv, model, *extra):
    return ["--task", "rte", "--seed", "3", "--root", str(root), "--glue_dir", str(glue), "--robustness_dir", str(adv),
            "--model", str(model), "--epochs", "2", "--batch_size", "8", "--save_every_steps", "2", *extra]


def test_a_cut_off_peer_run_resumes_to_the_numbers_of_an_uncut_one(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """A run cut off at step 5 (of 6; checkpoints at 2, 3 and 4) and run again resumes from checkpoint-4 and ends with
    the same evaluations, losses and step count as a run that was never cut; a changed recipe is refused, and the
    checkpoints are gone once the run has ended."""
    import transformers

    from mt_dnn.cli_utils import run_cli
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    adv = tmp_path / "adv"
    adv.mkdir()
    rows = [{"idx": i, "sentence1": "the cat sat", "sentence2": "a dog ran", "label": i % 2} for i in range(5)]
    (adv / "dev.json").write_text(json.dumps({"rte": rows}))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    real_step, step_losses = transformers.Trainer.training_step, []

    def recorded(self, *a, **k):
        loss = real_step(self, *a, **k)
        step_losses.append(float(loss))
        return loss

    monkeypatch.setattr(transformers.Trainer, "training_step", recorded)
    assert main(_peer_args(whole, glue, adv, tiny_model_dir)) == 0
    uncut_losses = list(step_losses)
    folder = cut / "rte" / "standard_hf" / "s3-peer"
    calls = []

    def cut_at_five(self, *a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("cut off")
        return real_step(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", cut_at_five)
    with pytest.raises(RuntimeError, match="cut off"):
        main(_peer_args(cut, glue, adv, tiny_model_dir))
    monkeypatch.setattr(transformers.Trainer, "training_step", real_step)
    # saved at step 2, at the end of epoch 1 (step 3, after its evaluation) and at step 4; the Trainer keeps two
    assert sorted(p.name for p in (folder / "trainer").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert not (folder / "metrics.jsonl").exists()

    # another learning rate is another run: refused, with what changed
    capsys.readouterr()
    assert run_cli(main, _peer_args(cut, glue, adv, tiny_model_dir, "--lr", "2e-4")) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {folder}: holds a run cut off at checkpoint-4 with another recipe (lr 0.0001 -> 0.0002); "
        "--overwrite trains it again from the start")
    # a checkpoint the Trainer had not finished writing (no elapsed.json) is passed over
    (folder / "trainer" / "checkpoint-6").mkdir()
    step_losses.clear()
    monkeypatch.setattr(transformers.Trainer, "training_step", recorded)
    assert main(_peer_args(cut, glue, adv, tiny_model_dir)) == 0
    assert len(step_losses) == 2  # steps 5 and 6 only: resumed, not started over
    assert f"resuming {folder} from checkpoint-4" in capsys.readouterr().err
    assert not (folder / "trainer").exists()

    def records(root):
        return [json.loads(x) for x in (root / "rte" / "standard_hf" / "s3-peer" / "metrics.jsonl").read_text()
                .splitlines()]

    a, b = records(whole), records(cut)
    assert [r["split"] for r in a] == [r["split"] for r in b] == ["dev", "dev", "train"]
    for x, y in zip(a, b):
        assert (x["epoch"], x["step"]) == (y["epoch"], y["step"])
        if x["split"] == "dev":
            assert x["metrics"] == pytest.approx(y["metrics"], abs=1e-6)
            assert x["robustness"] == y["robustness"]
        else:
            # the last epoch's mean training loss: steps 4-6 of the uncut run
            assert x["steps"] == y["steps"] == 6 and len(uncut_losses) == 6
            assert x["loss"] == pytest.approx(sum(uncut_losses[3:]) / 3, abs=1e-6)
            assert y["loss"] == pytest.approx(x["loss"], abs=1e-6)
    assert b[-1]["train_seconds"] > 0


@pytest.mark.parametrize("cut", ["step 5 after an epoch-end checkpoint", "in the last evaluation"])
def test_a_run_cut_after_an_epoch_end_checkpoint_still_evaluates_every_epoch(tmp_path, tiny_model_dir, monkeypatch,
                                                                            cut):
    """Checkpoints every 3 steps with 3 steps per epoch: each falls on an epoch's last step, where the Trainer on
    its own would save before evaluating the epoch (a run resumed from there would never evaluate it). A run cut
    in epoch 2, or while it evaluates epoch 2, resumes to both epochs' evaluations, as a run never cut has them."""
    import transformers

    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    adv = tmp_path / "adv"
    adv.mkdir()
    rows = [{"idx": i, "sentence1": "the cat sat", "sentence2": "a dog ran", "label": i % 2} for i in range(5)]
    (adv / "dev.json").write_text(json.dumps({"rte": rows}))
    every3 = ("--save_every_steps", "3")
    assert main(_peer_args(tmp_path / "whole", glue, adv, tiny_model_dir, *every3)) == 0
    name, n = ("training_step", 5) if cut.startswith("step") else ("evaluate", 5)  # evaluate: 3 calls per epoch
    real, calls = getattr(transformers.Trainer, name), []

    def cut_off(self, *a, **k):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("cut off")
        return real(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, name, cut_off)
    with pytest.raises(RuntimeError, match="cut off"):
        main(_peer_args(tmp_path / "cut", glue, adv, tiny_model_dir, *every3))
    monkeypatch.setattr(transformers.Trainer, name, real)
    folder = tmp_path / "cut" / "rte" / "standard_hf" / "s3-peer"
    # the epoch-1 checkpoint holds epoch 1's evaluation; no checkpoint at the very end
    assert sorted(p.name for p in (folder / "trainer").glob("checkpoint-*")) == ["checkpoint-3"]
    state = json.loads((folder / "trainer" / "checkpoint-3" / "trainer_state.json").read_text())
    assert sum("eval_dev_loss" in h for h in state["log_history"]) == 1
    assert main(_peer_args(tmp_path / "cut", glue, adv, tiny_model_dir, *every3)) == 0

    def dev(root):
        return [(r["epoch"], r["step"], r["metrics"], r["robustness"])
                for r in map(json.loads, (root / "rte" / "standard_hf" / "s3-peer" / "metrics.jsonl").read_text()
                             .splitlines()) if r["split"] == "dev"]

    uncut, resumed = dev(tmp_path / "whole"), dev(tmp_path / "cut")
    assert [d[:2] for d in resumed] == [d[:2] for d in uncut] == [(0, 3), (1, 6)]
    for a, b in zip(uncut, resumed):
        assert a[2] == pytest.approx(b[2], abs=1e-6) and a[3] == b[3]


def test_peer_flag_errors_and_overwrite_of_a_cut_off_run(tmp_path, tiny_model_dir, capsys):
    """A negative --save_every_steps is a one-line error before anything runs; --overwrite starts a cut-off run
    (checkpoints, no metrics.jsonl) over instead of resuming it."""
    from mt_dnn.cli_utils import run_cli
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    adv = tmp_path / "adv"
    adv.mkdir()
    (adv / "dev.json").write_text(json.dumps({"rte": [{"idx": 0, "sentence1": "a", "sentence2": "b", "label": 0}]}))
    root = tmp_path / "camp"
    assert run_cli(main, _peer_args(root, glue, adv, tiny_model_dir, "--save_every_steps", "-1")) == 2
    assert capsys.readouterr().err.strip() == "error: --save_every_steps must be >= 0"
    assert not root.exists()
    folder = root / "rte" / "standard_hf" / "s3-peer"
    stale = folder / "trainer" / "checkpoint-4"
    stale.mkdir(parents=True)
    (stale / "elapsed.json").write_text(json.dumps({"seconds": 1.0, "step": 4}))
    (folder / "config.json").write_text(json.dumps({"lr": 0.5}))  # another recipe: a resume would be refused
    assert main(_peer_args(root, glue, adv, tiny_model_dir, "--overwrite")) == 0
    assert "resuming" not in capsys.readouterr().err
    assert json.loads((folder / "config.json").read_text())["lr"] == 1e-4 and not (folder / "trainer").exists()


def test_a_resume_refuses_changed_encoder_files_or_data_under_the_same_paths(tmp_path, tiny_model_dir, capsys):
    """The recipe a resume must share holds the digests of the encoder's files and of the data files (as
    mt_dnn.train's --resume): a file changed under the same path is refused, naming what changed."""
    import shutil

    from mt_dnn.cli_utils import run_cli
    from tests.glue_fixtures import write_glue

    glue = write_glue(tmp_path / "glue", tasks=("rte",))
    adv = tmp_path / "adv"
    adv.mkdir()
    (adv / "dev.json").write_text(json.dumps({"rte": [{"idx": 0, "sentence1": "a", "sentence2": "b", "label": 0}]}))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    root = tmp_path / "camp"
    assert main(_peer_args(root, glue, adv, model)) == 0
    folder = root / "rte" / "standard_hf" / "s3-peer"
    saved = json.loads((folder / "config.json").read_text())
    assert set(saved["data"]) == {"rte/train", "rte/dev", "rte/advglue"} and len(saved["model_files"]) == 16
    (folder / "metrics.jsonl").unlink()  # as if cut off after a whole checkpoint
    (folder / "trainer" / "checkpoint-4").mkdir(parents=True)
    (folder / "trainer" / "checkpoint-4" / "elapsed.json").write_text(json.dumps({"seconds": 1.0, "step": 4}))
    config = model / "config.json"
    config.write_text(config.read_text() + "\n")  # the same encoder folder, one of its files changed
    capsys.readouterr()
    assert run_cli(main, _peer_args(root, glue, adv, model)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {folder}: holds a run cut off at checkpoint-4 with another recipe (model_files "
                          f"'{saved['model_files']}' -> '") and "data" not in err
    config.write_text(config.read_text()[:-1])  # back as it was; now the dev file changes
    dev = glue / "RTE" / "dev.tsv"
    dev.write_text(dev.read_text() + "\n")
    assert run_cli(main, _peer_args(root, glue, adv, model)) == 2
    err = capsys.readouterr().err.strip()
    assert "with another recipe (data {" in err and "model_files" not in err
