"""Two real gloo ranks (torch.multiprocessing spawn) running ``mt_dnn.train.main``: a NaN loss on one rank only,
a resume that must continue every rank exactly where it stopped (its own RNG, its own loss sums), and DDP's search
for unused parameters, on only where a step leaves some unused (several heads)."""
from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Stop(Exception):
    """Raised on every rank right after the checkpoint at ``stop_at``: the run ends there, as if killed."""


def _worker(rank: int, world: int, port: int, jobs: list[dict]) -> None:
    """One rank: join the group (short timeout: a collective mismatch fails the test instead of hanging it), then
    run the CLI's main once per job, dumping what the tests compare (weights, skipped count, RNG, loss sums)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), MT_DNN_NO_TQDM="1")
    # this rank's stderr (Python's and torch's C++ warnings, which DDP's reducer writes there) goes to a file
    err = open(Path(jobs[0]["dump"]).parent / f"stderr{rank}.txt", "w")
    os.dup2(err.fileno(), 2)
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    import mt_dnn.trainer as tr
    from mt_dnn.cli_utils import run_cli
    from mt_dnn.step import TrainStep
    from mt_dnn.train import main
    from tests.faults import nan_loss

    setup, train, save = tr.Trainer.setup, tr.Trainer.train, tr.Trainer.save_checkpoint
    job: dict = {}

    def setup_and_record(self):
        setup(self)
        torch.save(torch.get_rng_state(), Path(job["dump"]) / f"rng_after_setup{rank}.pt")

    def train_and_dump(self):
        record = train(self)
        out = Path(job["dump"])
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
                  str(out / f"weights{rank}.safetensors"))
        (out / f"rank{rank}.json").write_text(json.dumps(
            {"skipped": self.skipped_steps, "step": self.step, "loss_sum": self.loss_sum,
             "loss_count": self.loss_count, "find_unused": getattr(self.wrapped, "find_unused_parameters", None)}))
        return record

    def save_then_stop(self):
        save(self)
        if self.step == job.get("stop_at"):
            torch.save(torch.get_rng_state(), Path(job["dump"]) / f"rng_at_save{rank}.pt")
            raise _Stop()

    tr.Trainer.setup, tr.Trainer.train, tr.Trainer.save_checkpoint = setup_and_record, train_and_dump, save_then_stop
    forward = TrainStep.forward
    for job in jobs:
        Path(job["dump"]).mkdir(parents=True, exist_ok=True)
        nan = job.get("nan", {})  # a NaN loss at a step, on one rank only
        TrainStep.forward = nan_loss(forward, at=nan["at"]) if nan.get("rank") == rank else forward
        try:
            rc = str(run_cli(main, job["argv"]))
        except _Stop:
            rc = "stopped"
        (Path(job["dump"]) / f"rc{rank}").write_text(rc)
    dist.barrier()  # leave together: gloo can abort a rank whose peer tears the group down first
    dist.destroy_process_group()


def _argv(glue, model, out, cache, *extra):
    return ["--glue_dir", str(glue), "--model", str(model), "--output_dir", str(out), "--cache_dir", str(cache),
            "--tasks", "rte", "--lr", "1e-3", "--log_every", "1", "--batch_size", "4", "--device", "cpu", *extra]


RESUME_FLAGS = ("--max_steps", "5", "--save_every_steps", "2", "--method", "rapt", "--rapt_max_layer", "2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Every two-rank training of this file, in one spawn (starting the processes is most of the cost)."""
    from tests.glue_fixtures import write_glue

    root = tmp_path_factory.mktemp("ddp")
    glue = write_glue(root / "glue", tasks=("rte", "mrpc"))

    def argv(name, *extra):
        return _argv(glue, tiny_model_dir, root / name, root / "cache", *extra)

    nan = {"at": {1}, "rank": 1}
    # the single-head run goes first (DDP warns about a needless search for unused parameters once per process)
    jobs = [{"dump": str(root / "d_one_head"), "argv": argv("one_head", "--max_steps", "2", "--no_eval",
                                                            "--method", "smart")},
            {"dump": str(root / "d_two_heads"),
             "argv": [*argv("two_heads", "--max_steps", "3", "--no_eval", "--method", "rapt", "--rapt_max_layer", "2",
                            "--rapt_share_lower_layers"), "--tasks", "rte,mrpc"]},
            {"dump": str(root / "d_nan1"), "nan": nan, "argv": argv("nan1", "--max_steps", "3", "--no_eval")},
            {"dump": str(root / "d_nan2"), "nan": nan,
             "argv": argv("nan2", "--max_steps", "3", "--no_eval", "--grad_accumulation_steps", "2")},
            {"dump": str(root / "d_alone"), "argv": argv("alone", *RESUME_FLAGS)},
            {"dump": str(root / "d_first"), "argv": argv("killed", *RESUME_FLAGS), "stop_at": 2},
            {"dump": str(root / "d_resumed"), "argv": argv("killed", *RESUME_FLAGS, "--resume")}]
    mp.spawn(_worker, args=(2, _free_port(), jobs), nprocs=2, join=True)
    for job in jobs:
        rcs = {(Path(job["dump"]) / f"rc{r}").read_text() for r in (0, 1)}
        assert rcs == {"stopped" if job.get("stop_at") else "0"}, (job["argv"], rcs, (root / "stderr0.txt").read_text())
    return root


