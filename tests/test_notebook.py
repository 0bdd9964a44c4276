"""The example notebook executes top to bottom (tiny settings) on a fresh profile."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_notebook_runs_and_draws_the_provenance(tmp_path, monkeypatch):
    config = tmp_path / 'config'
    monkeypatch.setenv('AIIDA_PATH', str(config))
    monkeypatch.delenv('AIIDA_PROFILE', raising=False)
    setup = subprocess.run(
        [BIN / 'aiida-trainspot', 'setup', '-e', 'C'],
        env=dict(os.environ),
        capture_output=True,
        text=True,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    notebook = nbformat.read(ROOT / 'examples/notebook/trainspot.ipynb', as_version=4)
    client = NotebookClient(
        notebook, timeout=900, kernel_name='python3', resources={'metadata': {'path': tmp_path}}
    )
    client.execute()
    graphs = list((tmp_path / 'notebook-results').glob('provenance-*.png'))
    assert len(graphs) == 1 and graphs[0].stat().st_size > 10_000
    plots = sorted(p.name for p in (tmp_path / 'notebook-results' / 'plots').glob('*.png'))
    assert plots == ['calibration.png', 'composition.png', 'parity.png', 'rmse.png']
    outputs = [o for cell in notebook.cells for o in cell.get('outputs', [])]
    assert not [o for o in outputs if o.get('output_type') == 'error']
