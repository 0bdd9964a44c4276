"""Each augmentation on its own: the science checks of the AiiDA-TrainsPot recipe."""

import json
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, graphene
from hypothesis import given, settings
from hypothesis import strategies as st

from aiida_trainspot.augmentation.generators import (
    MinimumDistanceError,
    RattleParams,
    StrainParams,
    VacancyParams,
    alloys,
    clusters,
    create_vacancies,
    distort,
    isolated_atoms,
    make_supercell,
    rattle,
    slabs,
    species_of,
    strain,
    substitute,
    substitutions,
    supercell_repeats,
)
from aiida_trainspot.augmentation.geometry import (
    minimum_distance,
    nearest_neighbour_distances,
    pad_vacuum,
    periodic_widths,
    perpendicular_widths,
    unit_normals,
)

# --------------------------------------------------------------------------- structures


def diamond() -> Atoms:
    return bulk('C', 'diamond', a=3.567)


def diamond64() -> Atoms:
    return bulk('C', 'diamond', a=3.567, cubic=True).repeat(2)


def graphene_slab() -> Atoms:
    return pad_vacuum(graphene(vacuum=None), 15.0)


def iron() -> Atoms:
    return bulk('Fe', 'bcc', a=2.87, cubic=True)


def rocksalt() -> Atoms:
    return bulk('NaCl', 'rocksalt', a=5.64, cubic=True)


def brass() -> Atoms:
    """B2 CuZn."""
    return Atoms(
        'CuZn', scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 2.95, pbc=True
    )


def cuau() -> Atoms:
    """L1_0 CuAu (tetragonal, 2 atoms)."""
    return Atoms(
        'CuAu',
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]],
        cell=[2.8, 2.8, 3.67],
        pbc=True,
    )


STRUCTURES = {
    'diamond': diamond,
    'graphene': graphene_slab,
    'bcc-Fe': iron,
    'NaCl': rocksalt,
    'CuZn': brass,
    'CuAu': cuau,
}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def provenance(frame: Atoms) -> dict:
    return json.loads(frame.info['generation_params'])


def assert_new_unlabelled(frame: Atoms, method: str) -> None:
    assert frame.calc is None
    assert set(frame.info) == {'generation_method', 'generation_params', 'parent_id'}
    assert frame.info['generation_method'] == method
    assert set(frame.arrays) == {'numbers', 'positions'}


# --------------------------------------------------------------------------- supercells


@pytest.mark.parametrize(
    'atoms',
    [graphene_slab(), Atoms('Po', cell=np.eye(3) * 3.35, pbc=True)],
    ids=['graphene', 'sc-Po'],
)
def test_supercell_widths_reach_18_angstrom_when_the_cap_allows(atoms):
    (cell,) = make_supercell(atoms)
    widths = periodic_widths(cell.cell.array, cell.pbc)
    assert np.all(widths[atoms.pbc] >= 18.0)
    assert len(cell) <= 450
    assert_new_unlabelled(cell, 'supercell')
    if not atoms.pbc[2]:
        assert provenance(cell)['repeats'][2] == 1
        np.testing.assert_allclose(cell.cell[2], atoms.cell[2])


def test_supercell_cap_binds_with_the_largest_fitting_replica():
    atoms = rocksalt()  # 8 atoms, 5.64 Å: 4 x 4 x 4 = 512 atoms would be needed
    (cell,) = make_supercell(atoms)
    repeats = provenance(cell)['repeats']
    assert len(cell) == 8 * np.prod(repeats) <= 450
    assert max(repeats) - min(repeats) <= 1  # narrowest axis grown first: balanced
    for axis in range(3):
        grown = list(repeats)
        grown[axis] += 1
        assert 8 * np.prod(grown) > 450  # nothing larger fits


