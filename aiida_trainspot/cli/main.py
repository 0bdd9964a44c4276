"""Entry point of the ``aiida-trainspot`` command (click, in verdi's style)."""

from __future__ import annotations

import click

from aiida_trainspot import __version__


@click.group(context_settings={'help_option_names': ['-h', '--help']})
@click.version_option(__version__, prog_name='aiida-trainspot')
def cli() -> None:
    """Build machine-learning interatomic potentials by active learning, on AiiDA."""


@cli.command()
@click.argument('name', type=click.Choice(['carbon']))
def example(name: str) -> None:
    """Run a bundled example (examples/NAME) end to end."""
    raise click.ClickException(
        f'the {name} example needs the active-learning loop (TrainsPotWorkChain), which is not '
        'implemented yet: the set-up is done; see the README for what already works'
    )
