"""Parameter dataclasses: defaults, ranges, messages that name the parameter."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiida_trainspot.augmentation.params import (
    SECTIONS,
    AlloyParams,
    AugmentationParams,
    ClusterParams,
    ParameterError,
    RattleParams,
    SlabParams,
    StrainParams,
    SubstitutionParams,
    SupercellParams,
    VacancyParams,
    validate_parameters,
)


def test_defaults_follow_the_paper():
    params = AugmentationParams()
    assert params.rattle.fraction == 0.3
    assert (params.strain.max_compressive_strain, params.strain.max_tensile_strain) == (0.2, 0.6)
    assert params.vacancies.fraction_structures == 0.3
    assert params.vacancies.n_vacancies == 2
    assert params.clusters.distance == 1.5
    assert params.slabs.miller_indices == ((1, 1, 1), (1, 1, 0), (1, 0, 0))
    assert params.slabs.min_thickness == 10.0
    assert (params.supercells.min_width, params.supercells.max_atoms) == (18.0, 450)
    assert (params.substitutions.fraction_structures, params.substitutions.fraction_atoms) == (
        0.2,
        0.2,
    )
    assert params.vacuum == 15.0
    assert params.min_distance == 0.5


def test_every_augmentation_is_on_by_default_except_alloys():
    params = AugmentationParams()
    enabled = {name: getattr(params, name).enabled for name in SECTIONS}
    assert enabled.pop('alloys') is False
    assert all(enabled.values())


def test_params_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RattleParams().fraction = 0.5


@pytest.mark.parametrize(
    ('cls', 'kwargs', 'name'),
    [
        (RattleParams, {'fraction': -0.1}, 'rattle.fraction'),
        (RattleParams, {'fraction': 1.5}, 'rattle.fraction'),
        (RattleParams, {'fraction': 'big'}, 'rattle.fraction'),
        (StrainParams, {'max_compressive_strain': -0.1}, 'strain.max_compressive_strain'),
        (StrainParams, {'max_compressive_strain': 1.0}, 'strain.max_compressive_strain'),
        (StrainParams, {'max_tensile_strain': -0.2}, 'strain.max_tensile_strain'),
        (
            StrainParams,
            {'max_compressive_strain': 0.0, 'max_tensile_strain': 0.0},
            'strain.max_compressive_strain',
        ),
        (StrainParams, {'mode': 'shear'}, 'strain.mode'),
        (
            StrainParams,
            {'mode': 'anisotropic', 'max_compressive_strain': 0.5, 'max_shear_strain': 0.3},
            'strain.max_shear_strain',
        ),
        (VacancyParams, {'fraction_structures': -0.3}, 'vacancies.fraction_structures'),
        (VacancyParams, {'n_vacancies': 0}, 'vacancies.n_vacancies'),
        (VacancyParams, {'n_vacancies': 2.0}, 'vacancies.n_vacancies'),
        (ClusterParams, {'distance': 0.0}, 'clusters.distance'),
        (ClusterParams, {'max_atoms': 1}, 'clusters.max_atoms'),
        (ClusterParams, {'min_atoms': 5, 'max_atoms': 4}, 'clusters.max_atoms'),
        (ClusterParams, {'n_clusters': 0}, 'clusters.n_clusters'),
        (SlabParams, {'miller_indices': ((1, 1),)}, 'slabs.miller_indices'),
        (SlabParams, {'miller_indices': ((1.0, 1, 1),)}, 'slabs.miller_indices'),
        (SlabParams, {'miller_indices': ('111',)}, 'slabs.miller_indices'),
        (SlabParams, {'miller_indices': (1, 1, 1)}, 'slabs.miller_indices'),
        (SlabParams, {'miller_indices': ((0, 0, 0),)}, 'slabs.miller_indices'),
        (SlabParams, {'miller_indices': ((True, 0, 0),)}, 'slabs.miller_indices'),
        (SlabParams, {'miller_indices': ()}, 'slabs.miller_indices'),
        (SlabParams, {'min_thickness': -1.0}, 'slabs.min_thickness'),
        (SupercellParams, {'min_width': 0.0}, 'supercells.min_width'),
        (SupercellParams, {'max_atoms': 0}, 'supercells.max_atoms'),
        (SubstitutionParams, {'fraction_atoms': -0.2}, 'substitutions.fraction_atoms'),
        (SubstitutionParams, {'fraction_structures': 2}, 'substitutions.fraction_structures'),
        (AlloyParams, {'enabled': True}, 'alloys.alloy_species'),
        (AlloyParams, {'enabled': True, 'alloy_species': ['Mo']}, 'alloys.alloy_species'),
        (AlloyParams, {'alloy_species': ['Mo', 'Xx']}, 'alloys.alloy_species'),
        (AlloyParams, {'alloy_species': 'MoW'}, 'alloys.alloy_species'),
        (
            AlloyParams,
            {'alloy_species': ['Mo', 'W'], 'fixed_species': ['W']},
            'alloys.fixed_species',
        ),
        (
            AlloyParams,
            {'alloy_species': ['Mo', 'W'], 'compositions': [1.5]},
            'alloys.compositions',
        ),
        (
            AlloyParams,
            {'alloy_species': ['Mo', 'W', 'Nb'], 'compositions': [[0.5, 0.2, 0.2]]},
            'alloys.compositions',
        ),
        (
            AlloyParams,
            {'alloy_species': ['Mo', 'W', 'Nb'], 'compositions': [0.5]},
            'alloys.compositions',
        ),
        (AlloyParams, {'n_configs': 0}, 'alloys.n_configs'),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name.replace('.', r'\.')) as info:
        cls(**kwargs)
    assert isinstance(info.value, ParameterError)


@pytest.mark.parametrize(
    ('data', 'name'),
    [
        ({'vacuum': 0.0}, 'vacuum'),
        ({'vacuum': -5}, 'vacuum'),
        ({'min_distance': -0.1}, 'min_distance'),
        ({'n_configs_per_input': 0}, 'n_configs_per_input'),
        ({'max_retries': 0}, 'max_retries'),
        ({'clusters': {'distance': 0.3}}, 'clusters.distance'),
        ({'rattle': {'fraction': -1}}, 'rattle.fraction'),
        ({'rattle': {'amplitude': 0.1}}, 'rattle.amplitude'),
        ({'rattle': 0.3}, 'rattle'),
        ({'ratle': {}}, 'ratle'),
    ],
)
def test_top_level_and_dict_errors_name_the_parameter(data, name):
    messages = validate_parameters(data)
    assert messages
    assert any(message.startswith(name) for message in messages), messages
    with pytest.raises(ValueError, match=name):
        AugmentationParams.from_dict(data)


def test_validate_parameters_reports_every_problem_at_once():
    messages = validate_parameters(
        {
            'rattle': {'fraction': 2.0},
            'strain': {'max_compressive_strain': 1.2},
            'slabs': {'miller_indices': [[1, 1]]},
            'vacuum': -1,
        }
    )
    joined = '\n'.join(messages)
    for name in ('rattle.fraction', 'strain.max_compressive_strain', 'slabs.miller_indices'):
        assert name in joined
    assert any(message.startswith('vacuum') for message in messages)


def test_valid_parameters_give_no_messages():
    assert validate_parameters({}) == []
    assert validate_parameters(None) == []
    assert validate_parameters(AugmentationParams()) == []
    assert (
        validate_parameters(
            {
                'rattle': {'fraction': 0.1},
                'slabs': {'miller_indices': [[1, 1, 1], [2, 1, 0]]},
                'alloys': {'enabled': True, 'alloy_species': ['Mo', 'W'], 'compositions': [0.5]},
            }
        )
        == []
    )
    assert validate_parameters('nope') == ['augmentation parameters must be a mapping; got str']


def test_dict_round_trip_normalises_lists():
    data = {
        'n_configs_per_input': 4,
        'slabs': {'miller_indices': [[1, 0, 0]]},
        'alloys': {
            'enabled': True,
            'alloy_species': ['Cu', 'Au', 'Ag'],
            'compositions': [[0.5, 0.25, 0.25]],
        },
    }
    params = AugmentationParams.from_dict(data)
    assert params.slabs.miller_indices == ((1, 0, 0),)
    assert params.alloys.alloy_species == ('Cu', 'Au', 'Ag')
    assert params.alloys.compositions == ((0.5, 0.25, 0.25),)
    assert AugmentationParams.from_dict(params.to_dict()) == params


def test_binary_composition_as_single_fraction():
    params = AlloyParams(alloy_species=['Mo', 'W'], compositions=[0.25, (0.5, 0.5)])
    assert params.compositions == ((0.25, 0.75), (0.5, 0.5))


@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10))
def test_fraction_accepted_exactly_in_unit_interval(value):
    if 0.0 <= value <= 1.0:
        assert RattleParams(fraction=value).fraction == value
        assert SubstitutionParams(fraction_atoms=value).fraction_atoms == value
    else:
        with pytest.raises(ValueError, match=r'rattle\.fraction'):
            RattleParams(fraction=value)


@settings(max_examples=50, deadline=None)
@given(
    compressive=st.floats(-0.5, 1.5, allow_nan=False),
    tensile=st.floats(-0.5, 1.5, allow_nan=False),
)
def test_strain_range_must_be_a_nonempty_interval_of_positive_factors(compressive, tensile):
    valid = 0.0 <= compressive < 1.0 and tensile >= 0.0 and compressive + tensile > 0
    if valid:
        StrainParams(max_compressive_strain=compressive, max_tensile_strain=tensile)
    else:
        with pytest.raises(ValueError, match=r'strain\.max_'):
            StrainParams(max_compressive_strain=compressive, max_tensile_strain=tensile)
