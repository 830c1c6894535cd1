"""What every check shares: its result, the recorded run, a fresh model, the caller's RNG left as it was."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from trainlab.config import Config, apply_overrides
from trainlab.doctor.curves import json_safe
from trainlab.store import Store
from trainlab.tasks import Task
from trainlab.train.loop import epoch_order

__all__ = ["CheckResult", "record", "fresh_model", "override", "rng_kept", "stored_losses", "first_examples"]


@dataclass
class CheckResult:
    """The outcome of `check_init` or `check_overfit`."""

    name: str                      # "init" or "overfit"
    verdict: str                   # "pass" or "fail"
    message: str                   # one line that explains the verdict
    evidence: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))




@contextmanager
def rng_kept() -> Iterator[None]:
    """Put torch's global RNG state back afterwards: a check must not change the caller's random stream."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def override(hp: Config, **values: Any) -> Config:
    """hp with `values` (only the fields this Config has: other issues add fields of their own)."""
    return apply_overrides(hp, {k: v for k, v in values.items() if k in type(hp).model_fields})


def fresh_model(task: Task, hp: Config, model: nn.Module | None) -> nn.Module:
    """A copy of `model`, or the task's model initialized from hp.seed exactly as fit() would."""
    if model is not None:
        return copy.deepcopy(model)
    torch.manual_seed(hp.seed)
    return task.build_model()


def record(store: Store | None, name: str, hp: Config, summary: dict[str, Any], study: str | None,
            run_id: int | None = None) -> int | None:
    if store is None:
        return None
    if run_id is None:
        run_id = store.create_run(name=f"check-{name}", hparams=hp.model_dump(mode="json"), seed=hp.seed,
                                  study=study, kind="check")
    store.finish_run(run_id, "completed", reason=summary.get("message"), summary=json_safe(summary))
    return run_id


def stored_losses(store: Store, run_id: int) -> tuple[list[float], list[float]]:
    m = store.metrics(run_id, ["train/loss", "lr"])
    return m.get("train/loss", {}).get("value", []), m.get("lr", {}).get("value", [])


def first_examples(dataset, n: int, seed: int):
    """The first `n` examples of epoch 0's order (seeded as fit() draws them): what a check trains or measures on."""
    idx = epoch_order(len(dataset), seed, 0)[:n]
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, idx.tolist())
