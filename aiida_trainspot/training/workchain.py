"""``TrainingWorkChain``: a committee of M models that differ by their seed (and, optionally, form).

The dataset gets its sticky train/validation/test split (a frame keeps its split
forever), the labelled frames of each split become the members' datasets, and M
members are trained concurrently, each with a distinct seed derived from the
input seed and recorded on its model. ``member_parameters`` may give each member
its own overrides of ``parameters`` (a heterogeneous committee, e.g. different
cutoffs), which makes the members disagree for reasons other than their initial
weights. A member that fails is reported; the committee goes on if at least
``min_members`` succeeded. Both ``committee_size`` and ``min_members`` are at least
:data:`MIN_MEMBERS` (2), checked at submission: one member has no disagreement to measure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction

from aiida_trainspot.common.seeds import derive_seeds
from aiida_trainspot.common.validators import validate_seed
from aiida_trainspot.data import PESData
from aiida_trainspot.data.splits import DEFAULT_FRACTIONS, check_fractions

from .base import TrainingCalculation
from .loader import DEVICES, DTYPES, ENGINES
from .metatrain.config import deep_merge
from .model import PotentialModel
from .restart import TrainingMemberWorkChain, training_calculation

#: The smallest committee: one member has no disagreement, so it would always look converged.
MIN_MEMBERS = 2


def member_seeds(seed: int, size: int) -> list[int]:
    """``size`` distinct seeds in [0, 2**31) derived from one seed (never colliding)."""
    return derive_seeds(seed, n=size, distinct=True)


def labelled_split_indices(dataset: PESData) -> dict[str, np.ndarray]:
    """Indices of the frames with energy and forces, per split."""
    energy = dataset.get_column('energy')[1] if 'energy' in dataset.column_names else None
    forces = dataset.get_column('forces')[1] if 'forces' in dataset.column_names else None
    if energy is None or forces is None:
        labelled = np.zeros(len(dataset), dtype=bool)
    else:
        labelled = energy & forces
    return {
        name: np.intersect1d(dataset.split_indices(name), np.flatnonzero(labelled))
        for name in ('train', 'validation', 'test')
    }


def member_parameter_sets(
    parameters: dict[str, Any], overrides: list[Any] | None, size: int
) -> list[dict[str, Any]]:
    """Each member's engine parameters: ``parameters`` with its entry of ``overrides`` merged over.

    Member ``i`` takes ``overrides[i % len(overrides)]`` (merged recursively, so a metatrain
    override may name one nested option), so two entries alternate over the committee. Without
    overrides every member gets ``parameters``.

    :raises ValueError: naming the entry, when ``overrides`` is empty, longer than the committee
        (an entry would never be used) or holds something other than a mapping.
    """
    if overrides is None:
        return [dict(parameters) for _ in range(size)]
    if not 1 <= len(overrides) <= size:
        raise ValueError(
            f'member_parameters: give 1 to committee_size ({size}) entries, got {len(overrides)}'
        )
    for index, entry in enumerate(overrides):
        if not isinstance(entry, dict):
            raise ValueError(
                f'member_parameters[{index}]: must be a mapping of engine options, '
                f'got {type(entry).__name__}'
            )
    return [deep_merge(parameters, overrides[index % len(overrides)]) for index in range(size)]


@calcfunction
def derive_member_parameters(
    parameters: orm.Dict, member_parameters: orm.List, committee_size: orm.Int
) -> dict[str, orm.Dict]:
    """``member_<i>``: member i's parameters (:func:`member_parameter_sets`), in provenance."""
    sets = member_parameter_sets(
        parameters.get_dict(), member_parameters.get_list(), committee_size.value
    )
    return {f'member_{index}': orm.Dict(values) for index, values in enumerate(sets)}


@calcfunction
def split_for_training(dataset: PESData, seed: orm.Int, fractions: orm.Dict) -> dict[str, PESData]:
    """Assign the sticky split, then return it and its labelled train/validation/test frames."""
    split = dataset.assign_split(seed.value, fractions.get_dict())
    indices = labelled_split_indices(split)
    outputs = {'dataset': split}
    outputs.update({name: split.subset(index) for name, index in indices.items()})
    return outputs


@calcfunction
def committee_report(seeds: orm.List, failures: orm.Dict, **models: PotentialModel) -> orm.Dict:
    """Seeds, failures and final metrics of every member, in one queryable node."""
    members = {
        key: {'seed': model.seed, 'metrics': model.base.attributes.get('metrics')}
        for key, model in models.items()
    }
    members.update(failures.get_dict())
    return orm.Dict({'seeds': seeds.get_list(), 'members': members, 'n_trained': len(models)})


