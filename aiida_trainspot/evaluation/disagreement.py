r"""Committee statistics, disagreement, true errors and error metrics (numpy only).

Notation: a committee of :math:`M` members predicts, for frame :math:`S` with :math:`N_S` atoms,
energies :math:`E^m`, forces :math:`F^m_{ic}` (atom :math:`i`, Cartesian component :math:`c`) and
stresses :math:`\sigma^m_{kl}`. Bars are committee means, ``std`` and ``var`` are taken over the
members with ``ddof=0``.

Disagreements (units of the property, energy per atom):

.. math::

    \delta_E = \mathrm{std}_m(E^m / N_S)                                    \quad [eV/atom]

    \delta_F = \sqrt{\frac{1}{3 N_S} \sum_{i,c} \mathrm{var}_m(F^m_{ic})}    \quad [eV/Å]

    \delta_F^{max} = \max_i \sqrt{\sum_c \mathrm{var}_m(F^m_{ic})}           \quad [eV/Å]

    \delta_\sigma = \sqrt{\frac{1}{9} \sum_{k,l=1}^{3} \mathrm{var}_m(\sigma^m_{kl})}
                                                                            \quad [eV/Å^3]

:math:`\delta_F^{max}` is the DP-GEN "max force deviation". The stress sum runs over the nine
components of the full symmetric tensor, i.e. over the six Voigt components with the three
off-diagonal ones counted twice (weights :data:`VOIGT_WEIGHTS`). This choice makes
:math:`\delta_\sigma` invariant under rotations of the frame (the summed variance is the mean
squared Frobenius distance to the committee mean) and puts it on the same per-component RMS
scale as :math:`\delta_F`.

True errors of the committee mean against reference labels, in the same units:

.. math::

    \varepsilon_E = |\bar E - E^{ref}| / N_S

    \varepsilon_F = \sqrt{\frac{1}{3 N_S} \sum_{i,c} (\bar F_{ic} - F^{ref}_{ic})^2}

    \varepsilon_\sigma = \sqrt{\frac{1}{9} \sum_{k,l} (\bar\sigma_{kl} - \sigma^{ref}_{kl})^2}

NaN where the label (or the stress prediction) is missing.

The members' own errors follow from these without another pass over the frames. With
``ddof=0``, the mean over members of a member's squared error splits into the committee mean's
and the spread (bias-variance):
:math:`\frac{1}{M}\sum_m (y^m - y^{ref})^2 = (\bar y - y^{ref})^2 + \mathrm{var}_m(y^m)` for every
value :math:`y`; averaged over the same values as ε and δ,

.. math::

    \varepsilon^{members}_\alpha = \sqrt{\frac{1}{M} \sum_m (\varepsilon^m_\alpha)^2}
                                 = \sqrt{\varepsilon_\alpha^2 + \delta_\alpha^2}

is the RMS over the members of each member's error: the expected error of one member drawn at
random, such as the one that drives an exploration's MD (the paper's Φ1).

Non-finite predictions: a member whose energy, or force on any atom, is not finite on a frame
has no prediction there (:meth:`CommitteePredictions.member_finite`; its values for that frame are
set to NaN). Means, spreads and errors of that frame use the remaining members: the mean needs
one, a spread (``std``, every δ) two, unless the committee has a single member; with fewer the
value is NaN. Frames where every member is finite get exactly the values of the plain formulas.

Everything is vectorised over frames (``np.add.reduceat`` on the frame offsets); frames must
hold at least one atom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    'DEFAULT_ERROR_KIND',
    'DISAGREEMENT_UNITS',
    'ERROR_KINDS',
    'LEGACY_ERROR_KIND',
    'METRIC_UNITS',
    'PROPERTIES',
    'VOIGT_WEIGHTS',
    'CommitteePredictions',
    'CommitteeStatistics',
    'Disagreement',
    'PropertyMetrics',
    'ReferenceLabels',
    'TrueErrors',
    'check_n_atoms',
    'committee_disagreement',
    'committee_statistics',
    'energy_disagreement',
    'error_metrics',
    'errors_of',
    'force_disagreement',
    'frame_of_atom',
    'frame_offsets',
    'json_float',
    'max_force_disagreement',
    'max_force_norm',
    'member_errors',
    'property_arrays',
    'stress_disagreement',
    'true_errors',
    'voigt_mean_abs',
    'voigt_rms',
]

#: Property names, in the order used everywhere.
PROPERTIES = ('energy', 'forces', 'stress')
#: Whose error a calibration fits δ against: the committee mean's, or each member's (RMS).
ERROR_KINDS = ('committee_mean', 'members')
#: The default kind of a campaign's calibration settings (``calibrate_committee``, the work
#: chain, the protocols): the committee mean's error. Scored like for like against truths that
#: hold no δ (the committee mean's error and a single member's), the two kinds flag frames about
#: equally well, and the committee mean's needs fewer labels under the paper's random cap (0.65
#: of random's labels against 0.88, 3 seeds; equal under the disagreement-ordered cap; see
#: docs/benchmarks.md). The members' RMS error holds δ, so scoring it against itself flatters it.
#: The pure functions fit the errors passed to them unless told otherwise.
DEFAULT_ERROR_KIND = 'committee_mean'
#: The kind of a stored calibration that names none: it was written before the option existed,
#: when every fit was against the committee mean's error.
LEGACY_ERROR_KIND = 'committee_mean'
#: Units of disagreements, true errors, thresholds and calibrated error estimates.
DISAGREEMENT_UNITS = {'energy': 'eV/atom', 'forces': 'eV/Angstrom', 'stress': 'eV/Angstrom^3'}
#: Units of the RMSE/MAE metrics.
METRIC_UNITS = {'energy': 'meV/atom', 'forces': 'meV/Angstrom', 'stress': 'meV/Angstrom^3'}
#: Multiplicity of each Voigt component (xx, yy, zz, yz, xz, xy) in the full 3x3 tensor.
VOIGT_WEIGHTS = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
_MILLI = 1000.0


# ----------------------------------------------------------------------------- frame layout


def check_n_atoms(n_atoms: Any) -> np.ndarray:
    """Return ``n_atoms`` as a 1-D int64 array, raising ValueError unless every count is >= 1."""
    array = np.asarray(n_atoms)
    if array.ndim != 1:
        raise ValueError(f'n_atoms must be one-dimensional, got shape {array.shape}')
    integer = np.issubdtype(array.dtype, np.integer)
    if array.size and not integer and not np.all(np.equal(np.mod(array, 1), 0)):
        raise ValueError('n_atoms must hold integers')
    array = array.astype(np.int64)
    if np.any(array < 1):
        raise ValueError('every frame must hold at least one atom (n_atoms >= 1)')
    return array


def frame_offsets(n_atoms: Any) -> np.ndarray:
    """Start of each frame in the per-atom arrays, plus the total at the end: shape (F + 1,)."""
    counts = check_n_atoms(n_atoms)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def frame_of_atom(n_atoms: Any) -> np.ndarray:
    """Index of the frame each atom belongs to: shape (A,)."""
    counts = check_n_atoms(n_atoms)
    return np.repeat(np.arange(counts.size), counts)


def _reduce(ufunc: np.ufunc, values: np.ndarray, n_atoms: np.ndarray, axis: int) -> np.ndarray:
    """Reduce ``values`` over the atoms of each frame along ``axis`` (atoms -> frames)."""
    starts = frame_offsets(n_atoms)[:-1]
    if values.shape[axis] != int(n_atoms.sum()):
        raise ValueError(
            f'per-atom array has {values.shape[axis]} atoms, n_atoms sums to {int(n_atoms.sum())}'
        )
    return ufunc.reduceat(values, starts, axis=axis)


# ----------------------------------------------------------------------------- small helpers


def voigt_rms(voigt: np.ndarray) -> np.ndarray:
    r"""RMS over the nine tensor components of Voigt 6-vectors (last axis).

    :math:`\sqrt{(v_{xx}^2 + v_{yy}^2 + v_{zz}^2 + 2 v_{yz}^2 + 2 v_{xz}^2 + 2 v_{xy}^2) / 9}`.
    """
    voigt = np.asarray(voigt, dtype=float)
    return np.sqrt(np.sum(VOIGT_WEIGHTS * voigt**2, axis=-1) / 9.0)


def voigt_mean_abs(voigt: np.ndarray) -> np.ndarray:
    """Mean absolute value over the nine tensor components of Voigt 6-vectors (last axis)."""
    voigt = np.asarray(voigt, dtype=float)
    return np.sum(VOIGT_WEIGHTS * np.abs(voigt), axis=-1) / 9.0


def json_float(value: Any) -> float | None:
    """``float(value)``, or None when it is not finite (NaN/inf are not valid JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


def property_arrays(values: Any) -> dict[str, np.ndarray]:
    """Per-frame arrays by property name from a mapping or an object with ``as_dict()``."""
    if hasattr(values, 'as_dict'):
        values = values.as_dict()
    if not isinstance(values, Mapping):
        raise TypeError(f'expected a mapping of property arrays, got {type(values).__name__}')
    return {str(k): np.asarray(v, dtype=float).reshape(-1) for k, v in values.items()}


def max_force_norm(forces: np.ndarray, n_atoms: Any) -> np.ndarray:
    r"""Per-frame :math:`\max_i |F_i|` (eV/Å) of forces (A, 3), e.g. of the committee mean."""
    counts = check_n_atoms(n_atoms)
    norms = np.linalg.norm(np.asarray(forces, dtype=float), axis=-1)
    return _reduce(np.maximum, norms, counts, axis=0)


def _frame_mask(mask: Any, n_frames: int, name: str) -> np.ndarray:
    if mask is None:
        return np.ones(n_frames, dtype=bool)
    array = np.asarray(mask, dtype=bool).reshape(-1)
    if array.shape != (n_frames,):
        raise ValueError(f'{name} must have shape ({n_frames},), got {array.shape}')
    return array


def _float_array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.array(value, dtype=float)  # a copy: the caller's array is never modified
    if array.shape != shape:
        raise ValueError(f'{name} must have shape {shape}, got {array.shape}')
    return array


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True, eq=False)
class CommitteePredictions:
    """Predictions of an ``M``-member committee on ``F`` frames with ``A`` atoms in total.

    :param n_atoms: (F,) atoms per frame.
    :param energy: (M, F) total energies, eV.
    :param forces: (M, A, 3) forces, eV/Å.
    :param stress: (M, F, 6) Voigt stresses, eV/Å³ (ASE sign), or None when not predicted.
    :param stress_mask: (F,) frames that carry a stress prediction; rows outside it are set to
        NaN. A frame whose stress is NaN for any finite member counts as missing as well.

    A member whose energy or any force of a frame is not finite has no prediction for that
    frame (:meth:`member_finite`): its energy, forces and stress there are set to NaN, and the
    statistics of the frame use the other members.
    """

    n_atoms: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray | None = None
    stress_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_atoms = check_n_atoms(self.n_atoms)
        energy = np.array(self.energy, dtype=float)
        if energy.ndim != 2 or energy.shape[0] < 1 or energy.shape[1] != n_atoms.size:
            raise ValueError(f'energy must have shape (M, {n_atoms.size}), got {energy.shape}')
        n_members = energy.shape[0]
        forces = _float_array(self.forces, (n_members, int(n_atoms.sum()), 3), 'forces')
        finite = np.isfinite(energy) & _reduce(
            np.logical_and, np.isfinite(forces).all(axis=-1), n_atoms, axis=1
        )
        energy[~finite] = np.nan
        forces[~np.repeat(finite, n_atoms, axis=1)] = np.nan
        stress = None
        if self.stress is not None:
            stress = _float_array(self.stress, (n_members, n_atoms.size, 6), 'stress')
            mask = _frame_mask(self.stress_mask, n_atoms.size, 'stress_mask')
            stress[:, ~mask] = np.nan
            stress[~finite] = np.nan
        elif self.stress_mask is not None:
            raise ValueError('stress_mask given without stress')
        object.__setattr__(self, 'n_atoms', n_atoms)
        object.__setattr__(self, 'energy', energy)
        object.__setattr__(self, 'forces', forces)
        object.__setattr__(self, 'stress', stress)
        object.__setattr__(self, 'stress_mask', self.stress_present())

    @property
    def n_members(self) -> int:
        """Committee size M."""
        return int(self.energy.shape[0])

    @property
    def n_frames(self) -> int:
        """Number of frames F."""
        return int(self.n_atoms.size)

    def member_finite(self) -> np.ndarray:
        """(M, F) whether each member predicted a finite energy and finite forces on each frame."""
        return np.isfinite(self.energy)

    def n_finite(self) -> np.ndarray:
        """(F,) number of members with a finite prediction on each frame."""
        return self.member_finite().sum(axis=0)

    def non_finite(self, members: Sequence[int] | None = None) -> np.ndarray:
        """(F,) frames where any of ``members`` (default: all) has no finite prediction."""
        finite = self.member_finite()
        if members is not None:
            finite = finite[np.asarray(members, dtype=np.int64).reshape(-1)]
        return ~finite.all(axis=0)

    def stress_present(self) -> np.ndarray:
        """(F,) frames with a stress prediction finite for every member finite on the frame."""
        if self.stress is None:
            return np.zeros(self.n_frames, dtype=bool)
        finite = self.member_finite()
        stress_finite = np.isfinite(self.stress).all(axis=2)
        return finite.any(axis=0) & np.all(stress_finite | ~finite, axis=0)


