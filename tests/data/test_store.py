"""The pure frame-store layer (no AiiDA): columns, conversions, shards, index and reading.

The strategies and comparison helpers defined here are reused by the node-level tests
(``from .test_store import ...``).
"""

import io

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aiida_trainspot.data.columns import (
    LABEL_COLUMNS,
    STRUCTURE_COLUMNS,
    Columns,
    ColumnSpec,
    atom_indices,
    concatenate_columns,
)
from aiida_trainspot.data.convert import (
    atoms_from_columns,
    columns_from_atoms,
    columns_from_frames,
    frame_records,
    full_stress,
    voigt_stress,
)
from aiida_trainspot.data.store import (
    CorruptDatasetError,
    DatasetIndex,
    FrameStore,
    concatenate_indices,
    content_name,
    shard_bytes,
    write_shard,
)

# --------------------------------------------------------------------------------------------------
# Strategies: ragged datasets with optional labels and metadata.

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
BOUNDED = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=64)
TEXT = st.text(st.characters(codec='utf-8', exclude_characters='\x00'), max_size=12)

#: Metadata keys with a fixed type each (a key's type never changes between frames).
METADATA = {
    'method': TEXT,
    'step': st.integers(-(2**63), 2**63 - 1),
    'temperature': FINITE,
    'converged': st.booleans(),
    'dipole': hnp.arrays(np.float64, 3, elements=FINITE),
}
#: Extra per-atom arrays: name -> (dtype, trailing shape, element strategy).
ATOM_ARRAYS = {
    'charges': (np.float64, (), BOUNDED),
    'tags': (np.int64, (), st.integers(-1000, 1000)),
    'moments': (np.float64, (3,), BOUNDED),
}
SPACING = 1.7  # atoms of a generated frame sit on a line, >= 1.2 Å apart


@st.composite
def frame_dicts(draw, max_atoms=10):
    """One frame dictionary: 1..max_atoms atoms, random pbc and cell, random optional labels."""
    n = draw(st.integers(1, max_atoms))
    numbers = draw(hnp.arrays(np.int64, n, elements=st.integers(1, 118)))
    jitter = draw(hnp.arrays(np.float64, (n, 3), elements=st.floats(0, 0.5)))
    positions = jitter + np.arange(n)[:, None] * np.array([SPACING, 0.0, 0.0])
    pbc = np.array(draw(st.tuples(st.booleans(), st.booleans(), st.booleans())))
    if pbc.any() or draw(st.booleans()):
        length = draw(st.floats(20, 30))
        shear = draw(st.floats(-3, 3))
        cell = np.array([[length, 0, 0], [shear, length, 0], [0, 0, length]])
    else:
        cell = np.zeros((3, 3))
    frame = {'numbers': numbers, 'positions': positions, 'cell': cell, 'pbc': pbc}
    if draw(st.booleans()):
        frame['energy'] = draw(FINITE)
    if draw(st.booleans()):
        frame['forces'] = draw(hnp.arrays(np.float64, (n, 3), elements=BOUNDED))
    if draw(st.booleans()):
        frame['stress'] = draw(hnp.arrays(np.float64, 6, elements=BOUNDED))
    frame['info'] = {k: draw(s) for k, s in METADATA.items() if draw(st.booleans())}
    frame['arrays'] = {
        k: draw(hnp.arrays(dtype, (n, *shape), elements=elements))
        for k, (dtype, shape, elements) in ATOM_ARRAYS.items()
        if draw(st.booleans())
    }
    return frame


def datasets(min_frames=1, max_frames=20, max_atoms=10):
    """Lists of frame dictionaries."""
    return st.lists(frame_dicts(max_atoms), min_size=min_frames, max_size=max_frames)


def atoms_from_frame(frame):
    """The ``ase.Atoms`` equivalent of a frame dictionary (labels on a SinglePointCalculator)."""
    atoms = Atoms(
        numbers=frame['numbers'], positions=frame['positions'], cell=frame['cell'], pbc=frame['pbc']
    )
    atoms.info.update(frame['info'])
    for key, value in frame['arrays'].items():
        atoms.new_array(key, value)
    results = {k: frame[k] for k in LABEL_COLUMNS if frame.get(k) is not None}
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


