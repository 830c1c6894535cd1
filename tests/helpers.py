"""Small helpers several test files share: the tiny training config, strict JSON, a Ctrl-C callback."""

import json
import time

from trainlab.config import Config

TINY = dict(model="mlp", width=32, batch_size=128, monitor_every=0)
"""An mnist1d MLP that trains an epoch (29 updates) in a fraction of a second."""


def tiny(**overrides) -> Config:
    """The tiny config with `overrides`."""
    return Config(**{**TINY, **overrides})


def as_set(config: dict) -> list[str]:
    """`config` as the command line's `--set key=value` arguments."""
    return [a for k, v in config.items() for a in ("--set", f"{k}={v}")]


TINY_SET = as_set(TINY)


def strict_json(text):
    """Parse JSON as a strict parser would: NaN/Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


class InterruptAt:
    """A fit callback that raises KeyboardInterrupt after `at_step` updates, as Ctrl-C would."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, state):
        if state.step == self.at_step:
            raise KeyboardInterrupt

    def on_epoch_end(self, state):
        return None

    def on_fit_end(self, state):
        return None


class Slowdown:
    """A machine that slows down after `at_step` updates: each later update takes `seconds` longer."""

    def __init__(self, at_step, seconds):
        self.at_step, self.seconds = at_step, seconds

    def on_step_end(self, state):
        if state.step >= self.at_step:
            time.sleep(self.seconds)

    def on_epoch_end(self, state):
        return None

    def on_fit_end(self, state):
        return None


def noisy_task(signal, n=4000, d=40, c=4, seed=0, zero_inputs=False):
    """Four classes whose inputs are a faint prototype (`signal`) under unit Gaussian noise: learnable, slowly."""
    import torch

    from trainlab.models import build_model
    from trainlab.tasks import Task

    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(c, d, generator=g)

    def make(m):
        y = torch.randint(0, c, (m,), generator=g)
        x = signal * protos[y] + torch.randn(m, d, generator=g)
        return torch.utils.data.TensorDataset((x * (not zero_inputs)).reshape(m, 1, d), y)

    return Task("noisy", lambda: build_model("mlp", (1, d), c, 64, 0.0), make(n), make(1000), c, val=make(1000))
