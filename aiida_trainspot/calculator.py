r"""An ASE calculator that is a whole committee, with its disagreement and calibrated uncertainty.

:class:`CommitteeCalculator` runs every member of a trained committee on the structure it is
given and answers like any ASE calculator (energy, forces and, for frames periodic along at least
two axes, stress), so it drops into ASE molecular dynamics, optimisers and scripts. Beside the
ordinary properties, ``calc.results`` holds, after every call,

- the committee disagreement of the structure, computed by the very functions of
  :mod:`aiida_trainspot.evaluation.disagreement` that the campaign's evaluation stage uses (the
  members' predictions go through
  :func:`~aiida_trainspot.evaluation.inference.predict_member` and
  :class:`~aiida_trainspot.evaluation.disagreement.CommitteePredictions`, as in the evaluation
  job), so a number seen here is the number the campaign would have seen for the same frame:

  - ``energy_disagreement`` :math:`\delta_E` (eV/atom), ``forces_disagreement`` :math:`\delta_F`
    (eV/Å), ``forces_disagreement_max`` :math:`\delta_F^{max}` (eV/Å, DP-GEN's max deviation) and,
    where the frame has a stress, ``stress_disagreement`` :math:`\delta_\sigma` (eV/Å³);
  - ``forces_disagreement_per_atom`` (n_atoms,) eV/Å: each atom's committee spread on the scale
    of :math:`\delta_F`, :math:`\sqrt{\sum_c \mathrm{var}_m(F^m_{ic}) / 3}` (the RMS over the
    three components of the member std), so that the RMS of this array over the atoms is exactly
    ``forces_disagreement`` (and its largest value is ``forces_disagreement_max`` / √3);

- with a :class:`~aiida_trainspot.evaluation.calibration.Calibration`, the calibrated error
  estimates :meth:`Calibration.estimate_error <aiida_trainspot.evaluation.calibration.
  Calibration.estimate_error>` gives (:math:`\hat\varepsilon = \delta / a`), in the units of the
  campaign's error thresholds (``error_thresholds``: eV/atom, eV/Å, eV/Å³), for each calibrated
  property: ``energy_uncertainty``, ``forces_uncertainty``, ``stress_uncertainty`` (where the
  frame has a stress) and ``forces_uncertainty_per_atom`` (see :class:`CommitteeCalculator` for
  what the per-atom estimate means and its limits). A calibration with a power law adds
  ``<property>_uncertainty_sigma``, its error standard deviation :math:`a\delta^b`.

No AiiDA import at module level: a deployed committee (model files and a calibration JSON) needs
only ASE and the engines. :meth:`CommitteeCalculator.from_models` and
:meth:`CommitteeCalculator.from_campaign` import AiiDA when called.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from aiida_trainspot.data.columns import carries_stress
from aiida_trainspot.evaluation.calibration import Calibration
from aiida_trainspot.evaluation.disagreement import (
    PROPERTIES,
    CommitteePredictions,
    Disagreement,
    committee_disagreement,
    committee_statistics,
)
from aiida_trainspot.evaluation.inference import MemberPredictions, predict_member

__all__ = [
    'CommitteeCalculator',
    'as_calibration',
    'deployed_members',
    'per_atom_force_disagreement',
]


def as_calibration(calibration: Any) -> Calibration | None:
    """A :class:`Calibration` from itself, its ``to_dict()`` form, an AiiDA ``Dict`` or a JSON file.

    The campaign stores its calibration as an ``orm.Dict`` of :meth:`Calibration.to_dict`; a
    deployed folder holds the same dictionary as JSON. None stays None.
    """
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, (str, Path)):
        return Calibration.from_dict(json.loads(Path(calibration).read_text()))
    if hasattr(calibration, 'get_dict'):  # an AiiDA Dict, without importing AiiDA
        return Calibration.from_dict(calibration.get_dict())
    if isinstance(calibration, Mapping):
        return Calibration.from_dict(calibration)
    raise TypeError(
        'calibration must be a Calibration, its dictionary, an AiiDA Dict or a JSON file path, '
        f'got {type(calibration).__name__}'
    )


def per_atom_force_disagreement(std_forces: np.ndarray) -> np.ndarray:
    r"""Per-atom spread :math:`\sqrt{\sum_c \mathrm{var}_m(F^m_{ic}) / 3}` (A,) from the std (A, 3).

    The per-component RMS of the member standard deviation: the per-atom term of
    :math:`\delta_F` (whose square is the mean of these squares over a frame's atoms).
    """
    std_forces = np.asarray(std_forces, dtype=float)
    return np.sqrt(np.sum(std_forces**2, axis=-1) / 3.0)


def _one_frame_committee(members: Sequence[MemberPredictions], periodic: bool, n_atoms: int):
    """The members' predictions of one frame as the evaluation stage's ``CommitteePredictions``."""
    return CommitteePredictions(
        n_atoms=np.array([n_atoms]),
        energy=np.stack([m.energy for m in members]),
        forces=np.stack([m.forces for m in members]),
        stress=np.stack([m.stress for m in members]),
        stress_mask=np.array([periodic]),
    )


class CommitteeCalculator(Calculator):
    r"""A committee of ASE calculators as one calculator, with disagreement and uncertainty.

    Energy, forces and stress are the committee mean (over the members with a finite prediction,
    as in the evaluation stage), or those of member ``member`` when it is given: the campaign's
    exploration drives its MD with one member, and the committee then only watches. The results
    beside them are described in the module docstring.

    What ``forces_uncertainty_per_atom`` means: the calibration was fitted per *frame*, between
    :math:`\delta_F` and the frame's RMS force error (of the committee mean, or each member's RMS
    for an ``error='members'`` calibration). Dividing each atom's spread by the same slope gives
    an estimate of the RMS error of one force component on that atom under the assumption that
    the frame-level relation :math:`\delta \approx a \varepsilon` holds atom by atom. Its RMS over
    the atoms is exactly ``forces_uncertainty``. Limits: no per-atom errors were fitted, so the
    per-atom estimate is not validated as calibrated; per-atom errors scatter far more than frame
    RMS errors, so read it as "where in the structure the committee is unsure" (a ranking, and a
    scale on average) rather than as an error bar on one atom.

    With ``member`` given, an ``error='members'`` calibration estimates what that member's error
    is expected to be (the RMS over members of each member's error); a ``'committee_mean'`` one
    estimates the committee mean's, which the member's error usually exceeds.

    Stress: computed for frames periodic along at least two axes (3D and 2D, as the labels),
    also when only forces are asked for, so that the stress disagreement of every such frame is
    there. A non-periodic frame has no ``stress``, ``stress_disagreement`` or
    ``stress_uncertainty``; ``atoms.get_stress()`` then raises ASE's
    ``PropertyNotImplementedError``.

    :param calculators: the members' ASE calculators (at least one).
    :param calibration: a :class:`Calibration` (or anything :func:`as_calibration` takes).
    :param member: take energy, forces and stress from this member instead of the mean.
    """

    implemented_properties = ['energy', 'free_energy', 'forces', 'stress']

    def __init__(
        self,
        calculators: Sequence[Any],
        calibration: Calibration | Mapping[str, Any] | str | Path | None = None,
        member: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.calculators = list(calculators)
        if not self.calculators:
            raise ValueError('a committee needs at least one calculator')
        if member is not None and not 0 <= member < len(self.calculators):
            raise ValueError(f'member {member} is not one of 0..{len(self.calculators) - 1}')
        self.member = member
        self.calibration = as_calibration(calibration)
        self._resources = contextlib.ExitStack()  # keeps the files of from_models loaded
        self._finalizer = weakref.finalize(self, self._resources.close)

    @property
    def n_members(self) -> int:
        """Committee size."""
        return len(self.calculators)

    def close(self) -> None:
        """Release the temporary model files of :meth:`from_models` (also done on collection)."""
        self._finalizer()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | Path],
        engine: str = 'mace',
        calibration: Calibration | Mapping[str, Any] | str | Path | None = None,
        device: str = 'cpu',
        dtype: str = 'float64',
        member: int | None = None,
        extensions_dir: str | Path | None = None,
    ) -> CommitteeCalculator:
        """The committee of the model files ``paths``, each loaded by ``load_calculator``.

        :param calibration: e.g. the path of a JSON file of :meth:`Calibration.to_dict`.
        :param extensions_dir: metatomic's extensions folder, shared by every member.
        """
        from aiida_trainspot.training.loader import load_calculator

        calculators = [
            load_calculator(engine, path, device=device, dtype=dtype, extensions_dir=extensions_dir)
            for path in paths
        ]
        return cls(calculators, calibration=calibration, member=member)

    @classmethod
    def from_models(
        cls,
        models: Sequence[Any],
        calibration: Any = None,
        device: str = 'cpu',
        dtype: str | None = None,
        member: int | None = None,
    ) -> CommitteeCalculator:
        """The committee of ``PotentialModel`` nodes (each exported by its own ``calculator()``).

        The model files stay in temporary folders while the calculator lives (:meth:`close`).

        :param calibration: a :class:`Calibration`, its dictionary or the campaign's ``orm.Dict``.
        :param dtype: default: each model's own.
        """
        resources = contextlib.ExitStack()
        try:
            calculators = [
                resources.enter_context(model.calculator(device=device, dtype=dtype))
                for model in models
            ]
        except BaseException:
            resources.close()
            raise
        committee = cls(calculators, calibration=calibration, member=member)
        committee._resources.enter_context(resources)
        return committee

    @classmethod
    def from_campaign(
        cls,
        pk_or_node: Any,
        device: str = 'cpu',
        dtype: str | None = None,
        member: int | None = None,
    ) -> CommitteeCalculator:
        """The final committee of a ``TrainsPotWorkChain`` with its last calibration.

        The committee is the run's ``models`` output or, for a run that has not finished, the
        latest ``iterations.<it>.models`` checkpoint; members in label order (as ``trainspot
        campaign export`` writes them). The calibration is the ``calibration`` output, else the
        latest checkpoint; a warning says so when it was fitted for an earlier committee than
        the one loaded (e.g. a run stopped between training and evaluation).

        :param pk_or_node: the work chain's node, PK or UUID.
        """
        from aiida_trainspot.cli.campaign import load_run
        from aiida_trainspot.workflows.trainspot import final_committee

        node = pk_or_node if hasattr(pk_or_node, 'outputs') else load_run(str(pk_or_node))
        try:
            models, calibration, notes = final_committee(node)
        except ValueError as exception:
            raise ValueError(str(exception).replace('run <', 'campaign <', 1)) from None
        for note in notes:
            warnings.warn(note, stacklevel=2)
        return cls.from_models(
            [models[label] for label in sorted(models)],
            calibration=calibration,
            device=device,
            dtype=dtype,
            member=member,
        )

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        device: str = 'cpu',
        dtype: str | None = None,
        member: int | None = None,
    ) -> CommitteeCalculator:
        """The committee of a deployed folder (``aiida-trainspot deploy PK --out DIR``).

        Reads the folder's ``committee.json`` (:data:`MANIFEST_FILE`: each member's engine,
        model file, extensions folder and dtype, and the calibration file). A folder without
        one, such as ``aiida-trainspot export --models DIR`` writes, is read member by member:
        each ``member_*`` folder holds one model file (``*.model``: MACE; ``*.pt``: metatrain)
        and maybe ``extensions/``, and ``calibration.json`` beside them is the calibration.

        :param dtype: default: each member's own (``float64`` without a manifest).
        """
        from aiida_trainspot.training.loader import load_calculator

        folder = Path(folder)
        members, calibration = deployed_members(folder)
        calculators = [
            load_calculator(
                entry['engine'],
                folder / entry['model'],
                device=device,
                dtype=dtype or entry.get('dtype') or 'float64',
                extensions_dir=folder / entry['extensions'] if entry.get('extensions') else None,
            )
            for entry in members
        ]
        return cls(calculators, calibration=calibration, member=member)

    # ------------------------------------------------------------------ calculation

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] | None = None,
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Run every member on ``atoms`` and fill ``self.results`` (see the class docstring)."""
        super().calculate(atoms, properties or ['energy'], system_changes)
        frame = self.atoms.copy()
        frame.calc = None
        periodic = bool(carries_stress(frame.pbc, frame.cell.array))
        members = [
            predict_member(calculator, [frame], np.array([periodic]), member=index)
            for index, calculator in enumerate(self.calculators)
        ]
        predictions = _one_frame_committee(members, periodic, len(frame))
        self.results = self._results(predictions, members)

    def _results(
        self, predictions: CommitteePredictions, members: Sequence[MemberPredictions]
    ) -> dict[str, Any]:
        stats = committee_statistics(predictions)
        delta = committee_disagreement(predictions)
        has_stress = bool(predictions.stress_present()[0])
        if self.member is None:
            energy, forces = stats.mean_energy[0], stats.mean_forces
            stress = stats.mean_stress[0] if has_stress else None
        else:
            chosen = members[self.member]
            energy, forces = chosen.energy[0], chosen.forces
            stress = chosen.stress[0] if has_stress else None
        results: dict[str, Any] = {
            'energy': float(energy),
            'free_energy': float(energy),
            'forces': np.array(forces, dtype=float),
        }
        if stress is not None:
            results['stress'] = np.array(stress, dtype=float)
        per_atom = per_atom_force_disagreement(stats.std_forces)
        results.update(_disagreement_results(delta, per_atom, has_stress))
        if self.calibration is not None:
            results.update(_uncertainty_results(self.calibration, delta, per_atom, has_stress))
        return results


