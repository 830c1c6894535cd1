"""The recipe's plan: the budget's split into phases, the sizing of each search to its share, the grids
the searches try and the ranking of their results, and the doctor's move between refine rounds. Pure
arithmetic on numbers the recipe measures (the cost model that turns measurements into seconds is
`costs.py`; the final model's schedule, `final_plan.py`); no training and no store here.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

__all__ = ["PHASES", "CHECKS_CAP", "FINAL_MIN_EPOCHS", "MIN_OVERFIT_STEPS", "PHASE_OF_STEP", "STEP_TITLES", "plan_budget",
           "phase_allowance", "search_rounds", "epochs_fitting", "size_coarse", "size_refine", "size_final", "log_grid",
           "coarse_grid", "refine_grid", "rank_coarse", "better_first", "mean_std", "rank_candidates", "choose_move",
           "MOVES", "COARSE_WEIGHT_DECAYS", "PURPOSES", "next_overfit_lr"]

PHASES = (("checks", 0.10), ("coarse", 0.25), ("refine", 0.35), ("final", 0.30))
CHECKS_CAP = 0.20           # of the budget: the most steps 1-3 take, their floors included (a slow model)
MIN_OVERFIT_STEPS = 30      # step 2's least steps under that cap: enough to see the loss fall
PHASE_OF_STEP = {1: "checks", 2: "checks", 3: "checks", 4: "coarse", 5: "refine", 6: "refine", 7: "refine",
                 8: "final"}
COARSE_WEIGHT_DECAYS = (1e-4, 1e-5, 0.0)
COARSE_LR_EXPONENTS = (0.5, 0.0, -0.5, -1.0)   # step 3's pick x 10^e: one rate above it, two below
REFINE_LR_EXPONENTS = (-0.25, 0.0, 0.25)       # half the coarse grid's spacing around the best rate
FOLDS = (0, 1)                                 # split_seed of the validation folds used for choosing
MAX_COARSE_EPOCHS, MAX_REFINE_EPOCHS, MIN_REFINE_EPOCHS = 5, 20, 10
FINAL_MIN_EPOCHS = 10   # a search runs only when the final model keeps time for this many epochs after it
MAX_ROUNDS = 4                                 # refine rounds (steps 5-7) at most
FIRST_ROUND_SHARE = 0.75                       # of the refine phase, for round 1 (the rest: later rounds, or
                                               # the final model when the loop stops after round 1)
MAX_FINAL_EPOCHS = 200
MAX_MEMBERS = 3
STEP_TITLES = {1: "initial loss", 2: "overfit a small sample", 3: "learning-rate test", 4: "coarse grid",
               5: "refine", 6: "doctor", 7: "loop", 8: "final model"}


# --- budget arithmetic (pure) ---------------------------------------------------------------------

def plan_budget(budget_s: float, phases: Sequence[tuple[str, float]] = PHASES) -> dict[str, float]:
    """Each phase's seconds when every phase takes exactly its share.

    >>> plan_budget(300)
    {'checks': 30.0, 'coarse': 75.0, 'refine': 105.0, 'final': 90.0}
    """
    if not budget_s > 0:
        raise ValueError(f"budget must be > 0 seconds, but got budget_s={budget_s!r}.")
    total = sum(w for _, w in phases)
    return {name: budget_s * w / total for name, w in phases}


def phase_allowance(remaining_s: float, phase: str, phases: Sequence[tuple[str, float]] = PHASES) -> float:
    """Seconds phase `phase` gets when it starts with `remaining_s` left: its share of what is left among
    itself and the phases after it (so time saved earlier is spread over the rest, and an overrun too).

    >>> phase_allowance(300, "checks"), round(phase_allowance(285, "coarse"), 2), phase_allowance(90, "final")
    (30.0, 79.17, 90.0)
    """
    names = [n for n, _ in phases]
    if phase not in names:
        raise ValueError(f"phase must be one of {', '.join(names)}, but got phase={phase!r}.")
    rest = phases[names.index(phase):]
    return max(0.0, remaining_s) * dict(phases)[phase] / sum(w for _, w in rest)


def search_rounds(n: int, workers: int) -> int:
    """Rounds of parallel trainings needed for n trainings on `workers` workers."""
    return math.ceil(n / max(1, workers))


def _sha_cost(n: int, epochs: int, workers: int) -> float:
    """Epoch-rounds of a grid of n under successive halving (reduction 3, rungs at 1, 3, 9 epochs), with
    the first trial of each worker promoted unopposed."""
    survivors = min(n, math.ceil(n / 3) + workers)
    cost = search_rounds(n, workers) * 1 + search_rounds(survivors, workers) * (min(epochs, 3) - 1)
    if epochs > 3:
        cost += search_rounds(min(survivors, math.ceil(n / 9) + workers), workers) * (epochs - 3)
    return cost


def epochs_fitting(seconds: float, rounds: int, epoch_s: float, run_s: float, cap: int) -> int:
    """Most epochs E with rounds x (run_s + E x epoch_s) <= seconds (cap when epoch_s is 0)."""
    if epoch_s <= 0:
        return cap
    return int(max(0.0, seconds / max(1, rounds) - run_s) // epoch_s)


def size_coarse(seconds: float, epoch_s: float, workers: int, n_lrs: int = 4, n_wds: int = 3,
                max_epochs: int = MAX_COARSE_EPOCHS, run_s: float = 0.0) -> dict[str, Any]:
    """How big a coarse grid fits in `seconds`: {"n_lrs", "n_wds", "epochs", "prune"}.

    Each training costs `run_s` (start-up, measured) plus `epoch_s` per epoch; `workers` train side by
    side. Plain grid with the most epochs (at most `max_epochs`) that fit; successive halving ("sha") when
    it reaches more epochs than the plain grid and the plain grid gets fewer than 3; a smaller grid (4x3,
    3x3, 3x2, 2x2, 3x1, 2x1, 1x1) when not even one epoch of every point fits. At least 1 epoch of 1 point.

    >>> size_coarse(75, 1.5, 2)
    {'n_lrs': 4, 'n_wds': 3, 'epochs': 5, 'prune': 'none'}
    """
    shapes = [(4, 3), (3, 3), (3, 2), (2, 2), (3, 1), (2, 1), (1, 1)]
    shapes = [(a, b) for a, b in shapes if a <= n_lrs and b <= n_wds] or [(1, 1)]
    for a, b in shapes:
        n = a * b
        plain = epochs_fitting(seconds, search_rounds(n, workers), epoch_s, run_s, max_epochs)
        if plain >= 1:
            plain = min(plain, max_epochs)
            sha = max([e for e in range(1, max_epochs + 1)
                       if search_rounds(n, workers) * run_s + _sha_cost(n, e, workers) * epoch_s <= seconds], default=0)
            if plain < 3 and n >= 6 and sha > plain:
                return {"n_lrs": a, "n_wds": b, "epochs": sha, "prune": "sha"}
            return {"n_lrs": a, "n_wds": b, "epochs": plain, "prune": "none"}
    return {"n_lrs": 1, "n_wds": 1, "epochs": 1, "prune": "none"}


def size_refine(seconds: float, epoch_s: float, workers: int, n_lrs: int = 3, n_wds: int = 2,
                folds: int = len(FOLDS), min_epochs: int = MIN_REFINE_EPOCHS,
                max_epochs: int = MAX_REFINE_EPOCHS, run_s: float = 0.0) -> dict[str, Any]:
    """How big a refine grid fits: {"n_lrs", "n_wds", "epochs", "short"}; every point runs on `folds` folds.

    The largest grid (3x2, 3x1, 2x1, 1x1) whose points get `min_epochs`; when none does, the largest that
    gets half of them ("short": True), so that there is still a choice to make; else 1x1 with what fits
    (at least 2 epochs), never dropping the second fold, which the choice needs.

    >>> size_refine(63, 1.5, 2)
    {'n_lrs': 3, 'n_wds': 1, 'epochs': 14, 'short': False}
    """
    shapes = [(3, 2), (3, 1), (2, 1), (1, 1)]
    shapes = [(a, b) for a, b in shapes if a <= n_lrs and b <= n_wds] or [(1, 1)]
    fits = [(a, b, epochs_fitting(seconds, search_rounds(a * b * folds, workers), epoch_s, run_s, max_epochs))
            for a, b in shapes]
    for floor, short in ((min_epochs, False), (max(2, min_epochs // 2), True)):
        for a, b, e in fits[:-1] or fits:   # one point is the last resort: it leaves nothing to choose
            if e >= floor:
                return {"n_lrs": a, "n_wds": b, "epochs": min(e, max_epochs), "short": short}
    a, b, e = fits[-1]
    return {"n_lrs": a, "n_wds": b, "epochs": max(2, min(e, max_epochs)), "short": True}


FINAL_SAFETY = 0.9    # the final model is sized to 90% of its time: a cosine cut by the deadline never decays


def size_final(seconds: float, epoch_s: float, workers: int, max_epochs: int = MAX_FINAL_EPOCHS,
               run_s: float = 0.0, safety: float = FINAL_SAFETY, members: int | None = None) -> dict[str, int]:
    """The final model: {"members", "epochs", "patience"}. `members` (default: one per worker, at most
    MAX_MEMBERS) trained `workers` at a time, each for as many epochs as fit in `safety` x `seconds` (the
    deadline still stops it, but then its learning rate never decayed); patience half the epochs (at
    least 5): validation on a few hundred examples plateaus noisily in mid-run, and a stop there would
    cut the decay, where the last points come from.

    >>> size_final(90, 1.5, 2)
    {'members': 2, 'epochs': 54, 'patience': 27}
    """
    members = max(1, min(workers, MAX_MEMBERS)) if members is None else members
    epochs = epochs_fitting(safety * seconds, search_rounds(members, workers), epoch_s, run_s, max_epochs)
    epochs = max(1, min(epochs, max_epochs))
    return {"members": members, "epochs": epochs, "patience": max(5, epochs // 2)}


# --- the grids and their results (pure) ------------------------------------------------------------

def log_grid(center: float, exponents: Sequence[float]) -> list[float]:
    """center x 10^e for each exponent, to 3 significant digits.

    >>> log_grid(0.01, COARSE_LR_EXPONENTS)
    [0.0316, 0.01, 0.00316, 0.001]
    """
    return [float(f"{center * 10 ** e:.3g}") for e in exponents]


def coarse_grid(center: float, n_lrs: int, n_wds: int) -> tuple[list[float], list[float]]:
    """Step 4's (rates, weight decays) around step 3's rate, for a grid sized n_lrs x n_wds (size_coarse).

    >>> coarse_grid(0.01, 2, 2)
    ([0.01, 0.00316], [0.0001, 1e-05])
    """
    exponents = {4: COARSE_LR_EXPONENTS, 3: (0.5, 0.0, -0.5), 2: (0.0, -0.5), 1: (0.0,)}[n_lrs]
    return log_grid(center, exponents), list(COARSE_WEIGHT_DECAYS[:n_wds])


def refine_grid(ranked: Sequence[dict], n_lrs: int, n_wds: int) -> tuple[list[float], list[float]]:
    """Step 5's first (rates, weight decays), sized n_lrs x n_wds (size_refine), around the best coarse row
    of `ranked` (rank_coarse): with 2 rates, the best and its neighbour towards the runner-up's rate; with 2
    weight decays, the best row's and the next best row's other one.

    >>> refine_grid([{"lr": 0.01, "weight_decay": 1e-4}, {"lr": 0.0316, "weight_decay": 0.0}], 2, 2)
    ([0.01, 0.0178], [0.0001, 0.0])
    """
    best = ranked[0]
    other = next((r for r in ranked[1:] if r["weight_decay"] != best["weight_decay"]), None)
    exponents = {3: REFINE_LR_EXPONENTS, 1: (0.0,)}.get(n_lrs)
    if exponents is None:  # two rates: the best and its neighbour towards the runner-up's rate
        second = next((r for r in ranked[1:] if r["lr"] != best["lr"]), None)
        exponents = (0.0, 0.25 if second is not None and second["lr"] > best["lr"] else -0.25)
    wds = [best["weight_decay"]] + ([other["weight_decay"]] if other and n_wds == 2 else [])
    return log_grid(best["lr"], exponents), wds


def better_first(mode: str) -> int:
    """The sign that sorts values best first: -1 when higher is better ("max"), +1 when lower is ("min")."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', but got mode={mode!r}.")
    return -1 if mode == "max" else 1


