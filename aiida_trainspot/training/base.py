"""The training CalcJob and parser shared by every engine (MACE, metatrain).

An engine subclass says how to write its configuration and command line
(:meth:`TrainingCalculation.write_engine_inputs`) and how to read its metrics
and model (:class:`TrainingParser` hooks). Everything else — datasets written as
extended XYZ with ``REF_`` keys, seed, device, dtype, fine-tuning from a model,
resuming from a checkpoint, outputs and exit codes — is here, once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from aiida import orm
from aiida.common import CalcInfo, CodeInfo
from aiida.common.folders import Folder
from aiida.engine import CalcJob
from aiida.parsers import Parser

from aiida_trainspot.common.runner_job import one_process_options
from aiida_trainspot.common.validators import validate_seed
from aiida_trainspot.data import PESData

from .loader import DEVICES, DTYPES
from .model import PotentialModel

LABEL_KEYS = {'energy': 'REF_energy', 'forces': 'REF_forces', 'stress': 'REF_stress'}
TRAIN_FILE, VALID_FILE, TEST_FILE = 'train.xyz', 'valid.xyz', 'test.xyz'
#: The dataset inputs of a training job and the files they are written to.
DATASET_FILES = (('training', TRAIN_FILE), ('validation', VALID_FILE), ('test', TEST_FILE))
INITIAL_DIR = 'initial'
CHECKPOINT_DIR = 'checkpoints'
STDOUT, STDERR = 'train.out', 'train.err'


def validate_training_set(value: PESData | None, _: Any) -> str | None:
    """A training set needs frames with energies and forces."""
    if value is None:
        return None
    if len(value) == 0:
        return 'training: the training set has no frames'
    labelled = value.base.attributes.get('n_labelled', {})
    if labelled.get('energy', 0) == 0 or labelled.get('forces', 0) == 0:
        return 'training: the training set has no frames labelled with energy and forces'
    return None


def validate_validation_set(value: PESData | None, _: Any) -> str | None:
    """A validation set needs at least one labelled frame (early stopping reads it)."""
    if value is None:
        return None
    if len(value) == 0:
        return 'validation: the validation set has no frames'
    if value.base.attributes.get('n_labelled', {}).get('energy', 0) == 0:
        return 'validation: the validation set has no labelled frames'
    return None


def _validate_choice(name: str, choices: tuple[str, ...]):
    def validator(value: orm.Str | None, _: Any) -> str | None:
        if value is not None and value.value not in choices:
            return f'{name}: {value.value!r} is not one of {list(choices)}'
        return None

    return validator


class TrainingCalculation(CalcJob):
    """Train one model on labelled datasets (abstract: use an engine subclass)."""

    ENGINE: ClassVar[str] = ''
    #: Configuration keys the engine knows; unknown keys in ``parameters`` are reported.
    KNOWN_KEYS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def define(cls, spec):
        """Inputs, outputs and exit codes shared by all engines."""
        super().define(spec)
        one_process_options(spec)
        spec.input(
            'training', valid_type=PESData, validator=validate_training_set, help='Training frames.'
        )
        spec.input(
            'validation',
            valid_type=PESData,
            validator=validate_validation_set,
            help='Validation frames (early stopping, checkpoint selection).',
        )
        spec.input(
            'test', valid_type=PESData, required=False, help='Test frames, evaluated at the end.'
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            help='Engine configuration (MACE arguments / metatrain options) over the defaults.',
        )
        spec.input(
            'seed', valid_type=orm.Int, validator=validate_seed, help='Seed of the training run.'
        )
        spec.input(
            'device',
            valid_type=orm.Str,
            default=lambda: orm.Str('cpu'),
            validator=_validate_choice('device', DEVICES),
            help='cpu or cuda.',
        )
        spec.input(
            'dtype',
            valid_type=orm.Str,
            default=lambda: orm.Str('float64'),
            validator=_validate_choice('dtype', DTYPES),
            help='float64 or float32.',
        )
        spec.input(
            'initial_model',
            valid_type=PotentialModel,
            required=False,
            help="A model to fine-tune: a foundation model, or the previous iteration's member.",
        )
        spec.input(
            'restart_checkpoint',
            valid_type=orm.FolderData,
            required=False,
            help='Checkpoints of an interrupted run of this same training, to resume from.',
        )
        spec.inputs.validator = cls.validate_inputs
        spec.output('model', valid_type=PotentialModel, help='The trained model.')
        spec.output(
            'checkpoint', valid_type=orm.FolderData, required=False, help='The checkpoints.'
        )
        spec.output('metrics', valid_type=orm.Dict, help='Per-epoch train/validation errors.')
        spec.default_output_node = 'metrics'
        spec.exit_code(
            300, 'ERROR_MODEL_MISSING', message='The training wrote no model file: {detail}'
        )
        spec.exit_code(301, 'ERROR_TRAINING_CRASHED', message='The training run failed: {detail}')
        spec.exit_code(
            302,
            'ERROR_OUT_OF_WALLTIME',
            message='The training ran out of walltime; see the `checkpoint` output.',
        )
        spec.exit_code(
            303, 'ERROR_METRICS_MISSING', message='No per-epoch metrics could be read: {detail}'
        )

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], _: Any) -> str | None:
        """Cross-port checks: species of the initial model, known configuration keys."""
        parameters = inputs.get('parameters')
        if parameters is not None and cls.KNOWN_KEYS:
            unknown = sorted(set(parameters.get_dict()) - cls.KNOWN_KEYS)
            if unknown:
                return f'parameters: unknown {cls.ENGINE} configuration keys {unknown}'
        model = inputs.get('initial_model')
        if model is not None and cls.ENGINE and model.engine != cls.ENGINE:
            return f'initial_model: a {model.engine} model cannot start a {cls.ENGINE} training'
        return None

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        """Write the datasets, the initial model or checkpoints, and the engine's inputs."""
        for name, filename in DATASET_FILES:
            if name in self.inputs:
                self.inputs[name].to_extxyz(folder.get_abs_path(filename), label_keys=LABEL_KEYS)
        initial = None
        if 'initial_model' in self.inputs:
            folder.get_subfolder(INITIAL_DIR, create=True)
            initial = self.inputs.initial_model.export(folder.get_abs_path(INITIAL_DIR))
            initial = {
                k: str(Path(v).relative_to(folder.abspath)) if v else None
                for k, v in initial.items()
            }
        if 'restart_checkpoint' in self.inputs:
            folder.get_subfolder(CHECKPOINT_DIR, create=True)
            self.inputs.restart_checkpoint.base.repository.copy_tree(
                folder.get_abs_path(CHECKPOINT_DIR)
            )
        cmdline = self.write_engine_inputs(folder, initial)
        with folder.open('trainspot_job.json', 'w') as handle:
            json.dump({'engine': self.ENGINE, 'seed': self.inputs.seed.value}, handle)
        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = cmdline
        codeinfo.stdout_name = STDOUT
        codeinfo.stderr_name = STDERR
        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [STDOUT, STDERR, *self.retrieve_files()]
        return calcinfo

    def write_engine_inputs(
        self, folder: Folder, initial: dict[str, str | None] | None
    ) -> list[str]:
        """Write the engine's configuration into ``folder``; return the command line arguments."""
        raise NotImplementedError

    def retrieve_files(self) -> list[str]:
        """Files and folders (relative) to retrieve besides stdout and stderr."""
        raise NotImplementedError