# --------------------------------------------------------------------------------------------------
# Comparison helpers.


def assert_same_value(got, expected, where):
    """Exact equality that also keeps the kind of value (text, bool, integer, float, array)."""
    if isinstance(expected, str):
        assert isinstance(got, str), where
        assert got == expected, where
    elif isinstance(expected, (bool, np.bool_)):
        assert isinstance(got, (bool, np.bool_)), f'{where}: {got!r} is not a bool'
        assert bool(got) == bool(expected), where
    elif isinstance(expected, (int, np.integer)):
        assert isinstance(got, (int, np.integer)), f'{where}: {got!r} is not an integer'
        assert not isinstance(got, (bool, np.bool_)), where
        assert int(got) == int(expected), where
    elif isinstance(expected, (float, np.floating)):
        assert isinstance(got, (float, np.floating)), f'{where}: {got!r} is not a float'
        assert np.array_equal(got, expected), f'{where}: {got!r} != {expected!r}'
    else:
        expected = np.asarray(expected)
        got = np.asarray(got)
        assert got.dtype.kind == expected.dtype.kind, f'{where}: {got.dtype} vs {expected.dtype}'
        assert got.shape == expected.shape, f'{where}: {got.shape} vs {expected.shape}'
        assert np.array_equal(got, expected), f'{where}: {got!r} != {expected!r}'


def assert_record_matches(got, expected, where=''):
    """A frame record read back equals the frame dictionary that was written."""
    assert np.array_equal(got['numbers'], np.asarray(expected['numbers']).reshape(-1)), where
    assert np.array_equal(got['positions'], np.asarray(expected['positions'], float)), where
    cell = np.asarray(expected.get('cell', np.zeros((3, 3))), float).reshape(3, 3)
    assert np.array_equal(got['cell'], cell), where
    pbc = np.broadcast_to(np.asarray(expected.get('pbc', False), bool), (3,))
    assert np.array_equal(got['pbc'], pbc), where
    for label in LABEL_COLUMNS:
        value = expected.get(label)
        if value is None:
            assert label not in got, f'{where}: {label} read back for a frame without one'
        else:
            if label == 'stress':
                value = voigt_stress(value, where)
            assert label in got, f'{where}: {label} lost'
            assert_same_value(got[label], np.asarray(value, float), f'{where} {label}')
    info = expected.get('info') or {}
    assert set(got['info']) == set(info), where
    for key, value in info.items():
        assert_same_value(got['info'][key], value, f'{where} info[{key!r}]')
    arrays = expected.get('arrays') or {}
    assert set(got['arrays']) == set(arrays), where
    for key, value in arrays.items():
        assert_same_value(got['arrays'][key], value, f'{where} arrays[{key!r}]')


def assert_records_equal(got, expected, where=''):
    """Two records read back (from :func:`frame_records`) are identical."""
    top = set(got) - {'info', 'arrays'}
    assert top == set(expected) - {'info', 'arrays'}, where
    for key in top:
        assert_same_value(got[key], expected[key], f'{where} {key}')
    for part in ('info', 'arrays'):
        assert set(got[part]) == set(expected[part]), f'{where} {part}'
        for key in got[part]:
            assert_same_value(got[part][key], expected[part][key], f'{where} {part}[{key!r}]')


def assert_columns_equal(got: Columns, expected: Columns):
    """Same frames, same columns and masks, same values wherever a value is present."""
    assert np.array_equal(got.n_atoms, expected.n_atoms)
    assert set(got.frame) == set(expected.frame)
    assert set(got.atom) == set(expected.atom)
    frame_of_atom = np.repeat(np.arange(got.n_frames), got.n_atoms)
    for name in got.names:
        mask = got.mask(name)
        assert np.array_equal(mask, expected.mask(name)), name
        a, b = got.column(name), expected.column(name)
        assert a.shape == b.shape, name
        keep = mask if name in got.frame else mask[frame_of_atom]
        if a.dtype == object or b.dtype == object:
            assert list(a[keep]) == list(b[keep]), name
        else:
            assert np.array_equal(a[keep], b[keep]), name