@dataclass(frozen=True, eq=False)
class ReferenceLabels:
    """Reference (e.g. DFT) labels of ``F`` frames with their presence masks.

    A label given as None is missing for every frame. The stored mask of a property is the
    given mask (default: all frames) and-ed with the finiteness of the frame's values, so a NaN
    row is never mistaken for a label.

    :param n_atoms: (F,) atoms per frame.
    :param energy: (F,) total energies, eV.
    :param forces: (A, 3) forces, eV/Å.
    :param stress: (F, 6) Voigt stresses, eV/Å³ (ASE sign).
    """

    n_atoms: np.ndarray
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    energy_mask: np.ndarray | None = None
    forces_mask: np.ndarray | None = None
    stress_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_atoms = check_n_atoms(self.n_atoms)
        n_frames = n_atoms.size
        shapes = {'energy': (n_frames,), 'forces': (int(n_atoms.sum()), 3), 'stress': (n_frames, 6)}
        object.__setattr__(self, 'n_atoms', n_atoms)
        for name, shape in shapes.items():
            value = getattr(self, name)
            mask = _frame_mask(getattr(self, f'{name}_mask'), n_frames, f'{name}_mask')
            if value is None:
                array = np.full(shape, np.nan)
                mask = np.zeros(n_frames, dtype=bool)
            else:
                array = _float_array(value, shape, name)
                finite = np.isfinite(array)
                if name == 'forces':
                    finite = _reduce(np.logical_and, finite.all(axis=1), n_atoms, axis=0)
                elif name == 'stress':
                    finite = finite.all(axis=1)
                mask = mask & finite
            object.__setattr__(self, name, array)
            object.__setattr__(self, f'{name}_mask', mask)

    @property
    def n_frames(self) -> int:
        """Number of frames F."""
        return int(self.n_atoms.size)

    def mask(self, name: str) -> np.ndarray:
        """(F,) frames that carry label ``name`` ('energy', 'forces' or 'stress')."""
        if name not in PROPERTIES:
            raise KeyError(f'unknown property {name!r}; known: {PROPERTIES}')
        return getattr(self, f'{name}_mask')


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True, eq=False)
class CommitteeStatistics:
    """Committee mean and standard deviation (over members, ``ddof=0``).

    ``mean_energy`` (F,) eV; ``std_energy_per_atom`` (F,) eV/atom (this is :math:`\\delta_E`);
    ``mean_forces`` / ``std_forces`` (A, 3) eV/Å; ``mean_stress`` / ``std_stress`` (F, 6) eV/Å³
    or None without stress predictions (NaN rows where missing).
    """

    mean_energy: np.ndarray
    std_energy_per_atom: np.ndarray
    mean_forces: np.ndarray
    std_forces: np.ndarray
    mean_stress: np.ndarray | None
    std_stress: np.ndarray | None


