"""The loss at initialization against what it should be, and the confirmation of a slow start."""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from torch import nn

from trainlab.config import Config
from trainlab.doctor.init_loss import init_loss_verdict, init_regression_verdict
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.checks.common import CheckResult, first_examples, fresh_model, override, record, rng_kept, stored_losses
from trainlab.train.data import Feed
from trainlab.train.evaluate import dataset_tensors
from trainlab.train.loop import fit, resolve_device

__all__ = ["check_init", "check_start"]


def check_init(task: Task | None, hp: Config, store: Store | None = None, *, batches: int = 10,
               model: nn.Module | None = None, study: str | None = None) -> CheckResult:
    """The loss at initialization against log(C), with weight decay off (the data loss alone).

    The fresh model (initialized from hp.seed, as `fit` does) runs in training mode without gradients on
    the first `batches` minibatches of the first epoch's order: the loss the first update sees. Passes
    when within `curves.INIT_LOSS_TOLERANCE` (25%) of log C. Labels outside 0..C-1 fail at once.

    >>> check_init(load_task(Config(model="mlp")), Config(model="mlp")).verdict
    'pass'
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, but got batches={batches!r}.")
    hp = override(hp, weight_decay=0.0)
    task = task or load_task(hp)
    device = resolve_device(hp.device)
    with rng_kept():
        net = fresh_model(task, hp, model).to(device)
        # the first minibatches of the first epoch, as fit() would draw them (only these are read)
        x, y = dataset_tensors(first_examples(task.train, batches * hp.batch_size, hp.seed), feed=Feed.for_task(task, hp, torch.device("cpu")))
        net.train()
        losses, logits = [], []
        with torch.no_grad():
            for i in range(0, len(y), hp.batch_size):
                out = net(x[i:i + hp.batch_size].to(device)).float()
                target = y[i:i + hp.batch_size].to(device)
                if task.kind == "classification" and target.dtype == torch.long and (
                        target.min() < 0 or target.max() >= out.shape[1]):
                    losses = None
                    break
                losses.append(float(task.loss(out, target)))
                logits.append(out.cpu())
    if task.kind == "regression":
        return _check_init_regression(task, hp, losses, y, batches, store, study)
    c = task.num_classes
    labels = y.unique().tolist() if y.dtype == torch.long else []
    evidence: dict[str, Any] = {"num_classes": c, "expected": math.log(c), "batches": batches,
                                "examples": int(len(y)), "weight_decay": 0.0,
                                "labels_seen": len(labels), "label_range": [min(labels), max(labels)] if labels else None}
    if losses is None:
        message = (f"labels run over {min(labels)}..{max(labels)}, but the task has {c} classes (0..{c - 1}): "
                   "labels do not match the number of classes")
        verdict = "fail"
    else:
        z = torch.cat(logits)
        loss = sum(losses) / len(losses)
        judged = init_loss_verdict(loss, c)
        evidence.update({"initial_loss": loss, "batch_losses": losses, "deviation": judged["deviation"],
                         "tolerance": judged["tolerance"], "logit_std": float(z.std()),
                         "top_class_share": float(z.argmax(1).bincount(minlength=c).max() / len(z))})
        verdict = "pass" if judged["ok"] else "fail"
        message = judged["message"]
        if not judged["ok"] and judged["deviation"] > 0:
            message += (f" (logits have std {evidence['logit_std']:.3g} at initialization, want about 1 or less; "
                        f"{evidence['top_class_share']:.0%} of examples go to one class)")
    summary = {"check": "init", "verdict": verdict, "message": message, **evidence}
    run_id = record(store, "init", hp, summary, study)
    return CheckResult("init", verdict, message, evidence, run_id)


def _check_init_regression(task: Task, hp: Config, losses: list[float], y: torch.Tensor, batches: int,
                           store: Store | None, study: str | None) -> CheckResult:
    """A regression's initial loss against the targets' mean square and variance (`init_regression_verdict`)."""
    yf = y.float()
    loss = sum(losses) / len(losses)
    judged = init_regression_verdict(loss, float(yf.pow(2).mean()), float(yf.var(unbiased=False)))
    evidence = {"kind": "regression", "initial_loss": loss, "batch_losses": losses, "expected": judged["expected"],
                "target_variance": float(yf.var(unbiased=False)), "target_mean": float(yf.mean()),
                "deviation": judged["deviation"], "tolerance": judged["tolerance"], "batches": batches,
                "examples": int(len(y)), "weight_decay": 0.0}
    verdict = "pass" if judged["ok"] else "fail"
    summary = {"check": "init", "verdict": verdict, "message": judged["message"], **evidence}
    run_id = record(store, "init", hp, summary, study)
    return CheckResult("init", verdict, judged["message"], evidence, run_id)



def check_start(task: Task | None, hp: Config, model: nn.Module, *, steps: int = 200) -> CheckResult:
    """Confirm a slow start before blaming the initialization: train `model` (copied) and the same
    architecture freshly initialized by PyTorch's defaults (`reset_parameters()` on every layer) for `steps`
    updates each, same data order and lr, and compare the steps each needs to get 5% below its first loss.
    Passes ("the initialization is fine") unless the default one gets there in under half the steps.
    """
    hp_s = override(hp, steps=steps, patience=None, ema=None, snapshots=False, schedule="constant",
                     warmup_steps=0, warmup_epochs=0.0)
    task = task or load_task(hp_s)
    fresh = copy.deepcopy(model)
    with rng_kept():
        torch.manual_seed(hp.seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        scratch = Store("sqlite://")
        starts = {}
        for label, net in (("given", copy.deepcopy(model)), ("default", fresh)):
            r = fit(task, hp_s, store=scratch, quiet=True, evaluate_test=False, checkpoints=False, model=net)
            losses, _ = stored_losses(scratch, r.run_id)
            starts[label] = _steps_to_drop(losses)
        scratch.close()
    given, default = starts["given"], starts["default"]
    faster = default is not None and (given is None or default < 0.5 * given)
    g = f"{given} steps" if given is not None else f"not within {steps} steps"
    d = f"{default} steps" if default is not None else f"not within {steps} steps"
    if faster:
        verdict, message = "fail", (f"a fresh default initialization starts faster: 5% below its first loss in {d}, "
                                    f"the given one in {g}: the initialization is the cause")
    else:
        verdict, message = "pass", (f"a fresh default initialization starts no faster ({d}, the given one {g}): "
                                    "the slow start is not the initialization's (look at the lr, warmup, normalization)")
    return CheckResult("start", verdict, message, {"steps": steps, "given": given, "default": default})


def _steps_to_drop(losses: Sequence[float], drop: float = 0.05) -> int | None:
    """Steps until the 10-step moving average is `drop` below the first loss (None: never)."""
    from trainlab.doctor.curves import moving_average

    if not losses:
        return None
    sm = moving_average(losses, 10)
    for i, v in enumerate(sm):
        if v <= (1 - drop) * losses[0]:
            return i
    return None
