r"""Committee inference over batches of frames, and the columns it writes (no AiiDA import).

The evaluation job (:mod:`aiida_trainspot.runners.evaluate`) runs every member of a committee
(ASE calculators from :func:`aiida_trainspot.training.loader.load_calculator`) over chunks of
frames held as :class:`~aiida_trainspot.data.columns.Columns`:

- :func:`predict_member`: one calculator over a list of frames → energies (eV), forces (eV/Å)
  and, for frames periodic along at least two axes (bulk and 2D frames,
  :func:`~aiida_trainspot.data.columns.carries_stress`), stresses (eV/Å³, Voigt, ASE sign,
  (1/V) dE/dε with V the whole cell's volume, vacuum included, as the labels). With
  ``batch_size=1`` (the default, and what pays on a CPU) every frame is one ordinary ASE call,
  exactly what a user of the calculator gets (the loader's MACE calculator already gives a 2D
  frame's stress over the frame's own volume; the batched path below does the same). With
  ``batch_size > 1`` MACE and metatomic (metatrain) calculators evaluate
  ``batch_size`` frames per model call (MACE: one ``torch_geometric`` batch through the model;
  metatomic: ``MetatomicCalculator.compute_energy`` on a list of frames, fully periodic and
  other frames batched apart, 2D frames one by one since ``compute_energy`` gives no stress for
  them); the results equal the per-frame ones up to floating-point summation order.
  Other calculators are always evaluated frame by frame.
- :func:`predict_committee`: every member on a chunk → :class:`CommitteePredictions`.
- :func:`prediction_columns`: the per-frame and per-atom columns stored next to the frames
  (names and units in :data:`FRAME_COLUMNS` and :data:`ATOM_COLUMNS`).
- :class:`MetricsAccumulator`: RMSE/MAE per member and of the committee mean, per split and
  property, accumulated chunk by chunk (:func:`~.disagreement.error_metrics` on each chunk,
  recombined exactly from its sums).
- :func:`disagreement_summary`: distribution of the per-frame disagreements of a dataset.

A member is one calculator; members are ordered as given, and every ``*_members`` column has the
member axis right after the frame (or atom) axis.

Non-finite predictions: a member whose energy, force on any atom or (where computed) stress of a
frame is not finite has no prediction for that frame: its values there are all NaN
(:attr:`MemberPredictions.non_finite`), the committee statistics of the frame use the other
members (:mod:`.disagreement`), and the frame is flagged in the ``non_finite`` column. A member
that is non-finite everywhere is thereby left out of every statistic; the evaluation job lists it
as dropped. A calculator that *raises* on a frame still fails the evaluation
(:class:`InferenceError`): an exception (out of memory, a broken model, a neighbour-list failure)
is not a prediction, and a batched call cannot say which of its frames caused it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from aiida_trainspot.data.columns import Columns, carries_stress

from .calibration import Calibration
from .disagreement import (
    DISAGREEMENT_UNITS,
    METRIC_UNITS,
    PROPERTIES,
    CommitteePredictions,
    PropertyMetrics,
    ReferenceLabels,
    committee_disagreement,
    committee_statistics,
    error_metrics,
    json_float,
    true_errors,
)

__all__ = [
    'ATOM_COLUMNS',
    'DISAGREEMENT_NAMES',
    'ESTIMATED_ERROR_COLUMNS',
    'EXIT_INFERENCE_FAILED',
    'FRAME_COLUMNS',
    'INFERENCE_FAILED',
    'SPLIT_COLUMN',
    'SPLIT_NAMES',
    'STRESS_COLUMNS',
    'InferenceError',
    'MemberPredictions',
    'MetricsAccumulator',
    'committee_predictions',
    'disagreement_summary',
    'frames_as_atoms',
    'periodic_frames',
    'predict_committee',
    'predict_member',
    'predict_members',
    'prediction_columns',
    'reference_labels',
    'split_column',
    'supports_batching',
]

#: Per-frame columns written for every frame: name -> (unit, description). Members on axis 1.
FRAME_COLUMNS: dict[str, tuple[str, str]] = {
    'energy_members': ('eV', 'total energy of each member, (M,)'),
    'energy_mean': ('eV', 'committee mean of the total energy'),
    'energy_std_per_atom': ('eV/atom', 'std over members of the energy per atom (= delta_energy)'),
    'stress_members': ('eV/Angstrom^3', 'Voigt stress of each member, (M, 6); 3D and 2D frames'),
    'stress_mean': ('eV/Angstrom^3', 'committee mean of the Voigt stress, (6,)'),
    'stress_std': ('eV/Angstrom^3', 'std over members of each Voigt component, (6,)'),
    'delta_energy': ('eV/atom', 'energy disagreement'),
    'delta_forces': ('eV/Angstrom', 'RMS over atoms and components of the force std'),
    'delta_forces_max': ('eV/Angstrom', 'largest per-atom force std (DP-GEN)'),
    'delta_stress': ('eV/Angstrom^3', 'RMS over the 9 tensor components of the stress std'),
    'eps_energy': ('eV/atom', 'true error of the committee-mean energy per atom'),
    'eps_forces': ('eV/Angstrom', 'RMS error of the committee-mean forces'),
    'eps_stress': ('eV/Angstrom^3', 'RMS error (9 components) of the committee-mean stress'),
    'non_finite': ('', 'a member predicted a non-finite energy, force or stress (bool)'),
}
#: Calibrated error estimates, written only with a calibration: name -> (unit, description).
ESTIMATED_ERROR_COLUMNS: dict[str, tuple[str, str]] = {
    f'estimated_error_{name}': (DISAGREEMENT_UNITS[name], f'delta_{name} / slope_{name}')
    for name in PROPERTIES
}
#: Per-atom columns: name -> (unit, description).
ATOM_COLUMNS: dict[str, tuple[str, str]] = {
    'forces_members': ('eV/Angstrom', 'force of each member, (M, 3)'),
    'forces_mean': ('eV/Angstrom', 'committee mean force, (3,)'),
    'forces_std': ('eV/Angstrom', 'std over members of each force component, (3,)'),
}
#: The per-frame disagreement columns.
DISAGREEMENT_NAMES = ('delta_energy', 'delta_forces', 'delta_forces_max', 'delta_stress')
#: Columns only present (mask True) where every member predicted a stress.
STRESS_COLUMNS = ('stress_members', 'stress_mean', 'stress_std', 'delta_stress')
#: The split column of a dataset and the names metrics are reported under.
SPLIT_COLUMN = 'split'
SPLIT_NAMES = ('train', 'validation', 'test')
UNASSIGNED = 'unassigned'
ALL = 'all'
#: stderr prefix and exit status of the evaluation runner when a member's calculator raises on a
#: frame or too few members are left (beside those of every runner,
#: :mod:`aiida_trainspot.common.runner`); the parser maps the prefix to its exit code.
INFERENCE_FAILED = 'INFERENCE FAILED'
EXIT_INFERENCE_FAILED = 5


class InferenceError(RuntimeError):
    """A member's calculator raised on a frame: ``member`` and ``frame`` (index in the batch).

    (A non-finite result is no error: see :attr:`MemberPredictions.non_finite`.)
    """

    def __init__(self, member: int, frame: int, reason: str):
        super().__init__(f'member {member} failed on frame {frame}: {reason}')
        self.member = member
        self.frame = frame
        self.reason = reason


# ----------------------------------------------------------------------------- frames


def frames_as_atoms(columns: Columns) -> list[Atoms]:
    """The structure of every frame of ``columns`` as a bare ``ase.Atoms`` (no labels, no info)."""
    offsets = columns.offsets
    numbers = columns.atom['numbers']
    positions = columns.atom['positions']
    cells = columns.frame['cell']
    pbcs = columns.frame['pbc']
    return [
        Atoms(
            numbers=numbers[offsets[i] : offsets[i + 1]],
            positions=positions[offsets[i] : offsets[i + 1]],
            cell=cells[i],
            pbc=pbcs[i],
        )
        for i in range(columns.n_frames)
    ]


def periodic_frames(columns: Columns) -> np.ndarray:
    """(F,) frames whose stress is predicted: periodic along at least two axes (3D and 2D)."""
    pbc = np.asarray(columns.frame['pbc'], dtype=bool).reshape(-1, 3)
    return carries_stress(pbc, np.asarray(columns.frame['cell'], dtype=float).reshape(-1, 3, 3))


def _stress_frames(frames: Sequence[Atoms]) -> np.ndarray:
    """(F,) frames of ``frames`` whose stress is computed (see :func:`periodic_frames`)."""
    return np.array([bool(carries_stress(a.pbc, a.cell.array)) for a in frames], dtype=bool)


def _fully_periodic(frames: Sequence[Atoms]) -> np.ndarray:
    return np.array([bool(np.all(a.pbc)) for a in frames], dtype=bool)


# ----------------------------------------------------------------------------- one member


@dataclass(frozen=True, eq=False)
class MemberPredictions:
    """One member's predictions: energy (F,) eV, forces (A, 3) eV/Å, stress (F, 6) eV/Å³.

    Stress rows of frames whose stress was not computed are NaN. On a frame where the calculator
    returned a non-finite energy, force or (computed) stress, every value is NaN; ``problems``
    says what was non-finite, by frame.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    problems: dict[int, str] = field(default_factory=dict)

    @property
    def non_finite(self) -> np.ndarray:
        """(F,) frames without a finite prediction from this member."""
        return ~np.isfinite(self.energy)


