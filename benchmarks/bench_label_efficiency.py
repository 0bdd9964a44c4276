"""Label efficiency of calibrated committee selection, against random, top-δ and uncalibrated.

An EMT oracle (ASE) on copper stands in for DFT. A pool of MD frames (bulk and vacancy cells,
300-1800 K, ±3 % strain; solid and liquid) plays the explored frames, its labels hidden until a
strategy selects a frame; independent MD frames at the same temperatures are the test set. Each
round trains a committee of tiny MACE models (``mace_run_train``) on the labelled frames, then
each strategy adds at most ``--batch`` pool frames:

- ``calibrated``: δ_F > τ = a·ε_thr, a fitted (least squares through the origin) on the
  labelled frames held out of training; a random subset of the candidates (the package's rule);
- ``uncalibrated``: δ_F > ε_thr, a random subset of the candidates;
- ``top``: the largest δ_F;
- ``random``: uniform from the pool.

All strategies start from the same random labelled frames for a seed. Reported per round: the
labels used, the committee-mean force RMSE (eV/Å) and energy RMSE (meV/atom) on the test set,
for the calibrated strategy the slope, τ and TPR/PPV of its criterion on the test frames.

Usage: python benchmarks/bench_label_efficiency.py [--seeds 3] [--rounds 4] [--batch 8]
       [--json out.json] [--png out.png] [--smoke]
The science comes from the package's plain modules (calibration, disagreement, inference);
no AiiDA profile is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STRATEGIES = ('calibrated', 'uncalibrated', 'top', 'random')
MACE_ARGS = [
    '--model', 'MACE', '--num_channels', '8', '--max_L', '0', '--r_max', '4.0',
    '--num_interactions', '2', '--correlation', '2', '--E0s', 'average', '--batch_size', '4',
    '--device', 'cpu', '--default_dtype', 'float64',
    '--energy_key', 'REF_energy', '--forces_key', 'REF_forces', '--stress_key', 'REF_stress',
]  # fmt: skip
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- data


def md_frames(seed: int, temperatures, n_per_run: int, interval: int = 10):
    """EMT-labelled frames from Langevin MD of Cu bulk and vacancy cells (2x2x2 conventional)."""
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    frames = []
    for temperature in temperatures:
        for vacancy in (False, True):
            atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat(2)
            if vacancy:
                del atoms[int(rng.integers(len(atoms)))]
            strain = 1.0 + rng.uniform(-0.03, 0.03)
            atoms.set_cell(atoms.cell * strain, scale_atoms=True)
            atoms.calc = EMT()
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
            dynamics = Langevin(
                atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02, rng=rng
            )
            dynamics.run(200)  # thermalise
            for _ in range(n_per_run):
                dynamics.run(interval)
                frame = atoms.copy()
                frame.calc = SinglePointCalculator(
                    frame,
                    energy=atoms.get_potential_energy(),
                    forces=atoms.get_forces(),
                    stress=atoms.get_stress(),
                )
                frames.append(frame)
    return frames


def write_xyz(frames, path: Path) -> None:
    from ase.io import write

    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info = {
            'REF_energy': atoms.get_potential_energy(),
            'REF_stress': atoms.get_stress(voigt=False),
        }
        copy.arrays['REF_forces'] = atoms.get_forces()
        out.append(copy)
    write(str(path), out, format='extxyz')


# ----------------------------------------------------------------------------- committee


def train_committee(train, valid, folder: Path, seeds, epochs: int) -> list[Path]:
    """Train one tiny MACE model per seed, two at a time (2 cores); return the model files."""
    folder.mkdir(parents=True, exist_ok=True)
    write_xyz(train, folder / 'train.xyz')
    write_xyz(valid, folder / 'valid.xyz')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    pending = list(seeds)
    running: list[tuple[subprocess.Popen, Path]] = []
    models = []
    while pending or running:
        while pending and len(running) < 2:
            seed = pending.pop(0)
            work = folder / f'member-{seed}'
            work.mkdir(exist_ok=True)
            command = [str(BIN / 'mace_run_train'), '--name', 'm', *MACE_ARGS]
            command += ['--train_file', '../train.xyz', '--valid_file', '../valid.xyz']
            command += ['--seed', str(seed), '--max_num_epochs', str(epochs)]
            command += ['--patience', str(epochs)]
            log = open(work / 'log', 'w')  # noqa: SIM115 - closed when the process ends
            running.append(
                (subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=log), work)
            )
        process, work = running.pop(0)
        if process.wait() != 0:
            raise RuntimeError(
                f'mace_run_train failed in {work}: {(work / "log").read_text()[-2000:]}'
            )
        models.append(work / 'm.model')
    return models


def predict(models, frames):
    """Per-frame δ_F, ε_F (eV/Å), energy error per atom (eV) of the committee mean."""
    from aiida_trainspot.data.convert import columns_from_atoms
    from aiida_trainspot.evaluation.inference import (
        predict_committee,
        prediction_columns,
        reference_labels,
    )
    from aiida_trainspot.training.loader import load_calculator

    calculators = [load_calculator('mace', m, dtype='float64') for m in models]
    columns = columns_from_atoms(frames)
    predictions = predict_committee(calculators, columns)
    out = prediction_columns(predictions, reference_labels(columns))
    return {
        'delta_forces': np.asarray(out.frame['delta_forces'], dtype=float),
        'eps_forces': np.asarray(out.frame['eps_forces'], dtype=float),
        'eps_energy': np.asarray(out.frame['eps_energy'], dtype=float),
        'force_errors': _force_errors(out, columns),
    }


def _force_errors(out, columns) -> np.ndarray:
    return (np.asarray(out.atom['forces_mean']) - np.asarray(columns.atom['forces'])).ravel()


# ----------------------------------------------------------------------------- strategies


def choose(strategy, pool_free, delta, slope, threshold, batch, rng) -> np.ndarray:
    """Indices into ``pool_free`` of the frames a strategy labels next."""
    if strategy == 'random':
        return rng.permutation(len(pool_free))[:batch]
    if strategy == 'top':
        return np.argsort(-delta)[:batch]
    tau = threshold * (slope if strategy == 'calibrated' else 1.0)
    candidates = np.flatnonzero(delta > tau)
    return rng.permutation(candidates)[:batch]


def rates(delta, error, tau, threshold) -> tuple[float | None, float | None]:
    from aiida_trainspot.evaluation.calibration import classification_rates

    result = classification_rates(delta, error, tau, threshold)
    return tuple(None if not np.isfinite(result[k]) else float(result[k]) for k in ('tpr', 'ppv'))


def run_strategy(strategy, seed, pool, test, initial, args, root: Path, first_round=None):
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
        if round_index == 0 and first_round is not None:
            models = first_round
        else:
            folder = root / f'{strategy}-{seed}-{round_index}'
            member_seeds = [1000 * seed + 10 * round_index + m for m in range(args.members)]
            models = train_committee(train, valid, folder, member_seeds, args.epochs)
        if round_index == 0 and first_round is None:
            first_round = models
        test_result = predict(models, test)
        held_out = predict(models, valid)
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
        point = {
            'round': round_index,
            'n_labels': len(labelled),
            'force_rmse': float(np.sqrt(np.mean(test_result['force_errors'] ** 2))),
            'energy_rmse_mev': float(1000 * np.sqrt(np.nanmean(test_result['eps_energy'] ** 2))),
            'slope': float(fit.slope),
            'tau': float(tau),
            'tpr_test': tpr,
            'ppv_test': ppv,
        }
        free = np.array(sorted(set(range(len(pool))) - set(labelled)))
        if round_index < args.rounds and free.size:
            pool_result = predict(models, [pool[i] for i in free])
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
                    > (tau if strategy == 'calibrated' else args.threshold)
                )
            )
            labelled += [int(free[i]) for i in picked]
        curve.append(point)
        print(f'  {strategy:>12} seed {seed} round {round_index}: {point}', flush=True)
    return curve, first_round


def plot(results, path: Path, args) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout='constrained')
    axes = figure.subplots(1, 2)
    colours = dict(
        zip(STRATEGIES, ('tab:red', 'tab:orange', 'tab:purple', 'tab:blue'), strict=True)
    )
    for strategy in STRATEGIES:
        curves = [results[strategy][str(seed)] for seed in range(args.seeds)]
        n_rounds = min(len(c) for c in curves)
        labels = np.array([[c[r]['n_labels'] for r in range(n_rounds)] for c in curves])
        for axis, key, scale in (
            (axes[0], 'force_rmse', 1000.0),
            (axes[1], 'energy_rmse_mev', 1.0),
        ):
            values = np.array([[c[r][key] for r in range(n_rounds)] for c in curves]) * scale
            axis.errorbar(
                labels.mean(0),
                values.mean(0),
                yerr=values.std(0),
                xerr=labels.std(0),
                marker='o',
                capsize=3,
                color=colours[strategy],
                label=strategy,
            )
    axes[0].axhline(1000 * args.threshold, color='grey', ls='--', lw=1, label='ε_thr')
    axes[0].set_ylabel('test force RMSE (meV/Å)')
    axes[1].set_ylabel('test energy RMSE (meV/atom)')
    for axis in axes:
        axis.set_xlabel('labelled frames')
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(
        f'Label efficiency on EMT Cu: {args.members} tiny MACE members, mean ± std over '
        f'{args.seeds} seeds'
    )
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--initial', type=int, default=8)
    parser.add_argument('--members', type=int, default=3)
    parser.add_argument('--epochs', type=int, default=40)
    parser.add_argument('--threshold', type=float, default=0.05, help='ε_thr of forces, eV/Å')
    parser.add_argument('--json', default='benchmarks/results/label_efficiency.json')
    parser.add_argument('--png', default='benchmarks/results/label_efficiency.png')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, to check it runs')
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.rounds, args.batch, args.epochs, args.initial = 1, 1, 4, 3, 6
    start = time.perf_counter()
    temperatures = (300.0, 800.0, 1300.0, 1800.0)
    pool = md_frames(11, temperatures, 4 if args.smoke else 30)
    test = md_frames(12, temperatures, 2 if args.smoke else 10)
    print(f'pool {len(pool)} frames, test {len(test)} frames ({time.perf_counter() - start:.0f} s)')
    results: dict = {s: {} for s in STRATEGIES}
    root = Path(tempfile.mkdtemp(prefix='trainspot-label-efficiency-'))
    try:
        for seed in range(args.seeds):
            initial = np.random.default_rng(seed).permutation(len(pool))[: args.initial].tolist()
            first_round = None
            for strategy in STRATEGIES:
                curve, first_round = run_strategy(
                    strategy, seed, pool, test, initial, args, root, first_round
                )
                results[strategy][str(seed)] = curve
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        'system': 'EMT Cu, 31-32 atoms, MD 300-1800 K, +-3 % strain',
        'pool_frames': len(pool),
        'test_frames': len(test),
        'settings': vars(args),
        'seconds': round(time.perf_counter() - start, 1),
        'results': results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    plot(results, Path(args.png), args)
    print(f'wrote {args.json} and {args.png} in {report["seconds"]} s')


if __name__ == '__main__':
    main()
