"""The ``ase`` labelling engine's pure core: calculator specs and the labelling loop.

No AiiDA here: the CalcJob (:mod:`.calculation`) validates specs with
:func:`check_calculator_spec` and writes the job's files; the executable
(:mod:`aiida_trainspot.runners.ase_label`) builds the calculator with
:func:`make_calculator` and labels the frames with :func:`label_columns`.

A *calculator spec* is ``{'name': NAME, 'kwargs': {...}}`` where NAME is

- ``'emt'``: :class:`ase.calculators.emt.EMT` (H, C, N, O, Al, Ni, Cu, Pd, Ag, Pt, Au);
- ``'lj'``: :class:`ase.calculators.lj.LennardJones`;
- ``'tersoff'``: :meth:`ase.calculators.tersoff.Tersoff.from_lammps` of a LAMMPS
  ``.tersoff`` parameter file (which the spec then needs);
- ``'package.module:ClassName'``: any importable calculator class, instantiated with
  the kwargs (it must be importable where the job runs as well).

Per frame the engine computes the energy (eV) and forces (eV/Å), and the stress
(eV/Å³, Voigt, ASE sign, (1/V) dE/dε with V the whole cell's volume, vacuum included)
for frames periodic along at least two axes (bulk and 2D frames, see
:func:`~aiida_trainspot.data.columns.carries_stress`) when the calculator computes one;
other frames have none (*missing*, never zero).
A frame whose calculation raises, or yields a non-finite value, is recorded as
failed with its reason (``ExceptionClass: message``); the others go on.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from aiida_trainspot.common.runner import EXIT_MODEL_LOAD_FAILED
from aiida_trainspot.data.columns import Columns, carries_stress

#: Files of the job folder (all relative: the job runs unchanged on a remote computer).
FRAMES_FILE = 'frames.h5'
CALCULATOR_FILE = 'calculator.json'
LABELS_FILE = 'labels.h5'
PARAMETER_FILE = 'calculator.parameters'

#: Column of the labels file holding each frame's failure reason ('' when labelled).
ERROR_COLUMN = 'error'
#: What the executable writes to stderr (and exits with) when it cannot run at all.
#: (An unreadable input: INPUT_FAILED of :mod:`aiida_trainspot.common.runner`, as every runner.)
SETUP_FAILED = 'CALCULATOR SETUP FAILED'
EXIT_SETUP_FAILED = EXIT_MODEL_LOAD_FAILED

#: name -> (module, class) of the built-in calculators.
BUILTIN_CALCULATORS: dict[str, tuple[str, str]] = {
    'emt': ('ase.calculators.emt', 'EMT'),
    'lj': ('ase.calculators.lj', 'LennardJones'),
    'tersoff': ('ase.calculators.tersoff', 'Tersoff'),
}
#: Built-in calculators built from a parameter file.
NEEDS_PARAMETER_FILE = frozenset({'tersoff'})
#: Keyword arguments the built-ins accept beyond their ``default_parameters``.
_EXTRA_KWARGS: dict[str, frozenset[str]] = {
    'emt': frozenset(),
    'lj': frozenset(),
    'tersoff': frozenset({'skin'}),
}
SPEC_KEYS = frozenset({'name', 'kwargs'})


class CalculatorSpecError(ValueError):
    """A calculator spec names no usable calculator or gives it unusable arguments."""


# --------------------------------------------------------------------------- specs


def check_calculator_spec(spec: Any, has_parameter_file: bool | None = None) -> None:
    """Raise :class:`CalculatorSpecError` if ``spec`` cannot build a calculator.

    Imports the class (a ``module:Class`` spec is thereby checked to be importable
    here), and checks the kwargs of the built-ins by name. ``has_parameter_file``:
    whether a parameter file comes with the spec (``None``: do not check).
    Instantiates nothing.
    """
    if not isinstance(spec, Mapping):
        raise CalculatorSpecError(
            f'a calculator spec is a dictionary {{"name": ..., "kwargs": {{...}}}}, '
            f'got {type(spec).__name__}'
        )
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise CalculatorSpecError(
            f'unknown keys {unknown} in the calculator spec; allowed: name, kwargs'
        )
    name = spec.get('name')
    kwargs = spec.get('kwargs') or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise CalculatorSpecError('"kwargs" of the calculator spec must be a dictionary')
    cls = calculator_class(name)
    if name in BUILTIN_CALCULATORS:
        allowed = set(getattr(cls, 'default_parameters', {})) | _EXTRA_KWARGS[name]
        wrong = sorted(set(kwargs) - allowed)
        if wrong:
            raise CalculatorSpecError(
                f'calculator {name!r} takes no arguments {wrong}; it takes {sorted(allowed)}'
            )
    else:
        try:
            inspect.signature(cls).bind(**kwargs)
        except TypeError as exc:
            raise CalculatorSpecError(f'{name} does not accept the kwargs given: {exc}') from None
        except ValueError:  # no signature available (e.g. a C extension): cannot check
            pass
    if has_parameter_file is None:
        return
    if name in NEEDS_PARAMETER_FILE and not has_parameter_file:
        raise CalculatorSpecError(f'calculator {name!r} needs a parameter file')
    if name not in NEEDS_PARAMETER_FILE and has_parameter_file:
        raise CalculatorSpecError(
            f'calculator {name!r} takes no parameter file (only {sorted(NEEDS_PARAMETER_FILE)} do)'
        )


def calculator_class(name: Any) -> type:
    """The class that ``name`` (built-in name or ``module:Class``) stands for."""
    if not isinstance(name, str) or not name:
        raise CalculatorSpecError(
            f'the calculator spec needs a "name": one of {sorted(BUILTIN_CALCULATORS)} '
            f'or "package.module:ClassName", got {name!r}'
        )
    if name in BUILTIN_CALCULATORS:
        module_name, class_name = BUILTIN_CALCULATORS[name]
    elif ':' in name:
        module_name, _, class_name = name.partition(':')
    else:
        raise CalculatorSpecError(
            f'unknown calculator {name!r}: use one of {sorted(BUILTIN_CALCULATORS)} '
            f'or "package.module:ClassName"'
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CalculatorSpecError(
            f'calculator {name!r}: cannot import module {module_name!r} '
            f'({type(exc).__name__}: {exc})'
        ) from None
    cls = module
    for part in class_name.split('.'):
        cls = getattr(cls, part, None)
        if cls is None:
            raise CalculatorSpecError(
                f'calculator {name!r}: module {module_name!r} has no {class_name!r}'
            )
    if not isinstance(cls, type):
        raise CalculatorSpecError(f'calculator {name!r}: {class_name!r} is not a class')
    return cls


def make_calculator(spec: Mapping[str, Any], parameter_file: str | Path | None = None) -> Any:
    """Build the calculator of ``spec`` (``parameter_file``: the tersoff file, if any)."""
    check_calculator_spec(spec, None)
    name = spec['name']
    kwargs = dict(spec.get('kwargs') or {})
    cls = calculator_class(name)
    if name in NEEDS_PARAMETER_FILE:
        if parameter_file is None:
            raise CalculatorSpecError(f'calculator {name!r} needs a parameter file')
        return cls.from_lammps(str(parameter_file), **kwargs)
    return cls(**kwargs)


# --------------------------------------------------------------------------- labelling


def label_atoms(atoms: Atoms, calculator: Any) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Return (energy, forces, stress or None) of ``atoms``; raise if any is not finite.

    The calculator is reset first, so each frame is computed from scratch exactly as
    a fresh calculator would (no neighbour list or result carried over).
    """
    if hasattr(calculator, 'reset'):
        calculator.reset()
    atoms.calc = calculator
    energy = float(np.asarray(atoms.get_potential_energy(), dtype=float).reshape(()))
    if not math.isfinite(energy):
        raise FloatingPointError(f'non-finite energy {energy}')
    forces = np.array(atoms.get_forces(), dtype=float)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f'forces of shape {forces.shape}, expected {(len(atoms), 3)}')
    if not np.isfinite(forces).all():
        raise FloatingPointError('non-finite forces')
    stress = None
    if carries_stress(atoms.pbc, atoms.cell.array) and _implements(calculator, 'stress'):
        try:
            stress = np.array(atoms.get_stress(voigt=True), dtype=float).reshape(-1)
        except PropertyNotImplementedError:  # e.g. a calculator's stress is for 3D cells only
            return energy, forces, None
        if stress.shape != (6,):
            raise ValueError(f'stress of shape {stress.shape}, expected 6 Voigt components')
        if not np.isfinite(stress).all():
            raise FloatingPointError('non-finite stress')
    return energy, forces, stress


