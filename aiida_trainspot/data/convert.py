"""Conversions between ``ase.Atoms``, frame dictionaries and :class:`Columns` (no AiiDA)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from operator import is_not
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from .columns import (
    JSON_PREFIX,
    LABEL_COLUMNS,
    STRUCTURE_COLUMNS,
    Columns,
    build_column,
    decode_json_value,
    encode_json_value,
    is_json_value,
    json_column,
    normalise_metadata_value,
)

_NO_RESULTS: dict[str, Any] = {}

#: The reserved keys of a frame dictionary; every other key is rejected.
FRAME_KEYS = frozenset({*STRUCTURE_COLUMNS, *LABEL_COLUMNS, 'info', 'arrays'})


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many acyclic objects are created.

    Building 100 000 ``ase.Atoms`` triggers thousands of collections that traverse
    every live object; the objects made here hold no reference cycles, so pausing
    the collector halves the time and changes nothing else.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def voigt_stress(stress: Any, where: str) -> np.ndarray:
    """Return a stress as 6 Voigt components (xx, yy, zz, yz, xz, xy), from 6 or 3x3."""
    array = np.asarray(stress, dtype=float)
    if array.shape == (6,):
        return array
    if array.shape in ((3, 3), (9,)):
        full = array.reshape(3, 3)
        return full[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    raise ValueError(f'{where}: stress must have 6 (Voigt) or 3x3 components, got {array.shape}')


def full_stress(voigt: np.ndarray) -> np.ndarray:
    """Expand Voigt stresses (..., 6) into 3x3 matrices (..., 3, 3)."""
    xx, yy, zz, yz, xz, xy = np.moveaxis(np.asarray(voigt), -1, 0)
    return np.stack(
        [np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2
    )


class _Accumulator:
    """Collects frames one by one with minimal per-frame work; checks in bulk at the end."""

    def __init__(self) -> None:
        self.numbers: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []
        self.cells: list[Any] = []
        self.pbcs: list[Any] = []
        self.labels: dict[str, list[Any]] = {name: [] for name in LABEL_COLUMNS}
        self.info: dict[str, dict[int, Any]] = {}
        self.extra: dict[str, dict[int, np.ndarray]] = {}

    def add(self, numbers, positions, cell, pbc, energy, forces, stress, info, arrays) -> None:
        index = len(self.numbers)
        self.numbers.append(numbers)
        self.positions.append(positions)
        self.cells.append(cell)
        self.pbcs.append(pbc)
        self.labels['energy'].append(energy)
        self.labels['forces'].append(forces)
        self.labels['stress'].append(stress)
        for key, value in info.items():
            self.info.setdefault(key, {})[index] = value
        for key, value in arrays.items():
            self.extra.setdefault(key, {})[index] = value

    def finish(self) -> Columns:
        n_frames = len(self.numbers)
        n_atoms = np.fromiter(map(len, self.numbers), dtype=np.int64, count=n_frames)
        columns = Columns(n_atoms=n_atoms)
        if n_frames == 0:
            return _empty_structure(columns)
        empty = np.flatnonzero(n_atoms == 0)
        if empty.size:
            raise ValueError(f'frame {int(empty[0])}: a frame must hold at least one atom')
        columns.atom['numbers'] = np.concatenate(self.numbers).astype(np.int64, copy=False)
        columns.atom['positions'] = _stack_per_atom(self.positions, n_atoms, 'positions')
        columns.frame['cell'] = _stack_cells(self.cells)
        columns.frame['pbc'] = _stack_pbc(self.pbcs)
        _add_labels(columns, self.labels)
        for key, values in self.info.items():
            _check_not_reserved(key, 'info')
            if len(values) == n_frames and set(map(type, values.values())) == {str}:
                # text in every frame (a method, a source): nothing to normalise or mask
                columns.frame[key] = np.array(list(values.values()), dtype=object)
                continue
            nested = [index for index, value in values.items() if is_json_value(value)]
            if nested:
                _add_json_column(columns, key, {i: values.pop(i) for i in nested})
                if not values:
                    continue
            for index, value in values.items():
                values[index] = normalise_metadata_value(key, value, f'frame {index}')
            array, mask = build_column(
                key, [values.get(i) for i in range(n_frames)], f'info[{key!r}]'
            )
            columns.frame[key] = array
            if not mask.all():
                columns.present[key] = mask
        for key, values in self.extra.items():
            _check_not_reserved(key, 'arrays')
            for index, value in values.items():
                values[index] = np.asarray(value)
                rows = values[index].shape[:1]
                if rows != (n_atoms[index],):
                    raise ValueError(
                        f'frame {index}: per-atom array {key!r} has {rows} rows, '
                        f'not {n_atoms[index]}'
                    )
            _add_extra_atom_column(columns, key, values)
        return columns


def _stack_per_atom(parts: list[Any], n_atoms: np.ndarray, name: str) -> np.ndarray:
    """Concatenate per-frame (n, 3) arrays, naming the first frame of the wrong shape."""
    try:
        stacked = np.concatenate(parts).astype(float, copy=False)
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    except (TypeError, ValueError):
        stacked = lengths = None
    # the lengths too: a frame one row short and one a row long add up to the right total
    if stacked is None or stacked.shape[1:] != (3,) or not np.array_equal(lengths, n_atoms):
        for index, (part, n) in enumerate(zip(parts, n_atoms, strict=True)):
            shape = np.shape(part)
            if shape != (n, 3):
                raise ValueError(f'frame {index}: {name} must have shape ({n}, 3), got {shape}')
    return stacked


def _stack_cells(cells: list[Any]) -> np.ndarray:
    try:
        rows_of_three = all(map((3).__eq__, map(len, cells)))
    except TypeError:  # a scalar
        rows_of_three = False
    if rows_of_three:  # (3, 3) each: one concatenation
        try:
            stacked = np.concatenate(cells).astype(float, copy=False)
            if stacked.shape == (3 * len(cells), 3):
                return stacked.reshape(len(cells), 3, 3)
        except ValueError:
            pass
    for index, cell in enumerate(cells):
        if np.size(cell) != 9:
            raise ValueError(f'frame {index}: cell must be 3x3, got shape {np.shape(cell)}')
    return np.array([np.asarray(cell, dtype=float).reshape(3, 3) for cell in cells])


def _stack_pbc(pbcs: list[Any]) -> np.ndarray:
    """Per-frame periodicity as (n, 3) bools; a scalar means the same on every axis."""
    try:
        stacked = np.array(pbcs, dtype=bool)
    except ValueError:  # a mix of scalars and triples
        stacked = None
    if stacked is not None and stacked.shape == (len(pbcs), 3):
        return stacked
    return np.array(
        [np.broadcast_to(np.asarray(p, dtype=bool), (3,)) for p in pbcs], dtype=bool
    ).reshape(len(pbcs), 3)


def columns_from_atoms(
    frames: Iterable[Atoms],
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> Columns:
    """Stack ``ase.Atoms`` into :class:`Columns`.

    Labels come from ``atoms.info[energy_key]``, ``atoms.arrays[forces_key]`` and
    ``atoms.info[stress_key]`` when those keys are given, otherwise from the results of
    an attached calculator (e.g. a ``SinglePointCalculator``). Other ``info`` entries
    become metadata columns and other per-atom ``arrays`` become per-atom columns.
    """
    with _gc_paused():
        return _columns_from_atoms(frames, energy_key, forces_key, stress_key)


def _columns_from_atoms(
    frames: Iterable[Atoms], energy_key: str | None, forces_key: str | None, stress_key: str | None
) -> Columns:
    accumulator = _Accumulator()
    label_info_keys = {energy_key, stress_key} - {None}
    skip_arrays = {'numbers', 'positions', forces_key}
    numbers, positions = accumulator.numbers, accumulator.positions
    cells, pbcs = accumulator.cells, accumulator.pbcs
    energies, forces, stresses = (accumulator.labels[k] for k in LABEL_COLUMNS)
    info_columns, extra_columns = accumulator.info, accumulator.extra
    # one pass with the least work per frame: references to the arrays are collected and
    # concatenated column by column at the end; labels come straight from the results
    # dict of the calculator (what get_potential_energy() etc. would return, minus a copy)
    for index, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise TypeError(f'frame {index}: expected ase.Atoms, got {type(atoms).__name__}')
        arrays = atoms.arrays
        info = atoms.info
        numbers.append(arrays['numbers'])
        positions.append(arrays['positions'])
        cells.append(atoms.cell.array)
        pbcs.append(atoms.pbc)
        calc = atoms.calc
        results = _NO_RESULTS if calc is None else getattr(calc, 'results', None) or _NO_RESULTS
        energies.append(info.get(energy_key) if energy_key else results.get('energy'))
        forces.append(arrays.get(forces_key) if forces_key else results.get('forces'))
        stresses.append(info.get(stress_key) if stress_key else results.get('stress'))
        for key, value in info.items():
            if key not in label_info_keys:
                column = info_columns.get(key)
                if column is None:
                    column = info_columns[key] = {}
                column[index] = value
        if len(arrays) > 2:
            for key, value in arrays.items():
                if key not in skip_arrays:
                    extra_columns.setdefault(key, {})[index] = value
    return accumulator.finish()


def columns_from_frames(records: Iterable[Mapping[str, Any]]) -> Columns:
    """Stack frame dictionaries into :class:`Columns`.

    A frame dictionary has ``numbers``, ``positions``, optional ``cell`` (default
    zeros), ``pbc`` (default False), labels ``energy``, ``forces``, ``stress``
    (``None`` or absent = not labelled), and optional ``info`` (metadata) and
    ``arrays`` (extra per-atom columns).
    """
    accumulator = _Accumulator()
    for index, record in enumerate(records):
        unknown = set(record) - FRAME_KEYS
        if unknown:
            raise ValueError(
                f'frame {index}: unknown keys {sorted(unknown)}; allowed {sorted(FRAME_KEYS)}'
            )
        accumulator.add(
            np.asarray(record['numbers']).reshape(-1),
            np.asarray(record['positions'], dtype=float),
            record.get('cell', np.zeros((3, 3))),
            record.get('pbc', False),
            record.get('energy'),
            record.get('forces'),
            record.get('stress'),
            record.get('info') or {},
            record.get('arrays') or {},
        )
    return accumulator.finish()


def _empty_structure(columns: Columns) -> Columns:
    columns.atom['numbers'] = np.zeros(0, dtype=np.int64)
    columns.atom['positions'] = np.zeros((0, 3))
    columns.frame['cell'] = np.zeros((0, 3, 3))
    columns.frame['pbc'] = np.zeros((0, 3), dtype=bool)
    return columns


def _check_not_reserved(key: str, where: str) -> None:
    if key in STRUCTURE_COLUMNS or key in LABEL_COLUMNS:
        raise ValueError(
            f'{where} key {key!r} clashes with a reserved column; name the label keys '
            '(energy_key/forces_key/stress_key) or rename it'
        )
    if where == 'info' and key.startswith(JSON_PREFIX):
        raise ValueError(
            f'info key {key!r} starts with {JSON_PREFIX!r}, which marks the columns of '
            'JSON-stored dicts and lists; rename it'
        )


def _add_json_column(columns: Columns, key: str, values: dict[int, Any]) -> None:
    """Store the dict and list values of ``info[key]`` as JSON text in their own column.

    The column is named with :data:`JSON_PREFIX` so that reading decodes it; frames whose
    ``info[key]`` is a scalar or an array keep it in the ordinary column ``key``.
    """
    text = np.full(columns.n_frames, '', dtype=object)
    mask = np.zeros(columns.n_frames, dtype=bool)
    for index, value in values.items():
        text[index] = encode_json_value(key, value, f'frame {index}')
        mask[index] = True
    name = json_column(key)
    columns.frame[name] = text
    if not mask.all():
        columns.present[name] = mask


def _info_item(name: str, value: Any) -> tuple[str, Any]:
    """The ``info`` key and value of a metadata column's entry (JSON columns decoded)."""
    if name.startswith(JSON_PREFIX):
        return name[len(JSON_PREFIX) :], decode_json_value(value)
    return name, value.item() if isinstance(value, np.generic) else value


