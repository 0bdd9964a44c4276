"""Calibration quality: TPR and PPV of the calibrated criterion δ > a·ε_thr, committee sizes 2/4/8.

On the EMT copper oracle of ``committee_oracle`` (MD frames at 300-1800 K, bulk and vacancy
cells), for training sets that grow like an active-learning campaign's (``--sizes``, nested
random subsets of the pool: one "iteration" each), train 8 tiny MACE members. For the first 2, 4
and all 8 members:

1. fit the slope a of δ_F ≈ a·ε_F (least squares through the origin, the package's default) on
   the labelled frames held out of training (a fifth of the labelled set: the calibration set;
   ``--fit-on labelled`` and ``--extra-calibration`` change it);
2. on independent held-out labelled frames (MD at the same temperatures, never trained on or
   fitted to), count the criterion δ_F > τ = a·ε_thr against the truth ε_F > ε_thr, for each
   ε_thr of ``--thresholds``: TPR = TP/(TP+FN) and PPV = TP/(TP+FP) "along the fitted line".

ε_F is the RMS over the members of each member's force error, sqrt(ε_F² + δ_F²) (``calibration:
{error: members}``), or with ``--error committee_mean`` the committee mean's force error: the
kind the main figures fit and score. Scored against its own kind, the members' RMS error flatters
the criterion: it holds δ, so δ never exceeds it and every frame with δ > ε_thr is a true
positive by construction. The like-for-like study (``like_for_like`` in the JSON, the
``*_truths.png`` figure) therefore fits the slope to BOTH kinds on the same calibration frames
and scores both lines against the SAME two truths, neither of which contains δ: the committee
mean's force error (what a user deploys) and a single member's (what drives the exploration's
MD; the package draws the member at random, so every (frame, member) pair is one case, each
member's own error against the frame's δ).

Two test sets are scored with the same line. ``in-distribution``: MD at the pool's conditions, the
hardest case, as the errors of a converging committee crowd around ε_thr. ``exploration``: those
frames plus MD the training never saw, as an exploration meets them (±8 % strain at 300 and 1300 K,
2500 K melt): the paper's setting, whose validation frames span the campaign's structures.

For comparison with the paper, which fits and scores the same frames, the JSON also holds the
rates along the line fitted on the test frames themselves (``test_fit``) and how many test frames
are truly above each ε_thr, the rates of the package's other fitting methods on the same
calibration frames (``methods``), and the ``ceiling``: the best threshold on δ chosen with
hindsight on the scored frames, which bounds what any calibration could reach. Writes a JSON
of every rate, slope and the δ/ε pairs, and a PNG: δ vs ε scatter with the fitted line for each
committee size (last iteration), and TPR/PPV against ε_thr, for each test set; and beside it
``*_truths.png``, the like-for-like study.

Usage: python benchmarks/bench_calibration.py [--sizes 10,20,30] [--members 8] [--epochs 30]
       [--channels 8] [--vary-architecture] [--subsample F] [--extra-calibration 0]
       [--fit-on held-out|labelled] [--error members|committee_mean]
       [--pool 24] [--test 12] [--seed 0]
       [--thresholds 0.015,0.02,0.03,0.04,0.05,0.075,0.1]
       [--json out.json] [--png out.png] [--smoke]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from committee_oracle import (
    SYSTEM,
    TRUTHS,
    concatenate_results,
    load_committee,
    md_frames,
    member_training_sets,
    predict,
    train_committee,
    truth_pairs,
)

from aiida_trainspot.evaluation.disagreement import DEFAULT_ERROR_KIND, ERROR_KINDS, errors_of

TEMPERATURES = (300.0, 800.0, 1300.0, 1800.0)
COMMITTEE_SIZES = (2, 4, 8)
#: conditions outside the pool's, met by an exploration: (temperature in K, strain amplitude)
UNSEEN_CONDITIONS = ((300.0, 0.08), (1300.0, 0.08), (2500.0, 0.03))


def rates_along_line(delta, error, slope: float, thresholds) -> list[dict]:
    """TPR/PPV (None where undefined) of δ > slope·ε_thr against ε > ε_thr, for each ε_thr."""
    from aiida_trainspot.evaluation.calibration import classification_rates

    rows = []
    for threshold in thresholds:
        result = classification_rates(delta, error, slope * threshold, threshold)
        rows.append(
            {
                'error_threshold': float(threshold),
                'tau': float(slope * threshold),
                **{k: int(result[k]) for k in ('tp', 'fp', 'fn', 'tn')},
                **{
                    k: (float(result[k]) if np.isfinite(result[k]) else None)
                    for k in ('tpr', 'ppv')
                },
            }
        )
    return rows


def in_sample_rates(delta, error, thresholds) -> dict:
    """The paper's reading: slope fitted on the very frames that are scored (in-sample).

    The main figure fits on the held-out calibration frames and scores independent test frames,
    as a campaign must; this one shows what the same committee gives along its own best line.
    """
    from aiida_trainspot.evaluation.calibration import fit_slope

    fit = fit_slope(delta, error, property_name='forces', min_points=2)
    return {
        'slope': float(fit.slope),
        'r2': float(fit.r2),
        'rates': rates_along_line(delta, error, fit.slope, thresholds),
    }


def best_threshold(delta, error, error_threshold: float) -> dict | None:
    """The ceiling of any calibration: the τ that maximises min(TPR, PPV) on these very frames.

    Scans every observed δ as τ (criterion δ ≥ τ, ties in δ taken together). No slope fitted
    elsewhere can beat it, so where its min(TPR, PPV) is below a target the committee's
    disagreement itself does not rank the frames well enough. None without actual positives.
    """
    delta, error = np.asarray(delta, dtype=float), np.asarray(error, dtype=float)
    positive = error > error_threshold
    if not positive.any():
        return None
    order = np.argsort(-delta, kind='stable')
    true_positives = np.cumsum(positive[order])
    flagged = np.arange(1, delta.size + 1)
    # a cut is only possible after the last frame of a run of equal δ
    cuts = np.flatnonzero(np.append(np.diff(delta[order]) != 0, True))
    tpr = true_positives[cuts] / positive.sum()
    ppv = true_positives[cuts] / flagged[cuts]
    best = int(np.argmax(np.minimum(tpr, ppv)))
    tau = float(delta[order][cuts[best]])
    return {
        'error_threshold': float(error_threshold),
        'tau': tau,
        'tau_over_threshold': tau / float(error_threshold),
        'tpr': float(tpr[best]),
        'ppv': float(ppv[best]),
    }


def scored_set(delta, error, slope: float, thresholds) -> dict:
    """Rates along the calibrated line, along the line fitted in-sample, the ceiling, pairs."""
    return {
        'rates': rates_along_line(delta, error, slope, thresholds),
        'test_fit': in_sample_rates(delta, error, thresholds),
        'ceiling': [best_threshold(delta, error, threshold) for threshold in thresholds],
        'frames_above': [int(np.sum(error > threshold)) for threshold in thresholds],
        'delta_forces': delta.round(6).tolist(),
        'eps_forces': error.round(6).tolist(),
    }


def like_for_like(held_out: dict, scored: dict[str, dict], thresholds) -> dict:
    """Both fit kinds, fitted on the same calibration frames, scored against the same truths.

    :param held_out: :func:`committee_oracle.predict`'s result on the calibration frames.
    :param scored: the same on each test set, by name.
    :returns: ``{'fits': {kind: {'slope', 'r2', 'rates': {truth: {set: rows}}}}, 'truths':
        {truth: {set: {'fraction_above': [...], 'ceiling': [...]}}}}``; the ceiling (best
        threshold with hindsight) depends on the truth only, not on the fit.
    """
    from aiida_trainspot.evaluation.calibration import fit_slope

    delta = held_out['delta_forces']
    fits = {}
    for kind in ERROR_KINDS:
        eps = errors_of(kind, {'forces': delta}, {'forces': held_out['eps_forces_committee_mean']})
        fit = fit_slope(delta, eps['forces'], property_name='forces', min_points=2)
        fits[kind] = {
            'slope': float(fit.slope),
            'r2': float(fit.r2),
            'rates': {
                truth: {
                    name: rates_along_line(*truth_pairs(result, truth), fit.slope, thresholds)
                    for name, result in scored.items()
                }
                for truth in TRUTHS
            },
        }
    truths = {}
    for truth in TRUTHS:
        truths[truth] = {}
        for name, result in scored.items():
            pair_delta, pair_eps = truth_pairs(result, truth)
            truths[truth][name] = {
                'fraction_above': [float(np.mean(pair_eps > t)) for t in thresholds],
                'ceiling': [best_threshold(pair_delta, pair_eps, t) for t in thresholds],
            }
    return {'fits': fits, 'truths': truths}


def evaluate_sizes(
    models, calibration, test, unseen, thresholds, max_members: int, error: str
) -> dict:
    """Slope, fit quality and rates on both test sets for each committee size.

    ε is the error ``error`` names (the package's ``calibration.error``: the committee mean's
    or the members' RMS). Each fitting method's slope comes from the ``calibration`` frames.
    The in-distribution set keeps its historical keys (``rates``, ``test_fit``,
    ``test_frames_above``, ``test_*_forces``); ``exploration`` adds the unseen conditions.
    ``like_for_like`` fits both kinds and scores them against the same truths
    (:func:`like_for_like`), whatever ``error`` is.
    """
    from aiida_trainspot.evaluation.calibration import METHODS, fit_slope

    calculators = load_committee(models)
    out = {}
    for size in (s for s in COMMITTEE_SIZES if s <= max_members):
        committee = calculators[:size]
        held_out, tested, other = (
            predict(committee, frames, error) for frames in (calibration, test, unseen)
        )
        fits = {
            method: fit_slope(
                held_out['delta_forces'],
                held_out['eps_forces'],
                method=method,
                property_name='forces',
                min_points=2,
            )
            for method in METHODS
        }
        fit = fits['least_squares']
        explored_delta = np.concatenate([tested['delta_forces'], other['delta_forces']])
        explored_eps = np.concatenate([tested['eps_forces'], other['eps_forces']])
        inside = scored_set(tested['delta_forces'], tested['eps_forces'], fit.slope, thresholds)
        explored = scored_set(explored_delta, explored_eps, fit.slope, thresholds)
        explored['force_rmse_unseen'] = float(np.sqrt(np.mean(other['force_errors'] ** 2)))
        out[str(size)] = {
            'slope': float(fit.slope),
            'r2_calibration': float(fit.r2),
            'n_calibration': int(fit.n_points),
            'calibration_delta_forces': held_out['delta_forces'].round(6).tolist(),
            'calibration_eps_forces': held_out['eps_forces'].round(6).tolist(),
            'methods': {
                method: {
                    'slope': float(other_fit.slope),
                    'in-distribution': rates_along_line(
                        tested['delta_forces'], tested['eps_forces'], other_fit.slope, thresholds
                    ),
                    'exploration': rates_along_line(
                        explored_delta, explored_eps, other_fit.slope, thresholds
                    ),
                }
                for method, other_fit in fits.items()
            },
            'rates': inside['rates'],
            'test_fit': inside['test_fit'],
            'test_ceiling': inside['ceiling'],
            'test_frames_above': inside['frames_above'],
            'test_delta_forces': inside['delta_forces'],
            'test_eps_forces': inside['eps_forces'],
            'test_force_rmse': float(np.sqrt(np.mean(tested['force_errors'] ** 2))),
            'exploration': explored,
            'like_for_like': like_for_like(
                held_out,
                {'in-distribution': tested, 'exploration': concatenate_results(tested, other)},
                thresholds,
            ),
        }
        for name, rows in (
            ('in-distribution', inside['rates']),
            ('exploration', explored['rates']),
        ):
            line = ', '.join(f'{r["error_threshold"]}: {r["tpr"]}/{r["ppv"]}' for r in rows)
            print(f'    {size} members, a = {fit.slope:.3f}, {name} TPR/PPV: {line}', flush=True)
    return out


#: bands of the fraction of test frames truly above ε_thr (the prevalence of positives)
PREVALENCE_BANDS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


#: what the summaries compare: the package's fitting methods, and the best threshold
CRITERIA = ('least_squares', 'median_ratio', 'huber', 'ceiling')


def criterion_rows(entry: dict, name: str, criterion: str) -> list:
    """Rate rows of one test set for a fitting method or ``'ceiling'`` (None: no positives)."""
    if criterion == 'ceiling':
        return scores_of_set(entry, name)['ceiling']
    if criterion == 'least_squares':
        return scores_of_set(entry, name)['rates']
    return entry['methods'][criterion][name]


def prevalence_summary(
    iterations, target: float = 0.8, criterion: str = 'least_squares'
) -> list[dict]:
    """How often TPR and PPV are both ≥ ``target``, by the fraction of frames truly above ε_thr.

    Pools every iteration, committee size, test set and ε_thr. PPV depends on that fraction: the
    fewer frames truly above the tolerance, the more a false positive weighs. ``criterion`` picks
    the slope's fitting method or the best threshold (see :data:`CRITERIA`).
    """
    cases = []
    for iteration in iterations:
        for entry in iteration['committees'].values():
            for name in ('in-distribution', 'exploration'):
                view = scores_of_set(entry, name)
                eps = np.asarray(view['eps_forces'])
                rows = criterion_rows(entry, name, criterion)
                thresholds = [r['error_threshold'] for r in view['rates']]
                for threshold, row in zip(thresholds, rows, strict=True):
                    cases.append((float(np.mean(eps > threshold)), both_at_target(row, target)))
    return band_counts(cases)


def band_counts(cases: list[tuple[float, bool]]) -> list[dict]:
    """Cases and those with both rates at target per band of :data:`PREVALENCE_BANDS`.

    :param cases: ``(fraction of the scored cases truly above ε_thr, both rates at target)``.
    """
    summary = []
    for low, high in itertools.pairwise(PREVALENCE_BANDS):
        band = [both for fraction, both in cases if low <= fraction < high or fraction == high == 1]
        summary.append(
            {'fraction_above': [low, high], 'cases': len(band), 'both_at_target': sum(band)}
        )
    return summary


def both_at_target(row: dict | None, target: float) -> bool:
    """Whether a rate row (or a ceiling, None without positives) has TPR and PPV ≥ ``target``."""
    if row is None or row['tpr'] is None or row['ppv'] is None:
        return False
    return min(row['tpr'], row['ppv']) >= target


#: the rows of the like-for-like summary: the two fit kinds and the best threshold
LIKE_FOR_LIKE_ROWS = (*ERROR_KINDS, 'ceiling')


def like_for_like_summary(iterations, target: float = 0.8) -> dict:
    """Per truth and per fit kind (and the ceiling): cases with both rates ≥ ``target`` by band.

    Pools iterations, committee sizes, test sets and ε_thr like :func:`prevalence_summary`; the
    band is the fraction of the truth's cases above ε_thr. Also the mean TPR and PPV over the
    cases where they are defined, which show on which side a line errs.
    """
    summary: dict = {}
    for truth in TRUTHS:
        summary[truth] = {}
        for row_name in LIKE_FOR_LIKE_ROWS:
            cases, tprs, ppvs = [], [], []
            for iteration in iterations:
                for entry in iteration['committees'].values():
                    study = entry['like_for_like']
                    for name, view in study['truths'][truth].items():
                        if row_name == 'ceiling':
                            rows = view['ceiling']
                        else:
                            rows = study['fits'][row_name]['rates'][truth][name]
                        for fraction, row in zip(view['fraction_above'], rows, strict=True):
                            cases.append((fraction, both_at_target(row, target)))
                            if row is not None and row['tpr'] is not None:
                                tprs.append(row['tpr'])
                            if row is not None and row['ppv'] is not None:
                                ppvs.append(row['ppv'])
            summary[truth][row_name] = {
                'bands': band_counts(cases),
                'both_at_target': sum(both for _, both in cases),
                'cases': len(cases),
                'mean_tpr': float(np.mean(tprs)) if tprs else None,
                'mean_ppv': float(np.mean(ppvs)) if ppvs else None,
            }
    return summary


def scores_of_set(entry: dict, name: str) -> dict:
    """δ/ε pairs, rates and ceiling of one test set of a committee entry (``evaluate_sizes``)."""
    if name == 'exploration':
        return entry['exploration']
    return {
        'rates': entry['rates'],
        'ceiling': entry['test_ceiling'],
        'delta_forces': entry['test_delta_forces'],
        'eps_forces': entry['test_eps_forces'],
    }


#: how the figure names the error ε (``--error``)
ERROR_NAMES = {'committee_mean': 'committee mean', 'members': "members' RMS"}


def plot_rates(axis, rows: list[dict], key: str, **style) -> None:
    """One line of a rate (``'tpr'`` or ``'ppv'``) against ε_thr; undefined rates left out."""
    axis.plot(
        [r['error_threshold'] for r in rows],
        [np.nan if r[key] is None else r[key] for r in rows],
        marker='o',
        **style,
    )


def style_rate_axis(axis, ylabel: str) -> None:
    """Rate axes: 0 to 1, the 0.8 target dashed, ε_thr along x."""
    axis.axhline(0.8, color='grey', ls='--', lw=1)
    axis.set_ylim(0, 1.05)
    axis.set_xlabel('ε_thr (eV/Å), τ = a·ε_thr')
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)


def plot(report, path: Path) -> None:
    from matplotlib.figure import Figure

    iterations = report['iterations']
    last = iterations[-1]
    error_name = ERROR_NAMES[report['settings'].get('error', 'committee_mean')]
    figure = Figure(figsize=(15, 8.4), layout='constrained')
    colours = {'2': 'tab:orange', '4': 'tab:green', '8': 'tab:blue'}
    for axes, name in zip(figure.subplots(2, 3), ('in-distribution', 'exploration'), strict=True):
        for size, entry in last['committees'].items():
            view = scores_of_set(entry, name)
            eps, delta = np.asarray(view['eps_forces']), np.asarray(view['delta_forces'])
            axes[0].scatter(
                eps, delta, s=10, alpha=0.6, color=colours[size], label=f'{size} members'
            )
            grid = np.linspace(0, eps.max() * 1.05, 2)
            axes[0].plot(grid, entry['slope'] * grid, color=colours[size], lw=1.5)
        axes[0].set_xlabel(f'true force error ε_F, {error_name} (eV/Å)')
        axes[0].set_ylabel('committee disagreement δ_F (eV/Å)')
        axes[0].set_title(f'{name} test frames, {last["n_labelled"]} labels; lines: δ = a·ε')
        axes[0].legend()
        for axis, key in ((axes[1], 'tpr'), (axes[2], 'ppv')):
            for size in colours:
                for index, iteration in enumerate(iterations):
                    entry = iteration['committees'].get(size)
                    if entry is None:
                        continue
                    plot_rates(
                        axis,
                        scores_of_set(entry, name)['rates'],
                        key,
                        color=colours[size],
                        alpha=0.35 + 0.65 * (index + 1) / len(iterations),
                        label=f'{size} members, {iteration["n_labelled"]} labels',
                    )
            style_rate_axis(axis, f'{key.upper()} ({name})')
        axes[2].legend(fontsize=6)
    figure.suptitle('Calibration quality on EMT Cu (tiny MACE committees)')
    figure.savefig(path, dpi=110)


#: how the like-for-like figure names the truths and the fit kinds
TRUTH_NAMES = {'committee_mean': "committee mean's error", 'member': "a single member's error"}
FIT_NAMES = {'members': "fit to members' RMS", 'committee_mean': "fit to committee mean's"}


def plot_truths(report, path: Path) -> None:
    """Like-for-like: both fit kinds against the same truths, one row per truth.

    Left: cases with TPR and PPV both ≥ 0.8 per band of the fraction above ε_thr (both fits and
    the ceiling). Middle and right: TPR and PPV against ε_thr on the exploration set for the
    largest committee, every iteration (later iterations darker).
    """
    from matplotlib.figure import Figure

    summary = report['like_for_like']
    iterations = report['iterations']
    figure = Figure(figsize=(15, 8.4), layout='constrained')
    colours = {'members': 'tab:red', 'committee_mean': 'tab:blue', 'ceiling': 'grey'}
    for axes, truth in zip(figure.subplots(2, 3), TRUTHS, strict=True):
        bands = summary[truth]['ceiling']['bands']
        positions = np.arange(len(bands))
        axes[0].bar(positions, [b['cases'] for b in bands], 0.8, color='none', edgecolor='k')
        for offset, row_name in zip((-0.27, 0.0, 0.27), LIKE_FOR_LIKE_ROWS, strict=True):
            entry = summary[truth][row_name]
            axes[0].bar(
                positions + offset,
                [b['both_at_target'] for b in entry['bands']],
                0.25,
                color=colours[row_name],
                label=f'{FIT_NAMES.get(row_name, row_name)}: {entry["both_at_target"]}'
                f' of {entry["cases"]}',
            )
        axes[0].set_xticks(
            positions, [f'{b["fraction_above"][0]}-{b["fraction_above"][1]}' for b in bands]
        )
        axes[0].set_xlabel('fraction of cases truly above ε_thr (outline: all cases)')
        axes[0].set_ylabel('cases with TPR and PPV ≥ 0.8')
        axes[0].set_title(f'truth: {TRUTH_NAMES[truth]}')
        axes[0].legend(fontsize=8)
        for axis, key in ((axes[1], 'tpr'), (axes[2], 'ppv')):
            for index, iteration in enumerate(iterations):
                size = max(iteration['committees'], key=int)
                study = iteration['committees'][size]['like_for_like']
                for kind in ERROR_KINDS:
                    plot_rates(
                        axis,
                        study['fits'][kind]['rates'][truth]['exploration'],
                        key,
                        color=colours[kind],
                        alpha=0.35 + 0.65 * (index + 1) / len(iterations),
                        label=f'{FIT_NAMES[kind]}, {size} members, '
                        f'{iteration["n_labelled"]} labels',
                    )
            style_rate_axis(axis, f'{key.upper()} (exploration set)')
        axes[2].legend(fontsize=6)
    figure.suptitle(
        'Like for like: slopes fitted to either error kind, scored against the same truths '
        '(neither contains δ)'
    )
    figure.savefig(path, dpi=110)


def truths_png(png: str) -> Path:
    """Where the like-for-like figure goes: beside ``--png``, ``_truths`` added to its name."""
    path = Path(png)
    return path.with_name(f'{path.stem}_truths{path.suffix}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='10,20,30', help='labelled frames per iteration')
    parser.add_argument('--members', type=int, default=8)
    parser.add_argument('--channels', type=int, default=8)
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument(
        '--subsample',
        type=float,
        default=None,
        help='each member trains on its own random fraction of the training frames (bagging)',
    )
    parser.add_argument(
        '--vary-architecture',
        action='store_true',
        help='members differ in radial cutoff (3.5-5 Å) and width (a heterogeneous committee)',
    )
    parser.add_argument(
        '--thresholds', default='0.015,0.02,0.03,0.04,0.05,0.075,0.1', help='ε_thr, eV/Å'
    )
    parser.add_argument(
        '--extra-calibration',
        type=int,
        default=0,
        help='labelled pool frames, never trained on, added to the calibration fit',
    )
    parser.add_argument(
        '--fit-on',
        choices=('held-out', 'labelled'),
        default='held-out',
        help='frames of the calibration fit: the held-out fifth (the package default: validation '
        "and test splits) or every labelled frame, training frames included (the paper's)",
    )
    parser.add_argument(
        '--error',
        choices=ERROR_KINDS,
        default=DEFAULT_ERROR_KIND,
        help="the true error ε: the RMS over the members of each member's error, sqrt(ε² + δ²) "
        "(the package default and the paper's reference code), or the committee mean's (the "
        'package default before 2026-12-06)',
    )
    parser.add_argument('--pool', type=int, default=24, help='pool frames per cell and T')
    parser.add_argument('--test', type=int, default=12, help='test frames per cell and T')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', default='benchmarks/results/calibration.json')
    parser.add_argument('--png', default='benchmarks/results/calibration.png')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, to check it runs')
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.members, args.epochs, args.pool, args.test = '6', 2, 3, 3, 2
    sizes = [int(s) for s in args.sizes.split(',')]
    thresholds = [float(t) for t in args.thresholds.split(',')]
    try:  # the range check of the members' subsampling itself, before minutes of MD
        member_training_sets([], [], args.subsample)
    except ValueError as exception:
        parser.error(f'--{exception}')
    if args.extra_calibration < 0:
        parser.error(f'--extra-calibration must be 0 or more, got {args.extra_calibration}')
    start = time.perf_counter()
    pool = md_frames(21 + args.seed, [(t, args.pool) for t in TEMPERATURES])
    test = md_frames(22 + args.seed, [(t, args.test) for t in TEMPERATURES])
    unseen = [
        frame
        for index, (temperature, strain) in enumerate(UNSEEN_CONDITIONS)
        for frame in md_frames(
            23 + 10 * args.seed + index, [(temperature, args.test)], strain=strain
        )
    ]
    order = np.random.default_rng(args.seed).permutation(len(pool))
    if max(sizes) + args.extra_calibration > len(pool):
        parser.error(
            f'--sizes and --extra-calibration ask for {max(sizes) + args.extra_calibration} '
            f'pool frames; the pool has {len(pool)}'
        )
    # never trained on in any iteration: the end of the permutation
    extra = [pool[i] for i in order[len(pool) - args.extra_calibration :]]
    print(f'pool {len(pool)} frames, test {len(test)} + {len(unseen)} unseen frames')
    iterations = []
    root = Path(tempfile.mkdtemp(prefix='trainspot-calibration-'))
    try:
        for index, size in enumerate(sizes):
            labelled = [pool[i] for i in order[:size]]
            n_valid = max(2, size // 5)
            valid, train = labelled[:n_valid], labelled[n_valid:]
            fitted = labelled if args.fit_on == 'labelled' else valid
            calibration = fitted + extra
            print(
                f'  iteration {index}: {size} labelled ({len(train)} train, {n_valid} held out);'
                f' calibration on {len(fitted)} {args.fit_on} + {len(extra)} extra frames'
            )
            seeds = [100 * args.seed + 10 * index + m for m in range(args.members)]
            models = train_committee(
                train,
                valid,
                root / f'it{index}',
                seeds,
                args.epochs,
                channels=args.channels,
                subsample=args.subsample,
                vary_architecture=args.vary_architecture,
            )
            iterations.append(
                {
                    'iteration': index,
                    'n_labelled': size,
                    'n_calibration': len(calibration),
                    'committees': evaluate_sizes(
                        models, calibration, test, unseen, thresholds, args.members, args.error
                    ),
                }
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        'system': SYSTEM,
        'pool_frames': len(pool),
        'test_frames': len(test),
        'unseen_frames': len(unseen),
        'unseen_conditions': [
            {'temperature': t, 'strain_amplitude': a} for t, a in UNSEEN_CONDITIONS
        ],
        'settings': vars(args),
        'seconds': round(time.perf_counter() - start, 1),
        'iterations': iterations,
        'by_fraction_above': prevalence_summary(iterations),
        'by_fraction_above_per_criterion': {
            criterion: prevalence_summary(iterations, criterion=criterion) for criterion in CRITERIA
        },
        'like_for_like': like_for_like_summary(iterations),
    }
    print('cases with TPR and PPV both >= 0.8, by fraction of test frames above ε_thr:')
    print('  fraction   ' + ' '.join(f'{c:>13}' for c in CRITERIA))
    per_criterion = report['by_fraction_above_per_criterion']
    for index, band in enumerate(report['by_fraction_above']):
        low, high = band['fraction_above']
        counts = [per_criterion[c][index]['both_at_target'] for c in CRITERIA]
        cells = [f'{n} of {band["cases"]}' for n in counts]
        line = ' '.join(f'{cell:>13}' for cell in cells)
        print(f'  {low:.2f}-{high:.2f}  {line}')
    print('like for like (least squares on the same calibration frames), cases with TPR and PPV')
    print('both >= 0.8 per band, all cases, mean TPR / PPV:')
    for truth, rows in report['like_for_like'].items():
        for row_name, entry in rows.items():
            bands = ', '.join(f'{b["both_at_target"]}/{b["cases"]}' for b in entry['bands'])
            means = ' / '.join(
                'n/a' if entry[k] is None else f'{entry[k]:.2f}' for k in ('mean_tpr', 'mean_ppv')
            )
            print(
                f'  truth {truth:>14}, {row_name:>14}: {bands} '
                f'({entry["both_at_target"]} of {entry["cases"]}); {means}'
            )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    plot(report, Path(args.png))
    plot_truths(report, truths_png(args.png))
    print(f'wrote {args.json}, {args.png} and {truths_png(args.png)} in {report["seconds"]} s')


if __name__ == '__main__':
    main()
