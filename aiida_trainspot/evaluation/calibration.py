r"""Calibration of committee disagreement against true errors, thresholds and diagnostics.

Linear calibration (the paper's): on labelled frames the committee did not train on, fit
:math:`\delta_\alpha \approx a_\alpha \varepsilon_\alpha` for each property
:math:`\alpha \in \{E, F, \sigma\}`, then

- threshold :math:`\tau_\alpha = a_\alpha \varepsilon_{thr,\alpha}` (a frame is a candidate for
  labelling when :math:`\delta_\alpha > \tau_\alpha`);
- calibrated error estimate :math:`\hat\varepsilon_\alpha = \delta_\alpha / a_\alpha`.

Whose error ε is (``error``): ``'committee_mean'``, the error of the committee's mean
prediction, as passed in (the default of these functions); or ``'members'``, the RMS over the
members of each member's error, :math:`\sqrt{\varepsilon^2 + \delta^2}` (exact, see
:mod:`.disagreement`), the error of the one member that drives an exploration's MD and the one
the paper's reference code fits. A campaign's calibration settings default to
``'committee_mean'`` (``DEFAULT_ERROR_KIND`` of :mod:`.disagreement`): scored like for like
against the same independent truths it flags frames as well and costs fewer labels.
Since a member's squared error holds the spread δ², δ can never exceed it: a large disagreement
always means a large member error, while the committee mean may still be right.

Fitting methods (pairs with a NaN are ignored):

- ``'least_squares'`` (default): through the origin,
  :math:`a = \sum_i \delta_i \varepsilon_i / \sum_i \varepsilon_i^2`;
- ``'median_ratio'`` (robust): :math:`a = \mathrm{median}_i(\delta_i / \varepsilon_i)` over the
  points with :math:`\varepsilon_i > 0` (50 % breakdown point);
- ``'huber'`` (robust): through-origin Huber regression by iteratively reweighted least squares,
  weights :math:`w_i = \min(1, k s / |r_i|)` with :math:`r_i = \delta_i - a \varepsilon_i`,
  :math:`k = 1.345` and the scale :math:`s = 1.4826\,\mathrm{median}_i |r_i|` re-estimated at
  each step, started from the median ratio.

Goodness of fit: the through-origin (uncentred) coefficient of determination
:math:`R^2_0 = 1 - \sum_i (\delta_i - a \varepsilon_i)^2 / \sum_i \delta_i^2`. It lies in [0, 1]
for the least-squares slope (it is the squared cosine between the vectors δ and ε) but is not
comparable with the usual centred :math:`R^2`; a robust slope may make it negative.

Guard rails: with fewer than ``min_points`` valid pairs, :math:`\sum \varepsilon^2 = 0` or a
non-positive slope, the previous iteration's slope is reused (``reused_previous=True``) when
given, otherwise a ValueError names the property.

Default error tolerances :data:`DEFAULT_ERROR_THRESHOLDS` are stored in eV units: 1 meV/atom,
0.1 eV/Å and 1e-3 eV/Å³ (the paper's "1 meV/Å³"; note 1 meV/Å³ = 0.16 GPa).

Power law (option): :math:`\sigma(\delta) = a \delta^b` is the standard deviation of a Gaussian
error model :math:`\varepsilon \sim N(0, \sigma^2)`, fitted to the observed :math:`|\varepsilon|`
by minimising the negative log-likelihood
:math:`\sum_i [\log\sigma_i + \varepsilon_i^2 / (2\sigma_i^2)]` over :math:`(\log a, b)` (convex
in these parameters), on points with :math:`\delta_i > 0`.

Diagnostics of the criterion :math:`\delta > \tau` (predicted positive) against the truth
:math:`\varepsilon > \varepsilon_{thr}` (actual positive), strict inequalities, NaN pairs
ignored: :math:`TPR = TP / (TP + FN)` and :math:`PPV = TP / (TP + FP)`, NaN when the
denominator is zero (no actual positives, or nothing flagged).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy.optimize import minimize

from aiida_trainspot.common.settings import unknown_keys

from .disagreement import (
    DEFAULT_ERROR_KIND,
    DISAGREEMENT_UNITS,
    ERROR_KINDS,
    PROPERTIES,
    errors_of,
    json_float,
    property_arrays,
)

__all__ = [
    'DEFAULT_ERROR_THRESHOLDS',
    'ERROR_KINDS',
    'HELD_OUT_SPLITS',
    'METHODS',
    'SPLITS',
    'Calibration',
    'CalibrationSettings',
    'PowerLawFit',
    'SlopeFit',
    'calibrate',
    'classification_rates',
    'confusion_counts',
    'diagnostics',
    'fit_power_law',
    'fit_slope',
    'rate_grid',
    'through_origin_r2',
]

#: Default tolerances ε_thr: eV/atom, eV/Å, eV/Å³.
DEFAULT_ERROR_THRESHOLDS: dict[str, float] = {'energy': 1e-3, 'forces': 0.1, 'stress': 1e-3}
#: Linear fitting methods.
METHODS = ('least_squares', 'median_ratio', 'huber')
HUBER_K = 1.345
_MAD_TO_SIGMA = 1.4826
#: The dataset splits a calibration can be fitted on.
SPLITS = ('train', 'validation', 'test')
#: The splits the campaign fits on by default: frames the committee did not train on.
HELD_OUT_SPLITS = ('validation', 'test')


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CalibrationSettings:
    """How a committee is calibrated (:func:`calibrate` and the ``calibrate_committee`` step).

    The one source of the defaults and of the checks: the ``calibration`` port of
    ``TrainsPotWorkChain`` defaults to ``CalibrationSettings(splits=HELD_OUT_SPLITS).to_dict()``
    and is validated at submission by :meth:`from_dict`, which the calibration step calls too.

    ``method``: one of :data:`METHODS`. ``min_points``: fewest (δ, ε) pairs a slope is fitted on
    (at least 2). ``splits``: the dataset splits fitted on (empty: every labelled frame; also
    every labelled frame while those splits hold fewer than ``min_points``). ``power_law``:
    also fit the power law of :func:`fit_power_law`. ``error``: whose error δ is fitted to, one
    of ``ERROR_KINDS`` (a dictionary without it means ``DEFAULT_ERROR_KIND``, as for runs
    stored before the key existed).
    """

    method: str = 'least_squares'
    min_points: int = 5
    splits: tuple[str, ...] = ()
    power_law: bool = False
    error: str = DEFAULT_ERROR_KIND

    def __post_init__(self) -> None:
        if isinstance(self.splits, (list, tuple)):
            object.__setattr__(self, 'splits', tuple(self.splits))
        if self.method not in METHODS:
            raise ValueError(f'calibration.method: {self.method!r} is not one of {list(METHODS)}')
        if self.error not in ERROR_KINDS:
            raise ValueError(f'calibration.error: {self.error!r} is not one of {list(ERROR_KINDS)}')
        min_points = self.min_points
        if not isinstance(min_points, int) or isinstance(min_points, bool) or min_points < 2:
            raise ValueError(f'calibration.min_points: must be an integer >= 2, got {min_points!r}')
        if not isinstance(self.splits, tuple) or any(s not in SPLITS for s in self.splits):
            raise ValueError(
                f'calibration.splits: must be a list of {list(SPLITS)}, got {self.splits!r}'
            )
        if not isinstance(self.power_law, bool):
            raise ValueError(
                f'calibration.power_law: must be true or false, got {self.power_law!r}'
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``splits`` a list), the format stored on the port."""
        out = asdict(self)
        out['splits'] = list(self.splits)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationSettings:
        """Inverse of :meth:`to_dict`, missing keys defaulted.

        A bad or unknown key raises ValueError naming it (with the nearest known key).
        """
        known = [f.name for f in fields(cls)]
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(unknown_keys('calibration', unknown, known))
        values = dict(data)
        if 'splits' in values and not isinstance(values['splits'], (list, tuple)):
            raise ValueError(
                f'calibration.splits: must be a list of {list(SPLITS)}, got {values["splits"]!r}'
            )
        return cls(**values)


