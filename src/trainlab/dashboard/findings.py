"""What the dashboard says about a run: badges from its status and reason, plus the doctor's findings.

A finding is a dict {"name", "severity" ("error" | "warning" | "info"), "message", "evidence",
"action", "source" ("status" | "doctor")}. A run's final status gives the first (diverged, failed,
pruned, stopped, with the stored reason as evidence); the learning-curve doctor adds its own:
`trainlab.doctor.diagnose_run` (the curve rules plus the update/weight-ratio warnings, what
`trainlab diagnose` prints). The dashboard never diagnoses by itself.

The doctor reads a run's full curves, which for 200 runs of 5,000 steps is seconds of reading, so
the study page does not wait for it: `Doctor.get(run)` answers from a cache kept per run while the
run's `updated` time is unchanged, and otherwise queues the run for a background thread and answers
None ("pending"); the page asks again shortly. The run page waits (`wait=True`): one run is quick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable


__all__ = ["Doctor", "status_findings"]

log = logging.getLogger(__name__)

_STATUS = {  # status -> severity of its badge; running and completed runs get none
    "diverged": "error",
    "failed": "error",
    "pruned": "info",
    "stopped": "info",
    "lost": "warning",  # running, but its process is gone (no heartbeat): resumable
}


def status_findings(run: dict) -> list[dict[str, Any]]:
    """The badge a run's final status earns, with its stored reason as the evidence.

    >>> status_findings({"status": "diverged", "reason": "loss became NaN at step 12"})[0]["severity"]
    'error'
    """
    severity = _STATUS.get(run["status"])
    if severity is None:
        return []
    reason = run.get("reason") or ""
    return [{"name": run["status"], "severity": severity, "message": reason or f"the run {run['status']}",
             "evidence": reason, "action": "", "source": "status"}]


def _doctor(store: Any, run: dict) -> list:
    from trainlab.doctor.diagnose import diagnose_run  # numpy and the rules: on the first diagnosis, not at start

    return diagnose_run(store, run["id"]).findings


def _as_finding(item: Any) -> dict[str, Any]:
    """A doctor's Finding (name, diagnosis, evidence, action, confidence) as a dashboard finding."""
    get = item.get if isinstance(item, dict) else (lambda k, d=None: getattr(item, k, d))
    name = str(get("name") or type(item).__name__)
    confidence = get("confidence")
    severity = "error" if name == "diverged" else "info" if confidence == "low" else "warning"
    return {"name": name, "severity": severity, "message": str(get("diagnosis") or get("message") or name),
            "evidence": get("evidence") or "", "action": get("action") or "", "confidence": confidence,
            "source": "doctor"}


class Doctor:
    """The doctor's findings per run, cached while the run's `updated` time is unchanged.

    ``diagnose``: ``fn(store, run) -> findings`` (default: `trainlab.doctor.diagnose_run`'s findings;
    None: no doctor, and no run has doctor findings).
    """

    def __init__(self, store: Any, diagnose: Callable | None = _doctor, max_entries: int = 10_000):
        self.store = store
        self.diagnose = diagnose
        self.max_entries = max_entries
        self._done: OrderedDict[int, tuple[str, list]] = OrderedDict()
        self._queue: OrderedDict[int, dict] = OrderedDict()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.diagnose is not None

    def findings(self, run: dict, *, wait: bool = False, queue: bool = True) -> list[dict[str, Any]] | None:
        """Status findings plus the doctor's; None while the doctor's are pending (only without ``wait``)."""
        found = self.get(run, wait=wait, queue=queue)
        if found is None:
            return None
        status = status_findings(run)
        names = {f["name"] for f in status}
        return status + [f for f in found if f["name"] not in names]  # the loop's own reason wins

    def get(self, run: dict, *, wait: bool = False, queue: bool = True) -> list[dict[str, Any]] | None:
        """The doctor's findings for ``run`` (a store row); None when not known yet and not ``wait``
        (then queued for the background, unless ``queue`` is False: call `queue()` later)."""
        if not self.available:
            return []
        with self._cond:
            hit = self._done.get(run["id"])
            if hit is not None and hit[0] == run["updated"]:
                self._done.move_to_end(run["id"])
                return hit[1]
        if wait:
            return self._compute(run)
        if queue:
            self.queue([run])
        return None

    def queue(self, runs: list[dict]) -> None:
        """Diagnose these runs in the background thread (started if idle)."""
        if not runs or not self.available:
            return
        with self._cond:
            for run in runs:
                self._queue[run["id"]] = run
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="trainlab-doctor", daemon=True)
                self._worker.start()

    def _compute(self, run: dict) -> list[dict[str, Any]]:
        try:
            found = [_as_finding(f) for f in self.diagnose(self.store, run) or []]
        except Exception as err:  # a doctor bug (or a run deleted meanwhile) must not take a page down
            log.warning("doctor failed on run %s: %s", run["id"], err)
            found = [{"name": "doctor failed", "severity": "info", "message": f"{type(err).__name__}: {err}",
                      "evidence": "", "action": "", "source": "doctor"}]
        with self._cond:
            self._done[run["id"]] = (run["updated"], found)
            while len(self._done) > self.max_entries:
                self._done.popitem(last=False)
        return found

    def _work(self) -> None:
        """Diagnose queued runs until the queue is empty; the thread then ends (a new one starts on demand).

        It rests as long as it worked after each run: background work at most half the time, so the
        pages it shares the process (and the GIL) with stay quick while 200 runs are diagnosed.
        """
        while True:
            with self._cond:
                if not self._queue:
                    self._worker = None
                    return
                _, run = self._queue.popitem(last=False)
            started = time.perf_counter()
            self._compute(run)
            time.sleep(min(1.0, time.perf_counter() - started))
