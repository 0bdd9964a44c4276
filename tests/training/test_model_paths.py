"""File names taken from nodes stay inside the folder they are written into (issue 27, item 6)."""

import os
from pathlib import Path

import click
import pytest

from aiida_trainspot.cli.campaign import export_run
from aiida_trainspot.data.paths import path_inside, plain_filename, relative_inside
from aiida_trainspot.training.model import PotentialModel

COMMON = {'architecture': 'x', 'species': ['C'], 'cutoff': 4.0, 'dtype': 'float64'}


def model_from(tmp_path, engine='mace', **kwargs):
    source = tmp_path / 'source'
    source.mkdir(exist_ok=True)
    model_file = source / 'good.model'
    model_file.write_bytes(b'weights')
    return PotentialModel.from_files(model_file, engine=engine, **COMMON, **kwargs)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


# ------------------------------------------------------------------------------ the helpers


@pytest.mark.parametrize(
    'name', ['a.model', 'sub/a.model', './a.model', 'sub/../a.model', 'with space;x.so']
)
def test_path_inside_accepts_names_that_stay_inside(tmp_path, name):
    target = path_inside(tmp_path, name)
    assert os.path.commonpath([tmp_path, target]) == str(tmp_path)
    assert target != tmp_path


@pytest.mark.parametrize(
    ('name', 'message'),
    [
        ('../evil.model', 'leads outside'),
        ('sub/../../evil.model', 'leads outside'),
        ('/etc/passwd', 'absolute path'),
        ('C:\\evil.model', 'absolute path'),
        ('', 'empty'),
        ('.', 'the folder itself'),
        ('sub/..', 'the folder itself'),
        (None, 'expected a file name'),
    ],
)
def test_path_inside_refuses_names_that_escape(tmp_path, name, message):
    with pytest.raises(ValueError, match=message) as error:
        path_inside(tmp_path, name, 'model_filename')
    assert str(error.value).startswith('model_filename: ')
    if name:
        assert repr(name) in str(error.value)  # the offending name is named
    with pytest.raises(ValueError, match=message):
        relative_inside(name)


def test_path_inside_refuses_a_link_out_of_the_folder(tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    folder = tmp_path / 'folder'
    folder.mkdir()
    (folder / 'link').symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match=r"'link/a\.model' leads outside"):
        path_inside(folder, 'link/a.model')
    assert relative_inside('link/a.model').as_posix() == 'link/a.model'  # lexically fine


@pytest.mark.parametrize('name', ['../x', 'a/b', 'a\\b', '/x', '..', '.', '', ' '])
def test_plain_filename_refuses_folders(name):
    with pytest.raises(ValueError, match='checkpoint_filename: '):
        plain_filename(name, 'checkpoint_filename')
    assert plain_filename('model.pt') == 'model.pt'


# ------------------------------------------------------------------- PotentialModel exports


@pytest.mark.parametrize(
    'bad', ['../evil.model', '/tmp/evil.model', 'sub/../../evil.model', '', 'sub/evil.model']
)
def test_export_refuses_a_model_filename_that_leaves_the_folder(tmp_path, bad):
    model = model_from(tmp_path)
    model.base.attributes.set('model_filename', bad)  # what a crafted node could hold
    target = tmp_path / 'export' / 'inner'
    before = files_under(tmp_path)
    with pytest.raises(ValueError, match='model_filename') as error:
        model.export(target)
    assert repr(bad) in str(error.value)
    assert files_under(tmp_path) == before  # nothing written, not even the folder
    assert not (tmp_path / 'export' / 'evil.model').exists()


