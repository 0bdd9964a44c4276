"""Label efficiency of calibrated committee selection, against random, top-δ and uncalibrated.

An EMT oracle (ASE) on copper stands in for DFT. A pool of MD frames plays the explored frames,
its labels hidden until a strategy selects a frame. The pool is what an exploration typically
yields: mostly near-equilibrium frames and fewer hot ones (by default 40 : 20 : 10 : 6 frames per
cell at 300 : 800 : 1300 : 1800 K, bulk and vacancy cells, ±3 % strain, solid and liquid). The
test set is independent MD at the same target temperatures, the same number of frames at each.
Each round trains a committee of tiny MACE models (``mace_run_train``) on the labelled frames,
then each strategy adds at most ``--batch`` pool frames:

- ``calibrated``: δ_F > τ = a·ε_thr, a fitted (least squares through the origin) on the
  labelled frames held out of training; a random subset of the candidates (the package's rule);
- ``uncalibrated``: δ_F > ε_thr, a random subset of the candidates;
- ``top``: the largest δ_F;
- ``random``: uniform from the pool;
- ``calibrated-top``: the candidates of ``calibrated``, capped by the package's
  ``select_frames`` with ``cap_order='disagreement'`` (furthest above τ first; no trust bound,
  like the other strategies).

A strategy with no candidates left stops adding frames (the loop has converged by its own
criterion); its curve ends there. All strategies start from the same random labelled frames and
the same first committee for a seed. Reported per round: the labels used, the committee-mean
force RMSE (eV/Å) and energy RMSE (meV/atom) on the test set, the calibrated slope, τ and the
TPR/PPV of δ_F > τ against ε_F > ε_thr on the test frames (``tpr_test``, ``ppv_test``: ε_F the
error the slope is fitted to, ``--error``: the members' RMS error or the committee mean's). The
summary gives, per strategy and seed, the labels needed to reach random selection's final force
RMSE (always the committee mean's).

Scored against its own kind, the members' RMS error flatters the criterion (it holds δ, so δ never
exceeds it). Every round therefore also scores δ_F > τ against the same two truths, neither of
which contains δ (``test_rates``): the committee mean's force error (what a user deploys) and a
single member's (what drives the MD; every (frame, member) pair one case, that member's own
error). ``--error members,committee_mean`` runs each calibrated strategy with both kinds in one
invocation, named ``calibrated:members``, ``calibrated:committee_mean`` and so on: they share
seeds, initial frames, first committees and random streams, and a committee is trained once for
every labelled set they reach alike (the disagreement-ordered cap takes the same top-δ frames
under either kind while at least ``--batch`` frames are candidates). The other strategies fit
their (unused) slope to the first kind named.

Usage: python benchmarks/bench_label_efficiency.py [--seeds 3] [--rounds 4] [--batch 6]
       [--initial 10] [--members 2] [--epochs 30] [--threshold 0.03] [--channels 8]
       [--vary-architecture] [--error members|committee_mean|members,committee_mean]
       [--strategies calibrated,uncalibrated,top,random,calibrated-top]
       [--first-seed 0] [--reference earlier.json] [--json out.json] [--png out.png] [--smoke]
``random`` is always run: it is the reference of the summary.
The science comes from the package's plain modules (calibration, disagreement, inference);
no AiiDA profile is needed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from committee_oracle import (
    SYSTEM,
    TRUTHS,
    load_committee,
    md_frames,
    predict,
    train_committee,
    truth_pairs,
)

from aiida_trainspot.evaluation.disagreement import DEFAULT_ERROR_KIND, ERROR_KINDS

# appended, never reordered: a strategy's random stream is seeded by its index here
STRATEGIES = ('calibrated', 'uncalibrated', 'top', 'random', 'calibrated-top')
#: the strategies that select only frames above a calibrated τ (and stop when none is left)
CALIBRATED = ('calibrated', 'calibrated-top')
TEMPERATURES = (300.0, 800.0, 1300.0, 1800.0)


# ----------------------------------------------------------------------------- strategies


def choose(strategy, pool_free, delta, slope, threshold, batch, rng) -> np.ndarray:
    """Indices into ``pool_free`` of the frames a strategy labels next."""
    if strategy == 'random':
        return rng.permutation(len(pool_free))[:batch]
    if strategy == 'top':
        return np.argsort(-delta)[:batch]
    if strategy == 'calibrated-top':
        from aiida_trainspot.evaluation.selection import SelectionSettings, select_frames

        # no trust bound: the other strategies have none, and this one compares the cap's order
        settings = SelectionSettings(
            max_selected=batch,
            cap_order='disagreement',
            max_force=None,
            force_disagreement_factor=float('inf'),
        )
        tau = {'forces': threshold * slope}
        return select_frames({'forces': delta}, tau, seed=0, settings=settings).selected
    tau = threshold * (slope if strategy == 'calibrated' else 1.0)
    candidates = np.flatnonzero(delta > tau)
    return rng.permutation(candidates)[:batch]


def rates(delta, error, tau, threshold) -> tuple[float | None, float | None]:
    from aiida_trainspot.evaluation.calibration import classification_rates

    result = classification_rates(delta, error, tau, threshold)
    return tuple(None if not np.isfinite(result[k]) else float(result[k]) for k in ('tpr', 'ppv'))


def variant_name(strategy: str, kind: str, kinds: list[str]) -> str:
    """The results key of a strategy run with error kind ``kind``.

    The strategy's own name when one kind is run (the reports of earlier runs), else
    ``strategy:kind`` for the calibrated strategies (the others do not use the slope).
    """
    if len(kinds) > 1 and strategy in CALIBRATED:
        return f'{strategy}:{kind}'
    return strategy


def variants(strategies: list[str], kinds: list[str]) -> list[tuple[str, str]]:
    """``(strategy, error kind)`` runs: the calibrated strategies once per kind."""
    return [
        (strategy, kind)
        for strategy in strategies
        for kind in (kinds if strategy in CALIBRATED else kinds[:1])
    ]


def truth_rates(result: dict, tau: float, threshold: float) -> dict:
    """TPR/PPV of δ_F > τ against each truth of :data:`committee_oracle.TRUTHS` (no δ in them)."""
    out = {}
    for truth in TRUTHS:
        tpr, ppv = rates(*truth_pairs(result, truth), tau, threshold)
        out[truth] = {'tpr': tpr, 'ppv': ppv}
    return out


def run_strategy(strategy, kind, seed, pool, test, initial, args, root: Path, trained: dict):
    """One strategy's curve for one seed, calibrating against error kind ``kind``.

    :param trained: committees already trained, by ``(seed, round, labelled frames in order)``:
        the training depends on nothing else, so runs that reach the same labelled set share it
        (every run shares the first committee of a seed).
    """
    from aiida_trainspot.evaluation.calibration import fit_slope

    rng = np.random.default_rng([seed, STRATEGIES.index(strategy)])
    labelled = list(initial)
    curve = []
    for round_index in range(args.rounds + 1):
        # a fifth of the labelled frames (at least 2) are held out of training: the calibration set
        order = np.random.default_rng([seed, round_index]).permutation(len(labelled))
        n_valid = max(2, len(labelled) // 5)
        valid = [pool[labelled[i]] for i in order[:n_valid]]
        train = [pool[labelled[i]] for i in order[n_valid:]]
        key = (seed, round_index, tuple(labelled))
        if key not in trained:
            folder = root / f'{strategy}-{kind}-{seed}-{round_index}'
            member_seeds = [1000 * seed + 10 * round_index + m for m in range(args.members)]
            trained[key] = train_committee(
                train,
                valid,
                folder,
                member_seeds,
                args.epochs,
                channels=args.channels,
                vary_architecture=args.vary_architecture,
            )
        committee = load_committee(trained[key])
        test_result = predict(committee, test, kind)
        held_out = predict(committee, valid, kind)
        fit = fit_slope(
            held_out['delta_forces'],
            held_out['eps_forces'],
            min_points=2,
            previous_slope=1.0,
            property_name='forces',
        )
        tau = fit.slope * args.threshold
        tpr, ppv = rates(
            test_result['delta_forces'], test_result['eps_forces'], tau, args.threshold
        )
        temperatures = np.array([pool[i].info['temperature'] for i in labelled])
        point = {
            'round': round_index,
            'n_labels': len(labelled),
            'force_rmse': float(np.sqrt(np.mean(test_result['force_errors'] ** 2))),
            'energy_rmse_mev': float(1000 * np.sqrt(np.nanmean(test_result['eps_energy'] ** 2))),
            'error': kind,
            'slope': float(fit.slope),
            'tau': float(tau),
            # against the fitted kind's own error (circular for 'members': it holds δ)
            'tpr_test': tpr,
            'ppv_test': ppv,
            # against the same truths for every kind, neither of which holds δ
            'test_rates': truth_rates(test_result, tau, args.threshold),
            'labels_by_temperature': {
                str(int(t)): int(np.sum(temperatures == t)) for t in TEMPERATURES
            },
        }
        free = np.array(sorted(set(range(len(pool))) - set(labelled)))
        if round_index < args.rounds and free.size:
            pool_result = predict(committee, [pool[i] for i in free], kind)
            picked = choose(
                strategy,
                free,
                pool_result['delta_forces'],
                fit.slope,
                args.threshold,
                args.batch,
                rng,
            )
            point['n_candidates'] = int(
                np.sum(
                    pool_result['delta_forces']
                    > (tau if strategy in CALIBRATED else args.threshold)
                )
            )
            labelled += [int(free[i]) for i in picked]
        curve.append(point)
        print(f'  {strategy:>14} {kind} seed {seed} round {round_index}: {point}', flush=True)
        if (
            round_index < args.rounds
            and point.get('n_candidates', 1) == 0
            and strategy in (*CALIBRATED, 'uncalibrated')
        ):
            break  # converged by its own criterion: nothing left above τ
    return curve


def labels_to_reach(curve, target: float) -> int | None:
    """Labels at the first round whose test force RMSE is at or below ``target``."""
    for point in curve:
        if point['force_rmse'] <= target:
            return point['n_labels']
    return None


def summarise(results, seeds) -> dict:
    """Per strategy: final RMSE and the labels needed to reach random's final force RMSE."""
    summary = {}
    for strategy in results:
        per_seed = []
        for seed in range(seeds) if isinstance(seeds, int) else seeds:
            curve = results[strategy][str(seed)]
            target = results['random'][str(seed)][-1]
            reached = labels_to_reach(curve, target['force_rmse'])
            per_seed.append(
                {
                    'final_labels': curve[-1]['n_labels'],
                    'final_force_rmse': curve[-1]['force_rmse'],
                    'labels_to_random_final': reached,
                    'fraction_of_random_labels': None
                    if reached is None
                    else reached / target['n_labels'],
                }
            )
        fractions = [p['fraction_of_random_labels'] for p in per_seed]
        summary[strategy] = {
            'per_seed': per_seed,
            'mean_fraction_of_random_labels': None
            if None in fractions
            else float(np.mean(fractions)),
        }
    return summary


