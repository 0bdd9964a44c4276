"""The worked example of docs/adding-an-engine.md, run as written.

The page's files are written to a folder that becomes an installed distribution (its
``pyproject.toml`` entry points as ``entry_points.txt``: what ``pip install`` writes), and the
example runs in a fresh Python with that folder on ``PYTHONPATH``: the stages find the toy
engines by the same entry point mechanism as the package's own, and no file of the package is
edited.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

PAGE = Path(__file__).parents[1] / 'docs' / 'adding-an-engine.md'
FILE_BLOCK = re.compile(r'<!-- file: (\S+) -->\n```[a-z]*\n(.*?)```', re.DOTALL)

PROFILE = """
from aiida.manage.configuration import create_profile, get_config
config = get_config(create=True)
create_profile(config, storage_backend='core.sqlite_dos', storage_config={}, name='toy',
               email='toy@example.org')
config.set_default_profile('toy', overwrite=True)
config.store()
"""


def page_files() -> dict[str, str]:
    return dict(FILE_BLOCK.findall(PAGE.read_text()))


def install(folder: Path, files: dict[str, str]) -> None:
    """The page's files in ``folder``, its pyproject's entry points as an installed dist-info."""
    (folder / 'toy_engines.py').write_text(files['toy_engines.py'])
    (folder / 'run_toy.py').write_text(files['run_toy.py'])
    project = tomllib.loads(files['pyproject.toml'])['project']
    dist = folder / 'toy_engines-0.1.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text(
        f'Metadata-Version: 2.1\nName: {project["name"]}\nVersion: {project["version"]}\n'
    )
    lines = []
    for group, points in project['entry-points'].items():
        lines.append(f'[{group}]')
        lines += [f'{name} = {target}' for name, target in points.items()]
    (dist / 'entry_points.txt').write_text('\n'.join(lines) + '\n')


def run_python(folder: Path, code: str) -> str:
    env = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join([str(folder), os.environ.get('PYTHONPATH', '')]),
        'AIIDA_PATH': str(folder / 'config'),
    }
    result = subprocess.run(
        [sys.executable, '-c', code],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_worked_example_registers_and_runs_two_engines(tmp_path):
    files = page_files()
    assert set(files) == {'toy_engines.py', 'pyproject.toml', 'run_toy.py'}
    install(tmp_path, files)
    run_python(tmp_path, PROFILE)
    output = run_python(tmp_path, (tmp_path / 'run_toy.py').read_text())
    lines = dict(line.split(' ', 1) for line in output.strip().splitlines())

    # exploration: four planned runs, each from a frame of the two-frame pool
    count, _, sources = lines['explored'].partition(' from ')
    assert int(count) == 4
    sources = eval(sources)  # a printed list of ints
    assert set(sources) <= {0, 1}
    # labelling: every Cu frame labelled, every Si frame failed with EMT's reason
    n_si = sources.count(1)
    assert lines['labelled'] == f'{4 - n_si} failed {n_si}'
    if n_si:
        assert 'Si' in lines['reasons'] or 'NotImplementedError' in lines['reasons']
    # a bad engine input is refused at submission with the engine's message
    assert 'rattle.stdev: must be in (0, 0.5)' in lines['refused:']
    # the selection strategy of the same package is found by its entry point
    assert lines['strategy'] == 'lowest-index'


def test_worked_example_labels_match_emt(tmp_path):
    """The toy labelling engine's energies are EMT's, frame by frame (a real computation)."""
    files = page_files()
    install(tmp_path, files)
    run_python(tmp_path, PROFILE)
    code = """
from aiida import engine, load_profile, orm
from ase.build import bulk
from aiida_trainspot.data import PESData
from aiida_trainspot.labelling.workchain import AbInitioLabellingWorkChain
load_profile()
frames = [bulk('Cu', cubic=True), bulk('Cu', cubic=True)]
frames[1].rattle(0.05, seed=3)
labels = engine.run(AbInitioLabellingWorkChain, dataset=PESData.from_ase(frames),
                    engine=orm.Str('emt'))
print(repr(labels['labelled'].get_column('energy')[0].tolist()))
"""
    energies = eval(run_python(tmp_path, code).strip().splitlines()[-1])
    frames = [bulk('Cu', cubic=True), bulk('Cu', cubic=True)]
    frames[1].rattle(0.05, seed=3)
    expected = []
    for atoms in frames:
        atoms.calc = EMT()
        expected.append(atoms.get_potential_energy())
    np.testing.assert_allclose(energies, expected, rtol=0, atol=1e-9)
    assert energies[0] != energies[1]