def _disagreement_results(
    delta: Disagreement, per_atom: np.ndarray, has_stress: bool
) -> dict[str, Any]:
    """The disagreement entries of ``results`` (one frame)."""
    results: dict[str, Any] = {
        'energy_disagreement': float(delta.energy[0]),
        'forces_disagreement': float(delta.forces[0]),
        'forces_disagreement_max': float(delta.forces_max[0]),
        'forces_disagreement_per_atom': per_atom,
    }
    if has_stress:
        results['stress_disagreement'] = float(delta.stress[0])
    return results


def _uncertainty_results(
    calibration: Calibration, delta: Disagreement, per_atom: np.ndarray, has_stress: bool
) -> dict[str, Any]:
    """The calibrated estimates of ``results`` for every calibrated property of the frame."""
    results: dict[str, Any] = {}
    for name in PROPERTIES:
        if name not in calibration.slopes or (name == 'stress' and not has_stress):
            continue
        results[f'{name}_uncertainty'] = float(calibration.estimate_error(name, delta[name])[0])
        if name in calibration.power_law:
            sigma = calibration.power_law[name].sigma(delta[name])
            results[f'{name}_uncertainty_sigma'] = float(sigma[0])
    if 'forces' in calibration.slopes:
        results['forces_uncertainty_per_atom'] = calibration.estimate_error('forces', per_atom)
    return results


