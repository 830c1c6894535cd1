"""TensorBoard: one event-file folder per run, written with TensorBoard's own event writer.

DIR/<study>/run-<id>-<name>/ holds each metric series as scalars under its own name (train/loss, val/acc,
lr, ratio/<layer>, ...), the hyperparameters for TensorBoard's HParams tab (the run's status as the
session's end status), the summary's numbers under summary/<key> at the last step, and a text entry
"status" with the status and reason. `tensorboard --logdir DIR` shows them. A resumed run goes on in the
same folder, in a new event file (see `TensorBoardLogger`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Sequence

from trainlab.export.base import need, run_label, scalars

__all__ = ["TensorBoardLogger", "SESSION_STATUS"]

# trainlab status -> the hparams plugin's session status (it has no "aborted": stopped and pruned are unknown there;
# the text entry "status" names them)
SESSION_STATUS = {"completed": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "diverged": "STATUS_FAILURE",
                  "stopped": "STATUS_UNKNOWN", "pruned": "STATUS_UNKNOWN", "lost": "STATUS_UNKNOWN",
                  "running": "STATUS_RUNNING"}
def hparams_metrics(run: dict[str, Any]) -> list[str]:
    """The HParams table's metric columns for `run`: the metric it is judged by (val/acc, or a regression's
    val/loss, or the task's own), the losses, the best value, and the test numbers its summary holds."""
    judged = (run.get("hparams") or {}).get("early_stop_metric") or "val/acc"
    tests = [f"summary/{k}" for k in scalars(run.get("summary")) if k.startswith("test/")]
    return list(dict.fromkeys([judged, "val/loss", "train/loss", "summary/best_metric", *tests]))


def _stamp(name: str) -> int:
    """The seconds in an event file's name (events.out.tfevents.<seconds>.<host>...), 0 if none."""
    part = name.split(".")[3] if name.count(".") >= 3 else ""
    return int(part) if part.isdigit() else 0


def _hparam_value(value: Any):
    """A number, string or bool as TensorBoard's hparams take them; anything else as JSON text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


class TensorBoardLogger:
    """Writes one run's event file under `root`/<study>/run-<id>-<name>/ (see the module's docstring).

    Written synchronously with TensorBoard's record writer (not its background-thread writer), so a write
    that fails (a full disk, a folder gone) raises to the caller, once, instead of in a thread. A resumed
    run (`resume_step` in `start`) adds a new event file to the same folder that opens with TensorBoard's
    restart marker at that step (what `torch.utils.tensorboard.SummaryWriter(purge_step=)` writes): readers
    drop whatever the stopped process wrote from that step on, so each step is shown once, in order."""

    fmt = "tensorboard"

    def __init__(self, root: str | Path, *, replace: bool = False):
        need("tensorboard", "tensorboard")
        self.root = Path(root)
        self.replace = replace
        self._writer = None
        self._last_step = 0
        self.where: str | None = None

    def start(self, run: dict[str, Any]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog, SourceMetadata
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.close()  # a logger may serve several runs, one after another (train --set seeds=K)
        folder = self.root / (run.get("study") or "no-study") / run_label(run)
        self.where = str(folder)
        if self.replace and folder.is_dir():  # an earlier export of this run: replaced, not doubled
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        earlier = sorted(folder.glob("events.out.tfevents.*"))
        resume = run.get("resume_step")
        resume = int(resume) if resume is not None and earlier else None
        self._last_step = max(0, resume - 1) if resume is not None else 0
        # TensorBoard reads a folder's event files in name order: this one must sort after those already there
        stamp = max([int(time.time())] + [_stamp(f.name) + 1 for f in earlier])
        name = f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}.trainlab"
        self._writer = RecordWriter(open(folder / name, "wb"))
        self._write(Event(wall_time=time.time(), step=resume or 0, file_version="brain.Event:2",
                          source_metadata=SourceMetadata(writer="trainlab")))
        if resume is not None:  # the restart marker: readers drop the events of steps >= resume_step
            self._write(Event(wall_time=time.time(), step=resume, session_log=SessionLog(status=SessionLog.START)))
        if not resume:  # a resume keeps the hparams written at step 0 (a resume at step 0 dropped them)
            self._write_hparams(run)
        self._writer.flush()

    def _write(self, event) -> None:
        self._writer.write(event.SerializeToString())

    def _event(self, step: int, values: list) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

    def log(self, rows: Sequence[tuple]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        for step, _epoch, key, value in rows:
            self._event(step, [Summary.Value(tag=key, simple_value=float(value))])
        if rows:
            self._last_step = max(self._last_step, int(rows[-1][0]))
        self._writer.flush()

    def finish(self, run: dict[str, Any]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=f"summary/{k}", simple_value=v) for k, v in scalars(run.get("summary")).items()]
        if run.get("best_metric") is not None:
            values.append(Summary.Value(tag="summary/best_metric", simple_value=float(run["best_metric"])))
        if values:
            self._event(self._last_step, values)
        status = run.get("status") or "completed"
        self._event(self._last_step, [self._text("status", status + (f": {run['reason']}" if run.get("reason") else ""))])
        if status != "running":  # an export of a run still training: a snapshot, its session not ended
            self._event(self._last_step, [self._session_end(status)])
        self.close()

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    # --- the hparams plugin's protos (what torch.utils.tensorboard writes, without torch) -------------

    def _write_hparams(self, run: dict[str, Any]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        hparams = {k: _hparam_value(v) for k, v in (run.get("hparams") or {}).items() if v is not None}
        start = plugin_data_pb2.SessionStartInfo(group_name=run.get("study") or "", start_time_secs=time.time())
        infos = []
        for name, value in hparams.items():
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
                kind = "DATA_TYPE_BOOL"
            elif isinstance(value, (int, float)):
                start.hparams[name].number_value = value
                kind = "DATA_TYPE_FLOAT64"
            else:
                start.hparams[name].string_value = value
                kind = "DATA_TYPE_STRING"
            infos.append(api_pb2.HParamInfo(name=name, type=api_pb2.DataType.Value(kind)))
        experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in hparams_metrics(run)])
        for tag, data in ((metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
                          (metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))):
            data.version = metadata.PLUGIN_DATA_VERSION
            self._event(0, [Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data),
                                          tensor=metadata.NULL_TENSOR)])

    @staticmethod
    def _session_end(status: str):
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(SESSION_STATUS.get(status, "STATUS_UNKNOWN")),
                                             end_time_secs=time.time())
        data = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)
        return Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(data),
                             tensor=metadata.NULL_TENSOR)

    @staticmethod
    def _text(tag: str, text: str):
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
        return Summary.Value(tag=tag, metadata=meta, tensor=tensor)
