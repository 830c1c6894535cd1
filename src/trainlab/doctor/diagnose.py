"""The learning-curve doctor on a stored run: read its curves from the store, apply `rules.diagnose`,
and add the update/weight-ratio warnings (`ratio.ratio_warnings`). A thin shell over pure rules.

    from trainlab import Store
    from trainlab.doctor import diagnose_run

    d = diagnose_run(Store("trainlab.db"), 7)
    for f in d.findings:
        print(f)          # overfitting (high): ... Try: increase regularization ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from trainlab.doctor.ratio import RATIO_BAND, ratio_warnings
from trainlab.doctor.finding import Finding
from trainlab.doctor.rules import diagnose
from trainlab.store import Store

__all__ = ["Diagnosis", "StudyDiagnosis", "diagnose_run", "diagnose_study", "shared_names", "CURVE_KEYS"]

CURVE_KEYS = ("train/loss", "lr", "train/acc", "val/acc", "val/loss", "train/loss_eval")


@dataclass
class Diagnosis:
    """What the doctor found in one run; `findings` empty means healthy."""

    run_id: int
    name: str
    status: str
    reason: str | None
    num_classes: int | None
    steps: int
    epochs: int
    findings: list[Finding] = field(default_factory=list)
    expected: list[Finding] = field(default_factory=list)   # found, but what the run's purpose expects
    purpose: dict[str, Any] | None = None

    @property
    def healthy(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run_id, "name": self.name, "status": self.status, "reason": self.reason,
                "num_classes": self.num_classes, "steps": self.steps, "epochs": self.epochs,
                "healthy": self.healthy, "findings": [f.to_dict() for f in self.findings],
                "expected": [f.to_dict() for f in self.expected], "purpose": self.purpose}


def _ratio_findings(warnings: list[dict]) -> list[Finding]:
    """One finding per side of the band, listing its layers."""
    out = []
    for side in ("high", "low"):
        layers = [w for w in warnings if w["side"] == side]
        if not layers:
            continue
        listed = ", ".join(f"{w['name']} {w['median']:.2g}" for w in layers)
        if side == "high":
            out.append(Finding("update_ratio_high", "learning rate too high for some layers",
                               f"median update/weight ratio above {RATIO_BAND[1]:g} (want about 1e-3): {listed}",
                               "lower the learning rate (or give these layers a lower one)", "medium",
                               {"layers": {w["name"]: w["median"] for w in layers}}))
        else:
            out.append(Finding("update_ratio_low", "some layers barely learn",
                               f"median update/weight ratio below {RATIO_BAND[0]:g} (want about 1e-3): {listed}",
                               "raise the learning rate; if only some layers are low, check that their "
                               "gradients are not vanishing (initialization, normalization)", "medium",
                               {"layers": {w["name"]: w["median"] for w in layers}}))
    return out


def diagnose_run(store: Store, run_id: int, num_classes: int | None = None) -> Diagnosis:
    """Diagnose run `run_id` of `store` (RunNotFound if absent).

    `num_classes` defaults to the one fit() records in the run's summary; without it the initial-loss
    rule is skipped. The ratio warnings are those fit() recorded at the end of the run (judged on weight
    matrices and kernels only); for a run still going, they are computed from the stored ratios,
    leaving out biases. A run whose summary states its purpose ({"phase", "expects": [finding names],
    "why"}: the recipe's search trials do) has the findings it expects by design in `expected`, not in
    `findings`: a 4-epoch coarse-grid trial is short on purpose, so train_longer there is no problem.
    """
    run = store.run(run_id)
    summary = run.get("summary") or {}
    num_classes = num_classes or summary.get("num_classes")
    curves = store.metrics(run_id, CURVE_KEYS)
    findings = diagnose(curves, num_classes)
    warnings = summary.get("ratio_warnings")
    if warnings is None:
        keys = [k for k in store.metric_keys(run_id) if k.startswith("ratio/") and not k.endswith("bias")]
        ratios = store.metrics(run_id, keys) if keys else {}
        warnings = [w.to_dict() for w in ratio_warnings({k[len("ratio/"):]: v["value"] for k, v in ratios.items()})]
    if not any(f.name == "diverged" for f in findings):  # after a divergence the ratios only echo it
        findings += _ratio_findings([w for w in warnings if isinstance(w, dict)])
    steps = summary.get("steps") or (len(curves["train/loss"]["value"]) if "train/loss" in curves else 0)
    purpose = summary.get("purpose") if isinstance(summary.get("purpose"), dict) else None
    expects = set(purpose.get("expects") or ()) if purpose else set()
    return Diagnosis(run_id, run["name"], run["status"], run.get("reason"), num_classes, int(steps),
                     int(run.get("epochs") or 0), [f for f in findings if f.name not in expects],
                     [f for f in findings if f.name in expects], purpose)


def shared_names(per_run: Mapping[Any, Iterable[str]], min_runs: int = 2) -> set[str]:
    """The finding names every run has (a study of at least `min_runs` runs): a badge every run of a
    study shares says something about the study, and is shown once for it instead of on every run.

    >>> sorted(shared_names({1: ["train_longer", "overfitting"], 2: ["train_longer"]}))
    ['train_longer']
    """
    sets = [set(names) for names in per_run.values()]
    if len(sets) < min_runs:
        return set()
    return set.intersection(*sets)


@dataclass
class StudyDiagnosis:
    """The doctor on a whole study: what every run shares (once), what each run has beyond it, and what
    the runs' purpose expected (counted, not shown as a problem)."""

    study: str
    runs: list[Diagnosis]
    shared: list[dict[str, Any]]           # {"name", "runs", "diagnosis", "action", "evidence"}: once per study
    expected: dict[str, int]               # finding name -> runs whose purpose expected it

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "shared": self.shared, "expected": self.expected,
                "runs": [{**d.to_dict(), "findings": [f.to_dict() for f in d.findings if f.name not in
                                                      {s["name"] for s in self.shared}]} for d in self.runs]}


def diagnose_study(store: Store, study: str, num_classes: int | None = None) -> StudyDiagnosis:
    """Diagnose every training run of `study` (finished or not); the findings all of them share are
    summarized once (`shared`: with the range of their evidence's runs), those their purpose expects are
    counted in `expected`."""
    runs = [diagnose_run(store, r["id"], num_classes) for r in store.runs(study=study, kind="train")]
    runs = [d for d in runs if d.steps]
    common = shared_names({d.run_id: [f.name for f in d.findings] for d in runs})
    shared = []
    for name in sorted(common):
        first = next(f for f in runs[0].findings if f.name == name)
        shared.append({"name": name, "runs": len(runs), "diagnosis": first.diagnosis, "action": first.action,
                       "evidence": f"every one of the study's {len(runs)} runs (e.g. run {runs[0].run_id}: "
                                   f"{first.evidence})"})
    expected: dict[str, int] = {}
    for d in runs:
        for f in d.expected:
            expected[f.name] = expected.get(f.name, 0) + 1
    return StudyDiagnosis(study, runs, shared, expected)
