"""Stopping a training cleanly on a signal: a scheduler's warning before a time limit or a preemption.

Slurm sends SIGUSR2 some time before it kills a job when asked to (submitit asks for it; by hand:
``sbatch --signal=USR2@90``), and ``kill`` or a cluster's shutdown sends SIGTERM. While a training runs, either
signal only raises a flag: the trainer finishes the optimizer step it is in, every rank agrees on the flag in the
step's own all-reduce, rank 0 writes the resumable ``checkpoint/``, and the process exits with
:data:`EXIT_STOPPED`. ``--resume`` then continues exactly where it stopped, as after an epoch-end checkpoint.
Outside the training loop (loading data, evaluating after the last step) the signals keep their usual effect.
"""
from __future__ import annotations

import signal
import threading

EXIT_STOPPED = 75  # sysexits' EX_TEMPFAIL: not finished, try again (with --resume)
SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR2", None), signal.SIGTERM) if s is not None)


class Stopped(Exception):
    """The training stopped on a signal after writing its checkpoint; the message says where."""


class StopOnSignal:
    """Within ``with StopOnSignal() as stop:``, SIGUSR2 and SIGTERM only set ``stop.signum``; the previous
    handlers come back on exit. In a thread other than the main one (where Python cannot catch signals) it does
    nothing, and ``requested`` stays False."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"
