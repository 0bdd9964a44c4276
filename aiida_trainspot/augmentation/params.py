"""Validated, immutable parameters of the dataset augmentations.

Each section is a frozen dataclass whose ``__post_init__`` checks every field and raises
:class:`ParameterError` (a ``ValueError``) whose messages name the parameter by its dotted path
(``rattle.fraction``), so that a WorkChain can report the offending input port at submission
instead of failing hours later inside a calculation.  Defaults follow the AiiDA-TrainsPot paper.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ase.data import chemical_symbols

__all__ = [
    'SECTIONS',
    'AlloyParams',
    'AugmentationParams',
    'ClusterParams',
    'IsolatedAtomsParams',
    'ParameterError',
    'RattleParams',
    'SlabParams',
    'StrainParams',
    'SubstitutionParams',
    'SupercellParams',
    'VacancyParams',
    'validate_parameters',
]

_VALID_SYMBOLS = frozenset(chemical_symbols[1:])
_COMPOSITION_TOLERANCE = 1e-6


class ParameterError(ValueError):
    """Invalid augmentation parameters; ``messages`` lists every problem found."""

    def __init__(self, messages: Sequence[str]):
        self.messages = list(messages)
        super().__init__('; '.join(self.messages))


# --------------------------------------------------------------------------- field checks


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_bool(errors: list[str], name: str, value: Any) -> None:
    if not isinstance(value, bool):
        errors.append(f'{name} must be a bool; got {value!r}')


def _check_real(
    errors: list[str],
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> bool:
    """Append a message naming ``name`` and its allowed range when ``value`` is outside it."""
    left = '(' if low_open else '['
    right = ')' if high_open else ']'
    allowed = f'{left}{"-inf" if low is None else low}, {"inf" if high is None else high}{right}'
    if not _is_real(value):
        errors.append(f'{name} must be a number in {allowed}; got {value!r}')
        return False
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        errors.append(f'{name} must be in {allowed}; got {value!r}')
        return False
    return True


def _check_int(errors: list[str], name: str, value: Any, low: int) -> bool:
    if not _is_int(value) or value < low:
        errors.append(f'{name} must be an integer >= {low}; got {value!r}')
        return False
    return True


def _set(obj: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass during ``__post_init__``."""
    object.__setattr__(obj, name, value)


def _raise_if(errors: list[str]) -> None:
    if errors:
        raise ParameterError(errors)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SupercellParams:
    """Replicate periodic inputs until every periodic perpendicular width >= ``min_width``."""

    section: ClassVar[str] = 'supercells'
    enabled: bool = True
    min_width: float = 18.0
    max_atoms: int = 450

    def __post_init__(self) -> None:
        errors: list[str] = []
        _check_bool(errors, f'{self.section}.enabled', self.enabled)
        _check_real(errors, f'{self.section}.min_width', self.min_width, 0.0, low_open=True)
        _check_int(errors, f'{self.section}.max_atoms', self.max_atoms, 1)
        _raise_if(errors)


@dataclass(frozen=True)
class RattleParams:
    """Displace each atom isotropically by up to ``fraction`` of its nearest-neighbour distance."""

    section: ClassVar[str] = 'rattle'
    enabled: bool = True
    fraction: float = 0.3

    def __post_init__(self) -> None:
        errors: list[str] = []
        _check_bool(errors, f'{self.section}.enabled', self.enabled)
        _check_real(errors, f'{self.section}.fraction', self.fraction, 0.0, 1.0)
        _raise_if(errors)


