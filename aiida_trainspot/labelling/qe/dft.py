"""One set of DFT settings per campaign, and the vacuum every frame gets (no AiiDA import).

Total energies computed with different cutoffs, smearings or k-point densities are not on one
scale, so a campaign decides its settings once, from every species it can contain, and applies
them to every frame: bulk, slabs, clusters, isolated atoms, and every later iteration.
Frames with non-periodic axes are padded to at least the configured vacuum, and 2D frames to
what the 2D Coulomb cutoff (``assume_isolated='2D'``) needs, before they reach pw.x.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from ase import Atoms

from aiida_trainspot.augmentation.geometry import complete_cell, pad_vacuum, unit_normals
from aiida_trainspot.common.settings import nearest_key, recursive_merge

#: Campaign protocols and aiida-quantumespresso's own names -> aiida-quantumespresso's protocol.
QE_PROTOCOLS: dict[str, str] = {
    'fast': 'fast',
    'moderate': 'balanced',
    'precise': 'stringent',
    'balanced': 'balanced',
    'stringent': 'stringent',
}

#: Protocol of a labelling stage that names none (campaign protocols set their own).
DEFAULT_PROTOCOL = 'fast'

#: Default vacuum (Å) along every non-periodic axis of a frame sent to pw.x.
DEFAULT_VACUUM = 15.0

#: Electron density reaching beyond the outermost nuclei (Å, per side) that the 2D cutoff must
#: contain: the truncated Coulomb interaction reaches c/2, so the density's thickness
#: (nuclei + 2 tails) must not exceed half the cell, i.e. vacuum >= thickness + 2 tails.
DENSITY_TAIL = 2.0

#: ``SYSTEM`` keys that depend on the frame, never part of the campaign's settings.
FRAME_SYSTEM_KEYS = frozenset({'assume_isolated', 'starting_magnetization', 'nat', 'ntyp'})


def qe_protocol(name: str) -> str:
    """aiida-quantumespresso's protocol for a campaign protocol name (or its own name)."""
    try:
        return QE_PROTOCOLS[name]
    except KeyError:
        raise ValueError(
            f'unknown protocol {name!r}; choose one of {list(QE_PROTOCOLS)} '
            '(moderate = balanced, precise = stringent)'
        ) from None


#: Meta inputs of aiida-quantumespresso's protocol: not ports, still valid overrides.
META_OVERRIDES = {
    'pseudo_family': None,
    'meta_parameters': {'conv_thr_per_atom', 'etot_conv_thr_per_atom'},
}

#: pw.x namelists a ``pw.parameters`` override may hold.
PW_NAMELISTS = ('CONTROL', 'SYSTEM', 'ELECTRONS', 'IONS', 'CELL', 'FCP', 'RISM')


def unknown_override(
    overrides: Mapping[str, Any], ports: Iterable[str], pw_ports: Iterable[str]
) -> str | None:
    """A message naming the first unknown key of ``qe.overrides`` and the nearest known one.

    aiida-quantumespresso merges overrides without looking at their names, so a typo
    (``kpoints_distanse``) would be ignored and the campaign run on defaults.
    """
    levels = [
        ('', overrides, [*ports, *META_OVERRIDES]),
        ('pw.', overrides.get('pw') or {}, list(pw_ports)),
        ('pw.parameters.', (overrides.get('pw') or {}).get('parameters') or {}, PW_NAMELISTS),
        (
            'meta_parameters.',
            overrides.get('meta_parameters') or {},
            META_OVERRIDES['meta_parameters'],
        ),
    ]
    for prefix, values, known in levels:
        for key in values:
            if key not in known:
                close = nearest_key(key, known)
                hint = f"did you mean '{prefix}{close}'?" if close else f'known: {sorted(known)}'
                return f"unknown key '{prefix}{key}'; {hint}"
    return None


def max_cutoffs(
    cutoffs: Mapping[str, tuple[float, float]], species: Iterable[str]
) -> tuple[float, float]:
    """(ecutwfc, ecutrho) in Ry: the largest over ``species``, so every pseudopotential is safe."""
    species = sorted(set(species))
    missing = [s for s in species if s not in cutoffs]
    if missing:
        raise ValueError(f'no recommended cutoffs for {missing}')
    if not species:
        raise ValueError('no species: cannot decide cutoffs')
    return (
        max(float(cutoffs[s][0]) for s in species),
        max(float(cutoffs[s][1]) for s in species),
    )


