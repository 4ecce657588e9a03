"""``alexnet-predict``, the installed console script, against a real server."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer, make_image


def predict(server: RunningServer, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("alexnet-predict")
    command = [str(script) if script.is_file() else shutil.which("alexnet-predict") or "alexnet-predict"]
    return subprocess.run(
        [*command, "--url", server.url, *args],
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
