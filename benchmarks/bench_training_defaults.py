"""Which MACE training defaults learn energies, forces and stresses: loss weights and E0s.

Trains one MACE model per (recipe, seed) with the configuration the package writes
(:func:`aiida_trainspot.training.mace.config.build_config`, the recipe's options on top), the
architecture of the ``fast`` protocol by default, and reports the test-set RMSE of energy
(meV/atom), forces (meV/Å) and stress (meV/Å³) of each, and of a constant per-atom energy (the
mean of the training set: what a model that learned no energy at all scores).

Datasets:

- ``emt-cu`` (default): EMT copper from ``committee_oracle.md_frames`` (bulk and vacancy cells,
  Langevin MD at 300-1800 K, ±5 % strain, so the stresses vary), split train/valid/test by the
  seed; no isolated atoms.
- a path: an extended XYZ whose frames carry ``REF_energy``, ``REF_forces`` and, where they
  have one, ``REF_stress`` (what ``aiida-trainspot export`` writes, e.g. the carbon example's
  labelled dataset); shuffled and split by the seed. One-atom non-periodic frames (isolated
  atoms) always go to the training set, as the package's split does.

Recipes (:data:`RECIPES`; ``--recipes`` picks some): ``package`` is the package's current
defaults; the others change the loss weights, the second (energy-heavy) stage, or the E0s.

With ``--engine metatrain`` the package's metatrain options of the protocol are trained
(``mtt train``; recipe ``package`` only: metatrain scales every target to unit variance and fits
per-element baselines itself, so its loss weights need no unit juggling).

Usage: python benchmarks/bench_training_defaults.py [--dataset emt-cu|PATH] [--seeds 0,1]
       [--epochs 40] [--recipes package,...] [--protocol fast] [--engine mace|metatrain]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent

#: Options over the package's defaults, per recipe (``None`` values remove the option).
RECIPES: dict[str, dict] = {
    'mace-default': {'energy_weight': 1.0, 'forces_weight': 100.0, 'stress_weight': 1.0},
    'package': {},
    'energy-10': {'energy_weight': 10.0, 'forces_weight': 100.0, 'stress_weight': 1.0},
    'stage-two': {
        'energy_weight': 1.0,
        'forces_weight': 100.0,
        'stress_weight': 1.0,
        'swa': True,
        'swa_energy_weight': 1000.0,
        'swa_forces_weight': 100.0,
        'swa_stress_weight': 1.0,
    },
    'balanced': {'energy_weight': 100.0, 'forces_weight': 10.0, 'stress_weight': 100.0},
    'equal': {'energy_weight': 10.0, 'forces_weight': 10.0, 'stress_weight': 10.0},
    'energy-heavy': {'energy_weight': 1000.0, 'forces_weight': 10.0, 'stress_weight': 1000.0},
}


def emt_copper(seed: int) -> list:
    """EMT copper frames with varied strain (stresses that carry information)."""
    from committee_oracle import md_frames

    return md_frames(seed, [(300.0, 8), (800.0, 8), (1300.0, 8), (1800.0, 6)], strain=0.05)


def read_frames(path: str) -> list:
    """Frames of an extended XYZ with ``REF_`` labels, as SinglePointCalculator results."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    frames = []
    for atoms in read(path, index=':'):
        results = {'energy': atoms.info.pop('REF_energy'), 'forces': atoms.arrays.pop('REF_forces')}
        if 'REF_stress' in atoms.info:
            results['stress'] = np.asarray(atoms.info.pop('REF_stress'), dtype=float)
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def split(frames: list, seed: int) -> tuple[list, list, list]:
    """Train (60 %, plus every isolated atom), validation (20 %) and test (20 %) frames."""
    isolated = [a for a in frames if len(a) == 1 and not a.pbc.any()]
    rest = [a for a in frames if not (len(a) == 1 and not a.pbc.any())]
    order = np.random.default_rng(seed).permutation(len(rest))
    n_test = n_valid = max(1, round(0.2 * len(rest)))
    test = [rest[i] for i in order[:n_test]]
    valid = [rest[i] for i in order[n_test : n_test + n_valid]]
    train = [rest[i] for i in order[n_test + n_valid :]] + isolated
    return train, valid, test


def protocol_architecture(protocol: str, engine: str = 'mace') -> dict:
    """The options of a protocol for an engine (``training.parameters.<engine>``)."""
    import yaml

    import aiida_trainspot.protocols as protocols
    from aiida_trainspot.common.settings import recursive_merge

    data = yaml.safe_load((Path(protocols.__file__).parent / 'trainspot.yaml').read_text())
    merged = dict(data['default_inputs']['training']['parameters'].get(engine) or {})
    chosen = data['protocols'].get(protocol, {})
    extra = ((chosen.get('training') or {}).get('parameters') or {}).get(engine) or {}
    return recursive_merge(merged, extra)


