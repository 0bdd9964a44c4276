"""``aiida-trainspot run --dry-run``: validate a campaign and show what it would do.

A campaign can spend a large allocation before its first mistake shows (a typo left a
protocol value in place, a species without a pseudopotential, a cutoff nobody meant). The dry
run builds the builder exactly like ``run``, validates the whole input namespace as a
submission would (every port, every validator), without creating a process node, and prints
the settings that follow from the inputs: codes and engines, the campaign's DFT settings,
the committee, the MD plan, calibration, selection and budgets.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

#: Width of the key column of the report, and of its lines (a terminal's).
KEY_WIDTH = 17
LINE_WIDTH = 100
#: MACE options shown as the model size, and the epochs.
MACE_SIZE = ('num_channels', 'max_L', 'r_max', 'num_interactions')
MACE_EPOCHS = ('max_num_epochs', 'patience')


def validate_builder(builder: Any) -> Mapping[str, Any]:
    """The inputs of ``builder`` with defaults filled in, validated like a submission.

    The same three steps as ``Process.__init__`` and ``on_create`` (serialize, pre-process,
    validate), minus the process node: nothing is stored.

    :raises ValueError: the first problem, naming the port.
    """
    spec = builder._process_class.spec()
    inputs = spec.inputs.serialize(builder._inputs(prune=True))
    parsed = spec.inputs.pre_process(inputs)
    error = spec.inputs.validate(parsed)
    if error is not None:
        port = error.port.removeprefix(spec.inputs.name).lstrip('.')
        message = error.message
        raise ValueError(f'{port}: {message}' if port and not message.startswith(port) else message)
    return parsed


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:g}'
    if isinstance(value, (list, tuple)):
        return ', '.join(_fmt(v) for v in value) or 'none'
    if value is None:
        return 'none'
    return str(value)


def _plain(node: Any) -> Any:
    """The Python value of an AiiDA node (``Dict``, ``List``, base types), else the node."""
    if hasattr(node, 'get_dict'):
        return node.get_dict()
    if hasattr(node, 'get_list'):
        return node.get_list()
    return getattr(node, 'value', node)


def _section(title: str, rows: Iterable[tuple[str, str]]) -> list[str]:
    """A title, then one ``key  value`` row per item, values wrapped under their column."""
    lines = [title]
    indent = ' ' * (KEY_WIDTH + 2)
    for key, value in rows:
        first = f'  {key:<{KEY_WIDTH - 1}} '
        lines += textwrap.wrap(
            value,
            LINE_WIDTH,
            initial_indent=first,
            subsequent_indent=indent,
            break_on_hyphens=False,
        ) or [first.rstrip()]
    return lines


def _frames(count: int) -> str:
    return f'{count} frame' if count == 1 else f'{count} frames'


def _options(values: Mapping[str, Any], keys: Iterable[str], defaults: Mapping[str, Any]) -> str:
    """``key value`` pairs; a value the parameters leave out shows its default, marked."""
    shown = []
    for key in keys:
        if key in values:
            shown.append(f'{key} {_fmt(values[key])}')
        elif key in defaults:
            shown.append(f'{key} {_fmt(defaults[key])} (default)')
        else:
            shown.append(f'{key} engine default')
    return ', '.join(shown)


def _describe(dataset: Any) -> str:
    return f'{_frames(len(dataset))} ({", ".join(dataset.species)})'


def _labels(dataset: Any) -> str:
    counts = dataset.base.attributes.get('n_labelled', {})
    labelled = ', '.join(f'{k} {v}' for k, v in counts.items() if v) or 'no labels'
    return (
        f'{labelled}; labels kept as given, never recomputed (they must come from the '
        "campaign's labelling settings); frames without energy and forces are labelled in "
        'iteration 1'
    )


def _code(code: Any, engine: str | None) -> str:
    text = f'{code.full_label}  ({code.default_calc_job_plugin})'
    return f'{text}  -> engine {engine}' if engine else text


def _overview(inputs: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> list[str]:
    from aiida_trainspot.workflows.inputs import campaign_species
    from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

    protocol = config.get('protocol') or TrainsPotWorkChain.get_default_protocol()
    rows = [('protocol', protocol), ('seed', _fmt(_plain(inputs['seed'])))]
    if 'structures' in inputs:
        structures = _describe(inputs['structures'])
        rows.append(('structures', f'{structures}: augmented, then labelled by the campaign'))
    if 'dataset' in inputs:
        dataset = inputs['dataset']
        rows.append(('dataset', f'{_describe(dataset)}: {_labels(dataset)}'))
    rows.append(('species', _fmt(campaign_species(inputs))))
    return _section(f'campaign {path}', rows)


def _codes(inputs: Mapping[str, Any]) -> list[str]:
    labelling = inputs.get('labelling') or {}
    engine = _plain(labelling.get('engine', 'qe'))
    rows = [('labelling', _code(labelling[engine]['code'], engine))]
    rows.append(
        ('training', _code(inputs['training']['code'], _plain(inputs['training']['engine'])))
    )
    exploration = inputs['exploration']
    rows.append(('md', _code(exploration['code'], _plain(exploration['engine']))))
    rows.append(('evaluation', _code(inputs['evaluation']['code'], None)))
    return _section('codes', rows)


def campaign_dft(inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The DFT settings every frame gets (``labelling.qe.dft_settings`` if given), or None."""
    from aiida_trainspot.labelling.qe.settings import campaign_dft_settings, settings_arguments
    from aiida_trainspot.workflows.inputs import campaign_species

    labelling = inputs.get('labelling') or {}
    if _plain(labelling.get('engine', 'qe')) != 'qe':
        return None
    qe = labelling['qe']
    if 'dft_settings' in qe:
        return dict(qe['dft_settings'].get_dict())
    arguments = settings_arguments(qe, campaign_species(inputs))
    return campaign_dft_settings(**{name: _plain(node) for name, node in arguments.items()})


