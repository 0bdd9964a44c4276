"""The vectorised extraction from ``ase.Atoms`` and frame dictionaries keeps the per-frame rules.

Labels come from the calculator's results (or named info/arrays keys), a missing label is NaN
*and* absent in the mask, shapes are checked frame by frame when the fast path cannot apply.
"""

import io
import json
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_trainspot.data import PESData
from aiida_trainspot.data.convert import (
    atoms_from_columns,
    columns_from_atoms,
    columns_from_frames,
    frame_records,
    voigt_stress,
    write_labelled_extxyz,
)
from aiida_trainspot.data.store import read_shard, shard_bytes


def _atoms(n, shift=0.0):
    return Atoms('Cu' * n, positions=np.arange(n)[:, None] * [2.0, 0, 0] + shift, cell=[9] * 3)


def _with(atoms, **results):
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def test_labels_of_mixed_presence_and_kinds_from_calculators():
    rng = np.random.default_rng(0)
    forces = [rng.normal(size=(n, 3)) for n in (2, 3, 4, 5, 2, 3)]
    full = rng.normal(size=(3, 3))
    full = full + full.T
    frames = [
        _with(_atoms(2), energy=np.float32(1.5), forces=forces[0], stress=full),  # 3x3 stress
        _with(_atoms(3), forces=forces[1]),  # forces only
        _with(_atoms(4), energy=-2.0, stress=np.arange(6.0)),  # Voigt stress, no forces
        _atoms(5),  # no calculator at all
        _with(_atoms(2), energy=np.float64(3.0), forces=forces[4]),
        _with(_atoms(3), energy=4, forces=forces[5].tolist()),  # an int and a list
    ]
    columns = columns_from_atoms(frames)
    assert columns.n_atoms.tolist() == [2, 3, 4, 5, 2, 3]
    assert columns.mask('energy').tolist() == [True, False, True, False, True, True]
    energy = columns.frame['energy']
    assert energy.dtype == np.float64
    assert energy[[0, 2, 4, 5]].tolist() == [1.5, -2.0, 3.0, 4.0]
    assert np.isnan(energy[[1, 3]]).all()
    assert columns.mask('forces').tolist() == [True, True, False, False, True, True]
    offsets = columns.offsets
    for k in (0, 1, 4, 5):
        assert np.array_equal(columns.atom['forces'][offsets[k] : offsets[k + 1]], forces[k])
    for k in (2, 3):
        assert np.isnan(columns.atom['forces'][offsets[k] : offsets[k + 1]]).all()
    assert columns.mask('stress').tolist() == [True, False, True, False, False, False]
    assert np.array_equal(columns.frame['stress'][0], voigt_stress(full, 'x'))
    assert columns.frame['stress'][2].tolist() == list(np.arange(6.0))
    assert np.isnan(columns.frame['stress'][[1, 3, 4, 5]]).all()
    positions = np.concatenate([a.positions for a in frames])
    assert np.array_equal(columns.atom['positions'], positions)
    assert columns.atom['numbers'].dtype == np.int64
    assert np.array_equal(columns.frame['cell'], np.array([a.cell.array for a in frames]))
    assert columns.frame['pbc'].shape == (6, 3) and not columns.frame['pbc'].any()


def test_labels_read_from_a_live_calculator_are_its_results():
    atoms = _atoms(3)
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    columns = columns_from_atoms([atoms, _atoms(2)])
    assert columns.frame['energy'][0] == energy
    assert np.array_equal(columns.atom['forces'][:3], forces)
    assert columns.mask('energy').tolist() == [True, False]


