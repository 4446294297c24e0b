"""Tests of data_utils.download_glue against a local HTTP server serving tiny GLUE-format archives."""
from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils.download_glue import (  # noqa: E402
    DownloadError, SOURCES, download_tasks, fetch, main, resolve_tasks)
from data_utils.task_def import ConfigError, TaskDef, dump_task_defs, load_task_defs  # noqa: E402

GLUE_DIR = Path(os.environ.get("GLUE_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "glue_data")))
COLA_URL = "/glue/data/CoLA.zip"


# ----------------------------------------------------------------------------------------------- local server

class GlueServer:
    """A local HTTP server: ``files`` maps URL paths to bytes; failures and cut-short bodies are scriptable."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_first: dict[str, int] = {}  # path -> how many requests answer 500 first
        self.cut_first: dict[str, int] = {}  # path -> the next response stops after this many bytes
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.glue = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        state: GlueServer = self.server.glue  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        if state.fail_first.get(self.path, 0) > 0:
            state.fail_first[self.path] -= 1
            self.send_error(500, "scripted failure")
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404, "no such file")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and state.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = state.cut_first.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = True


@pytest.fixture()
def server(monkeypatch) -> Iterator[GlueServer]:
    for name in ("no_proxy", "NO_PROXY"):  # urllib sends even 127.0.0.1 through a configured proxy otherwise
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    srv = GlueServer()
    yield srv
    srv.close()


# ----------------------------------------------------------------------------------------------- tiny GLUE data

@pytest.fixture(scope="module")
def real_tasks() -> dict[str, TaskDef]:
    return load_task_defs()


def with_rows(task: TaskDef, **rows: int) -> TaskDef:
    """A copy of ``task`` expecting other row counts (split name -> rows)."""
    splits = {k: dataclasses.replace(s, rows=rows[k]) for k, s in task.splits.items()}
    return dataclasses.replace(task, splits=splits)


@pytest.fixture(scope="module")
def tasks(real_tasks) -> dict[str, TaskDef]:
    """The GLUE tasks, with tiny row counts for the ones the tests serve."""
    return {**real_tasks,
            "cola": with_rows(real_tasks["cola"], train=3, dev=2, test=2),
            "mrpc": with_rows(real_tasks["mrpc"], train=3, dev=1, test=2),
            "ax": with_rows(real_tasks["ax"], test=3)}


def zip_bytes(members: dict[str, str | bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def cola_members(top: str = "CoLA", train: int = 3, dev: int = 2, test: int = 2) -> dict[str, str]:
    row = "gj04\t{label}\t\tSentence number {i}.\n"
    return {
        f"{top}/train.tsv": "".join(row.format(label=i % 2, i=i) for i in range(train)),
        f"{top}/dev.tsv": "".join(row.format(label=1, i=i) for i in range(dev)),
        f"{top}/test.tsv": "index\tsentence\n" + "".join(f"{i}\tTest sentence {i}.\n" for i in range(test)),
        f"{top}/original/raw/in_domain_train.tsv": "extra files are kept\n",
    }


@pytest.fixture(scope="module")
def cola_zip() -> bytes:
    return zip_bytes(cola_members())


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def assert_cola_installed(data_dir: Path) -> None:
    assert listing(data_dir) == ["CoLA", "CoLA/dev.tsv", "CoLA/original", "CoLA/original/raw",
                                 "CoLA/original/raw/in_domain_train.tsv", "CoLA/test.tsv", "CoLA/train.tsv"]
    assert (data_dir / "CoLA" / "test.tsv").read_text().splitlines()[1] == "0\tTest sentence 0."


# ----------------------------------------------------------------------------------------------- good archive

def test_good_archive_via_cli_with_task_def(server, tasks, cola_zip, tmp_path, capsys):
    server.files[COLA_URL] = cola_zip
    task_def = tmp_path / "tiny.yml"
    dump_task_defs([tasks["cola"]], task_def)  # --task_def overrides the row counts to the tiny ones
    data_dir = tmp_path / "glue"
    argv = ["--tasks", "cola", "--data_dir", str(data_dir), "--base_url", server.url, "--task_def", str(task_def)]
    assert main(argv) == 0
    assert_cola_installed(data_dir)  # no zip, .part or .tmp-* left
    assert server.requests == [(COLA_URL, None)]
    assert "downloaded cola" in capsys.readouterr().out
    assert main(argv) == 0  # present and valid: skipped, nothing fetched
    assert server.requests == [(COLA_URL, None)]
    assert "nothing (all present)" in capsys.readouterr().out


def test_ax_single_file_and_aliases(server, tasks, cola_zip, tmp_path):
    server.files[COLA_URL] = cola_zip
    server.files["/glue/data/AX.tsv"] = ("index\tsentence1\tsentence2\n"
                                         + "".join(f"{i}\tA {i}.\tB {i}.\n" for i in range(3))).encode()
    done = download_tasks("CoLA, diagnostic", tmp_path, tasks=tasks, base_url=server.url + "/")
    assert done == ["cola", "ax"]
    assert (tmp_path / "diagnostic" / "diagnostic.tsv").read_bytes() == server.files["/glue/data/AX.tsv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CoLA", "diagnostic"]


def test_resolve_tasks(real_tasks):
    assert [t.name for t in resolve_tasks("all", real_tasks)] == list(SOURCES)
    assert len(SOURCES) == 10 and set(SOURCES) == set(real_tasks)
    assert [t.name for t in resolve_tasks("SST,sts-b,mrpc,sst-2", real_tasks)] == ["sst", "stsb", "mrpc"]
    with pytest.raises(ConfigError, match="unknown task 'squad'"):
        resolve_tasks("cola,squad", real_tasks)
    with pytest.raises(ConfigError):
        resolve_tasks(" , ", real_tasks)


# ----------------------------------------------------------------------------------------------- bad archives

@pytest.mark.parametrize("kind,message", [
    ("truncated", "CoLA.zip: not a valid zip archive"),
    ("crc_error", "CoLA.zip: corrupt archive (member CoLA/train.tsv fails its CRC check)"),
    ("wrong_rows", "CoLA/dev.tsv: 3 rows, the official file has 2"),
    ("missing_file", "CoLA/test.tsv: missing (task cola, split test)"),
    ("wrong_folder", "CoLA.zip: unpacks to ['cola_data'], expected a folder CoLA/"),
    ("unsafe_path", "CoLA.zip: unsafe member path '../evil.tsv'"),
    ("bad_label", "CoLA/train.tsv:1: unknown label '7'"),
])
def test_bad_archive_leaves_nothing(kind, message, server, tasks, cola_zip, tmp_path):
    if kind == "truncated":
        data = cola_zip[: len(cola_zip) // 2]
    elif kind == "crc_error":
        raw = bytearray(zip_bytes(cola_members(), compression=zipfile.ZIP_STORED))
        at = raw.index(b"Sentence number 1.")
        raw[at] = ord("X")
        data = bytes(raw)
    else:
        members = cola_members(top="cola_data" if kind == "wrong_folder" else "CoLA", dev=3 if kind == "wrong_rows" else 2)
        if kind == "missing_file":
            del members["CoLA/test.tsv"]
        elif kind == "unsafe_path":
            members["../evil.tsv"] = "x"
        elif kind == "bad_label":
            members["CoLA/train.tsv"] = members["CoLA/train.tsv"].replace("gj04\t0", "gj04\t7", 1)
        data = zip_bytes(members)
    server.files[COLA_URL] = data
    data_dir = tmp_path / "glue"
    with pytest.raises(DownloadError) as info:
        download_tasks("cola", data_dir, tasks=tasks, base_url=server.url, retries=0)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert listing(data_dir) == []  # no zip, no .part, no .tmp-CoLA, no CoLA/
    assert not (tmp_path / "evil.tsv").exists()


def test_cli_error_is_one_line_exit_1(server, tasks, cola_zip, tmp_path):
    server.files[COLA_URL] = cola_zip[:100]
    task_def = tmp_path / "tiny.yml"
    dump_task_defs([tasks["cola"]], task_def)
    result = subprocess.run(
        [sys.executable, "-m", "data_utils.download_glue", "--tasks", "cola", "--data_dir", str(tmp_path / "glue"),
         "--base_url", server.url, "--task_def", str(task_def), "--retries", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "CoLA.zip: not a valid zip archive" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert listing(tmp_path / "glue") == []


def test_cli_unknown_task_exit_1(tmp_path, capsys):
    assert main(["--tasks", "cola,nope", "--data_dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: unknown task 'nope'")


def test_existing_invalid_folder_is_not_overwritten(server, tasks, cola_zip, tmp_path):
    server.files[COLA_URL] = cola_zip
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "mine.txt").write_text("keep")
    with pytest.raises(DownloadError, match="exists but is not a complete copy of cola"):
        download_tasks("cola", tmp_path, tasks=tasks, base_url=server.url)
    assert listing(tmp_path) == ["CoLA", "CoLA/mine.txt"] and server.requests == []


# ----------------------------------------------------------------------------------------------- retries

def test_500_twice_then_success(server, tasks, cola_zip, tmp_path):
    server.files[COLA_URL] = cola_zip
    server.fail_first[COLA_URL] = 2
    assert download_tasks("cola", tmp_path, tasks=tasks, base_url=server.url, retries=3, backoff=0.01) == ["cola"]
    assert server.requests == [(COLA_URL, None)] * 3
    assert_cola_installed(tmp_path)


def test_500_forever_gives_up(server, tasks, cola_zip, tmp_path):
    server.files[COLA_URL] = cola_zip
    server.fail_first[COLA_URL] = 100
    with pytest.raises(DownloadError, match=r"HTTP 500 .*gave up after 3 tries \(nothing was downloaded; run "
                                            r"again\)$"):
        download_tasks("cola", tmp_path, tasks=tasks, base_url=server.url, retries=2, backoff=0.01)
    assert len(server.requests) == 3 and listing(tmp_path) == []
    # with part of the file kept, the message says where the next run resumes from
    (tmp_path / "CoLA.zip.part").write_bytes(cola_zip[:150])
    with pytest.raises(DownloadError) as err:
        download_tasks("cola", tmp_path, tasks=tasks, base_url=server.url, retries=0, backoff=0.01)
    assert str(err.value).endswith(f"gave up after 1 tries (run again to resume from {tmp_path / 'CoLA.zip.part'})")


def test_404_is_not_retried(server, tasks, tmp_path):
    with pytest.raises(DownloadError, match="CoLA.zip: HTTP 404"):
        download_tasks("cola", tmp_path, tasks=tasks, base_url=server.url, retries=3, backoff=0.01)
    assert len(server.requests) == 1


def test_connection_refused_is_retried(tasks, tmp_path):
    srv = GlueServer()
    url = srv.url
    srv.close()  # nothing listens on that port any more
    with pytest.raises(DownloadError, match="connection failed.*gave up after 2 tries"):
        download_tasks("cola", tmp_path, tasks=tasks, base_url=url, retries=1, backoff=0.01, timeout=5)


# ----------------------------------------------------------------------------------------------- resume

def test_resume_from_part_file_with_range(server, tasks, cola_zip, tmp_path):
    server.files[COLA_URL] = cola_zip
    (tmp_path / "CoLA.zip.part").write_bytes(cola_zip[:150])
    download_tasks("cola", tmp_path, tasks=tasks, base_url=server.url)
    assert server.requests == [(COLA_URL, "bytes=150-")]
    assert_cola_installed(tmp_path)


def test_restart_when_server_ignores_range(server, tasks, cola_zip, tmp_path):
    server.files[COLA_URL] = cola_zip
    server.honour_range = False
    garbage = b"garbage that must not stay in front of the archive"
    (tmp_path / "CoLA.zip.part").write_bytes(garbage)
    download_tasks("cola", tmp_path, tasks=tasks, base_url=server.url)
    assert server.requests == [(COLA_URL, f"bytes={len(garbage)}-")]  # asked to resume, got 200: started over
    assert_cola_installed(tmp_path)


def test_cut_connection_resumes_with_range(server, tasks, cola_zip, tmp_path):
    server.files[COLA_URL] = cola_zip
    server.cut_first[COLA_URL] = 200
    download_tasks("cola", tmp_path, tasks=tasks, base_url=server.url, retries=2, backoff=0.01)
    assert server.requests == [(COLA_URL, None), (COLA_URL, "bytes=200-")]
    assert_cola_installed(tmp_path)


def test_fetch_complete_part_file(server, tmp_path):
    server.files["/f.bin"] = b"0123456789"
    (tmp_path / "f.bin.part").write_bytes(b"0123456789")  # finished, but never renamed
    assert fetch(server.url + "/f.bin", tmp_path / "f.bin").read_bytes() == b"0123456789"
    assert server.requests == [("/f.bin", "bytes=10-")] and listing(tmp_path) == ["f.bin"]


# ----------------------------------------------------------------------------------------------- MRPC

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"


def serve_mrpc(server: GlueServer, train: bytes, test: bytes, dev_ids: bytes) -> None:
    server.files["/senteval/senteval_data/msr_paraphrase_train.txt"] = train
    server.files["/senteval/senteval_data/msr_paraphrase_test.txt"] = test
    server.files["/glue/data/mrpc_dev_ids.tsv"] = dev_ids


def test_mrpc_split_tiny(server, tasks, tmp_path):
    train = "\r\n".join([MRPC_HEADER, "1\t10\t11\tA one.\tB one.", "0\t20\t21\tA two.\tB two. ",
                         "1\t30\t31\tA three.\tB three.", "0\t40\t41\tA four.\tB four."]) + "\r\n"
    test = "\n".join([MRPC_HEADER, "1\t50\t51\tT one.\tU one.", "0\t60\t61\tT two.\tU two."]) + "\n"
    serve_mrpc(server, train.encode(), test.encode(), b"20\t21\n")
    assert download_tasks("mrpc", tmp_path, tasks=tasks, base_url=server.url) == ["mrpc"]
    mrpc = tmp_path / "MRPC"
    assert sorted(p.name for p in mrpc.iterdir()) == ["dev.tsv", "dev_ids.tsv", "msr_paraphrase_test.txt",
                                                      "msr_paraphrase_train.txt", "test.tsv", "train.tsv"]
    assert (mrpc / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t#1 ID")
    assert (mrpc / "dev.tsv").read_text(encoding="utf-8") == MRPC_HEADER + "\n0\t20\t21\tA two.\tB two.\n"
    assert (mrpc / "train.tsv").read_text(encoding="utf-8").splitlines()[1:] == [
        "1\t10\t11\tA one.\tB one.", "1\t30\t31\tA three.\tB three.", "0\t40\t41\tA four.\tB four."]
    assert (mrpc / "test.tsv").read_text(encoding="utf-8") == (
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t50\t51\tT one.\tU one.\n1\t60\t61\tT two.\tU two.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MRPC"]


def test_mrpc_dev_ids_must_all_be_found(server, tasks, tmp_path):
    train = "\n".join([MRPC_HEADER, "1\t10\t11\tA.\tB.", "0\t20\t21\tA.\tB.", "1\t30\t31\tA.\tB."]) + "\n"
    test = "\n".join([MRPC_HEADER, "1\t50\t51\tT.\tU.", "0\t60\t61\tT.\tU."]) + "\n"
    serve_mrpc(server, train.encode(), test.encode(), b"20\t21\n99\t98\n")
    with pytest.raises(DownloadError, match="2 dev pairs but 1 found"):
        download_tasks("mrpc", tmp_path, tasks=tasks, base_url=server.url)
    assert listing(tmp_path) == []


@pytest.mark.skipif(not (GLUE_DIR / "MRPC" / "msr_paraphrase_train.txt").is_file(),
                    reason=f"real MRPC files not found in {GLUE_DIR} (set GLUE_DIR)")
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_mrpc_split_matches_official_files(line_end, server, real_tasks, tmp_path):
    src = GLUE_DIR / "MRPC"
    serve_mrpc(server, *((src / n).read_bytes().replace(b"\n", line_end)
                         for n in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "dev_ids.tsv")))
    assert download_tasks("mrpc", tmp_path, tasks=real_tasks, base_url=server.url) == ["mrpc"]
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert (tmp_path / "MRPC" / name).read_bytes() == (src / name).read_bytes(), name
