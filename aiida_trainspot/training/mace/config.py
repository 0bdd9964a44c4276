"""The ``mace_run_train`` configuration and MACE's per-epoch results (no AiiDA import).

The calculation writes one YAML file (``config.yaml``) and runs ``mace_run_train --config
config.yaml``. The file holds, in order of precedence:

1. what the calculation always sets from its inputs (:data:`RESERVED_KEYS`: name, seed,
   device, dtype, the dataset files and ``REF_`` keys, the output folders, the foundation
   model and ``restart_latest``); ``parameters`` may not set these;
2. the user's ``parameters`` (any ``mace_run_train`` option, :func:`known_keys`);
3. the choices that depend on the data: ``E0s`` (isolated atoms of the training set, else
   the initial model's, else ``average``) and ``loss`` (``stress`` when the training set has
   stresses, else ``weighted``);
4. the package defaults (:data:`DEFAULTS`): MACE's own defaults where they suit, with a
   bounded number of epochs, EMA, no plots, and loss weights that learn energies and stresses
   (:data:`LOSS_WEIGHTS`).

Every path in the file is relative to the job folder, so the job runs unchanged on any
computer.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import yaml

NAME = 'mace'
CONFIG_FILE = 'config.yaml'
MODEL_DIR = 'model'
CHECKPOINTS_DIR = 'checkpoints'
RESULTS_DIR = 'results'
LOG_DIR = 'logs'
DOWNLOADS_DIR = 'downloads'
LABEL_KEYS = {'energy_key': 'REF_energy', 'forces_key': 'REF_forces', 'stress_key': 'REF_stress'}
#: The per-frame stress weight MACE reads from a frame's ``info`` (:func:`mace_stress_entry`).
STRESS_WEIGHT_KEY = 'config_stress_weight'

#: Loss weights of energy (per atom, eV), forces (eV/Å) and stress (eV/Å³), chosen by
#: measurement (``benchmarks/bench_training_defaults.py``, docs/benchmarks.md). MACE's own 1 /
#: 100 / 1 leaves the energy and stress terms a few per cent of the loss: the forces are learned
#: but not how the energy changes with volume, so energies end worse than a constant per atom and
#: stresses are not learned (EMT Cu, two seeds: 159 meV/atom, 57 meV/Å³ against 38 and 24 with
#: equal weights at 40 epochs, forces 32 against 41 meV/Å). Equal weights count an error of
#: 1 meV/atom, of 1 meV/Å and of 1 meV/Å³ alike: a hundred times MACE's weight on energy
#: relative to forces. Heavier energy and stress weights (100 / 10 / 100) win with long
#: trainings but cost the forces of short ones (the ``fast`` protocol's 40 epochs).
LOSS_WEIGHTS = {'energy': 10.0, 'forces': 10.0, 'stress': 10.0}

#: Package defaults, below the user's ``parameters``.
DEFAULTS: dict[str, Any] = {
    'model': 'MACE',
    'r_max': 5.0,
    'num_channels': 128,
    'max_L': 1,
    'max_ell': 3,
    'correlation': 3,
    'num_interactions': 2,
    'num_radial_basis': 8,
    'num_cutoff_basis': 5,
    'batch_size': 10,
    'valid_batch_size': 10,
    'max_num_epochs': 200,
    'patience': 50,
    'lr': 0.01,
    'weight_decay': 5e-7,
    'ema': True,
    'ema_decay': 0.99,
    **{f'{name}_weight': weight for name, weight in LOSS_WEIGHTS.items()},
    'error_table': 'PerAtomRMSE',
    'eval_interval': 1,
    'plot': False,
    'save_cpu': True,
}

#: Defaults that describe the network; a fine-tuning takes them from the initial model.
ARCHITECTURE_KEYS = frozenset(
    {
        'r_max',
        'num_channels',
        'max_L',
        'max_ell',
        'correlation',
        'num_interactions',
        'num_radial_basis',
        'num_cutoff_basis',
    }
)

#: Set by the calculation from its inputs; refused in ``parameters``.
RESERVED_KEYS = frozenset(
    {
        'config',
        'name',
        'seed',
        'device',
        'default_dtype',
        'train_file',
        'valid_file',
        'test_file',
        'work_dir',
        'model_dir',
        'checkpoints_dir',
        'results_dir',
        'log_dir',
        'downloads_dir',
        'foundation_model',
        'restart_latest',
        *LABEL_KEYS,
    }
)

#: Losses that train on stresses (MACE then computes and reports stresses).
STRESS_LOSSES = frozenset({'stress', 'huber', 'universal'})

#: Model classes whose name may be kept when fine-tuning from a model of that class.
FINE_TUNABLE_MODELS = ('MACE', 'ScaleShiftMACE')


@functools.cache
def known_keys() -> frozenset[str]:
    """Every option of ``mace_run_train`` (from MACE's own argument parser), without ``--``."""
    from mace.tools.arg_parser import build_default_arg_parser

    parser = build_default_arg_parser()
    return frozenset(
        option[2:]
        for action in parser._actions
        for option in action.option_strings
        if option.startswith('--') and option != '--help'
    )


def parameter_errors(
    parameters: Mapping[str, Any], *, has_stress: bool | None = None
) -> str | None:
    """Why ``parameters`` cannot be used (None if they can); unknown keys are checked elsewhere.

    ``has_stress``: whether the training set has stresses (None: not known yet).
    """
    reserved = sorted(set(parameters) & RESERVED_KEYS)
    if reserved:
        return (
            f'parameters: {reserved} are set by the calculation from its inputs (seed, device, '
            'dtype, datasets, initial_model, restart_checkpoint), not by `parameters`'
        )
    loss = parameters.get('loss')
    if has_stress is False and loss in STRESS_LOSSES:
        return f'parameters: loss {loss!r} trains on stresses but the training set has none'
    if 'E0s' in parameters:
        try:
            format_e0s(parameters['E0s'])
        except (TypeError, ValueError) as exception:
            return f'parameters: E0s: {exception}'
    return None


def format_e0s(value: Any) -> str:
    """MACE's ``E0s`` string from a string or a mapping {Z or symbol: energy in eV}."""
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f'expected a string or a mapping of element to energy, got {value!r}')
    from ase.data import atomic_numbers

    energies = {}
    for key, energy in value.items():
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            number = int(key)
        elif key in atomic_numbers:
            number = atomic_numbers[key]
        else:
            raise ValueError(f'{key!r} is neither an atomic number nor a chemical symbol')
        energies[number] = float(energy)
    return repr(dict(sorted(energies.items())))


