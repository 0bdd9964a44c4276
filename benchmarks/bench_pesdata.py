"""PESData I/O and storage benchmark (not a test): prints a table, optionally writes JSON.

Compares, on the same frames (2-64 atoms, energy, forces and stress):
- write from a list of ase.Atoms: PESData.from_ase (validation included), ASE's
  extxyz writer, a raw h5py write of the same columns;
- read the columns as numpy arrays: PESData.get_columns, extxyz read, raw h5py;
- read back to ase.Atoms: PESData.to_ase, extxyz read, Atoms built from raw h5py arrays;
- peak RSS of a fresh process iterating the stored dataset in chunks;
- repository growth over 10 rounds of "concatenate new frames + re-split".

The column read asks PESData for the columns the raw file holds (structure, energy,
forces, stress); reading every column, the text metadata included, is reported beside it.
Every timing is the best of ``--repeat`` rounds (default 3) in which the ways of a job
take turns, so that all of them run under the same conditions.

Usage: python benchmarks/bench_pesdata.py [--frames 100000] [--repeat 3] [--json out.json]
A throw-away AiiDA profile (sqlite, no broker) is created in a temporary folder.
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


def make_frames(n_frames: int, seed: int = 0, min_atoms: int = 2, max_atoms: int = 64):
    """Labelled frames of random size on a jittered cubic grid (never overlapping)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing='ij'), -1).reshape(-1, 3) * 2.0
    frames = []
    for _ in range(n_frames):
        n = int(rng.integers(min_atoms, max_atoms + 1))
        positions = grid[:n] + rng.uniform(-0.2, 0.2, (n, 3))
        atoms = Atoms(
            numbers=rng.choice([6, 14], n), positions=positions, cell=np.eye(3) * 8.0, pbc=True
        )
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=float(rng.normal()),
            forces=rng.normal(size=(n, 3)),
            stress=rng.normal(size=6),
        )
        atoms.info['generation_method'] = 'rattle'
        frames.append(atoms)
    return frames


def timed(function, *args, repeat=1, **kwargs):
    """(best wall time of ``repeat`` calls, result of the last call)."""
    best = float('inf')
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def alternate(ways, repeat):
    """{way: (best time, last result)}, the ways taking turns in every round.

    Taking turns puts every way under the same conditions (other load on the machine,
    disk write-back of what an earlier way wrote), which timing one way after the other
    does not.
    """
    best = dict.fromkeys(ways, float('inf'))
    last = {}
    for _ in range(repeat):
        for way, function in ways.items():
            last.pop(way, None)  # free the previous result before making the next
            seconds, last[way] = timed(function)
            best[way] = min(best[way], seconds)
    return {way: (best[way], last[way]) for way in ways}


def raw_columns(frames):
    numbers = np.concatenate([a.numbers for a in frames])
    positions = np.concatenate([a.positions for a in frames])
    forces = np.concatenate([a.calc.results['forces'] for a in frames])
    n_atoms = np.array([len(a) for a in frames])
    cells = np.stack([a.cell.array for a in frames])
    pbc = np.stack([a.pbc for a in frames])
    energy = np.array([a.calc.results['energy'] for a in frames])
    stress = np.stack([a.calc.results['stress'] for a in frames])
    return dict(
        numbers=numbers,
        positions=positions,
        forces=forces,
        n_atoms=n_atoms,
        cell=cells,
        pbc=pbc,
        energy=energy,
        stress=stress,
    )


def raw_write(frames, path):
    import h5py

    with h5py.File(path, 'w') as handle:
        for key, value in raw_columns(frames).items():
            handle[key] = value


def raw_read(path):
    import h5py

    with h5py.File(path, 'r') as handle:
        return {key: handle[key][()] for key in handle}


