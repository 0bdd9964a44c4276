"""The ``lammps`` exploration engine with Debian's real ``lmp``, through ``lammps.raw``.

Tersoff (``SiC.tersoff``, ``BNC.tersoff``) stands in for a trained potential: the LAMMPS here has
no ``pair_style mace``/``metatomic`` (their inputs are checked in ``test_lammps_input.py``).
"""

import io
import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory
from ase.build import bulk, diamond111
from ase.calculators.tersoff import Tersoff
from ase.neighborlist import neighbor_list

from aiida_trainspot.data import PESData
from aiida_trainspot.exploration.lammps import engine as le
from aiida_trainspot.exploration.lammps import input as li
from aiida_trainspot.training.model import PotentialModel

POTENTIALS = '/usr/share/lammps/potentials'
SIC_TERSOFF = f'{POTENTIALS}/SiC.tersoff'
BNC_TERSOFF = f'{POTENTIALS}/BNC.tersoff'


@pytest.fixture
def raw_code(lammps_code, code_factory):
    """Debian's ``lmp`` for aiida-lammps' ``lammps.raw``."""
    return code_factory('lmp-raw', str(lammps_code.filepath_executable), 'lammps.raw')


@pytest.fixture
def tersoff():
    return le.classical_potential('tersoff', SIC_TERSOFF)


def run_md(code, atoms, potential, md, **kwargs):
    """Run one exploration job; return (frames, summary, calculation node, conversion)."""
    inputs, conversion = le.md_inputs(code, atoms, potential, md, **kwargs)
    _, node = run_get_node(CalculationFactory('lammps.raw'), **inputs)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    outputs = le.collect_frames([node], [conversion])
    return outputs['frames'], outputs['summary'].get_dict(), node, conversion


def retrieved_text(node, name):
    return node.outputs.retrieved.base.repository.get_object_content(name)


def sic_orders():
    sic = bulk('SiC', 'zincblende', a=4.36, cubic=True)
    symbols = np.array(sic.get_chemical_symbols())
    c_first = sic[np.argsort(symbols == 'Si', kind='stable')]
    si_first = sic[np.argsort(symbols == 'C', kind='stable')]
    return c_first, si_first


def rerun_job(node, folder, script=None):
    """Run a finished job's script and files again with lmp in ``folder``; return the dump."""
    folder.mkdir()
    filenames = node.inputs.filenames.get_dict()
    for key, file in node.inputs.files.items():
        (folder / filenames[key]).write_bytes(file.get_content('rb'))
    (folder / 'input.in').write_text(script or node.inputs.script.get_content())
    executable = str(node.inputs.code.filepath_executable)
    command = [executable, '-in', 'input.in', '-log', 'none']
    subprocess.run(command, cwd=folder, capture_output=True, check=True)
    return (folder / 'trajectory.dump').read_text()


def test_diamond_npt_end_to_end_and_deterministic(raw_code, tersoff, tmp_path):
    diamond = bulk('C', 'diamond', a=3.567, cubic=True).repeat(2)  # 64 atoms
    md = {'temperature': 1000.0, 'steps': 500, 'seed': 3, 'sample_interval': 50, 'pressure': 1.0}
    frames, summary, node, _ = run_md(raw_code, diamond, tersoff, md, run_id=4, source_frame=9)
    # the job: the script, the data file and the parameter file, all relative
    script = node.inputs.script.get_content()
    assert 'pair_coeff * * SiC.tersoff C' in script
    assert 'fix md all npt temp 1000 1000 0.1 aniso 1 1 1' in script
    assert sorted(node.inputs.filenames.get_dict().values()) == ['SiC.tersoff', 'structure.data']
    assert '/usr/share' not in script
    retrieved = node.outputs.retrieved.base.repository.list_object_names()
    assert {'trajectory.dump', 'samples.dat', 'lammps.out'} <= set(retrieved)

    assert isinstance(frames, PESData)
    assert len(frames) == 10 == summary['n_frames']
    assert summary['runs'] == [
        {
            'run_id': 4,
            'source_frame': 9,
            'n_frames': 10,
            'last_step': 500,
            'thermalisation_steps': 0,
            'steps': 500,
            'halted': False,
            'halt': None,
        }
    ]
    assert frames.species == ['C']
    step, _ = frames.get_column('step')
    np.testing.assert_array_equal(step, np.arange(50, 501, 50))
    time_fs, _ = frames.get_column('time_fs')
    np.testing.assert_allclose(time_fs, np.arange(50, 501, 50) * 1.0)
    for name, value in [
        ('engine', 'lammps'),
        ('ensemble', 'npt'),
        ('temperature', 1000.0),
        ('pressure', 1.0),
        ('run_id', 4),
        ('source_frame', 9),
    ]:
        values, mask = frames.get_column(name)
        assert mask.all()
        assert all(v == value for v in values), name
    temperature, _ = frames.get_column('md_temperature')
    assert (temperature > 100).all()
    # NPT: the cell breathes, the atoms stay diamond's and the cell stays cubic-ish
    cells, _ = frames.get_column('cell')
    assert not np.allclose(cells[-1], diamond.cell.array)
    np.testing.assert_allclose(cells, np.broadcast_to(diamond.cell.array, cells.shape), atol=0.5)
    np.testing.assert_array_equal(frames.get_column('numbers')[0], np.full(640, 6))
    # the same seed gives the same trajectory, bit for bit; another seed another one
    dump = retrieved_text(node, 'trajectory.dump')
    assert rerun_job(node, tmp_path / 'again') == dump
    other = script.replace('velocity all create 1000 3 ', 'velocity all create 1000 4 ')
    assert other != script
    assert rerun_job(node, tmp_path / 'other', other) != dump


