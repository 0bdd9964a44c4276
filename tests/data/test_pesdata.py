"""The ``PESData`` node: exact round trips, random access, shared storage, immutability, queries."""

import hashlib

import numpy as np
import pytest
from aiida import orm
from aiida.common.exceptions import ModificationNotAllowed
from aiida.orm.nodes.repository import NodeRepository
from aiida.plugins import DataFactory
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aiida_trainspot.data import PESData
from aiida_trainspot.data.columns import LABEL_COLUMNS, concatenate_columns
from aiida_trainspot.data.store import CorruptDatasetError

from .test_store import (
    BOUNDED,
    FINITE,
    assert_atoms_equal,
    assert_columns_equal,
    assert_record_matches,
    assert_records_equal,
    atoms_from_frame,
    datasets,
)

NODE_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def labelled(atoms, energy=True, forces=True, stress=True):
    """Attach EMT labels (only those asked for) as a SinglePointCalculator."""
    atoms.calc = EMT()
    results = {}
    if energy:
        results['energy'] = atoms.get_potential_energy()
    if forces:
        results['forces'] = atoms.get_forces()
    if stress:
        results['stress'] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def mixed_atoms():
    """Bulk, slab (T, T, F), cluster, isolated atom, unlabelled and partially labelled frames."""
    rng = np.random.default_rng(42)
    frames = []
    for k in range(3):  # bulk Cu, all labels, metadata of every kind, extra per-atom arrays
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True) * (2, 1, 1)
        atoms.rattle(0.05, seed=k)
        labelled(atoms)
        atoms.info.update(
            generation_method='md', step=k, temperature=300.0 + 0.1 * k, converged=bool(k % 2)
        )
        atoms.new_array('bader', rng.normal(size=len(atoms)))
        atoms.set_tags(np.arange(len(atoms)) - 3)
        frames.append(atoms)
    slab = fcc111('Cu', (2, 2, 3), a=3.6, vacuum=6.0)
    del slab.info['adsorbate_info']  # a dict, stored as JSON: its round trip is in test_convert
    slab.rattle(0.02, seed=7)
    frames.append(labelled(slab, stress=False))  # energy + forces, no stress
    frames[-1].info.update(generation_method='slab', step=10)
    cluster = Icosahedron('Cu', 2)
    frames.append(labelled(cluster, forces=False, stress=False))  # energy only, no pbc
    frames[-1].info['generation_method'] = 'cluster'
    atom = Atoms('Cu')
    atom.calc = SinglePointCalculator(atom, energy=-0.0)  # isolated atom: a zero that is real
    frames.append(atom)
    water = molecule('H2O')  # no labels at all
    water.info['generation_method'] = 'manual'
    frames.append(water)
    alloy = bulk('Au', 'fcc', a=4.0, cubic=True)
    alloy.numbers[1] = 29
    alloy.new_array('bader', np.zeros(4))  # present, and zero
    frames.append(alloy)  # no labels, periodic
    pressed = bulk('Cu', 'fcc', a=3.5)
    frames.append(labelled(pressed, forces=False))  # energy + stress, no forces
    squeezed = bulk('Cu', 'fcc', a=3.55, orthorhombic=True)
    frames.append(labelled(squeezed, energy=False, stress=False))  # forces only
    frames[-1].info['converged'] = True
    return frames


@pytest.fixture(scope='module')
def mixed():
    return mixed_atoms()


def assert_atoms_lists_equal(got, expected):
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert_atoms_equal(a, b, f'frame {i}')


def labels_present(atoms_list, label):
    return [label in (a.calc.results if a.calc is not None else {}) for a in atoms_list]


# --------------------------------------------------------------------------------------------------
# Round trips.


def test_entry_point_loads_the_class():
    assert DataFactory('trainspot.pes') is PESData