def assert_atoms_equal(got: Atoms, expected: Atoms, where=''):
    """Exact equality of structure, labels (present or absent), info and per-atom arrays."""
    assert np.array_equal(got.numbers, expected.numbers), where
    assert np.array_equal(got.positions, expected.positions), where
    assert np.array_equal(got.cell.array, expected.cell.array), where
    assert np.array_equal(got.pbc, expected.pbc), where
    expected_results = {
        k: v for k, v in getattr(expected.calc, 'results', {}).items() if k in LABEL_COLUMNS
    }
    got_results = getattr(got.calc, 'results', {}) if got.calc is not None else {}
    if not expected_results:
        assert got.calc is None, f'{where}: a calculator appeared on an unlabelled frame'
    assert set(got_results) == set(expected_results), where
    for key, value in expected_results.items():
        assert_same_value(got_results[key], value, f'{where} {key}')
    assert set(got.info) == set(expected.info), where
    for key, value in expected.info.items():
        assert_same_value(got.info[key], value, f'{where} info[{key!r}]')
    assert set(got.arrays) == set(expected.arrays), where
    for key, value in expected.arrays.items():
        assert_same_value(got.arrays[key], value, f'{where} arrays[{key!r}]')


# --------------------------------------------------------------------------------------------------
# An in-memory set of shards.


class Shards(dict):
    """Shard name -> bytes; ``add`` writes a shard and returns the index of a dataset of it."""

    def add(self, columns: Columns) -> DatasetIndex:
        data = shard_bytes(columns)
        name = content_name(data)
        self[name] = data
        return DatasetIndex.for_single_shard(name, columns)

    def add_batch(self, columns: Columns) -> tuple[str, dict[str, ColumnSpec]]:
        data = shard_bytes(columns)
        name = content_name(data)
        self[name] = data
        return name, {n: columns.spec(n) for n in columns.names}

    def open(self, index: DatasetIndex) -> FrameStore:
        return FrameStore(index, lambda name: io.BytesIO(self[name]))


def restrict(columns: Columns, names) -> Columns:
    """The columns ``names`` of ``columns`` only."""
    return Columns(
        n_atoms=columns.n_atoms,
        frame={k: v for k, v in columns.frame.items() if k in names},
        atom={k: v for k, v in columns.atom.items() if k in names},
        present={k: v for k, v in columns.present.items() if k in names},
    )


def read_all(shards: Shards, index: DatasetIndex) -> Columns:
    with shards.open(index) as store:
        return store.read()


# --------------------------------------------------------------------------------------------------
# Round trips.


@settings(max_examples=60, deadline=None)
@given(frames=datasets())
def test_round_trip_through_a_shard_is_exact(frames):
    shards = Shards()
    index = shards.add(columns_from_frames(frames))
    # the index survives its own serialisation
    index = DatasetIndex.from_file(io.BytesIO(index.to_bytes()))
    with shards.open(index) as store:
        assert len(store) == len(frames)
        records = frame_records(store.read())
        assert np.array_equal(store.n_atoms(), [len(f['numbers']) for f in frames])
    assert len(records) == len(frames)
    for i, (got, expected) in enumerate(zip(records, frames, strict=True)):
        assert_record_matches(got, expected, f'frame {i}')


@settings(max_examples=30, deadline=None)
@given(frames=datasets(), data=st.data())
def test_reading_frames_or_chunks_equals_taking_them(frames, data):
    shards = Shards()
    index = shards.add(columns_from_frames(frames))
    n = len(frames)
    selection = data.draw(st.lists(st.integers(0, n - 1), max_size=25), label='frames')
    chunk = data.draw(st.integers(1, n + 2), label='chunk')
    with shards.open(index) as store:
        full = store.read()
        assert_columns_equal(store.read(selection), full.take(selection))
        chunks = list(store.iter_chunks(chunk))
        assert [start for start, _ in chunks] == list(range(0, n, chunk))
        assert_columns_equal(concatenate_columns(c for _, c in chunks), full)
        some = data.draw(st.sampled_from(sorted(full.names)), label='column')
        partial = store.read(selection, [some])
        assert set(partial.names) == {*STRUCTURE_COLUMNS, some}
        assert_columns_equal(partial, restrict(full.take(selection), partial.names))


