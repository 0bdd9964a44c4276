"""Cell and neighbour helpers: checked against ase's own neighbour list on awkward cells."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, graphene
from ase.neighborlist import neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

from aiida_trainspot.augmentation.geometry import (
    check_cell,
    complete_cell,
    minimum_distance,
    nearest_neighbour_distances,
    pad_vacuum,
    periodic_widths,
    perpendicular_widths,
    unit_normals,
)


def reference_nn(atoms: Atoms) -> np.ndarray:
    """Nearest-neighbour distances from ase with a generous cutoff."""
    cell = complete_cell(atoms.cell.array, atoms.pbc)
    span = np.ptp(atoms.positions, axis=0) if len(atoms) else np.zeros(3)
    cutoff = np.linalg.norm(span) + np.linalg.norm(cell, axis=1).max() + 1.0
    probe = atoms.copy()
    probe.cell = cell
    i, d = neighbor_list('id', probe, cutoff)
    result = np.full(len(atoms), np.inf)
    np.minimum.at(result, i, d)
    return result


def skewed_graphene() -> Atoms:
    atoms = graphene(vacuum=None)
    atoms.cell[2] = [1.5, 0.8, 4.0]  # a leaning vacuum vector
    return atoms


@pytest.mark.parametrize(
    'atoms',
    [
        bulk('C', 'diamond', a=3.567),
        bulk('Fe', 'bcc', a=2.87),
        bulk('NaCl', 'rocksalt', a=5.64),
        graphene(),
        skewed_graphene(),
        Atoms('H2O', positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
    ],
    ids=['diamond', 'bcc-Fe', 'NaCl', 'graphene', 'skewed-graphene', 'water'],
)
def test_nearest_neighbours_match_ase(atoms):
    np.testing.assert_allclose(nearest_neighbour_distances(atoms), reference_nn(atoms))


def test_lone_atom_has_no_neighbour_and_periodic_one_sees_its_image():
    assert nearest_neighbour_distances(Atoms('Ar', pbc=False))[0] == np.inf
    np.testing.assert_allclose(
        nearest_neighbour_distances(bulk('Fe', 'bcc', a=2.87)), [2.4855], 1e-4
    )


cells = st.tuples(
    st.floats(2.0, 6.0), st.floats(2.0, 6.0), st.floats(2.0, 6.0),
    st.floats(-1.5, 1.5), st.floats(-1.5, 1.5), st.floats(-1.5, 1.5),
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    cell=cells,
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    n_atoms=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_nearest_neighbours_match_ase_on_random_skewed_cells(cell, pbc, n_atoms, seed):
    a, b, c, xy, xz, yz = cell
    matrix = np.array([[a, 0, 0], [xy, b, 0], [xz, yz, c]])
    frac = np.random.default_rng(seed).random((n_atoms, 3))
    atoms = Atoms('H' * n_atoms, scaled_positions=frac, cell=matrix, pbc=pbc)
    np.testing.assert_allclose(
        nearest_neighbour_distances(atoms), reference_nn(atoms), rtol=1e-9, atol=1e-12
    )


def test_perpendicular_widths_of_orthogonal_and_skewed_cells():
    np.testing.assert_allclose(perpendicular_widths(np.diag([2.0, 3.0, 4.0])), [2, 3, 4])
    skewed = np.array([[2.0, 0, 0], [1.0, 2.0, 0], [0, 0, 4.0]])
    np.testing.assert_allclose(perpendicular_widths(skewed), [2.0 * 2 / np.sqrt(5), 2.0, 4.0])


def test_periodic_widths_ignore_the_leaning_of_the_vacuum_vector():
    flat, leaning = graphene(vacuum=10.0), skewed_graphene()
    np.testing.assert_allclose(
        periodic_widths(leaning.cell.array, leaning.pbc)[:2],
        periodic_widths(flat.cell.array, flat.pbc)[:2],
    )
    assert periodic_widths(leaning.cell.array, leaning.pbc)[2] == np.inf


def test_complete_cell_fills_zero_vectors_orthogonally():
    np.testing.assert_allclose(complete_cell(np.zeros((3, 3)), [False] * 3), np.eye(3))
    filled = complete_cell(graphene().cell.array, [True, True, False])
    np.testing.assert_allclose(filled[2], [0, 0, 1])
    with pytest.raises(ValueError, match='singular'):
        complete_cell(np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1]]), [True, False, True])


def test_check_cell_names_the_periodic_axis_without_vector():
    atoms = Atoms('H', cell=[[2, 0, 0], [0, 2, 0], [0, 0, 0]], pbc=True)
    with pytest.raises(ValueError, match='frame 7: periodic axis 2 has a zero-length'):
        check_cell(atoms, 'frame 7')


def gaps(atoms: Atoms) -> np.ndarray:
    """Empty space along the normal of each cell face."""
    cell = atoms.cell.array
    normals = unit_normals(cell)
    heights = atoms.positions @ normals.T
    return perpendicular_widths(cell) - np.ptp(heights, axis=0)


@pytest.mark.parametrize('vacuum', [15.0, 4.0])
def test_pad_vacuum_on_a_skewed_cell(vacuum):
    source = skewed_graphene()
    padded = pad_vacuum(source, vacuum)
    assert gaps(padded)[2] >= vacuum - 1e-9
    np.testing.assert_allclose(padded.cell[:2], source.cell[:2])  # periodic vectors untouched
    direction = padded.cell[2] / np.linalg.norm(padded.cell[2])
    np.testing.assert_allclose(direction, source.cell[2] / np.linalg.norm(source.cell[2]))
    frac = padded.get_scaled_positions(wrap=False)[:, 2]
    assert np.all((frac > 0) & (frac < 1))  # atoms centred inside the cell
    assert source.cell[2, 2] == 4.0  # input untouched


def test_pad_vacuum_builds_missing_vectors_and_leaves_bulk_alone():
    water = Atoms('H2O', positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    boxed = pad_vacuum(water, 15.0)
    assert np.all(gaps(boxed) >= 15.0 - 1e-9)
    assert minimum_distance(boxed) == pytest.approx(minimum_distance(water))
    diamond = bulk('C', 'diamond', a=3.567)
    same = pad_vacuum(diamond, 15.0)
    np.testing.assert_array_equal(same.cell.array, diamond.cell.array)
    np.testing.assert_array_equal(same.positions, diamond.positions)
    with pytest.raises(ValueError, match='vacuum'):
        pad_vacuum(water, 0.0)


def test_pad_vacuum_never_shrinks_existing_vacuum():
    wide = graphene(vacuum=20.0)
    assert pad_vacuum(wide, 15.0).cell[2, 2] == pytest.approx(wide.cell[2, 2])