def test_round_trip_through_storage_is_exact(mixed):
    node = PESData.from_ase(mixed)
    assert_atoms_lists_equal(node.to_ase(), mixed)  # unstored
    checksum = node.base.attributes.get('checksum')
    node.store()
    assert_atoms_lists_equal(node.to_ase(), mixed)  # the same instance, now stored
    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, PESData) and loaded is not node
    assert loaded.base.attributes.get('checksum') == checksum
    assert_atoms_lists_equal(loaded.to_ase(), mixed)
    # the missing labels are missing, not zero; the real zero energy is there
    energy, present = loaded.get_column('energy')
    assert present.tolist() == labels_present(mixed, 'energy')
    assert np.isnan(energy[~present]).all()
    assert energy[5] == 0.0 and present[5]
    forces, present = loaded.get_column('forces')
    assert present.tolist() == labels_present(mixed, 'forces')
    assert forces.shape == (sum(len(a) for a in mixed), 3)
    _, present = loaded.get_column('bader')
    assert present.tolist() == ['bader' in a.arrays for a in mixed]


def test_summary_attributes(mixed):
    node = PESData.from_ase(mixed).store()
    attributes = orm.load_node(node.pk).base.attributes
    n = len(mixed)
    assert len(node) == n == attributes.get('n_frames')
    assert attributes.get('n_atoms') == sum(len(a) for a in mixed)
    assert attributes.get('species') == ['H', 'O', 'Cu', 'Au']  # by atomic number
    assert node.species == ['H', 'O', 'Cu', 'Au']
    for label in LABEL_COLUMNS:
        count = sum(labels_present(mixed, label))
        assert attributes.get('n_labelled')[label] == count
        assert attributes.get(f'n_labelled_{label}') == count
    assert attributes.get('split_counts') == {
        'train': 0,
        'validation': 0,
        'test': 0,
        'unassigned': n,
    }
    metadata = {key for a in mixed for key in a.info} | {
        key for a in mixed for key in a.arrays if key not in ('numbers', 'positions')
    }
    assert attributes.get('metadata_columns') == sorted(metadata)
    assert attributes.get('units')['energy'] == 'eV'
    assert attributes.get('units')['forces'] == 'eV/Angstrom'
    assert attributes.get('format_version') == 2
    assert len(attributes.get('checksum')) == 64
    assert np.array_equal(node.n_atoms_per_frame(), [len(a) for a in mixed])


def test_equal_content_has_equal_checksum(mixed):
    a = PESData.from_ase(mixed)
    b = PESData.from_ase(mixed)
    c = PESData.from_ase(mixed[:-1])
    assert a.base.attributes.get('checksum') == b.base.attributes.get('checksum')
    assert a.base.attributes.get('checksum') != c.base.attributes.get('checksum')


def test_named_label_keys_on_import_and_export(mixed):
    keys = {'energy': 'REF_energy', 'forces': 'REF_forces', 'stress': 'REF_stress'}
    reference = []
    for atoms in mixed:
        copy = atoms.copy()  # no calculator
        results = atoms.calc.results if atoms.calc is not None else {}
        if 'energy' in results:
            copy.info['REF_energy'] = results['energy']
        if 'forces' in results:
            copy.new_array('REF_forces', results['forces'].copy())
        if 'stress' in results:
            copy.info['REF_stress'] = results['stress'].copy()
        reference.append(copy)
    node = PESData.from_ase(
        reference, energy_key='REF_energy', forces_key='REF_forces', stress_key='REF_stress'
    ).store()
    loaded = orm.load_node(node.pk)
    assert 'REF_energy' not in loaded.base.attributes.get('metadata_columns')
    for label in LABEL_COLUMNS:
        assert loaded.base.attributes.get(f'n_labelled_{label}') == sum(
            labels_present(mixed, label)
        )
    # by default the labels come back on a calculator: the original frames
    assert_atoms_lists_equal(loaded.to_ase(), mixed)
    # with label_keys they come back under those keys, absent where missing, no calculator
    assert_atoms_lists_equal(loaded.to_ase(label_keys=keys), reference)
    assert_atoms_lists_equal(list(loaded.iter_atoms(3, label_keys=keys)), reference)
    assert_atoms_equal(loaded.get_atoms(4, label_keys=keys), reference[4])


def test_calculator_labels_are_ignored_when_keys_are_named(mixed):
    node = PESData.from_ase(mixed, energy_key='REF_energy')
    assert node.base.attributes.get('n_labelled_energy') == 0  # no frame has REF_energy
    assert node.base.attributes.get('n_labelled_forces') == sum(labels_present(mixed, 'forces'))


