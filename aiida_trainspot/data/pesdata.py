"""``PESData``: an AiiDA data node holding a dataset of atomic frames with labels.

The node's repository holds an index (``index.h5``) and immutable shards
(``shards/<sha256>.h5``), see :mod:`aiida_trainspot.data.store`. Derived datasets
reuse their parents' shard files unchanged; AiiDA's content-addressed object
store then keeps one copy of the bytes however many datasets share them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from aiida import orm
from ase import Atoms
from ase.data import chemical_symbols

from .columns import (
    KNOWN_KINDS,
    KNOWN_SHAPES,
    LABEL_COLUMNS,
    STRESS_CONVENTION,
    STRUCTURE_COLUMNS,
    UNITS,
    Columns,
)
from .convert import atoms_from_columns, columns_from_atoms, columns_from_frames, frame_records
from .splits import DEFAULT_FRACTIONS, SPLITS, UNASSIGNED, assign_splits
from .store import (
    FORMAT_VERSION,
    DatasetIndex,
    FrameStore,
    concatenate_indices,
    content_name,
    shard_bytes,
    write_shard,
)
from .validation import validate_columns

__all__ = ('PESData',)

INDEX_KEY = 'index.h5'
SHARD_DIR = 'shards'
SPLIT_COLUMN = 'split'
STRATUM_COLUMN = 'generation_method'

Source = Callable[[], Any]

INDEX_CACHE_SIZE = 64
_INDEX_CACHE: dict[str, DatasetIndex] = {}  # repository key -> index, oldest first


def _shard_key(name: str) -> str:
    return f'{SHARD_DIR}/{name}.h5'


class PESData(orm.Data):
    """A dataset of atomic configurations with optional energies, forces and stresses.

    Construct with :meth:`from_ase` (the usual way), :meth:`from_extxyz` or
    :meth:`from_frames`. Frames may differ in size and periodicity; labels are
    optional per frame and per property. Units: eV, Å, eV/Å, eV/Å³ (ASE stress
    sign). Queryable attributes: ``n_frames``, ``n_atoms``, ``species``,
    ``n_labelled`` (per property) and the flat ``n_labelled_energy`` etc.,
    ``split_counts``, ``metadata_columns``, ``checksum``.
    """

    # ------------------------------------------------------------------ construction

    def __init__(self, columns: Columns | None = None, *, validate: bool = True, **kwargs: Any):
        """Create a dataset from in-memory :class:`Columns` (validated unless told not to)."""
        super().__init__(**kwargs)
        if columns is None:
            columns = columns_from_frames([])
        if validate:
            validate_columns(columns)
        data = shard_bytes(columns)
        name = content_name(data)
        index = DatasetIndex.for_single_shard(name, columns)
        self._write(index, {name: lambda: io.BytesIO(data)})

    @classmethod
    def from_ase(
        cls,
        atoms_list: Iterable[Atoms],
        *,
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
        validate: bool = True,
    ) -> PESData:
        """Create a dataset from ``ase.Atoms``.

        Labels are read from each frame's calculator results (e.g. a
        ``SinglePointCalculator``) or, when keys are named, from
        ``atoms.info[energy_key]``, ``atoms.arrays[forces_key]``, ``atoms.info[stress_key]``.
        Other ``info`` entries become metadata columns, other ``arrays`` per-atom columns.
        """
        columns = columns_from_atoms(atoms_list, energy_key, forces_key, stress_key)
        return cls(columns, validate=validate)

    @classmethod
    def from_frames(cls, records: Iterable[Mapping[str, Any]], *, validate: bool = True) -> PESData:
        """Create a dataset from frame dictionaries (see :func:`columns_from_frames`)."""
        return cls(columns_from_frames(records), validate=validate)

    @classmethod
    def from_extxyz(
        cls,
        path: str | Path,
        *,
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
        validate: bool = True,
    ) -> PESData:
        """Create a dataset from an extended-XYZ file (every frame in it)."""
        from ase.io import iread

        frames = iread(str(path), index=':', format='extxyz')
        return cls.from_ase(
            frames,
            energy_key=energy_key,
            forces_key=forces_key,
            stress_key=stress_key,
            validate=validate,
        )

    # ------------------------------------------------------------------ storage internals

    def _write(self, index: DatasetIndex, sources: Mapping[str, Source]) -> None:
        """Put the index and every shard into the (unstored) node's repository."""
        repository = self.base.repository
        for name in index.shards:
            with _as_filelike(sources[name]()) as handle:
                repository.put_object_from_filelike(handle, _shard_key(name))
        repository.put_object_from_bytes(index.to_bytes(), INDEX_KEY)
        self._reset_store()
        self._set_summary(index)

    def _reset_store(self) -> None:
        store = getattr(self, '_pes_store', None)
        if store is not None:
            store.close()
        self._pes_store = None

    def _frame_store(self) -> FrameStore:
        """The (cached) reader over this node's files."""
        store = getattr(self, '_pes_store', None)
        if store is None:
            store = FrameStore(
                self._index(), lambda name: self.base.repository.open(_shard_key(name), 'rb')
            )
            self._pes_store = store
        return store

    def _index(self) -> DatasetIndex:
        """The node's index, read once per process for a stored node.

        A stored node's files are content-addressed (the key is the SHA-256 of the bytes),
        so an index read before under the same key is this one: reading a dataset again, or
        loading the same node anew, skips the repository lookup.
        """
        key = self.base.repository.get_object(INDEX_KEY).key if self.is_stored else None
        index = _INDEX_CACHE.get(key) if key else None
        if index is None:
            with self.base.repository.open(INDEX_KEY, 'rb') as handle:
                index = DatasetIndex.from_file(io.BytesIO(handle.read()))
            if key:
                _INDEX_CACHE[key] = index
                while len(_INDEX_CACHE) > INDEX_CACHE_SIZE:
                    _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        return index

    def store(self, *args: Any, **kwargs: Any) -> PESData:
        """Store the node (its files move to the object store, so reopen them after)."""
        self._reset_store()
        return super().store(*args, **kwargs)

    def _sources(self) -> dict[str, Source]:
        """Openers of this node's shards, by shard name, for datasets derived from it."""
        return {name: self._shard_opener(name) for name in self._frame_store().index.shards}

    def _shard_opener(self, name: str) -> Source:
        key = _shard_key(name)
        return lambda: self.base.repository.open(key, 'rb')

    def _derive(self, index: DatasetIndex, sources: Mapping[str, Source]) -> PESData:
        # bypass __init__ (which writes a shard of its own) but run the Node constructor
        node = PESData.__new__(PESData)
        orm.Data.__init__(node)
        node._write(index, sources)
        return node

    def _set_summary(self, index: DatasetIndex) -> None:
        store = self._frame_store()
        n_atoms = store.n_atoms()
        # only what the summary needs: numbers, presence masks and the split strings
        small = ['numbers'] + ([SPLIT_COLUMN] if SPLIT_COLUMN in index.columns else [])
        data = store.read(columns=small, structure=False)
        numbers = data.atom['numbers']
        if numbers.size and numbers.min() >= 0:  # a histogram, not a sort of every atom
            numbers = np.flatnonzero(np.bincount(numbers))
        else:  # empty, or unvalidated input with negative numbers
            numbers = np.unique(numbers)
        n_labelled = {name: int(store.presence(name).sum()) for name in LABEL_COLUMNS}
        split = data.frame.get(SPLIT_COLUMN)
        if split is not None:
            split = np.where(data.mask(SPLIT_COLUMN), split, UNASSIGNED)
        split_counts = {
            name: int(np.sum(split == name)) if split is not None else 0 for name in SPLITS
        }
        split_counts['unassigned'] = len(n_atoms) - sum(split_counts.values())
        metadata = sorted(set(index.columns) - set(STRUCTURE_COLUMNS) - set(LABEL_COLUMNS))
        attributes = {
            'format_version': FORMAT_VERSION,
            'units': dict(UNITS),
            'stress_convention': STRESS_CONVENTION,
            'n_frames': len(n_atoms),
            'n_atoms': int(n_atoms.sum()),
            'species': [chemical_symbols[int(z)] for z in numbers],
            'n_labelled': n_labelled,
            'split_counts': split_counts,
            'metadata_columns': metadata,
            'checksum': index.checksum(),
        }
        attributes.update({f'n_labelled_{name}': count for name, count in n_labelled.items()})
        for key, value in attributes.items():
            self.base.attributes.set(key, value)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.base.attributes.get('n_frames'))

    @property
    def species(self) -> list[str]:
        """Chemical symbols present in the dataset, sorted by atomic number."""
        return list(self.base.attributes.get('species'))

    @property
    def column_names(self) -> list[str]:
        """Every column of the dataset (structure, labels, metadata, extra arrays)."""
        return list(self._frame_store().index.columns)

    def n_atoms_per_frame(self) -> np.ndarray:
        """Number of atoms of every frame."""
        return self._frame_store().n_atoms()

    def get_columns(
        self, names: Sequence[str] | None = None, frames: Sequence[int] | np.ndarray | None = None
    ) -> Columns:
        """Read columns (default all; the structure always) of frames (default all)."""
        return self._frame_store().read(frames, names)

    def get_column(
        self, name: str, frames: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (values, present mask) of one column; per-atom values are concatenated."""
        columns = self._frame_store().read(frames, [name])
        return columns.column(name), columns.mask(name)

    def get_atoms(self, index: int, label_keys: Mapping[str, str] | None = None) -> Atoms:
        """Frame ``index`` as ``ase.Atoms`` (reads only that frame)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f'frame {index} out of range for a dataset of {n} frames')
        return atoms_from_columns(self._frame_store().read([index % n]), label_keys)[0]

    def iter_atoms(
        self, chunk_size: int = 1000, label_keys: Mapping[str, str] | None = None
    ) -> Iterator[Atoms]:
        """Iterate over frames as ``ase.Atoms``, reading ``chunk_size`` frames at a time."""
        for _, columns in self._frame_store().iter_chunks(chunk_size):
            yield from atoms_from_columns(columns, label_keys)

    def iter_columns(
        self, chunk_size: int = 10000, names: Sequence[str] | None = None
    ) -> Iterator[tuple[int, Columns]]:
        """Iterate over (first frame, :class:`Columns`) chunks with bounded memory."""
        return self._frame_store().iter_chunks(chunk_size, names)

    def to_ase(self, label_keys: Mapping[str, str] | None = None) -> list[Atoms]:
        """Every frame as ``ase.Atoms``; labels on a ``SinglePointCalculator`` by default."""
        return atoms_from_columns(self._frame_store().read(), label_keys)

    def to_frames(self) -> Sequence[dict[str, Any]]:
        """Every frame as a frame dictionary."""
        return frame_records(self._frame_store().read())

    def to_extxyz(
        self, path: str | Path, label_keys: Mapping[str, str] | None = None, chunk_size: int = 1000
    ) -> None:
        """Write every frame to an extended-XYZ file.

        ``label_keys`` maps ``energy``/``forces``/``stress`` to the keys to write
        (e.g. ``{'energy': 'REF_energy', ...}`` for MACE); by default labels are
        written as ASE calculator results.
        """
        from .convert import write_extxyz_frame

        with open(path, 'w') as handle:
            for atoms in self.iter_atoms(chunk_size, label_keys):
                write_extxyz_frame(handle, atoms)

    def to_job(
        self,
        folder: Any,
        path: str,
        *,
        columns: Sequence[str] | None = None,
        shards: str = SHARD_DIR,
        copied: set[str] | None = None,
    ) -> list[tuple[str, str, str]]:
        """Hand the dataset (stored) to a job: what its runner reads at ``path`` of its folder.

        ``folder`` is the job's folder (an AiiDA ``Folder``), every path relative to it. With
        ``columns`` (``[]``: the structure alone): those columns of every frame, written to
        ``path`` as one shard file (:func:`~aiida_trainspot.data.store.read_shard` reads it);
        returns no copies. Without: the dataset as stored, no frame rewritten: returns the
        job's local copies (uuid, repository key, job path) of its index, to ``path``, and of
        each of its shards, to ``<shards>/<name>.h5`` (a
        :class:`~aiida_trainspot.data.store.FrameStore` reads them); a shard whose name is in
        ``copied`` (handed over with another dataset of the job) is not copied again, and the
        names copied are added to it.
        """
        if columns is not None:
            write_shard(self.get_columns(list(columns)), folder.get_abs_path(path))
            return []
        copied = set() if copied is None else copied
        copies = []
        for shard in self._index().shards:
            if shard not in copied:
                copied.add(shard)
                copies.append((self.uuid, _shard_key(shard), f'{shards}/{shard}.h5'))
        copies.append((self.uuid, INDEX_KEY, path))
        return copies

    # ------------------------------------------------------------------ derived datasets (unstored)

    def subset(self, selection: Sequence[int] | np.ndarray) -> PESData:
        """A new dataset of the frames at integer indices or where a boolean mask is True."""
        frames = self._frame_indices(selection)
        return self._derive(self._frame_store().index.subset(frames), self._sources())

    @classmethod
    def concatenate(cls, datasets: Sequence[PESData]) -> PESData:
        """A new dataset of all frames of ``datasets``, in order."""
        datasets = list(datasets)
        if not datasets:
            raise ValueError('nothing to concatenate: give at least one PESData')
        for position, dataset in enumerate(datasets):
            if not isinstance(dataset, PESData):
                raise TypeError(f'item {position} is a {type(dataset).__name__}, not a PESData')
        index = concatenate_indices([d._frame_store().index for d in datasets])
        sources: dict[str, Source] = {}
        for dataset in datasets:
            for name, source in dataset._sources().items():
                sources.setdefault(name, source)
        return datasets[0]._derive(index, sources)

    def with_columns(
        self,
        selection: Sequence[int] | np.ndarray,
        frame_columns: Mapping[str, Any] | None = None,
        atom_columns: Mapping[str, Any] | None = None,
        present: Mapping[str, Any] | None = None,
        *,
        validate: bool = True,
    ) -> PESData:
        """A new dataset where the given columns of the selected frames are set.

        Use it to add labels (``energy``, ``forces``, ``stress``), metadata, splits or
        model predictions to some frames. Per-atom arrays are concatenated over the
        selected frames, in selection order. ``present`` optionally marks values as
        missing. Only the new values are written; the rest is shared with ``self``.
        """
        frames = self._frame_indices(selection)
        if len(np.unique(frames)) != len(frames):
            raise ValueError('each frame can be given new values only once')
        base = self._frame_store().read(frames, [])
        batch = Columns(n_atoms=base.n_atoms)
        for name, values in (frame_columns or {}).items():
            batch.frame[name] = _as_column(values, len(frames), name)
        for name, values in (atom_columns or {}).items():
            batch.atom[name] = _as_column(values, int(base.n_atoms.sum()), name)
        for name, mask in (present or {}).items():
            if name not in batch.names:
                raise ValueError(f'present mask given for {name!r}, which is not being set')
            batch.present[name] = np.asarray(mask, dtype=bool).reshape(len(frames))
        if not batch.names:
            raise ValueError('no columns given')
        for column in batch.names:  # a label of the wrong shape must not define a new column
            spec = batch.spec(column)
            known = (KNOWN_KINDS.get(column), KNOWN_SHAPES.get(column))
            if known[0] and ((spec.kind, spec.shape) != known or spec.dtype == 'str'):
                raise ValueError(
                    f'column {column!r} takes per-{known[0]} numbers of shape {known[1]}, '
                    f'got per-{spec.kind} {spec.dtype} of shape {spec.shape}'
                )
        if validate:
            check = Columns(
                n_atoms=base.n_atoms,
                frame={**base.frame, **batch.frame},
                atom={**base.atom, **batch.atom},
                present=batch.present,
            )
            validate_columns(check, min_distance=0, frame_numbers=frames)
        data = shard_bytes(batch)
        name = content_name(data)
        specs = {column: batch.spec(column) for column in batch.names}
        index = self._frame_store().index.with_shard(name, frames, specs)
        sources = {**self._sources(), name: lambda: io.BytesIO(data)}
        return self._derive(index, sources)

    def without_columns(self, names: Sequence[str]) -> PESData:
        """A new dataset without the columns ``names`` (labels, metadata or predictions).

        Only the index changes: no frame data is rewritten. Structure columns cannot be
        removed; names the dataset does not have are ignored.
        """
        index = self._frame_store().index.without_columns(list(names))
        return self._derive(index, self._sources())

    def with_labels(
        self,
        selection: Sequence[int] | np.ndarray,
        energy: Any = None,
        forces: Any = None,
        stress: Any = None,
    ) -> PESData:
        """A new dataset with energies (eV), forces (eV/Å) and/or stresses (eV/Å³, Voigt) set."""
        frame_columns = {}
        if energy is not None:
            frame_columns['energy'] = np.asarray(energy, dtype=float)
        if stress is not None:
            frame_columns['stress'] = np.asarray(stress, dtype=float)
        atom_columns = {'forces': np.asarray(forces, dtype=float)} if forces is not None else {}
        return self.with_columns(selection, frame_columns, atom_columns)

    def assign_split(
        self,
        seed: int,
        fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
        stratify_by: str = STRATUM_COLUMN,
    ) -> PESData:
        """A new dataset where every frame without a split gets one (sticky, seeded, stratified).

        Frames that already have a split keep it; isolated atoms always go to training.
        """
        names = [c for c in (SPLIT_COLUMN, stratify_by) if c in self.column_names]
        data = self._frame_store().read(columns=names)
        current = data.frame.get(SPLIT_COLUMN, np.full(data.n_frames, UNASSIGNED, dtype=object))
        current = (
            np.where(data.mask(SPLIT_COLUMN), current, UNASSIGNED)
            if SPLIT_COLUMN in data.names
            else current
        )
        strata = data.frame.get(stratify_by, np.full(data.n_frames, '', dtype=object))
        strata = np.array([str(s) for s in strata], dtype=object)
        isolated = (data.n_atoms == 1) & ~data.frame['pbc'].any(axis=1)
        splits = assign_splits(current, strata, isolated, seed, fractions)
        changed = np.flatnonzero(splits != current)
        if changed.size == 0:
            return self.subset(np.arange(len(self)))
        return self.with_columns(changed, {SPLIT_COLUMN: splits[changed]}, validate=False)

    def split_indices(self, name: str) -> np.ndarray:
        """Indices of the frames in split ``name`` ('train', 'validation', 'test' or '')."""
        if SPLIT_COLUMN not in self.column_names:
            return np.arange(len(self)) if name == UNASSIGNED else np.zeros(0, dtype=np.int64)
        values, mask = self.get_column(SPLIT_COLUMN)
        values = np.where(mask, values, UNASSIGNED)
        return np.flatnonzero(values == name)

    def _frame_indices(self, selection: Sequence[int] | np.ndarray) -> np.ndarray:
        array = np.asarray(selection)
        n = len(self)
        if array.dtype == bool:
            if array.shape != (n,):
                raise ValueError(
                    f'a boolean mask must have one entry per frame ({n}), got {array.shape}'
                )
            return np.flatnonzero(array)
        if array.size == 0:
            return np.zeros(0, dtype=np.int64)
        if array.dtype.kind not in 'iu':
            raise TypeError(f'frame indices must be integers or a boolean mask, got {array.dtype}')
        array = array.astype(np.int64).reshape(-1)
        if array.min() < -n or array.max() >= n:
            raise IndexError(f'frame index out of range for a dataset of {n} frames')
        return array % n if n else array

    def __str__(self) -> str:
        attrs = self.base.attributes
        return (
            f'PESData<{self.pk}>: {attrs.get("n_frames")} frames, {attrs.get("n_atoms")} atoms, '
            f'species {attrs.get("species")}, labelled {attrs.get("n_labelled")}'
        )


def _as_column(values: Any, length: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind in 'US':
        array = array.astype(object)
    if array.ndim == 0 or array.shape[0] != length:
        raise ValueError(f'column {name!r} needs {length} rows, got shape {array.shape}')
    return array


class _as_filelike:  # noqa: N801 - used like a function in a with statement
    """Enter a source that is a file object, or a context manager yielding one."""

    def __init__(self, source: Any):
        self.source = source
        self.entered: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if hasattr(self.source, 'read'):
            return self.source
        self.entered = self.source.__enter__()
        return self.entered

    def __exit__(self, *exc: Any) -> None:
        if self.entered is not None:
            self.source.__exit__(*exc)
        elif hasattr(self.source, 'close'):
            self.source.close()
