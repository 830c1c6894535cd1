"""What is measured while training: update/weight ratios, gradient norm, divergence.

The ratio ||W_after - W_before|| / ||W_before|| is taken from the actual change a step made, so it is
right for any optimizer (SGD, momentum, Adam). A healthy layer sits near 1e-3 (Karpathy's rule of
thumb); far below, the layer barely learns; far above, the learning rate is too high for it.
Measurements run at a cadence and stay on the device until read, so the loop never synchronizes per step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainlab.doctor.ratio import RATIO_BAND, RatioWarning, ratio_warnings  # the pure rule on what is measured here

__all__ = ["UpdateRatio", "grad_norm", "divergence", "DIVERGENCE_FACTOR", "RATIO_BAND", "RatioWarning",
           "ratio_warnings", "judged_parameters"]

DIVERGENCE_FACTOR = 10.0


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


def judged_parameters(model: nn.Module) -> list[str]:
    """The tensors whose ratios the warnings judge: trainable weights with ndim >= 2 (matrices, conv kernels).

    Biases and normalization scales are measured too, but not judged: a bias that starts at zero has no
    meaningful ratio, and a BatchNorm scale near 1 moves by ~1e-4 per step in perfectly healthy runs.
    """
    return [n for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