def supports_batching(calculator: Any) -> str | None:
    """'mace' or 'metatomic' when ``calculator`` can evaluate several frames per call, else None."""
    modules = [cls.__module__ for cls in type(calculator).__mro__]  # subclasses count too
    if any(m.startswith('mace.') for m in modules) and hasattr(calculator, 'models'):
        return 'mace'
    if any(m.startswith('metatomic') for m in modules) and hasattr(calculator, 'compute_energy'):
        return 'metatomic'
    return None


def predict_member(
    calculator: Any,
    frames: Sequence[Atoms],
    periodic: np.ndarray | None = None,
    *,
    batch_size: int = 1,
    member: int = 0,
) -> MemberPredictions:
    """Energies, forces and (3D and 2D frames) stresses of ``frames`` from one calculator.

    :param periodic: (F,) frames whose stress is computed (default: those periodic along at
        least two axes, with a cell of non-zero volume).
    :param batch_size: frames per model call; 1 means one ASE call per frame.
    :param member: the member's index, for error messages.
    :raises InferenceError: naming the frame when the calculator raises. Non-finite results are
        not raised: the frame's values are all set to NaN and recorded in ``problems``.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    frames = list(frames)
    if periodic is None:
        periodic = _stress_frames(frames)
    periodic = np.asarray(periodic, dtype=bool)
    n_atoms = np.array([len(a) for a in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    energy = np.full(len(frames), np.nan)
    forces = np.full((int(offsets[-1]), 3), np.nan)
    stress = np.full((len(frames), 6), np.nan)
    kind = supports_batching(calculator) if batch_size > 1 else None
    if kind == 'mace':
        _predict_mace(calculator, frames, periodic, batch_size, energy, forces, stress, member)
    elif kind == 'metatomic':
        _predict_metatomic(calculator, frames, periodic, batch_size, energy, forces, stress, member)
    else:
        indices = np.arange(len(frames))
        _predict_ase(calculator, frames, indices, periodic, energy, forces, stress, member)
    problems = _mark_non_finite(energy, forces, stress, offsets, periodic)
    return MemberPredictions(energy=energy, forces=forces, stress=stress, problems=problems)


def _predict_ase(calculator, frames, indices, periodic, energy, forces, stress, member):
    """One ordinary ASE call per frame of ``indices``; the stress where ``periodic``."""
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in frames])]).astype(np.int64)
    for index in indices:
        atoms = frames[index]
        try:
            atoms.calc = calculator
            with warnings.catch_warnings():
                if not np.all(atoms.pbc):
                    # some calculators divide by a zero cell volume, or warn that the stress
                    # of a frame with vacuum may be wrong (it is the full cell's, as wanted)
                    warnings.simplefilter('ignore', RuntimeWarning)
                    warnings.filterwarnings('ignore', message='stress requested but likely')
                energy[index] = atoms.get_potential_energy()
                forces[offsets[index] : offsets[index + 1]] = atoms.get_forces()
                if periodic[index]:
                    stress[index] = atoms.get_stress()
        except Exception as exc:
            raise InferenceError(member, int(index), _reason(exc)) from exc
        finally:
            atoms.calc = None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {text[0] if text else ""}'.rstrip(': ')


def _mark_non_finite(
    energy: np.ndarray,
    forces: np.ndarray,
    stress: np.ndarray,
    offsets: np.ndarray,
    periodic: np.ndarray,
) -> dict[int, str]:
    """Set every value of a frame with a non-finite energy, force or stress to NaN (in place).

    :returns: what was non-finite, by frame, e.g. ``{3: 'non-finite energy nan, forces'}``.
    """
    n_frames = energy.size
    bad_energy = ~np.isfinite(energy)
    bad_forces = np.zeros(n_frames, dtype=bool)
    frame_of_atom = np.repeat(np.arange(n_frames), np.diff(offsets))
    bad_forces[frame_of_atom[~np.isfinite(forces).all(axis=1)]] = True
    bad_stress = periodic & ~np.isfinite(stress).all(axis=1)
    bad = bad_energy | bad_forces | bad_stress
    problems = {}
    for frame in np.flatnonzero(bad).tolist():
        parts = [f'energy {energy[frame]}'] if bad_energy[frame] else []
        parts += ['forces'] * bool(bad_forces[frame]) + ['stress'] * bool(bad_stress[frame])
        problems[frame] = 'non-finite ' + ', '.join(parts)
        energy[frame] = np.nan
        forces[offsets[frame] : offsets[frame + 1]] = np.nan
        stress[frame] = np.nan
    return problems


def _batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]


def _predict_mace(calculator, frames, periodic, batch_size, energy, forces, stress, member):
    """Evaluate ``batch_size`` frames per forward pass of each model of a ``MACECalculator``.

    The graphs are built exactly as the calculator builds them for one frame (same key
    specification, head, cutoff and dtype); the batch goes through every model of the calculator
    and, as the calculator does, the results are averaged over its models.
    """
    import torch
    from ase.stress import full_3x3_to_voigt_6_stress
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools

    arrays_keys = {**calculator.arrays_keys, calculator.charges_key: 'charges'}
    keyspec = mace_data.KeySpecification(info_keys=calculator.info_keys, arrays_keys=arrays_keys)
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in frames])]).astype(np.int64)
    for indices in _batches(np.arange(len(frames)), batch_size):
        try:
            with torch_tools.default_dtype(calculator.default_dtype):
                graphs = [
                    mace_data.AtomicData.from_config(
                        mace_data.config_from_atoms(
                            frames[i], key_specification=keyspec, head_name=calculator.head
                        ),
                        z_table=calculator.z_table,
                        cutoff=calculator.r_max,
                        heads=calculator.available_heads,
                    )
                    for i in indices
                ]
            batch = torch_geometric.Batch.from_data_list(graphs).to(calculator.device)
            outputs = []
            for model in calculator.models:
                clone = batch.clone()
                model_dtype = next(model.parameters()).dtype
                for key in clone.keys:
                    value = clone[key]
                    if torch.is_tensor(value) and torch.is_floating_point(value):
                        clone[key] = value.to(dtype=model_dtype)
                out = model(clone.to_dict(), compute_stress=True, training=False)
                outputs.append({k: out[k].detach() for k in ('energy', 'forces', 'stress')})
            result = {
                key: torch.mean(torch.stack([o[key] for o in outputs]), dim=0).cpu().numpy()
                for key in ('energy', 'forces', 'stress')
            }
        except Exception as exc:
            raise InferenceError(member, int(indices[0]), _reason(exc)) from exc
        energy[indices] = result['energy'] * calculator.energy_units_to_eV
        start, stop = offsets[indices[0]], offsets[indices[-1] + 1]
        forces[start:stop] = (
            result['forces'] * calculator.energy_units_to_eV / calculator.length_units_to_A
        )
        voigt = full_3x3_to_voigt_6_stress(result['stress']) * (
            calculator.energy_units_to_eV / calculator.length_units_to_A**3
        )
        # MACE divides by the volume of its graph's cell, whose non-periodic vectors it
        # lengthened; the convention is the frame's own cell, vacuum included
        used = np.abs(np.linalg.det(np.stack([g.cell.detach().cpu().numpy() for g in graphs])))
        own = np.array([frames[i].cell.volume for i in indices])
        partial = ~_fully_periodic([frames[i] for i in indices]) & periodic[indices]
        voigt[partial] *= (used[partial] / own[partial])[:, None]
        keep = periodic[indices]
        stress[indices[keep]] = voigt[keep]


def _predict_metatomic(calculator, frames, periodic, batch_size, energy, forces, stress, member):
    """Evaluate ``batch_size`` frames per call of ``MetatomicCalculator.compute_energy``.

    Fully periodic and other frames go in separate batches: metatomic computes the stresses of
    a batch only when every frame of it is periodic along all three axes. The frames with a
    stress but some non-periodic axis (2D) are evaluated one by one through the calculator's
    ASE interface, whose stress is (1/V) dE/dε with V the whole cell's volume.
    """
    from ase.stress import full_3x3_to_voigt_6_stress

    offsets = np.concatenate([[0], np.cumsum([len(a) for a in frames])]).astype(np.int64)
    full = _fully_periodic(frames) & periodic
    partial = periodic & ~full
    _predict_ase(
        calculator, frames, np.flatnonzero(partial), periodic, energy, forces, stress, member
    )
    groups = _batches(np.flatnonzero(full), batch_size)
    groups += _batches(np.flatnonzero(~periodic), batch_size)
    for indices in groups:
        try:
            result = calculator.compute_energy(
                [frames[i] for i in indices], compute_forces_and_stresses=True
            )
        except Exception as exc:
            raise InferenceError(member, int(indices[0]), _reason(exc)) from exc
        energy[indices] = np.asarray(result['energy'], dtype=float).reshape(-1)
        for position, index in enumerate(indices):
            forces[offsets[index] : offsets[index + 1]] = result['forces'][position]
            if periodic[index] and 'stress' in result:
                stress[index] = full_3x3_to_voigt_6_stress(np.asarray(result['stress'][position]))


# ----------------------------------------------------------------------------- committee


def predict_members(
    calculators: Sequence[Any], columns: Columns, *, batch_size: int = 1
) -> list[MemberPredictions]:
    """Every member's :class:`MemberPredictions` on the frames of ``columns``."""
    if not calculators:
        raise ValueError('a committee needs at least one calculator')
    frames = frames_as_atoms(columns)
    periodic = periodic_frames(columns)
    return [
        predict_member(calculator, frames, periodic, batch_size=batch_size, member=index)
        for index, calculator in enumerate(calculators)
    ]


