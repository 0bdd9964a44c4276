"""Cell and neighbour geometry shared by the augmentations.

Everything here works for any cell shape (skewed, mixed periodicity, zero-length vectors on
non-periodic axes) because the inputs of a training set come from anywhere: bulk crystals,
slabs built by other codes, molecules without a cell.  All lengths are in Å.
"""

from __future__ import annotations

import itertools

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

#: Below this length (Å) a cell vector counts as absent.
ZERO_LENGTH = 1e-8

#: First neighbour search radius (Å); nearly every bond is shorter, so most frames need one pass.
_FIRST_CUTOFF = 3.0

__all__ = [
    'ZERO_LENGTH',
    'check_cell',
    'clean_copy',
    'complete_cell',
    'minimum_distance',
    'nearest_neighbour_distances',
    'pad_vacuum',
    'periodic_basis',
    'periodic_widths',
    'perpendicular_widths',
    'unit_normals',
]


def clean_copy(atoms: Atoms) -> Atoms:
    """Return a new frame with only species, positions, cell and pbc.

    Augmented frames must not inherit labels (energies, forces, calculators) or the parent's
    metadata, which would otherwise masquerade as properties of the new geometry.
    """
    return Atoms(
        numbers=np.array(atoms.numbers, copy=True),
        positions=np.array(atoms.positions, dtype=float, copy=True),
        cell=np.array(atoms.cell.array, dtype=float, copy=True),
        pbc=np.array(atoms.pbc, dtype=bool, copy=True),
    )


def check_cell(atoms: Atoms, label: str = 'frame') -> None:
    """Raise ValueError when a periodic axis has no usable cell vector.

    A periodic direction without a lattice vector has no physical meaning and would make every
    later step (supercells, strain, neighbour search) silently wrong.
    """
    cell = np.asarray(atoms.cell.array, dtype=float)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    lengths = np.linalg.norm(cell, axis=1)
    for axis in np.flatnonzero(pbc):
        if lengths[axis] < ZERO_LENGTH:
            raise ValueError(f'{label}: periodic axis {axis} has a zero-length cell vector')
    periodic = cell[pbc]
    if len(periodic) and np.linalg.matrix_rank(periodic, tol=1e-6) < len(periodic):
        raise ValueError(f'{label}: the periodic cell vectors are linearly dependent')


def complete_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Return a full-rank cell, replacing zero-length non-periodic vectors by unit vectors.

    Molecules and slabs often come without a vector on their vacuum axes; the replacement is
    orthogonal to the vectors already present (and is the Cartesian axis when possible), so the
    periodic lattice and the meaning of each axis are preserved.
    """
    cell = np.array(cell, dtype=float, copy=True)
    lengths = np.linalg.norm(cell, axis=1)
    missing = [axis for axis in range(3) if lengths[axis] < ZERO_LENGTH and not pbc[axis]]
    for axis in missing:
        present = [row for i, row in enumerate(cell) if np.linalg.norm(row) >= ZERO_LENGTH]
        cell[axis] = _orthogonal_unit_vector(np.array(present).reshape(-1, 3), preferred=axis)
    if abs(np.linalg.det(cell)) < 1e-10:
        raise ValueError('cell is singular: the cell vectors do not span three dimensions')
    return cell


def _orthogonal_unit_vector(vectors: np.ndarray, preferred: int) -> np.ndarray:
    """Unit vector orthogonal to ``vectors``, the Cartesian axis ``preferred`` if it qualifies."""
    candidates = np.eye(3)
    candidates = np.vstack([candidates[preferred], candidates])
    if len(vectors) == 0:
        return candidates[0]
    basis, _ = np.linalg.qr(vectors.T)
    residuals = candidates - (candidates @ basis) @ basis.T
    norms = np.linalg.norm(residuals, axis=1)
    # Prefer the requested Cartesian axis whenever it is (almost) orthogonal already.
    best = 0 if norms[0] > 1 - 1e-9 else int(np.argmax(norms))
    return residuals[best] / norms[best]


def _reciprocal(cell: np.ndarray) -> np.ndarray:
    """Rows b_i with b_i . a_j = delta_ij: b_i is normal to a_j and a_k, |b_i| = 1 / width_i."""
    return np.linalg.inv(np.asarray(cell, dtype=float)).T


def unit_normals(cell: np.ndarray) -> np.ndarray:
    """Unit normal of the plane spanned by the other two vectors, oriented like each vector."""
    reciprocal = _reciprocal(cell)
    return reciprocal / np.linalg.norm(reciprocal, axis=1)[:, None]


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of the cell: volume / area of the other two vectors.

    This, not the vector length, is what bounds the distance to a periodic image in a skewed
    cell, so it is the quantity to compare against minimum-image or vacuum requirements.
    """
    return 1.0 / np.linalg.norm(_reciprocal(cell), axis=1)


