"""A campaign's grids on a borrowed GPU machine that can receive only small uploads: pack here, stage and run there.

Such a machine gets the working tree plus at most about 64 MiB of files per call, has no network, and keeps its
files only while it stays in use. The packaged encoder alone (about 90 MB) does not fit one upload, so ``pack``
writes everything a run needs into one archive, split into parts that each fit one call:

    python -m experiments.rapt.gpu_study pack --commit 0c4c757
        # here: runs/gpu_study/part1, part2, ... (each a part file plus manifest.json)
    python3 -m experiments.rapt.gpu_study stage runs/gpu_study/part1
        # there, one call per part, on the same machine (each call carries its part folder)
    python3 -m experiments.rapt.gpu_study stage runs/gpu_study/part2 && \\
        python3 -m experiments.rapt.gpu_study run --seconds 540 --out $OUT
        # there: the last part, then the runs

The archive holds the encoder folder (byte for byte: ``run`` checks the whole archive's SHA-256 before it
unpacks), the code of ``--commit`` (``git archive``: every run trains on that one commit, as a study frozen on a
commit needs), the GLUE folders of the grids' tasks and the robustness sets' file, and the pure-Python packages
that the machine may lack (submitit). ``run`` runs the cells of ``--grid NAME=SEEDS`` (default: the robustness
grid's seeds 6-10, then the core grid's seeds 4-10), each grid with its seeds replaced and ``tf32: false`` added
(full fp32, as on the CPU), ``--jobs`` trainings side by side on the one GPU in plan order (a cell two grids share
runs once), until ``--seconds`` less a reserve for the ending are spent: then the trainings still running are
killed and no more start. Run folders stay under ``--work`` while the machine does, so another ``run`` on it
continues where this one stopped. It writes to ``--out``, which comes back, as cells finish (a call cut off early
still returns what finished): per grid, ``archive_<grid>.json`` (its finished cells in
:mod:`experiments.rapt.archive`'s format, each with its device), ``gpu_study.json`` (device, versions, commit,
the cells done, failed, stopped or not started, seconds), and at the end ``runs.tar.gz`` (every run folder's
flags, config, metrics and logs; no weights). ``run --cpu_smoke`` runs the first task and first two methods of
each grid at its first seed for 2 steps on the CPU, to check the chain here before a device call.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_utils import atomic

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "runs" / "gpu_study"
WORK = Path("/tmp/gpu_study")
ARCHIVE = "gpu_study.tar.gz"
DEFAULT_GRIDS = ("robustness=6,7,8,9,10", "core=4,5,6,7,8,9,10")
RESERVE_S = 30.0  # kept back from --seconds for stopping trainings and packing the results
CHUNK = 1 << 20

logger = logging.getLogger(__name__)


class StudyError(Exception):
    """A one-line error for the command line."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def parse_grids(items: list[str]) -> list[tuple[str, list[int]]]:
    """``["robustness=6,7", "core=4-10"]`` -> ``[("robustness", [6, 7]), ("core", [4, ..., 10])]``."""
    out = []
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name or not text:
            raise StudyError(f"--grid {item!r}: give NAME=SEEDS, e.g. robustness=6,7,8 or core=4-10")
        seeds: list[int] = []
        try:
            for piece in text.split(","):
                lo, dash, hi = piece.partition("-")
                seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
        except ValueError:
            raise StudyError(f"--grid {item!r}: seeds must be integers or ranges (4-10)") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise StudyError(f"--grid {item!r}: seeds must be distinct and at least one")
        if name in [n for n, _ in out]:
            raise StudyError(f"--grid {name} is given twice")
        out.append((name, seeds))
    return out


# ---------------------------------------------------------------------------------------------------- pack (here)

