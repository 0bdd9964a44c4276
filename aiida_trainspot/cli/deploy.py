"""``aiida-trainspot deploy PK --out DIR``: a run's final committee as a folder to use anywhere.

``DIR`` gets, for a ``TrainsPotWorkChain`` (or a ``TrainingWorkChain``'s committee):

- ``member_<i>/``: each member's files as its engines load them: the model file (``*.model``
  for MACE's ASE calculator, the exported metatomic ``*.pt`` for metatrain) with its
  ``extensions/`` folder, and the file LAMMPS' pair style loads (MACE: ``<model>-lammps.pt``,
  the one the training stored, else converted here as ``mace_create_lammps_model`` does;
  metatrain: the metatomic model itself, or its stored export);
- ``calibration.json``: the run's last calibration (``Calibration.to_dict``), when it has one;
- ``dataset.xyz``: the final labelled dataset (extxyz, ``REF_`` keys, with the split);
- ``committee.json``: the manifest ``CommitteeCalculator.from_folder`` reads;
- ``README.md``: where it came from, the ``pair_style``/``pair_coeff`` lines (those of the
  exploration's ``lammps`` engine) and the Python lines of the ASE calculator.

An existing non-empty ``DIR`` is refused; with ``--force``, what a deploy writes there
(``member_*`` folders and the four files above) is replaced and anything else is left alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from .campaign import CALIBRATION_FILE, RUN_KINDS, load_run, write_calibration, write_models
from .data import _one_line, write_extxyz

DATASET_FILE = 'dataset.xyz'
README_FILE = 'README.md'
#: Same name as ``aiida_trainspot.calculator.MANIFEST_FILE`` (not imported: no torch here).
MANIFEST_FILE = 'committee.json'
OWNED_FILES = (CALIBRATION_FILE, DATASET_FILE, README_FILE, MANIFEST_FILE)


def prepare_out(out: Path, force: bool) -> None:
    """Make ``out`` ready: new or empty, or (``force``) cleared of a previous deploy's files."""
    if out.exists() and not out.is_dir():
        raise click.ClickException(f'--out {out} is a file, not a folder')
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise click.ClickException(
                f'--out {out} exists and is not empty: give an empty or new folder, or --force '
                '(replaces the member_* folders and the files a deploy writes, keeps the rest)'
            )
        for path in out.glob('member_*'):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
        for name in OWNED_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def lammps_file(model: Any, member_dir: Path, model_file: Path) -> tuple[Path | None, str | None]:
    """(the file LAMMPS loads for ``model`` in ``member_dir``, or None; why not, or None).

    The model's stored export (beside the model file, or in ``lammps/`` if it has the model
    file's name but other content); a MACE model without one is converted here (no node is
    stored: ``export_lammps_model`` does that in a campaign).
    """
    export = model.lammps_export()
    if export is not None:
        name, content = export
        target = member_dir
        if (member_dir / name).exists() and (member_dir / name).read_bytes() != content:
            target = member_dir / 'lammps'
        return model.write_lammps_model(target), None
    if model.engine != 'mace' or model.lammps_export_error:
        return None, model.missing_lammps_export()
    from aiida_trainspot.training.lammps_export import export_mace, mace_export_name

    output = member_dir / mace_export_name(model_file.name)
    try:
        return export_mace(
            model_file, output, model.base.attributes.get('dtype') or 'float64'
        ), None
    except Exception as exception:  # any conversion failure: said, not fatal
        return None, f'model <{model.pk}>: conversion for LAMMPS failed: {_one_line(exception)}'