def test_two_species_keep_their_elements_whatever_their_order(raw_code, tersoff):
    reference = Tersoff.from_lammps(SIC_TERSOFF)
    energies = []
    md = {'temperature': 600.0, 'steps': 200, 'seed': 11, 'sample_interval': 50}
    for atoms in sic_orders():
        frames, _, node, conversion = run_md(raw_code, atoms, tersoff, md, include_initial=True)
        assert conversion['species'] == ['C', 'Si']
        assert 'pair_coeff * * SiC.tersoff C Si' in node.inputs.script.get_content()
        assert len(frames) == 5
        # every frame, atom by atom, holds the element of the input atom of the same id
        for frame in frames.iter_atoms():
            np.testing.assert_array_equal(frame.numbers, atoms.numbers)
        # LAMMPS' potential energy of step 0 is ASE's Tersoff energy of the input: the types
        # are the right elements (C <-> Si swapped would be off by eVs)
        samples = li.parse_samples(retrieved_text(node, 'samples.dat'))
        atoms = atoms.copy()
        atoms.calc = reference
        assert samples[0]['potential_energy'] == pytest.approx(
            atoms.get_potential_energy(), abs=1e-6
        )
        energies.append(samples[0]['potential_energy'])
        first = frames.get_atoms(0)
        np.testing.assert_allclose(first.positions, atoms.positions, atol=1e-9)
    assert energies[0] == pytest.approx(energies[1], abs=1e-9)


def test_hexagonal_cell_comes_back_in_its_own_orientation(raw_code, tersoff):
    atoms = bulk('SiC', 'wurtzite', a=3.08, c=5.04).repeat((2, 2, 2))
    atoms.rotate(30, 'z', rotate_cell=True)
    atoms.rotate(17, 'x', rotate_cell=True)
    atoms.rotate(-40, 'y', rotate_cell=True)
    atoms.wrap()
    md = {
        'temperature': 500.0,
        'steps': 300,
        'seed': 5,
        'sample_interval': 100,
        'barostat': 'tri',
        'pressure': 1000.0,
    }
    frames, _, node, conversion = run_md(raw_code, atoms, tersoff, md, include_initial=True)
    assert 'tri 1000 1000 1' in node.inputs.script.get_content()
    rotation = np.array(json.loads(conversion['box'])['rotation'])
    assert not np.allclose(rotation, np.eye(3), atol=0.1)  # LAMMPS' frame is another one
    first = frames.get_atoms(0)
    np.testing.assert_allclose(first.cell.array, atoms.cell.array, atol=1e-9)
    np.testing.assert_allclose(first.positions, atoms.positions, atol=1e-9)
    np.testing.assert_array_equal(first.numbers, atoms.numbers)
    for frame in frames.iter_atoms():
        np.testing.assert_array_equal(frame.numbers, atoms.numbers)
        # the same three vectors, strained a little, pointing where the input's point
        for new, old in zip(frame.cell.array, atoms.cell.array, strict=True):
            cosine = new @ old / np.linalg.norm(new) / np.linalg.norm(old)
            assert cosine > 0.999
            assert np.linalg.norm(new) == pytest.approx(np.linalg.norm(old), rel=0.05)
        # bonds are still Si-C bonds of about 1.9 Å
        distances = frame.get_all_distances(mic=True)
        np.fill_diagonal(distances, np.inf)
        nearest = distances.argmin(axis=1)
        assert (frame.numbers[nearest] != frame.numbers).all()
        assert 1.7 < distances.min() < 2.0