def test_supercell_keeps_big_inputs_and_does_not_mutate():
    atoms = diamond64().repeat((2, 2, 2))  # 512 atoms, above the cap
    before = atoms.positions.copy()
    (cell,) = make_supercell(atoms)
    assert len(cell) == 512
    np.testing.assert_array_equal(atoms.positions, before)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.tuples(st.floats(1.5, 12), st.floats(1.5, 12), st.floats(1.5, 12)),
    tilt=st.floats(-0.5, 0.5),
    n_atoms=st.integers(1, 20),
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    cap=st.integers(20, 500),
)
def test_supercell_repeats_are_maximal_under_the_cap(lengths, tilt, n_atoms, pbc, cap):
    cell = np.diag(lengths)
    cell[1, 0] = tilt * lengths[1]
    atoms = Atoms('H' * n_atoms, cell=cell, pbc=pbc)
    repeats = np.array(supercell_repeats(atoms, 18.0, cap))
    assert np.all(repeats[~np.array(pbc)] == 1)
    if n_atoms > cap:
        assert tuple(repeats) == (1, 1, 1)
        return
    assert n_atoms * np.prod(repeats) <= cap
    widths = periodic_widths(cell, pbc) * repeats
    for axis in np.flatnonzero(pbc):
        if widths[axis] < 18.0:
            grown = repeats.copy()
            grown[axis] += 1
            assert n_atoms * np.prod(grown) > cap


# --------------------------------------------------------------------------- rattle


@pytest.mark.parametrize('name', STRUCTURES)
def test_rattle_displacement_is_bounded_by_the_nearest_neighbour_distance(name):
    atoms = STRUCTURES[name]()
    atoms.info['frame_id'] = f'in-{name}'
    nn = nearest_neighbour_distances(atoms)
    frames = rattle(atoms, rng(1), fraction=0.3, n_configs=20)
    assert len(frames) == 20
    for frame in frames:
        displacement = np.linalg.norm(frame.positions - atoms.positions, axis=1)
        assert np.all(displacement <= 0.3 * nn + 1e-12)
        np.testing.assert_array_equal(frame.cell.array, atoms.cell.array)
        assert minimum_distance(frame) >= 0.5
        assert_new_unlabelled(frame, 'rattle')
        assert frame.info['parent_id'] == f'in-{name}'


def test_rattle_is_isotropic():
    atoms = diamond64()
    frames = rattle(atoms, rng(2), fraction=0.3, n_configs=40)
    steps = np.concatenate([frame.positions - atoms.positions for frame in frames])
    # Mean displacement vector is zero within sampling noise.
    sigma = steps.std(axis=0) / np.sqrt(len(steps))
    assert np.all(np.abs(steps.mean(axis=0)) < 5 * sigma)
    # All eight octants are populated, about equally.
    octant = (steps > 0).astype(int) @ np.array([1, 2, 4])
    shares = np.bincount(octant, minlength=8) / len(steps)
    assert np.all(shares > 0.125 - 0.03)
    assert np.all(shares < 0.125 + 0.03)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), fraction=st.floats(0.01, 0.45))
def test_rattle_bound_and_octants_for_any_seed(seed, fraction):
    atoms = iron()
    bound = fraction * nearest_neighbour_distances(atoms)
    frames = rattle(atoms, rng(seed), n_configs=64, fraction=fraction)
    steps = np.stack([frame.positions - atoms.positions for frame in frames])
    assert np.all(np.linalg.norm(steps, axis=2) <= bound[None] + 1e-12)
    octants = (steps.reshape(-1, 3) > 0).astype(int) @ np.array([1, 2, 4])
    assert len(set(octants.tolist())) == 8


def test_zero_rattle_fraction_moves_nothing():
    atoms = iron()
    (frame,) = rattle(atoms, rng(), fraction=0.0)
    np.testing.assert_array_equal(frame.positions, atoms.positions)


def test_rattle_respects_the_floor_by_redrawing():
    dimer = Atoms('H2', positions=[[0, 0, 0], [0, 0, 0.6]], cell=[5, 5, 5], pbc=True)
    frames = rattle(dimer, rng(3), fraction=1.0, n_configs=30, min_distance=0.5)
    assert all(minimum_distance(frame) >= 0.5 for frame in frames)


def test_rattle_gives_up_with_a_clear_error():
    dimer = Atoms('H2', positions=[[0, 0, 0], [0, 0, 1.0]], pbc=False)
    with pytest.raises(MinimumDistanceError, match=r'min_distance = 1\.5'):
        rattle(dimer, rng(), fraction=0.1, min_distance=1.5, max_retries=5)


def test_rattle_leaves_a_lone_atom_in_place():
    (frame,) = rattle(Atoms('Ar', pbc=False), rng())
    np.testing.assert_array_equal(frame.positions, [[0, 0, 0]])


# --------------------------------------------------------------------------- strain