def isolated_atom_energies(
    frames: Iterable[tuple[Iterable[int], Iterable[bool], float | None]],
) -> dict[int, float]:
    """{Z: E} from the isolated atoms among (atomic numbers, pbc, energy) frames.

    An isolated atom is a frame of one atom, not periodic in any direction, with an
    energy. Several of one element are averaged.
    """
    found: dict[int, list[float]] = defaultdict(list)
    for numbers, pbc, energy in frames:
        numbers = list(numbers)
        if len(numbers) != 1 or any(pbc) or energy is None or not math.isfinite(energy):
            continue
        found[int(numbers[0])].append(float(energy))
    return {z: sum(values) / len(values) for z, values in sorted(found.items())}


def build_config(
    parameters: Mapping[str, Any] | None,
    *,
    seed: int,
    device: str,
    dtype: str,
    train_file: str,
    valid_file: str,
    test_file: str | None = None,
    species: Iterable[int] = (),
    has_stress: bool = False,
    isolated_atoms: Mapping[int, float] | None = None,
    foundation_model: str | None = None,
    foundation_cutoff: float | None = None,
    foundation_architecture: str | None = None,
    foundation_species: Iterable[int] | None = None,
    foundation_e0s: Mapping[int, float] | None = None,
    restart: bool = False,
    checkpoints_dir: str = CHECKPOINTS_DIR,
) -> dict[str, Any]:
    """The ``mace_run_train`` options of one training run (see the module docstring).

    ``species``: atomic numbers of the training and validation frames; ``isolated_atoms``:
    {Z: E} of the training set's isolated atoms (used as E0s when they cover ``species``).
    ``foundation_*``: the model to fine-tune (its file relative to the job folder, its
    cutoff, architecture, atomic numbers and E0s when known). ``restart``: resume from
    ``checkpoints_dir``.

    E0s, unless ``parameters`` set them: the isolated atoms when they cover ``species``; else,
    fine-tuning, the initial model's E0s (``foundation_e0s``, else MACE's ``foundation``,
    which MACE 0.3.16 cannot read from a one-element model) when they cover ``species``;
    else ``average``.
    """
    parameters = dict(parameters or {})
    error = parameter_errors(parameters, has_stress=has_stress)
    if error:
        raise ValueError(error)
    species = set(species)
    config = dict(DEFAULTS)
    if foundation_model is not None:
        # MACE builds a fine-tuned model from the foundation's hyperparameters (and its r_max).
        for key in ARCHITECTURE_KEYS:
            config.pop(key, None)
        if foundation_cutoff is not None:
            config['r_max'] = float(foundation_cutoff)
        if foundation_architecture in FINE_TUNABLE_MODELS:
            config['model'] = foundation_architecture
        # A local model has no pretraining data to replay: plain (single-head) fine-tuning.
        config['multiheads_finetuning'] = False
    config['loss'] = 'stress' if has_stress else 'weighted'
    foundation_species = set(foundation_species or ())
    if isolated_atoms and species and species <= set(isolated_atoms):
        config['E0s'] = format_e0s({z: isolated_atoms[z] for z in sorted(species)})
    elif foundation_model is not None and foundation_e0s and species <= set(foundation_e0s):
        config['E0s'] = format_e0s({z: foundation_e0s[z] for z in sorted(species)})
    elif (
        foundation_model is not None
        and species <= foundation_species
        and len(foundation_species) > 1
    ):
        config['E0s'] = 'foundation'
    else:
        config['E0s'] = 'average'
    config.update(parameters)
    if 'E0s' in parameters:
        config['E0s'] = format_e0s(parameters['E0s'])
    if foundation_model is not None and foundation_cutoff is not None:
        config['r_max'] = float(foundation_cutoff)  # what MACE uses anyway
    config.update(
        {
            'name': NAME,
            'seed': int(seed),
            'device': device,
            'default_dtype': dtype,
            'work_dir': '.',
            'model_dir': MODEL_DIR,
            'checkpoints_dir': checkpoints_dir,
            'results_dir': RESULTS_DIR,
            'log_dir': LOG_DIR,
            'downloads_dir': DOWNLOADS_DIR,
            'train_file': train_file,
            'valid_file': valid_file,
            **LABEL_KEYS,
        }
    )
    if test_file is not None:
        config['test_file'] = test_file
    if foundation_model is not None:
        config['foundation_model'] = foundation_model
    if restart:
        config['restart_latest'] = True
    return config


