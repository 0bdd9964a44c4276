"""``aiida-trainspot data``: import, show and export PESData; bad input gives one line."""

import subprocess
import sys

import numpy as np
import pytest
from aiida import orm
from ase.io import read, write
from click.testing import CliRunner

from aiida_trainspot.cli.data import data
from aiida_trainspot.data import PESData


def invoke(*args):
    return CliRunner().invoke(data, [str(a) for a in args])


def assert_one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.output
    assert 'Traceback' not in result.output
    for word in words:
        assert word in lines[0]


@pytest.fixture
def extxyz_file(labelled_carbon_frames, tmp_path):
    path = tmp_path / 'carbon.xyz'
    write(path, labelled_carbon_frames[:6], format='extxyz')
    return path


@pytest.fixture
def imported(extxyz_file):
    result = invoke('import', extxyz_file, '--label', 'cli carbon')
    assert result.exit_code == 0, result.output
    return orm.load_node(int(result.output.split(':')[0]))


def test_import_show_export_round_trip(imported, labelled_carbon_frames, tmp_path):
    assert isinstance(imported, PESData) and imported.is_stored
    assert imported.label == 'cli carbon' and len(imported) == 6
    assert imported.base.attributes.get('n_labelled') == {'energy': 6, 'forces': 6, 'stress': 6}

    shown = invoke('show', imported.pk)
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert 'frames    6' in text and 'species   C' in text
    assert 'energy 6, forces 6, stress 6' in text and 'generation_method' in text
    assert 'unassigned 6' in text

    target = tmp_path / 'out.xyz'
    exported = invoke('export', imported.pk, target)
    assert exported.exit_code == 0, exported.output
    assert 'REF_energy' in exported.output
    frames = read(target, index=':', format='extxyz')
    assert len(frames) == 6
    for atoms, original in zip(frames, labelled_carbon_frames[:6], strict=True):
        assert atoms.calc is None  # labels only under the REF_ keys
        assert atoms.info['REF_energy'] == pytest.approx(original.get_potential_energy(), 1e-12)
        np.testing.assert_allclose(atoms.arrays['REF_forces'], original.get_forces(), atol=1e-7)
        np.testing.assert_allclose(
            atoms.info['REF_stress'], original.get_stress(voigt=False), atol=1e-12
        )
        assert atoms.info['generation_method'] == 'rattle'

    # and back in, labels read from the REF_ keys
    again = invoke('import', target, '--label-prefix', 'REF_', '--format', 'extxyz')
    assert again.exit_code == 0, again.output
    node = orm.load_node(int(again.output.split(':')[0]))
    energies, present = node.get_column('energy')
    assert present.all()
    np.testing.assert_allclose(energies, imported.get_column('energy')[0], rtol=1e-12)
    np.testing.assert_allclose(node.get_column('stress')[0], imported.get_column('stress')[0])


def test_export_with_calculator_results_and_prefix(imported, tmp_path):
    plain = tmp_path / 'plain.xyz'
    assert invoke('export', imported.pk, plain, '--label-prefix', '').exit_code == 0
    frames = read(plain, index=':')
    np.testing.assert_allclose(
        [a.get_potential_energy() for a in frames], imported.get_column('energy')[0]
    )
    mace = tmp_path / 'mace.xyz'
    assert invoke('export', imported.uuid, mace, '--label-prefix', 'DFT_').exit_code == 0
    assert 'DFT_energy' in read(mace, index=0).info


def test_show_lists_splits_and_extra_columns(labelled_carbon_frames):
    dataset = PESData.from_ase(labelled_carbon_frames[:4]).assign_split(seed=1)
    dataset = dataset.with_columns([0, 1], {'energy_mean': [1.0, 2.0]})
    dataset.store()
    result = invoke('show', dataset.pk)
    assert result.exit_code == 0, result.output
    assert 'energy_mean' in result.output and 'split' in result.output
    counts = dataset.base.attributes.get('split_counts')
    assert f'train {counts["train"]}' in result.output


def test_bad_input_is_one_line(tmp_path, imported):
    assert_one_line_error(invoke('import', tmp_path / 'missing.xyz'), 'no such file')
    garbage = tmp_path / 'garbage.xyz'
    garbage.write_text('this is\nnot an xyz file\n')
    assert_one_line_error(invoke('import', garbage), 'cannot read')
    unknown_format = tmp_path / 'frames.unknown-extension'
    unknown_format.write_text('1\n')
    assert_one_line_error(invoke('import', unknown_format), '--format')
    assert_one_line_error(invoke('show', 987654321), 'no node', '987654321')
    assert_one_line_error(invoke('export', 987654321, tmp_path / 'x.xyz'), 'no node')
    integer = orm.Int(3).store()
    assert_one_line_error(invoke('show', integer.pk), 'not a PESData', 'Int')
    assert_one_line_error(
        invoke('export', imported.pk, tmp_path / 'no' / 'such' / 'x.xyz'), 'no such folder'
    )


def test_import_of_the_module_loads_no_profile():
    code = (
        'import aiida_trainspot.cli.data; from aiida.manage import get_manager; '
        'assert get_manager().get_profile() is None'
    )
    subprocess.run([sys.executable, '-c', code], check=True)
