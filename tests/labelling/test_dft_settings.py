"""One set of DFT settings per campaign, and vacuum: pure functions and real pw.x runs."""

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import bulk, graphene

from aiida_trainspot.data import PESData
from aiida_trainspot.labelling.qe import dft
from aiida_trainspot.labelling.qe.engine import pad_frames
from aiida_trainspot.labelling.qe.pseudos import create_pseudo_family
from aiida_trainspot.labelling.qe.settings import campaign_dft_settings, check_settings
from aiida_trainspot.labelling.workchain import AbInitioLabellingWorkChain

#: Different cutoffs per element on purpose (Ry): a per-frame choice would differ between frames.
SIC_CUTOFFS = {'Si': (20.0, 80.0), 'C': (25.0, 200.0)}
SIC_FAMILY = 'trainspot-test-SiC-cutoffs'
OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'withmpi': False}
CAMPAIGN_KEYS = ('ecutwfc', 'ecutrho', 'occupations', 'smearing', 'degauss')


@pytest.fixture
def sic_family(aiida_profile):
    return create_pseudo_family(SIC_FAMILY, ['Si', 'C'], cutoffs=SIC_CUTOFFS)


# ----------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ('name', 'expected'),
    [
        ('fast', 'fast'),
        ('moderate', 'balanced'),
        ('precise', 'stringent'),
        ('balanced', 'balanced'),
    ],
)
def test_campaign_protocols_map_to_quantumespresso(name, expected):
    assert dft.qe_protocol(name) == expected


def test_unknown_protocol_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown protocol 'modrate'.*moderate"):
        dft.qe_protocol('modrate')


def test_cutoffs_are_the_largest_over_every_species():
    assert dft.max_cutoffs(SIC_CUTOFFS, ['Si']) == (20.0, 80.0)
    assert dft.max_cutoffs(SIC_CUTOFFS, ['Si', 'C']) == (25.0, 200.0)
    with pytest.raises(ValueError, match=r"\['O'\]"):
        dft.max_cutoffs(SIC_CUTOFFS, ['Si', 'O'])


def test_spread_cluster_gets_the_vacuum_on_every_axis():
    # a cluster that spread during MD: atoms 7 A apart in a 6 A box
    cluster = Atoms('C3', positions=[[0, 0, 0], [7.0, 0.5, 0], [3.0, 6.5, 2.0]], pbc=False)
    cluster.set_cell(np.eye(3) * 6.0)
    assert dft.needs_padding(cluster, 10.0)
    padded = dft.pad_frame(cluster, 10.0)
    for axis in range(3):
        assert dft.vacuum_along(padded, axis) == pytest.approx(10.0)
    # a rigid translation: interatomic distances unchanged
    np.testing.assert_allclose(padded.get_all_distances(), cluster.get_all_distances())
    assert not dft.needs_padding(padded, 10.0)


def test_swollen_slab_gets_what_the_2d_cutoff_needs():
    # a slab 9 A thick with 6 A of vacuum: vacuum >= thickness + 2 tails fails, so it is padded
    slab = Atoms('C2', positions=[[0, 0, 0.5], [1.2, 0.7, 9.5]], cell=[2.5, 2.5, 15.0])
    slab.pbc = (True, True, False)
    assert dft.layer_thickness(slab) == pytest.approx(9.0)
    assert not dft.two_d_cutoff_valid(slab)
    assert dft.needs_padding(slab, 5.0)  # 6 A > 5 A configured, but the 2D cutoff needs 13 A
    padded = dft.pad_frame(slab, 5.0)
    assert dft.vacuum_along(padded, 2) == pytest.approx(9.0 + 2 * dft.DENSITY_TAIL)
    assert dft.two_d_cutoff_valid(padded)
    np.testing.assert_allclose(padded.cell.array[:2], slab.cell.array[:2])


def test_more_vacuum_is_never_removed_and_bulk_untouched():
    sheet = graphene(a=2.46, vacuum=12.0)
    sheet.pbc = (True, True, False)
    assert not dft.needs_padding(sheet, 15.0)
    np.testing.assert_allclose(dft.pad_frame(sheet, 15.0).cell.array, sheet.cell.array)
    crystal = bulk('Si', 'diamond', a=5.43)
    assert not dft.needs_padding(crystal, 15.0)


