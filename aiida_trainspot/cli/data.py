"""``aiida-trainspot data``: import, inspect and export :class:`~aiida_trainspot.data.PESData`.

- ``import FILE``: read every frame of any file ASE reads (extended XYZ, ASE database, VASP
  OUTCAR/vasprun.xml, Quantum ESPRESSO output, ...) into a stored ``PESData``; print its PK.
  Labels come from the calculator results ASE attaches (``energy``, ``forces``, ``stress``), or
  with ``--label-prefix REF_`` from ``info['REF_energy']``, ``arrays['REF_forces']`` and
  ``info['REF_stress']`` (what ``export`` writes).
- ``show PK``: one summary of a dataset.
- ``export PK FILE``: write an extended-XYZ file that MACE (``--energy_key REF_energy
  --forces_key REF_forces --stress_key REF_stress``) and metatrain (``read_from``/``key``
  ``REF_energy``, ``REF_forces``, ``REF_stress``) both read: labels under
  ``<prefix>energy``/``<prefix>forces``/``<prefix>stress`` (default prefix ``REF_``), the
  stress as a 3x3 matrix in eV/Å³ with ASE's sign (metatrain wants 3x3, MACE takes both);
  ``--label-prefix ''`` writes the labels as ASE calculator results instead. Metadata columns
  (``split``, ``generation_method``, ...) go into ``info``/``arrays``. A frame without a label
  simply lacks its key: MACE then leaves that property out of the loss for the frame, while
  metatrain wants the key it is told to read on every frame (the training calculations write
  NaN there for it: ``write_metatrain_xyz`` of :mod:`aiida_trainspot.training.metatrain`).

The AiiDA profile is loaded inside each command (the default profile, unless one is loaded
already), never at import. Bad input ends in one ``Error:`` line and exit status 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

PREFIX_HELP = (
    'Prefix of the label keys: <prefix>energy and <prefix>stress in info, <prefix>forces in arrays.'
)


def _load_profile() -> None:
    """Load the default AiiDA profile unless a profile is loaded already."""
    from aiida.manage import get_manager

    if get_manager().get_profile() is not None:
        return
    from aiida import load_profile

    try:
        load_profile()
    except Exception as exception:
        raise click.ClickException(
            f'cannot load the AiiDA profile: {_one_line(exception)}'
        ) from None


def _load_dataset(identifier: str) -> Any:
    """The stored PESData with PK (or UUID) ``identifier``."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from aiida_trainspot.data import PESData

    _load_profile()
    try:
        node = orm.load_node(int(identifier) if identifier.isdigit() else identifier)
    except NotExistent:
        raise click.ClickException(f'no node with PK or UUID {identifier}') from None
    except MultipleObjectsError:
        raise click.ClickException(f'more than one node matches {identifier!r}') from None
    except (ValueError, TypeError) as exception:
        raise click.ClickException(
            f'not a PK or UUID: {identifier!r} ({_one_line(exception)})'
        ) from None
    if not isinstance(node, PESData):
        raise click.ClickException(
            f'node {node.pk} is not a PESData dataset (its type: {type(node).__name__})'
        )
    return node


def _one_line(exception: BaseException) -> str:
    """The message of ``exception`` on one line."""
    return ' '.join(str(exception).split()) or type(exception).__name__


def _label_keys(prefix: str) -> dict[str, str]:
    return {name: f'{prefix}{name}' for name in ('energy', 'forces', 'stress')}


@click.group('data')
def data() -> None:
    """Labelled datasets (PESData): import, show and export."""


def read_frames(path: Path, file_format: str | None = None) -> list[Any]:
    """Every frame of ``path``; bad input: one-line ClickException."""
    if not path.is_file():
        raise click.ClickException(f'no such file: {path}')
    from ase.io import read
    from ase.io.formats import UnknownFileTypeError

    try:
        frames = read(str(path), index=':', format=file_format)
    except UnknownFileTypeError as exception:
        raise click.ClickException(
            f'ASE cannot tell or does not know the format of {path} ({_one_line(exception)}); '
            'name one with --format, e.g. extxyz'
        ) from None
    except Exception as exception:
        raise click.ClickException(f'cannot read {path} with ASE: {_one_line(exception)}') from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise click.ClickException(f'{path} holds no frames')
    return frames