@pytest.mark.parametrize("accumulation", [1, 2])
def test_nan_on_one_rank_is_skipped_on_every_rank(runs, accumulation):
    dump = runs / f"d_nan{accumulation}"
    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["step"], r["skipped"]) for r in ranks] == [(3, 1), (3, 1)]
    w0, w1 = load_file(str(dump / "weights0.safetensors")), load_file(str(dump / "weights1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) and torch.isfinite(w0[k]).all() for k in w0)
    train = json.loads((runs / f"nan{accumulation}" / "metrics.jsonl").read_text().splitlines()[-1])
    assert train["steps"] == 3 and train["skipped_steps"] == 1


def test_two_rank_resume_is_bit_identical_and_each_rank_gets_its_own_rng(runs):
    alone, killed = runs / "alone", runs / "killed"
    # each rank's RNG after the resume is the one that rank had when the checkpoint was written
    saved = [torch.load(runs / "d_first" / f"rng_at_save{r}.pt") for r in (0, 1)]
    restored = [torch.load(runs / "d_resumed" / f"rng_after_setup{r}.pt") for r in (0, 1)]
    assert not torch.equal(saved[0], saved[1])
    assert torch.equal(restored[0], saved[0]) and torch.equal(restored[1], saved[1])

    # and the resumed run ends exactly where the uninterrupted one does, on both ranks
    for r in (0, 1):
        wa = load_file(str(runs / "d_alone" / f"weights{r}.safetensors"))
        wb = load_file(str(runs / "d_resumed" / f"weights{r}.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"rank {r}"
    recs_a = [json.loads(x) for x in (alone / "metrics.jsonl").read_text().splitlines()]
    recs_b = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert len(recs_a) == 3  # dev after steps 3 and 5, the train record
    clocks = ("train_seconds", "train_cpu_seconds")
    assert [{k: v for k, v in r.items() if k not in clocks} for r in recs_a] == \
        [{k: v for k, v in r.items() if k not in clocks} for r in recs_b]
    assert all(r["train_cpu_seconds"] > 0 for r in recs_b)  # rank 0's, the resumed run's sessions added up

    # the logged loss is the mean over the ranks, and only rank 0 writes train.log
    ranks = [json.loads((runs / "d_alone" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["loss_sum"] != ranks[1]["loss_sum"]
    mean = sum(r["loss_sum"] / r["loss_count"] for r in ranks) / 2
    assert recs_a[-1]["loss"] == pytest.approx(mean, rel=1e-12)
    log = (alone / "train.log").read_text()
    assert log.count("step 3/5 loss") == 1 and log.count("done: 5 steps") == 1
    assert "resumed from" in (killed / "train.log").read_text()


def test_ddp_searches_for_unused_parameters_only_with_several_heads(runs):
    one = [json.loads((runs / "d_one_head" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["find_unused"], r["step"]) for r in one] == [(False, 2), (False, 2)]  # every parameter is used
    for r in (0, 1):  # nor any of the other single-head runs: DDP never warned of a needless search
        assert "find_unused_parameters=True was specified" not in (runs / f"stderr{r}.txt").read_text()
    # two tasks: a step trains one task's head, the other's parameters get no gradient
    two = [json.loads((runs / "d_two_heads" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["find_unused"], r["step"]) for r in two] == [(True, 3), (True, 3)]
    assert json.loads((runs / "two_heads" / "config.json").read_text())["tasks"] == "rte,mrpc"


def test_more_processes_than_gpus_is_one_line_error_before_joining_the_group(monkeypatch):
    """torchrun with more processes on a machine than it has GPUs: every rank stops with the same one-line error
    before NCCL is started (not a CUDA 'invalid device ordinal' from the rank without a GPU); --device cpu runs."""
    import torch.distributed as dist

    from data_utils.task_def import ConfigError
    from mt_dnn.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    started = []

    def fake_init(backend):
        started.append(backend)
        raise RuntimeError("joined")

    monkeypatch.setattr(dist, "init_process_group", fake_init)
    with pytest.raises(ConfigError, match=r"torchrun started 2 processes on this machine, which has 1 GPU\(s\): "
                                          r"start one process per GPU \(--nproc_per_node 1\), or train on CPU"):
        init_distributed("auto")
    assert started == []
    with pytest.raises(RuntimeError, match="joined"):
        init_distributed("cpu")
    assert started == ["gloo"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match="joined"):
        init_distributed("auto")
    assert started == ["gloo", "nccl"]