@dataclass(frozen=True)
class StrainParams:
    """Scale the periodic lattice by a factor in [1 - compressive, 1 + tensile].

    ``mode='anisotropic'`` draws instead a random symmetric strain tensor on the periodic
    directions: diagonal entries in [-compressive, +tensile], off-diagonal (shear) entries in
    [-max_shear_strain, +max_shear_strain].
    """

    section: ClassVar[str] = 'strain'
    MODES: ClassVar[tuple[str, ...]] = ('isotropic', 'anisotropic')
    enabled: bool = True
    max_compressive_strain: float = 0.2
    max_tensile_strain: float = 0.6
    mode: str = 'isotropic'
    max_shear_strain: float = 0.1

    def __post_init__(self) -> None:
        errors: list[str] = []
        name = self.section
        _check_bool(errors, f'{name}.enabled', self.enabled)
        compressive = self.max_compressive_strain
        tensile = self.max_tensile_strain
        compressive_ok = _check_real(
            errors, f'{name}.max_compressive_strain', compressive, 0.0, 1.0, high_open=True
        )
        tensile_ok = _check_real(errors, f'{name}.max_tensile_strain', tensile, 0.0)
        if compressive_ok and tensile_ok and compressive + tensile <= 0:
            errors.append(
                f'{name}.max_compressive_strain and {name}.max_tensile_strain leave an empty '
                'strain range [1 - max_compressive_strain, 1 + max_tensile_strain]; '
                'disable strain instead'
            )
        if self.mode not in self.MODES:
            errors.append(f'{name}.mode must be one of {list(self.MODES)}; got {self.mode!r}')
        shear_ok = _check_real(errors, f'{name}.max_shear_strain', self.max_shear_strain, 0.0, 0.5)
        if (
            self.mode == 'anisotropic'
            and compressive_ok
            and shear_ok
            and 1.0 - self.max_compressive_strain - 2.0 * self.max_shear_strain <= 0.0
        ):
            errors.append(
                f'{name}.max_shear_strain must satisfy 1 - max_compressive_strain - '
                f'2 * max_shear_strain > 0 (so that the cell cannot invert); '
                f'got {self.max_shear_strain!r}'
            )
        _raise_if(errors)


@dataclass(frozen=True)
class VacancyParams:
    """Remove ``n_vacancies`` atoms from a ``fraction_structures`` share of distorted frames."""

    section: ClassVar[str] = 'vacancies'
    enabled: bool = True
    fraction_structures: float = 0.3
    n_vacancies: int = 2

    def __post_init__(self) -> None:
        errors: list[str] = []
        _check_bool(errors, f'{self.section}.enabled', self.enabled)
        _check_real(
            errors, f'{self.section}.fraction_structures', self.fraction_structures, 0.0, 1.0
        )
        _check_int(errors, f'{self.section}.n_vacancies', self.n_vacancies, 1)
        _raise_if(errors)


@dataclass(frozen=True)
class ClusterParams:
    """Random non-periodic clusters grown atom by atom at distances in [d, 1.5 d]."""

    section: ClassVar[str] = 'clusters'
    enabled: bool = True
    n_clusters: int = 10
    min_atoms: int = 2
    max_atoms: int = 30
    distance: float = 1.5

    def __post_init__(self) -> None:
        errors: list[str] = []
        name = self.section
        _check_bool(errors, f'{name}.enabled', self.enabled)
        _check_int(errors, f'{name}.n_clusters', self.n_clusters, 1)
        min_ok = _check_int(errors, f'{name}.min_atoms', self.min_atoms, 2)
        max_ok = _check_int(errors, f'{name}.max_atoms', self.max_atoms, 2)
        if min_ok and max_ok and self.max_atoms < self.min_atoms:
            errors.append(
                f'{name}.max_atoms must be >= {name}.min_atoms ({self.min_atoms}); '
                f'got {self.max_atoms!r}'
            )
        _check_real(errors, f'{name}.distance', self.distance, 0.0, low_open=True)
        _raise_if(errors)


def _normalise_miller(index: Any) -> tuple[int, int, int] | None:
    """Return ``index`` as a tuple of three ints, or None when it is not of that form."""
    if isinstance(index, str | bytes) or not isinstance(index, Sequence) or len(index) != 3:
        return None
    if not all(_is_int(value) for value in index) or not any(index):
        return None
    return tuple(int(value) for value in index)  # type: ignore[return-value]


