"""Prediction ensembles: average the predicted class probabilities of several models, take the argmax.

Members come from the store: the best checkpoints of runs (`members_from_runs`, or the top K of a study
with `top_runs`), or the snapshots one cyclic-cosine run saved at its cycle ends (`members_from_snapshots`;
Huang et al. 2017, "Snapshot Ensembles: Train 1, Get M for Free"). Each member's model is rebuilt from
its run's stored hyperparameters with `load_task` and loaded with `weights_only=True`; a run that chose
its best checkpoint on an EMA metric contributes its averaged weights (`checkpoint_weights`).
`train_members(hp, k)` trains k independent members (seeds seed, seed+1, ...) and ensembles them
(Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles").

    members = members_from_runs(Store("trainlab.db"), [3, 4, 5])
    result = evaluate_ensemble(members, split="test")
    result.ensemble_acc, result.mean_member_acc
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.checkpoint import load_checkpoint, plain_module, state_for
from trainlab.config import Config, make_config
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.train.averaging import checkpoint_weights
from trainlab.train.data import Feed
from trainlab.train.evaluate import dataset_tensors, predict
from trainlab.train.loop import FitResult, fit, resolve_device

__all__ = ["Member", "EnsembleResult", "average_probabilities", "best_runs", "evaluate_ensemble", "members_from_runs",
           "members_from_snapshots", "top_runs", "train_members", "SPLITS"]

SPLITS = ("val", "test")


@dataclass
class Member:
    """One model of an ensemble: where it came from, and the model with its weights loaded."""

    run_id: int | None
    name: str
    source: str  # "best.pt", "best.pt (ema)", "snapshot-3.pt", "memory"
    hp: Config
    model: nn.Module


@dataclass
class EnsembleResult:
    split: str
    n: int                      # examples evaluated
    members: list[dict[str, Any]] = field(default_factory=list)  # run, name, source, acc, loss
    mean_member_acc: float = math.nan
    ensemble_acc: float = math.nan
    ensemble_loss: float = math.nan  # negative log-likelihood of the averaged probabilities
    metric: str = "acc"  # what the *_acc fields hold: accuracy, or a regression task's headline metric (mse)

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.split, "n": self.n, "members": self.members, "mean_member_acc": self.mean_member_acc,
                "ensemble_acc": self.ensemble_acc, "ensemble_loss": self.ensemble_loss, "metric": self.metric}


def average_probabilities(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean over members of softmax(logits): (N, C) probabilities. Argmax them for the prediction.

    >>> average_probabilities([torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])]).round(decimals=3)
    tensor([[0.6900, 0.3100]])
    """
    if not logits:
        raise ValueError("an ensemble needs at least one member, but got none.")
    shapes = {tuple(t.shape) for t in logits}
    if len(shapes) != 1:
        raise ValueError(f"members' logits must share one shape (examples, classes), but got {sorted(shapes)}.")
    return torch.stack([F.softmax(t.float(), dim=1) for t in logits]).mean(0)


def _check_compatible(members: Sequence[Member], tasks: Sequence[Task], split: str) -> None:
    """All members predict the same classes of the same task (and, for val, hold out the same split)."""
    def who(i: int) -> str:
        m = members[i]
        return f"run {m.run_id}" if m.run_id is not None else f"member {i + 1}"

    first, t0 = members[0].hp, tasks[0]
    for i in range(1, len(members)):
        hp, t = members[i].hp, tasks[i]
        if hp.task != first.task:
            raise ValueError(f"ensemble: members must share one task, but {who(0)} has task {first.task!r} and "
                             f"{who(i)} has task {hp.task!r}")
        if t.num_classes != t0.num_classes:
            raise ValueError(f"ensemble: members must share the classes, but {who(0)} has {t0.num_classes} and "
                             f"{who(i)} has {t.num_classes}")
        if split == "val" and (hp.val_fraction, hp.split_seed) != (first.val_fraction, first.split_seed):
            raise ValueError(f"ensemble: members hold out different validation splits ({who(0)}: val_fraction "
                             f"{first.val_fraction}, split_seed {first.split_seed}; {who(i)}: val_fraction "
                             f"{hp.val_fraction}, split_seed {hp.split_seed}); use --split test")