def _moments(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (``ddof=0``) over axis 0 of ``values`` (M, N, ...) where ``valid`` (M, N).

    The mean is NaN where no member is valid, the variance where fewer than two are (fewer than
    one for a single-member committee). With every member valid the operations, and so the
    results, are those of ``values.mean(axis=0)`` and ``values.var(axis=0)``.
    """
    count = valid.sum(axis=0)
    extra = (1,) * (values.ndim - valid.ndim)
    weights = valid.reshape((*valid.shape, *extra))
    shape = (*count.shape, *extra)
    divisor = count.reshape(shape)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean = np.where(weights, values, 0.0).sum(axis=0) / divisor
        deviation = np.where(weights, values - mean, 0.0)
        variance = (deviation * deviation).sum(axis=0) / divisor
    mean[count < 1] = np.nan
    variance[count < min(2, values.shape[0])] = np.nan
    return mean, variance


def _finite_rows(values: np.ndarray, n_leading: int) -> np.ndarray:
    """Whether every value after the first ``n_leading`` axes is finite."""
    finite = np.isfinite(values)
    return finite.reshape((*finite.shape[:n_leading], -1)).all(axis=-1)


def committee_statistics(predictions: CommitteePredictions) -> CommitteeStatistics:
    """Mean and standard deviation over the members of every predicted quantity.

    Per frame over the members finite there (see the module docstring).
    """
    stress = predictions.stress
    finite = predictions.member_finite()
    mean_energy, _ = _moments(predictions.energy, finite)
    mean_forces, var_forces = _moments(
        predictions.forces, np.repeat(finite, predictions.n_atoms, axis=1)
    )
    mean_stress = std_stress = None
    if stress is not None:
        mean_stress, var_stress = _moments(stress, finite & _finite_rows(stress, 2))
        std_stress = np.sqrt(var_stress)
        missing = ~predictions.stress_present()
        mean_stress[missing] = np.nan
        std_stress[missing] = np.nan
    return CommitteeStatistics(
        mean_energy=mean_energy,
        std_energy_per_atom=energy_disagreement(predictions.energy, predictions.n_atoms),
        mean_forces=mean_forces,
        std_forces=np.sqrt(var_forces),
        mean_stress=mean_stress,
        std_stress=std_stress,
    )


# ----------------------------------------------------------------------------- disagreement


def energy_disagreement(energy: np.ndarray, n_atoms: Any) -> np.ndarray:
    r""":math:`\delta_E = \mathrm{std}_m(E^m / N_S)`, shape (F,), eV/atom, from energies (M, F).

    Non-finite energies are left out of their frame's spread (NaN with fewer than two left).
    """
    counts = check_n_atoms(n_atoms)
    per_atom = np.asarray(energy, dtype=float) / counts
    return np.sqrt(_moments(per_atom, np.isfinite(per_atom))[1])


def _force_variance(forces: np.ndarray) -> np.ndarray:
    """Per-atom variance over members summed over components: (A,) eV²/Å².

    A member whose force on an atom is not finite is left out of that atom's variance (NaN with
    fewer than two members left).
    """
    forces = np.asarray(forces, dtype=float)
    return _moments(forces, _finite_rows(forces, 2))[1].sum(axis=-1)


def force_disagreement(forces: np.ndarray, n_atoms: Any) -> np.ndarray:
    r""":math:`\delta_F = \sqrt{\sum_{i,c} \mathrm{var}_m(F^m_{ic}) / (3 N_S)}`, (F,), eV/Å.

    ``forces`` has shape (M, A, 3).
    """
    counts = check_n_atoms(n_atoms)
    return np.sqrt(_reduce(np.add, _force_variance(forces), counts, axis=0) / (3.0 * counts))


def max_force_disagreement(forces: np.ndarray, n_atoms: Any) -> np.ndarray:
    r""":math:`\delta_F^{max} = \max_i \sqrt{\sum_c \mathrm{var}_m(F^m_{ic})}`, (F,), eV/Å."""
    counts = check_n_atoms(n_atoms)
    return np.sqrt(_reduce(np.maximum, _force_variance(forces), counts, axis=0))


def stress_disagreement(stress: np.ndarray) -> np.ndarray:
    r""":math:`\delta_\sigma` = RMS over the nine tensor components of the member std, (F,), eV/Å³.

    ``stress`` has shape (M, F, 6) (Voigt); members whose stress of a frame is not finite are
    left out of it (NaN with fewer than two left).
    """
    stress = np.asarray(stress, dtype=float)
    return voigt_rms(np.sqrt(_moments(stress, _finite_rows(stress, 2))[1]))


@dataclass(frozen=True, eq=False)
class Disagreement:
    """Per-frame committee disagreements, all of shape (F,).

    ``energy`` eV/atom, ``forces`` and ``forces_max`` eV/Å, ``stress`` eV/Å³ (all NaN without
    stress predictions).
    """

    energy: np.ndarray
    forces: np.ndarray
    forces_max: np.ndarray
    stress: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in (*PROPERTIES, 'forces_max'):
            raise KeyError(name)
        return getattr(self, name)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The calibrated properties by name: 'energy', 'forces', 'stress'."""
        return {name: getattr(self, name) for name in PROPERTIES}


