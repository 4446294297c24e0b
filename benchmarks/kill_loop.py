"""kill -9 at random moments, and inside the saves of config.json, best/ and predict's output: every run resumes to
the metrics of an uninterrupted one, and no temporary file is left.

    python benchmarks/kill_loop.py                  # 20 random kills + 2 in each kind of save, 1 thread
    python benchmarks/kill_loop.py --random 40 --per_save 3 --seed 3 --work /tmp/kills

One uninterrupted RAPT run (a tiny random BERT, small GLUE-format RTE files, a checkpoint after every step) and its
predictions on an input file are the reference. Random kills: a run is started (then resumed) ``--per_run`` times,
each process killed (SIGKILL) at a moment drawn uniformly from the reference's time between writing config.json
(its first write, after its checks and loading) and ending. Kills inside saves: the process pauses in the middle of one save (a hook of this script, never of
the package) and is killed once the save's temporary file or folder is seen: ``config.json`` (a resumed run
rewriting it), ``best/`` (its temporary folder being written, before the renames; or between the two renames,
when a run started again from scratch replaces the best/ it kept) and predict's ``--output`` (an older output
there). Then ``--resume`` runs each run to its end, and the check: the dev records, the final losses and the
best/ weights equal the reference's bit for bit (predict: the older output intact after the kill, then the
reference's bytes), and no ``*.tmp*``, ``*.old`` or ``.lock`` is left in the folder.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
PAUSE = 30.0  # seconds the child waits inside a save: the parent kills it long before
KINDS = ("random", "config.json", "best", "best-swap", "predict")


# ---- the child: mt_dnn.train or mt_dnn.predict, paused inside one kind of save ------------------------------------

def child(pause: str, module: str, args: list[str]) -> None:
    """Run ``module``'s CLI; with ``pause``, stop for PAUSE seconds inside that save (to be killed there)."""
    sys.path.insert(0, str(REPO))
    import torch

    from data_utils import atomic

    torch.set_num_threads(1)
    commit, replace_dir, os_replace = atomic.commit, atomic.replace_dir, os.replace

    def paused_commit(tmp: Path, path: Path) -> None:  # the temporary file is written, not yet renamed
        if path.name == pause or (pause == "predict" and path.suffix == ".jsonl"):
            time.sleep(PAUSE)
        commit(tmp, path)

    def paused_replace_dir(tmp: Path, final: Path) -> None:  # the temporary folder is complete
        if pause == "best" and final.name == "best":
            time.sleep(PAUSE)
        replace_dir(tmp, final)

    def paused_replace(src, dst, **kwargs) -> None:  # between the swap's two renames: best.old/ and no best/
        os_replace(src, dst, **kwargs)
        if pause == "best-swap" and Path(dst).name == "best.old":
            time.sleep(PAUSE)

    atomic.commit, atomic.replace_dir, os.replace = paused_commit, paused_replace_dir, paused_replace
    sys.argv = [module, *args]
    if module == "mt_dnn.train":
        from mt_dnn.train import cli
    else:
        from mt_dnn.predict import cli
    cli()


# ---- the parent ------------------------------------------------------------------------------------------------

def _start(work: Path, module: str, args: list[str], pause: str = "", log: str = "child.log") -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", pause or "-", module, *args]
    env = {**os.environ, **THREADS, "MT_DNN_NO_TQDM": "1", "PYTHONPATH": str(REPO)}
    with open(work / log, "a") as out:
        return subprocess.Popen(cmd, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)