# ----------------------------------------------------------------------------- deployed folders

#: The manifest of a deployed committee (``aiida-trainspot deploy``), read by ``from_folder``.
MANIFEST_FILE = 'committee.json'
#: The calibration's file in a deployed or exported folder (:meth:`Calibration.to_dict`).
CALIBRATION_FILE = 'calibration.json'
#: The suffix of a MACE model's LAMMPS export (``mace_create_lammps_model``).
_MACE_LAMMPS_SUFFIX = '-lammps.pt'


def deployed_members(folder: str | Path) -> tuple[list[dict[str, Any]], Path | None]:
    """(members, calibration file or None) of a deployed or exported committee folder.

    Each member is ``{'engine', 'model', 'extensions', 'dtype'}`` with paths relative to
    ``folder``; see :meth:`CommitteeCalculator.from_folder`.

    :raises ValueError: naming the folder, when it holds no committee.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f'{folder}: no such folder')
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        calibration = data.get('calibration')
        return list(data['members']), folder / calibration if calibration else None
    members = []
    for sub in sorted(p for p in folder.glob('member_*') if p.is_dir()):
        models = sorted(sub.glob('*.model'))
        engine = 'mace'
        if not models:
            engine = 'metatrain'
            models = sorted(p for p in sub.glob('*.pt') if not p.name.endswith(_MACE_LAMMPS_SUFFIX))
        if len(models) != 1:
            raise ValueError(
                f'{sub}: expected one model file (*.model or *.pt), found {len(models)}'
            )
        extensions = sub / 'extensions'
        members.append(
            {
                'engine': engine,
                'model': str(models[0].relative_to(folder)),
                'extensions': str(extensions.relative_to(folder)) if extensions.is_dir() else None,
                'dtype': None,
            }
        )
    if not members:
        raise ValueError(f'{folder}: no {MANIFEST_FILE} and no member_* folder: not a committee')
    calibration = folder / CALIBRATION_FILE
    return members, calibration if calibration.is_file() else None