@dataclass(frozen=True)
class SlabParams:
    """Surface slabs of fully periodic inputs, at least ``min_thickness`` Å thick.

    Miller indices refer to the input's own cell vectors (the ``ase.build.surface`` convention);
    each must be a tuple (or list, as stored by AiiDA) of three integers, not all zero.
    """

    section: ClassVar[str] = 'slabs'
    enabled: bool = True
    miller_indices: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (1, 1, 0), (1, 0, 0))
    min_thickness: float = 10.0
    max_atoms: int = 450

    def __post_init__(self) -> None:
        errors: list[str] = []
        name = self.section
        _check_bool(errors, f'{name}.enabled', self.enabled)
        indices = self.miller_indices
        if isinstance(indices, str | bytes) or not isinstance(indices, Sequence) or not indices:
            errors.append(f'{name}.miller_indices must be a non-empty list of (h, k, l) tuples')
        else:
            normalised = [_normalise_miller(index) for index in indices]
            bad = [index for index, norm in zip(indices, normalised, strict=True) if norm is None]
            if bad:
                errors.append(
                    f'{name}.miller_indices entries must be tuples of 3 integers, not all zero; '
                    f'got {bad[0]!r}'
                )
            else:
                _set(self, 'miller_indices', tuple(normalised))
        _check_real(errors, f'{name}.min_thickness', self.min_thickness, 0.0, low_open=True)
        _check_int(errors, f'{name}.max_atoms', self.max_atoms, 1)
        _raise_if(errors)


@dataclass(frozen=True)
class IsolatedAtomsParams:
    """One isolated atom per species, in a cubic box of side ``vacuum``."""

    section: ClassVar[str] = 'isolated_atoms'
    enabled: bool = True

    def __post_init__(self) -> None:
        errors: list[str] = []
        _check_bool(errors, f'{self.section}.enabled', self.enabled)
        _raise_if(errors)


@dataclass(frozen=True)
class SubstitutionParams:
    """Swap species of ``fraction_atoms`` of the atoms in ``fraction_structures`` of frames."""

    section: ClassVar[str] = 'substitutions'
    enabled: bool = True
    fraction_structures: float = 0.2
    fraction_atoms: float = 0.2

    def __post_init__(self) -> None:
        errors: list[str] = []
        name = self.section
        _check_bool(errors, f'{name}.enabled', self.enabled)
        _check_real(errors, f'{name}.fraction_structures', self.fraction_structures, 0.0, 1.0)
        _check_real(errors, f'{name}.fraction_atoms', self.fraction_atoms, 0.0, 1.0)
        _raise_if(errors)


def _symbols(errors: list[str], name: str, value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str) or not isinstance(value, Sequence):
        errors.append(f'{name} must be a list of chemical symbols; got {value!r}')
        return None
    unknown = [symbol for symbol in value if symbol not in _VALID_SYMBOLS]
    if unknown:
        errors.append(f'{name} contains unknown chemical symbols {unknown!r}')
        return None
    if len(set(value)) != len(value):
        errors.append(f'{name} contains duplicates: {list(value)!r}')
        return None
    return tuple(value)


def _normalise_composition(entry: Any, n_species: int) -> tuple[float, ...] | None:
    """A composition as one fraction per alloy species, or None when malformed.

    With two species a bare number is accepted as the fraction of the first one.
    """
    if _is_real(entry):
        if n_species != 2 or not 0.0 <= entry <= 1.0:
            return None
        return (float(entry), 1.0 - float(entry))
    if isinstance(entry, str) or not isinstance(entry, Sequence) or len(entry) != n_species:
        return None
    if not all(_is_real(value) and value >= 0.0 for value in entry):
        return None
    if abs(sum(entry) - 1.0) > _COMPOSITION_TOLERANCE:
        return None
    return tuple(float(value) for value in entry)


