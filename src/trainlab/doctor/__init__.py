"""The learning-curve doctor: pure rules over curves (numpy only, never torch) and their use on a stored run.

`curves` smooths and measures trends, `rules` holds every rule and its thresholds, `lr_range` analyses the
learning-rate tests, `diagnose` reads a run from the store and applies the rules.
"""

from trainlab.doctor.diagnose import CURVE_KEYS, Diagnosis, StudyDiagnosis, diagnose_run, diagnose_study
from trainlab.doctor.rules import Finding, RatioWarning, diagnose, ratio_warnings

__all__ = ["diagnose_run", "diagnose_study", "StudyDiagnosis", "Diagnosis", "CURVE_KEYS", "Finding", "RatioWarning", "diagnose", "ratio_warnings"]
