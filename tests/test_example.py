"""The README's main job: `aiida-trainspot setup` then `aiida-trainspot example carbon`.

Runs exactly what ``examples/carbon/run.sh`` runs after the install, in a fresh AiiDA
configuration folder: a new profile, localhost codes, the pseudopotential family, then the
campaign with pw.x labels, 3 tiny MACE members, ASE MD and 2 iterations, its plots and exports.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase.io import read

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_carbon_example_end_to_end(tmp_path):
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'config')}
    env.pop('AIIDA_PROFILE', None)
    out = tmp_path / 'results'
    start = time.monotonic()
    setup = subprocess.run(
        [BIN / 'aiida-trainspot', 'setup', '-e', 'C'], env=env, capture_output=True, text=True
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    example = subprocess.run(
        [BIN / 'aiida-trainspot', 'example', 'carbon', '--out', str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=15 * 60,
    )
    minutes = (time.monotonic() - start) / 60
    assert example.returncode == 0, example.stdout[-5000:] + example.stderr[-5000:]
    assert minutes <= 15, f'the carbon example took {minutes:.1f} min'
    lines = example.stdout.splitlines()
    assert any('iteration 1:' in line for line in lines)
    assert any('finished after 2 iterations' in line for line in lines)
    for name in ('rmse', 'parity', 'calibration', 'composition'):
        png = out / 'plots' / f'{name}.png'
        assert png.is_file() and png.stat().st_size > 5000
    frames = read(out / 'dataset.xyz', index=':')
    assert frames and all('REF_energy' in atoms.info for atoms in frames)
    assert len(list((out / 'models').glob('member_*/*.model'))) == 3