def _grid_tasks(grids: list[tuple[str, list[int]]], code: bytes, commit: str) -> list[str]:
    """The tasks of the grids as the packed commit's grid files list them (in order, each once)."""
    import yaml

    tasks: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(code)) as tar:
        for name, _ in grids:
            try:
                text = tar.extractfile(f"experiments/rapt/grids/{name}.yml").read().decode()
            except KeyError:
                raise StudyError(f"--grid {name}: commit {commit[:12]} has no experiments/rapt/grids/{name}.yml"
                                 ) from None
            tasks += [t for t in yaml.safe_load(text)["tasks"] if t not in tasks]
    return tasks


def _add_tree(tar: tarfile.TarFile, folder: Path, arcname: str) -> None:
    """A folder's files (links followed, caches left out) under ``arcname``, in a fixed order."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            tar.add(path.resolve(), f"{arcname}/{path.relative_to(folder).as_posix()}", recursive=False)


def pack(out: Path, commit: str, grids: list[tuple[str, list[int]]], glue_dir: Path, robustness_dir: Path,
         model: str | None, part_mib: float) -> dict:
    """Write ``out``/part<i>/ (a part of the archive and the manifest) for each part, replacing the parts of an
    earlier pack only once every new one is written; returns the manifest."""
    import submitit

    from data_utils.task_def import load_task_defs
    from mt_dnn.model import resolve_model

    if not part_mib > 0:
        raise StudyError(f"--part_mib {part_mib}: must be positive")
    try:
        full = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{commit}^{{commit}}"],
                              capture_output=True, text=True, check=True).stdout.strip()
        code = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", full], capture_output=True,
                              check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise StudyError(f"--commit {commit}: not a commit of {REPO}") from None
    encoder = Path(resolve_model(model))
    if not (encoder / "config.json").is_file():
        raise StudyError(f"{encoder}: not an encoder folder (no config.json); --model must be a local folder")
    tasks = _grid_tasks(grids, code, full)
    defs = load_task_defs()
    unknown = [t for t in tasks if t not in defs]
    if unknown:
        raise StudyError(f"the grids' tasks {', '.join(unknown)} are not in data_utils/glue_tasks.yml")
    folders = sorted({defs[t].data_dir for t in tasks})
    missing = [f for f in folders if not (glue_dir / f).is_dir()]
    if missing:
        raise StudyError(f"{glue_dir}: no {', '.join(missing)} folder (the grids' tasks: {', '.join(tasks)})")
    adv = robustness_dir / "dev.json"
    if not adv.is_file():
        raise StudyError(f"{adv}: no such file (the robustness sets; --robustness_dir)")
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        whole = staging / ARCHIVE
        with tarfile.open(whole, "w:gz", compresslevel=6) as tar:
            info = tarfile.TarInfo("code.tar")
            info.size = len(code)
            tar.addfile(info, io.BytesIO(code))
            _add_tree(tar, encoder, "encoder")
            for f in folders:
                _add_tree(tar, glue_dir / f, f"glue_data/{f}")
            tar.add(adv, "advglue/dev.json")
            _add_tree(tar, Path(submitit.__file__).parent, "site/submitit")
        size = whole.stat().st_size
        count = -(-size // int(part_mib * (1 << 20)))
        part = -(-size // count)  # parts of about equal size
        parts = []
        with open(whole, "rb") as f:
            for i in range(1, count + 1):
                data = f.read(part)
                parts.append({"name": f"{ARCHIVE}.part{i}", "bytes": len(data),
                              "sha256": hashlib.sha256(data).hexdigest()})
                (staging / f"part{i}").mkdir()
                atomic.write_bytes(staging / f"part{i}" / parts[-1]["name"], data)
        manifest = {"commit": full, "grids": [f"{n}={','.join(map(str, s))}" for n, s in grids], "tasks": tasks,
                    "glue_folders": folders, "encoder": str(encoder), "sha256": sha256_file(whole), "bytes": size,
                    "parts": parts, "made": time.strftime("%Y-%m-%d %H:%M:%S")}
        for i in range(1, count + 1):
            atomic.write_json(staging / f"part{i}" / "manifest.json", manifest, indent=1)
        for old in out.glob("part*"):
            shutil.rmtree(old)
        for i in range(1, count + 1):
            (staging / f"part{i}").rename(out / f"part{i}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# ------------------------------------------------------------------------------------------ stage and run (there)

def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise StudyError(f"{path}: no such file (a part folder written by `pack`)")
    return json.loads(path.read_text())


def stage(part_folder: Path, work: Path) -> list[str]:
    """Check the part folder's part against its manifest and copy both into ``work``; returns the parts still
    missing there. A work folder holding another pack's parts is emptied first."""
    manifest = _manifest(part_folder)
    files = [p for p in manifest["parts"] if (part_folder / p["name"]).is_file()]
    if len(files) != 1:
        raise StudyError(f"{part_folder}: holds {len(files)} of the manifest's parts; expected one")
    mine = files[0]
    if sha256_file(part_folder / mine["name"]) != mine["sha256"]:
        raise StudyError(f"{part_folder / mine['name']}: its SHA-256 is not the manifest's (damaged on the way?)")
    if (work / "manifest.json").is_file() and _manifest(work)["sha256"] != manifest["sha256"]:
        logger.info("%s held another pack's parts; emptied", work)
        shutil.rmtree(work)
    (work / "parts").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(part_folder / mine["name"], work / "parts" / mine["name"])
    atomic.write_json(work / "manifest.json", manifest, indent=1)
    return [p["name"] for p in manifest["parts"] if not (work / "parts" / p["name"]).is_file()]


