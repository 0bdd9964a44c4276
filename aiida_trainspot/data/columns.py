"""Columnar, in-memory representation of a batch of atomic frames (no AiiDA import).

A batch of frames of different sizes is held as a set of columns, the layout the
on-disk store uses as well:

- per-frame columns have a leading dimension equal to the number of frames;
- per-atom columns are concatenated over frames, with ``n_atoms`` (and the
  derived ``offsets``) telling where each frame starts.

Every column except the structure (``numbers``, ``positions``, ``cell``, ``pbc``)
is optional per frame: a boolean ``present`` mask says which frames carry a value.
A missing value is stored as NaN (floats), 0 (integers) or '' (strings) *and*
flagged in the mask, so it can never be mistaken for a real zero.

Units: eV, Å, eV/Å, eV/Å³. Stress in Voigt order (xx, yy, zz, yz, xz, xy) with the
ASE sign convention (positive = tensile, ``stress = (1/V) dE/dε``), V the volume of the
whole cell, vacuum included. Frames periodic along at least two axes carry a stress
(:func:`carries_stress`): bulk and 2D slabs or layers, whose in-plane components are
meaningful; clusters, wires and isolated atoms do not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STRUCTURE_FRAME_COLUMNS = ('cell', 'pbc')
STRUCTURE_ATOM_COLUMNS = ('numbers', 'positions')
STRUCTURE_COLUMNS = STRUCTURE_ATOM_COLUMNS + STRUCTURE_FRAME_COLUMNS
LABEL_COLUMNS = ('energy', 'forces', 'stress')
UNITS = {
    'energy': 'eV',
    'forces': 'eV/Angstrom',
    'stress': 'eV/Angstrom^3',
    'positions': 'Angstrom',
    'cell': 'Angstrom',
}
#: Prefix of the text columns that hold ``info`` values which are dicts or lists, as JSON;
#: converting back to ASE decodes them under the key without the prefix.
JSON_PREFIX = 'json:'
STRESS_CONVENTION = (
    'Voigt order xx, yy, zz, yz, xz, xy; ASE sign: stress = (1/V) dE/d(strain), '
    'positive is tensile (pressure = -trace/3)'
)
#: Frames periodic along at least this many axes carry a stress (bulk, and 2D frames).
STRESS_MIN_PERIODIC_AXES = 2

#: Fixed shapes (after the leading dimension) of the well-known columns.
KNOWN_SHAPES: dict[str, tuple[int, ...]] = {
    'numbers': (),
    'positions': (3,),
    'cell': (3, 3),
    'pbc': (3,),
    'energy': (),
    'forces': (3,),
    'stress': (6,),
}
KNOWN_KINDS: dict[str, str] = {
    'numbers': 'atom',
    'positions': 'atom',
    'forces': 'atom',
    'cell': 'frame',
    'pbc': 'frame',
    'energy': 'frame',
    'stress': 'frame',
}


@dataclass(frozen=True)
class ColumnSpec:
    """What a column holds: per frame or per atom, its dtype and trailing shape."""

    name: str
    kind: str  # 'frame' or 'atom'
    dtype: str  # numpy dtype string; 'str' for text
    shape: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable description."""
        return {'kind': self.kind, 'dtype': self.dtype, 'shape': list(self.shape)}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> ColumnSpec:
        """Inverse of :meth:`to_json`."""
        return cls(name, data['kind'], data['dtype'], tuple(data['shape']))

    def missing_value(self) -> Any:
        """The fill value of a missing entry (always paired with a False mask)."""
        if self.dtype == 'str':
            return ''
        if np.dtype(self.dtype).kind == 'f':
            return np.nan
        return 0


