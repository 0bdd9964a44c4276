"""Campaign figures (aiida_trainspot.plots) on synthetic records and a synthetic evaluation.

Set ``TRAINSPOT_PLOT_DIR`` to keep the PNGs (e.g. to look at them); by default they go to
pytest's temporary folder.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aiida_trainspot import plots
from aiida_trainspot.evaluation.calibration import Calibration, classification_rates
from aiida_trainspot.workflows.records import dataset_summary, iteration_record, stage_summaries


@pytest.fixture
def plot_dir(tmp_path, request):
    folder = os.environ.get('TRAINSPOT_PLOT_DIR')
    if not folder:
        return tmp_path
    path = os.path.join(folder, request.node.name.replace('[', '-').replace(']', ''))
    os.makedirs(path, exist_ok=True)
    return __import__('pathlib').Path(path)


def assert_png(path, min_width=300):
    assert path.is_file()
    assert path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == 'PNG'
        image.verify()
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= 200
        pixels = np.asarray(image.convert('L'), dtype=float)
    assert pixels.std() > 5  # not a blank canvas


# ----------------------------------------------------------------------------- records


def metrics_entry(committee, mean, std, n_frames=10):
    return {
        'committee_rmse': committee,
        'member_rmse_mean': mean,
        'member_rmse_std': std,
        'n_frames': n_frames,
    }


def make_record(iteration, *, with_test=True, with_stress=True, methods=None, selected=5):
    scale = 1.0 / iteration
    splits = {}
    for split, factor in (('train', 0.6), ('validation', 1.0), ('test', 1.1), ('all', 0.8)):
        if split == 'test' and not with_test:
            continue
        entry = {
            'energy': metrics_entry(8 * scale * factor, 9 * scale * factor, 1.2 * scale),
            'forces': metrics_entry(150 * scale * factor, 170 * scale * factor, 15 * scale),
        }
        if with_stress:
            entry['stress'] = metrics_entry(3 * scale * factor, 3.4 * scale * factor, None)
        splits[split] = entry
    methods = methods or ['rattle'] * (10 * iteration) + ['md'] * (6 * (iteration - 1))
    n_frames = len(methods)
    split_counts = {'train': n_frames - 4, 'validation': 2, 'test': 2 if with_test else 0}
    return iteration_record(
        iteration=iteration,
        n_labels_total=n_frames,
        dataset=dataset_summary(n_frames, split_counts, methods),
        stages=stage_summaries(
            {'n_frames': 6, 'n_labelled': 6, 'n_failed': 0},
            {'seeds': [1, 2, 3], 'n_trained': 3},
            {'n_frames': 40, 'failed_jobs': {}},
        ),
        metrics={'splits': splits},
        calibration={
            'slopes': {'energy': 0.5, 'forces': 0.3},
            'thresholds': {'energy': 5e-4, 'forces': 0.03},
            'error_thresholds': {'energy': 1e-3, 'forces': 0.1},
        },
        diagnostics={'at_thresholds': {'forces': {'tpr': 0.8, 'ppv': None}}},
        selection={'counts': {'frames': 40, 'candidates': 12, 'selected': selected}},
    )


@pytest.fixture
def three_records():
    records = [make_record(1), make_record(2, with_test=False), make_record(3)]
    # holes a campaign can leave: a missing member spread, a None committee RMSE
    records[2]['rmse']['validation']['energy']['member_std'] = None
    records[0]['rmse']['train']['forces']['committee'] = None
    records[1]['selection']['selected'] = 0
    return records


def test_records_have_the_documented_keys(three_records):
    record = three_records[0]
    assert set(record['rmse']) == {'train', 'validation', 'test', 'all'}
    assert record['dataset']['by_generation_method'] == {'rattle': 10}
    assert three_records[2]['dataset']['by_generation_method'] == {'md': 12, 'rattle': 30}


def test_rmse_history_three_iterations(three_records, plot_dir):
    path = plots.plot_rmse_history(three_records[::-1], plot_dir / 'rmse.png')
    assert path == plot_dir / 'rmse.png'
    assert_png(path, min_width=3 * 400)  # three panels


def test_rmse_history_one_iteration_without_stress(plot_dir):
    record = make_record(1, with_test=False, with_stress=False)
    path = plots.plot_rmse_history([record], plot_dir / 'rmse.png')
    assert_png(path)
    with Image.open(path) as image:
        assert image.width < 3 * 400  # the stress panel is left out


def test_rmse_history_without_values(plot_dir):
    record = make_record(1)
    record['rmse'] = {}
    assert_png(plots.plot_rmse_history([record], plot_dir / 'rmse.png'), min_width=200)
    assert_png(plots.plot_rmse_history([], plot_dir / 'empty.png'), min_width=200)


def test_composition(three_records, plot_dir):
    assert_png(plots.plot_composition(three_records, plot_dir / 'composition.png'))
    single = plots.plot_composition([three_records[0]], plot_dir / 'composition-1.png')
    assert_png(single)
    record = make_record(1)
    record['dataset']['by_generation_method'] = {}
    record['selection'] = {}
    assert_png(plots.plot_composition([record], plot_dir / 'composition-empty.png'))


# ----------------------------------------------------------------------------- predictions


def make_predictions(frames, *, splits=('train', 'validation', 'test'), unlabelled=(), seed=3):
    """A PESData of ``frames`` with a split and the columns an evaluation writes (noisy labels)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_trainspot.data import PESData

    rng = np.random.default_rng(seed)
    copies = []
    for index, atoms in enumerate(frames):
        copy = atoms.copy()
        if index not in unlabelled:
            copy.calc = SinglePointCalculator(copy, **atoms.calc.results)
        copies.append(copy)
    dataset = PESData.from_ase(copies)
    n = len(dataset)
    n_atoms = dataset.n_atoms_per_frame()
    columns = dataset.get_columns(['energy', 'forces', 'stress'])
    energy = np.where(columns.mask('energy'), columns.frame['energy'], -7.0 * n_atoms)
    forces = np.nan_to_num(columns.atom['forces'])
    stress = np.nan_to_num(columns.frame['stress'])
    members = 3
    energy_members = energy[:, None] + rng.normal(0, 0.01, (n, members)) * n_atoms[:, None]
    forces_members = forces[:, None, :] + rng.normal(0, 0.08, (len(forces), members, 3))
    stress_members = stress[:, None, :] + rng.normal(0, 2e-3, (n, members, 6))
    energy_mean = energy_members.mean(axis=1)
    forces_mean = forces_members.mean(axis=1)
    stress_mean = stress_members.mean(axis=1)
    eps_energy = np.abs(energy_mean - energy) / n_atoms
    eps_forces = np.sqrt(
        np.add.reduceat(
            ((forces_mean - forces) ** 2).sum(axis=1), np.r_[0, np.cumsum(n_atoms)[:-1]]
        )
        / (3 * n_atoms)
    )
    eps_stress = np.sqrt(((stress_mean - stress) ** 2).mean(axis=1))
    frame_columns = {
        'split': np.array([splits[i % len(splits)] for i in range(n)], dtype=object),
        'energy_members': energy_members,
        'energy_mean': energy_mean,
        'stress_mean': stress_mean,
        'delta_energy': energy_members.std(axis=1) / n_atoms,
        'delta_forces': 0.4 * eps_forces * rng.lognormal(0, 0.3, n),
        'delta_stress': stress_members.std(axis=1).mean(axis=1),
        'eps_energy': eps_energy,
        'eps_forces': eps_forces,
        'eps_stress': eps_stress,
    }
    labelled = np.array([i not in unlabelled for i in range(n)])
    present = {f'eps_{p}': labelled for p in ('energy', 'forces', 'stress')}
    return dataset.with_columns(
        np.arange(n),
        frame_columns,
        {'forces_mean': forces_mean, 'forces_members': forces_members},
        present=present,
    )


