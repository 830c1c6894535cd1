"""The training loop, its checkpoints and its stopping rules."""

from trainlab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainlab.train.early_stopping import Decision, EarlyStopping
from trainlab.train.evaluate import evaluate, predict
from trainlab.train.callbacks import Callback, LoopState, Stop
from trainlab.train.data import epoch_order
from trainlab.train.loop import FitResult, fit, resolve_device
from trainlab.train.plan import RunPlan, lr_schedule

__all__ = ["fit", "FitResult", "Callback", "LoopState", "Stop", "EarlyStopping", "Decision", "evaluate", "predict",
           "save_checkpoint", "load_checkpoint", "CheckpointError", "lr_schedule", "epoch_order", "resolve_device", "RunPlan"]
