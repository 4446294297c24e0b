"""Reading ``best/`` while a training replaces it: a reader gets the old model or the new one, whole, never a mix
of the two and never a misleading error."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from data_utils.task_def import load_task_defs
from mt_dnn import api, saved_model
from mt_dnn.model import load_model, save_model


@pytest.fixture
def two_models(tiny_model_dir):
    """Model "old" (cls pooling) and model "new" (mean pooling, other weights) of the same task, as a training's
    successive bests differ."""
    from transformers import AutoModel, AutoTokenizer

    from mt_dnn.model import MultiTaskModel

    rte = load_task_defs()["rte"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    old = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), [rte], "cls")
    new = MultiTaskModel(AutoModel.from_pretrained(tiny_model_dir), [rte], "mean")
    with torch.no_grad():
        for p in new.parameters():
            p.add_(1.0)
    return {"old": old, "new": new}, tok, [rte]


def _which(model, models) -> str:
    """"old" or "new" when ``model`` is that model whole (pooling and every weight); "mixed" otherwise."""
    for name, ref in models.items():
        theirs = ref.state_dict()
        if model.pooling == ref.pooling and all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items()):
            return name
    return "mixed"


def test_a_best_replaced_while_it_is_read_is_read_whole(tmp_path, two_models, monkeypatch):
    models, tok, tasks = two_models
    run = tmp_path / "run"
    save_model(models["old"], tok, tasks, run / "best")
    real, swaps = saved_model._open_weights, []

    def training_saves_now(path):  # the reader has read model.json, tasks.yml and the encoder config of "old"
        if not swaps:
            swaps.append(1)
            save_model(models["new"], tok, tasks, run / "best")
        return real(path)

    monkeypatch.setattr(saved_model, "_open_weights", training_saves_now)
    model, _, _ = load_model(run / "best")
    assert swaps and _which(model, models) in ("old", "new")
    swaps.clear()
    predictor = api.load_run(run, device="cpu")
    assert swaps and _which(predictor.model, models) in ("old", "new")


def test_a_folder_that_vanishes_between_the_two_renames_is_found_again(tmp_path, two_models, monkeypatch):
    models, tok, tasks = two_models
    run = tmp_path / "run"
    save_model(models["old"], tok, tasks, run / "best")
    save_model(models["new"], tok, tasks, run / "next")
    os.replace(run / "best", run / "best.old")  # a training between the two renames of its swap
    real, done = saved_model._open_weights, []

    def the_swap_ends(path):  # the reader took best.old; the training renames its new folder and removes best.old
        if not done:
            done.append(1)
            os.replace(run / "next", run / "best")
            shutil.rmtree(run / "best.old")
        return real(path)

    monkeypatch.setattr(saved_model, "_open_weights", the_swap_ends)
    model, _, _ = load_model(run)
    assert done and _which(model, models) == "new"
