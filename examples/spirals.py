"""A complete user task: three interleaved spirals in 2D, classified by a small MLP.

Run it with:  trainlab train --set task=examples/spirals.py:build --set epochs=30
`build(hp)` receives the run's Config and returns a trainlab.Task. Leave `val=None` and trainlab
carves the validation split from `train` (hp.val_fraction, fixed by hp.split_seed).
"""

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainlab import Task


def spirals(n_per_class: int, classes: int = 3, noise: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        theta = np.linspace(c * 4, (c + 1) * 4, n_per_class) + rng.normal(0, noise, n_per_class)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def build(hp):
    x, y = spirals(400, seed=1)
    x_test, y_test = spirals(100, seed=2)
    width = hp.width or 64

    def model():
        return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Dropout(hp.dropout),
                             nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))

    return Task(name="spirals", build_model=model, num_classes=3,
                train=TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                test=TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)))