def raw_to_atoms(path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    data = raw_read(path)
    offsets = np.concatenate([[0], np.cumsum(data['n_atoms'])])
    out = []
    for i in range(len(data['n_atoms'])):
        s, e = offsets[i], offsets[i + 1]
        atoms = Atoms(
            numbers=data['numbers'][s:e],
            positions=data['positions'][s:e],
            cell=data['cell'][i],
            pbc=data['pbc'][i],
        )
        atoms.calc = SinglePointCalculator(
            atoms, energy=data['energy'][i], forces=data['forces'][s:e], stress=data['stress'][i]
        )
        out.append(atoms)
    return out


def make_profile(folder: Path) -> None:
    os.environ['AIIDA_PATH'] = str(folder)
    subprocess.run(
        [sys.executable, '-m', 'aiida', 'presto', '--profile-name', 'bench'],
        check=True,
        capture_output=True,
        env=os.environ,
    )
    import aiida

    aiida.load_profile('bench', allow_switch=True)


# VmHWM: peak resident set of this process alone (ru_maxrss keeps the parent's pre-exec peak)
PEAK_RSS_SCRIPT = """
import sys, aiida
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1])
aiida.load_profile('bench')
from aiida.orm import load_node
node = load_node(int(sys.argv[1]))
before = hwm()
atoms = 0
for _, chunk in node.iter_columns(chunk_size=int(sys.argv[2])):
    atoms += int(chunk.n_atoms.sum())
print(atoms, before, hwm())
"""


def peak_rss(pk: int, chunk_size: int) -> tuple[int, float, float]:
    out = subprocess.run(
        [sys.executable, '-c', PEAK_RSS_SCRIPT, str(pk), str(chunk_size)],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ,
    ).stdout.split()
    return int(out[0]), int(out[1]) / 1024, int(out[2]) / 1024


def repository_growth(n_start: int, n_new: int, rounds: int) -> dict[str, float]:
    from aiida_trainspot.data import PESData

    def objects(node):
        repo = node.base.repository
        found = {
            f'shards/{n}': repo.get_object_size(f'shards/{n}')
            for n in repo.list_object_names('shards')
        }
        found[f'index-{node.pk}'] = repo.get_object_size('index.h5')
        return found

    all_frames = make_frames(n_start + rounds * n_new, seed=1)
    dataset = PESData.from_ase(all_frames[:n_start]).assign_split(0).store()
    distinct: dict[str, int] = objects(dataset)
    for r in range(rounds):
        new = PESData.from_ase(all_frames[n_start + r * n_new : n_start + (r + 1) * n_new]).store()
        dataset = PESData.concatenate([dataset, new]).assign_split(r + 1).store()
        distinct.update(objects(new))
        distinct.update(objects(dataset))
    once = PESData.from_ase(all_frames).store()
    once_size = sum(objects(once).values())
    stored = sum(distinct.values())
    return {
        'rounds': rounds,
        'frames': len(all_frames),
        'stored_bytes': stored,
        'distinct_frames_bytes': once_size,
        'growth_ratio': stored / once_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--frames', type=int, default=100_000)
    parser.add_argument('--chunk-size', type=int, default=10_000)
    parser.add_argument('--growth-start', type=int, default=2000)
    parser.add_argument('--growth-new', type=int, default=1000)
    parser.add_argument('--repeat', type=int, default=3, help='best of this many runs')
    parser.add_argument('--json', type=Path)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix='bench-pesdata-'))
    make_profile(tmp / 'aiida')
    from ase.io import read, write

    from aiida_trainspot.data import PESData

    frames = make_frames(args.frames)
    n_atoms = sum(len(a) for a in frames)
    print(f'{len(frames)} frames, {n_atoms} atoms (2-64 per frame), energy + forces + stress')
    results: dict[str, dict[str, float]] = {'write': {}, 'read_columns': {}, 'to_ase': {}}
    xyz, raw = tmp / 'frames.xyz', tmp / 'raw.h5'

    n = args.repeat
    written = alternate(
        {
            'pesdata': lambda: PESData.from_ase(frames),
            'extxyz': lambda: write(xyz, frames, format='extxyz'),
            'raw_h5py': lambda: raw_write(frames, raw),
        },
        n,
    )
    results['write'] = {way: seconds for way, (seconds, _) in written.items()}
    dataset = written['pesdata'][1]
    results['write']['pesdata_store'], _ = timed(dataset.store)
    frames.clear()  # the Atoms are not needed any more
    del written

    from aiida.orm import load_node

    def fresh(method):
        """``method`` called on a node loaded anew each time; the loading (like finding the
        raw file's path) is not timed, opening and reading the node's files is."""
        nodes = iter([load_node(dataset.pk) for _ in range(n)])
        return lambda: method(next(nodes))

    columns = ['energy', 'forces', 'stress']  # with the structure: what the raw file holds
    read_back = alternate(
        {
            'pesdata': fresh(lambda node: node.get_columns(columns)),
            'pesdata_every_column': fresh(lambda node: node.get_columns()),
            'raw_h5py': lambda: raw_read(raw),
        },
        n,
    )
    results['read_columns']['pesdata'] = read_back['pesdata'][0]
    results['read_columns']['extxyz'], _ = timed(read, xyz, index=':', format='extxyz', repeat=n)
    results['read_columns']['raw_h5py'] = read_back['raw_h5py'][0]
    results['read_all_columns'] = {'pesdata': read_back['pesdata_every_column'][0]}
    del read_back

    built = alternate(
        {
            'pesdata': fresh(lambda node: node.to_ase()),
            'raw_atoms_build': lambda: raw_to_atoms(raw),
        },
        n,
    )
    results['to_ase']['pesdata'] = built['pesdata'][0]
    results['to_ase']['extxyz'] = results['read_columns']['extxyz']
    results['to_ase']['raw_atoms_build'] = built['raw_atoms_build'][0]
    del built

    counted, rss_before, rss_after = peak_rss(dataset.pk, args.chunk_size)
    results['iterate'] = {
        'atoms': counted,
        'chunk_size': args.chunk_size,
        'rss_after_import_mb': rss_before,
        'peak_rss_mb': rss_after,
    }
    results['storage'] = repository_growth(args.growth_start, args.growth_new, 10)
    results['sizes_mb'] = {
        'pesdata_shard': sum(
            dataset.base.repository.get_object_size(f'shards/{n}')
            for n in dataset.base.repository.list_object_names('shards')
        )
        / 1e6,
        'extxyz': xyz.stat().st_size / 1e6,
        'raw_h5py': raw.stat().st_size / 1e6,
    }

    for job in ('write', 'read_columns', 'to_ase'):
        print(f'\n{job}:')
        for way, seconds in results[job].items():
            print(f'  {way:18s} {seconds:8.2f} s')
    w, r, a = results['write'], results['read_columns'], results['to_ase']
    ratios = {
        'write_speedup_vs_extxyz': w['extxyz'] / w['pesdata'],
        'write_and_store_speedup_vs_extxyz': w['extxyz'] / (w['pesdata'] + w['pesdata_store']),
        'read_speedup_vs_extxyz': r['extxyz'] / r['pesdata'],
        'read_vs_raw_h5py': r['pesdata'] / r['raw_h5py'],
        'to_ase_vs_raw_build': a['pesdata'] / a['raw_atoms_build'],
    }
    results['ratios'] = ratios
    every = results['read_all_columns']['pesdata']
    print(f'\nread every column (text metadata included): {every:.2f} s')
    print('\nratios:', json.dumps({k: round(v, 2) for k, v in ratios.items()}))
    print('iterate:', json.dumps(results['iterate']))
    print('storage:', json.dumps(results['storage']))
    print('sizes (MB):', json.dumps({k: round(v, 1) for k, v in results['sizes_mb'].items()}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == '__main__':
    main()
