"""Runs out of trainlab: TensorBoard event files, an MLflow tracking store, CSV files.

`export_runs(store, run_ids, "tensorboard", "tb/")` replays stored runs (every metric series, the
hyperparameters, the status and reason) into the format; `logger_from_spec("tensorboard:tb/")` makes a
logger that `fit(..., loggers=[...])` streams a run to while it trains. Both go through the real
libraries (TensorBoard's event writer, MLflow's client), installed with `pip install 'trainlab[export]'`;
CSV needs nothing. Nothing here imports torch.

    trainlab export tensorboard 3 4 -o tb/ && tensorboard --logdir tb/
    trainlab export mlflow --study search-tpe-1a2b -o mlflow/ && mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db
    trainlab train --log-to tensorboard:tb/
"""

from __future__ import annotations

from trainlab._lazy import lazy

__all__ = ["FORMATS", "DEFAULT_OUT", "MissingExtra", "export_runs", "logger_from_spec", "make_logger",
           "TensorBoardLogger", "MlflowLogger", "CsvLogger"]

_WHERE = {"MissingExtra": "base", "export_runs": "replay", "logger_from_spec": "replay", "make_logger": "replay",
          "FORMATS": "replay", "DEFAULT_OUT": "replay", "TensorBoardLogger": "tensorboard", "MlflowLogger": "mlflow",
          "CsvLogger": "csv"}


__getattr__, __dir__ = lazy(__name__, _WHERE, __all__)