def _energy(value: Any, where: str) -> float | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=float)
    if array.size != 1:
        raise ValueError(f'{where}: energy must be a scalar, got shape {array.shape}')
    return float(array.reshape(()))


def _add_labels(columns: Columns, labels: dict[str, list[Any]]) -> None:
    n_frames = columns.n_frames
    energies = labels['energy']
    energy_mask = _not_none(energies)
    if energy_mask.any():
        values = np.full(n_frames, np.nan)
        chosen = energies if energy_mask.all() else [e for e in energies if e is not None]
        try:  # floats and numpy scalars: one conversion; anything else is checked frame by frame
            stacked = np.array(chosen, dtype=float)
        except (TypeError, ValueError):
            stacked = None
        if stacked is not None and stacked.shape == (len(chosen),):
            values[energy_mask] = stacked
        else:
            for index in np.flatnonzero(energy_mask):
                values[index] = _energy(energies[index], f'frame {index}')
        columns.frame['energy'] = values
        if not energy_mask.all():
            columns.present['energy'] = energy_mask
    stresses = labels['stress']
    stress_mask = _not_none(stresses)
    if stress_mask.any():
        values = np.full((n_frames, 6), np.nan)
        chosen = stresses if stress_mask.all() else [s for s in stresses if s is not None]
        try:
            stacked = np.array(chosen, dtype=float)
        except (TypeError, ValueError):
            stacked = None
        if stacked is not None and stacked.shape == (len(chosen), 6):
            values[stress_mask] = stacked
        else:
            for index in np.flatnonzero(stress_mask):
                values[index] = voigt_stress(stresses[index], f'frame {index}')
        columns.frame['stress'] = values
        if not stress_mask.all():
            columns.present['stress'] = stress_mask
    forces = labels['forces']
    forces_mask = _not_none(forces)
    if forces_mask.any():
        columns.atom['forces'] = _stack_forces(forces, forces_mask, columns.n_atoms)
        if not forces_mask.all():
            columns.present['forces'] = forces_mask


