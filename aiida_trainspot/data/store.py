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

FORMAT_VERSION = 1
SHARD_FORMAT = 'trainspot-pes-shard'
INDEX_FORMAT = 'trainspot-pes-index'
FRAME_CHUNK = 16384
ATOM_CHUNK = 65536
COMPRESSION = 'lzf'
#: Per-atom float columns (positions, forces, predictions) are chunked but not
#: compressed: measured on 100 000 frames, LZF shrank them by ~18 % but made reading
#: them ~4x slower, and training and evaluation read them every time.
COMPRESS_ATOM_FLOATS = False
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
        _dataset(handle, 'n_atoms', columns.n_atoms, FRAME_CHUNK)
        _dataset(handle, 'offsets', columns.offsets, FRAME_CHUNK)
        for name, values in columns.frame.items():
            _dataset(handle, f'frame/{name}', values, FRAME_CHUNK)
        for name, values in columns.atom.items():
            compress = COMPRESS_ATOM_FLOATS or values.dtype.kind != 'f'
            _dataset(handle, f'atom/{name}', values, ATOM_CHUNK, compress)
        for name, mask in columns.present.items():
            if not mask.all():
                _dataset(handle, f'present/{name}', mask, FRAME_CHUNK)


def _dataset(
    handle: h5py.File, path: str, values: np.ndarray, chunk_rows: int, compress: bool = True
) -> None:
    if values.dtype.kind in 'OU':
        values = np.asarray(values, dtype=object)
        dtype = _STRING
    else:
        dtype = values.dtype
    if len(values) == 0:
        handle.create_dataset(path, shape=values.shape, dtype=dtype)
        return
    chunks = (min(len(values), chunk_rows), *values.shape[1:])
    options = {'compression': COMPRESSION, 'shuffle': True} if compress else {}
    if dtype is not _STRING:
        options['fletcher32'] = True  # a per-chunk checksum: flipped bytes fail loudly on read
    handle.create_dataset(path, data=values, dtype=dtype, chunks=chunks, **options)


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


