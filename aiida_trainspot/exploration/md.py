"""The ``ase`` exploration engine's pure core: MD protocol, ensembles, abort rules, D2, run loop.

No AiiDA here: the CalcJob (:mod:`.ase.calculation`) validates the protocol with
:meth:`MdProtocol.from_dict` and the starting frames with :func:`cell_problem`; the executable
(:mod:`aiida_trainspot.runners.ase_md`) loads the model and calls :func:`explore`.

Protocol (:class:`MdProtocol`, the ``parameters`` of the job)
    ``temperatures`` (K) and ``pressures`` (bar) are the targets, one per starting frame (or one
    number for all). A run has three phases: a relaxation of at most ``relax_steps`` FIRE steps
    (:func:`relax`), then ``thermalisation_steps`` MD steps that are never sampled, then
    ``steps`` production steps of ``timestep_fs`` fs, sampling a frame every ``sample_interval``
    steps (the first at production step ``sample_interval``; neither the starting nor the relaxed
    frame is ever sampled). Coupling constants: ``friction`` (1/fs, Langevin, NVT), ``ttime``
    (fs, Nosé-Hoover chain thermostat, NPT) and ``ptime`` (fs, barostat, NPT).

Relaxation (:func:`relax`)
    Before the MD, the positions (cell fixed) are relaxed with FIRE, at most
    :data:`RELAX_MAX_STEP` Å per atom and step, for at most ``relax_steps`` steps or until the
    largest force on an atom is below ``relax_fmax`` (eV/Å). It takes the excess potential
    energy out of a cold or heavily rattled start, which the MD would otherwise turn into heat
    far beyond the target. The ``lammps`` engine does the same (``min_style fire``,
    :mod:`.lammps.input`). ``relax_steps`` 0 (the default of a job; the exploration stage sets
    it) skips it.

Ensembles and integrators (:func:`ensemble_of`, :func:`make_integrator`)
    A frame periodic along at least one axis runs NPT with the Martyna-Tobias-Klein integrator of
    ASE (Nosé-Hoover chains for thermostat and barostat, time-reversible): the whole cell
    fluctuates (:class:`ase.md.nose_hoover_chain.MTKNPT`) when it is periodic along all three
    axes; otherwise only the lengths of the periodic cell vectors do
    (:class:`~ase.md.nose_hoover_chain.MaskedMTKNPT` with the ``pbc`` as mask), and the
    non-periodic (vacuum) cell vectors are restored bit for bit after every cell update, so a
    slab's vacuum axis keeps its exact length. The non-periodic cell vectors of such a frame must
    be orthogonal to the periodic ones (:func:`cell_problem`), as every slab and wire builder
    makes them. The barostat acts on the whole cell volume, vacuum included, so give 0 bar for
    slabs and wires. A frame periodic along no axis runs NVT with ASE's Langevin integrator
    (``fixcm=False``: the centre of mass is thermalised too); its cell never changes.

Reproducibility
    Each run draws from its own :class:`numpy.random.Generator` (:func:`run_rng`): seeded with
    ``seeds[i]`` alone when the protocol lists one seed per starting frame (the exploration stage
    does, so a run's frames do not depend on how runs are grouped into jobs), else with the job's
    ``(seed, i)``. It draws the initial Maxwell-Boltzmann momenta (total momentum removed) and the
    Langevin noise; the relaxation and the NPT integrator are deterministic. Same seeds, model and
    frames: the same sampled frames. Run ``i`` is called ``run_ids[i]`` when the protocol lists
    them, else ``<prefix>-<i>``.

Abort rules (:class:`MinDistance`, :class:`MaxForce`, :class:`TemperatureRunaway`,
:class:`FiniteResults`)
    The three physical rules (closest distance, largest force, temperature above
    ``max_temperature_factor`` times the target) are checked after every production step, never
    during the relaxation or the thermalisation: a hot start has the thermalisation to settle.
    Non-finite energies or forces (:class:`FiniteResults`) stop a run at any step, the relaxed
    frame included, as nothing can recover from them. The first rule that fires stops the run,
    which keeps the frames sampled before (:class:`Abort`: step, rule, value, reason). An
    exception of the calculator, optimiser or integrator stops the run the same way (rule
    ``error``).

Dispersion (:class:`D2Dispersion`)
    Grimme's D2 (J. Comput. Chem. 27, 1787 (2006)) as an ASE calculator, summed with the model's
    calculator (:class:`ase.calculators.mixing.SumCalculator`) when ``dispersion_d2`` is set.

Units: K, bar, fs, Å, eV, eV/Å, eV/Å³ (ASE stress sign).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.calculators.mixing import SumCalculator
from ase.data import chemical_symbols
from ase.geometry import wrap_positions
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import MTKNPT, MaskedMTKNPT
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.neighborlist import neighbor_list
from ase.optimize import FIRE

from aiida_trainspot.common.seeds import derive_rng
from aiida_trainspot.data.columns import Columns
from aiida_trainspot.data.validation import MIN_DISTANCE

__all__ = (
    'ENGINE',
    'PRESSURE_UNIT',
    'Abort',
    'D2Dispersion',
    'FiniteResults',
    'MaxForce',
    'MdProtocol',
    'MinDistance',
    'ProtocolError',
    'RunResult',
    'TemperatureRunaway',
    'abort_rules',
    'cell_problem',
    'ensemble_of',
    'explore',
    'make_integrator',
    'relax',
    'run_rng',
    'run_trajectory',
    'with_dispersion',
)

ENGINE = 'ase'
PRESSURE_UNIT = 'bar'
NPT, NVT = 'npt', 'nvt'
#: Units of the metadata columns of the sampled frames and of the summary.
UNITS = {
    'temperature': 'K',
    'pressure': PRESSURE_UNIT,
    'time_fs': 'fs',
    'timestep_fs': 'fs',
    'friction': '1/fs',
    'ttime': 'fs',
    'ptime': 'fs',
    'min_distance': 'Angstrom',
    'max_force': 'eV/Angstrom',
    'relax_fmax': 'eV/Angstrom',
    'd2_cutoff': 'Angstrom',
    'wall_time_s': 's',
}
#: Metadata columns of every sampled frame (``pressure`` is missing for NVT runs).
METADATA_COLUMNS = (
    'temperature',
    'pressure',
    'step',
    'time_fs',
    'source_frame',
    'engine',
    'run_id',
    'ensemble',
)
_MAX_TIMESTEP_FS = 10.0
_MAX_D2_CUTOFF = 100.0
_MAX_SEED = 2**63 - 1
#: Largest displacement of an atom in one FIRE step of the relaxation (Å); LAMMPS' ``dmax``.
RELAX_MAX_STEP = 0.1


class ProtocolError(ValueError):
    """An MD protocol with a missing, unknown or invalid entry (the message names it)."""


# --------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class MdProtocol:
    """What every trajectory of an exploration job does (see the module docstring)."""

    #: Target temperature (K) per starting frame, or one for all.
    temperatures: tuple[float, ...]
    #: Production steps, after the thermalisation.
    steps: int
    #: Target pressure (bar) per starting frame, or one for all; ignored by NVT runs.
    pressures: tuple[float, ...] = (0.0,)
    timestep_fs: float = 1.0
    #: MD steps run before the production: never sampled, no abort rule but non-finite results.
    thermalisation_steps: int = 0
    #: FIRE steps of the relaxation before the MD (cell fixed; 0: no relaxation).
    relax_steps: int = 0
    #: The relaxation stops once the largest force on an atom is below this (eV/Å).
    relax_fmax: float = 0.1
    #: Production steps between two sampled frames.
    sample_interval: int = 10
    #: Langevin friction of NVT runs (1/fs).
    friction: float = 0.01
    #: Thermostat time constant of NPT runs (fs).
    ttime: float = 100.0
    #: Barostat time constant of NPT runs (fs).
    ptime: float = 1000.0
    #: Add Grimme's D2 dispersion to the model.
    dispersion_d2: bool = False
    #: D2 global scaling (0.75 is PBE's).
    d2_s6: float = 0.75
    #: D2 pair cutoff (Å).
    d2_cutoff: float = 30.0
    #: Abort when two atoms come closer than this (Å).
    min_distance: float = 0.5
    #: Abort when a force on an atom exceeds this (eV/Å).
    max_force: float = 50.0
    #: Abort in production when the temperature exceeds this factor times the target.
    max_temperature_factor: float = 5.0
    #: One seed per starting frame: run i draws from ``seeds[i]`` alone (``None``: from the
    #: job's ``(seed, i)``), so that a run does not depend on the other runs of its job.
    seeds: tuple[int, ...] | None = None
    #: One run id per starting frame (``None``: ``<prefix>-<i>``).
    run_ids: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], n_frames: int | None = None) -> MdProtocol:
        """Validate ``data`` (defaults filled in); raise :class:`ProtocolError` naming the key.

        ``n_frames``: the number of starting frames, to check the lengths of ``temperatures``
        and ``pressures`` against (``None``: not checked).
        """
        if not isinstance(data, Mapping):
            raise ProtocolError(f'the protocol is a dictionary, got {type(data).__name__}')
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ProtocolError(f'unknown keys {unknown}; known: {sorted(names)}')
        for key in ('temperatures', 'steps'):
            if key not in data:
                raise ProtocolError(f'{key!r} is required')
        values: dict[str, Any] = {}
        values['temperatures'] = _targets(data, 'temperatures', positive=True)
        if 'pressures' in data:
            values['pressures'] = _targets(data, 'pressures', positive=False)
        values['steps'] = _integer(data, 'steps', minimum=1)
        for key in ('thermalisation_steps', 'relax_steps'):
            if key in data:
                values[key] = _integer(data, key, minimum=0)
        if 'sample_interval' in data:
            values['sample_interval'] = _integer(data, 'sample_interval', minimum=1)
        for key in (
            'timestep_fs',
            'friction',
            'ttime',
            'ptime',
            'd2_s6',
            'd2_cutoff',
            'max_force',
            'relax_fmax',
        ):
            if key in data:
                values[key] = _real(data, key, above=0.0)
        if 'min_distance' in data:
            values['min_distance'] = _real(data, 'min_distance', at_least=MIN_DISTANCE)
        if 'max_temperature_factor' in data:
            values['max_temperature_factor'] = _real(data, 'max_temperature_factor', above=1.0)
        if 'dispersion_d2' in data:
            if not isinstance(data['dispersion_d2'], (bool, np.bool_)):
                raise ProtocolError(
                    f"'dispersion_d2' must be true or false, got {data['dispersion_d2']!r}"
                )
            values['dispersion_d2'] = bool(data['dispersion_d2'])
        if data.get('seeds') is not None:
            values['seeds'] = _seeds(data['seeds'])
        if data.get('run_ids') is not None:
            values['run_ids'] = _run_ids(data['run_ids'])
        protocol = cls(**values)
        if protocol.timestep_fs > _MAX_TIMESTEP_FS:
            raise ProtocolError(
                f"'timestep_fs' {protocol.timestep_fs} fs is too long for atomistic MD "
                f'(at most {_MAX_TIMESTEP_FS} fs)'
            )
        if protocol.d2_cutoff > _MAX_D2_CUTOFF:
            raise ProtocolError(
                f"'d2_cutoff' {protocol.d2_cutoff} Angstrom is larger than {_MAX_D2_CUTOFF}"
            )
        if protocol.sample_interval > protocol.steps:
            raise ProtocolError(
                f"'sample_interval' ({protocol.sample_interval}) is larger than 'steps' "
                f'({protocol.steps}): no frame would be sampled'
            )
        if n_frames is not None:
            protocol.check_frames(n_frames)
        return protocol

    def check_frames(self, n_frames: int) -> None:
        """Raise :class:`ProtocolError` unless the per-frame lists fit ``n_frames`` frames."""
        for key in ('temperatures', 'pressures'):
            length = len(getattr(self, key))
            if length not in (1, n_frames):
                raise ProtocolError(
                    f"'{key}' has {length} values for {n_frames} starting frames: give one per "
                    'starting frame, or one number for all'
                )
        for key in ('seeds', 'run_ids'):
            values = getattr(self, key)
            if values is not None and len(values) != n_frames:
                raise ProtocolError(
                    f"'{key}' has {len(values)} values for {n_frames} starting frames: give one "
                    'per starting frame'
                )

    def run_seed(self, index: int) -> int | None:
        """The own seed of the run of starting frame ``index`` (``None``: none listed)."""
        return None if self.seeds is None else self.seeds[index]

    def run_id(self, index: int, prefix: str) -> str:
        """The id of the run of starting frame ``index``: listed, else ``<prefix>-<index>``."""
        return f'{prefix}-{index}' if self.run_ids is None else self.run_ids[index]

    def target(self, index: int) -> tuple[float, float]:
        """(temperature in K, pressure in bar) of starting frame ``index``."""
        temperatures, pressures = self.temperatures, self.pressures
        temperature = temperatures[0] if len(temperatures) == 1 else temperatures[index]
        pressure = pressures[0] if len(pressures) == 1 else pressures[index]
        return float(temperature), float(pressure)

    @property
    def total_steps(self) -> int:
        """Thermalisation plus production steps."""
        return self.thermalisation_steps + self.steps

    def is_sample_step(self, step: int) -> bool:
        """Whether the frame after MD step ``step`` (counted from the start) is sampled."""
        production = step - self.thermalisation_steps
        return production > 0 and production % self.sample_interval == 0

    def to_dict(self) -> dict[str, Any]:
        """Every entry (defaults included; per-run lists only when set), JSON-serialisable.

        ``from_dict`` inverts it.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _targets(data: Mapping[str, Any], key: str, positive: bool) -> tuple[float, ...]:
    value = data[key]
    items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not items:
        raise ProtocolError(f'{key!r} is empty')
    out = []
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, float, np.number)):
            raise ProtocolError(f'{key!r} holds {item!r}, not a number')
        number = float(item)
        if not math.isfinite(number) or (positive and number <= 0):
            need = 'positive' if positive else 'finite'
            raise ProtocolError(f'{key!r} holds {item!r}; every value must be {need}')
        out.append(number)
    return tuple(out)


