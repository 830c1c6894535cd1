"""The learning-curve doctor: pure rules over curves (numpy only, never torch) and their use on a stored run.

`curves` smooths and measures trends, `finding` holds the `Finding` every rule returns, `rules` the curve
rules and their thresholds, `schedule_rules` the schedule-aware rules and theirs, `init_loss` the
initial-loss verdicts, `ratio` the update/weight-ratio rule, `lr_range` analyses the
learning-rate tests, `diagnose` reads a run from the store and applies the rules.

Names are imported on first use (PEP 562), so a reader of `doctor.ratio` (the dashboard's start) does not
pay for numpy until a rule runs.
"""

from trainlab._lazy import lazy

__all__ = ["diagnose_run", "diagnose_study", "StudyDiagnosis", "Diagnosis", "CURVE_KEYS", "Finding", "RatioWarning",
           "diagnose", "ratio_warnings"]

_WHERE = {
    "diagnose_run": "diagnose", "diagnose_study": "diagnose", "StudyDiagnosis": "diagnose", "Diagnosis": "diagnose",
    "CURVE_KEYS": "diagnose", "Finding": "finding", "diagnose": "rules", "RatioWarning": "ratio",
    "ratio_warnings": "ratio",
}


__getattr__, __dir__ = lazy(__name__, _WHERE, __all__)
