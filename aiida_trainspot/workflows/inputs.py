"""Submission-time checks of the ``TrainsPotWorkChain`` inputs: one message naming the port."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from aiida import orm
from ase.data import chemical_symbols

from aiida_trainspot.common.engines import (
    EXPLORATION_ENGINES,
    LABELLING_ENGINES,
    engine_class,
    engine_names,
)
from aiida_trainspot.common.settings import unknown_keys
from aiida_trainspot.evaluation.calibration import PROPERTIES, CalibrationSettings
from aiida_trainspot.evaluation.selection import SelectionSettings

from .operations import labelled_mask


def validate_error_thresholds(values: dict[str, Any]) -> str | None:
    """Known properties, positive numbers."""
    unknown = set(values) - set(PROPERTIES)
    if unknown:
        return unknown_keys('error_thresholds', unknown, PROPERTIES)
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            return f'error_thresholds.{name}: must be a positive number, got {value!r}'
    return None


def validate_calibration(values: dict[str, Any]) -> str | None:
    """The settings parse as :class:`CalibrationSettings` (the calibration step's own check)."""
    try:
        CalibrationSettings.from_dict(values)
    except (TypeError, ValueError) as exception:
        return str(exception)
    return None


def validate_selection(values: dict[str, Any]) -> str | None:
    """The selection settings parse (``max_selected`` is a separate input)."""
    if 'max_selected' in values:
        return 'selection.max_selected: use the input `max_selected`'
    known = {field.name for field in fields(SelectionSettings)} - {'max_selected'}
    if set(values) - known:
        return unknown_keys('selection', set(values) - known, known)
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


def alloy_species(augmentation: Mapping[str, Any]) -> list[str]:
    """Species the alloys augmentation adds (substitutions only swap species already there)."""
    from aiida_trainspot.augmentation.params import AugmentationParams, ParameterError

    parameters = augmentation.get('parameters')
    if parameters is None:
        return []
    try:
        alloys = AugmentationParams.from_dict(parameters.get_dict()).alloys
    except (ParameterError, TypeError, ValueError):
        return []  # the augmentation's own validator names the problem
    return list(alloys.alloy_species) if alloys.enabled else []


def campaign_species(inputs: Mapping[str, Any]) -> list[str]:
    """Every species a campaign can contain, by atomic number: the DFT settings must cover all.

    From ``structures``, ``dataset``, ``md_structures`` and ``explored``, plus the alloy species
    of ``augmentation.parameters``; exploration and selection add no new species.
    """
    species = set()
    for port in ('structures', 'dataset', 'md_structures', 'explored'):
        dataset = inputs.get(port)
        if dataset is not None:
            species.update(dataset.species)
    species.update(alloy_species(inputs.get('augmentation') or {}))
    return sorted(species, key=chemical_symbols.index)


def _validate_structures(inputs: Mapping[str, Any]) -> str | None:
    """``structures`` are relabelled with the campaign's settings: labels there are refused."""
    from .protocols import DATASET_HINT, labelled_frame

    structures = inputs.get('structures')
    labelled = labelled_frame(structures) if structures is not None else None
    if labelled is None:
        return None
    index, names = labelled
    return f'structures: frame {index} carries labels {names}; {DATASET_HINT}'


def _validate_qe(inputs: Mapping[str, Any]) -> str | None:
    """The qe engine: a pseudo family covering every species of the campaign.

    The protocol name is checked by the exposed port's own validator, before this runs.
    """
    from aiida_trainspot.labelling.qe.settings import missing_pseudos

    labelling = inputs.get('labelling') or {}
    engine = labelling.get('engine')
    qe = labelling.get('qe') or {}
    if (engine is not None and engine.value != 'qe') or 'pseudo_family' not in qe:
        return None
    species = campaign_species(inputs)
    message = missing_pseudos(qe['pseudo_family'].value, species) if species else None
    return f'labelling.qe.pseudo_family: {message}' if message else None


def validate_inputs(inputs: dict[str, Any], ctx: Any = None) -> str | None:
    """Cross-checks of the whole input namespace, before anything runs."""
    checks = (
        _validate_start(inputs),
        _validate_structures(inputs),
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
    engines = engine_names(LABELLING_ENGINES)
    if 'engine' not in labelling and not any(name in labelling for name in engines):
        return (
            'labelling: the loop labels the frames it selects; give labelling.qe (code, '
            'pseudo_family) or labelling.engine = ase with labelling.ase (code, calculator)'
        )
    return _validate_engines(inputs) or _validate_qe(inputs)


def _validate_engines(inputs: Mapping[str, Any]) -> str | None:
    """Each stage's engine gets its own check at submission, not when the stage starts.

    The stages' namespace validators do not travel with ``expose_inputs``; the frames and the
    committee are the campaign's own (so an exploration engine has a model), and the checks
    that need them run in the stages.
    """
    from aiida_trainspot.exploration import workchain as exploration
    from aiida_trainspot.labelling import workchain as labelling

    stages = (
        ('labelling', LABELLING_ENGINES, labelling.DEFAULT_ENGINE),
        ('exploration', EXPLORATION_ENGINES, exploration.DEFAULT_ENGINE),
    )
    for stage, group, default in stages:
        namespace = inputs.get(stage) or {}
        name = namespace['engine'].value if 'engine' in namespace else default
        try:
            engine = engine_class(group, name)
        except ValueError as exception:
            return f'{stage}.engine: {exception}'
        extra = (True,) if stage == 'exploration' else ()
        message = engine.validate(namespace.get(name) or {}, namespace, *extra)
        if message:
            return f'{stage}.{message}'
    return None
