"""Entry point of the ``aiida-trainspot`` command (click, in verdi's style)."""

from __future__ import annotations

import click

from aiida_trainspot import __version__


@click.group(context_settings={'help_option_names': ['-h', '--help']})
@click.version_option(__version__, prog_name='aiida-trainspot')
def cli() -> None:
    """Build machine-learning interatomic potentials by active learning, on AiiDA."""


@cli.group()
def pseudos() -> None:
    """Pseudopotential families for the Quantum ESPRESSO engine."""


@pseudos.command('create')
@click.argument('label')
@click.option(
    '-e', '--element', 'elements', multiple=True, required=True, help='Element to include (repeat).'
)
@click.option(
    '-c',
    '--cutoffs',
    'cutoffs',
    multiple=True,
    metavar='EL=WFC,RHO',
    help='Cutoffs in Ry for an element, e.g. C=35,280 (repeat); known elements have defaults.',
)
@click.option(
    '-f', '--file', 'files', multiple=True, metavar='EL=NAME', help='UPF file name for an element.'
)
@click.option(
    '--folder',
    type=click.Path(exists=True, file_okay=False),
    default='/usr/share/espresso/pseudo',
    show_default=True,
    help='Folder holding the UPF files.',
)
def pseudos_create(
    label: str,
    elements: tuple[str, ...],
    cutoffs: tuple[str, ...],
    files: tuple[str, ...],
    folder: str,
):
    """Create a CutoffsPseudoPotentialFamily LABEL from a folder of UPF files (idempotent)."""
    try:
        parsed_cutoffs = {
            k: tuple(float(x) for x in v.split(','))
            for k, v in _pairs(cutoffs, '--cutoffs').items()
        }
        if any(len(v) != 2 for v in parsed_cutoffs.values()):
            raise click.BadParameter('give two numbers, e.g. C=35,280', param_hint='--cutoffs')
        from aiida import load_profile

        load_profile()
        from aiida_trainspot.labelling.qe.pseudos import create_pseudo_family

        family = create_pseudo_family(
            label, elements, parsed_cutoffs, folder, _pairs(files, '--file')
        )
    except ValueError as exception:
        raise click.ClickException(str(exception)) from exception
    click.echo(f'pseudo family {family.label}: {", ".join(sorted(family.elements))}')


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition('=')
        if not sep or not key or not rest:
            raise click.BadParameter(f'expected KEY=VALUE, got {value!r}', param_hint=option)
        pairs[key] = rest
    return pairs


from .setup import setup  # noqa: E402

cli.add_command(setup)
from .campaign import example, export, plot, run, status  # noqa: E402
from .data import data  # noqa: E402
from .deploy import deploy  # noqa: E402
from .evaluate import evaluate  # noqa: E402

for command in (run, status, plot, export, deploy, evaluate, example, data):
    cli.add_command(command)