def unpack(work: Path) -> tuple[dict, Path]:
    """Join the staged parts, check the whole, unpack it (and the code) into ``work``/unpacked; returns
    (manifest, unpacked folder)."""
    if not (work / "manifest.json").is_file():
        raise StudyError(f"{work}: nothing staged here (stage every part first, on this machine)")
    manifest = _manifest(work)
    missing = [p["name"] for p in manifest["parts"] if not (work / "parts" / p["name"]).is_file()]
    if missing:
        raise StudyError(f"{work}: {', '.join(missing)} not staged on this machine (stage every part on the same "
                         "machine, each call right after the last, before it is given back)")
    whole = work / ARCHIVE
    with atomic.atomic_open(whole, "wb", encoding=None) as out:
        for p in manifest["parts"]:
            with open(work / "parts" / p["name"], "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
    if sha256_file(whole) != manifest["sha256"]:
        raise StudyError(f"{whole}: the joined parts' SHA-256 is not the manifest's; stage the parts again")
    target = work / "unpacked"
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(whole) as tar:
        tar.extractall(target, filter="data")
    with tarfile.open(target / "code.tar") as tar:
        tar.extractall(target / "code", filter="data")
    whole.unlink()
    return manifest, target


def write_grids(grids: list[tuple[str, list[int]]], unpacked: Path, smoke: bool, packed_tasks: list[str]) -> list[Path]:
    """Each grid of the packed code with its seeds replaced and ``tf32: false``; with ``smoke`` its first task and
    first two methods, 2 steps on 64 rows on the CPU."""
    import yaml

    paths = []
    for name, seeds in grids:
        src = unpacked / "code" / "experiments" / "rapt" / "grids" / f"{name}.yml"
        if not src.is_file():
            raise StudyError(f"{src}: no such grid in the packed code")
        grid = yaml.safe_load(src.read_text())
        absent = [t for t in grid["tasks"] if t not in packed_tasks]
        if absent:
            raise StudyError(f"--grid {name}: its tasks {', '.join(absent)} were not packed (packed: "
                             f"{', '.join(packed_tasks)})")
        own = [m for m, flags in grid["methods"].items() if isinstance(flags, dict) and "seeds" in flags]
        if own:
            raise StudyError(f"--grid {name}: methods {', '.join(own)} have seeds of their own, which --grid's "
                             "seeds would not replace")
        grid["seeds"] = seeds
        grid.setdefault("flags", {})["tf32"] = False
        if smoke:
            grid["tasks"] = grid["tasks"][:1]
            grid["methods"] = dict(list(grid["methods"].items())[:2])
            grid.pop("best_of", None)
            grid["flags"].update(max_steps=2, max_train_samples=64, device="cpu", batch_size=8)
            grid["task_flags"] = {}
        path = unpacked / "grids" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, yaml.safe_dump(grid, sort_keys=False))
        paths.append(path)
    return paths