class ShardReader:
    """Reads columns from one open shard, checking its layout once."""

    def __init__(self, name: str, handle: h5py.File):
        self.name = name
        self.handle = handle
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
        if int(attrs['format_version']) > FORMAT_VERSION:
            raise CorruptDatasetError(
                f'shard {self.name} has format version {attrs["format_version"]}, newer than '
                f'this aiida-trainspot reads ({FORMAT_VERSION}); upgrade the package'
            )
        self.n_frames = int(attrs['n_frames'])
        self.n_atoms_total = int(attrs['n_atoms_total'])
        self.n_atoms = self.handle['n_atoms'][()]
        self.offsets = self.handle['offsets'][()]
        if len(self.n_atoms) != self.n_frames or len(self.offsets) != self.n_frames + 1:
            raise CorruptDatasetError(f'shard {self.name}: frame arrays have inconsistent lengths')
        if self.n_frames and int(self.offsets[-1]) != self.n_atoms_total:
            raise CorruptDatasetError(f'shard {self.name}: offsets do not add up to the atom count')
        for kind, expected in (('frame', self.n_frames), ('atom', self.n_atoms_total)):
            for name, dset in self.handle.get(kind, {}).items():
                if dset.shape[0] != expected:
                    raise CorruptDatasetError(
                        f'shard {self.name}: {kind} column {name!r} has {dset.shape[0]} rows, '
                        f'expected {expected}'
                    )

    def spec(self, name: str) -> ColumnSpec | None:
        """The spec of column ``name`` in this shard, or None if absent."""
        for kind in ('frame', 'atom'):
            dset = self.handle.get(f'{kind}/{name}')
            if dset is not None:
                dtype = (
                    'str' if h5py.check_string_dtype(dset.dtype) else dset.dtype.str.lstrip('<>|=')
                )
                return ColumnSpec(name, kind, dtype, tuple(dset.shape[1:]))
        return None

    def column_names(self) -> list[str]:
        """Names of the columns this shard holds."""
        return [*self.handle.get('frame', {}).keys(), *self.handle.get('atom', {}).keys()]

    def read_rows(self, path: str, rows: np.ndarray) -> np.ndarray:
        """Read ``rows`` of dataset ``path`` with one contiguous read of their span."""
        dset = self.handle[path]
        if len(rows) == 0:
            return np.zeros(
                (0, *dset.shape[1:]),
                dtype=object if h5py.check_string_dtype(dset.dtype) else dset.dtype,
            )
        lo, hi = int(rows.min()), int(rows.max()) + 1
        try:
            block = dset.asstr()[lo:hi] if h5py.check_string_dtype(dset.dtype) else dset[lo:hi]
        except OSError as exc:  # checksum mismatch, truncated chunk, ...
            raise CorruptDatasetError(f'shard {self.name}: {path} is corrupted: {exc}') from exc
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
            source = np.s_[int(rows[0]) : int(rows[-1]) + 1]
            target = np.s_[int(positions[0]) : int(positions[-1]) + 1]
        else:
            start, stop = int(self.offsets[rows[0]]), int(self.offsets[rows[-1] + 1])
            first = int(out_offsets[positions[0]])
            source = np.s_[start:stop]
            target = np.s_[first : first + stop - start]
        if source.stop == source.start:
            return
        try:
            self.handle[path].read_direct(out, source, target)
        except OSError as exc:  # checksum mismatch, truncated chunk, ...
            raise CorruptDatasetError(f'shard {self.name}: {path} is corrupted: {exc}') from exc

    def present(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Presence mask of column ``name`` at ``rows``."""
        if self.spec(name) is None:
            return np.zeros(len(rows), dtype=bool)
        if f'present/{name}' not in self.handle:
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
                _dataset(handle, f'locators/{k}/shard', sid, FRAME_CHUNK)
                _dataset(handle, f'locators/{k}/row', row, FRAME_CHUNK)
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
                    (handle[f'locators/{k}/shard'][()], handle[f'locators/{k}/row'][()])
                    for k in range(int(attrs['n_locators']))
                ]
        except CorruptDatasetError:
            raise
        except Exception as exc:
            raise CorruptDatasetError(
                f'the dataset index is unreadable (truncated or corrupted): {exc}'
            ) from exc
        index = cls(shards, columns, column_locator, locators)
        if any(len(sid) != n_frames or len(row) != n_frames for sid, row in locators):
            raise CorruptDatasetError('the dataset index has locators of the wrong length')
        if any(sid.size and (sid.max() >= len(shards) or sid.min() < -1) for sid, _ in locators):
            raise CorruptDatasetError('the dataset index refers to a shard it does not list')
        return index


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
        sid, row = self._locate(0, frames)
        out = np.zeros(len(sid), dtype=np.int64)
        for shard_id, positions, rows in _groups(sid, row):
            reader = self.reader(shard_id)
            if rows.size and rows.max() >= reader.n_frames:
                raise CorruptDatasetError(f'the index points past the end of shard {reader.name}')
            out[positions] = reader.n_atoms[rows]
        return out

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
        n_atoms = self.n_atoms(frames)
        out = Columns(n_atoms=n_atoms)
        out_offsets = out.offsets
        for name in names:
            spec = self.index.columns[name]
            values, mask = self._read_column(
                spec, self.index.column_locator[name], frames, out, out_offsets
            )
            (out.frame if spec.kind == 'frame' else out.atom)[name] = values
            if name not in STRUCTURE_COLUMNS and not mask.all():
                out.present[name] = mask
        return out

    def _read_column(self, spec: ColumnSpec, locator: int, frames, out: Columns, out_offsets):
        sid, row = self._locate(locator, frames)
        n_rows = out.n_frames if spec.kind == 'frame' else int(out_offsets[-1])
        dtype = object if spec.dtype == 'str' else np.dtype(spec.dtype)
        values = np.empty((n_rows, *spec.shape), dtype=dtype)
        mask = np.zeros(out.n_frames, dtype=bool)
        filled = np.zeros(out.n_frames, dtype=bool)
        for shard_id, positions, rows in _groups(sid, row):
            reader = self.reader(shard_id)
            if rows.size and rows.max() >= reader.n_frames:
                raise CorruptDatasetError(f'the index points past the end of shard {reader.name}')
            if reader.spec(spec.name) is None:
                continue
            present = reader.present(spec.name, rows)
            path = f'{spec.kind}/{spec.name}'
            if dtype is not object and _is_run(rows) and _is_run(positions):
                # frames stored in the order asked for: read straight into the output
                reader.read_run(path, spec.kind, rows, values, positions, out_offsets)
            elif spec.kind == 'frame':
                values[positions] = reader.read_rows(path, rows)
            else:
                source = atom_indices(reader.offsets, rows)
                target = atom_indices(out_offsets, positions)
                values[target] = reader.read_rows(path, source)
            mask[positions] = present
            filled[positions] = True
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
