"""``MaceTrainCalculation`` (``trainspot.mace.train``): one ``mace_run_train`` run.

The job folder holds the datasets (``train.xyz``, ``valid.xyz``, ``test.xyz``, written by
:class:`~aiida_trainspot.training.base.TrainingCalculation`, and rewritten by
:func:`write_mace_xyz` when 2D frames carry stresses, which MACE must see over its own
volume) and ``config.yaml`` (see :mod:`.config`); the command line is
``--config config.yaml``. Every path in it is relative, so the job runs unchanged on a
remote computer.

* Fine-tuning: ``initial_model`` is copied to ``initial/`` and passed as
  ``foundation_model: initial/<file>`` with ``multiheads_finetuning: False`` (there is no
  pretraining data to replay). MACE then builds the network from the initial model's
  hyperparameters and weights (its ``r_max``, written into the configuration too; the
  architecture keys of :data:`.config.DEFAULTS` are left out). E0s: the training set's
  isolated atoms if any, else the initial model's own (its ``e0s`` attribute, else
  ``E0s: foundation``) when it knows every element, else ``average``.
* Restart: ``restart_checkpoint`` is copied to ``checkpoints/`` and ``restart_latest: true``
  makes MACE resume from the latest checkpoint of this run's name and seed (a checkpoint
  folder without one for this seed is refused at submission: MACE would silently start
  over).

Retrieved: ``config.yaml``, ``model/`` (``mace.model`` and, when MACE could compile it,
``mace_compiled.model``), ``checkpoints/``, ``results/`` (per-epoch metrics) and ``logs/``.
"""

from __future__ import annotations

import re
from typing import Any

from aiida.common.folders import Folder
from ase.data import atomic_numbers

from ..base import (
    CHECKPOINT_DIR,
    DATASET_FILES,
    LABEL_KEYS,
    TEST_FILE,
    TRAIN_FILE,
    VALID_FILE,
    TrainingCalculation,
)
from . import config as mace_config

__all__ = ('MaceTrainCalculation',)


class _KnownKeys:
    """``KNOWN_KEYS`` read from MACE's argument parser on first use (importing MACE is slow)."""

    def __get__(self, instance: Any, owner: type) -> frozenset[str]:
        return mace_config.known_keys()


def _numbers(symbols) -> set[int]:
    return {atomic_numbers[symbol] for symbol in symbols}


def checkpoint_pattern(seed: int) -> re.Pattern[str]:
    """File names of MACE's checkpoints of this package's runs with ``seed``."""
    return re.compile(rf'^{re.escape(mace_config.NAME)}_run-{int(seed)}_epoch-\d+(_swa)?\.pt$')


