"""Calibration and selection calcfunctions on a synthetic evaluated dataset (known answers)."""

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from ase.build import bulk

from aiida_trainspot.data import PESData
from aiida_trainspot.evaluation.calibration import Calibration
from aiida_trainspot.evaluation.operations import calibrate_committee, select_for_labelling

SLOPES = {'energy': 0.4, 'forces': 0.25}


def evaluated_dataset(n_frames=120, seed=0, non_finite=None):
    """Frames with delta_* = a * eps_* (+ small noise), as an evaluation would write them.

    ``non_finite``: indices of frames flagged non-finite, whose δ and ε (from the members that
    were left) are made wild, so that using them would move the fit.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(n_frames):
        atoms = bulk('C', 'diamond', a=3.567)
        atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
        atoms.info['run_id'] = f'run-{index % 4}'
        atoms.info['step'] = index
        frames.append(atoms)
    dataset = PESData.from_ase(frames)
    columns = {}
    for name, slope in SLOPES.items():
        scale = 1e-3 if name == 'energy' else 0.1
        eps = rng.uniform(0, 3 * scale, n_frames)
        columns[f'eps_{name}'] = eps
        columns[f'delta_{name}'] = slope * eps * (1 + rng.normal(0, 0.02, n_frames))
    if non_finite is not None:
        flags = np.zeros(n_frames, dtype=bool)
        flags[list(non_finite)] = True
        columns['non_finite'] = flags
        for name in SLOPES:
            columns[f'delta_{name}'] = np.where(flags, 0.0, columns[f'delta_{name}'])
            columns[f'eps_{name}'] = np.where(
                flags, 50 * columns[f'eps_{name}'], columns[f'eps_{name}']
            )
    forces_mean = rng.normal(0, 0.5, (dataset.base.attributes.get('n_atoms'), 3))
    forces_mean[:2] = [200.0, 0, 0]  # frame 0: exploding forces, an unphysical frame
    return dataset.with_columns(np.arange(n_frames), columns, {'forces_mean': forces_mean})


def test_calibration_recovers_slopes_with_provenance():
    dataset = evaluated_dataset()
    thresholds = orm.Dict({'energy': 1e-3, 'forces': 0.1})
    outputs = calibrate_committee(dataset, thresholds, orm.Dict({'error': 'committee_mean'}))
    calibration = Calibration.from_dict(outputs['calibration'].get_dict())
    assert calibration.error == 'committee_mean'
    for name, slope in SLOPES.items():
        assert calibration.slopes[name] == pytest.approx(slope, rel=0.05)
        assert calibration.thresholds[name] == pytest.approx(slope * thresholds[name], rel=0.05)
    report = outputs['diagnostics'].get_dict()
    assert set(report['at_thresholds']) == set(SLOPES)
    assert 0.8 <= report['at_thresholds']['forces']['tpr'] <= 1.0
    creator = outputs['calibration'].base.links.get_incoming(link_type=LinkType.CREATE).one().node
    assert isinstance(creator, orm.CalcFunctionNode)
    assert dataset.pk in {link.node.pk for link in creator.base.links.get_incoming().all()}


def test_calibration_against_member_errors_fits_and_scores_them():
    dataset = evaluated_dataset()
    thresholds = orm.Dict({'energy': 1e-3, 'forces': 0.1})
    outputs = calibrate_committee(dataset, thresholds, orm.Dict({'error': 'members'}))
    calibration = Calibration.from_dict(outputs['calibration'].get_dict())
    assert calibration.error == 'members'
    delta = dataset.get_column('delta_forces')[0]
    members = np.hypot(dataset.get_column('eps_forces')[0], delta)
    slope = float(delta @ members / (members @ members))
    assert calibration.slopes['forces'] == pytest.approx(slope, rel=1e-9)
    tau = calibration.thresholds['forces']
    positives, flagged = members > 0.1, delta > tau
    expected_tpr = (positives & flagged).sum() / positives.sum()
    report = outputs['diagnostics'].get_dict()
    assert report['at_thresholds']['forces']['tpr'] == pytest.approx(expected_tpr)
    two_frames = dataset.subset([0, 1])
    previous = orm.Dict(Calibration({'forces': 0.25}, error='committee_mean').to_dict())
    mean_settings = orm.Dict({'error': 'committee_mean'})
    reused = calibrate_committee(two_frames, thresholds, mean_settings, previous=previous)
    assert reused['calibration']['reused_previous'] == {'forces': True}
    with pytest.raises(ValueError, match='no property'):  # a mean-error slope is not lent
        calibrate_committee(
            two_frames, thresholds, orm.Dict({'error': 'members'}), previous=previous
        )


def test_selection_caps_seeds_and_rejects_unphysical():
    dataset = evaluated_dataset()
    calibration = calibrate_committee(
        dataset, orm.Dict({'energy': 1e-3, 'forces': 0.1}), orm.Dict({})
    )
    settings = orm.Dict({'max_selected': 10, 'min_displacement': 0.0})
    first = select_for_labelling(dataset, calibration['calibration'], settings, orm.Int(1))
    again = select_for_labelling(dataset, calibration['calibration'], settings, orm.Int(1))
    other = select_for_labelling(dataset, calibration['calibration'], settings, orm.Int(2))
    report = first['report'].get_dict()
    assert len(first['selected']) == 10
    assert report['selected'] == again['report']['selected']
    assert report['selected'] != other['report']['selected']
    assert report['counts']['candidates'] > 10
    assert '0' in report['rejected']  # the exploding frame is rejected, not labelled
    assert 0 not in report['selected']
    assert len(first['rejected']) == len(report['rejected'])


def test_selection_by_disagreement_takes_the_frames_furthest_above_tau():
    dataset = evaluated_dataset()
    outputs = calibrate_committee(dataset, orm.Dict({'energy': 1e-3, 'forces': 0.1}), orm.Dict({}))
    taus = Calibration.from_dict(outputs['calibration'].get_dict()).thresholds
    settings = orm.Dict({'max_selected': 10, 'min_displacement': 0.0, 'cap_order': 'disagreement'})
    first = select_for_labelling(dataset, outputs['calibration'], settings, orm.Int(1))
    other = select_for_labelling(dataset, outputs['calibration'], settings, orm.Int(2))
    report = first['report'].get_dict()
    # the ten trusted candidates with the largest max(δ/τ), whatever the seed
    delta = {name: dataset.get_column(f'delta_{name}')[0] for name in taus}
    excess = np.maximum(*(delta[name] / tau for name, tau in taus.items()))
    rejected = {int(i) for i in report['rejected']}
    trusted = [i for i in np.argsort(-excess, kind='stable') if i not in rejected]
    assert sorted(report['selected']) == sorted(int(i) for i in trusted[:10])
    assert report['selected'] == other['report']['selected']
    assert report['counts']['candidates'] > 10


FLAGGED = [3, 17, 42, 43, 90]


def test_calibration_ignores_frames_flagged_non_finite():
    dataset = evaluated_dataset(non_finite=FLAGGED)
    thresholds = orm.Dict({'energy': 1e-3, 'forces': 0.1})
    settings = orm.Dict({'error': 'committee_mean'})
    outputs = calibrate_committee(dataset, thresholds, settings)
    kept = [i for i in range(len(dataset)) if i not in FLAGGED]
    reference = calibrate_committee(dataset.subset(kept), thresholds, settings)
    calibration = outputs['calibration'].get_dict()
    for name in SLOPES:
        # the fit equals the fit without those frames (with them it would be far off)
        assert calibration['slopes'][name] == pytest.approx(
            reference['calibration']['slopes'][name], rel=1e-12
        )
        assert calibration['slopes'][name] == pytest.approx(SLOPES[name], rel=0.05)
        assert calibration['n_points'][name] == len(kept)
    report = outputs['diagnostics'].get_dict()
    assert report['n_non_finite'] == len(FLAGGED)
    assert report['n_frames'] == len(kept)
    assert report['at_thresholds']['forces']['n'] == len(kept)
    # held-out splits: the flagged frames are not counted as labelled ones either
    split = np.array(['validation' if i in FLAGGED else 'train' for i in range(len(dataset))])
    with_split = dataset.with_columns(np.arange(len(dataset)), {'split': split})
    fallback = calibrate_committee(
        with_split, thresholds, orm.Dict({'error': 'committee_mean', 'splits': ['validation']})
    )
    assert fallback['diagnostics']['splits'] == ['all']
    assert fallback['diagnostics']['n_frames'] == len(kept)


def test_selection_takes_frames_flagged_non_finite():
    dataset = evaluated_dataset(non_finite=FLAGGED)
    calibration = orm.Dict(Calibration(SLOPES).to_dict())
    settings = orm.Dict({'max_selected': 1000, 'min_displacement': 0.0})
    outputs = select_for_labelling(dataset, calibration, settings, orm.Int(1))
    report = outputs['report'].get_dict()
    assert report['non_finite'] == FLAGGED  # δ = 0: candidates only for the flag
    assert set(FLAGGED) <= set(report['candidates']) and set(FLAGGED) <= set(report['selected'])
    assert report['counts']['non_finite'] == report['counts']['selected_non_finite'] == 5
    capped = orm.Dict({'max_selected': 5, 'min_displacement': 0.0, 'cap_order': 'disagreement'})
    first = select_for_labelling(dataset, calibration, capped, orm.Int(1))
    assert first['report']['selected'] == FLAGGED
    # a dataset evaluated before the flag existed: no column, nothing flagged
    plain = select_for_labelling(evaluated_dataset(), calibration, settings, orm.Int(1))
    assert plain['report']['non_finite'] == [] and plain['report']['counts']['non_finite'] == 0


#: ``select_for_labelling`` on ``evaluated_dataset(non_finite=FLAGGED)``, ``max_selected`` 10,
#: ``min_displacement`` 0 and seed 3, by the code before the strategy registry (commit 8c7433b).
BEFORE_REGISTRY = {
    'random': [6, 10, 11, 20, 21, 26, 67, 86, 89, 99],
    'disagreement': [3, 6, 17, 23, 42, 43, 51, 60, 73, 90],
}


@pytest.mark.parametrize(('cap_order', 'strategy'), [('random', 'paper'), ('disagreement',) * 2])
def test_selection_strategies_select_what_the_cap_selected_before(cap_order, strategy):
    dataset = evaluated_dataset(non_finite=FLAGGED)
    outputs = calibrate_committee(dataset, orm.Dict({'energy': 1e-3, 'forces': 0.1}), orm.Dict({}))
    reports = []
    for key, value in (('cap_order', cap_order), ('strategy', strategy)):
        settings = orm.Dict({'max_selected': 10, 'min_displacement': 0.0, key: value})
        selection = select_for_labelling(dataset, outputs['calibration'], settings, orm.Int(3))
        reports.append(selection['report'].get_dict())
    assert reports[0] == reports[1]
    assert reports[0]['selected'] == BEFORE_REGISTRY[cap_order]
    assert reports[0]['strategy'] == strategy


def test_selection_by_a_registered_strategy():
    from aiida_trainspot.evaluation.selection import STRATEGIES, register_strategy

    def first_n(selection):  # a toy strategy: the lowest frame indices of the pool
        return selection.pool[: selection.budget], 'first'

    register_strategy('first_n', first_n)
    try:
        dataset = evaluated_dataset()
        calibration = orm.Dict(Calibration(SLOPES).to_dict())
        settings = orm.Dict({'max_selected': 4, 'min_displacement': 0.0, 'strategy': 'first_n'})
        outputs = select_for_labelling(dataset, calibration, settings, orm.Int(1))
    finally:
        STRATEGIES.pop('first_n')
    report = outputs['report'].get_dict()
    rejected = {int(i) for i in report['rejected']}
    pool = [i for i in report['candidates'] if i not in rejected]
    assert report['strategy'] == 'first_n' and report['selected'] == pool[:4]
    assert report['selection_reasons'] == {str(i): 'first' for i in pool[:4]}
    assert len(outputs['selected']) == 4 and report['counts']['capped'] == len(pool) - 4


def test_selection_strategy_is_checked_at_submission():
    from aiida_trainspot.workflows.inputs import validate_selection

    assert validate_selection({'strategy': 'disagreement'}) is None
    assert validate_selection({'cap_order': 'disagreement'}) is None
    message = validate_selection({'strategy': 'band'})
    assert message.startswith('selection: unknown selection strategy') and "'paper'" in message
    assert 'cap_order' in validate_selection({'cap_order': 'random', 'strategy': 'disagreement'})
    assert 'cap_order' in validate_selection({'cap_order': 'largest'})