def assert_atoms_close(got, expected, where):
    """Equality up to the 8 decimals extended XYZ writes (structure and labels present or not)."""
    assert np.array_equal(got.numbers, expected.numbers), where
    assert np.array_equal(got.pbc, expected.pbc), where
    np.testing.assert_allclose(got.positions, expected.positions, rtol=0, atol=1e-7)
    np.testing.assert_allclose(got.cell.array, expected.cell.array, rtol=0, atol=1e-7)
    expected_results = expected.calc.results if expected.calc is not None else {}
    got_results = got.calc.results if got.calc is not None else {}
    assert set(got_results) == set(expected_results), where
    for key, value in expected_results.items():
        np.testing.assert_allclose(got_results[key], value, rtol=1e-7, atol=1e-7)
    assert set(got.info) == set(expected.info), where
    for key, value in expected.info.items():
        assert type(got.info[key]) is type(value), f'{where} {key}'
        assert got.info[key] == pytest.approx(value), f'{where} {key}'
    assert set(got.arrays) == set(expected.arrays), where
    for key, value in expected.arrays.items():
        assert got.arrays[key].dtype.kind == value.dtype.kind, f'{where} {key}'
        np.testing.assert_allclose(got.arrays[key], value, rtol=1e-7, atol=1e-7)


def test_extxyz_round_trip(mixed, tmp_path):
    node = PESData.from_ase(mixed).store()
    path = tmp_path / 'frames.xyz'
    node.to_extxyz(path, chunk_size=4)
    back = PESData.from_extxyz(path)
    assert len(back) == len(mixed)
    for label in LABEL_COLUMNS:
        assert back.base.attributes.get(f'n_labelled_{label}') == sum(labels_present(mixed, label))
    for i, (got, expected) in enumerate(zip(back.to_ase(), mixed, strict=True)):
        assert_atoms_close(got, expected, f'frame {i}')


def test_extxyz_round_trip_with_named_keys(mixed, tmp_path):
    keys = {'energy': 'REF_energy', 'forces': 'REF_forces', 'stress': 'REF_stress'}
    node = PESData.from_ase(mixed)
    path = tmp_path / 'mace.xyz'
    node.to_extxyz(path, label_keys=keys)
    text = path.read_text()
    assert 'REF_energy=' in text and 'REF_forces:R:3' in text
    assert ' energy=' not in text and ':forces:' not in text
    back = PESData.from_extxyz(
        path, energy_key='REF_energy', forces_key='REF_forces', stress_key='REF_stress'
    )
    for i, (got, expected) in enumerate(zip(back.to_ase(), mixed, strict=True)):
        assert_atoms_close(got, expected, f'frame {i}')


@NODE_SETTINGS
@given(frames=datasets(max_frames=12, max_atoms=6))
def test_random_datasets_round_trip_through_storage(frames):
    atoms_list = [atoms_from_frame(f) for f in frames]
    node = PESData.from_ase(atoms_list).store()
    loaded = orm.load_node(node.pk)
    assert_atoms_lists_equal(loaded.to_ase(), atoms_list)
    for i, (got, expected) in enumerate(zip(loaded.to_frames(), frames, strict=True)):
        assert_record_matches(got, expected, f'frame {i}')
    for label in LABEL_COLUMNS:
        count = sum(f.get(label) is not None for f in frames)
        assert loaded.base.attributes.get(f'n_labelled_{label}') == count


# --------------------------------------------------------------------------------------------------
# Derived datasets equal the same operation on the columns read.