def evaluate_ensemble(members: Sequence[Member], split: str = "val", device: str | torch.device = "cpu",
                      tasks: Sequence[Task] | None = None) -> EnsembleResult:
    """Each member's accuracy and loss on `split`, their mean, and the ensemble's (averaged probabilities).

    Raises ValueError, naming the runs, when members do not share the task and its classes (and, on
    "val", the validation split).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, but got split={split!r}.")
    if not members:
        raise ValueError("ensemble: no members")
    tasks = list(tasks) if tasks is not None else [load_task(m.hp) for m in members]
    _check_compatible(members, tasks, split)
    t0 = tasks[0]
    x, y = dataset_tensors(getattr(t0, split), device, Feed(t0.input_key, t0.target_key, t0.make_loader))
    if t0.kind == "regression":
        return _regression_ensemble(members, tasks, split, x, y, device)
    logits, rows = [], []
    for m, task in zip(members, tasks):
        out = predict(m.model.to(device), x, device)
        if out.shape[1] != task.num_classes:
            raise ValueError(f"ensemble: run {m.run_id} predicts {out.shape[1]} classes, its task has "
                             f"{task.num_classes}")
        logits.append(out)
        rows.append({"run": m.run_id, "name": m.name, "source": m.source,
                     "acc": (out.argmax(1) == y).float().mean().item(), "loss": task.loss(out, y).item()})
    probs = average_probabilities(logits)
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), y).item()
    return EnsembleResult(split=split, n=len(y), members=rows,
                          mean_member_acc=sum(r["acc"] for r in rows) / len(rows),
                          ensemble_acc=(probs.argmax(1) == y).float().mean().item(), ensemble_loss=nll)


def _regression_ensemble(members, tasks, split, x, y, device) -> EnsembleResult:
    """A regression ensemble predicts the mean of its members' outputs; "acc" columns hold the task's headline
    metric (`EnsembleResult.metric`, e.g. mse) and the loss is the task's loss of the mean output."""
    head = tasks[0].task_metrics.headline
    outs, rows = [], []
    for m, task in zip(members, tasks):
        out = predict(m.model.to(device), x, device)
        outs.append(out)
        rows.append({"run": m.run_id, "name": m.name, "source": m.source, "acc": float(head.fn(out, y)),
                     "loss": task.loss(out, y).item()})
    mean = torch.stack(outs).mean(0)
    return EnsembleResult(split=split, n=len(y), members=rows, mean_member_acc=sum(r["acc"] for r in rows) / len(rows),
                          ensemble_acc=float(head.fn(mean, y)), ensemble_loss=tasks[0].loss(mean, y).item(),
                          metric=head.name)


def _model_for(hp: Config, weights: dict[str, torch.Tensor], where: str) -> nn.Module:
    model = plain_module(load_task(hp).build_model())  # a task may return torch.compile(model)
    try:
        model.load_state_dict(state_for(model, weights))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"ensemble: the weights in {where} do not fit the model its hyperparameters build: "
                         f"{first}") from None
    return model.eval()


def members_from_runs(store: Store, run_ids: Sequence[int], device: str | torch.device = "cpu") -> list[Member]:
    """Members from the runs' best checkpoints (their EMA weights if the run selected on an EMA metric)."""
    if len(set(run_ids)) != len(run_ids):
        raise ValueError(f"ensemble: a run is listed twice in {list(run_ids)}")
    members = []
    for run_id in run_ids:
        run = store.run(run_id)
        if not run.get("checkpoint"):
            raise ValueError(f"ensemble: run {run_id} has no best checkpoint (status {run['status']})")
        hp = make_config(run["hparams"])
        ckpt = load_checkpoint(run["checkpoint"], map_location=device)
        weights, kind = checkpoint_weights(ckpt)
        source = "best.pt" + (" (ema)" if kind == "ema" else "")
        members.append(Member(run_id, run["name"], source, hp, _model_for(hp, weights, run["checkpoint"])))
    return members


def members_from_snapshots(store: Store, run_id: int, last: int | None = None,
                           device: str | torch.device = "cpu") -> list[Member]:
    """Members from the snapshots one run saved at its cycle ends (`snapshots: true`): the last `last`."""
    run = store.run(run_id)
    snaps = (run.get("summary") or {}).get("snapshots") or []
    if not snaps:
        raise ValueError(f"ensemble: run {run_id} has no snapshots; train it with schedule=cyclic_cosine "
                         "and snapshots=true")
    if last is not None:
        if not 1 <= last <= len(snaps):
            raise ValueError(f"--last: run {run_id} has {len(snaps)} snapshots, got {last}")
        snaps = snaps[-last:]
    hp = make_config(run["hparams"])
    members = []
    for snap in snaps:
        ckpt = load_checkpoint(snap["path"], map_location=device)
        name = f"snapshot-{snap['cycle']}.pt"
        members.append(Member(run_id, f"{run['name']} cycle {snap['cycle']} (step {snap['step']})", name, hp,
                              _model_for(hp, ckpt["model"], snap["path"])))
    return members


def _data(hp: Config) -> tuple:
    """What makes runs comparable members: the same task and validation split, selected on the same metric."""
    return (hp.task, hp.val_fraction, hp.split_seed, hp.early_stop_metric, hp.mode)


