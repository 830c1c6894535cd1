"""The fault suite's tools: real file systems (a tmpfs mount, else a loop-file ext4, else skip with the
reason), real `trainlab` processes, and waiting on what a store says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from trainlab.store import Store

TINY_YAML = "model: mlp\nwidth: 32\nbatch_size: 32\nmonitor_every: 0\nseed: 3\n"  # 113 updates per epoch


class Mount:
    """A small file system of our own at `path`: `fill()` leaves it with no free space, `free()` undoes it,
    `read_only(True/False)` remounts it."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        self.filler = path / ".filler"

    def fill(self) -> None:
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
            except OSError:
                pass
            try:  # the last few bytes too
                while True:
                    f.write(b"\0" * 512)
            except OSError:
                pass

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)], check=True,
                       capture_output=True)


def _try(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


@pytest.fixture
def small_fs():
    """A 16 MiB file system mounted on a fresh folder: tmpfs where root may mount, else a loop-file ext4."""
    root = Path(tempfile.mkdtemp(prefix="trainlab-fs-"))
    path = root / "mnt"
    path.mkdir()
    why = _try(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)])
    kind = "tmpfs"
    if why is not None:
        image = root / "fs.img"
        with open(image, "wb") as f:
            f.truncate(16 << 20)
        why2 = _try(["mkfs.ext4", "-q", str(image)]) or _try(["mount", "-o", "loop", str(image), str(path)])
        if why2 is not None:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"cannot mount a small file system here (tmpfs: {why}; loop file: {why2})")
        kind = "ext4"
    try:
        yield Mount(path, kind)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def trainlab(*args: str, **kw) -> subprocess.Popen:
    """`python -m trainlab ARGS` as a real process, stdout and stderr apart."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainlab", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """`trainlab ARGS` through `trainlab.cli.main` in this process: (exit status, stdout, stderr). For a
    command whose error line is the point (no signal, pipe or process group in play), without the seconds
    of a fresh interpreter importing torch."""
    from trainlab.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def wait_for(what, timeout: float = 120.0, every: float = 0.02):
    """Poll `what()` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"still waiting after {timeout} s")


def run_row(db: Path, run_id: int = 1) -> dict | None:
    """Run `run_id` of the store at `db`, or None while it does not exist."""
    if not db.exists():
        return None
    try:
        with Store(db) as store:
            runs = [r for r in store.runs(kind=None) if r["id"] == run_id]
    except Exception:
        return None
    return runs[0] if runs else None


def one_line_error(stderr: str) -> str:
    """The one `trainlab: error:` line of a command's stderr; fails on a traceback or more lines."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("trainlab: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]