def committee_predictions(
    members: Sequence[MemberPredictions], columns: Columns
) -> CommitteePredictions:
    """The members' predictions of the frames of ``columns`` as one committee."""
    return CommitteePredictions(
        n_atoms=columns.n_atoms,
        energy=np.stack([m.energy for m in members]),
        forces=np.stack([m.forces for m in members]),
        stress=np.stack([m.stress for m in members]),
        stress_mask=periodic_frames(columns),
    )


def predict_committee(
    calculators: Sequence[Any], columns: Columns, *, batch_size: int = 1
) -> CommitteePredictions:
    """Every member's predictions on the frames of ``columns``.

    Stresses are computed for the frames periodic along at least two axes (3D and 2D); the
    others have no stress prediction (``stress_mask`` False). A member's non-finite prediction
    of a frame is NaN there (see the module docstring).
    """
    members = predict_members(calculators, columns, batch_size=batch_size)
    return committee_predictions(members, columns)


def reference_labels(columns: Columns) -> ReferenceLabels | None:
    """The labels (energy, forces, stress) of ``columns`` with their masks; None without any."""
    present = [name for name in PROPERTIES if name in columns.names]
    if not present:
        return None
    kwargs: dict[str, Any] = {}
    for name in present:
        kwargs[name] = columns.column(name)
        kwargs[f'{name}_mask'] = columns.mask(name)
    return ReferenceLabels(n_atoms=columns.n_atoms, **kwargs)


