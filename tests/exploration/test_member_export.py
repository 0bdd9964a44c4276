"""The LAMMPS exploration runs the drawn committee member: its own export goes to ``lmp``.

Debian's ``lmp`` has no ``pair_style mace`` or ``metatomic``: the workchain runs for real and its
LAMMPS job fails at the pair style (exit code 401, every job failed), after the job was built
and LAMMPS read its script. The job's inputs are then what a LAMMPS with those pair styles would
get, and they are checked against the committee: the file is the drawn member's export (same
content hash as the file stored on the member), not another member's. The members are the tiny
trained models of ``tiny_committee_files`` (no training here).
"""

import hashlib

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_trainspot.data import PESData
from aiida_trainspot.exploration.plan import choose_member
from aiida_trainspot.exploration.workchain import ExplorationWorkChain
from aiida_trainspot.training.lammps_export import (
    evaluate_mace_export,
    export_mace,
    mace_export_name,
)
from aiida_trainspot.training.model import PotentialModel

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')

SHORT = {'steps': 20, 'thermalisation_steps': 0, 'sample_interval': 10}


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def raw_code(lammps_code, code_factory):
    return code_factory('lmp-raw', str(lammps_code.filepath_executable), 'lammps.raw')


@pytest.fixture(scope='module')
def mace_exports(tiny_committee_files, tmp_path_factory):
    """The LAMMPS export of each tiny MACE member (converted once for the module)."""
    folder = tmp_path_factory.mktemp('mace-exports')
    exports = []
    for member in tiny_committee_files['mace']:
        name = mace_export_name(member['model'].name)
        (folder / str(member['seed'])).mkdir()
        exports.append(export_mace(member['model'], folder / str(member['seed']) / name))
    return exports


def stored_model(member, engine, lammps_file=None, **extra):
    return PotentialModel.from_files(
        member['model'],
        engine=engine,
        architecture=member['architecture'],
        species=member['species'],
        cutoff=member['cutoff'],
        dtype=member['dtype'],
        seed=member['seed'],
        extensions_dir=member['extensions'],
        lammps_file=lammps_file,
        extra=extra,
    ).store()


def explore(code, seed, n_structures=1, **inputs):
    """Run the lammps exploration; return its node and its LAMMPS jobs (all failed here)."""
    _, node = run_get_node(
        ExplorationWorkChain,
        structures=PESData.from_ase([bulk('C', 'diamond', a=3.567, cubic=True)]),
        n_structures=orm.Int(n_structures),
        engine=orm.Str('lammps'),
        code=code,
        protocol=orm.Dict(SHORT),
        max_concurrent=orm.Int(1),
        seed=orm.Int(seed),
        **inputs,
    )
    assert node.exit_status == ExplorationWorkChain.exit_codes.ERROR_ALL_JOBS_FAILED.status
    jobs = [n for n in node.called if n.process_type.endswith('lammps.raw')]
    assert len(jobs) == n_structures
    return node, jobs


def job_files(job) -> dict[str, bytes]:
    """The files of a ``lammps.raw`` job, by their name in the job folder."""
    filenames = job.inputs.filenames.get_dict()
    return {filenames[key]: node.get_content('rb') for key, node in job.inputs.files.items()}


def seeds_drawing_each(labels):
    """A seed that draws each member (the workchain's own draw)."""
    seeds = {}
    for seed in range(50):
        seeds.setdefault(choose_member(labels, seed), seed)
    assert sorted(seeds) == sorted(labels)
    return seeds


