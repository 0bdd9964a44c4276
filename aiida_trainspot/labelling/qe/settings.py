"""The campaign's DFT settings from an aiida-pseudo family and aiida-quantumespresso's protocols.

The science (which cutoffs, which keys are per campaign) is in :mod:`.dft`; this module only
reads the family and the protocol file, so that the work chains, the dry run and the tests
decide the settings with the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiida import orm
from aiida.engine import calcfunction
from ase.data import chemical_symbols

from . import dft


def load_family(label: str):
    """The aiida-pseudo family labelled ``label``; ValueError when none is installed."""
    from aiida_pseudo.groups.family import PseudoPotentialFamily

    family = (
        orm.QueryBuilder().append(PseudoPotentialFamily, filters={'label': label}).first(flat=True)
    )
    if family is None:
        raise ValueError(f'no pseudopotential family labelled {label!r} is installed')
    return family


def missing_pseudos(label: str, species: Iterable[str]) -> str | None:
    """A message naming the species ``label`` lacks (or that it is not installed), else None."""
    try:
        family = load_family(label)
    except ValueError as exception:
        return str(exception)
    missing = sorted(set(species) - set(family.elements), key=chemical_symbols.index)
    if missing:
        return (
            f'pseudopotential family {label!r} has no pseudopotential for {missing} '
            f'(it covers {sorted(family.elements, key=chemical_symbols.index)})'
        )
    return None


def family_cutoffs(label: str, species: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Recommended (ecutwfc, ecutrho) in Ry of every species, from the family."""
    family = load_family(label)
    cutoffs = {}
    for element in sorted(set(species)):
        try:
            cutoffs[element] = family.get_recommended_cutoffs(elements=(element,), unit='Ry')
        except (AttributeError, ValueError) as exception:
            raise ValueError(
                f'pseudopotential family {label!r} recommends no cutoffs for {element}: '
                f'{exception}; give ecutwfc and ecutrho in qe.overrides.pw.parameters.SYSTEM'
            ) from None
    return cutoffs


def campaign_dft_settings(
    protocol: str,
    pseudo_family: str,
    species: Iterable[str],
    overrides: Mapping[str, Any] | None = None,
    spin_polarised: bool = False,
    vacuum: float = dft.DEFAULT_VACUUM,
) -> dict[str, Any]:
    """The DFT settings of every frame of a campaign containing ``species`` (plain data).

    :raises ValueError: unknown protocol, missing family or species, no cutoffs, bad overrides.
    """
    from aiida.plugins import WorkflowFactory

    name = dft.qe_protocol(protocol)
    species = sorted(set(species))
    message = missing_pseudos(pseudo_family, species)
    if message:
        raise ValueError(message)
    overrides = dict(overrides or {})
    system = overrides.get('pw', {}).get('parameters', {}).get('SYSTEM', {})
    given = 'ecutwfc' in system and 'ecutrho' in system
    cutoffs = {} if given else family_cutoffs(pseudo_family, species)
    protocol_inputs = WorkflowFactory('quantumespresso.pw.base').get_protocol_inputs(
        name, overrides
    )
    return dft.decide_settings(
        protocol_inputs,
        cutoffs,
        species,
        protocol=name,
        pseudo_family=pseudo_family,
        spin_polarised=spin_polarised,
        vacuum=vacuum,
    )


def settings_arguments(qe: Mapping[str, Any], species: Iterable[str]) -> dict[str, orm.Data]:
    """The inputs of :func:`decide_dft_settings` from a labelling ``qe`` namespace.

    Ports left out get the labelling stage's defaults, so that a stage, the campaign and the
    dry run decide the same settings from the same inputs.
    """
    defaults = {
        'protocol': orm.Str(dft.DEFAULT_PROTOCOL),
        'overrides': orm.Dict(),
        'spin_polarised': orm.Bool(False),
        'vacuum': orm.Float(dft.DEFAULT_VACUUM),
    }
    arguments = {name: qe.get(name, node) for name, node in defaults.items()}
    arguments['pseudo_family'] = qe['pseudo_family']
    arguments['species'] = orm.List(sorted(set(species)))
    return arguments


@calcfunction
def decide_dft_settings(
    protocol: orm.Str,
    pseudo_family: orm.Str,
    species: orm.List,
    overrides: orm.Dict,
    spin_polarised: orm.Bool,
    vacuum: orm.Float,
) -> orm.Dict:
    """The campaign's DFT settings as a node, so that provenance shows how they were chosen."""
    return orm.Dict(
        campaign_dft_settings(
            protocol.value,
            pseudo_family.value,
            species.get_list(),
            overrides.get_dict(),
            spin_polarised.value,
            vacuum.value,
        )
    )


SETTINGS_KEYS = frozenset(
    {
        'protocol',
        'pseudo_family',
        'species',
        'system',
        'spin_polarised',
        'kpoints_distance',
        'kpoints_force_parity',
        'meta_parameters',
        'vacuum',
        'density_tail',
    }
)


def check_settings(
    settings: Mapping[str, Any], species: Iterable[str], pseudo_family: str | None
) -> str | None:
    """What is wrong with given DFT settings for frames of ``species`` (None when nothing)."""
    missing_keys = sorted(SETTINGS_KEYS - set(settings))
    if missing_keys:
        return f'missing keys {missing_keys} (decide them with campaign_dft_settings)'
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if unknown:
        return f'unknown keys {unknown}; known: {sorted(SETTINGS_KEYS)}'
    uncovered = sorted(set(species) - set(settings['species']))
    if uncovered:
        return (
            f'decided for {settings["species"]}, but the frames also contain {uncovered}: '
            'a campaign decides its settings from every species it can contain'
        )
    if pseudo_family is not None and settings['pseudo_family'] != pseudo_family:
        return (
            f'decided with pseudopotential family {settings["pseudo_family"]!r}, '
            f'not {pseudo_family!r}'
        )
    return None


__all__ = (
    'campaign_dft_settings',
    'check_settings',
    'decide_dft_settings',
    'family_cutoffs',
    'load_family',
    'missing_pseudos',
    'settings_arguments',
)