def test_forces_of_the_wrong_shape_are_named_even_when_the_total_matches():
    frames = [
        _with(_atoms(3), forces=np.zeros((3, 3))),
        _with(_atoms(3), forces=np.zeros((4, 3))),  # one row too many ...
        _with(_atoms(3), forces=np.zeros((2, 3))),  # ... one too few: the total still adds up
    ]
    frames[1].calc.results['forces'] = np.zeros((4, 3))
    frames[2].calc.results['forces'] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r'frame 1: forces must have shape \(3, 3\), got \(4, 3\)'):
        columns_from_atoms(frames)
    frames = [_with(_atoms(2), forces=np.zeros((2, 3))), _with(_atoms(2), forces=np.zeros((2, 3)))]
    frames[1].calc.results['forces'] = np.zeros((3, 2))  # transposed: same size, wrong shape
    with pytest.raises(ValueError, match=r'frame 1: forces must have shape \(2, 3\), got \(3, 2\)'):
        columns_from_atoms(frames)


def test_stress_of_a_wrong_shape_is_named():
    frames = [_with(_atoms(2), stress=np.zeros(6)), _with(_atoms(2), stress=np.zeros(6))]
    frames[1].calc.results['stress'] = np.zeros((2, 3))  # six numbers, but not Voigt
    with pytest.raises(ValueError, match='frame 1: stress must have 6'):
        columns_from_atoms(frames)


def test_text_metadata_in_every_frame_and_in_some():
    frames = [_atoms(2, shift=k) for k in range(4)]
    for k, atoms in enumerate(frames):
        atoms.info['method'] = ['md', 'rattle'][k % 2]
    frames[2].info['source'] = 'dft'
    frames[3].info['tag'] = np.str_('numpy text')
    columns = columns_from_atoms(frames)
    assert columns.frame['method'].dtype == object
    assert columns.frame['method'].tolist() == ['md', 'rattle', 'md', 'rattle']
    assert 'method' not in columns.present
    assert columns.mask('source').tolist() == [False, False, True, False]
    assert columns.frame['source'].tolist() == ['', '', 'dft', '']
    assert columns.frame['tag'][3] == 'numpy text'
    with pytest.raises(ValueError, match="'method'"):
        frames[1].info['method'] = 7
        columns_from_atoms(frames)


def test_named_label_keys_take_precedence_over_the_calculator():
    atoms = _with(_atoms(2), energy=1.0, forces=np.ones((2, 3)))
    atoms.info['REF_energy'] = 5.0
    atoms.arrays['REF_forces'] = np.full((2, 3), 2.0)
    atoms.info['REF_stress'] = np.arange(6.0)
    columns = columns_from_atoms(
        [atoms], energy_key='REF_energy', forces_key='REF_forces', stress_key='REF_stress'
    )
    assert columns.frame['energy'].tolist() == [5.0]
    assert np.array_equal(columns.atom['forces'], np.full((2, 3), 2.0))
    assert columns.frame['stress'][0].tolist() == list(np.arange(6.0))
    assert 'REF_energy' not in columns.frame and 'REF_forces' not in columns.atom


def test_frame_dictionaries_with_scalar_and_triple_pbc_and_list_cells():
    frames = [
        {'numbers': [1], 'positions': [[0, 0, 0]], 'pbc': True, 'cell': np.eye(3).tolist()},
        {'numbers': [1], 'positions': [[0, 0, 0]], 'pbc': [True, False, True]},
        {'numbers': [1], 'positions': [[0, 0, 0]], 'cell': np.arange(9.0)},  # flat 9
        {'numbers': [1], 'positions': [[0, 0, 0]], 'pbc': np.array([False, True, False])},
    ]
    columns = columns_from_frames(frames)
    assert columns.frame['pbc'].tolist() == [
        [True, True, True],
        [True, False, True],
        [False, False, False],
        [False, True, False],
    ]
    assert np.array_equal(columns.frame['cell'][0], np.eye(3))
    assert np.array_equal(columns.frame['cell'][2], np.arange(9.0).reshape(3, 3))
    assert np.array_equal(columns.frame['cell'][1], np.zeros((3, 3)))
    with pytest.raises(ValueError, match='frame 1: cell must be 3x3'):
        columns_from_frames([frames[0], {**frames[1], 'cell': np.zeros(4)}])


