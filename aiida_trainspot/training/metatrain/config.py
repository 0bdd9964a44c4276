"""metatrain options and logs, as plain Python (no AiiDA import).

* :func:`build_options`: the ``options.yaml`` of ``mtt train`` from :data:`DEFAULTS`, the
  user's ``parameters`` (merged recursively) and what is always set from the calculation's
  inputs (seed, ``base_precision`` from the dtype, device, dataset paths, fine-tuning).
* :func:`validate_parameters`: what submission rejects before a job is ever run.
* :func:`parse_epoch_csv` / :func:`parse_epoch_log`: metatrain's per-epoch ``train.csv`` (or
  its log) into ``{'epoch': [...], 'learning_rate': [...], 'train': {...}, 'validation':
  {...}}``, keys as the MACE engine's, with units in their names (:func:`metric_key`);
  :func:`final_metrics`: the errors at the exported (best) epoch; and
  :func:`parse_final_evaluation`: metatrain's evaluation of the exported model at the end.
* :func:`read_cutoff`: the cutoff radius from (expanded) options.

Paths written into the options are the relative names of the files in the job's working
directory: ``mtt`` reads ``read_from`` relative to the directory it runs in, so the job
runs unchanged on any computer.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = (
    'DEFAULTS',
    'INPUT_KEYS',
    'KNOWN_KEYS',
    'build_options',
    'dataset_entry',
    'deep_merge',
    'final_metrics',
    'metric_key',
    'parse_best_epoch',
    'parse_epoch_csv',
    'parse_epoch_log',
    'parse_final_evaluation',
    'read_cutoff',
    'validate_parameters',
)

DEFAULT_ARCHITECTURE = 'pet'

#: Options used when the user's ``parameters`` do not say otherwise (metatrain's own
#: defaults, per architecture, fill everything else).
DEFAULTS: dict[str, Any] = {'architecture': {'name': DEFAULT_ARCHITECTURE}}

#: Defaults added for some architectures: metrics logged at every epoch (SOAP-BPNN logs every
#: 5th by default), so that the per-epoch metrics output has one entry per epoch.
ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    'pet': {'training': {'log_interval': 1}},
    'soap_bpnn': {'training': {'log_interval': 1}},
}

#: Top-level options the user may give in ``parameters``.
KNOWN_KEYS = frozenset(
    {
        'architecture',
        'training_set',
        'validation_set',
        'test_set',
        'final_eval',
        'print_stats',
        'wandb',
    }
)

#: Top-level options always set from an input of the calculation (and so refused in
#: ``parameters``): option -> input port.
INPUT_KEYS = {'seed': 'seed', 'base_precision': 'dtype', 'device': 'device'}

DATASET_KEYS = {'training_set': 'training', 'validation_set': 'validation', 'test_set': 'test'}

BASE_PRECISION = {'float64': 64, 'float32': 32}

ENERGY_KEY, FORCES_KEY, STRESS_KEY = 'REF_energy', 'REF_forces', 'REF_stress'


# ------------------------------------------------------------------------------------------ build
def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``override`` over ``base``; mappings merged recursively, the rest replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dataset_entry(path: str, *, stress: bool) -> dict[str, Any]:
    """One metatrain dataset section for an extended-XYZ file written with ``REF_`` keys.

    Energy from ``info['REF_energy']`` (eV), forces from ``arrays['REF_forces']`` (eV/Å) and,
    when ``stress``, the stress from ``info['REF_stress']`` (a 3x3 matrix in eV/Å³, ASE sign:
    metatrain's ASE reader wants 3x3 and reads frames without a value as NaN, i.e. no label).
    """
    energy: dict[str, Any] = {
        'key': ENERGY_KEY,
        'unit': 'eV',
        'forces': {'key': FORCES_KEY},
        'stress': {'key': STRESS_KEY} if stress else False,
        'virial': False,
    }
    return {
        'systems': {'read_from': path, 'length_unit': 'angstrom'},
        'targets': {'energy': energy},
    }


def architecture_name(parameters: Mapping[str, Any] | None) -> str:
    """The architecture named in ``parameters`` (default :data:`DEFAULT_ARCHITECTURE`)."""
    architecture = (parameters or {}).get('architecture') or {}
    if isinstance(architecture, Mapping):
        return str(architecture.get('name', DEFAULT_ARCHITECTURE))
    return DEFAULT_ARCHITECTURE


def build_options(
    parameters: Mapping[str, Any] | None,
    *,
    seed: int,
    dtype: str = 'float64',
    device: str = 'cpu',
    stress: bool = False,
    train_file: str = 'train.xyz',
    valid_file: str = 'valid.xyz',
    test_file: str | None = None,
    finetune_from: str | None = None,
) -> dict[str, Any]:
    """The ``mtt train`` options: defaults, then ``parameters``, then what the inputs set.

    Always set: ``seed``, ``base_precision`` (64 or 32 from ``dtype``), ``device``, the
    dataset files (relative paths: ``read_from`` is relative to the working directory) with
    their targets (energy and forces; stress only when ``stress``), ``test_set`` (0.0 without
    a test file) and, with ``finetune_from`` (a checkpoint path), ``architecture.training.
    finetune.read_from`` (method ``full`` unless ``parameters`` chose another).
    """
    parameters = dict(parameters or {})
    problem = validate_parameters(parameters)
    if problem:
        raise ValueError(problem)
    name = architecture_name(parameters)
    options = deep_merge(DEFAULTS, {'architecture': ARCHITECTURE_DEFAULTS.get(name, {})})
    user = {k: v for k, v in parameters.items() if k not in DATASET_KEYS}
    options = deep_merge(options, user)
    options['architecture']['name'] = name
    options['seed'] = int(seed)
    options['base_precision'] = BASE_PRECISION[dtype]
    options['device'] = device
    files = {'training_set': train_file, 'validation_set': valid_file, 'test_set': test_file}
    for key, path in files.items():
        if path is None:
            options[key] = 0.0
            continue
        entry = deep_merge(dataset_entry(path, stress=stress), parameters.get(key) or {})
        entry['systems']['read_from'] = path
        options[key] = entry
    if finetune_from is not None:
        training = options['architecture'].setdefault('training', {})
        finetune = dict(training.get('finetune') or {})
        finetune.setdefault('method', 'full')
        finetune['read_from'] = finetune_from
        training['finetune'] = finetune
    return options


def _contains_key(value: Any, key: str) -> bool:
    if isinstance(value, Mapping):
        return key in value or any(_contains_key(v, key) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_contains_key(v, key) for v in value)
    return False


def validate_parameters(parameters: Mapping[str, Any] | None) -> str | None:
    """Why ``parameters`` cannot be used (a message naming the key), or None."""
    parameters = parameters or {}
    for key, port in INPUT_KEYS.items():
        if key in parameters:
            return f'parameters: `{key}` is set from the `{port}` input; remove it'
    unknown = sorted(set(parameters) - KNOWN_KEYS - set(INPUT_KEYS))
    if unknown:
        return f'parameters: unknown metatrain configuration keys {unknown}'
    architecture = parameters.get('architecture', {})
    if not isinstance(architecture, Mapping):
        return 'parameters: `architecture` must be a mapping with a `name`'
    if 'name' in architecture and not (
        isinstance(architecture['name'], str) and architecture['name']
    ):
        return 'parameters: `architecture.name` must be a non-empty string'
    for section in ('model', 'training'):
        if section in architecture and not isinstance(architecture[section], Mapping):
            return f'parameters: `architecture.{section}` must be a mapping'
    finetune = (architecture.get('training') or {}).get('finetune')
    if finetune is not None and (
        not isinstance(finetune, Mapping) or finetune.get('read_from') is not None
    ):
        return (
            'parameters: `architecture.training.finetune.read_from` is set from the '
            '`initial_model` input; give only `method`/`config`/`inherit_heads`'
        )
    for key, port in DATASET_KEYS.items():
        if key not in parameters:
            continue
        value = parameters[key]
        if not isinstance(value, Mapping):
            return (
                f'parameters: `{key}` is written from the `{port}` input; only a mapping of '
                'target options (e.g. `targets: {energy: {stress: false}}`) may be given'
            )
        if _contains_key(value, 'read_from'):
            return f'parameters: `{key}` may not set `read_from`: the files are the `{port}` input'
    return None


# ------------------------------------------------------------------------------------------ read
def read_cutoff(options: Mapping[str, Any]) -> float | None:
    """The cutoff radius (Å) in ``options``' architecture model hypers, or None if not set.

    ``model.cutoff`` (PET and most architectures), ``model.soap.cutoff.radius`` (SOAP-BPNN),
    else the first ``cutoff`` (a number, or a mapping with ``radius``) found in the model hypers.
    """
    model = ((options.get('architecture') or {}).get('model')) or {}

    def search(value: Any) -> float | None:
        if not isinstance(value, Mapping):
            return None
        cutoff = value.get('cutoff')
        if isinstance(cutoff, int | float) and not isinstance(cutoff, bool):
            return float(cutoff)
        if isinstance(cutoff, Mapping) and isinstance(cutoff.get('radius'), int | float):
            return float(cutoff['radius'])
        for child in value.values():
            found = search(child)
            if found is not None:
                return found
        return None

    return search(model)


_SPLITS = (('training ', 'train'), ('validation ', 'validation'))
#: metatrain target names -> the short names of the MACE engine's metrics (same schema).
_QUANTITIES = {
    'energy': 'e',
    'forces': 'f',
    'energy_positions_gradients': 'f',
    'virial': 'virials',
    'energy_strain_gradients': 'virials',
    'stress': 'stress',
}
_STATISTIC = re.compile(r'^(?P<target>.+?) (?P<stat>RMSE|MAE)(?P<per_atom> \(per atom\))?$')


def _unit_suffix(unit: str) -> str:
    unit = unit.strip().replace('/', '_per_')
    return re.sub(r'[^0-9A-Za-z_]+', '', unit)


def _sanitize(text: str) -> str:
    return re.sub(r'[^0-9a-z]+', '_', text.lower()).strip('_')


def metric_key(label: str, unit: str = '') -> tuple[str | None, str]:
    """``('train' | 'validation' | None, key)`` for a metatrain metric label and its unit.

    Keys follow the MACE engine's: ``<statistic>_<quantity>[_per_atom]_<unit>``, e.g.
    ``'validation energy RMSE (per atom)', 'meV'`` -> ``('validation',
    'rmse_e_per_atom_meV')``, ``'training forces MAE', 'meV/A'`` -> ``('train',
    'mae_f_meV_per_A')``, ``'training virial RMSE (per atom)', 'meV'`` -> ``('train',
    'rmse_virials_per_atom_meV')``, ``'training loss', ''`` -> ``('train', 'loss')``; other
    targets keep their (sanitized) name, e.g. ``rmse_mtt_dos_...``.
    """
    label = label.strip()
    split = None
    for prefix, name in _SPLITS:
        if label.startswith(prefix):
            split, label = name, label[len(prefix) :]
            break
    suffix = _unit_suffix(unit)
    match = _STATISTIC.match(label)
    if match:
        target = match['target'].strip()
        quantity = _QUANTITIES.get(target, _sanitize(target))
        key = f'{match["stat"].lower()}_{quantity}' + ('_per_atom' if match['per_atom'] else '')
    else:
        key = _sanitize(label)
    return split, f'{key}_{suffix}' if suffix else key


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _empty_metrics() -> dict[str, Any]:
    return {'epoch': [], 'learning_rate': [], 'train': {}, 'validation': {}}


def parse_epoch_csv(text: str) -> dict[str, Any]:
    """Metrics from metatrain's per-epoch ``train.csv`` (a header row, a units row, rows).

    Returns ``{'epoch': [...], 'learning_rate': [...], 'train': {key: [...]}, 'validation':
    {key: [...]}}``; non-finite values become None. Raises ValueError without epochs.
    """
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if len(rows) < 3:
        raise ValueError('train.csv has no epoch rows')
    header, units, body = rows[0], rows[1], rows[2:]
    metrics = _empty_metrics()
    columns: list[tuple[str | None, str]] = []
    for label, unit in zip(header, units, strict=False):
        split, key = metric_key(label, unit)
        columns.append((split, key))
        if split is not None:
            metrics[split].setdefault(key, [])
    for row in body:
        for (split, key), cell in zip(columns, row, strict=False):
            value = _number(cell.strip())
            if split is not None:
                metrics[split][key].append(value)
            elif key == 'epoch':
                metrics['epoch'].append(int(value) if value is not None else None)
            elif key == 'learning_rate':
                metrics['learning_rate'].append(value)
    if not metrics['epoch']:
        raise ValueError('train.csv has no epoch rows')
    return metrics


_LOG_PREFIX = re.compile(r'^\[[^\]]*\]\[[A-Z]+\] - ')
_ITEM = re.compile(r'^\s*(?P<label>[^:]+):\s*(?P<value>[-+0-9.eE]+|nan|inf)\s*(?P<unit>\S*)\s*$')


def _items(line: str) -> list[tuple[str, float | None, str]]:
    """``(label, value, unit)`` of each ``label: value unit`` item of a ``|``-separated line."""
    items = []
    for part in _LOG_PREFIX.sub('', line).split(' | '):
        match = _ITEM.match(part)
        if match:
            items.append((match['label'], _number(match['value']), match['unit']))
    return items


def parse_epoch_log(text: str) -> dict[str, Any]:
    """Metrics from the ``Epoch: N | ...`` lines of metatrain's log (when no csv is at hand)."""
    metrics = _empty_metrics()
    for line in text.splitlines():
        if not re.search(r'\] - Epoch:\s*\d+', line) and not line.startswith('Epoch:'):
            continue
        for label, value, unit in _items(line):
            split, key = metric_key(label, unit)
            if split is not None:
                metrics[split].setdefault(key, []).append(value)
            elif key == 'epoch':
                metrics['epoch'].append(int(value) if value is not None else None)
            elif key == 'learning_rate':
                metrics['learning_rate'].append(value)
    if not metrics['epoch']:
        raise ValueError('the log has no per-epoch metrics')
    return metrics


_EVALUATING = re.compile(r'Evaluating (training|validation|test) dataset')
_BEST_EPOCH = re.compile(r'Using best model from epoch (\d+)')


def parse_final_evaluation(text: str) -> dict[str, dict[str, float | None]]:
    """The final evaluation of the exported model, from the log.

    ``{'train'|'validation'|'test': {key: value}}`` (keys as in :func:`metric_key`), for the
    datasets that were evaluated.
    """
    results: dict[str, dict[str, float | None]] = {}
    current = None
    for line in text.splitlines():
        match = _EVALUATING.search(line)
        if match:
            current = {'training': 'train'}.get(match[1], match[1])
            continue
        if current is not None and 'RMSE' in line:
            results[current] = {metric_key(label, unit)[1]: v for label, v, unit in _items(line)}
            current = None
    return results


def final_metrics(metrics: Mapping[str, Any], best_epoch: int | None) -> dict[str, Any]:
    """The errors at the epoch of the exported model (metatrain keeps the best one).

    ``{'epoch': N, 'train': {key: value}, 'validation': {key: value}}``; the last logged epoch
    when ``best_epoch`` is None or was not logged (e.g. before a restart).
    """
    epochs = list(metrics.get('epoch') or [])
    if not epochs:
        return {}
    index = epochs.index(best_epoch) if best_epoch in epochs else len(epochs) - 1
    final: dict[str, Any] = {'epoch': epochs[index]}
    for split in ('train', 'validation'):
        final[split] = {
            key: values[index] if index < len(values) else None
            for key, values in (metrics.get(split) or {}).items()
        }
    return final


def parse_best_epoch(text: str) -> int | None:
    """The epoch of the model metatrain exported (``Using best model from epoch N``)."""
    found = _BEST_EPOCH.findall(text)
    return int(found[-1]) if found else None
