"""Dataset augmentations of the AiiDA-TrainsPot paper, as pure functions on ``ase.Atoms``.

Every augmentation takes a frame (or a list of frames), a seeded ``numpy.random.Generator``
and keyword parameters, and returns a list of *new* frames; inputs are never modified.  Each
returned frame has no calculator, no labels and exactly three ``info`` entries:

``generation_method``
    what made it (``'rattle'``, ``'strain+rattle+vacancies'``, ``'slab'``, ...);
``generation_params``
    JSON (sorted keys) of the parameters used, including the values drawn for this frame
    (strain factor, removed atoms, composition, ...) so that the frame can be reproduced;
``parent_id``
    the ``frame_id`` of the input it came from (falling back to the input's own
    ``parent_id`` for derived frames), or the explicit ``parent_id=`` argument.

Functions that make several frames give each one its own child generator
(``Generator.spawn``), so frame *j* does not change when more frames are requested, and
:func:`augment` gives each augmentation and input its own ``SeedSequence`` stream, so that
switching one augmentation on or off does not change what the others produce.

The floor: no function emits two atoms closer than ``min_distance`` (periodic images included).
Random draws that violate it are redrawn up to ``max_retries`` times before
:class:`MinimumDistanceError` is raised.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import surface
from ase.data import atomic_numbers, chemical_symbols

from aiida_trainspot.common.seeds import SEED_LIMIT, derive_rng

from .geometry import (
    check_cell,
    clean_copy,
    complete_cell,
    minimum_distance,
    nearest_neighbour_distances,
    pad_vacuum,
    periodic_basis,
    periodic_widths,
)
from .params import (
    AlloyParams,
    AugmentationParams,
    ClusterParams,
    RattleParams,
    SlabParams,
    StrainParams,
    SubstitutionParams,
    SupercellParams,
    VacancyParams,
    validate_parameters,
)

__all__ = [
    'AUGMENTATION_KEYS',
    'AlloyParams',
    'AugmentationParams',
    'ClusterParams',
    'MinimumDistanceError',
    'RattleParams',
    'SlabParams',
    'StrainParams',
    'SubstitutionParams',
    'SupercellParams',
    'VacancyParams',
    'alloys',
    'augment',
    'clusters',
    'create_vacancies',
    'distort',
    'isolated_atoms',
    'make_supercell',
    'pad_vacuum',
    'rattle',
    'slabs',
    'species_of',
    'strain',
    'substitute',
    'substitutions',
    'supercell_repeats',
    'validate_frames',
    'validate_parameters',
]

#: Keys of the dictionary returned by :func:`augment`, in the order they are generated.
AUGMENTATION_KEYS = (
    'input',
    'isolated_atoms',
    'distorted',
    'clusters',
    'slabs',
    'substitutions',
    'alloys',
)

#: Fixed stream tags, one per random augmentation (never renumber them).
_STREAMS = {'distorted': 0, 'clusters': 1, 'substitutions': 2, 'alloys': 3}
#: Tags between the seed and the stream tag. The streams were first
#: ``SeedSequence(seed, spawn_key=(stream, *indices))``, whose entropy NumPy lays out as the seed's
#: word padded with zeros to its pool size (4 words), then the spawn key: these zeros keep that
#: layout, so that a seed gives the same augmented dataset as before (seeds below 2**32).
_SPAWN_KEY_PADDING = (0, 0, 0)

_CLUSTER_BATCH = 16


class MinimumDistanceError(RuntimeError):
    """No draw respected the minimum interatomic distance within the allowed retries."""


# --------------------------------------------------------------------------- shared helpers


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tag(atoms: Atoms, method: str, params: Mapping[str, Any], parent_id: str) -> Atoms:
    """Replace ``atoms.info`` by the provenance of this augmentation."""
    atoms.info = {
        'generation_method': method,
        'generation_params': json.dumps(_jsonable(params), sort_keys=True),
        'parent_id': parent_id,
    }
    return atoms


def _parent(atoms: Atoms, parent_id: str | None) -> str:
    if parent_id is not None:
        return str(parent_id)
    return str(atoms.info.get('frame_id', atoms.info.get('parent_id', '')))


def _as_list(frames: Atoms | Iterable[Atoms]) -> list[Atoms]:
    return [frames] if isinstance(frames, Atoms) else list(frames)


def _check_count(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f'{name} must be an integer >= {low}; got {value!r}')


def _check_min_distance(min_distance: Any) -> None:
    if isinstance(min_distance, bool) or not isinstance(min_distance, int | float):
        raise ValueError(f'min_distance must be a number >= 0; got {min_distance!r}')
    if min_distance < 0:
        raise ValueError(f'min_distance must be a number >= 0; got {min_distance!r}')


def _check_vacuum(vacuum: Any) -> None:
    if isinstance(vacuum, bool) or not isinstance(vacuum, int | float) or vacuum <= 0:
        raise ValueError(f'vacuum must be a number > 0 (Å); got {vacuum!r}')


def _stochastic_round(value: float, rng: np.random.Generator) -> int:
    """Round up with probability equal to the fractional part: unbiased counts for any size."""
    low = math.floor(value)
    return low + int(rng.random() < value - low)


def _with_retries(draw: Callable[[], Any], max_retries: int, what: str, floor: float) -> Any:
    """Call ``draw`` until it returns something other than None."""
    for _ in range(max_retries):
        result = draw()
        if result is not None:
            return result
    raise MinimumDistanceError(
        f'{what}: every one of {max_retries} draws put two atoms closer than '
        f'min_distance = {floor} Å; reduce the distortion or raise max_retries'
    )


def species_of(frames: Atoms | Iterable[Atoms]) -> list[str]:
    """Chemical symbols present in ``frames``, sorted by atomic number."""
    numbers = set()
    for frame in _as_list(frames):
        numbers.update(int(number) for number in frame.numbers)
    return [chemical_symbols[number] for number in sorted(numbers)]


# --------------------------------------------------------------------------- supercells


def supercell_repeats(atoms: Atoms, min_width: float, max_atoms: int) -> tuple[int, int, int]:
    """Repetitions along each axis that make every periodic width >= ``min_width``.

    Grows one axis at a time, always the currently narrowest one that may still grow without
    exceeding ``max_atoms``, so that when the cap binds the result is the largest replica that
    fits, as isotropic as possible.  Non-periodic axes are never repeated.
    """
    widths = periodic_widths(atoms.cell.array, atoms.pbc)
    n_atoms = len(atoms)
    repeats = np.ones(3, dtype=int)
    if n_atoms > max_atoms:
        return (1, 1, 1)
    while True:
        current = widths * repeats
        grown = False
        for axis in np.argsort(current, kind='stable'):
            if not atoms.pbc[axis] or current[axis] >= min_width:
                continue
            trial = repeats.copy()
            trial[axis] += 1
            if int(np.prod(trial)) * n_atoms <= max_atoms:
                repeats = trial
                grown = True
                break
        if not grown:
            return (int(repeats[0]), int(repeats[1]), int(repeats[2]))


def make_supercell(
    atoms: Atoms,
    rng: np.random.Generator | None = None,
    *,
    min_width: float = 18.0,
    max_atoms: int = 450,
    parent_id: str | None = None,
) -> list[Atoms]:
    """Replicate ``atoms`` so no atom sees its own periodic image within ``min_width``.

    A width of 18 Å keeps periodic images beyond the cutoff of typical potentials; the atom
    cap keeps the DFT labelling affordable.  ``rng`` is unused (the operation is deterministic)
    and accepted for a uniform signature.  Returns a single frame.
    """
    params = SupercellParams(min_width=min_width, max_atoms=max_atoms)
    check_cell(atoms)
    repeats = supercell_repeats(atoms, params.min_width, params.max_atoms)
    result = clean_copy(atoms).repeat(repeats)
    record = {'min_width': params.min_width, 'max_atoms': params.max_atoms, 'repeats': repeats}
    return [_tag(result, 'supercell', record, _parent(atoms, parent_id))]


# --------------------------------------------------------------------------- rattle


def _rattle_positions(
    atoms: Atoms, rng: np.random.Generator, fraction: float, nn_distances: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """New positions and displacement lengths for one rattle draw.

    Directions are normalised Gaussian vectors, i.e. uniform on the sphere (no octant bias);
    lengths are uniform in [0, fraction * d_nn] of each atom.  A lone atom (d_nn = inf) stays.
    """
    directions = rng.standard_normal((len(atoms), 3))
    norms = np.linalg.norm(directions, axis=1)
    norms[norms == 0.0] = 1.0
    reach = fraction * np.where(np.isfinite(nn_distances), nn_distances, 0.0)
    lengths = rng.random(len(atoms)) * reach
    return atoms.positions + directions * (lengths / norms)[:, None], lengths


def _rattle_draw(
    atoms: Atoms,
    rng: np.random.Generator,
    fraction: float,
    nn_distances: np.ndarray,
    floor: float,
) -> Atoms | None:
    """One rattled copy, or None when it breaks the floor."""
    positions, lengths = _rattle_positions(atoms, rng, fraction, nn_distances)
    result = clean_copy(atoms)
    result.positions = positions
    # Two atoms at least d_nn apart cannot end closer than d_nn - 2 max|d|: skip the search then.
    finite = nn_distances[np.isfinite(nn_distances)]
    if finite.size == 0:
        return result
    bound = float(finite.min()) - 2.0 * float(lengths.max(initial=0.0))
    if bound >= floor or minimum_distance(result) >= floor:
        return result
    return None


def rattle(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    fraction: float = 0.3,
    n_configs: int = 1,
    min_distance: float = 0.5,
    max_retries: int = 100,
    parent_id: str | None = None,
) -> list[Atoms]:
    """Displace every atom in a uniformly random direction by up to ``fraction`` * d_nn.

    d_nn is that atom's nearest-neighbour distance (periodic images included), so the
    perturbation is proportionate to the local bonding whatever the material.
    """
    params = RattleParams(fraction=fraction)
    _check_count('n_configs', n_configs)
    _check_count('max_retries', max_retries)
    _check_min_distance(min_distance)
    check_cell(atoms)
    base = clean_copy(atoms)
    nn_distances = nearest_neighbour_distances(base)
    parent = _parent(atoms, parent_id)
    frames = []
    for child in rng.spawn(n_configs):
        frame = _with_retries(
            lambda child=child: _rattle_draw(
                base, child, params.fraction, nn_distances, min_distance
            ),
            max_retries,
            'rattle',
            min_distance,
        )
        frames.append(_tag(frame, 'rattle', {'fraction': params.fraction}, parent))
    return frames


# --------------------------------------------------------------------------- strain


def _strain_matrix(
    atoms: Atoms, rng: np.random.Generator, params: StrainParams
) -> tuple[np.ndarray, dict[str, Any]]:
    """Symmetric deformation F (x' = x F) acting on the periodic directions only.

    F is the identity on the orthogonal complement of the periodic lattice, so vacuum
    thickness and the extent of atoms across it are untouched.
    """
    basis = periodic_basis(atoms.cell.array, atoms.pbc)
    low, high = -params.max_compressive_strain, params.max_tensile_strain
    if params.mode == 'isotropic':
        factor = float(rng.uniform(1.0 + low, 1.0 + high))
        # Exact identity for bulk, so that zero cell components stay exactly zero.
        projector = np.eye(3) if len(basis) == 3 else basis.T @ basis
        deformation = np.eye(3) + (factor - 1.0) * projector
        return deformation, {'strain_factor': factor}
    size = len(basis)
    shear = rng.uniform(-params.max_shear_strain, params.max_shear_strain, (size, size))
    tensor = np.triu(shear, 1)
    tensor = tensor + tensor.T
    tensor[np.diag_indices(size)] = rng.uniform(low, high, size)
    strain_tensor = basis.T @ tensor @ basis
    return np.eye(3) + strain_tensor, {'strain_tensor': strain_tensor.tolist()}


def _apply_deformation(atoms: Atoms, deformation: np.ndarray) -> Atoms:
    """Deform atoms and periodic cell vectors; non-periodic vectors keep length and direction."""
    result = clean_copy(atoms)
    cell = np.array(result.cell.array)
    pbc = np.asarray(result.pbc, dtype=bool)
    cell[pbc] = cell[pbc] @ deformation
    result.set_cell(cell, scale_atoms=False)
    result.positions = atoms.positions @ deformation
    return result


def _strain_draw(
    atoms: Atoms, rng: np.random.Generator, params: StrainParams, d_min: float, floor: float
) -> tuple[Atoms, dict[str, Any]] | None:
    deformation, record = _strain_matrix(atoms, rng, params)
    result = _apply_deformation(atoms, deformation)
    # Every distance shrinks at most by the smallest singular value of F.
    shrink = float(np.linalg.svd(deformation, compute_uv=False).min())
    if shrink * d_min >= floor or minimum_distance(result) >= floor:
        return result, record
    return None


def _strain_record(params: StrainParams) -> dict[str, Any]:
    record: dict[str, Any] = {
        'max_compressive_strain': params.max_compressive_strain,
        'max_tensile_strain': params.max_tensile_strain,
        'mode': params.mode,
    }
    if params.mode == 'anisotropic':
        record['max_shear_strain'] = params.max_shear_strain
    return record


def strain(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    max_compressive_strain: float = 0.2,
    max_tensile_strain: float = 0.6,
    mode: str = 'isotropic',
    max_shear_strain: float = 0.1,
    n_configs: int = 1,
    min_distance: float = 0.5,
    max_retries: int = 100,
    parent_id: str | None = None,
) -> list[Atoms]:
    """Scale the periodic lattice by a factor in [1 - compressive, 1 + tensile], atoms with it.

    Only periodic directions are strained: stretching vacuum would change nothing physical
    but the cost of the DFT labelling.  ``mode='anisotropic'`` draws a random symmetric strain
    tensor (normal and shear components) restricted to the periodic directions instead.
    """
    params = StrainParams(
        max_compressive_strain=max_compressive_strain,
        max_tensile_strain=max_tensile_strain,
        mode=mode,
        max_shear_strain=max_shear_strain,
    )
    _check_count('n_configs', n_configs)
    _check_count('max_retries', max_retries)
    _check_min_distance(min_distance)
    check_cell(atoms)
    base = clean_copy(atoms)
    d_min = minimum_distance(base)
    parent = _parent(atoms, parent_id)
    frames = []
    for child in rng.spawn(n_configs):
        frame, drawn = _with_retries(
            lambda child=child: _strain_draw(base, child, params, d_min, min_distance),
            max_retries,
            'strain',
            min_distance,
        )
        frames.append(_tag(frame, 'strain', {**_strain_record(params), **drawn}, parent))
    return frames


# --------------------------------------------------------------------------- vacancies


def _remove_atoms(
    atoms: Atoms, rng: np.random.Generator, n_vacancies: int
) -> tuple[Atoms, list[int]] | None:
    """Remove up to ``n_vacancies`` random atoms, always leaving at least one."""
    count = min(n_vacancies, len(atoms) - 1)
    if count <= 0:
        return None
    removed = np.sort(rng.choice(len(atoms), size=count, replace=False))
    result = clean_copy(atoms)
    del result[removed.tolist()]
    return result, removed.tolist()


def create_vacancies(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    n_vacancies: int = 2,
    n_configs: int = 1,
    parent_id: str | None = None,
) -> list[Atoms]:
    """Frames with ``n_vacancies`` random atoms removed (fewer if the frame is that small).

    A frame is never emptied: at least one atom always remains, and a single-atom frame
    yields no frames at all.
    """
    _check_count('n_vacancies', n_vacancies)
    _check_count('n_configs', n_configs)
    parent = _parent(atoms, parent_id)
    frames = []
    for child in rng.spawn(n_configs):
        outcome = _remove_atoms(atoms, child, n_vacancies)
        if outcome is None:
            continue
        frame, removed = outcome
        record = {'n_vacancies': n_vacancies, 'removed_indices': removed}
        frames.append(_tag(frame, 'vacancies', record, parent))
    return frames


# --------------------------------------------------------------------------- distortions


def _distort_draw(
    base: Atoms,
    strain_rng: np.random.Generator,
    rattle_rng: np.random.Generator,
    strain_params: StrainParams,
    rattle_params: RattleParams,
    geometry: tuple[float, np.ndarray],
    floor: float,
) -> tuple[Atoms, dict[str, Any]] | None:
    """Strain then rattle once; None when the result breaks the floor."""
    d_min, nn_distances = geometry
    frame, record = base, {}
    if strain_params.enabled:
        drawn = _strain_draw(base, strain_rng, strain_params, d_min, floor)
        if drawn is None:
            return None
        frame, strained = drawn
        record['strain'] = {**_strain_record(strain_params), **strained}
    if rattle_params.enabled:
        if strain_params.enabled:
            # Rattle against the strained bonds, so that |d| <= f d_nn holds on them.
            nn_distances = nearest_neighbour_distances(frame)
        frame = _rattle_draw(frame, rattle_rng, rattle_params.fraction, nn_distances, floor)
        if frame is None:
            return None
        record['rattle'] = {'fraction': rattle_params.fraction}
    return frame, record


def distort(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    n_configs: int = 10,
    rattle_params: RattleParams | None = None,
    strain_params: StrainParams | None = None,
    vacancy_params: VacancyParams | None = None,
    min_distance: float = 0.5,
    max_retries: int = 100,
    parent_id: str | None = None,
) -> list[Atoms]:
    """The paper's "distorted structures": each frame strained, then rattled.

    A ``vacancy_params.fraction_structures`` share of the ``n_configs`` frames (rounded
    stochastically, so the expected share is exact) also loses ``vacancy_params.n_vacancies``
    atoms.  Strain, rattle and vacancy draws use separate child streams, so disabling one of
    them does not change the others.  With strain and rattle both disabled only the frames
    with vacancies are returned.
    """
    rattle = RattleParams() if rattle_params is None else rattle_params
    strain = StrainParams() if strain_params is None else strain_params
    vacancies = VacancyParams() if vacancy_params is None else vacancy_params
    _check_count('n_configs', n_configs)
    _check_count('max_retries', max_retries)
    _check_min_distance(min_distance)
    check_cell(atoms)
    base = clean_copy(atoms)
    strain_rng, rattle_rng, vacancy_rng = rng.spawn(3)
    with_vacancy = _vacancy_selection(vacancy_rng, n_configs, vacancies)
    geometry = (minimum_distance(base), nearest_neighbour_distances(base))
    streams = zip(
        strain_rng.spawn(n_configs),
        rattle_rng.spawn(n_configs),
        vacancy_rng.spawn(n_configs),
        strict=True,
    )
    parent = _parent(atoms, parent_id)
    frames = []
    for index, (strain_child, rattle_child, vacancy_child) in enumerate(streams):
        if not (strain.enabled or rattle.enabled or index in with_vacancy):
            continue
        frame, record = _with_retries(
            lambda s=strain_child, r=rattle_child: _distort_draw(
                base, s, r, strain, rattle, geometry, min_distance
            ),
            max_retries,
            'distort',
            min_distance,
        )
        if index in with_vacancy:
            outcome = _remove_atoms(frame, vacancy_child, vacancies.n_vacancies)
            if outcome is not None:
                frame, removed = outcome
                record['vacancies'] = {
                    'n_vacancies': vacancies.n_vacancies,
                    'removed_indices': removed,
                }
        if not record:
            continue
        frames.append(_tag(frame, '+'.join(record), record, parent))
    return frames


def _vacancy_selection(
    rng: np.random.Generator, n_configs: int, vacancies: VacancyParams
) -> set[int]:
    if not vacancies.enabled:
        return set()
    count = _stochastic_round(vacancies.fraction_structures * n_configs, rng)
    return {int(index) for index in rng.choice(n_configs, size=count, replace=False)}


# --------------------------------------------------------------------------- clusters


def _unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, 3))
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0.0] = 1.0
    return vectors / norms[:, None]


def _grow_cluster(
    n_atoms: int, rng: np.random.Generator, distance: float, max_retries: int
) -> np.ndarray:
    """Positions of a random cluster grown atom by atom.

    Each new atom sits at [d, 1.5 d] from a randomly chosen atom already in place and no
    closer than d to any of them; candidates are drawn in small vectorised batches.
    """
    positions = np.zeros((n_atoms, 3))
    for count in range(1, n_atoms):
        for _ in range(max_retries):
            anchors = rng.integers(count, size=_CLUSTER_BATCH)
            radii = rng.uniform(distance, 1.5 * distance, _CLUSTER_BATCH)
            candidates = positions[anchors] + _unit_vectors(rng, _CLUSTER_BATCH) * radii[:, None]
            gaps = np.linalg.norm(candidates[:, None, :] - positions[None, :count, :], axis=2)
            fits = np.flatnonzero((gaps >= distance).all(axis=1))
            if fits.size:
                positions[count] = candidates[fits[0]]
                break
        else:
            raise MinimumDistanceError(
                f'clusters: could not place atom {count + 1} at >= {distance} Å from the others '
                f'after {max_retries} batches of candidates'
            )
    return positions


def clusters(
    frames: Atoms | Sequence[Atoms],
    rng: np.random.Generator,
    *,
    n_clusters: int = 10,
    min_atoms: int = 2,
    max_atoms: int = 30,
    distance: float = 1.5,
    vacuum: float = 15.0,
    min_distance: float = 0.5,
    max_retries: int = 100,
) -> list[Atoms]:
    """Non-periodic random clusters of the species found in ``frames``.

    Sizes are uniform in [min_atoms, max_atoms] and each atom's species is uniform over the
    species present, so under-coordinated, far-from-equilibrium environments are sampled.
    Each cluster sits in a box with ``vacuum`` Å of empty space on every side.
    """
    params = ClusterParams(
        n_clusters=n_clusters, min_atoms=min_atoms, max_atoms=max_atoms, distance=distance
    )
    _check_vacuum(vacuum)
    _check_min_distance(min_distance)
    _check_count('max_retries', max_retries)
    if params.distance < min_distance:
        raise ValueError(
            f'clusters.distance must be >= min_distance ({min_distance} Å); got {distance!r}'
        )
    species = species_of(frames)
    if not species:
        return []
    numbers = np.array([atomic_numbers[symbol] for symbol in species])
    record = {
        'distance': params.distance,
        'max_atoms': params.max_atoms,
        'min_atoms': params.min_atoms,
        'vacuum': vacuum,
    }
    result = []
    for child in rng.spawn(params.n_clusters):
        size = int(child.integers(params.min_atoms, params.max_atoms + 1))
        chosen = numbers[child.integers(len(numbers), size=size)]
        positions = _grow_cluster(size, child, params.distance, max_retries)
        cluster = pad_vacuum(Atoms(numbers=chosen, positions=positions, pbc=False), vacuum)
        result.append(_tag(cluster, 'cluster', {**record, 'n_atoms': size}, ''))
    return result


# --------------------------------------------------------------------------- slabs


def _slab_layers(
    lattice: Atoms, index: tuple[int, int, int], min_thickness: float, max_atoms: int
) -> int:
    """Layers needed for ``min_thickness`` Å of atoms, capped by ``max_atoms`` (0: impossible).

    Layers are translations by the out-of-plane lattice vector, so thickness grows by its
    perpendicular height per layer and the count follows from a single one-layer cut.
    """
    layer = surface(lattice, index, 1, periodic=True)
    spacing = float(layer.cell[2, 2])
    heights = layer.positions[:, 2]
    first = float(heights.max() - heights.min())
    needed = 1 + max(0, math.ceil((min_thickness - first) / spacing - 1e-9))
    return min(needed, max_atoms // len(layer))


def slabs(
    atoms: Atoms,
    rng: np.random.Generator | None = None,
    *,
    miller_indices: Sequence[Sequence[int]] = ((1, 1, 1), (1, 1, 0), (1, 0, 0)),
    min_thickness: float = 10.0,
    max_atoms: int = 450,
    vacuum: float = 15.0,
    min_distance: float = 0.5,
    parent_id: str | None = None,
) -> list[Atoms]:
    """Surface slabs cut from a fully periodic (bulk) frame, one per Miller index.

    Layers are added until the atoms span ``min_thickness`` Å along the surface normal unless
    that would exceed ``max_atoms`` (then the thickest slab that fits; a cut whose single
    layer is too large is skipped with a warning).  Slabs are periodic in-plane only, with
    ``vacuum`` Å of empty space along z.  Indices refer to the frame's own cell vectors, as in
    ``ase.build.surface``.  Frames that are not periodic in all directions yield no slabs.
    ``rng`` is unused (the cut is deterministic) and accepted for a uniform signature.
    """
    params = SlabParams(
        miller_indices=miller_indices, min_thickness=min_thickness, max_atoms=max_atoms
    )
    _check_vacuum(vacuum)
    _check_min_distance(min_distance)
    check_cell(atoms)
    if not np.all(atoms.pbc):
        return []
    lattice = clean_copy(atoms)
    parent = _parent(atoms, parent_id)
    result = []
    for index in params.miller_indices:
        layers = _slab_layers(lattice, index, params.min_thickness, params.max_atoms)
        if layers == 0:
            warnings.warn(
                f'slabs: one {index} layer already exceeds max_atoms = {params.max_atoms}; skipped',
                stacklevel=2,
            )
            continue
        slab = pad_vacuum(clean_copy(surface(lattice, index, layers, periodic=False)), vacuum)
        if minimum_distance(slab) < min_distance:
            raise MinimumDistanceError(
                f'slabs: the {index} slab has atoms closer than min_distance = {min_distance} Å'
            )
        heights = slab.positions[:, 2]
        record = {
            'layers': layers,
            'max_atoms': params.max_atoms,
            'miller_index': index,
            'min_thickness': params.min_thickness,
            'thickness': float(heights.max() - heights.min()),
            'vacuum': vacuum,
        }
        result.append(_tag(slab, 'slab', record, parent))
    return result


# --------------------------------------------------------------------------- isolated atoms


def isolated_atoms(
    frames: Atoms | Sequence[Atoms],
    rng: np.random.Generator | None = None,
    *,
    vacuum: float = 15.0,
) -> list[Atoms]:
    """One non-periodic single atom per species, centred in a cube of side ``vacuum``.

    Their energies are the reference atomic energies the potential is trained against.
    ``rng`` is unused and accepted for a uniform signature.
    """
    _check_vacuum(vacuum)
    result = []
    for symbol in species_of(frames):
        atom = pad_vacuum(Atoms(symbol, positions=[[0.0, 0.0, 0.0]], pbc=False), vacuum)
        result.append(_tag(atom, 'isolated_atom', {'vacuum': vacuum}, ''))
    return result


# --------------------------------------------------------------------------- substitutions


def _rank_within_group(codes: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... counting separately for every distinct code, in order of appearance."""
    order = np.argsort(codes, kind='stable')
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    lengths = np.diff(np.r_[starts, len(codes)])
    ranks = np.arange(len(codes)) - np.repeat(starts, lengths)
    result = np.empty(len(codes), dtype=int)
    result[order] = ranks
    return result


def _swap_pairs(numbers: np.ndarray, n_swaps: int, rng: np.random.Generator) -> np.ndarray:
    """``n_swaps`` disjoint random pairs of atoms of different species, shape (n_swaps, 2).

    Picks 2k atoms in random order with at most k of any one species, groups them by species
    and pairs position p with p + k: no species block is longer than k, so every pair mixes
    species.  Vectorised; ``n_swaps`` must not exceed :func:`_max_swaps`.
    """
    order = rng.permutation(len(numbers))
    ranks = _rank_within_group(numbers[order])
    picked = order[ranks < n_swaps][: 2 * n_swaps]
    grouped = picked[np.argsort(numbers[picked], kind='stable')]
    return np.column_stack([grouped[:n_swaps], grouped[n_swaps:]])


def _max_swaps(numbers: np.ndarray) -> int:
    """Largest number of disjoint unlike pairs: limited by half the atoms and the minority."""
    counts = np.bincount(numbers)
    return int(min(len(numbers) // 2, len(numbers) - counts.max())) if len(numbers) else 0


def _swap_count(numbers: np.ndarray, fraction_atoms: float) -> int:
    """Swaps changing the species of about ``fraction_atoms`` of the atoms (each swap: two)."""
    wanted = math.floor(fraction_atoms * len(numbers) / 2 + 0.5)
    if fraction_atoms > 0:
        wanted = max(wanted, 1)
    return min(wanted, _max_swaps(numbers))


def substitute(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    fraction_atoms: float = 0.2,
    n_configs: int = 1,
    parent_id: str | None = None,
) -> list[Atoms]:
    """Exchange the species of random unlike pairs so ``fraction_atoms`` of atoms change.

    Composition is preserved (antisite defects).  Single-species frames yield no frames.
    """
    params = SubstitutionParams(fraction_atoms=fraction_atoms)
    _check_count('n_configs', n_configs)
    numbers = np.asarray(atoms.numbers)
    n_swaps = _swap_count(numbers, params.fraction_atoms)
    if n_swaps == 0:
        return []
    parent = _parent(atoms, parent_id)
    frames = []
    for child in rng.spawn(n_configs):
        pairs = _swap_pairs(numbers, n_swaps, child)
        swapped = numbers.copy()
        swapped[pairs[:, 0]], swapped[pairs[:, 1]] = numbers[pairs[:, 1]], numbers[pairs[:, 0]]
        frame = clean_copy(atoms)
        frame.numbers = swapped
        record = {'fraction_atoms': params.fraction_atoms, 'n_swaps': n_swaps}
        frames.append(_tag(frame, 'substitution', record, parent))
    return frames


def substitutions(
    frames: Sequence[Atoms],
    rng: np.random.Generator,
    *,
    fraction_structures: float = 0.2,
    fraction_atoms: float = 0.2,
) -> list[Atoms]:
    """Substitute ``fraction_atoms`` of the atoms in ``fraction_structures`` of the frames.

    Only multi-species frames are eligible; the number chosen is rounded stochastically so the
    expected share is exact.  Each frame uses its own child stream (by position in ``frames``).
    """
    params = SubstitutionParams(
        fraction_structures=fraction_structures, fraction_atoms=fraction_atoms
    )
    frames = _as_list(frames)
    selection_rng, *children = rng.spawn(len(frames) + 1)
    eligible = [i for i, frame in enumerate(frames) if len(set(frame.numbers.tolist())) > 1]
    count = _stochastic_round(params.fraction_structures * len(eligible), selection_rng)
    chosen = sorted(selection_rng.choice(eligible, size=count, replace=False).tolist())
    result = []
    for index in chosen:
        for frame in substitute(frames[index], children[index], fraction_atoms=fraction_atoms):
            _update_params(frame, fraction_structures=params.fraction_structures)
            result.append(frame)
    return result


def _update_params(frame: Atoms, **extra: Any) -> None:
    params = json.loads(frame.info['generation_params'])
    params.update(_jsonable(extra))
    frame.info['generation_params'] = json.dumps(params, sort_keys=True)


# --------------------------------------------------------------------------- alloys


def _apportion(fractions: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``fractions * total`` (largest remainder)."""
    exact = np.asarray(fractions, dtype=float) * total
    counts = np.floor(exact).astype(int)
    remainder = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind='stable')
    counts[order[:remainder]] += 1
    return counts


def _alloy_targets(
    params: AlloyParams, rng: np.random.Generator
) -> list[tuple[tuple[float, ...], np.random.Generator]]:
    """(composition, generator) for every frame to make from one input."""
    n_species = len(params.alloy_species)
    if params.compositions is not None:
        children = rng.spawn(len(params.compositions) * params.n_configs)
        targets = [c for c in params.compositions for _ in range(params.n_configs)]
        return list(zip(targets, children, strict=True))
    result = []
    for child in rng.spawn(params.n_configs):
        # A flat Dirichlet is uniform over compositions (uniform in [0, 1] for a binary).
        composition = tuple(float(x) for x in child.dirichlet(np.ones(n_species)))
        result.append((composition, child))
    return result


def alloys(
    atoms: Atoms,
    rng: np.random.Generator,
    *,
    alloy_species: Sequence[str],
    compositions: Sequence[Any] | None = None,
    fixed_species: Sequence[str] = (),
    n_configs: int = 10,
    parent_id: str | None = None,
) -> list[Atoms]:
    """Random solid solutions of ``alloy_species`` on the sites any of them occupies.

    Atoms of other species (and of ``fixed_species``) stay as they are.  See
    :class:`AlloyParams` for the meaning of ``compositions``; each frame places exactly the
    apportioned number of atoms of each species on a random permutation of the sites.
    """
    params = AlloyParams(
        enabled=True,
        alloy_species=tuple(alloy_species),
        fixed_species=tuple(fixed_species),
        compositions=None if compositions is None else tuple(compositions),
        n_configs=n_configs,
    )
    symbols = np.array(atoms.get_chemical_symbols())
    sites = np.flatnonzero(np.isin(symbols, params.alloy_species))
    if sites.size == 0:
        raise ValueError(
            f'alloys.alloy_species: the frame has no site occupied by any of '
            f'{list(params.alloy_species)}'
        )
    species_numbers = np.array([atomic_numbers[s] for s in params.alloy_species])
    parent = _parent(atoms, parent_id)
    frames = []
    for composition, child in _alloy_targets(params, rng):
        counts = _apportion(composition, sites.size)
        numbers = np.array(atoms.numbers)
        numbers[child.permutation(sites)] = np.repeat(species_numbers, counts)
        frame = clean_copy(atoms)
        frame.numbers = numbers
        record = {
            'alloy_species': params.alloy_species,
            'composition': composition,
            'counts': dict(zip(params.alloy_species, counts.tolist(), strict=True)),
            'fixed_species': params.fixed_species,
        }
        frames.append(_tag(frame, 'alloy', record, parent))
    return frames


# --------------------------------------------------------------------------- pipeline


def _coerce_params(params: AugmentationParams | Mapping[str, Any] | None) -> AugmentationParams:
    if isinstance(params, AugmentationParams):
        return params
    return AugmentationParams.from_dict(params)


def validate_frames(
    frames: Sequence[Atoms], params: AugmentationParams | Mapping[str, Any] | None = None
) -> list[str]:
    """Problems with the input frames for :func:`augment`, each naming the frame index."""
    params = _coerce_params(params)
    frames = _as_list(frames)
    errors = [] if frames else ['frames: at least one input frame is required']
    for index, frame in enumerate(frames):
        label = f'frame {index}'
        if len(frame) == 0:
            errors.append(f'{label}: has no atoms')
            continue
        try:
            check_cell(frame, label)
            complete_cell(frame.cell.array, frame.pbc)
        except ValueError as error:
            errors.append(f'{label}: {error}' if not str(error).startswith(label) else str(error))
            continue
        closest = minimum_distance(frame)
        if closest < params.min_distance:
            errors.append(
                f'{label}: two atoms are {closest:.3f} Å apart, closer than '
                f'min_distance = {params.min_distance} Å'
            )
    if params.alloys.enabled and frames:
        wanted = set(params.alloys.alloy_species)
        if not any(wanted & set(frame.get_chemical_symbols()) for frame in frames):
            errors.append(
                f'alloys.alloy_species: no input frame has sites occupied by any of '
                f'{list(params.alloys.alloy_species)}'
            )
    return errors


def _stream(seed: int, name: str, *indices: int) -> np.random.Generator:
    """Generator for one augmentation (and input), independent of every other stream."""
    return derive_rng(seed, *_SPAWN_KEY_PADDING, _STREAMS[name], *indices)


def _finalise(frame: Atoms, vacuum: float) -> Atoms:
    """Pad a non-periodic frame with vacuum, keeping its provenance."""
    if np.all(frame.pbc):
        return frame
    padded = pad_vacuum(frame, vacuum)
    padded.info = dict(frame.info)
    return padded


def _prepare_inputs(
    frames: list[Atoms], parents: list[str], params: AugmentationParams
) -> list[Atoms]:
    """Supercells (or tagged copies) of the inputs, padded with vacuum where non-periodic."""
    bases = []
    for frame, parent in zip(frames, parents, strict=True):
        if params.supercells.enabled:
            (base,) = make_supercell(
                frame,
                min_width=params.supercells.min_width,
                max_atoms=params.supercells.max_atoms,
                parent_id=parent,
            )
        else:
            base = _tag(clean_copy(frame), 'input', {}, parent)
        bases.append(_finalise(base, params.vacuum))
    return bases


def _distorted(bases: list[Atoms], params: AugmentationParams, seed: int) -> list[Atoms]:
    if not (params.rattle.enabled or params.strain.enabled or params.vacancies.enabled):
        return []
    result = []
    for index, base in enumerate(bases):
        result += distort(
            base,
            _stream(seed, 'distorted', index),
            n_configs=params.n_configs_per_input,
            rattle_params=params.rattle,
            strain_params=params.strain,
            vacancy_params=params.vacancies,
            min_distance=params.min_distance,
            max_retries=params.max_retries,
            parent_id=base.info['parent_id'],
        )
    return result


def _slabs(frames: list[Atoms], parents: list[str], params: AugmentationParams) -> list[Atoms]:
    result = []
    for frame, parent in zip(frames, parents, strict=True):
        result += slabs(
            frame,
            miller_indices=params.slabs.miller_indices,
            min_thickness=params.slabs.min_thickness,
            max_atoms=params.slabs.max_atoms,
            vacuum=params.vacuum,
            min_distance=params.min_distance,
            parent_id=parent,
        )
    return result


def _substituted(
    sources: Mapping[str, list[Atoms]], params: AugmentationParams, seed: int
) -> list[Atoms]:
    result = []
    for code, (name, frames) in enumerate(sources.items()):
        for frame in substitutions(
            frames,
            _stream(seed, 'substitutions', code),
            fraction_structures=params.substitutions.fraction_structures,
            fraction_atoms=params.substitutions.fraction_atoms,
        ):
            _update_params(frame, source=name)
            result.append(frame)
    return result


def _alloyed(bases: list[Atoms], params: AugmentationParams, seed: int) -> list[Atoms]:
    settings = params.alloys
    result = []
    for index, base in enumerate(bases):
        if not set(settings.alloy_species) & set(base.get_chemical_symbols()):
            continue
        result += alloys(
            base,
            _stream(seed, 'alloys', index),
            alloy_species=settings.alloy_species,
            compositions=settings.compositions,
            fixed_species=settings.fixed_species,
            n_configs=settings.n_configs,
            parent_id=base.info['parent_id'],
        )
    return result


def augment(
    frames: Sequence[Atoms],
    params: AugmentationParams | Mapping[str, Any] | None,
    seed: int,
) -> dict[str, list[Atoms]]:
    """Apply every enabled augmentation in the paper's order; deterministic given ``seed``.

    Order: supercells of the inputs, isolated atoms, distorted (strain + rattle + vacancies)
    frames of the supercells, clusters, slabs of the bulk inputs, substitutions (of the
    supercells, distorted frames and slabs), alloys of the supercells, and finally vacuum
    padding of every non-periodic frame.  Returns one list per key of
    :data:`AUGMENTATION_KEYS` (empty when disabled).  ``parent_id`` of every frame is the
    ``frame_id`` of the input it descends from, or its index in ``frames`` when it has none.
    """
    params = _coerce_params(params)
    is_integer = isinstance(seed, int | np.integer) and not isinstance(seed, bool)
    if not is_integer or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f'seed must be an integer in [0, 2**31); got {seed!r}')
    frames = _as_list(frames)
    errors = validate_frames(frames, params)
    if errors:
        raise ValueError('; '.join(errors))
    parents = [str(frame.info.get('frame_id', index)) for index, frame in enumerate(frames)]
    bases = _prepare_inputs(frames, parents, params)
    out: dict[str, list[Atoms]] = {key: [] for key in AUGMENTATION_KEYS}
    if params.include_inputs:
        out['input'] = bases
    if params.isolated_atoms.enabled:
        out['isolated_atoms'] = isolated_atoms(frames, vacuum=params.vacuum)
    out['distorted'] = _distorted(bases, params, seed)
    if params.clusters.enabled:
        out['clusters'] = clusters(
            frames,
            _stream(seed, 'clusters'),
            n_clusters=params.clusters.n_clusters,
            min_atoms=params.clusters.min_atoms,
            max_atoms=params.clusters.max_atoms,
            distance=params.clusters.distance,
            vacuum=params.vacuum,
            min_distance=params.min_distance,
            max_retries=params.max_retries,
        )
    if params.slabs.enabled:
        out['slabs'] = _slabs(frames, parents, params)
    if params.substitutions.enabled:
        sources = {'input': bases, 'distorted': out['distorted'], 'slabs': out['slabs']}
        out['substitutions'] = _substituted(sources, params, seed)
    if params.alloys.enabled:
        out['alloys'] = _alloyed(bases, params, seed)
    return {key: [_finalise(frame, params.vacuum) for frame in out[key]] for key in out}
