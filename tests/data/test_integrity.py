"""Shard format 2: layout, block checksums verified on every read, narrow numbers, text, format 1.

No AiiDA: shards are written to bytes or files and read through :class:`FrameStore`.
"""

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiida_trainspot.data import store
from aiida_trainspot.data.columns import Columns, concatenate_columns
from aiida_trainspot.data.convert import columns_from_frames, frame_records
from aiida_trainspot.data.store import (
    CorruptDatasetError,
    DatasetIndex,
    FrameStore,
    content_name,
    read_shard,
    shard_bytes,
    write_shard,
)

from .test_store import assert_columns_equal, assert_record_matches, datasets


def _frames(n_frames=200, seed=0, numbers=(1, 90)):
    """Frames of 1-9 atoms, every label present in some frames only, text and integer metadata."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        n = int(rng.integers(1, 10))
        frame = {
            'numbers': rng.integers(*numbers, n),
            'positions': rng.normal(size=(n, 3)) + np.arange(n)[:, None] * 2.0,
            'cell': np.eye(3) * 30.0,
            'pbc': k % 2 == 0,
            'info': {'method': ['md', 'rattle', 'äöü'][k % 3], 'step': k},
        }
        if k % 5:
            frame['energy'] = rng.normal()
        if k % 7:
            frame['forces'] = rng.normal(size=(n, 3))
        if k % 3:
            frame['stress'] = rng.normal(size=6)
        frames.append(frame)
    return frames


def _open(data: bytes, columns: Columns) -> FrameStore:
    index = DatasetIndex.for_single_shard(content_name(data), columns)
    return FrameStore(index, lambda _: io.BytesIO(data))


def _read_all(data: bytes, columns: Columns) -> Columns:
    with _open(data, columns) as frame_store:
        return frame_store.read()


@pytest.fixture
def small_blocks(monkeypatch):
    """Checksum blocks of 8 rows: every column spans many blocks, reads cut through them."""
    monkeypatch.setattr(store, 'CHECK_BLOCK_BYTES', 64)


# --------------------------------------------------------------------------------------------------
# Layout.


def test_numeric_columns_are_contiguous_and_listed_in_the_checksum_table():
    columns = columns_from_frames(_frames())
    data = shard_bytes(columns)
    with h5py.File(io.BytesIO(data), 'r') as handle:
        assert handle.attrs['format_version'] == store.FORMAT_VERSION == 2
        checked = json.loads(handle.attrs['checked'])
        numeric = [
            'n_atoms',
            'offsets',
            *(f'frame/{k}' for k in ('cell', 'pbc', 'energy', 'stress', 'step')),
            *(f'atom/{k}' for k in ('numbers', 'positions', 'forces')),
            *(f'present/{k}' for k in ('energy', 'forces', 'stress')),
        ]
        assert sorted(checked) == sorted(numeric)
        for path in numeric:
            dset = handle[path]
            assert dset.chunks is None and dset.compression is None, path
            algorithm, block_rows, _, count, _ = checked[path]
            assert algorithm == 'wsum64' and block_rows % 8 == 0, path
            assert count == -(-dset.shape[0] // block_rows), path
        # atomic numbers take one byte each on disk and read back as int64
        assert handle['atom/numbers'].dtype == np.uint8
        assert checked['atom/numbers'][4] == 'i8'
        # text: fixed-length UTF-8, chunked, deflated and Fletcher-32 checked by HDF5
        text = handle['frame/method']
        assert h5py.check_string_dtype(text.dtype).encoding == 'utf-8'
        assert h5py.check_string_dtype(text.dtype).length == len('äöü'.encode())
        assert text.fletcher32 and text.compression == 'gzip'
    back = _read_all(data, columns)
    assert back.atom['numbers'].dtype == np.int64
    assert_columns_equal(back, columns)
    assert read_shard(io.BytesIO(data)).atom['numbers'].dtype == np.int64


@pytest.mark.parametrize('numbers', [(-3, 5), (200, 400), (255, 258)])
def test_integers_outside_a_byte_stay_wide(numbers):
    columns = columns_from_frames(_frames(20, numbers=numbers))
    data = shard_bytes(columns)
    with h5py.File(io.BytesIO(data), 'r') as handle:
        assert handle['atom/numbers'].dtype == np.int64
    assert_columns_equal(_read_all(data, columns), columns)


@pytest.mark.parametrize(
    'values',
    [
        ['md', '', 'äöü-ß', '日本語', ''],
        ['same'] * 5,
        ['', '', '', '', ''],
        ['x' * 5_000_000, 'a', 'b', 'c', 'd'],  # one long outlier: variable-length
    ],
    ids=['unicode', 'constant', 'empty', 'outlier'],
)
def test_text_round_trips(values):
    frames = [{'numbers': [1], 'positions': [[0, 0, 0]], 'info': {'label': v}} for v in values]
    columns = columns_from_frames(frames)
    data = shard_bytes(columns)
    with h5py.File(io.BytesIO(data), 'r') as handle:
        fixed = h5py.check_string_dtype(handle['frame/label'].dtype).length is not None
    assert fixed == (len(values[0]) < 1000)
    back = _read_all(data, columns)
    assert back.frame['label'].dtype == object
    assert list(back.frame['label']) == values
    assert all(type(v) is str for v in back.frame['label'])
    with _open(data, columns) as frame_store:
        assert list(frame_store.read([4, 0, 2]).frame['label']) == [values[4], values[0], values[2]]


def test_text_with_a_nul_character_is_refused_by_name():
    frames = [{'numbers': [1], 'positions': [[0, 0, 0]], 'info': {'label': 'a\x00b'}}]
    with pytest.raises(ValueError, match="column 'label': text with a NUL character"):
        shard_bytes(columns_from_frames(frames))


# --------------------------------------------------------------------------------------------------
# Reads cutting through checksum blocks return exactly what was written.


@settings(max_examples=40, deadline=None)
@given(frames=datasets(max_frames=30), data=st.data())
def test_reads_through_small_blocks_equal_taking(frames, data):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, 'CHECK_BLOCK_BYTES', 64)
        columns = columns_from_frames(frames)
        raw = shard_bytes(columns)
        n = len(frames)
        with _open(raw, columns) as frame_store:
            full = frame_store.read()
            assert_columns_equal(full, columns)
            start = data.draw(st.integers(0, n - 1), label='start')
            stop = data.draw(st.integers(start + 1, n), label='stop')
            run = np.arange(start, stop)
            assert_columns_equal(frame_store.read(run), columns.take(run))
            picked = data.draw(st.lists(st.integers(0, n - 1), max_size=12), label='frames')
            assert_columns_equal(frame_store.read(picked), columns.take(picked))
            chunk = data.draw(st.integers(1, n), label='chunk')
            parts = [c for _, c in frame_store.iter_chunks(chunk)]
            assert_columns_equal(concatenate_columns(parts), columns)
        records = frame_records(read_shard(io.BytesIO(raw)))
        for i, (got, expected) in enumerate(zip(records, frames, strict=True)):
            assert_record_matches(got, expected, f'frame {i}')


# --------------------------------------------------------------------------------------------------
# Corruption: a flipped byte anywhere in a numeric column fails every read that touches it.


def _flip(data: bytes, path: str, row: int) -> bytes:
    """``data`` with one byte of row ``row`` of dataset ``path`` inverted."""
    with h5py.File(io.BytesIO(data), 'r') as handle:
        dset = handle[path]
        offset = dset.id.get_offset()
        row_bytes = dset.dtype.itemsize * int(np.prod(dset.shape[1:], dtype=int))
    damaged = bytearray(data)
    damaged[offset + row * row_bytes + row_bytes // 2] ^= 0xFF
    return bytes(damaged)


@pytest.mark.usefixtures('small_blocks')
@pytest.mark.parametrize(
    'path',
    [
        'atom/positions',
        'atom/forces',
        'atom/numbers',
        'frame/cell',
        'frame/energy',
        'frame/stress',
        'frame/pbc',
        'frame/step',
        'present/forces',
    ],
)
def test_a_flipped_byte_fails_the_reads_that_touch_it(path):
    columns = columns_from_frames(_frames())
    data = shard_bytes(columns)
    frame = 101
    offsets = columns.offsets
    row = int(offsets[frame]) if path.startswith('atom/') else frame
    damaged = _flip(data, path, row)
    name = content_name(damaged)  # the name _open gives the shard
    with _open(damaged, columns) as frame_store:
        with pytest.raises(CorruptDatasetError, match=rf'{name}: {path} is corrupted: checksum'):
            frame_store.read()
        with pytest.raises(CorruptDatasetError, match='checksum mismatch'):
            frame_store.read([frame])
        with pytest.raises(CorruptDatasetError, match='checksum mismatch'):
            frame_store.read(np.arange(90, 110))
        with pytest.raises(CorruptDatasetError, match='checksum mismatch'):
            list(frame_store.iter_chunks(7))
        # runs of frames whose blocks are intact still read, and read right
        for far in (np.arange(0, 40), np.arange(170, 200)):
            assert_columns_equal(frame_store.read(far), columns.take(far))
    with pytest.raises(CorruptDatasetError, match='checksum mismatch'):
        read_shard(io.BytesIO(damaged))


@pytest.mark.parametrize('path', ['n_atoms', 'offsets'])
def test_a_flipped_byte_in_the_frame_sizes_fails_every_read(path):
    columns = columns_from_frames(_frames())
    damaged = _flip(shard_bytes(columns), path, 50)
    with _open(damaged, columns) as frame_store, pytest.raises(CorruptDatasetError):
        frame_store.read([0])


def test_default_blocks_detect_a_flip_in_a_large_column():
    rng = np.random.default_rng(3)
    n_frames, n_atoms = 2000, 40
    columns = Columns(
        n_atoms=np.full(n_frames, n_atoms),
        frame={'cell': np.zeros((n_frames, 3, 3)), 'pbc': np.zeros((n_frames, 3), bool)},
        atom={
            'numbers': np.full(n_frames * n_atoms, 6),
            'positions': rng.normal(size=(n_frames * n_atoms, 3)),
        },
    )
    data = shard_bytes(columns)
    with h5py.File(io.BytesIO(data), 'r') as handle:
        assert json.loads(handle.attrs['checked'])['atom/positions'][1] == 10920
    damaged = _flip(data, 'atom/positions', 77_777)
    with _open(damaged, columns) as frame_store:
        with pytest.raises(CorruptDatasetError, match='rows 76440-79999'):
            frame_store.read()
        frame_store.read(np.arange(100))  # the first block is intact


def test_missing_or_damaged_checksum_tables_raise(tmp_path):
    columns = columns_from_frames(_frames(30))
    path = tmp_path / 'shard.h5'

    def damaged(edit):
        write_shard(columns, str(path))
        with h5py.File(path, 'a') as handle:
            edit(handle)
        index = DatasetIndex.for_single_shard('x', columns)
        return FrameStore(index, lambda _: str(path))

    def drop_table_entry(handle):
        checked = json.loads(handle.attrs['checked'])
        del checked['atom/positions']
        handle.attrs['checked'] = json.dumps(checked)

    def shift_table_entry(handle):
        checked = json.loads(handle.attrs['checked'])
        checked['atom/positions'][2] = 10**6
        handle.attrs['checked'] = json.dumps(checked)

    def short_table_entry(handle):
        checked = json.loads(handle.attrs['checked'])
        checked['atom/positions'][3] -= 1
        handle.attrs['checked'] = json.dumps(checked)

    cases = [
        (lambda h: h.attrs.__delitem__('checked'), 'checksum table is corrupted'),
        (lambda h: h.__delitem__('checksums'), 'checksum table is corrupted'),
        (drop_table_entry, 'atom/positions is corrupted: its checksums are missing'),
        (shift_table_entry, 'checksums of atom/positions do not match its length'),
        (short_table_entry, 'checksums of atom/positions do not match its length'),
    ]
    for edit, message in cases:
        with damaged(edit) as frame_store, pytest.raises(CorruptDatasetError, match=message):
            frame_store.read()


@pytest.mark.parametrize('fraction', [0.2, 0.6, 0.95, 0.9999])
def test_truncated_format_2_shard_raises(fraction):
    columns = columns_from_frames(_frames())
    data = shard_bytes(columns)
    with (
        _open(data[: int(len(data) * fraction)], columns) as frame_store,
        pytest.raises(CorruptDatasetError),
    ):
        frame_store.read()


def test_crc32_shards_read_and_detect_flips(monkeypatch):
    monkeypatch.setattr(store, 'CHECKSUM', 'crc32')
    monkeypatch.setattr(store, 'CHECK_BLOCK_BYTES', 64)
    columns = columns_from_frames(_frames())
    data = shard_bytes(columns)
    with h5py.File(io.BytesIO(data), 'r') as handle:
        assert json.loads(handle.attrs['checked'])['atom/forces'][0] == 'crc32'
    monkeypatch.setattr(store, 'CHECKSUM', 'wsum64')  # the reader follows the file, not this
    assert_columns_equal(_read_all(data, columns), columns)
    with pytest.raises(CorruptDatasetError, match='checksum mismatch'):
        _read_all(_flip(data, 'atom/forces', 33), columns)


# --------------------------------------------------------------------------------------------------
# The checksum itself.


def test_wsum64_changes_with_every_single_bit_flip():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, 8 * 40 + 5, dtype=np.uint8)  # 40 words and a 5-byte tail
    reference = store._wsum64(block)
    for byte in range(len(block)):
        for bit in range(8):
            flipped = block.copy()
            flipped[byte] ^= 1 << bit
            assert store._wsum64(flipped) != reference, (byte, bit)
    # swapping two words or two bytes changes it too (the weights depend on the position)
    swapped = block.copy()
    swapped[0:8], swapped[8:16] = block[8:16], block[0:8]
    assert store._wsum64(swapped) != reference
    swapped = block.copy()
    swapped[3], swapped[4] = block[4], block[3]
    assert store._wsum64(swapped) != reference or block[3] == block[4]


@pytest.mark.parametrize('algorithm', ['wsum64', 'crc32'])
@pytest.mark.parametrize(
    ('dtype', 'shape'),
    [(np.float64, (3,)), (np.uint8, ()), (bool, (3,)), (np.int64, ()), (np.float64, (3, 3))],
)
@pytest.mark.parametrize('n_rows', [0, 1, 7, 8, 9, 100])
def test_block_sums_equal_block_by_block_checksums(algorithm, dtype, shape, n_rows):
    rng = np.random.default_rng(n_rows)
    values = rng.integers(0, 200, (n_rows, *shape)).astype(dtype)
    sums = store._block_sums(algorithm, values, 8)
    expected = [store._checksum(algorithm, values[k : k + 8]) for k in range(0, n_rows, 8)]
    assert sums.tolist() == expected
    # the checksum is of the bytes as stored (little-endian), whatever the memory order
    big_endian = values.astype(values.dtype.newbyteorder('>'))
    assert store._block_sums(algorithm, big_endian, 8).tolist() == expected


# --------------------------------------------------------------------------------------------------
# Format 1 shards (everything chunked, LZF, Fletcher-32; int64 numbers; variable-length text).
# The fixture is a real file, written by the format-1 code of commit 1ff15ab from ``_frames()``.

FORMAT_1_SHARD = Path(__file__).parent / 'fixtures' / 'format1_shard.h5'


def test_format_1_shards_still_read(tmp_path):
    columns = columns_from_frames(_frames())
    data = FORMAT_1_SHARD.read_bytes()
    with h5py.File(io.BytesIO(data), 'r') as handle:
        assert handle.attrs['format_version'] == 1
    back = _read_all(data, columns)
    assert_columns_equal(back, columns)
    assert back.atom['numbers'].dtype == np.int64
    with _open(data, columns) as frame_store:
        assert_columns_equal(frame_store.read([5, 3, 150]), columns.take([5, 3, 150]))
    assert_columns_equal(read_shard(io.BytesIO(data)), columns)
    # and HDF5's Fletcher-32 still guards them
    with h5py.File(io.BytesIO(data), 'r') as handle:
        offset = handle['atom/positions'].id.get_chunk_info(0).byte_offset
    damaged = bytearray(data)
    damaged[offset + 100] ^= 0xFF
    with pytest.raises(CorruptDatasetError, match='atom/positions is corrupted'):
        _read_all(bytes(damaged), columns)
    # a format-1 dataset extended with a format-2 shard (new labels) reads as one
    batch = Columns(n_atoms=columns.n_atoms[:3], frame={'energy': np.array([1.0, 2.0, 3.0])})
    new = shard_bytes(batch)
    shards = {content_name(data): data, content_name(new): new}
    index = DatasetIndex.for_single_shard(content_name(data), columns).with_shard(
        content_name(new), np.array([7, 8, 9]), {'energy': batch.spec('energy')}
    )
    with FrameStore(index, lambda name: io.BytesIO(shards[name])) as frame_store:
        energy = frame_store.read(columns=['energy'])
    assert energy.frame['energy'][7:10].tolist() == [1.0, 2.0, 3.0]
    assert energy.mask('energy')[7:10].all()
