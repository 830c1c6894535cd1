"""trainlab: train neural networks the way a careful practitioner does.

Names are imported on first use (PEP 562), so `import trainlab.store` in a dashboard or a store
worker does not pay for importing torch.
"""

from importlib import import_module

__all__ = ["Config", "ConfigError", "load_config", "Store", "MetricBuffer", "RunNotFound", "Task", "load_task",
           "fit", "FitResult", "Stop", "evaluate", "predict"]

_WHERE = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "Store": "store", "MetricBuffer": "store", "RunNotFound": "store",
    "Task": "tasks", "load_task": "tasks",
    "fit": "train", "FitResult": "train", "Stop": "train", "evaluate": "train", "predict": "train",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
