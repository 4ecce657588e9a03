"""``alexnet-predict``, the installed console script, against a real server."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import RunningServer, free_port, make_image


def predict(server: RunningServer, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return predict_at(server.url, *args, stdin=stdin)


def alexnet_predict() -> str:
    script = Path(sys.executable).with_name("alexnet-predict")
    return str(script) if script.is_file() else shutil.which("alexnet-predict") or "alexnet-predict"


def predict_at(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [alexnet_predict(), "--url", url, *args],
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=300,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Images at three depths, in three formats, and a file that is not an image (skipped by extension)."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "top.jpg").write_bytes(make_image(1))
    (tmp_path / "a" / "mid.PNG").write_bytes(make_image(2, fmt="PNG"))
    (tmp_path / "a" / "b" / "deep.webp").write_bytes(make_image(3, fmt="WEBP"))
    (tmp_path / "a" / "b" / "deeper.jpeg").write_bytes(make_image(4))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_recursion_to_csv(fp32_server: RunningServer, tree: Path) -> None:
    done = predict(fp32_server, str(tree), "--format", "csv", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))  # stdout is only the CSV
    assert [row["path"] for row in rows] == [
        str(tree / "a" / "b" / "deep.webp"), str(tree / "a" / "b" / "deeper.jpeg"),
        str(tree / "a" / "mid.PNG"), str(tree / "top.jpg"),
    ]  # fmt: skip
    for row in rows:
        assert row["model"] == "random-catdog" and {row["label"], row["label_2"]} == {"cat", "dog"}
        assert float(row["probability"]) >= float(row["probability_2"]) and row["error"] == ""
        assert int(row["batch_size"]) >= 1
    assert "100%" in done.stderr  # more than 3 images: a progress bar on stderr
    assert "4 of 4 images classified, 0 failed" in done.stderr


def test_a_bad_file_fails_its_line_and_the_exit_status(fp32_server: RunningServer, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(make_image())
    bad.write_bytes(b"plain text")
    done = predict(fp32_server, str(good), str(bad), str(tmp_path / "missing.jpg"), "--format", "csv")
    assert done.returncode == 1
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(done.stdout))}
    assert set(rows) == {str(good), str(bad)}
    assert rows[str(good)]["label"] in ("cat", "dog") and rows[str(good)]["error"] == ""
    assert rows[str(bad)]["label"] == "" and rows[str(bad)]["error"].startswith("invalid_image: ")
    assert "missing.jpg: no such file or folder" in done.stderr
    assert "1 of 3 images classified, 2 failed" in done.stderr
    assert "100%" not in done.stderr  # a few files: no progress bar


def test_stdin_and_json_lines(fp32_server: RunningServer) -> None:
    done = predict(fp32_server, "-", "--format", "json", "--top-k", "2", stdin=make_image(5, fmt="PNG"))
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    record = json.loads(line)
    assert record["path"] == "-" and record["label"] in ("cat", "dog") and len(record["predictions"]) == 2


def test_table_is_one_line_per_image(fp32_server: RunningServer, tree: Path) -> None:
    done = predict(fp32_server, str(tree / "top.jpg"), str(tree / "a"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        str(tree / "top.jpg"), str(tree / "a" / "b" / "deep.webp"), str(tree / "a" / "b" / "deeper.jpeg"),
        str(tree / "a" / "mid.PNG"),
    ]  # fmt: skip
    assert all(line.split("\t")[1] in ("cat", "dog") for line in lines)


def test_server_error_for_every_image_is_reported(fp32_server: RunningServer, tree: Path) -> None:
    done = predict(fp32_server, str(tree / "top.jpg"), "--model", "nope")
    assert done.returncode == 1
    assert done.stdout.startswith(f"{tree / 'top.jpg'}\tERROR\tmodel_not_found: ")


def test_help_shows_each_default_once_and_no_key() -> None:
    done = subprocess.run(
        [alexnet_predict(), "--help"],
        env=os.environ | {"ALEXNET_API_KEY": "do-not-print-me"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "(default: None)" not in done.stdout and "do-not-print-me" not in done.stdout
    assert " ".join(done.stdout.split()).count("(default: the server's first)") == 1


def test_no_server_says_how_to_start_one(tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(make_image())
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = predict_at(url, str(photo))
    assert done.returncode == 1
    hint = f"alexnet-predict: no server answers at {url}: is the server running? start it with alexnet-serve"
    assert hint in done.stderr
    assert done.stderr.splitlines()[-1] == "0 of 1 images classified, 1 failed"  # no rate when none was


def test_missing_api_key_says_which_option(
    random_checkpoint: Path, start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = start_server(
        {"ALEXNET_CHECKPOINT": str(random_checkpoint), "ALEXNET_COMPILE": "false", "ALEXNET_API_KEYS": "k1"}
    )
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(make_image())
    done = predict(server, str(photo))
    assert done.returncode == 1
    assert "alexnet-predict: the server needs an API key: pass --api-key KEY or set ALEXNET_API_KEY" in done.stderr
    wrong = predict(server, str(photo), "--api-key", "nope")
    assert "alexnet-predict: the server refused the API key: check --api-key or ALEXNET_API_KEY" in wrong.stderr
    assert predict(server, str(photo), "--api-key", "k1").returncode == 0


class _Overloaded(BaseHTTPRequestHandler):
    """Every request: 429 ``overloaded`` with ``Retry-After: 0``, as a server that stays full answers."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"code": "overloaded", "message": "the model has taken on 128 images; retry shortly"}}'
        self.send_response(429)
        for name, value in (("Content-Type", "application/json"), ("Retry-After", "0")):
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def overloaded_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Overloaded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_overloaded_after_retries_says_what_to_lower(overloaded_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(make_image())
    done = predict_at(overloaded_url, str(photo))
    assert done.returncode == 1 and "overloaded" in done.stdout
    assert "alexnet-predict: the server stayed overloaded after retries: lower --concurrency" in done.stderr
