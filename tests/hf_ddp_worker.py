"""One rank of the 2-process DDP check in tests/test_hf_trainer.py (run by torch.distributed.run; not a test)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(out: str) -> None:
    import torch.distributed as dist

    from mt_dnn.hf import HFClassifier, RegularizedTrainer
    from tests.test_hf_trainer import Rows, classifier, training_args

    model = classifier("bert").train()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    layers: list[tuple[int, int, int]] = []
    first: list[list[int]] = []
    original = HFClassifier.perturb

    def spy(self, layer, fn):
        reg = trainer.regularizer
        layers.append((reg.step, reg.micro, layer))
        return original(self, layer, fn)

    HFClassifier.perturb = spy
    trainer = RegularizedTrainer(model=model, args=training_args(Path(out) / "trainer", ga=2, ddp_backend="gloo"),
                                 train_dataset=Rows(32), method="rapt", method_options={"max_layer": 2}, seed=5)
    original_step = trainer.training_step

    def record(model_, inputs, *a, **k):
        if not first:
            first.append(inputs["input_ids"].sum(-1).tolist())
        return original_step(model_, inputs, *a, **k)

    trainer.training_step = record
    trainer.train()
    rank = dist.get_rank()
    torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "init": init,
                "layers": layers, "first_ids": first[0], "wrapped": type(trainer.model_wrapped).__name__,
                "logs": [h for h in trainer.state.log_history if "loss" in h]}, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
