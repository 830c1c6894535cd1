"""What is measured while training: update/weight ratios, gradient norm, divergence.

The ratio ||W_after - W_before|| / ||W_before|| is taken from the actual change a step made, so it is
right for any optimizer (SGD, momentum, Adam). A healthy layer sits near 1e-3 (Karpathy's rule of
thumb); far below, the layer barely learns; far above, the learning rate is too high for it.
Measurements run at a cadence and stay on the device until read, so the loop never synchronizes per step.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

__all__ = ["UpdateRatio", "grad_norm", "divergence", "DIVERGENCE_FACTOR", "RATIO_BAND", "RatioWarning",
           "ratio_warnings", "judged_parameters"]

DIVERGENCE_FACTOR = 10.0
RATIO_BAND = (1e-4, 1e-2)


class UpdateRatio:
    """Update/weight ratio per parameter tensor, every `every` optimizer steps.

    Call `before(step)` just before `optimizer.step()` and `after()` just after; `after()` returns
    {name: ratio} on measured steps and None otherwise.
    """

    def __init__(self, model: nn.Module, every: int):
        self.every = every
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._before: list[torch.Tensor] | None = None

    def before(self, step: int) -> bool:
        if self.every <= 0 or step % self.every:
            return False
        self._before = [p.detach().clone() for _, p in self.named]
        return True

    def after(self) -> dict[str, float] | None:
        if self._before is None:
            return None
        with torch.no_grad():
            ratios = torch.stack([
                torch.linalg.vector_norm(p.detach() - b) / torch.linalg.vector_norm(b).clamp_min(1e-12)
                for (_, p), b in zip(self.named, self._before)
            ]).tolist()
        self._before = None
        return {name: r for (name, _), r in zip(self.named, ratios)}


def grad_norm(model: nn.Module) -> torch.Tensor:
    """The global L2 norm of all gradients, as a 0-d tensor (no synchronization)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def divergence(losses: list[float], first_step: int, reference: float, lrs: list[float] | None = None,
               factor: float = DIVERGENCE_FACTOR) -> str | None:
    """The reason a run has diverged, or None.

    Diverged means a loss that is NaN/Inf, or above `factor` x `reference` (the larger of the initial loss
    and log C). `losses[i]` is the loss of step `first_step + i`.
    """
    limit = factor * reference
    for i, loss in enumerate(losses):
        bad = "NaN" if math.isnan(loss) else "Inf" if math.isinf(loss) else None
        if bad is None and loss > limit:
            bad = f"{loss:.3g}, over {factor:g}x the initial loss ({reference:.3g})"
        if bad is not None:
            lr = f" (lr {lrs[i]:.3g})" if lrs else ""
            return (f"loss became {bad} at step {first_step + i}{lr}: learning rate too high, "
                    "or bad initialization")
    return None


@dataclass(frozen=True)
class RatioWarning:
    """A layer whose median update/weight ratio sits outside the band: which side, and the one-line message."""

    name: str
    median: float
    side: str      # "low" or "high"
    points: int    # measurements the median is over
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def judged_parameters(model: nn.Module) -> list[str]:
    """The tensors whose ratios the warnings judge: trainable weights with ndim >= 2 (matrices, conv kernels).

    Biases and normalization scales are measured too, but not judged: a bias that starts at zero has no
    meaningful ratio, and a BatchNorm scale near 1 moves by ~1e-4 per step in perfectly healthy runs.
    """
    return [n for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]


def ratio_warnings(ratios: Mapping[str, Sequence[float]], band: tuple[float, float] = RATIO_BAND,
                   min_points: int = 3) -> list[RatioWarning]:
    """Warnings for the tensors whose median update/weight ratio lies outside `band` (default [1e-4, 1e-2]).

    `ratios` maps a parameter name to its measured ratios (e.g. the stored "ratio/<name>" values); the
    median over the run is judged, so a few spiky steps do not trigger a warning. NaN/Inf are ignored;
    a tensor with fewer than `min_points` finite measurements is not judged. Pure: no torch needed.

    >>> [w.side for w in ratio_warnings({"fc.weight": [3e-2, 4e-2, 5e-2], "out.weight": [1e-3] * 3})]
    ['high']
    """
    low, high = band
    if not 0 < low < high:
        raise ValueError(f"band must be (low, high) with 0 < low < high, but got band={band!r}.")
    out = []
    for name, values in ratios.items():
        finite = [float(v) for v in values if math.isfinite(v)]
        if len(finite) < min_points:
            continue
        med = statistics.median(finite)
        if med < low:
            side = "low"
            why = (f"below {low:g}: the layer barely learns (learning rate too low for it, "
                   "or its gradient vanishes)" if med > 0 else "zero: the layer does not change at all "
                   "(no gradient reaches it, or the optimizer does not hold it)")
        elif med > high:
            side, why = "high", f"above {high:g}: its updates are too large for its weights (learning rate too high for it)"
        else:
            continue
        out.append(RatioWarning(name, med, side, len(finite),
                                f"update/weight ratio of {name}: median {med:.2g} over {len(finite)} measurements, "
                                f"{why}; want about 1e-3"))
    return out