def test_isotropic_strain_scales_bulk_within_range():
    atoms = diamond()
    for frame in strain(atoms, rng(4), n_configs=30):
        factor = provenance(frame)['strain_factor']
        assert 0.8 <= factor <= 1.6
        np.testing.assert_allclose(frame.cell.array, atoms.cell.array * factor)
        np.testing.assert_allclose(
            frame.get_scaled_positions(wrap=False), atoms.get_scaled_positions(wrap=False)
        )
        assert_new_unlabelled(frame, 'strain')


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_strain_keeps_vacuum_axes_of_a_leaning_slab(seed):
    atoms = graphene_slab()
    atoms.cell[2] = [2.0, 1.0, 16.0]  # vacuum vector leaning out of the normal
    factors = []
    for frame in strain(atoms, rng(seed), n_configs=5):
        factor = provenance(frame)['strain_factor']
        factors.append(factor)
        np.testing.assert_allclose(frame.cell[:2], atoms.cell[:2] * factor)
        np.testing.assert_array_equal(frame.cell[2], atoms.cell[2])  # vacuum axis untouched
        np.testing.assert_allclose(frame.positions[:, 2], atoms.positions[:, 2], atol=1e-12)
    assert all(0.8 <= f <= 1.6 for f in factors)


def test_strain_factor_distribution_spans_the_range():
    factors = [provenance(f)['strain_factor'] for f in strain(iron(), rng(5), n_configs=200)]
    assert min(factors) < 0.85
    assert max(factors) > 1.55
    assert np.mean(factors) == pytest.approx(1.2, abs=0.05)


def test_anisotropic_strain_is_symmetric_and_confined_to_periodic_directions():
    atoms = graphene_slab()
    for frame in strain(atoms, rng(6), mode='anisotropic', n_configs=10):
        tensor = np.array(provenance(frame)['strain_tensor'])
        np.testing.assert_allclose(tensor, tensor.T, atol=1e-12)
        np.testing.assert_allclose(tensor[2], 0.0, atol=1e-12)
        np.testing.assert_array_equal(frame.cell[2], atoms.cell[2])
        np.testing.assert_allclose(frame.positions[:, 2], atoms.positions[:, 2], atol=1e-12)
        np.testing.assert_allclose(frame.cell[:2], atoms.cell[:2] @ (np.eye(3) + tensor))
    bulk_frames = strain(diamond(), rng(7), mode='anisotropic', n_configs=20)
    tensors = [np.array(provenance(f)['strain_tensor']) for f in bulk_frames]
    assert any(abs(t[0, 1]) > 1e-3 for t in tensors)  # shear present
    for tensor in tensors:
        eigenvalues = np.linalg.eigvalsh(tensor)
        assert eigenvalues.min() > -0.2 - 2 * 0.1 - 1e-12


def test_strain_rejects_bad_ranges_by_name():
    with pytest.raises(ValueError, match=r'strain\.max_compressive_strain'):
        strain(diamond(), rng(), max_compressive_strain=1.0)
    with pytest.raises(ValueError, match='n_configs'):
        strain(diamond(), rng(), n_configs=0)


# --------------------------------------------------------------------------- vacancies


def test_vacancies_remove_two_atoms_but_never_all():
    atoms = diamond64()
    frames = create_vacancies(atoms, rng(8), n_configs=5)
    assert all(len(frame) == 62 for frame in frames)
    removed = provenance(frames[0])['removed_indices']
    kept = np.delete(atoms.positions, removed, axis=0)
    np.testing.assert_array_equal(frames[0].positions, kept)
    (dimer,) = create_vacancies(Atoms('H2', positions=[[0, 0, 0], [0, 0, 1]]), rng())
    assert len(dimer) == 1
    assert create_vacancies(Atoms('H'), rng()) == []


def test_distorted_frames_thirty_percent_with_vacancies():
    atoms = diamond64()
    frames = distort(atoms, rng(9), n_configs=10)
    assert len(frames) == 10
    with_vacancies = [f for f in frames if 'vacancies' in f.info['generation_method']]
    assert len(with_vacancies) == 3
    assert all(len(f) == 62 for f in with_vacancies)
    assert {f.info['generation_method'] for f in frames} == {
        'strain+rattle',
        'strain+rattle+vacancies',
    }
    assert all(minimum_distance(f) >= 0.5 for f in frames)


