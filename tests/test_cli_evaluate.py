"""``aiida-trainspot evaluate PK FILE`` with the real tiny MACE committee of a stand-in campaign."""

import csv
import math

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write
from click.testing import CliRunner

from aiida_trainspot.calculator import CommitteeCalculator
from aiida_trainspot.cli import cli
from aiida_trainspot.data.convert import full_stress
from aiida_trainspot.evaluation.calibration import Calibration

PROPERTIES = ('energy', 'forces', 'stress')


def calibration(error='committee_mean'):
    return Calibration(slopes={'energy': 2.0, 'forces': 0.7, 'stress': 1.5}, error=error)


def bare(frame):
    """``frame`` without labels (no calculator)."""
    return Atoms(frame.numbers, frame.positions, cell=frame.cell, pbc=frame.pbc)


def carbon_cluster():
    positions = [[0.0, 0.0, 0.0], [1.5, 0.1, 0.0], [0.1, 1.45, 0.1], [1.4, 1.5, 0.2]]
    return Atoms('C4', positions=positions, pbc=False)


def read_csv(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def number(text):
    return float(text) if text else math.nan


def direct(tiny_committee_files, calibration_, frames):
    """The committee's results, frame by frame, from the model files themselves."""
    files = tiny_committee_files['mace']
    committee = CommitteeCalculator.from_files(
        [m['model'] for m in files], calibration=calibration_
    )
    results = []
    for frame in frames:
        atoms = bare(frame)
        atoms.calc = committee
        atoms.get_potential_energy()
        results.append(dict(committee.results))
    return results


@pytest.fixture
def campaign(fake_campaign, tiny_mace_committee):
    return fake_campaign(tiny_mace_committee, calibration())


def test_unlabelled_frames(campaign, tiny_committee_files, labelled_carbon_frames, tmp_path):
    frames = [bare(f) for f in labelled_carbon_frames[24:28]] + [carbon_cluster()]
    path = tmp_path / 'frames.xyz'
    write(path, frames, format='extxyz')
    out = tmp_path / 'out'
    result = CliRunner().invoke(cli, ['evaluate', str(campaign.pk), str(path), '--out', str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ['frame', 'n_atoms'])
    rows = lines[header + 1 : header + 1 + len(frames)]
    assert [int(row.split()[0]) for row in rows] == list(range(len(frames)))
    assert 'errE' not in lines[header]  # no labels: no true errors
    assert lines[header + 1 + len(frames)].startswith('E/atom: eV')
    for name in ('predictions.xyz', 'predictions.csv', 'error_bars.png'):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    table = read_csv(out / 'predictions.csv')
    assert len(table) == len(frames)
    assert 'eps_energy' not in table[0]
    written = read(out / 'predictions.xyz', index=':')
    assert len(written) == len(frames)
    frames = read(path, index=':')  # the positions the command sees (extxyz rounds them)
    expected = direct(tiny_committee_files, calibration(), frames)
    for index, (row, atoms, want) in enumerate(zip(table, written, expected, strict=True)):
        assert int(row['n_atoms']) == len(frames[index])
        assert number(row['energy_mean']) == pytest.approx(want['energy'], rel=1e-10)
        assert atoms.info['energy_mean'] == pytest.approx(want['energy'], rel=1e-10)
        # extxyz writes per-atom arrays with 8 decimals
        np.testing.assert_allclose(atoms.arrays['forces_mean'], want['forces'], atol=1e-7)
        for name in PROPERTIES:
            key = f'{name}_uncertainty'
            if name == 'stress' and index == len(frames) - 1:  # the cluster has no stress
                assert key not in want
                assert row['estimated_error_stress'] == ''
                assert 'estimated_error_stress' not in atoms.info
                continue
            assert math.isfinite(want[key])
            assert number(row[f'estimated_error_{name}']) == pytest.approx(want[key], rel=1e-10)
            assert atoms.info[f'estimated_error_{name}'] == pytest.approx(want[key], rel=1e-10)
            assert number(row[f'delta_{name}']) == pytest.approx(
                want[f'{name}_disagreement'], rel=1e-10
            )
        np.testing.assert_allclose(
            atoms.arrays['estimated_error_forces_per_atom'],
            want['forces_uncertainty_per_atom'],
            atol=1e-7,
        )
    # without --out: the table only
    again = CliRunner().invoke(cli, ['evaluate', str(campaign.pk), str(path)])
    assert again.exit_code == 0, again.output
    assert 'predictions.csv' not in again.output


@pytest.mark.parametrize('error', ['committee_mean', 'members'])
def test_labelled_frames(
    error,
    fake_campaign,
    tiny_mace_committee,
    tiny_committee_files,
    labelled_carbon_frames,
    tmp_path,
):
    cal = calibration(error)
    node = fake_campaign(tiny_mace_committee, cal)
    frames = labelled_carbon_frames[24:28]
    path = tmp_path / 'labelled.xyz'
    write(path, frames, format='extxyz')
    out = tmp_path / 'out'
    result = CliRunner().invoke(cli, ['evaluate', str(node.pk), str(path), '--out', str(out)])
    assert result.exit_code == 0, result.output
    assert 'errE' in result.output and 'within' in result.output
    table = read_csv(out / 'predictions.csv')
    written = read(out / 'predictions.xyz', index=':')
    frames = read(path, index=':')  # the positions and labels the command sees
    expected = direct(tiny_committee_files, cal, frames)
    for row, atoms, frame, want in zip(table, written, frames, expected, strict=True):
        n_atoms = len(frame)
        reference = frame.calc.results
        eps = {
            'energy': abs(want['energy'] - reference['energy']) / n_atoms,
            'forces': np.sqrt(np.mean((want['forces'] - reference['forces']) ** 2)),
            'stress': np.sqrt(
                np.mean((full_stress(want['stress']) - full_stress(reference['stress'])) ** 2)
            ),
        }
        for name in PROPERTIES:
            assert number(row[f'eps_{name}']) == pytest.approx(eps[name], rel=1e-8)
            # the error a calibration estimates: the committee mean's, or the members' RMS
            delta = want[f'{name}_disagreement']
            kind = eps[name] if error == 'committee_mean' else math.hypot(eps[name], delta)
            assert number(row[f'error_{name}']) == pytest.approx(kind, rel=1e-8)
            within = kind <= want[f'{name}_uncertainty']
            assert row[f'within_{name}'] == str(within)
            assert atoms.info[f'within_{name}'] == within
        # the labels travel under REF_ keys
        assert atoms.info['REF_energy'] == pytest.approx(reference['energy'])
        np.testing.assert_allclose(atoms.arrays['REF_forces'], reference['forces'], atol=1e-7)


def test_bad_input_is_one_line(campaign, tmp_path):
    from aiida import orm

    runner = CliRunner()
    good = tmp_path / 'one.xyz'
    write(good, carbon_cluster(), format='extxyz')
    other = orm.Int(3).store()
    for pk, message in ((other.pk, 'not a TrainsPotWorkChain'), (987654321, 'no node')):
        result = runner.invoke(cli, ['evaluate', str(pk), str(good)])
        assert result.exit_code != 0
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert message in result.output and 'Traceback' not in result.output
    junk = tmp_path / 'junk.xyz'
    junk.write_text('this is not\nan xyz file at all\n')
    unknown = tmp_path / 'frames.unknown-format'
    unknown.write_text('nothing\n')
    for path in (junk, unknown, tmp_path / 'missing.xyz'):
        result = runner.invoke(cli, ['evaluate', str(campaign.pk), str(path)])
        assert result.exit_code != 0
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert str(path) in result.output and 'Traceback' not in result.output