@settings(max_examples=40, deadline=None)
@given(frames=datasets(max_frames=8))
def test_ase_conversion_round_trip_is_exact(frames):
    atoms_list = [atoms_from_frame(f) for f in frames]
    shards = Shards()
    index = shards.add(columns_from_atoms(atoms_list))
    back = atoms_from_columns(read_all(shards, index))
    for i, (got, expected) in enumerate(zip(back, atoms_list, strict=True)):
        assert_atoms_equal(got, expected, f'frame {i}')


def test_missing_values_are_masked_not_zero():
    frames = [
        {'numbers': [1], 'positions': [[0, 0, 0]], 'energy': 0.0, 'info': {'step': 0}},
        {'numbers': [1, 1], 'positions': [[0, 0, 0], [1, 0, 0]], 'forces': np.zeros((2, 3))},
        {'numbers': [8], 'positions': [[0, 0, 0]], 'info': {'method': 'md'}},
    ]
    shards = Shards()
    columns = read_all(shards, shards.add(columns_from_frames(frames)))
    assert columns.mask('energy').tolist() == [True, False, False]
    assert columns.mask('forces').tolist() == [False, True, False]
    assert columns.mask('stress').tolist() == [False, False, False]
    assert columns.mask('step').tolist() == [True, False, False]
    assert columns.mask('method').tolist() == [False, False, True]
    # the fill values of missing floats are NaN, never a plausible zero
    assert np.isnan(columns.frame['energy'][1:]).all()
    assert np.isnan(columns.atom['forces'][:1]).all() and np.isnan(columns.atom['forces'][3:]).all()
    assert columns.frame['energy'][0] == 0.0
    records = frame_records(columns)
    assert 'energy' not in records[1] and 'forces' not in records[0] and 'stress' not in records[2]
    assert records[1]['info'] == {} and records[0]['info'] == {'step': 0}


def test_stress_voigt_conversion():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(3, 3))
    full = full + full.T
    voigt = voigt_stress(full, 'x')
    assert voigt.tolist() == [
        full[0, 0],
        full[1, 1],
        full[2, 2],
        full[1, 2],
        full[0, 2],
        full[0, 1],
    ]
    assert np.array_equal(full_stress(voigt), full)
    assert np.array_equal(voigt_stress(voigt, 'x'), voigt)
    frames = [{'numbers': [1], 'positions': [[0, 0, 0]], 'stress': full}]
    columns = columns_from_frames(frames)
    assert np.array_equal(columns.frame['stress'][0], voigt)
    with pytest.raises(ValueError, match='frame 0: stress must have 6'):
        columns_from_frames([{'numbers': [1], 'positions': [[0, 0, 0]], 'stress': [1, 2, 3]}])


def test_atom_indices_and_take():
    columns = columns_from_frames(
        [
            {'numbers': [k + 1] * (k + 1), 'positions': np.arange(3 * (k + 1)).reshape(-1, 3) + k}
            for k in range(5)
        ]
    )
    offsets = columns.offsets
    assert offsets.tolist() == [0, 1, 3, 6, 10, 15]
    assert atom_indices(offsets, np.array([3, 0, 3])).tolist() == [6, 7, 8, 9, 0, 6, 7, 8, 9]
    assert atom_indices(offsets, np.array([], dtype=int)).tolist() == []
    taken = columns.take([4, 1])
    assert taken.n_atoms.tolist() == [5, 2]
    assert taken.atom['numbers'].tolist() == [5] * 5 + [2] * 2
    assert np.array_equal(
        taken.atom['positions'], columns.atom['positions'][[10, 11, 12, 13, 14, 1, 2]]
    )


def test_empty_subset_reads_as_zero_frames():
    shards = Shards()
    frames = [{'numbers': [1, 2], 'positions': [[0, 0, 0], [1, 1, 1]], 'energy': 1.0}]
    index = shards.add(columns_from_frames(frames))
    empty = index.subset(np.zeros(0, dtype=int))
    columns = read_all(shards, empty)
    assert columns.n_frames == 0
    assert columns.atom['positions'].shape == (0, 3)
    assert frame_records(columns) == []


# --------------------------------------------------------------------------------------------------
# Derived indices: subset, concatenation and new columns equal the same operation on the data.


