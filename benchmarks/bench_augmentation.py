"""Throughput of the rattle augmentation: frames per second on a diamond supercell.

Two ways of calling it are timed:

* ``batch``: one ``rattle(atoms, rng, n_configs=N)`` call; nearest-neighbour distances are
  computed once and shared by all N draws (how ``rattle`` is used on one input);
* ``per-frame``: N calls of ``rattle(atoms, rng)``; every call searches neighbours again
  (the cost inside ``distort``, where each strained frame has its own neighbour distances).

Usage::

    python benchmarks/bench_augmentation.py --frames 10000 --atoms 64 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

from aiida_trainspot.augmentation.generators import rattle


def diamond_supercell(n_atoms: int) -> Atoms:
    """Cubic diamond (8 atoms per cell) repeated to the fewest atoms >= ``n_atoms``.

    Among equally small replicas the most cubic one is taken (64 atoms: 2 x 2 x 2).
    """
    cells = max(1, math.ceil(n_atoms / 8))
    side = math.ceil(cells ** (1 / 3)) + 1
    candidates = itertools.product(range(1, side + 1), repeat=3)
    repeats = min(
        (r for r in candidates if math.prod(r) >= cells),
        key=lambda r: (math.prod(r), max(r) - min(r), r),
    )
    return bulk('C', 'diamond', a=3.567, cubic=True).repeat(repeats)


def time_batch(atoms: Atoms, n_frames: int, seed: int) -> float:
    start = time.perf_counter()
    frames = rattle(atoms, np.random.default_rng(seed), n_configs=n_frames)
    elapsed = time.perf_counter() - start
    assert len(frames) == n_frames
    return elapsed


def time_per_frame(atoms: Atoms, n_frames: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(n_frames):
        rattle(atoms, rng)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=10_000, help='frames to rattle')
    parser.add_argument('--atoms', type=int, default=64, help='atoms per frame (diamond)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--mode', choices=('batch', 'per-frame', 'both'), default='both', help='call pattern'
    )
    parser.add_argument('--json', type=Path, help='also write the results here')
    args = parser.parse_args(argv)

    atoms = diamond_supercell(args.atoms)
    modes = ('batch', 'per-frame') if args.mode == 'both' else (args.mode,)
    timers = {'batch': time_batch, 'per-frame': time_per_frame}
    results = []
    for mode in modes:
        elapsed = timers[mode](atoms, args.frames, args.seed)
        rate = args.frames / elapsed
        results.append(
            {
                'mode': mode,
                'frames': args.frames,
                'atoms': len(atoms),
                'seconds': elapsed,
                'frames_per_second': rate,
            }
        )
        print(
            f'rattle {mode}: {args.frames} frames x {len(atoms)} atoms in {elapsed:.2f} s '
            f'-> {rate:.0f} frames/s'
        )
    if args.json:
        payload = {
            'benchmark': 'rattle',
            'python': sys.version.split()[0],
            'numpy': np.__version__,
            'machine': platform.machine(),
            'results': results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