def _yaml_value(value: Any) -> Any:
    """A value configargparse passes through unchanged: scalars, else their Python literal."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return repr(dict(value))
    if isinstance(value, list | tuple):
        return repr(list(value))
    raise TypeError(f'cannot write {value!r} into a MACE configuration')


def to_yaml(config: Mapping[str, Any]) -> str:
    """The configuration as the YAML ``mace_run_train --config`` reads (None values left out)."""
    return yaml.safe_dump(
        {key: _yaml_value(value) for key, value in config.items() if value is not None},
        sort_keys=False,
    )


def model_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture (MACE's ``model``) and cutoff (``r_max``, Å) of a configuration."""
    return {
        'architecture': str(config.get('model', 'MACE')),
        'cutoff': float(config.get('r_max', 5.0)),
    }


# --------------------------------------------------------------------------- 2D stress


def mace_stress_volume(positions: Any, cell: Any, pbc: Any, cutoff: float) -> float:
    """The volume (Å³) MACE divides a frame's virial by to give its stress.

    MACE builds a frame's graph in a cell whose non-periodic vectors it replaces with long
    ones of its own (``mace.data.neighborhood.get_neighborhood``, whose cell the model then
    uses), so for a frame with vacuum its stress is not over the frame's own volume. Along
    three periodic axes it is the frame's volume. MACE's own function is called, so that the
    volume follows the MACE installed.
    """
    from mace.data.neighborhood import get_neighborhood

    pbc = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    _, _, _, used = get_neighborhood(
        positions=np.array(positions, dtype=float),
        cutoff=float(cutoff),
        pbc=pbc,
        cell=np.array(cell, dtype=float).reshape(3, 3),
    )
    return abs(float(np.linalg.det(used)))


def mace_stress_entry(
    stress: Any, positions: Any, cell: Any, pbc: Any, cutoff: float
) -> tuple[Any, float]:
    """The stress label to give MACE for a frame, and its ``config_stress_weight``.

    The dataset's stress is (1/V) dE/dε with V the frame's own cell volume (vacuum included);
    MACE compares its virial over V_MACE (:func:`mace_stress_volume`) with the label, so a frame
    with a non-periodic axis (a 2D frame) gets the label times V / V_MACE: the virial MACE then
    learns is the true one. MACE's error on that frame is scaled the same way, and squared in
    the loss it would weigh (V / V_MACE)², about 1/200 for a graphene sheet in 12 Å of vacuum:
    the in-plane stress of 2D frames would barely be trained (a tiny carbon model's stress on its
    own stretched graphene frames came out twice the label). The weight (V_MACE / V)² makes the
    loss that of the dataset's stress. Fully periodic frames: the stress as given, weight 1.
    """
    if np.all(pbc):
        return stress, 1.0
    own = abs(float(np.linalg.det(np.asarray(cell, dtype=float).reshape(3, 3))))
    used = mace_stress_volume(positions, cell, pbc, cutoff)
    return np.asarray(stress, dtype=float) * (own / used), (used / own) ** 2


# --------------------------------------------------------------------------- results

_E0S_LINE = re.compile(r'Atomic Energies used \(z: eV\) for head (\S+): (\{.*\})')