def test_slab_and_molecule_npt_barostats_only_periodic_axes(raw_code, tersoff):
    slab = diamond111('C', size=(2, 2, 4), vacuum=6.0)
    slab.pbc = (True, True, False)
    cluster = bulk('C', 'diamond', a=3.567, cubic=True).repeat(2)[:20]
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    cluster.center()
    md = {'temperature': 800.0, 'steps': 200, 'seed': 2, 'sample_interval': 100}
    md['pressure'] = 5000.0
    nodes, conversions = [], []
    for run_id, atoms in (('slab', slab), ('cluster', cluster)):
        inputs, conversion = le.md_inputs(raw_code, atoms, tersoff, md, run_id=run_id)
        _, node = run_get_node(CalculationFactory('lammps.raw'), **inputs)
        assert node.is_finished_ok, (node.exit_status, node.exit_message)
        nodes.append(node)
        conversions.append(conversion)
    # slab: x and y barostatted, the vacuum axis shrink-wrapped and free
    script = nodes[0].inputs.script.get_content()
    assert 'boundary p p m' in script
    assert 'fix md all npt temp 800 800 0.1 x 5000 5000 1 y 5000 5000 1\n' in script
    # molecule: NVT in a shrink-wrapped box, no rotation
    script = nodes[1].inputs.script.get_content()
    assert 'boundary m m m' in script
    assert 'fix md all nvt temp 800 800 0.1\n' in script
    assert 'velocity all create 800 2 mom yes rot yes dist gaussian loop all' in script
    assert conversions[1]['ensemble'] == 'nvt'

    outputs = le.collect_frames(nodes, conversions)
    frames, summary = outputs['frames'], outputs['summary'].get_dict()
    assert summary['n_frames'] == 4 == len(frames)
    assert [run['run_id'] for run in summary['runs']] == ['slab', 'cluster']
    run_id, _ = frames.get_column('run_id')
    assert list(run_id) == ['slab', 'slab', 'cluster', 'cluster']
    ensemble, _ = frames.get_column('ensemble')
    assert list(ensemble) == ['npt', 'npt', 'nvt', 'nvt']
    pressure, present = frames.get_column('pressure')
    assert present.tolist() == [True, True, False, False]  # no target pressure under NVT
    assert pressure[0] == 5000.0
    cells, _ = frames.get_column('cell')
    pbc, _ = frames.get_column('pbc')
    # the slab's vacuum axis keeps its vector exactly; the periodic ones move
    np.testing.assert_array_equal(cells[:2, 2], np.broadcast_to(slab.cell.array[2], (2, 3)))
    assert not np.allclose(cells[1, :2], slab.cell.array[:2])
    assert (pbc[:2] == [True, True, False]).all()
    z = frames.get_column('positions', [0, 1])[0][:, 2]
    assert z.min() > slab.positions[:, 2].min() - 1.0
    assert z.max() < slab.positions[:, 2].max() + 1.0
    # the molecule keeps no cell, and moves (its centre of mass stays: zero total momentum)
    assert (cells[2:] == 0).all()
    assert not pbc[2:].any()
    moved = frames.get_atoms(3)
    assert np.abs(moved.positions - cluster.positions).max() > 0.01
    np.testing.assert_allclose(moved.get_center_of_mass(), cluster.get_center_of_mass(), atol=1e-6)


