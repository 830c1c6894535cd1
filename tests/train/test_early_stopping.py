"""EarlyStopping as the rule it is: plain lists of validation values in, decisions out; no model, no loop."""

import math

import pytest

from trainlab.train import Decision, EarlyStopping


def _run(es: EarlyStopping, values: list[float]) -> list[Decision]:
    return [es.update(v, epoch) for epoch, v in enumerate(values, start=1)]


def test_max_mode_improves_on_higher_values_and_stops_after_patience():
    es = EarlyStopping("val/acc", "max", patience=2)
    decisions = _run(es, [0.5, 0.6, 0.6, 0.59])
    assert [d.improved for d in decisions] == [True, True, False, False]
    assert [d.stop for d in decisions] == [False, False, False, True]
    assert (es.best, es.best_epoch, es.bad_checks) == (0.6, 2, 2)
    assert decisions[-1].reason == "stopped early: val/acc did not improve for 2 validations (best 0.6 at epoch 2)"


def test_min_mode_improves_on_lower_values_and_an_improvement_resets_patience():
    es = EarlyStopping("val/loss", "min", patience=3)
    decisions = _run(es, [1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.76])
    assert [d.improved for d in decisions] == [True, True, False, False, True, False, False]
    assert not any(d.stop for d in decisions), "two bad checks after the improvement at 0.7: not yet 3"
    assert (es.best, es.best_epoch, es.bad_checks) == (0.7, 5, 2)
    assert es.update(0.71, 8).stop, "the third bad check in a row stops"


@pytest.mark.parametrize("patience", [1, 2, 5])
def test_patience_counts_validations_without_improvement(patience):
    es = EarlyStopping("val/acc", "max", patience=patience)
    decisions = _run(es, [0.9] + [0.1] * (patience + 2))
    first_stop = next(i for i, d in enumerate(decisions) if d.stop)
    assert first_stop == patience, "the patience-th bad check after the best stops, not one earlier or later"


def test_without_patience_it_never_stops_but_tracks_the_best():
    es = EarlyStopping("val/loss", "min", patience=None)
    decisions = _run(es, [2.0, 1.0] + [5.0] * 50)
    assert not any(d.stop for d in decisions)
    assert (es.best, es.best_epoch, es.bad_checks) == (1.0, 2, 50)


def test_min_delta_is_the_improvement_that_counts():
    # Values exact in binary: best + min_delta is exactly 1.25, which does not count (more than min_delta does).
    es = EarlyStopping("val/acc", "max", patience=None, min_delta=0.25)
    assert [d.improved for d in _run(es, [1.0, 1.25, 1.125, 1.5])] == [True, False, False, True]
    assert es.best == 1.5
    es = EarlyStopping("val/loss", "min", patience=None, min_delta=0.25)
    assert [d.improved for d in _run(es, [1.0, 0.75, 0.875, 0.5])] == [True, False, False, True]
    assert es.best == 0.5
    no_delta = EarlyStopping("val/loss", "min", patience=None)
    assert [d.improved for d in _run(no_delta, [1.0, 0.75])] == [True, True], "without min_delta any drop counts"


def test_nan_never_improves():
    es = EarlyStopping("val/loss", "min", patience=2)
    decisions = _run(es, [math.nan, 1.0, math.nan, math.nan])
    assert [d.improved for d in decisions] == [False, True, False, False]
    assert decisions[-1].stop and es.best == 1.0 and es.best_epoch == 2


def test_state_dict_round_trip_continues_the_same_decisions():
    values = [0.5, 0.7, 0.65, 0.66, 0.64, 0.8, 0.7, 0.7, 0.7]
    whole = EarlyStopping("val/acc", "max", patience=3, min_delta=0.01)
    expected = _run(whole, values)
    first = EarlyStopping("val/acc", "max", patience=3, min_delta=0.01)
    _run(first, values[:4])
    saved = first.state_dict()
    assert saved == {"best": 0.7, "best_epoch": 2, "bad_checks": 2}
    resumed = EarlyStopping("val/acc", "max", patience=3, min_delta=0.01)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved
    rest = [resumed.update(v, epoch) for epoch, v in enumerate(values[4:], start=5)]
    assert rest == expected[4:]
    assert resumed.state_dict() == whole.state_dict()
    fresh = EarlyStopping("val/acc", "max", patience=3, min_delta=0.01)
    assert [fresh.update(v).stop for v in values[4:5]] != [d.stop for d in expected[4:5]], \
        "without the loaded state the same values decide otherwise (the round trip carries the state)"


def test_bad_settings_are_value_errors_that_name_the_value():
    with pytest.raises(ValueError, match=r"mode must be 'min' or 'max', but got mode='up'"):
        EarlyStopping("val/acc", "up")
    with pytest.raises(ValueError, match=r"patience must be at least 1 \(or None\), but got patience=0"):
        EarlyStopping("val/acc", "max", patience=0)
    with pytest.raises(ValueError, match=r"min_delta must be non-negative, but got min_delta=-0.1"):
        EarlyStopping("val/acc", "max", min_delta=-0.1)
