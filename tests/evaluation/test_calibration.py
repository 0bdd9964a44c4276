"""Calibration fits, guard rails, the power law, thresholds and TPR/PPV diagnostics."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiida_trainspot.evaluation.calibration import (
    DEFAULT_ERROR_THRESHOLDS,
    HELD_OUT_SPLITS,
    Calibration,
    CalibrationSettings,
    calibrate,
    classification_rates,
    confusion_counts,
    diagnostics,
    fit_power_law,
    fit_slope,
    rate_grid,
    through_origin_r2,
)

FAST = settings(max_examples=30, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)


def linear_data(seed, slope, n=300, noise=0.05, scale=1.0):
    """δ = a ε + Gaussian noise of width noise * a * scale; ε uniform in [0.1, 2] * scale."""
    rng = np.random.default_rng(seed)
    error = rng.uniform(0.1, 2.0, n) * scale
    delta = slope * error + rng.normal(0.0, noise * slope * scale, n)
    return delta, error


# --------------------------------------------------------------------------------------------------
# Slopes


@FAST
@given(SEEDS, st.sampled_from([0.3, 1.0, 2.5, 12.0]), st.sampled_from([1e-3, 0.1, 1.0]))
@pytest.mark.parametrize('method', ['least_squares', 'median_ratio', 'huber'])
def test_slope_recovered_within_5_percent(method, seed, slope, scale):
    delta, error = linear_data(seed, slope, scale=scale)
    fit = fit_slope(delta, error, method=method)
    assert fit.slope == pytest.approx(slope, rel=0.05)
    assert fit.n_points == delta.size and not fit.reused_previous and fit.method == method


@FAST
@given(st.lists(st.tuples(st.floats(1e-3, 10), st.floats(1e-2, 10)), min_size=5, max_size=40))
def test_least_squares_slope_and_r2_are_the_through_origin_formulas(pairs):
    delta, error = np.array(pairs).T
    fit = fit_slope(delta, error)
    slope = sum(d * e for d, e in pairs) / sum(e * e for _, e in pairs)
    assert fit.slope == pytest.approx(slope, rel=1e-9)
    expected = 1 - sum((d - slope * e) ** 2 for d, e in pairs) / sum(d * d for d, _ in pairs)
    assert fit.r2 == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert -1e-12 <= fit.r2 <= 1 + 1e-12


def test_r2_is_one_for_exact_data_and_drops_with_noise():
    _, error = linear_data(0, 2.0)
    assert fit_slope(2.0 * error, error).r2 == pytest.approx(1.0)
    r2 = [fit_slope(*linear_data(1, 2.0, noise=noise)).r2 for noise in (0.01, 0.3, 1.0)]
    assert r2[0] > r2[1] > r2[2] > 0
    assert math.isnan(through_origin_r2([0.0, 0.0], [1.0, 2.0], 1.0))


def test_nan_pairs_are_ignored():
    delta, error = linear_data(2, 3.0, n=50)
    delta_nan = np.concatenate([delta, [np.nan, 1.0, np.nan]])
    error_nan = np.concatenate([error, [1.0, np.nan, np.nan]])
    fit = fit_slope(delta_nan, error_nan)
    assert fit.n_points == 50
    assert fit.slope == pytest.approx(fit_slope(delta, error).slope)


@pytest.mark.parametrize('seed', range(5))
def test_robust_methods_resist_ten_percent_outliers(seed):
    slope = 4.0
    delta, error = linear_data(seed, slope, n=400)
    rng = np.random.default_rng(seed)
    outliers = rng.choice(delta.size, size=40, replace=False)
    delta[outliers] *= 10.0  # committee members disagree wildly where the mean is fine
    assert abs(fit_slope(delta, error).slope / slope - 1) > 0.2  # least squares is dragged off
    for method in ('median_ratio', 'huber'):
        assert fit_slope(delta, error, method=method).slope == pytest.approx(slope, rel=0.05)


def test_unknown_method():
    with pytest.raises(ValueError, match='unknown calibration method'):
        fit_slope([1.0] * 5, [1.0] * 5, method='ransac')


# --------------------------------------------------------------------------------------------------
# Guard rails


@pytest.mark.parametrize(
    ('delta', 'error', 'problem'),
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], 'fewer than min_points'),
        ([0.1] * 6, [0.0] * 6, 'every true error is zero'),
        ([0.0] * 6, [0.1] * 6, 'not positive'),
        ([np.nan] * 8, [1.0] * 8, 'fewer than min_points'),
    ],
)
def test_guard_rail_reuses_previous_or_raises(delta, error, problem):
    fit = fit_slope(delta, error, previous_slope=2.5, property_name='stress')
    assert fit.reused_previous and fit.slope == 2.5
    with pytest.raises(ValueError, match=rf"'stress'.*{problem}"):
        fit_slope(delta, error, property_name='stress')


def test_min_points_is_respected():
    delta, error = linear_data(3, 1.5, n=7)
    assert not fit_slope(delta, error, min_points=7).reused_previous
    assert fit_slope(delta, error, min_points=8, previous_slope=1.0).reused_previous


# --------------------------------------------------------------------------------------------------
# Calibration


def test_calibrate_thresholds_and_estimates():
    delta_e, error_e = linear_data(0, 2.0, scale=1e-3)
    delta_f, error_f = linear_data(1, 0.5, scale=0.1)
    cal = calibrate({'energy': delta_e, 'forces': delta_f}, {'energy': error_e, 'forces': error_f})
    assert cal.properties == ('energy', 'forces')
    for name in cal.properties:
        assert cal.thresholds[name] == pytest.approx(
            cal.slopes[name] * DEFAULT_ERROR_THRESHOLDS[name]
        )
    assert cal.thresholds['energy'] == pytest.approx(2.0e-3, rel=0.05)
    assert cal.thresholds['forces'] == pytest.approx(0.05, rel=0.05)
    np.testing.assert_allclose(
        cal.estimate_error('forces', delta_f), delta_f / cal.slopes['forces']
    )
    custom = calibrate({'energy': delta_e}, {'energy': error_e}, error_thresholds={'energy': 2e-3})
    assert custom.thresholds['energy'] == pytest.approx(2 * cal.thresholds['energy'])
    assert custom.with_error_thresholds({'energy': 1e-3}).thresholds == pytest.approx(
        {'energy': cal.thresholds['energy']}
    )


def test_calibrate_without_stress_data():
    delta, error = linear_data(0, 2.0)
    nan = np.full(delta.size, np.nan)
    data = {'energy': delta, 'forces': delta, 'stress': nan}
    errors = {'energy': error, 'forces': error, 'stress': nan}
    cal = calibrate(data, errors)
    assert 'stress' not in cal.slopes
    previous = Calibration({'energy': 1.0, 'stress': 3.0})
    cal = calibrate(data, errors, previous=previous)
    assert cal.slopes['stress'] == 3.0 and cal.reused_previous == {
        'energy': False,
        'forces': False,
        'stress': True,
    }
    with pytest.raises(ValueError, match="'stress'"):
        calibrate(data, errors, properties=['energy', 'stress'])


def test_calibrate_guard_rail_with_few_points():
    delta, error = linear_data(0, 2.0, n=4)
    with pytest.raises(ValueError, match="cannot calibrate 'forces'"):
        calibrate({'forces': delta}, {'forces': error})
    cal = calibrate({'forces': delta}, {'forces': error}, previous={'forces': 1.7})
    assert cal.slopes == {'forces': 1.7} and cal.reused_previous == {'forces': True}
    assert cal.n_points == {'forces': 4}


def test_calibration_json_round_trip():
    delta, error = linear_data(5, 2.0)
    cal = calibrate(
        {'energy': delta, 'forces': delta},
        {'energy': error, 'forces': error},
        method='huber',
        power_law=True,
        error_thresholds={'forces': 0.05},
    )
    cal = Calibration(
        cal.slopes,
        cal.error_thresholds,
        {'energy': math.nan},
        cal.n_points,
        {},
        cal.method,
        cal.power_law,
    )
    text = json.dumps(cal.to_dict(), allow_nan=False)
    back = Calibration.from_dict(json.loads(text))
    assert back.slopes == cal.slopes and back.thresholds == cal.thresholds
    assert back.method == 'huber' and back.n_points == cal.n_points
    assert math.isnan(back.r2['energy'])
    assert back.power_law == cal.power_law and set(back.power_law) == {'energy', 'forces'}
    tampered = json.loads(text)
    tampered['thresholds']['forces'] *= 2
    with pytest.raises(ValueError, match='threshold'):
        Calibration.from_dict(tampered)


@pytest.mark.parametrize('ratio', [0.5, 2.0])
def test_calibration_against_member_errors(ratio):
    rng = np.random.default_rng(3)
    mean_error = rng.uniform(0.01, 0.3, 40)
    delta = ratio * mean_error * rng.lognormal(0, 0.3, 40)
    member_error = np.hypot(mean_error, delta)
    cal = calibrate({'forces': delta}, {'forces': mean_error}, error='members')
    assert cal.error == 'members'
    assert cal.slopes['forces'] == pytest.approx(
        delta @ member_error / (member_error @ member_error)
    )
    # a member's error holds the spread, so δ never exceeds it: the slope stays below one even
    # where the disagreement overestimates the committee mean's error
    assert cal.slopes['forces'] < 1.0
    assert calibrate({'forces': delta}, {'forces': mean_error}).slopes['forces'] > ratio * 0.9
    assert Calibration.from_dict(cal.to_dict()).error == 'members'
    old = calibrate({'forces': delta}, {'forces': mean_error}).to_dict()
    del old['error']  # written before the option existed
    assert Calibration.from_dict(old).error == 'committee_mean'
    assert cal.with_error_thresholds({'forces': 0.2}).error == 'members'


def test_previous_slope_of_another_error_is_not_reused():
    previous = Calibration({'forces': 0.3}, error='committee_mean')
    few = ({'forces': np.array([0.1])}, {'forces': np.array([0.2])})
    reused = calibrate(*few, previous=previous)
    assert reused.reused_previous == {'forces': True} and reused.slopes == {'forces': 0.3}
    with pytest.raises(ValueError, match='no previous slope'):
        calibrate(*few, previous=previous, error='members')


@pytest.mark.parametrize(
    'kwargs',
    [
        {'slopes': {'energy': -1.0}},
        {'slopes': {'virial': 1.0}},
        {'slopes': {'energy': 1.0}, 'error_thresholds': {'energy': 0.0}},
        {'slopes': {'energy': 1.0}, 'error': 'median'},
    ],
)
def test_calibration_validates(kwargs):
    with pytest.raises(ValueError):
        Calibration(**kwargs)


# --------------------------------------------------------------------------------------------------
# Power law


@pytest.mark.parametrize(('a', 'b'), [(0.5, 1.0), (2.0, 0.7), (0.1, 1.5)])
@pytest.mark.parametrize('seed', [0, 1])
def test_power_law_fit_recovers_parameters(a, b, seed):
    rng = np.random.default_rng(seed)
    delta = np.exp(rng.normal(-3.0, 1.0, 4000))
    error = np.abs(rng.normal(0.0, a * delta**b))
    fit = fit_power_law(delta, error)
    assert fit.a == pytest.approx(a, rel=0.1)
    assert fit.b == pytest.approx(b, rel=0.1)
    assert fit.n_points == delta.size
    np.testing.assert_allclose(fit.sigma(delta), fit.a * delta**fit.b)
    assert fit.sigma(fit.threshold(0.01)) == pytest.approx(0.01)
    # the optimum: any perturbation increases the negative log-likelihood
    sigma = fit.a * delta**fit.b
    best = np.sum(np.log(sigma) + error**2 / (2 * sigma**2))
    assert fit.nll == pytest.approx(best)
    for da, db in [(1.05, 0), (0.95, 0), (1, 0.02), (1, -0.02)]:
        other = fit.a * da * delta ** (fit.b + db)
        assert np.sum(np.log(other) + error**2 / (2 * other**2)) > best


def test_power_law_needs_positive_disagreement():
    with pytest.raises(ValueError, match="'stress'"):
        fit_power_law([0.0] * 10, [1.0] * 10, property_name='stress')


# --------------------------------------------------------------------------------------------------
# Diagnostics

values = st.lists(
    st.tuples(
        st.one_of(st.floats(0, 1), st.just(np.nan)), st.one_of(st.floats(0, 1), st.just(np.nan))
    ),
    max_size=60,
)


def brute_counts(pairs, tau, limit):
    counts = {'tp': 0, 'fp': 0, 'fn': 0, 'tn': 0}
    for d, e in pairs:
        if math.isnan(d) or math.isnan(e):
            continue
        key = ('t' if (d > tau) == (e > limit) else 'f') + ('p' if d > tau else 'n')
        counts[key] += 1
    return counts


@settings(max_examples=100, deadline=None)
@given(values, st.floats(0, 1), st.floats(0, 1))
def test_tpr_ppv_equal_brute_force_counts(pairs, tau, limit):
    delta = np.array([p[0] for p in pairs], dtype=float)
    error = np.array([p[1] for p in pairs], dtype=float)
    expected = brute_counts(pairs, tau, limit)
    got = classification_rates(delta, error, tau, limit)
    for key in expected:
        assert got[key] == expected[key]
    assert got['n'] == sum(expected.values())
    tp, fp, fn = expected['tp'], expected['fp'], expected['fn']
    if tp + fn:
        assert got['tpr'] == pytest.approx(tp / (tp + fn))
    else:
        assert math.isnan(got['tpr'])
    if tp + fp:
        assert got['ppv'] == pytest.approx(tp / (tp + fp))
    else:
        assert math.isnan(got['ppv'])


@FAST
@given(
    values,
    st.lists(st.floats(0, 1), min_size=1, max_size=6),
    st.lists(st.floats(0, 1), min_size=1, max_size=6),
)
def test_rate_grid_matches_pointwise_rates(pairs, taus, limits):
    delta = np.array([p[0] for p in pairs], dtype=float)
    error = np.array([p[1] for p in pairs], dtype=float)
    grid = rate_grid(delta, error, taus, limits)
    assert grid['tpr'].shape == (len(limits), len(taus))
    for k, limit in enumerate(limits):
        for t, tau in enumerate(taus):
            expected = brute_counts(pairs, tau, limit)
            for key, count in expected.items():
                assert grid[key][k, t] == count
            point = classification_rates(delta, error, tau, limit)
            for key in ('tpr', 'ppv'):
                np.testing.assert_equal(grid[key][k, t], point[key])


def test_zero_denominators_are_nan():
    rates = classification_rates([0.1, 0.2], [0.0, 0.0], tau=1.0, error_threshold=0.5)
    assert math.isnan(rates['tpr']) and math.isnan(rates['ppv'])
    assert confusion_counts([], [], 0.1, 0.1) == {'tp': 0, 'fp': 0, 'fn': 0, 'tn': 0, 'n': 0}


def test_diagnostics_of_a_calibration():
    delta, error = linear_data(4, 2.0, n=500, noise=0.2, scale=0.1)
    cal = calibrate({'forces': delta}, {'forces': error})
    result = diagnostics(cal, {'forces': delta, 'energy': delta}, {'forces': error})
    assert set(result) == {'forces'}
    forces = result['forces']
    assert forces['tau'] == cal.thresholds['forces']
    assert forces['error_threshold'] == DEFAULT_ERROR_THRESHOLDS['forces']
    expected = classification_rates(delta, error, cal.thresholds['forces'], 0.1)
    assert {k: forces[k] for k in expected} == expected
    assert forces['tpr'] > 0.8 and forces['ppv'] > 0.8  # a well-calibrated committee
    json.dumps(result, allow_nan=False)


def test_calibration_settings_defaults_and_round_trip():
    default = CalibrationSettings()
    assert default.to_dict() == {
        'method': 'least_squares',
        'min_points': 5,
        'splits': [],  # every labelled frame, as a dictionary without `splits` always meant
        'power_law': False,
        'error': 'committee_mean',
    }
    assert CalibrationSettings.from_dict({}) == default
    # runs stored without an `error` key fitted the committee mean's error: still so
    assert CalibrationSettings.from_dict({'method': 'huber'}).error == 'committee_mean'
    held_out = CalibrationSettings(splits=HELD_OUT_SPLITS, method='huber', power_law=True)
    assert held_out.to_dict()['splits'] == ['validation', 'test']
    assert CalibrationSettings.from_dict(held_out.to_dict()) == held_out
    assert CalibrationSettings.from_dict(json.loads(json.dumps(held_out.to_dict()))) == held_out


@pytest.mark.parametrize(
    ('values', 'match'),
    [
        ({'methd': 'huber'}, r"calibration: unknown keys \['methd'\]; did you mean 'method'"),
        ({'method': 'ransac'}, 'calibration.method:'),
        ({'min_points': 1}, r'calibration.min_points: must be an integer >= 2'),
        ({'min_points': 5.0}, 'calibration.min_points:'),
        ({'min_points': True}, 'calibration.min_points:'),
        ({'splits': 'test'}, 'calibration.splits:'),
        ({'splits': ['holdout']}, 'calibration.splits:'),
        ({'error': 'median'}, 'calibration.error:'),
        ({'power_law': 'yes'}, 'calibration.power_law:'),
    ],
)
def test_calibration_settings_refuse_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        CalibrationSettings.from_dict(values)