@pytest.fixture(scope='module')
def predictions(labelled_carbon_frames):
    return make_predictions(labelled_carbon_frames)


def test_predictions_fixture_has_the_evaluation_columns(predictions):
    names = set(predictions.column_names)
    assert {'energy_mean', 'forces_mean', 'stress_mean', 'delta_forces', 'eps_forces'} <= names
    assert predictions.base.attributes.get('split_counts')['test'] == 10


def test_parity(predictions, plot_dir):
    path = plots.plot_parity(predictions, plot_dir / 'parity.png')
    assert_png(path, min_width=3 * 400)


def test_parity_without_test_split_and_missing_labels(labelled_carbon_frames, plot_dir):
    dataset = make_predictions(
        labelled_carbon_frames[:8], splits=('train', 'validation'), unlabelled=(1, 4)
    )
    assert dataset.base.attributes.get('split_counts')['test'] == 0
    assert dataset.base.attributes.get('n_labelled')['energy'] == 6
    assert_png(plots.plot_parity(dataset, plot_dir / 'parity.png'))
    assert_png(plots.plot_calibration(dataset, make_record(1)['calibration'], plot_dir / 'cal.png'))


def test_parity_without_predictions(labelled_carbon_frames, plot_dir):
    from aiida_trainspot.data import PESData

    dataset = PESData.from_ase(labelled_carbon_frames[:3])
    assert_png(plots.plot_parity(dataset, plot_dir / 'parity.png'), min_width=200)
    assert_png(plots.plot_calibration(dataset, None, plot_dir / 'cal.png'), min_width=200)