@settings(max_examples=40, deadline=None)
@given(frames=datasets(), data=st.data())
def test_subset_index_equals_take(frames, data):
    shards = Shards()
    index = shards.add(columns_from_frames(frames))
    full = read_all(shards, index)
    selection = data.draw(st.lists(st.integers(0, len(frames) - 1), max_size=30))
    sub = DatasetIndex.from_file(io.BytesIO(index.subset(np.array(selection, int)).to_bytes()))
    assert sub.shards == (index.shards if selection else [])
    assert_columns_equal(read_all(shards, sub), full.take(selection))


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(datasets(max_frames=8), min_size=1, max_size=4), data=st.data())
def test_concatenated_index_equals_concatenated_columns(parts, data):
    shards = Shards()
    indices = [shards.add(columns_from_frames(frames)) for frames in parts]
    # also a subset of the first dataset, sharing its shard
    selection = data.draw(st.lists(st.integers(0, len(parts[0]) - 1), max_size=6))
    indices.append(indices[0].subset(np.array(selection, int)))
    reads = [read_all(shards, index) for index in indices]
    joined = concatenate_indices(indices)
    assert sorted(joined.shards) == sorted(set(shards))
    assert_columns_equal(read_all(shards, joined), concatenate_columns(reads))
    # and the records are those of the frames written, in order
    expected = [*(f for frames in parts for f in frames), *(parts[0][i] for i in selection)]
    records = frame_records(read_all(shards, joined))
    for i, (got, frame) in enumerate(zip(records, expected, strict=True)):
        assert_record_matches(got, frame, f'frame {i}')


@settings(max_examples=40, deadline=None)
@given(frames=datasets(), data=st.data())
def test_with_shard_sets_exactly_the_selected_frames(frames, data):
    shards = Shards()
    index = shards.add(columns_from_frames(frames))
    before = frame_records(read_all(shards, index))
    n = len(frames)
    selection = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    k = len(selection)
    n_atoms = np.array([len(frames[i]['numbers']) for i in selection])
    energy = data.draw(hnp.arrays(np.float64, k, elements=FINITE))
    energy_present = data.draw(hnp.arrays(bool, k))
    charges = data.draw(hnp.arrays(np.float64, int(n_atoms.sum()), elements=BOUNDED))
    batch = Columns(
        n_atoms=n_atoms,
        frame={'energy': energy, 'round': np.arange(k, dtype=np.int64) + 100},
        atom={'charges': charges},
        present={'energy': energy_present},
    )
    name, specs = shards.add_batch(batch)
    updated = index.with_shard(name, np.array(selection), specs)
    updated = DatasetIndex.from_file(io.BytesIO(updated.to_bytes()))
    assert set(updated.shards) == {*index.shards, name}
    after = frame_records(read_all(shards, updated))
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    position = {frame: p for p, frame in enumerate(selection)}
    for i in range(n):
        if i not in position:
            assert_records_equal(after[i], before[i], f'unselected frame {i}')
            continue
        p = position[i]
        expected = {
            key: value
            for key, value in before[i].items()
            if key not in ('energy', 'info', 'arrays')
        }
        if energy_present[p]:
            expected['energy'] = energy[p]
        expected['info'] = {**before[i]['info'], 'round': np.int64(100 + p)}
        expected['arrays'] = {**before[i]['arrays'], 'charges': charges[starts[p] : starts[p + 1]]}
        assert_records_equal(after[i], expected, f'selected frame {i}')


def test_with_shard_refuses_structure_and_clashing_columns():
    shards = Shards()
    frames = [{'numbers': [1], 'positions': [[0, 0, 0]], 'energy': 1.0, 'info': {'m': 'md'}}]
    index = shards.add(columns_from_frames(frames))
    batch = Columns(n_atoms=[1], atom={'positions': np.ones((1, 3))})
    name, specs = shards.add_batch(batch)
    with pytest.raises(ValueError, match='structure columns'):
        index.with_shard(name, np.array([0]), specs)
    batch = Columns(n_atoms=[1], frame={'energy': np.array(['high'], dtype=object)})
    name, specs = shards.add_batch(batch)
    with pytest.raises(ValueError, match="'energy'"):
        index.with_shard(name, np.array([0]), specs)
    batch = Columns(n_atoms=[1], frame={'energy': np.ones((1, 2))})
    name, specs = shards.add_batch(batch)
    with pytest.raises(ValueError, match="'energy'"):
        index.with_shard(name, np.array([0]), specs)