def _not_none(values: list[Any]) -> np.ndarray:
    """Mask of the entries that are not None (a C-level map, no per-item Python frame)."""
    return np.fromiter(map(is_not, values, repeat(None)), dtype=bool, count=len(values))


def _stack_forces(forces: list[Any], mask: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """Per-atom forces of every frame, NaN for the atoms of frames without forces."""
    chosen = forces if mask.all() else [f for f in forces if f is not None]
    try:
        lengths = np.fromiter(map(len, chosen), dtype=np.int64, count=len(chosen))
        stacked = np.concatenate(chosen).astype(float, copy=False)
    except (TypeError, ValueError):
        lengths, stacked = None, None
    if (
        stacked is None
        or stacked.ndim != 2
        or stacked.shape[1] != 3
        or not np.array_equal(lengths, n_atoms[mask])
    ):
        for index in np.flatnonzero(mask):
            shape = np.shape(forces[index])
            n = n_atoms[index]
            if shape != (n, 3):
                raise ValueError(f'frame {index}: forces must have shape ({n}, 3), got {shape}')
        parts = [
            f if f is not None else np.full((n, 3), np.nan)
            for f, n in zip(forces, n_atoms, strict=True)
        ]
        return np.concatenate(parts).astype(float, copy=False)
    if mask.all():
        return stacked
    out = np.full((int(n_atoms.sum()), 3), np.nan)
    frame_of_atom = np.repeat(mask, n_atoms)
    out[frame_of_atom] = stacked
    return out


def _add_extra_atom_column(columns: Columns, key: str, values: dict[int, np.ndarray]) -> None:
    sample = next(iter(values.values()))
    trailing = sample.shape[1:]
    if any(v.shape[1:] != trailing for v in values.values()):
        raise ValueError(f'per-atom array {key!r} has differing trailing shapes across frames')
    dtype = np.result_type(*values.values())
    parts = []
    for index, n in enumerate(columns.n_atoms):
        if index in values:
            parts.append(values[index].astype(dtype, copy=False))
        else:
            fill = np.nan if dtype.kind == 'f' else 0
            parts.append(np.full((n, *trailing), fill, dtype=dtype))
    columns.atom[key] = np.concatenate(parts)
    if len(values) != columns.n_frames:
        mask = np.zeros(columns.n_frames, dtype=bool)
        mask[list(values)] = True
        columns.present[key] = mask


def atoms_from_columns(
    columns: Columns, label_keys: Mapping[str, str] | None = None
) -> list[Atoms]:
    """Build ``ase.Atoms`` from :class:`Columns` (with the garbage collector paused)."""
    with _gc_paused():
        return _atoms_from_columns(columns, label_keys)


def _atoms_from_columns(
    columns: Columns, label_keys: Mapping[str, str] | None = None
) -> list[Atoms]:
    """Build ``ase.Atoms`` from :class:`Columns`.

    Labels are attached as a ``SinglePointCalculator`` (the ASE idiom) unless
    ``label_keys`` maps label names to ``info``/``arrays`` keys instead (as MACE's
    ``REF_energy`` convention wants). Missing labels are not attached at all.
    """
    offsets = columns.offsets
    frame_items = [
        (k, v, columns.mask(k)) for k, v in columns.frame.items() if k not in ('cell', 'pbc')
    ]
    atom_items = [
        (k, v, columns.mask(k))
        for k, v in columns.atom.items()
        if k not in ('numbers', 'positions')
    ]
    numbers, positions = columns.atom['numbers'], columns.atom['positions']
    cells, pbcs = columns.frame['cell'], columns.frame['pbc']
    label_keys = dict(label_keys or {})
    out: list[Atoms] = []
    for i in range(columns.n_frames):
        start, stop = offsets[i], offsets[i + 1]
        atoms = Atoms(
            numbers=numbers[start:stop], positions=positions[start:stop], cell=cells[i], pbc=pbcs[i]
        )
        results: dict[str, Any] = {}
        for key, values, mask in frame_items:
            if not mask[i]:
                continue
            value = values[i]
            if key in LABEL_COLUMNS:
                results[key] = float(value) if key == 'energy' else np.array(value)
            else:
                name, value = _info_item(key, value)
                atoms.info[name] = value
        for key, values, mask in atom_items:
            if not mask[i]:
                continue
            if key in LABEL_COLUMNS:
                results[key] = np.array(values[start:stop])
            else:
                atoms.arrays[key] = np.array(values[start:stop])
        _attach_labels(atoms, results, label_keys)
        out.append(atoms)
    return out


def _attach_labels(atoms: Atoms, results: dict[str, Any], label_keys: dict[str, str]) -> None:
    if not results:
        return
    if not label_keys:
        atoms.calc = SinglePointCalculator(atoms, **results)
        return
    for name, value in results.items():
        key = label_keys.get(name, name)
        if name == 'forces':
            atoms.arrays[key] = value
        else:
            atoms.info[key] = value


def frame_records(columns: Columns) -> Sequence[dict[str, Any]]:
    """Frame dictionaries (the inverse of :func:`columns_from_frames`)."""
    offsets = columns.offsets
    records = []
    for i in range(columns.n_frames):
        start, stop = offsets[i], offsets[i + 1]
        record: dict[str, Any] = {'info': {}, 'arrays': {}}
        for key, values in columns.frame.items():
            if columns.mask(key)[i]:
                if key in STRUCTURE_COLUMNS or key in LABEL_COLUMNS:
                    record[key] = values[i]
                elif key.startswith(JSON_PREFIX):
                    name, value = _info_item(key, values[i])
                    record['info'][name] = value
                else:
                    record['info'][key] = values[i]
        for key, values in columns.atom.items():
            if columns.mask(key)[i]:
                target = (
                    record if key in STRUCTURE_COLUMNS or key in LABEL_COLUMNS else record['arrays']
                )
                target[key] = values[start:stop]
        records.append(record)
    return records


#: Where MACE (``--energy_key`` etc.) and metatrain (``read_from``/``key``) read labels.
REFERENCE_LABEL_KEYS = {'energy': 'REF_energy', 'forces': 'REF_forces', 'stress': 'REF_stress'}


def write_extxyz_frame(handle: Any, atoms: Atoms) -> None:
    """Append ``atoms`` to an open extended-XYZ file, leaving out ``info`` values that are ''.

    ASE writes an empty string as ``key=`` and its reader then takes the next ``key=value``
    pair for that value: an isolated atom's empty ``parent_id`` swallowed its ``split`` (or,
    where no split followed, its ``REF_energy``) on the way to a training code or a user. A
    missing key reads back as missing metadata, which is what an empty one meant.
    """
    from ase.io import write

    empty = [key for key, value in atoms.info.items() if isinstance(value, str) and not value]
    removed = {key: atoms.info.pop(key) for key in empty}  # not a copy: it would drop the labels
    try:
        write(handle, atoms, format='extxyz')
    finally:
        atoms.info.update(removed)


def write_labelled_extxyz(
    frames: Iterable[Atoms],
    target: str | Any,
    label_keys: Mapping[str, str] = REFERENCE_LABEL_KEYS,
) -> int:
    """Write ``frames`` as extended XYZ with their labels under ``label_keys``; return the count.

    Training codes read labels from named ``info``/``arrays`` keys, not from a calculator
    (whose keys ASE's writer fixes to ``energy``/``forces``/``stress``), so each frame's
    labels move there: from its calculator (a single-point result or a live one such as EMT,
    which is then evaluated) or from keys already named ``label_keys``. Stress is written as
    a 3x3 matrix (eV/Å³, ASE sign), which both MACE and metatrain read. A label a frame does
    not have is left out, never written as zero; ``info``/``arrays`` metadata is kept.
    """
    count = 0
    is_path = isinstance(target, (str, Path))
    with open(target, 'w') if is_path else contextlib.nullcontext(target) as handle:
        for atoms in frames:
            write_extxyz_frame(handle, _with_labels_under_keys(atoms, label_keys))
            count += 1
    return count


def _with_labels_under_keys(atoms: Atoms, label_keys: Mapping[str, str]) -> Atoms:
    """A calculator-free copy of ``atoms`` with its labels under ``label_keys``."""
    from ase.calculators.calculator import PropertyNotImplementedError

    out = atoms.copy()  # drops the calculator, keeps info and arrays
    for name, key in label_keys.items():
        value = out.arrays.get(key) if name == 'forces' else out.info.get(key)
        if value is None and atoms.calc is not None:
            try:
                value = atoms.calc.get_property(name, atoms)
            except PropertyNotImplementedError:  # a single-point result without this label
                value = None
        if value is None:
            continue
        if name == 'forces':
            out.arrays[key] = np.asarray(value, dtype=float)
        elif name == 'stress':
            out.info[key] = full_stress(voigt_stress(value, f'stress {key!r}'))
        else:
            out.info[key] = float(value)
    return out
