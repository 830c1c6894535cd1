"""Transfer targets for `trainlab transfer`: mnist1d signals from other generator settings, few examples.

    trainlab train --set model=resnet --set width=16 --set epochs=5              # the source, say run 1
    trainlab transfer advise  --source 1 --target examples/transfer_target.py:build
    trainlab transfer compare --source 1 --target examples/transfer_target.py:build_shuffled

`build(hp)`: a *similar* task: new signals from the mnist1d generator (another seed, more noise, a wider
scale range), 200 training examples. `build_shuffled(hp)`: a *very different* one: the same kind of
signals with their 40 positions permuted, which destroys the local shapes the source's convolutions
learned. `make_target(hp, n_train, different=..., seed=...)` builds either at any size (the benchmark
and the tests use it). The test split is the generator's full test split (1000 examples), so accuracy
differences of a point or two are measurable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from trainlab.models import build_model
from trainlab.tasks import Task, mnist1d_arrays

SIMILAR = {"seed": 1, "iid_noise_scale": 0.05, "scale_coeff": 0.5}   # mnist1d defaults: 42, 0.02, 0.4
DIFFERENT = {"seed": 2, "shuffle_seq": True}


def _stratified(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices with the classes as balanced as n allows, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    order = [idx[i] for i in range(max(map(len, per_class))) for idx in per_class if i < len(idx)]
    return np.sort(np.asarray(order[:n]))


def make_target(hp, n_train: int, *, different: bool = False, seed: int = 0) -> Task:
    """A 10-class mnist1d target with `n_train` training examples (validation is carved from them)."""
    args = DIFFERENT if different else SIMILAR
    data = mnist1d_arrays(**args)
    if not 2 <= n_train <= len(data["y"]):
        raise ValueError(f"n_train must be between 2 and {len(data['y'])}, but got n_train={n_train}.")
    idx = _stratified(data["y"], n_train, seed)
    x, y = data["x"][idx, None, :], data["y"][idx]
    shape = (1, x.shape[-1])

    def dataset(x, y):
        return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))

    kind = "different" if different else "similar"
    return Task(
        name=f"mnist1d-{kind}-{n_train}",
        build_model=lambda: build_model(hp.model, shape, 10, hp.width, hp.dropout),
        train=dataset(x, y),
        test=dataset(data["x_test"][:, None, :], data["y_test"]),
        num_classes=10,
        info={"input_shape": shape, "generator": args, "n_train": n_train, "subset_seed": seed},
    )


def build(hp) -> Task:
    """Similar to mnist1d, 200 training examples."""
    return make_target(hp, 200)


def build_shuffled(hp) -> Task:
    """Very different from mnist1d (positions permuted), 200 training examples."""
    return make_target(hp, 200, different=True)
