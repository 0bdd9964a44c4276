"""Conversions between ``ase.Atoms``, frame dictionaries and :class:`Columns` (no AiiDA)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from .columns import (
    LABEL_COLUMNS,
    STRUCTURE_COLUMNS,
    Columns,
    build_column,
    normalise_metadata_value,
)

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
        columns.frame['pbc'] = np.array(
            [np.broadcast_to(np.asarray(p, dtype=bool), (3,)) for p in self.pbcs], dtype=bool
        ).reshape(n_frames, 3)
        _add_labels(columns, self.labels)
        for key, values in self.info.items():
            _check_not_reserved(key, 'info')
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
    except ValueError:
        stacked = None
    if stacked is None or stacked.shape != (int(n_atoms.sum()), 3):
        for index, (part, n) in enumerate(zip(parts, n_atoms, strict=True)):
            shape = np.shape(part)
            if shape != (n, 3):
                raise ValueError(f'frame {index}: {name} must have shape ({n}, 3), got {shape}')
    return stacked


def _stack_cells(cells: list[Any]) -> np.ndarray:
    try:
        return np.array(cells, dtype=float).reshape(len(cells), 3, 3)
    except ValueError:
        for index, cell in enumerate(cells):
            if np.size(cell) != 9:
                raise ValueError(
                    f'frame {index}: cell must be 3x3, got shape {np.shape(cell)}'
                ) from None
        raise


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
    for position, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise TypeError(f'frame {position}: expected ase.Atoms, got {type(atoms).__name__}')
        results = getattr(atoms.calc, 'results', None) or {}
        arrays = atoms.arrays
        info = atoms.info
        if label_info_keys:
            info = {k: v for k, v in info.items() if k not in label_info_keys}
        accumulator.add(
            arrays['numbers'],
            arrays['positions'],
            atoms.cell.array,
            atoms.pbc,
            atoms.info.get(energy_key) if energy_key else results.get('energy'),
            arrays.get(forces_key) if forces_key else results.get('forces'),
            atoms.info.get(stress_key) if stress_key else results.get('stress'),
            info,
            {k: v for k, v in arrays.items() if k not in skip_arrays} if len(arrays) > 2 else {},
        )
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
    energy_mask = np.fromiter((e is not None for e in energies), dtype=bool, count=n_frames)
    if energy_mask.any():
        values = np.full(n_frames, np.nan)
        for index in np.flatnonzero(energy_mask):
            values[index] = _energy(energies[index], f'frame {index}')
        columns.frame['energy'] = values
        if not energy_mask.all():
            columns.present['energy'] = energy_mask
    stresses = labels['stress']
    stress_mask = np.fromiter((s is not None for s in stresses), dtype=bool, count=n_frames)
    if stress_mask.any():
        values = np.full((n_frames, 6), np.nan)
        chosen = [stresses[i] for i in np.flatnonzero(stress_mask)]
        try:
            values[stress_mask] = np.array(chosen, dtype=float).reshape(len(chosen), 6)
        except ValueError:
            for index in np.flatnonzero(stress_mask):
                values[index] = voigt_stress(stresses[index], f'frame {index}')
        columns.frame['stress'] = values
        if not stress_mask.all():
            columns.present['stress'] = stress_mask
    forces = labels['forces']
    forces_mask = np.fromiter((f is not None for f in forces), dtype=bool, count=n_frames)
    if forces_mask.any():
        for index in np.flatnonzero(forces_mask):
            shape = np.shape(forces[index])
            n = columns.n_atoms[index]
            if shape != (n, 3):
                raise ValueError(f'frame {index}: forces must have shape ({n}, 3), got {shape}')
        parts = [
            f if f is not None else np.full((n, 3), np.nan)
            for f, n in zip(forces, columns.n_atoms, strict=True)
        ]
        columns.atom['forces'] = np.concatenate(parts).astype(float, copy=False)
        if not forces_mask.all():
            columns.present['forces'] = forces_mask


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
                atoms.info[key] = value.item() if isinstance(value, np.generic) else value
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
                target = (
                    record if key in STRUCTURE_COLUMNS or key in LABEL_COLUMNS else record['info']
                )
                target[key] = values[i]
        for key, values in columns.atom.items():
            if columns.mask(key)[i]:
                target = (
                    record if key in STRUCTURE_COLUMNS or key in LABEL_COLUMNS else record['arrays']
                )
                target[key] = values[start:stop]
        records.append(record)
    return records
