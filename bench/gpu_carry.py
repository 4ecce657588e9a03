"""Pack what a bare GPU machine needs for ``bench/gpu.sh`` into ``bench/out/gpu-carry/`` (git-ignored).

    python -m bench.gpu_carry        # here, before the device is asked for

``setup/``: wheels of the server's packages that the device image lacks (for its Python 3.12 on
x86-64, at the versions installed here) and this machine's ``wrk`` with its LuaJIT library.
``photos/``: the ``--photos`` smallest JPEGs of the val set (by bytes; real photos, unchanged).
The device tool moves at most 64 MiB per call, tracked files included (the shipped model alone is
~58 MB), so ``setup`` and ``photos`` travel in two calls: the first installs ``setup`` (kept on
the machine while it stays warm), the second carries ``photos`` and runs the benchmark. The sizes
are printed against the limit; the command ends non-zero when a call would not fit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

from bench import common

CARRY = common.OUT_DIR / "gpu-carry"
TRANSFER_LIMIT = 64 * 2**20
# Imported by the server but absent from the device image (KINDS.md lists what it holds).
DEVICE_MISSING = (
    "fastapi", "fastapi_offline", "starlette", "uvicorn", "httptools", "python-multipart", "pydantic",
    "pydantic_core", "pydantic-settings", "python-dotenv", "annotated-types", "annotated-doc",
    "typing-inspection", "platformdirs", "sniffio",
)  # fmt: skip
DEVICE_PYTHON = "3.12"


def tree_bytes() -> int:
    """Bytes of what every call moves: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=common.REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    paths = (common.REPO_ROOT / name.decode() for name in listed if name)
    return sum(path.stat().st_size for path in paths if path.is_file())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def download_wheels(target: Path) -> None:
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in DEVICE_MISSING]
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(target), "--only-binary=:all:",
         "--no-deps", "--python-version", DEVICE_PYTHON, "--implementation", "cp", "--abi",
         f"cp{DEVICE_PYTHON.replace('.', '')}", "--platform", "manylinux_2_17_x86_64",
         "--platform", "manylinux_2_28_x86_64", *pins],
        check=True,
    )  # fmt: skip


def copy_wrk(setup: Path) -> bool:
    """``wrk`` and the LuaJIT it links (the device image has neither); False without wrk here."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return False
    (setup / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(wrk, setup / "bin" / "wrk")
    linked = subprocess.run(["ldd", wrk], capture_output=True, text=True, check=True).stdout
    for line in linked.splitlines():
        if "libluajit" in line and "=>" in line:
            library = Path(line.split("=>")[1].split("(")[0].strip())
            (setup / "lib").mkdir(exist_ok=True)
            shutil.copy2(library.resolve(), setup / "lib" / library.name)
    return True


def smallest_photos(source: Path, count: int, target: Path) -> list[Path]:
    found = sorted(
        (path for path in source.rglob("*") if path.suffix.lower() in common.JPEG_SUFFIXES and path.is_file()),
        key=lambda path: (path.stat().st_size, path.name),
    )[:count]
    if len(found) < count:
        raise SystemExit(f"only {len(found)} JPEGs under {source}, {count} asked for")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in found:  # class folder kept in the name: the val set repeats file names across classes
        shutil.copy2(path, target / f"{path.parent.name}-{path.name}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_carry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=common.DEFAULT_IMAGES, help="the val photos")
    parser.add_argument("--photos", type=int, default=500)
    args = parser.parse_args(argv)
    setup = CARRY / "setup"
    shutil.rmtree(setup, ignore_errors=True)
    download_wheels(setup / "wheels")
    if not copy_wrk(setup):
        print("note: wrk is not installed here (apt-get install -y wrk): the device will use the Python client")
    smallest_photos(args.images, args.photos, CARRY / "photos")
    tree, fits = tree_bytes(), True
    for name, extra in (("setup", folder_bytes(setup)), ("photos", folder_bytes(CARRY / "photos"))):
        total = tree + extra
        fits &= total <= TRANSFER_LIMIT
        print(
            f"call carrying bench/out/gpu-carry/{name}: {total / 2**20:.1f} MiB "
            f"(tree {tree / 2**20:.1f} + {extra / 2**20:.1f}) of {TRANSFER_LIMIT / 2**20:.0f} MiB"
            + ("" if total <= TRANSFER_LIMIT else "  — TOO BIG")
        )
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