def test_concatenation_widens_numbers_and_refuses_text_into_numbers():
    shards = Shards()
    a = shards.add(
        columns_from_frames([{'numbers': [1], 'positions': [[0, 0, 0]], 'info': {'s': 3}}])
    )
    b = shards.add(
        columns_from_frames([{'numbers': [1], 'positions': [[0, 0, 0]], 'info': {'s': 2.5}}])
    )
    joined = read_all(shards, concatenate_indices([a, b]))
    assert joined.frame['s'].dtype == np.float64
    assert joined.frame['s'].tolist() == [3.0, 2.5]
    c = shards.add(
        columns_from_frames([{'numbers': [1], 'positions': [[0, 0, 0]], 'info': {'s': 'x'}}])
    )
    with pytest.raises(ValueError, match="'s'"):
        concatenate_indices([a, c])
    with pytest.raises(ValueError):
        concatenate_indices([])


# --------------------------------------------------------------------------------------------------
# Corruption: a damaged shard or index raises CorruptDatasetError, never reads as empty.


def _big_frames(n_frames=300, n_atoms=6, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            'numbers': rng.integers(1, 90, n_atoms),
            'positions': rng.normal(size=(n_atoms, 3)) + np.arange(n_atoms)[:, None] * 2,
            'energy': rng.normal(),
            'forces': rng.normal(size=(n_atoms, 3)),
            'info': {'method': f'm{k % 3}'},
        }
        for k in range(n_frames)
    ]


def test_corrupt_dataset_error_is_a_value_error():
    assert issubclass(CorruptDatasetError, ValueError)


@pytest.mark.parametrize('fraction', [0.0, 0.001, 0.25, 0.5, 0.9, 0.999])
def test_truncated_shard_raises(tmp_path, fraction):
    columns = columns_from_frames(_big_frames())
    path = tmp_path / 'shard.h5'
    write_shard(columns, str(path))
    data = path.read_bytes()
    name = content_name(data)
    index = DatasetIndex.for_single_shard(name, columns)
    with FrameStore(index, lambda _: str(path)) as store:
        assert store.read().n_frames == 300  # intact: reads
    path.write_bytes(data[: int(len(data) * fraction)])
    for read in (lambda s: s.read(), lambda s: s.n_atoms(), lambda s: s.read([5], ['energy'])):
        with (
            FrameStore(index, lambda _: str(path)) as store,
            pytest.raises(CorruptDatasetError, match=name),
        ):
            read(store)
    # from a file object as well (what the AiiDA repository hands out)
    with (
        FrameStore(index, lambda _: io.BytesIO(path.read_bytes())) as store,
        pytest.raises(CorruptDatasetError, match=name),
    ):
        store.read()


def test_flipped_bytes_in_float_columns_are_detected(tmp_path):
    """Per-atom floats are stored uncompressed; a checksum still catches silent corruption."""
    columns = columns_from_frames(_big_frames())
    data = bytearray(shard_bytes(columns))
    name = content_name(bytes(data))
    index = DatasetIndex.for_single_shard(name, columns)
    positions = columns.atom['positions'].tobytes()
    start = bytes(data).find(positions[:64])
    assert start > 0  # the raw positions are in the file, uncompressed
    data[start + 100] ^= 0xFF
    path = tmp_path / 'flipped.h5'
    path.write_bytes(bytes(data))
    with (
        FrameStore(index, lambda _: str(path)) as store,
        pytest.raises(CorruptDatasetError, match='corrupted'),
    ):
        store.read()


@pytest.mark.parametrize('fraction', [0.0, 0.01, 0.3, 0.6, 0.95, 0.999])
def test_truncated_index_raises(fraction):
    shards = Shards()
    index = shards.add(columns_from_frames(_big_frames()))
    data = index.to_bytes()
    assert DatasetIndex.from_file(io.BytesIO(data)).n_frames == 300
    with pytest.raises(CorruptDatasetError, match='unreadable'):
        DatasetIndex.from_file(io.BytesIO(data[: int(len(data) * fraction)]))


