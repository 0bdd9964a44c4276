"""Bad input is refused with a ValueError naming the frame and the problem (no AiiDA)."""

import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.singlepoint import SinglePointCalculator
from ase.geometry import get_distances
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aiida_trainspot.data import validation
from aiida_trainspot.data.columns import Columns
from aiida_trainspot.data.convert import columns_from_atoms, columns_from_frames
from aiida_trainspot.data.validation import FrameValidationError, validate_columns


def good_frame(n=3, **extra):
    """A valid frame: ``n`` hydrogen atoms 1.5 Å apart, no cell."""
    frame = {
        'numbers': np.ones(n, dtype=int),
        'positions': np.arange(n)[:, None] * np.array([1.5, 0.0, 0.0]),
    }
    frame.update(extra)
    return frame


def check(frames):
    """Convert and validate, as PESData does."""
    validate_columns(columns_from_frames(frames))


def assert_invalid(frames, frame_index, *fragments):
    """Converting or validating ``frames`` raises a ValueError naming the frame and fragments."""
    with pytest.raises(ValueError) as info:
        check(frames)
    message = str(info.value)
    assert re.search(rf'\bframe {frame_index}\b', message), message
    for fragment in fragments:
        assert fragment in message, message
    # no other frame is blamed
    blamed = {int(i) for i in re.findall(r'\bframe (\d+)\b', message)}
    assert blamed == {frame_index}, message
    return message


def test_valid_frames_pass():
    check([good_frame(k) for k in range(1, 6)])
    atoms = bulk('Cu', 'fcc', a=3.6) * (2, 2, 2)
    validate_columns(columns_from_atoms([atoms, _slab(vacuum=5.0)]))


def _slab(vacuum):
    return fcc111('Cu', (2, 2, 2), a=3.6, vacuum=vacuum)


def test_validation_error_is_a_value_error():
    assert issubclass(FrameValidationError, ValueError)


# --------------------------------------------------------------------------------------------------
# Non-finite values, shapes, elements, cells.


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_positions(bad):
    frames = [good_frame() for _ in range(4)]
    frames[2]['positions'][1, 2] = bad
    assert_invalid(frames, 2, 'non-finite positions')


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_energy(bad):
    frames = [good_frame(energy=-1.0) for _ in range(4)]
    frames[3]['energy'] = bad
    assert_invalid(frames, 3, 'non-finite energy')


@pytest.mark.parametrize('bad', [np.nan, -np.inf])
def test_non_finite_forces_and_stress(bad):
    frames = [good_frame(forces=np.zeros((3, 3))) for _ in range(3)]
    frames[1]['forces'] = np.zeros((3, 3))
    frames[1]['forces'][2, 0] = bad
    assert_invalid(frames, 1, 'non-finite forces')
    frames = [good_frame(stress=np.zeros(6)) for _ in range(3)]
    frames[2]['stress'] = np.array([0, 0, 0, 0, bad, 0])
    assert_invalid(frames, 2, 'non-finite stress')


def test_non_finite_cell():
    frames = [good_frame(cell=np.eye(3) * 10) for _ in range(3)]
    frames[1]['cell'] = np.diag([10, np.nan, 10])
    assert_invalid(frames, 1, 'non-finite cell')


@pytest.mark.parametrize('shape', [(3, 2), (4, 3), (9,), (2, 3)])
def test_forces_of_the_wrong_shape(shape):
    frames = [good_frame(forces=np.zeros((3, 3))) for _ in range(3)]
    frames[2]['forces'] = np.zeros(shape)
    assert_invalid(frames, 2, 'forces must have shape (3, 3)', str(shape))


def test_positions_and_arrays_of_the_wrong_shape():
    frames = [good_frame() for _ in range(3)]
    frames[1]['positions'] = np.zeros((3, 2))
    assert_invalid(frames, 1, 'positions must have shape (3, 3)')
    frames = [good_frame(arrays={'charges': np.zeros(3)}) for _ in range(3)]
    frames[2]['arrays']['charges'] = np.zeros(4)
    assert_invalid(frames, 2, "'charges'")
    frames = [good_frame() for _ in range(3)]
    frames[1]['numbers'] = np.ones(0, dtype=int)
    frames[1]['positions'] = np.zeros((0, 3))
    assert_invalid(frames, 1, 'at least one atom')


