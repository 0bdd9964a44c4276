"""Smoke sizes of the benchmark scripts: they run, write their JSON and PNG, and the figures hold.

The benchmarks themselves are not timed tests; these check that each script still works against
the package (an API change would otherwise only show when someone reruns a study), on sizes that
take seconds to a few minutes.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parent.parent / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))


def run_script(name: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, '-W', 'ignore', str(BENCHMARKS / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == 'PNG'
        pixels = np.asarray(image.convert('L'), dtype=float)
    assert pixels.std() > 5  # something was drawn


def test_cpu_between_interpolates_daemon_samples():
    from bench_workflow_overhead import cpu_between, stage_of

    samples = [(0.0, 0.0), (10.0, 5.0), (20.0, 5.0), (30.0, 11.0)]
    assert cpu_between(samples, 5.0, 25.0) == pytest.approx(2.5 + 3.0)
    assert cpu_between(samples, 10.0, 20.0) == 0.0
    assert stage_of('iteration_02_training') == (2, 'training')
    assert stage_of('augmentation') == (0, 'augmentation')


def test_iteration_windows_tile_the_run():
    from bench_workflow_overhead import cpu_between, iteration_windows

    windows = iteration_windows({2: 60.0, 1: 20.0}, run_start=0.0, run_end=100.0)
    assert windows == {0: (0.0, 20.0), 1: (20.0, 60.0), 2: (60.0, 100.0)}
    samples = [(0.0, 0.0), (50.0, 30.0), (100.0, 40.0)]
    per_window = [cpu_between(samples, *w) for w in windows.values()]
    assert sum(per_window) == pytest.approx(cpu_between(samples, 0.0, 100.0))


def test_labels_to_reach_and_summary():
    from bench_label_efficiency import labels_to_reach, summarise

    random = [{'n_labels': 8, 'force_rmse': 0.05}, {'n_labels': 16, 'force_rmse': 0.03}]
    fast = [{'n_labels': 8, 'force_rmse': 0.05}, {'n_labels': 12, 'force_rmse': 0.025}]
    slow = [{'n_labels': 8, 'force_rmse': 0.05}, {'n_labels': 16, 'force_rmse': 0.04}]
    assert labels_to_reach(fast, 0.03) == 12
    assert labels_to_reach(slow, 0.03) is None
    results = {'calibrated': {'0': fast}, 'uncalibrated': {'0': slow}}
    results |= {'top': {'0': fast}, 'random': {'0': random}}
    summary = summarise(results, 1)
    assert summary['calibrated']['mean_fraction_of_random_labels'] == pytest.approx(12 / 16)
    assert summary['uncalibrated']['mean_fraction_of_random_labels'] is None
    assert summary['random']['mean_fraction_of_random_labels'] == pytest.approx(1.0)


@pytest.mark.slow
def test_evaluation_benchmark_smoke(tmp_path):
    out = run_script(
        'bench_evaluation.py',
        *('--frames', '2', '--members', '2', '--models', 'tiny', '--dtypes', 'float64'),
        *('--batch-sizes', '1,2', '--repeats', '1', '--threads', '1'),
        *('--json', str(tmp_path / 'e.json'), '--png', str(tmp_path / 'e.png')),
        cwd=tmp_path,
    )
    rows = json.loads((tmp_path / 'e.json').read_text())['rows']
    assert {r['method'] for r in rows} == {'ase loop', 'inference'}
    assert all(r['frames_per_second'] > 0 for r in rows)
    # batched inference gives the ASE loop's numbers
    assert max(r['max_deviation'] for r in rows) < 1e-6
    assert_png(tmp_path / 'e.png')
    assert 'inference b=2' in out


#: members of different form, calibrated against the members' RMS error (the default is the
#: committee mean's error, so the two cases cover both kinds)
VARIED_MEMBERS = ('--vary-architecture', '--error', 'members')


@pytest.mark.slow
@pytest.mark.parametrize(
    ('options', 'n_calibration'),
    [
        ((), 2),
        (('--fit-on', 'labelled', '--extra-calibration', '3', *VARIED_MEMBERS), 6 + 3),
    ],
    ids=['held-out', 'labelled-extra-varied-members'],
)
def test_calibration_benchmark_smoke(tmp_path, options, n_calibration):
    run_script(
        'bench_calibration.py',
        '--smoke',
        *options,
        *('--json', str(tmp_path / 'c.json'), '--png', str(tmp_path / 'c.png')),
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / 'c.json').read_text())
    assert report['settings']['error'] == ('members' if options else 'committee_mean')
    (iteration,) = report['iterations']
    # the slope is fitted on the held-out fifth, or on every labelled frame plus the extra ones
    assert iteration['n_calibration'] == n_calibration
    committee = iteration['committees']['2']
    assert committee['slope'] > 0
    assert len(committee['test_delta_forces']) == report['test_frames']
    for row in committee['rates']:
        # counts add up to the test frames; rates are in [0, 1] or undefined
        assert row['tp'] + row['fp'] + row['fn'] + row['tn'] == report['test_frames']
        assert row['tpr'] is None or 0 <= row['tpr'] <= 1
    # the in-sample line is fitted on the test frames, and the truth counts are theirs
    eps = committee['test_eps_forces']
    assert committee['test_fit']['slope'] > 0
    for threshold, above in zip(
        report['settings']['thresholds'].split(','), committee['test_frames_above'], strict=True
    ):
        assert above == sum(e > float(threshold) for e in eps)
    # the exploration set is the in-distribution frames plus the unseen conditions' frames
    explored = committee['exploration']
    n_explored = report['test_frames'] + report['unseen_frames']
    assert report['unseen_frames'] > 0
    assert explored['eps_forces'][: report['test_frames']] == eps
    assert len(explored['delta_forces']) == n_explored
    for row in explored['rates']:
        assert row['tp'] + row['fp'] + row['fn'] + row['tn'] == n_explored
    # every (test set, ε_thr) case of the one committee falls in exactly one band
    bands = report['by_fraction_above']
    n_thresholds = len(report['settings']['thresholds'].split(','))
    assert sum(band['cases'] for band in bands) == 2 * n_thresholds
    assert all(0 <= band['both_at_target'] <= band['cases'] for band in bands)
    # every fitting method is scored on the same frames; none beats the best threshold
    per_criterion = report['by_fraction_above_per_criterion']
    assert per_criterion['least_squares'] == bands
    assert committee['methods']['least_squares']['slope'] == committee['slope']
    assert len(committee['calibration_eps_forces']) == iteration['n_calibration']
    for criterion in ('median_ratio', 'huber'):
        assert committee['methods'][criterion]['slope'] > 0
        for index, band in enumerate(per_criterion[criterion]):
            assert band['both_at_target'] <= per_criterion['ceiling'][index]['both_at_target']
    # a member's RMS error holds the spread δ (stored to 1e-6), the committee mean's need not
    if report['settings']['error'] == 'members':
        assert all(e >= d - 1e-6 for e, d in zip(eps, committee['test_delta_forces'], strict=True))
    # like for like: both kinds fitted on the same frames, whatever --error is, and scored against
    # the same truths: the positives (TP + FN) of a truth are the same for either fit
    study = committee['like_for_like']
    assert set(study['fits']) == {'members', 'committee_mean'}
    assert all(fit['slope'] > 0 for fit in study['fits'].values())
    sizes = {'in-distribution': report['test_frames'], 'exploration': n_explored}
    for truth, cases_per_frame in (('committee_mean', 1), ('member', 2)):
        for name, n_frames in sizes.items():
            rows = [study['fits'][kind]['rates'][truth][name] for kind in study['fits']]
            for by_members, by_mean in zip(*rows, strict=True):
                assert by_members['tp'] + by_members['fn'] == by_mean['tp'] + by_mean['fn']
                total = sum(by_mean[k] for k in ('tp', 'fp', 'fn', 'tn'))
                assert total == cases_per_frame * n_frames  # 2 members: 2 cases per frame
    # the committee mean's truth is the committee mean's error the legacy block scores
    if report['settings']['error'] == 'committee_mean':
        mean_rows = study['fits']['committee_mean']['rates']['committee_mean']['in-distribution']
        assert [r['tp'] for r in mean_rows] == [r['tp'] for r in committee['rates']]
    summary = report['like_for_like']
    for truth in ('committee_mean', 'member'):
        ceiling = summary[truth]['ceiling']['bands']
        for kind in ('members', 'committee_mean'):
            entry = summary[truth][kind]
            assert entry['cases'] == 2 * n_thresholds
            for band, best in zip(entry['bands'], ceiling, strict=True):
                assert band['both_at_target'] <= best['both_at_target']
    assert_png(tmp_path / 'c.png')
    assert_png(tmp_path / 'c_truths.png')


def test_best_threshold_is_the_ceiling_of_any_slope():
    from bench_calibration import best_threshold, rates_along_line

    rng = np.random.default_rng(3)
    error = rng.uniform(0.0, 0.1, 60)
    delta = 0.4 * error * rng.lognormal(0.0, 0.4, 60)
    best = best_threshold(delta, error, 0.05)
    assert 0 < best['tpr'] <= 1 and 0 < best['ppv'] <= 1
    assert best['tau_over_threshold'] == pytest.approx(best['tau'] / 0.05)
    # no slope does better on the same frames than the best threshold
    slopes = np.linspace(0.05, 1.5, 60)
    achieved = [
        min(r['tpr'] or 0, r['ppv'] or 0)
        for slope in slopes
        for r in rates_along_line(delta, error, slope, [0.05])
    ]
    assert max(achieved) <= min(best['tpr'], best['ppv']) + 1e-12
    # ties in δ are flagged together; no actual positive: no ceiling
    tied = best_threshold([0.1, 0.1, 0.05], [0.01, 0.05, 0.0], 0.03)
    assert (tied['tpr'], tied['ppv']) == (1.0, 0.5)
    assert best_threshold([0.1, 0.2], [0.01, 0.02], 0.03) is None


def test_member_training_sets_are_seeded_subsamples():
    from committee_oracle import member_training_sets

    train = list(range(20))
    assert member_training_sets(train, [1, 2], None) == [train, train]
    first, second = member_training_sets(train, [1, 2], 0.7)
    assert len(first) == len(second) == 14
    assert set(first) <= set(train) and len(set(first)) == 14  # drawn without replacement
    assert first != second  # members differ in data
    assert member_training_sets(train, [1, 2], 0.7) == [first, second]  # same seeds, same sets
    with pytest.raises(ValueError, match='subsample must lie in'):
        member_training_sets(train, [1], 1.5)


def test_member_architectures_vary_cutoff_then_width():
    from committee_oracle import VARIED_R_MAX, member_architectures

    same = member_architectures(3, 8, vary=False)
    assert same == [{'r_max': VARIED_R_MAX[0], 'channels': 8}] * 3
    varied = member_architectures(8, 8, vary=True)
    # the first 2 and 4 members (the sub-committees) already differ in cutoff
    assert len({shape['r_max'] for shape in varied[:2]}) == 2
    assert [shape['r_max'] for shape in varied[:4]] == list(VARIED_R_MAX)
    # the second group of four repeats the cutoffs at twice the width
    assert [shape['channels'] for shape in varied] == [8] * 4 + [16] * 4
    assert len({tuple(shape.values()) for shape in varied}) == 8


def test_calibration_benchmark_rejects_bad_options(tmp_path):
    for option, message in (
        (('--subsample', '0'), '--subsample must lie in'),
        (('--extra-calibration', '-1'), '--extra-calibration must be 0 or more'),
    ):
        result = subprocess.run(
            [sys.executable, str(BENCHMARKS / 'bench_calibration.py'), '--smoke', *option],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2
        assert message in result.stderr


def test_calibrated_top_takes_the_candidates_furthest_above_tau():
    from bench_label_efficiency import choose

    delta = np.array([0.001, 0.5, 0.02, 0.3, 0.04, 0.0])
    picked = choose('calibrated-top', np.arange(6), delta, 0.5, 0.03, 2, rng=None)
    assert sorted(picked.tolist()) == [1, 3]
    # fewer candidates above τ = 0.015 than the batch: all of them, nothing below τ
    picked = choose('calibrated-top', np.arange(6), delta, 0.5, 0.03, 5, rng=None)
    assert sorted(picked.tolist()) == [1, 2, 3, 4]


@pytest.mark.slow
def test_label_efficiency_benchmark_smoke(tmp_path):
    run_script(
        'bench_label_efficiency.py',
        *('--smoke', '--strategies', 'calibrated-top', '--error', 'members,committee_mean'),
        *('--json', str(tmp_path / 'l.json'), '--png', str(tmp_path / 'l.png')),
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / 'l.json').read_text())
    # random is always run: the summary measures every strategy against it; each calibrated
    # strategy runs once per error kind
    names = {'calibrated-top:members', 'calibrated-top:committee_mean', 'random'}
    assert set(report['results']) == names
    batch = report['settings']['batch']
    for name, curves in report['results'].items():
        curve = curves['0']
        assert curve[0]['n_labels'] == report['settings']['initial']
        if curve[0]['error'] == 'members':
            # fitted to the members' errors, which δ never exceeds: slope at most one
            assert all(0 < point['slope'] <= 1 for point in curve)
        for point in curve:  # scored against the same truths, whatever the fitted kind
            assert set(point['test_rates']) == {'committee_mean', 'member'}
        for before, after in itertools.pairwise(curve):
            added = after['n_labels'] - before['n_labels']
            if name == 'random':
                assert added == batch
            else:  # every candidate above τ up to the batch
                assert added == min(batch, before['n_candidates']) > 0
    # the kinds share the seed's first committee: the same test force RMSE at the start
    starts = {curves['0'][0]['force_rmse'] for curves in report['results'].values()}
    assert len(starts) == 1
    # one committee per run and later round at most: the first one is trained once for all
    assert report['committees_trained'] <= 1 + len(names) * report['settings']['rounds']
    assert set(report['summary']) == set(report['test_rates']) == names
    assert_png(tmp_path / 'l.png')


def test_label_efficiency_runs_calibrated_strategies_per_error_kind():
    from bench_label_efficiency import rate_summary, variant_name, variants

    kinds = ['members', 'committee_mean']
    runs = variants(['calibrated', 'random', 'calibrated-top'], kinds)
    assert runs == [
        ('calibrated', 'members'),
        ('calibrated', 'committee_mean'),
        ('random', 'members'),
        ('calibrated-top', 'members'),
        ('calibrated-top', 'committee_mean'),
    ]
    assert variant_name('calibrated', 'committee_mean', kinds) == 'calibrated:committee_mean'
    assert variant_name('random', 'members', kinds) == 'random'
    # one kind: the strategy's own name, as in the reports of earlier runs
    assert variant_name('calibrated', 'members', ['members']) == 'calibrated'
    rates = {'committee_mean': {'tpr': 1.0, 'ppv': 0.5}, 'member': {'tpr': None, 'ppv': 0.25}}
    curve = [{'test_rates': rates}, {'test_rates': rates | {'member': {'tpr': 0.5, 'ppv': 0.75}}}]
    summary = rate_summary({'calibrated': {'0': curve}, 'random': {'0': [{'n_labels': 10}]}})
    member = summary['calibrated']['member']
    assert member['tpr'] == {'mean': 0.5, 'min': 0.5, 'max': 0.5, 'undefined': 1}
    assert member['ppv']['mean'] == pytest.approx(0.5)
    assert summary['random']['member']['tpr']['mean'] is None  # an earlier report's curve


def test_truths_hold_no_disagreement():
    """The members' RMS error holds δ; the two truths are each member's and the mean's error."""
    from ase.calculators.emt import EMT
    from ase.calculators.lj import LennardJones
    from committee_oracle import concatenate_results, md_frames, predict, truth_pairs

    frames = md_frames(5, [(300.0, 1)])
    members = [EMT(), LennardJones(sigma=2.3, epsilon=0.4, rc=5.0)]
    result = predict(members, frames, 'members')
    mean_error = predict(members, frames)['eps_forces']
    delta, each = result['delta_forces'], result['eps_forces_each_member']
    assert each.shape == (2, len(frames))
    assert result['eps_forces_committee_mean'] == pytest.approx(mean_error)
    # bias-variance: the mean over members of a member's squared error is ε² + δ²
    assert np.mean(each**2, axis=0) == pytest.approx(mean_error**2 + delta**2)
    assert result['eps_forces'] == pytest.approx(np.hypot(mean_error, delta))
    # EMT is the oracle: member 0 has no error, so it is no proxy for the members' RMS
    assert each[0] == pytest.approx(0.0, abs=1e-9)
    pair_delta, pair_eps = truth_pairs(result, 'member')
    assert pair_delta.tolist() == [*delta, *delta] and pair_eps.tolist() == [*each[0], *each[1]]
    assert truth_pairs(result, 'committee_mean')[1] == pytest.approx(mean_error)
    with pytest.raises(ValueError, match='unknown truth'):
        truth_pairs(result, 'members')
    both = concatenate_results(result, result)
    assert both['eps_forces_each_member'].shape == (2, 2 * len(frames))
    assert both['delta_forces'].tolist() == [*delta, *delta]