def write_set(
    frames: list, path: Path, cutoff: float | None = None, weigh_2d_stress: bool = True
) -> None:
    """An extended XYZ under the ``REF_`` keys, 2D stresses as the package writes them.

    With a MACE ``cutoff``, as ``write_mace_xyz``: a 2D frame's stress label scaled to MACE's
    cell and, unless ``weigh_2d_stress`` is false (the package before 2026-12-07), its stress
    weight. Without one (metatrain), the labels as they are.
    """
    from aiida_trainspot.data.convert import write_extxyz_frame
    from aiida_trainspot.training.mace import config as mace_config

    with open(path, 'w') as handle:
        for atoms in frames:
            copy = atoms.copy()
            results = atoms.calc.results
            copy.info['REF_energy'] = float(results['energy'])
            copy.arrays['REF_forces'] = np.asarray(results['forces'])
            if 'stress' in results:
                stress = np.asarray(results['stress'], dtype=float)
                if cutoff is not None and not atoms.pbc.all():
                    stress, weight = mace_config.mace_stress_entry(
                        stress, atoms.positions, atoms.cell.array, atoms.pbc, cutoff
                    )
                    if weigh_2d_stress:
                        copy.info[mace_config.STRESS_WEIGHT_KEY] = weight
                copy.info['REF_stress'] = stress
            write_extxyz_frame(handle, copy)


def train(
    folder: Path,
    train_set: list,
    valid_set: list,
    options: dict,
    seed: int,
    weigh_2d_stress: bool = True,
) -> Path:
    """``mace_run_train`` with the package's configuration plus ``options``; the model file."""
    from aiida_trainspot.training.mace import config as mace_config

    folder.mkdir(parents=True, exist_ok=True)
    cutoff = float(options.get('r_max', mace_config.DEFAULTS['r_max']))
    write_set(train_set, folder / 'train.xyz', cutoff, weigh_2d_stress)
    write_set(valid_set, folder / 'valid.xyz', cutoff, weigh_2d_stress)
    isolated = mace_config.isolated_atom_energies(
        (a.numbers, a.pbc, a.calc.results['energy']) for a in train_set
    )
    species = {int(z) for a in train_set + valid_set for z in a.numbers}
    has_stress = any('stress' in a.calc.results for a in train_set)
    parameters = {k: v for k, v in options.items() if v is not None}
    config = mace_config.build_config(
        parameters,
        seed=seed,
        device='cpu',
        dtype='float64',
        train_file='train.xyz',
        valid_file='valid.xyz',
        species=species,
        has_stress=has_stress,
        isolated_atoms=isolated,
    )
    for key, value in options.items():
        if value is None:
            config.pop(key, None)
    (folder / 'config.yaml').write_text(mace_config.to_yaml(config))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    with open(folder / 'log', 'w') as log:
        code = subprocess.call(
            [str(BIN / 'mace_run_train'), '--config', 'config.yaml'],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=log,
        )
    if code:
        raise RuntimeError(f'mace_run_train failed: {(folder / "log").read_text()[-2000:]}')
    return folder / 'model' / f'{mace_config.NAME}.model'


def train_metatrain(
    folder: Path, train_set: list, valid_set: list, options: dict, seed: int
) -> Path:
    """``mtt train`` with the package's options plus ``options`` (merged); the model file."""
    import yaml

    from aiida_trainspot.training.metatrain import config as mtt_config

    folder.mkdir(parents=True, exist_ok=True)
    write_set(train_set, folder / 'train.xyz')
    write_set(valid_set, folder / 'valid.xyz')
    stress = all('stress' in a.calc.results for a in train_set + valid_set)
    config = mtt_config.build_options(
        options, seed=seed, dtype='float64', stress=stress, test_file=None
    )
    (folder / 'options.yaml').write_text(yaml.safe_dump(config))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    command = [str(BIN / 'mtt'), 'train', 'options.yaml', '-o', 'model.pt', '-e', 'extensions/']
    with open(folder / 'log', 'w') as log:
        code = subprocess.call(command, cwd=folder, env=env, stdout=log, stderr=log)
    if code:
        raise RuntimeError(f'mtt train failed: {(folder / "log").read_text()[-2000:]}')
    return folder / 'model.pt'