@pytest.mark.parametrize('number', [0, -1, 119, 200])
def test_unknown_element(number):
    frames = [good_frame() for _ in range(5)]
    frames[4]['numbers'] = np.array([1, number, 1])
    assert_invalid(frames, 4, f'atomic number {number}')


def test_heaviest_known_element_is_accepted():
    check([good_frame(numbers=np.array([1, 118, 92]))])


@pytest.mark.parametrize(
    ('cell', 'pbc', 'axis'),
    [
        (np.diag([5.0, 5.0, 0.0]), True, 2),
        (np.zeros((3, 3)), [True, False, False], 0),
        (np.array([[5.0, 0, 0], [0, 0, 0], [0, 0, 5.0]]), [False, True, False], 1),
    ],
)
def test_periodic_axis_without_a_cell_vector(cell, pbc, axis):
    frames = [good_frame(cell=np.eye(3) * 6, pbc=True), good_frame(cell=cell, pbc=pbc)]
    assert_invalid(frames, 1, f'axis {axis} is periodic', 'zero length')


def test_zero_cell_vector_on_a_non_periodic_axis_is_fine():
    check([good_frame(cell=np.diag([6.0, 6.0, 0.0]), pbc=[True, True, False])])
    check([good_frame(cell=np.zeros((3, 3)), pbc=False)])


def test_several_bad_frames_are_all_named():
    frames = [good_frame() for _ in range(30)]
    for k in (3, 17):
        frames[k]['numbers'] = np.array([1, 0, 1])
    frames[25]['positions'][0, 0] = np.nan
    with pytest.raises(FrameValidationError) as info:
        check(frames)
    assert {int(i) for i in re.findall(r'\bframe (\d+)\b', str(info.value))} == {3, 17, 25}
    frames = [good_frame() for _ in range(30)]
    for frame in frames[5:]:
        frame['numbers'] = np.array([0, 1, 1])
    with pytest.raises(FrameValidationError, match=r'\(and 15 more problems\)'):
        check(frames)


# --------------------------------------------------------------------------------------------------
# Unknown keys and metadata a dataset cannot hold.


def test_unknown_keys_in_a_frame_dictionary():
    frames = [good_frame(), good_frame(energies=[1.0], charge=0)]
    with pytest.raises(ValueError, match=r"frame 1: unknown keys \['charge', 'energies'\]"):
        check(frames)


def _atoms(n=2):
    return Atoms('H' * n, positions=np.arange(n)[:, None] * np.array([1.5, 0, 0]))


@pytest.mark.parametrize(
    'value',
    [None, object(), ('a', 'b'), 1j, {'cutoff': object()}, [{'x': 1j}], {1: 'a'}],
    ids=repr,
)
def test_metadata_of_an_unsupported_type(value):
    # dicts and lists are stored as JSON (tests/data/test_convert.py), unless they have no JSON form
    frames = [_atoms(), _atoms(), _atoms()]
    frames[0].info['ok'] = 1
    frames[2].info['parameters'] = value
    with pytest.raises(ValueError, match="'parameters'") as info:
        columns_from_atoms(frames)
    assert re.search(r'\bframe 2\b', str(info.value)), info.value


def test_metadata_mixing_text_and_numbers():
    frames = [_atoms(), _atoms()]
    frames[0].info['method'] = 'md'
    frames[1].info['method'] = 3
    with pytest.raises(ValueError, match="'method'"):
        columns_from_atoms(frames)


def test_metadata_clashing_with_a_label_name():
    frames = [_atoms(), _atoms()]
    frames[1].info['energy'] = -3.0  # a label in info, but no energy_key named
    with pytest.raises(ValueError, match="'energy'"):
        columns_from_atoms(frames)
    # naming the key reads it as the label
    columns = columns_from_atoms(frames, energy_key='energy')
    assert columns.mask('energy').tolist() == [False, True]
    assert 'energy' in columns.frame and columns.frame['energy'][1] == -3.0


def test_non_atoms_input():
    with pytest.raises(TypeError, match='frame 1'):
        columns_from_atoms([_atoms(), 'H2O'])


