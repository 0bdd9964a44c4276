"""Columnar HDF5 frame store: immutable shards plus a small index (no AiiDA import).

A *shard* is an HDF5 file holding a block of frames column by column (per-frame
arrays, per-atom arrays concatenated with offsets, presence masks). It is written
once and never changed; its name is the SHA-256 of its bytes.

An *index* says, for every frame of a dataset and every column, which shard and
which row of it holds the value (a *locator*: two integer arrays). Columns written
together share a locator. Deriving a dataset (subset, concatenation, new labels or
metadata for some frames, a train/validation/test split) writes a new index and
at most one new shard with the new values only; the shards shared with the
parents are reused byte for byte, so a content-addressed repository (AiiDA's
object store) keeps one copy. Storage grows with the number of distinct frames,
not with the number of derived datasets.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import h5py
import numpy as np

from .columns import (
    STRESS_CONVENTION,
    STRUCTURE_COLUMNS,
    UNITS,
    Columns,
    ColumnSpec,
    atom_indices,
)

#: 2: numeric columns contiguous and unfiltered, with block checksums; atomic numbers as
#: uint8; text as fixed-length UTF-8. Format 1 shards (everything chunked and
#: Fletcher-32-checked by HDF5, LZF-compressed but for per-atom floats) still read.
FORMAT_VERSION = 2
SHARD_FORMAT = 'trainspot-pes-shard'
INDEX_FORMAT = 'trainspot-pes-index'
FRAME_CHUNK = 16384
ATOM_CHUNK = 65536
#: The index is always read whole: few, large chunks (one up to a million frames).
INDEX_CHUNK = 1 << 20
#: Text columns and the index's locators: deflate at level 1 with byte shuffle. On the
#: locators of 100 000 frames it is both smaller (10 kB vs 19 kB) and faster to read
#: (3 ms vs 7 ms) than LZF, which format 1 used.
COMPRESSION = 'gzip'
COMPRESSION_LEVEL = 1
#: Numeric columns (positions, forces, numbers, cells, labels, predictions, masks) are
#: stored contiguous and unfiltered: training and evaluation read them every time, and on
#: 100 000 frames LZF made per-atom floats 4x slower to read for 18 % less space, and
#: HDF5's per-chunk Fletcher-32 (~2 GB/s) tripled the time of a plain read. Integrity is
#: kept by a checksum of every block of CHECK_BLOCK_BYTES (at most MAX_CHECKSUMS blocks
#: per column), all in one small table per shard, verified on every read.
CHECK_BLOCK_BYTES = 1 << 18
MAX_CHECKSUMS = 4096
#: 'wsum64' (see :func:`_wsum64`) or 'crc32' (zlib); the shard records the one used.
CHECKSUM = 'wsum64'
#: Checked data is read in slabs of at most this many bytes, each verified after reading.
_SLAB_BYTES = 1 << 24
#: Root attribute (JSON) describing the checked datasets, and the table of their checksums.
_CHECKED_ATTR = 'checked'
_CHECKSUMS = 'checksums'
_STRING = h5py.string_dtype('utf-8')


class CorruptDatasetError(ValueError):
    """A shard or index file is truncated, corrupted or inconsistent."""


# --------------------------------------------------------------------------- shards


def write_shard(columns: Columns, target: str | IO[bytes]) -> None:
    """Write ``columns`` as one shard (HDF5) to a path or a binary file object."""
    # libver='latest': compact metadata (a 1-frame shard drops from ~36 kB to ~10 kB)
    with h5py.File(target, 'w', track_order=False, libver='latest') as handle:
        handle.attrs['format'] = SHARD_FORMAT
        handle.attrs['format_version'] = FORMAT_VERSION
        handle.attrs['units'] = json.dumps(UNITS)
        handle.attrs['stress_convention'] = STRESS_CONVENTION
        handle.attrs['n_frames'] = columns.n_frames
        handle.attrs['n_atoms_total'] = int(columns.n_atoms.sum())
        columns_to_write = {
            'n_atoms': columns.n_atoms,
            'offsets': columns.offsets,
            **{f'frame/{name}': values for name, values in columns.frame.items()},
            **{f'atom/{name}': values for name, values in columns.atom.items()},
            **{f'present/{name}': mask for name, mask in columns.present.items() if not mask.all()},
        }
        checked: dict[str, list[Any]] = {}
        sums: list[np.ndarray] = []
        for path, values in columns_to_write.items():
            if _is_text(values):
                chunk = ATOM_CHUNK if path.startswith('atom/') else FRAME_CHUNK
                _dataset(handle, path, values, chunk)
                continue
            stored = _narrowed(values)
            handle.create_dataset(path, data=stored)
            block_rows = _block_rows(stored)
            first = sum(map(len, sums))
            sums.append(_block_sums(CHECKSUM, stored, block_rows))
            # [algorithm, rows per block, first checksum in the table, count, logical dtype]
            checked[path] = [CHECKSUM, block_rows, first, len(sums[-1]), _dtype_name(values.dtype)]
        handle.attrs[_CHECKED_ATTR] = json.dumps(checked)
        handle.create_dataset(
            _CHECKSUMS, data=np.concatenate(sums) if sums else np.zeros(0, dtype=np.uint64)
        )


def _is_text(values: np.ndarray) -> bool:
    return values.dtype.kind in 'OUS'


def _dtype_name(dtype: np.dtype) -> str:
    return dtype.str.lstrip('<>|=')


def _narrowed(values: np.ndarray) -> np.ndarray:
    """``values`` C-contiguous; integers that fit in a byte (atomic numbers) as uint8."""
    values = np.ascontiguousarray(values)
    narrow = values.dtype.kind in 'iu' and values.dtype.itemsize > 1 and values.size
    if narrow and int(values.min()) >= 0 and int(values.max()) <= 255:
        return values.astype(np.uint8)
    return values


def _dataset(handle: h5py.File, path: str, values: np.ndarray, chunk_rows: int) -> None:
    """A chunked, deflated dataset (level 1, byte shuffle, Fletcher-32 but on vlen text).

    Text goes in as fixed-length UTF-8 (one read, no per-string heap lookups), or as
    variable-length strings where a few long values would blow the fixed width up.
    """
    fixed_text = False
    if _is_text(values):
        try:
            encoded = _encode_text(values)
        except ValueError as exc:
            raise ValueError(f'column {path.split("/")[-1]!r}: {exc}') from None
        if encoded is None:
            values, dtype = np.asarray(values, dtype=object), _STRING
        else:
            values, dtype = encoded, h5py.string_dtype('utf-8', encoded.dtype.itemsize)
            fixed_text = True
    else:
        dtype = values.dtype
    if len(values) == 0:
        handle.create_dataset(path, shape=values.shape, dtype=dtype)
        return
    chunks = (min(len(values), chunk_rows), *values.shape[1:])
    options = {'compression': COMPRESSION, 'compression_opts': COMPRESSION_LEVEL, 'shuffle': True}
    if dtype is not _STRING:
        options['fletcher32'] = True  # a per-chunk checksum: flipped bytes fail loudly on read
    if not fixed_text:
        handle.create_dataset(path, data=values, dtype=dtype, chunks=chunks, **options)
        return
    # numpy bytes are ASCII to h5py: write them with the file's UTF-8 type as memory type
    dset = handle.create_dataset(path, shape=values.shape, dtype=dtype, chunks=chunks, **options)
    dset.id.write(h5py.h5s.ALL, h5py.h5s.ALL, values, mtype=dset.id.get_type())


def _encode_text(values: np.ndarray) -> np.ndarray | None:
    """Text as a fixed-width array of UTF-8 bytes, or None where that would be too wide.

    The width must not be much more than the text (one long value among short ones).
    """
    try:
        encoded = list(map(str.encode, values.reshape(-1).tolist()))
    except TypeError:  # not all text: the variable-length path reports it
        return None
    joined = b''.join(encoded)
    if b'\0' in joined:  # neither fixed- nor variable-length HDF5 strings hold one
        raise ValueError('text with a NUL character cannot be stored')
    width = max(map(len, encoded), default=0)
    if width * len(encoded) > 4 * len(joined) + (1 << 20):
        return None
    return np.array(encoded, dtype=f'S{max(width, 1)}').reshape(values.shape)


def _decode_text(raw: np.ndarray) -> np.ndarray:
    """Fixed-width UTF-8 bytes as an object array of str (each distinct value decoded once)."""
    if raw.size == 0:
        return np.zeros(raw.shape, dtype=object)
    flat = raw.reshape(-1)
    if (flat == flat[0]).all():  # one value throughout (a method, a source): no sort
        return np.full(raw.shape, flat[0].decode('utf-8'), dtype=object)
    distinct, inverse = np.unique(flat, return_inverse=True)
    text = np.array([b.decode('utf-8') for b in distinct], dtype=object)
    return text[inverse].reshape(raw.shape)


def _block_rows(values: np.ndarray) -> int:
    """Rows per checksum block: about CHECK_BLOCK_BYTES, a multiple of 8 rows (whole words)."""
    block_bytes = max(CHECK_BLOCK_BYTES, -(-values.nbytes // MAX_CHECKSUMS))
    return max(8, block_bytes // _row_bytes(values) // 8 * 8)


def _row_bytes(values: np.ndarray | h5py.Dataset) -> int:
    return max(values.dtype.itemsize * int(np.prod(values.shape[1:], dtype=np.int64)), 1)


def _block_sums(algorithm: str, values: np.ndarray, block_rows: int) -> np.ndarray:
    """The checksum of every block of ``block_rows`` rows of ``values`` (the last may be short)."""
    values = _little_endian(values)
    n_full = len(values) // block_rows
    sums = np.empty(-(-len(values) // block_rows), dtype=np.uint64)
    block_bytes = block_rows * _row_bytes(values)
    if algorithm == 'wsum64' and n_full and block_bytes % 8 == 0:
        # all whole blocks in one matrix-vector product: row k of ``words`` is block k
        words = values[: n_full * block_rows].reshape(-1).view(np.uint8).view('<u8')
        words = words.reshape(n_full, block_bytes // 8)
        sums[:n_full] = words @ _weights(block_bytes // 8)
    else:
        for k in range(n_full):
            sums[k] = _checksum(algorithm, values[k * block_rows : (k + 1) * block_rows])
    if len(values) > n_full * block_rows:
        sums[n_full] = _checksum(algorithm, values[n_full * block_rows :])
    return sums


def _little_endian(values: np.ndarray) -> np.ndarray:
    """``values`` C-contiguous with little-endian items (its bytes as written in the file)."""
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder('<'))


def _checksum(algorithm: str, values: np.ndarray) -> int:
    """The checksum of the bytes of a block of rows, as stored (little-endian)."""
    values = _little_endian(values)
    if algorithm == 'wsum64':
        return _wsum64(values.reshape(-1).view(np.uint8))
    if algorithm == 'crc32':
        return zlib.crc32(values)
    raise CorruptDatasetError(f'unknown checksum algorithm {algorithm!r}')


def _wsum64(data: np.ndarray) -> int:
    """A weighted sum of the 64-bit little-endian words of ``data``, modulo 2**64.

    Word i is multiplied by the i-th of a fixed sequence of odd 64-bit constants
    (SplitMix64 outputs with the low bit set), so that any change confined to one word,
    in particular every single flipped bit or byte, changes the sum, and a block of random
    garbage leaves it unchanged with probability about 2**-64. As with any modulo-2**64
    sum, two flips of the same top bit (the sign of a float64) within one block cancel.
    One numpy dot product: ~8 GB/s against ~2-3 GB/s for zlib's CRC-32 and Adler-32.
    """
    n_words = len(data) // 8
    words = data[: n_words * 8].view('<u8')
    total = int(np.dot(words, _weights(n_words))) if n_words else 0
    tail = data[n_words * 8 :]
    if len(tail):  # the last 1-7 bytes of a block whose size is not a multiple of 8
        total += int.from_bytes(tail.tobytes(), 'little') * _TAIL_WEIGHT
    return total & _MASK64


_MASK64 = (1 << 64) - 1
_TAIL_WEIGHT = 0xD6E8FEB86659FD93
_WEIGHTS = np.zeros(0, dtype=np.uint64)


def _weights(n_words: int) -> np.ndarray:
    """The first ``n_words`` odd SplitMix64 constants (a fixed, portable sequence)."""
    global _WEIGHTS  # a cache that only grows
    if len(_WEIGHTS) < n_words:
        with np.errstate(over='ignore'):
            z = np.arange(1, max(n_words, 1 << 15) + 1, dtype=np.uint64)
            z *= np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
        z |= np.uint64(1)
        z.flags.writeable = False
        _WEIGHTS = z
    return _WEIGHTS[:n_words]


def read_shard(source: str | IO[bytes]) -> Columns:
    """Every column of one shard file (path or binary file object) as :class:`Columns`."""
    try:
        handle = h5py.File(source, 'r')
    except Exception as exc:
        raise CorruptDatasetError(f'shard {source} cannot be opened: {exc}') from exc
    with handle:
        reader = ShardReader(str(getattr(source, 'name', source)), handle)
        rows = np.arange(reader.n_frames)
        atom_rows = np.arange(reader.n_atoms_total)
        out = Columns(n_atoms=np.asarray(reader.n_atoms))
        for name in reader.column_names():
            spec = reader.spec(name)
            kind_rows = rows if spec.kind == 'frame' else atom_rows
            target = out.frame if spec.kind == 'frame' else out.atom
            target[name] = reader.read_rows(f'{spec.kind}/{name}', kind_rows)
            mask = reader.present(name, rows)
            if not mask.all():
                out.present[name] = np.asarray(mask, dtype=bool)
    return out


def shard_bytes(columns: Columns) -> bytes:
    """The bytes of a shard holding ``columns``."""
    buffer = io.BytesIO()
    write_shard(columns, buffer)
    return buffer.getvalue()


def content_name(data: bytes) -> str:
    """The content address of a shard (SHA-256 of its bytes)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Check:
    """How a checked dataset is verified: its block checksums and its logical dtype."""

    algorithm: str
    block_rows: int
    sums: np.ndarray
    dtype: np.dtype