def errors(model: Path, test: list, engine: str = 'mace') -> dict[str, float]:
    """Energy (meV/atom), force (meV/Å) and stress (meV/Å³) RMSE on ``test``."""
    from aiida_trainspot.training.loader import load_calculator

    extensions = model.parent / 'extensions'
    calculator = load_calculator(
        engine, model, dtype='float64', extensions_dir=extensions if extensions.is_dir() else None
    )
    de, df, ds, ds_2d = [], [], [], []
    for atoms in test:
        reference = atoms.calc.results
        copy = atoms.copy()
        copy.calc = calculator
        de.append((copy.get_potential_energy() - reference['energy']) / len(atoms))
        df.append((copy.get_forces() - reference['forces']).ravel())
        if 'stress' in reference and atoms.pbc.any():
            error = copy.get_stress(voigt=True) - np.asarray(reference['stress']).ravel()[:6]
            (ds if atoms.pbc.all() else ds_2d).append(error)
    out = {
        'energy': 1000 * float(np.sqrt(np.mean(np.square(de)))),
        'forces': 1000 * float(np.sqrt(np.mean(np.square(np.concatenate(df))))),
    }
    if ds:
        out['stress'] = 1000 * float(np.sqrt(np.mean(np.square(np.concatenate(ds)))))
    if ds_2d:  # the in-plane components over the frame's own volume, as the dataset has them
        in_plane = np.concatenate([e[[0, 1, 5]] for e in ds_2d])
        out['stress_2d'] = 1000 * float(np.sqrt(np.mean(np.square(in_plane))))
    return out


def constant_energy_rmse(train_set: list, test: list) -> float:
    """meV/atom RMSE of predicting every test frame at the training set's mean energy per atom."""
    periodic = [a for a in train_set if a.pbc.any()]
    mean = np.mean([a.calc.results['energy'] / len(a) for a in periodic])
    values = [a.calc.results['energy'] / len(a) - mean for a in test]
    return 1000 * float(np.sqrt(np.mean(np.square(values))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', default='emt-cu')
    parser.add_argument('--seeds', default='0,1')
    parser.add_argument('--epochs', type=int, default=None, help='default: the protocol')
    parser.add_argument('--recipes', default=','.join(RECIPES))
    parser.add_argument('--protocol', default='fast')
    parser.add_argument('--engine', default='mace', choices=['mace', 'metatrain'])
    parser.add_argument('--json', default=None)
    parser.add_argument(
        '--no-2d-stress-weight',
        action='store_true',
        help="2D frames' stress unweighted in MACE's loss, as the package before 2026-12-07",
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(',')]
    recipes = args.recipes.split(',')
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise SystemExit(f'unknown recipes {unknown}; known: {list(RECIPES)}')
    architecture = protocol_architecture(args.protocol, args.engine)
    if args.engine == 'metatrain':
        recipes = ['package']
        if args.epochs:
            architecture['architecture']['training']['num_epochs'] = args.epochs
    elif args.epochs:
        architecture.update(max_num_epochs=args.epochs, patience=args.epochs)
    results: dict = {
        'dataset': args.dataset,
        'engine': args.engine,
        'architecture': architecture,
        'runs': [],
    }
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            frames = emt_copper(seed) if args.dataset == 'emt-cu' else read_frames(args.dataset)
            train_set, valid_set, test = split(frames, seed)
            baseline = constant_energy_rmse(train_set, test)
            for recipe in recipes:
                folder = Path(tmp) / f'{recipe}-{seed}'
                if args.engine == 'metatrain':
                    model = train_metatrain(folder, train_set, valid_set, architecture, seed)
                else:
                    options = {**architecture, **RECIPES[recipe]}
                    model = train(
                        folder, train_set, valid_set, options, seed, not args.no_2d_stress_weight
                    )
                row = {'recipe': recipe, 'seed': seed, 'constant_energy': baseline}
                row.update(errors(model, test, args.engine))
                results['runs'].append(row)
                print(json.dumps(row), flush=True)
    results['wall_s'] = time.time() - start
    print(f'\n{args.dataset}: {len(seeds)} seeds, {time.time() - start:.0f} s')
    print(f'{"recipe":22s} {"E meV/atom":>11s} {"F meV/Å":>9s} {"S meV/Å³":>9s} {"S 2D":>9s}')
    for recipe in recipes:
        rows = [r for r in results['runs'] if r['recipe'] == recipe]
        mean = {
            k: np.nanmean([r.get(k, np.nan) for r in rows])
            for k in ('energy', 'forces', 'stress', 'stress_2d')
        }
        print(
            f'{recipe:22s} {mean["energy"]:11.1f} {mean["forces"]:9.1f} {mean["stress"]:9.2f}'
            f' {mean["stress_2d"]:9.2f}'
        )
    constant = np.mean([r['constant_energy'] for r in results['runs']])
    print(f'{"(constant energy)":22s} {constant:11.1f}')
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
