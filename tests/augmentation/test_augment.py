"""The whole recipe: order, floors, vacuum, provenance and determinism of ``augment``."""

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, graphene

from aiida_trainspot.augmentation.generators import (
    AUGMENTATION_KEYS,
    AugmentationParams,
    augment,
    validate_frames,
)
from aiida_trainspot.augmentation.geometry import (
    minimum_distance,
    periodic_widths,
    perpendicular_widths,
    unit_normals,
)

SMALL = {
    'n_configs_per_input': 4,
    'clusters': {'n_clusters': 3, 'max_atoms': 8},
    'supercells': {'max_atoms': 120},
    'slabs': {'max_atoms': 120},
    'substitutions': {'fraction_structures': 0.5},
}


def inputs() -> list[Atoms]:
    frames = [
        bulk('C', 'diamond', a=3.567),
        graphene(vacuum=None),  # zero-length vacuum vector
        bulk('Fe', 'bcc', a=2.87),
        bulk('NaCl', 'rocksalt', a=5.64),
        Atoms('CuZn', scaled_positions=[[0, 0, 0], [0.5] * 3], cell=np.eye(3) * 2.95, pbc=True),
    ]
    for index, frame in enumerate(frames):
        frame.info['frame_id'] = f'id{index}'
    return frames


def skewed_slab() -> Atoms:
    atoms = graphene(vacuum=None)
    atoms.cell[2] = [2.0, 1.0, 3.0]  # leaning, and far too short
    return atoms


def vacuum_gaps(frame: Atoms) -> np.ndarray:
    cell = frame.cell.array
    extent = np.ptp(frame.positions @ unit_normals(cell).T, axis=0)
    return perpendicular_widths(cell) - extent


@pytest.fixture(scope='module')
def result():
    return augment(inputs(), SMALL, seed=42)


def everything(out):
    return [frame for key in AUGMENTATION_KEYS for frame in out[key]]


def test_returns_one_list_per_augmentation(result):
    assert tuple(result) == AUGMENTATION_KEYS
    sizes = {key: len(frames) for key, frames in result.items()}
    assert sizes['input'] == 5
    assert sizes['isolated_atoms'] == 6  # C, Na, Cl, Fe, Cu, Zn
    assert sizes['distorted'] == 5 * 4
    assert sizes['clusters'] == 3
    assert sizes['slabs'] == 4 * 3  # every bulk input, three Miller indices
    assert sizes['substitutions'] > 0  # NaCl and CuZn frames are eligible
    assert sizes['alloys'] == 0  # off by default


def test_every_frame_is_new_unlabelled_and_traced(result):
    methods = {key: {f.info['generation_method'] for f in result[key]} for key in result}
    assert methods['input'] == {'supercell'}
    assert methods['isolated_atoms'] == {'isolated_atom'}
    assert methods['distorted'] <= {'strain+rattle', 'strain+rattle+vacancies'}
    assert methods['slabs'] == {'slab'}
    assert methods['substitutions'] == {'substitution'}
    parents = {f'id{i}' for i in range(5)}
    for key in ('input', 'distorted', 'slabs', 'substitutions'):
        assert {f.info['parent_id'] for f in result[key]} <= parents
    for frame in everything(result):
        assert frame.calc is None
        assert set(frame.info) == {'generation_method', 'generation_params', 'parent_id'}
        params = json.loads(frame.info['generation_params'])
        assert frame.info['generation_params'] == json.dumps(params, sort_keys=True)
    sources = {json.loads(f.info['generation_params'])['source'] for f in result['substitutions']}
    assert sources <= {'input', 'distorted', 'slabs'}


def test_substitutions_only_from_multispecies_frames(result):
    for frame in result['substitutions']:
        assert len(set(frame.get_chemical_symbols())) > 1
        assert frame.info['parent_id'] in {'id3', 'id4'}


def test_floor_and_vacuum_hold_everywhere(result):
    for frame in everything(result):
        assert minimum_distance(frame) >= 0.5
        if not frame.pbc.all():
            assert np.all(vacuum_gaps(frame)[~frame.pbc] >= 15.0 - 1e-9)


def test_supercells_feed_the_distortions(result):
    for frame in result['input']:
        widths = periodic_widths(frame.cell.array, frame.pbc)
        repeats = np.array(json.loads(frame.info['generation_params'])['repeats'])
        per_copy = len(frame) // np.prod(repeats)
        assert len(frame) <= 120
        for axis in np.flatnonzero(frame.pbc & (widths < 18.0)):
            grown = repeats.copy()
            grown[axis] += 1
            assert per_copy * np.prod(grown) > 120  # short only where the cap binds
    input_sizes = {f.info['parent_id']: len(f) for f in result['input']}
    for frame in result['distorted']:
        assert len(frame) in {input_sizes[frame.info['parent_id']] - k for k in (0, 2)}


def test_graphene_distortions_keep_vacuum_axis():
    out = augment([graphene(vacuum=None)], {'supercells': {'enabled': False}}, seed=1)
    (base,) = out['input']
    assert base.info['generation_method'] == 'input'
    for frame in out['distorted']:
        assert tuple(frame.pbc) == (True, True, False)
        factor = json.loads(frame.info['generation_params'])['strain']['strain_factor']
        np.testing.assert_allclose(frame.cell[:2], base.cell[:2] * factor)
        assert frame.cell[2, 2] >= base.cell[2, 2] - 1e-12  # only ever padded, never strained