# ----------------------------------------------------------------------------- linear fits


@dataclass(frozen=True)
class SlopeFit:
    """Result of fitting δ ≈ a ε for one property."""

    property: str
    slope: float
    r2: float
    n_points: int
    method: str
    reused_previous: bool = False


def _valid_pairs(delta: Any, error: Any) -> tuple[np.ndarray, np.ndarray]:
    delta = np.asarray(delta, dtype=float).reshape(-1)
    error = np.asarray(error, dtype=float).reshape(-1)
    if delta.shape != error.shape:
        raise ValueError(f'delta and error differ in length: {delta.size} != {error.size}')
    keep = np.isfinite(delta) & np.isfinite(error)
    return delta[keep], error[keep]


def through_origin_r2(delta: Any, error: Any, slope: float) -> float:
    """:math:`R^2_0 = 1 - \\sum (\\delta - a\\varepsilon)^2 / \\sum \\delta^2`; NaN if undefined."""
    d, e = _valid_pairs(delta, error)
    total = float(np.sum(d**2))
    if d.size == 0 or total == 0.0 or not math.isfinite(slope):
        return math.nan
    return 1.0 - float(np.sum((d - slope * e) ** 2)) / total


def _least_squares_slope(d: np.ndarray, e: np.ndarray) -> float:
    return float(np.sum(d * e) / np.sum(e**2))