def test_positions_of_compensating_wrong_lengths_are_named():
    frames = [
        {'numbers': [1, 1], 'positions': np.zeros((2, 3))},
        {'numbers': [1, 1], 'positions': np.zeros((3, 3))},  # one row too many ...
        {'numbers': [1, 1], 'positions': np.zeros((1, 3))},  # ... one too few
    ]
    with pytest.raises(ValueError, match=r'frame 1: positions must have shape \(2, 3\)'):
        columns_from_frames(frames)
    with pytest.raises(ValueError, match=r'frame 0: cell must be 3x3, got shape \(\)'):
        columns_from_frames([{'numbers': [1], 'positions': [[0, 0, 0]], 'cell': 5.0}])


def test_labelled_extxyz_puts_every_present_label_under_the_reference_keys(tmp_path):
    from ase.io import read

    rng = np.random.default_rng(3)
    full = _with(_atoms(3), energy=-1.5, forces=rng.normal(size=(3, 3)), stress=rng.normal(size=6))
    full.info['generation_method'] = 'rattle'
    no_stress = _with(_atoms(2), energy=0.25, forces=rng.normal(size=(2, 3)))
    unlabelled = _atoms(2)
    live = _atoms(4, shift=0.1)
    live.calc = EMT()
    keyed = _atoms(2)
    keyed.info['REF_energy'] = 7.0
    frames = [full, no_stress, unlabelled, live, keyed]

    path = tmp_path / 'train.xyz'
    assert write_labelled_extxyz(frames, path) == 5
    back = read(path, index=':')

    assert back[0].info['REF_energy'] == pytest.approx(-1.5)
    np.testing.assert_allclose(back[0].arrays['REF_forces'], full.get_forces())
    np.testing.assert_allclose(
        np.reshape(back[0].info['REF_stress'], (3, 3)), full.get_stress(voigt=False)
    )
    assert back[0].info['generation_method'] == 'rattle'
    assert 'REF_stress' not in back[1].info  # missing, never zero
    assert not {'REF_energy', 'REF_stress'} & set(back[2].info)
    assert 'REF_forces' not in back[2].arrays
    assert back[3].info['REF_energy'] == pytest.approx(live.get_potential_energy())
    np.testing.assert_allclose(back[3].arrays['REF_forces'], live.get_forces(), atol=1e-8)
    assert back[4].info['REF_energy'] == 7.0


# --------------------------------------------------------------------------------------------------
# Dicts and lists in ``atoms.info`` are stored as JSON and read back as the same values.


def _plain(value):
    """``value`` with numpy arrays, numpy scalars and tuples as JSON's lists and numbers."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(item) for item in value]
    return value.item() if isinstance(value, np.generic) else value


def _assert_json_equal(got, expected):
    """Equal once numpy/tuples are made plain, and only made of JSON's own types."""
    assert got == _plain(expected)
    assert json.loads(json.dumps(got)) == got  # nothing but dicts, lists, text and numbers


def test_slab_adsorbate_info_round_trips_through_a_stored_dataset():
    slab = fcc111('Cu', (2, 2, 3), vacuum=6.0)
    expected = slab.info['adsorbate_info']  # a dict holding a numpy array and tuples
    assert isinstance(expected, dict) and isinstance(expected['cell'], np.ndarray)
    node = PESData.from_ase([slab, bulk('Cu', 'fcc', a=3.6)]).store()
    back = PESData.collection.get(pk=node.pk)
    got = back.get_atoms(0).info['adsorbate_info']
    _assert_json_equal(got, expected)
    np.testing.assert_array_equal(got['cell'], expected['cell'])  # floats exact, not rounded
    assert back.to_ase()[0].info == {'adsorbate_info': got}
    assert 'adsorbate_info' not in back.get_atoms(1).info  # absent, not an empty dict
    assert back.to_frames()[0]['info']['adsorbate_info'] == got
    assert node.base.attributes.get('metadata_columns') == ['json:adsorbate_info', 'tags']


