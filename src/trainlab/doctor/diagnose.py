"""The learning-curve doctor on a stored run: read its curves from the store, apply `curves.diagnose`,
and add the update/weight-ratio warnings (`curves.ratio_warnings`). A thin shell over pure rules.

    from trainlab import Store
    from trainlab.doctor import diagnose_run

    d = diagnose_run(Store("trainlab.db"), 7)
    for f in d.findings:
        print(f)          # overfitting (high): ... Try: increase regularization ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainlab.doctor.rules import RATIO_BAND, Finding, diagnose, ratio_warnings
from trainlab.store import Store

__all__ = ["Diagnosis", "diagnose_run", "CURVE_KEYS"]

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

    @property
    def healthy(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run_id, "name": self.name, "status": self.status, "reason": self.reason,
                "num_classes": self.num_classes, "steps": self.steps, "epochs": self.epochs,
                "healthy": self.healthy, "findings": [f.to_dict() for f in self.findings]}


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
    leaving out biases.
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
    return Diagnosis(run_id, run["name"], run["status"], run.get("reason"), num_classes, int(steps),
                     int(run.get("epochs") or 0), findings)