def committee_disagreement(predictions: CommitteePredictions) -> Disagreement:
    """All disagreements of a committee (see the module docstring for the formulas)."""
    counts = predictions.n_atoms
    variance = _force_variance(predictions.forces)
    if predictions.stress is None:
        stress = np.full(predictions.n_frames, np.nan)
    else:
        stress = stress_disagreement(predictions.stress)
        stress[~predictions.stress_present()] = np.nan
    return Disagreement(
        energy=energy_disagreement(predictions.energy, counts),
        forces=np.sqrt(_reduce(np.add, variance, counts, axis=0) / (3.0 * counts)),
        forces_max=np.sqrt(_reduce(np.maximum, variance, counts, axis=0)),
        stress=stress,
    )


# ----------------------------------------------------------------------------- true errors


@dataclass(frozen=True, eq=False)
class TrueErrors:
    """Per-frame errors of the committee mean, all of shape (F,).

    ``energy`` eV/atom, ``forces`` eV/Å, ``stress`` eV/Å³; NaN where the label or prediction is
    missing.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in PROPERTIES:
            raise KeyError(name)
        return getattr(self, name)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The errors by property name."""
        return {name: getattr(self, name) for name in PROPERTIES}


def _check_same_frames(predictions: CommitteePredictions, labels: ReferenceLabels) -> None:
    if not np.array_equal(predictions.n_atoms, labels.n_atoms):
        raise ValueError('predictions and labels describe different frames (n_atoms differ)')