@NODE_SETTINGS
@given(parts=st.lists(datasets(max_frames=6, max_atoms=5), min_size=1, max_size=3), data=st.data())
def test_derived_datasets_match_column_operations(parts, data):
    nodes = [PESData.from_frames(frames) for frames in parts]
    nodes[0].store()  # derive from stored and unstored parents alike
    reads = [node.get_columns() for node in nodes]
    n0 = len(parts[0])

    selection = data.draw(st.lists(st.integers(-n0, n0 - 1), max_size=10), label='subset')
    subset = nodes[0].subset(selection)
    assert_columns_equal(subset.get_columns(), reads[0].take(np.array(selection, int) % n0))
    mask = data.draw(hnp.arrays(bool, n0), label='mask')
    masked = nodes[0].subset(mask)
    assert_columns_equal(masked.get_columns(), reads[0].take(np.flatnonzero(mask)))

    joined = PESData.concatenate(nodes)
    assert len(joined) == sum(len(p) for p in parts)
    assert_columns_equal(joined.get_columns(), concatenate_columns(reads))

    n = len(joined)
    chosen = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    n_atoms = joined.n_atoms_per_frame()[chosen]
    energy = data.draw(hnp.arrays(np.float64, len(chosen), elements=FINITE), label='energy')
    present = data.draw(hnp.arrays(bool, len(chosen)), label='present')
    charges = data.draw(hnp.arrays(np.float64, int(n_atoms.sum()), elements=BOUNDED))
    before = joined.to_frames()
    updated = joined.with_columns(
        chosen,
        frame_columns={'energy': energy, 'round': np.arange(len(chosen)) + 7},
        atom_columns={'charges': charges},
        present={'energy': present},
    )
    after = updated.to_frames()
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    position = {frame: p for p, frame in enumerate(chosen)}
    for i in range(n):
        if i not in position:
            assert_records_equal(after[i], before[i], f'unselected frame {i}')
            continue
        p = position[i]
        expected = {k: v for k, v in before[i].items() if k not in ('energy', 'info', 'arrays')}
        if present[p]:
            expected['energy'] = energy[p]
        expected['info'] = {**before[i]['info'], 'round': np.int64(p + 7)}
        expected['arrays'] = {**before[i]['arrays'], 'charges': charges[starts[p] : starts[p + 1]]}
        assert_records_equal(after[i], expected, f'selected frame {i}')
    assert updated.base.attributes.get('n_labelled_energy') == sum(
        'energy' in record for record in after
    )
    # and none of this changed the datasets it started from
    assert_columns_equal(nodes[0].get_columns(), reads[0])
    for i, record in enumerate(joined.to_frames()):
        assert_records_equal(record, before[i], f'joined frame {i}')


def test_with_labels_sets_labels_of_some_frames(mixed):
    node = PESData.from_ase(mixed).store()
    unlabelled = [i for i, a in enumerate(mixed) if a.calc is None]
    n_atoms = node.n_atoms_per_frame()[unlabelled]
    energy = np.arange(len(unlabelled), dtype=float) - 5.0
    forces = np.ones((int(n_atoms.sum()), 3))
    stress = np.tile(np.arange(6.0), (len(unlabelled), 1))
    new = node.with_labels(unlabelled, energy=energy, forces=forces, stress=stress)
    assert new.base.attributes.get('n_labelled_energy') == sum(
        labels_present(mixed, 'energy')
    ) + len(unlabelled)
    atoms = new.to_ase()
    for k, i in enumerate(unlabelled):
        assert atoms[i].calc.results['energy'] == energy[k]
        assert np.array_equal(atoms[i].calc.results['forces'], np.ones((n_atoms[k], 3)))
        assert np.array_equal(atoms[i].calc.results['stress'], np.arange(6.0))
    others = [i for i in range(len(mixed)) if i not in unlabelled]
    assert_atoms_lists_equal([atoms[i] for i in others], [mixed[i] for i in others])


def test_with_columns_refuses_bad_input(mixed):
    node = PESData.from_ase(mixed)
    with pytest.raises(ValueError, match='only once'):
        node.with_columns([1, 1], {'x': [1, 2]})
    with pytest.raises(ValueError, match="'x' needs 2 rows"):
        node.with_columns([1, 2], {'x': [1, 2, 3]})
    with pytest.raises(ValueError, match="'y'"):
        node.with_columns([1, 2], {'x': [1, 2]}, present={'y': [True, False]})
    with pytest.raises(ValueError, match='no columns'):
        node.with_columns([1, 2])
    with pytest.raises(ValueError, match='structure'):
        node.with_columns([0], atom_columns={'positions': np.zeros((len(mixed[0]), 3))})
    with pytest.raises(ValueError, match="'energy'"):
        node.with_columns([0], {'energy': np.array(['high'], dtype=object)})
    with pytest.raises(ValueError, match='non-finite energy'):
        node.with_labels([2], energy=[np.nan])
    with pytest.raises(ValueError, match='non-finite forces'):
        node.with_labels([0], forces=np.full((len(mixed[0]), 3), np.inf))
    with pytest.raises(IndexError):
        node.with_labels([len(mixed)], energy=[1.0])


