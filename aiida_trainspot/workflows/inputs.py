"""Submission-time checks of the ``TrainsPotWorkChain`` inputs: one message naming the port."""

from __future__ import annotations

from typing import Any

from aiida import orm

from aiida_trainspot.evaluation.calibration import ERROR_KINDS, METHODS, PROPERTIES
from aiida_trainspot.evaluation.disagreement import DEFAULT_ERROR_KIND
from aiida_trainspot.evaluation.selection import SelectionSettings

from .operations import labelled_mask

CALIBRATION_KEYS = frozenset({'method', 'min_points', 'splits', 'power_law', 'error'})
SPLITS = ('train', 'validation', 'test')


def validate_error_thresholds(values: dict[str, Any]) -> str | None:
    """Known properties, positive numbers."""
    for name, value in values.items():
        if name not in PROPERTIES:
            return f'error_thresholds: unknown property {name!r}; known: {list(PROPERTIES)}'
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            return f'error_thresholds.{name}: must be a positive number, got {value!r}'
    return None


def validate_calibration(values: dict[str, Any]) -> str | None:
    """Known keys, a known method and error kind, min_points >= 2, known splits."""
    unknown = sorted(set(values) - CALIBRATION_KEYS)
    if unknown:
        return f'calibration: unknown keys {unknown}; known: {sorted(CALIBRATION_KEYS)}'
    if values.get('method', 'least_squares') not in METHODS:
        return f'calibration.method: {values["method"]!r} is not one of {list(METHODS)}'
    if values.get('error', DEFAULT_ERROR_KIND) not in ERROR_KINDS:
        return f'calibration.error: {values["error"]!r} is not one of {list(ERROR_KINDS)}'
    min_points = values.get('min_points', 5)
    if not isinstance(min_points, int) or isinstance(min_points, bool) or min_points < 2:
        return f'calibration.min_points: must be an integer >= 2, got {min_points!r}'
    splits = values.get('splits', [])
    if not isinstance(splits, list) or any(s not in SPLITS for s in splits):
        return f'calibration.splits: must be a list of {list(SPLITS)}, got {splits!r}'
    return None


def validate_selection(values: dict[str, Any]) -> str | None:
    """The selection settings parse (``max_selected`` is a separate input)."""
    if 'max_selected' in values:
        return 'selection.max_selected: use the input `max_selected`'
    try:
        SelectionSettings.from_dict(values)
    except (TypeError, ValueError) as exception:
        return f'selection: {exception}'
    return None


def _validate_start(inputs: dict[str, Any]) -> str | None:
    """What the first iteration starts from is consistent."""
    has_start = any(port in inputs for port in ('structures', 'dataset', 'restart_from'))
    if not has_start:
        return 'structures: give `structures` (augmented), a `dataset`, or `restart_from`'
    models = dict(inputs.get('models') or {})
    if 'explored' in inputs and not models:
        return 'explored: starting at evaluation needs the committee in `models`'
    if models:
        if len(models) < 2:
            return f'models: a committee needs at least 2 members, got {len(models)}'
        engines = {model.engine for model in models.values()}
        training_engine = inputs.get('training', {}).get('engine')
        if training_engine is not None and engines != {training_engine.value}:
            return (
                f'models: the committee was trained with {sorted(engines)}, but '
                f'training.engine is {training_engine.value!r}'
            )
        dataset = inputs.get('dataset')
        if dataset is None or 'structures' in inputs:
            return 'models: starting at exploration needs a labelled `dataset` (no `structures`)'
        unlabelled = int((~labelled_mask(dataset)).sum())
        if unlabelled:
            return (
                f'dataset: {unlabelled} frames have no energy and forces; starting at exploration '
                '(`models` given) needs a fully labelled dataset'
            )
    return None


def restart_reference(value: Any) -> orm.Str:
    """``restart_from`` as the UUID of the run: a process node, a PK or a UUID are accepted.

    A process node cannot be the input of another process in AiiDA's provenance graph (only data
    can), so the run is referenced by its UUID and its checkpoints become outputs of the new run.
    """
    if isinstance(value, orm.Str):
        return value
    if isinstance(value, orm.ProcessNode):
        return orm.Str(value.uuid)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return orm.Str(orm.load_node(value).uuid)
        except Exception:
            return orm.Str(str(value))  # the validator names the problem
    raise TypeError(f'restart_from: give a TrainsPotWorkChain node, PK or UUID, not {value!r}')


def _validate_restart(inputs: dict[str, Any]) -> str | None:
    reference = inputs.get('restart_from')
    if reference is None:
        return None
    try:
        node = orm.load_node(reference.value)
    except Exception:
        return f'restart_from: no process with UUID or PK {reference.value!r}'
    if not isinstance(node, orm.WorkflowNode):
        return f'restart_from: node {node.pk} is a {type(node).__name__}, not a TrainsPotWorkChain'
    if not (node.process_type or '').endswith('trainspot.trainspot'):
        return f'restart_from: node {node.pk} is a {node.process_type}, not a TrainsPotWorkChain'
    if not node.is_terminated:
        return f'restart_from: node {node.pk} is still {node.process_state.value}; kill it first'
    return None


def validate_inputs(inputs: dict[str, Any], ctx: Any = None) -> str | None:
    """Cross-checks of the whole input namespace, before anything runs."""
    checks = (
        _validate_start(inputs),
        _validate_restart(inputs),
        validate_error_thresholds(inputs['error_thresholds'].get_dict()),
        validate_calibration(inputs['calibration'].get_dict()),
        validate_selection(inputs['selection'].get_dict()),
    )
    for message in checks:
        if message:
            return message
    for name in ('max_iterations', 'max_selected', 'max_labels'):
        if name in inputs and inputs[name].value < 1:
            return f'{name}: must be at least 1, got {inputs[name].value}'
    labelling = inputs.get('labelling') or {}
    if 'engine' not in labelling and 'qe' not in labelling and 'ase' not in labelling:
        return (
            'labelling: the loop labels the frames it selects; give labelling.qe (code, '
            'pseudo_family) or labelling.engine = ase with labelling.ase (code, calculator)'
        )
    return None