def true_errors(predictions: CommitteePredictions, labels: ReferenceLabels) -> TrueErrors:
    """Errors of the committee mean against the labels (formulas in the module docstring)."""
    _check_same_frames(predictions, labels)
    counts = predictions.n_atoms
    stats = committee_statistics(predictions)
    energy = np.abs(stats.mean_energy - labels.energy) / counts
    squared = np.sum((stats.mean_forces - labels.forces) ** 2, axis=-1)
    forces = np.sqrt(_reduce(np.add, squared, counts, axis=0) / (3.0 * counts))
    if stats.mean_stress is None:
        stress = np.full(predictions.n_frames, np.nan)
    else:
        stress = voigt_rms(stats.mean_stress - labels.stress)
    energy[~labels.energy_mask] = np.nan
    forces[~labels.forces_mask] = np.nan
    stress[~(labels.stress_mask & predictions.stress_present())] = np.nan
    return TrueErrors(energy=energy, forces=forces, stress=stress)


def member_errors(disagreement: Any, errors: Any) -> dict[str, np.ndarray]:
    r"""RMS over the members of each member's error, :math:`\sqrt{\varepsilon^2 + \delta^2}`.

    ``errors`` are those of the committee mean (:func:`true_errors`) and ``disagreement`` the
    matching δ, both per frame by property (mappings or the dataclasses); the identity in the
    module docstring makes the result exact. Properties without a δ are left out; NaN stays NaN.
    """
    deltas, errs = property_arrays(disagreement), property_arrays(errors)
    return {name: np.hypot(errs[name], deltas[name]) for name in errs if name in deltas}


