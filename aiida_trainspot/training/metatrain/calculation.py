"""``MetatrainTrainCalculation`` (``trainspot.metatrain.train``): one ``mtt train`` run.

The job's folder holds ``options.yaml`` (see :func:`.config.build_options`), the datasets
``train.xyz`` / ``valid.xyz`` / ``test.xyz`` (``REF_energy``, ``REF_forces`` and, when the
training set has stress labels, ``REF_stress`` as a 3x3 matrix), ``initial/`` (the model to
fine-tune) and ``checkpoints/`` (a run to resume). The command line is::

    mtt train options.yaml -o model.pt -e extensions/ [--restart checkpoints/<latest>.ckpt]

Retrieved: ``model.pt``, its ``extensions/`` (compiled TorchScript extensions some
architectures need at load time, e.g. sphericart for SOAP-BPNN), the final checkpoint
``model.ckpt``, and from metatrain's dated ``outputs/<date>/<time>/`` folder ``train.csv``
(per-epoch metrics), ``options_restart.yaml`` (the fully expanded options) and ``error.log``
(the traceback of a failed run). The intermediate checkpoints ``model_<epoch>.ckpt`` are
retrieved temporarily; the parser keeps the latest as the ``checkpoint`` output.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import yaml
from aiida.common.folders import Folder

from ..base import (
    CHECKPOINT_DIR,
    LABEL_KEYS,
    TEST_FILE,
    TRAIN_FILE,
    VALID_FILE,
    TrainingCalculation,
)
from . import config

__all__ = ('MetatrainTrainCalculation',)

OPTIONS_FILE = 'options.yaml'
MODEL_FILE = 'model.pt'
CHECKPOINT_FILE = 'model.ckpt'
EXTENSIONS_DIR = 'extensions'
OUTPUTS_GLOB = 'outputs/*/*'
METRICS_FILE = 'train.csv'
EXPANDED_OPTIONS_FILE = 'options_restart.yaml'
ERROR_FILE = 'error.log'
_EPOCH_CHECKPOINT = re.compile(r'model_(\d+)\.ckpt$')


def has_stress_labels(dataset: Any) -> bool:
    """Whether a ``PESData`` has at least one frame with a stress label."""
    return dataset.base.attributes.get('n_labelled', {}).get('stress', 0) > 0


def latest_checkpoint(names: list[str]) -> str | None:
    """The checkpoint to resume from: the highest ``model_<epoch>.ckpt``, else any ``.ckpt``."""
    epochs = [(int(m[1]), n) for n in names if (m := _EPOCH_CHECKPOINT.search(n))]
    if epochs:
        return max(epochs)[1]
    others = sorted(n for n in names if n.endswith('.ckpt'))
    return others[-1] if others else None


def write_metatrain_xyz(dataset: Any, path: str, *, stress: bool) -> int:
    """Write ``dataset`` as metatrain reads it; return how many frames were left out.

    metatrain's ASE reader drops a gradient for *every* frame when one frame lacks it, wants
    the stress as a 3x3 matrix, and fails on NaN energies; so frames without forces (or
    stress, when ``stress``) get NaN there (metatrain masks NaN labels), the Voigt stress is
    expanded to 3x3, and frames without an energy are left out.
    """
    from ase.stress import voigt_6_to_full_3x3_stress

    from aiida_trainspot.data.convert import write_extxyz_frame

    energy_key, forces_key, stress_key = (LABEL_KEYS[k] for k in ('energy', 'forces', 'stress'))
    skipped = 0
    with open(path, 'w') as handle:
        for atoms in dataset.iter_atoms(label_keys=LABEL_KEYS):
            if energy_key not in atoms.info:
                skipped += 1
                continue
            if forces_key not in atoms.arrays:
                atoms.arrays[forces_key] = np.full((len(atoms), 3), np.nan)
            if stress:
                value = atoms.info.get(stress_key)
                if value is None:
                    atoms.info[stress_key] = np.full((3, 3), np.nan)
                else:
                    value = np.asarray(value, dtype=float)
                    if value.shape == (6,):
                        value = voigt_6_to_full_3x3_stress(value)
                    atoms.info[stress_key] = value.reshape(3, 3)
            else:
                atoms.info.pop(stress_key, None)
            write_extxyz_frame(handle, atoms)
    return skipped


def _needs_rewrite(dataset: Any, stress: bool) -> bool:
    labelled = dataset.base.attributes.get('n_labelled', {})
    n_frames = len(dataset)
    return stress or labelled.get('energy', 0) < n_frames or labelled.get('forces', 0) < n_frames


class MetatrainTrainCalculation(TrainingCalculation):
    """Train a metatrain model (PET, SOAP-BPNN, ...) with ``mtt train``.

    ``parameters`` are metatrain options (``architecture`` with ``name``, ``model`` and
    ``training`` hypers, ...) merged over :data:`.config.DEFAULTS`; ``seed``, ``device``,
    ``base_precision`` (from ``dtype``) and the dataset files are always set from the inputs.
    ``initial_model`` (with a checkpoint) is fine-tuned (``architecture.training.finetune``,
    method ``full`` by default); ``restart_checkpoint`` resumes with ``--restart``.
    """

    ENGINE = 'metatrain'
    KNOWN_KEYS = config.KNOWN_KEYS

    @classmethod
    def define(cls, spec):
        """The shared training spec with this engine's parser."""
        super().define(spec)
        spec.inputs['metadata']['options']['parser_name'].default = 'trainspot.metatrain.train'

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], ctx: Any) -> str | None:
        """Option checks, the shared checks, then fine-tuning and restart checks."""
        parameters = inputs.get('parameters')
        params = parameters.get_dict() if parameters is not None else {}
        problem = config.validate_parameters(params)
        if problem:
            return problem
        problem = super().validate_inputs(inputs, ctx)
        if problem:
            return problem
        if 'test_set' in params and inputs.get('test') is None:
            return 'parameters: `test_set` options are given but there is no `test` input'
        architecture = config.architecture_name(params)
        model = inputs.get('initial_model')
        if model is not None:
            if not model.checkpoint_filename:
                return 'initial_model: the model has no checkpoint to fine-tune from'
            model_architecture = model.base.attributes.get('architecture')
            if model_architecture and model_architecture != architecture:
                return (
                    f'initial_model: a {model_architecture} model cannot be fine-tuned as '
                    f'{architecture}; set `architecture.name` to {model_architecture!r}'
                )
            training = inputs.get('training')
            if training is not None:
                new = sorted(set(training.species) - set(model.species))
                if new:
                    return (
                        f'initial_model: the training set has species {new} the model was not '
                        f'trained on ({model.species})'
                    )
        restart = inputs.get('restart_checkpoint')
        if restart is not None and latest_checkpoint(restart.list_object_names()) is None:
            return 'restart_checkpoint: the folder holds no .ckpt file'
        return None

    def write_engine_inputs(
        self, folder: Folder, initial: dict[str, str | None] | None
    ) -> list[str]:
        """Write ``options.yaml`` (and rewrite the datasets metatrain's way when needed)."""
        # metatrain divides by the number of stress values of the validation set: without any
        # (e.g. only slabs or clusters held out) it fails, so stress is then left out of training
        stress = has_stress_labels(self.inputs.training) and has_stress_labels(
            self.inputs.validation
        )
        for name, filename in (
            ('training', TRAIN_FILE),
            ('validation', VALID_FILE),
            ('test', TEST_FILE),
        ):
            if name in self.inputs and _needs_rewrite(self.inputs[name], stress):
                skipped = write_metatrain_xyz(
                    self.inputs[name], folder.get_abs_path(filename), stress=stress
                )
                if skipped:
                    self.report(f'{name}: {skipped} frames without an energy left out')
        finetune_from = initial.get('checkpoint') if initial else None
        options = config.build_options(
            self.inputs.parameters.get_dict(),
            seed=self.inputs.seed.value,
            dtype=self.inputs.dtype.value,
            device=self.inputs.device.value,
            stress=stress,
            train_file=TRAIN_FILE,
            valid_file=VALID_FILE,
            test_file=TEST_FILE if 'test' in self.inputs else None,
            finetune_from=finetune_from,
        )
        with folder.open(OPTIONS_FILE, 'w') as handle:
            yaml.safe_dump(options, handle, sort_keys=False)
        cmdline = ['train', OPTIONS_FILE, '-o', MODEL_FILE, '-e', f'{EXTENSIONS_DIR}/']
        if 'restart_checkpoint' in self.inputs:
            names = self.inputs.restart_checkpoint.list_object_names()
            cmdline += ['--restart', f'{CHECKPOINT_DIR}/{latest_checkpoint(names)}']
        return cmdline

    def retrieve_files(self) -> list[Any]:
        """The model, extensions, final checkpoint, and the metrics, options and error log."""
        return [
            MODEL_FILE,
            CHECKPOINT_FILE,
            EXTENSIONS_DIR,
            (f'{OUTPUTS_GLOB}/{METRICS_FILE}', '.', 1),
            (f'{OUTPUTS_GLOB}/{EXPANDED_OPTIONS_FILE}', '.', 1),
            (f'{OUTPUTS_GLOB}/{ERROR_FILE}', '.', 1),
        ]

    def prepare_for_submission(self, folder: Folder):
        """The shared preparation; intermediate checkpoints are retrieved temporarily."""
        calcinfo = super().prepare_for_submission(folder)
        calcinfo.retrieve_temporary_list = [
            (f'{OUTPUTS_GLOB}/model_*.ckpt', '.', 1),
        ]
        return calcinfo