def test_labels_of_the_wrong_shape_from_ase():
    frames = [_atoms(3), _atoms(3)]
    frames[1].calc = SinglePointCalculator(frames[1], energy=1.0, forces=np.zeros((3, 3)))
    frames[1].calc.results['forces'] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r'frame 1: forces must have shape \(3, 3\)'):
        columns_from_atoms(frames)
    frames = [_atoms(3), _atoms(3)]
    frames[0].info['REF_energy'] = np.zeros(2)
    with pytest.raises(ValueError, match='frame 0: energy must be a scalar'):
        columns_from_atoms(frames, energy_key='REF_energy')


# --------------------------------------------------------------------------------------------------
# Atoms on top of each other, periodic images included.


def _pair_frame(positions, cell, pbc, numbers=(29, 29)):
    return {
        'numbers': list(numbers),
        'positions': np.asarray(positions, float),
        'cell': cell,
        'pbc': pbc,
    }


def test_atoms_on_top_of_each_other():
    frames = [good_frame(4) for _ in range(4)]
    frames[2]['positions'][3] = frames[2]['positions'][1] + [0.0, 0.05, 0.0]
    assert_invalid(frames, 2, 'atoms 1 and 3', '0.050 Å apart')
    frames[2]['positions'][3] = frames[2]['positions'][1]  # exactly on top
    assert_invalid(frames, 2, 'atoms 1 and 3', '0.000 Å apart')


def test_close_but_not_overlapping_atoms_pass():
    frames = [_pair_frame([[0, 0, 0], [0.11, 0, 0]], np.zeros((3, 3)), False)]
    check(frames)
    frames = [_pair_frame([[0, 0, 0], [0.09, 0, 0]], np.zeros((3, 3)), False)]
    assert_invalid(frames, 0, 'atoms 0 and 1')


@pytest.mark.parametrize('axis', [0, 1, 2])
def test_overlap_across_a_periodic_boundary(axis):
    length = 4.0
    cell = np.eye(3) * length
    positions = np.full((2, 3), 1.0)
    positions[0, axis] = 0.01
    positions[1, axis] = length - 0.02
    pbc = np.zeros(3, bool)
    pbc[axis] = True
    frames = [good_frame(), _pair_frame(positions, cell, pbc)]
    assert_invalid(frames, 1, 'atoms 0 and 1', '0.030 Å apart')
    # the same positions without periodicity (along that axis) are 3.97 Å apart: fine
    check([good_frame(), _pair_frame(positions, cell, False)])
    check([good_frame(), _pair_frame(positions, cell, ~pbc)])


def test_overlap_with_atoms_outside_the_cell():
    cell = np.eye(3) * 4.0
    frames = [_pair_frame([[4.01, 1, 1], [-3.97, 1, 1]], cell, True)]  # 0.02 Å apart by images
    assert_invalid(frames, 0, 'atoms 0 and 1', '0.020 Å apart')
    check([_pair_frame([[4.01, 1, 1], [-3.97, 1, 1]], cell, False)])


def test_overlap_at_a_corner_through_two_boundaries():
    cell = np.eye(3) * 5.0
    frames = [_pair_frame([[0.01, 0.01, 2], [4.98, 4.98, 2]], cell, True)]
    assert_invalid(frames, 0, 'atoms 0 and 1')
    check([_pair_frame([[0.01, 0.01, 2], [4.98, 4.98, 2]], cell, [True, False, True])])


TRICLINIC = np.array([[4.0, 0.0, 0.0], [2.0, 3.5, 0.0], [0.5, 0.7, 5.0]])


