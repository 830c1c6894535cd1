"""The transfer advisor: where a target sits in the lecture's 2x2 table, and which strategy to train.

The lecture's table (CS231n, "transfer learning with CNNs"):

                     | very similar dataset             | very different dataset
    very little data | linear classifier on top layer   | in trouble: try linear classifiers from different stages
    quite a lot      | fine-tune a few layers           | fine-tune a larger number of layers

The advisor measures the two axes instead of asking. Size: training examples per class (very little
below LITTLE_PER_CLASS). Similarity: a linear classifier on the source's top features against the same
classifier on the raw inputs; similar when the features fix at least SIMILAR_GAIN of the raw probe's
errors. It also reports the stage where per-stage probes peak (Yosinski et al. 2014: early features are
general, late ones specific). Probes here are closed-form ridge classifiers scored by k-fold
cross-validation on train+val: milliseconds each, and steadier than a validation split of five examples.

The pick starts from the lecture's cell. Where benchmarks/transfer.py found the table wrong on mnist1d
(EVIDENCE, numbers in the README), the advisor follows the evidence and says so in its reasons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from trainlab.config import ConfigError
from trainlab.tasks import Task
from trainlab.transfer.backbone import backbone_stages
from trainlab.transfer.source import Source
from trainlab.transfer.strategies import FeatureCache

__all__ = ["Advice", "advise", "ridge_cv_accuracy", "LECTURE", "EVIDENCE", "LITTLE_PER_CLASS", "PLENTY_PER_CLASS",
           "SIMILAR_GAIN"]

LITTLE_PER_CLASS = 20     # below: "very little data"
PLENTY_PER_CLASS = 200    # at or above: as much data as a source model is usually trained on
SIMILAR_GAIN = 0.25       # similar when the source's top features fix this share of the raw-input probe's errors

LECTURE = {  # the lecture's advice per cell, and the strategy that implements it here
    ("little", "similar"): ("linear classifier on the top layer", "linear"),
    ("little", "different"): ("you're in trouble: try linear classifiers from different stages", "probe"),
    ("a lot", "similar"): ("fine-tune a few layers", "finetune:half"),
    ("a lot", "different"): ("fine-tune a larger number of layers", "full"),
}
EVIDENCE = {  # where benchmarks/transfer.py found the table wrong on mnist1d, what won instead, and why
    ("little", "different"): ("full", "with tens of examples of a very different task, linear classifiers on every "
                              "stage stayed near chance and were the worst strategy; fine-tuning every stage at a low "
                              "learning rate did best"),
    ("a lot", "different"): ("scratch", "with hundreds of examples or more of a very different task, training from "
                             "scratch beat every fine-tuning: the source's features do not fit, and unlearning them "
                             "costs more than they give"),
    ("plenty", "similar"): ("full", "with as many examples per class as a source is trained on, fine-tuning every "
                            "stage (discriminative learning rates) beat fine-tuning a few"),
}
EVIDENCE[("plenty", "different")] = EVIDENCE[("a lot", "different")]


def ridge_cv_accuracy(x: torch.Tensor, y: torch.Tensor, num_classes: int, folds: int = 5, seed: int = 0,
                      alphas: Sequence[float] = (0.01, 0.1, 1.0, 10.0)) -> float:
    """k-fold cross-validated accuracy of a ridge classifier (one-hot least squares) on features `x`.

    Features are standardized with each training fold's statistics; the penalty is `alpha` x the
    feature count, the best of `alphas` is reported (the same small optimism for every feature set, so
    comparisons between stages stay fair). Solved in the dual when there are more features than examples.

    >>> x = torch.randn(60, 3); y = (x[:, 0] > 0).long()
    >>> ridge_cv_accuracy(x, y, 2) > 0.9
    True
    """
    n, d = x.shape
    folds = max(2, min(folds, n))
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % folds
    x = x.double()
    onehot = torch.nn.functional.one_hot(y, num_classes).double()
    correct = torch.zeros(len(alphas))
    for f in range(folds):
        test, train = fold == f, fold != f
        xtr, xte, ytr = x[train], x[test], onehot[train]
        mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6) if len(xtr) > 1 else torch.ones(d, dtype=x.dtype)
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
        ymean = ytr.mean(0)
        gram = xtr @ xtr.T if d > len(xtr) else xtr.T @ xtr
        eye = torch.eye(len(gram), dtype=x.dtype)
        for i, alpha in enumerate(alphas):
            if d > len(xtr):
                w = xtr.T @ torch.linalg.solve(gram + alpha * d * eye, ytr - ymean)
            else:
                w = torch.linalg.solve(gram + alpha * d * eye, xtr.T @ (ytr - ymean))
            correct[i] += ((xte @ w + ymean).argmax(1) == y[test]).sum()
    return float(correct.max() / n)


@dataclass
class Advice:
    """The advisor's placement of a target in the 2x2 table, its pick, and why."""

    strategy: str
    size: str                  # "little" or "a lot"
    similarity: str            # "similar" or "different"
    lecture: str               # what the lecture's table says for this cell
    lecture_strategy: str      # the lecture's advice as one of our strategies
    reasons: list[str]
    n_train: int
    per_class: float
    top_score: float           # CV accuracy of a linear classifier on the source's top features
    input_score: float         # ... on the raw inputs
    gain: float                # (top_score - input_score) / (1 - input_score)
    stage_scores: dict[str, float] = field(default_factory=dict)
    peak_stage: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def advise(source: Source, task: Task, cache: FeatureCache | None = None, folds: int = 5) -> Advice:
    """Measure the target's size and its similarity to the source; place it in the table; pick a strategy.

    `task` must have its validation split (see `transfer.prepare_target`); probes use train+val.
    """
    if task.kind != "classification":
        raise ConfigError(f"transfer advise: the advisor's table is measured on classifiers (examples per class, "
                          f"linear-classifier probes); task {task.name!r} is a {task.kind} task: compare the strategies "
                          "instead (transfer compare)")
    cache = cache or FeatureCache(source.model, task)
    y = torch.cat([cache.labels("train"), cache.labels("val")])
    both = lambda feats: torch.cat([feats["train"], feats["val"]])  # noqa: E731
    top = ridge_cv_accuracy(both(cache.head_inputs()), y, task.num_classes, folds)
    raw = ridge_cv_accuracy(both(cache.inputs()), y, task.num_classes, folds)
    stage_scores = {s: ridge_cv_accuracy(both(f), y, task.num_classes, folds) for s, f in cache.stages().items()}
    stages = backbone_stages(source.model)
    peak = max(stage_scores, key=stage_scores.get)
    n_train = len(cache.labels("train"))
    per_class = n_train / task.num_classes
    chance = 1.0 / task.num_classes

    size = "little" if per_class < LITTLE_PER_CLASS else "a lot"
    gain = (top - raw) / max(1.0 - raw, 1e-9)  # the share of the raw-input probe's errors the features fix
    similar = gain >= SIMILAR_GAIN
    similarity = "similar" if similar else "different"
    lecture, lecture_strategy = LECTURE[(size, similarity)]
    if lecture_strategy == "finetune:half":
        lecture_strategy = f"finetune:{max(1, len(stages) // 2)}"
    reasons = [
        f"size: {n_train} training examples, {per_class:.0f} per class: "
        + ("very little data" if size == "little" else "quite a lot of data")
        + f" (very little below {LITTLE_PER_CLASS} per class)",
        f"similarity: a linear classifier on the source's top features scores {top:.2f} (cross-validated), on the "
        f"raw inputs {raw:.2f} (chance {chance:.2f}): the features fix {gain:.0%} of its errors, so "
        + ("similar" if similar else "very different") + f" (similar from {SIMILAR_GAIN:.0%})",
        f"probes peak at {peak} ({stage_scores[peak]:.2f}); by stage: "
        + ", ".join(f"{s} {v:.2f}" for s, v in stage_scores.items()),
        f"the lecture's table says: {lecture} ({lecture_strategy})",
    ]
    key = ("plenty" if size == "a lot" and per_class >= PLENTY_PER_CLASS else size, similarity)
    pick = lecture_strategy
    if key in EVIDENCE:
        pick, why = EVIDENCE[key]
        reasons.append(f"but on this benchmark's data {why}")
    reasons.append(f"pick: {pick}" + (" (as the table says)" if pick == lecture_strategy
                                      else f" (the table says {lecture_strategy})"))
    return Advice(pick, size, similarity, lecture, lecture_strategy, reasons, n_train, per_class, top, raw, gain,
                  stage_scores, peak)
