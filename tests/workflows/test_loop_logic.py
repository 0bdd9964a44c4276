"""The loop's decisions without AiiDA: seeds, stopping, resume points, records."""

import pytest

from aiida_trainspot.workflows.loop import ResumePoint, decide, resume_point, stage_seed
from aiida_trainspot.workflows.records import (
    dataset_summary,
    iteration_record,
    stage_summaries,
    status_rows,
)


def test_stage_seeds_are_distinct_reproducible_and_independent():
    seeds = {(i, s): stage_seed(3, i, s) for i in range(1, 4) for s in ('training', 'selection')}
    assert len(set(seeds.values())) == len(seeds)
    assert stage_seed(3, 2, 'training') == seeds[(2, 'training')]
    assert stage_seed(4, 2, 'training') != seeds[(2, 'training')]
    assert all(0 <= s < 2**31 for s in seeds.values())
    with pytest.raises(ValueError, match='unknown stage'):
        stage_seed(0, 1, 'dreaming')


@pytest.mark.parametrize(
    ('kwargs', 'expected'),
    [
        ({'n_candidates': 0, 'iteration': 5}, ('converged', None)),
        ({'n_candidates': 3, 'iteration': 5}, ('max_iterations', None)),
        ({'n_candidates': 3, 'n_selected': 0}, (None, 'no_selectable_frames')),
        ({'n_candidates': 30, 'n_selected': 20, 'n_labels': 90}, ('max_labels', None)),
        ({'n_candidates': 30, 'n_selected': 10, 'n_labels': 90}, (None, None)),
    ],
)
def test_decide(kwargs, expected):
    arguments = {
        'iteration': 1,
        'max_iterations': 5,
        'n_candidates': 1,
        'n_selected': 1,
        'n_labels': 0,
        'max_labels': 100,
        **kwargs,
    }
    decision = decide(**arguments)
    assert (decision.stop_reason, decision.failure) == expected
    assert decision.goes_on == (expected == (None, None))


def test_resume_points():
    full = {'labelled', 'models', 'explored', 'record', 'selected'}
    assert resume_point({}, False) == ResumePoint(1, 'labelling', 0)
    assert resume_point({1: {'labelled'}}, False) == ResumePoint(1, 'training', 1)
    assert resume_point({1: {'labelled', 'models'}}, False) == ResumePoint(1, 'exploration', 1)
    two = {1: full, 2: {'labelled', 'models', 'explored'}}
    assert resume_point(two, False) == ResumePoint(2, 'evaluation', 2)
    assert resume_point({1: full}, False) == ResumePoint(2, 'labelling', 1)
    assert resume_point({1: full}, True) == ResumePoint(1, 'done', 1)
    # started at exploration with given models: no labelled checkpoint
    assert resume_point({1: {'explored'}}, False) == ResumePoint(1, 'evaluation', 1)


def metrics():
    entry = {
        'committee_rmse': 12.0,
        'member_rmse_mean': 13.0,
        'member_rmse_std': 1.0,
        'n_frames': 4,
    }
    return {'splits': {'all': {'energy': entry, 'forces': entry}, 'validation': {'forces': entry}}}


def test_iteration_record_and_status_rows():
    record = iteration_record(
        iteration=2,
        n_labels_total=30,
        dataset=dataset_summary(3, {'train': 2, 'validation': 1}, ['md', 'md', '']),
        stages=stage_summaries(
            {'n_frames': 10, 'n_labelled': 9, 'n_failed': 1},
            {'seeds': [1, 2, 3], 'n_trained': 2},
            None,
        ),
        metrics=metrics(),
        calibration={'slopes': {'forces': 0.5}, 'thresholds': {'forces': 0.05}},
        diagnostics={'at_thresholds': {'forces': {'tpr': 0.9, 'ppv': None}}, 'splits': ['all']},
        selection={'counts': {'frames': 40, 'candidates': 12, 'selected': 10}},
        stop_reason='max_iterations',
    )
    assert record['dataset']['by_generation_method'] == {'md': 2, 'unknown': 1}
    assert record['training'] == {'n_members': 2, 'n_failed': 1, 'seeds': [1, 2, 3]}
    assert record['exploration'] is None
    assert record['rmse']['validation']['forces']['committee'] == 12.0
    assert record['selection']['rejected'] == 0 and record['selection']['selected'] == 10
    assert record['calibration']['splits'] == ['all']
    (row,) = status_rows([record])
    assert row['failed'] == 1 and row['rmse_f'] == 12.0 and row['rmse_e'] is None
    assert row['stop'] == 'max_iterations'
    with pytest.raises(ValueError, match='unknown stop reason'):
        iteration_record(**{**_minimal(), 'stop_reason': 'bored'})


def _minimal():
    return {
        'iteration': 1,
        'n_labels_total': 0,
        'dataset': {},
        'stages': {},
        'metrics': {},
        'calibration': {},
        'diagnostics': {},
        'selection': {},
    }