def _median_ratio_slope(d: np.ndarray, e: np.ndarray) -> float:
    positive = e > 0
    return float(np.median(d[positive] / e[positive]))


def _huber_slope(d: np.ndarray, e: np.ndarray, iterations: int = 100) -> float:
    slope = _median_ratio_slope(d, e)
    for _ in range(iterations):
        residual = np.abs(d - slope * e)
        scale = _MAD_TO_SIGMA * float(np.median(residual))
        if scale == 0.0:
            return slope
        weight = np.minimum(1.0, HUBER_K * scale / np.maximum(residual, 1e-300))
        new = float(np.sum(weight * d * e) / np.sum(weight * e**2))
        if abs(new - slope) <= 1e-12 * abs(slope):
            return new
        slope = new
    return slope


_FITTERS = {
    'least_squares': _least_squares_slope,
    'median_ratio': _median_ratio_slope,
    'huber': _huber_slope,
}


def fit_slope(
    delta: Any,
    error: Any,
    *,
    method: str = 'least_squares',
    min_points: int = 5,
    previous_slope: float | None = None,
    property_name: str = 'property',
) -> SlopeFit:
    """Fit δ ≈ a ε through the origin (see the module docstring for methods and guard rails).

    :param delta: per-frame disagreement; NaN pairs are ignored.
    :param error: per-frame true error in the same units.
    :param previous_slope: slope reused when the fit is impossible.
    :raises ValueError: when the fit is impossible and there is no previous slope.
    """
    if method not in _FITTERS:
        raise ValueError(f'unknown calibration method {method!r}; choose from {METHODS}')
    d, e = _valid_pairs(delta, error)
    problem = None
    if d.size < min_points:
        problem = f'{d.size} valid (disagreement, error) pairs, fewer than min_points={min_points}'
    elif float(np.sum(e**2)) == 0.0:
        problem = 'every true error is zero'
    else:
        slope = _FITTERS[method](d, e)
        if not (math.isfinite(slope) and slope > 0):
            problem = f'the fitted slope {slope} is not positive'
    if problem is None:
        r2 = through_origin_r2(d, e, slope)
        return SlopeFit(property_name, slope, r2, int(d.size), method)
    if previous_slope is None:
        raise ValueError(
            f'cannot calibrate {property_name!r}: {problem}, and no previous slope to reuse'
        )
    previous = float(previous_slope)
    r2 = through_origin_r2(d, e, previous)
    return SlopeFit(property_name, previous, r2, int(d.size), method, reused_previous=True)


# ----------------------------------------------------------------------------- power law


@dataclass(frozen=True)
class PowerLawFit:
    """Gaussian error model sigma(δ) = a δ^b fitted by maximum likelihood (see module docstring)."""

    a: float
    b: float
    nll: float
    n_points: int

    def sigma(self, delta: Any) -> np.ndarray:
        """Predicted error standard deviation a δ^b (units of the error)."""
        return self.a * np.asarray(delta, dtype=float) ** self.b

    def threshold(self, error_threshold: float) -> float:
        """The disagreement at which sigma(δ) equals ``error_threshold``: (ε_thr / a)^(1/b)."""
        return float((error_threshold / self.a) ** (1.0 / self.b))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {'a': self.a, 'b': self.b, 'nll': json_float(self.nll), 'n_points': self.n_points}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PowerLawFit:
        """Inverse of :meth:`to_dict`."""
        nll = data.get('nll')
        return cls(
            float(data['a']),
            float(data['b']),
            math.nan if nll is None else float(nll),
            int(data['n_points']),
        )


def _power_law_nll(params: np.ndarray, log_delta: np.ndarray, squared: np.ndarray) -> tuple:
    log_a, b = params
    log_sigma = log_a + b * log_delta
    scaled = squared * np.exp(-2.0 * log_sigma)
    value = float(np.sum(log_sigma + 0.5 * scaled))
    d_log_sigma = 1.0 - scaled
    return value, np.array([np.sum(d_log_sigma), np.sum(d_log_sigma * log_delta)])


