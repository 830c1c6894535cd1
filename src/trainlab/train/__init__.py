"""The training loop, its checkpoints and its stopping rules."""

from trainlab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainlab.train.early_stopping import Decision, EarlyStopping
from trainlab.train.evaluate import evaluate, predict
from trainlab.train.loop import Callback, FitResult, LoopState, Stop, epoch_order, fit, lr_schedule, resolve_device

__all__ = ["fit", "FitResult", "Callback", "LoopState", "Stop", "EarlyStopping", "Decision", "evaluate", "predict",
           "save_checkpoint", "load_checkpoint", "CheckpointError", "lr_schedule", "epoch_order", "resolve_device"]
