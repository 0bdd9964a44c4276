"""Vectorised sanity checks of a batch of frames (no AiiDA import).

Every check works on whole columns at once: a dataset of 100 000 frames is
validated in about a second, where one ``ase.neighborlist`` call per frame would
take minutes. Problems are reported with the index of the frame they concern.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from .columns import LABEL_COLUMNS, Columns

#: Atoms closer than this (Å) are "on top of each other": an input error.
MIN_DISTANCE = 0.1
MAX_ATOMIC_NUMBER = 118
_MAX_REPORTED = 10
_OVERLAP_BLOCK = 20000


class FrameValidationError(ValueError):
    """A batch of frames holds values a dataset must not store."""


def validate_columns(
    columns: Columns, min_distance: float = MIN_DISTANCE, frame_numbers: Any = None
) -> None:
    """Raise :class:`FrameValidationError` naming every bad frame (first ten shown).

    ``frame_numbers[i]`` is the number the message gives frame ``i`` (default ``i``).
    """
    if columns.n_frames == 0:
        return
    problems: list[tuple[int, str]] = []
    problems += _check_elements(columns)
    problems += _check_finite(columns)
    problems += _check_periodic_cell(columns)
    if not problems and min_distance > 0:
        # frames never interact: check them in blocks to bound the temporary memory
        offsets = columns.offsets
        for start in range(0, columns.n_frames, _OVERLAP_BLOCK):
            block = np.arange(start, min(start + _OVERLAP_BLOCK, columns.n_frames))
            part = Columns(
                n_atoms=columns.n_atoms[block],
                frame={k: columns.frame[k][block] for k in ('cell', 'pbc')},
                atom={
                    'positions': columns.atom['positions'][
                        offsets[block[0]] : offsets[block[-1] + 1]
                    ]
                },
            )
            problems += [(start + i, message) for i, message in _check_overlaps(part, min_distance)]
    if problems:
        problems.sort()
        number = (lambda i: i) if frame_numbers is None else (lambda i: int(frame_numbers[i]))
        shown = '; '.join(
            f'frame {number(i)}: {message}' for i, message in problems[:_MAX_REPORTED]
        )
        more = len(problems) - _MAX_REPORTED
        suffix = f' (and {more} more problems)' if more > 0 else ''
        raise FrameValidationError(f'invalid frames: {shown}{suffix}')


def _frame_of_atom(columns: Columns) -> np.ndarray:
    return np.repeat(np.arange(columns.n_frames), columns.n_atoms)


def _check_elements(columns: Columns) -> list[tuple[int, str]]:
    numbers = columns.atom['numbers']
    bad = (numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)
    if not bad.any():
        return []
    frames = _frame_of_atom(columns)[bad]
    return [
        (int(f), f'unknown element with atomic number {int(z)}')
        for f, z in zip(frames, numbers[bad], strict=True)
    ]


def _check_finite(columns: Columns) -> list[tuple[int, str]]:
    problems = []
    frame_of_atom = None
    for name in ('positions', 'cell', *LABEL_COLUMNS):
        if name in columns.frame:
            values, per_atom = columns.frame[name], False
        elif name in columns.atom:
            values, per_atom = columns.atom[name], True
        else:
            continue
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if per_atom:
            if frame_of_atom is None:
                frame_of_atom = _frame_of_atom(columns)
            bad_frames = np.unique(frame_of_atom[~finite])
        else:
            bad_frames = np.flatnonzero(~finite)
        mask = columns.mask(name)
        problems += [(int(f), f'non-finite {name}') for f in bad_frames if mask[f]]
    return problems


def _check_periodic_cell(columns: Columns) -> list[tuple[int, str]]:
    lengths = np.linalg.norm(columns.frame['cell'], axis=2)
    bad = columns.frame['pbc'] & (lengths < 1e-6)
    return [
        (int(f), f'axis {int(a)} is periodic but its cell vector has zero length')
        for f, a in zip(*np.nonzero(bad), strict=True)
    ]


def _perpendicular_widths(cells: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of each cell, per axis (inf where degenerate)."""
    volume = np.abs(np.linalg.det(cells))
    widths = np.full((len(cells), 3), np.inf)
    for axis in range(3):
        other = np.cross(cells[:, (axis + 1) % 3], cells[:, (axis + 2) % 3])
        area = np.linalg.norm(other, axis=1)
        ok = area > 1e-12
        widths[ok, axis] = volume[ok] / area[ok]
    return widths


