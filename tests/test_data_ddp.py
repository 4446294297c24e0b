"""Two real gloo ranks (torch.multiprocessing spawn) on one node and an empty feature cache: the first rank
tokenizes and writes the cache once while the other waits, then reads it; both hold identical features. A bad
row stops both ranks with the same one-line error and writes no cache file."""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, jobs: list[dict]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), MT_DNN_NO_TQDM="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    import data_utils.features as features_mod
    import mt_dnn.trainer as tr
    from data_utils import feature_cache
    from mt_dnn.cli_utils import USER_ERRORS
    from mt_dnn.train import main

    events: dict = {}
    tokenize, save, load, setup = (features_mod.tokenize_examples, feature_cache.save, features_mod.load_features,
                                   tr.Trainer.setup)

    def counting_tokenize(*args, **kwargs):
        events["tokenized"].append(args[2].name)
        return tokenize(*args, **kwargs)

    def counting_save(features, path, *args):
        save(features, path, *args)
        events["saved"].append([path.name, time.time()])

    def timed_load(*args, **kwargs):
        events.setdefault("first_load", time.time())
        return load(*args, **kwargs)

    def setup_and_dump(self):
        setup(self)
        arrays = {}
        for f in list(self.train_data.values()) + self.dev:
            arrays.update({f"{f.task}.{f.split}.ids": f.ids, f"{f.task}.{f.split}.types": f.types,
                           f"{f.task}.{f.split}.offsets": f.offsets})
        np.savez(Path(job["dump"]) / f"features{rank}.npz", **arrays)

    features_mod.tokenize_examples, feature_cache.save = counting_tokenize, counting_save
    tr.load_features, tr.Trainer.setup = timed_load, setup_and_dump
    for job in jobs:
        events.clear()
        events.update(tokenized=[], saved=[])
        Path(job["dump"]).mkdir(parents=True, exist_ok=True)
        try:
            rc, error = main(job["argv"]), None
        except USER_ERRORS as exc:  # what run_cli prints as the one line
            rc, error = 2, f"{type(exc).__name__}: {exc}"
        (Path(job["dump"]) / f"rank{rank}.json").write_text(json.dumps({"rc": rc, "error": error, **events}))
    dist.barrier()  # leave together: gloo can abort a rank whose peer tears the group down first
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    from tests.glue_fixtures import write_glue

    root = tmp_path_factory.mktemp("ddp_data")
    glue = write_glue(root / "glue", tasks=("rte", "mrpc"))
    bad = write_glue(root / "bad", tasks=("rte",))
    dev = bad / "RTE" / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\tmaybe"
    dev.write_text("\n".join(lines) + "\n")

    def argv(data, name, cache):
        return ["--glue_dir", str(data), "--model", str(tiny_model_dir), "--output_dir", str(root / name),
                "--cache_dir", str(root / cache), "--tasks", "rte,mrpc" if data == glue else "rte",
                "--max_steps", "1", "--batch_size", "4", "--eval_batch_size", "4", "--device", "cpu"]

    jobs = [{"dump": str(root / "d_first"), "argv": argv(glue, "first", "cache")},
            {"dump": str(root / "d_again"), "argv": argv(glue, "again", "cache")},
            {"dump": str(root / "d_bad"), "argv": argv(bad, "bad_run", "cache_bad")}]
    mp.spawn(_worker, args=(2, _free_port(), jobs), nprocs=2, join=True)
    return root


def _ranks(root: Path, job: str) -> list[dict]:
    return [json.loads((root / job / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_first_rank_of_the_node_tokenizes_once_and_the_other_reads_its_cache(runs):
    first, other = _ranks(runs, "d_first")
    assert first["rc"] == other["rc"] == 0
    splits = ["train", "dev", "train", "dev"]  # rte and mrpc, train and dev: each tokenized once, by rank 0
    assert first["tokenized"] == splits and other["tokenized"] == []
    assert len(first["saved"]) == 4 and other["saved"] == []
    assert sorted(p.name for p in (runs / "cache").iterdir()) == sorted(name for name, _ in first["saved"])
    # the other rank started reading only once every cache file was written
    assert other["first_load"] >= max(t for _, t in first["saved"])
    a, b = np.load(runs / "d_first" / "features0.npz"), np.load(runs / "d_first" / "features1.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) == 12
    assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_second_run_tokenizes_nothing(runs):
    assert [(r["rc"], r["tokenized"], r["saved"]) for r in _ranks(runs, "d_again")] == [(0, [], []), (0, [], [])]


def test_a_bad_row_stops_both_ranks_with_one_line_and_writes_no_cache(runs):
    first, other = _ranks(runs, "d_bad")
    assert first["rc"] == other["rc"] == 2
    assert first["error"] == other["error"] and first["error"].startswith("DataError: ")
    assert f"{runs / 'bad' / 'RTE' / 'dev.tsv'}:5: unknown label 'maybe'" in first["error"]
    assert first["tokenized"] == ["train", "dev"] and other["tokenized"] == []  # dev fails while being read
    assert not (runs / "cache_bad").exists() or not list((runs / "cache_bad").iterdir())