def test_vacancy_share_is_unbiased_for_awkward_counts():
    counts = [
        sum(
            'vacancies' in f.info['generation_method'] for f in distort(iron(), rng(s), n_configs=7)
        )
        for s in range(60)
    ]
    assert set(counts) <= {2, 3}
    assert np.mean(counts) / 7 == pytest.approx(0.3, abs=0.07)


def test_distorted_frames_are_strained_then_rattled_within_bounds():
    atoms = diamond()
    frames = distort(atoms, rng(10), n_configs=10, vacancy_params=VacancyParams(enabled=False))
    for frame in frames:
        record = provenance(frame)
        factor = record['strain']['strain_factor']
        np.testing.assert_allclose(frame.cell.array, atoms.cell.array * factor)
        strained = atoms.positions * factor
        displacement = np.linalg.norm(frame.positions - strained, axis=1)
        assert np.all(displacement <= 0.3 * nearest_neighbour_distances(atoms) * factor + 1e-12)


def test_distort_streams_are_independent():
    atoms = iron()
    both = distort(atoms, rng(11), n_configs=6)
    strain_only = distort(atoms, rng(11), n_configs=6, rattle_params=RattleParams(enabled=False))
    assert [provenance(f)['strain'] for f in both] == [provenance(f)['strain'] for f in strain_only]
    rattle_only = distort(atoms, rng(11), n_configs=6, strain_params=StrainParams(enabled=False))
    assert all(f.info['generation_method'].startswith('rattle') for f in rattle_only)
    only_vacancies = distort(
        atoms,
        rng(11),
        n_configs=10,
        strain_params=StrainParams(enabled=False),
        rattle_params=RattleParams(enabled=False),
    )
    assert len(only_vacancies) == 3
    assert {f.info['generation_method'] for f in only_vacancies} == {'vacancies'}


# --------------------------------------------------------------------------- clusters


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), distance=st.floats(0.8, 3.0))
def test_cluster_distances_and_non_periodicity(seed, distance):
    frames = clusters(
        [rocksalt(), iron()], rng(seed), n_clusters=3, max_atoms=12, distance=distance
    )
    assert len(frames) == 3
    for frame in frames:
        assert not frame.pbc.any()
        assert 2 <= len(frame) <= 12
        assert set(frame.get_chemical_symbols()) <= {'Na', 'Cl', 'Fe'}
        gaps = np.linalg.norm(frame.positions[:, None] - frame.positions[None], axis=2)
        np.fill_diagonal(gaps, np.inf)
        assert gaps.min() >= distance * (1 - 1e-12)
        nearest = gaps.min(axis=1)
        assert np.all(nearest <= 1.5 * distance * (1 + 1e-12))
        extent = np.ptp(frame.positions @ unit_normals(frame.cell.array).T, axis=0)
        assert np.all(perpendicular_widths(frame.cell.array) - extent >= 15.0 - 1e-9)
        assert_new_unlabelled(frame, 'cluster')


def test_cluster_sizes_span_the_range_and_species_mix():
    frames = clusters([rocksalt()], rng(12), n_clusters=40, max_atoms=30)
    sizes = [len(frame) for frame in frames]
    assert min(sizes) < 10
    assert max(sizes) > 22
    assert max(sizes) <= 30
    assert any(set(frame.get_chemical_symbols()) == {'Na', 'Cl'} for frame in frames)


def test_cluster_distance_below_floor_is_rejected():
    with pytest.raises(ValueError, match=r'clusters\.distance'):
        clusters([iron()], rng(), distance=0.3, min_distance=0.5)


# --------------------------------------------------------------------------- slabs


@pytest.mark.parametrize('name', ['diamond', 'bcc-Fe', 'NaCl', 'CuAu'])
def test_slabs_are_thick_periodic_in_plane_and_padded(name):
    atoms = STRUCTURES[name]()
    frames = slabs(atoms, parent_id='bulk')
    assert [provenance(f)['miller_index'] for f in frames] == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    for frame in frames:
        assert tuple(frame.pbc) == (True, True, False)
        heights = frame.positions[:, 2]
        thickness = np.ptp(heights)
        assert thickness >= 10.0 - 1e-9
        assert thickness == pytest.approx(provenance(frame)['thickness'])
        np.testing.assert_allclose(frame.cell[:2, 2], 0.0, atol=1e-12)
        assert frame.cell[2, 2] - thickness >= 15.0 - 1e-9
        assert len(frame) <= 450
        assert minimum_distance(frame) >= 0.5
        assert frame.info['parent_id'] == 'bulk'
        assert_new_unlabelled(frame, 'slab')