def pair_lines(model: Any, lammps_path: Path, member_dir: Path, out: Path) -> list[str]:
    """The exploration's ``pair_style``/``pair_coeff`` lines, for the files of ``out``.

    :func:`~aiida_trainspot.exploration.lammps.engine.model_potential` makes the pair-style
    spec of the model (as for an exploration run); only its file names become paths inside
    ``out``, where LAMMPS is to be run.
    """
    from aiida_trainspot.exploration.lammps.engine import model_potential
    from aiida_trainspot.exploration.lammps.input import pair_commands

    potential = model_potential(model, lammps_model=lammps_path)
    spec = dict(potential.spec)
    spec['file'] = lammps_path.relative_to(out).as_posix()
    if 'extensions' in spec:  # model.export writes the extensions into the member's folder
        spec['extensions'] = (member_dir / spec['extensions']).relative_to(out).as_posix()
    return pair_commands(spec, potential.species)


def deploy_run(identifier: str, out: Path, force: bool = False) -> list[str]:
    """Write the final committee of run ``identifier`` into ``out``; return the lines to print."""
    from aiida_trainspot.exploration.lammps.input import lammps_species
    from aiida_trainspot.workflows.trainspot import final_committee, last_checkpoint

    node = load_run(identifier, kinds=tuple(RUN_KINDS))
    try:
        models, calibration, notes = final_committee(node)
    except ValueError as exception:
        raise click.ClickException(_one_line(exception)) from None
    engines = sorted({model.engine for model in models.values()})
    unknown = [engine for engine in engines if engine not in ('mace', 'metatrain')]
    if unknown:
        raise click.ClickException(f'run {node.pk}: no deployment for models of engine {unknown}')
    dataset = node.outputs.dataset if 'dataset' in node.outputs else None
    if dataset is None:
        dataset = last_checkpoint(node, 'dataset')
    prepare_out(out, force)
    lines = [f'Warning: {note}' for note in notes]
    if not node.is_finished_ok:
        lines.append(
            f'Warning: run {node.pk} has not finished ok: its latest committee is deployed'
        )
    members = []
    for label, model, paths in write_models(models, out):
        member_dir = out / label
        lammps_path, problem = lammps_file(model, member_dir, paths['model'])
        if problem:
            lines.append(f'Warning: {label}: no LAMMPS file: {problem}')
        commands = (
            pair_lines(model, lammps_path, member_dir, out) if lammps_path is not None else []
        )
        members.append(
            {
                'label': label,
                'pk': model.pk,
                'uuid': model.uuid,
                'engine': model.engine,
                'model': paths['model'].relative_to(out).as_posix(),
                'extensions': _relative(paths['extensions'], out),
                'dtype': model.base.attributes.get('dtype'),
                'seed': model.seed,
                'species': list(model.species),
                'lammps': _relative(lammps_path, out),
                'pair_commands': commands,
            }
        )
        lines.append(f'{label}: {paths["model"]}' + (f', {lammps_path}' if lammps_path else ''))
    if calibration is not None:
        lines.append(f'calibration: {write_calibration(calibration, out)}')
    if dataset is not None:
        count = write_extxyz(dataset, out / DATASET_FILE)
        lines.append(f'dataset: {count} frames -> {out / DATASET_FILE}')
    else:
        lines.append(f'Warning: run {node.pk} has no labelled dataset: no {DATASET_FILE}')
    species = lammps_species(sorted({s for m in members for s in m['species']}))
    manifest = {
        'run': {
            'process': RUN_KINDS[node.process_type.rsplit(':', 1)[-1]],
            'pk': node.pk,
            'uuid': node.uuid,
        },
        'species': species,
        'members': members,
        'calibration': CALIBRATION_FILE if calibration is not None else None,
        'dataset': DATASET_FILE if dataset is not None else None,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    (out / README_FILE).write_text(readme(manifest, calibration, out))
    lines.append(f'deployed {len(members)} members of run {node.pk} in {out} (see {README_FILE})')
    return lines


def _relative(path: Path | None, out: Path) -> str | None:
    return None if path is None else Path(path).relative_to(out).as_posix()


def readme(manifest: dict[str, Any], calibration: Any, out: Path) -> str:
    """The README of a deployed folder (``manifest`` is its ``committee.json``)."""
    run, members = manifest['run'], manifest['members']
    engines = sorted({m['engine'] for m in members})
    dtypes = sorted({m['dtype'] or 'float64' for m in members})
    folder = out.resolve().as_posix()
    text = [
        f'# Committee of {run["process"]} {run["pk"]}',
        '',
        f'- run: {run["process"]}, PK {run["pk"]}, UUID {run["uuid"]}',
        f'- species: {" ".join(manifest["species"])}',
        f'- committee: {len(members)} members ({", ".join(engines)}, {", ".join(dtypes)})',
    ]
    if calibration is not None:
        data = calibration.get_dict()
        slopes = ', '.join(f'{k} {v:.4g}' for k, v in data.get('slopes', {}).items())
        thresholds = ', '.join(
            f'{k} {v:.4g}' for k, v in (data.get('error_thresholds') or {}).items()
        )
        text.append(
            f'- calibration: `{CALIBRATION_FILE}` (error kind {data.get("error")}; slopes '
            f'{slopes}; error thresholds {thresholds}; units eV/atom, eV/Å, eV/Å³)'
        )
    else:
        text.append('- calibration: none (no uncertainty, only the disagreement)')
    if manifest['dataset']:
        text.append(f'- dataset: `{DATASET_FILE}` (extxyz, `REF_energy`/`REF_forces`/`REF_stress`)')
    text += ['', '| member | engine | seed | model | LAMMPS |', '|---|---|---|---|---|']
    for m in members:
        text.append(
            f'| {m["label"]} | {m["engine"]} | {m["seed"]} | `{m["model"]}` | '
            f'{"`" + m["lammps"] + "`" if m["lammps"] else "none"} |'
        )
    paths = ', '.join(f"f'{{folder}}/{m['model']}'" for m in members)
    extensions = members[0]['extensions']
    text += [
        '',
        '## ASE',
        '',
        'The committee as one ASE calculator (mean energy, forces and stress; the disagreement',
        'and, with the calibration, the calibrated error estimates in `calc.results`):',
        '',
        '```python',
        'from aiida_trainspot.calculator import CommitteeCalculator',
        '',
        f"calc = CommitteeCalculator.from_folder('{folder}')",
        '```',
        '',
        'The same committee from its files:',
        '',
        '```python',
        'from aiida_trainspot.calculator import CommitteeCalculator',
        '',
        f"folder = '{folder}'",
        'calc = CommitteeCalculator.from_files(',
        f'    [{paths}],',
        f"    engine='{engines[0]}',",
        f"    dtype='{dtypes[0]}',",
    ]
    if extensions:
        text.append(f"    extensions_dir=f'{{folder}}/{extensions}',")
    if manifest['calibration']:
        text.append(f"    calibration=f'{{folder}}/{CALIBRATION_FILE}',")
    text += [')', '```', '', '## LAMMPS', '']
    text += [
        'LAMMPS runs one member (the exploration drew one per MD run). Run it in this folder',
        '(the paths are relative to it); atom types by atomic number: '
        + ', '.join(f'{k}={s}' for k, s in enumerate(manifest['species'], start=1))
        + '.',
    ]
    if 'mace' in engines:
        text.append('MACE also wants `atom_modify map yes` and `newton on` after `atom_style`.')
    for m in members:
        text += ['', f'{m["label"]}:', '']
        if m['pair_commands']:
            text += ['```', *m['pair_commands'], '```']
        else:
            text.append('no LAMMPS file (see the warning of `aiida-trainspot deploy`)')
    return '\n'.join(text) + '\n'


@click.command('deploy')
@click.argument('identifier', metavar='PK')
@click.option(
    '--out',
    required=True,
    type=click.Path(path_type=Path),
    help='Folder to write (new or empty).',
)
@click.option(
    '--force',
    is_flag=True,
    help='Write into a non-empty --out: replace the member_* folders and files a deploy writes.',
)
def deploy(identifier: str, out: Path, force: bool) -> None:
    """The final committee of a run as a folder: models, LAMMPS files, calibration, dataset."""
    for line in deploy_run(identifier, out, force):
        click.echo(line, err=line.startswith('Warning:'))