@dataclass
class Cell:
    """One run folder and the grids that plan it (a cell that two grids share, same task, method name and flags,
    is one folder and runs once)."""

    grids: list[str]
    folder: Path
    argv: list[str]
    state: str = "waiting"  # waiting, running, done, failed, stopped
    started: float = 0.0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.folder.parent.parent.name}/{self.folder.parent.name}/{self.folder.name}"


LIST_FOLDERS = ("import sys; from pathlib import Path; from experiments.rapt.grid import load_grid, plan_runs; "
                "print('\\n'.join(str(r.folder) for r in plan_runs(load_grid(sys.argv[1]), Path(sys.argv[2]), "
                "sys.argv[3], sys.argv[4])))")


def members(grid_files: list[Path], unpacked: Path, runs: Path, env: dict) -> dict[str, list[str]]:
    """Every run folder of each grid, finished or not, as the packed commit's grid code plans it: which grids'
    archives a folder belongs to, also when an earlier run on this machine finished it."""
    out: dict[str, list[str]] = {}
    for path in grid_files:
        got = subprocess.run([sys.executable, "-c", LIST_FOLDERS, str(path), str(runs), str(unpacked / "encoder"),
                              str(unpacked / "glue_data")], cwd=unpacked / "code", env=env, capture_output=True,
                             text=True)
        if got.returncode != 0:
            raise StudyError(f"{path}: the packed grid code could not plan it: "
                             f"{(got.stderr.strip().splitlines() or ['?'])[-1]}")
        for folder in filter(None, got.stdout.splitlines()):
            out.setdefault(folder, []).append(path.stem)
    return out


def plan(grid_files: list[Path], unpacked: Path, runs: Path, env: dict) -> list[Cell]:
    """Every cell of the grids that is neither finished nor running, in plan order, with the command the packed
    campaign builds for it; all grids share the folder ``runs``, so a cell two grids share is planned once."""
    cells: dict[Path, Cell] = {}
    for path in grid_files:
        got = subprocess.run([sys.executable, "-m", "experiments.rapt.campaign", "--grid", str(path), "--root",
                              str(runs), "--glue_dir", str(unpacked / "glue_data"), "--model",
                              str(unpacked / "encoder"), "--print_commands"],
                             cwd=unpacked / "code", env=env, capture_output=True, text=True)
        if got.returncode != 0:
            raise StudyError(f"{path}: the packed campaign could not plan it: "
                             f"{(got.stderr.strip().splitlines() or ['?'])[-1]}")
        for line in got.stdout.splitlines():
            if "mt_dnn.train" not in line:
                continue
            argv = shlex.split(line)
            folder = Path(argv[argv.index("--output_dir") + 1])
            if folder in cells:
                cells[folder].grids.append(path.stem)
            else:
                cells[folder] = Cell([path.stem], folder, argv)
    return list(cells.values())


def run_cells(cells: list[Cell], jobs: int, deadline: float, env: dict, cwd: Path, log, on_done) -> None:
    """Run the cells ``jobs`` at a time in order, calling ``on_done(cell)`` as each ends; at ``deadline`` kill the
    running ones (a checkpoint would be lost with the machine anyway) and start no more."""
    waiting = list(cells)
    running: list[Cell] = []
    try:
        _loop(waiting, running, jobs, deadline, env, cwd, log, on_done)
    except BaseException:  # an error here (or Ctrl-C) must not leave trainings running past the call
        for cell in running:
            cell.process.kill()
            cell.process.wait()
            cell.state = "stopped"
        raise