def test_slab_thickness_yields_to_the_atom_cap():
    (frame,) = slabs(iron(), miller_indices=[(1, 0, 0)], max_atoms=6)
    assert len(frame) == 6
    assert np.ptp(frame.positions[:, 2]) < 10.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert slabs(rocksalt(), miller_indices=[(1, 0, 0)], max_atoms=3) == []
    assert 'max_atoms' in str(caught[0].message)


def test_slabs_only_from_bulk_and_with_valid_indices():
    assert slabs(graphene_slab()) == []
    with pytest.raises(ValueError, match=r'slabs\.miller_indices'):
        slabs(iron(), miller_indices=[(1, 1)])
    with pytest.raises(ValueError, match=r'slabs\.miller_indices'):
        slabs(iron(), miller_indices=['100'])


# --------------------------------------------------------------------------- isolated atoms


def test_isolated_atoms_one_per_species_in_a_cube():
    frames = isolated_atoms([rocksalt(), iron(), brass()], vacuum=15.0)
    assert [f.get_chemical_symbols() for f in frames] == [['Na'], ['Cl'], ['Fe'], ['Cu'], ['Zn']]
    for frame in frames:
        assert not frame.pbc.any()
        np.testing.assert_allclose(frame.cell.array, np.eye(3) * 15.0)
        np.testing.assert_allclose(frame.positions, [[7.5, 7.5, 7.5]])
        assert_new_unlabelled(frame, 'isolated_atom')
    assert species_of([rocksalt(), iron()]) == ['Na', 'Cl', 'Fe']


# --------------------------------------------------------------------------- substitutions


@pytest.mark.parametrize('name', ['NaCl', 'CuZn', 'CuAu'])
def test_substitution_preserves_composition_and_changes_a_fifth(name):
    atoms = STRUCTURES[name]().repeat((3, 3, 3))
    (frame,) = substitute(atoms, rng(13), fraction_atoms=0.2)
    assert sorted(frame.numbers) == sorted(atoms.numbers)
    changed = np.count_nonzero(frame.numbers != atoms.numbers)
    assert changed == 2 * provenance(frame)['n_swaps']
    assert abs(changed - 0.2 * len(atoms)) <= 1
    np.testing.assert_array_equal(frame.positions, atoms.positions)
    assert_new_unlabelled(frame, 'substitution')