def test_list_values_and_nested_dicts_with_numpy_values():
    frames = [_atoms(2, shift=k) for k in range(3)]
    frames[0].info['history'] = ['rattle', 0.05, 7, True, None]
    frames[1].info['history'] = []
    frames[1].info['params'] = {
        'strain': np.array([[1.0, 0.01], [0.0, 0.99]]),
        'seed': np.int64(12),
        'scale': np.float32(0.5),
        'flags': (np.bool_(True), 'x'),
        'inner': {'steps': [np.arange(3), {'deep': np.float64(-2.25)}]},
    }
    frames[2].info['params'] = 3.5  # a scalar under the same key in another frame
    columns = columns_from_atoms(frames)
    assert columns.mask('json:history').tolist() == [True, True, False]
    assert columns.mask('json:params').tolist() == [False, True, False]
    assert columns.mask('params').tolist() == [False, False, True]
    back = atoms_from_columns(read_shard(io.BytesIO(shard_bytes(columns))))
    assert back[0].info['history'] == ['rattle', 0.05, 7, True, None]
    assert back[1].info['history'] == []
    params = back[1].info['params']
    _assert_json_equal(params, frames[1].info['params'])
    assert params['inner']['steps'] == [[0, 1, 2], {'deep': -2.25}]
    assert type(params['seed']) is int and type(params['scale']) is float
    assert back[2].info == {'params': 3.5}
    # frame dictionaries take and give the same values
    records = frame_records(columns_from_frames([{**r} for r in frame_records(columns)]))
    assert records[1]['info']['params'] == params


@pytest.mark.parametrize(
    ('value', 'where'),
    [
        ({'ok': 1, 'bad': object()}, r"info\['meta'\]\['bad'\] is of type object"),
        ([1, {'z': 1j}], r"info\['meta'\]\[1\]\['z'\] is of type complex"),
        ({3: 'three'}, r'the key 3 of type int; JSON keys are text'),
        ({'when': np.datetime64('2024-01-01')}, r"info\['meta'\]\['when'\] is of type"),
    ],
    ids=['object', 'complex', 'int-key', 'datetime'],
)
def test_values_without_a_json_form_are_refused_naming_the_key(value, where):
    frames = [_atoms(2), _atoms(2, shift=1.0)]
    frames[0].info['meta'] = {'fine': [1, 2]}
    frames[1].info['meta'] = value
    with pytest.raises(ValueError, match=r"frame 1: info 'meta' cannot be stored as JSON") as info:
        columns_from_atoms(frames)
    assert re.search(where, str(info.value)), info.value


def test_info_keys_with_the_json_prefix_are_refused():
    atoms = _atoms(2)
    atoms.info['json:meta'] = 'text'
    with pytest.raises(ValueError, match="info key 'json:meta' starts with 'json:'"):
        columns_from_atoms([atoms])


def test_empty_metadata_does_not_swallow_the_next_key(tmp_path):
    """ASE writes '' as ``key=`` and reads the next pair into it: such values are left out."""
    from ase.io import read

    atom = Atoms('C', positions=[[3.0, 3.0, 3.0]], cell=[6.0, 6.0, 6.0], pbc=False)
    atom.info.update(generation_method='isolated_atom', parent_id='')
    atom.calc = SinglePointCalculator(atom, energy=-146.1, forces=np.zeros((1, 3)))
    dataset = PESData.from_ase([atom])  # no split column: the label follows parent_id
    labelled, plain = tmp_path / 'labelled.xyz', tmp_path / 'plain.xyz'
    write_labelled_extxyz(dataset.iter_atoms(), labelled)
    dataset.to_extxyz(plain)
    back = read(labelled, format='extxyz')
    assert back.info['REF_energy'] == pytest.approx(-146.1)
    assert 'parent_id' not in back.info and back.info['generation_method'] == 'isolated_atom'
    again = read(plain, format='extxyz')
    assert again.get_potential_energy() == pytest.approx(-146.1)
    assert 'parent_id' not in again.info
    assert dataset.get_atoms(0).info['parent_id'] == ''  # the dataset itself keeps it
