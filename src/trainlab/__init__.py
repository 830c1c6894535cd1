"""trainlab: train neural networks the way a careful practitioner does."""

from .config import Config, ConfigError, load_config
from .store import MetricBuffer, RunNotFound, Store
from .tasks import Task, load_task
from .train import FitResult, Stop, evaluate, fit, predict

__all__ = ["Config", "ConfigError", "load_config", "Store", "MetricBuffer", "RunNotFound", "Task", "load_task",
           "fit", "FitResult", "Stop", "evaluate", "predict"]