# Regression: the message used to give the position in the selection ('frame 0').
def test_with_labels_error_names_the_dataset_frame(mixed):
    node = PESData.from_ase(mixed)
    with pytest.raises(ValueError, match=r'frame 7\b'):
        node.with_labels([7], energy=[np.nan])


# Regression: with_columns used to check only the leading dimension of new values, so labels of
# the wrong shape were stored when the dataset had no such column yet.
@pytest.mark.parametrize(
    ('name', 'kind', 'shape'),
    [('forces', 'atom', (2,)), ('stress', 'frame', (3,)), ('energy', 'frame', (2,))],
)
def test_labels_of_the_wrong_shape_are_refused(name, kind, shape):
    frames = [{'numbers': [1, 1], 'positions': [[0, 0, 0], [1, 0, 0]]} for _ in range(3)]
    node = PESData.from_frames(frames)
    values = np.zeros((2 if kind == 'frame' else 4, *shape))
    columns = (
        {'frame_columns': {name: values}} if kind == 'frame' else {'atom_columns': {name: values}}
    )
    with pytest.raises(ValueError, match=name):
        node.with_columns([0, 2], **columns)


# --------------------------------------------------------------------------------------------------
# Random access and iteration.


@pytest.fixture(scope='module')
def stored_mixed(mixed):
    frames = [a.copy() for a in mixed] + [a for a in mixed]  # copies lose their labels
    for k, atoms in enumerate(frames[: len(mixed)]):
        atoms.info['copy'] = k
    return PESData.from_ase(frames).store(), frames


def test_get_atoms_matches_to_ase(stored_mixed):
    node, frames = stored_mixed
    node = orm.load_node(node.pk)
    full = node.to_ase()
    assert_atoms_lists_equal(full, frames)
    n = len(frames)
    for i in [*range(n), *range(-n, 0)]:
        assert_atoms_equal(node.get_atoms(i), full[i], f'frame {i}')
    for i in (n, n + 3, -n - 1):
        with pytest.raises(IndexError):
            node.get_atoms(i)


@pytest.mark.parametrize('chunk_size', [1, 2, 3, 7, 21, 22, 100])
def test_iter_atoms_in_chunks(stored_mixed, chunk_size):
    node, frames = stored_mixed
    assert_atoms_lists_equal(list(node.iter_atoms(chunk_size=chunk_size)), frames)
    starts = [start for start, _ in node.iter_columns(chunk_size)]
    assert starts == list(range(0, len(frames), chunk_size))


def test_iter_rejects_a_bad_chunk_size(stored_mixed):
    node, _ = stored_mixed
    with pytest.raises(ValueError):
        list(node.iter_atoms(chunk_size=0))


def test_get_columns_and_get_column(stored_mixed):
    node, frames = stored_mixed
    full = node.get_columns()
    part = node.get_columns(['energy', 'bader'], [5, 0, 5])
    assert set(part.names) == {'numbers', 'positions', 'cell', 'pbc', 'energy', 'bader'}
    assert np.array_equal(part.n_atoms, [len(frames[5]), len(frames[0]), len(frames[5])])
    taken = full.take([5, 0, 5])
    for name in part.names:
        assert np.array_equal(part.mask(name), taken.mask(name))
    values, present = node.get_column('generation_method')
    assert present.tolist() == ['generation_method' in a.info for a in frames]
    assert values[present].tolist() == [
        a.info['generation_method'] for a in frames if 'generation_method' in a.info
    ]
    with pytest.raises(KeyError, match='no_such_column'):
        node.get_column('no_such_column')
    assert set(node.column_names) == set(full.names)


def test_subset_selection_errors(stored_mixed):
    node, frames = stored_mixed
    with pytest.raises(ValueError, match='boolean mask'):
        node.subset(np.ones(len(frames) - 1, dtype=bool))
    with pytest.raises(TypeError):
        node.subset([0.5, 1.0])
    with pytest.raises(IndexError):
        node.subset([len(frames)])
    assert len(node.subset([])) == 0
    assert node.subset([]).to_ase() == []


