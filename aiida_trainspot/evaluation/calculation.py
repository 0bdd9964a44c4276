"""``EvaluationCalculation`` (``trainspot.evaluation``): a committee's predictions on datasets.

One job per committee: every model is loaded once and every dataset streamed through it in chunks
by the ``trainspot-evaluate`` executable of this package
(:mod:`aiida_trainspot.runners.evaluate`). The job folder gets, all at relative paths (the job
runs unchanged on a remote computer where the package is installed):

- ``models/<label>/<model file>`` (and ``models/<label>/extensions/`` for metatrain models);
- ``datasets/<name>.index.h5`` and ``shards/<sha256>.h5``: each dataset's own index and shard
  files, copied from the node's repository (no frame is rewritten; a shard shared by several
  datasets is copied once);
- ``evaluation.json``: the runner's configuration.

It retrieves ``predictions/<name>.h5`` (one shard per dataset) and ``metrics.json``, which
:class:`~aiida_trainspot.evaluation.parser.EvaluationParser` turns into the outputs
``predictions.<name>`` (the input dataset with the prediction columns added) and ``metrics``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_trainspot.common.runner_job import Copies, RunnerCalculation
from aiida_trainspot.common.validators import at_least, one_of
from aiida_trainspot.data.pesdata import INDEX_KEY, PESData
from aiida_trainspot.data.store import DatasetIndex
from aiida_trainspot.training.loader import DEVICES, DTYPES, ENGINES
from aiida_trainspot.training.model import PotentialModel

from .calibration import Calibration
from .inference import ATOM_COLUMNS, ESTIMATED_ERROR_COLUMNS, FRAME_COLUMNS

__all__ = ('EvaluationCalculation', 'member_order')

CONFIG_FILE = 'evaluation.json'
METRICS_FILE = 'metrics.json'
MODELS_DIR = 'models'
DATASETS_DIR = 'datasets'
SHARDS_DIR = 'shards'
PREDICTIONS_DIR = 'predictions'
MIN_MEMBERS = 2


def member_order(labels: Any) -> list[str]:
    """Member labels in natural order (``member_2`` before ``member_10``): the member axis order."""

    def key(label: str) -> list[Any]:
        return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', label)]

    return sorted(labels, key=key)


def _models_dtype(models: Mapping[str, PotentialModel]) -> set[str]:
    return {str(model.base.attributes.get('dtype')) for model in models.values()}


def _dataset_index(dataset: PESData) -> DatasetIndex:
    content = dataset.base.repository.get_object_content(INDEX_KEY, 'rb')
    return DatasetIndex.from_file(io.BytesIO(content))


def _committee_size_held(dataset: PESData) -> int | None:
    """Members of the predictions a dataset already holds (``energy_members``), or None."""
    spec = _dataset_index(dataset).columns.get('energy_members')
    return int(spec.shape[0]) if spec is not None and spec.shape else None


def validate_models(value: Mapping[str, Any] | None, _ctx=None) -> str | None:
    """At least two models, all of the same engine."""
    models = dict(value or {})
    if len(models) < MIN_MEMBERS:
        return (
            f'`models`: a committee needs at least {MIN_MEMBERS} models, got {len(models)}; '
            'give them as models={"member_0": model_0, "member_1": model_1, ...}'
        )
    engines = {label: model.engine for label, model in models.items()}
    unknown = {label: e for label, e in engines.items() if e not in ENGINES}
    if unknown:
        return f'`models`: unknown engines {unknown}; known: {list(ENGINES)}'
    if len(set(engines.values())) > 1:
        return (
            f'`models`: all members must use the same engine, got {dict(sorted(engines.items()))}; '
            'evaluate each engine in its own job'
        )
    return None


def validate_datasets(value: Mapping[str, Any] | None, _ctx=None) -> str | None:
    """At least one dataset, none empty."""
    datasets = dict(value or {})
    if not datasets:
        return '`datasets`: give at least one dataset, as datasets={"name": pesdata, ...}'
    empty = sorted(name for name, dataset in datasets.items() if len(dataset) == 0)
    if empty:
        return f'`datasets.{empty[0]}`: the dataset has no frames, there is nothing to evaluate'
    return None


def validate_calibration(value: orm.Dict | None, _ctx=None) -> str | None:
    """A dictionary that :meth:`Calibration.from_dict` accepts."""
    if value is None:
        return None
    try:
        Calibration.from_dict(value.get_dict())
    except Exception as exc:
        return (
            f'`calibration`: not a calibration ({type(exc).__name__}: {exc}); give '
            'Dict(Calibration.to_dict())'
        )
    return None


def validate_inputs(inputs: dict, ctx=None) -> str | None:
    """Cross-checks: dtype against the models, species of the datasets against the models'.

    Skipped for ports a wrapping workflow excluded.
    """
    if ctx is not None and any(port not in ctx for port in ('models', 'datasets', 'dtype')):
        return None
    models = dict(inputs.get('models') or {})
    datasets = dict(inputs.get('datasets') or {})
    if len(models) < MIN_MEMBERS or not datasets:
        return None  # the namespace validators say why
    dtypes = _models_dtype(models)
    engine = next(iter(models.values())).engine
    if 'dtype' not in inputs and len(dtypes) > 1:
        return (
            f'`dtype`: the models were trained in different dtypes {sorted(dtypes)}; choose the '
            f'evaluation dtype explicitly ({list(DTYPES)})'
        )
    if 'dtype' in inputs and engine == 'metatrain' and {inputs['dtype'].value} != dtypes:
        return (
            f'`dtype`: metatrain models evaluate in the dtype they were trained in '
            f'({sorted(dtypes)}), not {inputs["dtype"].value!r}; leave `dtype` out'
        )
    for name in sorted(datasets):
        held = _committee_size_held(datasets[name])
        if held is not None and held != len(models):
            return (
                f'`datasets.{name}`: the dataset already holds the predictions of a committee of '
                f'{held} members, which those of {len(models)} members cannot replace; evaluate '
                'the dataset it was derived from instead'
            )
    known = set.intersection(*(set(model.species) for model in models.values()))
    for name in sorted(datasets):
        unknown = sorted(set(datasets[name].species) - known)
        if unknown:
            return (
                f'`datasets.{name}`: species {unknown} are unknown to the committee (its models '
                f'know {sorted(known)}); remove those frames or train on them'
            )
    return None


class EvaluationCalculation(RunnerCalculation):
    """Predictions, disagreement and errors of a committee of potentials on datasets, in one job."""

    PARSER_NAME = 'trainspot.evaluation'
    CONFIG_FILE = CONFIG_FILE
    RUNNER = 'trainspot-evaluate'
    RETRIEVE = (PREDICTIONS_DIR, METRICS_FILE)

    @classmethod
    def define(cls, spec):
        """Inputs, outputs and exit codes (300-303: :class:`RunnerCalculation`)."""
        super().define(spec)

        spec.input_namespace(
            'models',
            valid_type=PotentialModel,
            dynamic=True,
            validator=validate_models,
            help=(
                f'The committee: at least {MIN_MEMBERS} models of one engine, by label. The '
                'member axis of every output follows the labels in natural order '
                '(member_2 before member_10).'
            ),
        )
        spec.input_namespace(
            'datasets',
            valid_type=PESData,
            dynamic=True,
            validator=validate_datasets,
            help='The datasets to evaluate (at least one, none empty), by name.',
        )
        spec.input(
            'device',
            valid_type=orm.Str,
            default=lambda: orm.Str('cpu'),
            validator=one_of('device', DEVICES),
            help=f'Torch device of the models: one of {list(DEVICES)}.',
        )
        spec.input(
            'dtype',
            valid_type=orm.Str,
            required=False,
            validator=one_of('dtype', DTYPES),
            help=(
                f"Precision of the evaluation ({list(DTYPES)}); default: the models' dtype. "
                'MACE models are converted; metatrain models run in their own dtype only.'
            ),
        )
        spec.input(
            'batch_size',
            valid_type=orm.Int,
            default=lambda: orm.Int(1),
            validator=at_least('batch_size', 1),
            help=(
                'Frames per model call. 1 (default): one ASE call per frame, fastest on CPUs; '
                'larger batches (MACE and metatrain) may pay on GPUs and give the same results '
                'up to floating-point summation order.'
            ),
        )
        spec.input(
            'chunk_size',
            valid_type=orm.Int,
            default=lambda: orm.Int(1000),
            validator=at_least('chunk_size', 1),
            help='Frames read from a dataset and evaluated at a time (bounds the job memory).',
        )
        spec.input(
            'calibration',
            valid_type=orm.Dict,
            required=False,
            validator=validate_calibration,
            help=(
                'A calibration (Calibration.to_dict()): adds the calibrated error estimates '
                'estimated_error_<property> = delta_<property> / slope and counts the frames '
                'above its thresholds in `metrics`.'
            ),
        )
        spec.inputs.validator = validate_inputs

        columns = ', '.join(f'{k} ({v[0]})' if v[0] else k for k, v in FRAME_COLUMNS.items())
        atom_columns = ', '.join(f'{k} ({v[0]})' for k, v in ATOM_COLUMNS.items())
        spec.output_namespace(
            'predictions',
            valid_type=PESData,
            dynamic=True,
            help=(
                'For each input dataset, the same frames, labels and metadata with the per-frame '
                f'columns {columns}, with a calibration also '
                f'{", ".join(ESTIMATED_ERROR_COLUMNS)}, and the per-atom columns {atom_columns}. '
                'Stress columns are present only for frames periodic along at least two axes '
                '(bulk and 2D), '
                'the eps columns only where the frame has that label. `non_finite` (bool) flags '
                'the frames where a member (not dropped) predicted a non-finite energy, force or '
                'stress: that member is NaN there and the statistics use the others. Attribute '
                '`committee_members`: the member labels in the order of the member axis.'
            ),
        )
        spec.output(
            'metrics',
            valid_type=orm.Dict,
            help=(
                'Per dataset: counts, RMSE/MAE per member and of the committee mean with the mean '
                '± std of the member RMSEs per split (all, train, validation, test, unassigned) '
                'and property (meV/atom, meV/Angstrom, meV/Angstrom^3), and the distribution of '
                'the disagreements (with a calibration: frames above its thresholds). Always '
                '`dropped_members` (labels of the members non-finite on every frame, left out '
                'of the committee) and `non_finite_frames` ({dataset: [frame indices]} of the '
                'flagged frames, left out of the error metrics).'
            ),
        )
        spec.default_output_node = 'metrics'

        spec.exit_code(
            304,
            'ERROR_INFERENCE_FAILED',
            message='A member failed: {detail}',
        )

    def write_inputs(self, folder: Folder, copies: Copies) -> Mapping[str, Any]:
        """Copy the models and the datasets' files; return the runner's configuration."""
        models = dict(self.inputs.models)
        datasets = dict(self.inputs.datasets)
        members = []
        for label in member_order(models):
            model = models[label]
            files = self.copy_model(model, f'{MODELS_DIR}/{label}', copies, f'models.{label}')
            members.append(
                {
                    'label': label,
                    'engine': model.engine,
                    'model': files['path'],
                    'extensions': files['extensions'],
                }
            )
        copied: set[str] = set()
        entries = []
        for name in sorted(datasets):
            index_path = f'{DATASETS_DIR}/{name}.index.h5'
            copies.extend(
                datasets[name].to_job(folder, index_path, shards=SHARDS_DIR, copied=copied)
            )
            entries.append(
                {'name': name, 'index': index_path, 'output': f'{PREDICTIONS_DIR}/{name}.h5'}
            )

        dtype = self.inputs.dtype.value if 'dtype' in self.inputs else None
        if dtype is None:
            dtype = sorted(_models_dtype(models))[0]
        calibration = self.inputs.calibration.get_dict() if 'calibration' in self.inputs else None
        return {
            'members': members,
            'datasets': entries,
            'shards': SHARDS_DIR,
            'device': self.inputs.device.value,
            'dtype': dtype,
            'batch_size': self.inputs.batch_size.value,
            'chunk_size': self.inputs.chunk_size.value,
            'calibration': calibration,
            'metrics': METRICS_FILE,
        }