def _validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
    size = inputs['committee_size'].value if 'committee_size' in inputs else 4
    minimum = inputs['min_members'].value if 'min_members' in inputs else MIN_MEMBERS
    if size < MIN_MEMBERS:
        return (
            f'committee_size: a committee needs at least {MIN_MEMBERS} members, got {size} '
            '(one member has no disagreement to measure)'
        )
    if not MIN_MEMBERS <= minimum <= size:
        return (
            f'min_members: must be between {MIN_MEMBERS} and committee_size ({size}), got '
            f'{minimum} (fewer than {MIN_MEMBERS} members have no disagreement to measure)'
        )
    if 'engine' not in inputs:
        return None  # the port says what is missing
    engine = inputs['engine'].value
    if engine not in ENGINES:
        return f'engine: unknown engine {engine!r}; choose one of {list(ENGINES)}'
    try:
        split = inputs.get('split_fractions')
        fractions = check_fractions(split.get_dict() if split is not None else DEFAULT_FRACTIONS)
    except ValueError as exception:
        return f'split_fractions: {exception}'
    message = training_calculation(engine).validate_inputs(
        {k: inputs[k] for k in ('parameters', 'initial_model') if k in inputs}, None
    )
    if message:
        return message
    message = _check_member_parameters(inputs, engine, size)
    if message:
        return message
    if 'dataset' not in inputs:  # excluded by a wrapping workflow, which gives it later
        return None
    seed = inputs['seed'].value if 'seed' in inputs else 0
    return _check_dataset(inputs['dataset'], seed, fractions)


def _check_member_parameters(inputs: dict[str, Any], engine: str, size: int) -> str | None:
    """Reject member overrides that are malformed or that the engine would not accept."""
    if 'member_parameters' not in inputs:
        return None
    parameters = inputs['parameters'].get_dict() if 'parameters' in inputs else {}
    try:
        sets = member_parameter_sets(parameters, inputs['member_parameters'].get_list(), size)
    except ValueError as exception:
        return str(exception)
    shared = {k: inputs[k] for k in ('initial_model',) if k in inputs}
    for index, merged in enumerate(sets[: len(inputs['member_parameters'].get_list())]):
        message = training_calculation(engine).validate_inputs(
            {**shared, 'parameters': orm.Dict(merged)}, None
        )
        if message:
            return f'member_parameters[{index}]: {message}'
    return None


def _check_dataset(dataset: PESData, seed: int, fractions: dict[str, float]) -> str | None:
    """Reject, before anything runs, a dataset that would leave a split empty."""
    labelled = dataset.base.attributes.get('n_labelled', {})
    if len(dataset) == 0:
        return 'dataset: the dataset has no frames'
    if min(labelled.get('energy', 0), labelled.get('forces', 0)) == 0:
        return 'dataset: no frame is labelled with energy and forces'
    counts = {
        name: len(index)
        for name, index in labelled_split_indices(dataset.assign_split(seed, fractions)).items()
    }
    if counts['train'] == 0:
        return 'dataset: the training split has no labelled frames'
    if counts['validation'] == 0:
        return (
            'dataset: the validation split has no labelled frames '
            f'({counts}); add frames or raise split_fractions.validation'
        )
    return None


