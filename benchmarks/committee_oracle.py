"""Shared pieces of the active-learning benchmarks: an EMT copper oracle and tiny MACE committees.

EMT (ASE) on copper stands in for DFT: it labels in microseconds, so the benchmarks measure the
selection and calibration science, not the cost of the labels. Committees are trained with the
real ``mace_run_train`` (the package's training engine) and evaluated with the package's own
inference, disagreement and calibration modules. No AiiDA profile is needed.

Imported by the ``bench_*.py`` scripts of this folder (run as ``python benchmarks/bench_x.py``,
which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: A tiny MACE model (channels set per call): about a second per epoch on a few dozen 32-atom
#: frames on one core. Trained in float32 (twice as fast on a CPU), evaluated in float64; the
#: energy weight is raised from MACE's 1 to 10 so that short trainings also fit the energies.
MACE_ARGS = [
    '--model', 'MACE', '--max_L', '0',
    '--num_interactions', '2', '--correlation', '2', '--E0s', 'average', '--batch_size', '4',
    '--device', 'cpu', '--default_dtype', 'float32', '--energy_weight', '10',
    '--energy_key', 'REF_energy', '--forces_key', 'REF_forces', '--stress_key', 'REF_stress',
]  # fmt: skip
BIN = Path(sys.executable).parent
#: How the reports describe the oracle's frames.
SYSTEM = 'EMT Cu, 31-32 atoms, Langevin MD 300-1800 K, +-3 % strain'


def md_frames(
    seed: int, plan: Sequence[tuple[float, int]], interval: int = 10, strain: float = 0.03
) -> list:
    """EMT-labelled frames from Langevin MD of Cu bulk and vacancy cells (2x2x2 conventional).

    :param plan: ``(temperature in K, frames per cell)`` pairs; each temperature runs one bulk
        and one vacancy cell, each strained by a random ±``strain`` (3 % by default),
        thermalised for 200 steps, then sampled every ``interval`` steps of 2 fs.
    """
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    frames = []
    for temperature, n_frames in plan:
        for vacancy in (False, True):
            atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat(2)
            if vacancy:
                del atoms[int(rng.integers(len(atoms)))]
            scale = 1.0 + rng.uniform(-strain, strain)
            atoms.set_cell(atoms.cell * scale, scale_atoms=True)
            atoms.calc = EMT()
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
            dynamics = Langevin(
                atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02, rng=rng
            )
            dynamics.run(200)  # thermalise
            for _ in range(n_frames):
                dynamics.run(interval)
                frame = atoms.copy()
                frame.calc = SinglePointCalculator(
                    frame,
                    energy=atoms.get_potential_energy(),
                    forces=atoms.get_forces(),
                    stress=atoms.get_stress(),
                )
                frame.info['temperature'] = float(temperature)
                frames.append(frame)
    return frames


def member_training_sets(train, seeds: Sequence[int], subsample: float | None) -> list:
    """Each member's training frames: all of them, or its own seeded random ``subsample`` fraction.

    Subsampling (bagging) makes the members differ in data as well as in initial weights, so that
    they disagree more where the data are thin (Imbalzano et al., J. Chem. Phys. 154, 074102).
    """
    if subsample is None:
        return [list(train) for _ in seeds]
    if not 0.0 < subsample <= 1.0:
        raise ValueError(f'subsample must lie in (0, 1], got {subsample}')
    size = max(1, round(subsample * len(train)))
    return [
        [train[i] for i in sorted(np.random.default_rng(seed).choice(len(train), size, False))]
        for seed in seeds
    ]


#: Radial cutoffs (Å) the members take in turn when their architectures vary: EMT copper's own
#: cutoff lies between the third and fourth neighbour shells (4.4 and 5.1 Å at 3.61 Å).
VARIED_R_MAX = (4.0, 3.5, 4.5, 5.0)


def member_architectures(n_members: int, channels: int, vary: bool) -> list[dict[str, float]]:
    """Each member's radial cutoff and width: all the same, or varied so members differ in form.

    Varying the architecture is a way to make members disagree for reasons other than their
    random initial weights (a heterogeneous committee). With ``vary``, member ``m`` takes the
    cutoff ``VARIED_R_MAX[m % 4]`` and twice the width in every other group of four, so that the
    sub-committees of the first 2 and 4 members differ already in cutoff.
    """
    if not vary:
        return [{'r_max': VARIED_R_MAX[0], 'channels': channels} for _ in range(n_members)]
    return [
        {'r_max': VARIED_R_MAX[m % 4], 'channels': channels * (1 + (m // 4) % 2)}
        for m in range(n_members)
    ]


def train_committee(
    train,
    valid,
    folder: Path,
    seeds: Sequence[int],
    epochs: int,
    channels: int = 8,
    subsample: float | None = None,
    vary_architecture: bool = False,
) -> list[Path]:
    """Train one tiny MACE model per seed, two at a time (2 cores); return the model files.

    :param subsample: when given, each member trains on its own random fraction of ``train``
        (see :func:`member_training_sets`); all members share ``valid``.
    :param vary_architecture: members differ in cutoff and width (:func:`member_architectures`).
    """
    from aiida_trainspot.data.convert import write_labelled_extxyz

    folder.mkdir(parents=True, exist_ok=True)
    write_labelled_extxyz(valid, folder / 'valid.xyz')
    member_sets = dict(zip(seeds, member_training_sets(train, seeds, subsample), strict=True))
    shapes = dict(
        zip(seeds, member_architectures(len(seeds), channels, vary_architecture), strict=True)
    )
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    pending = list(seeds)
    running: list[tuple[subprocess.Popen, Path]] = []
    models = []
    while pending or running:
        while pending and len(running) < 2:
            seed = pending.pop(0)
            work = folder / f'member-{seed}'
            work.mkdir(exist_ok=True)
            write_labelled_extxyz(member_sets[seed], work / 'train.xyz')
            command = [str(BIN / 'mace_run_train'), '--name', 'm', *MACE_ARGS]
            command += ['--num_channels', str(shapes[seed]['channels'])]
            command += ['--r_max', str(shapes[seed]['r_max'])]
            command += ['--train_file', 'train.xyz', '--valid_file', '../valid.xyz']
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


def load_committee(models: Sequence[Path]) -> list:
    """ASE calculators of the members, through the package's loader."""
    from aiida_trainspot.training.loader import load_calculator

    return [load_calculator('mace', m, dtype='float64') for m in models]


