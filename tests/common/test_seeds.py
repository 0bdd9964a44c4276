"""One seed helper and one seed validator: the same numbers as the four schemes they replace.

The ``old_*`` functions are the formulas each module used before ``common.seeds``, written out
here as the regression oracle: a seed must keep giving the same campaign.
"""

import subprocess
import sys

import numpy as np
import pytest
from aiida import orm

from aiida_trainspot.augmentation import generators
from aiida_trainspot.augmentation.generators import augment
from aiida_trainspot.augmentation.workchain import DatasetAugmentationWorkChain
from aiida_trainspot.common.seeds import (
    SEED_LIMIT,
    derive_rng,
    derive_seed,
    derive_seeds,
    seed_sequence,
)
from aiida_trainspot.common.validators import validate_seed
from aiida_trainspot.exploration import md, plan
from aiida_trainspot.exploration.ase.calculation import AseMdCalculation
from aiida_trainspot.exploration.workchain import ExplorationWorkChain
from aiida_trainspot.training.mace.calculation import MaceTrainCalculation
from aiida_trainspot.training.metatrain.calculation import MetatrainTrainCalculation
from aiida_trainspot.training.workchain import TrainingWorkChain, member_seeds
from aiida_trainspot.workflows.loop import _STAGE_IDS, stage_seed
from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

SEEDS = (0, 1, 5, 42, 123_456_789, 2**31 - 1, 2**32 - 1)

# ------------------------------------------------------------------ the old formulas (oracle)


def old_stage_seed(seed, iteration, stage_id):
    state = np.random.SeedSequence([int(seed), int(iteration), stage_id])
    return int(state.generate_state(1, dtype=np.uint32)[0] % 2**31)


def old_member_seeds(seed, size, span=2**31):
    # training.workchain.member_seeds, with the modulus as a parameter (2**31 there)
    sequence = np.random.SeedSequence(seed)
    seeds = []
    while len(seeds) < size:
        for value in sequence.generate_state(2 * size, dtype=np.uint32):
            value = int(value) % span
            if value not in seeds and len(seeds) < size:
                seeds.append(value)
        sequence = sequence.spawn(1)[0]
    return seeds


def old_run_seeds(seed, n):
    return [int(s) % 899_999_999 + 1 for s in np.random.SeedSequence([seed, 3]).generate_state(n)]


def old_run_rng(seed, index=None):
    entropy = int(seed) if index is None else [int(seed), int(index)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def old_stream(seed, stream, *indices):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, *indices)))


def same_stream(new, old):
    """Two generators in the same state, that also draw the same numbers."""
    assert new.bit_generator.state == old.bit_generator.state
    assert np.array_equal(new.random(8), old.random(8))
    assert np.array_equal(new.integers(0, 2**62, 8), old.integers(0, 2**62, 8))


# ------------------------------------------------------------------ the helpers


