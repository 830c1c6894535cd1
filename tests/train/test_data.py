"""Bring your own data: tuple and dict items, map-style and iterable datasets, a DataLoader factory, workers,
augmentation on training batches only, batched evaluation, exactness against the in-memory path, and bad data
refused with one line before anything is stored."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from trainlab.config import Config, ConfigError, make_config
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.train import fit
from trainlab.train.data import Batches, Feed, epoch_order
from trainlab.train.epoch import held_out
from trainlab.train.evaluate import evaluate

TINY = dict(model="mlp", width=32, batch_size=64, dropout=0.2, monitor_every=0)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def mem():
    return load_task(Config(**TINY))


class AsDicts(Dataset):
    """The same examples as a TensorDataset, as dict items with other key names (not in memory)."""

    def __init__(self, ds: TensorDataset, keys=("signal", "digit"), pid_log: Path | None = None):
        self.x, self.y = ds.tensors
        self.keys, self.pid_log = keys, pid_log

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self.pid_log is not None:
            with open(self.pid_log, "a") as f:
                f.write(f"{os.getpid()}\n")
        return {self.keys[0]: self.x[i], self.keys[1]: self.y[i], "index": i}


class AsTuples(Dataset):
    def __init__(self, ds: TensorDataset):
        self.x, self.y = ds.tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _dict_task(mem: Task, **kw) -> Task:
    fields = dict(name="dicts", build_model=mem.build_model, num_classes=10, train=AsDicts(mem.train),
                  val=AsDicts(mem.val), test=AsDicts(mem.test), input_key="signal", target_key="digit")
    fields.update(kw)
    return Task(**fields)


def _losses(store: Store, run_id: int) -> list[float]:
    return store.metrics(run_id, ["train/loss"])["train/loss"]["value"]


def test_dict_and_tuple_datasets_train_exactly_like_in_memory_tensors(mem, tmp_path):
    hp = Config(**TINY, epochs=2)
    store = Store(tmp_path / "t.db")
    ref = fit(mem, hp, store=store, quiet=True, checkpoints=False)
    dicts = fit(_dict_task(mem), hp, store=store, quiet=True, checkpoints=False)
    tuples = fit(Task(name="tuples", build_model=mem.build_model, num_classes=10, train=AsTuples(mem.train),
                      val=AsTuples(mem.val), test=AsTuples(mem.test)), hp, store=store, quiet=True, checkpoints=False)
    # the order is a function of (seed, epoch): the same batches, the same dropout, the same losses
    assert _losses(store, dicts.run_id) == _losses(store, ref.run_id) == _losses(store, tuples.run_id)
    assert all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), dicts.model.state_dict().values()))
    # evaluated in batches, the same numbers as on the tensors at once
    assert dicts.history["val/acc"] == pytest.approx(ref.history["val/acc"], abs=1e-6)
    assert dicts.history["val/loss"] == pytest.approx(ref.history["val/loss"], rel=1e-5)
    assert dicts.test["acc"] == pytest.approx(ref.test["acc"], abs=1e-6)


def test_a_loader_factory_and_two_workers_read_the_same_batches(mem, tmp_path):
    log = tmp_path / "pids"
    seen = []

    def factory(dataset, **kw):  # a user's DataLoader factory: its own collate, trainlab's order and options
        seen.append(kw["num_workers"])
        return DataLoader(dataset, collate_fn=functools.partial(_collate, log=log), **kw)

    task = _dict_task(mem, train=AsDicts(mem.train, pid_log=log), make_loader=factory)
    hp = Config(**TINY, epochs=2, num_workers=2, persistent_workers=True)
    store = Store(tmp_path / "t.db")
    workers = fit(task, hp, store=store, quiet=True, checkpoints=False)
    ref = fit(mem, Config(**TINY, epochs=2), store=store, quiet=True, checkpoints=False)
    assert _losses(store, workers.run_id) == _losses(store, ref.run_id)
    pids = log.read_text().split()
    assert pids.count(str(os.getpid())) == 1, "the training process read one item (the check before the run)"
    # 2 training workers and the train/acc subset's loader (1 batch: its worker 0), each kept for both epochs
    assert len(set(pids) - {str(os.getpid())}) == 3
    assert set(seen) == {2}


def _collate(items, log):
    from torch.utils.data import default_collate
    return default_collate(items)


def test_train_transform_augments_training_batches_only(mem, tmp_path):
    calls = []

    def noisy(x):
        calls.append(len(x))
        return x + 0.5 * torch.randn_like(x)

    hp = Config(**{**TINY, "dropout": 0.0}, epochs=2)
    plain = fit(mem, hp, quiet=True, checkpoints=False)
    aug = fit(Task(**{**mem.__dict__, "train_transform": noisy}), hp, quiet=True, checkpoints=False)
    n_batches = 2 * -(-len(mem.train) // 64)
    assert len(calls) == n_batches + 1, "every training batch once (+1: the shape check before the run)"
    assert all(c <= 64 for c in calls)
    assert aug.history["train/loss_eval"] != plain.history["train/loss_eval"]
    # same transform, same seed: the same run (augmentation draws from torch's checkpointed generator)
    again = fit(Task(**{**mem.__dict__, "train_transform": noisy}), hp, quiet=True, checkpoints=False)
    assert again.history["val/loss"] == aug.history["val/loss"]


def test_validation_of_a_dataset_is_read_in_batches_not_moved_whole(mem):
    task = _dict_task(mem)
    feed = Feed.for_task(task, Config(**TINY), torch.device("cpu"))
    val, train_eval = held_out(task, torch.device("cpu"), None, feed)
    assert isinstance(val, Dataset) and isinstance(train_eval, Dataset), "datasets stay datasets"
    assert len(train_eval) == len(mem.val)
    vm, _ = held_out(mem, torch.device("cpu"), None, Feed())
    assert isinstance(vm, tuple), "in-memory tensors keep the fast path"
    torch.manual_seed(0)
    model = mem.build_model()
    got = evaluate(model, None, data=val, feed=feed, batch_size=7)  # uneven batches: weighted by their size
    want = evaluate(model, mem.val)
    assert got["acc"] == pytest.approx(want["acc"], abs=1e-6) and got["loss"] == pytest.approx(want["loss"], rel=1e-5)


class Stream(IterableDataset):
    def __init__(self, ds: TensorDataset):
        self.x, self.y = ds.tensors
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.y)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.epoch))
        for i in order.tolist():
            yield {"x": self.x[i], "label": self.y[i]}


def test_an_iterable_dataset_trains_with_its_own_epoch_order(mem, tmp_path):
    task = Task(name="stream", build_model=mem.build_model, num_classes=10, train=Stream(mem.train),
                val=Stream(mem.val), test=Stream(mem.test))
    result = fit(task, Config(**TINY, epochs=2), quiet=True, checkpoints=False)
    assert result.status == "completed" and result.steps == 2 * -(-len(mem.train) // 64)
    assert task.train.epoch == 1, "set_epoch told the dataset each epoch"
    assert result.history["val/acc"][-1] > 0.2
    b = Batches(task.train, 64, torch.device("cpu"), feed=Feed())
    first = [y for _, y in b.iterate(epoch_order(b.n, 0, 0), start=0, epoch=0)]
    resumed = [y for _, y in b.iterate(epoch_order(b.n, 0, 0), start=3, epoch=0)]
    assert all(torch.equal(a, c) for a, c in zip(first[3:], resumed)), "resuming skips the batches done"
    with pytest.raises(ConfigError, match="iterable train split cannot be sharded"):
        Batches(task.train, 64, torch.device("cpu"), rank=0, world_size=2)
    with pytest.raises(ConfigError, match="give the Task a val dataset"):
        fit(Task(name="s", build_model=mem.build_model, num_classes=10, train=Stream(mem.train),
                 test=Stream(mem.test)), Config(**TINY, epochs=1), quiet=True)


# --- bad data: one line, nothing stored ---------------------------------------------------------

class Bare(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.zeros(40)


@pytest.mark.parametrize("case,pattern", [
    ("bare", r"^task: the train split's items must be \(input, target\) tuples or dicts, got Tensor$"),
    ("no_target", r"^task: the train split's items have no target key among \['label', .*\]; keys present: "
                  r"\['signal', 'answer', 'index'\]; set Task\(target_key=\.\.\.\)$"),
    ("wrong_key", r"^task: input_key 'pixels' is not in the train split's items; keys present: "
                  r"\['signal', 'digit', 'index'\]$"),
    ("transform", r"^train_transform: must return a batch of the shape it was given, \(64, 1, 40\), got \(64, 40\)$"),
    ("transform_error", r"^train_transform: failed on a batch of shape \(64, 1, 40\): RuntimeError: boom$"),
])
def test_bad_data_is_refused_with_one_line_before_a_run_is_stored(mem, tmp_path, case, pattern):
    def boom(x):
        raise RuntimeError("boom")

    task = {
        "bare": lambda: Task(name="bare", build_model=mem.build_model, num_classes=10, train=Bare(), test=Bare(), val=Bare()),
        "no_target": lambda: _dict_task(mem, train=AsDicts(mem.train, keys=("signal", "answer")), target_key=None),
        "wrong_key": lambda: _dict_task(mem, input_key="pixels"),
        "transform": lambda: Task(**{**mem.__dict__, "train_transform": lambda x: x.flatten(1)}),
        "transform_error": lambda: Task(**{**mem.__dict__, "train_transform": boom}),
    }[case]()
    store = Store(tmp_path / "t.db")
    with pytest.raises(ConfigError, match=pattern):
        fit(task, Config(**TINY, epochs=1), store=store, quiet=True)
    assert store.runs() == [], "nothing stored"


def test_loader_options_are_validated():
    with pytest.raises(ConfigError, match=r"^persistent_workers: needs num_workers > 0 .*got True$"):
        make_config({"persistent_workers": True})
    with pytest.raises(ConfigError, match=r"^num_workers: input should be greater than or equal to 0, got -1$"):
        make_config({"num_workers": -1})
    assert make_config({"num_workers": 2, "persistent_workers": True, "pin_memory": True}).num_workers == 2


def test_labels_name_the_tasks_own_model(tmp_path):
    task = load_task(Config(task=str(EXAMPLES / "spirals.py") + ":build"))
    store = Store(tmp_path / "t.db")
    r = fit(task, Config(epochs=1, batch_size=128), store=store, quiet=True, checkpoints=False)
    assert store.run(r.run_id)["name"] == "spirals-sequential", "the model the task built, not Config.model"
    r = fit(load_task(Config(**TINY)), Config(**TINY, epochs=1), store=store, quiet=True, checkpoints=False)
    assert store.run(r.run_id)["name"] == "mnist1d-mlp"
    named = Task(**{**task.__dict__, "model_name": "spiral-mlp"})
    r = fit(named, Config(epochs=1, batch_size=128), store=store, quiet=True, checkpoints=False)
    assert store.run(r.run_id)["name"] == "spirals-spiral-mlp"
