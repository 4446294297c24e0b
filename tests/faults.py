"""Faults that tests inject into a training; the package itself reads no fault switch.

In a test's own process, by monkeypatching::

    monkeypatch.setattr(TrainStep, "forward", nan_loss(TrainStep.forward, at={1}))

For a test that starts a training in another process (to kill or signal it at a chosen moment), this file is
the program, ``mt_dnn.train`` with every optimizer step slowed down::

    python tests/faults.py --step_delay 0.3 -- <mt_dnn.train flags>
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Iterable


def nan_loss(forward: Callable, at: Iterable[int] = (), from_step: int | None = None) -> Callable:
    """``TrainStep.forward`` whose loss is NaN on the first micro-batch of the first attempt at each step in
    ``at``, and on every attempt from ``from_step`` on (a run that never recovers)."""
    once, fired = set(at), set()

    def faulty(self, batch):
        loss, task_loss, reg_loss, logs = forward(self, batch)
        step = self.reg.step
        if (step in once and step not in fired) or (from_step is not None and step >= from_step):
            fired.add(step)
            loss = loss * float("nan")
        return loss, task_loss, reg_loss, logs
    return faulty


class Killed(Exception):
    """What :func:`die_after_checkpoint` raises: the training ends there, as if killed."""


def die_after_checkpoint(trainer_cls) -> Callable:
    """``trainer_cls.save_checkpoint`` that writes the checkpoint, then raises :class:`Killed` (for
    ``monkeypatch.setattr(Trainer, "save_checkpoint", die_after_checkpoint(Trainer))``)."""
    saved = trainer_cls.save_checkpoint

    def save_then_die(self) -> None:
        saved(self)
        raise Killed
    return save_then_die


def slow_steps(trainer_cls, seconds: float) -> None:
    """Every counted optimizer step of ``trainer_cls`` takes ``seconds`` longer (not in its train_seconds)."""
    count = trainer_cls._count_step

    def slow(self) -> None:
        count(self)
        time.sleep(seconds)
    trainer_cls._count_step = slow


def main() -> None:
    args = sys.argv[1:]
    cut = args.index("--")
    own, train_args = args[:cut], args[cut + 1:]
    delay = float(own[own.index("--step_delay") + 1]) if "--step_delay" in own else 0.0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mt_dnn.train import cli
    from mt_dnn.trainer import Trainer

    slow_steps(Trainer, delay)
    sys.argv = [sys.argv[0], *train_args]
    cli()


if __name__ == "__main__":
    main()
