"""Calcfunctions over PESData: results equal the node methods, and provenance is recorded."""

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType

from aiida_trainspot.data import PESData
from aiida_trainspot.data.operations import (
    add_columns,
    add_labels,
    assign_split,
    concatenate_datasets,
    subset_dataset,
)

from .test_store import assert_columns_equal, assert_records_equal


def _frames(n, offset=0, labelled=True, method='md'):
    frames = []
    for k in range(n):
        frame = {
            'numbers': [1, 8, 1],
            'positions': [[0, 0, 0], [0.96, 0, 0], [1.2 + 0.01 * (k + offset), 0.9, 0]],
            'info': {'generation_method': method, 'step': k + offset},
        }
        if labelled:
            frame['energy'] = -10.0 - 0.1 * (k + offset)
            frame['forces'] = np.full((3, 3), 0.01 * (k + offset))
        frames.append(frame)
    return frames


@pytest.fixture
def datasets():
    a = PESData.from_frames(_frames(15)).store()
    b = PESData.from_frames(_frames(7, offset=100, labelled=False, method='rattle')).store()
    return a, b


def assert_created_by(output, process_label, inputs):
    """``output`` was created by a calcfunction of ``process_label`` with exactly ``inputs``."""
    assert isinstance(output, PESData)
    assert output.is_stored
    creator = output.creator
    assert isinstance(creator, orm.CalcFunctionNode)
    assert creator.process_label == process_label
    assert creator.is_finished_ok
    incoming = creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()
    assert {(link.link_label, link.node.uuid) for link in incoming} == {
        (label, node.uuid) for label, node in inputs.items()
    }
    outgoing = creator.base.links.get_outgoing(link_type=LinkType.CREATE).all()
    assert [link.node.uuid for link in outgoing] == [output.uuid]
    for node in inputs.values():
        consumers = node.base.links.get_outgoing(link_type=LinkType.INPUT_CALC).all()
        assert creator.uuid in {link.node.uuid for link in consumers}


def assert_same_content(got, expected):
    assert len(got) == len(expected)
    assert_columns_equal(got.get_columns(), expected.get_columns())
    for i, (x, y) in enumerate(zip(got.to_frames(), expected.to_frames(), strict=True)):
        assert_records_equal(x, y, f'frame {i}')


def test_concatenate_datasets(datasets):
    a, b = datasets
    result = concatenate_datasets(first=a, second=b)
    assert_created_by(result, 'concatenate_datasets', {'first': a, 'second': b})
    assert_same_content(result, PESData.concatenate([a, b]))
    # the order is that of the link labels, not of the keywords
    swapped = concatenate_datasets(second=a, first=b)
    assert_same_content(swapped, PESData.concatenate([b, a]))
    # no new shard: the output shares its inputs' files
    shards = set(a.base.repository.list_object_names('shards'))
    shards |= set(b.base.repository.list_object_names('shards'))
    assert set(result.base.repository.list_object_names('shards')) == shards


def test_subset_dataset(datasets):
    a, _ = datasets
    indices = orm.List([4, 0, 4, 14]).store()
    result = subset_dataset(a, indices)
    assert_created_by(result, 'subset_dataset', {'dataset': a, 'indices': indices})
    assert_same_content(result, a.subset([4, 0, 4, 14]))
    assert set(result.base.repository.list_object_names('shards')) <= set(
        a.base.repository.list_object_names('shards')
    )
    mask = [k % 3 == 0 for k in range(len(a))]
    result = subset_dataset(a, orm.List(mask))
    assert_same_content(result, a.subset(np.flatnonzero(mask)))


def test_assign_split(datasets):
    a, b = datasets
    joined = concatenate_datasets(a=a, b=b)
    seed = orm.Int(7).store()
    result = assign_split(joined, seed)
    assert_created_by(result, 'assign_split', {'dataset': joined, 'seed': seed})
    assert_same_content(result, joined.assign_split(7))
    counts = result.base.attributes.get('split_counts')
    assert counts['unassigned'] == 0 and sum(counts.values()) == len(joined)
    fractions = orm.Dict({'train': 0.5, 'validation': 0.5}).store()
    result = assign_split(joined, orm.Int(7), fractions)
    assert result.base.attributes.get('split_counts')['test'] == 0
    assert_same_content(result, joined.assign_split(7, {'train': 0.5, 'validation': 0.5}))
    with pytest.raises(ValueError, match='add up to 1'):
        assign_split(joined, orm.Int(1), orm.Dict({'train': 0.5}))


def test_add_labels(datasets):
    _, b = datasets
    targets = [5, 1, 3]
    frames = b.to_frames()
    labelled = PESData.from_frames(
        [
            {
                'numbers': frames[i]['numbers'],
                'positions': frames[i]['positions'],
                'energy': float(-i),
                'forces': np.full((3, 3), float(i)),
                **({'stress': np.arange(6.0) * i} if i != 1 else {}),
            }
            for i in targets
        ]
    ).store()
    indices = orm.List(targets).store()
    result = add_labels(b, labelled, indices)
    assert_created_by(
        result, 'add_labels', {'dataset': b, 'labelled': labelled, 'indices': indices}
    )
    atoms = result.to_ase()
    for i, atoms_i in enumerate(atoms):
        results = atoms_i.calc.results if atoms_i.calc is not None else {}
        if i not in targets:
            assert results == {}
            continue
        assert results['energy'] == -i
        assert np.array_equal(results['forces'], np.full((3, 3), float(i)))
        if i == 1:
            assert 'stress' not in results  # missing in the source: missing, not zero
        else:
            assert np.array_equal(results['stress'], np.arange(6.0) * i)
    assert result.base.attributes.get('n_labelled') == {'energy': 3, 'forces': 3, 'stress': 2}
    # the structure and metadata are those of the dataset
    for got, before in zip(result.to_frames(), b.to_frames(), strict=True):
        assert np.array_equal(got['positions'], before['positions'])
        assert got['info'] == before['info']
    with pytest.raises(ValueError, match='2 indices given for a source of 3 frames'):
        add_labels(b, labelled, orm.List([0, 1]))


def test_add_labels_refuses_frames_of_another_size(datasets):
    _, b = datasets
    labelled = PESData.from_frames(
        [{'numbers': [1, 1], 'positions': [[0, 0, 0], [1, 0, 0]], 'energy': 1.0}]
    )
    with pytest.raises(ValueError, match='atom counts'):
        add_labels(b, labelled, orm.List([0]))


def test_add_columns(datasets):
    a, b = datasets
    indices = orm.List([6, 0]).store()
    names = orm.List(['generation_method', 'step', 'energy']).store()
    source = a.subset([2, 3]).store()
    result = add_columns(b, source, indices, names)
    assert_created_by(
        result,
        'add_columns',
        {'dataset': b, 'source': source, 'indices': indices, 'names': names},
    )
    before, after, given = b.to_frames(), result.to_frames(), source.to_frames()
    for i in range(len(b)):
        if i == 6:
            expected_from = given[0]
        elif i == 0:
            expected_from = given[1]
        else:
            assert_records_equal(after[i], before[i], f'frame {i}')
            continue
        assert after[i]['info'] == expected_from['info']
        assert after[i]['energy'] == expected_from['energy']
        assert np.array_equal(after[i]['positions'], before[i]['positions'])
        assert 'forces' not in after[i]  # not asked for
    with pytest.raises(ValueError, match='none of the columns'):
        add_columns(b, source, indices, orm.List(['no_such_column']))