def test_reference_curves_need_the_same_settings(tmp_path):
    from argparse import Namespace

    from bench_label_efficiency import COMPARABLE, reference_random_curves

    settings = dict.fromkeys(COMPARABLE, 1)
    curve = [{'n_labels': 10, 'force_rmse': 0.1}]
    path = tmp_path / 'earlier.json'
    path.write_text(json.dumps({'settings': settings, 'results': {'random': {'0': curve}}}))
    args = Namespace(reference=str(path), **settings)
    assert reference_random_curves(args, [0]) == {'0': curve}
    with pytest.raises(SystemExit, match='no random curve for seeds'):
        reference_random_curves(args, [0, 1])
    with pytest.raises(SystemExit, match=r"different settings \['epochs'\]"):
        reference_random_curves(Namespace(**{**vars(args), 'epochs': 2}), [0])
    # a report from before --vary-architecture existed was run with members of one form
    older = {k: v for k, v in settings.items() if k != 'vary_architecture'}
    path.write_text(json.dumps({'settings': older, 'results': {'random': {'0': curve}}}))
    same_form = Namespace(**{**vars(args), 'vary_architecture': False})
    assert reference_random_curves(same_form, [0]) == {'0': curve}
    with pytest.raises(SystemExit, match=r"different settings \['vary_architecture'\]"):
        reference_random_curves(Namespace(**{**vars(args), 'vary_architecture': True}), [0])


@pytest.mark.slow
def test_training_defaults_benchmark_smoke(tmp_path):
    """One epoch per recipe on 10 frames of the stored carbon campaign (2D frames included)."""
    from ase.io import read, write

    frames = read(Path(__file__).parents[1] / 'docs/benchmarks/carbon_campaign_32_frames.xyz', ':')
    write(tmp_path / 'frames.xyz', frames[:3] + frames[12:19], format='extxyz')  # bulk + 2D
    args = ('--dataset', 'frames.xyz', '--seeds', '0', '--epochs', '1')
    run_script(
        'bench_training_defaults.py',
        *args,
        *('--recipes', 'package,mace-default', '--json', 'r.json'),
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / 'r.json').read_text())
    assert [row['recipe'] for row in report['runs']] == ['package', 'mace-default']
    for row in report['runs']:
        # every error is a finite positive RMSE; the constant baseline is the same for both
        assert all(np.isfinite(row[k]) and row[k] > 0 for k in ('energy', 'forces'))
        assert row['constant_energy'] == report['runs'][0]['constant_energy']