def rank_coarse(rows: list[dict], epochs: int, mode: str = "max") -> list[dict]:
    """Coarse rows with a value, best first among those that trained all `epochs` (successive halving
    marks the last rung's losers pruned after their full epochs: they count), then the rest. `mode`: the
    metric's direction ("max" for val/acc, "min" for a loss such as a regression's val/loss).

    >>> [r["lr"] for r in rank_coarse([{"lr": 1, "value": 0.5, "epochs": 3}, {"lr": 2, "value": 0.4, "epochs": 3}], 3, "min")]
    [2, 1]
    """
    sign = better_first(mode)
    ok = [r for r in rows if r["value"] is not None and math.isfinite(r["value"])]
    return sorted(ok, key=lambda r: ((r["epochs"] or 0) < epochs, sign * r["value"]))


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (0 for one value, NaN for none)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def rank_candidates(rows: Sequence[dict], point: dict[str, Any], mode: str = "max") -> tuple[list[dict], int]:
    """Step 5's search, point by point: (the points with a finite mean over their folds, complete ones
    first then by mean, best first; the number of points). `rows`: leaderboard rows with params lr,
    weight_decay and split_seed; `point`: what every point shares (width, dropout, epochs). Each
    candidate: point, folds/runs/status ({fold: value/run/status}), mean, std, complete (every fold's
    run completed). `mode`: the metric's direction, as for `rank_coarse`."""
    sign = better_first(mode)
    cands: dict[tuple, dict] = {}
    for r in rows:
        key = (r["params"]["lr"], r["params"]["weight_decay"])
        c = cands.setdefault(key, {"point": {"lr": key[0], "weight_decay": key[1], **point},
                                   "folds": {}, "runs": {}, "status": {}})
        fold = r["params"]["split_seed"]
        c["folds"][str(fold)], c["runs"][str(fold)], c["status"][str(fold)] = r["value"], r["run"], r["status"]
    for c in cands.values():
        c["mean"], c["std"] = mean_std(list(c["folds"].values()))
        c["complete"] = all(s == "completed" for s in c["status"].values()) and len(c["folds"]) == len(FOLDS)
    ranked = sorted((c for c in cands.values() if math.isfinite(c["mean"])),
                    key=lambda c: (not c["complete"], sign * c["mean"]))
    return ranked, len(cands)