@pytest.mark.parametrize(
    ('frac', 'overlap'),
    [
        ([[0.005, 0.5, 0.5], [0.99, 0.5, 0.5]], True),  # across the a faces
        ([[0.5, 0.005, 0.5], [0.5, 0.99, 0.5]], True),  # across the (slanted) b faces
        ([[0.003, 0.003, 0.5], [0.995, 0.995, 0.5]], True),  # through an edge
        ([[0.5, 0.5, 0.998], [0.5, 0.5, 0.006]], True),  # across the c faces
        ([[0.005, 0.5, 0.5], [0.99, 0.2, 0.5]], False),  # near opposite faces, far apart
        ([[0.5, 0.5, 0.5], [0.52, 0.5, 0.5]], True),  # 0.02 in fractions = 0.08 Å
        ([[0.5, 0.5, 0.5], [0.53, 0.5, 0.5]], False),  # 0.12 Å
    ],
)
def test_overlap_in_a_skewed_cell(frac, overlap):
    positions = np.array(frac) @ TRICLINIC
    reference = get_distances(positions[:1], positions[1:], cell=TRICLINIC, pbc=True)[1][0, 0]
    assert (reference < 0.1) == overlap  # the case says what it means
    frames = [good_frame(), _pair_frame(positions, TRICLINIC, True)]
    if overlap:
        assert_invalid(frames, 1, 'atoms 0 and 1', f'{reference:.3f} Å apart')
    else:
        check(frames)
    # without periodicity only the plain distance counts
    frames = [good_frame(), _pair_frame(positions, TRICLINIC, False)]
    if np.linalg.norm(positions[0] - positions[1]) < 0.1:
        assert_invalid(frames, 1, 'atoms 0 and 1')
    else:
        check(frames)


# Regression: a slab or a wire stored
# without vacuum has a zero-length cell vector along a non-periodic axis (what
# ``ase.build.fcc111(..., vacuum=None)`` builds). ``_check_overlaps`` then sees a singular cell
# and skips the periodic treatment of the whole frame, so atoms that overlap across the
# periodic boundaries are not found.
@pytest.mark.parametrize(
    ('cell', 'pbc', 'axis'),
    [
        (np.diag([4.0, 4.0, 0.0]), [True, True, False], 0),
        (np.diag([4.0, 4.0, 0.0]), [True, True, False], 1),
        (np.array([[4.0, 0, 0], [2.0, 3.5, 0], [0, 0, 0]]), [True, True, False], 0),
        (np.diag([4.0, 0.0, 0.0]), [True, False, False], 0),
    ],
    ids=['slab-x', 'slab-y', 'skewed-slab-x', 'wire-x'],
)
def test_overlap_across_the_boundary_without_vacuum(cell, pbc, axis):
    positions = np.full((2, 3), 1.0)
    positions[0, axis] = 0.01
    positions[1, axis] = positions[0, axis] + cell[axis, axis] - 0.04
    frames = [good_frame(), _pair_frame(positions, cell, pbc)]
    assert_invalid(frames, 1, 'atoms 0 and 1', '0.040 Å apart')


# Regression (the same one as above).
def test_real_slab_without_vacuum_with_an_image_overlap():
    slab = _slab(vacuum=None)
    assert np.allclose(slab.cell[2], 0) and list(slab.pbc) == [True, True, False]
    validate_columns(columns_from_atoms([slab]))  # a sound slab passes
    bad = slab.copy()
    # move an atom to within 0.05 Å of the periodic image of atom 0 across the a boundary
    bad.positions[1] = bad.positions[0] + bad.cell[0] - [0.05, 0, 0]
    with pytest.raises(FrameValidationError, match='atoms 0 and 1'):
        validate_columns(columns_from_atoms([bulk('Cu'), bad]))


@st.composite
def periodic_pairs(draw):
    """A skewed cell, random pbc, 2-4 atoms, one of them placed near an image of another."""
    cell = draw(hnp.arrays(np.float64, (3, 3), elements=st.floats(-1.5, 1.5)))
    cell = cell + np.diag(draw(hnp.arrays(np.float64, 3, elements=st.floats(3, 6))))
    volume = abs(np.linalg.det(cell))
    widths = [
        volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)
    ]
    assume(min(widths) > 1.0)
    pbc = np.array(draw(st.tuples(st.booleans(), st.booleans(), st.booleans())))
    n = draw(st.integers(2, 4))
    frac = draw(hnp.arrays(np.float64, (n, 3), elements=st.floats(-0.5, 1.5)))
    positions = frac @ cell
    shift = np.array(draw(st.tuples(*[st.integers(-1, 1)] * 3)))
    direction = draw(hnp.arrays(np.float64, 3, elements=st.floats(-1, 1)))
    assume(np.linalg.norm(direction) > 0.1)
    distance = draw(st.floats(0, 0.2))
    positions[1] = positions[0] + shift @ cell + direction / np.linalg.norm(direction) * distance
    return positions, cell, pbc