def errors_of(kind: str, disagreement: Any, errors: Any) -> dict[str, np.ndarray]:
    """The committee-mean ``errors`` as they are, or as :func:`member_errors` for ``'members'``."""
    if kind not in ERROR_KINDS:
        raise ValueError(f'error kind {kind!r} is not one of {list(ERROR_KINDS)}')
    if kind == 'members':
        return member_errors(disagreement, errors)
    return property_arrays(errors)


# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class PropertyMetrics:
    r"""RMSE and MAE of one property over a set of frames, in meV units (:data:`METRIC_UNITS`).

    Errors are pooled over all values: energy per atom per frame, every force component of every
    atom, the nine stress tensor components of every frame (Voigt off-diagonals counted twice):
    :math:`RMSE = \sqrt{\sum \Delta^2 / n_{values}}`, :math:`MAE = \sum |\Delta| / n_{values}`.
    ``member_*`` hold one value per member, ``committee_*`` those of the committee mean;
    ``member_rmse_mean`` and ``member_rmse_std`` (``ddof=0``) give the committee spread (over the
    members with a value: a member left out of the scoring has NaN). With no labelled frame every
    value is NaN and the counts are zero.
    """

    property: str
    unit: str
    n_frames: int
    n_values: int
    member_rmse: tuple[float, ...]
    member_mae: tuple[float, ...]
    committee_rmse: float
    committee_mae: float

    @property
    def member_rmse_mean(self) -> float:
        """Mean over the scored members (those with a value) of the per-member RMSE."""
        values = [v for v in self.member_rmse if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    @property
    def member_rmse_std(self) -> float:
        """Standard deviation (``ddof=0``) over the scored members of the per-member RMSE."""
        values = [v for v in self.member_rmse if math.isfinite(v)]
        return float(np.std(values)) if values else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (non-finite values become None)."""
        return {
            'property': self.property,
            'unit': self.unit,
            'n_frames': self.n_frames,
            'n_values': self.n_values,
            'member_rmse': [json_float(v) for v in self.member_rmse],
            'member_mae': [json_float(v) for v in self.member_mae],
            'member_rmse_mean': json_float(self.member_rmse_mean),
            'member_rmse_std': json_float(self.member_rmse_std),
            'committee_rmse': json_float(self.committee_rmse),
            'committee_mae': json_float(self.committee_mae),
        }


def _frame_selection(frames: Any, n_frames: int) -> np.ndarray:
    """A boolean (F,) mask from None (all), a boolean mask or integer indices."""
    if frames is None:
        return np.ones(n_frames, dtype=bool)
    frames = np.asarray(frames)
    if frames.dtype == bool:
        return _frame_mask(frames, n_frames, 'frames')
    selection = np.zeros(n_frames, dtype=bool)
    selection[frames.astype(np.int64)] = True
    return selection


def _per_frame_sums(
    name: str, stacked: np.ndarray, labels: ReferenceLabels
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame sums of squared and absolute errors, (K, F) each, and values per frame (F,)."""
    counts = labels.n_atoms
    if name == 'energy':
        delta = (stacked - labels.energy) / counts
        return delta**2, np.abs(delta), np.ones(counts.size)
    if name == 'forces':
        delta = stacked - labels.forces
        squared = _reduce(np.add, np.sum(delta**2, axis=-1), counts, axis=1)
        absolute = _reduce(np.add, np.sum(np.abs(delta), axis=-1), counts, axis=1)
        return squared, absolute, 3.0 * counts
    delta = stacked - labels.stress
    return 9.0 * voigt_rms(delta) ** 2, 9.0 * voigt_mean_abs(delta), np.full(counts.size, 9.0)


def error_metrics(
    predictions: CommitteePredictions,
    labels: ReferenceLabels,
    frames: Sequence[int] | np.ndarray | None = None,
    members: Sequence[int] | np.ndarray | None = None,
) -> dict[str, PropertyMetrics]:
    """RMSE/MAE per member and of the committee mean, per property, over ``frames``.

    :param frames: frame indices or a boolean (F,) mask (default: all frames).
    :param members: indices of the members scored and averaged into the committee mean
        (default: every member finite on at least one frame, so a member non-finite everywhere
        is left out). The others get NaN values.
    :returns: ``{'energy': ..., 'forces': ..., 'stress': ...}``; frames without the label (or,
        for stress, without a stress prediction from every member), and frames where any of
        ``members`` has no finite prediction, are skipped and not counted.
    """
    _check_same_frames(predictions, labels)
    selection = _frame_selection(frames, predictions.n_frames)
    if members is None:
        members = np.flatnonzero(predictions.member_finite().any(axis=1))
        if members.size == 0:
            members = np.arange(predictions.n_members)
    members = np.asarray(members, dtype=np.int64).reshape(-1)
    unscored = np.ones(predictions.n_members + 1, dtype=bool)
    unscored[members] = False
    unscored[-1] = members.size == 0
    selection = selection & ~predictions.non_finite(members) & (members.size > 0)
    result = {}
    for name in PROPERTIES:
        values = getattr(predictions, name)
        valid = selection & labels.mask(name)
        if values is None:
            valid = np.zeros_like(valid)
        else:
            if name == 'stress':
                valid &= predictions.stress_present()
        n_values = 0.0
        rmse = mae = np.full(predictions.n_members + 1, np.nan)
        if valid.any():
            stacked = np.concatenate([values, values[members].mean(axis=0)[None]])
            squared, absolute, per_frame = _per_frame_sums(name, stacked, labels)
            n_values = float(per_frame[valid].sum())
            rmse = _MILLI * np.sqrt(squared[:, valid].sum(axis=1) / n_values)
            mae = _MILLI * absolute[:, valid].sum(axis=1) / n_values
            rmse[unscored] = mae[unscored] = np.nan
        result[name] = PropertyMetrics(
            property=name,
            unit=METRIC_UNITS[name],
            n_frames=int(valid.sum()),
            n_values=int(n_values),
            member_rmse=tuple(float(v) for v in rmse[:-1]),
            member_mae=tuple(float(v) for v in mae[:-1]),
            committee_rmse=float(rmse[-1]),
            committee_mae=float(mae[-1]),
        )
    return result