def fit_power_law(
    delta: Any, error: Any, *, min_points: int = 5, property_name: str = 'property'
) -> PowerLawFit:
    """Fit sigma = a δ^b by the Gaussian negative log-likelihood on pairs with δ > 0.

    Minimises :math:`\\sum_i [\\log\\sigma_i + \\varepsilon_i^2/(2\\sigma_i^2)]` over
    :math:`(\\log a, b)` with BFGS, from the log-log least-squares line.

    :raises ValueError: with fewer than ``min_points`` usable pairs or all errors zero.
    """
    d, e = _valid_pairs(delta, error)
    keep = d > 0
    d, e = d[keep], e[keep]
    if d.size < min_points or not np.any(e != 0):
        raise ValueError(
            f'cannot fit a power law for {property_name!r}: {d.size} pairs with delta > 0 '
            f'(min_points={min_points}) or all errors zero'
        )
    log_delta, squared = np.log(d), e**2
    if np.ptp(log_delta) > 0:
        b0 = float(np.polyfit(log_delta, np.log(np.abs(e) + 1e-300), 1)[0])
    else:
        b0 = 1.0
    log_a0 = 0.5 * math.log(float(np.mean(squared * np.exp(-2.0 * b0 * log_delta))))
    result = minimize(
        _power_law_nll, np.array([log_a0, b0]), args=(log_delta, squared), jac=True, method='BFGS'
    )
    log_a, b = (float(v) for v in result.x)
    return PowerLawFit(math.exp(log_a), b, float(result.fun), int(d.size))


# ----------------------------------------------------------------------------- Calibration


def _thresholds(error_thresholds: Mapping[str, float] | None) -> dict[str, float]:
    merged = dict(DEFAULT_ERROR_THRESHOLDS)
    for name, value in (error_thresholds or {}).items():
        if name not in PROPERTIES:
            raise ValueError(f'unknown property {name!r} in error_thresholds; known: {PROPERTIES}')
        if not (math.isfinite(float(value)) and float(value) > 0):
            raise ValueError(f'error threshold of {name!r} must be positive, got {value!r}')
        merged[name] = float(value)
    return merged