def prediction_columns(
    predictions: CommitteePredictions,
    labels: ReferenceLabels | None = None,
    calibration: Calibration | None = None,
    members: Sequence[int] | None = None,
) -> Columns:
    """The columns of :data:`FRAME_COLUMNS` and :data:`ATOM_COLUMNS` for these predictions.

    ``eps_*`` are the true errors against ``labels`` (missing without a label);
    ``estimated_error_<property>`` = ``delta_<property>`` / slope, for each property of
    ``calibration``. ``non_finite`` flags the frames where any of ``members`` (default: all;
    the evaluation job leaves out the dropped ones) has no finite prediction. Every NaN value
    has its presence mask False, but in the ``*_members`` columns, present where any member's
    value is (a NaN entry there is that member's missing prediction).
    """
    n_frames = predictions.n_frames
    stats = committee_statistics(predictions)
    delta = committee_disagreement(predictions)
    stress_present = predictions.stress_present()
    nan_stress = np.full((n_frames, 6), np.nan)
    stress = predictions.stress
    frame: dict[str, np.ndarray] = {
        'energy_members': predictions.energy.T.copy(),
        'energy_mean': stats.mean_energy,
        'energy_std_per_atom': stats.std_energy_per_atom,
        'stress_members': (
            np.full((n_frames, predictions.n_members, 6), np.nan)
            if stress is None
            else np.ascontiguousarray(stress.transpose(1, 0, 2))
        ),
        'stress_mean': nan_stress if stats.mean_stress is None else stats.mean_stress,
        'stress_std': nan_stress if stats.std_stress is None else stats.std_stress,
        'delta_energy': delta.energy,
        'delta_forces': delta.forces,
        'delta_forces_max': delta.forces_max,
        'delta_stress': delta.stress,
    }
    if labels is None:
        errors = dict.fromkeys(PROPERTIES, np.full(n_frames, np.nan))
    else:
        errors = true_errors(predictions, labels).as_dict()
    for name in PROPERTIES:
        frame[f'eps_{name}'] = errors[name]
    if calibration is not None:
        for name in calibration.properties:
            frame[f'estimated_error_{name}'] = calibration.estimate_error(name, delta[name])
    for name in STRESS_COLUMNS:
        frame[name] = np.where(
            stress_present.reshape((-1,) + (1,) * (frame[name].ndim - 1)), frame[name], np.nan
        )
    atom = {
        'forces_members': np.ascontiguousarray(predictions.forces.transpose(1, 0, 2)),
        'forces_mean': stats.mean_forces,
        'forces_std': stats.std_forces,
    }
    present = {}
    for name, values in frame.items():
        mask = stress_present if name in STRESS_COLUMNS else np.ones(n_frames, dtype=bool)
        finite = np.isfinite(values.reshape(n_frames, -1))
        mask = mask & (finite.any(axis=1) if name.endswith('_members') else finite.all(axis=1))
        if not mask.all():
            present[name] = mask
    # per-atom columns: a frame's value is present when every atom of it has one
    any_finite = predictions.member_finite().any(axis=0)
    atom_masks = {
        'forces_members': any_finite,
        'forces_mean': any_finite,
        'forces_std': np.isfinite(delta.forces),
    }
    for name, mask in atom_masks.items():
        if not mask.all():
            present[name] = mask
    frame['non_finite'] = predictions.non_finite(members)
    return Columns(n_atoms=predictions.n_atoms, frame=frame, atom=atom, present=present)


