"""The ``lammps`` exploration engine's pure core: LAMMPS inputs for an MD run, and its outputs back.

No AiiDA here (:mod:`.engine` is the glue to aiida-lammps' ``lammps.raw``). Three pieces:

**One atom-type mapping.** :func:`lammps_species` orders the species of a run by atomic number;
type ``k`` (1-based) is ``species[k - 1]`` in the data file (``Masses``, ``Atoms``), in every
``pair_coeff`` line and in the dump (``dump_modify element``), and :func:`parse_dump` maps types
back through the same list. The order of the species inside a structure never matters (a frame
listing Si before C gets the same types as one listing C first), and a run may declare more
species than its structure holds (e.g. all the species of the model), so every frame of a
campaign gets the same numbering.

**Geometry.** LAMMPS wants a lower-triangular cell (``a`` along x, ``b`` in the xy plane) with
small tilts. :class:`LammpsBox` rotates the structure into that frame (the rotation of ASE's
:class:`~ase.calculators.lammps.Prism`, kept so dumped frames are rotated back), reduces the tilts
along periodic axes and wraps the atoms. Per axis, ``boundary`` is ``p`` when periodic and ``m``
(shrink-wrapped, never smaller than the box written) when not: atoms leaving a non-periodic box
are then never lost, and a slab padded with vacuum keeps its vacuum as the minimal box. LAMMPS
only allows tilts along periodic axes, so the cell vector of a non-periodic axis is replaced by
its component normal to the others in LAMMPS (it carries no physics); frames read back get the
structure's own cell vector for such an axis. A left-handed cell gives an improper rotation
(a mirror image in LAMMPS, mirrored back on reading): every potential here is parity-invariant.

**Pair styles** (:func:`pair_commands`), with the syntax of their documentation:

- classical, ``{'kind': 'classical', 'pair_style': 'tersoff', 'file': 'SiC.tersoff'}``:
  ``pair_style tersoff`` + ``pair_coeff * * SiC.tersoff C Si`` (any style whose coefficients come
  from one file and one element per type: tersoff, sw, airebo, eam/alloy, bop, ...);
- MACE, ``{'kind': 'mace', 'file': 'model.model-lammps.pt'}``: ``pair_style mace
  no_domain_decomposition`` + ``pair_coeff * * model.model-lammps.pt C H O`` (MACE docs, "MACE in
  LAMMPS"; the model converted by ``mace_create_lammps_model``). The script then has ``atom_modify
  map yes`` and ``newton on`` after ``atom_style`` as those docs require;
- metatomic, ``{'kind': 'metatomic', 'file': 'model.pt', 'device': 'cpu', 'extensions':
  'extensions'}``: ``pair_style metatomic model.pt device cpu extensions extensions`` +
  ``pair_coeff * * 6 1 8`` (atomic numbers in type order; metatomic docs, "LAMMPS" engine page);
- Grimme D2 on top of any of them (``dispersion={'s6': 0.75, 'd': 20.0, 'cutoff': 15.0}``):
  ``pair_style hybrid/overlay <main> momb <cutoff> <s6> <d>`` with the main style's
  ``pair_coeff * * <style> ...`` and one ``pair_coeff i j momb 0.0 1.0 1.0 C6ij Rr`` per type pair
  ``i <= j`` (LAMMPS docs, ``pair_style momb``: Morse + Grimme's damped ``-s6 C6/r^6``; with
  ``D0 = 0`` only the D2 term is left). ``C6ij = sqrt(C6i C6j)`` and ``Rr = R0i + R0j`` from
  Grimme, J. Comput. Chem. 27, 1787 (2006), Table 1 (H-Xe), converted to eV Å^6.

**One MD protocol with the ase engine** (:mod:`.md`): relaxation (FIRE, cell fixed), then a
thermalisation that is neither sampled nor checked, then the production, sampled and checked
after every step by the same abort rules (temperature, closest distance, largest force); see
:func:`md_script`. Steps count from the start of the MD, thermalisation included, as in ASE.

Units are LAMMPS ``metal``: Å, eV, ps (``timestep``), K, bar. See :func:`md_script` for the MD run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from ..md import RELAX_MAX_STEP

#: Files of the job folder.
DATA_FILE = 'structure.data'
DUMP_FILE = 'trajectory.dump'
SAMPLES_FILE = 'samples.dat'

ENSEMBLES = ('npt', 'nvt', 'nve')
BAROSTATS = ('iso', 'aniso', 'tri')
POTENTIAL_KINDS = ('classical', 'mace', 'metatomic')
#: LAMMPS' ``velocity`` seeds must be positive; the Marsaglia generators also want < 9e8.
MAX_LAMMPS_SEED = 900_000_000

# Grimme D2 (J. Comput. Chem. 27, 1787 (2006), Table 1): C6 in J nm^6 mol^-1, R0 in Å, H to Xe.
_D2_C6 = (
    0.14, 0.08, 1.61, 1.61, 3.13, 1.75, 1.23, 0.70, 0.75, 0.63,
    5.71, 5.71, 10.79, 9.23, 7.84, 5.57, 5.07, 4.61, 10.80, 10.80,
    10.80, 10.80, 10.80, 10.80, 10.80, 10.80, 10.80, 10.80, 10.80, 10.80,
    16.99, 17.10, 16.37, 12.64, 12.47, 12.01, 24.67, 24.67, 24.67, 24.67,
    24.67, 24.67, 24.67, 24.67, 24.67, 24.67, 24.67, 24.67, 37.32, 38.71,
    38.44, 31.74, 31.50, 29.99,
)  # fmt: skip
_D2_R0 = (
    1.001, 1.012, 0.825, 1.408, 1.485, 1.452, 1.397, 1.342, 1.287, 1.243,
    1.144, 1.364, 1.639, 1.716, 1.705, 1.683, 1.639, 1.595, 1.485, 1.474,
    1.562, 1.562, 1.562, 1.562, 1.562, 1.562, 1.562, 1.562, 1.562, 1.562,
    1.650, 1.727, 1.760, 1.771, 1.749, 1.727, 1.628, 1.606, 1.639, 1.639,
    1.639, 1.639, 1.639, 1.639, 1.639, 1.639, 1.639, 1.639, 1.672, 1.804,
    1.881, 1.892, 1.892, 1.881,
)  # fmt: skip
#: J nm^6 mol^-1 -> eV Å^6: 1 eV = 96485.33212 J/mol (Faraday constant, CODATA 2018).
D2_C6_TO_EV_A6 = 1.0e6 / 96485.33212
#: Grimme's D2 defaults for PBE: global scaling s6 and damping steepness d.
D2_DEFAULTS = {'s6': 0.75, 'd': 20.0, 'cutoff': 15.0}

#: Fractional coordinates in [-WRAP_TOLERANCE, 0) are not wrapped to the far side of the cell.
WRAP_TOLERANCE = 1e-10


def _number(value: float) -> str:
    """``value`` in LAMMPS input: the short form when exact, else every digit (``repr``)."""
    value = float(value)
    short = f'{value:.16g}'
    return short if float(short) == value else repr(value)


class LammpsInputError(ValueError):
    """Settings that cannot make a valid LAMMPS run."""


# --------------------------------------------------------------------------- species and types


def lammps_species(species: Sequence[str]) -> list[str]:
    """The atom types of a run: the distinct ``species`` by atomic number (type k = item k-1)."""
    unknown = sorted({s for s in species if s not in atomic_numbers or s == 'X'})
    if unknown:
        raise LammpsInputError(f'unknown chemical symbols {unknown}')
    return sorted(set(species), key=atomic_numbers.__getitem__)


def atom_types(symbols: Sequence[str], species: Sequence[str]) -> np.ndarray:
    """LAMMPS type (1-based) of each atom of ``symbols`` under the type list ``species``."""
    index = {symbol: k + 1 for k, symbol in enumerate(species)}
    missing = sorted(set(symbols) - set(index))
    if missing:
        raise LammpsInputError(f'species {missing} of the structure have no LAMMPS type {species}')
    return np.array([index[s] for s in symbols], dtype=np.int64)


def lammps_seed(seed: int) -> int:
    """A valid LAMMPS seed for any integer ``seed``: itself if in 1 to 9e8 - 1, else mapped there.

    The same seed always gives the same LAMMPS seed.
    """
    seed = int(seed)
    if 1 <= seed < MAX_LAMMPS_SEED:
        return seed
    return 1 + seed % (MAX_LAMMPS_SEED - 1)


# --------------------------------------------------------------------------- geometry


def _residual(vector: np.ndarray, basis: list[np.ndarray]) -> np.ndarray:
    if not basis:
        return vector.copy()
    matrix = np.array(basis).T
    coefficients = np.linalg.lstsq(matrix, vector, rcond=None)[0]
    return vector - matrix @ coefficients


def complete_cell(cell: Any, pbc: Sequence[bool]) -> np.ndarray:
    """The cell with its unusable non-periodic vectors replaced by unit normals.

    A non-periodic vector is unusable when zero or in the span of the others; the periodic
    vectors must be independent.
    """
    cell = np.array(cell, dtype=float).reshape(3, 3)
    pbc = [bool(p) for p in pbc]
    basis: list[np.ndarray] = []
    for axis in range(3):
        if not pbc[axis]:
            continue
        vector = cell[axis]
        norm = np.linalg.norm(vector)
        if norm < 1e-8 or np.linalg.norm(_residual(vector, basis)) < 1e-6 * norm:
            raise LammpsInputError(
                f'the cell vector of periodic axis {axis} is zero or depends on the others'
            )
        basis.append(vector)
    full = cell.copy()
    completed = []
    for axis in range(3):
        if pbc[axis]:
            continue
        vector = cell[axis]
        norm = np.linalg.norm(vector)
        if norm > 1e-8 and np.linalg.norm(_residual(vector, basis)) > 1e-6 * norm:
            basis.append(vector)
            continue
        candidates = [_residual(unit, basis) for unit in np.eye(3)]
        best = max(candidates, key=np.linalg.norm)
        full[axis] = best / np.linalg.norm(best)
        basis.append(full[axis])
        completed.append(axis)
    if completed and np.linalg.det(full) < 0:
        full[completed[-1]] *= -1.0
    return full


def _triangular(cell: np.ndarray) -> np.ndarray:
    """The lower-triangular cell of LAMMPS with the lengths and angles of ``cell``."""
    a, b, c = cell
    ax = np.linalg.norm(a)
    bx = a @ b / ax
    by = math.sqrt(max(b @ b - bx**2, 0.0))
    cx = a @ c / ax
    cy = (b @ c - bx * cx) / by
    cz = math.sqrt(max(c @ c - cx**2 - cy**2, 0.0))
    return np.array([[ax, 0.0, 0.0], [bx, by, 0.0], [cx, cy, cz]])


def _reduce_tilts(cell: np.ndarray, pbc: Sequence[bool]) -> np.ndarray:
    """Shorten b and c by periodic lattice vectors until every tilt is at most half a length.

    A tilt of exactly half a length (hexagonal cells) is brought 1e-12 (relative) inside the
    limit, as LAMMPS refuses a skew that rounding puts a hair above it.
    """
    reduced = cell.copy()
    for i, j in ((1, 0), (2, 1), (2, 0)):  # yz before xz, as LAMMPS and ase.calculators.lammps
        if not pbc[j]:
            continue
        ratio = reduced[i, j] / reduced[j, j]
        if abs(ratio) > 0.5:
            reduced[i] -= reduced[j] * np.round(ratio)
        limit = 0.5 * reduced[j, j] * (1.0 - 1e-12)
        reduced[i, j] = np.clip(reduced[i, j], -limit, limit)
    return reduced


@dataclass
class LammpsBox:
    """How one structure sits in LAMMPS, and the way back.

    ``rotation`` (3x3, orthogonal) takes row vectors from the structure's frame to LAMMPS':
    ``x_lammps = x @ rotation``. ``cell``/``pbc`` are the structure's; ``full_cell`` is ``cell``
    completed along unusable non-periodic axes (:func:`complete_cell`); ``periodic_basis`` is
    the periodic cell vectors in LAMMPS' frame before tilt reduction (used to recover the
    structure's own basis from a reduced or flipped LAMMPS box). ``lammps_cell``/``origin`` is
    the box written to the data file.
    """

    rotation: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]
    full_cell: np.ndarray
    periodic_basis: np.ndarray
    lammps_cell: np.ndarray
    origin: np.ndarray

    @classmethod
    def from_cell(cls, cell: Any, pbc: Sequence[bool]) -> LammpsBox:
        """The box of a structure with ``cell`` and ``pbc`` (before looking at the atoms)."""
        pbc = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
        cell = np.array(cell, dtype=float).reshape(3, 3)
        full = complete_cell(cell, pbc)
        triangular = _triangular(full)
        rotation = np.linalg.solve(triangular, full).T  # full @ rotation == triangular
        zeroed = triangular.copy()
        if not pbc[1]:
            zeroed[1, 0] = 0.0
        if not pbc[2]:
            zeroed[2, :2] = 0.0
        periodic = [axis for axis in range(3) if pbc[axis]]
        return cls(
            rotation=rotation,
            cell=cell,
            pbc=pbc,
            full_cell=full,
            periodic_basis=triangular[periodic],
            lammps_cell=_reduce_tilts(zeroed, pbc),
            origin=np.zeros(3),
        )

    @property
    def periodic_axes(self) -> list[int]:
        """Indices of the periodic axes."""
        return [axis for axis in range(3) if self.pbc[axis]]

    def boundary(self) -> str:
        """The ``boundary`` command's arguments: ``p`` periodic, ``m`` shrink-wrapped."""
        return ' '.join('p' if periodic else 'm' for periodic in self.pbc)

    def fit(self, positions: np.ndarray, margin: float = 0.5) -> np.ndarray:
        """Wrap ``positions`` (structure frame) into the box; return them in LAMMPS' frame.

        The box grows along non-periodic axes to hold every atom (``margin`` Å beyond the
        outermost).
        """
        lammps = np.asarray(positions, dtype=float).reshape(-1, 3) @ self.rotation
        fractional = np.linalg.solve(self.lammps_cell.T, lammps.T).T
        for axis in range(3):
            if self.pbc[axis]:
                fractional[:, axis] -= np.floor(fractional[:, axis] + WRAP_TOLERANCE)
        wrapped = fractional @ self.lammps_cell
        cell = self.lammps_cell.copy()
        origin = np.zeros(3)
        for axis in range(3):
            if self.pbc[axis] or len(fractional) == 0:
                continue
            length = cell[axis, axis]
            low, high = fractional[:, axis].min(), fractional[:, axis].max()
            pad = margin / length
            low_f = min(0.0, low - pad) if low < 0.0 else 0.0
            high_f = max(1.0, high + pad) if high > 1.0 else 1.0
            origin[axis] = low_f * length
            cell[axis, axis] = (high_f - low_f) * length
        self.lammps_cell, self.origin = cell, origin
        return wrapped

    def bounds(self) -> tuple[tuple[float, float], ...]:
        """``(lo, hi)`` per axis of the written box."""
        return tuple(
            (self.origin[axis], self.origin[axis] + self.lammps_cell[axis, axis])
            for axis in range(3)
        )

    def tilts(self) -> tuple[float, float, float]:
        """``xy xz yz`` of the written box."""
        cell = self.lammps_cell
        return (cell[1, 0], cell[2, 0], cell[2, 1])

    def to_structure_frame(
        self, lammps_cell: np.ndarray, lammps_positions: np.ndarray, reference: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rotate one dumped frame back: ``(cell, positions, periodic basis in LAMMPS' frame)``.

        The periodic vectors of the dumped box are recombined (integer, unimodular) into the basis
        closest to ``reference`` (the previous frame's, initially :attr:`periodic_basis`), which
        undoes the tilt reduction of the data file and LAMMPS' box flips; non-periodic axes keep
        the structure's vectors. Positions are wrapped into the cell along periodic axes.
        """
        periodic = self.periodic_axes
        cell = self.cell.copy()
        basis = np.zeros((0, 3))
        if periodic:
            dumped = np.asarray(lammps_cell, dtype=float)[periodic]
            combination = np.round(reference @ np.linalg.pinv(dumped))
            if round(abs(np.linalg.det(combination))) != 1:
                combination = np.round(self.periodic_basis @ np.linalg.pinv(dumped))
            if round(abs(np.linalg.det(combination))) != 1:
                combination = np.eye(len(periodic))
            basis = combination @ dumped
            cell[periodic] = basis @ self.rotation.T
        positions = np.asarray(lammps_positions, dtype=float).reshape(-1, 3) @ self.rotation.T
        if periodic:
            full = self.full_cell.copy()
            full[periodic] = cell[periodic]
            fractional = np.linalg.solve(full.T, positions.T).T
            # wrap into [0, 1), keeping atoms within 1e-10 below 0 (as written) where they are
            fractional[:, periodic] -= np.floor(fractional[:, periodic] + WRAP_TOLERANCE)
            positions = fractional @ full
        return cell, positions, basis

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (for an AiiDA ``Dict``)."""
        return {
            'rotation': self.rotation.tolist(),
            'cell': self.cell.tolist(),
            'pbc': list(self.pbc),
            'full_cell': self.full_cell.tolist(),
            'periodic_basis': self.periodic_basis.tolist(),
            'lammps_cell': self.lammps_cell.tolist(),
            'origin': self.origin.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LammpsBox:
        """Inverse of :meth:`to_dict`."""
        return cls(
            rotation=np.array(data['rotation'], dtype=float),
            cell=np.array(data['cell'], dtype=float),
            pbc=tuple(bool(p) for p in data['pbc']),
            full_cell=np.array(data['full_cell'], dtype=float),
            periodic_basis=np.array(data['periodic_basis'], dtype=float).reshape(-1, 3),
            lammps_cell=np.array(data['lammps_cell'], dtype=float),
            origin=np.array(data['origin'], dtype=float),
        )


def data_file(atoms: Atoms, species: Sequence[str]) -> tuple[str, LammpsBox]:
    """The ``read_data`` file of ``atoms`` and its :class:`LammpsBox`.

    ``atom_style atomic``, always a triclinic box. Atom ``i`` of ``atoms`` gets id ``i + 1``;
    types follow ``species`` (a :func:`lammps_species` list), masses are ASE's per type.
    """
    species = list(species)
    if list(lammps_species(species)) != species:
        raise LammpsInputError(f'species {species} are not a lammps_species() list')
    if len(atoms) == 0:
        raise LammpsInputError('the structure has no atoms')
    types = atom_types(atoms.get_chemical_symbols(), species)
    box = LammpsBox.from_cell(atoms.cell.array, atoms.pbc)
    positions = box.fit(atoms.positions)
    (xlo, xhi), (ylo, yhi), (zlo, zhi) = box.bounds()
    xy, xz, yz = box.tilts()
    f = _number
    lines = [
        f'# aiida-trainspot: {atoms.get_chemical_formula()}, types {" ".join(species)}',
        '',
        f'{len(atoms)} atoms',
        f'{len(species)} atom types',
        '',
        f'{f(xlo)} {f(xhi)} xlo xhi',
        f'{f(ylo)} {f(yhi)} ylo yhi',
        f'{f(zlo)} {f(zhi)} zlo zhi',
        f'{f(xy)} {f(xz)} {f(yz)} xy xz yz',
        '',
        'Masses',
        '',
    ]
    for k, symbol in enumerate(species, start=1):
        lines.append(f'{k} {f(atomic_masses[atomic_numbers[symbol]])}  # {symbol}')
    lines += ['', 'Atoms  # atomic', '']
    for index, (kind, (x, y, z)) in enumerate(zip(types, positions, strict=True), start=1):
        lines.append(f'{index} {kind} {f(x)} {f(y)} {f(z)}')
    return '\n'.join(lines) + '\n', box


# --------------------------------------------------------------------------- pair styles


def d2_coefficients(
    symbol: str, overrides: Mapping[str, Sequence[float]] | None = None
) -> tuple[float, float]:
    """Grimme D2 ``(C6 in eV Å^6, R0 in Å)`` of one element (``overrides``: same units)."""
    if overrides and symbol in overrides:
        c6, r0 = overrides[symbol]
        return float(c6), float(r0)
    number = atomic_numbers.get(symbol, 0)
    if not 1 <= number <= len(_D2_C6):
        raise LammpsInputError(
            f'Grimme D2 (2006) has no parameters for {symbol}: give them as '
            f"dispersion['parameters'] = {{'{symbol}': [C6 eV*Å^6, R0 Å]}}"
        )
    return _D2_C6[number - 1] * D2_C6_TO_EV_A6, _D2_R0[number - 1]


def d2_pair_coefficients(
    species: Sequence[str], overrides: Mapping[str, Sequence[float]] | None = None
) -> list[tuple[int, int, float, float]]:
    """``(i, j, C6ij, Rr)`` for every type pair ``i <= j``, by Grimme's combination rules.

    ``C6ij = sqrt(C6i C6j)`` (eV Å^6), ``Rr = R0i + R0j`` (Å).
    """
    params = [d2_coefficients(symbol, overrides) for symbol in species]
    pairs = []
    for i, (c6_i, r0_i) in enumerate(params, start=1):
        for j, (c6_j, r0_j) in enumerate(params[i - 1 :], start=i):
            pairs.append((i, j, math.sqrt(c6_i * c6_j), r0_i + r0_j))
    return pairs


def check_potential(potential: Mapping[str, Any]) -> None:
    """Raise :class:`LammpsInputError` unless ``potential`` is a usable pair-style spec."""
    kind = potential.get('kind')
    if kind not in POTENTIAL_KINDS:
        raise LammpsInputError(f'potential kind {kind!r} is not one of {list(POTENTIAL_KINDS)}')
    allowed = {
        'classical': {'kind', 'pair_style', 'file', 'dispersion'},
        'mace': {'kind', 'file', 'domain_decomposition', 'dispersion'},
        'metatomic': {'kind', 'file', 'device', 'extensions', 'dispersion'},
    }[kind]
    unknown = sorted(set(potential) - allowed)
    if unknown:
        raise LammpsInputError(
            f'unknown keys {unknown} for a {kind} potential: use {sorted(allowed)}'
        )
    if kind == 'classical':
        style = potential.get('pair_style')
        if not isinstance(style, str) or not style.split():
            raise LammpsInputError('a classical potential needs its `pair_style`, e.g. "tersoff"')
    elif not potential.get('file'):
        raise LammpsInputError(f'a {kind} potential needs its model `file`')
    for key in ('file', 'extensions', 'device'):
        value = potential.get(key)
        if value is not None and (not isinstance(value, str) or re.search(r'\s', value)):
            raise LammpsInputError(f'`{key}` must be a name without blanks, got {value!r}')
    dispersion = potential.get('dispersion')
    if dispersion is not None:
        extra = sorted(set(dispersion) - {'s6', 'd', 'cutoff', 'parameters'})
        if extra:
            raise LammpsInputError(f'unknown dispersion keys {extra}')


def _main_style(potential: Mapping[str, Any]) -> tuple[str, str]:
    """``(pair_style arguments, per-type pair_coeff arguments after '* *' and the style)``."""
    kind = potential['kind']
    if kind == 'classical':
        style = ' '.join(potential['pair_style'].split())
        file = potential.get('file')
        return style, (file + ' ') if file else ''
    if kind == 'mace':
        style = 'mace' if potential.get('domain_decomposition') else 'mace no_domain_decomposition'
        return style, potential['file'] + ' '
    style = f'metatomic {potential["file"]}'
    if potential.get('device'):
        style += f' device {potential["device"]}'
    if potential.get('extensions'):
        style += f' extensions {potential["extensions"]}'
    return style, ''


def pair_commands(potential: Mapping[str, Any], species: Sequence[str]) -> list[str]:
    """The ``pair_style`` and ``pair_coeff`` lines of ``potential`` for the types ``species``."""
    check_potential(potential)
    species = list(species)
    style, coeff_head = _main_style(potential)
    if potential['kind'] == 'metatomic':
        per_type = ' '.join(str(atomic_numbers[s]) for s in species)
    else:
        per_type = ' '.join(species)
    dispersion = potential.get('dispersion')
    if dispersion is None:
        return [f'pair_style {style}', f'pair_coeff * * {coeff_head}{per_type}']
    settings = {**D2_DEFAULTS, **{k: v for k, v in dispersion.items() if k != 'parameters'}}
    f = _number
    name = style.split()[0]
    lines = [
        f'pair_style hybrid/overlay {style} momb {f(settings["cutoff"])} {f(settings["s6"])} '
        f'{f(settings["d"])}',
        f'pair_coeff * * {name} {coeff_head}{per_type}',
    ]
    for i, j, c6, rr in d2_pair_coefficients(species, dispersion.get('parameters')):
        lines.append(f'pair_coeff {i} {j} momb 0.0 1.0 1.0 {f(c6)} {f(rr)}')
    return lines


# --------------------------------------------------------------------------- the MD script

#: Neighbour-list skin (Å), LAMMPS' default for metal units.
SKIN = 2.0
#: Upper bound of atomic number densities (Å^-3; diamond 0.18, Cu 0.085) to size neighbour lists.
MAX_DENSITY = 0.25


def neigh_modify(potential: Mapping[str, Any]) -> str:
    """The ``neigh_modify`` line: rebuild checks every step, and room for D2's long cutoff.

    LAMMPS' default of 2000 neighbours per atom overflows with a 15 Å dispersion cutoff in a
    dense solid; with dispersion, ``one`` is sized for ``MAX_DENSITY`` within the cutoff + skin
    (``page`` = 10 x ``one``, as LAMMPS requires).
    """
    line = 'neigh_modify every 1 delay 0 check yes'
    dispersion = potential.get('dispersion')
    if dispersion is None:
        return line
    cutoff = float(dispersion.get('cutoff', D2_DEFAULTS['cutoff'])) + SKIN
    one = max(2000, math.ceil(4.0 / 3.0 * math.pi * cutoff**3 * MAX_DENSITY / 1000.0) * 1000)
    return f'{line} one {one} page {10 * one}'


def barostat_keywords(pbc: Sequence[bool], pressure: float, pdamp: float, mode: str) -> str:
    """The pressure part of ``fix npt``: only periodic axes are barostatted.

    All axes periodic: ``iso``/``aniso``/``tri P P pdamp``. Otherwise one ``x``/``y``/``z P P
    pdamp`` per periodic axis, coupled (``couple xy``...) for ``iso``, with the tilts between
    periodic axes (``xy``, ``xz``, ``yz 0 0 pdamp``) for ``tri``; non-periodic axes stay free of
    any barostat (LAMMPS shrink-wraps them).
    """
    if mode not in BAROSTATS:
        raise LammpsInputError(f'barostat {mode!r} is not one of {list(BAROSTATS)}')
    periodic = [axis for axis in range(3) if pbc[axis]]
    if not periodic:
        raise LammpsInputError('no periodic axis: NPT is impossible')
    f = _number
    target = f'{f(pressure)} {f(pressure)} {f(pdamp)}'
    if len(periodic) == 3:
        return f'{mode} {target}'
    names = 'xyz'
    parts = [f'{names[axis]} {target}' for axis in periodic]
    if mode == 'iso' and len(periodic) > 1:
        parts.append('couple ' + ''.join(names[axis] for axis in periodic))
    if mode == 'tri':
        for tilt, (i, j) in (('xy', (0, 1)), ('xz', (0, 2)), ('yz', (1, 2))):
            if pbc[i] and pbc[j]:
                parts.append(f'{tilt} 0 0 {f(pdamp)}')
    return ' '.join(parts)


def md_script(
    *,
    species: Sequence[str],
    pbc: Sequence[bool],
    potential: Mapping[str, Any],
    temperature: float,
    steps: int,
    seed: int,
    ensemble: str = 'npt',
    pressure: float = 0.0,
    barostat: str = 'aniso',
    timestep_fs: float = 1.0,
    sample_interval: int = 10,
    thermalisation_steps: int = 0,
    relax_steps: int = 0,
    relax_fmax: float = 0.1,
    tdamp_fs: float | None = None,
    pdamp_fs: float | None = None,
    max_temperature: float | None = None,
    min_distance: float | None = None,
    max_force: float | None = None,
    data_file_name: str = DATA_FILE,
    dump_file_name: str = DUMP_FILE,
    samples_file_name: str = SAMPLES_FILE,
) -> str:
    """The LAMMPS input script of one MD run (units metal), in the phases of the ase engine.

    - relaxation (``relax_steps`` > 0): ``min_style fire`` with ``min_modify norm max dmax
      0.1`` and ``minimize 0 relax_fmax relax_steps ...``, the cell fixed (no ``fix
      box/relax``): at most ``relax_steps`` FIRE steps of at most :data:`RELAX_MAX_STEP` Å,
      until the largest force on an atom is below ``relax_fmax`` eV/Å; then ``reset_timestep
      0``. It takes the excess potential energy out of a cold or rattled start.
    - ``velocity all create T seed mom yes rot <no|yes> dist gaussian loop all``: velocities at
      ``temperature`` K from ``lammps_seed(seed)``, zero total momentum (and angular momentum
      when no axis is periodic); ``loop all`` makes them independent of the MPI decomposition.
    - ``ensemble``: ``npt`` (Nosé-Hoover ``fix npt``, barostat only on periodic axes, see
      :func:`barostat_keywords`; ``pressure`` in bar), ``nvt`` (``fix nvt``), ``nve``. NPT with no
      periodic axis falls back to NVT. Damping: ``tdamp_fs`` (default 100 steps) and
      ``pdamp_fs`` (default 1000 steps).
    - thermalisation (``thermalisation_steps`` > 0): ``run`` with nothing dumped and no abort
      rule, then ``reset_timestep 0``: the production counts its steps from 0 (the frames get
      ``thermalisation_steps`` added back in :func:`trajectory_records`).
    - production, ``run steps``: every ``sample_interval`` steps (step 0 included): ``dump`` of
      ``id type element x y z`` sorted by id (full precision) and ``fix print`` of ``step temp
      press pe`` to the samples file; ``thermo`` at the same interval. Abort rules, checked after
      every step with ``fix halt 1 ... error soft`` (the run stops, the files stay) as the ase
      engine checks them: temperature above ``max_temperature`` K (``fix halt_temperature``),
      shortest interatomic distance within the pair cutoff below ``min_distance`` Å (``compute
      pair/local dist`` reduced by ``min``; ``fix halt_distance``), largest force on an atom above
      ``max_force`` eV/Å (``fix halt_force``).
    """
    species = list(species)
    pbc = [bool(p) for p in pbc]
    if ensemble not in ENSEMBLES:
        raise LammpsInputError(f'ensemble {ensemble!r} is not one of {list(ENSEMBLES)}')
    if ensemble == 'npt' and not any(pbc):
        ensemble = 'nvt'
    if int(steps) < 1 or int(sample_interval) < 1:
        raise LammpsInputError('steps and sample_interval must be positive')
    if int(thermalisation_steps) < 0 or int(relax_steps) < 0:
        raise LammpsInputError('thermalisation_steps and relax_steps must not be negative')
    if not temperature > 0 or not timestep_fs > 0 or not relax_fmax > 0:
        raise LammpsInputError('temperature, timestep_fs and relax_fmax must be positive')
    f = _number
    dt = timestep_fs / 1000.0  # ps
    tdamp = (tdamp_fs if tdamp_fs is not None else 100.0 * timestep_fs) / 1000.0
    pdamp = (pdamp_fs if pdamp_fs is not None else 1000.0 * timestep_fs) / 1000.0
    every = int(sample_interval)
    names = ' '.join(species)
    lines = [
        '# aiida-trainspot exploration: one MD run (engine lammps)',
        'units metal',
        'atom_style atomic',
        'atom_modify map yes',
        'newton on',
        'boundary ' + ' '.join('p' if p else 'm' for p in pbc),
        f'read_data {data_file_name}',
        f'# atom types: {" ".join(f"{k}={s}" for k, s in enumerate(species, start=1))}',
        '',
        *pair_commands(potential, species),
        '',
        'neighbor 2.0 bin',
        neigh_modify(potential),
        f'timestep {f(dt)}',
        'thermo_style custom step time temp press pe ke etotal vol',
        f'thermo {every}',
        *_relaxation_lines(int(relax_steps), relax_fmax),
        f'velocity all create {f(temperature)} {lammps_seed(seed)} mom yes '
        f'rot {"no" if any(pbc) else "yes"} dist gaussian loop all',
    ]
    if ensemble == 'npt':
        lines.append(
            f'fix md all npt temp {f(temperature)} {f(temperature)} {f(tdamp)} '
            + barostat_keywords(pbc, pressure, pdamp, barostat)
        )
    elif ensemble == 'nvt':
        lines.append(f'fix md all nvt temp {f(temperature)} {f(temperature)} {f(tdamp)}')
    else:
        lines.append('fix md all nve')
    if int(thermalisation_steps) > 0:
        lines += [
            '',
            '# thermalisation: nothing sampled, no abort rule',
            f'run {int(thermalisation_steps)}',
            'reset_timestep 0',
        ]
    lines += [
        '',
        '# production: sampled, abort rules after every step',
        'variable sample_step equal step',
        'variable sample_temp equal temp',
        'variable sample_press equal press',
        'variable sample_pe equal pe',
        f'fix samples all print {every} '
        '"${sample_step} ${sample_temp} ${sample_press} ${sample_pe}" '
        f'file {samples_file_name} screen no title "# step temp press pe"',
        f'dump trajectory all custom {every} {dump_file_name} id type element x y z',
        f'dump_modify trajectory sort id element {names} format float %.16g',
        *_halt_lines(max_temperature, min_distance, max_force),
        '',
        f'run {int(steps)}',
        '',
    ]
    return '\n'.join(lines)


def _relaxation_lines(relax_steps: int, relax_fmax: float) -> list[str]:
    """FIRE on the positions (cell fixed), as :func:`aiida_trainspot.exploration.md.relax` does.

    ``min_modify norm max``: the force criterion is the largest force on an atom (LAMMPS'
    default is the norm of all forces together). Every FIRE iteration takes one force
    evaluation; the evaluation cap is loose so that the iterations bind.
    """
    if relax_steps == 0:
        return []
    return [
        '',
        f'# relaxation: FIRE, cell fixed, at most {relax_steps} steps',
        'min_style fire',
        f'min_modify norm max dmax {_number(RELAX_MAX_STEP)}',
        f'minimize 0 {_number(relax_fmax)} {relax_steps} {10 * relax_steps}',
        'reset_timestep 0',
        '',
    ]


def _halt_lines(
    max_temperature: float | None, min_distance: float | None, max_force: float | None
) -> list[str]:
    """``fix halt`` checks after every production step (``error soft``: the files stay)."""
    f = _number
    lines = []
    if max_temperature is not None:
        lines += [
            'variable halt_temperature equal temp',
            f'fix halt_temperature all halt 1 v_halt_temperature > {f(max_temperature)} error soft',
        ]
    if min_distance is not None:
        lines += [
            'compute pair_distances all pair/local dist',
            'compute min_distance all reduce min c_pair_distances',
            'variable halt_distance equal c_min_distance',
            f'fix halt_distance all halt 1 v_halt_distance < {f(min_distance)} error soft',
        ]
    if max_force is not None:
        lines += [
            'variable force_norm atom sqrt(fx*fx+fy*fy+fz*fz)',
            'compute max_force all reduce max v_force_norm',
            'variable halt_force equal c_max_force',
            f'fix halt_force all halt 1 v_halt_force > {f(max_force)} error soft',
        ]
    return lines


# --------------------------------------------------------------------------- outputs


@dataclass
class DumpFrame:
    """One frame of the dump, back in the structure's frame."""

    step: int
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]


def _box_matrix(header: str, rows: list[list[float]]) -> np.ndarray:
    """The lower-triangular LAMMPS cell of a dump's ``BOX BOUNDS`` section."""
    if 'xy' in header.split():
        (xlo_b, xhi_b, xy), (ylo_b, yhi_b, xz), (zlo, zhi, yz) = rows
        xlo = xlo_b - min(0.0, xy, xz, xy + xz)
        xhi = xhi_b - max(0.0, xy, xz, xy + xz)
        ylo = ylo_b - min(0.0, yz)
        yhi = yhi_b - max(0.0, yz)
    else:
        (xlo, xhi), (ylo, yhi), (zlo, zhi) = (row[:2] for row in rows)
        xy = xz = yz = 0.0
    return np.array([[xhi - xlo, 0.0, 0.0], [xy, yhi - ylo, 0.0], [xz, yz, zhi - zlo]])


def parse_dump(text: str, box: LammpsBox, species: Sequence[str]) -> list[DumpFrame]:
    """Frames of a ``dump custom ... id type element x y z`` file, rotated back by ``box``.

    Atoms come back in id order (id ``i + 1`` is atom ``i`` of the structure); the element of
    each is ``species[type - 1]``, checked against the dump's ``element`` column when present.
    """
    species = list(species)
    lines = text.splitlines()
    frames: list[DumpFrame] = []
    reference = box.periodic_basis
    position = 0
    while position < len(lines):
        if not lines[position].startswith('ITEM: TIMESTEP'):
            position += 1
            continue
        if position + 9 > len(lines):
            break  # a header cut short (the run was killed while writing): ignore it
        step = int(lines[position + 1])
        n_atoms = int(lines[position + 3])
        header = lines[position + 4]
        if not header.startswith('ITEM: BOX BOUNDS'):
            raise ValueError(f'dump: no BOX BOUNDS at line {position + 5}')
        rows = [[float(v) for v in lines[position + 5 + k].split()] for k in range(3)]
        lammps_cell = _box_matrix(header, rows)
        columns = lines[position + 8].split()[2:]
        if columns[:1] != ['id'] or not {'type', 'x', 'y', 'z'} <= set(columns):
            raise ValueError(f'dump: unexpected atom columns {columns}')
        body = lines[position + 9 : position + 9 + n_atoms]
        if len(body) < n_atoms:
            break  # a frame cut short (the run was killed while writing): ignore it
        table = np.array([line.split()[: len(columns)] for line in body], dtype=object)
        ids = table[:, 0].astype(np.int64)
        order = np.argsort(ids, kind='stable')
        if not np.array_equal(ids[order], np.arange(1, n_atoms + 1)):
            raise ValueError(f'dump: atom ids are not 1..{n_atoms} at step {step}')
        table = table[order]
        types = table[:, columns.index('type')].astype(np.int64)
        if types.min() < 1 or types.max() > len(species):
            raise ValueError(f'dump: types outside 1..{len(species)} at step {step}')
        symbols = [species[t - 1] for t in types]
        if 'element' in columns and list(table[:, columns.index('element')]) != symbols:
            raise ValueError(f'dump: the elements disagree with the types at step {step}')
        xyz = [columns.index(name) for name in ('x', 'y', 'z')]
        positions = table[:, xyz].astype(float)
        cell, positions, reference = box.to_structure_frame(lammps_cell, positions, reference)
        numbers = np.array([atomic_numbers[s] for s in symbols], dtype=np.int64)
        frames.append(DumpFrame(step, numbers, positions, cell, box.pbc))
        position += 9 + n_atoms
    return frames


def parse_samples(text: str) -> dict[int, dict[str, float]]:
    """``{step: {'temperature': K, 'pressure': bar, 'potential_energy': eV}}`` of the samples."""
    samples = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith('#'):
            continue
        step, temp, press, pe = (float(v) for v in parts[:4])
        samples[round(step)] = {
            'temperature': temp,
            'pressure': press,
            'potential_energy': pe,
        }
    return samples


_HALT = re.compile(r'Fix halt condition for fix-id (\S+) met on step (\d+) with value (\S+)')


def parse_halt(log: str) -> dict[str, Any] | None:
    """``{'fix': id, 'reason': ..., 'step': N, 'value': x}`` if a ``fix halt`` stopped the run."""
    match = _HALT.search(log)
    if match is None:
        return None
    fix = match.group(1)
    reason = {
        'halt_temperature': 'max_temperature',
        'halt_distance': 'min_distance',
        'halt_force': 'max_force',
    }.get(fix, fix)
    return {
        'fix': fix,
        'reason': reason,
        'step': int(match.group(2)),
        'value': float(match.group(3)),
    }


def symbols_of(numbers: Sequence[int]) -> list[str]:
    """Chemical symbols of atomic numbers."""
    return [chemical_symbols[int(z)] for z in numbers]


# --------------------------------------------------------------------------- one run, end to end

#: Keyword arguments of :func:`md_script` that an MD protocol may set.
MD_KEYS = frozenset(
    {
        'temperature',
        'steps',
        'seed',
        'ensemble',
        'pressure',
        'barostat',
        'timestep_fs',
        'sample_interval',
        'thermalisation_steps',
        'relax_steps',
        'relax_fmax',
        'tdamp_fs',
        'pdamp_fs',
        'max_temperature',
        'min_distance',
        'max_force',
    }
)


@dataclass
class PreparedRun:
    """The two input files of one run and what is needed to read its outputs back."""

    script: str
    data: str
    conversion: dict[str, Any]


def prepare_run(
    atoms: Atoms,
    potential: Mapping[str, Any],
    md: Mapping[str, Any],
    *,
    species: Sequence[str] | None = None,
    run_id: str | int = 0,
    source_frame: int = 0,
    include_initial: bool = False,
) -> PreparedRun:
    """Script, data file and ``conversion`` (JSON-serialisable) of one MD run from ``atoms``.

    ``md`` holds :func:`md_script`'s settings (``temperature``, ``steps``, ``seed`` required).
    ``species``: the run's types (default: the structure's species), ordered by
    :func:`lammps_species`, e.g. every species of the model so that all runs share types.
    """
    unknown = sorted(set(md) - MD_KEYS)
    if unknown:
        raise LammpsInputError(f'unknown MD settings {unknown}; use {sorted(MD_KEYS)}')
    missing = sorted({'temperature', 'steps', 'seed'} - set(md))
    if missing:
        raise LammpsInputError(f'MD settings {missing} are required')
    symbols = atoms.get_chemical_symbols()
    types = lammps_species(list(species) if species is not None else symbols)
    data, box = data_file(atoms, types)
    script = md_script(species=types, pbc=box.pbc, potential=potential, **md)
    ensemble = md.get('ensemble', 'npt')
    if ensemble == 'npt' and not any(box.pbc):
        ensemble = 'nvt'
    conversion = {
        'engine': 'lammps',
        'run_id': run_id,
        'source_frame': int(source_frame),
        'species': types,
        'numbers': [int(z) for z in atoms.numbers],
        'box': json.dumps(box.to_dict()),  # text: AiiDA keeps 14 digits of a float
        'ensemble': ensemble,
        'temperature': float(md['temperature']),
        'pressure': float(md.get('pressure', 0.0)) if ensemble == 'npt' else None,
        'timestep_fs': float(md.get('timestep_fs', 1.0)),
        'sample_interval': int(md.get('sample_interval', 10)),
        'thermalisation_steps': int(md.get('thermalisation_steps', 0)),
        'steps': int(md['steps']),
        'include_initial': bool(include_initial),
    }
    return PreparedRun(script=script, data=data, conversion=conversion)


def trajectory_records(
    dump: str, samples: str, log: str, conversion: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Frame dictionaries (for ``PESData.from_frames``) and a summary of one finished run.

    Each frame is checked to hold the structure's atoms, element by element in id order. The
    dump and the log count production steps from 0 (:func:`md_script` resets the step after the
    thermalisation); frames, ``last_step`` and the ``halt`` step get the
    ``thermalisation_steps`` added back, so steps count from the start of the MD as in the ase
    engine, and ``steps`` is thermalisation plus production. Dropped: the frame at the start of
    the production (the starting structure when nothing comes before) unless
    ``include_initial``, and, when a ``fix halt`` stopped the run, the frame of that step.
    Metadata per frame: ``engine`` ('lammps'), ``run_id``, ``source_frame``, ``ensemble``,
    target ``temperature`` (K) and ``pressure`` (bar, NPT only), ``step``, ``time_fs``, and the
    instantaneous ``md_temperature`` (K) and ``md_pressure`` (bar) of that step.
    """
    box = conversion['box']
    box = LammpsBox.from_dict(json.loads(box) if isinstance(box, str) else box)
    species = list(conversion['species'])
    expected = np.asarray(conversion['numbers'], dtype=np.int64)
    offset = int(conversion.get('thermalisation_steps', 0))
    frames = parse_dump(dump, box, species)
    values = parse_samples(samples)
    halt = parse_halt(log)
    records = []
    for frame in frames:
        if not np.array_equal(frame.numbers, expected):
            raise ValueError(
                f'step {frame.step}: the dumped elements are not those of the structure '
                f'({symbols_of(frame.numbers)} != {symbols_of(expected)})'
            )
        if frame.step == 0 and not conversion.get('include_initial'):
            continue
        if halt is not None and frame.step >= halt['step']:
            continue
        records.append(_record(frame, offset, conversion, values.get(frame.step)))
    if halt is not None:
        halt = {**halt, 'step': halt['step'] + offset}
    summary = {
        'run_id': conversion['run_id'],
        'source_frame': int(conversion['source_frame']),
        'n_frames': len(records),
        'last_step': offset + int(frames[-1].step) if frames else None,
        'thermalisation_steps': offset,
        'steps': offset + int(conversion['steps']),
        'halted': halt is not None,
        'halt': halt,
    }
    return records, summary


def _record(
    frame: DumpFrame, offset: int, conversion: Mapping[str, Any], sample: dict[str, float] | None
) -> dict[str, Any]:
    """One frame for ``PESData.from_frames``, its step counted from the start of the MD."""
    step = offset + int(frame.step)
    info: dict[str, Any] = {
        'engine': conversion.get('engine', 'lammps'),
        'run_id': conversion['run_id'],
        'source_frame': int(conversion['source_frame']),
        'ensemble': conversion['ensemble'],
        'temperature': float(conversion['temperature']),
        'step': step,
        'time_fs': float(step * conversion['timestep_fs']),
    }
    if conversion.get('pressure') is not None:
        info['pressure'] = float(conversion['pressure'])
    if sample is not None:
        info['md_temperature'] = sample['temperature']
        info['md_pressure'] = sample['pressure']
    return {
        'numbers': frame.numbers,
        'positions': frame.positions,
        'cell': frame.cell,
        'pbc': np.array(frame.pbc),
        'info': info,
    }