def test_vacuum_on_a_skewed_non_orthogonal_cell():
    out = augment([skewed_slab()], {'n_configs_per_input': 3}, seed=2)
    frames = everything(out)
    assert all(not frame.pbc.all() for frame in frames)
    for frame in frames:
        assert np.all(vacuum_gaps(frame)[~frame.pbc] >= 15.0 - 1e-9)
    (base,) = out['input']
    leaning = skewed_slab().cell[2]
    np.testing.assert_allclose(
        base.cell[2] / np.linalg.norm(base.cell[2]), leaning / np.linalg.norm(leaning)
    )


def test_same_seed_same_output_different_seed_different_output():
    first = augment(inputs(), SMALL, seed=7)
    second = augment(inputs(), SMALL, seed=7)
    for a, b in zip(everything(first), everything(second), strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert a.info == b.info
    other = augment(inputs(), SMALL, seed=8)
    assert any(
        not np.array_equal(a.positions, b.positions)
        for a, b in zip(first['distorted'], other['distorted'], strict=True)
    )
    assert [len(f) for f in first['clusters']] != [len(f) for f in other['clusters']] or any(
        not np.allclose(a.positions, b.positions)
        for a, b in zip(first['clusters'], other['clusters'], strict=True)
    )


def test_switching_one_augmentation_does_not_change_the_others():
    full = augment(inputs(), SMALL, seed=3)
    reduced = augment(
        inputs(),
        {**SMALL, 'clusters': {'enabled': False}, 'slabs': {'enabled': False}},
        seed=3,
    )
    assert reduced['clusters'] == []
    assert reduced['slabs'] == []
    for a, b in zip(full['distorted'], reduced['distorted'], strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    no_rattle = augment(inputs(), {**SMALL, 'rattle': {'enabled': False}}, seed=3)
    strains = [json.loads(f.info['generation_params'])['strain'] for f in full['distorted']]
    assert strains == [
        json.loads(f.info['generation_params'])['strain'] for f in no_rattle['distorted']
    ]


def test_inputs_are_not_mutated():
    frames = inputs()
    before = [(f.positions.copy(), f.cell.array.copy(), dict(f.info)) for f in frames]
    augment(frames, SMALL, seed=0)
    for frame, (positions, cell, info) in zip(frames, before, strict=True):
        np.testing.assert_array_equal(frame.positions, positions)
        np.testing.assert_array_equal(frame.cell.array, cell)
        assert frame.info == info


def test_alloys_from_every_input_with_alloy_sites():
    params = {
        **SMALL,
        'alloys': {
            'enabled': True,
            'alloy_species': ['Cu', 'Zn', 'Ni'],
            'compositions': [[0.5, 0.25, 0.25]],
            'n_configs': 2,
        },
    }
    out = augment(inputs(), params, seed=4)
    assert len(out['alloys']) == 2
    for frame in out['alloys']:
        assert frame.info['parent_id'] == 'id4'
        symbols = np.array(frame.get_chemical_symbols())
        n = len(symbols)
        assert np.count_nonzero(symbols == 'Cu') == n // 2
        assert np.count_nonzero(symbols == 'Ni') == n // 4


def test_missing_alloy_species_is_an_error_naming_the_parameter():
    params = AugmentationParams.from_dict(
        {'alloys': {'enabled': True, 'alloy_species': ['Mo', 'W']}}
    )
    with pytest.raises(ValueError, match=r'alloys\.alloy_species'):
        augment(inputs(), params, seed=0)


def test_periodic_axis_without_vector_names_the_frame():
    bad = Atoms('H', cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True)
    with pytest.raises(ValueError, match='frame 1: periodic axis 2'):
        augment([inputs()[0], bad], SMALL, seed=0)


def test_frames_below_the_floor_and_empty_frames_are_reported():
    close = Atoms('H2', positions=[[0, 0, 0], [0, 0, 0.3]], cell=[5, 5, 5], pbc=True)
    messages = validate_frames([inputs()[0], Atoms(), close])
    assert messages[0].startswith('frame 1: has no atoms')
    assert messages[1].startswith('frame 2: two atoms are 0.300')
    assert validate_frames([]) == ['frames: at least one input frame is required']


def test_bad_parameters_and_seed_are_rejected():
    with pytest.raises(ValueError, match=r'rattle\.fraction'):
        augment(inputs(), {'rattle': {'fraction': -0.2}}, seed=0)
    with pytest.raises(ValueError, match='vacuum'):
        augment(inputs(), {'vacuum': 0}, seed=0)
    with pytest.raises(ValueError, match='seed'):
        augment(inputs(), None, seed=-1)


def test_molecules_get_a_box():
    water = Atoms('H2O', positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    out = augment([water], {'n_configs_per_input': 2, 'clusters': {'enabled': False}}, seed=5)
    assert out['slabs'] == []
    for frame in everything(out):
        assert not frame.pbc.any()
        assert np.all(vacuum_gaps(frame) >= 15.0 - 1e-9)