def decide_settings(
    protocol_inputs: Mapping[str, Any],
    cutoffs: Mapping[str, tuple[float, float]],
    species: Iterable[str],
    *,
    protocol: str,
    pseudo_family: str,
    spin_polarised: bool,
    vacuum: float,
) -> dict[str, Any]:
    """The campaign's DFT settings, as plain data (stored as a ``Dict`` in provenance).

    :param protocol_inputs: ``PwBaseWorkChain.get_protocol_inputs(protocol, overrides)``: the
        protocol with the user's overrides merged in (overrides of ``pw.parameters`` win).
    :param cutoffs: the pseudopotential family's recommended (ecutwfc, ecutrho), Ry, per element.
    :param species: every species the campaign can contain.
    """
    species = sorted(set(species))
    parameters = protocol_inputs.get('pw', {}).get('parameters', {})
    system = {
        key: value
        for key, value in dict(parameters.get('SYSTEM', {})).items()
        if key not in FRAME_SYSTEM_KEYS
    }
    if 'ecutwfc' not in system or 'ecutrho' not in system:
        ecutwfc, ecutrho = max_cutoffs(cutoffs, species)
        system.setdefault('ecutwfc', ecutwfc)
        system.setdefault('ecutrho', ecutrho)
    if spin_polarised:
        system['nspin'] = 2
    else:
        system.pop('nspin', None)
    meta = dict(protocol_inputs.get('meta_parameters', {}))
    return {
        'protocol': protocol,
        'pseudo_family': pseudo_family,
        'species': species,
        'system': system,
        'spin_polarised': bool(spin_polarised),
        'kpoints_distance': float(protocol_inputs['kpoints_distance']),
        'kpoints_force_parity': bool(protocol_inputs.get('kpoints_force_parity', False)),
        'meta_parameters': meta,
        'vacuum': float(vacuum),
        'density_tail': DENSITY_TAIL,
    }


def builder_overrides(settings: Mapping[str, Any], user: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides of ``PwBaseWorkChain.get_builder_from_protocol`` that impose ``settings``.

    The user's own overrides (``qe.overrides``) come first; the campaign's settings are merged
    over them, so every frame gets the same ``SYSTEM`` values, k-point density and thresholds.
    """
    merged = recursive_merge(user, {'pseudo_family': settings['pseudo_family']})
    campaign = {
        'kpoints_distance': settings['kpoints_distance'],
        'kpoints_force_parity': settings['kpoints_force_parity'],
        'meta_parameters': dict(settings['meta_parameters']),
        'pw': {'parameters': {'SYSTEM': dict(settings['system'])}},
    }
    return recursive_merge(merged, campaign)


def layer_thickness(atoms: Atoms, axis: int = 2) -> float:
    """Extent of the atoms (Å) along the unit normal of the plane of the other two vectors."""
    if len(atoms) == 0:
        return 0.0
    normal = unit_normals(_full_cell(atoms))[axis]
    heights = atoms.positions @ normal
    return float(heights.max() - heights.min())


def vacuum_along(atoms: Atoms, axis: int) -> float:
    """Empty space (Å) between the atoms and their periodic image along ``axis``."""
    cell = _full_cell(atoms)
    normal = unit_normals(cell)[axis]
    return float(cell[axis] @ normal) - layer_thickness(atoms, axis)


def is_two_dimensional(pbc: Iterable[bool]) -> bool:
    """Periodic along x and y, not z: the frames that pw.x treats with ``assume_isolated='2D'``."""
    return tuple(bool(p) for p in pbc) == (True, True, False)


def required_vacuum(atoms: Atoms, vacuum: float, density_tail: float = DENSITY_TAIL) -> float:
    """Vacuum (Å) a frame needs: the configured one, more for a 2D frame with a thick layer."""
    if is_two_dimensional(atoms.pbc):
        return max(vacuum, layer_thickness(atoms) + 2 * density_tail)
    return vacuum


def two_d_cutoff_valid(atoms: Atoms, density_tail: float = DENSITY_TAIL) -> bool:
    """Whether ``assume_isolated='2D'`` is valid: vacuum >= layer thickness + 2 density tails."""
    if not is_two_dimensional(atoms.pbc):
        return False
    return vacuum_along(atoms, 2) >= layer_thickness(atoms) + 2 * density_tail - 1e-6


def needs_padding(atoms: Atoms, vacuum: float, density_tail: float = DENSITY_TAIL) -> bool:
    """Whether some non-periodic axis has less vacuum than the frame requires."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all():
        return False
    if np.linalg.matrix_rank(atoms.cell.array) < 3:
        return True
    needed = required_vacuum(atoms, vacuum, density_tail)
    return any(vacuum_along(atoms, axis) < needed - 1e-6 for axis in np.flatnonzero(~pbc))


def pad_frame(atoms: Atoms, vacuum: float, density_tail: float = DENSITY_TAIL) -> Atoms:
    """The frame with at least the vacuum it requires on every non-periodic axis.

    Frames that already have it are returned as they are (a copy): more vacuum is never removed.
    """
    if not needs_padding(atoms, vacuum, density_tail):
        return atoms.copy()
    return pad_vacuum(atoms, required_vacuum(atoms, vacuum, density_tail))


def _full_cell(atoms: Atoms) -> np.ndarray:
    return complete_cell(atoms.cell.array, np.asarray(atoms.pbc, dtype=bool))


__all__ = (
    'DEFAULT_PROTOCOL',
    'DEFAULT_VACUUM',
    'DENSITY_TAIL',
    'QE_PROTOCOLS',
    'builder_overrides',
    'decide_settings',
    'is_two_dimensional',
    'layer_thickness',
    'max_cutoffs',
    'needs_padding',
    'pad_frame',
    'qe_protocol',
    'required_vacuum',
    'two_d_cutoff_valid',
    'unknown_override',
    'vacuum_along',
)