def test_export_refuses_a_checkpoint_or_lammps_name_that_leaves_the_folder(tmp_path):
    checkpoint = tmp_path / 'ck.pt'
    checkpoint.write_bytes(b'checkpoint')
    export = tmp_path / 'good.model-lammps.pt'
    export.write_bytes(b'lammps')
    model = model_from(tmp_path, checkpoint_file=checkpoint, lammps_file=export)
    # the good node exports its files inside the folder
    paths = model.export(tmp_path / 'ok')
    assert paths['model'] == tmp_path / 'ok' / 'good.model'
    assert paths['checkpoint'].read_bytes() == b'checkpoint'
    assert model.write_lammps_model(tmp_path / 'ok').read_bytes() == b'lammps'

    model.base.attributes.set('checkpoint_filename', '../evil.ckpt')
    with pytest.raises(ValueError, match=r"checkpoint_filename: '\.\./evil\.ckpt'"):
        model.export(tmp_path / 'out')
    model.base.attributes.set('checkpoint_filename', 'ck.pt')
    model.base.attributes.set('lammps_filename', '../evil-lammps.pt')
    with pytest.raises(ValueError, match=r"lammps_filename: '\.\./evil-lammps\.pt'"):
        model.write_lammps_model(tmp_path / 'out')
    with pytest.raises(ValueError, match='lammps_filename'):
        model.lammps_export()  # what the LAMMPS engine puts into the job folder
    assert not (tmp_path / 'out').exists()
    assert not (tmp_path / 'evil.ckpt').exists() and not (tmp_path / 'evil-lammps.pt').exists()


def test_export_refuses_a_link_out_of_the_folder(tmp_path):
    model = model_from(tmp_path)
    outside = tmp_path / 'outside.model'
    outside.write_bytes(b'keep me')
    folder = tmp_path / 'folder'
    folder.mkdir()
    (folder / 'good.model').symlink_to(outside)
    with pytest.raises(ValueError, match='leads outside'):
        model.export(folder)
    assert outside.read_bytes() == b'keep me'


# ----------------------------------------------------------------- names at node creation


def test_from_files_refuses_names_that_are_not_plain(tmp_path):
    with pytest.raises(ValueError, match=r"model_file: '\.\.'"):
        PotentialModel.from_files(tmp_path / 'sub' / '..', engine='mace', **COMMON)
    with pytest.raises(ValueError, match=r"model_filename: '\.\./evil\.model'"):
        model_from(tmp_path, extra={'model_filename': '../evil.model'})
    with pytest.raises(ValueError, match=r"compiled_model_filename: '/abs/x\.model'"):
        model_from(tmp_path, extra={'compiled_model_filename': '/abs/x.model'})
    # names of plain files pass, whatever their characters
    odd = tmp_path / 'a model;x.pt'
    odd.write_bytes(b'w')
    assert PotentialModel.from_files(odd, engine='mace', **COMMON).model_filename == odd.name


@pytest.mark.parametrize('bad', ['../evil.model', '/abs/evil.model', 'sub/evil.model'])
def test_a_node_with_a_bad_name_is_not_stored(tmp_path, bad):
    model = model_from(tmp_path)
    model.base.attributes.set('model_filename', bad)
    with pytest.raises(ValueError, match='model_filename'):
        model.store()
    assert not model.is_stored
    model.base.attributes.set('model_filename', 'good.model')
    assert model.store().is_stored


# -------------------------------------------------------------- aiida-trainspot export


class _Outputs(dict):
    def __getattr__(self, name):
        return self[name]


class _Run:
    pk = 1

    def __init__(self, models):
        self.outputs = _Outputs(models=models)


def test_export_run_keeps_every_model_inside_the_models_folder(tmp_path):
    good = model_from(tmp_path)
    bad = model_from(tmp_path)
    bad.base.attributes.set('model_filename', '../../evil.model')
    models = tmp_path / 'models'
    lines = export_run(_Run({'member_0': good}), None, models)
    assert lines == [f'member_0: {models / "member_0" / "good.model"}']
    with pytest.raises(click.ClickException, match=r"member_1 .*model_filename: '\.\./\.\./evil"):
        export_run(_Run({'member_1': bad}), None, models)
    assert not (tmp_path / 'evil.model').exists()
    with pytest.raises(click.ClickException, match=r"models: '\.\./x' is not a plain file name"):
        export_run(_Run({'../x': good}), None, models)
    assert files_under(models) == ['member_0', 'member_0/good.model']