# --- the doctor's move (pure) -----------------------------------------------------------------------

MOVES = ("lower lr", "raise lr", "more regularization", "bigger model", "train longer", "add decay")


def choose_move(findings: Sequence[dict], point: dict[str, Any], default_width: int | None) -> dict[str, Any]:
    """The next move from the doctor's findings on the chosen refine runs.

    `findings`: Finding dicts (name, diagnosis, evidence, action, confidence, ...). Priority: a
    divergence (lower the rate by 3), a rate too low (raise it by 3), overfitting (weight decay x10, from
    1e-4 when 0; then dropout +0.1), underfitting (twice the width), still learning (twice the epochs),
    update/weight ratios out of band (rate down or up by 3), else healthy: add decay, which the final
    model does. Returns {"move", "reason",
    "changes": {field: new value}}; "changes" is empty for "add decay".

    >>> choose_move([{"name": "overfitting", "evidence": "gap 9 points"}], {"weight_decay": 0.0}, 32)["changes"]
    {'weight_decay': 0.0001}
    """
    names = {f["name"]: f for f in findings}

    def why(name: str) -> str:
        f = names[name]
        return f"{name} ({f.get('confidence', '?')}): {f.get('evidence', '')}"

    if "diverged" in names:
        return {"move": "lower lr", "reason": why("diverged"), "changes": {"lr": point["lr"] / 3}}
    if "lr_too_low" in names:
        return {"move": "raise lr", "reason": why("lr_too_low"), "changes": {"lr": point["lr"] * 3}}
    if "overfitting" in names:
        wd = point.get("weight_decay") or 0.0
        new = 1e-4 if wd <= 0 else min(wd * 10, 1e-2)
        if new > wd:
            return {"move": "more regularization", "reason": why("overfitting"), "changes": {"weight_decay": new}}
        dropout = point.get("dropout") or 0.0
        if dropout < 0.5:
            return {"move": "more regularization", "reason": why("overfitting"),
                    "changes": {"dropout": round(dropout + 0.1, 2)}}
    if "underfitting" in names:
        width = point.get("width") or default_width
        if width:
            return {"move": "bigger model", "reason": why("underfitting"), "changes": {"width": int(width) * 2}}
    if "plateau" in names:   # the constant rate has given what it can: the decay is the next move
        return {"move": "add decay", "reason": why("plateau") + "; the final model adds the decay", "changes": {}}
    if "train_longer" in names:
        return {"move": "train longer", "reason": why("train_longer"),
                "changes": {"epochs": int(point.get("epochs") or 10) * 2}}
    # The update/weight-ratio warnings come last: they are judged on medians over the run, and with Adam
    # and BatchNorm ratios near 1e-2 are common in healthy runs; a curve finding says more.
    if "update_ratio_high" in names:
        return {"move": "lower lr", "reason": why("update_ratio_high"), "changes": {"lr": point["lr"] / 3}}
    if "update_ratio_low" in names:
        return {"move": "raise lr", "reason": why("update_ratio_low"), "changes": {"lr": point["lr"] * 3}}
    found = ", ".join(sorted(names)) or "none"
    return {"move": "add decay", "reason": f"no finding that step 5 can act on (findings: {found}); "
            "the final model adds the decay (cosine)", "changes": {}}


