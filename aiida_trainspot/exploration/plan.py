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
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from aiida_trainspot.common.seeds import derive_rng, derive_seeds
from aiida_trainspot.common.settings import unknown_keys

#: The lowest target temperature a run gets: a 0 K target has no meaningful runaway bound.
MIN_TEMPERATURE = 1.0
#: bar per kbar: the stage's pressures are in kbar, the jobs' (both engines) in bar.
BAR_PER_KBAR = 1000.0
#: Run seeds are in [1, MAX_RUN_SEED): LAMMPS' velocity seeds must be positive and below 9e8
#: (:data:`.lammps_input.MAX_LAMMPS_SEED`), and the ase engine gets the same seed.
MAX_RUN_SEED = 900_000_000


@dataclass(frozen=True)
class ExplorationProtocol:
    """The MD protocol of the exploration stage: one vocabulary, one table of defaults.

    The ``protocol`` input of ``ExplorationWorkChain`` (and ``exploration.protocol`` of
    ``TrainsPotWorkChain``) is this type's dictionary; missing keys take the defaults below
    (paper: 0-1000 K, -5 to 5 kbar, 1 fs steps). Targets: ``temperature_range`` (K) and
    ``pressure_range_kbar`` (kbar), drawn uniformly per run, or explicit ``temperatures`` /
    ``pressures_kbar`` lists, cycled over the runs. :meth:`job_parameters` and
    :meth:`lammps_settings` turn a run's targets into what each engine's job gets (the one
    place kbar become bar); :meth:`from_dict` checks those with the job's own validation
    (:meth:`.md.MdProtocol.from_dict`, e.g. ``timestep_fs`` at most 10 fs), so a protocol the
    jobs would refuse is refused at submission. Values are kept as given (not converted).
    """

    temperature_range: tuple[float, float] = (0.0, 1000.0)
    pressure_range_kbar: tuple[float, float] = (-5.0, 5.0)
    temperatures: tuple[float, ...] | None = None
    pressures_kbar: tuple[float, ...] | None = None
    steps: int = 2000
    thermalisation_steps: int = 200
    relax_steps: int = 100
    relax_fmax: float = 0.1
    sample_interval: int = 200
    timestep_fs: float = 1.0
    dispersion_d2: bool = False
    min_distance: float = 0.5
    max_force: float = 50.0
    max_temperature_factor: float = 5.0

    @classmethod
    def known_keys(cls) -> frozenset[str]:
        """Every key of the protocol dictionary."""
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExplorationProtocol:
        """Validate ``data`` (defaults filled in); ValueError naming every problem's key."""
        problems = protocol_problems(data)
        if problems:
            raise ValueError('; '.join(problems))
        return cls._from_checked(data)

    @classmethod
    def _from_checked(cls, data: Mapping[str, Any]) -> ExplorationProtocol:
        values = dict(data)
        for key in ('temperature_range', 'pressure_range_kbar', 'temperatures', 'pressures_kbar'):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every entry (defaults included; the target lists only when given), lists as lists."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def job_parameters(
        self,
        temperatures: Sequence[float],
        pressures_kbar: Sequence[float],
        seeds: Sequence[int],
        run_ids: Sequence[str],
    ) -> dict[str, Any]:
        """Parameters of a ``trainspot.ase.md`` job (:class:`.md.MdProtocol`) for some runs."""
        if not len(temperatures) == len(pressures_kbar) == len(seeds) == len(run_ids):
            raise ValueError('give one temperature, pressure, seed and run id per run')
        parameters = {key: getattr(self, key) for key in _JOB_KEYS}
        parameters['temperatures'] = list(temperatures)
        parameters['pressures'] = [BAR_PER_KBAR * p for p in pressures_kbar]
        parameters['seeds'] = [int(seed) for seed in seeds]
        parameters['run_ids'] = [str(run_id) for run_id in run_ids]
        return parameters

    def lammps_settings(
        self, temperature: float, pressure_kbar: float, seed: int
    ) -> dict[str, Any]:
        """Settings of one LAMMPS run (:func:`.lammps.input.md_script`): the same protocol."""
        return {
            'temperature': temperature,
            'pressure': BAR_PER_KBAR * pressure_kbar,
            'relax_steps': self.relax_steps,
            'relax_fmax': self.relax_fmax,
            'thermalisation_steps': self.thermalisation_steps,
            'steps': self.steps,
            'sample_interval': self.sample_interval,
            'timestep_fs': self.timestep_fs,
            'seed': seed,
            'min_distance': self.min_distance,
            'max_force': self.max_force,
            'max_temperature': self.max_temperature_factor * max(temperature, MIN_TEMPERATURE),
        }