@pytest.mark.slow
def test_the_lammps_job_gets_the_drawn_mace_members_export(
    raw_code, tiny_committee_files, mace_exports
):
    members = {
        f'member_{index}': stored_model(member, 'mace', lammps_file=export)
        for index, (member, export) in enumerate(
            zip(tiny_committee_files['mace'], mace_exports, strict=True)
        )
    }
    stored = {label: sha256(m.lammps_export()[1]) for label, m in members.items()}
    assert len(set(stored.values())) == len(members)  # the members' exports differ
    name = mace_export_name(tiny_committee_files['mace'][0]['model'].name)
    for label, seed in seeds_drawing_each(list(members)).items():
        _, (job,) = explore(raw_code, seed, models=members)
        files = job_files(job)
        assert sorted(files) == sorted([name, 'structure.data'])
        assert sha256(files[name]) == stored[label]
        assert sha256(files[name]) == sha256(mace_exports[int(label[-1])].read_bytes())
        script = job.inputs.script.get_content()
        assert 'pair_style mace no_domain_decomposition\n' in script
        assert f'pair_coeff * * {name} C\n' in script
        # LAMMPS read the script up to the pair style, which this LAMMPS lacks
        output = job.outputs.retrieved.base.repository.get_object_content('lammps.out')
        assert "Unrecognized pair style 'mace'" in output


@pytest.mark.slow
def test_the_lammps_job_gets_the_drawn_metatomic_members_export(raw_code, tiny_committee_files):
    members = {
        f'member_{index}': stored_model(member, 'metatrain', lammps_file=member['model'])
        for index, member in enumerate(tiny_committee_files['metatrain'])
    }
    stored = {label: sha256(m.lammps_export()[1]) for label, m in members.items()}
    assert len(set(stored.values())) == len(members)
    for label, seed in seeds_drawing_each(list(members)).items():
        _, (job,) = explore(raw_code, seed, models=members)
        files = job_files(job)
        assert sha256(files['model.pt']) == stored[label]
        extensions = [f for f in files if f.startswith('extension_')]
        assert bool(extensions) == members[label].has_extensions
        script = job.inputs.script.get_content()
        assert 'pair_style metatomic model.pt device cpu' in script
        assert 'pair_coeff * * 6\n' in script


@pytest.mark.slow
def test_a_mace_model_without_export_is_converted_once(raw_code, tiny_committee_files, tmp_path):
    member = tiny_committee_files['mace'][1]
    model = stored_model(member, 'mace')  # a model given by hand: no export stored
    assert model.lammps_export() is None
    node, jobs = explore(raw_code, 3, n_structures=2, model=model)
    (conversion,) = [n for n in node.called if n.process_label == 'export_lammps_model']
    assert conversion.is_finished_ok
    assert conversion.inputs.model.uuid == model.uuid
    export = conversion.outputs.result
    name = mace_export_name(member['model'].name)
    assert export.filename == name
    for job in jobs:  # both runs got the converted file
        assert sha256(job_files(job)[name]) == sha256(export.get_content('rb'))
    # and it is the member: same energy and forces as the member's own calculator
    path = tmp_path / name
    path.write_bytes(export.get_content('rb'))
    atoms = bulk('C', 'diamond', a=3.6, cubic=True)
    atoms.rattle(0.05, seed=5)
    energy, forces = evaluate_mace_export(path, atoms)
    with model.calculator() as calculator:
        atoms.calc = calculator
        assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-6)


def test_a_member_whose_export_failed_is_refused_at_submission(raw_code, tmp_path):
    model_file = tmp_path / 'x.model'
    model_file.write_bytes(b'weights')
    common = {'architecture': 'MACE', 'species': ['C'], 'cutoff': 4.0, 'dtype': 'float64'}
    good = PotentialModel.from_files(model_file, engine='mace', lammps_file=model_file, **common)
    broken = PotentialModel.from_files(
        model_file, engine='mace', extra={'lammps_export_error': 'RuntimeError: boom'}, **common
    )
    pool = PESData.from_ase([bulk('C', 'diamond', a=3.567)])
    with pytest.raises(
        ValueError, match=r'models.member_1: model <\d+> \(mace\) has no LAMMPS .*boom'
    ):
        run_get_node(
            ExplorationWorkChain,
            structures=pool,
            engine=orm.Str('lammps'),
            code=raw_code,
            models={'member_0': good.store(), 'member_1': broken.store()},
        )
    # the override port is gone: a model runs as its own export
    with pytest.raises(ValueError, match='lammps_model'):
        run_get_node(
            ExplorationWorkChain,
            structures=pool,
            engine=orm.Str('lammps'),
            code=raw_code,
            model=good,
            lammps={'lammps_model': orm.SinglefileData(model_file)},
        )