@pytest.mark.parametrize('kind', ['object', 'dict', 'record', 'none', 'members'])
def test_calibration(predictions, plot_dir, kind):
    calibration = Calibration(
        {'energy': 0.5, 'forces': 0.4, 'stress': 0.8},
        {'energy': 5e-3, 'forces': 0.05, 'stress': 2e-3},
    )
    given = {
        'members': Calibration(calibration.slopes, calibration.error_thresholds, error='members'),
        'object': calibration,
        'dict': calibration.to_dict(),
        'record': make_record(1)['calibration'],  # no stress calibration
        'none': None,
    }[kind]
    path = plots.plot_calibration(predictions, given, plot_dir / f'calibration-{kind}.png')
    assert_png(path, min_width=3 * 400)


def test_calibration_with_diagnostics_and_all_frames_in_training(predictions, plot_dir):
    calibration = Calibration({'forces': 0.4}, {'forces': 0.05})
    diagnostics = {'splits': ['train'], 'at_thresholds': {'forces': {'tpr': 1.0, 'ppv': 0.5}}}
    path = plots.plot_calibration(predictions, calibration, plot_dir / 'cal.png', diagnostics)
    assert_png(path)
    assert plots._given_rates(diagnostics, 'forces') == (1.0, 0.5)
    record = make_record(1)
    tpr, ppv = plots._given_rates(record, 'forces')
    assert tpr == 0.8 and math.isnan(ppv)
    assert plots._given_rates(record, 'energy') is None


def test_rates_match_the_calibration_module():
    rng = np.random.default_rng(0)
    eps = rng.uniform(0, 0.3, 200)
    delta = 0.4 * eps * rng.lognormal(0, 0.5, 200)
    counts, tpr, ppv = plots._rates(delta, eps, 0.04, 0.1)
    expected = classification_rates(delta, eps, 0.04, 0.1)
    assert counts == {k: expected[k] for k in ('tp', 'fp', 'fn', 'tn')}
    assert tpr == pytest.approx(expected['tpr']) and ppv == pytest.approx(expected['ppv'])


