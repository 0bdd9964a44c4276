"""TrainsPotWorkChain end to end with real codes: ASE oracle, MACE, metatrain, pw.x, restarts."""

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

from .conftest import carbon_structures

FAST_OVERRIDES = {
    'max_iterations': 2,
    'exploration': {'n_structures': 2, 'protocol': {'steps': 60, 'sample_interval': 10}},
    'training': {'committee_size': 2},
}


def tersoff_builder(codes, tersoff_file, overrides=None, seed=3):
    builder = TrainsPotWorkChain.get_builder_from_protocol(
        codes,
        carbon_structures(),
        protocol='fast',
        overrides={**FAST_OVERRIDES, 'seed': seed, **(overrides or {})},
        ase_calculator={'name': 'tersoff'},
        ase_parameter_file=tersoff_file,
    )
    return builder


def check_consistent(node, results):
    """The dataset holds exactly the labelled frames; one record per iteration."""
    dataset = results['dataset']
    attributes = dataset.base.attributes
    assert attributes.get('n_labelled_energy') == len(dataset)
    assert attributes.get('n_labelled_forces') == len(dataset)
    iterations = results['iterations']
    records = [iterations[k]['record'].get_dict() for k in sorted(iterations)]
    assert [r['iteration'] for r in records] == list(range(1, len(records) + 1))
    assert records[-1]['dataset']['n_frames'] == len(dataset)
    summary = results['summary'].get_dict()
    assert summary['iterations'] == len(records)
    assert summary['stop_reason'] == records[-1]['stop_reason']
    labelled_so_far = sum(
        iterations[k]['labelling_summary']['n_labelled']
        for k in iterations
        if 'labelling_summary' in iterations[k]
    )
    assert labelled_so_far == len(dataset)
    if 'pending' in results:
        assert summary['stop_reason'] in ('max_iterations', 'max_labels')
        assert len(results['pending']) == records[-1]['selection']['selected']
        # pending frames were never labelled, and carry no prediction columns
        assert 'delta_forces' not in results['pending'].column_names
    return records


@pytest.mark.slow
def test_fast_loop_with_tersoff_oracle(loop_codes, tersoff_file):
    builder = tersoff_builder(loop_codes, tersoff_file)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    records = check_consistent(node, results)
    assert len(records) == 2
    assert sorted(results['models']) == ['member_0', 'member_1']
    first, second = records
    assert first['labelling']['n_labelled'] > 0
    assert second['dataset']['n_frames'] > first['dataset']['n_frames']
    assert 'md' in second['dataset']['by_generation_method']
    assert second['n_labels_total'] == first['n_labels_total'] + first['selection']['selected']
    for record in records:
        assert record['calibration']['slopes']['forces'] > 0
        assert np.isfinite(record['rmse']['all']['forces']['committee'])
