"""Checkpoints that cannot be written: a disk that fills up mid-run, a folder made read-only mid-run, a runs
folder that is read-only or a file from the start. The run ends `failed` at the next checkpoint with one
line naming the path and the OS error; the last good checkpoint stays loadable; the store records the
best epoch of the weights actually on disk."""

from __future__ import annotations

import errno

import pytest
import torch

from conftest import TINY_YAML, in_process, one_line_error
from trainlab.checkpoint import CheckpointWriteError, load_checkpoint
from trainlab.config import Config
from trainlab.store import Store
from trainlab.tasks import load_task
from trainlab.train import fit

TINY = dict(model="mlp", width=32, batch_size=32, monitor_every=0, seed=3)


class _At:
    """Calls `action()` at the end of epoch `epoch` (1-based), before that epoch's checkpoint is written."""

    def __init__(self, epoch: int, action):
        self.epoch, self.action = epoch, action

    def on_step_end(self, state):
        return None

    def on_epoch_end(self, state):
        if state.epoch + 1 == self.epoch:
            self.action()

    def on_fit_end(self, state):
        return None


@pytest.fixture(scope="module")
def task():
    return load_task(Config(**TINY))


@pytest.mark.parametrize("fault", ["disk-full", "read-only"])
def test_a_checkpoint_that_cannot_be_written_fails_the_run_at_the_next_one(task, tmp_path, small_fs, fault):
    store = Store(tmp_path / "t.db")
    action = small_fs.fill if fault == "disk-full" else small_fs.read_only
    with pytest.raises(CheckpointWriteError) as info:
        fit(task, Config(**TINY, epochs=8), store=store, runs_dir=small_fs.path, quiet=True,
            callbacks=[_At(3, action)])
    small_fs.read_only(False)
    small_fs.free()
    want = errno.ENOSPC if fault == "disk-full" else errno.EROFS
    assert info.value.errno == want
    message = str(info.value)
    assert "\n" not in message and str(small_fs.path / "run-1") in message
    assert ("No space left on device" if fault == "disk-full" else "Read-only file system") in message

    run = store.run(1)
    assert run["status"] == "failed" and run["reason"] == f"CheckpointWriteError: {message}"
    assert run["epochs"] <= 4, "noticed at the next checkpoint, not after the last epoch"
    last = load_checkpoint(small_fs.path / "run-1" / "last.pt")  # the last good one, intact
    best = load_checkpoint(small_fs.path / "run-1" / "best.pt")
    assert last["epoch"] == 2 and last["step"] == 2 * 113
    on_disk = run["summary"]["on_disk"]
    assert on_disk["last.pt"]["epoch"] == 2 and on_disk["last.pt"]["step"] == 226
    # the store's best epoch is the one whose weights are in best.pt
    assert run["best_epoch"] == best["early_stopping"]["best_epoch"] <= 2
    assert run["best_metric"] == best["early_stopping"]["best"]
    assert run["checkpoint"] == str(small_fs.path / "run-1" / "best.pt")
    # the rows stored stop where training stopped: nothing half-written
    loss = store.metrics(1, ["train/loss"])["train/loss"]["step"]
    assert loss == list(range(len(loss))) and len(loss) >= 3 * 113


def test_a_read_only_runs_folder_is_one_line_before_any_epoch(tmp_path, small_fs, capsys):
    small_fs.read_only()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_YAML + "epochs: 50\n")
    code, _, err = in_process(capsys, "train", str(cfg), "--db", str(tmp_path / "t.db"), "--runs-dir",
                              str(small_fs.path / "runs"), "--quiet")
    assert code == 2, err
    line = one_line_error(err)
    assert f"cannot write '{small_fs.path / 'runs'}" in line and "Read-only file system" in line
    run = Store(tmp_path / "t.db").run(1)
    assert run["status"] == "failed" and run["epochs"] == 0 and "Read-only file system" in run["reason"]


def test_runs_dir_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_YAML + "epochs: 50\n")
    code, _, err = in_process(capsys, "train", str(cfg), "--db", str(tmp_path / "t.db"), "--runs-dir",
                              str(tmp_path / "afile"), "--quiet")
    assert code == 2, err
    line = one_line_error(err)
    assert str(tmp_path / "afile") in line and ("Not a directory" in line or "File exists" in line), line
    assert (tmp_path / "afile").read_text() == "not a folder"
    assert Store(tmp_path / "t.db").run(1)["status"] == "failed"


def test_the_async_writer_reports_a_failed_write_at_the_next_save(tmp_path, small_fs):
    from trainlab.checkpoint import AsyncCheckpointer

    writer = AsyncCheckpointer()
    writer.save({"w": torch.zeros(10)}, small_fs.path / "a.pt", meta=1)
    writer.wait()
    small_fs.fill()
    writer.save({"w": torch.zeros(100_000)}, small_fs.path / "a.pt", meta=2)
    with pytest.raises(CheckpointWriteError, match=r"cannot write '.*a\.pt': \[Errno 28\] No space left"):
        writer.wait()
        writer.save({"w": torch.zeros(10)}, small_fs.path / "a.pt", meta=3)
    writer.close(raise_errors=False)
    small_fs.free()
    assert writer.landed == {str(small_fs.path / "a.pt"): 1}
    assert torch.equal(load_checkpoint(small_fs.path / "a.pt")["w"], torch.zeros(10))
    assert not [p for p in small_fs.path.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"