def test_write_campaign_plots(three_records, predictions, plot_dir):
    paths = plots.write_campaign_plots(three_records, plot_dir / 'campaign', predictions)
    assert [p.name for p in paths] == [
        'rmse.png',
        'composition.png',
        'parity.png',
        'calibration.png',
    ]
    for path in paths:
        assert_png(path)
    only_records = plots.write_campaign_plots(three_records[:1], plot_dir / 'one')
    assert [p.name for p in only_records] == ['rmse.png', 'composition.png']


def test_module_imports_neither_aiida_nor_pyplot():
    code = (
        'import sys, aiida_trainspot.plots; '
        "assert not any(m == 'aiida' or m.startswith('aiida.') for m in sys.modules); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, '-c', code], check=True)


# ----------------------------------------------------------------------------- calibration: reading


def forces_case(frames, eps, delta, splits=('validation', 'test')):
    """A PESData with only the forces' δ and ε (eV/Å) given, one per frame, cycling ``splits``."""
    from aiida_trainspot.data import PESData

    n = len(eps)
    dataset = PESData.from_ase([frames[i % len(frames)] for i in range(n)])
    columns = {
        'split': np.array([splits[i % len(splits)] for i in range(n)], dtype=object),
        'delta_forces': np.asarray(delta, dtype=float),
        'eps_forces': np.asarray(eps, dtype=float),
    }
    return dataset.with_columns(np.arange(n), columns)


def spread_with_zeros(n_spread=30, seed=5):
    """``n_spread`` frames with errors 0.01-1 eV/Å and δ ≈ 0.3 ε, then three with none.

    The three are what perfect crystals and isolated atoms give: ε exactly 0 with δ 0, ε of
    round-off size (1e-14) with δ 0, and δ of round-off size with ε exactly 0.
    """
    rng = np.random.default_rng(seed)
    eps = 10 ** rng.uniform(-2, 0, n_spread)
    delta = 0.3 * eps * rng.lognormal(0, 0.4, n_spread)
    return np.r_[eps, 0.0, 1e-14, 0.0], np.r_[delta, 0.0, 0.0, 3e-15]


FORCES_CALIBRATION = Calibration({'forces': 0.3}, {'forces': 0.1})


def legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_calibration_zero_frames_do_not_set_the_limits(labelled_carbon_frames, plot_dir):
    eps, delta = spread_with_zeros()
    dataset = forces_case(labelled_carbon_frames, eps, delta)
    figure = plots.calibration_figure(dataset, FORCES_CALIBRATION)
    (ax,) = figure.axes
    assert ax.get_xscale() == 'log' and ax.get_yscale() == 'log'
    informative_eps, informative_delta = eps[eps > 0.001].min(), delta[delta > 1e-6].min()
    low_x, high_x = ax.get_xlim()
    low_y, high_y = ax.get_ylim()
    # within a margin of the smallest informative value, nowhere near 1e-14
    assert informative_eps / 1.5 < low_x <= informative_eps
    assert informative_delta / 2 < low_y <= informative_delta
    assert high_x >= eps.max() and high_y >= delta.max()
    assert (
        '3 frames with ε or δ ≈ 0, on the axes\n(3 with both, on one another in the corner)'
        in legend_texts(ax)
    )
    # the set-aside frames are drawn on the axes, not dropped: one diamond each
    diamonds = [c for c in ax.collections if len(c.get_offsets()) and c.get_clip_on() is False]
    offsets = np.concatenate([c.get_offsets() for c in diamonds])
    assert len(offsets) == 3
    assert np.allclose(offsets[:, 0], low_x) and np.allclose(offsets[:, 1], low_y)
    assert_png(plots._save(figure, plot_dir / 'calibration-zeros.png'))


def test_calibration_zero_floor_is_relative_to_the_threshold():
    values = np.array([0.0, 1e-14, 0.05, 0.5])
    assert plots._zero_floor(values, 0.1) == pytest.approx(plots.ZERO_FRACTION * 0.1)
    # no threshold: relative to the largest value
    assert plots._zero_floor(values, math.nan) == pytest.approx(plots.ZERO_FRACTION * 0.5)
    assert plots._zero_floor(np.zeros(3), math.nan) == 0.0
    drawn = np.ones(4, dtype=bool)
    panel = plots._panel_axes(values, values, drawn, 0.03, 0.1)
    assert panel['eps_zero'].tolist() == [True, True, False, False]
    assert panel['delta_zero'].tolist() == [True, True, False, False]
    assert panel['xlim'][0] > 0.04 and panel['ylim'][0] > 0.02  # τ = 0.03 is in view
    # a value just above the floor is data, and it does set the limit
    small = np.array([2 * plots.ZERO_FRACTION * 0.1, 0.5])
    panel = plots._panel_axes(small, small, np.ones(2, dtype=bool), math.nan, 0.1)
    assert not panel['eps_zero'].any()
    assert panel['xlim'][0] < small[0]


def test_calibration_all_zero_falls_back_to_linear_axes(labelled_carbon_frames):
    dataset = forces_case(labelled_carbon_frames, np.zeros(4), np.zeros(4))
    (ax,) = plots.calibration_figure(dataset, None).axes
    assert ax.get_xscale() == 'linear' and ax.get_xlim()[0] == 0.0
    assert not any('≈ 0' in text for text in legend_texts(ax))


def test_calibration_title_has_counts_and_marks_few_frames(labelled_carbon_frames, plot_dir):
    eps, delta = np.array([0.2, 0.5, 0.9]), np.array([0.1, 0.2, 0.4])  # all above, all flagged
    dataset = forces_case(labelled_carbon_frames, eps, delta)
    figure = plots.calibration_figure(dataset, FORCES_CALIBRATION)
    (ax,) = figure.axes
    title = ax.get_title()
    assert title.startswith('Forces: TPR 1.00 (3/3), PPV 1.00 (3/3)')
    assert 'only 3 frames scored (< 10): unreliable' in title
    grey = ax.title.get_color()
    # the extreme points stay clear of the quadrant counts in the corners (top and bottom 8 %)
    to_axes = ax.transData + ax.transAxes.inverted()
    heights = to_axes.transform(np.c_[eps, delta])[:, 1]
    assert heights.min() > 0.08 and heights.max() < 0.92
    assert_png(plots._save(figure, plot_dir / 'calibration-three.png'))

    eps, delta = spread_with_zeros()
    figure = plots.calibration_figure(forces_case(labelled_carbon_frames, eps, delta), None)
    assert 'not calibrated' in figure.axes[0].get_title()
    figure = plots.calibration_figure(
        forces_case(labelled_carbon_frames, eps, delta), FORCES_CALIBRATION
    )
    title = figure.axes[0].get_title()
    counts = classification_rates(delta, eps, 0.03, 0.1)
    tp, fn, fp = counts['tp'], counts['fn'], counts['fp']
    assert f'TPR {tp / (tp + fn):.2f} ({tp}/{tp + fn})' in title
    assert f'PPV {tp / (tp + fp):.2f} ({tp}/{tp + fp})' in title
    assert 'unreliable' not in title
    assert figure.axes[0].title.get_color() != grey


def test_calibration_score_from_diagnostics():
    counts = {'tp': 3, 'fn': 0, 'fp': 1, 'tn': 1}
    own = plots._score(None, counts, 5)
    assert own['n'] == 5 and own['ppv'] == pytest.approx(0.75)
    assert plots._score_text(own) == (
        'TPR 1.00 (3/3), PPV 0.75 (3/4)',
        'only 5 frames scored (< 10): unreliable',
    )
    # a report (calibration.diagnostics) carries its counts: they win over the plotted frames
    rng = np.random.default_rng(1)
    eps = rng.uniform(0, 0.3, 40)
    report = {'at_thresholds': {'forces': classification_rates(0.3 * eps, eps, 0.03, 0.1)}}
    entry = plots._given_entry(report, 'forces')
    score = plots._score(entry, counts, 5)
    expected = report['at_thresholds']['forces']
    assert (score['tp'], score['fn'], score['fp'], score['n']) == (
        expected['tp'],
        expected['fn'],
        expected['fp'],
        40,
    )
    rates, caveat = plots._score_text(score)
    assert caveat == '' and f'({expected["tp"]}/{expected["tp"] + expected["fn"]})' in rates
    # an old record holds rates only: counts of the plotted frames when the rates are theirs
    assert plots._score({'tpr': 1.0, 'ppv': 0.75}, counts, 5) == own
    # ... else the recorded rates, without made-up fractions, and said to be so
    record = make_record(1)  # forces: TPR 0.8, PPV None
    score = plots._score(plots._given_entry(record, 'forces'), counts, 5)
    assert score['tpr'] == 0.8 and math.isnan(score['ppv']) and score['n'] is None
    assert plots._score_text(score) == ('TPR 0.80, PPV n/a', 'recorded rates; counts not stored')
    # counts without the number of frames: fractions, but no claim about reliability
    score = plots._score({'tpr': 0.5, 'tp': 2, 'fn': 2, 'fp': 0}, counts, 5)
    assert plots._score_text(score) == ('TPR 0.50 (2/4), PPV 1.00 (2/2)', '')
    # zero denominators
    empty = plots._score(None, {'tp': 0, 'fn': 0, 'fp': 0, 'tn': 12}, 12)
    assert plots._score_text(empty) == ('TPR n/a (0/0), PPV n/a (0/0)', '')


def test_calibration_zero_error_keeps_its_disagreement(labelled_carbon_frames, plot_dir):
    """ε = 0 with a large δ (an isolated atom the committee disagrees on) is a false positive.

    It goes on the left axis at its own δ, and δ = 0 with a real error on the bottom axis at its
    own ε, so each stays in the quadrant it is counted in.
    """
    eps, delta = spread_with_zeros()
    eps, delta = np.r_[eps, 0.0, 0.3], np.r_[delta, 0.08, 0.0]
    dataset = forces_case(labelled_carbon_frames, eps, delta)

    def on_axes(ax):
        edge = [c for c in ax.collections if len(c.get_offsets()) and not c.get_clip_on()]
        return np.concatenate([c.get_offsets() for c in edge])

    figure = plots.calibration_figure(dataset, Calibration({'forces': 0.3}, {'forces': 0.1}))
    (ax,) = figure.axes
    offsets = on_axes(ax)
    assert len(offsets) == 5
    assert any(np.allclose(o, (ax.get_xlim()[0], 0.08)) for o in offsets)  # isolated atom
    assert any(np.allclose(o, (0.3, ax.get_ylim()[0])) for o in offsets)  # δ = 0, ε = 0.3
    assert any(
        text.startswith('5 frames with ε or δ ≈ 0, on the axes\n(3 with')
        for text in legend_texts(ax)
    )
    # the isolated atom (δ = 0.08 > τ = 0.03, ε = 0) is counted as a false positive
    fp_without = classification_rates(delta[:-2], eps[:-2], 0.03, 0.1)['fp']
    assert [t.get_text() for t in ax.texts if t.get_text().startswith('FP')] == [
        f'FP {fp_without + 1}'
    ]
    assert_png(plots._save(figure, plot_dir / 'calibration-edges.png'))

    # the members' error sqrt(ε² + δ²) of the isolated atom is its δ: an ordinary point
    members = Calibration({'forces': 0.3}, {'forces': 0.1}, error='members')
    (ax,) = plots.calibration_figure(dataset, members).axes
    assert len(on_axes(ax)) == 4
    assert any(
        text.startswith('4 frames with ε or δ ≈ 0, on the axes\n(3 with')
        for text in legend_texts(ax)
    )
