"""AbInitioLabellingWorkChain with the qe engine: real pw.x on tiny carbon cells."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import bulk, graphene
from qe_tools import CONSTANTS

from aiida_trainspot.data import PESData
from aiida_trainspot.labelling.qe.pseudos import create_pseudo_family
from aiida_trainspot.labelling.workchain import AbInitioLabellingWorkChain

FAMILY = 'trainspot-test-C'
OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'withmpi': False}
RY_BOHR = CONSTANTS.ry_to_ev / CONSTANTS.bohr_to_ang


@pytest.fixture
def carbon_family():
    return create_pseudo_family(FAMILY, ['C'])


def qe_inputs(pw_code, **overrides):
    return {
        'code': pw_code,
        'pseudo_family': orm.Str(FAMILY),
        'overrides': orm.Dict({'kpoints_distance': 0.6, **overrides}),
        'vacuum': orm.Float(5.0),  # the frames below have it already: pw.x sees them as given
        'options': orm.Dict(OPTIONS),
    }


def carbon_frames():
    diamond = bulk('C', 'diamond', a=3.567)
    rattled = bulk('C', 'diamond', a=3.567, cubic=True)
    rattled.rattle(0.05, seed=3)
    layer = graphene(a=2.46, vacuum=6.0).repeat((2, 1, 1))  # 4 atoms, pbc (T, T, F)
    atom = Atoms('C', positions=[[2.5, 2.5, 2.5]], cell=np.eye(3) * 5.0, pbc=False)
    return [diamond, rattled, layer, atom]


def parse_pw_output(text: str, n_atoms: int):
    """Energy (Ry), forces (Ry/bohr) and stress (Ry/bohr^3) of a pw.x output, read directly."""
    energy = float(re.findall(r'^!\s+total energy\s+=\s+(\S+) Ry', text, re.M)[-1])
    forces = np.array(
        [
            [float(x) for x in m]
            for m in re.findall(r'atom\s+\d+ type\s+\d+\s+force =\s+(\S+)\s+(\S+)\s+(\S+)', text)
        ]
    )[:n_atoms]
    stress = None
    block = re.search(r'total\s+stress\s+\(Ry/bohr\*\*3\).*\n(.*)\n(.*)\n(.*)\n', text)
    if block:
        stress = np.array([[float(x) for x in block.group(i).split()[:3]] for i in (1, 2, 3)])
    return energy, forces, stress


def run_directly(calculation: orm.CalcJobNode, tmp_path):
    """Run pw.x by hand on the very input file AiiDA wrote, with the same pseudopotentials."""
    folder = tmp_path / f'direct_{calculation.pk}'
    (folder / 'pseudo').mkdir(parents=True)
    (folder / 'aiida.in').write_text(calculation.base.repository.get_object_content('aiida.in'))
    for pseudo in calculation.inputs.pseudos.values():
        with (
            pseudo.open(mode='rb') as source,
            open(folder / 'pseudo' / pseudo.filename, 'wb') as target,
        ):
            shutil.copyfileobj(source, target)
    out = subprocess.run(
        ['/usr/bin/pw.x', '-in', 'aiida.in'], cwd=folder, capture_output=True, text=True, check=True
    )
    return out.stdout


@pytest.mark.slow
def test_labels_equal_direct_pw_runs(pw_code, carbon_family, tmp_path):
    frames = carbon_frames()
    dataset = PESData.from_ase(frames)
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=dataset,
        max_concurrent=orm.Int(2),
        qe=qe_inputs(pw_code),
    )
    assert node.is_finished_ok, node.exit_message
    labelled = results['labelled']
    assert len(labelled) == 4
    assert len(results['failed']) == 0
    energy, _ = labelled.get_column('energy')
    forces, _ = labelled.get_column('forces')
    stress, stress_present = labelled.get_column('stress')
    # stress where the frame is periodic along two or three axes: bulk and graphene, not the atom
    assert stress_present.tolist() == [True, True, True, False]
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
    calculations = sorted(
        (n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)),
        key=lambda n: n.ctime,
    )
    by_frame = {}
    for calc in calculations:
        label = calc.caller.base.links.get_incoming(node_class=orm.WorkChainNode).one().link_label
        by_frame[int(label.split('_')[-1])] = calc
    assert sorted(by_frame) == [0, 1, 2, 3]
    # graphene got the 2D treatment, and the mesh is 1 along non-periodic directions
    assert by_frame[2].inputs.parameters['SYSTEM']['assume_isolated'] == '2D'
    assert by_frame[2].inputs.kpoints.get_kpoints_mesh()[0][2] == 1
    assert by_frame[3].inputs.kpoints.get_kpoints_mesh()[0] == [1, 1, 1]
    for index, calc in by_frame.items():
        text = run_directly(calc, tmp_path)
        e_ry, f_ry, s_ry = parse_pw_output(text, len(frames[index]))
        # pw.x prints 8 decimals (1e-8 Ry, 1e-8 Ry/bohr, 1e-8 Ry/bohr^3); AiiDA reads the XML
        assert energy[index] == pytest.approx(e_ry * CONSTANTS.ry_to_ev, abs=2e-7)
        np.testing.assert_allclose(
            forces[offsets[index] : offsets[index + 1]], f_ry * RY_BOHR, atol=1e-6
        )
        if stress_present[index]:
            expected = -s_ry * CONSTANTS.ry_to_ev / CONSTANTS.bohr_to_ang**3  # ASE sign
            voigt = expected[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            np.testing.assert_allclose(stress[index], voigt, atol=1e-6)
    # the labels carry through the frames' structure untouched
    back = labelled.to_ase()
    for original, atoms in zip(frames, back, strict=True):
        assert np.array_equal(original.positions, atoms.positions)
        assert np.array_equal(original.pbc, atoms.pbc)


@pytest.mark.slow
def test_failed_frame_recorded_and_others_labelled(pw_code, carbon_family):
    good = bulk('C', 'diamond', a=3.567)
    broken = Atoms('C2', positions=[[0, 0, 0], [0, 0, 0]], cell=np.eye(3) * 4.0, pbc=True)
    dataset = PESData.from_ase([good, broken, good.copy()], validate=False)
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=dataset,
        max_concurrent=orm.Int(3),
        max_failed_fraction=orm.Float(0.5),
        qe=qe_inputs(pw_code, max_iterations=1),
    )
    assert node.is_finished_ok
    assert len(results['labelled']) == 2
    failed = results['failed']
    assert len(failed) == 1
    reason, _ = failed.get_column('failure_reason')
    assert 'PwBaseWorkChain' in reason[0]
    summary = results['summary'].get_dict()
    assert summary['failed_indices'] == [1]
    assert summary['labelled_indices'] == [0, 2]
    # with a stricter limit the same failure trips the exit code, outputs still emitted
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=dataset,
        max_failed_fraction=orm.Float(0.2),
        qe=qe_inputs(pw_code, max_iterations=1),
    )
    assert node.exit_status == AbInitioLabellingWorkChain.exit_codes.ERROR_TOO_MANY_FAILURES.status
    assert len(results['labelled']) == 2 and len(results['failed']) == 1


@pytest.mark.slow
def test_unconverged_scf_is_a_failure_not_a_label(pw_code, carbon_family):
    dataset = PESData.from_ase([bulk('C', 'diamond', a=3.567)])
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=dataset,
        qe=qe_inputs(
            pw_code, max_iterations=1, pw={'parameters': {'ELECTRONS': {'electron_maxstep': 2}}}
        ),
    )
    assert node.exit_status == AbInitioLabellingWorkChain.exit_codes.ERROR_TOO_MANY_FAILURES.status
    assert len(results['labelled']) == 0
    reason, _ = results['failed'].get_column('failure_reason')
    assert 'exit 410' in reason[0]
    assert 'self-consistency' in reason[0]


@pytest.mark.slow
def test_never_more_than_max_concurrent(pw_code, carbon_family):
    frames = []
    for seed in range(5):
        atoms = bulk('C', 'diamond', a=3.567)
        atoms.rattle(0.03, seed=seed)
        frames.append(atoms)
    _, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=PESData.from_ase(frames),
        max_concurrent=orm.Int(2),
        qe=qe_inputs(pw_code, kpoints_distance=0.9),
    )
    assert node.is_finished_ok
    children = [n for n in node.called if n.process_label == 'PwBaseWorkChain']
    assert len(children) == 5
    events = sorted([(c.ctime, 1) for c in children] + [(c.mtime, -1) for c in children])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2
    assert peak == 2  # the limit is used, not a serial run


def test_bad_inputs_rejected_at_submission(pw_code, carbon_family):
    dataset = PESData.from_ase([bulk('Si', 'diamond', a=5.43)])
    with pytest.raises(ValueError, match=r"qe.pseudo_family: .*\['Si'\]"):
        run_get_node(AbInitioLabellingWorkChain, dataset=dataset, qe=qe_inputs(pw_code))
    carbon = PESData.from_ase([bulk('C', 'diamond', a=3.567)])
    with pytest.raises(ValueError, match='engine: unknown engine'):
        run_get_node(
            AbInitioLabellingWorkChain,
            dataset=carbon,
            engine=orm.Str('vasp'),
            qe=qe_inputs(pw_code),
        )
    with pytest.raises(ValueError, match=r'qe\.pseudo_family: no pseudopotential family'):
        inputs = qe_inputs(pw_code)
        inputs['pseudo_family'] = orm.Str('no-such-family')
        run_get_node(AbInitioLabellingWorkChain, dataset=carbon, qe=inputs)
    with pytest.raises(ValueError, match=r'qe\.code'):
        run_get_node(
            AbInitioLabellingWorkChain, dataset=carbon, qe={'pseudo_family': orm.Str(FAMILY)}
        )
    with pytest.raises(ValueError, match=r'ase\.code'):
        run_get_node(AbInitioLabellingWorkChain, dataset=carbon, engine=orm.Str('ase'))
    with pytest.raises(ValueError, match='max_concurrent'):
        run_get_node(
            AbInitioLabellingWorkChain,
            dataset=carbon,
            max_concurrent=orm.Int(0),
            qe=qe_inputs(pw_code),
        )
    with pytest.raises(ValueError, match='dataset: the dataset has no frames'):
        run_get_node(AbInitioLabellingWorkChain, dataset=carbon.subset([]), qe=qe_inputs(pw_code))


def test_ase_engine_through_the_workchain(ase_code):
    from ase.calculators.emt import EMT

    frames = []
    for seed in range(6):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    frames.append(Atoms('Fe', positions=[[0, 0, 0]], cell=np.eye(3) * 6, pbc=False))  # EMT lacks Fe
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=PESData.from_ase(frames),
        engine=orm.Str('ase'),
        ase={'code': ase_code, 'calculator': orm.Dict({'name': 'emt'})},
    )
    assert node.is_finished_ok, node.exit_message
    energy, _ = results['labelled'].get_column('energy')
    expected = []
    for atoms in frames[:6]:
        atoms.calc = EMT()
        expected.append(atoms.get_potential_energy())
    np.testing.assert_allclose(energy, expected, rtol=1e-12)
    assert results['summary']['failed_indices'] == [6]
    reason, _ = results['failed'].get_column('failure_reason')
    assert 'Fe' in reason[0]