# ----------------------------------------------------------------------------- metrics


def split_column(columns: Columns) -> np.ndarray | None:
    """(F,) split name of every frame of ``columns`` ('' = unassigned), or None without splits."""
    if SPLIT_COLUMN not in columns.names:
        return None
    values = np.array([str(v) for v in columns.column(SPLIT_COLUMN)], dtype=object)
    return np.where(columns.mask(SPLIT_COLUMN), values, '')


class MetricsAccumulator:
    """RMSE/MAE of a committee per split and property, accumulated over chunks of frames.

    Splits: ``'all'`` always; ``'train'``, ``'validation'`` and ``'test'`` when the frames have a
    ``split`` column; ``'unassigned'`` when some frame has none. Each chunk's
    :func:`~.disagreement.error_metrics` are turned back into sums of squared and absolute errors
    and their value counts, so the result equals :func:`~.disagreement.error_metrics` over all
    frames at once (up to rounding).

    Which members are scored may be decided only after the last chunk (a member non-finite on
    every frame of every dataset is dropped): the sums are kept apart for each pattern of
    members with a finite prediction, and :meth:`metrics` and :meth:`to_dict` take the scored
    ``members``, skipping the frames where any of them is non-finite (counted in
    ``n_non_finite``).
    """

    def __init__(self, n_members: int):
        self.n_members = int(n_members)
        self.has_split = False
        self.n_frames: dict[str, int] = {}
        self.finite_anywhere = np.zeros(self.n_members, dtype=bool)
        # (split, finite members) -> property -> [squared (M+1,), absolute (M+1,), n_values,
        # n_frames]; and (split, finite members) -> frames
        self._sums: dict[tuple[str, tuple[bool, ...]], dict[str, list[Any]]] = {}
        self._pattern_frames: dict[tuple[str, tuple[bool, ...]], int] = {}

    def add(
        self,
        predictions: CommitteePredictions,
        labels: ReferenceLabels | None,
        splits: np.ndarray | None = None,
    ) -> None:
        """Add a chunk; ``splits`` (F,) holds each frame's split ('' = unassigned) or None."""
        groups = {ALL: np.ones(predictions.n_frames, dtype=bool)}
        if splits is not None:
            self.has_split = True
            splits = np.asarray(splits, dtype=object)
            for name in SPLIT_NAMES:
                groups[name] = splits == name
            groups[UNASSIGNED] = ~np.isin(splits, SPLIT_NAMES)
        finite = predictions.member_finite()
        self.finite_anywhere |= finite.any(axis=1)
        patterns, inverse = np.unique(finite.T, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for group, mask in groups.items():
            self.n_frames[group] = self.n_frames.get(group, 0) + int(mask.sum())
            for index, pattern in enumerate(patterns):
                frames = mask & (inverse == index)
                count = int(frames.sum())
                if count == 0:
                    continue
                key = (group, tuple(bool(v) for v in pattern))
                self._pattern_frames[key] = self._pattern_frames.get(key, 0) + count
                if labels is None or not pattern.any():
                    continue
                sums = self._sums.setdefault(key, {})
                scored = np.flatnonzero(pattern)
                for name, metrics in error_metrics(predictions, labels, frames, scored).items():
                    if metrics.n_frames == 0:
                        continue
                    rmse = np.array([*metrics.member_rmse, metrics.committee_rmse]) / 1000.0
                    mae = np.array([*metrics.member_mae, metrics.committee_mae]) / 1000.0
                    entry = sums.setdefault(
                        name, [np.zeros(self.n_members + 1), np.zeros(self.n_members + 1), 0, 0]
                    )
                    entry[0] += rmse**2 * metrics.n_values
                    entry[1] += mae * metrics.n_values
                    entry[2] += metrics.n_values
                    entry[3] += metrics.n_frames

    def _usable(self, members: Sequence[int] | None) -> np.ndarray:
        """(M,) the scored members: ``members``, or those finite on some frame added so far."""
        if members is None:
            usable = self.finite_anywhere.copy()
            return usable if usable.any() else np.ones(self.n_members, dtype=bool)
        usable = np.zeros(self.n_members, dtype=bool)
        usable[np.asarray(members, dtype=np.int64).reshape(-1)] = True
        if (self.finite_anywhere & ~usable).any():
            left_out = np.flatnonzero(self.finite_anywhere & ~usable).tolist()
            raise ValueError(f'members {left_out} have finite predictions: they cannot be dropped')
        return usable

    def n_non_finite(self, group: str, members: Sequence[int] | None = None) -> int:
        """Frames of split ``group`` where any of the scored ``members`` is non-finite."""
        usable = self._usable(members)
        return sum(
            count
            for (name, pattern), count in self._pattern_frames.items()
            if name == group and not np.asarray(pattern)[usable].all()
        )

    def metrics(
        self, group: str, members: Sequence[int] | None = None
    ) -> dict[str, PropertyMetrics]:
        """The metrics of split ``group`` by property (NaN and zero counts when unlabelled).

        :param members: the scored members (default: those finite on some frame added so far);
            every other member must be non-finite on every frame (dropped). Frames where any
            scored member is non-finite are left out; the dropped members get NaN values.
        """
        usable = self._usable(members)
        merged: dict[str, list[Any]] = {}
        for (name, pattern), sums in self._sums.items():
            # frames with a finite prediction from exactly the scored members (a dropped member
            # is non-finite everywhere, so there are no others)
            if name != group or not np.array_equal(np.asarray(pattern), usable):
                continue
            for prop, (squared, absolute, n_values, n_frames) in sums.items():
                entry = merged.setdefault(
                    prop, [np.zeros(self.n_members + 1), np.zeros(self.n_members + 1), 0, 0]
                )
                entry[0] = entry[0] + squared
                entry[1] = entry[1] + absolute
                entry[2] += n_values
                entry[3] += n_frames
        result = {}
        for name in PROPERTIES:
            entry = merged.get(name)
            if entry is None:
                rmse = mae = np.full(self.n_members + 1, np.nan)
                n_values = n_frames = 0
            else:
                squared, absolute, n_values, n_frames = entry
                rmse = 1000.0 * np.sqrt(squared / n_values)
                mae = 1000.0 * absolute / n_values
            result[name] = PropertyMetrics(
                property=name,
                unit=METRIC_UNITS[name],
                n_frames=int(n_frames),
                n_values=int(n_values),
                member_rmse=tuple(float(v) for v in rmse[:-1]),
                member_mae=tuple(float(v) for v in mae[:-1]),
                committee_rmse=float(rmse[-1]),
                committee_mae=float(mae[-1]),
            )
        return result

    def groups(self) -> list[str]:
        """The splits reported: 'all', the three named splits if any, 'unassigned' if any."""
        groups = [ALL]
        if self.has_split:
            groups += list(SPLIT_NAMES)
            if self.n_frames.get(UNASSIGNED, 0):
                groups.append(UNASSIGNED)
        return groups

    def to_dict(self, members: Sequence[int] | None = None) -> dict[str, Any]:
        """The metrics of every split, scoring ``members`` (see :meth:`metrics`).

        ``{split: {'n_frames': n, 'n_non_finite': k, 'energy': {...}, 'forces': {...},
        'stress': {...}}}``; ``n_non_finite`` frames were left out of the scores.
        """
        out = {}
        for group in self.groups():
            entry: dict[str, Any] = {
                'n_frames': int(self.n_frames.get(group, 0)),
                'n_non_finite': int(self.n_non_finite(group, members)),
            }
            entry.update({k: v.to_dict() for k, v in self.metrics(group, members).items()})
            out[group] = entry
        return out


def disagreement_summary(
    values: Mapping[str, np.ndarray], calibration: Calibration | None = None
) -> dict[str, Any]:
    """Distribution of the per-frame disagreements of a dataset (NaN values skipped).

    ``values`` maps ``delta_*`` names to (F,) arrays. Returns, per name, its unit, the number of
    frames with a value and their mean, median, 95th percentile and maximum; with a calibration
    also its thresholds τ and how many frames exceed them (any property: ``n_candidates``).
    """
    units = {**DISAGREEMENT_UNITS, 'forces_max': DISAGREEMENT_UNITS['forces']}
    summary: dict[str, Any] = {}
    for name, array in values.items():
        array = np.asarray(array, dtype=float)
        finite = array[np.isfinite(array)]
        stats: dict[str, Any] = {
            'unit': units[name.removeprefix('delta_')],
            'n_frames': int(finite.size),
        }
        for key, function in (
            ('mean', np.mean),
            ('median', np.median),
            ('p95', lambda a: np.percentile(a, 95)),
            ('max', np.max),
        ):
            stats[key] = json_float(function(finite)) if finite.size else None
        summary[name] = stats
    if calibration is not None:
        thresholds = calibration.thresholds
        above = {}
        any_above = None
        for name, tau in thresholds.items():
            array = np.asarray(values[f'delta_{name}'], dtype=float)
            flagged = np.nan_to_num(array, nan=-math.inf) > tau
            above[name] = int(flagged.sum())
            any_above = flagged if any_above is None else any_above | flagged
        summary['calibration'] = {
            'thresholds': {k: float(v) for k, v in thresholds.items()},
            'n_above_threshold': above,
            'n_candidates': int(any_above.sum()) if any_above is not None else 0,
        }
    return summary
