"""Conversions between ``ase.Atoms``, frame dictionaries and :class:`Columns` (no AiiDA)."""

from __future__ import annotations

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


def frames_from_atoms(
    frames: Iterable[Atoms],
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield frame dictionaries from ``ase.Atoms``.

    Labels come from ``atoms.info[energy_key]``, ``atoms.arrays[forces_key]`` and
    ``atoms.info[stress_key]`` when those keys are given, otherwise from the results of
    an attached calculator (e.g. a ``SinglePointCalculator``). Other ``info`` entries
    become metadata columns and other per-atom ``arrays`` become per-atom columns.
    """
    label_info_keys = {energy_key, stress_key} - {None}
    for atoms in frames:
        if not isinstance(atoms, Atoms):
            raise TypeError(f'expected ase.Atoms, got {type(atoms).__name__}')
        results = getattr(atoms.calc, 'results', None) or {}
        arrays = atoms.arrays
        record = {
            'numbers': arrays['numbers'],
            'positions': arrays['positions'],
            'cell': atoms.cell.array,
            'pbc': atoms.pbc,
            'energy': atoms.info.get(energy_key) if energy_key else results.get('energy'),
            'forces': arrays.get(forces_key) if forces_key else results.get('forces'),
            'stress': atoms.info.get(stress_key) if stress_key else results.get('stress'),
            'info': {k: v for k, v in atoms.info.items() if k not in label_info_keys},
            'arrays': {
                k: v for k, v in arrays.items() if k not in ('numbers', 'positions', forces_key)
            },
        }
        yield record


def columns_from_frames(records: Iterable[Mapping[str, Any]]) -> Columns:
    """Stack frame dictionaries into :class:`Columns`.

    A frame dictionary has ``numbers``, ``positions``, optional ``cell`` (default
    zeros), ``pbc`` (default False), labels ``energy``, ``forces``, ``stress``
    (``None`` or absent = not labelled), and optional ``info`` (metadata) and
    ``arrays`` (extra per-atom columns).
    """
    numbers: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    cells: list[np.ndarray] = []
    pbcs: list[np.ndarray] = []
    labels: dict[str, list[Any]] = {name: [] for name in LABEL_COLUMNS}
    info: dict[str, dict[int, Any]] = {}
    extra: dict[str, dict[int, np.ndarray]] = {}
    for index, record in enumerate(records):
        where = f'frame {index}'
        unknown = set(record) - FRAME_KEYS
        if unknown:
            raise ValueError(
                f'{where}: unknown keys {sorted(unknown)}; allowed {sorted(FRAME_KEYS)}'
            )
        frame_numbers = np.asarray(record['numbers']).reshape(-1)
        n = frame_numbers.shape[0]
        if n == 0:
            raise ValueError(f'{where}: a frame must hold at least one atom')
        frame_positions = np.asarray(record['positions'], dtype=float)
        if frame_positions.shape != (n, 3):
            raise ValueError(
                f'{where}: positions must have shape ({n}, 3), got {frame_positions.shape}'
            )
        numbers.append(frame_numbers)
        positions.append(frame_positions)
        cells.append(np.asarray(record.get('cell', np.zeros((3, 3))), dtype=float).reshape(3, 3))
        pbcs.append(np.broadcast_to(np.asarray(record.get('pbc', False), dtype=bool), (3,)))
        labels['energy'].append(_energy(record.get('energy'), where))
        labels['forces'].append(_forces(record.get('forces'), n, where))
        stress = record.get('stress')
        labels['stress'].append(None if stress is None else voigt_stress(stress, where))
        for key, value in (record.get('info') or {}).items():
            info.setdefault(key, {})[index] = normalise_metadata_value(key, value, where)
        for key, value in (record.get('arrays') or {}).items():
            array = np.asarray(value)
            if array.shape[:1] != (n,):
                raise ValueError(
                    f'{where}: per-atom array {key!r} has {array.shape[:1]} rows, not {n}'
                )
            extra.setdefault(key, {})[index] = array
    n_frames = len(numbers)
    n_atoms = np.fromiter((len(x) for x in numbers), dtype=np.int64, count=n_frames)
    columns = Columns(n_atoms=n_atoms)
    if n_frames == 0:
        return _empty_structure(columns)
    columns.atom['numbers'] = np.concatenate(numbers).astype(np.int64)
    columns.atom['positions'] = np.concatenate(positions)
    columns.frame['cell'] = np.stack(cells)
    columns.frame['pbc'] = np.stack(pbcs)
    _add_labels(columns, labels)
    for key, values in info.items():
        _check_not_reserved(key, 'info')
        array, mask = build_column(key, [values.get(i) for i in range(n_frames)], f'info[{key!r}]')
        columns.frame[key] = array
        if not mask.all():
            columns.present[key] = mask
    for key, values in extra.items():
        _check_not_reserved(key, 'arrays')
        _add_extra_atom_column(columns, key, values)
    return columns


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


def _forces(value: Any, n_atoms: int, where: str) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=float)
    if array.shape != (n_atoms, 3):
        raise ValueError(f'{where}: forces must have shape ({n_atoms}, 3), got {array.shape}')
    return array


def _add_labels(columns: Columns, labels: dict[str, list[Any]]) -> None:
    n_frames = columns.n_frames
    energy_mask = np.array([e is not None for e in labels['energy']], dtype=bool)
    if energy_mask.any():
        energies = np.full(n_frames, np.nan)
        energies[energy_mask] = [e for e in labels['energy'] if e is not None]
        columns.frame['energy'] = energies
        if not energy_mask.all():
            columns.present['energy'] = energy_mask
    stress_mask = np.array([s is not None for s in labels['stress']], dtype=bool)
    if stress_mask.any():
        stresses = np.full((n_frames, 6), np.nan)
        stresses[stress_mask] = np.stack([s for s in labels['stress'] if s is not None])
        columns.frame['stress'] = stresses
        if not stress_mask.all():
            columns.present['stress'] = stress_mask
    forces_mask = np.array([f is not None for f in labels['forces']], dtype=bool)
    if forces_mask.any():
        if forces_mask.all():
            columns.atom['forces'] = np.concatenate(labels['forces'])
        else:
            columns.atom['forces'] = np.concatenate(
                [
                    f if f is not None else np.full((n, 3), np.nan)
                    for f, n in zip(labels['forces'], columns.n_atoms, strict=True)
                ]
            )
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