def test_empty_dataset():
    node = PESData().store()
    assert len(node) == 0
    assert node.to_ase() == []
    assert node.species == []
    assert node.base.attributes.get('n_labelled') == {'energy': 0, 'forces': 0, 'stress': 0}
    joined = PESData.concatenate(
        [node, PESData.from_frames([{'numbers': [1], 'positions': [[0, 0, 0]]}])]
    )
    assert len(joined) == 1


def test_clone_reads_the_same(stored_mixed):
    node, frames = stored_mixed
    clone = node.clone()
    assert not clone.is_stored
    assert_atoms_lists_equal(clone.to_ase(), frames)
    clone.store()
    assert_atoms_lists_equal(orm.load_node(clone.pk).to_ase(), frames)


# --------------------------------------------------------------------------------------------------
# Storage: derived datasets share their parents' shards byte for byte.


def shard_objects(node, sizes=None):
    """``{content key: size}`` of the shard objects of ``node``'s repository.

    Stored nodes give the key of AiiDA's content-addressed object store (identical content,
    identical key); unstored ones the SHA-256 of the bytes. ``sizes`` caches sizes by key.
    """
    repository = node.base.repository
    sizes = {} if sizes is None else sizes
    out = {}
    for obj in repository.list_objects('shards'):
        path = f'shards/{obj.name}'
        key = obj.key
        if key is None:
            key = hashlib.sha256(repository.get_object_content(path, 'rb')).hexdigest()
        if key not in sizes:
            sizes[key] = repository.get_object_size(path)
        out[key] = sizes[key]
    return out


def _frames(n_frames, seed, method):
    """``n_frames`` labelled 108-atom Cu frames (random labels: EMT would only cost time)."""
    rng = np.random.default_rng(seed)
    base = bulk('Cu', 'fcc', a=3.6, cubic=True) * (3, 3, 3)
    frames = []
    for _ in range(n_frames):
        atoms = base.copy()
        atoms.positions += rng.uniform(-0.1, 0.1, atoms.positions.shape)
        n = len(atoms)
        atoms.calc = SinglePointCalculator(
            atoms, energy=rng.normal(), forces=rng.normal(size=(n, 3)), stress=rng.normal(size=6)
        )
        atoms.info['generation_method'] = method
        frames.append(atoms)
    return frames


def test_storage_grows_with_distinct_frames_not_with_derived_datasets():
    # Every shard carries a fixed HDF5 overhead (~35 kB measured, ~14 kB for a shard holding a
    # split column only), so the batches are big enough for the frames to dominate.
    all_frames = _frames(100, 0, 'md')
    dataset = PESData.from_ase(all_frames).store()
    nodes = [dataset]
    for round_ in range(1, 11):
        new_frames = _frames(100, round_, ['md', 'rattle'][round_ % 2])
        all_frames += new_frames
        new = PESData.from_ase(new_frames).store()
        joined = PESData.concatenate([dataset, new]).store()
        dataset = joined.assign_split(seed=round_).store()
        nodes += [new, joined, dataset]
    assert len(dataset) == len(all_frames) == 1100
    assert dataset.base.attributes.get('split_counts')['unassigned'] == 0

    sizes = {}
    distinct = {}
    referenced = 0
    for node in nodes:
        objects = shard_objects(node, sizes)
        referenced += sum(objects.values())
        distinct.update(objects)
    assert len(distinct) == 21  # 11 batches of frames, 10 split assignments
    single = PESData.from_ase(all_frames).store()
    single_size = sum(shard_objects(single).values())
    ratio = sum(distinct.values()) / single_size
    assert ratio <= 1.2, f'{ratio=:.3f}'
    # without sharing, the same history would take several times more
    assert referenced / single_size > 5
    # and the last dataset holds exactly the frames of the single one (plus a split)
    expected = single.get_columns()
    assert_columns_equal(dataset.get_columns(expected.names), expected)


