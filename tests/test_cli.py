"""The aiida-trainspot command: pseudo family creation and bad input."""

from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily
from click.testing import CliRunner

from aiida_trainspot.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ['--version'])
    assert result.exit_code == 0
    assert 'aiida-trainspot' in result.output


def test_pseudos_create_is_idempotent():
    runner = CliRunner()
    args = ['pseudos', 'create', 'cli-test-CSi', '-e', 'C', '-e', 'Si', '-c', 'Si=25,100']
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    family = CutoffsPseudoPotentialFamily.collection.get(label='cli-test-CSi')
    assert sorted(family.elements) == ['C', 'Si']
    assert family.get_cutoffs()['Si'] == {'cutoff_wfc': 25.0, 'cutoff_rho': 100.0}
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output


def test_pseudos_create_bad_input_is_one_line():
    runner = CliRunner()
    missing_cutoff = runner.invoke(
        cli, ['pseudos', 'create', 'x', '-e', 'Fe', '-f', 'Fe=Fe.pbe-nd-rrkjus.UPF']
    )
    assert missing_cutoff.exit_code != 0
    assert 'Fe' in missing_cutoff.output and 'cutoffs' in missing_cutoff.output
    assert 'Traceback' not in missing_cutoff.output
    bad_pair = runner.invoke(cli, ['pseudos', 'create', 'x', '-e', 'C', '-c', 'C35'])
    assert bad_pair.exit_code != 0 and 'KEY=VALUE' in bad_pair.output
    ambiguous = runner.invoke(cli, ['pseudos', 'create', 'x', '-e', 'Fe', '-c', 'Fe=40,320'])
    assert ambiguous.exit_code != 0 and 'candidates' in ambiguous.output
