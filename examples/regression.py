"""A regression task: predict y = sin(3 x0) + x1 * x2 + noise from 8 features (only 3 of them matter).

Run it with:  trainlab train --set task=examples/regression.py:build --set epochs=20
`kind="regression"` gives the task its loss (mean squared error; an output of shape (N, 1) is compared with
targets (N,) element by element, never broadcast), its metrics (mse, mae; `trainlab runs` and the dashboard
show them), and early stopping on val/loss (min) unless the Config names another metric. `build_small` is a
transfer target: the same function from 100 other examples (`trainlab transfer compare --source RUN --target
examples/regression.py:build_small`).
"""

from collections import OrderedDict

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


def build(hp, n_train: int = 2000, seed: int = 1, name: str = "sine"):
    """The task: `n_train` training examples drawn with `seed` (2000, 1); the test split is fixed."""
    width = hp.width or 64

    def model():   # named stages: a run of this task can be a transfer source (trainlab transfer --source RUN)
        return nn.Sequential(OrderedDict(
            stem=nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Dropout(hp.dropout)),
            stage1=nn.Sequential(nn.Linear(width, width), nn.ReLU()),
            head=nn.Linear(width, 1)))

    return Task(name=name, build_model=model, kind="regression", train=make(n_train, seed=seed),
                test=make(500, seed=2), model_name="mlp-regressor")


def build_small(hp):
    """100 training examples of the same function, drawn with another seed: a small target for transfer."""
    return build(hp, n_train=100, seed=3, name="sine-small")