def test_settings_take_the_protocol_and_the_largest_cutoffs():
    protocol_inputs = {
        'kpoints_distance': 0.15,
        'meta_parameters': {'conv_thr_per_atom': 2e-10},
        'pw': {
            'parameters': {
                'SYSTEM': {'occupations': 'smearing', 'smearing': 'cold', 'degauss': 0.02}
            }
        },
    }
    settings = dft.decide_settings(
        protocol_inputs,
        SIC_CUTOFFS,
        ['C', 'Si'],
        protocol='balanced',
        pseudo_family='f',
        spin_polarised=True,
        vacuum=15.0,
    )
    assert settings['system'] == {
        'occupations': 'smearing',
        'smearing': 'cold',
        'degauss': 0.02,
        'ecutwfc': 25.0,
        'ecutrho': 200.0,
        'nspin': 2,
    }
    assert settings['species'] == ['C', 'Si']
    assert check_settings(settings, ['Si'], 'f') is None
    assert 'also contain' in check_settings(settings, ['Si', 'O'], 'f')
    assert 'family' in check_settings(settings, ['Si'], 'other')


def test_campaign_settings_from_the_family_and_overrides(sic_family):
    settings = campaign_dft_settings('moderate', SIC_FAMILY, ['Si', 'C'])
    assert settings['protocol'] == 'balanced'
    assert (settings['system']['ecutwfc'], settings['system']['ecutrho']) == (25.0, 200.0)
    # an isolated Si atom alone would get 20/80 Ry per frame; the campaign's species decide
    alone = campaign_dft_settings('moderate', SIC_FAMILY, ['Si'])
    assert alone['system']['ecutwfc'] == 20.0
    overridden = campaign_dft_settings(
        'precise',
        SIC_FAMILY,
        ['Si'],
        {'kpoints_distance': 0.5, 'pw': {'parameters': {'SYSTEM': {'degauss': 0.01}}}},
    )
    assert overridden['kpoints_distance'] == 0.5
    assert overridden['system']['degauss'] == 0.01
    with pytest.raises(ValueError, match=r"no pseudopotential for \['O'\]"):
        campaign_dft_settings('fast', SIC_FAMILY, ['Si', 'O'])


def test_pad_frames_keeps_order_metadata_and_shares_the_rest(aiida_profile):
    crystal = bulk('Si', 'diamond', a=5.43)
    crystal.info['generation_method'] = 'input'
    atom = Atoms('Si', positions=[[0, 0, 0]], pbc=False)
    atom.info['generation_method'] = 'isolated_atom'
    cluster = Atoms('Si2', positions=[[0, 0, 0], [2.3, 0, 0]], cell=np.eye(3) * 3, pbc=False)
    cluster.info['generation_method'] = 'cluster'
    dataset = PESData.from_ase([crystal, atom, cluster])
    padded = pad_frames(dataset, orm.Float(8.0))
    frames = padded.to_ase()
    methods, _ = padded.get_column('generation_method')
    assert list(methods) == ['input', 'isolated_atom', 'cluster']
    np.testing.assert_allclose(frames[0].cell.array, crystal.cell.array)
    assert frames[1].cell.lengths() == pytest.approx([8.0] * 3)
    assert frames[2].cell.lengths() == pytest.approx([10.3, 8.0, 8.0])
    assert padded.base.links.get_incoming().first().node.process_label == 'pad_frames'


def label_sic_cell(pw_code, **qe):
    """Label one SiC cell with the SiC family and the given ``qe`` inputs."""
    return run_get_node(
        AbInitioLabellingWorkChain,
        dataset=PESData.from_ase([bulk('SiC', 'zincblende', a=4.36)]),
        qe={'code': pw_code, 'pseudo_family': orm.Str(SIC_FAMILY), **qe},
    )


def test_labelling_refuses_settings_of_other_species(pw_code, sic_family):
    settings = campaign_dft_settings('fast', SIC_FAMILY, ['Si'])
    with pytest.raises(ValueError, match=r'qe.dft_settings: .*also contain \[.C.\]'):
        label_sic_cell(pw_code, dft_settings=orm.Dict(settings))


# ----------------------------------------------------------------------------- real pw.x