def rate_summary(results) -> dict:
    """Per run: mean, min and max over seeds and rounds of TPR and PPV against each truth.

    Rounds whose rate is undefined (no true positive, or nothing flagged) are left out and
    counted in ``undefined``. Points of reports written before ``test_rates`` existed have none.
    """
    summary = {}
    for name, curves in results.items():
        summary[name] = {}
        for truth in TRUTHS:
            entry = {}
            for key in ('tpr', 'ppv'):
                values = [
                    point['test_rates'][truth][key]
                    for curve in curves.values()
                    for point in curve
                    if 'test_rates' in point
                ]
                defined = [v for v in values if v is not None]
                entry[key] = {
                    'mean': float(np.mean(defined)) if defined else None,
                    'min': float(np.min(defined)) if defined else None,
                    'max': float(np.max(defined)) if defined else None,
                    'undefined': len(values) - len(defined),
                }
            summary[name][truth] = entry
    return summary


def plot(results, path: Path, args, seeds) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout='constrained')
    axes = figure.subplots(1, 2)
    palette = ('tab:red', 'tab:orange', 'tab:purple', 'tab:blue', 'tab:green')
    colours = dict(zip(STRATEGIES, palette, strict=True))
    styles = {'members': '-', 'committee_mean': '--'}
    for name in results:
        strategy, _, kind = name.partition(':')
        curves = [results[name][str(seed)] for seed in seeds]
        n_rounds = min(len(c) for c in curves)
        labels = np.array([[c[r]['n_labels'] for r in range(n_rounds)] for c in curves])
        for axis, key, scale in (
            (axes[0], 'force_rmse', 1000.0),
            (axes[1], 'energy_rmse_mev', 1.0),
        ):
            values = np.array([[c[r][key] for r in range(n_rounds)] for c in curves]) * scale
            for curve in curves:  # every seed's whole curve, faint: curves may end early
                axis.plot(
                    [p['n_labels'] for p in curve],
                    [p[key] * scale for p in curve],
                    color=colours[strategy],
                    ls=styles.get(kind, '-'),
                    alpha=0.25,
                    lw=1,
                )
            axis.errorbar(
                labels.mean(0),
                values.mean(0),
                yerr=values.std(0),
                xerr=labels.std(0),
                marker='s' if kind == 'committee_mean' else 'o',
                ls=styles.get(kind, '-'),
                capsize=3,
                color=colours[strategy],
                label=name,
            )
    axes[0].axhline(1000 * args.threshold, color='grey', ls='--', lw=1, label='ε_thr')
    axes[0].set_ylabel('test force RMSE (meV/Å)')
    axes[1].set_ylabel('test energy RMSE (meV/atom)')
    for axis in axes:
        axis.set_xlabel('labelled frames')
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(
        f'Label efficiency on EMT Cu: {args.members} MACE members ({args.channels} channels), '
        f'mean ± std over {args.seeds} seeds (faint: each seed)'
    )
    figure.savefig(path, dpi=120)