def parse_e0s(log: str) -> dict[int, float] | None:
    """{Z: E0 in eV} that MACE logged it used (the ``Default`` head's, else the first)."""
    found: dict[str, dict[int, float]] = {}
    for match in _E0S_LINE.finditer(log):
        try:
            value = ast.literal_eval(match.group(2))
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, dict):
            found.setdefault(match.group(1), {int(z): float(e) for z, e in value.items()})
    if not found:
        return None
    return found.get('Default', next(iter(found.values())))


#: Units of MACE's error metrics (eV based) once multiplied by 1000.
_QUANTITY_UNITS = {
    'e': 'meV',
    'e_per_atom': 'meV',
    'f': 'meV_per_A',
    'stress': 'meV_per_A3',
    'stress_per_atom': 'meV_per_A3',
    'virials': 'meV',
    'virials_per_atom': 'meV',
}
_METRIC = re.compile(r'^(mae|rmse|q95|rel_mae|rel_rmse)_(.+)$')


def metric_name(key: str) -> tuple[str, float] | None:
    """(name with units, factor) of one of MACE's metric keys, or None to leave it out."""
    if key == 'loss':
        return 'loss', 1.0
    if key == 'time':
        return 'time_s', 1.0
    match = _METRIC.match(key)
    if match is None:
        return None
    statistic, quantity = match.groups()
    if statistic.startswith('rel_'):
        return f'{key}_percent', 1.0
    unit = _QUANTITY_UNITS.get(quantity)
    if unit is None:
        return None
    return f'{statistic}_{quantity}_{unit}', 1000.0


def _convert(record: Mapping[str, Any]) -> dict[str, float | None]:
    values = {}
    for key, value in record.items():
        named = metric_name(key)
        if named is None or value is None or isinstance(value, bool):
            continue
        try:
            number = float(value) * named[1]
        except (TypeError, ValueError):
            continue
        values[named[0]] = number if math.isfinite(number) else None
    return values


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def parse_results(lines: Iterable[str]) -> dict[str, Any]:
    """Metrics from MACE's results file (``results/<name>_run-<seed>_train.txt``, JSON lines).

    Returns ``{'epoch': [...], 'train': {'loss': [...], 'time_s': [...]}, 'validation':
    {'loss': [...], 'rmse_e_per_atom_meV': [...], 'rmse_f_meV_per_A': [...],
    'rmse_stress_meV_per_A3': [...] (when stresses are trained), 'mae_...': ...},
    'initial': {'validation': {...}}, 'final': {'epoch': N, 'validation': {...}}}``.
    Lists follow ``epoch`` (the epochs with a validation pass, 0-based); ``train`` is the
    mean loss of the epoch's batches. ``initial`` is MACE's evaluation before any training
    step; ``final`` is the epoch of lowest validation loss (whose checkpoint MACE saves as
    the model). With several heads, the ``Default`` head's errors (else the first head's).
    Non-finite values become None. Raises ValueError when no epoch was evaluated.
    """
    opt_loss: dict[int, list[float]] = defaultdict(list)
    opt_time: dict[int, list[float]] = defaultdict(list)
    evaluations = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if not isinstance(record, dict):
            continue
        if record.get('mode') == 'opt' and record.get('epoch') is not None:
            opt_loss[int(record['epoch'])].append(_finite(record.get('loss')))
            opt_time[int(record['epoch'])].append(_finite(record.get('time')))
        elif record.get('mode') == 'eval':
            evaluations.append(record)
    heads = [record.get('head') for record in evaluations]
    head = 'Default' if 'Default' in heads else (heads[0] if heads else None)
    initial: dict[str, Any] | None = None
    per_epoch: dict[int, dict[str, float | None]] = {}
    for record in evaluations:
        if record.get('head') != head:
            continue
        values = _convert(record)
        if record.get('epoch') is None:
            if initial is None:
                initial = values
        else:
            per_epoch[int(record['epoch'])] = values
    if not per_epoch:
        raise ValueError('MACE logged no per-epoch validation errors')
    epochs = sorted(per_epoch)
    names = sorted({name for values in per_epoch.values() for name in values} - {'time_s'})
    validation = {name: [per_epoch[e].get(name) for e in epochs] for name in names}
    train = {
        'loss': [_mean(opt_loss.get(e, [])) for e in epochs],
        'time_s': [sum(t for t in opt_time.get(e, []) if t is not None) for e in epochs],
    }
    losses = validation.get('loss', [])
    finite = [(loss, i) for i, loss in enumerate(losses) if loss is not None]
    best = min(finite)[1] if finite else len(epochs) - 1
    metrics: dict[str, Any] = {
        'epoch': epochs,
        'train': train,
        'validation': validation,
        'final': {
            'epoch': epochs[best],
            'validation': {name: values[best] for name, values in validation.items()},
        },
    }
    if initial is not None:
        metrics['initial'] = {
            'validation': {k: v for k, v in initial.items() if k != 'time_s'},
        }
    return metrics


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