@dataclass
class Columns:
    """A batch of frames held column by column.

    ``frame`` and ``atom`` map column names to arrays; ``present`` maps the name of
    an optional column to its per-frame mask (absent key: present everywhere).
    """

    n_atoms: np.ndarray
    frame: dict[str, np.ndarray] = field(default_factory=dict)
    atom: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.n_atoms = np.asarray(self.n_atoms, dtype=np.int64).reshape(-1)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.n_atoms.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """Start of each frame in the per-atom arrays, plus the total at the end."""
        return np.concatenate([[0], np.cumsum(self.n_atoms)]).astype(np.int64)

    @property
    def names(self) -> list[str]:
        """All column names."""
        return [*self.frame, *self.atom]

    def spec(self, name: str) -> ColumnSpec:
        """The :class:`ColumnSpec` of column ``name``."""
        if name in self.frame:
            return ColumnSpec(
                name, 'frame', _dtype_name(self.frame[name]), self.frame[name].shape[1:]
            )
        if name in self.atom:
            return ColumnSpec(name, 'atom', _dtype_name(self.atom[name]), self.atom[name].shape[1:])
        raise KeyError(f'no column {name!r}; available: {sorted(self.names)}')

    def mask(self, name: str) -> np.ndarray:
        """Per-frame boolean mask of frames that carry ``name``."""
        if name not in self.frame and name not in self.atom:
            return np.zeros(self.n_frames, dtype=bool)
        return self.present.get(name, np.ones(self.n_frames, dtype=bool))

    def column(self, name: str) -> np.ndarray:
        """The array of column ``name``."""
        if name in self.frame:
            return self.frame[name]
        if name in self.atom:
            return self.atom[name]
        raise KeyError(f'no column {name!r}; available: {sorted(self.names)}')

    def take(self, indices: Sequence[int] | np.ndarray) -> Columns:
        """A new batch holding the frames at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        atom_index = atom_indices(self.offsets, indices)
        return Columns(
            n_atoms=self.n_atoms[indices],
            frame={k: v[indices] for k, v in self.frame.items()},
            atom={k: v[atom_index] for k, v in self.atom.items()},
            present={k: v[indices] for k, v in self.present.items()},
        )


def carries_stress(pbc: Any, cell: Any = None) -> np.ndarray:
    """Which frames carry a stress: periodic along at least two axes (and a cell of volume > 0).

    ``pbc`` is (3,) or (F, 3), ``cell`` (3, 3) or (F, 3, 3). The stress of a 2D frame is
    (1/V) dE/dε with V the whole cell's volume, vacuum included, as pw.x and the models'
    virial over the volume give it: its in-plane components (xx, yy, xy) describe the layer,
    the out-of-plane ones are ~0 in vacuum. Along fewer periodic axes there is no plane to
    strain, so such frames have no stress (missing, never zero).
    """
    periodic = np.asarray(pbc, dtype=bool).sum(axis=-1) >= STRESS_MIN_PERIODIC_AXES
    if cell is not None:
        volume = np.abs(np.linalg.det(np.asarray(cell, dtype=float)))
        periodic = periodic & (volume > 1e-12)
    return periodic


def atom_indices(offsets: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Indices into per-atom arrays of all atoms of ``frames`` (vectorised ranges)."""
    frames = np.asarray(frames, dtype=np.int64)
    starts = offsets[frames]
    lengths = offsets[frames + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # position of each atom inside its frame, then shifted by that frame's start
    frame_of_atom = np.repeat(np.arange(len(frames)), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return starts[frame_of_atom] + np.arange(total) - first[frame_of_atom]


def _dtype_name(array: np.ndarray) -> str:
    if array.dtype.kind in 'USO':
        return 'str'
    return array.dtype.str.lstrip('<>|=')


def normalise_metadata_value(key: str, value: Any, where: str) -> Any:
    """Return a metadata value the store can hold, or raise naming the key.

    Scalars (str, bool, int, float) and numeric arrays are accepted; anything else
    is rejected rather than silently dropped. (Dicts and lists never get here: they
    are stored as JSON, see :func:`encode_json_value`.)
    """
    if isinstance(value, (str, bool, np.bool_)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.dtype.kind in 'biuf':
            return array
    raise ValueError(
        f'{where}: metadata {key!r} has a value of type {type(value).__name__} that a dataset '
        'cannot store; use a string, a number, a bool, a numeric array, or a dict or list '
        'of JSON values'
    )


def is_json_value(value: Any) -> bool:
    """Whether an ``info`` value is stored as JSON text (a dict or a list)."""
    return isinstance(value, (dict, list))


def json_column(key: str) -> str:
    """The name of the text column holding the JSON-stored values of ``info[key]``."""
    return JSON_PREFIX + key


def encode_json_value(key: str, value: Any, where: str) -> str:
    """``value`` (a dict or list) as compact JSON text; raise naming ``key`` if it has no JSON form.

    Numpy arrays and scalars inside become lists and numbers and tuples become lists, so
    that the value reads back as plain JSON (and ASE's extended XYZ writer can write it).
    Dict keys must be text: JSON would turn other keys into text without a word.
    """
    try:
        plain = _plain_json(value, f'info[{key!r}]')
    except (TypeError, ValueError) as exc:
        raise ValueError(f'{where}: info {key!r} cannot be stored as JSON: {exc}') from None
    return json.dumps(plain, ensure_ascii=False, separators=(',', ':'))


def decode_json_value(text: str) -> Any:
    """The dict or list stored by :func:`encode_json_value`."""
    return json.loads(text)


def _plain_json(value: Any, path: str) -> Any:
    """``value`` with numpy arrays, numpy scalars and tuples replaced by JSON's own types."""
    if isinstance(value, dict):
        out = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise TypeError(
                    f'{path} has the key {name!r} of type {type(name).__name__}; JSON keys are text'
                )
            out[name] = _plain_json(item, f'{path}[{name!r}]')
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(item, f'{path}[{i}]') for i, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _plain_json(value.tolist(), path)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f'{path} is of type {type(value).__name__}, which has no JSON form')


def build_column(spec_name: str, values: list[Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-frame values (``None`` = missing) into an array and a present mask."""
    mask = np.array([v is not None for v in values], dtype=bool)
    sample = next((v for v in values if v is not None), None)
    if sample is None:
        return np.full(len(values), np.nan), mask
    if isinstance(sample, str):
        if not all(isinstance(v, str) for v in values if v is not None):
            raise ValueError(f'{where}: metadata {spec_name!r} mixes text and non-text values')
        return np.array(['' if v is None else v for v in values], dtype=object), mask
    arrays = [np.asarray(v) for v in values if v is not None]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f'{where}: metadata {spec_name!r} has differing shapes {sorted(shapes)}')
    dtype = np.result_type(*arrays)
    if dtype.kind == 'b' and not all(a.dtype.kind == 'b' for a in arrays):
        dtype = np.dtype(np.int64)
    out = np.zeros((len(values), *arrays[0].shape), dtype=dtype)
    if dtype.kind == 'f':
        out[~mask] = np.nan
    out[mask] = np.stack(arrays)
    return out, mask


def concatenate_columns(batches: Iterable[Columns]) -> Columns:
    """Join batches frame-wise; a column absent from a batch is missing for its frames."""
    batches = list(batches)
    if not batches:
        return Columns(n_atoms=np.zeros(0, dtype=np.int64))
    n_atoms = np.concatenate([b.n_atoms for b in batches])
    frame: dict[str, np.ndarray] = {}
    atom: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    names: dict[str, ColumnSpec] = {}
    for batch in batches:
        for name in batch.names:
            spec = batch.spec(name)
            if name in names and (names[name].kind, names[name].shape) != (spec.kind, spec.shape):
                raise ValueError(f'column {name!r} differs in kind or shape between batches')
            names.setdefault(name, spec)
    for name, spec in names.items():
        parts, masks = [], []
        for batch in batches:
            length = batch.n_frames if spec.kind == 'frame' else int(batch.n_atoms.sum())
            if name in batch.names:
                parts.append(batch.column(name))
                masks.append(batch.mask(name))
            else:
                dtype = object if spec.dtype == 'str' else np.dtype(spec.dtype)
                parts.append(np.full((length, *spec.shape), spec.missing_value(), dtype=dtype))
                masks.append(np.zeros(batch.n_frames, dtype=bool))
        target = frame if spec.kind == 'frame' else atom
        target[name] = np.concatenate(parts) if parts else np.zeros(0)
        mask = np.concatenate(masks)
        if not mask.all():
            present[name] = mask
    return Columns(n_atoms=n_atoms, frame=frame, atom=atom, present=present)


def json_dumps_sorted(data: Any) -> str:
    """Compact JSON with sorted keys (stable checksums and attributes)."""
    return json.dumps(data, sort_keys=True, separators=(',', ':'))
