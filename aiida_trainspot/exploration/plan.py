"""What an exploration runs: member, starting frames, conditions, seeds (no AiiDA import).

Every draw takes the seed, so the same inputs give the same plan. Run ``r`` gets its own seed
(:func:`run_seeds`), derived from the stage seed and ``r`` alone, and both engines give each run
the same protocol (:func:`ase_parameters`, :func:`lammps_settings`): a relaxation of at most
``relax_steps`` FIRE steps, ``thermalisation_steps`` unsampled MD steps with no abort rule, then
``steps`` production steps, sampled and checked by the abort rules. How the runs are grouped into
jobs, and how many run at once, changes no frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Defaults of the exploration protocol (paper: 0-1000 K, -5 to 5 kbar, 1 fs steps).
DEFAULT_PROTOCOL: dict[str, Any] = {
    'temperature_range': [0.0, 1000.0],
    'pressure_range_kbar': [-5.0, 5.0],
    'steps': 2000,
    'thermalisation_steps': 200,
    'relax_steps': 100,
    'relax_fmax': 0.1,
    'sample_interval': 200,
    'timestep_fs': 1.0,
    'dispersion_d2': False,
    'min_distance': 0.5,
    'max_force': 50.0,
    'max_temperature_factor': 5.0,
}
#: The lowest target temperature a run gets: a 0 K target has no meaningful runaway bound.
MIN_TEMPERATURE = 1.0
KNOWN_KEYS = frozenset(DEFAULT_PROTOCOL) | {'temperatures', 'pressures_kbar'}


@dataclass(frozen=True)
class Plan:
    """The starting frames (indices into the pool) and the target conditions of each run."""

    frames: tuple[int, ...]
    temperatures: tuple[float, ...]
    pressures_kbar: tuple[float, ...]


def protocol_problems(protocol: Mapping[str, Any]) -> list[str]:
    """Readable problems with a user protocol (unknown keys, bad ranges)."""
    problems = [f'unknown key {key!r}' for key in sorted(set(protocol) - KNOWN_KEYS)]
    merged = {**DEFAULT_PROTOCOL, **protocol}
    for key in ('temperature_range', 'pressure_range_kbar'):
        value = merged[key]
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and value[0] <= value[1]):
            problems.append(f'{key} must be [low, high] with low <= high, got {value!r}')
    low_t = merged['temperature_range'][0] if not problems else 0.0
    if low_t < 0 or any(t < 0 for t in merged.get('temperatures', [])):
        problems.append('temperatures must be non-negative (K)')
    for key in ('steps', 'sample_interval'):
        if not _is_int(merged[key]) or merged[key] < 1:
            problems.append(f'{key} must be a positive integer, got {merged[key]!r}')
    for key in ('thermalisation_steps', 'relax_steps'):
        if not _is_int(merged[key]) or merged[key] < 0:
            problems.append(f'{key} must be a non-negative integer, got {merged[key]!r}')
    for key in ('timestep_fs', 'relax_fmax'):
        if not _is_number(merged[key]) or not merged[key] > 0:
            problems.append(f'{key} must be positive, got {merged[key]!r}')
    for key in ('temperatures', 'pressures_kbar'):
        if key in protocol and (not isinstance(protocol[key], (list, tuple)) or not protocol[key]):
            problems.append(f'{key} must be a non-empty list')
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def choose_member(labels: Sequence[str], seed: int) -> str:
    """One committee member, drawn with the seed (the paper's Φ1)."""
    ordered = sorted(labels)
    if not ordered:
        raise ValueError('no committee member to choose from')
    return ordered[int(np.random.default_rng([seed, 1]).integers(len(ordered)))]


def make_plan(n_atoms: np.ndarray, n_runs: int, protocol: Mapping[str, Any], seed: int) -> Plan:
    """Draw ``n_runs`` starting frames (single atoms skipped) and their conditions.

    Frames are drawn without replacement while the pool lasts, then again. Explicit
    ``temperatures``/``pressures_kbar`` lists are cycled over the runs; otherwise
    values are uniform in the ranges (temperatures at least :data:`MIN_TEMPERATURE`).
    """
    merged = {**DEFAULT_PROTOCOL, **protocol}
    pool = np.flatnonzero(np.asarray(n_atoms) > 1)
    if pool.size == 0:
        raise ValueError('structures: every frame is a single atom; nothing to explore')
    rng = np.random.default_rng([seed, 2])
    repeats = -(-n_runs // pool.size)
    frames = np.concatenate([rng.permutation(pool) for _ in range(repeats)])[:n_runs]
    temperatures = _values(merged, 'temperatures', 'temperature_range', n_runs, rng)
    pressures = _values(merged, 'pressures_kbar', 'pressure_range_kbar', n_runs, rng)
    temperatures = np.maximum(temperatures, MIN_TEMPERATURE)
    return Plan(
        tuple(int(f) for f in frames), tuple(map(float, temperatures)), tuple(map(float, pressures))
    )


def _values(
    protocol: Mapping[str, Any], listed: str, ranged: str, n: int, rng: np.random.Generator
) -> np.ndarray:
    if listed in protocol:
        values = np.asarray(protocol[listed], dtype=float)
        return np.resize(values, n)
    low, high = protocol[ranged]
    return rng.uniform(low, high, n)


def ase_parameters(
    protocol: Mapping[str, Any],
    temperatures: Sequence[float],
    pressures_kbar: Sequence[float],
    seeds: Sequence[int],
    run_ids: Sequence[str],
) -> dict[str, Any]:
    """Parameters of a ``trainspot.ase.md`` job for some runs (pressures in bar).

    ``seeds`` and ``run_ids``: one per run, the run's own, so that the job's grouping of runs
    changes neither their frames nor their ids.
    """
    if not len(temperatures) == len(pressures_kbar) == len(seeds) == len(run_ids):
        raise ValueError('give one temperature, pressure, seed and run id per run')
    merged = {**DEFAULT_PROTOCOL, **protocol}
    keys = (
        'steps',
        'thermalisation_steps',
        'relax_steps',
        'relax_fmax',
        'sample_interval',
        'timestep_fs',
        'dispersion_d2',
        'min_distance',
        'max_force',
        'max_temperature_factor',
    )
    parameters = {key: merged[key] for key in keys}
    parameters['temperatures'] = list(temperatures)
    parameters['pressures'] = [1000.0 * p for p in pressures_kbar]
    parameters['seeds'] = [int(seed) for seed in seeds]
    parameters['run_ids'] = [str(run_id) for run_id in run_ids]
    return parameters


def lammps_settings(
    protocol: Mapping[str, Any], temperature: float, pressure_kbar: float, seed: int
) -> dict[str, Any]:
    """Settings of one LAMMPS run (pressure in bar; NPT/NVT chosen by the engine from pbc).

    The protocol of the ase engine: relaxation, thermalisation (unsampled, no abort rule), then
    production, sampled and checked by the same three abort rules.
    """
    merged = {**DEFAULT_PROTOCOL, **protocol}
    return {
        'temperature': temperature,
        'pressure': 1000.0 * pressure_kbar,
        'relax_steps': merged['relax_steps'],
        'relax_fmax': merged['relax_fmax'],
        'thermalisation_steps': merged['thermalisation_steps'],
        'steps': merged['steps'],
        'sample_interval': merged['sample_interval'],
        'timestep_fs': merged['timestep_fs'],
        'seed': seed,
        'min_distance': merged['min_distance'],
        'max_force': merged['max_force'],
        'max_temperature': merged['max_temperature_factor'] * max(temperature, MIN_TEMPERATURE),
    }


def run_seeds(seed: int, n: int) -> list[int]:
    """One seed per run in [1, 9e8) (LAMMPS' velocity seeds must be positive).

    Seed ``r`` depends on ``seed`` and ``r`` alone (not on ``n``): more runs leave the first ones'
    seeds as they were.
    """
    return [int(s) % 899_999_999 + 1 for s in np.random.SeedSequence([seed, 3]).generate_state(n)]