# --- what each search's runs are for (pure) -----------------------------------------------------------

# Findings a search's trials show by design: stored with each trial (summary["purpose"]), so the doctor and
# the dashboard count them instead of showing them as problems. The recipe still reads them (step 6).
PURPOSES = {
    "coarse": ("train_longer", "underfitting", "plateau", "update_ratio_high", "update_ratio_low"),
    "refine": ("plateau",),
    "final": (),
}


def next_overfit_lr(attempts: Sequence[dict], low: float = 1e-6, high: float = 10.0) -> float | None:
    """The next learning rate for step 2's remedies, from the attempts so far ({"lr", "cause"}), one decade at a
    time inside the bracket they set: a rate whose loss exploded bounds it from above, one whose loss did not
    from below. Too slow or flat: ten times higher, or halfway (in log) to the lowest exploding rate when that
    is closer; exploding: ten times lower, or halfway to the highest rate that did not explode. None when the
    bracket is closed (within a factor 2) or every candidate was tried.

    >>> next_overfit_lr([{"lr": 0.03, "cause": "too slow"}, {"lr": 0.3, "cause": "loss exploding"}])
    0.09486832980505137
    """
    tried = [a["lr"] for a in attempts]
    bad = [a["lr"] for a in attempts if a.get("cause") == "loss exploding"]
    ok = [a["lr"] for a in attempts if a.get("cause") != "loss exploding"]
    hi, lo = (min(bad) if bad else math.inf), (max(ok) if ok else 0.0)
    lr, cause = attempts[-1]["lr"], attempts[-1].get("cause")
    if cause == "loss exploding":
        nxt = lr / 10 if lr / 10 > lo else math.sqrt(lo * hi)
    else:
        nxt = lr * 10 if lr * 10 < hi else math.sqrt(lr * hi)
    if hi / max(lo, 1e-300) <= 2 or not low <= nxt <= high or any(math.isclose(nxt, t, rel_tol=1e-3) for t in tried):
        return None
    return nxt