@dataclass(frozen=True)
class AlloyParams:
    """Random mixing of ``alloy_species`` on the sites any of them occupies in the inputs.

    ``compositions``: for two species, each entry is the fraction of the first species (or a
    pair of fractions); for more, each entry lists one fraction per species, in the order of
    ``alloy_species``, summing to 1.  ``n_configs`` frames are made per input and per
    composition; without ``compositions``, each frame draws its composition uniformly (flat
    Dirichlet, i.e. uniform in [0, 1] for a binary).  ``fixed_species`` are never touched
    (atoms of species not in ``alloy_species`` never are either) and must not overlap it.
    """

    section: ClassVar[str] = 'alloys'
    enabled: bool = False
    alloy_species: tuple[str, ...] = ()
    fixed_species: tuple[str, ...] = ()
    compositions: tuple[tuple[float, ...], ...] | None = None
    n_configs: int = 10

    def __post_init__(self) -> None:
        errors: list[str] = []
        name = self.section
        _check_bool(errors, f'{name}.enabled', self.enabled)
        species = _symbols(errors, f'{name}.alloy_species', self.alloy_species)
        fixed = _symbols(errors, f'{name}.fixed_species', self.fixed_species)
        if species is not None:
            _set(self, 'alloy_species', species)
            if self.enabled and len(species) < 2:
                errors.append(
                    f'{name}.alloy_species must list at least 2 species when alloys are enabled; '
                    f'got {list(species)!r}'
                )
        if fixed is not None:
            _set(self, 'fixed_species', fixed)
            if species is not None and set(fixed) & set(species):
                errors.append(
                    f'{name}.fixed_species must not overlap {name}.alloy_species; '
                    f'both contain {sorted(set(fixed) & set(species))!r}'
                )
        if self.compositions is not None and species is not None and len(species) >= 2:
            self._normalise_compositions(errors, species)
        _check_int(errors, f'{name}.n_configs', self.n_configs, 1)
        _raise_if(errors)

    def _normalise_compositions(self, errors: list[str], species: tuple[str, ...]) -> None:
        name = f'{self.section}.compositions'
        entries = self.compositions
        if isinstance(entries, str) or not isinstance(entries, Sequence) or not entries:
            errors.append(f'{name} must be a non-empty list of compositions or None')
            return
        normalised = [_normalise_composition(entry, len(species)) for entry in entries]
        bad = [entry for entry, norm in zip(entries, normalised, strict=True) if norm is None]
        if bad:
            errors.append(
                f'{name} entries must be {len(species)} non-negative fractions summing to 1 '
                f'(or, for 2 species, one fraction in [0, 1]); got {bad[0]!r}'
            )
            return
        _set(self, 'compositions', tuple(normalised))


#: Section name -> parameter class, in the order the augmentations are applied.
SECTIONS: dict[str, type] = {
    'supercells': SupercellParams,
    'isolated_atoms': IsolatedAtomsParams,
    'rattle': RattleParams,
    'strain': StrainParams,
    'vacancies': VacancyParams,
    'clusters': ClusterParams,
    'slabs': SlabParams,
    'substitutions': SubstitutionParams,
    'alloys': AlloyParams,
}