#: The protocol entries a ``trainspot.ase.md`` job gets as they are (targets are per run).
_JOB_KEYS = (
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
#: Defaults of the exploration protocol, as a dictionary (:class:`ExplorationProtocol`'s).
DEFAULT_PROTOCOL: dict[str, Any] = ExplorationProtocol().to_dict()
KNOWN_KEYS = ExplorationProtocol.known_keys()


@dataclass(frozen=True)
class Plan:
    """The starting frames (indices into the pool) and the target conditions of each run."""

    frames: tuple[int, ...]
    temperatures: tuple[float, ...]
    pressures_kbar: tuple[float, ...]


def protocol_problems(protocol: Mapping[str, Any]) -> list[str]:
    """Readable problems with a user protocol (unknown keys, bad ranges, what the jobs refuse).

    The last check runs the job's own validation (:meth:`.md.MdProtocol.from_dict`) on the
    parameters a run would get, so that a protocol is refused here, at submission, for what
    would fail every job (``timestep_fs`` above 10 fs, ``sample_interval`` above ``steps``, ...).
    """
    if not isinstance(protocol, Mapping):
        return [f'the protocol is a dictionary, got {type(protocol).__name__}']
    unknown = set(protocol) - KNOWN_KEYS
    if unknown:
        return [unknown_keys('protocol', unknown, KNOWN_KEYS).removeprefix('protocol: ')]
    problems = []
    merged = {**DEFAULT_PROTOCOL, **protocol}
    for key in ('temperature_range', 'pressure_range_kbar'):
        value = merged[key]
        if not (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(_is_number(v) for v in value)
            and value[0] <= value[1]
        ):
            problems.append(f'{key} must be [low, high] with low <= high, got {value!r}')
    for key in ('temperatures', 'pressures_kbar'):
        if key in protocol and (
            not isinstance(protocol[key], (list, tuple))
            or not protocol[key]
            or not all(_is_number(v) for v in protocol[key])
        ):
            problems.append(f'{key} must be a non-empty list of numbers')
    if not problems:
        low_t = merged['temperature_range'][0]
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
    if problems:
        return problems
    return _job_problems(ExplorationProtocol._from_checked(protocol))


def _job_problems(protocol: ExplorationProtocol) -> list[str]:
    """What the engines' job validation says of a run of ``protocol``.

    One run stands for all: the per-run targets are checked by :func:`protocol_problems`.
    """
    from .md import MdProtocol  # ASE's MD modules: imported when a protocol is checked

    parameters = protocol.job_parameters([MIN_TEMPERATURE], [0.0], [1], ['check'])
    try:
        MdProtocol.from_dict(parameters, n_frames=1)
    except ValueError as exception:
        return [str(exception)]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def choose_member(labels: Sequence[str], seed: int) -> str:
    """One committee member, drawn with the seed (the paper's Φ1)."""
    ordered = sorted(labels)
    if not ordered:
        raise ValueError('no committee member to choose from')
    return ordered[int(derive_rng(seed, 1).integers(len(ordered)))]


def as_protocol(protocol: ExplorationProtocol | Mapping[str, Any]) -> ExplorationProtocol:
    """``protocol`` itself, or the validated :class:`ExplorationProtocol` of a dictionary."""
    if isinstance(protocol, ExplorationProtocol):
        return protocol
    return ExplorationProtocol.from_dict(protocol)


def make_plan(
    n_atoms: np.ndarray,
    n_runs: int,
    protocol: ExplorationProtocol | Mapping[str, Any],
    seed: int,
) -> Plan:
    """Draw ``n_runs`` starting frames (single atoms skipped) and their conditions.

    Frames are drawn without replacement while the pool lasts, then again. Explicit
    ``temperatures``/``pressures_kbar`` lists are cycled over the runs; otherwise
    values are uniform in the ranges (temperatures at least :data:`MIN_TEMPERATURE`).
    """
    protocol = as_protocol(protocol)
    pool = np.flatnonzero(np.asarray(n_atoms) > 1)
    if pool.size == 0:
        raise ValueError('structures: every frame is a single atom; nothing to explore')
    rng = derive_rng(seed, 2)
    repeats = -(-n_runs // pool.size)
    frames = np.concatenate([rng.permutation(pool) for _ in range(repeats)])[:n_runs]
    temperatures = _values(protocol.temperatures, protocol.temperature_range, n_runs, rng)
    pressures = _values(protocol.pressures_kbar, protocol.pressure_range_kbar, n_runs, rng)
    temperatures = np.maximum(temperatures, MIN_TEMPERATURE)
    return Plan(
        tuple(int(f) for f in frames), tuple(map(float, temperatures)), tuple(map(float, pressures))
    )


def _values(
    listed: Sequence[float] | None,
    ranged: Sequence[float],
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    if listed is not None:
        return np.resize(np.asarray(listed, dtype=float), n)
    low, high = ranged
    return rng.uniform(low, high, n)


def ase_parameters(
    protocol: ExplorationProtocol | Mapping[str, Any],
    temperatures: Sequence[float],
    pressures_kbar: Sequence[float],
    seeds: Sequence[int],
    run_ids: Sequence[str],
) -> dict[str, Any]:
    """Parameters of a ``trainspot.ase.md`` job for some runs (pressures in bar).

    ``seeds`` and ``run_ids``: one per run, the run's own, so that the job's grouping of runs
    changes neither their frames nor their ids (:meth:`ExplorationProtocol.job_parameters`).
    """
    return as_protocol(protocol).job_parameters(temperatures, pressures_kbar, seeds, run_ids)


def lammps_settings(
    protocol: ExplorationProtocol | Mapping[str, Any],
    temperature: float,
    pressure_kbar: float,
    seed: int,
) -> dict[str, Any]:
    """Settings of one LAMMPS run (pressure in bar; NPT/NVT chosen by the engine from pbc).

    The protocol of the ase engine: relaxation, thermalisation (unsampled, no abort rule), then
    production, sampled and checked by the same three abort rules
    (:meth:`ExplorationProtocol.lammps_settings`).
    """
    return as_protocol(protocol).lammps_settings(temperature, pressure_kbar, seed)


def run_seeds(seed: int, n: int) -> list[int]:
    """One seed per run in [1, 9e8) (LAMMPS' velocity seeds must be positive).

    Seed ``r`` depends on ``seed`` and ``r`` alone (not on ``n``): more runs leave the first ones'
    seeds as they were.
    """
    return derive_seeds(seed, 3, n=n, low=1, high=MAX_RUN_SEED)