class TrainingWorkChain(WorkChain):
    """Train a committee of models on the sticky split of a labelled dataset."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input(
            'dataset',
            valid_type=PESData,
            help='Labelled frames (frames without labels are skipped).',
        )
        spec.input('engine', valid_type=orm.Str, help=f'Training engine: one of {list(ENGINES)}.')
        spec.input('code', valid_type=orm.AbstractCode, help='mace_run_train or mtt.')
        spec.input(
            'seed',
            valid_type=orm.Int,
            default=lambda: orm.Int(0),
            validator=validate_seed,
            help='Seed of the split and members.',
        )
        spec.input(
            'committee_size',
            valid_type=orm.Int,
            default=lambda: orm.Int(4),
            help=f'Members (>= {MIN_MEMBERS}).',
        )
        spec.input(
            'min_members',
            valid_type=orm.Int,
            default=lambda: orm.Int(MIN_MEMBERS),
            help=f'The committee goes on if at least this many members succeed '
            f'({MIN_MEMBERS} to committee_size).',
        )
        spec.input(
            'split_fractions',
            valid_type=orm.Dict,
            default=lambda: orm.Dict(DEFAULT_FRACTIONS),
            help='Fractions of new frames per split (train/validation/test).',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            help='Engine configuration.',
        )
        spec.input(
            'member_parameters',
            valid_type=orm.List,
            required=False,
            help='Per-member overrides merged over `parameters`: member i takes entry '
            'i mod len (e.g. [{"r_max": 4.0}, {"r_max": 5.0}] for a committee of two cutoffs).',
        )
        spec.input(
            'device',
            valid_type=orm.Str,
            default=lambda: orm.Str('cpu'),
            validator=lambda v, _: (
                None if v.value in DEVICES else f'device: not one of {list(DEVICES)}'
            ),
            help='cpu or cuda.',
        )
        spec.input(
            'dtype',
            valid_type=orm.Str,
            default=lambda: orm.Str('float64'),
            validator=lambda v, _: (
                None if v.value in DTYPES else f'dtype: not one of {list(DTYPES)}'
            ),
            help='float64 or float32.',
        )
        spec.input(
            'initial_model',
            valid_type=PotentialModel,
            required=False,
            help='A foundation model every member is fine-tuned from.',
        )
        spec.input_namespace(
            'previous_models',
            valid_type=PotentialModel,
            dynamic=True,
            required=False,
            help='Warm start: member_<i> starts from previous_models.member_<i>.',
        )
        spec.input(
            'options',
            valid_type=orm.Dict,
            required=False,
            help='metadata.options of every training job (resources, max_wallclock_seconds, ...).',
        )
        spec.input(
            'max_restarts',
            valid_type=orm.Int,
            default=lambda: orm.Int(3),
            help='Walltime restarts.',
        )
        spec.inputs.validator = _validate_inputs
        spec.outline(cls.split, cls.train_members, cls.collect)
        spec.output('dataset', valid_type=PESData, help='The input dataset with its sticky split.')
        spec.output_namespace(
            'models', valid_type=PotentialModel, dynamic=True, help='member_<i> models.'
        )
        spec.output(
            'report', valid_type=orm.Dict, help='Seeds, failures and final metrics per member.'
        )
        spec.exit_code(
            401,
            'ERROR_TOO_FEW_MEMBERS',
            message='Only {n_ok} of {n} members trained (min_members {minimum}).',
        )

    def split(self) -> None:
        """Assign the sticky split and extract the labelled frames of each split."""
        self.ctx.split = split_for_training(
            self.inputs.dataset, self.inputs.seed, self.inputs.split_fractions
        )
        self.out('dataset', self.ctx.split['dataset'])

    def train_members(self):
        """Submit every member at once, each with its own seed."""
        self.ctx.seeds = member_seeds(self.inputs.seed.value, self.inputs.committee_size.value)
        previous = self.inputs.get('previous_models', {})
        parameters = self.member_parameter_nodes()
        futures = []
        for index, seed in enumerate(self.ctx.seeds):
            train = {
                'code': self.inputs.code,
                'training': self.ctx.split['train'],
                'validation': self.ctx.split['validation'],
                'parameters': parameters[index],
                'seed': orm.Int(seed),
                'device': self.inputs.device,
                'dtype': self.inputs.dtype,
            }
            if len(self.ctx.split['test']):
                train['test'] = self.ctx.split['test']
            initial = previous.get(f'member_{index}', self.inputs.get('initial_model'))
            if initial is not None:
                train['initial_model'] = initial
            if 'options' in self.inputs:
                train['metadata'] = {'options': self.inputs.options.get_dict()}
            node = self.submit(
                TrainingMemberWorkChain,
                engine=self.inputs.engine,
                train=train,
                max_iterations=self.inputs.max_restarts,
                metadata={'call_link_label': f'member_{index}'},
            )
            futures.append(node)
        return ToContext(**{f'member_{i}': node for i, node in enumerate(futures)})

    def member_parameter_nodes(self) -> list[orm.Dict]:
        """Every member's parameters: the shared node, or per-member nodes derived in provenance."""
        size = self.inputs.committee_size
        if 'member_parameters' not in self.inputs:
            return [self.inputs.parameters] * size.value
        derived = derive_member_parameters(
            self.inputs.parameters, self.inputs.member_parameters, size
        )
        return [derived[f'member_{index}'] for index in range(size.value)]

    def collect(self):
        """Expose the members that trained; report the others; stop if too few."""
        models, failures = {}, {}
        for index, seed in enumerate(self.ctx.seeds):
            node = self.ctx[f'member_{index}']
            if node.is_finished_ok and 'model' in node.outputs:
                models[f'member_{index}'] = node.outputs.model
            else:
                reason = node.exit_message or f'process {node.process_state.value}'
                failures[f'member_{index}'] = {
                    'seed': seed,
                    'pk': node.pk,
                    'exit_status': node.exit_status,
                    'reason': reason,
                }
                self.report(f'member {index} (seed {seed}) failed: {reason}')
        self.out('models', models)
        self.out('report', committee_report(orm.List(self.ctx.seeds), orm.Dict(failures), **models))
        n, minimum = len(self.ctx.seeds), self.inputs.min_members.value
        self.report(f'trained {len(models)} of {n} members')
        if len(models) < minimum:
            return self.exit_codes.ERROR_TOO_FEW_MEMBERS.format(
                n_ok=len(models), n=n, minimum=minimum
            )
        return None


__all__ = ('MIN_MEMBERS', 'TrainingCalculation', 'TrainingWorkChain', 'member_seeds')
