"""What the recipe runner does around its steps: pay torch's and matplotlib's one-time costs up front and
measure them (`warm_up`, `figure_cost`), what more threads do for this model (`thread_speedup`), a time bar per step (`Progress`), and evidence made storable as
JSON (`jsonable`)."""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

__all__ = ["Progress", "warm_up", "figure_cost", "REPORT_FIGURES", "jsonable", "thread_speedup", "MIN_THREAD_SPEEDUP"]

MIN_THREAD_SPEEDUP = 1.15   # the recipe trains here at several threads only when they make an update this much faster


class Progress:
    """A time bar for one step (elapsed seconds against its allowance), refreshed by a thread."""

    def __init__(self, desc: str, seconds: float, enabled: bool):
        self.bar = None
        self._stop = threading.Event()
        if not enabled or not sys.stderr.isatty():  # a bar only where it can redraw itself
            return
        from tqdm.auto import tqdm

        self.total = max(1, round(seconds))
        self.bar = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s")
        self.t0 = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.bar.n = min(self.total, round(time.time() - self.t0))
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self._stop.set()
            self._thread.join()
            self.bar.close()


def warm_up() -> float:
    """Pay torch's one-time import costs now (the first optimizer imports torch._dynamo: ~1 s on an idle
    machine, 15 s and more on a loaded one), so they do not distort the first step's timing. Returns the
    seconds it took: what a search worker process will pay again when it starts."""
    import torch

    t0 = time.time()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    return time.time() - t0


REPORT_FIGURES = 12   # the report's figures in figure-equivalents (multi-panel ones count more): what to reserve


def figure_cost() -> float:
    """Seconds one report-sized figure takes to draw and save on this machine now (matplotlib's import is
    paid here, once, as the report would): on a loaded 2-core machine 1-2 s, where an idle one takes 0.1 s."""
    import io

    from trainlab.recipe.report_figures import _plt

    plt = _plt()
    t0 = time.time()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax in axes:
        ax.scatter(range(2000), [i % 7 for i in range(2000)], s=2)
        ax.plot(range(2000), [i % 5 for i in range(2000)])
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png", dpi=90)
    plt.close(fig)
    return time.time() - t0


def jsonable(obj: Any) -> Any:
    """Evidence as JSON (NaN/Inf as None, tuples as lists, dict keys as strings)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def thread_speedup(task: Any, hp: Any, threads: int, seconds: float) -> float | None:
    """How many times faster one training update of `task`'s model (batch `hp.batch_size`, `hp.optimizer`)
    is at `threads` torch threads than at one: timed on one batch, the settings alternated over two rounds,
    within about `seconds`. None when the training data are not tensors in memory or not two updates a
    setting fit. Measured, because it is the model's: on an idle 2-core machine shapes32/resnet 1.84x,
    mnist1d/resnet and digits/cnn 1.2x, mnist1d/mlp 0.8x (its operations are too small to split)."""
    import torch

    from trainlab.optim import build_optimizer
    from trainlab.train.data import Feed

    data = Feed.for_task(task, hp, torch.device("cpu")).in_memory(task.train)
    if data is None or threads <= 1:
        return None
    x, y = data[0][: hp.batch_size], data[1][: hp.batch_size]
    model = task.build_model()
    model.train()
    optimizer = build_optimizer(hp.model_copy(update={"lr": 0.0}), model)   # timed, not trained
    before = torch.get_num_threads()

    def per_update(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            task.loss(model(x), y).backward()
            optimizer.step()
        return (time.perf_counter() - t0) / n

    try:
        torch.set_num_threads(1)
        first = per_update(1)   # pays the first call's one-off costs, and sizes the rounds
        n = min(20, int(seconds / (4 * max(first, 1e-5))) - 1)
        if n < 2:
            return None
        times: dict[int, list[float]] = {1: [], threads: []}
        for _ in range(2):
            for t in (threads, 1):
                torch.set_num_threads(t)
                per_update(1)
                times[t].append(per_update(n))
        return min(times[1]) / min(times[threads])
    finally:
        torch.set_num_threads(before)