def test_subset_and_concatenation_write_no_new_shard(stored_mixed):
    node, _ = stored_mixed
    parent = shard_objects(node)
    subset = node.subset([3, 1, 1, 8]).store()
    assert set(subset.base.repository.list_object_names('shards')) <= set(
        node.base.repository.list_object_names('shards')
    )
    assert set(shard_objects(subset)) <= set(parent)
    joined = PESData.concatenate([node, subset, node]).store()
    assert set(shard_objects(joined)) == set(parent)
    # a new column writes exactly one new shard, holding the new values only
    updated = joined.with_columns([0, 5], {'flag': [True, False]}).store()
    new = set(shard_objects(updated)) - set(parent)
    assert len(new) == 1
    (key,) = new
    assert shard_objects(updated)[key] < min(parent.values())


# --------------------------------------------------------------------------------------------------
# Immutability and corruption.


def snapshot(node):
    """Everything observable about a dataset: attributes, files and content."""
    repository = node.base.repository
    files = {
        name: hashlib.sha256(repository.get_object_content(name, 'rb')).hexdigest()
        for name in ['index.h5', *(f'shards/{n}' for n in repository.list_object_names('shards'))]
    }
    return dict(node.base.attributes.all), files, node.to_frames()


def assert_snapshots_equal(a, b):
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert len(a[2]) == len(b[2])
    for i, (x, y) in enumerate(zip(a[2], b[2], strict=True)):
        assert_records_equal(x, y, f'frame {i}')


def test_stored_dataset_cannot_be_modified(mixed):
    node = PESData.from_ase(mixed).store()
    repository = node.base.repository
    shard = f'shards/{repository.list_object_names("shards")[0]}'
    with pytest.raises(ModificationNotAllowed):
        repository.put_object_from_bytes(b'garbage', 'index.h5')
    with pytest.raises(ModificationNotAllowed):
        repository.put_object_from_bytes(b'garbage', shard)
    with pytest.raises(ModificationNotAllowed):
        repository.put_object_from_bytes(b'garbage', 'shards/new.h5')
    with pytest.raises(ModificationNotAllowed):
        repository.delete_object('index.h5')
    with pytest.raises(ModificationNotAllowed):
        node.base.attributes.set('n_frames', 0)
    assert_atoms_lists_equal(orm.load_node(node.pk).to_ase(), mixed)


@pytest.mark.parametrize('stored', [True, False])
def test_derived_operations_never_change_the_parent(mixed, stored, tmp_path):
    node = PESData.from_ase(mixed)
    if stored:
        node.store()
    before = snapshot(node)
    other = PESData.from_ase(mixed[:3])
    derived = [
        node.subset([0, 2]),
        node.subset(np.arange(len(mixed)) % 2 == 0),
        PESData.concatenate([node, other, node]),
        node.with_columns([1, 3], {'generation_method': np.array(['a', 'b'], dtype=object)}),
        node.with_labels([6], energy=[1.5]),
        node.assign_split(seed=3),
        node.assign_split(seed=3).assign_split(seed=4),
        node.clone(),
    ]
    node.to_extxyz(tmp_path / 'out.xyz')
    for child in derived:
        child.store()
    assert_snapshots_equal(snapshot(node), before)
    assert node.base.attributes.get('split_counts')['unassigned'] == len(mixed)
    assert_atoms_lists_equal(node.to_ase(), mixed)


def _damage(node, key, keep):
    data = node.base.repository.get_object_content(key, 'rb')
    node.base.repository.put_object_from_bytes(data[: int(len(data) * keep)], key)


@pytest.mark.parametrize('keep', [0.0, 0.5, 0.99])
def test_truncated_files_in_a_dataset_raise(stored_mixed, keep):
    node, _ = stored_mixed
    shard = f'shards/{node.base.repository.list_object_names("shards")[0]}'
    damaged = node.clone()  # unstored, so its files can be replaced
    _damage(damaged, shard, keep)
    with pytest.raises(CorruptDatasetError):
        damaged.to_ase()
    with pytest.raises(CorruptDatasetError):
        damaged.get_atoms(0)
    damaged = node.clone()
    _damage(damaged, 'index.h5', keep)
    with pytest.raises(CorruptDatasetError):
        damaged.to_ase()
    with pytest.raises(CorruptDatasetError):
        damaged.n_atoms_per_frame()
    # the original is untouched
    assert len(node.to_ase()) == len(node)