def _labelling(inputs: Mapping[str, Any]) -> list[str]:
    from aiida_trainspot.labelling.qe import dft

    labelling = inputs.get('labelling') or {}
    settings = campaign_dft(inputs)
    if settings is None:
        ase = labelling['ase']
        rows = [('calculator', _fmt(_plain(ase['calculator'])))]
        if 'parameter_file' in ase:
            rows.append(('parameter file', ase['parameter_file'].filename))
        return _section('labelling (ASE calculator)', rows)
    protocol = _plain(labelling['qe'].get('protocol', dft.DEFAULT_PROTOCOL))
    system = settings['system']
    occupations = system.get('occupations', 'fixed')
    if 'smearing' in system:
        smearing = f'{system["smearing"]}, degauss {_fmt(system.get("degauss"))} Ry'
        smearing += f' (occupations {occupations})'
    else:
        smearing = f'none (occupations {occupations})'
    cutoffs = f'ecutwfc {_fmt(system["ecutwfc"])} Ry, ecutrho {_fmt(system["ecutrho"])} Ry'
    rows = [
        ('qe protocol', f'{protocol} (aiida-quantumespresso {settings["protocol"]})'),
        ('pseudo family', f'{settings["pseudo_family"]} ({_fmt(settings["species"])})'),
        ('cutoffs', f'{cutoffs} (largest of {_fmt(settings["species"])})'),
        ('smearing', smearing),
        ('k-points', f'distance {_fmt(settings["kpoints_distance"])} 1/Å'),
        ('spin', 'polarised (nspin 2)' if settings['spin_polarised'] else 'unpolarised'),
        ('vacuum', f'{_fmt(settings["vacuum"])} Å on every non-periodic axis'),
    ]
    shown = {'ecutwfc', 'ecutrho', 'occupations', 'smearing', 'degauss', 'nspin'}
    other = [f'{key} {_fmt(value)}' for key, value in system.items() if key not in shown]
    if other:  # whatever else reaches pw.x's SYSTEM: a typo in the overrides shows here
        rows.append(('other SYSTEM', ', '.join(other)))
    return _section('DFT settings (one set for every frame of the campaign)', rows)


def _committee(inputs: Mapping[str, Any]) -> list[str]:
    training = inputs['training']
    engine = _plain(training['engine'])
    parameters = _plain(training['parameters']) if 'parameters' in training else {}
    size = _plain(training['committee_size'])
    rows = [('engine', engine)]
    rows.append(('size', f'{size} members, at least {_plain(training["min_members"])} must train'))
    if engine == 'mace':
        from aiida_trainspot.training.mace.config import DEFAULTS

        rows.append(('model', _options(parameters, MACE_SIZE, DEFAULTS)))
        rows.append(('epochs', _options(parameters, MACE_EPOCHS, DEFAULTS)))
    else:
        from aiida_trainspot.training.metatrain.config import architecture_name

        architecture = parameters.get('architecture') or {}
        model = architecture.get('model') or {}
        rows.append(('architecture', architecture_name(parameters)))
        shown = _fmt([f'{k} {_fmt(v)}' for k, v in model.items()])
        rows.append(('model', shown if model else 'engine default'))
        epochs = (architecture.get('training') or {}).get('num_epochs', 'engine default')
        rows.append(('epochs', f'num_epochs {_fmt(epochs)}'))
    if 'member_parameters' in training:
        rows.append(('per member', f'{len(_plain(training["member_parameters"]))} entries'))
    rows.append(('warm start', 'yes' if _plain(inputs['warm_start']) else 'no'))
    return _section('committee', rows)