def predict(calculators, frames, error: str = 'committee_mean') -> dict[str, np.ndarray]:
    """Per-frame δ_F and force errors (eV/Å), energy error per atom (eV), per-component errors.

    Uses the package's committee inference and its disagreement/error definitions. ``eps_forces``
    is the error ``error`` names (the package's ``calibration.error``: the committee mean's, or
    the RMS over the members of each member's error, which holds δ). The two truths the criterion
    is scored against hold no δ: ``eps_forces_committee_mean`` (F,), the committee mean's error,
    and ``eps_forces_each_member`` (M, F), each member's own error. The energy and per-component
    force errors are those of the committee mean.
    """
    from aiida_trainspot.data.convert import columns_from_atoms
    from aiida_trainspot.evaluation.disagreement import CommitteePredictions, errors_of, true_errors
    from aiida_trainspot.evaluation.inference import (
        predict_committee,
        prediction_columns,
        reference_labels,
    )

    columns = columns_from_atoms(frames)
    predictions = predict_committee(list(calculators), columns)
    labels = reference_labels(columns)
    out = prediction_columns(predictions, labels)
    force_errors = np.asarray(out.atom['forces_mean']) - np.asarray(columns.atom['forces'])
    delta = np.asarray(out.frame['delta_forces'], dtype=float)
    mean_error = np.asarray(out.frame['eps_forces'], dtype=float)
    eps = errors_of(error, {'forces': delta}, {'forces': mean_error})['forces']
    each_member = np.stack(
        [
            true_errors(
                CommitteePredictions(
                    n_atoms=predictions.n_atoms,
                    energy=predictions.energy[m : m + 1],
                    forces=predictions.forces[m : m + 1],
                ),
                labels,
            ).forces
            for m in range(predictions.n_members)
        ]
    )
    return {
        'delta_forces': delta,
        'eps_forces': eps,
        'eps_forces_committee_mean': mean_error,
        'eps_forces_each_member': each_member,
        'eps_energy': np.asarray(out.frame['eps_energy'], dtype=float),
        'force_errors': force_errors.ravel(),
    }


#: The truths the criterion δ_F > τ is scored against, neither of which contains δ: the committee
#: mean's force error (what a user deploys) and a single member's (what drives the exploration's
#: MD: the package draws the member at random, so every member's own error counts, pooled).
TRUTHS = ('committee_mean', 'member')


def truth_pairs(result: dict, truth: str) -> tuple[np.ndarray, np.ndarray]:
    """(δ_F, ε_F) pairs of a truth (:data:`TRUTHS`) from :func:`predict`'s ``result``.

    For ``'member'`` every (frame, member) pair is one case, δ_F the frame's committee
    disagreement and ε_F that member's own error: rates over these pairs are those of a member
    drawn at random, as the exploration draws one.
    """
    delta = np.asarray(result['delta_forces'], dtype=float)
    if truth == 'committee_mean':
        return delta, np.asarray(result['eps_forces_committee_mean'], dtype=float)
    if truth == 'member':
        each = np.asarray(result['eps_forces_each_member'], dtype=float)
        return np.tile(delta, each.shape[0]), each.ravel()
    raise ValueError(f'unknown truth {truth!r}; known: {TRUTHS}')


def concatenate_results(*results: dict) -> dict:
    """:func:`predict` results of several frame sets as one (frames in the given order)."""
    return {
        key: np.concatenate([r[key] for r in results], axis=-1)
        for key in ('delta_forces', 'eps_forces', 'eps_forces_committee_mean')
    } | {
        'eps_forces_each_member': np.concatenate(
            [r['eps_forces_each_member'] for r in results], axis=1
        )
    }
