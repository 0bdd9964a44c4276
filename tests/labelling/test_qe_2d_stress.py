"""The stress label of a 2D frame from pw.x: (1/V) dE/dε with V the whole cell, vacuum included."""

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import graphene

from aiida_trainspot.data import PESData
from aiida_trainspot.labelling.qe.pseudos import create_pseudo_family
from aiida_trainspot.labelling.workchain import AbInitioLabellingWorkChain

FAMILY = 'trainspot-test-C'
OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'withmpi': False}
#: Strain of the two extra frames along x: small enough that the central difference is
#: within ~0.1 % of the derivative (its error is O(h²)), large enough that the energy
#: difference (2 h V stress ~ 40 meV) dwarfs pw.x's convergence noise (~1e-6 eV). The 3 %
#: tolerance also covers the Pulay stress: at a fixed cutoff the plane-wave basis changes
#: with the strain, which pw.x's analytic stress leaves out (here ~0.5 %).
STRAIN = 0.005


def strained(atoms, strain):
    """``atoms`` with cell and positions scaled by ``1 + strain`` along x."""
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ np.diag([1.0 + strain, 1.0, 1.0]), scale_atoms=True)
    return atoms


@pytest.mark.slow
def test_graphene_stress_is_the_full_volume_strain_derivative(pw_code):
    create_pseudo_family(FAMILY, ['C'])
    # stretched by ~3 % in-plane so the stress is far from zero, 12 Å of vacuum along z
    layer = graphene(a=2.54, vacuum=6.0)
    assert layer.pbc.tolist() == [True, True, False] and layer.cell[2, 2] == pytest.approx(12.0)
    frames = [layer, strained(layer, STRAIN), strained(layer, -STRAIN)]
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=PESData.from_ase(frames),
        max_concurrent=orm.Int(3),
        qe={
            'code': pw_code,
            'pseudo_family': orm.Str(FAMILY),
            'overrides': orm.Dict({'kpoints_distance': 0.4}),
            'vacuum': orm.Float(5.0),  # the layer has 12 Å: pw.x sees the frames as given
            'options': orm.Dict(OPTIONS),
        },
    )
    assert node.is_finished_ok, node.exit_message
    labelled = results['labelled']
    assert len(labelled) == 3 and len(results['failed']) == 0
    # the 2D treatment and one k-point mesh for all three frames (else the difference is noise)
    calculations = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    calculations = [c for c in calculations if c.process_type.endswith('pw')]
    assert len(calculations) == 3
    assert {c.inputs.parameters['SYSTEM']['assume_isolated'] for c in calculations} == {'2D'}
    meshes = {tuple(c.inputs.kpoints.get_kpoints_mesh()[0]) for c in calculations}
    assert len(meshes) == 1 and next(iter(meshes))[2] == 1, meshes

    energy, _ = labelled.get_column('energy')
    stress, present = labelled.get_column('stress')
    assert present.tolist() == [True, True, True]  # a 2D frame carries a stress
    back = labelled.to_ase()
    volume = back[0].cell.volume  # the labelled frame's whole cell, vacuum included
    assert volume == pytest.approx(layer.cell.volume)
    finite_difference = (energy[1] - energy[2]) / (2 * STRAIN * volume)
    label = stress[0, 0]
    assert label > 0.01  # stretched: tensile, ASE sign, and large enough to compare
    assert label == pytest.approx(finite_difference, rel=0.03)
    # in-plane the layer is isotropic (yy = xx) with no shear; out of plane ~0 in vacuum
    assert stress[0, 1] == pytest.approx(label, rel=1e-3)
    assert abs(stress[0, 5]) < 1e-3 * label
    assert np.abs(stress[0, 2:5]).max() < 0.05 * label