@dataclass(frozen=True)
class AugmentationParams:
    """Everything :func:`~aiida_trainspot.augmentation.generators.augment` needs.

    Top-level settings apply to all augmentations: ``n_configs_per_input`` distorted
    (strained + rattled) frames per input, ``vacuum`` Å of empty space on every non-periodic
    axis, the ``min_distance`` floor (Å) on every emitted frame and the ``max_retries`` redraws
    allowed before giving up on it.
    """

    n_configs_per_input: int = 10
    vacuum: float = 15.0
    min_distance: float = 0.5
    max_retries: int = 100
    include_inputs: bool = True
    supercells: SupercellParams = field(default_factory=SupercellParams)
    isolated_atoms: IsolatedAtomsParams = field(default_factory=IsolatedAtomsParams)
    rattle: RattleParams = field(default_factory=RattleParams)
    strain: StrainParams = field(default_factory=StrainParams)
    vacancies: VacancyParams = field(default_factory=VacancyParams)
    clusters: ClusterParams = field(default_factory=ClusterParams)
    slabs: SlabParams = field(default_factory=SlabParams)
    substitutions: SubstitutionParams = field(default_factory=SubstitutionParams)
    alloys: AlloyParams = field(default_factory=AlloyParams)

    def __post_init__(self) -> None:
        errors = _top_level_errors(
            {name: getattr(self, name) for name in _TOP_LEVEL},
        )
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                errors.append(f'{name} must be a {cls.__name__}; got {getattr(self, name)!r}')
        if not errors:
            errors.extend(_cross_errors(self))
        _raise_if(errors)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None) -> AugmentationParams:
        """Build from nested plain data (e.g. an AiiDA ``Dict``); unknown keys are errors."""
        data = dict(data or {})
        errors = _unknown_key_errors(data)
        sections: dict[str, Any] = {}
        for name, section_cls in SECTIONS.items():
            value = data.get(name, {})
            if isinstance(value, section_cls):
                sections[name] = value
                continue
            try:
                sections[name] = _build_section(name, section_cls, value)
            except ParameterError as error:
                errors.extend(error.messages)
        _raise_if(errors)
        top = {name: data[name] for name in _TOP_LEVEL if name in data}
        return cls(**top, **sections)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data, the inverse of :meth:`from_dict` (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


_TOP_LEVEL = ('n_configs_per_input', 'vacuum', 'min_distance', 'max_retries', 'include_inputs')


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _top_level_errors(values: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    if 'n_configs_per_input' in values:
        _check_int(errors, 'n_configs_per_input', values['n_configs_per_input'], 1)
    if 'vacuum' in values:
        _check_real(errors, 'vacuum', values['vacuum'], 0.0, low_open=True)
    if 'min_distance' in values:
        _check_real(errors, 'min_distance', values['min_distance'], 0.0)
    if 'max_retries' in values:
        _check_int(errors, 'max_retries', values['max_retries'], 1)
    if 'include_inputs' in values:
        _check_bool(errors, 'include_inputs', values['include_inputs'])
    return errors


def _cross_errors(params: AugmentationParams) -> list[str]:
    """Constraints between sections, checked once each section is valid on its own."""
    errors: list[str] = []
    if params.clusters.enabled and params.clusters.distance < params.min_distance:
        errors.append(
            f'clusters.distance must be >= min_distance ({params.min_distance} Å), otherwise '
            f'every cluster violates the floor; got {params.clusters.distance!r}'
        )
    return errors


def _unknown_key_errors(data: Mapping[str, Any]) -> list[str]:
    known = set(_TOP_LEVEL) | set(SECTIONS)
    return [
        f'{key}: unknown augmentation parameter (known: {sorted(known)})'
        for key in data
        if key not in known
    ]


def _build_section(name: str, cls: type, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ParameterError([f'{name} must be a mapping of parameters; got {value!r}'])
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [key for key in value if key not in known]
    if unknown:
        raise ParameterError(
            [f'{name}.{key}: unknown parameter (known: {sorted(known)})' for key in unknown]
        )
    return cls(**value)


def validate_parameters(data: Mapping[str, Any] | AugmentationParams | None) -> list[str]:
    """Every problem with ``data`` as a readable message naming the parameter; [] when valid.

    Meant for a WorkChain input validator: all sections are checked, so the user sees every
    mistake at once rather than one per submission.
    """
    if isinstance(data, AugmentationParams):
        return []
    if data is not None and not isinstance(data, Mapping):
        return [f'augmentation parameters must be a mapping; got {type(data).__name__}']
    data = dict(data or {})
    errors = _unknown_key_errors(data)
    errors.extend(_top_level_errors({k: data[k] for k in _TOP_LEVEL if k in data}))
    for name, cls in SECTIONS.items():
        value = data.get(name, {})
        if isinstance(value, cls):
            continue
        try:
            _build_section(name, cls, value)
        except ParameterError as error:
            errors.extend(error.messages)
        except TypeError as error:  # pragma: no cover - defensive, mapping keys are checked
            errors.append(f'{name}: {error}')
    if not errors:
        try:
            AugmentationParams.from_dict(data)
        except ParameterError as error:
            errors.extend(error.messages)
    return errors