def test_a_stored_index_is_read_once_per_process(stored_mixed, monkeypatch):
    """Repository keys are content hashes, so the index of a node loaded anew is reused."""
    node, frames = stored_mixed
    node.n_atoms_per_frame()  # reads the index
    opened = []
    original = NodeRepository.open

    def spy(self, path, mode='r'):
        opened.append(path)
        return original(self, path, mode)

    monkeypatch.setattr(NodeRepository, 'open', spy)
    again = orm.load_node(node.pk)
    assert_atoms_lists_equal(again.to_ase(), frames)
    assert opened and 'index.h5' not in opened  # the shard is read, the index is not
    locator_shards, _ = again._frame_store().index.locators[0]
    with pytest.raises(ValueError, match='read-only'):
        locator_shards[0] = 1  # the shared index cannot be edited in place


def test_bad_input_raises_naming_the_frame(mixed):
    frames = [a.copy() for a in mixed]
    frames[4].positions[0] = np.nan
    with pytest.raises(ValueError, match=r'frame 4: non-finite positions'):
        PESData.from_ase(frames)
    overlapping = [a.copy() for a in mixed]
    overlapping[2].positions[1] = overlapping[2].positions[0] + 0.01
    with pytest.raises(ValueError, match=r'frame 2: atoms 0 and 1 are 0.017 Å apart'):
        PESData.from_ase(overlapping)
    # unless validation is turned off explicitly
    assert len(PESData.from_ase(overlapping, validate=False)) == len(mixed)
    frames = [a.copy() for a in mixed]
    frames[7].info['parameters'] = {'cutoff': object()}
    with pytest.raises(ValueError, match="frame 7: info 'parameters' cannot be stored as JSON"):
        PESData.from_ase(frames)
    with pytest.raises(ValueError, match=r"frame 0: unknown keys \['label'\]"):
        PESData.from_frames([{'numbers': [1], 'positions': [[0, 0, 0]], 'label': 1}])


# --------------------------------------------------------------------------------------------------
# Queries on the summary attributes.


def test_query_by_species_and_labelled_count():
    def dataset(symbols_per_frame, labelled):
        frames = []
        for k, symbols in enumerate(symbols_per_frame):
            atoms = Atoms(symbols)
            atoms.positions = np.arange(len(atoms))[:, None] * [2.0, 0, 0]
            if k < labelled:
                atoms.calc = SinglePointCalculator(atoms, energy=-1.0 * k)
            frames.append(atoms)
        return PESData.from_ase(frames).store().pk

    cu5 = dataset(['Cu2'] * 5, 5)
    cuo = dataset(['CuO', 'Cu', 'O2'], 2)
    water = dataset(['H2O'] * 8, 8)
    aucu = dataset(['AuCu'], 0)
    cu10 = dataset(['Cu'] * 10, 6)
    mine = [cu5, cuo, water, aucu, cu10]

    def query(**filters):
        builder = orm.QueryBuilder().append(
            PESData, filters={'id': {'in': mine}, **filters}, project='id'
        )
        return set(builder.all(flat=True))

    assert query(**{'attributes.species': {'contains': ['Cu']}}) == {cu5, cuo, aucu, cu10}
    assert query(**{'attributes.species': {'contains': ['Cu', 'O']}}) == {cuo}
    assert query(**{'attributes.species': {'contains': ['H']}}) == {water}
    assert query(**{'attributes.n_labelled_energy': {'>=': 5}}) == {cu5, water, cu10}
    assert query(**{'attributes.n_labelled_energy': {'>=': 6}}) == {water, cu10}
    assert query(**{'attributes.n_labelled.energy': {'>=': 5}}) == {cu5, water, cu10}
    assert query(**{'attributes.n_labelled_energy': {'==': 0}}) == {aucu}
    assert query(
        **{
            'attributes.species': {'contains': ['Cu']},
            'attributes.n_labelled_energy': {'>=': 5},
        }
    ) == {cu5, cu10}
    assert query(**{'attributes.n_frames': {'>': 5}}) == {water, cu10}
