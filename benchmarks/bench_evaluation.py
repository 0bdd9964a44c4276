"""Committee evaluation throughput: the evaluation's inference path against a plain ASE loop.

For a committee of MACE models (a tiny one, 8 channels max_L 0, and a medium one, 64 channels
max_L 1, both built with MACE's own constructors and random weights: throughput does not depend
on training) on rattled 64-atom diamond cells, in float64 and float32, this measures, in one run:

- ``ase loop``: every member on every frame through the ASE calculator (energy, forces, stress),
  the way a user would call it;
- ``inference b=N``: :func:`aiida_trainspot.evaluation.inference.predict_committee`, the code
  the ``trainspot-evaluate`` job runs, with ``batch_size`` N (1 = one ASE call per frame).

Throughput is in committee frames per second (a frame evaluated by every member). Each timing
follows a warm-up call and is the best of ``--repeats``. The largest deviation of every
inference result from the ASE loop is reported next to it.

Usage: ``.venv/bin/python benchmarks/bench_evaluation.py [--frames 32] [--members 2]
[--batch-sizes 1,4,16,64] [--json results.json] [--png results.png]``
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import mace  # noqa: F401  (first: it lets e3nn load its constants with torch >= 2.6)
import numpy as np
import torch
from ase.build import bulk

from aiida_trainspot.data.convert import columns_from_atoms
from aiida_trainspot.evaluation.inference import predict_committee
from aiida_trainspot.training.loader import load_calculator

MODELS = {
    'tiny': {'channels': 8, 'max_L': 0},
    'medium': {'channels': 64, 'max_L': 1},
}


def build_mace_model(channels: int, max_l: int, seed: int):
    """A MACE model as ``mace_run_train --model MACE`` builds it (r_max 4 Å, carbon only)."""
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    parity = {0: 'e', 1: 'o'}
    irreps = ' + '.join(f'{channels}x{ell}{parity[ell % 2]}' for ell in range(max_l + 1))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = modules.ScaleShiftMACE(
            r_max=4.0,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=3,
            interaction_cls=modules.interaction_classes['RealAgnosticResidualInteractionBlock'],
            interaction_cls_first=modules.interaction_classes['RealAgnosticInteractionBlock'],
            num_interactions=2,
            num_elements=1,
            hidden_irreps=o3.Irreps(irreps),
            MLP_irreps=o3.Irreps('16x0e'),
            atomic_energies=np.array([[-7.0]]),
            avg_num_neighbors=20.0,
            atomic_numbers=[6],
            correlation=3,
            gate=torch.nn.functional.silu,
            radial_MLP=[64, 64, 64],
            atomic_inter_scale=1.0,
            atomic_inter_shift=[0.0],
            heads=['Default'],
        )
    finally:
        torch.set_default_dtype(previous)
    return model


def frames_64(n_frames: int, seed: int = 0):
    """Rattled, slightly strained 64-atom diamond cells."""
    rng = np.random.default_rng(seed)
    base = bulk('C', 'diamond', a=3.567, cubic=True).repeat(2)
    frames = []
    for _ in range(n_frames):
        atoms = base.copy()
        atoms.set_cell(atoms.cell * rng.uniform(0.98, 1.03), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.07, atoms.positions.shape)
        frames.append(atoms)
    return frames


def ase_loop(calculators, frames):
    """Every member on every frame with plain ASE calls: energies, forces and stresses."""
    out = []
    for calculator in calculators:
        energy, forces, stress = [], [], []
        for atoms in frames:
            atoms = atoms.copy()
            atoms.calc = calculator
            energy.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
            stress.append(atoms.get_stress())
        out.append((np.array(energy), np.concatenate(forces), np.array(stress)))
    return out


def best_time(function, repeats: int) -> tuple[float, object]:
    best, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def deviation(predictions, reference) -> float:
    worst = 0.0
    for member, (energy, forces, stress) in enumerate(reference):
        worst = max(
            worst,
            float(np.max(np.abs(predictions.energy[member] - energy))),
            float(np.max(np.abs(predictions.forces[member] - forces))),
            float(np.max(np.abs(predictions.stress[member] - stress))),
        )
    return worst


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Frames/s against batch size, one line per model and dtype, the ASE loop dashed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4), layout='constrained')
    axis = figure.subplots()
    keys = sorted({(r['model'], r['dtype']) for r in rows})
    for index, (model, dtype) in enumerate(keys):
        colour = f'C{index}'
        mine = [r for r in rows if r['model'] == model and r['dtype'] == dtype]
        batched = [r for r in mine if r['method'] == 'inference']
        axis.plot(
            [r['batch_size'] for r in batched],
            [r['frames_per_second'] for r in batched],
            'o-',
            color=colour,
            label=f'{model} {dtype}: inference',
        )
        for r in mine:
            if r['method'] == 'ase loop':
                axis.axhline(r['frames_per_second'], color=colour, ls='--', lw=1)
    axis.set_xscale('log', base=2)
    axis.set_yscale('log')
    axis.set_xlabel('batch size (frames per model call)')
    axis.set_ylabel('committee frames / s (dashed: ASE loop)')
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=32, help='64-atom frames (default 32)')
    parser.add_argument('--members', type=int, default=2, help='committee size (default 2)')
    parser.add_argument('--batch-sizes', default='1,4,16,64')
    parser.add_argument('--dtypes', default='float64,float32')
    parser.add_argument('--models', default='tiny,medium')
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all)')
    parser.add_argument('--json', type=Path, default=None, help='write the results here')
    parser.add_argument('--png', type=Path, default=None, help='draw frames/s here')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
    frames = frames_64(args.frames)
    columns = columns_from_atoms(frames)
    rows = []
    header = (
        f'{"model":<7} {"dtype":<8} {"method":<16} {"frames/s":>9} {"speed-up":>9} '
        f'{"max |dev|":>10}'
    )
    print(f'{args.frames} frames x 64 atoms, committee of {args.members}, '
          f'{torch.get_num_threads()} torch threads')  # fmt: skip
    print(header)
    print('-' * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.models.split(','):
            spec = MODELS[size]
            paths = []
            for member in range(args.members):
                path = Path(tmp) / f'{size}-{member}.model'
                torch.save(build_mace_model(spec['channels'], spec['max_L'], member), path)
                paths.append(path)
            for dtype in args.dtypes.split(','):
                calculators = [load_calculator('mace', p, dtype=dtype) for p in paths]
                ase_loop(calculators, frames[:2])  # warm-up
                seconds, reference = best_time(lambda c=calculators: ase_loop(c, frames), 1)
                base = args.frames / seconds
                rows.append(
                    {'model': size, **spec, 'dtype': dtype, 'method': 'ase loop',
                     'batch_size': None, 'frames_per_second': base, 'speed_up': 1.0,
                     'max_deviation': 0.0}
                )  # fmt: skip
                print(f'{size:<7} {dtype:<8} {"ase loop":<16} {base:9.2f} {1.0:9.2f} {0.0:10.1e}')
                for batch_size in batch_sizes:
                    predict_committee(calculators, columns.take([0, 1]), batch_size=batch_size)

                    def run(c=calculators, b=batch_size):
                        return predict_committee(c, columns, batch_size=b)

                    seconds, predictions = best_time(run, args.repeats)
                    rate = args.frames / seconds
                    worst = deviation(predictions, reference)
                    method = f'inference b={batch_size}'
                    rows.append(
                        {'model': size, **spec, 'dtype': dtype, 'method': 'inference',
                         'batch_size': batch_size, 'frames_per_second': rate,
                         'speed_up': rate / base, 'max_deviation': worst}
                    )  # fmt: skip
                    print(
                        f'{size:<7} {dtype:<8} {method:<16} {rate:9.2f} {rate / base:9.2f} '
                        f'{worst:10.1e}'
                    )
    if args.json:
        result = {
            'benchmark': 'evaluation',
            'frames': args.frames,
            'atoms_per_frame': 64,
            'members': args.members,
            'torch_threads': torch.get_num_threads(),
            'machine': {'platform': platform.platform(), 'processor': platform.processor()},
            'rows': rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f'wrote {args.json}')
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        device = 'cpu' if not torch.cuda.is_available() else torch.cuda.get_device_name()
        plot(
            rows,
            args.png,
            f'{args.frames} x 64-atom frames, committee of {args.members}, {device}, '
            f'{torch.get_num_threads()} threads',
        )
        print(f'wrote {args.png}')


if __name__ == '__main__':
    main()