@settings(max_examples=150, deadline=None)
@given(case=periodic_pairs())
def test_overlaps_agree_with_ase_minimum_image_distances(case):
    positions, cell, pbc = case
    distances = get_distances(positions, cell=cell, pbc=pbc)[1]
    i, j = np.triu_indices(len(positions), 1)
    pair_distances = distances[i, j]
    assume(np.all(np.abs(pair_distances - 0.1) > 1e-6))
    expected = {(int(a), int(b)) for a, b, d in zip(i, j, pair_distances, strict=True) if d < 0.1}
    frames = [good_frame(), _pair_frame(positions, cell, pbc, numbers=[1] * len(positions))]
    try:
        check(frames)
        found = {}
    except FrameValidationError as error:
        found = {
            (int(a), int(b)): float(d)
            for a, b, d in re.findall(r'frame 1: atoms (\d+) and (\d+) are ([\d.]+) Å', str(error))
        }
        assert found, str(error)
    assert set(found) == expected
    for (a, b), d in found.items():
        assert abs(d - distances[a, b]) < 6e-4


# --------------------------------------------------------------------------------------------------
# Vectorised: many frames at once.


def _many_frames(n_frames, seed=0):
    """``n_frames`` frames of 8 atoms (a jittered 2x2x2 grid), alternately periodic, shifted."""
    rng = np.random.default_rng(seed)
    grid = np.array([[x, y, z] for x in (0, 2) for y in (0, 2) for z in (0, 2)], float)
    positions = grid[None] + rng.uniform(-0.2, 0.2, (n_frames, 8, 3))
    positions += rng.uniform(-6, 6, (n_frames, 1, 3))  # periodic frames are wrapped back
    periodic = np.arange(n_frames) % 2 == 0
    cells = np.where(periodic[:, None, None], np.eye(3) * 4.0, 0.0)
    columns = Columns(
        n_atoms=np.full(n_frames, 8),
        frame={'cell': cells, 'pbc': np.repeat(periodic[:, None], 3, axis=1)},
        atom={'numbers': np.full(8 * n_frames, 29), 'positions': positions.reshape(-1, 3)},
    )
    return columns


@pytest.mark.parametrize('block', [None, 5000])
def test_overlap_check_is_vectorised_over_many_frames(monkeypatch, block):
    if block is not None:  # frame 12345 then lies in the third block of the check
        monkeypatch.setattr(validation, '_OVERLAP_BLOCK', block)
    columns = _many_frames(20000)
    validate_columns(columns)  # a clean set passes
    positions = columns.atom['positions']
    positions[12345 * 8 + 6] = positions[12345 * 8 + 2] + [0.0, 0.03, 0.0]
    with pytest.raises(FrameValidationError) as info:
        validate_columns(columns)
    message = str(info.value)
    assert message.startswith('invalid frames: frame 12345: atoms 2 and 6 are 0.030 Å apart')
    assert {int(i) for i in re.findall(r'\bframe (\d+)\b', message)} == {12345}
    # and across a periodic boundary in a periodic frame (even index), by images
    columns = _many_frames(20000, seed=1)
    positions = columns.atom['positions']
    positions[4322 * 8 + 1] = positions[4322 * 8 + 5] + [4.0 - 0.04, 8.0, -4.0]
    with pytest.raises(FrameValidationError, match=r'frame 4322: atoms 1 and 5 are 0.040 Å'):
        validate_columns(columns)


# --------------------------------------------------------------------------------------------------
# The sort-and-sweep overlap check against a brute-force minimum-image search, frame by frame.


def _brute_force_pairs(positions, cell, pbc, limit=0.1):
    """Pairs (i, j) of atoms closer than ``limit`` over all periodic images (ASE's search)."""
    if len(positions) < 2:
        return set()
    distances = get_distances(positions, cell=cell, pbc=pbc)[1]
    i, j = np.triu_indices(len(positions), 1)
    return {(int(a), int(b)) for a, b in zip(i, j, strict=True) if distances[a, b] < limit}


