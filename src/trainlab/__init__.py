"""trainlab: train neural networks the way a careful practitioner does.

Names are imported on first use (PEP 562), so `import trainlab.store` in a dashboard or a store
worker does not pay for importing torch.
"""

from trainlab._lazy import lazy

__all__ = ["Config", "ConfigError", "load_config", "Store", "MetricBuffer", "RunNotFound", "Task", "load_task",
           "fit", "FitResult", "Stop", "evaluate", "predict"]

_WHERE = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "Store": "store", "MetricBuffer": "store", "RunNotFound": "store",
    "Task": "tasks", "load_task": "tasks",
    "fit": "train", "FitResult": "train", "Stop": "train", "evaluate": "train", "predict": "train",
}


__getattr__, __dir__ = lazy(__name__, _WHERE, __all__)