def _implements(calculator: Any, name: str) -> bool:
    implemented = getattr(calculator, 'implemented_properties', None)
    return implemented is None or name in implemented


def failure_reason(exception: BaseException) -> str:
    """``ExceptionClass: message`` (the class alone when the message is empty)."""
    message = str(exception).strip()
    return f'{type(exception).__name__}: {message}' if message else type(exception).__name__


def label_columns(columns: Columns, calculator: Any) -> Columns:
    """Label every frame of ``columns`` (the structure is enough) with ``calculator``.

    Returns :class:`Columns` of the same frames holding ``energy``, ``forces``,
    ``stress`` (each with its presence mask) and ``error`` ('' where labelled).
    """
    n_frames = columns.n_frames
    offsets = columns.offsets
    numbers, positions = columns.atom['numbers'], columns.atom['positions']
    cells, pbcs = columns.frame['cell'], columns.frame['pbc']
    energy = np.full(n_frames, np.nan)
    stress = np.full((n_frames, 6), np.nan)
    forces = np.full((int(offsets[-1]), 3), np.nan)
    errors = np.full(n_frames, '', dtype=object)
    has_energy = np.zeros(n_frames, dtype=bool)
    has_stress = np.zeros(n_frames, dtype=bool)
    for i in range(n_frames):
        start, stop = offsets[i], offsets[i + 1]
        atoms = Atoms(
            numbers=numbers[start:stop], positions=positions[start:stop], cell=cells[i], pbc=pbcs[i]
        )
        try:
            e, f, s = label_atoms(atoms, calculator)
        except Exception as exc:
            errors[i] = failure_reason(exc)
            continue
        energy[i], forces[start:stop], has_energy[i] = e, f, True
        if s is not None:
            stress[i], has_stress[i] = s, True
    out = Columns(
        n_atoms=columns.n_atoms,
        frame={'energy': energy, 'stress': stress, ERROR_COLUMN: errors},
        atom={'forces': forces},
    )
    for name, mask in (('energy', has_energy), ('forces', has_energy), ('stress', has_stress)):
        if not mask.all():
            out.present[name] = mask
    return out


# --------------------------------------------------------------------------- files


def summarise(labels: Columns, seconds: float | None = None) -> dict[str, Any]:
    """Counts of a labels batch, for the executable's report."""
    errors = labels.frame[ERROR_COLUMN]
    failed = np.array([bool(e) for e in errors], dtype=bool)
    summary = {
        'n_frames': labels.n_frames,
        'n_labelled': int((~failed).sum()),
        'n_failed': int(failed.sum()),
        'n_stress': int(labels.mask('stress').sum()),
    }
    if seconds is not None:
        summary['seconds'] = round(seconds, 3)
    return summary
