"""A regression task: predict y = sin(3 x0) + x1 * x2 + noise from 8 features (only 3 of them matter).

Run it with:  trainlab train --set task=examples/regression.py:build --set epochs=20
`kind="regression"` gives the task its loss (mean squared error; an output of shape (N, 1) is compared with
targets (N,) element by element, never broadcast), its metrics (mse, mae; `trainlab runs` and the dashboard
show them), and early stopping on val/loss (min) unless the Config names another metric.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainlab import Task

FEATURES = 8


def make(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    y = torch.sin(3 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


def build(hp):
    width = hp.width or 64

    def model():
        return nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Dropout(hp.dropout),
                             nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

    return Task(name="sine", build_model=model, kind="regression", train=make(2000, seed=1),
                test=make(500, seed=2), model_name="mlp-regressor")