@data.command('import')
@click.argument('file', type=click.Path(dir_okay=False, path_type=Path))
@click.option('-L', '--label', default=None, help='Label of the new node.')
@click.option('-D', '--description', default=None, help='Description of the new node.')
@click.option(
    '-F',
    '--format',
    'file_format',
    default=None,
    help='ASE format name (e.g. extxyz, vasp-out, espresso-out); guessed from the file if left '
    'out.',
)
@click.option(
    '--label-prefix',
    default=None,
    help=PREFIX_HELP + ' Left out: labels from the calculator results ASE attaches.',
)
def data_import(
    file: Path,
    label: str | None,
    description: str | None,
    file_format: str | None,
    label_prefix: str | None,
) -> None:
    """Import a file as a PESData; print its PK.

    Every frame of FILE, in any format ASE reads, goes into one stored PESData.
    """
    frames = read_frames(file, file_format)
    from aiida_trainspot.data import PESData

    _load_profile()  # an unstored node needs the profile too
    keys = _label_keys(label_prefix) if label_prefix else {}
    try:
        dataset = PESData.from_ase(
            frames,
            energy_key=keys.get('energy'),
            forces_key=keys.get('forces'),
            stress_key=keys.get('stress'),
        )
    except (ValueError, TypeError) as exception:
        raise click.ClickException(f'{file}: {_one_line(exception)}') from None
    if label is not None:
        dataset.label = label
    if description is not None:
        dataset.description = description
    dataset.store()
    labelled = dataset.base.attributes.get('n_labelled')
    click.echo(
        f'{dataset.pk}: PESData of {len(dataset)} frames from {file.name} '
        f'(labelled: {", ".join(f"{k} {v}" for k, v in labelled.items())})'
    )


@data.command('show')
@click.argument('identifier', metavar='PK')
def data_show(identifier: str) -> None:
    """Summarise a PESData: frames, atoms, species, labels, splits, columns."""
    dataset = _load_dataset(identifier)
    attributes = dataset.base.attributes
    n_frames = int(attributes.get('n_frames'))
    n_atoms = int(attributes.get('n_atoms'))
    per_frame = dataset.n_atoms_per_frame() if n_frames else []
    labelled = attributes.get('n_labelled', {})
    splits = attributes.get('split_counts', {})
    metadata = attributes.get('metadata_columns', [])
    rows = [
        ('PK', f'{dataset.pk} ({dataset.uuid})'),
        ('label', dataset.label or '-'),
        ('frames', str(n_frames)),
        (
            'atoms',
            f'{n_atoms}' + (f' ({min(per_frame)}-{max(per_frame)} per frame)' if n_frames else ''),
        ),
        ('species', ', '.join(attributes.get('species', [])) or '-'),
        ('labelled', ', '.join(f'{k} {v}' for k, v in labelled.items())),
        ('splits', ', '.join(f'{k} {v}' for k, v in splits.items())),
        ('columns', ', '.join(metadata) or '-'),
        ('units', ', '.join(f'{k} {v}' for k, v in attributes.get('units', {}).items())),
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        click.echo(f'{key:<{width}}  {value}')


@data.command('export')
@click.argument('identifier', metavar='PK')
@click.argument('file', type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    '--label-prefix',
    default='REF_',
    show_default=True,
    help=PREFIX_HELP + " '' writes ASE calculator results (energy, forces, stress).",
)
def data_export(identifier: str, file: Path, label_prefix: str) -> None:
    """Export a PESData to extended XYZ, as MACE and metatrain read it.

    Labels go under REF_energy, REF_forces (arrays) and REF_stress (3x3, eV/Å³) by default.
    """
    dataset = _load_dataset(identifier)
    if not file.parent.is_dir():
        raise click.ClickException(f'no such folder: {file.parent}')
    try:
        count = write_extxyz(dataset, file, label_prefix)
    except OSError as exception:
        raise click.ClickException(f'cannot write {file}: {_one_line(exception)}') from None
    keys = ', '.join(_label_keys(label_prefix).values()) if label_prefix else 'calculator results'
    click.echo(f'wrote {count} frames of PESData {dataset.pk} to {file} (labels: {keys})')


def write_extxyz(dataset: Any, path: str | Path, label_prefix: str = 'REF_') -> int:
    """Write ``dataset`` as extended XYZ with ``<label_prefix>`` label keys; return the frames.

    The stress is written as a 3x3 matrix (eV/Å³, ASE sign). With an empty prefix the labels
    are ASE calculator results (what :meth:`PESData.to_extxyz` writes by default).
    """
    from aiida_trainspot.data.convert import write_labelled_extxyz

    if not label_prefix:
        dataset.to_extxyz(path)
        return len(dataset)
    return write_labelled_extxyz(dataset.iter_atoms(), path, _label_keys(label_prefix))