def _seeds(value: Any) -> tuple[int, ...]:
    items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if not items:
        raise ProtocolError(f"'seeds' must be a non-empty list of integers, got {value!r}")
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise ProtocolError(f"'seeds' holds {item!r}, not an integer")
        if not 0 <= item <= _MAX_SEED:
            raise ProtocolError(f"'seeds' holds {item}; every seed must be in [0, {_MAX_SEED}]")
    return tuple(int(item) for item in items)


def _run_ids(value: Any) -> tuple[str, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else None
    if not items:
        raise ProtocolError(f"'run_ids' must be a non-empty list of strings, got {value!r}")
    bad = [item for item in items if not isinstance(item, str) or not item]
    if bad:
        raise ProtocolError(f"'run_ids' holds {bad[0]!r}, not a non-empty string")
    if len(set(items)) != len(items):
        twice = sorted({item for item in items if items.count(item) > 1})
        raise ProtocolError(f"'run_ids' are not distinct: {twice} appear more than once")
    return tuple(items)


def _integer(data: Mapping[str, Any], key: str, minimum: int) -> int:
    value = data[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ProtocolError(f'{key!r} must be an integer, got {value!r}')
    if value < minimum:
        raise ProtocolError(f'{key!r} must be at least {minimum}, got {value}')
    return int(value)


def _real(
    data: Mapping[str, Any], key: str, above: float | None = None, at_least: float | None = None
) -> float:
    value = data[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ProtocolError(f'{key!r} must be a number, got {value!r}')
    number = float(value)
    if not math.isfinite(number):
        raise ProtocolError(f'{key!r} must be finite, got {value!r}')
    if above is not None and number <= above:
        raise ProtocolError(f'{key!r} must be larger than {above}, got {value}')
    if at_least is not None and number < at_least:
        raise ProtocolError(f'{key!r} must be at least {at_least}, got {value}')
    return number


# --------------------------------------------------------------------------- ensembles


def ensemble_of(pbc: Sequence[bool]) -> str:
    """``'npt'`` when the frame is periodic along any axis, ``'nvt'`` otherwise."""
    return NPT if bool(np.any(pbc)) else NVT


def cell_problem(cell: Any, pbc: Sequence[bool], n_atoms: int | None = None) -> str | None:
    """Why a starting frame cannot run (``None`` when it can).

    A single atom has no dynamics. A periodic frame needs a cell of non-zero volume; a
    partially periodic one, non-periodic (vacuum) cell vectors orthogonal to the periodic ones,
    so that the barostat leaves them alone.
    """
    if n_atoms is not None and n_atoms < 2:
        return 'a single atom: there is no dynamics to sample'
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.any():
        return None
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    lengths = np.linalg.norm(cell, axis=1)
    if abs(np.linalg.det(cell)) <= 1e-9 * max(float(np.prod(lengths)), 1e-300):
        return (
            'the cell has no volume: a periodic frame needs three non-coplanar cell vectors '
            '(give a slab or wire a vacuum cell vector along its non-periodic axes)'
        )
    if pbc.all():
        return None
    units_ = cell / lengths[:, None]
    for fixed in np.flatnonzero(~pbc):
        for moving in np.flatnonzero(pbc):
            cosine = abs(float(units_[fixed] @ units_[moving]))
            if cosine > 1e-6:
                return (
                    f'the non-periodic cell vector {int(fixed)} is not orthogonal to the '
                    f'periodic cell vector {int(moving)} (cosine {cosine:.3g}): the barostat '
                    'would change the vacuum axis; make the vacuum cell vector orthogonal '
                    '(e.g. ase.build surface builders do)'
                )
    return None


def run_rng(seed: int, index: int | None = None) -> np.random.Generator:
    """The random generator of run ``index`` of a job with ``seed``, or of a run's own ``seed``.

    ``index=None``: ``seed`` is the run's own (``MdProtocol.seeds``), so the run draws the same
    numbers whichever job runs it and at whichever position.
    """
    return derive_rng(seed) if index is None else derive_rng(seed, index)


def relax(atoms: Atoms, protocol: MdProtocol) -> int:
    """Relax the positions of ``atoms`` (cell fixed) with FIRE; return the steps taken.

    At most ``protocol.relax_steps`` steps of at most :data:`RELAX_MAX_STEP` Å per atom, until
    the largest force is below ``protocol.relax_fmax``: a cold or heavily rattled start then
    begins its MD near a local minimum instead of heating far beyond the target. ``atoms`` must
    have its calculator. Deterministic (no random numbers).
    """
    if protocol.relax_steps == 0:
        return 0
    optimizer = FIRE(atoms, logfile=None, maxstep=RELAX_MAX_STEP)
    optimizer.run(fmax=protocol.relax_fmax, steps=protocol.relax_steps)
    return int(optimizer.nsteps)


class _FixedVacuumMTKNPT(MaskedMTKNPT):
    """:class:`MaskedMTKNPT` whose non-periodic cell vectors never change, not even by rounding.

    The barostat acts on the lengths of the cell vectors where ``mask`` is true; the others are
    restored to their initial values after each cell update (in exact arithmetic the update
    leaves them unchanged already, as they are orthogonal to the moving ones).
    """

    def __init__(self, *args: Any, mask: Any, **kwargs: Any):
        # a boolean array, not a tuple: MaskedMTKNPT indexes arrays with it
        super().__init__(*args, mask=np.asarray(mask, dtype=bool).reshape(3), **kwargs)
        self._fixed_axes = ~np.asarray(self.mask, dtype=bool)
        self._fixed_vectors = np.array(self._h, dtype=float)[self._fixed_axes]

    def _integrate_q_cell(self, delta: float) -> None:
        super()._integrate_q_cell(delta)
        self._h[self._fixed_axes] = self._fixed_vectors


def make_integrator(
    atoms: Atoms,
    ensemble: str,
    temperature: float,
    pressure: float,
    protocol: MdProtocol,
    rng: np.random.Generator,
) -> Any:
    """The ASE integrator of one run (``atoms`` must have its calculator and momenta)."""
    timestep = protocol.timestep_fs * units.fs
    if ensemble == NVT:
        return Langevin(
            atoms,
            timestep,
            temperature_K=temperature,
            friction=protocol.friction / units.fs,
            fixcm=False,
            rng=rng,
        )
    if ensemble != NPT:
        raise ValueError(f'unknown ensemble {ensemble!r}; choose one of {[NPT, NVT]}')
    kwargs = {
        'temperature_K': temperature,
        'pressure_au': pressure * units.bar,
        'tdamp': protocol.ttime * units.fs,
        'pdamp': protocol.ptime * units.fs,
    }
    if atoms.pbc.all():
        return MTKNPT(atoms, timestep, **kwargs)
    return _FixedVacuumMTKNPT(atoms, timestep, mask=atoms.pbc.copy(), **kwargs)


# --------------------------------------------------------------------------- abort rules


@dataclass(frozen=True)
class Abort:
    """Why and when a run stopped early."""

    step: int
    rule: str
    value: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The summary entries ``abort_step``, ``abort_rule``, ``abort_value``, ``abort_reason``."""
        value = self.value
        if value is not None and not math.isfinite(value):
            value = None
        return {
            'abort_step': self.step,
            'abort_rule': self.rule,
            'abort_value': value,
            'abort_reason': self.reason,
        }


@dataclass(frozen=True)
class MinDistance:
    """Abort in production when two atoms (periodic images included) are closer than ``floor``.

    ``floor`` in Å.
    """

    floor: float
    name: str = field(default='min_distance', init=False)

    def check(self, atoms: Atoms, step: int, production: bool) -> Abort | None:
        """An :class:`Abort` when the rule fires, else ``None`` (always outside production)."""
        if not production or len(atoms) < 2:
            return None
        distances = neighbor_list('d', atoms, self.floor)
        if distances.size == 0:
            return None
        value = float(distances.min())
        return Abort(
            step,
            self.name,
            value,
            f'two atoms are {value:.4g} Angstrom apart, closer than the floor of '
            f'{self.floor} Angstrom',
        )


@dataclass(frozen=True)
class FiniteResults:
    """Abort at any step (thermalisation too) when the energy or a force is not finite."""

    name: str = field(default='non_finite', init=False)

    def check(self, atoms: Atoms, step: int, production: bool) -> Abort | None:
        """An :class:`Abort` when the rule fires, else ``None``: nothing recovers from a NaN."""
        energy = float(np.asarray(atoms.get_potential_energy()).reshape(()))
        if not math.isfinite(energy):
            return Abort(step, self.name, energy, f'the energy is not finite ({energy})')
        if not np.isfinite(atoms.get_forces()).all():
            return Abort(step, self.name, None, 'a force is not finite')
        return None


@dataclass(frozen=True)
class MaxForce:
    """Abort in production when the force on an atom exceeds ``bound`` (eV/Å)."""

    bound: float
    name: str = field(default='max_force', init=False)

    def check(self, atoms: Atoms, step: int, production: bool) -> Abort | None:
        """An :class:`Abort` when the rule fires, else ``None`` (always outside production)."""
        if not production:
            return None
        forces = np.asarray(atoms.get_forces())
        value = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
        if value <= self.bound:
            return None
        return Abort(
            step,
            self.name,
            value,
            f'a force of {value:.4g} eV/Angstrom exceeds the bound of {self.bound} eV/Angstrom',
        )


@dataclass(frozen=True)
class TemperatureRunaway:
    """Abort in production when the temperature exceeds ``factor`` times ``target`` (K)."""

    target: float
    factor: float
    name: str = field(default='max_temperature', init=False)

    def check(self, atoms: Atoms, step: int, production: bool) -> Abort | None:
        """An :class:`Abort` when the rule fires, else ``None`` (always outside production)."""
        if not production:
            return None
        value = float(atoms.get_temperature())
        limit = self.factor * self.target
        if value <= limit:
            return None
        return Abort(
            step,
            self.name,
            value,
            f'the temperature {value:.4g} K exceeds {self.factor} x the target '
            f'{self.target} K = {limit:.4g} K',
        )


def abort_rules(protocol: MdProtocol, temperature: float) -> list[Any]:
    """The rules of a run at target ``temperature`` (K), cheapest first.

    Each rule knows when it applies: :class:`FiniteResults` at every step, the others in
    production only.
    """
    return [
        MinDistance(protocol.min_distance),
        FiniteResults(),
        MaxForce(protocol.max_force),
        TemperatureRunaway(temperature, protocol.max_temperature_factor),
    ]


# --------------------------------------------------------------------------- D2 dispersion

#: Grimme D2 parameters (J. Comput. Chem. 27, 1787 (2006)), H to Xe: C6 (J nm^6 mol^-1), R0 (Å).
D2_PARAMETERS: dict[str, tuple[float, float]] = {
    'H': (0.14, 1.001), 'He': (0.08, 1.012), 'Li': (1.61, 0.825), 'Be': (1.61, 1.408),
    'B': (3.13, 1.485), 'C': (1.75, 1.452), 'N': (1.23, 1.397), 'O': (0.70, 1.342),
    'F': (0.75, 1.287), 'Ne': (0.63, 1.243), 'Na': (5.71, 1.144), 'Mg': (5.71, 1.364),
    'Al': (10.79, 1.639), 'Si': (9.23, 1.716), 'P': (7.84, 1.705), 'S': (5.57, 1.683),
    'Cl': (5.07, 1.639), 'Ar': (4.61, 1.595), 'K': (10.80, 1.485), 'Ca': (10.80, 1.474),
    'Sc': (10.80, 1.562), 'Ti': (10.80, 1.562), 'V': (10.80, 1.562), 'Cr': (10.80, 1.562),
    'Mn': (10.80, 1.562), 'Fe': (10.80, 1.562), 'Co': (10.80, 1.562), 'Ni': (10.80, 1.562),
    'Cu': (10.80, 1.562), 'Zn': (10.80, 1.562), 'Ga': (16.99, 1.650), 'Ge': (17.10, 1.727),
    'As': (16.37, 1.760), 'Se': (12.64, 1.771), 'Br': (12.47, 1.749), 'Kr': (12.01, 1.727),
    'Rb': (24.67, 1.628), 'Sr': (24.67, 1.606), 'Y': (24.67, 1.639), 'Zr': (24.67, 1.639),
    'Nb': (24.67, 1.639), 'Mo': (24.67, 1.639), 'Tc': (24.67, 1.639), 'Ru': (24.67, 1.639),
    'Rh': (24.67, 1.639), 'Pd': (24.67, 1.639), 'Ag': (24.67, 1.639), 'Cd': (24.67, 1.639),
    'In': (37.32, 1.672), 'Sn': (38.71, 1.804), 'Sb': (38.44, 1.881), 'Te': (31.74, 1.892),
    'I': (31.50, 1.892), 'Xe': (29.99, 1.881),
}  # fmt: skip
#: J nm^6 mol^-1 -> eV Å^6.
D2_C6_TO_EV_A6 = 1e-3 * units.kJ / units.mol * 1e6
D2_DAMPING = 20.0


def d2_missing_species(symbols: Sequence[str]) -> list[str]:
    """The symbols among ``symbols`` that D2 has no parameters for (beyond Xe)."""
    return sorted(set(symbols) - set(D2_PARAMETERS))


class D2Dispersion(Calculator):
    """Grimme's D2 dispersion: ``E = -s6 sum_{i<j} C6ij / r^6 / (1 + exp(-d (r / R0ij - 1)))``.

    ``C6ij = sqrt(C6i C6j)``, ``R0ij = R0i + R0j``; pairs up to ``cutoff`` (Å), periodic images
    included (:func:`_pairs`), no shift at the cutoff. Energy (eV),
    per-atom energies, forces (eV/Å) and, for cells of non-zero volume, the stress (eV/Å³,
    ASE sign, Voigt). Parameters: ``s6`` (0.75 for PBE), ``damping`` (``d``, 20), ``cutoff``.
    """

    implemented_properties = ('energy', 'free_energy', 'energies', 'forces', 'stress')
    default_parameters = {'s6': 0.75, 'damping': D2_DAMPING, 'cutoff': 30.0}

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ('energy',),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Compute every property at once (the pair list dominates the cost)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        missing = d2_missing_species(atoms.get_chemical_symbols())
        if missing:
            raise PropertyNotImplementedError(
                f'D2 has no parameters for {missing} (it covers H to Xe)'
            )
        s6 = float(self.parameters['s6'])
        damping = float(self.parameters['damping'])
        cutoff = float(self.parameters['cutoff'])
        n_atoms = len(atoms)
        c6_atom, r0_atom = _d2_atom_parameters(atoms.numbers)
        energies = np.zeros(n_atoms)
        forces = np.zeros((n_atoms, 3))
        virial = np.zeros((3, 3))
        for i, j, vectors in _pairs(atoms, cutoff):
            d = np.sqrt(np.einsum('ij,ij->i', vectors, vectors))
            c6 = np.sqrt(c6_atom[i] * c6_atom[j])
            r0 = r0_atom[i] + r0_atom[j]
            x = np.exp(-damping * (d / r0 - 1.0))
            fdamp = 1.0 / (1.0 + x)
            d6 = d**6
            pair = -s6 * c6 / d6 * fdamp
            # d(pair)/dr: the r^-6 term and the damping function
            dpair = -s6 * c6 * (-6.0 / (d6 * d) * fdamp + fdamp**2 * x * damping / (r0 * d6))
            # every pair comes twice, (i, j, T) and (j, i, -T): halve the energy and the virial
            energies += 0.5 * np.bincount(i, weights=pair, minlength=n_atoms)
            weight = (dpair / d)[:, None] * vectors
            for axis in range(3):
                forces[:, axis] += np.bincount(i, weights=weight[:, axis], minlength=n_atoms)
            virial += 0.5 * (weight.T @ vectors)
        energy = float(energies.sum())
        self.results = {
            'energy': energy,
            'free_energy': energy,
            'energies': energies,
            'forces': forces,
        }
        volume = abs(float(np.linalg.det(atoms.cell.array)))
        if volume > 1e-9:
            full = virial / volume
            self.results['stress'] = full[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        elif 'stress' in properties:
            raise PropertyNotImplementedError('the stress needs a cell of non-zero volume')


#: Pair vectors computed at a time by :func:`_pairs` (bounds the temporary memory).
_PAIR_BLOCK = 1_000_000


def _pairs(atoms: Atoms, cutoff: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Blocks ``(i, j, r_j + T - r_i)`` of every ordered pair closer than ``cutoff``.

    ``T`` runs over the lattice translations along the periodic axes. Vectorised over
    translations (much faster than :func:`ase.neighborlist.neighbor_list` for cutoffs many
    times the cell, as D2's are); positions are wrapped into the cell first.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = atoms.cell.complete()
    positions = wrap_positions(atoms.positions, cell, pbc) if pbc.any() else atoms.positions
    counts = np.zeros(3, dtype=int)
    if pbc.any():
        volume = abs(float(np.linalg.det(cell)))
        for axis in np.flatnonzero(pbc):
            area = np.linalg.norm(np.cross(cell[(axis + 1) % 3], cell[(axis + 2) % 3]))
            counts[axis] = math.ceil(cutoff / (volume / area)) + 1
    grid = np.stack(
        np.meshgrid(*(np.arange(-n, n + 1) for n in counts), indexing='ij'), axis=-1
    ).reshape(-1, 3)
    translations = grid @ cell
    extent = float(np.linalg.norm(np.ptp(positions, axis=0))) if len(positions) else 0.0
    keep = np.linalg.norm(translations, axis=1) <= cutoff + extent + 1e-9
    translations, grid = translations[keep], grid[keep]
    n_atoms = len(positions)
    differences = positions[None, :, :] - positions[:, None, :]  # r_j - r_i at [i, j]
    ii, jj = np.meshgrid(np.arange(n_atoms), np.arange(n_atoms), indexing='ij')
    ii, jj, differences = ii.reshape(-1), jj.reshape(-1), differences.reshape(-1, 3)
    not_self = ii != jj
    block = max(1, _PAIR_BLOCK // max(n_atoms * n_atoms, 1))
    for start in range(0, len(translations), block):
        shift = translations[start : start + block]
        vectors = differences[None, :, :] + shift[:, None, :]  # (translation, pair, 3)
        inside = np.einsum('tpk,tpk->tp', vectors, vectors) < cutoff * cutoff
        zero = ~grid[start : start + block].any(axis=1)
        inside[zero] &= not_self
        t, p = np.nonzero(inside)
        if p.size:
            yield ii[p], jj[p], vectors[t, p]


def _d2_atom_parameters(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C6 in eV Å^6, R0 in Å) of every atom."""
    table_c6 = np.zeros(max(int(numbers.max(initial=0)), 1) + 1)
    table_r0 = np.ones_like(table_c6)
    for number in np.unique(numbers):
        c6, r0 = D2_PARAMETERS[chemical_symbols[int(number)]]
        table_c6[number] = c6 * D2_C6_TO_EV_A6
        table_r0[number] = r0
    return table_c6[numbers], table_r0[numbers]


def with_dispersion(calculator: Any, protocol: MdProtocol) -> Any:
    """``calculator`` plus D2 when the protocol asks for it, else ``calculator`` itself."""
    if not protocol.dispersion_d2:
        return calculator
    dispersion = D2Dispersion(s6=protocol.d2_s6, cutoff=protocol.d2_cutoff)
    return SumCalculator([calculator, dispersion])


# --------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    """One trajectory: what was sampled and how it ended."""

    index: int
    run_id: str
    ensemble: str | None
    temperature: float
    pressure: float | None
    numbers: np.ndarray
    pbc: np.ndarray
    steps: list[int] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    cells: list[np.ndarray] = field(default_factory=list)
    steps_done: int = 0
    relax_steps_done: int = 0
    abort: Abort | None = None
    skip_reason: str | None = None
    final_temperature: float | None = None
    wall_time: float = 0.0

    @property
    def n_sampled(self) -> int:
        """Frames sampled."""
        return len(self.steps)

    def summary(self) -> dict[str, Any]:
        """The run's entry in the job summary (JSON-serialisable)."""
        out: dict[str, Any] = {
            'run_id': self.run_id,
            'source_frame': self.index,
            'ensemble': self.ensemble,
            'temperature': self.temperature,
            'pressure': self.pressure,
            'n_sampled': self.n_sampled,
            'steps_done': self.steps_done,
            'relax_steps_done': self.relax_steps_done,
            'skipped': self.skip_reason is not None,
            'skip_reason': self.skip_reason,
            'aborted': self.abort is not None,
            'abort_step': None,
            'abort_rule': None,
            'abort_value': None,
            'abort_reason': None,
            'final_temperature': self.final_temperature,
            'wall_time_s': round(self.wall_time, 3),
        }
        if self.abort is not None:
            out.update(self.abort.to_dict())
        return out


def _first_abort(rules: Sequence[Any], atoms: Atoms, step: int, production: bool) -> Abort | None:
    for rule in rules:
        abort = rule.check(atoms, step, production)
        if abort is not None:
            return abort
    return None


def _error(step: int, exception: BaseException) -> Abort:
    message = str(exception).strip().splitlines()[0] if str(exception).strip() else ''
    reason = f'{type(exception).__name__}: {message}' if message else type(exception).__name__
    return Abort(step, 'error', None, reason)


def run_trajectory(
    atoms: Atoms,
    calculator: Any,
    protocol: MdProtocol,
    *,
    index: int = 0,
    seed: int = 0,
    run_seed: int | None = None,
    run_id: str = '',
) -> RunResult:
    """Run the MD of one starting frame (``atoms`` is not modified); sample and apply the rules.

    ``index``: the frame's index into the protocol's targets. Random numbers come from
    ``run_seed`` alone when given, else from ``(seed, index)`` (:func:`run_rng`). The phases
    (relaxation, thermalisation, production) and rules are the module docstring's.
    """
    temperature, pressure = protocol.target(index)
    ensemble = ensemble_of(atoms.pbc)
    result = RunResult(
        index=index,
        run_id=run_id,
        ensemble=ensemble,
        temperature=temperature,
        pressure=pressure if ensemble == NPT else None,
        numbers=np.array(atoms.numbers),
        pbc=np.array(atoms.pbc, dtype=bool),
    )
    problem = cell_problem(atoms.cell.array, atoms.pbc, len(atoms))
    if problem is not None:
        result.skip_reason = problem
        return result
    start = time.perf_counter()
    atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    rng = run_rng(seed, index) if run_seed is None else run_rng(run_seed)
    rules = abort_rules(protocol, temperature)
    step = 0
    try:
        if hasattr(calculator, 'reset'):
            calculator.reset()
        atoms.calc = calculator
        result.relax_steps_done = relax(atoms, protocol)
        thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        result.abort = _first_abort(rules, atoms, 0, False)  # non-finite results only
        if result.abort is None:
            dynamics = make_integrator(atoms, ensemble, temperature, pressure, protocol, rng)
            for step in range(1, protocol.total_steps + 1):
                dynamics.step()
                result.steps_done = step
                production = step > protocol.thermalisation_steps
                result.abort = _first_abort(rules, atoms, step, production)
                if result.abort is not None:
                    break
                if protocol.is_sample_step(step):
                    result.steps.append(step)
                    result.positions.append(atoms.get_positions(wrap=True))
                    result.cells.append(np.array(atoms.cell.array))
    except Exception as exc:
        result.abort = _error(step, exc)
    try:
        result.final_temperature = float(atoms.get_temperature())
    except Exception:
        result.final_temperature = None
    if result.final_temperature is not None and not math.isfinite(result.final_temperature):
        result.final_temperature = None
    result.wall_time = time.perf_counter() - start
    return result


def explore(
    frames: Sequence[Atoms],
    calculator: Any,
    protocol: MdProtocol,
    *,
    seed: int = 0,
    run_id_prefix: str = 'run',
    progress: Callable[[RunResult], None] | None = None,
) -> tuple[Columns, list[dict[str, Any]]]:
    """Run one trajectory per starting frame; return the sampled frames and the run summaries.

    ``calculator`` is the model's (D2 is added here when the protocol asks for it). Run ``i``
    is ``protocol.run_ids[i]``, else ``f'{run_id_prefix}-{i}'``; it draws from
    ``protocol.seeds[i]``, else from ``(seed, i)``. The frames come as :class:`Columns`
    (structure and the :data:`METADATA_COLUMNS`, no labels), runs in input order, steps in order
    within a run.
    """
    protocol.check_frames(len(frames))
    calculator = with_dispersion(calculator, protocol)
    results = []
    for index, atoms in enumerate(frames):
        with warnings.catch_warnings():
            # metatomic warns on the stress of slabs, which the barostat uses in-plane only,
            # and computes one (strain gradient / zero volume) for clusters, which nothing reads
            warnings.filterwarnings('ignore', message='stress requested but likely to be wrong')
            warnings.filterwarnings('ignore', category=RuntimeWarning, module=r'metatomic_ase\.')
            result = run_trajectory(
                atoms,
                calculator,
                protocol,
                index=index,
                seed=seed,
                run_seed=protocol.run_seed(index),
                run_id=protocol.run_id(index, run_id_prefix),
            )
        results.append(result)
        if progress is not None:
            progress(result)
    return sampled_columns(results, protocol), [r.summary() for r in results]


def sampled_columns(results: Sequence[RunResult], protocol: MdProtocol) -> Columns:
    """The sampled frames of ``results`` with their metadata columns."""
    n_atoms, numbers, positions, cells, pbcs = [], [], [], [], []
    meta: dict[str, list[Any]] = {name: [] for name in METADATA_COLUMNS}
    for result in results:
        for step, position, cell in zip(result.steps, result.positions, result.cells, strict=True):
            n_atoms.append(len(result.numbers))
            numbers.append(result.numbers)
            positions.append(position)
            cells.append(cell)
            pbcs.append(result.pbc)
            meta['temperature'].append(result.temperature)
            meta['pressure'].append(result.pressure)
            meta['step'].append(step)
            meta['time_fs'].append(step * protocol.timestep_fs)
            meta['source_frame'].append(result.index)
            meta['engine'].append(ENGINE)
            meta['run_id'].append(result.run_id)
            meta['ensemble'].append(result.ensemble)
    n = len(n_atoms)
    pressure_present = np.array([p is not None for p in meta['pressure']], dtype=bool)
    columns = Columns(
        n_atoms=np.asarray(n_atoms, dtype=np.int64),
        frame={
            'cell': np.asarray(cells, dtype=float).reshape(n, 3, 3),
            'pbc': np.asarray(pbcs, dtype=bool).reshape(n, 3),
            'temperature': np.asarray(meta['temperature'], dtype=float),
            'pressure': np.array(
                [np.nan if p is None else p for p in meta['pressure']], dtype=float
            ),
            'step': np.asarray(meta['step'], dtype=np.int64),
            'time_fs': np.asarray(meta['time_fs'], dtype=float),
            'source_frame': np.asarray(meta['source_frame'], dtype=np.int64),
            'engine': np.array(meta['engine'], dtype=object),
            'run_id': np.array(meta['run_id'], dtype=object),
            'ensemble': np.array(meta['ensemble'], dtype=object),
        },
        atom={
            'numbers': (
                np.concatenate(numbers).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
            ),
            'positions': np.concatenate(positions) if n else np.zeros((0, 3)),
        },
    )
    if not pressure_present.all():
        columns.present['pressure'] = pressure_present
    return columns
