"""DatasetAugmentationWorkChain on a real profile: outputs, provenance, validation."""

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from ase.build import bulk, graphene

from aiida_trainspot.augmentation.generators import AUGMENTATION_KEYS
from aiida_trainspot.augmentation.workchain import DatasetAugmentationWorkChain
from aiida_trainspot.data import PESData

SMALL = {
    'n_configs_per_input': 2,
    'supercells': {'min_width': 6.0, 'max_atoms': 64},
    'clusters': {'n_clusters': 2, 'max_atoms': 6},
    'slabs': {'min_thickness': 4.0, 'max_atoms': 40},
}


@pytest.fixture
def structures():
    layer = graphene(vacuum=7.5)
    return PESData.from_ase([bulk('C', 'diamond', a=3.567), layer, bulk('Si', 'diamond', a=5.43)])


def run(structures, seed, parameters=SMALL):
    return run_get_node(
        DatasetAugmentationWorkChain,
        structures=structures,
        parameters=orm.Dict(parameters),
        seed=orm.Int(seed),
    )


def test_outputs_and_provenance(structures):
    results, node = run(structures, seed=1)
    assert node.is_finished_ok
    datasets = results['datasets']
    assert set(datasets) == set(AUGMENTATION_KEYS)
    union = results['dataset']
    assert len(union) == sum(len(d) for d in datasets.values())
    assert len(datasets['isolated_atoms']) == 2  # C and Si
    assert len(datasets['alloys']) == 0  # off by default
    methods, _ = union.get_column('generation_method')
    assert {'cluster', 'isolated_atom'} <= set(methods)
    # provenance: every output was created by a calcfunction whose inputs include the structures
    for output in [union, *datasets.values()]:
        creator = output.base.links.get_incoming(link_type=LinkType.CREATE).one().node
        assert isinstance(creator, orm.CalcFunctionNode)
        assert creator.caller.pk == node.pk
        inputs = {link.node.pk for link in creator.base.links.get_incoming().all()}
        assert structures.pk in inputs
        assert node.inputs.seed.pk in inputs
    # the graph traces the union back to the input structures
    query = orm.QueryBuilder()
    query.append(PESData, filters={'id': structures.pk}, tag='input')
    query.append(orm.CalcFunctionNode, with_incoming='input', tag='calc')
    query.append(PESData, with_incoming='calc', filters={'id': union.pk})
    assert query.count() == 1


def test_same_seed_same_frames_different_seed_differs(structures):
    first, _ = run(structures, seed=5)
    second, _ = run(structures, seed=5)
    third, _ = run(structures, seed=6)
    a, b, c = (r['dataset'].get_columns() for r in (first, second, third))
    assert np.array_equal(a.atom['positions'], b.atom['positions'])
    assert np.array_equal(a.frame['cell'], b.frame['cell'])
    assert first['dataset'].base.attributes.get('checksum') != ''
    assert a.atom['positions'].shape != c.atom['positions'].shape or not np.allclose(
        a.atom['positions'], c.atom['positions']
    )


@pytest.mark.parametrize(
    ('parameters', 'port', 'fragment'),
    [
        ({'rattle': {'fraction': -0.1}}, 'parameters', 'rattle.fraction'),
        ({'strain': {'max_compressive_strain': 1.5}}, 'parameters', 'max_compressive_strain'),
        ({'slabs': {'miller_indices': ['111']}}, 'parameters', 'miller'),
        ({'vacuum': 0}, 'parameters', 'vacuum'),
        ({'alloys': {'enabled': True, 'alloy_species': ['Au', 'Ag']}}, 'structures', 'alloy'),
        ({'no_such_thing': 1}, 'parameters', 'no_such_thing'),
    ],
)
def test_bad_parameters_rejected_at_submission(structures, parameters, port, fragment):
    count = orm.QueryBuilder().append(orm.WorkChainNode).count()
    with pytest.raises(ValueError, match=port) as info:
        run(structures, seed=0, parameters=parameters)
    assert fragment in str(info.value)
    assert orm.QueryBuilder().append(orm.WorkChainNode).count() == count  # nothing stored


def test_periodic_axis_without_cell_rejected():
    bad = PESData.from_frames(
        [{'numbers': [6], 'positions': [[0, 0, 0]], 'cell': np.eye(3) * 3, 'pbc': True}]
    )
    # a PESData itself refuses such a frame; build the bad input through an unchecked dataset
    broken = PESData.from_frames(
        [{'numbers': [6], 'positions': [[0, 0, 0]], 'cell': np.diag([3.0, 3.0, 0.0]), 'pbc': True}],
        validate=False,
    )
    assert len(bad) == 1
    with pytest.raises(ValueError, match='structures'):
        run(broken, seed=0)