#: settings that must match for a reference report's random curves to be reused
COMPARABLE = (
    'rounds',
    'batch',
    'initial',
    'members',
    'channels',
    'epochs',
    'threshold',
    'pool',
    'test',
    'vary_architecture',
)
#: what reports written before a setting existed used instead
SETTINGS_BEFORE = {'vary_architecture': False}


def reference_random_curves(args, seeds) -> dict:
    """``random``'s curves for ``seeds`` from ``args.reference``; its settings must match."""
    report = json.loads(Path(args.reference).read_text())
    settings = {**SETTINGS_BEFORE, **report['settings']}
    different = [k for k in COMPARABLE if settings[k] != getattr(args, k)]
    if different:
        raise SystemExit(f'--reference {args.reference}: different settings {different}')
    missing = [seed for seed in seeds if str(seed) not in report['results']['random']]
    if missing:
        raise SystemExit(f'--reference {args.reference}: no random curve for seeds {missing}')
    return {str(seed): report['results']['random'][str(seed)] for seed in seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--batch', type=int, default=6)
    parser.add_argument('--initial', type=int, default=10)
    parser.add_argument('--members', type=int, default=2)
    parser.add_argument('--channels', type=int, default=8, help='MACE channels per member')
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument(
        '--vary-architecture',
        action='store_true',
        help='members differ in radial cutoff (3.5-5 Å) and width (a heterogeneous committee)',
    )
    parser.add_argument('--threshold', type=float, default=0.03, help='ε_thr of forces, eV/Å')
    parser.add_argument(
        '--error',
        default=DEFAULT_ERROR_KIND,
        help="the error the slope a relates δ to: 'members' (their RMS error, sqrt(ε² + δ²)) or "
        "'committee_mean' (the committee mean's); comma-separated, each calibrated strategy runs "
        f'with every kind named (default: the package default, {DEFAULT_ERROR_KIND})',
    )
    parser.add_argument(
        '--pool', default='40,20,10,6', help='pool frames per cell at 300,800,1300,1800 K'
    )
    parser.add_argument('--test', type=int, default=8, help='test frames per cell and temperature')
    parser.add_argument(
        '--strategies', default=','.join(STRATEGIES), help='comma-separated; random is added'
    )
    parser.add_argument('--first-seed', type=int, default=0, help='seeds first-seed, +1, ...')
    parser.add_argument(
        '--reference',
        default=None,
        help="an earlier report of this script with the same settings: its 'random' curves are "
        'reused instead of rerun (they are deterministic), to add a strategy to a study',
    )
    parser.add_argument('--json', default='benchmarks/results/label_efficiency.json')
    parser.add_argument('--png', default='benchmarks/results/label_efficiency.png')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, to check it runs')
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.rounds, args.batch, args.epochs, args.initial = 1, 1, 4, 3, 6
        args.pool, args.test = '4,3,2,2', 2
    strategies = [s for s in STRATEGIES if s in args.strategies.split(',') or s == 'random']
    unknown = set(args.strategies.split(',')) - set(STRATEGIES)
    if unknown:
        parser.error(f'unknown strategies {sorted(unknown)}; known: {list(STRATEGIES)}')
    kinds = list(dict.fromkeys(args.error.split(',')))
    if set(kinds) - set(ERROR_KINDS):
        parser.error(
            f'--error: unknown kinds {sorted(set(kinds) - set(ERROR_KINDS))}; '
            f'known: {list(ERROR_KINDS)}'
        )
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    reference = reference_random_curves(args, seeds) if args.reference else {}
    if reference:
        strategies.remove('random')
    start = time.perf_counter()
    counts = [int(c) for c in args.pool.split(',')]
    pool = md_frames(11, list(zip(TEMPERATURES, counts, strict=True)))
    test = md_frames(12, [(t, args.test) for t in TEMPERATURES])
    print(f'pool {len(pool)} frames, test {len(test)} frames ({time.perf_counter() - start:.0f} s)')
    runs = variants(strategies, kinds)
    results: dict = {variant_name(s, k, kinds): {} for s, k in runs}
    root = Path(tempfile.mkdtemp(prefix='trainspot-label-efficiency-'))
    trained: dict = {}
    try:
        for seed in seeds:
            initial = np.random.default_rng(seed).permutation(len(pool))[: args.initial].tolist()
            for strategy, kind in runs:
                curve = run_strategy(strategy, kind, seed, pool, test, initial, args, root, trained)
                results[variant_name(strategy, kind, kinds)][str(seed)] = curve
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if reference:
        results['random'] = reference
    summary = summarise(results, seeds)
    report = {
        'system': SYSTEM,
        'pool_frames': len(pool),
        'test_frames': len(test),
        'settings': vars(args),
        'seconds': round(time.perf_counter() - start, 1),
        'committees_trained': len(trained),
        'summary': summary,
        'test_rates': rate_summary(results),
        'results': results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    plot(results, Path(args.png), args, seeds)
    for name, entry in summary.items():
        reached = [p['labels_to_random_final'] for p in entry['per_seed']]
        print(
            f'{name:>28}: labels to reach random final force RMSE per seed {reached}, '
            f'mean fraction {entry["mean_fraction_of_random_labels"]}'
        )
    print('TPR / PPV of δ_F > τ on the test frames, mean (min-max) over seeds and rounds:')
    for name, truths in report['test_rates'].items():
        cells = []
        for truth, entry in truths.items():
            tpr, ppv = entry['tpr'], entry['ppv']
            if tpr['mean'] is None or ppv['mean'] is None:
                cells.append(f'{truth}: n/a')
                continue
            cells.append(
                f'{truth}: {tpr["mean"]:.2f} ({tpr["min"]:.2f}-{tpr["max"]:.2f}) / '
                f'{ppv["mean"]:.2f} ({ppv["min"]:.2f}-{ppv["max"]:.2f})'
            )
        print(f'{name:>28}: ' + '; '.join(cells))
    print(f'{len(trained)} committees trained')
    print(f'wrote {args.json} and {args.png} in {report["seconds"]} s')


if __name__ == '__main__':
    main()