def test_imports_no_aiida():
    # the MD runner and the pure modules (plan, splits, loop) use it on machines without AiiDA
    code = (
        'import sys, aiida_trainspot.common.seeds; '
        "print(any(m == 'aiida' or m.startswith('aiida.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'


@pytest.mark.parametrize('seed', SEEDS)
def test_sequence_and_rng_are_numpys_own(seed):
    assert seed_sequence(seed).generate_state(4).tolist() == (
        np.random.SeedSequence(seed).generate_state(4).tolist()
    )
    same_stream(derive_rng(seed), np.random.default_rng(seed))  # splits, selection, plots
    same_stream(derive_rng(seed, 7, 2), np.random.default_rng([seed, 7, 2]))


@pytest.mark.parametrize('seed', SEEDS)
def test_stage_seeds_as_before(seed):
    for iteration in (0, 1, 2, 17):
        for stage, stage_id in _STAGE_IDS.items():
            expected = old_stage_seed(seed, iteration, stage_id)
            assert stage_seed(seed, iteration, stage) == expected
            assert derive_seed(seed, iteration, stage_id) == expected


@pytest.mark.parametrize('seed', SEEDS)
def test_member_seeds_as_before_and_distinct(seed):
    for size in (1, 2, 4, 8, 33):
        seeds = member_seeds(seed, size)
        assert seeds == old_member_seeds(seed, size)
        assert seeds == derive_seeds(seed, n=size, distinct=True)
        assert len(set(seeds)) == size and all(0 <= s < SEED_LIMIT for s in seeds)


@pytest.mark.parametrize('seed', range(20))
def test_distinct_loop_as_before_when_values_collide(seed):
    # a tiny range forces collisions, and for some sizes a spawned child sequence
    for span, size in ((5, 5), (8, 6), (50, 40), (3, 1)):
        seeds = derive_seeds(seed, n=size, high=span, distinct=True)
        assert seeds == old_member_seeds(seed, size, span)
        assert sorted(set(seeds)) == sorted(seeds) and all(0 <= s < span for s in seeds)
    with pytest.raises(ValueError, match='distinct'):
        derive_seeds(seed, n=4, high=3, distinct=True)


@pytest.mark.parametrize('seed', SEEDS)
def test_seeds_are_a_prefix_whatever_their_number(seed):
    many = derive_seeds(seed, 3, n=50)
    assert derive_seeds(seed, 3, n=7) == many[:7]
    assert derive_seed(seed, 3) == many[0]
    assert derive_seeds(seed, 3, n=0) == []


@pytest.mark.parametrize('seed', SEEDS)
def test_exploration_plan_as_before(seed):
    for n in (1, 4, 30):
        assert plan.run_seeds(seed, n) == old_run_seeds(seed, n)
        assert all(1 <= s < 900_000_000 for s in plan.run_seeds(seed, n))
    same_stream(derive_rng(seed, 1), np.random.default_rng([seed, 1]))  # choose_member
    same_stream(derive_rng(seed, 2), np.random.default_rng([seed, 2]))  # make_plan
    labels = [f'member_{k}' for k in range(5)]
    old_choice = sorted(labels)[int(np.random.default_rng([seed, 1]).integers(5))]
    assert plan.choose_member(labels, seed) == old_choice


@pytest.mark.parametrize('seed', (*SEEDS, 2**63 - 1))
def test_md_run_generators_as_before(seed):
    # a run's own seed (``MdProtocol.seeds``) may be up to 2**63 - 1
    same_stream(md.run_rng(seed), old_run_rng(seed))
    for index in (0, 1, 9):
        same_stream(md.run_rng(seed, index), old_run_rng(seed, index))


@pytest.mark.parametrize('seed', SEEDS)
def test_augmentation_streams_keep_the_spawn_key_layout(seed):
    for name, stream in generators._STREAMS.items():
        same_stream(generators._stream(seed, name), old_stream(seed, stream))
        for indices in ((0,), (3,), (2, 5)):
            same_stream(
                generators._stream(seed, name, *indices), old_stream(seed, stream, *indices)
            )


def test_augment_refuses_seeds_outside_the_range():
    for seed in (-1, SEED_LIMIT, 2**40, True, 1.0):
        with pytest.raises(ValueError, match=r'seed must be an integer in \[0, 2\*\*31\)'):
            augment([], None, seed=seed)


def test_bad_ranges_refused():
    with pytest.raises(ValueError, match='empty seed range'):
        derive_seeds(1, n=2, low=5, high=5)
    with pytest.raises(ValueError, match='non-negative'):
        derive_seeds(1, n=-1)


# ------------------------------------------------------------------ the validator


def test_validator_bounds():
    assert validate_seed(None) is None
    assert validate_seed(orm.Int(0)) is None
    assert validate_seed(orm.Int(SEED_LIMIT - 1), None) is None
    for value in (-1, SEED_LIMIT, 2**40):
        message = validate_seed(orm.Int(value))
        assert message == f'`seed`: must be an integer in [0, 2**31), got {value}'


@pytest.mark.parametrize(
    'process',
    [
        TrainsPotWorkChain,
        DatasetAugmentationWorkChain,
        TrainingWorkChain,
        MaceTrainCalculation,
        MetatrainTrainCalculation,
        ExplorationWorkChain,
        AseMdCalculation,
    ],
)
def test_seed_ports_refuse_out_of_range_seeds_in_the_builder(process):
    port = process.spec().inputs['seed']
    assert port.validator is validate_seed
    assert port.validate(orm.Int(SEED_LIMIT - 1)) is None
    builder = process.get_builder()
    builder.seed = orm.Int(0)
    builder.seed = orm.Int(SEED_LIMIT - 1)
    for value in (SEED_LIMIT, -1):
        with pytest.raises(
            ValueError, match=rf'`seed`: must be an integer in \[0, 2\*\*31\), got {value}'
        ):
            builder.seed = orm.Int(value)