def _range(protocol: Mapping[str, Any], listed: str, ranged: str, unit: str) -> str:
    if listed in protocol:
        return f'{_fmt(list(protocol[listed]))} {unit} (cycled over the runs)'
    low, high = protocol[ranged]
    if low == high:
        return f'{_fmt(low)} {unit}'
    return f'{_fmt(low)} to {_fmt(high)} {unit} (drawn per run)'


def _exploration(inputs: Mapping[str, Any]) -> list[str]:
    from aiida_trainspot.exploration.plan import ExplorationProtocol

    exploration = inputs['exploration']
    protocol = ExplorationProtocol.from_dict(_plain(exploration['protocol'])).to_dict()
    pool = 'md_structures' if 'md_structures' in inputs else 'the initial dataset'
    rows = [
        ('runs', f'{_plain(exploration["n_structures"])} per iteration, from {pool}'),
        ('temperatures', _range(protocol, 'temperatures', 'temperature_range', 'K')),
        ('pressures', _range(protocol, 'pressures_kbar', 'pressure_range_kbar', 'kbar')),
        (
            'relaxation',
            f'FIRE, at most {protocol["relax_steps"]} steps to {_fmt(protocol["relax_fmax"])} '
            'eV/Å, cell fixed'
            if protocol['relax_steps']
            else 'none',
        ),
        (
            'steps',
            f'{protocol["thermalisation_steps"]} thermalisation (never sampled) + '
            f'{protocol["steps"]} production, timestep {_fmt(protocol["timestep_fs"])} fs',
        ),
        ('sample interval', f'every {protocol["sample_interval"]} steps'),
    ]
    return _section('exploration (MD)', rows)


def _selection(inputs: Mapping[str, Any]) -> list[str]:
    from aiida_trainspot.evaluation.calibration import CalibrationSettings
    from aiida_trainspot.evaluation.selection import SelectionSettings

    calibration = CalibrationSettings.from_dict(_plain(inputs['calibration'])).to_dict()
    selection = SelectionSettings.from_dict(_plain(inputs['selection'])).to_dict()
    selection.pop('max_selected', None)
    thresholds = _plain(inputs['error_thresholds'])
    units = {'energy': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å³'}
    rows = [
        ('calibration', ', '.join(f'{k} {_fmt(v)}' for k, v in calibration.items())),
        ('selection', ', '.join(f'{k} {_fmt(v)}' for k, v in selection.items())),
        (
            'error thresholds',
            ', '.join(f'{k} {_fmt(v)} {units.get(k, "")}'.strip() for k, v in thresholds.items()),
        ),
    ]
    return _section('calibration and selection', rows)


def _budgets(inputs: Mapping[str, Any]) -> list[str]:
    labels = _plain(inputs['max_labels']) if 'max_labels' in inputs else 'unlimited'
    rows = [
        ('max_iterations', _fmt(_plain(inputs['max_iterations']))),
        ('max_labels', f'{_fmt(labels)} (frames sent to DFT, whole campaign)'),
        ('max_selected', f'{_fmt(_plain(inputs["max_selected"]))} per iteration'),
    ]
    return _section('budgets', rows)


def _augmentation(inputs: Mapping[str, Any]) -> list[str]:
    from ase.data import chemical_symbols

    from aiida_trainspot.augmentation.params import SECTIONS, AugmentationParams
    from aiida_trainspot.workflows.inputs import alloy_species

    if 'structures' not in inputs:
        return _section('augmentation', [('skipped', 'no `structures` (dataset only)')])
    augmentation = inputs.get('augmentation') or {}
    parameters = _plain(augmentation['parameters']) if 'parameters' in augmentation else {}
    params = AugmentationParams.from_dict(parameters)
    enabled = [name for name in SECTIONS if getattr(params, name).enabled]
    species = set(inputs['structures'].species) | set(alloy_species(augmentation))
    rows = [
        ('species', _fmt(sorted(species, key=chemical_symbols.index))),
        ('enabled', _fmt(enabled)),
        ('distortions', f'{params.n_configs_per_input} per input (strain + rattle)'),
    ]
    return _section('augmentation', rows)


SECTIONS: tuple[Callable[[Mapping[str, Any]], list[str]], ...] = (
    _codes,
    _labelling,
    _committee,
    _exploration,
    _selection,
    _budgets,
    _augmentation,
)


def dry_run_report(inputs: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> str:
    """The resolved settings of a validated campaign, in short aligned sections.

    :raises ValueError: settings that cannot be decided (e.g. DFT cutoffs of a species).
    """
    lines = _overview(inputs, config, path)
    for section in SECTIONS:
        lines += ['', *section(inputs)]
    return '\n'.join([*lines, ''])


__all__ = ('campaign_dft', 'dry_run_report', 'validate_builder')