class ShardReader:
    """Reads columns from one open shard, checking its layout once."""

    def __init__(self, name: str, handle: h5py.File):
        self.name = name
        self.handle = handle
        self._datasets: dict[str, h5py.Dataset] = {}
        self._checks: dict[str, _Check] = {}
        self._specs: dict[str, ColumnSpec | None] = {}
        try:
            self._check()
        except CorruptDatasetError:
            raise
        except Exception as exc:
            raise CorruptDatasetError(f'shard {name} is unreadable: {exc}') from exc

    def _check(self) -> None:
        attrs = self.handle.attrs
        if attrs.get('format') != SHARD_FORMAT:
            raise CorruptDatasetError(f'shard {self.name} is not a {SHARD_FORMAT} file')
        version = int(attrs['format_version'])
        if version > FORMAT_VERSION:
            raise CorruptDatasetError(
                f'shard {self.name} has format version {version}, newer than '
                f'this aiida-trainspot reads ({FORMAT_VERSION}); upgrade the package'
            )
        self.n_frames = int(attrs['n_frames'])
        self.n_atoms_total = int(attrs['n_atoms_total'])
        self._load_checks(version)
        self.n_atoms = self._read_all('n_atoms')
        self.offsets = self._read_all('offsets')
        if len(self.n_atoms) != self.n_frames or len(self.offsets) != self.n_frames + 1:
            raise CorruptDatasetError(f'shard {self.name}: frame arrays have inconsistent lengths')
        if self.n_frames and int(self.offsets[-1]) != self.n_atoms_total:
            raise CorruptDatasetError(f'shard {self.name}: offsets do not add up to the atom count')

    def _dataset(self, path: str) -> h5py.Dataset | None:
        """Dataset ``path`` (None if absent), opened once; its length and checksums checked."""
        if path not in self._datasets:
            try:
                dset = self.handle.get(path)
            except (OSError, KeyError, ValueError, RuntimeError) as exc:  # damaged metadata
                message = f'shard {self.name}: {path} is unreadable: {exc}'
                raise CorruptDatasetError(message) from exc
            if dset is not None:
                kind = path.split('/', 1)[0]
                expected = {'frame': self.n_frames, 'atom': self.n_atoms_total}.get(
                    'frame' if kind == 'present' else kind
                )
                if expected is not None and dset.shape[0] != expected:
                    raise CorruptDatasetError(
                        f'shard {self.name}: {kind} column {path.split("/", 1)[1]!r} has '
                        f'{dset.shape[0]} rows, expected {expected}'
                    )
                if path not in self._checks and dset.chunks is None and dset.size:
                    # unfiltered data always carries checksums (format 1 chunked everything)
                    raise CorruptDatasetError(
                        f'shard {self.name}: {path} is corrupted: its checksums are missing'
                    )
                check = self._checks.get(path)
                if check is not None and len(check.sums) != -(-dset.shape[0] // check.block_rows):
                    raise CorruptDatasetError(
                        f'shard {self.name}: the checksums of {path} do not match its length'
                    )
            self._datasets[path] = dset
        return self._datasets[path]

    def _load_checks(self, version: int) -> None:
        """Read the checksum table of a format-2 shard (format 1 relies on HDF5's filters)."""
        if version < 2:
            return
        try:
            checked = json.loads(self.handle.attrs[_CHECKED_ATTR])
            table = self.handle[_CHECKSUMS][()]
            for path, (algorithm, block_rows, first, count, dtype) in checked.items():
                block_rows, first, count = int(block_rows), int(first), int(count)
                if block_rows < 1 or first < 0 or count < 0 or first + count > len(table):
                    raise CorruptDatasetError(
                        f'shard {self.name}: the checksums of {path} do not match its length'
                    )
                # the block count is checked against the dataset's length when it is opened
                sums = table[first : first + count]
                self._checks[path] = _Check(algorithm, block_rows, sums, np.dtype(dtype))
        except CorruptDatasetError:
            raise
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise CorruptDatasetError(
                f'shard {self.name}: its checksum table is corrupted: {exc}'
            ) from exc

    def _read_all(self, path: str) -> np.ndarray:
        return self.read_rows(path, np.arange(self._dataset(path).shape[0]))

    def spec(self, name: str) -> ColumnSpec | None:
        """The spec of column ``name`` in this shard, or None if absent."""
        if name not in self._specs:
            self._specs[name] = None
            for kind in ('frame', 'atom'):
                path = f'{kind}/{name}'
                dset = self._dataset(path)
                if dset is not None:
                    if h5py.check_string_dtype(dset.dtype):
                        dtype = 'str'
                    else:
                        dtype = _dtype_name(self._dtype(path))
                    self._specs[name] = ColumnSpec(name, kind, dtype, tuple(dset.shape[1:]))
                    break
        return self._specs[name]

    def _dtype(self, path: str) -> np.dtype:
        """The dtype a dataset reads as (atomic numbers are stored narrower)."""
        check = self._checks.get(path)
        return check.dtype if check is not None else self._dataset(path).dtype

    def column_names(self) -> list[str]:
        """Names of the columns this shard holds."""
        return [*self.handle.get('frame', {}).keys(), *self.handle.get('atom', {}).keys()]

    def read_rows(self, path: str, rows: np.ndarray) -> np.ndarray:
        """Read ``rows`` of dataset ``path`` with one contiguous read of their span."""
        dset = self._dataset(path)
        if dset is None:
            raise CorruptDatasetError(f'shard {self.name}: {path} is missing')
        text = h5py.check_string_dtype(dset.dtype)
        dtype = object if text else self._dtype(path)
        if len(rows) == 0:
            return np.zeros((0, *dset.shape[1:]), dtype=dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if path in self._checks:
            block = np.empty((hi - lo, *dset.shape[1:]), dtype=dtype)
            self._read_checked(path, lo, hi, block)
        else:
            try:
                if text is None:
                    block = dset[lo:hi]
                elif text.length is None:
                    block = dset.asstr()[lo:hi]
                else:
                    block = _decode_text(dset[lo:hi])
            except OSError as exc:  # checksum mismatch, truncated chunk, ...
                raise CorruptDatasetError(f'shard {self.name}: {path} is corrupted: {exc}') from exc
        if block.dtype != dtype:
            block = block.astype(dtype)
        if len(rows) == hi - lo and (rows[0] == lo) and np.all(np.diff(rows) == 1):
            return block
        return block[rows - lo]

    def read_run(
        self,
        path: str,
        kind: str,
        rows: np.ndarray,
        out: np.ndarray,
        positions: np.ndarray,
        out_offsets: np.ndarray,
    ) -> None:
        """Copy consecutive ``rows`` into consecutive ``positions`` of ``out``, no temporary."""
        if kind == 'frame':
            start, stop = int(rows[0]), int(rows[-1]) + 1
            first = int(positions[0])
        else:
            start, stop = int(self.offsets[rows[0]]), int(self.offsets[rows[-1] + 1])
            first = int(out_offsets[positions[0]])
        if stop == start:
            return
        dset = self._dataset(path)
        if path in self._checks:
            self._read_checked(path, start, stop, out[first : first + stop - start])
            return
        try:
            dset.read_direct(out, np.s_[start:stop], np.s_[first : first + stop - start])
        except OSError as exc:  # checksum mismatch, truncated chunk, ...
            raise CorruptDatasetError(f'shard {self.name}: {path} is corrupted: {exc}') from exc

    def _read_checked(self, path: str, start: int, stop: int, out: np.ndarray) -> None:
        """Read rows [start, stop) of a checked dataset into ``out``, verifying every block.

        Whole blocks inside the range are read straight into ``out`` (slab by slab) and
        checked there; the (at most two) blocks the range cuts are read whole into a small
        buffer, checked, and their part copied. Every byte that reaches ``out`` is verified.
        """
        dset = self._dataset(path)
        block_rows = self._checks[path].block_rows
        n = dset.shape[0]
        first_block, last_block = start // block_rows, (stop - 1) // block_rows
        inner_lo = min(-(-start // block_rows) * block_rows, stop)
        inner_hi = max((stop // block_rows) * block_rows if stop < n else n, inner_lo)
        try:
            if inner_hi > inner_lo:
                if out.dtype == dset.dtype:
                    slab = block_rows * max(1, _SLAB_BYTES // (block_rows * _row_bytes(dset)))
                    for lo in range(inner_lo, inner_hi, slab):
                        hi = min(lo + slab, inner_hi)
                        dset.read_direct(out, np.s_[lo:hi], np.s_[lo - start : hi - start])
                        self._verify(path, out[lo - start : hi - start], lo)
                else:  # stored narrower (atomic numbers as uint8)
                    block = dset[inner_lo:inner_hi]
                    self._verify(path, block, inner_lo)
                    out[inner_lo - start : inner_hi - start] = block
            for k in sorted({first_block, last_block}):
                lo, hi = k * block_rows, min((k + 1) * block_rows, n)
                if inner_lo <= lo and hi <= inner_hi:
                    continue
                block = dset[lo:hi]
                self._verify(path, block, lo)
                a, b = max(lo, start), min(hi, stop)
                out[a - start : b - start] = block[a - lo : b - lo]
        except OSError as exc:  # truncated or unreadable file
            raise CorruptDatasetError(f'shard {self.name}: {path} is corrupted: {exc}') from exc

    def _verify(self, path: str, values: np.ndarray, first_row: int) -> None:
        """Check whole blocks ``values`` (starting at block-aligned ``first_row``)."""
        check = self._checks[path]
        k0 = first_row // check.block_rows
        expected = check.sums[k0 : k0 + -(-len(values) // check.block_rows)]
        bad = np.flatnonzero(_block_sums(check.algorithm, values, check.block_rows) != expected)
        if bad.size:
            a = first_row + int(bad[0]) * check.block_rows
            b = min(a + check.block_rows, first_row + len(values))
            raise CorruptDatasetError(
                f'shard {self.name}: {path} is corrupted: checksum mismatch in rows {a}-{b - 1}'
            )

    def present(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Presence mask of column ``name`` at ``rows``."""
        if self.spec(name) is None:
            return np.zeros(len(rows), dtype=bool)
        if self._dataset(f'present/{name}') is None:
            return np.ones(len(rows), dtype=bool)
        return self.read_rows(f'present/{name}', rows)


# --------------------------------------------------------------------------- index


@dataclass
class DatasetIndex:
    """Where each column of each frame lives: shards, column specs and locators.

    ``locators[k]`` is a pair of arrays (shard id, row) with one entry per frame;
    shard id -1 means the frame has no value for the columns of that locator.
    Locator 0 always holds the structure (numbers, positions, cell, pbc).
    """

    shards: list[str]
    columns: dict[str, ColumnSpec]
    column_locator: dict[str, int]
    locators: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return len(self.locators[0][0]) if self.locators else 0

    @classmethod
    def for_single_shard(cls, shard: str, columns: Columns) -> DatasetIndex:
        """The index of a dataset made of one whole shard."""
        n = columns.n_frames
        specs = {name: columns.spec(name) for name in columns.names}
        locator = (np.zeros(n, dtype=np.int32), np.arange(n, dtype=np.int64))
        return cls([shard], specs, dict.fromkeys(specs, 0), [locator])

    def subset(self, frames: np.ndarray) -> DatasetIndex:
        """The index of the frames at ``frames`` (any order, repetitions allowed)."""
        frames = np.asarray(frames, dtype=np.int64)
        locators = [(sid[frames], row[frames]) for sid, row in self.locators]
        return DatasetIndex(
            list(self.shards), dict(self.columns), dict(self.column_locator), locators
        ).pruned()

    def with_shard(
        self, shard: str, frames: np.ndarray, specs: Mapping[str, ColumnSpec]
    ) -> DatasetIndex:
        """Point the columns ``specs`` of ``frames`` at rows 0..len(frames)-1 of ``shard``."""
        frames = np.asarray(frames, dtype=np.int64)
        structural = sorted(set(specs) & set(STRUCTURE_COLUMNS))
        if structural:
            raise ValueError(
                f'the structure columns {structural} of existing frames cannot be replaced'
            )
        columns = dict(self.columns)
        for name, spec in specs.items():
            old = columns.get(name)
            if old is not None and (old.kind, old.shape) != (spec.kind, spec.shape):
                raise ValueError(
                    f'column {name!r} is {old.kind} with shape {old.shape} in the dataset, '
                    f'cannot replace it with {spec.kind} of shape {spec.shape}'
                )
            if old is not None and _dtype_clash(old.dtype, spec.dtype):
                raise ValueError(
                    f'column {name!r} holds {old.dtype}, cannot store {spec.dtype} in it'
                )
            columns[name] = spec if old is None else _wider(old, spec)
        shards = list(self.shards)
        if shard not in shards:
            shards.append(shard)
        sid_new = shards.index(shard)
        locators = list(self.locators)
        column_locator = dict(self.column_locator)
        # group the new columns by their current locator so that columns sharing a
        # locator before the update still share one after it
        groups: dict[int, list[str]] = {}
        for name in specs:
            groups.setdefault(column_locator.get(name, -1), []).append(name)
        for current, names in groups.items():
            if current >= 0:
                sid, row = locators[current][0].copy(), locators[current][1].copy()
            else:
                sid = np.full(self.n_frames, -1, dtype=np.int32)
                row = np.zeros(self.n_frames, dtype=np.int64)
            sid[frames] = sid_new
            row[frames] = np.arange(len(frames))
            locators.append((sid, row))
            for name in names:
                column_locator[name] = len(locators) - 1
        return DatasetIndex(shards, columns, column_locator, locators).pruned()

    def without_columns(self, names: Sequence[str]) -> DatasetIndex:
        """The index without the (non-structure) columns ``names``; unknown names are ignored."""
        structural = sorted(set(names) & set(STRUCTURE_COLUMNS))
        if structural:
            raise ValueError(f'the structure columns {structural} cannot be removed')
        drop = set(names)
        columns = {k: v for k, v in self.columns.items() if k not in drop}
        column_locator = {k: v for k, v in self.column_locator.items() if k not in drop}
        index = DatasetIndex(list(self.shards), columns, column_locator, list(self.locators))
        return index.pruned()

    def pruned(self) -> DatasetIndex:
        """Drop unused locators and shards, renumbering what remains."""
        used_locators = sorted({0, *self.column_locator.values()})
        remap_locator = {old: new for new, old in enumerate(used_locators)}
        locators = [self.locators[k] for k in used_locators]
        used_shards = sorted({int(s) for sid, _ in locators for s in np.unique(sid) if s >= 0})
        shard_map = np.full(len(self.shards) + 1, -1, dtype=np.int32)
        for new, old in enumerate(used_shards):
            shard_map[old] = new
        locators = [(shard_map[sid].astype(np.int32), row) for sid, row in locators]
        return DatasetIndex(
            [self.shards[s] for s in used_shards],
            dict(self.columns),
            {name: remap_locator[k] for name, k in self.column_locator.items()},
            locators,
        )

    def checksum(self) -> str:
        """A content checksum: equal indices over equal shards give equal checksums."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.shards).encode())
        digest.update(
            json.dumps({k: v.to_json() for k, v in sorted(self.columns.items())}).encode()
        )
        digest.update(json.dumps(sorted(self.column_locator.items())).encode())
        for sid, row in self.locators:
            digest.update(np.ascontiguousarray(sid, dtype='<i4').tobytes())
            digest.update(np.ascontiguousarray(row, dtype='<i8').tobytes())
        return digest.hexdigest()

    def to_bytes(self) -> bytes:
        """Serialise the index (HDF5)."""
        buffer = io.BytesIO()
        with h5py.File(buffer, 'w', libver='latest') as handle:
            handle.attrs['format'] = INDEX_FORMAT
            handle.attrs['format_version'] = FORMAT_VERSION
            handle.attrs['units'] = json.dumps(UNITS)
            handle.attrs['stress_convention'] = STRESS_CONVENTION
            handle.attrs['n_frames'] = self.n_frames
            handle.attrs['shards'] = json.dumps(self.shards)
            handle.attrs['columns'] = json.dumps({k: v.to_json() for k, v in self.columns.items()})
            handle.attrs['column_locator'] = json.dumps(self.column_locator)
            handle.attrs['n_locators'] = len(self.locators)
            for k, (sid, row) in enumerate(self.locators):
                # stored as narrow as they fit (read back as int32 / int64)
                _dataset(handle, f'locators/{k}/shard', _narrow_int(sid), INDEX_CHUNK)
                _dataset(handle, f'locators/{k}/row', _narrow_int(row), INDEX_CHUNK)
        return buffer.getvalue()

    @classmethod
    def from_file(cls, fileobj: IO[bytes] | str) -> DatasetIndex:
        """Read an index written by :meth:`to_bytes`, checking its consistency."""
        try:
            with h5py.File(fileobj, 'r') as handle:
                attrs = handle.attrs
                if attrs.get('format') != INDEX_FORMAT:
                    raise CorruptDatasetError(f'not a {INDEX_FORMAT} file')
                if int(attrs['format_version']) > FORMAT_VERSION:
                    raise CorruptDatasetError(
                        f'index format version {attrs["format_version"]} is newer than this '
                        f'aiida-trainspot reads ({FORMAT_VERSION}); upgrade the package'
                    )
                n_frames = int(attrs['n_frames'])
                shards = json.loads(attrs['shards'])
                columns = {
                    k: ColumnSpec.from_json(k, v) for k, v in json.loads(attrs['columns']).items()
                }
                column_locator = {k: int(v) for k, v in json.loads(attrs['column_locator']).items()}
                locators = [
                    (
                        handle[f'locators/{k}/shard'][()].astype(np.int32, copy=False),
                        handle[f'locators/{k}/row'][()].astype(np.int64, copy=False),
                    )
                    for k in range(int(attrs['n_locators']))
                ]
        except CorruptDatasetError:
            raise
        except Exception as exc:
            raise CorruptDatasetError(
                f'the dataset index is unreadable (truncated or corrupted): {exc}'
            ) from exc
        for arrays in locators:
            for array in arrays:
                array.flags.writeable = False  # an index is a value: derive, never edit
        index = cls(shards, columns, column_locator, locators)
        if any(len(sid) != n_frames or len(row) != n_frames for sid, row in locators):
            raise CorruptDatasetError('the dataset index has locators of the wrong length')
        if any(sid.size and (sid.max() >= len(shards) or sid.min() < -1) for sid, _ in locators):
            raise CorruptDatasetError('the dataset index refers to a shard it does not list')
        return index


def _narrow_int(values: np.ndarray) -> np.ndarray:
    """Integers in the narrowest of int8/int16/int32 that holds them (int64 otherwise)."""
    if values.size == 0:
        return values
    lo, hi = int(values.min()), int(values.max())
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return values.astype(dtype)
    return values


def _dtype_clash(a: str, b: str) -> bool:
    if a == b:
        return False
    if 'str' in (a, b):
        return True
    ka, kb = np.dtype(a).kind, np.dtype(b).kind
    numeric = {'b', 'i', 'u', 'f'}
    return not (ka in numeric and kb in numeric)


def _wider(a: ColumnSpec, b: ColumnSpec) -> ColumnSpec:
    if a.dtype == b.dtype or 'str' in (a.dtype, b.dtype):
        return a
    return ColumnSpec(a.name, a.kind, np.result_type(a.dtype, b.dtype).str.lstrip('<>|='), a.shape)


def concatenate_indices(indices: Sequence[DatasetIndex]) -> DatasetIndex:
    """Join datasets frame-wise; a column one of them lacks is missing for its frames."""
    if not indices:
        raise ValueError('nothing to concatenate')
    shards: list[str] = []
    for index in indices:
        shards += [s for s in index.shards if s not in shards]
    columns: dict[str, ColumnSpec] = {}
    for index in indices:
        for name, spec in index.columns.items():
            old = columns.get(name)
            if old is None:
                columns[name] = spec
                continue
            if (old.kind, old.shape) != (spec.kind, spec.shape) or _dtype_clash(
                old.dtype, spec.dtype
            ):
                raise ValueError(
                    f'column {name!r} differs between datasets: {old.kind} {old.dtype} {old.shape} '
                    f'vs {spec.kind} {spec.dtype} {spec.shape}'
                )
            columns[name] = _wider(old, spec)
    # one locator per distinct "group signature" keeps columns written together together
    signature: dict[str, tuple[int, ...]] = {
        name: tuple(index.column_locator.get(name, -1) for index in indices) for name in columns
    }
    for name in STRUCTURE_COLUMNS:
        signature[name] = tuple(0 for _ in indices)
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, sig in signature.items():
        groups.setdefault(sig, []).append(name)
    ordered = sorted(groups.items(), key=lambda item: item[0] != tuple(0 for _ in indices))
    locators: list[tuple[np.ndarray, np.ndarray]] = []
    column_locator: dict[str, int] = {}
    for sig, names in ordered:
        sids, rows = [], []
        for index, k in zip(indices, sig, strict=True):
            remap = np.array([shards.index(s) for s in index.shards] + [-1], dtype=np.int32)
            if k < 0:
                sids.append(np.full(index.n_frames, -1, dtype=np.int32))
                rows.append(np.zeros(index.n_frames, dtype=np.int64))
            else:
                sid, row = index.locators[k]
                sids.append(remap[sid])
                rows.append(row)
        locators.append(
            (np.concatenate(sids).astype(np.int32), np.concatenate(rows).astype(np.int64))
        )
        for name in names:
            column_locator[name] = len(locators) - 1
    return DatasetIndex(shards, columns, column_locator, locators).pruned()


# --------------------------------------------------------------------------- reading


class FrameStore:
    """Read access to a dataset given its index and a way to open its shards.

    ``opener(name)`` returns a binary file object (or a path) of the shard ``name``;
    shards are opened lazily and kept open until :meth:`close`.
    """

    def __init__(self, index: DatasetIndex, opener: Callable[[str], Any]):
        self.index = index
        self._opener = opener
        self._readers: dict[int, ShardReader] = {}
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        """Close every open shard."""
        self._readers.clear()
        self._stack.close()

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.index.n_frames

    def reader(self, shard_id: int) -> ShardReader:
        """The (cached) reader of shard number ``shard_id``."""
        if shard_id not in self._readers:
            name = self.index.shards[shard_id]
            try:
                source = self._opener(name)
                if isinstance(source, contextlib.AbstractContextManager) and not hasattr(
                    source, 'read'
                ):
                    source = self._stack.enter_context(source)
                handle = self._stack.enter_context(h5py.File(source, 'r'))
            except Exception as exc:
                raise CorruptDatasetError(
                    f'shard {name} cannot be opened (truncated or corrupted): {exc}'
                ) from exc
            self._readers[shard_id] = ShardReader(name, handle)
        return self._readers[shard_id]

    def n_atoms(self, frames: np.ndarray | None = None) -> np.ndarray:
        """Atom count of each frame."""
        return self._n_atoms(self._plan(0, frames), len(self) if frames is None else len(frames))

    def _n_atoms(self, plan: list[_Group], n_frames: int) -> np.ndarray:
        out = np.zeros(n_frames, dtype=np.int64)
        for group in plan:
            reader = self.reader(group.shard_id)
            if group.run:
                out[group.target] = reader.n_atoms[group.source]
            else:
                out[group.positions] = reader.n_atoms[group.rows]
        return out

    def _plan(self, locator: int, frames: np.ndarray | None) -> list[_Group]:
        """Where the frames of ``locator`` are: one :class:`_Group` per shard, rows checked."""
        sid, row = self._locate(locator, frames)
        plan = []
        for shard_id, positions, rows in _groups(sid, row):
            reader = self.reader(shard_id)
            if rows.size and (rows.max() >= reader.n_frames or rows.min() < 0):
                raise CorruptDatasetError(f'the index points past the end of shard {reader.name}')
            plan.append(_Group(shard_id, positions, rows))
        return plan

    def _locate(self, locator: int, frames: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        sid, row = self.index.locators[locator]
        if frames is None:
            return sid, row
        return sid[frames], row[frames]

    def presence(self, name: str) -> np.ndarray:
        """Per-frame mask of the frames that carry column ``name`` (reads no values)."""
        mask = np.zeros(len(self), dtype=bool)
        if name not in self.index.columns:
            return mask
        sid, row = self._locate(self.index.column_locator[name], None)
        for shard_id, positions, rows in _groups(sid, row):
            mask[positions] = self.reader(shard_id).present(name, rows)
        return mask

    def read(
        self,
        frames: np.ndarray | Sequence[int] | None = None,
        columns: Sequence[str] | None = None,
        structure: bool = True,
    ) -> Columns:
        """Read ``columns`` (default: all) of ``frames`` (default: all) into memory.

        The structure (numbers, positions, cell, pbc) is read as well unless
        ``structure`` is False.
        """
        if frames is not None:
            frames = np.asarray(frames, dtype=np.int64)
            if frames.size and (frames.min() < 0 or frames.max() >= len(self)):
                raise IndexError(f'frame index out of range for a dataset of {len(self)} frames')
        if columns is None:
            names = list(self.index.columns)
        elif structure:
            names = list(dict.fromkeys([*STRUCTURE_COLUMNS, *columns]))
        else:
            names = list(dict.fromkeys(columns))
        unknown = [n for n in names if n not in self.index.columns]
        if unknown:
            raise KeyError(
                f'no columns {unknown} in this dataset; it has {sorted(self.index.columns)}'
            )
        plans: dict[int, list[_Group]] = {0: self._plan(0, frames)}
        out = Columns(n_atoms=self._n_atoms(plans[0], len(self) if frames is None else len(frames)))
        out_offsets = out.offsets
        for name in names:
            spec = self.index.columns[name]
            locator = self.index.column_locator[name]
            if locator not in plans:
                plans[locator] = self._plan(locator, frames)
            values, mask = self._read_column(spec, plans[locator], out, out_offsets)
            (out.frame if spec.kind == 'frame' else out.atom)[name] = values
            if name not in STRUCTURE_COLUMNS and not mask.all():
                out.present[name] = mask
        return out

    def _read_column(self, spec: ColumnSpec, plan: list[_Group], out: Columns, out_offsets):
        n_rows = out.n_frames if spec.kind == 'frame' else int(out_offsets[-1])
        dtype = object if spec.dtype == 'str' else np.dtype(spec.dtype)
        values = np.empty((n_rows, *spec.shape), dtype=dtype)
        mask = np.zeros(out.n_frames, dtype=bool)
        filled = np.zeros(out.n_frames, dtype=bool)
        path = f'{spec.kind}/{spec.name}'
        for group in plan:
            reader = self.reader(group.shard_id)
            if reader.spec(spec.name) is None:
                continue
            present = reader.present(spec.name, group.rows)
            if dtype is not object and group.run:
                # frames stored in the order asked for: read straight into the output
                reader.read_run(path, spec.kind, group.rows, values, group.positions, out_offsets)
            elif spec.kind == 'frame':
                values[group.positions] = reader.read_rows(path, group.rows)
            else:
                source = atom_indices(reader.offsets, group.rows)
                target = atom_indices(out_offsets, group.positions)
                values[target] = reader.read_rows(path, source)
            where = group.target if group.run else group.positions
            mask[where] = present
            filled[where] = True
        if not filled.all():
            _fill_missing(values, spec, out, out_offsets, ~filled)
        if spec.name in STRUCTURE_COLUMNS and not filled.all():
            raise CorruptDatasetError(f'structure column {spec.name!r} is missing for some frames')
        return values, mask

    def iter_chunks(
        self, chunk_size: int = 10000, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[int, Columns]]:
        """Yield (first frame, :class:`Columns`) for consecutive chunks of frames."""
        if chunk_size < 1:
            raise ValueError('chunk_size must be at least 1')
        for start in range(0, len(self), chunk_size):
            stop = min(start + chunk_size, len(self))
            yield start, self.read(np.arange(start, stop), columns)


class _Group:
    """Frames of a read that one shard holds: output ``positions`` and shard ``rows``.

    ``run``: both are ascending runs, so ``target`` and ``source`` are slices of them.
    """

    __slots__ = ('positions', 'rows', 'run', 'shard_id', 'source', 'target')

    def __init__(self, shard_id: int, positions: np.ndarray, rows: np.ndarray):
        self.shard_id = shard_id
        self.positions = positions
        self.rows = rows
        self.run = _is_run(rows) and _is_run(positions)
        if self.run:
            self.target = slice(int(positions[0]), int(positions[-1]) + 1)
            self.source = slice(int(rows[0]), int(rows[-1]) + 1)


def _is_run(indices: np.ndarray) -> bool:
    """Whether ``indices`` are consecutive and ascending (a slice)."""
    return (
        indices.size > 0
        and int(indices[-1]) - int(indices[0]) == indices.size - 1
        and (indices.size < 2 or bool(np.all(np.diff(indices) == 1)))
    )


def _fill_missing(
    values: np.ndarray, spec: ColumnSpec, out: Columns, offsets: np.ndarray, missing: np.ndarray
) -> None:
    frames = np.flatnonzero(missing)
    target = frames if spec.kind == 'frame' else atom_indices(offsets, frames)
    values[target] = spec.missing_value()


def _groups(sid: np.ndarray, row: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (shard id, output positions, rows) for every shard referenced (skipping -1)."""
    if len(sid) == 0:
        return
    first = int(sid[0])
    if first >= 0 and np.all(sid == first):
        yield first, np.arange(len(sid)), row
        return
    for shard_id in np.unique(sid):
        if shard_id < 0:
            continue
        positions = np.flatnonzero(sid == shard_id)
        yield int(shard_id), positions, row[positions]