def _loop(waiting: list[Cell], running: list[Cell], jobs: int, deadline: float, env: dict, cwd: Path, log,
          on_done) -> None:
    while waiting or running:
        for cell in list(running):
            rc = cell.process.poll()
            if rc is not None:
                running.remove(cell)
                cell.state = "done" if rc == 0 else "failed"
                log(f"{cell.state} {cell.label} ({time.time() - cell.started:.0f} s, rc {rc})")
                on_done(cell)
        if time.time() >= deadline:
            for cell in running:
                cell.process.kill()
            for cell in running:
                cell.process.wait()
                cell.state = "stopped"
                log(f"stopped {cell.label} at the deadline")
            return
        while waiting and len(running) < jobs:
            cell = waiting.pop(0)
            with open(cell.folder / "campaign.out", "a") as out:  # where the campaign's own jobs write it too
                cell.process = subprocess.Popen(cell.argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
            cell.state, cell.started = "running", time.time()
            running.append(cell)
            log(f"start {cell.label}")
        if running:
            time.sleep(1.0)


def device_name() -> str:
    """This machine's first GPU as run records name it (``cuda (<GPU name>)``), else ``cpu``."""
    import torch

    from mt_dnn.runtime import device_label

    return device_label(torch.device("cuda", 0)) if torch.cuda.is_available() else "cpu"


class Results:
    """What goes back in ``out``, kept up to date as cells finish, so a call cut off early still returns them:
    per grid an archive of its finished cells (those of earlier runs on this machine too), the summary, and at the
    end every run's small files."""

    def __init__(self, out: Path, runs: Path, summary: dict, log):
        self.out, self.runs, self.summary, self.log = out, runs, summary, log
        self.book = runs / "cells.json"  # run folder -> its grids, over every run on this machine
        self.grids_of: dict[str, list[str]] = json.loads(self.book.read_text()) if self.book.is_file() else {}

    def record(self, grids_of: dict[str, list[str]]) -> None:
        """Add which grids each run folder belongs to (``members``) to the book."""
        for folder, grids in grids_of.items():
            self.grids_of[folder] = sorted(set(self.grids_of.get(folder, [])) | set(grids))
        atomic.write_json(self.book, self.grids_of)

    def archive(self, folders: list[str]) -> None:
        """Add the finished ones of ``folders`` to their grids' archives, one folder at a time (an error is logged,
        not fatal: the other cells' results still go back)."""
        from experiments.rapt.archive import add_runs
        from mt_dnn.run_folder import is_finished

        setting = (f"on {self.summary['device']}, {self.summary['jobs']} trainings side by side, full fp32 (tf32 "
                   f"off), commit {self.summary['commit'][:7]} (experiments.rapt.gpu_study"
                   f"{' --cpu_smoke' if self.summary['smoke'] else ''})")
        for folder in folders:
            grids = [g for g in self.grids_of.get(folder, []) if g in self.summary["grids"]]
            if not grids or not is_finished(Path(folder)):
                continue
            for grid in grids:
                try:
                    for line in add_runs(self.out / f"archive_{grid}.json", [folder], f"{grid}.yml {setting}",
                                         new_only=True):
                        if not line.startswith("skipped"):
                            self.log(line)
                except Exception as exc:  # noqa: BLE001 - one bad folder must not cost the rest
                    self.log(f"archive_{grid}.json: {folder} not added: {exc}")

    def write_summary(self, cells: list[Cell], start: float) -> None:
        for grid, entry in self.summary["grids"].items():
            mine = [c for c in cells if grid in c.grids]
            entry.update(cells=len(mine), **{s: [c.label for c in mine if c.state == s]
                                             for s in ("done", "failed", "stopped", "waiting")})
        self.summary["seconds"] = round(time.time() - start, 1)
        atomic.write_json(self.out / "gpu_study.json", self.summary, indent=1)

    def pack_runs(self) -> None:
        """Every run's flags, config, metrics and log (a failed run's output too) in runs.tar.gz."""
        with atomic.atomic_path(self.out / "runs.tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
            for folder in map(Path, sorted(self.grids_of)):
                for name in ("flags.json", "config.json", "metrics.jsonl", "train.log", "campaign.out"):
                    if (folder / name).is_file():
                        tar.add(folder / name, f"{folder.relative_to(self.runs).as_posix()}/{name}")


def run(work: Path, out: Path, grids: list[tuple[str, list[int]]] | None, seconds: float, jobs: int | None,
        smoke: bool) -> dict:
    """Unpack the staged parts and run the grids' unfinished cells until the time is spent; the results go to
    ``out`` as they come. Run folders stay in ``work``/runs while the machine does: a later run continues them."""
    start = time.time()
    work, out = work.resolve(), out.resolve()  # the campaign runs from the unpacked code, not from here
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "gpu_study.log", "a")

    def log(line: str) -> None:
        text = f"{time.strftime('%H:%M:%S')} {line}"
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    manifest, unpacked = unpack(work)
    grids = [(name, seeds[:1] if smoke else seeds) for name, seeds in grids or parse_grids(manifest["grids"])]
    device = "cpu" if smoke else device_name()
    if not smoke and device == "cpu":
        raise StudyError("no CUDA device here; `run --cpu_smoke` checks the chain on a CPU")
    jobs = jobs or (2 if smoke else max(1, min(12, (os.cpu_count() or 2) - 2)))
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    path = [str(unpacked / "site"), str(unpacked / "code"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path),
           "ROBUSTNESS_DIR": str(unpacked / "advglue"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MT_DNN_NO_TQDM": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false"}
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    summary = {"commit": manifest["commit"], "device": device, "jobs": jobs, "smoke": smoke,
               "grids": {name: {"seeds": seeds} for name, seeds in grids}}
    try:
        import torch
        import transformers

        summary["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    except ImportError:
        pass
    results = Results(out, runs, summary, log)
    cells: list[Cell] = []
    try:
        grid_files = write_grids(grids, unpacked, smoke, manifest["tasks"])
        results.record(members(grid_files, unpacked, runs, env))
        results.archive(sorted(results.grids_of))  # cells an earlier run on this machine finished
        cells = plan(grid_files, unpacked, runs, env)
        log(f"commit {manifest['commit'][:12]}, {device}, {len(cells)} cells to run, {jobs} at a time, "
            f"{threads} thread(s) each")

        def done(cell: Cell) -> None:
            try:
                if cell.state == "done":  # its weights and checkpoint are only disk here: its records go back
                    for name in ("checkpoint", "checkpoint.old", "best"):
                        shutil.rmtree(cell.folder / name, ignore_errors=True)
                    results.archive([str(cell.folder)])
                results.write_summary(cells, start)
            except Exception as exc:  # noqa: BLE001 - the other trainings go on
                log(f"after {cell.label}: {exc}")

        run_cells(cells, jobs, start + seconds - RESERVE_S, env, unpacked / "code", log, done)
    finally:  # each step on its own: an error in one must neither hide the run's error nor skip the others
        for step in (lambda: results.archive(sorted(results.grids_of)), lambda: results.write_summary(cells, start),
                     results.pack_runs):
            try:
                step()
            except Exception as exc:  # noqa: BLE001
                log(f"at the end: {exc}")
        counts = {s: sum(c.state == s for c in cells) for s in ("done", "failed", "stopped", "waiting")}
        log(f"{counts['done']} done, {counts['failed']} failed, {counts['stopped']} stopped, {counts['waiting']} "
            f"not started; {summary.get('seconds', time.time() - start):.0f} s")
        log_file.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.rapt.gpu_study", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    pk = sub.add_parser("pack", help="here: split what the runs need into parts that fit one upload each")
    pk.add_argument("--commit", required=True, help="the commit whose code every run trains with")
    pk.add_argument("--grid", action="append", metavar="NAME=SEEDS",
                    help=f"a grid of experiments/rapt/grids and its seeds (repeatable; default: "
                         f"{' '.join(DEFAULT_GRIDS)})")
    glue = os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "glue_data"))
    pk.add_argument("--glue_dir", type=Path, default=Path(glue), help="GLUE folder (default: $GLUE_DIR)")
    pk.add_argument("--robustness_dir", type=Path, default=None,
                    help="folder of AdvGLUE's dev.json (default: $ROBUSTNESS_DIR, else advglue beside the GLUE "
                         "folder)")
    pk.add_argument("--model", help="encoder folder (default: the packaged all-MiniLM-L6-v2)")
    pk.add_argument("--out", type=Path, default=PACK, help=f"default: {PACK.relative_to(REPO)}")
    pk.add_argument("--part_mib", type=float, default=56.0,
                    help="largest part in MiB (one upload: 64 MiB with the working tree)")
    st = sub.add_parser("stage", help="there: check one part and keep it in --work until the run")
    st.add_argument("part", type=Path, help="a part folder written by pack")
    st.add_argument("--work", type=Path, default=WORK)
    rn = sub.add_parser("run", help="there: unpack the staged parts and run the grids")
    rn.add_argument("--work", type=Path, default=WORK)
    rn.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "runs" / "gpu_study_out")))
    rn.add_argument("--grid", action="append", metavar="NAME=SEEDS",
                    help="only these grids and seeds (default: those packed)")
    rn.add_argument("--seconds", type=float, default=540.0,
                    help=f"the whole run's time; trainings start until {RESERVE_S:.0f} s before it ends")
    rn.add_argument("--jobs", type=int, help="trainings side by side (default: 12 on a GPU, or the cores less 2)")
    rn.add_argument("--cpu_smoke", action="store_true",
                    help="the first task and two methods of each grid, first seed, 2 steps on the CPU")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if a.what == "pack":
            robust = a.robustness_dir or Path(os.environ.get("ROBUSTNESS_DIR", a.glue_dir.parent / "advglue"))
            m = pack(a.out, a.commit, parse_grids(a.grid or list(DEFAULT_GRIDS)), a.glue_dir, robust, a.model,
                     a.part_mib)
            print(f"{len(m['parts'])} parts of {m['bytes'] / (1 << 20):.1f} MiB in all under {a.out} (commit "
                  f"{m['commit'][:12]}; tasks {', '.join(m['tasks'])}). On the device machine, one call each, in "
                  "a row:")
            for i in range(1, len(m["parts"]) + 1):
                rel = (a.out / f"part{i}").resolve()
                rel = rel.relative_to(REPO) if rel.is_relative_to(REPO) else rel
                tail = " && python3 -m experiments.rapt.gpu_study run --out $OUT" if i == len(m["parts"]) else ""
                print(f"  carry [{rel}]: python3 -m experiments.rapt.gpu_study stage {rel}{tail}")
        elif a.what == "stage":
            left = stage(a.part, a.work)
            print(f"staged {a.part} in {a.work}; " + (f"still to stage: {', '.join(left)}" if left else
                                                       "every part is staged"))
        else:
            if a.jobs is not None and a.jobs < 1:
                raise StudyError(f"--jobs {a.jobs}: must be at least 1")
            if a.seconds <= RESERVE_S:
                raise StudyError(f"--seconds {a.seconds:g}: must exceed the {RESERVE_S:.0f} s kept for the ending")
            summary = run(a.work, a.out, parse_grids(a.grid) if a.grid else None, a.seconds, a.jobs, a.cpu_smoke)
            return 1 if any(g["failed"] for g in summary["grids"].values()) else 0
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