def best_runs(store: Store, study: str | None, k: int | None = None, task: str | None = None) -> tuple[list[int], str]:
    """(ids, what was chosen): the `k` runs (None: all) with the best `best_metric` among the runs of `study`
    (None: the store's training runs) with a best checkpoint, in the metric's direction, within one task.

    Runs of different tasks (or validation splits, or selection metrics) are not comparable members: with
    `task` the runs of that task are taken; otherwise those of the task trained most recently, and the
    returned text names it and the others. Raises ValueError when fewer than k qualify.

    >>> best_runs(store, None, 3)    # a store with runs on mnist1d and digits, digits trained last
    ([12, 9, 14], "task 'digits' (the most recent; also in the store: mnist1d 8 runs; choose with --task)")
    """
    if k is not None and k < 1:
        raise ValueError(f"--top: must be at least 1, got {k}")
    where = f"study {study!r}" if study is not None else "the store"
    runs = [r for r in store.runs(study=study, kind=None if study is not None else "train")
            if r.get("checkpoint") and r.get("best_metric") is not None]
    pairs = [(r, make_config(r["hparams"])) for r in runs]
    tasks = dict.fromkeys(hp.task for _, hp in pairs)
    if task is not None:
        if task not in tasks:
            raise ValueError(f"--task: {where} has no runs with a best checkpoint on task {task!r}; "
                             f"tasks: {', '.join(tasks) or 'none'}")
        pairs = [(r, hp) for r, hp in pairs if hp.task == task]
    groups: dict[tuple, list] = {}
    for r, hp in pairs:
        groups.setdefault(_data(hp), []).append((r, hp))
    note = ""
    if len(groups) > 1:  # the group of the most recent run
        latest = max(pairs, key=lambda p: p[0]["id"])[1]
        chosen = groups[_data(latest)]
        others = [f"{key[0]}" + ("" if key[0] != latest.task else f" (split {key[1]}/{key[2]}, selected on {key[3]})")
                  + f" {len(g)} runs" for key, g in groups.items() if key != _data(latest)]
        note = (f"task {latest.task!r} (the most recent; also in {where}: {', '.join(others)}; "
                "choose with --task)")
        pairs = chosen
    elif pairs:
        note = f"task {pairs[0][1].task!r}"
    if not pairs or (k is not None and len(pairs) < k):
        raise ValueError(f"ensemble: {where} has {len(pairs)} comparable runs with a best checkpoint"
                         + (f" ({note})" if note else "") + f", {'asked for' if k else 'needs at least'} {k or 1}")
    sign = -1.0 if pairs[0][1].mode == "max" else 1.0
    ranked = sorted((r for r, _ in pairs), key=lambda r: (sign * r["best_metric"], r["id"]))
    return [r["id"] for r in ranked[:k]], note


def top_runs(store: Store, study: str | None, k: int | None = None, task: str | None = None) -> list[int]:
    """The ids of `best_runs`: the k best comparable runs of `study` (None: the store), within one task."""
    return best_runs(store, study, k, task)[0]


def train_members(hp: Config, k: int | None = None, store: Store | None = None, *, split: str = "val",
                  **fit_kwargs: Any) -> tuple[list[FitResult], EnsembleResult | None]:
    """Train `k` (default `hp.seeds`) independent members with seeds `hp.seed`, `hp.seed + 1`, ... and
    evaluate their ensemble on `split` (the best weights each fit returns; the same as their checkpoints).

    Each member is an ordinary run whose stored hyperparameters say `seeds: 1` and its own `seed`, so
    it can be resumed or rerun alone. A member that ends "stopped" (Ctrl-C) ends the loop. Members
    without a best epoch (diverged in the first epoch) are left out of the ensemble; the result is
    None when none is left. `fit_kwargs` go to every `fit` (quiet, study, runs_dir, ...).
    """
    k = hp.seeds if k is None else k
    if k < 1:
        raise ValueError(f"seeds: must be at least 1, got {k}")
    task = None
    results: list[FitResult] = []
    name = fit_kwargs.pop("name", None)
    for i in range(k):
        member_hp = hp.model_copy(update={"seed": hp.seed + i, "seeds": 1})
        task = task or load_task(member_hp)  # the data do not depend on the seed
        member_name = f"{name or f'{task.name}-{hp.model}'}-seed{member_hp.seed}"
        results.append(fit(task, member_hp, store=store, name=member_name, **fit_kwargs))
        if results[-1].status == "stopped":
            break
    usable = [r for r in results if r.best_epoch is not None]
    if not usable:
        return results, None
    members = [Member(r.run_id, f"seed {hp.seed + i}", "memory", hp, r.model)
               for i, r in enumerate(results) if r.best_epoch is not None]
    device = resolve_device(hp.device)
    return results, evaluate_ensemble(members, split, device=device, tasks=[task] * len(members))