def test_index_of_a_derived_dataset_truncated_raises():
    shards = Shards()
    index = shards.add(columns_from_frames(_big_frames(50)))
    batch = Columns(n_atoms=np.full(3, 6), frame={'split': np.array(['a', 'b', 'c'], object)})
    name, specs = shards.add_batch(batch)
    derived = index.with_shard(name, np.array([4, 2, 40]), specs)
    data = derived.to_bytes()
    assert DatasetIndex.from_file(io.BytesIO(data)).checksum() == derived.checksum()
    for cut in (len(data) // 3, len(data) - 16):
        with pytest.raises(CorruptDatasetError):
            DatasetIndex.from_file(io.BytesIO(data[:cut]))


def test_garbage_and_wrong_kind_of_file_raise():
    shards = Shards()
    columns = columns_from_frames(_big_frames(10))
    index = shards.add(columns)
    with pytest.raises(CorruptDatasetError):
        DatasetIndex.from_file(io.BytesIO(b'\x89HDF\r\n\x1a\n' + b'\0' * 500))
    with pytest.raises(CorruptDatasetError, match='not a trainspot-pes-index'):
        DatasetIndex.from_file(io.BytesIO(shards[index.shards[0]]))
    # an index file given as a shard
    with (
        FrameStore(index, lambda _: io.BytesIO(index.to_bytes())) as store,
        pytest.raises(CorruptDatasetError, match='not a trainspot-pes-shard'),
    ):
        store.read()
    # a shard that cannot be found
    with (
        FrameStore(index, lambda name: {}[name]) as store,
        pytest.raises(CorruptDatasetError, match='cannot be opened'),
    ):
        store.read()


def test_index_pointing_past_the_end_of_a_shard_raises():
    shards = Shards()
    index = shards.add(columns_from_frames(_big_frames(20)))
    sid, row = index.locators[0]
    row = row.copy()
    row[7] = 20  # one past the last frame of the shard
    bad = DatasetIndex(index.shards, index.columns, index.column_locator, [(sid, row)])
    bad = DatasetIndex.from_file(io.BytesIO(bad.to_bytes()))  # the index itself is well formed
    with shards.open(bad) as store, pytest.raises(CorruptDatasetError, match='past the end'):
        store.read()
    with shards.open(bad) as store, pytest.raises(CorruptDatasetError, match='past the end'):
        store.n_atoms()
    with shards.open(bad) as store:
        assert store.read([0, 1]).n_frames == 2  # frames that are fine still read

    # the same for a column written later into a shard of its own
    batch = Columns(n_atoms=np.full(2, 6), frame={'energy': np.array([1.0, 2.0])})
    name, specs = shards.add_batch(batch)
    derived = index.with_shard(name, np.array([3, 9]), specs)
    k = derived.column_locator['energy']
    sid, row = derived.locators[k]
    row = row.copy()
    row[9] = 2  # the batch shard has rows 0 and 1 only
    locators = list(derived.locators)
    locators[k] = (sid, row)
    bad = DatasetIndex(derived.shards, derived.columns, derived.column_locator, locators)
    with shards.open(bad) as store, pytest.raises(CorruptDatasetError, match='past the end'):
        store.read(columns=['energy'])


def test_index_with_inconsistent_locators_raises():
    shards = Shards()
    index = shards.add(columns_from_frames(_big_frames(20)))
    sid, row = index.locators[0]
    short = DatasetIndex(index.shards, index.columns, index.column_locator, [(sid, row[:-1])])
    with pytest.raises(CorruptDatasetError, match='wrong length'):
        DatasetIndex.from_file(io.BytesIO(short.to_bytes()))
    unknown = DatasetIndex(index.shards, index.columns, index.column_locator, [(sid + 1, row)])
    with pytest.raises(CorruptDatasetError, match='does not list'):
        DatasetIndex.from_file(io.BytesIO(unknown.to_bytes()))


def test_shard_with_inconsistent_column_lengths_raises(tmp_path):
    columns = columns_from_frames(_big_frames(20))
    path = tmp_path / 'shard.h5'
    write_shard(columns, str(path))
    index = DatasetIndex.for_single_shard('x', columns)
    with h5py.File(path, 'a') as handle:
        del handle['frame/energy']
        handle['frame/energy'] = np.zeros(19)
    with (
        FrameStore(index, lambda _: str(path)) as store,
        pytest.raises(CorruptDatasetError, match="'energy' has 19 rows"),
    ):
        store.read()