def run_by_hand(executable, folder, atoms, potential, md, **kwargs):
    """Prepare one run, run it with lmp in ``folder``; return (records, summary, stdout)."""
    run = li.prepare_run(atoms, potential.spec, md, **kwargs)
    folder.mkdir()
    (folder / 'structure.data').write_text(run.data)
    (folder / 'input.in').write_text(run.script)
    for name, node in potential.files.items():
        (folder / name).write_bytes(node.get_content('rb'))
    result = subprocess.run(
        [executable, '-in', 'input.in', '-log', 'none'],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    records, summary = li.trajectory_records(
        (folder / 'trajectory.dump').read_text(),
        (folder / 'samples.dat').read_text(),
        result.stdout,
        run.conversion,
    )
    return records, summary, result.stdout


def thermo_tables(log):
    """The temperatures of each thermo table of a LAMMPS log (one list per run/minimize)."""
    tables, current = [], None
    for line in log.splitlines():
        words = line.split()
        if words[:3] == ['Step', 'Time', 'Temp']:
            current = []
            tables.append(current)
        elif current is not None and words and words[0].isdigit():
            current.append(float(words[2]))
        else:
            current = None
    return tables


def test_fix_halt_stops_a_run(raw_code, tersoff, tmp_path):
    diamond = bulk('C', 'diamond', a=3.567, cubic=True)
    md = {'temperature': 300.0, 'steps': 1000, 'seed': 1, 'sample_interval': 10}
    frames, summary, _, _ = run_md(
        raw_code, diamond, tersoff, {**md, 'max_temperature': 1.0}, include_initial=True
    )
    (run,) = summary['runs']
    assert run['halted'] is True
    assert run['halt']['reason'] == 'max_temperature'
    assert run['halt']['step'] == 1  # checked after every step, as the ase engine does
    assert run['last_step'] == 0
    step, _ = frames.get_column('step')
    assert step.tolist() == [0]  # the frame that broke the rule is not kept
    executable = str(raw_code.filepath_executable)
    # closer than 2 Å: every C-C bond of diamond (1.54 Å); a force bound no moving crystal
    # keeps: both hold from the start, and fire at the first production step only
    for name, rule, value in (('min_distance', 2.0, 1.5446), ('max_force', 1e-6, None)):
        for thermalisation in (0, 20):
            settings = {**md, name: rule, 'thermalisation_steps': thermalisation}
            folder = tmp_path / f'{name}-{thermalisation}'
            records, run, _ = run_by_hand(executable, folder, diamond, tersoff, settings)
            assert run['halt']['reason'] == name
            assert run['halt']['step'] == thermalisation + 1
            if value is not None:
                assert run['halt']['value'] == pytest.approx(value, abs=0.05)
            assert records == []


def test_rattled_cold_start_thermalises_unchecked_and_samples_when_relaxed(
    raw_code, tersoff, tmp_path
):
    start = bulk('C', 'diamond', a=3.567, cubic=True).repeat(2)
    start.rattle(0.1, seed=3)  # ~0.1 Å off every site: stored energy worth hundreds of K
    cold = {
        'temperature': 50.0,
        'steps': 200,
        'seed': 5,
        'sample_interval': 50,
        'max_temperature': 5 * 50.0,
        'min_distance': 0.5,
        'max_force': 50.0,
    }
    executable = str(raw_code.filepath_executable)
    # straight into production, the rule fires at the first step: a production violation aborts
    records, run, _ = run_by_hand(executable, tmp_path / 'hot', start, tersoff, cold)
    assert (run['halt']['reason'], run['halt']['step']) == ('max_temperature', 1)
    assert run['halt']['value'] > 250.0 and records == []
    # a thermalisation first: it runs far above 250 K, unchecked; the rule waits for production
    warm = {**cold, 'thermalisation_steps': 100}
    records, run, log = run_by_hand(executable, tmp_path / 'warm', start, tersoff, warm)
    thermalisation = thermo_tables(log)[0]
    assert len(thermalisation) == 3 and max(thermalisation) > 250.0
    assert run['halt']['step'] == 101 and records == []
    # relaxed (FIRE, cell fixed) and thermalised: the production is reached and fully sampled
    relaxed = {**warm, 'relax_steps': 100, 'relax_fmax': 0.1}
    frames, summary, node, _ = run_md(raw_code, start, tersoff, relaxed)
    assert 'min_style fire' in node.inputs.script.get_content()
    (run,) = summary['runs']
    assert run['halted'] is False
    assert (run['thermalisation_steps'], run['steps'], run['last_step']) == (100, 300, 300)
    step, _ = frames.get_column('step')
    assert step.tolist() == [150, 200, 250, 300]  # thermalisation frames are never sampled
    temperature, _ = frames.get_column('md_temperature')
    assert (temperature < 250.0).all()
    log = retrieved_text(node, 'lammps.out')
    assert 'Stopping criterion = force tolerance' in log  # relaxed before the cap


def d2_energy(atoms, species, s6=0.75, d=20.0, cutoff=15.0):
    """Grimme D2 of ``atoms`` from the pair coefficients, summed by ASE's neighbour list."""
    n = len(species)
    c6, rr = np.zeros((n, n)), np.zeros((n, n))
    for i, j, c, r in li.d2_pair_coefficients(species):
        c6[i - 1, j - 1] = c6[j - 1, i - 1] = c
        rr[i - 1, j - 1] = rr[j - 1, i - 1] = r
    types = li.atom_types(atoms.get_chemical_symbols(), species) - 1
    first, second, distance = neighbor_list('ijd', atoms, cutoff)
    pair_c6 = c6[types[first], types[second]]
    pair_rr = rr[types[first], types[second]]
    damping = 1.0 / (1.0 + np.exp(-d * (distance / pair_rr - 1.0)))
    return -0.5 * s6 * np.sum(pair_c6 / distance**6 * damping)


def test_d2_in_lammps_is_grimme_d2_on_three_species(tmp_path, lammps_code):
    atoms = bulk('C', 'diamond', a=3.6, cubic=True).repeat(2)
    atoms.numbers[::3] = 5  # B
    atoms.numbers[1::3] = 7  # N
    atoms.rattle(0.05, seed=1)
    species = li.lammps_species(atoms.get_chemical_symbols())
    assert species == ['B', 'C', 'N']
    (tmp_path / 'BNC.tersoff').write_bytes(Path(BNC_TERSOFF).read_bytes())
    data, _ = li.data_file(atoms, species)
    (tmp_path / 'structure.data').write_text(data)
    energies = {}
    for name, dispersion in (('plain', None), ('d2', {})):
        potential = {'kind': 'classical', 'pair_style': 'tersoff', 'file': 'BNC.tersoff'}
        if dispersion is not None:
            potential['dispersion'] = dispersion
        script = li.md_script(
            species=species, pbc=(True,) * 3, potential=potential, temperature=10.0, steps=1, seed=1
        )
        (tmp_path / 'input.in').write_text(script)
        subprocess.run(
            [str(lammps_code.filepath_executable), '-in', 'input.in', '-log', 'none'],
            cwd=tmp_path,
            capture_output=True,
            check=True,
        )
        samples = li.parse_samples((tmp_path / 'samples.dat').read_text())
        energies[name] = samples[0]['potential_energy']
    expected = d2_energy(atoms, species)
    assert expected < -1.0  # a real dispersion energy, not a rounding error
    assert energies['d2'] - energies['plain'] == pytest.approx(expected, rel=1e-9)


def test_model_potentials_give_their_files_and_types(tmp_path, code_factory, lammps_code):
    code = code_factory('lmp-raw', str(lammps_code.filepath_executable), 'lammps.raw')
    model_file = tmp_path / 'model.pt'
    model_file.write_bytes(b'torchscript')
    extensions = tmp_path / 'extensions'
    (extensions / 'lib').mkdir(parents=True)
    (extensions / 'lib' / 'libfeatomic-torch.so').write_bytes(b'so')
    (extensions / 'metatensor_torch' / 'lib').mkdir(parents=True)
    (extensions / 'metatensor_torch' / 'lib' / 'libmetatensor_torch.so').write_bytes(b'so2')
    pet = PotentialModel.from_files(
        model_file,
        engine='metatrain',
        architecture='pet',
        species=['O', 'H', 'C'],
        cutoff=4.0,
        dtype='float64',
        extensions_dir=extensions,
    )
    potential = le.model_potential(pet, dispersion={})
    assert potential.species == ['H', 'C', 'O']
    water = bulk('C', 'diamond', a=3.567)
    md = {'temperature': 300.0, 'steps': 10, 'seed': 1}
    inputs, conversion = le.md_inputs(code, water, potential, md)
    assert conversion['species'] == ['H', 'C', 'O']
    script = inputs['script'].get_content()
    lines = [line for line in script.splitlines() if line.startswith('pair_')]
    assert lines[:2] == [
        'pair_style hybrid/overlay metatomic model.pt device cpu extensions extensions '
        'momb 15 0.75 20',
        'pair_coeff * * metatomic 1 6 8',
    ]
    assert len(lines) == 2 + 6
    filenames = inputs['filenames'].get_dict()
    assert filenames['structure'] == 'structure.data'
    names = {filenames[key]: node for key, node in inputs['files'].items()}
    assert names['model.pt'].get_content('rb') == b'torchscript'
    # lammps.raw writes files flat: the prepend text rebuilds the extensions' tree
    prepend = inputs['metadata']['options']['prepend_text']
    for name, node in names.items():
        (tmp_path / 'job').mkdir(exist_ok=True)
        (tmp_path / 'job' / name).write_bytes(node.get_content('rb'))
    subprocess.run(['bash', '-c', prepend], cwd=tmp_path / 'job', check=True)
    job = tmp_path / 'job' / 'extensions'
    assert (job / 'lib' / 'libfeatomic-torch.so').read_bytes() == b'so'
    assert (job / 'metatensor_torch' / 'lib' / 'libmetatensor_torch.so').read_bytes() == b'so2'
    # aiida-lammps accepts the inputs
    builder = CalculationFactory('lammps.raw').get_builder()
    builder._update(inputs)

    mace = PotentialModel.from_files(
        model_file,
        engine='mace',
        architecture='MACE',
        species=['C'],
        cutoff=4.0,
        dtype='float64',
    )
    with pytest.raises(li.LammpsInputError, match='mace_create_lammps_model'):
        le.model_potential(mace)
    lammps_model = orm.SinglefileData(io.BytesIO(b'x'), filename='tiny.model-lammps.pt')
    potential = le.model_potential(mace, lammps_model=lammps_model)
    inputs, _ = le.md_inputs(code, water, potential, md)
    script = inputs['script'].get_content()
    assert 'pair_style mace no_domain_decomposition\n' in script
    assert 'pair_coeff * * tiny.model-lammps.pt C\n' in script
    assert 'prepend_text' not in inputs['metadata']['options']


def test_extension_names_are_quoted_in_the_shell_lines(tmp_path):
    # the names come from the model's repository: a blank, `;`, `$()` or quote in one is data
    model_file = tmp_path / 'model.pt'
    model_file.write_bytes(b'torchscript')
    extensions = tmp_path / 'extensions'
    odd_dir = 'my lib; touch pwned_dir'
    odd_name = "it's $(touch pwned).so;rm -f model.pt"
    (extensions / odd_dir).mkdir(parents=True)
    (extensions / odd_dir / odd_name).write_bytes(b'odd')
    (extensions / 'plain.so').write_bytes(b'plain')
    pet = PotentialModel.from_files(
        model_file,
        engine='metatrain',
        architecture='pet',
        species=['C'],
        cutoff=4.0,
        dtype='float64',
        extensions_dir=extensions,
    )
    potential = le.model_potential(pet)
    lines = potential.prepend_text.splitlines()
    flat = {node.get_content('rb'): name for name, node in potential.files.items()}
    odd_path = f'extensions/{odd_dir}/{odd_name}'
    # parsed back as the shell would, every name is one word, unchanged
    assert sorted(shlex.split(line) for line in lines) == [
        ['mkdir', '-p', 'extensions', '&&', 'mv', flat[b'plain'], 'extensions/plain.so'],
        ['mkdir', '-p', f'extensions/{odd_dir}', '&&', 'mv', flat[b'odd'], odd_path],
    ]
    # and the shell runs them so: the files land in their tree, nothing else runs
    job = tmp_path / 'job'
    job.mkdir()
    (job / 'model.pt').write_bytes(b'torchscript')
    for name, node in potential.files.items():
        (job / name).write_bytes(node.get_content('rb'))
    subprocess.run(['bash', '-c', potential.prepend_text], cwd=job, check=True)
    assert (job / odd_path).read_bytes() == b'odd'
    assert (job / 'extensions' / 'plain.so').read_bytes() == b'plain'
    assert (job / 'model.pt').exists()
    assert not list(job.rglob('pwned*'))


def test_shell_lines_refuse_paths_out_of_the_job_folder():
    assert shlex.split(le.move_into_tree('a b', 'extensions/c d/e')) == [
        'mkdir', '-p', 'extensions/c d', '&&', 'mv', 'a b', 'extensions/c d/e'
    ]  # fmt: skip
    for flat, path in (('x', '../evil'), ('x', '/abs/evil'), ('../x', 'extensions/x'), ('', 'a')):
        with pytest.raises(ValueError, match='extension file'):
            le.move_into_tree(flat, path)


def test_frames_need_retrieved_and_conversion_pairs():
    conversion = orm.Dict({'a': 1})
    with pytest.raises(ValueError, match='pairs'):
        le.lammps_trajectory_frames(conversion_0=conversion)