class TrainingParser(Parser):
    """Build the model and metrics outputs; map failures to the named exit codes."""

    def parse(self, **kwargs: Any):
        """Parse a finished training run."""
        files = set(self.retrieved.base.repository.list_object_names())
        checkpoint = self.checkpoint_folder()
        if checkpoint is not None:
            self.out('checkpoint', checkpoint)
        out_of_walltime = (
            self.node.exit_status == self.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status
        )
        try:
            metrics = self.parse_metrics()
        except (OSError, ValueError, KeyError) as exception:
            metrics = None
            metrics_error = str(exception)
        model_file = self.model_file(files)
        if model_file is None:
            if out_of_walltime:
                return self.exit_codes.ERROR_OUT_OF_WALLTIME
            detail = self.stderr_tail()
            if self.crashed():
                return self.exit_codes.ERROR_TRAINING_CRASHED.format(detail=detail)
            return self.exit_codes.ERROR_MODEL_MISSING.format(detail=detail)
        if metrics is None:
            return self.exit_codes.ERROR_METRICS_MISSING.format(detail=metrics_error)
        self.out('metrics', orm.Dict(metrics))
        self.out('model', self.build_model(model_file, metrics))
        return None

    def stderr_tail(self, lines: int = 5) -> str:
        """The last lines of the run's stderr, for error messages."""
        try:
            text = self.retrieved.base.repository.get_object_content(STDERR)
        except (FileNotFoundError, OSError):
            return 'no stderr retrieved'
        tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
        return ' | '.join(tail) or 'stderr is empty'

    def crashed(self) -> bool:
        """Whether stderr shows a Python traceback or error."""
        try:
            text = self.retrieved.base.repository.get_object_content(STDERR)
        except (FileNotFoundError, OSError):
            return False
        return 'Traceback' in text or 'Error' in text

    # engine hooks -----------------------------------------------------------
    def model_file(self, files: set[str]) -> str | None:
        """Name of the retrieved model file, or None."""
        raise NotImplementedError

    def parse_metrics(self) -> dict[str, Any]:
        """Per-epoch metrics: {'epoch': [...], 'train': {...}, 'validation': {...}}."""
        raise NotImplementedError

    def checkpoint_folder(self) -> orm.FolderData | None:
        """The retrieved checkpoints as a FolderData, or None."""
        return None

    def build_model(self, model_file: str, metrics: dict[str, Any]) -> PotentialModel:
        """The PotentialModel output."""
        raise NotImplementedError