def sic_frames():
    """A SiC cell and the isolated atoms of both species, in boxes smaller than the vacuum."""
    sic = bulk('SiC', 'zincblende', a=4.36)
    silicon = Atoms('Si', positions=[[0, 0, 0]], pbc=False)
    carbon = Atoms('C', positions=[[0, 0, 0]], cell=np.eye(3) * 3.0, pbc=False)
    return [sic, silicon, carbon]


def pw_calculations(node):
    """Every PwCalculation under ``node``, keyed by the frame index of its PwBaseWorkChain."""
    by_frame = {}
    for calc in node.called_descendants:
        if isinstance(calc, orm.CalcJobNode):
            link = calc.caller.base.links.get_incoming(node_class=orm.WorkChainNode).one()
            by_frame[int(link.link_label.rsplit('_', 1)[1])] = calc
    return by_frame


@pytest.mark.slow
def test_moderate_two_elements_one_setting_for_every_frame(pw_code, sic_family):
    """Protocol `moderate` with real pw.x: isolated Si gets C's cutoffs, every frame the same."""
    vacuum = 6.0
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=PESData.from_ase(sic_frames()),
        max_concurrent=orm.Int(3),
        qe={
            'code': pw_code,
            'pseudo_family': orm.Str(SIC_FAMILY),
            'protocol': orm.Str('moderate'),
            'vacuum': orm.Float(vacuum),
            'overrides': orm.Dict({'kpoints_distance': 0.6}),
            'options': orm.Dict(OPTIONS),
        },
    )
    assert node.is_finished_ok, node.exit_message
    assert len(results['labelled']) == 3
    settings = results['dft_settings'].get_dict()
    assert settings['protocol'] == 'balanced'
    assert (settings['system']['ecutwfc'], settings['system']['ecutrho']) == (25.0, 200.0)
    calculations = pw_calculations(node)
    assert sorted(calculations) == [0, 1, 2]
    systems = {i: calc.inputs.parameters.get_dict()['SYSTEM'] for i, calc in calculations.items()}
    for key in CAMPAIGN_KEYS:
        values = {i: system[key] for i, system in systems.items()}
        assert len(set(values.values())) == 1, (key, values)
    assert systems[1]['ecutwfc'] == 25.0  # the Si atom alone would have had 20 Ry
    for index in (1, 2):  # the isolated atoms reached pw.x in a box of the configured vacuum
        structure = calculations[index].inputs.structure.get_ase()
        assert structure.cell.lengths() == pytest.approx([vacuum] * 3)
        assert calculations[index].inputs.kpoints.get_kpoints_mesh()[0] == [1, 1, 1]
    # the labelled dataset holds the padded frames pw.x computed
    labelled = results['labelled'].to_ase()
    for index, atoms in enumerate(labelled):
        computed = calculations[index].inputs.structure.get_ase()
        np.testing.assert_allclose(atoms.cell.array, computed.cell.array, atol=1e-8)
        np.testing.assert_allclose(atoms.positions, computed.positions, atol=1e-8)
    energies, _ = results['labelled'].get_column('energy')
    assert np.isfinite(energies).all()


@pytest.mark.parametrize(
    ('overrides', 'expected'),
    [
        ({'kpoints_distanse': 0.5}, "'kpoints_distanse'; did you mean 'kpoints_distance'"),
        ({'pw': {'parameters': {'SYSTM': {}}}}, "'pw.parameters.SYSTM'; did you mean"),
        ({'meta_parameters': {'conv_thr': 1}}, "'meta_parameters.conv_thr'"),
    ],
)
def test_unknown_overrides_are_refused_at_submission(pw_code, sic_family, overrides, expected):
    with pytest.raises(ValueError, match=expected):
        label_sic_cell(pw_code, overrides=orm.Dict(overrides))
    known = {'kpoints_distance': 0.5, 'pw': {'parameters': {'SYSTEM': {'degauss': 0.01}}}}
    spec = AbInitioLabellingWorkChain.spec().inputs['qe']
    assert spec.validate({'code': pw_code, 'pseudo_family': orm.Str(SIC_FAMILY)}) is None
    assert dft.unknown_override(known, ['kpoints_distance', 'pw'], ['parameters']) is None
