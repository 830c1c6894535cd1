"""The learning-curve doctor: pure rules over curves (numpy only, never torch) and their use on a stored run.

`curves` smooths and measures trends, `rules` holds the curve rules and their thresholds, `init_loss` the
initial-loss verdicts, `ratio` the update/weight-ratio rule, `lr_range` analyses the
learning-rate tests, `diagnose` reads a run from the store and applies the rules.
"""

from trainlab.doctor.diagnose import CURVE_KEYS, Diagnosis, StudyDiagnosis, diagnose_run, diagnose_study
from trainlab.doctor.ratio import RatioWarning, ratio_warnings
from trainlab.doctor.rules import Finding, diagnose

__all__ = ["diagnose_run", "diagnose_study", "StudyDiagnosis", "Diagnosis", "CURVE_KEYS", "Finding", "RatioWarning", "diagnose", "ratio_warnings"]