@dataclass(frozen=True)
class Calibration:
    """Calibrated slopes and thresholds per property (units: :data:`DISAGREEMENT_UNITS`).

    ``slopes`` a (dimensionless), ``error_thresholds`` ε_thr, ``thresholds`` τ = a ε_thr
    (derived, so always consistent), ``r2`` the through-origin R² of each fit, ``n_points`` the
    pairs used, ``reused_previous`` whether the previous slope was reused, ``method`` the fitting
    method, ``power_law`` optional :class:`PowerLawFit` by property, ``error`` whose error the
    slopes relate δ to (:data:`ERROR_KINDS`), so also what :meth:`estimate_error` estimates.
    """

    slopes: dict[str, float]
    error_thresholds: dict[str, float] = field(default_factory=dict)
    r2: dict[str, float] = field(default_factory=dict)
    n_points: dict[str, int] = field(default_factory=dict)
    reused_previous: dict[str, bool] = field(default_factory=dict)
    method: str = 'least_squares'
    power_law: dict[str, PowerLawFit] = field(default_factory=dict)
    error: str = 'committee_mean'

    def __post_init__(self) -> None:
        if self.error not in ERROR_KINDS:
            raise ValueError(f'error {self.error!r} is not one of {list(ERROR_KINDS)}')
        slopes = {str(k): float(v) for k, v in self.slopes.items()}
        for name, slope in slopes.items():
            if name not in PROPERTIES:
                raise ValueError(f'unknown property {name!r}; known: {PROPERTIES}')
            if not (math.isfinite(slope) and slope > 0):
                raise ValueError(f'slope of {name!r} must be positive, got {slope}')
        merged = _thresholds(self.error_thresholds)
        object.__setattr__(self, 'slopes', slopes)
        object.__setattr__(self, 'error_thresholds', {k: merged[k] for k in slopes})
        object.__setattr__(self, 'r2', {k: float(self.r2.get(k, math.nan)) for k in slopes})
        object.__setattr__(self, 'n_points', {k: int(self.n_points.get(k, 0)) for k in slopes})
        reused = {k: bool(self.reused_previous.get(k, False)) for k in slopes}
        object.__setattr__(self, 'reused_previous', reused)
        object.__setattr__(self, 'power_law', dict(self.power_law))

    @property
    def properties(self) -> tuple[str, ...]:
        """The calibrated properties."""
        return tuple(self.slopes)

    @property
    def thresholds(self) -> dict[str, float]:
        """τ = a ε_thr per property, in the units of the disagreement."""
        return {k: self.slopes[k] * self.error_thresholds[k] for k in self.slopes}

    def estimate_error(self, name: str, delta: Any) -> np.ndarray:
        """Calibrated estimate ε̂ = δ / a of property ``name``'s error (of kind ``error``)."""
        return np.asarray(delta, dtype=float) / self.slopes[name]

    def with_error_thresholds(self, error_thresholds: Mapping[str, float]) -> Calibration:
        """The same calibration with other tolerances (and hence thresholds)."""
        merged = {**self.error_thresholds, **error_thresholds}
        return Calibration(
            self.slopes,
            merged,
            self.r2,
            self.n_points,
            self.reused_previous,
            self.method,
            self.power_law,
            self.error,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (e.g. for an AiiDA ``Dict``); NaN becomes None."""
        return {
            'method': self.method,
            'error': self.error,
            'slopes': dict(self.slopes),
            'error_thresholds': dict(self.error_thresholds),
            'thresholds': self.thresholds,
            'r2': {k: json_float(v) for k, v in self.r2.items()},
            'n_points': dict(self.n_points),
            'reused_previous': dict(self.reused_previous),
            'power_law': {k: v.to_dict() for k, v in self.power_law.items()},
            'units': {k: DISAGREEMENT_UNITS[k] for k in self.slopes},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; stored thresholds must match slopes times tolerances.

        A dictionary without ``error`` (written before the option existed) is a committee-mean
        calibration.
        """
        calibration = cls(
            slopes=data['slopes'],
            error_thresholds=data.get('error_thresholds', {}),
            r2={k: math.nan if v is None else v for k, v in data.get('r2', {}).items()},
            n_points=data.get('n_points', {}),
            reused_previous=data.get('reused_previous', {}),
            method=data.get('method', 'least_squares'),
            power_law={k: PowerLawFit.from_dict(v) for k, v in data.get('power_law', {}).items()},
            error=data.get('error', 'committee_mean'),
        )
        for name, value in data.get('thresholds', {}).items():
            expected = calibration.thresholds.get(name)
            if expected is None or not math.isclose(value, expected, rel_tol=1e-9):
                raise ValueError(
                    f'stored threshold of {name!r} ({value}) is not slope x error threshold '
                    f'({expected})'
                )
        return calibration


def _previous_slopes(
    previous: Calibration | Mapping[str, float] | None, error: str
) -> dict[str, float]:
    """Slopes the guard rail may reuse: none from a calibration against another kind of error."""
    if previous is None:
        return {}
    if isinstance(previous, Calibration):
        return dict(previous.slopes) if previous.error == error else {}
    return {str(k): float(v) for k, v in previous.items()}


def calibrate(
    disagreement: Any,
    errors: Any,
    *,
    error_thresholds: Mapping[str, float] | None = None,
    method: str = 'least_squares',
    min_points: int = 5,
    previous: Calibration | Mapping[str, float] | None = None,
    properties: Sequence[str] | None = None,
    power_law: bool = False,
    error: str = 'committee_mean',
) -> Calibration:
    """Calibrate every property: slope, R², thresholds (and optionally a power law).

    :param disagreement: per-frame δ by property (a mapping or a ``Disagreement``).
    :param errors: per-frame errors of the committee mean by property (a mapping or a
        ``TrueErrors``); with ``error='members'`` converted to the members' RMS errors by
        :func:`~.disagreement.errors_of` before the fit.
    :param error_thresholds: tolerances ε_thr in eV units, merged over the defaults.
    :param previous: previous calibration (or slopes by property) for the guard rail; a
        calibration against another ``error`` has no slope to lend.
    :param properties: properties to calibrate; default: those with at least one finite
        (δ, ε) pair, plus those of ``previous`` (reused) that have none. An explicitly named
        property goes through the guard rail even without data.
    :param power_law: also fit sigma = a δ^b for each property with enough pairs (skipped silently
        where the fit is impossible).
    """
    deltas = property_arrays(disagreement)
    errs = errors_of(error, deltas, errors)
    previous_slopes = _previous_slopes(previous, error)
    if properties is None:
        properties = [
            name
            for name in PROPERTIES
            if name in previous_slopes
            or (name in deltas and name in errs and _valid_pairs(deltas[name], errs[name])[0].size)
        ]
    fits: dict[str, SlopeFit] = {}
    power: dict[str, PowerLawFit] = {}
    for name in properties:
        if name not in PROPERTIES:
            raise ValueError(f'unknown property {name!r}; known: {PROPERTIES}')
        delta = deltas.get(name, np.zeros(0))
        measured = errs.get(name, np.full(delta.shape, np.nan))
        fits[name] = fit_slope(
            delta,
            measured,
            method=method,
            min_points=min_points,
            previous_slope=previous_slopes.get(name),
            property_name=name,
        )
        if power_law:
            with contextlib.suppress(ValueError):
                power[name] = fit_power_law(
                    delta, measured, min_points=min_points, property_name=name
                )
    return Calibration(
        slopes={k: f.slope for k, f in fits.items()},
        error_thresholds=_thresholds(error_thresholds),
        r2={k: f.r2 for k, f in fits.items()},
        n_points={k: f.n_points for k, f in fits.items()},
        reused_previous={k: f.reused_previous for k, f in fits.items()},
        method=method,
        power_law=power,
        error=error,
    )


# ----------------------------------------------------------------------------- diagnostics


def confusion_counts(delta: Any, error: Any, tau: float, error_threshold: float) -> dict[str, int]:
    """Counts of the criterion δ > τ against the truth ε > ε_thr (NaN pairs ignored).

    :returns: ``{'tp', 'fp', 'fn', 'tn', 'n'}``.
    """
    d, e = _valid_pairs(delta, error)
    predicted, actual = d > tau, e > error_threshold
    tp = int(np.sum(predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    return {'tp': tp, 'fp': fp, 'fn': fn, 'tn': int(d.size) - tp - fp - fn, 'n': int(d.size)}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_rates(
    delta: Any, error: Any, tau: float, error_threshold: float
) -> dict[str, float | int]:
    """Counts plus ``tpr`` = TP/(TP+FN) and ``ppv`` = TP/(TP+FP) (NaN for 0/0)."""
    counts = confusion_counts(delta, error, tau, error_threshold)
    tp, fp, fn = counts['tp'], counts['fp'], counts['fn']
    return {
        **counts,
        'tpr': float(_ratio(tp, tp + fn)),
        'ppv': float(_ratio(tp, tp + fp)),
    }


def rate_grid(delta: Any, error: Any, taus: Any, error_thresholds: Any) -> dict[str, np.ndarray]:
    """TP/FP/FN/TN counts, TPR and PPV on a grid: rows ε_thr (K), columns τ (T).

    :returns: ``{'taus' (T,), 'error_thresholds' (K,), 'tp', 'fp', 'fn', 'tn' (K, T) int,
        'tpr', 'ppv' (K, T) float with NaN for 0/0}``.
    """
    d, e = _valid_pairs(delta, error)
    taus = np.asarray(taus, dtype=float).reshape(-1)
    limits = np.asarray(error_thresholds, dtype=float).reshape(-1)
    sorted_all = np.sort(d)
    # predicted positives for each τ: number of δ strictly above it
    flagged = d.size - np.searchsorted(sorted_all, taus, side='right')
    tp = np.empty((limits.size, taus.size), dtype=np.int64)
    positives = np.empty(limits.size, dtype=np.int64)
    for k, limit in enumerate(limits):
        actual = np.sort(d[e > limit])
        positives[k] = actual.size
        tp[k] = actual.size - np.searchsorted(actual, taus, side='right')
    fp = flagged[None, :] - tp
    fn = positives[:, None] - tp
    tn = d.size - tp - fp - fn
    return {
        'taus': taus,
        'error_thresholds': limits,
        'tp': tp,
        'fp': fp,
        'fn': fn,
        'tn': tn,
        'tpr': _ratio(tp, tp + fn),
        'ppv': _ratio(tp, tp + fp),
    }


def diagnostics(
    calibration: Calibration, disagreement: Any, errors: Any
) -> dict[str, dict[str, float | int]]:
    """:func:`classification_rates` at each calibrated (τ, ε_thr), by property."""
    deltas, errs = property_arrays(disagreement), property_arrays(errors)
    result = {}
    for name, tau in calibration.thresholds.items():
        if name in deltas and name in errs:
            rates = classification_rates(
                deltas[name], errs[name], tau, calibration.error_thresholds[name]
            )
            result[name] = {
                **rates,
                'tau': tau,
                'error_threshold': calibration.error_thresholds[name],
            }
    return result
