"""RegularizedTrainer honours the Trainer settings that change the training loss, or refuses them.

transformers' ``Trainer.compute_loss`` changes the loss for ``label_smoothing_factor`` (its label smoother) and a
``compute_loss_func``; ``average_tokens_across_devices`` only rescales a loss normalised by ``num_items_in_batch``,
which the regularized step never uses (its losses are batch means).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from data_utils.task_def import ConfigError
from mt_dnn.hf import RegularizedTrainer
from tests.test_hf_trainer import Rows, classifier


def _one_sgd_step(tmp_path, model, smoothing: float) -> RegularizedTrainer:
    """One plain-SGD step (lr 0.5, no clipping, no decay) on 4 rows, one batch: the method adds nothing."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", max_steps=1, per_device_train_batch_size=4,
                             learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
                             max_grad_norm=0.0, logging_steps=1, save_strategy="no", use_cpu=True,
                             disable_tqdm=True, dataloader_pin_memory=False, label_smoothing_factor=smoothing)
    trainer = RegularizedTrainer(model=model, args=args, train_dataset=Rows(4, seed=3), method="standard", seed=1)
    trainer.train()
    return trainer


def test_label_smoothing_changes_the_step_as_the_smoothed_cross_entropy_does(tmp_path):
    start = classifier("bert", num_labels=3, dropout=0.0)
    expected = copy.deepcopy(start).train()
    plain = _one_sgd_step(tmp_path / "a", copy.deepcopy(start), 0.0).model
    smoothed_trainer = _one_sgd_step(tmp_path / "b", copy.deepcopy(start), 0.3)
    smoothed = smoothed_trainer.model

    # independently: cross-entropy against (1 - 0.3) * one-hot + 0.3 / C, one SGD step by hand
    rows = Rows(4, seed=3)
    batch = {k: torch.stack([rows[i][k] for i in range(4)]) for k in rows[0]}
    labels = batch.pop("labels")
    logits = expected(**batch).logits
    target = 0.7 * F.one_hot(labels, 3).float() + 0.3 / 3
    loss = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
    loss.backward()
    with torch.no_grad():
        for p in expected.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad

    logged = [h for h in smoothed_trainer.state.log_history if "task_loss" in h]
    assert abs(logged[0]["task_loss"] - loss.item()) < 1e-6
    want, got, other = expected.state_dict(), smoothed.state_dict(), plain.state_dict()
    assert any(not torch.equal(got[k], other[k]) for k in got)  # 0.3 is not 0.0
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k


def test_label_smoothing_on_a_regression_head_is_refused(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, label_smoothing_factor=0.1)
    with pytest.raises(ConfigError, match="label_smoothing_factor 0.1 .* regression"):
        RegularizedTrainer(model=classifier("bert", num_labels=1), args=args, method="rapt",
                           method_options={"max_layer": 2}, seed=1)


def test_a_custom_loss_function_is_refused(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ConfigError, match="compute_loss_func"):
        RegularizedTrainer(model=classifier("bert"), args=args, method="rapt", method_options={"max_layer": 2},
                           seed=1, compute_loss_func=lambda out, labels, num_items_in_batch=None: out.logits.sum())


def test_a_warmup_below_one_step_is_that_fraction_of_the_steps(tmp_path):
    """The examples pass their warmup fraction as warmup_steps, as transformers 5 reads it."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, warmup_steps=0.1)
    assert args.get_warmup_steps(200) == 20 and args.get_warmup_steps(15) == 2  # ceil(1.5)