def _run(work: Path, module: str, args: list[str]) -> None:
    proc = _start(work, module, args)
    if proc.wait() != 0:
        tail = (work / "child.log").read_text(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"{module} {' '.join(args)} failed (exit {proc.returncode}): {tail}")


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL; False if the process had ended already."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def _wait_for(proc: subprocess.Popen, seen, timeout: float = 120.0) -> bool:
    """Poll until ``seen()`` (True) or the process ends (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if seen():
            return True
        time.sleep(0.005)
    return False


def _names(folder: Path) -> list[str]:
    """What ``folder`` holds (nothing while it does not exist yet)."""
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _temp_files(folder: Path) -> list[str]:
    return sorted(n for n in _names(folder) if ".tmp" in n or n.endswith(".old") or n == ".lock")


def _outcome(run: Path) -> dict:
    """What a finished run must share with the reference: dev records, final losses, best weights."""
    from safetensors.torch import load_file

    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    dev = [(r["epoch"], r["step"], r["metrics"]) for r in records if r["split"] == "dev"]
    final = {k: records[-1][k] for k in ("split", "steps", "loss", "reg_loss")}
    weights = load_file(str(run / "best" / "model.safetensors"))
    return {"dev": dev, "final": final, "weights": {k: v.numpy().tobytes() for k, v in weights.items()}}


def _resume_until_done(work: Path, run: Path, args: list[str]) -> int:
    """--resume (as many times as it takes; a finished run is refused) until metrics.jsonl ends with the final
    record. Returns how many resumed processes ran."""
    from mt_dnn.run_folder import is_finished

    n = 0
    while not is_finished(run):
        n += 1
        _run(work, "mt_dnn.train", [*args, "--resume"])
    return n


def _setup(work: Path) -> tuple[Path, Path, Path]:
    """Small RTE files, a tiny random BERT with its tokenizer, and an input file for predict."""
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tests.glue_fixtures import write_glue, write_tiny_tokenizer

    glue = write_glue(work / "glue", tasks=("rte",), n_train=32, n_dev=16)
    model = work / "tiny_bert"
    write_tiny_tokenizer(model)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(AutoTokenizer.from_pretrained(model)), num_hidden_layers=2, hidden_size=32,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(model)
    rows = (glue / "RTE" / "dev.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    a, b = header.index("sentence1"), header.index("sentence2")
    inputs = work / "input.jsonl"
    inputs.write_text("".join(json.dumps({"id": f"r{i}", "sentence1": r.split("\t")[a],
                                          "sentence2": r.split("\t")[b]}) + "\n" for i, r in enumerate(rows[1:])))
    return glue, model, inputs


def _wrote_config(run: Path, since: float) -> bool:
    """Whether config.json was written after ``since`` (every start of a run writes it, after its checks)."""
    try:
        return (run / "config.json").stat().st_mtime >= since
    except OSError:
        return False


def _chain(rng: random.Random, work: Path, run: Path, args: list[str], window: float, kills: int) -> list[dict]:
    """Trainings of one run (the first fresh, the others resuming), each killed at a moment drawn uniformly from
    [0, window] seconds after it wrote config.json (its first write after loading), until ``kills`` were killed
    or one ended before its moment (the run is finished: its kills so far are returned)."""
    rows: list[dict] = []
    while len(rows) < kills:
        since = time.time() - 0.01
        proc = _start(work, "mt_dnn.train", [*args, "--resume"])
        _wait_for(proc, lambda: _wrote_config(run, since), timeout=600)
        moment = rng.uniform(0.0, window)
        time.sleep(moment)
        row = {"kind": "random", "moment": f"{moment:.2f} s after config.json", "at_kill": _state(run)}
        temps = _temp_files(run)
        row["at_kill"] += f"; {', '.join(temps)}" if temps else ""
        if not _kill(proc):
            return rows
        rows.append(row)
    return rows


def _copy_of_reference(reference: Path, run: Path, keep_checkpoint: bool) -> None:
    """The reference run as if killed before its end: its final record gone (and its checkpoint, to make
    --resume start it again from scratch, keeping best/ until a new best replaces it)."""
    import shutil

    shutil.copytree(reference, run)
    if not keep_checkpoint:
        shutil.rmtree(run / "checkpoint")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:-1]))


def _in_save(kind: str, work: Path, run: Path, reference: Path, args: list[str]) -> dict:
    """A training paused inside one kind of save, killed when the save's temporary file or folder is seen."""
    if kind == "config.json":  # a resumed run rewriting the config.json of a run with a checkpoint
        _copy_of_reference(reference, run, keep_checkpoint=True)
        look, moment = (lambda: any(".config.json.tmp." in n for n in _names(run))), \
            "inside a resumed run's config.json save"
    elif kind == "best":  # the first best/ of a fresh run
        look, moment = (lambda: any(n.startswith("best.tmp-") for n in _names(run))), \
            "inside best/'s save, before its renames"
    else:  # best-swap: a run started again from scratch replaces the best/ it kept
        _copy_of_reference(reference, run, keep_checkpoint=False)
        look, moment = (lambda: (run / "best.old").exists() and not (run / "best").exists()), \
            "between best/'s two renames"
    proc = _start(work, "mt_dnn.train", [*args, "--resume"], pause=kind)
    hit = _wait_for(proc, look)
    row = {"kind": kind, "moment": moment if hit else f"missed ({moment})",
           "at_kill": f"{_state(run)}; {', '.join(_temp_files(run))}"}
    _kill(proc)
    return row


def _predict_kill(work: Path, folder: Path, predict: list[str], expected: bytes) -> dict:
    """predict killed inside the save of its --output (an older output there): the older output stays whole, and
    the next predict writes the reference's bytes and removes the dead writer's temporary file."""
    out = folder / "predictions.jsonl"
    out.write_bytes(b"an older output\n")
    proc = _start(work, "mt_dnn.predict", [*predict, "--output", str(out)], pause="predict")
    hit = _wait_for(proc, lambda: any(".predictions.jsonl.tmp." in n for n in _names(folder)))
    row = {"kind": "predict", "moment": "inside the output's save" if hit else "missed",
           "at_kill": ", ".join(_temp_files(folder))}
    _kill(proc)
    intact = out.read_bytes() == b"an older output\n"
    _run(work, "mt_dnn.predict", [*predict, "--output", str(out)])
    row["same"] = intact and out.read_bytes() == expected
    row["leftovers"] = _temp_files(folder)
    return row