class MaceTrainCalculation(TrainingCalculation):
    """Train a MACE model with ``mace_run_train`` (configuration: :mod:`.config`)."""

    ENGINE = 'mace'
    KNOWN_KEYS = _KnownKeys()

    @classmethod
    def define(cls, spec):
        """The shared training interface, parsed by ``trainspot.mace.train``."""
        super().define(spec)
        spec.inputs['metadata']['options']['parser_name'].default = 'trainspot.mace.train'

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], ctx: Any) -> str | None:
        """The shared checks, then MACE's: reserved keys, stress loss, restart seed."""
        message = super().validate_inputs(inputs, ctx)
        if message:
            return message
        parameters = inputs.get('parameters')
        if parameters is not None:
            training = inputs.get('training')
            has_stress = None
            if training is not None:
                has_stress = training.base.attributes.get('n_labelled', {}).get('stress', 0) > 0
            message = mace_config.parameter_errors(parameters.get_dict(), has_stress=has_stress)
            if message:
                return message
        checkpoint, seed = inputs.get('restart_checkpoint'), inputs.get('seed')
        if checkpoint is not None and seed is not None:
            names = checkpoint.base.repository.list_object_names()
            if not any(checkpoint_pattern(seed.value).match(name) for name in names):
                return (
                    f'restart_checkpoint: no MACE checkpoint of a run with seed {seed.value} '
                    f'(files {sorted(names)}); a restart must keep the seed of the run it resumes'
                )
        return None

    def write_engine_inputs(
        self, folder: Folder, initial: dict[str, str | None] | None
    ) -> list[str]:
        """Write ``config.yaml``; the command line is ``--config config.yaml``."""
        training = self.inputs.training
        species = _numbers(training.species) | _numbers(self.inputs.validation.species)
        foundation: dict[str, Any] = {}
        if initial is not None:
            model = self.inputs.initial_model
            attributes = model.base.attributes
            foundation = {
                'foundation_model': initial['model'],
                'foundation_cutoff': attributes.get('cutoff', None),
                'foundation_architecture': attributes.get('architecture', None),
                'foundation_species': _numbers(model.species),
                'foundation_e0s': {
                    int(z): float(e) for z, e in (attributes.get('e0s', None) or {}).items()
                },
            }
        config = mace_config.build_config(
            self.inputs.parameters.get_dict(),
            seed=self.inputs.seed.value,
            device=self.inputs.device.value,
            dtype=self.inputs.dtype.value,
            train_file=TRAIN_FILE,
            valid_file=VALID_FILE,
            test_file=TEST_FILE if 'test' in self.inputs else None,
            species=species,
            has_stress=training.base.attributes.get('n_labelled', {}).get('stress', 0) > 0,
            isolated_atoms=_isolated_atoms(training),
            restart='restart_checkpoint' in self.inputs,
            checkpoints_dir=CHECKPOINT_DIR,
            **foundation,
        )
        with folder.open(mace_config.CONFIG_FILE, 'w') as handle:
            handle.write(mace_config.to_yaml(config))
        cutoff = mace_config.model_settings(config)['cutoff']
        for name, filename in DATASET_FILES:  # 2D stresses over MACE's own volume
            if name in self.inputs and has_partial_stress(self.inputs[name]):
                write_mace_xyz(self.inputs[name], folder.get_abs_path(filename), cutoff)
        return ['--config', mace_config.CONFIG_FILE]

    def retrieve_files(self) -> list[str]:
        """The configuration, the model folder, the checkpoints, the results and logs."""
        return [
            mace_config.CONFIG_FILE,
            mace_config.MODEL_DIR,
            CHECKPOINT_DIR,
            mace_config.RESULTS_DIR,
            mace_config.LOG_DIR,
        ]


def has_partial_stress(dataset: Any) -> bool:
    """Whether a frame with a non-periodic axis (a 2D frame) of ``dataset`` has a stress label."""
    if 'stress' not in dataset.column_names:
        return False
    for _, columns in dataset.iter_columns(names=['stress']):
        if (columns.mask('stress') & ~columns.frame['pbc'].all(axis=1)).any():
            return True
    return False


def write_mace_xyz(dataset: Any, path: str, cutoff: float) -> None:
    """Write ``dataset`` under the ``REF_`` keys, the stress of 2D frames as MACE must see it.

    MACE divides a 2D frame's virial by the volume of a cell it lengthened along the vacuum
    (:func:`.config.mace_stress_entry`), so the label is rescaled to that volume: the virial
    MACE learns is then the one of the dataset's stress over the frame's own volume. The frame's
    ``config_stress_weight`` undoes the same rescaling in the loss, so that its stress is
    trained as much as a 3D frame's.
    """
    from aiida_trainspot.data.convert import write_extxyz_frame

    key = LABEL_KEYS['stress']
    with open(path, 'w') as handle:
        for atoms in dataset.iter_atoms(label_keys=LABEL_KEYS):
            value = atoms.info.get(key)
            if value is not None and not atoms.pbc.all():
                atoms.info[key], atoms.info[mace_config.STRESS_WEIGHT_KEY] = (
                    mace_config.mace_stress_entry(
                        value, atoms.positions, atoms.cell.array, atoms.pbc, cutoff
                    )
                )
            write_extxyz_frame(handle, atoms)


def _isolated_atoms(dataset) -> dict[int, float]:
    """{Z: E} of the isolated atoms of a dataset (reads only its one-atom frames)."""
    frames = []
    for index in (dataset.n_atoms_per_frame() == 1).nonzero()[0]:
        atoms = dataset.get_atoms(int(index))
        results = atoms.calc.results if atoms.calc is not None else {}
        frames.append((atoms.numbers, atoms.pbc, results.get('energy')))
    return mace_config.isolated_atom_energies(frames)