@settings(max_examples=40, deadline=None)
@given(
    numbers=st.lists(st.sampled_from([1, 6, 8, 26]), min_size=2, max_size=40),
    fraction=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_substitution_swaps_are_unlike_pairs_for_any_composition(numbers, fraction, seed):
    atoms = Atoms(numbers=numbers, positions=np.arange(3 * len(numbers)).reshape(-1, 3))
    frames = substitute(atoms, rng(seed), fraction_atoms=fraction)
    if len(set(numbers)) == 1:
        assert frames == []
        return
    (frame,) = frames
    assert sorted(frame.numbers) == sorted(numbers)
    changed = np.count_nonzero(frame.numbers != atoms.numbers)
    assert changed == 2 * provenance(frame)['n_swaps'] > 0


def test_substitutions_pick_a_fifth_of_the_multispecies_frames():
    frames = [brass().repeat(2) for _ in range(20)] + [iron() for _ in range(5)]
    for index, frame in enumerate(frames):
        frame.info['frame_id'] = f'f{index}'
    chosen = substitutions(frames, rng(14), fraction_structures=0.2, fraction_atoms=0.2)
    assert len(chosen) == 4
    assert {f.info['parent_id'] for f in chosen} <= {f'f{i}' for i in range(20)}
    assert all(provenance(f)['fraction_structures'] == 0.2 for f in chosen)
    assert substitutions([iron(), diamond()], rng(), fraction_structures=1.0) == []


# --------------------------------------------------------------------------- alloys


def test_binary_alloy_compositions_and_fixed_species():
    atoms = rocksalt().repeat(2)  # 32 Na + 32 Cl
    frames = alloys(
        atoms, rng(15), alloy_species=['Na', 'K'], compositions=[0.25, 0.5], n_configs=3
    )
    assert len(frames) == 6
    for frame, target in zip(frames, [0.25] * 3 + [0.5] * 3, strict=True):
        symbols = np.array(frame.get_chemical_symbols())
        assert np.count_nonzero(symbols == 'Na') == round(32 * target)
        assert np.count_nonzero(symbols == 'K') == 32 - round(32 * target)
        cl = np.array(atoms.get_chemical_symbols()) == 'Cl'
        assert np.all(symbols[cl] == 'Cl')  # other species fixed
        assert_new_unlabelled(frame, 'alloy')
    assert len({tuple(f.numbers) for f in frames[:3]}) == 3  # random arrangements


def test_alloy_compositions_span_zero_to_one_when_not_given():
    frames = alloys(brass().repeat(3), rng(16), alloy_species=['Cu', 'Zn'], n_configs=40)
    shares = [np.mean(np.array(f.get_chemical_symbols()) == 'Cu') for f in frames]
    assert min(shares) < 0.15
    assert max(shares) > 0.85


def test_ternary_alloy_on_l10_cuau():
    atoms = cuau().repeat((2, 2, 2))  # 16 sites
    (frame,) = alloys(
        atoms,
        rng(17),
        alloy_species=['Cu', 'Au', 'Ag'],
        compositions=[[0.5, 0.25, 0.25]],
        n_configs=1,
    )
    counts = provenance(frame)['counts']
    assert counts == {'Cu': 8, 'Au': 4, 'Ag': 4}
    assert sorted(frame.get_chemical_symbols()) == sorted(['Cu'] * 8 + ['Au'] * 4 + ['Ag'] * 4)


def test_alloy_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r'alloys\.alloy_species'):
        alloys(iron(), rng(), alloy_species=['Mo', 'W'])
    with pytest.raises(ValueError, match=r'alloys\.compositions'):
        alloys(brass(), rng(), alloy_species=['Cu', 'Zn'], compositions=[[0.5, 0.6]])


# --------------------------------------------------------------------------- general contract


@pytest.mark.parametrize(
    'call',
    [
        lambda a: rattle(a, rng(), n_configs=2),
        lambda a: strain(a, rng(), n_configs=2),
        lambda a: create_vacancies(a, rng()),
        lambda a: distort(a, rng(), n_configs=3),
        lambda a: substitute(a, rng()),
        lambda a: make_supercell(a),
        lambda a: slabs(a, miller_indices=[(1, 0, 0)]),
        lambda a: alloys(a, rng(), alloy_species=['Cu', 'Zn'], n_configs=2),
    ],
    ids=['rattle', 'strain', 'vacancies', 'distort', 'substitute', 'supercell', 'slabs', 'alloys'],
)
def test_inputs_are_never_mutated_and_labels_never_copied(call):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = brass().repeat(2)
    atoms.info.update(frame_id='abc', energy=-3.0)
    atoms.calc = SinglePointCalculator(atoms, energy=-3.0, forces=np.ones((len(atoms), 3)))
    before = (
        atoms.positions.copy(),
        atoms.numbers.copy(),
        atoms.cell.array.copy(),
        dict(atoms.info),
    )
    frames = call(atoms)
    assert frames
    for frame in frames:
        assert frame is not atoms
        assert frame.calc is None
        assert 'energy' not in frame.info
        assert frame.info['parent_id'] == 'abc'
    np.testing.assert_array_equal(atoms.positions, before[0])
    np.testing.assert_array_equal(atoms.numbers, before[1])
    np.testing.assert_array_equal(atoms.cell.array, before[2])
    assert atoms.info == before[3]


def test_explicit_parent_id_wins():
    atoms = iron()
    atoms.info['frame_id'] = 'ignored'
    (frame,) = rattle(atoms, rng(), parent_id='explicit')
    assert frame.info['parent_id'] == 'explicit'


def test_same_generator_state_gives_identical_frames():
    first = distort(diamond(), rng(18), n_configs=4)
    second = distort(diamond(), rng(18), n_configs=4)
    third = distort(diamond(), rng(19), n_configs=4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info == b.info
    assert not np.allclose(first[0].positions, third[0].positions)


def test_more_configurations_extend_without_changing_earlier_ones():
    few = rattle(iron(), rng(20), n_configs=3)
    many = rattle(iron(), rng(20), n_configs=6)
    for a, b in zip(few, many[:3], strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