def _state(run: Path) -> str:
    ckpt = run / "checkpoint" / "trainer_state.pt"
    if not ckpt.exists():
        return "no checkpoint"
    import torch

    try:
        return f"checkpoint at step {torch.load(ckpt, weights_only=True)['step']}"
    except Exception:  # being written: the kill may find it half-made
        return "checkpoint being written"


def _reference(work: Path, train: list[str], predict: list[str]) -> tuple[Path, float]:
    """The uninterrupted run and its predictions; returns (its folder, seconds from config.json to its end)."""
    reference = work / "reference"
    _run(work, "mt_dnn.train", [*train, "--output_dir", str(reference)])
    window = (reference / "metrics.jsonl").stat().st_mtime - (reference / "config.json").stat().st_mtime
    _run(work, "mt_dnn.predict", [*predict, "--output", str(work / "reference.jsonl")])
    return reference, window


def _print(row: dict) -> None:
    verdict = "" if "same" not in row else \
        f" -> {'same metrics' if row['same'] else 'DIFFERENT'}, leftovers {row['leftovers'] or 'none'}"
    print(f"  {row['kind']:11s} kill {row['moment']} [{row['at_kill']}]{verdict}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child("" if argv[1] == "-" else argv[1], argv[2], argv[3:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--random", type=int, default=20, help="kills at random moments")
    p.add_argument("--per_run", type=int, default=5, help="random kills of one run before it is resumed to its end")
    p.add_argument("--per_save", type=int, default=2, help="kills inside each kind of save (config.json, best/ "
                                                            "before and between its renames, predict's output)")
    p.add_argument("--seed", type=int, default=1, help="seed of the kill moments")
    p.add_argument("--work", help="working folder (default: a new temporary one)")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="kill_loop-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    glue, model, inputs = _setup(work)
    train = ["--tasks", "rte", "--glue_dir", str(glue), "--model", str(model), "--cache_dir", str(work / "cache"),
             "--method", "rapt", "--rapt_max_layer", "2", "--epochs", "3", "--batch_size", "4", "--lr", "1e-3",
             "--save_every_steps", "1", "--log_every", "1", "--device", "cpu"]
    predict = ["--checkpoint", str(work / "reference"), "--task", "rte", "--input", str(inputs), "--device", "cpu"]
    reference, window = _reference(work, train, predict)
    expected, expected_predictions = _outcome(reference), (work / "reference.jsonl").read_bytes()
    print(f"reference: {len(expected['dev'])} evaluations, {expected['final']['steps']} steps, a checkpoint every "
          f"step, {window:.1f} s from config.json to its end; set-up {time.time() - t0:.0f} s", flush=True)
    rng = random.Random(args.seed)
    runs: list[tuple[str, list[dict]]] = []  # (folder, its kills); the last kill row carries the verdict
    left, n = args.random, 0
    while left > 0 and n < 3 * args.random:
        run = work / f"run{n:02d}"
        print(f"{run.name}: random kills", flush=True)
        rows = _chain(rng, work, run, [*train, "--output_dir", str(run)], window, min(left, args.per_run))
        if rows:
            runs.append((run.name, rows))
        left, n = left - len(rows), n + 1
    for kind in [k for k in KINDS[1:] for _ in range(args.per_save)]:
        run = work / f"run{n:02d}"
        n += 1
        print(f"{run.name}: a kill inside a save", flush=True)
        if kind == "predict":
            run.mkdir()
            rows = [_predict_kill(work, run, predict, expected_predictions)]
        else:
            rows = [_in_save(kind, work, run, reference, [*train, "--output_dir", str(run)])]
        runs.append((run.name, rows))
    for name, rows in runs:
        last = rows[-1]
        if last["kind"] != "predict":
            run = work / name
            last["resumes"] = _resume_until_done(work, run, [*train, "--output_dir", str(run)])
            last["same"], last["leftovers"] = _outcome(run) == expected, _temp_files(run)
        print(f"{name}:", flush=True)
        for row in rows:
            _print(row)
    finals = [rows[-1] for _, rows in runs]
    good = sum(r["same"] and not r["leftovers"] for r in finals)
    kills = [r for _, rows in runs for r in rows]
    missed = sum("missed" in r["moment"] for r in kills)
    print(f"{len(kills)} kills ({sum(r['kind'] == 'random' for r in kills)} at random moments; "
          f"{sum(r['kind'] != 'random' for r in kills)} inside saves, {missed} missed): "
          f"{good}/{len(finals)} runs ended with the reference's metrics and best/ weights (bit for bit; predict: "
          f"its bytes) and no leftover file; {time.time() - t0:.0f} s in all", flush=True)
    return 0 if good == len(finals) and not missed else 1


if __name__ == "__main__":
    sys.exit(main())