def periodic_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Orthonormal basis (rows) of the space spanned by the periodic cell vectors."""
    periodic = np.asarray(cell, dtype=float)[np.asarray(pbc, dtype=bool)]
    if len(periodic) == 0:
        return np.zeros((0, 3))
    basis, _ = np.linalg.qr(periodic.T)
    return basis.T


def periodic_widths(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Perpendicular widths of the periodic lattice alone; ``inf`` on non-periodic axes.

    The non-periodic vectors are replaced by an orthonormal complement of the periodic space,
    so that, e.g., the in-plane width of a slab does not depend on how its vacuum vector leans.
    """
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.asarray(cell, dtype=float)
    basis = periodic_basis(cell, pbc)
    full = np.zeros((3, 3))
    full[pbc] = cell[pbc]
    complement = np.linalg.svd(basis)[2][len(basis) :] if len(basis) else np.eye(3)
    full[~pbc] = complement
    widths = perpendicular_widths(full)
    widths[~pbc] = np.inf
    return widths


def nearest_neighbour_distances(atoms: Atoms) -> np.ndarray:
    """Distance from every atom to its nearest neighbour, periodic images included.

    A lone atom without periodic images gets ``inf``.  Implemented with a k-d tree over the
    atoms and the periodic images near the cell faces, so the cost grows as N log N.
    """
    n_atoms = len(atoms)
    if n_atoms == 0:
        return np.zeros(0)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    positions = np.asarray(atoms.positions, dtype=float)
    if not pbc.any():
        if n_atoms == 1:
            return np.array([np.inf])
        distances, _ = cKDTree(positions).query(positions, k=2)
        return distances[:, 1]
    cell = complete_cell(atoms.cell.array, pbc)
    frac = np.linalg.solve(cell.T, positions.T).T
    frac[:, pbc] %= 1.0
    upper = float(np.min(np.linalg.norm(cell[pbc], axis=1))) * (1 + 1e-9) + 1e-9
    cutoff = min(_FIRST_CUTOFF, upper)
    distances = _periodic_query(frac, cell, pbc, cutoff)
    missing = ~np.isfinite(distances)
    if missing.any():
        distances = _periodic_query(frac, cell, pbc, upper)
    return distances


def _periodic_query(frac: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Nearest-neighbour distances no longer than ``cutoff`` (``inf`` beyond)."""
    widths = perpendicular_widths(cell)
    reach = np.zeros(3, dtype=int)
    reach[pbc] = np.ceil(cutoff / widths[pbc]).astype(int)
    ranges = [range(-r, r + 1) for r in reach]
    shifts = np.array(list(itertools.product(*ranges)), dtype=float)
    images = (frac[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    # Only images within ``cutoff`` of the home cell can be anyone's nearest neighbour.
    margin = cutoff / widths
    inside = ((images >= -margin) & (images <= 1 + margin)) | ~pbc
    keep = np.all(inside, axis=1)
    points = images[keep] @ cell
    home = frac @ cell
    distances, _ = cKDTree(points).query(home, k=2, distance_upper_bound=cutoff)
    return distances[:, 1]


def minimum_distance(atoms: Atoms) -> float:
    """Shortest interatomic distance in the frame, periodic images included (``inf`` if none)."""
    distances = nearest_neighbour_distances(atoms)
    return float(distances.min()) if len(distances) else np.inf


def pad_vacuum(atoms: Atoms, vacuum: float) -> Atoms:
    """Return a copy with at least ``vacuum`` Å of empty space along every non-periodic axis.

    The gap is measured along the unit normal of the plane spanned by the other two vectors
    (the true thickness of empty space, whatever the cell shape); a short vector is lengthened
    along its own direction, a missing one is created orthogonal to the others, and the atoms are
    centred along that axis.  Frames periodic in all directions are returned unchanged.
    """
    if vacuum <= 0:
        raise ValueError(f'vacuum must be > 0 Å, got {vacuum}')
    result = clean_copy(atoms)
    pbc = np.asarray(result.pbc, dtype=bool)
    if pbc.all():
        return result
    cell = complete_cell(result.cell.array, pbc)
    normals = unit_normals(cell)
    positions = result.positions
    for axis in np.flatnonzero(~pbc):
        heights = positions @ normals[axis]
        extent = float(heights.max() - heights.min()) if len(heights) else 0.0
        width = float(cell[axis] @ normals[axis])
        needed = extent + vacuum
        if width < needed:
            cell[axis] *= needed / width
            width = needed
        # Centring is a rigid translation along the (non-periodic) axis: physics is unchanged.
        centre = 0.5 * (heights.max() + heights.min()) if len(heights) else 0.0
        positions = positions + ((0.5 * width - centre) / width) * cell[axis]
    result.set_cell(cell, scale_atoms=False)
    result.positions = positions
    return result