def _mixed_frames(n_frames, seed):
    """Clusters, skewed periodic cells, slabs and perfect lattices, some with planted overlaps."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        kind = k % 4
        if kind == 3:  # a perfect simple-cubic lattice: whole planes share every coordinate
            grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing='ij'), -1).reshape(-1, 3)
            positions = grid * 1.5
            cell, pbc = np.eye(3) * 6.0, np.array([True, True, True])
        else:
            n = int(rng.integers(2, 12))
            cell = np.diag(rng.uniform(4, 7, 3)) + rng.uniform(-1, 1, (3, 3)) * (kind == 1)
            frac = rng.uniform(-0.3, 1.3, (n, 3))
            positions = frac @ cell
            pbc = [np.zeros(3, bool), np.ones(3, bool), np.array([True, True, False])][kind]
            if kind == 0:
                cell = np.zeros((3, 3))
        positions = np.array(positions, dtype=float)
        if rng.random() < 0.5:  # plant a close pair, possibly through a periodic image
            a, b = rng.choice(len(positions), 2, replace=False)
            shift = rng.integers(-1, 2, 3) * pbc if pbc.any() else np.zeros(3)
            direction = rng.normal(size=3)
            positions[b] = (
                positions[a]
                + shift @ (cell if pbc.any() else np.eye(3))
                + direction / np.linalg.norm(direction) * rng.uniform(0, 0.2)
            )
        frames.append((positions, cell, pbc))
    return frames


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_sort_and_sweep_agrees_with_brute_force_over_many_frames(monkeypatch, seed):
    monkeypatch.setattr(validation, '_OVERLAP_BLOCK_ATOMS', 97)  # many blocks, cut anywhere
    frames = _mixed_frames(160, seed)
    columns = Columns(
        n_atoms=[len(p) for p, _, _ in frames],
        frame={
            'cell': np.array([c for _, c, _ in frames]),
            'pbc': np.array([b for *_, b in frames]),
        },
        atom={
            'numbers': np.ones(sum(len(p) for p, _, _ in frames), dtype=int),
            'positions': np.concatenate([p for p, _, _ in frames]),
        },
    )
    expected = {
        (k, i, j)
        for k, (positions, cell, pbc) in enumerate(frames)
        for i, j in _brute_force_pairs(positions, cell, pbc)
    }
    assert expected, 'the planted pairs should make some frames invalid'
    offsets = columns.offsets
    found = set()
    start = 0
    while start < columns.n_frames:  # the same blocks validate_columns uses
        stop = min(start + 7, columns.n_frames)
        part = Columns(
            n_atoms=columns.n_atoms[start:stop],
            frame={k: columns.frame[k][start:stop] for k in ('cell', 'pbc')},
            atom={'positions': columns.atom['positions'][offsets[start] : offsets[stop]]},
        )
        for frame, message in validation._check_overlaps(part, 0.1):
            i, j = map(int, re.match(r'atoms (\d+) and (\d+)', message).groups())
            found.add((start + frame, i, j))
        start = stop
    assert found == expected
    # and through the public entry point: exactly the invalid frames are named (first ten)
    with pytest.raises(FrameValidationError) as info:
        validate_columns(columns)
    named = sorted({int(i) for i in re.findall(r'\bframe (\d+)\b', str(info.value))})
    assert named == sorted({k for k, _, _ in expected})[: len(named)]


def test_a_large_perfect_crystal_is_checked_correctly():
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True) * (6, 6, 6)  # 864 atoms on lattice planes
    validate_columns(columns_from_atoms([atoms]))
    atoms.positions[500] = atoms.positions[17] + atoms.cell[0] + [0.0, 0.0, 0.04]
    with pytest.raises(FrameValidationError, match=r'frame 0: atoms 17 and 500 are 0.040 Å'):
        validate_columns(columns_from_atoms([atoms]))


def test_frames_without_atoms_do_not_break_the_overlap_check():
    columns = Columns(
        n_atoms=[0, 2, 0, 2, 0],
        frame={'cell': np.zeros((5, 3, 3)), 'pbc': np.zeros((5, 3), bool)},
        atom={
            'numbers': np.ones(4, dtype=int),
            'positions': np.array([[0, 0, 0], [1.5, 0, 0], [0, 0, 0], [0.05, 0, 0]], float),
        },
    )
    with pytest.raises(FrameValidationError, match=r'frame 3: atoms 0 and 1 are 0.050 Å'):
        validate_columns(columns)