def _check_overlaps(columns: Columns, min_distance: float) -> list[tuple[int, str]]:
    """Find atom pairs closer than ``min_distance``, periodic images included.

    All frames go into one k-d tree, each shifted far from the others. Periodic
    frames are wrapped into their cell and the few atoms within ``min_distance`` of
    a face get a ghost copy across it, so one ``query_pairs`` sees every image pair.
    """
    if columns.n_frames == 0:
        return []
    frame_of_atom = _frame_of_atom(columns)
    positions = columns.atom['positions']
    pbc = columns.frame['pbc']
    cells = _completed_cells(columns.frame['cell'], pbc)
    periodic_frames = pbc.any(axis=1) & (np.abs(np.linalg.det(cells)) > 1e-12)
    atom_periodic = periodic_frames[frame_of_atom]
    points = positions.copy()
    points_frame = frame_of_atom
    points_atom = np.arange(len(positions))
    if atom_periodic.any():
        sel = np.flatnonzero(atom_periodic)
        frame_of_sel = frame_of_atom[sel]
        inverse = np.zeros_like(cells)
        inverse[periodic_frames] = np.linalg.inv(cells[periodic_frames])
        frac = np.einsum('ni,nij->nj', positions[sel], inverse[frame_of_sel])
        sel_pbc = pbc[frame_of_sel]
        frac = np.where(sel_pbc, frac % 1.0, frac)
        points[sel] = np.einsum('ni,nij->nj', frac, cells[frame_of_sel])
        margin = min_distance / _perpendicular_widths(cells)[frame_of_sel]
        ghost_points, ghost_atoms = [], []
        for shift, keep in _ghost_shifts(frac, margin, sel_pbc):
            chosen = sel[keep]
            offset = np.einsum(
                'i,nij->nj', np.array(shift, dtype=float), cells[frame_of_atom[chosen]]
            )
            ghost_points.append(points[chosen] + offset)
            ghost_atoms.append(chosen)
        if ghost_points:
            points = np.concatenate([points, *ghost_points])
            points_atom = np.concatenate([points_atom, *ghost_atoms])
            points_frame = frame_of_atom[points_atom]
    # place frames side by side along x, far enough apart never to interact
    lo = np.full(columns.n_frames, np.inf)
    hi = np.full(columns.n_frames, -np.inf)
    np.minimum.at(lo, points_frame, points[:, 0])
    np.maximum.at(hi, points_frame, points[:, 0])
    width = np.where(np.isfinite(hi - lo), hi - lo, 0.0) + 10 * min_distance + 1.0
    start = np.concatenate([[0.0], np.cumsum(width)[:-1]])
    shifted = points.copy()
    shifted[:, 0] += (start - lo)[points_frame]
    tree = cKDTree(shifted, balanced_tree=False, compact_nodes=False)
    pairs = tree.query_pairs(min_distance, output_type='ndarray')
    problems = {}
    offsets = columns.offsets
    for p, q in pairs:
        frame = int(points_frame[p])
        i, j = sorted((int(points_atom[p] - offsets[frame]), int(points_atom[q] - offsets[frame])))
        distance = float(np.linalg.norm(shifted[p] - shifted[q]))
        problems.setdefault((frame, i, j), distance)
    return [
        (frame, f'atoms {i} and {j} are {d:.3f} Å apart (closer than {min_distance} Å)')
        for (frame, i, j), d in sorted(problems.items())
    ]


def _completed_cells(cells: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Replace zero-length non-periodic cell vectors by unit vectors normal to the others.

    A slab or wire stored without vacuum has such a vector; completing the cell lets
    the periodic axes be wrapped and their images checked.
    """
    zero = ~pbc & (np.linalg.norm(cells, axis=2) < 1e-6)
    todo = np.flatnonzero(zero.any(axis=1) & pbc.any(axis=1))
    if todo.size == 0:
        return cells
    cells = cells.copy()
    for pattern in np.unique(zero[todo], axis=0):
        frames = todo[(zero[todo] == pattern).all(axis=1)]
        basis = np.linalg.svd(cells[frames][:, ~pattern])[2]  # rows: span, then complement
        cells[np.ix_(frames, np.flatnonzero(pattern))] = basis[:, (~pattern).sum() :]
    return cells


def _ghost_shifts(frac: np.ndarray, margin: np.ndarray, pbc: np.ndarray):
    """Yield (shift, mask) for the 26 image shifts of atoms near the matching faces."""
    near_low = pbc & (frac < margin)
    near_high = pbc & (frac > 1.0 - margin)
    for shift in itertools.product((-1, 0, 1), repeat=3):
        if shift == (0, 0, 0):
            continue
        keep = np.ones(len(frac), dtype=bool)
        for axis, s in enumerate(shift):
            if s == 1:
                keep &= near_low[:, axis]
            elif s == -1:
                keep &= near_high[:, axis]
        if keep.any():
            yield shift, keep
